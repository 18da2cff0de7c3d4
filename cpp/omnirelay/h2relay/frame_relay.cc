#include "omnirelay/h2relay/frame_relay.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "omnirelay/core/logging.h"

namespace omnirelay::h2relay {
namespace {

using core::TimePoint;
using Header = std::pair<std::string, std::string>;

constexpr int32_t kLocalWindow = 16 * 1024 * 1024;  // connection window we advertise
constexpr uint32_t kStreamWindow = 1024 * 1024;     // per-stream window we advertise

// Bytes with a read offset; the only place a body is copied in this file.
struct Buffer {
  std::string bytes;
  size_t offset = 0;
  size_t size() const { return bytes.size() - offset; }
  const char* data() const { return bytes.data() + offset; }
  void Append(const uint8_t* p, size_t n) { bytes.append(reinterpret_cast<const char*>(p), n); }
  void Consume(size_t n) {
    offset += n;
    if (offset == bytes.size()) {
      bytes.clear();
      offset = 0;
    }
  }
};

// grpc-timeout: 1-8 digits and a unit (H M S m u n).
std::optional<core::Duration> ParseGrpcTimeout(std::string_view v) {
  if (v.size() < 2 || v.size() > 9) return std::nullopt;
  long long n = 0;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size() - 1, n);
  if (ec != std::errc() || ptr != v.data() + v.size() - 1 || n < 0) return std::nullopt;
  using namespace std::chrono;
  switch (v.back()) {
    case 'H':
      return duration_cast<core::Duration>(hours(n));
    case 'M':
      return duration_cast<core::Duration>(minutes(n));
    case 'S':
      return duration_cast<core::Duration>(seconds(n));
    case 'm':
      return duration_cast<core::Duration>(milliseconds(n));
    case 'u':
      return duration_cast<core::Duration>(microseconds(n));
    case 'n':
      return duration_cast<core::Duration>(nanoseconds(n));
    default:
      return std::nullopt;
  }
}

std::string FormatGrpcTimeout(core::Duration remaining) {
  using namespace std::chrono;
  long long us = duration_cast<microseconds>(remaining).count();
  if (us < 1) us = 1;
  if (us < 100'000'000) return std::to_string(us) + "u";
  long long ms = us / 1000;
  if (ms < 100'000'000) return std::to_string(ms) + "m";
  return std::to_string(std::min<long long>(ms / 1000, 99'999'999)) + "S";
}

// grpc-message is percent-encoded (gRPC HTTP/2 protocol).
std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

absl::StatusCode FromResetCode(uint32_t code) {
  switch (code) {
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

struct HostPort {
  std::string host;
  int port = 0;
};

// "host:port", "[v6]:port", optionally with a scheme ("http://", "https://",
// "grpc://", "dns:///") and trailing '/', as the gRPC outbound accepts peers.
// Parsed here (not with transport's helpers) so the relay and its fuzz target
// need no HTTP/gRPC client libraries.
std::optional<HostPort> SplitTarget(std::string_view target) {
  for (std::string_view scheme : {"http://", "https://", "grpc://", "dns:///"}) {
    if (target.starts_with(scheme)) target.remove_prefix(scheme.size());
  }
  while (!target.empty() && target.back() == '/') target.remove_suffix(1);
  const size_t colon = target.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return std::nullopt;
  std::string_view host = target.substr(0, colon);
  const std::string_view port = target.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  int value = -1;
  auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (ec != std::errc() || ptr != port.data() + port.size() || value < 0 || value > 65535) {
    return std::nullopt;
  }
  return HostPort{std::string(host), value};
}

nghttp2_nv MakeNv(const std::string& name, const std::string& value) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(name.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(value.data())), name.size(),
                    value.size(), NGHTTP2_NV_FLAG_NONE};
}

void Consume(nghttp2_session* session, int32_t stream_id, size_t n) {
  if (n == 0) return;
  if (stream_id <= 0 || nghttp2_session_consume(session, stream_id, n) != 0) {
    nghttp2_session_consume_connection(session, n);
  }
}

// nghttp2's allocations for one loop's sessions (streams, outbound frames,
// header copies, HPACK buffers): size-class free lists instead of malloc.
// Why: a loop iteration opens and closes dozens of streams at once, each
// with a burst of same-sized nghttp2 allocations; glibc's per-thread cache
// holds only 7 blocks per size, so the rest went through _int_malloc/_int_free
// (~13% of the relay's CPU in the profile, docs/dataplane.md). Here a freed
// block waits on its class's list for the next stream.
//
// Thread-safety: none needed: every session using a loop's pool lives and
// dies on that loop's thread (or, after the thread is joined, in ~Loop).
// Memory: blocks over kMaxPooled bytes go straight to malloc; each class
// keeps at most kMaxCachedPerClass free blocks, so idle memory stays bounded.
class NghttpMemPool {
 public:
  NghttpMemPool() {
    mem_.mem_user_data = this;
    mem_.malloc = [](size_t n, void* self) { return static_cast<NghttpMemPool*>(self)->Alloc(n); };
    mem_.free = [](void* p, void* self) { static_cast<NghttpMemPool*>(self)->Free(p); };
    mem_.calloc = [](size_t count, size_t n, void* self) {
      return static_cast<NghttpMemPool*>(self)->Calloc(count, n);
    };
    mem_.realloc = [](void* p, size_t n, void* self) {
      return static_cast<NghttpMemPool*>(self)->Realloc(p, n);
    };
  }
  ~NghttpMemPool() {
    for (auto& head : free_) {
      while (head != nullptr) {
        FreeBlock* next = head->next;
        std::free(head);
        head = next;
      }
    }
  }
  NghttpMemPool(const NghttpMemPool&) = delete;
  NghttpMemPool& operator=(const NghttpMemPool&) = delete;
  nghttp2_mem* mem() { return &mem_; }

 private:
  // Every block starts with a 16-byte header (keeps malloc's alignment for
  // the payload) holding its class, or kLarge and the payload size.
  static constexpr size_t kHeader = 16;
  static constexpr size_t kMinPooled = 32;
  static constexpr size_t kClasses = 8;  // payloads of 32, 64, ..., 4096 bytes
  static constexpr size_t kMaxPooled = kMinPooled << (kClasses - 1);
  static constexpr uint32_t kLarge = UINT32_MAX;
  static constexpr size_t kMaxCachedPerClass = 8192;
  struct FreeBlock {
    FreeBlock* next;
  };
  struct BlockHeader {
    uint32_t size_class;
    size_t size;  // payload bytes, for kLarge
  };
  static_assert(sizeof(BlockHeader) <= kHeader);

  // The smallest class whose payload holds n bytes (n <= kMaxPooled).
  static size_t ClassOf(size_t n) {
    return n <= kMinPooled ? 0 : std::bit_width(n - 1) - std::bit_width(kMinPooled - 1);
  }
  static BlockHeader* HeaderOf(void* p) {
    return reinterpret_cast<BlockHeader*>(static_cast<char*>(p) - kHeader);
  }
  static size_t Capacity(const BlockHeader* h) {
    return h->size_class == kLarge ? h->size : kMinPooled << h->size_class;
  }

  void* Alloc(size_t n) {
    if (n > kMaxPooled) {
      auto* h = static_cast<BlockHeader*>(std::malloc(kHeader + n));
      if (h == nullptr) return nullptr;
      h->size_class = kLarge;
      h->size = n;
      return reinterpret_cast<char*>(h) + kHeader;
    }
    const size_t c = ClassOf(n);
    void* block = free_[c];
    if (block != nullptr) {
      free_[c] = free_[c]->next;
      --cached_[c];
    } else {
      block = std::malloc(kHeader + (kMinPooled << c));
      if (block == nullptr) return nullptr;
    }
    auto* h = static_cast<BlockHeader*>(block);
    h->size_class = static_cast<uint32_t>(c);
    return static_cast<char*>(block) + kHeader;
  }
  void Free(void* p) {
    if (p == nullptr) return;
    BlockHeader* h = HeaderOf(p);
    const uint32_t c = h->size_class;
    if (c == kLarge || cached_[c] >= kMaxCachedPerClass) {
      std::free(h);
      return;
    }
    auto* block = reinterpret_cast<FreeBlock*>(h);
    block->next = free_[c];
    free_[c] = block;
    ++cached_[c];
  }
  void* Calloc(size_t count, size_t n) {
    if (n != 0 && count > SIZE_MAX / n) return nullptr;
    void* p = Alloc(count * n);
    if (p != nullptr) std::memset(p, 0, count * n);
    return p;
  }
  void* Realloc(void* p, size_t n) {
    if (p == nullptr) return Alloc(n);
    if (n == 0) {
      Free(p);
      return nullptr;
    }
    const size_t capacity = Capacity(HeaderOf(p));
    if (n <= capacity) return p;
    void* next = Alloc(n);
    if (next == nullptr) return nullptr;
    std::memcpy(next, p, std::min(capacity, n));
    Free(p);
    return next;
  }

