// gRPC load loop on nghttp2 (HTTP/2 with prior knowledge, or over TLS with
// ALPN "h2" when the target asks for it, see LoadOptions::tls), the
// same engine h2load uses, so the generator is not the bottleneck of what it
// measures. grpc++'s client costs several times more CPU per call (a
// ClientContext, a call arena, filter stacks and a completion-queue hand-off
// per call); with it `omnirelay benchmark` reached only ~0.56x h2load's rate
// against a backend with CPU to spare (benchmarks/benchmark_vs_h2load.py).
//
// Per worker thread: one epoll loop, its own TCP connections (one nghttp2
// client session each) and its share of the slots. A slot is one outstanding
// unary call at a time: HEADERS (:path, content-type application/grpc,
// te: trailers, grpc-timeout when a deadline applies, the rpc-* metadata),
// one DATA frame with the length-prefixed body, END_STREAM; the outcome is
// the grpc-status/grpc-message of the trailers (or trailers-only headers),
// else the HTTP status or the RST_STREAM code mapped as gRPC clients map it.
// The response body is not decoded. Deadlines are also enforced locally (the
// stream is reset and the call counts DEADLINE_EXCEEDED), and a deadline
// already past fails the call without sending it, as a gRPC client does.
//
// TLS: OpenSSL on the same non-blocking socket. The handshake runs when a
// connection is opened (bounded, like the TCP connect) and verifies the
// server's chain and name; afterwards SSL_read/SSL_write replace
// read/send in the loop. A failed handshake fails the calls UNAVAILABLE with
// the reason ("certificate verify failed: ..."), never falling back to
// plaintext.
//
// Nothing is allocated per call by this file except nghttp2's own stream
// state; output is written once per loop turn per connection (frames of many
// calls coalesce into one write).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "omnirelay/benchmark/load_state.h"

