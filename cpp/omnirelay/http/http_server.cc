#include "omnirelay/http/http_server.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <future>
#include <limits>

#include "omnirelay/core/logging.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::http {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string UrlDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%' && i + 2 < text.size() && HexValue(text[i + 1]) >= 0 &&
               HexValue(text[i + 2]) >= 0) {
      out += static_cast<char>(HexValue(text[i + 1]) * 16 + HexValue(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

// The layer synchronous writes (streamed replies) go through.
tcp::socket& SyncLayer(beast::tcp_stream& stream) { return stream.socket(); }
beast::ssl_stream<beast::tcp_stream>& SyncLayer(beast::ssl_stream<beast::tcp_stream>& stream) {
  return stream;
}

// The answer to a request the parser refused (see HttpLimits).
int StatusForParseError(const beast::error_code& ec) {
  if (ec == bhttp::error::header_limit) return 431;
  if (ec == bhttp::error::body_limit) return 413;
  return 400;
}

// Errors after which nothing can be answered: the peer went away or stalled.
bool IsDisconnect(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == bhttp::error::partial_message ||
         ec == beast::error::timeout || ec == asio::error::eof ||
         ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
         ec == asio::error::broken_pipe || ec == asio::error::not_connected;
}

void ConfigureParser(bhttp::request_parser<bhttp::string_body>& parser, const HttpLimits& limits) {
  parser.header_limit(static_cast<std::uint32_t>(
      std::min<size_t>(limits.max_header_bytes, std::numeric_limits<std::uint32_t>::max())));
  parser.body_limit(limits.max_body_bytes);
}

// Fills `request` in place: inside the Serve coroutine a by-value
// HttpRequest return (with its PeerIdentity member) trips GCC 12's coroutine
// temporaries handling (double destruction), so the loop fills a frame local.
void FillHttpRequest(bhttp::request<bhttp::string_body>& raw, const std::string& remote,
                     HttpRequest& request) {
  request.method = std::string(raw.method_string());
  request.target = std::string(raw.target());
  const size_t q = request.target.find('?');
  request.path = request.target.substr(0, q);
  if (q != std::string::npos) request.query = request.target.substr(q + 1);
  for (const auto& field : raw) {
    request.headers.Add(std::string(field.name_string()), std::string(field.value()));
  }
  request.body = std::move(raw.body());
  request.remote_address = remote;
}

HttpRequest ToHttpRequest(bhttp::request<bhttp::string_body>& raw, std::string remote) {
  HttpRequest request;
  FillHttpRequest(raw, remote, request);
  return request;
}

}  // namespace

ParsedRequest ParseHttpRequest(std::string_view bytes, const HttpLimits& limits) {
  ParsedRequest out;
  bhttp::request_parser<bhttp::string_body> parser;
  ConfigureParser(parser, limits);
  parser.eager(true);
  beast::error_code ec;
  while (!bytes.empty() && !parser.is_done()) {
    const size_t used = parser.put(asio::buffer(bytes.data(), bytes.size()), ec);
    if (ec == bhttp::error::need_more) return out;  // incomplete, not an error
    if (ec) {
      out.error_status = StatusForParseError(ec);
      out.error = ec.message();
      return out;
    }
    if (used == 0) break;
    bytes.remove_prefix(used);
  }
  if (!parser.is_done()) return out;
  out.complete = true;
  out.request = ToHttpRequest(parser.get(), "");
  return out;
}

std::optional<std::string> HttpRequest::QueryParam(std::string_view name) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    const size_t amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (UrlDecode(pair.substr(0, eq)) == name) {
      return eq == std::string_view::npos ? std::string() : UrlDecode(pair.substr(eq + 1));
    }
  }
  return std::nullopt;
}

HttpResponse HttpResponse::Text(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.body = std::move(body);
  return response;
}

HttpResponse HttpResponse::Json(int status, std::string body) {
  HttpResponse response;
  response.status = status;
  response.content_type = "application/json";
  response.body = std::move(body);
  return response;
}

// Coroutines are member functions (not capturing lambdas): a coroutine
// lambda's captures die with the lambda object, before the coroutine resumes.
struct HttpServer::Impl {
  explicit Impl(HttpServer* owner) : server(owner) {}
  asio::awaitable<void> AcceptLoop();
  asio::awaitable<void> Session(tcp::socket socket);
  // The request loop over a plain or TLS stream.
  template <class Stream>
  // Parameters by reference: the caller's frame outlives the awaited call,
  // and GCC 12 double-destroys coroutine parameters made from temporaries.
  asio::awaitable<void> Serve(Stream& stream, const std::string& remote, bool secure,
                              const tls::PeerIdentity& peer);