  nghttp2_mem mem_{};
  std::array<FreeBlock*, kClasses> free_{};
  std::array<size_t, kClasses> cached_{};
};

class Loop;
class Connection;
class InboundConnection;
class UpstreamConnection;

// Header pairs whose strings keep their capacity when a pooled call is
// reused, so steady-state forwarding does not allocate for headers.
struct HeaderList {
  std::vector<Header> items;
  size_t count = 0;
  void Clear() { count = 0; }
  bool empty() const { return count == 0; }
  void Add(std::string_view k, std::string_view v) {
    if (count == items.size()) items.emplace_back();
    items[count].first.assign(k.data(), k.size());
    items[count].second.assign(v.data(), v.size());
    ++count;
  }
  const Header* begin() const { return items.data(); }
  const Header* end() const { return items.data() + count; }
};

// nghttp2_nv scratch for building header blocks (nghttp2 copies them on submit).
thread_local std::vector<nghttp2_nv> tls_nv;

// One relayed stream: an inbound stream and (once leased) an upstream stream.
// Lives on one loop; deleted when both streams are closed and no lease
// acquisition is pending (MaybeDelete).
struct Call {
  Loop* loop = nullptr;
  InboundConnection* in = nullptr;
  int32_t in_sid = 0;
  UpstreamConnection* up = nullptr;
  int32_t up_sid = 0;
  const FrameRoute* route = nullptr;
  std::string path;
  HeaderList request_headers;
  size_t header_bytes = 0;
  // Only what the peer kit reads: rpc-caller/-encoding/-shard-key/-routing-*
  // and the deadline/TTL (service and procedure come from `path`).
  core::RequestMeta meta;
  std::optional<TimePoint> grpc_deadline;
  std::optional<TimePoint> deadline;
  Buffer request;  // client → upstream, not yet handed to the upstream socket
  bool request_ended = false;
  Buffer response;  // upstream → client
  HeaderList response_headers;
  HeaderList trailers;
  int http_status = 0;
  std::optional<absl::StatusCode> upstream_status;
  bool in_open = true;
  bool up_open = false;
  bool acquiring = false;
  bool admitted = false;
  bool response_started = false;  // HEADERS submitted on the inbound stream
  bool response_final = false;    // the inbound's end (trailers/END_STREAM) is decided
  bool trailers_sent = false;
  bool lease_held = false;
  transport::PeerLease lease;
  std::multimap<TimePoint, Call*>::iterator timer;
  bool timer_armed = false;
  // Positions in the loop's, the inbound's and the upstream's call sets.
  size_t loop_slot = 0, in_slot = 0, up_slot = 0;
  // Hooked routes (route_hook.h; "hooked calls" below).
  std::unique_ptr<CallHook> hook;
  std::string replay;           // request bytes kept for a replay
  bool replay_dropped = false;  // over RouteHook::kMaxReplayBytes: no replay
  bool attempt_live = false;    // an attempt is out and not yet reported
  size_t received = 0;          // request bytes received from the client
  size_t credited = 0;          // ... of which the inbound window got back
  size_t attempt_sent = 0;      // request bytes sent upstream by this attempt
  std::optional<TimePoint> attempt_deadline;
  std::optional<absl::StatusCode> final_code;  // what RespondError answered

  // Back to a fresh call, keeping the capacity of strings and lists.
  void Reset() {
    in = nullptr;
    in_sid = 0;
    up = nullptr;
    up_sid = 0;
    route = nullptr;
    path.clear();
    request_headers.Clear();
    header_bytes = 0;
    meta.caller.clear();
    meta.encoding.clear();
    meta.shard_key.clear();
    meta.routing_key.clear();
    meta.routing_delegate.clear();
    meta.time_to_live.reset();
    meta.deadline.reset();
    grpc_deadline.reset();
    deadline.reset();
    ResetBuffer(request);
    request_ended = false;
    ResetBuffer(response);
    response_headers.Clear();
    trailers.Clear();
    http_status = 0;
    upstream_status.reset();
    in_open = true;
    up_open = false;
    acquiring = false;
    admitted = false;
    response_started = false;
    response_final = false;
    trailers_sent = false;
    lease_held = false;
    lease = {};
    timer_armed = false;
    hook.reset();
    replay.clear();
    replay_dropped = false;
    attempt_live = false;
    received = credited = attempt_sent = 0;
    attempt_deadline.reset();
    final_code.reset();
  }
  static void ResetBuffer(Buffer& b) {
    if (b.bytes.capacity() > 64 * 1024) {
      std::string().swap(b.bytes);  // do not pin large bodies in the pool
    } else {
      b.bytes.clear();
    }
    b.offset = 0;
  }
};

// Calls by position (swap-remove): O(1), no allocation once warm.
class CallSet {
 public:
  explicit CallSet(size_t Call::*slot) : slot_(slot) {}
  void Insert(Call* call) {
    call->*slot_ = items_.size();
    items_.push_back(call);
  }
  void Erase(Call* call) {
    const size_t i = call->*slot_;
    Call* last = items_.back();
    items_[i] = last;
    last->*slot_ = i;
    items_.pop_back();
  }
  bool empty() const { return items_.empty(); }
  // Empties the set and returns what it held.
  std::vector<Call*> Take() { return std::exchange(items_, {}); }

 private:
  size_t Call::*slot_;
  std::vector<Call*> items_;
};

struct RelayShared;

// Runs blocking lease acquisitions (calls with a deadline) off the loops.
class Acquirer {
 public:
  void Start(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) workers_.emplace_back([this] { Run(); });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }
  bool Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) return false;
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    return true;
  }

 private:
  void Run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
        if (stopping_) return;  // pending tasks are dropped; their calls end with the loops
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
};

struct RelayShared {
  FrameRelayOptions options;
  std::shared_ptr<core::Clock> clock;
  std::unordered_map<std::string, const FrameRoute*> by_prefix;
  std::vector<const FrameRoute*> longest_first;
  std::atomic<int64_t> active_calls{0};
  std::atomic<uint64_t> acquire_handoffs{0};  // see FrameRelay::acquire_handoffs
  Acquirer acquirer;
  nghttp2_session_callbacks* server_callbacks = nullptr;
  nghttp2_session_callbacks* client_callbacks = nullptr;
  nghttp2_option* option = nullptr;
};

// Something registered with epoll.
class Handler {
 public:
  virtual ~Handler() = default;
  virtual void OnEvents(uint32_t events) = 0;
};

class Connection : public Handler {
 public:
  Connection(Loop* loop, int fd) : loop_(loop), fd_(fd) {}
  ~Connection() override;
  void OnEvents(uint32_t events) override;
  // Serialises what nghttp2 has queued and writes it; closes on failure.
  void Flush();
  void MarkDirty();
  nghttp2_session* session() const { return session_; }
  bool closed() const { return closed_; }
  Loop* loop() const { return loop_; }
  void AppendOut(const uint8_t* p, size_t n) { out_.append(reinterpret_cast<const char*>(p), n); }
  // Closes the socket and ends every call still on it.
  void Close(std::string_view reason);
  // The call whose header block nghttp2 is decoding, set by the
  // begin-headers callbacks: one stream-map lookup per block instead of one
  // per header field. Cleared when its stream closes.
  Call* CallOfHeader(int32_t stream_id) const {
    return stream_id == header_sid
               ? header_call
               : static_cast<Call*>(nghttp2_session_get_stream_user_data(session_, stream_id));
  }
  void SetHeaderCall(int32_t stream_id, Call* call) {
    header_sid = stream_id;
    header_call = call;
  }
  void ForgetHeaderCall(int32_t stream_id) {
    if (stream_id == header_sid) SetHeaderCall(0, nullptr);
  }
  bool dirty = false;

 protected:
  virtual void FailCalls(std::string_view reason) = 0;
  virtual void OnConnected() {}
  void UpdateInterest();
  Loop* loop_;
  int fd_;
  nghttp2_session* session_ = nullptr;
  std::string out_;
  size_t out_offset_ = 0;
  bool connecting_ = false;
  bool closed_ = false;
  bool want_out_ = false;
  int32_t header_sid = 0;
  Call* header_call = nullptr;
};

class Loop final : public Handler {
 public:
  Loop(RelayShared* shared) : shared_(shared) {}
  ~Loop() override;
  absl::Status Open(const std::string& host, int port, int* bound_port);
  void StartThread() {
    thread_ = std::thread([this] { Run(); });
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  // Thread-safe.
  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(event_fd_, &one, sizeof(one));
  }
  void OnEvents(uint32_t) override;  // eventfd
  void Run();