namespace omnirelay::benchmark {
namespace {

constexpr auto kDrainGrace = std::chrono::seconds(5);
constexpr auto kReconnectDelay = std::chrono::milliseconds(100);

constexpr auto kHandshakeTimeout = std::chrono::seconds(5);

struct Target {
  std::string host;  // as given (for :authority)
  std::string port;
  std::string authority;
  bool tls = false;
};

// `tls_options`: TLS options were given, so an address without a scheme is
// dialled with TLS.
absl::StatusOr<Target> ParseTarget(std::string address, bool tls_options) {
  const std::string given = address;
  Target target;
  target.tls = tls_options;
  for (const char* scheme : {"http://", "https://", "grpc://", "grpcs://", "dns:///", "ipv4:"}) {
    if (address.rfind(scheme, 0) != 0) continue;
    const std::string_view name(scheme);
    if (name == "https://" || name == "grpcs://") {
      target.tls = true;
    } else if (name == "http://" || name == "grpc://") {
      if (tls_options) {
        return absl::InvalidArgumentError("--address '" + given +
                                          "' asks for plaintext but --tls-* flags were given; "
                                          "use https:// or no scheme");
      }
      target.tls = false;
    }
    address = address.substr(name.size());
  }
  while (!address.empty() && address.back() == '/') address.pop_back();
  target.authority = address;
  if (!address.empty() && address.front() == '[') {
    const auto close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError("address '" + address + "' is not [host]:port");
    }
    target.host = address.substr(1, close - 1);
    target.port = address.substr(close + 2);
  } else {
    const auto colon = address.rfind(':');
    if (colon == std::string::npos || colon + 1 >= address.size()) {
      return absl::InvalidArgumentError("address '" + address + "' is not host:port");
    }
    target.host = address.substr(0, colon);
    target.port = address.substr(colon + 1);
  }
  return target;
}

// RST_STREAM codes as gRPC clients report them.
absl::StatusCode FromH2Error(uint32_t error) {
  switch (error) {
    case NGHTTP2_REFUSED_STREAM:
      return absl::StatusCode::kUnavailable;
    case NGHTTP2_CANCEL:
      return absl::StatusCode::kCancelled;
    case NGHTTP2_ENHANCE_YOUR_CALM:
      return absl::StatusCode::kResourceExhausted;
    case NGHTTP2_INADEQUATE_SECURITY:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string PercentDecode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%' && i + 2 < in.size() && std::isxdigit(static_cast<unsigned char>(in[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(in[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

// "<n>m" / "<n>u" / "<n>S": at most 8 digits, as the gRPC spec requires.
std::string GrpcTimeout(std::chrono::nanoseconds remaining) {
  const auto us = std::max<int64_t>(
      1, std::chrono::duration_cast<std::chrono::microseconds>(remaining).count());
  if (us < 100'000'000) return std::to_string(us) + "u";
  const auto ms = us / 1000;
  if (ms < 100'000'000) return std::to_string(ms) + "m";
  return std::to_string(std::min<int64_t>(ms / 1000, 99'999'999)) + "S";
}

class Worker;
struct Connection;

struct Slot {
  LoadState::Ticket ticket;
  Connection* connection = nullptr;
  int32_t stream_id = -1;  // -1: no call in flight
  bool waiting = false;    // open loop: due in the future
  bool active = true;      // false once the run is over for this slot
  bool has_deadline = false;
  SteadyClock::time_point deadline;
  int http_status = 0;
  bool has_grpc_status = false;
  int grpc_status = 0;
  std::string grpc_message;
  size_t body_offset = 0;
};

struct Connection {
  Worker* worker = nullptr;
  const Target* target = nullptr;
  int fd = -1;
  SSL* ssl = nullptr;  // set for TLS targets once the handshake succeeded
  nghttp2_session* session = nullptr;
  std::string output;     // encoded frames not yet written
  bool want_out = false;  // EPOLLOUT armed
  SteadyClock::time_point retry_at{};
  std::string last_error;
};

class Worker {
 public:
  Worker(const LoadOptions& options, LoadState& state, std::vector<const Target*> targets,
         int slots, const std::string& framed_body, SSL_CTX* tls_context)
      : options_(options),
        state_(state),
        tls_context_(tls_context),
        body_(framed_body),
        method_(options.MethodPath()),
        uses_deadlines_(options.ttl || options.deadline || options.timeout.count() > 0) {
    for (const Target* target : targets) {
      auto connection = std::make_unique<Connection>();
      connection->worker = this;
      connection->target = target;
      connections_.push_back(std::move(connection));
    }
    for (int i = 0; i < slots; ++i) {
      auto slot = std::make_unique<Slot>();
      slot->connection = connections_[static_cast<size_t>(i) % connections_.size()].get();
      slots_.push_back(std::move(slot));
    }
    // Constant headers, built once (nghttp2 copies them into its encoder).
    AddHeader(":method", "POST");
    scheme_index_ = headers_.size();
    AddHeader(":scheme", "http");
    AddHeader(":path", method_);
    authority_index_ = headers_.size();
    AddHeader(":authority", "");
    AddHeader("content-type", "application/grpc");
    AddHeader("te", "trailers");
    AddHeader("user-agent", "omnirelay-benchmark");
    AddHeader("rpc-caller", options.caller);
    if (!options.service.empty()) AddHeader("rpc-service", options.service);
    if (!options.encoding.empty()) AddHeader("rpc-encoding", options.encoding);
    if (!options.shard_key.empty()) AddHeader("rpc-shard-key", options.shard_key);
    if (!options.routing_key.empty()) AddHeader("rpc-routing-key", options.routing_key);
    for (const auto& [name, value] : options.headers) AddHeader(name, value);
  }

  ~Worker() {
    for (auto& connection : connections_) Close(*connection);
    if (epoll_fd_ >= 0) ::close(epoll_fd_);
  }

  void Run() {
    if (tls_context_ != nullptr) {
      // OpenSSL writes with write(2), not send(MSG_NOSIGNAL): a peer that
      // closed (e.g. an mTLS server refusing us) would SIGPIPE the process.
      // Blocked on this thread (ours, ending with the run), the write fails
      // EPIPE instead and the connection closes like any other error.
      sigset_t pipe;
      sigemptyset(&pipe);
      sigaddset(&pipe, SIGPIPE);
      pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
    }
    epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
    for (auto& slot : slots_) ready_.push_back(slot.get());
    int active = static_cast<int>(slots_.size());
    bool cancelled = false;
    std::vector<epoll_event> events(64);
    while (active > 0) {
      // Start every slot that is ready for its next call.
      while (!ready_.empty()) {
        Slot* slot = ready_.back();
        ready_.pop_back();
        if (cancelled || !Schedule(slot)) {
          slot->active = false;
          --active;
        }
      }
      if (active == 0) break;
      for (auto& connection : connections_) Flush(*connection);
      const auto now = SteadyClock::now();
      auto wake = now + std::chrono::milliseconds(100);
      if (options_.rps > 0 || uses_deadlines_) {
        for (auto& slot : slots_) {
          if (slot->waiting) wake = std::min(wake, slot->ticket.due);
          if (slot->stream_id >= 0 && slot->has_deadline) wake = std::min(wake, slot->deadline);
        }
      }
      const int timeout_ms = static_cast<int>(std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count() +
                 (wake > now ? 1 : 0)));
      const int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()),
                                 ready_.empty() ? timeout_ms : 0);
      for (int i = 0; i < n; ++i) {
        auto* connection = static_cast<Connection*>(events[i].data.ptr);
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) Read(*connection);
        if (connection->fd >= 0 && (events[i].events & EPOLLOUT)) Flush(*connection);
      }
      if (options_.rps > 0 || uses_deadlines_) Timers(SteadyClock::now());
      if (!cancelled && SteadyClock::now() > state_.end() + kDrainGrace) {
        // Past the end plus a grace period: abandon what is still in flight.
        cancelled = true;
        for (auto& slot : slots_) {
          if (!slot->active) continue;
          if (slot->stream_id >= 0) Abandon(*slot);
          slot->waiting = false;
          ready_.push_back(slot.get());
        }
      }
    }
    for (auto& connection : connections_) Flush(*connection);
  }

 private:
  void AddHeader(std::string name, std::string value) {
    std::transform(name.begin(), name.end(), name.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    header_storage_.push_back(
        std::make_unique<std::pair<std::string, std::string>>(std::move(name), std::move(value)));
    headers_.push_back({});
    RebuildHeaders();
  }

  void RebuildHeaders() {
    for (size_t i = 0; i < headers_.size(); ++i) {
      auto& [name, value] = *header_storage_[i];
      headers_[i] = nghttp2_nv{reinterpret_cast<uint8_t*>(name.data()),
                               reinterpret_cast<uint8_t*>(value.data()), name.size(), value.size(),
                               NGHTTP2_NV_FLAG_NONE};
    }
  }

  // Takes the slot's next ticket; sends now or waits for its due time.
  bool Schedule(Slot* slot) {
    slot->ticket = state_.Next();
    if (slot->ticket.stop) return false;
    if (slot->ticket.due > SteadyClock::now()) {
      slot->waiting = true;
    } else {
      Send(slot);
    }
    return true;
  }

  void Timers(SteadyClock::time_point now) {
    for (auto& slot : slots_) {
      if (slot->waiting && slot->ticket.due <= now) {
        slot->waiting = false;
        Send(slot.get());
      } else if (slot->stream_id >= 0 && slot->has_deadline && slot->deadline <= now) {
        Abandon(*slot);
        Finish(*slot, absl::StatusCode::kDeadlineExceeded, "Deadline Exceeded");
      }
    }
  }

  // Forgets the slot's stream: reset it and ignore whatever arrives for it.
  void Abandon(Slot& slot) {
    Connection& connection = *slot.connection;
    if (connection.session != nullptr) {
      nghttp2_session_set_stream_user_data(connection.session, slot.stream_id, nullptr);
      nghttp2_submit_rst_stream(connection.session, NGHTTP2_FLAG_NONE, slot.stream_id,
                                NGHTTP2_CANCEL);
    }
    slot.stream_id = -1;
  }

  // Records the slot's outcome and queues its next call.
  void Finish(Slot& slot, absl::StatusCode code, std::string_view message) {
    slot.stream_id = -1;
    state_.Record(slot.ticket, code, message);
    ready_.push_back(&slot);
  }

  void Send(Slot* slot) {
    slot->has_deadline = false;
    std::optional<std::string> timeout;
    if (uses_deadlines_) {
      if (auto deadline = state_.RequestDeadline()) {
        const auto remaining = *deadline - std::chrono::system_clock::now();
        if (remaining <= std::chrono::nanoseconds::zero()) {
          // Like a gRPC client: a call whose deadline has passed is never sent.
          Finish(*slot, absl::StatusCode::kDeadlineExceeded, "Deadline Exceeded");
          return;
        }
        slot->has_deadline = true;
        slot->deadline =
            SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(remaining);
        timeout = GrpcTimeout(remaining);
      }
    }
    Connection& connection = *slot->connection;
    if (connection.session == nullptr && !Connect(connection)) {
      Finish(*slot, absl::StatusCode::kUnavailable, connection.last_error);
      return;
    }
    headers_[authority_index_].value =
        reinterpret_cast<uint8_t*>(const_cast<char*>(connection.target->authority.data()));
    headers_[authority_index_].valuelen = connection.target->authority.size();
    static constexpr std::string_view kHttp = "http", kHttps = "https";
    const std::string_view scheme = connection.ssl != nullptr ? kHttps : kHttp;
    headers_[scheme_index_].value = reinterpret_cast<uint8_t*>(const_cast<char*>(scheme.data()));
    headers_[scheme_index_].valuelen = scheme.size();
    nghttp2_nv* nva = headers_.data();
    size_t nvlen = headers_.size();
    std::vector<nghttp2_nv>* with_timeout = nullptr;
    if (timeout) {
      timeout_headers_.assign(headers_.begin(), headers_.end());
      timeout_headers_.push_back(nghttp2_nv{
          reinterpret_cast<uint8_t*>(const_cast<char*>("grpc-timeout")),
          reinterpret_cast<uint8_t*>(timeout->data()), 12, timeout->size(), NGHTTP2_NV_FLAG_NONE});
      with_timeout = &timeout_headers_;
      nva = with_timeout->data();
      nvlen = with_timeout->size();
    }
    slot->http_status = 0;
    slot->has_grpc_status = false;
    slot->grpc_message.clear();
    slot->body_offset = 0;
    nghttp2_data_provider provider;
    provider.source.ptr = slot;
    provider.read_callback = &Worker::ReadBody;
    const int32_t stream_id =
        nghttp2_submit_request(connection.session, nullptr, nva, nvlen, &provider, slot);
    if (stream_id < 0) {
      // Stream ids exhausted or the session is going away: start over on a
      // new connection next time.
      connection.last_error = nghttp2_strerror(stream_id);
      Close(connection);
      Finish(*slot, absl::StatusCode::kUnavailable, connection.last_error);
      return;
    }
    slot->stream_id = stream_id;
  }

  static ssize_t ReadBody(nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                          uint32_t* data_flags, nghttp2_data_source* source, void*) {
    auto* slot = static_cast<Slot*>(source->ptr);
    const std::string& body = slot->connection->worker->body_;
    const size_t n = std::min(length, body.size() - slot->body_offset);
    std::memcpy(buf, body.data() + slot->body_offset, n);
    slot->body_offset += n;
    if (slot->body_offset == body.size()) *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return static_cast<ssize_t>(n);
  }

  bool Connect(Connection& connection) {
    if (SteadyClock::now() < connection.retry_at) return false;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(connection.target->host.c_str(), connection.target->port.c_str(),
                                 &hints, &found);
    if (rc != 0) {
      return Failed(connection, std::string("cannot resolve ") + connection.target->authority +
                                    ": " + gai_strerror(rc));
    }
    int fd = -1;
    std::string error = "connection refused";
    for (addrinfo* ai = found; ai != nullptr && fd < 0; ai = ai->ai_next) {
      fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) continue;
      if (::connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        error = std::strerror(errno);
        ::close(fd);
        fd = -1;
        continue;
      }
      pollfd p{fd, POLLOUT, 0};
      int soerr = 0;
      socklen_t len = sizeof(soerr);
      if (::poll(&p, 1, 5000) != 1 || ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 ||
          soerr != 0) {
        error = soerr ? std::strerror(soerr) : "connect timed out";
        ::close(fd);
        fd = -1;
      }
    }
    ::freeaddrinfo(found);
    if (fd < 0) {
      return Failed(connection,
                    "failed to connect to " + connection.target->authority + ": " + error);
    }
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connection.target->tls) {
      std::string why;
      connection.ssl = Handshake(fd, *connection.target, &why);
      if (connection.ssl == nullptr) {
        ::close(fd);
        return Failed(connection,
                      "TLS handshake with " + connection.target->authority + " failed: " + why);
      }
    }
    connection.fd = fd;

    nghttp2_session_callbacks* callbacks = nullptr;
    nghttp2_session_callbacks_new(&callbacks);
    nghttp2_session_callbacks_set_on_header_callback(callbacks, &Worker::OnHeader);
    nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, &Worker::OnStreamClose);
    nghttp2_session_client_new(&connection.session, callbacks, &connection);
    nghttp2_session_callbacks_del(callbacks);
    // Large windows: a benchmark should not wait for WINDOW_UPDATEs.
    const nghttp2_settings_entry settings[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (1u << 24)},
    };
    nghttp2_submit_settings(connection.session, NGHTTP2_FLAG_NONE, settings, 2);
    nghttp2_session_set_local_window_size(connection.session, NGHTTP2_FLAG_NONE, 0, 1 << 30);

    epoll_event event{};
    event.events = EPOLLIN;
    event.data.ptr = &connection;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event);
    connection.want_out = false;
    return true;
  }

  // Runs the client handshake on the connected non-blocking socket (bounded
  // by kHandshakeTimeout): the server's chain must verify against the
  // context's CA and its certificate must match the host (IP SAN for an
  // address), and ALPN must select h2. Returns the SSL or null with `why`.
  SSL* Handshake(int fd, const Target& target, std::string* why) {
    ERR_clear_error();
    SSL* ssl = SSL_new(tls_context_);
    if (ssl == nullptr) {
      *why = "cannot create a TLS session";
      return nullptr;
    }
    SSL_set_fd(ssl, fd);
    // The output buffer is appended to between retries of a partial write.
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (X509_VERIFY_PARAM_set1_ip_asc(param, target.host.c_str()) != 1) {
      SSL_set_tlsext_host_name(ssl, target.host.c_str());  // SNI for names only
      SSL_set1_host(ssl, target.host.c_str());
    }
    SSL_set_connect_state(ssl);
    const auto deadline = SteadyClock::now() + kHandshakeTimeout;
    for (;;) {
      const int rc = SSL_do_handshake(ssl);
      if (rc == 1) break;
      const int error = SSL_get_error(ssl, rc);
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now())
              .count();
      if ((error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) && left > 0) {
        pollfd p{fd, static_cast<short>(error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
        ::poll(&p, 1, static_cast<int>(left));
        continue;
      }
      char text[256] = "handshake timed out";
      if (left > 0) {
        if (const unsigned long code = ERR_peek_last_error(); code != 0) {
          ERR_error_string_n(code, text, sizeof(text));
        } else {
          std::snprintf(text, sizeof(text), "connection closed during handshake");
        }
      }
      // The verification result in words when that is what failed.
      *why = tls::HandshakeFailure(ssl, text);
      SSL_free(ssl);
      return nullptr;
    }
    const unsigned char* alpn = nullptr;
    unsigned int alpn_length = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_length);
    if (alpn_length != 2 || std::memcmp(alpn, "h2", 2) != 0) {
      *why = "the server did not select HTTP/2 (ALPN h2)";
      SSL_free(ssl);
      return nullptr;
    }
    return ssl;
  }

  bool Failed(Connection& connection, std::string error) {
    connection.last_error = std::move(error);
    connection.retry_at = SteadyClock::now() + kReconnectDelay;
    return false;
  }

  // Tears the connection down; calls in flight on it fail UNAVAILABLE.
  void Close(Connection& connection) {
    if (connection.session != nullptr) {
      nghttp2_session_del(connection.session);  // no callbacks from here
      connection.session = nullptr;
    }
    if (connection.ssl != nullptr) {
      SSL_free(connection.ssl);  // no close_notify: the socket closes next
      connection.ssl = nullptr;
    }
    if (connection.fd >= 0) {
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, connection.fd, nullptr);
      ::close(connection.fd);
      connection.fd = -1;
    }
    connection.output.clear();
    connection.want_out = false;
    if (connection.last_error.empty()) connection.last_error = "connection closed";
    for (auto& slot : slots_) {
      if (slot->connection == &connection && slot->stream_id >= 0) {
        Finish(*slot, absl::StatusCode::kUnavailable, connection.last_error);
      }
    }
  }

  // Feeds received bytes to nghttp2; false after closing the connection on
  // an HTTP/2 protocol error.
  bool Receive(Connection& connection, const uint8_t* data, size_t length) {
    const ssize_t used = nghttp2_session_mem_recv(connection.session, data, length);
    if (used >= 0) return true;
    connection.last_error =
        std::string("HTTP/2 error: ") + nghttp2_strerror(static_cast<int>(used));
    Close(connection);
    return false;
  }

  void Read(Connection& connection) {
    uint8_t buffer[65536];
    for (;;) {
      if (connection.ssl != nullptr) {
        // Until OpenSSL wants more bytes: it may hold decrypted data the
        // socket no longer signals.
        const int n = SslIo(connection, /*write=*/false, buffer, sizeof(buffer));
        if (n < 0) return;  // closed
        if (n == 0) break;  // wants more
        if (!Receive(connection, buffer, static_cast<size_t>(n))) return;
        continue;
      }
      const ssize_t n = ::read(connection.fd, buffer, sizeof(buffer));
      if (n > 0) {
        if (!Receive(connection, buffer, static_cast<size_t>(n))) return;
        if (static_cast<size_t>(n) < sizeof(buffer)) break;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      if (n < 0 && errno == EINTR) continue;
      connection.last_error = n == 0 ? "connection closed by peer" : std::strerror(errno);
      Close(connection);
      return;
    }
    Flush(connection);  // SETTINGS acks, WINDOW_UPDATEs, new requests
  }

  void Flush(Connection& connection) {
    if (connection.session == nullptr) return;
    for (;;) {
      const uint8_t* data = nullptr;
      const ssize_t n = nghttp2_session_mem_send(connection.session, &data);
      if (n < 0) {
        connection.last_error = nghttp2_strerror(static_cast<int>(n));
        Close(connection);
        return;
      }
      if (n == 0) break;
      connection.output.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
    while (!connection.output.empty() && connection.ssl != nullptr) {
      const int n =
          SslIo(connection, /*write=*/true, reinterpret_cast<uint8_t*>(connection.output.data()),
                std::min<size_t>(connection.output.size(), 1 << 20));
      if (n < 0) return;  // closed
      if (n == 0) break;  // wait for EPOLLOUT
      connection.output.erase(0, static_cast<size_t>(n));
    }
    while (!connection.output.empty() && connection.ssl == nullptr) {
      const ssize_t n =
          ::send(connection.fd, connection.output.data(), connection.output.size(), MSG_NOSIGNAL);
      if (n > 0) {
        connection.output.erase(0, static_cast<size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      connection.last_error = std::strerror(errno);
      Close(connection);
      return;
    }
    const bool want_out = !connection.output.empty();
    if (want_out != connection.want_out) {
      epoll_event event{};
      event.events = want_out ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
      event.data.ptr = &connection;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, connection.fd, &event);
      connection.want_out = want_out;
    }
    if (!nghttp2_session_want_read(connection.session) &&
        !nghttp2_session_want_write(connection.session) && connection.output.empty()) {
      // GOAWAY received and every stream done: reconnect on the next call.
      connection.last_error = "connection closed (GOAWAY)";
      Close(connection);
    }
  }

  // One SSL_read/SSL_write: bytes moved (> 0), 0 when OpenSSL must wait for
  // the socket, -1 after closing the connection on an error or a close.
  int SslIo(Connection& connection, bool write, uint8_t* data, size_t length) {
    ERR_clear_error();
    const int n = write ? SSL_write(connection.ssl, data, static_cast<int>(length))
                        : SSL_read(connection.ssl, data, static_cast<int>(length));
    if (n > 0) return n;
    const int error = SSL_get_error(connection.ssl, n);
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) return 0;
    if (error == SSL_ERROR_ZERO_RETURN) {
      connection.last_error = "connection closed by peer";
    } else {
      char text[256] = "TLS connection failed";
      if (const unsigned long code = ERR_peek_last_error(); code != 0) {
        ERR_error_string_n(code, text, sizeof(text));
      } else if (error == SSL_ERROR_SYSCALL) {
        std::snprintf(text, sizeof(text), "%s",
                      errno != 0 ? std::strerror(errno) : "connection closed by peer");
      }
      connection.last_error = text;
    }
    Close(connection);
    return -1;
  }

  static int OnHeader(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name,
                      size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void*) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    auto* slot =
        static_cast<Slot*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
    if (slot == nullptr) return 0;
    const std::string_view key(reinterpret_cast<const char*>(name), namelen);
    const std::string_view text(reinterpret_cast<const char*>(value), valuelen);
    if (key == ":status") {
      slot->http_status = std::atoi(std::string(text).c_str());
    } else if (key == "grpc-status") {
      slot->has_grpc_status = true;
      slot->grpc_status = std::atoi(std::string(text).c_str());
    } else if (key == "grpc-message") {
      slot->grpc_message = PercentDecode(text);
    }
    return 0;
  }

  static int OnStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                           void* user_data) {
    auto* slot = static_cast<Slot*>(nghttp2_session_get_stream_user_data(session, stream_id));
    if (slot == nullptr || slot->stream_id != stream_id) return 0;  // abandoned
    Worker& worker = *static_cast<Connection*>(user_data)->worker;
    absl::StatusCode code;
    std::string message;
    if (slot->has_grpc_status) {
      code = static_cast<absl::StatusCode>(slot->grpc_status);
      message = std::move(slot->grpc_message);
    } else if (error_code != NGHTTP2_NO_ERROR) {
      code = FromH2Error(error_code);
      message = std::string("stream reset: ") + nghttp2_http2_strerror(error_code);
    } else if (slot->http_status != 200) {
      code = core::GrpcStatusFromHttp(slot->http_status);
      message = "HTTP status " + std::to_string(slot->http_status);
    } else {
      code = absl::StatusCode::kUnknown;
      message = "response without grpc-status";
    }
    worker.Finish(*slot, code, message);
    return 0;
  }

  const LoadOptions& options_;
  LoadState& state_;
  SSL_CTX* tls_context_;  // shared by the workers, owned by RunGrpcLoad; null without TLS
  const std::string& body_;
  const std::string method_;
  const bool uses_deadlines_;
  int epoll_fd_ = -1;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Slot>> slots_;
  std::vector<Slot*> ready_;
  std::vector<std::unique_ptr<std::pair<std::string, std::string>>> header_storage_;
  std::vector<nghttp2_nv> headers_;
  std::vector<nghttp2_nv> timeout_headers_;
  size_t authority_index_ = 0;
  size_t scheme_index_ = 0;
};

}  // namespace