  HttpServer* server;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work{io.get_executor()};
  tcp::acceptor acceptor{io};
  std::atomic<bool> stopping{false};
};

asio::awaitable<void> HttpServer::Impl::Session(tcp::socket socket) {
  std::string remote;
  beast::error_code ep_ec;
  auto remote_ep = socket.remote_endpoint(ep_ec);
  if (!ep_ec) remote = remote_ep.address().to_string() + ":" + std::to_string(remote_ep.port());
  if (!server->options_.tls) {
    beast::tcp_stream stream(std::move(socket));
    const tls::PeerIdentity anonymous;
    co_await Serve(stream, remote, false, anonymous);
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    co_return;
  }
  // TLS: the context current at accept time lives as long as the connection.
  tls::ContextSource& source = *server->options_.tls;
  std::shared_ptr<asio::ssl::context> context = source.Current();
  beast::ssl_stream<beast::tcp_stream> stream(beast::tcp_stream(std::move(socket)), *context);
  // A client that connects and never handshakes must not hold the slot.
  stream.next_layer().expires_after(std::chrono::seconds(10));
  beast::error_code ec;
  co_await stream.async_handshake(asio::ssl::stream_base::server,
                                  asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    const std::string reason = tls::HandshakeFailure(stream.native_handle(), ec.message());
    source.NoteHandshakeFailure(reason);
    core::LogWarn("http.tls_handshake_failed", {{"remote", remote}, {"reason", reason}});
    co_return;
  }
  stream.next_layer().expires_never();
  tls::PeerIdentity peer = tls::PeerOf(stream.native_handle());
  co_await Serve(stream, remote, true, peer);
  stream.next_layer().expires_after(std::chrono::seconds(1));  // close_notify, bounded
  co_await stream.async_shutdown(asio::redirect_error(asio::use_awaitable, ec));
}

template <class Stream>
asio::awaitable<void> HttpServer::Impl::Serve(Stream& stream, const std::string& remote,
                                              bool secure, const tls::PeerIdentity& peer) {
  beast::flat_buffer buffer;
  HttpLimits limits = server->options_.limits;
  limits.max_body_bytes = std::min(limits.max_body_bytes, server->options_.max_body_bytes);
  for (;;) {
    bhttp::request_parser<bhttp::string_body> parser;
    ConfigureParser(parser, limits);
    // Headers, then body, each under its own timeout (slowloris); the stream
    // closes the socket when one expires.
    beast::error_code read_ec;
    beast::get_lowest_layer(stream).expires_after(limits.header_timeout);
    co_await bhttp::async_read_header(stream, buffer, parser,
                                      asio::redirect_error(asio::use_awaitable, read_ec));
    if (!read_ec && !parser.is_done()) {
      beast::get_lowest_layer(stream).expires_after(limits.body_timeout);
      co_await bhttp::async_read(stream, buffer, parser,
                                 asio::redirect_error(asio::use_awaitable, read_ec));
    }
    beast::get_lowest_layer(stream).expires_never();
    if (read_ec) {
      if (IsDisconnect(read_ec)) break;
      // Malformed or over a limit: say which, then close (the rest of the
      // request cannot be framed reliably).
      const int status = StatusForParseError(read_ec);
      bhttp::response<bhttp::string_body> refusal(static_cast<bhttp::status>(status), 11);
      refusal.set(bhttp::field::server, "omnirelay");
      refusal.set(bhttp::field::content_type, "text/plain; charset=utf-8");
      refusal.keep_alive(false);
      refusal.body() =
          std::string(bhttp::obsolete_reason(refusal.result())) + ": " + read_ec.message() + "\n";
      refusal.prepare_payload();
      beast::error_code ignored;
      beast::get_lowest_layer(stream).expires_after(limits.header_timeout);
      co_await bhttp::async_write(stream, refusal,
                                  asio::redirect_error(asio::use_awaitable, ignored));
      break;
    }
    auto& raw = parser.get();
    server->active_requests_.fetch_add(1);
    HttpRequest request;
    FillHttpRequest(raw, remote, request);
    request.secure = secure;
    request.peer = peer;

    HttpResponse reply;
    try {
      reply = server->Dispatch(request);
    } catch (const std::exception& error) {  // a handler bug must not kill the server
      core::LogError("http.handler_exception", {{"path", request.path}, {"error", error.what()}});
      reply = HttpResponse::Text(500, "internal error\n");
    }
    if (reply.stream) {
      // Streamed reply: synchronous chunk writes on this worker thread.
      bhttp::response<bhttp::empty_body> head(static_cast<bhttp::status>(reply.status),
                                              raw.version());
      head.set(bhttp::field::server, "omnirelay");
      head.set(bhttp::field::content_type, reply.content_type);
      for (const auto& [name, value] : reply.headers.entries()) head.set(name, value);
      head.chunked(true);
      head.keep_alive(false);
      bhttp::response_serializer<bhttp::empty_body> serializer(head);
      beast::error_code stream_ec;
      bhttp::write_header(SyncLayer(stream), serializer, stream_ec);
      if (!stream_ec) {
        auto& socket = SyncLayer(stream);
        std::function<bool(std::string_view)> write = [&socket](std::string_view chunk) {
          if (chunk.empty()) return true;
          beast::error_code ec;
          asio::write(socket, bhttp::make_chunk(asio::buffer(chunk.data(), chunk.size())), ec);
          return !ec;
        };
        try {
          reply.stream(write);
        } catch (const std::exception& error) {
          core::LogError("http.stream_exception",
                         {{"path", request.path}, {"error", error.what()}});
        }
        asio::write(socket, bhttp::make_chunk_last(), stream_ec);
      }
      server->active_requests_.fetch_sub(1);
      break;
    }
    bhttp::response<bhttp::string_body> response(static_cast<bhttp::status>(reply.status),
                                                 raw.version());
    response.set(bhttp::field::server, "omnirelay");
    response.set(bhttp::field::content_type, reply.content_type);
    for (const auto& [name, value] : reply.headers.entries()) response.set(name, value);
    const bool keep_alive = raw.keep_alive() && !stopping.load();
    response.keep_alive(keep_alive);
    response.body() = std::move(reply.body);
    response.prepare_payload();
    beast::error_code write_ec;
    co_await bhttp::async_write(stream, response,
                                asio::redirect_error(asio::use_awaitable, write_ec));
    server->active_requests_.fetch_sub(1);
    if (write_ec || !keep_alive) break;
  }
}