  void Add(int fd, Handler* handler, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = handler;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  void Modify(int fd, Handler* handler, uint32_t events) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = handler;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
  }
  void Remove(int fd) { ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr); }
  void MarkDirty(Connection* c) {
    if (!c->dirty && !c->closed()) {
      c->dirty = true;
      dirty_.push_back(c);
    }
  }
  void Bury(Connection* c) { graveyard_.push_back(c); }
  void Accept();
  UpstreamConnection* Upstream(const void* pool, size_t index, const std::string& address);
  void Retire(UpstreamConnection* c);
  void ForgetInbound(InboundConnection* c) { inbounds_.erase(c); }

  void ArmTimer(Call* call) {
    call->timer = timers_.emplace(*call->deadline, call);
    call->timer_armed = true;
  }
  void ArmTimerAt(Call* call, TimePoint when) {
    call->timer = timers_.emplace(when, call);
    call->timer_armed = true;
  }
  void DisarmTimer(Call* call) {
    if (call->timer_armed) timers_.erase(call->timer);
    call->timer_armed = false;
  }
  Call* NewCall() {
    Call* call;
    if (free_calls_.empty()) {
      call = new Call();
      call->loop = this;
    } else {
      call = free_calls_.back();
      free_calls_.pop_back();
    }
    calls_.Insert(call);
    return call;
  }
  void FreeCall(Call* call) {
    calls_.Erase(call);
    if (free_calls_.size() >= 4096) {
      delete call;
      return;
    }
    call->Reset();
    free_calls_.push_back(call);
  }
  struct CachedRoute {
    const FrameRoute* route = nullptr;
    bool local = false;
  };
  // Routing decisions by :path (the dispatcher's tables are immutable once
  // started); bounded so random paths cannot grow it without limit.
  std::unordered_map<std::string, CachedRoute> route_cache;

  // Shutdown steps, run on the loop thread.
  void StopAccepting();
  void GoAway();
  void Stop() { stopping_ = true; }

  RelayShared* shared() const { return shared_; }
  nghttp2_mem* mem() { return mem_pool_.mem(); }

 private:
  void FireTimers();
  void CloseAll();
  RelayShared* shared_;
  // Declared first among the members that matter: destroyed after ~Loop's
  // body has deleted every connection (and so every nghttp2 session).
  NghttpMemPool mem_pool_;
  int epoll_fd_ = -1;
  int event_fd_ = -1;
  int listen_fd_ = -1;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::function<void()>> tasks_;
  std::vector<Connection*> dirty_;
  std::vector<Connection*> graveyard_;
  std::multimap<TimePoint, Call*> timers_;
  CallSet calls_{&Call::loop_slot};
  std::vector<Call*> free_calls_;
  std::unordered_set<InboundConnection*> inbounds_;
  std::map<std::pair<const void*, size_t>, UpstreamConnection*> upstreams_;
  std::unordered_set<UpstreamConnection*> retired_;
  bool stopping_ = false;

  class Listener final : public Handler {
   public:
    explicit Listener(Loop* loop) : loop_(loop) {}
    void OnEvents(uint32_t) override { loop_->Accept(); }

   private:
    Loop* loop_;
  } listener_{this};
};

// ------------------------------------------------------------ call helpers

void MaybeDelete(Call* call);
void RespondError(Call* call, absl::StatusCode code, std::string_view message,
                  std::string_view error_code = {});
void ReleaseLease(Call* call, absl::StatusCode outcome);
// Hooked calls (route_hook.h), defined after the callbacks.
void StartHooked(Call* call);
bool HookedTimer(Call* call);
void KeepForReplay(Call* call, const uint8_t* data, size_t len);
void CreditHooked(Call* call, size_t length);
void ReturnHookedWindow(nghttp2_session* session, Call* call);
int HookedUpstreamHeaders(Call* call, bool end);
void CommitHooked(Call* call);
void ReportHookedClose(Call* call, uint32_t error_code);
bool RetryHooked(Call* call, bool timed_out, std::string_view reason);
void FinishHooked(Call* call);

class InboundConnection final : public Connection {
 public:
  InboundConnection(Loop* loop, int fd, RelayShared* shared);
  ~InboundConnection() override = default;
  CallSet calls{&Call::in_slot};
  RelayShared* shared;

 protected:
  void FailCalls(std::string_view reason) override;
};

class UpstreamConnection final : public Connection {
 public:
  UpstreamConnection(Loop* loop, int fd, RelayShared* shared, std::pair<const void*, size_t> key,
                     std::string authority);
  CallSet calls{&Call::up_slot};
  std::pair<const void*, size_t> key;
  std::string authority;
  bool retired = false;

 protected:
  void FailCalls(std::string_view reason) override;
  void OnConnected() override { MarkDirty(); }
};

// ------------------------------------------------------------ Connection

Connection::~Connection() {
  if (session_ != nullptr) nghttp2_session_del(session_);
  if (fd_ >= 0) ::close(fd_);
}

void Connection::MarkDirty() { loop_->MarkDirty(this); }

void Connection::UpdateInterest() {
  const bool want = connecting_ || out_offset_ < out_.size();
  if (want == want_out_) return;
  want_out_ = want;
  loop_->Modify(fd_, this, want ? (EPOLLIN | EPOLLOUT) : static_cast<uint32_t>(EPOLLIN));
}

void Connection::Close(std::string_view reason) {
  if (closed_) return;
  closed_ = true;
  loop_->Remove(fd_);
  FailCalls(reason);
  loop_->Bury(this);
}

void Connection::OnEvents(uint32_t events) {
  if (closed_) return;
  if (connecting_) {
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        Close(std::string("connect failed: ") + std::strerror(err));
        return;
      }
      connecting_ = false;
      UpdateInterest();
      OnConnected();
    }
    return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    uint8_t buf[64 * 1024];
    for (int rounds = 0; rounds < 16; ++rounds) {
      ssize_t n = ::read(fd_, buf, sizeof(buf));
      if (n > 0) {
        ssize_t used = nghttp2_session_mem_recv(session_, buf, static_cast<size_t>(n));
        if (used < 0) {
          // A fatal error (bad client magic, flooding, callback failure):
          // nghttp2 has queued a GOAWAY where it could; send it, then close.
          Flush();
          Close(nghttp2_strerror(static_cast<int>(used)));
          return;
        }
        MarkDirty();
        if (static_cast<size_t>(n) < sizeof(buf)) break;
        continue;
      }
      if (n == 0) {
        Close("connection closed by peer");
        return;
      }
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      Close(std::string("read failed: ") + std::strerror(errno));
      return;
    }
  }
  if (events & EPOLLOUT) MarkDirty();
}

void Connection::Flush() {
  dirty = false;
  if (closed_) return;
  if (int rv = nghttp2_session_send(session_); rv != 0) {
    Close(nghttp2_strerror(rv));
    return;
  }
  if (!connecting_) {
    while (out_offset_ < out_.size()) {
      ssize_t n = ::send(fd_, out_.data() + out_offset_, out_.size() - out_offset_, MSG_NOSIGNAL);
      if (n > 0) {
        out_offset_ += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      Close(std::string("write failed: ") + std::strerror(errno));
      return;
    }
    if (out_offset_ == out_.size()) {
      out_.clear();
      out_offset_ = 0;
    } else if (out_offset_ > (1 << 20)) {
      out_.erase(0, out_offset_);
      out_offset_ = 0;
    }
  }
  UpdateInterest();
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_) &&
      out_.empty()) {
    Close("session finished");
  }
}

// ------------------------------------------------------------ lease & responses

void ReleaseLease(Call* call, absl::StatusCode outcome) {
  if (!call->lease_held) return;
  call->lease_held = false;
  call->route->pool->Release(call->lease, outcome);
  call->lease = {};
}

void ResumeInbound(Call* call) {
  if (!call->in_open || !call->response_started) return;
  nghttp2_session_resume_data(call->in->session(), call->in_sid);
  call->in->MarkDirty();
}

void ResumeUpstream(Call* call) {
  if (!call->up_open) return;
  nghttp2_session_resume_data(call->up->session(), call->up_sid);
  call->up->MarkDirty();
}

void AddErrorTrailers(HeaderList& t, absl::StatusCode code, std::string_view message,
                      std::string_view error_code) {
  t.Add("grpc-status", std::to_string(static_cast<int>(code)));
  if (!message.empty()) t.Add("grpc-message", PercentEncode(message));
  if (!error_code.empty()) t.Add("rpc-error-code", error_code);
}

// A non-gRPC error reply from upstream (an HTTP status, no grpc-status): the
// client gets a gRPC answer with the status the gRPC spec maps it to.
void AnswerNonGrpcReply(Call* call) {
  auto code = core::GrpcStatusFromHttp(call->http_status);
  call->upstream_status = code;
  call->http_status = 200;
  call->response_headers.Add("content-type", "application/grpc");
  AddErrorTrailers(call->response_headers, code, "upstream answered HTTP status", "");
}

ssize_t ReadResponse(nghttp2_session* session, int32_t stream_id, uint8_t*, size_t length,
                     uint32_t* flags, nghttp2_data_source* source, void*) {
  auto* call = static_cast<Call*>(source->ptr);
  const size_t n = std::min(length, call->response.size());
  if (n > 0) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n < call->response.size() || !call->response_final) {
    return n > 0 ? static_cast<ssize_t>(n) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  if (!call->trailers.empty() && !call->trailers_sent) {
    auto& nv = tls_nv;
    nv.clear();
    for (const auto& [k, v] : call->trailers) nv.push_back(MakeNv(k, v));
    if (nghttp2_submit_trailer(session, stream_id, nv.data(), nv.size()) == 0) {
      *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      call->trailers_sent = true;
    }
  }
  return static_cast<ssize_t>(n);
}

ssize_t ReadRequest(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                    nghttp2_data_source* source, void*) {
  auto* call = static_cast<Call*>(source->ptr);
  const size_t n = std::min(length, call->request.size());
  if (n > 0) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (n < call->request.size() || !call->request_ended) {
    return n > 0 ? static_cast<ssize_t>(n) : static_cast<ssize_t>(NGHTTP2_ERR_DEFERRED);
  }
  *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<ssize_t>(n);
}