absl::StatusOr<LoadReport> RunGrpcLoad(const LoadOptions& options, LoadState& state) {
  std::vector<Target> targets;
  bool any_tls = false;
  for (const std::string& address : options.addresses) {
    auto target = ParseTarget(address, options.tls.has_value());
    if (!target.ok()) return target.status();
    any_tls = any_tls || target->tls;
    targets.push_back(*std::move(target));
  }
  // One client context for every connection (SSL_CTX is safe to share
  // across threads for creating sessions); no reload during a run.
  std::shared_ptr<boost::asio::ssl::context> tls_context;
  if (any_tls) {
    const tls::TlsOptions tls_options = options.tls.value_or(tls::TlsOptions{});
    if (auto status = tls::Validate(tls_options, /*need_identity=*/false); !status.ok()) {
      return absl::InvalidArgumentError("--tls-*: " + std::string(status.message()));
    }
    auto context = tls::MakeContext(tls_options, tls::Role::kClient);
    if (!context.ok()) return context.status();
    tls_context = *std::move(context);
    static constexpr unsigned char kAlpnH2[] = {2, 'h', '2'};
    SSL_CTX_set_alpn_protos(tls_context->native_handle(), kAlpnH2, sizeof(kAlpnH2));
  }
  // The gRPC message: flag 0 (uncompressed), 4-byte big-endian length, body.
  std::string framed(5, '\0');
  const auto length = static_cast<uint32_t>(options.body.size());
  framed[1] = static_cast<char>(length >> 24);
  framed[2] = static_cast<char>(length >> 16);
  framed[3] = static_cast<char>(length >> 8);
  framed[4] = static_cast<char>(length);
  framed += options.body;

  int threads =
      options.threads > 0
          ? options.threads
          : static_cast<int>(std::min(2u, std::max(1u, std::thread::hardware_concurrency())));
  threads = std::min(threads, options.concurrency);
  // `connections` TCP connections per address, spread over the threads; a
  // thread with none of an address's share opens one of its own (a
  // connection belongs to one thread's event loop).
  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < threads; ++t) {
    const int slots = options.concurrency / threads + (t < options.concurrency % threads ? 1 : 0);
    std::vector<const Target*> mine;
    for (const Target& target : targets) {
      int count = options.connections / threads + (t < options.connections % threads ? 1 : 0);
      for (int c = 0; c < std::max(count, 1); ++c) mine.push_back(&target);
    }
    workers.push_back(std::make_unique<Worker>(
        options, state, mine, slots, framed, tls_context ? tls_context->native_handle() : nullptr));
  }
  state.StartClock();
  std::atomic<bool> done{false};
  std::thread progress([&] { state.ReportProgressUntil(done); });
  std::vector<std::thread> running;
  for (auto& worker : workers) running.emplace_back([&worker] { worker->Run(); });
  for (auto& thread : running) thread.join();
  done = true;
  progress.join();
  return state.BuildReport();
}

}  // namespace omnirelay::benchmark