asio::awaitable<void> HttpServer::Impl::AcceptLoop() {
  for (;;) {
    beast::error_code accept_ec;
    // One strand per connection: with several io threads, a tcp_stream's
    // timeout handler and the session coroutine must never run at once
    // (Beast's rule; TSan caught the close racing the timer).
    auto strand = asio::make_strand(io);
    tcp::socket socket = co_await acceptor.async_accept(
        strand, asio::redirect_error(asio::use_awaitable, accept_ec));
    if (accept_ec) {
      if (stopping.load() || accept_ec == asio::error::operation_aborted) co_return;
      continue;  // e.g. EMFILE: keep serving the connections we have
    }
    socket.set_option(tcp::no_delay(true));
    asio::co_spawn(strand, Session(std::move(socket)), asio::detached);
  }
}

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), impl_(std::make_unique<Impl>(this)) {
  fallback_ = [](const HttpRequest& request) {
    return HttpResponse::Text(404, "no route for " + request.path + "\n");
  };
}

HttpServer::~HttpServer() { Stop(); }

void HttpServer::Route(std::string method, std::string path, HttpHandler handler) {
  if (!path.empty() && path.back() == '/' && path != "/") {
    prefixes_.push_back({{std::move(method), std::move(path)}, std::move(handler)});
    // Longest prefix first so lookups can stop at the first match.
    std::sort(prefixes_.begin(), prefixes_.end(), [](const auto& a, const auto& b) {
      return a.first.second.size() > b.first.second.size();
    });
  } else {
    exact_[{std::move(method), std::move(path)}] = std::move(handler);
  }
}

void HttpServer::Fallback(HttpHandler handler) { fallback_ = std::move(handler); }

HttpResponse HttpServer::Dispatch(const HttpRequest& request) const {
  for (const std::string& method : {request.method, std::string()}) {
    auto it = exact_.find({method, request.path});
    if (it != exact_.end()) return it->second(request);
  }
  for (const auto& [key, handler] : prefixes_) {
    if ((key.first.empty() || key.first == request.method) &&
        request.path.starts_with(key.second)) {
      return handler(request);
    }
  }
  return fallback_(request);
}

std::string HttpServer::address() const { return options_.host + ":" + std::to_string(port()); }

absl::Status HttpServer::Start() {
  beast::error_code ec;
  auto address = asio::ip::make_address(options_.host, ec);
  if (ec) return absl::InvalidArgumentError("bad listen host '" + options_.host + "'");
  tcp::endpoint endpoint(address, options_.port);
  auto& acceptor = impl_->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return absl::UnavailableError("cannot listen on " + options_.host + ":" +
                                  std::to_string(options_.port) + ": " + ec.message());
  }
  bound_port_ = acceptor.local_endpoint().port();
  running_ = true;

  asio::co_spawn(impl_->io, impl_->AcceptLoop(), asio::detached);

  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    workers_.emplace_back([this] { impl_->io.run(); });
  }
  return absl::OkStatus();
}