// Starts the inbound response with the upstream's (or our) headers.
void SubmitResponse(Call* call, bool end_stream) {
  if (!call->in_open || call->response_started) return;
  std::string status = call->http_status > 0 ? std::to_string(call->http_status) : "200";
  static const std::string status_name = ":status";
  auto& nv = tls_nv;
  nv.clear();
  nv.push_back(MakeNv(status_name, status));
  for (const auto& [k, v] : call->response_headers) {
    if (!k.empty() && k.front() == ':') continue;
    nv.push_back(MakeNv(k, v));
  }
  call->response_started = true;
  if (end_stream) {
    call->response_final = true;
    nghttp2_submit_response(call->in->session(), call->in_sid, nv.data(), nv.size(), nullptr);
  } else {
    nghttp2_data_provider provider{};
    provider.source.ptr = call;
    provider.read_callback = ReadResponse;
    nghttp2_submit_response(call->in->session(), call->in_sid, nv.data(), nv.size(), &provider);
  }
  call->in->MarkDirty();
}

// Ends the inbound side with a gRPC status: trailers-only before the
// response started, else as the trailers after what was already pumped.
void RespondError(Call* call, absl::StatusCode code, std::string_view message,
                  std::string_view error_code) {
  if (!call->in_open || call->response_final) return;
  call->final_code = code;
  if (!call->response_started) {
    call->http_status = 200;
    call->response_headers.Clear();
    call->response_headers.Add("content-type", "application/grpc");
    AddErrorTrailers(call->response_headers, code, message, error_code);
    SubmitResponse(call, /*end_stream=*/true);
    return;
  }
  call->trailers.Clear();
  AddErrorTrailers(call->trailers, code, message, error_code);
  call->response_final = true;
  ResumeInbound(call);
}

void MaybeDelete(Call* call) {
  if (call->in_open || call->up_open || call->acquiring) return;
  Loop* loop = call->loop;
  loop->DisarmTimer(call);
  ReleaseLease(call, absl::StatusCode::kCancelled);
  if (call->admitted && loop->shared()->options.dispatcher) {
    loop->shared()->options.dispatcher->EndCall();
  }
  if (call->hook) FinishHooked(call);
  loop->shared()->active_calls.fetch_sub(1, std::memory_order_relaxed);
  loop->FreeCall(call);
}

// The upstream stream is gone with `code` (from its trailers or mapped from a
// reset/connection failure): release the lease with it.
void UpstreamClosed(Call* call, absl::StatusCode code) {
  call->up_open = false;
  if (call->up != nullptr) {
    // Response bytes still buffered will not be consumed per stream any
    // more: give their connection window back now, or the connection stalls.
    if (call->response.size() > 0) {
      nghttp2_session_consume_connection(call->up->session(), call->response.size());
      call->up->MarkDirty();
    }
    call->up->calls.Erase(call);
  }
  call->up = nullptr;
  ReleaseLease(call, code);
}

void SubmitUpstream(Call* call, UpstreamConnection* up) {
  RelayShared* shared = call->loop->shared();
  const std::string* path = &call->path;
  std::string rewritten;
  if (call->route != nullptr) {
    const auto& r = *call->route;
    if (!r.procedure.empty() || !r.service.empty()) {
      // The outbound's fixed service/procedure, as GrpcOutbound::MethodPath.
      std::string_view p(call->path);
      if (!p.empty() && p.front() == '/') p.remove_prefix(1);
      const auto slash = p.find('/');
      const std::string_view in_service = slash == std::string_view::npos ? "" : p.substr(0, slash);
      const std::string_view in_method = slash == std::string_view::npos ? p : p.substr(slash + 1);
      const std::string_view service = r.service.empty() ? in_service : std::string_view(r.service);
      if (r.procedure.find('/') != std::string::npos) {
        rewritten = r.procedure.front() == '/' ? r.procedure : "/" + r.procedure;
      } else {
        rewritten.append("/").append(service).append("/").append(
            r.procedure.empty() ? in_method : std::string_view(r.procedure));
      }
      path = &rewritten;
    }
  }
  static const std::string kMethod = ":method", kPost = "POST", kScheme = ":scheme", kHttp = "http",
                           kPath = ":path", kAuthority = ":authority", kTimeout = "grpc-timeout";
  std::string timeout;
  if (call->deadline) {
    timeout = FormatGrpcTimeout(*call->deadline - shared->clock->Now());
  }
  auto& nv = tls_nv;
  nv.clear();
  nv.push_back(MakeNv(kMethod, kPost));
  nv.push_back(MakeNv(kScheme, kHttp));
  nv.push_back(MakeNv(kPath, *path));
  nv.push_back(MakeNv(kAuthority, up->authority));
  for (const auto& [k, v] : call->request_headers) nv.push_back(MakeNv(k, v));
  if (!timeout.empty()) nv.push_back(MakeNv(kTimeout, timeout));
  nghttp2_data_provider provider{};
  provider.source.ptr = call;
  provider.read_callback = ReadRequest;
  const int32_t sid =
      nghttp2_submit_request(up->session(), nullptr, nv.data(), nv.size(), &provider, call);
  if (sid < 0) {
    ReleaseLease(call, absl::StatusCode::kInternal);
    RespondError(call, absl::StatusCode::kInternal,
                 std::string("upstream stream refused: ") + nghttp2_strerror(sid));
    return;
  }
  call->up = up;
  call->up_sid = sid;
  call->up_open = true;
  up->calls.Insert(call);
  up->MarkDirty();
}

void OnLease(Call* call, absl::StatusOr<transport::PeerLease> lease) {
  if (!lease.ok()) {
    RespondError(call, lease.status().code(), std::string(lease.status().message()),
                 core::ErrorCode(lease.status()).value_or(""));
    return;
  }
  call->lease = std::move(*lease);
  call->lease_held = true;
  if (!call->in_open || call->response_final) {  // cancelled or timed out meanwhile
    ReleaseLease(call, absl::StatusCode::kCancelled);
    return;
  }
  const auto& addresses = call->route->pool->addresses();
  UpstreamConnection* up = call->loop->Upstream(call->route->pool.get(), call->lease.index,
                                                addresses[call->lease.index]);
  if (up == nullptr) {
    ReleaseLease(call, absl::StatusCode::kUnavailable);
    RespondError(call, absl::StatusCode::kUnavailable,
                 "cannot connect to peer " + addresses[call->lease.index]);
    return;
  }
  SubmitUpstream(call, up);
}

const FrameRoute* MatchRoute(RelayShared* shared, std::string_view service, std::string_view method,
                             bool* local) {
  *local = false;
  const auto& d = shared->options.dispatcher;
  if (d) {
    const dispatcher::BoundProcedure* bound = d->Resolve(service, method);
    if (bound == nullptr) return nullptr;
    if (bound->procedure.service != "*") {
      *local = true;  // a procedure (or alias) the node serves itself
      return nullptr;
    }
    std::string_view name = bound->procedure.name;  // route prefix + "*"
    name.remove_suffix(1);
    auto it = shared->by_prefix.find(std::string(name));
    if (it == shared->by_prefix.end()) *local = true;  // a route kept on the grpc++ path
    return it == shared->by_prefix.end() ? nullptr : it->second;
  }
  std::string key;
  key.reserve(service.size() + method.size() + 1);
  key.append(service).append("/").append(method);
  for (const FrameRoute* r : shared->longest_first) {
    if (key.compare(0, r->prefix.size(), r->prefix) == 0) return r;
  }
  return nullptr;
}

// The inbound HEADERS are complete: route the call.
void StartCall(Call* call) {
  RelayShared* shared = call->loop->shared();
  std::string_view path(call->path);
  if (!path.empty() && path.front() == '/') path.remove_prefix(1);
  const auto slash = path.find('/');
  std::string_view service = slash == std::string_view::npos ? "" : path.substr(0, slash);
  std::string_view method = slash == std::string_view::npos ? path : path.substr(slash + 1);
  Loop::CachedRoute cached;
  auto& cache = call->loop->route_cache;
  if (auto it = cache.find(call->path); it != cache.end()) {
    cached = it->second;
  } else {
    cached.route = MatchRoute(shared, service, method, &cached.local);
    if (cache.size() >= 4096) cache.clear();
    cache.emplace(call->path, cached);
  }
  const FrameRoute* route = cached.route;
  if (route == nullptr) {
    if (!shared->options.fallback.empty()) {
      // The local inbound enforces the deadline itself; pass it on.
      call->deadline = call->grpc_deadline;
      UpstreamConnection* up = call->loop->Upstream(nullptr, 0, shared->options.fallback);
      if (up == nullptr) {
        RespondError(call, absl::StatusCode::kUnavailable, "local inbound unreachable");
        return;
      }
      SubmitUpstream(call, up);
      return;
    }
    RespondError(call, absl::StatusCode::kUnimplemented,
                 "unknown procedure '" + std::string(service) + "/" + std::string(method) + "'");
    return;
  }
  call->route = route;
  if (shared->options.dispatcher) {
    if (!shared->options.dispatcher->BeginCall()) {
      RespondError(call, absl::StatusCode::kUnavailable, "node is draining", "draining");
      return;
    }
    call->admitted = true;
  }
  if (call->grpc_deadline &&
      (!call->meta.deadline || *call->grpc_deadline < *call->meta.deadline)) {
    call->meta.deadline = call->grpc_deadline;
  }
  // Read the clock only when the call carries a deadline or TTL.
  if (call->meta.deadline || call->meta.time_to_live) {
    call->deadline = call->meta.EffectiveDeadline(shared->clock->Now());
  }
  if (route->hook) {
    StartHooked(call);
    return;
  }
  if (!call->deadline) {
    OnLease(call, route->pool->Acquire(call->meta, std::nullopt));
    return;
  }
  call->loop->ArmTimer(call);
  // Most calls find a free peer at once: lease on the loop. Only a call that
  // may have to wait (coordinator rule 5) goes to the acquire threads, whose
  // hand-off (two thread switches) would double the relay's cost per call.
  if (auto lease = route->pool->TryAcquireNow(call->meta)) {
    OnLease(call, std::move(*lease));
    return;
  }
  shared->acquire_handoffs.fetch_add(1, std::memory_order_relaxed);
  call->acquiring = true;
  Loop* loop = call->loop;
  auto pool = route->pool;
  const bool submitted = shared->acquirer.Submit(
      [loop, call, pool, meta = call->meta, deadline = call->deadline]() mutable {
        auto lease =
            std::make_shared<absl::StatusOr<transport::PeerLease>>(pool->Acquire(meta, deadline));
        loop->Post([call, lease] {
          call->acquiring = false;
          OnLease(call, std::move(*lease));
          MaybeDelete(call);
        });
      });
  if (!submitted) {
    call->acquiring = false;
    RespondError(call, absl::StatusCode::kUnavailable, "relay is stopping");
  }
}

void OnDeadline(Call* call) {
  call->timer_armed = false;
  if (call->hook && HookedTimer(call)) return;
  if (call->response_final) return;
  ReleaseLease(call, absl::StatusCode::kDeadlineExceeded);
  if (call->up_open) {
    nghttp2_submit_rst_stream(call->up->session(), NGHTTP2_FLAG_NONE, call->up_sid, NGHTTP2_CANCEL);
    call->up->MarkDirty();
  }
  RespondError(call, absl::StatusCode::kDeadlineExceeded, "deadline exceeded");
}

// ------------------------------------------------------------ inbound callbacks

int InBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  auto* conn = static_cast<InboundConnection*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
    conn->SetHeaderCall(
        frame->hd.stream_id,
        static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id)));
    return 0;
  }
  Call* call = conn->loop()->NewCall();
  conn->shared->active_calls.fetch_add(1, std::memory_order_relaxed);
  call->in = conn;
  call->in_sid = frame->hd.stream_id;
  conn->calls.Insert(call);
  nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call);
  conn->SetHeaderCall(frame->hd.stream_id, call);
  return 0;
}

// The rpc-* headers the peer kit reads (transport::ApplyRpcHeaders, without
// a Headers map per call).
void CaptureRpcHeader(core::RequestMeta& meta, std::string_view k, std::string_view v) {
  if (k == "rpc-caller") {
    meta.caller.assign(v.data(), v.size());
  } else if (k == "rpc-encoding") {
    meta.encoding.assign(v.data(), v.size());
  } else if (k == "rpc-shard-key") {
    meta.shard_key.assign(v.data(), v.size());
  } else if (k == "rpc-routing-key") {
    meta.routing_key.assign(v.data(), v.size());
  } else if (k == "rpc-routing-delegate") {
    meta.routing_delegate.assign(v.data(), v.size());
  } else if (k == "rpc-ttl-ms") {
    long long ms = 0;
    auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), ms);
    if (ec == std::errc() && ms >= 0) meta.time_to_live = std::chrono::milliseconds(ms);
  } else if (k == "rpc-deadline") {
    if (auto t = core::ParseTimestamp(v)) meta.deadline = *t;
  }
}

int InHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
  auto* conn = static_cast<InboundConnection*>(user_data);
  Call* call = conn->CallOfHeader(frame->hd.stream_id);
  if (call == nullptr) return 0;
  call->header_bytes += namelen + valuelen + 32;
  if (call->header_bytes > conn->shared->options.max_header_bytes) {
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // resets this stream
  }
  std::string_view k(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (!k.empty() && k.front() == ':') {
    if (k == ":path") call->path.assign(v.data(), v.size());  // keeps the pooled capacity
    return 0;
  }
  if (k == "grpc-timeout") {
    if (auto d = ParseGrpcTimeout(v)) {
      call->grpc_deadline =
          std::chrono::time_point_cast<core::Duration>(conn->shared->clock->Now() + *d);
    }
    return 0;
  }
  if (k.size() > 4 && k.starts_with("rpc-")) CaptureRpcHeader(call->meta, k, v);
  call->request_headers.Add(k, v);
  return 0;
}

int InFrameRecv(nghttp2_session* session, const nghttp2_frame* frame, void*) {
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  auto* call =
      static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr) return 0;
  const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (end) call->request_ended = true;
    StartCall(call);
    return 0;
  }
  if (end) {
    call->request_ended = true;
    ResumeUpstream(call);
  }
  return 0;
}

int InDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                size_t len, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr || call->response_final) {
    Consume(session, stream_id, len);  // nobody will read it
    return 0;
  }
  call->request.Append(data, len);
  if (call->hook) KeepForReplay(call, data, len);
  ResumeUpstream(call);
  return 0;
}

int InStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                  void* user_data) {
  static_cast<Connection*>(user_data)->ForgetHeaderCall(stream_id);
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr) return 0;
  nghttp2_session_set_stream_user_data(session, stream_id, nullptr);
  // As in UpstreamClosed: request bytes not yet forwarded return their
  // connection window now.
  if (call->hook) {
    ReturnHookedWindow(session, call);
  } else if (call->request.size() > 0) {
    nghttp2_session_consume_connection(session, call->request.size());
    call->in->MarkDirty();
  }
  call->in_open = false;
  call->in->calls.Erase(call);
  const bool completed = call->response_final && error_code == NGHTTP2_NO_ERROR;
  if (!completed) {
    // The client cancelled (RST_STREAM) or the stream failed: cancel upstream.
    ReleaseLease(call, absl::StatusCode::kCancelled);
    if (call->up_open) {
      nghttp2_submit_rst_stream(call->up->session(), NGHTTP2_FLAG_NONE, call->up_sid,
                                NGHTTP2_CANCEL);
      call->up->MarkDirty();
    }
  }
  MaybeDelete(call);
  return 0;
}

int InSendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
               nghttp2_data_source* source, void* user_data) {
  auto* conn = static_cast<InboundConnection*>(user_data);
  auto* call = static_cast<Call*>(source->ptr);
  conn->AppendOut(framehd, 9);
  const size_t pad = frame->data.padlen;
  if (pad > 0) {
    const uint8_t padlen = static_cast<uint8_t>(pad - 1);
    conn->AppendOut(&padlen, 1);
  }
  conn->AppendOut(reinterpret_cast<const uint8_t*>(call->response.data()), length);
  if (pad > 1) {
    std::string zeros(pad - 1, '\0');
    conn->AppendOut(reinterpret_cast<const uint8_t*>(zeros.data()), zeros.size());
  }
  call->response.Consume(length);
  // The bytes left our hands: reopen the upstream's window for them.
  if (call->up_open) {
    Consume(call->up->session(), call->up_sid, length);
    call->up->MarkDirty();
  }
  return 0;
}

ssize_t SendToBuffer(nghttp2_session*, const uint8_t* data, size_t length, int, void* user_data) {
  static_cast<Connection*>(user_data)->AppendOut(data, length);
  return static_cast<ssize_t>(length);
}

// ------------------------------------------------------------ upstream callbacks

int UpBeginHeaders(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  static_cast<Connection*>(user_data)->SetHeaderCall(
      frame->hd.stream_id,
      static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id)));
  return 0;
}

int UpHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
             const uint8_t* value, size_t valuelen, uint8_t, void* user_data) {
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  Call* call = static_cast<Connection*>(user_data)->CallOfHeader(frame->hd.stream_id);
  if (call == nullptr) return 0;
  std::string_view k(reinterpret_cast<const char*>(name), namelen);
  std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (k == ":status") {
    int status = 0;
    std::from_chars(v.data(), v.data() + v.size(), status);
    if (status >= 200) call->http_status = status;
    return 0;
  }
  if (k == "grpc-status") {
    int code = 0;
    std::from_chars(v.data(), v.data() + v.size(), code);
    call->upstream_status = static_cast<absl::StatusCode>(code);
  }
  if (frame->headers.cat == NGHTTP2_HCAT_HEADERS && call->response_started) {
    call->trailers.Add(k, v);
  } else {
    call->response_headers.Add(k, v);
  }
  return 0;
}

absl::StatusCode UpstreamOutcome(const Call* call) {
  if (call->upstream_status) return *call->upstream_status;
  if (call->http_status != 0 && call->http_status != 200)
    return core::GrpcStatusFromHttp(call->http_status);
  return absl::StatusCode::kUnknown;
}