void HttpServer::Stop() {
  if (!running_.exchange(false)) return;
  impl_->stopping = true;
  // Close the listener on the io thread (acceptor ops are not thread-safe) and
  // wait for it, so no connection lands in a backlog nobody will accept.
  std::promise<void> closed;
  asio::post(impl_->io, [this, &closed] {
    beast::error_code ignored;
    impl_->acceptor.close(ignored);
    closed.set_value();
  });
  closed.get_future().wait();
  // Let in-flight requests finish writing their replies.
  const auto give_up = std::chrono::steady_clock::now() + options_.drain_timeout;
  while (active_requests_.load() > 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  impl_->work.reset();
  impl_->io.stop();  // idle keep-alive connections are abandoned here
  for (auto& worker : workers_) worker.join();
  workers_.clear();
}

namespace {

// One request/response over a connected plain or TLS stream.
template <class Stream>
absl::StatusOr<HttpClientResult> Exchange(Stream& stream, const std::string& host,
                                          const std::string& method, const std::string& target,
                                          const std::string& body, const core::Headers& headers) {
  beast::error_code ec;
  bhttp::request<bhttp::string_body> request(bhttp::string_to_verb(method), target, 11);
  request.set(bhttp::field::host, host);
  for (const auto& [name, value] : headers.entries()) request.set(name, value);
  request.body() = body;
  request.prepare_payload();
  bhttp::write(stream, request, ec);
  if (ec) return absl::UnavailableError("write: " + ec.message());
  beast::flat_buffer buffer;
  bhttp::response<bhttp::string_body> response;
  bhttp::read(stream, buffer, response, ec);
  if (ec == beast::error::timeout || ec == asio::error::would_block ||
      ec == asio::error::try_again) {
    return absl::DeadlineExceededError("HTTP call timed out");
  }
  if (ec && ec != asio::ssl::error::stream_truncated) {
    return absl::UnavailableError("read: " + ec.message());
  }
  HttpClientResult result;
  result.status = static_cast<int>(response.result_int());
  for (const auto& field : response) {
    result.headers.Add(std::string(field.name_string()), std::string(field.value()));
  }
  result.body = std::move(response.body());
  return result;
}

}  // namespace

absl::StatusOr<HttpClientResult> HttpCall(const std::string& host, uint16_t port,
                                          const std::string& method, const std::string& target,
                                          const std::string& body, const core::Headers& headers,
                                          std::chrono::milliseconds timeout,
                                          tls::ContextSource* tls) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.expires_after(timeout);
  tcp::resolver resolver(io);
  beast::error_code ec;
  auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec) return absl::UnavailableError("resolve " + host + ": " + ec.message());
  stream.connect(endpoints, ec);
  if (ec) {
    return absl::UnavailableError("connect " + host + ":" + std::to_string(port) + ": " +
                                  ec.message());
  }
  // The synchronous calls below ignore the stream's expiry; bound them with
  // socket timeouts so a wedged server cannot hang the caller.
  struct timeval tv;
  tv.tv_sec = timeout.count() / 1000;
  tv.tv_usec = (timeout.count() % 1000) * 1000;
  ::setsockopt(stream.socket().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(stream.socket().native_handle(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (tls == nullptr) return Exchange(stream, host, method, target, body, headers);

  std::shared_ptr<asio::ssl::context> context = tls->Current();
  beast::ssl_stream<beast::tcp_stream> secure(std::move(stream), *context);
  beast::error_code addr_ec;
  asio::ip::make_address(host, addr_ec);
  if (addr_ec) SSL_set_tlsext_host_name(secure.native_handle(), host.c_str());  // SNI for names
  secure.set_verify_callback(asio::ssl::host_name_verification(host));
  secure.handshake(asio::ssl::stream_base::client, ec);
  if (ec) {
    const std::string reason = tls::HandshakeFailure(secure.native_handle(), ec.message());
    tls->NoteHandshakeFailure(reason);
    return absl::UnavailableError("TLS handshake with " + host + ":" + std::to_string(port) +
                                  " failed: " + reason);
  }
  auto result = Exchange(secure, host, method, target, body, headers);
  secure.shutdown(ec);  // close_notify; errors (peer already closed) do not matter
  return result;
}

}  // namespace omnirelay::http