int UpFrameRecv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  if (frame->hd.type == NGHTTP2_GOAWAY) {
    auto* conn = static_cast<UpstreamConnection*>(user_data);
    conn->retired = true;  // new calls open another connection
    return 0;
  }
  if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) return 0;
  auto* call =
      static_cast<Call*>(nghttp2_session_get_stream_user_data(session, frame->hd.stream_id));
  if (call == nullptr) return 0;
  const bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  if (frame->hd.type == NGHTTP2_HEADERS && call->hook) return HookedUpstreamHeaders(call, end);
  if (frame->hd.type == NGHTTP2_HEADERS) {
    if (call->http_status == 0 || call->http_status < 200) return 0;  // 1xx
    if (!call->response_started) {
      if (call->response_final) return 0;  // we already answered (deadline)
      if (end && !call->upstream_status && call->http_status != 200) {
        AnswerNonGrpcReply(call);
        SubmitResponse(call, true);
        return 0;
      }
      SubmitResponse(call, end);
      return 0;
    }
    if (end && !call->response_final) {  // trailers
      call->response_final = true;
      ResumeInbound(call);
    }
    return 0;
  }
  if (end && !call->response_final) {  // DATA with END_STREAM, no trailers
    call->response_final = true;
    ResumeInbound(call);
  }
  return 0;
}

int UpDataChunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                size_t len, void*) {
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr || !call->in_open || call->response_final) {
    Consume(session, stream_id, len);
    return 0;
  }
  if (call->hook && !call->response_started) CommitHooked(call);
  call->response.Append(data, len);
  ResumeInbound(call);
  return 0;
}

int UpStreamClose(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                  void* user_data) {
  static_cast<Connection*>(user_data)->ForgetHeaderCall(stream_id);
  auto* call = static_cast<Call*>(nghttp2_session_get_stream_user_data(session, stream_id));
  if (call == nullptr) return 0;
  if (call->hook) ReportHookedClose(call, error_code);
  const bool clean = error_code == NGHTTP2_NO_ERROR && call->upstream_status.has_value();
  if (clean) {
    UpstreamClosed(call, *call->upstream_status);
  } else if (error_code == NGHTTP2_NO_ERROR) {
    UpstreamClosed(call, UpstreamOutcome(call));
    if (!call->response_final) {
      RespondError(call, absl::StatusCode::kInternal, "upstream ended the stream without a status");
    }
  } else {
    const auto code = FromResetCode(error_code);
    UpstreamClosed(call, code);
    if (call->hook && RetryHooked(call, false, "upstream reset the stream")) {
      MaybeDelete(call);
      return 0;
    }
    if (call->in_open && !call->response_final) {
      if (!call->response_started) {
        RespondError(
            call, code,
            std::string("upstream reset the stream: ") + nghttp2_http2_strerror(error_code));
      } else {
        // Mid-response: pass the reset on with the same code.
        call->response_final = true;
        nghttp2_submit_rst_stream(call->in->session(), NGHTTP2_FLAG_NONE, call->in_sid, error_code);
        call->in->MarkDirty();
      }
    }
  }
  MaybeDelete(call);
  return 0;
}

int UpSendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
               nghttp2_data_source* source, void* user_data) {
  auto* conn = static_cast<UpstreamConnection*>(user_data);
  auto* call = static_cast<Call*>(source->ptr);
  conn->AppendOut(framehd, 9);
  const size_t pad = frame->data.padlen;
  if (pad > 0) {
    const uint8_t padlen = static_cast<uint8_t>(pad - 1);
    conn->AppendOut(&padlen, 1);
  }
  conn->AppendOut(reinterpret_cast<const uint8_t*>(call->request.data()), length);
  if (pad > 1) {
    std::string zeros(pad - 1, '\0');
    conn->AppendOut(reinterpret_cast<const uint8_t*>(zeros.data()), zeros.size());
  }
  call->request.Consume(length);
  if (call->hook) {
    CreditHooked(call, length);
  } else if (call->in_open) {
    Consume(call->in->session(), call->in_sid, length);
    call->in->MarkDirty();
  }
  return 0;
}

// ------------------------------------------------------------ hooked calls
//
// A FrameRoute with a RouteHook (route_hook.h): the hook decides the call on
// its HEADERS and names the upstream of every attempt; until the first
// response DATA frame reached the client the relay keeps the request bytes
// and replays them on the hook's next upstream after a transport failure.

bool Replayable(const Call* call) {
  return call->in_open && !call->response_started && !call->response_final && !call->replay_dropped;
}

// A server going away answers UNAVAILABLE (or CANCELLED when grpc++ cancels
// what it still holds at shutdown): the instance failed, not the call.
bool TransportStatus(const Call* call) {
  return call->upstream_status == absl::StatusCode::kUnavailable ||
         call->upstream_status == absl::StatusCode::kCancelled;
}

// One timer per call: the earlier of the call's deadline and the attempt's.
void ArmHookedTimer(Call* call) {
  call->loop->DisarmTimer(call);
  std::optional<TimePoint> when = call->deadline;
  if (call->attempt_deadline && (!when || *call->attempt_deadline < *when)) {
    when = call->attempt_deadline;
  }
  if (when) call->loop->ArmTimerAt(call, *when);
}

// Leaves the current upstream stream (reset) without ending the call.
void AbandonUpstream(Call* call, absl::StatusCode code) {
  if (!call->up_open) return;
  UpstreamConnection* up = call->up;
  nghttp2_session_set_stream_user_data(up->session(), call->up_sid, nullptr);
  up->ForgetHeaderCall(call->up_sid);
  nghttp2_submit_rst_stream(up->session(), NGHTTP2_FLAG_NONE, call->up_sid, NGHTTP2_CANCEL);
  up->MarkDirty();
  UpstreamClosed(call, code);
}

void HookedAttempt(Call* call) {
  RelayShared* shared = call->loop->shared();
  for (;;) {
    absl::StatusOr<HookTarget> target = call->hook->Next();
    if (!target.ok()) {
      call->attempt_deadline.reset();
      ArmHookedTimer(call);
      RespondError(call, target.status().code(), std::string(target.status().message()));
      return;
    }
    UpstreamConnection* up =
        call->loop->Upstream(call->route->hook.get(), target->key, target->address);
    if (up == nullptr) {
      call->hook->AttemptFailed(false, "cannot connect to " + target->address);
      continue;  // Next() is bounded by the hook's attempts
    }
    call->attempt_live = true;
    // Every attempt sends the request from its first byte.
    if (!call->replay_dropped) {
      call->request.bytes.assign(call->replay);
      call->request.offset = 0;
    }
    call->attempt_sent = 0;
    call->attempt_deadline = std::chrono::time_point_cast<core::Duration>(
        shared->clock->Now() + call->route->hook->attempt_timeout());
    ArmHookedTimer(call);
    SubmitUpstream(call, up);
    return;
  }
}

void StartHooked(Call* call) {
  RelayShared* shared = call->loop->shared();
  auto decided = call->route->hook->OnHeaders(
      call->path,
      std::span<const RelayHeader>(call->request_headers.begin(), call->request_headers.count));
  if (!decided.ok()) {
    RespondError(call, decided.status().code(), std::string(decided.status().message()));
    return;
  }
  if (*decided == nullptr) {
    // Pumped unchanged to the fallback, which enforces the deadline itself.
    call->deadline = call->grpc_deadline;
    UpstreamConnection* up = shared->options.fallback.empty()
                                 ? nullptr
                                 : call->loop->Upstream(nullptr, 0, shared->options.fallback);
    if (up == nullptr) {
      RespondError(call, absl::StatusCode::kUnavailable, "local inbound unreachable");
      return;
    }
    SubmitUpstream(call, up);
    return;
  }
  call->hook = std::move(*decided);
  HookedAttempt(call);
}

// The current attempt failed at the transport level: reports it (once) and,
// while the call is replayable, starts the next attempt. False when the
// caller must end the call itself.
bool RetryHooked(Call* call, bool timed_out, std::string_view reason) {
  if (call->attempt_live) {
    call->attempt_live = false;
    if (call->in_open && !call->response_final) call->hook->AttemptFailed(timed_out, reason);
  }
  if (!Replayable(call)) return false;
  call->http_status = 0;
  call->upstream_status.reset();
  call->response_headers.Clear();
  call->trailers.Clear();
  Call::ResetBuffer(call->response);
  HookedAttempt(call);
  return true;
}

bool HookedTimer(Call* call) {
  const TimePoint now = call->loop->shared()->clock->Now();
  if (!call->attempt_deadline) {
    // The attempt's timer outlived its attempt (committed or answered: the
    // timer is left in place rather than re-armed per call): the call's own
    // deadline, if any, is what is left to enforce.
    if (!call->deadline) return true;
    if (now < *call->deadline) {
      call->loop->ArmTimerAt(call, *call->deadline);
      return true;
    }
    return false;
  }
  if (now < *call->attempt_deadline) return false;
  if (call->deadline && *call->deadline <= now) return false;  // the call's own deadline
  call->attempt_deadline.reset();
  AbandonUpstream(call, absl::StatusCode::kUnavailable);
  if (!RetryHooked(call, true, "no response within the attempt timeout")) {
    ArmHookedTimer(call);
    RespondError(call, absl::StatusCode::kUnavailable, "no response within the attempt timeout");
  }
  return true;
}

void KeepForReplay(Call* call, const uint8_t* data, size_t len) {
  call->received += len;
  if (call->replay_dropped) return;
  if (call->replay.size() + len > RouteHook::kMaxReplayBytes) {
    call->replay_dropped = true;  // forwarded, but not replayed
    std::string().swap(call->replay);
    return;
  }
  call->replay.append(reinterpret_cast<const char*>(data), len);
}

// The inbound window reopens for bytes the first time any attempt hands them
// to an upstream socket; a replay sends bytes whose window is already back.
void CreditHooked(Call* call, size_t length) {
  call->attempt_sent += length;
  if (call->attempt_sent <= call->credited) return;
  const size_t n = call->attempt_sent - call->credited;
  call->credited = call->attempt_sent;
  if (call->in_open) {
    Consume(call->in->session(), call->in_sid, n);
    call->in->MarkDirty();
  }
}

void ReturnHookedWindow(nghttp2_session* session, Call* call) {
  if (call->received > call->credited) {
    nghttp2_session_consume_connection(session, call->received - call->credited);
    call->credited = call->received;
    call->in->MarkDirty();
  }
}

// Upstream HEADERS of a hooked call: initial metadata is held until the
// first DATA (CommitHooked); a trailers-only UNAVAILABLE/CANCELLED is a
// transport failure and is replayed elsewhere.
int HookedUpstreamHeaders(Call* call, bool end) {
  if (call->http_status == 0 || call->http_status < 200) return 0;  // 1xx
  // Answered already (deadline).
  if (call->response_final) return 0;
  if (call->response_started) {
    if (end) {  // trailers
      call->response_final = true;
      ResumeInbound(call);
    }
    return 0;
  }
  if (!end) return 0;
  if (TransportStatus(call) && Replayable(call)) {
    const auto code = *call->upstream_status;
    AbandonUpstream(call, code);
    RetryHooked(call, false, "upstream answered UNAVAILABLE or CANCELLED");
    return 0;
  }
  call->attempt_deadline.reset();  // the timer stays armed; HookedTimer sorts it out
  if (!call->upstream_status && call->http_status != 200) AnswerNonGrpcReply(call);
  SubmitResponse(call, true);
  return 0;
}

// The first response message: the call is committed to this attempt.
void CommitHooked(Call* call) {
  call->attempt_deadline.reset();  // the timer stays armed; HookedTimer sorts it out
  call->replay_dropped = true;
  std::string().swap(call->replay);
  SubmitResponse(call, false);
}

// The upstream stream closed: the attempt answered (any application status)
// or failed (reset, UNAVAILABLE/CANCELLED). Nothing is reported for a client
// that went away or a call the relay already answered (deadline).
void ReportHookedClose(Call* call, uint32_t error_code) {
  if (!call->attempt_live) return;
  call->attempt_live = false;
  if (!call->in_open) return;
  if (error_code != NGHTTP2_NO_ERROR) {
    if (!call->response_final) call->hook->AttemptFailed(false, nghttp2_http2_strerror(error_code));
    return;
  }
  if (TransportStatus(call)) {
    call->hook->AttemptFailed(false, "upstream answered UNAVAILABLE or CANCELLED");
  } else {
    call->hook->AttemptAnswered();
  }
}

void FinishHooked(Call* call) {
  absl::StatusCode code = absl::StatusCode::kCancelled;
  if (call->final_code) {
    code = *call->final_code;
  } else if (call->response_final && call->upstream_status) {
    code = *call->upstream_status;
  }
  call->hook->Finished(code);
}

// ------------------------------------------------------------ connections

InboundConnection::InboundConnection(Loop* loop, int fd, RelayShared* s)
    : Connection(loop, fd), shared(s) {
  nghttp2_session_server_new3(&session_, shared->server_callbacks, this, shared->option,
                              loop->mem());
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, shared->options.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, shared->options.max_header_bytes},
      // No RFC 7540 priority tree (RFC 9218): gRPC sends no PRIORITY, and
      // keeping the dependency tree and weights current costs nghttp2 work
      // on every stream open, close and DATA frame; closed streams are not
      // retained either.
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kLocalWindow);
}

void InboundConnection::FailCalls(std::string_view) {
  loop_->ForgetInbound(this);
  for (Call* call : calls.Take()) {
    call->in_open = false;
    ReleaseLease(call, absl::StatusCode::kCancelled);
    if (call->up_open) {
      nghttp2_submit_rst_stream(call->up->session(), NGHTTP2_FLAG_NONE, call->up_sid,
                                NGHTTP2_CANCEL);
      call->up->MarkDirty();
    }
    MaybeDelete(call);
  }
}

UpstreamConnection::UpstreamConnection(Loop* loop, int fd, RelayShared* shared,
                                       std::pair<const void*, size_t> k, std::string a)
    : Connection(loop, fd), key(k), authority(std::move(a)) {
  connecting_ = true;
  want_out_ = true;  // registered for EPOLLOUT until connected
  nghttp2_session_client_new3(&session_, shared->client_callbacks, this, shared->option,
                              loop->mem());
  nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                       {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, kStreamWindow},
                                       {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1}};
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kLocalWindow);
}

void UpstreamConnection::FailCalls(std::string_view reason) {
  loop_->Retire(this);
  for (Call* call : calls.Take()) {
    call->up = nullptr;
    UpstreamClosed(call, absl::StatusCode::kUnavailable);
    if (call->hook && RetryHooked(call, false, reason)) {
      MaybeDelete(call);
      continue;
    }
    RespondError(call, absl::StatusCode::kUnavailable,
                 "upstream connection failed: " + std::string(reason));
    MaybeDelete(call);
  }
}

// ------------------------------------------------------------ loop

Loop::~Loop() {
  for (Connection* c : graveyard_) delete c;
  for (Call* call : free_calls_) delete call;
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (event_fd_ >= 0) ::close(event_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

absl::Status Loop::Open(const std::string& host, int port, int* bound_port) {
  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (epoll_fd_ < 0 || event_fd_ < 0) return absl::InternalError("epoll/eventfd failed");
  Add(event_fd_, this, EPOLLIN);
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError("frame relay needs an IPv4 address, got '" + host + "'");
  }
  if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(listen_fd_, 1024) != 0) {
    return absl::UnavailableError("frame relay cannot listen on " + host + ":" +
                                  std::to_string(port) + ": " + std::strerror(errno));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  *bound_port = ntohs(addr.sin_port);
  Add(listen_fd_, &listener_, EPOLLIN);
  return absl::OkStatus();
}

void Loop::Accept() {
  if (listen_fd_ < 0) return;
  for (int i = 0; i < 64; ++i) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    auto* conn = new InboundConnection(this, fd, shared_);
    inbounds_.insert(conn);
    Add(fd, conn, EPOLLIN);
    MarkDirty(conn);  // our SETTINGS
  }
}

UpstreamConnection* Loop::Upstream(const void* pool, size_t index, const std::string& address) {
  const auto key = std::make_pair(pool, index);
  if (auto it = upstreams_.find(key); it != upstreams_.end()) {
    if (!it->second->retired && !it->second->closed()) return it->second;
    Retire(it->second);
  }
  auto hp = SplitTarget(address);
  if (!hp) return nullptr;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  // Numeric addresses resolve without I/O; names block this loop once per
  // new connection (peers are normally addresses).
  if (::getaddrinfo(hp->host.c_str(), std::to_string(hp->port).c_str(), &hints, &res) != 0 ||
      res == nullptr) {
    return nullptr;
  }
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ::freeaddrinfo(res);
    return nullptr;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  int rv = ::connect(fd, res->ai_addr, res->ai_addrlen);
  ::freeaddrinfo(res);
  if (rv != 0 && errno != EINPROGRESS) {
    ::close(fd);
    return nullptr;
  }
  auto* conn =
      new UpstreamConnection(this, fd, shared_, key, hp->host + ":" + std::to_string(hp->port));
  upstreams_[key] = conn;
  Add(fd, conn, EPOLLIN | EPOLLOUT);
  return conn;
}

void Loop::Retire(UpstreamConnection* c) {
  c->retired = true;
  if (auto it = upstreams_.find(c->key); it != upstreams_.end() && it->second == c) {
    upstreams_.erase(it);
  }
  if (!c->closed()) retired_.insert(c);
}

void Loop::OnEvents(uint32_t) {
  uint64_t n = 0;
  [[maybe_unused]] auto r = ::read(event_fd_, &n, sizeof(n));
  std::vector<std::function<void()>> tasks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    tasks.swap(tasks_);
  }
  for (auto& t : tasks) t();
}

void Loop::FireTimers() {
  if (timers_.empty()) return;  // the common case: no clock read per iteration
  const TimePoint now = shared_->clock->Now();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    Call* call = timers_.begin()->second;
    timers_.erase(timers_.begin());
    OnDeadline(call);
    MaybeDelete(call);
  }
}

void Loop::StopAccepting() {
  if (listen_fd_ < 0) return;
  Remove(listen_fd_);
  ::close(listen_fd_);
  listen_fd_ = -1;
}

void Loop::GoAway() {
  for (InboundConnection* c : inbounds_) {
    nghttp2_submit_goaway(c->session(), NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(c->session()), NGHTTP2_NO_ERROR,
                          nullptr, 0);
    MarkDirty(c);
  }
}

void Loop::CloseAll() {
  auto inbounds = inbounds_;
  for (auto* c : inbounds) c->Close("relay stopped");
  auto upstreams = upstreams_;
  for (auto& [k, c] : upstreams) c->Close("relay stopped");
  auto retired = retired_;
  for (auto* c : retired) c->Close("relay stopped");
  // Calls still waiting for a lease: their acquisitions were dropped.
  std::vector<Call*> calls = calls_.Take();
  for (Call* call : calls) calls_.Insert(call);  // MaybeDelete erases them again
  for (Call* call : calls) {
    call->acquiring = false;
    call->in_open = false;
    call->up_open = false;
    MaybeDelete(call);
  }
  for (Connection* c : graveyard_) {
    if (auto* u = dynamic_cast<UpstreamConnection*>(c)) retired_.erase(u);
    delete c;
  }
  graveyard_.clear();
  std::lock_guard<std::mutex> lock(mu_);
  tasks_.clear();  // dropped closures release their leases (Cancelled)
}

void Loop::Run() {
  epoll_event events[256];
  while (!stopping_) {
    int timeout = -1;
    if (!timers_.empty()) {
      const auto wait = timers_.begin()->first - shared_->clock->Now();
      timeout = static_cast<int>(std::clamp<long long>(
          std::chrono::ceil<std::chrono::milliseconds>(wait).count(), 0, 1000));
    }
    int n = ::epoll_wait(epoll_fd_, events, 256, timeout);
    for (int i = 0; i < n; ++i)
      static_cast<Handler*>(events[i].data.ptr)->OnEvents(events[i].events);
    FireTimers();
    // Flush every touched connection once per iteration: frames of many
    // calls leave in one write.
    for (size_t i = 0; i < dirty_.size(); ++i) dirty_[i]->Flush();
    dirty_.clear();
    if (!graveyard_.empty()) {
      for (Connection* c : graveyard_) {
        if (auto* u = dynamic_cast<UpstreamConnection*>(c)) retired_.erase(u);
        delete c;
      }
      graveyard_.clear();
    }
    // Retired upstream connections close once their last stream is done.
    for (auto it = retired_.begin(); it != retired_.end();) {
      UpstreamConnection* c = *it;
      if (c->calls.empty() && !c->closed()) {
        it = retired_.erase(it);
        c->Close("retired");
      } else {
        ++it;
      }
    }
  }
  CloseAll();
}

// ------------------------------------------------------------ callbacks setup

void SetupCallbacks(RelayShared* shared) {
  nghttp2_session_callbacks* s = nullptr;
  nghttp2_session_callbacks_new(&s);
  nghttp2_session_callbacks_set_send_callback(s, SendToBuffer);
  nghttp2_session_callbacks_set_on_begin_headers_callback(s, InBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(s, InHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(s, InFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(s, InDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(s, InStreamClose);
  nghttp2_session_callbacks_set_send_data_callback(s, InSendData);
  shared->server_callbacks = s;
  nghttp2_session_callbacks* c = nullptr;
  nghttp2_session_callbacks_new(&c);
  nghttp2_session_callbacks_set_send_callback(c, SendToBuffer);
  nghttp2_session_callbacks_set_on_begin_headers_callback(c, UpBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(c, UpHeader);
  nghttp2_session_callbacks_set_on_frame_recv_callback(c, UpFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, UpDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(c, UpStreamClose);
  nghttp2_session_callbacks_set_send_data_callback(c, UpSendData);
  shared->client_callbacks = c;
  nghttp2_option_new(&shared->option);
  // Windows reopen only when bytes reached the other side's socket buffer.
  nghttp2_option_set_no_auto_window_update(shared->option, 1);
}

void TeardownCallbacks(RelayShared* shared) {
  if (shared->server_callbacks) nghttp2_session_callbacks_del(shared->server_callbacks);
  if (shared->client_callbacks) nghttp2_session_callbacks_del(shared->client_callbacks);
  if (shared->option) nghttp2_option_del(shared->option);
  shared->server_callbacks = shared->client_callbacks = nullptr;
  shared->option = nullptr;
}

}  // namespace

// ------------------------------------------------------------ FrameRelay

struct FrameRelay::Impl {
  RelayShared shared;
  std::vector<std::unique_ptr<Loop>> loops;
  std::string host;
  bool started = false;
  bool stopped = false;
};

FrameRelay::FrameRelay(FrameRelayOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->shared.options = std::move(options);
  impl_->shared.clock =
      impl_->shared.options.clock ? impl_->shared.options.clock : core::SystemClock::Shared();
  for (auto& r : impl_->shared.options.routes) {
    // The dispatcher's spelling: no leading '/'.
    if (!r.prefix.empty() && r.prefix.front() == '/') r.prefix.erase(0, 1);
  }
  for (const auto& r : impl_->shared.options.routes) {
    impl_->shared.by_prefix[r.prefix] = &r;
    impl_->shared.longest_first.push_back(&r);
  }
  std::stable_sort(
      impl_->shared.longest_first.begin(), impl_->shared.longest_first.end(),
      [](const FrameRoute* a, const FrameRoute* b) { return a->prefix.size() > b->prefix.size(); });
  SetupCallbacks(&impl_->shared);
}

FrameRelay::~FrameRelay() {
  Shutdown(std::chrono::milliseconds(0));
  TeardownCallbacks(&impl_->shared);
}

absl::Status FrameRelay::Start() {
  if (impl_->started) return absl::OkStatus();
  auto hp = SplitTarget(impl_->shared.options.address);
  if (!hp) {
    return absl::InvalidArgumentError("frame relay address '" + impl_->shared.options.address +
                                      "' is not host:port");
  }
  impl_->host = hp->host;
  int port = hp->port;
  const int threads = std::max(1, impl_->shared.options.threads);
  for (int i = 0; i < threads; ++i) {
    auto loop = std::make_unique<Loop>(&impl_->shared);
    int bound = 0;
    if (auto s = loop->Open(hp->host, port, &bound); !s.ok()) {
      impl_->loops.clear();
      return s;
    }
    port = bound;  // the others share the first loop's port (SO_REUSEPORT)
    impl_->loops.push_back(std::move(loop));
  }
  port_ = port;
  impl_->shared.acquirer.Start(impl_->shared.options.acquire_threads);
  for (auto& loop : impl_->loops) loop->StartThread();
  impl_->started = true;
  return absl::OkStatus();
}

void FrameRelay::Shutdown(std::chrono::milliseconds grace) {
  if (!impl_->started || impl_->stopped) return;
  impl_->stopped = true;
  for (auto& loop : impl_->loops) {
    Loop* l = loop.get();
    l->Post([l] {
      l->StopAccepting();
      l->GoAway();
    });
  }
  const auto until = std::chrono::steady_clock::now() + grace;
  while (impl_->shared.active_calls.load() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  impl_->shared.acquirer.Stop();
  for (auto& loop : impl_->loops) {
    Loop* l = loop.get();
    l->Post([l] { l->Stop(); });
  }
  for (auto& loop : impl_->loops) loop->Join();
  impl_->loops.clear();
}

std::string FrameRelay::address() const { return impl_->host + ":" + std::to_string(port_); }

int64_t FrameRelay::active_calls() const { return impl_->shared.active_calls.load(); }

uint64_t FrameRelay::acquire_handoffs() const {
  return impl_->shared.acquire_handoffs.load(std::memory_order_relaxed);
}

// ------------------------------------------------------------ fuzz seam

absl::Status FeedInboundForTesting(const uint8_t* data, size_t size) {
  RelayShared shared;
  shared.clock = core::SystemClock::Shared();
  SetupCallbacks(&shared);
  // A loop object that is never run: connections only use it for epoll
  // bookkeeping (which fails harmlessly on fd -1) and dirty lists.
  absl::Status result;
  {
    Loop loop(&shared);
    auto* conn = new InboundConnection(&loop, -1, &shared);
    size_t offset = 0;
    while (offset < size) {
      // Feed in uneven chunks so frame boundaries land anywhere.
      const size_t chunk = std::min<size_t>(size - offset, 1 + (data[offset] % 97));
      ssize_t rv = nghttp2_session_mem_recv(conn->session(), data + offset, chunk);
      if (rv < 0) {
        result = absl::InvalidArgumentError(nghttp2_strerror(static_cast<int>(rv)));
        break;
      }
      offset += chunk;
      // Serialise whatever the relay answers (responses, RST_STREAM, GOAWAY).
      if (nghttp2_session_send(conn->session()) != 0) {
        result = absl::InternalError("session send failed");
        break;
      }
      if (!nghttp2_session_want_read(conn->session())) {
        result = absl::InvalidArgumentError("connection terminated by the protocol error");
        break;
      }
    }
    // Ends the calls without a socket (closes fd -1: harmless EBADF).
    conn->Close("fuzz input consumed");
  }
  TeardownCallbacks(&shared);
  return result;
}

}  // namespace omnirelay::h2relay
