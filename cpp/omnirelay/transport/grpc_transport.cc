#include "omnirelay/transport/grpc_transport.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>

#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/retry_after.h"
#include "omnirelay/tls/grpc_credentials.h"
#include "omnirelay/transport/transport_util.h"

namespace omnirelay::transport {
namespace {

using dispatcher::ProcedureKind;

// Every completion-queue tag of this file; queue threads call Proceed.
class Tag {
 public:
  virtual ~Tag() = default;
  virtual void Proceed(bool ok) = 0;
};

// The queue the current thread polls, if it is a transport queue thread.
thread_local grpc::CompletionQueue* tls_cq = nullptr;

void RunQueue(grpc::CompletionQueue* cq) {
  tls_cq = cq;
  void* tag = nullptr;
  bool ok = false;
  while (cq->Next(&tag, &ok)) static_cast<Tag*>(tag)->Proceed(ok);
  tls_cq = nullptr;
}

grpc::ByteBuffer ToBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

std::string_view View(const grpc::string_ref& ref) { return {ref.data(), ref.size()}; }

// gRPC's peer string ("ipv4:127.0.0.1:5000", "ipv6:[::1]:5000") -> "host:port".
std::string PeerAddress(const std::string& peer) {
  for (std::string_view prefix : {"ipv4:", "ipv6:"}) {
    if (peer.starts_with(prefix)) return peer.substr(prefix.size());
  }
  return peer;
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

// A tag a blocking thread waits on (streams).
class WaitTag final : public Tag {
 public:
  void Proceed(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    ok_ = ok;
    done_ = true;
    cv_.notify_one();
  }
  bool Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    done_ = false;
    return ok_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  bool ok_ = false;
};

// Streaming handlers block (they wait for each queue operation), so each
// needs a thread; this pool bounds how many run at once instead of starting a
// detached thread per stream. Threads start on demand up to `cap` and are
// reused. TrySubmit refuses when `cap` handlers are already admitted (the call
// is answered RESOURCE_EXHAUSTED). Shutdown waits for admitted handlers and
// joins every thread, so no handler outlives the inbound.
class StreamPool {
 public:
  explicit StreamPool(int cap) : cap_(std::max(1, cap)) {}
  ~StreamPool() { Shutdown(); }

  bool TrySubmit(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || admitted_ >= cap_) return false;
    ++admitted_;
    queue_.push_back(std::move(task));
    if (static_cast<int>(threads_.size()) < admitted_) {
      threads_.emplace_back([this] { Work(); });
    }
    cv_.notify_one();
    return true;
  }

  void Shutdown() {
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      threads.swap(threads_);
    }
    cv_.notify_all();
    for (auto& t : threads) t.join();
  }

  int admitted() const {
    std::lock_guard<std::mutex> lock(mu_);
    return admitted_;
  }

 private:
  void Work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and nothing admitted is left
      auto task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
      --admitted_;
    }
  }

  const int cap_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
  int admitted_ = 0;
  bool stopping_ = false;
};

struct InboundShared {
  std::shared_ptr<dispatcher::Dispatcher> dispatcher;
  grpc::AsyncGenericService* service = nullptr;
  std::atomic<int> streams{0};
  std::unique_ptr<StreamPool> stream_pool;
};

// One server call, from RequestCall to Finish. Unary kinds: a queue state
// machine. Streaming kinds: a thread running the blocking handler.
class InboundCall final : public Tag {
 public:
  InboundCall(InboundShared* shared, grpc::ServerCompletionQueue* cq)
      : shared_(shared), cq_(cq), stream_(&ctx_) {
    shared_->service->RequestCall(&ctx_, &stream_, cq_, cq_, this);
  }

  void Proceed(bool ok) override {
    switch (state_) {
      case State::kRequested:
        if (!ok) {
          delete this;
          return;
        }
        new InboundCall(shared_, cq_);
        Begin();
        return;
      case State::kReadUnary:
        if (!ok) {
          FinishWith(absl::InvalidArgumentError("unary call without a request message"));
          return;
        }
        RunUnary();
        return;
      case State::kFinishing:
        if (admitted_) shared_->dispatcher->EndCall();
        delete this;
        return;
      case State::kStreaming:
        return;  // not used: stream operations use WaitTags
    }
  }

 private:
  enum class State { kRequested, kReadUnary, kStreaming, kFinishing };

  void Begin() {
    const std::string& method = ctx_.method();
    std::string_view path(method);
    if (!path.empty() && path.front() == '/') path.remove_prefix(1);
    const auto slash = path.find('/');
    std::string_view service = slash == std::string_view::npos ? "" : path.substr(0, slash);
    std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
    if (!shared_->dispatcher->BeginCall()) {
      FinishWith(core::MakeStatus(absl::StatusCode::kUnavailable, "node is draining", "draining"));
      return;
    }
    admitted_ = true;
    bound_ = shared_->dispatcher->Resolve(service, name);
    if (bound_ == nullptr) {
      FinishWith(absl::UnimplementedError("unknown procedure '" + std::string(service) + "/" +
                                          std::string(name) + "'"));
      return;
    }
    meta_.service = std::string(service);
    meta_.procedure = std::string(name);
    meta_.transport = "grpc";
    for (const auto& [key, value] : ctx_.client_metadata()) {
      std::string_view k = View(key);
      if (IsTransportHeader(k)) continue;
      meta_.headers.Add(k, std::string(View(value)));
    }
    if (auto bad = ApplyRpcHeaders(meta_); !bad.ok()) {
      FinishWith(bad);
      return;
    }
    meta_.peer_address = PeerAddress(ctx_.peer());
    meta_.peer_identity = tls::GrpcPeerIdentity(ctx_.auth_context().get()).Principal();
    if (meta_.peer_identity == "sha256:") meta_.peer_identity.clear();
    const auto deadline = ctx_.deadline();
    if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
      meta_.deadline = std::chrono::time_point_cast<core::Duration>(deadline);
    }
    switch (bound_->procedure.kind) {
      case ProcedureKind::kUnary:
      case ProcedureKind::kOneway:
        state_ = State::kReadUnary;
        stream_.Read(&request_, this);
        return;
      default:
        state_ = State::kStreaming;
        shared_->streams.fetch_add(1);
        if (!shared_->stream_pool->TrySubmit([this] { RunStream(); })) {
          shared_->streams.fetch_sub(1);
          FinishWith(core::MakeStatus(absl::StatusCode::kResourceExhausted,
                                      "the inbound's streaming capacity is in use (maxStreams)",
                                      "stream-capacity"));
        }
        return;
    }
  }

  void RunUnary() {
    dispatcher::Request request{.meta = std::move(meta_), .body = ToString(request_)};
    request_.Clear();
    if (bound_->procedure.kind == ProcedureKind::kOneway) {
      // Oneway: acknowledged as soon as it is accepted; the handler's result is dropped.
      shared_->dispatcher->InvokeUnary(*bound_, std::move(request),
                                       [](absl::StatusOr<dispatcher::Response>) {});
      Reply(dispatcher::Response{});
      return;
    }
    shared_->dispatcher->InvokeUnary(
        *bound_, std::move(request),
        [this](absl::StatusOr<dispatcher::Response> result) { Reply(std::move(result)); });
  }

  void Reply(absl::StatusOr<dispatcher::Response> result) {
    if (!result.ok()) {
      FinishWith(result.status());
      return;
    }
    AddInitialMetadata(result->headers);
    response_ = ToBuffer(result->body);
    state_ = State::kFinishing;
    stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, this);
  }

  void AddInitialMetadata(const core::Headers& headers) {
    for (const auto& [k, v] : headers.entries()) {
      if (!IsTransportHeader(k)) ctx_.AddInitialMetadata(k, v);
    }
  }

  void FinishWith(const absl::Status& status) {
    if (auto code = core::ErrorCode(status)) ctx_.AddTrailingMetadata("rpc-error-code", *code);
    if (auto after = core::RetryAfter(status)) {
      ctx_.AddTrailingMetadata("retry-after-ms", std::to_string(after->count()));
    }
    if (auto marker = core::Backpressure(status)) {
      ctx_.AddTrailingMetadata("rpc-backpressure", *marker);
    }
    state_ = State::kFinishing;
    stream_.Finish(ToGrpc(status), this);
  }

  class Reader final : public dispatcher::ClientStream {
   public:
    explicit Reader(InboundCall* call) : call_(call) {}
    std::optional<std::string> Read() override {
      if (done_) return std::nullopt;
      grpc::ByteBuffer buffer;
      call_->stream_.Read(&buffer, &tag_);
      if (!tag_.Wait()) {
        done_ = true;
        return std::nullopt;
      }
      return ToString(buffer);
    }

   private:
    InboundCall* call_;
    WaitTag tag_;
    bool done_ = false;
  };

  class Writer final : public dispatcher::ServerStream {
   public:
    explicit Writer(InboundCall* call) : call_(call) {}
    bool Write(std::string message) override {
      grpc::ByteBuffer buffer = ToBuffer(message);
      call_->stream_.Write(buffer, &tag_);
      return tag_.Wait();
    }

   private:
    InboundCall* call_;
    WaitTag tag_;
  };

  void RunStream() {
    InboundShared* shared = shared_;
    Reader reader(this);
    Writer writer(this);
    const auto& d = *shared->dispatcher;
    absl::Status status;
    switch (bound_->procedure.kind) {
      case ProcedureKind::kServerStream: {
        auto first = reader.Read();
        if (!first) {
          status = absl::InvalidArgumentError("server-stream call without a request message");
        } else {
          status = d.InvokeServerStream(
              *bound_, dispatcher::Request{.meta = std::move(meta_), .body = std::move(*first)},
              writer);
        }
        break;
      }
      case ProcedureKind::kClientStream: {
        auto result = d.InvokeClientStream(*bound_, std::move(meta_), reader);
        if (result.ok()) {
          AddInitialMetadata(result->headers);
          response_ = ToBuffer(result->body);
          state_ = State::kFinishing;
          stream_.WriteAndFinish(response_, grpc::WriteOptions(), grpc::Status::OK, this);
          shared->streams.fetch_sub(1);
          return;
        }
        status = result.status();
        break;
      }
      default:
        status = d.InvokeDuplex(*bound_, std::move(meta_), reader, writer);
        break;
    }
    FinishWith(status);  // `this` may be deleted from here on
    shared->streams.fetch_sub(1);
  }

  InboundShared* shared_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  State state_ = State::kRequested;
  bool admitted_ = false;
  const dispatcher::BoundProcedure* bound_ = nullptr;
  core::RequestMeta meta_;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer response_;
};

void AddOutgoingMetadata(grpc::ClientContext& ctx, const core::RequestMeta& meta) {
  for (const auto& [k, v] : meta.headers.entries()) {
    if (IsTransportHeader(k) || IsRpcHeader(k)) continue;
    ctx.AddMetadata(k, v);
  }
  if (!meta.caller.empty()) ctx.AddMetadata("rpc-caller", meta.caller);
  if (!meta.encoding.empty()) ctx.AddMetadata("rpc-encoding", meta.encoding);
  if (!meta.shard_key.empty()) ctx.AddMetadata("rpc-shard-key", meta.shard_key);
  if (!meta.routing_key.empty()) ctx.AddMetadata("rpc-routing-key", meta.routing_key);
  if (!meta.routing_delegate.empty())
    ctx.AddMetadata("rpc-routing-delegate", meta.routing_delegate);
}

}  // namespace

absl::Status UnrequestedCancelIsUnavailable(absl::Status status, bool cancelled_by_caller) {
  if (cancelled_by_caller || status.code() != absl::StatusCode::kCancelled) return status;
  return absl::UnavailableError("backend cancelled the call (shutting down): " +
                                std::string(status.message()));
}

namespace {

// `cancelled_by_caller`: this side called TryCancel on the call.
absl::Status FromGrpc(const grpc::Status& status, const grpc::ClientContext& ctx,
                      bool cancelled_by_caller) {
  absl::Status out(static_cast<absl::StatusCode>(status.error_code()),
                   core::ToAbsl(status.error_message()));
  out = UnrequestedCancelIsUnavailable(std::move(out), cancelled_by_caller);
  const auto& trailers = ctx.GetServerTrailingMetadata();
  if (auto it = trailers.find("rpc-error-code"); it != trailers.end()) {
    out = core::WithErrorCode(std::move(out), View(it->second));
  }
  if (auto it = trailers.find("retry-after-ms"); it != trailers.end()) {
    long long ms = 0;
    const auto text = View(it->second);
    if (std::from_chars(text.data(), text.data() + text.size(), ms).ec == std::errc()) {
      out = core::WithRetryAfter(std::move(out), std::chrono::milliseconds(ms));
    }
  }
  if (auto it = trailers.find("rpc-backpressure"); it != trailers.end()) {
    out = core::WithBackpressure(std::move(out), std::string(View(it->second)));
  }
  return out;
}

class OutboundUnaryCall final : public Tag {
 public:
  void Proceed(bool ok) override {
    // The peer's outcome as the caller sees it: a backend cancelling calls
    // while it shuts down counts as a failing peer (UNAVAILABLE).
    pool->Release(lease, status.error_code() == grpc::StatusCode::CANCELLED
                             ? absl::StatusCode::kUnavailable
                             : static_cast<absl::StatusCode>(status.error_code()));
    if (status.ok()) {
      dispatcher::Response result;
      for (const auto& [k, v] : ctx.GetServerInitialMetadata()) {
        result.headers.Add(View(k), std::string(View(v)));
      }
      result.body = ToString(response);
      done(std::move(result));
    } else {
      // A unary outbound call is never cancelled from this side (deadlines
      // end as DEADLINE_EXCEEDED), so any CANCELLED came from the backend.
      done(FromGrpc(status, ctx, /*cancelled_by_caller=*/false));
    }
    delete this;
  }

  grpc::ClientContext ctx;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<grpc::ByteBuffer>> reader;
  std::shared_ptr<PeerPool> pool;
  PeerLease lease;
  dispatcher::UnaryCallback done;
};

class GrpcOutboundStream final : public dispatcher::OutboundStream {
 public:
  GrpcOutboundStream(std::shared_ptr<PeerPool> pool, PeerLease lease, std::string path)
      : pool_(std::move(pool)), lease_(lease), path_(std::move(path)) {}
  ~GrpcOutboundStream() override {
    if (!finished_) {
      Cancel();
      Finish().IgnoreError();
    }
  }
  void Open(grpc::Channel* channel) {
    stream_.reset(
        grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
            channel,
            grpc::internal::RpcMethod(path_.c_str(), grpc::internal::RpcMethod::BIDI_STREAMING),
            &ctx_));
  }
  bool Write(std::string message) override { return stream_->Write(ToBuffer(message)); }
  bool WritesDone() override { return stream_->WritesDone(); }
  std::optional<std::string> Read() override {
    grpc::ByteBuffer buffer;
    if (!stream_->Read(&buffer)) return std::nullopt;
    return ToString(buffer);
  }
  absl::Status Finish() override {
    if (finished_) return final_;
    finished_ = true;
    grpc::Status status = stream_->Finish();
    final_ = FromGrpc(status, ctx_, cancelled_.load(std::memory_order_acquire));
    pool_->Release(lease_, final_.code());
    return final_;
  }
  void Cancel() override {
    cancelled_.store(true, std::memory_order_release);
    ctx_.TryCancel();
  }
  grpc::ClientContext& ctx() { return ctx_; }

 private:
  std::shared_ptr<PeerPool> pool_;
  PeerLease lease_;
  std::string path_;
  std::atomic<bool> cancelled_{false};  // Cancel() ran (may be another thread than Finish)
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream_;
  bool finished_ = false;
  absl::Status final_;
};

}  // namespace

std::string GrpcTarget(const std::string& endpoint) {
  // Config validation already ran every endpoint through the same parser.
  auto parsed = core::ParseHostPort(endpoint);
  return parsed.ok() ? parsed->Authority() : endpoint;
}

bool IsTlsEndpoint(const std::string& endpoint) { return endpoint.rfind("https://", 0) == 0; }

// ---------------------------------------------------------------- inbound

GrpcInbound::GrpcInbound(GrpcInboundOptions options,
                         std::shared_ptr<dispatcher::Dispatcher> dispatcher)
    : options_(std::move(options)), dispatcher_(std::move(dispatcher)) {}

GrpcInbound::~GrpcInbound() { Shutdown(std::chrono::milliseconds(0)); }

namespace {
// Per-inbound shared state; kept alive until every queue thread has exited.
std::mutex shared_mu;
std::map<const GrpcInbound*, std::unique_ptr<InboundShared>> shared_by_inbound;
}  // namespace

absl::Status GrpcInbound::Start() {
  // Debian's abseil runs absl::Mutex deadlock detection (a lock graph
  // updated on every grpc-internal lock); the profile of a relayed call shows
  // it at a few percent of CPU. Production builds of gRPC turn it off too.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  service_ = std::make_unique<grpc::AsyncGenericService>();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(
      options_.address,
      options_.tls ? tls::GrpcServerCredentials(*options_.tls) : grpc::InsecureServerCredentials(),
      &port_);
  for (auto* extra : options_.services) builder.RegisterService(extra);
  builder.RegisterAsyncGenericService(service_.get());
  builder.SetMaxReceiveMessageSize(options_.max_message_bytes);
  builder.SetMaxSendMessageSize(options_.max_message_bytes);
  const int threads = std::max(1, options_.threads);
  for (int i = 0; i < threads; ++i) cqs_.push_back(builder.AddCompletionQueue());
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    return absl::UnavailableError("gRPC inbound cannot listen on " + options_.address);
  }
  auto shared = std::make_unique<InboundShared>();
  shared->dispatcher = dispatcher_;
  shared->service = service_.get();
  shared->stream_pool = std::make_unique<StreamPool>(options_.max_streams);
  InboundShared* raw = shared.get();
  {
    std::lock_guard<std::mutex> lock(shared_mu);
    shared_by_inbound[this] = std::move(shared);
  }
  for (int i = 0; i < threads; ++i) {
    // A few outstanding RequestCalls per queue so bursts of new calls do not
    // wait for the queue thread to re-arm one.
    for (int k = 0; k < 8; ++k) new InboundCall(raw, cqs_[i].get());
    threads_.emplace_back([this, i] { Poll(i); });
  }
  return absl::OkStatus();
}

void GrpcInbound::Poll(int index) { RunQueue(cqs_[index].get()); }

void GrpcInbound::Shutdown(std::chrono::milliseconds grace) {
  if (shut_down_ || !server_) return;
  shut_down_ = true;
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  InboundShared* shared = nullptr;
  {
    std::lock_guard<std::mutex> lock(shared_mu);
    shared = shared_by_inbound[this].get();
  }
  // Streaming handlers post their final operation to the queues (still
  // polled); the server shutdown above cancelled what was left, so they end.
  // Join them before the queues and the shared state go away.
  if (shared && shared->stream_pool) shared->stream_pool->Shutdown();
  for (auto& cq : cqs_) cq->Shutdown();
  for (auto& t : threads_) t.join();
  threads_.clear();
  std::lock_guard<std::mutex> lock(shared_mu);
  shared_by_inbound.erase(this);
}

std::string GrpcInbound::address() const {
  std::string host = options_.address.substr(0, options_.address.rfind(':'));
  return host + ":" + std::to_string(port_);
}

// ---------------------------------------------------------------- outbound

GrpcOutbound::GrpcOutbound(GrpcOutboundOptions options, std::shared_ptr<PeerPool> pool,
                           std::shared_ptr<core::Clock> clock)
    : options_(std::move(options)), pool_(std::move(pool)), clock_(std::move(clock)) {}

GrpcOutbound::~GrpcOutbound() { Stop(); }

absl::Status GrpcOutbound::Start() {
  if (started_) return absl::OkStatus();
  // One channel per peer, made by the pool when the peer is added (now for
  // a static list, later for a dynamic one) and dropped with the peer's last
  // lease. The factory copies what it needs: the pool may outlive us.
  pool_->SetAttachmentFactory([tls = options_.tls](const std::string& address) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);
    // One connection per peer channel, not shared with other channels.
    args.SetInt("grpc.use_local_subchannel_pool", 1);
    // "https://" is TLS, never silently plaintext (docs/security.md).
    std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(
        GrpcTarget(address),
        IsTlsEndpoint(address) ? tls::GrpcChannelCredentials(tls.value_or(tls::TlsOptions{}))
                               : grpc::InsecureChannelCredentials(),
        args);
    return std::shared_ptr<void>(std::move(channel));
  });
  for (int i = 0; i < 8; ++i) acquire_workers_.emplace_back([this] { AcquireWorker(); });
  for (int i = 0; i < std::max(1, options_.threads); ++i) {
    cqs_.push_back(std::make_unique<grpc::CompletionQueue>());
    grpc::CompletionQueue* cq = cqs_.back().get();
    threads_.emplace_back([cq] { RunQueue(cq); });
  }
  started_ = true;
  return absl::OkStatus();
}

void GrpcOutbound::AcquireWorker() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(acquire_mu_);
      acquire_cv_.wait(lock, [this] { return acquire_stopping_ || !acquire_queue_.empty(); });
      if (acquire_queue_.empty()) return;
      task = std::move(acquire_queue_.front());
      acquire_queue_.pop_front();
    }
    task();
  }
}

void GrpcOutbound::Stop() {
  if (!started_) return;
  started_ = false;
  {
    std::lock_guard<std::mutex> lock(acquire_mu_);
    acquire_stopping_ = true;
  }
  acquire_cv_.notify_all();
  for (auto& t : acquire_workers_) t.join();
  acquire_workers_.clear();
  for (auto& cq : cqs_) cq->Shutdown();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

std::shared_ptr<grpc::Channel> GrpcOutbound::LeasedChannel(const PeerLease& lease) {
  if (lease.peer == nullptr) return nullptr;
  return std::static_pointer_cast<grpc::Channel>(lease.peer->attachment);
}

grpc::CompletionQueue* GrpcOutbound::PickQueue() {
  if (tls_cq != nullptr) return tls_cq;
  return cqs_[next_cq_.fetch_add(1, std::memory_order_relaxed) % cqs_.size()].get();
}

std::string GrpcOutbound::MethodPath(const core::RequestMeta& meta) const {
  if (!options_.procedure.empty()) {
    if (options_.procedure.find('/') != std::string::npos) {
      return options_.procedure.front() == '/' ? options_.procedure : "/" + options_.procedure;
    }
    const std::string& service = options_.service.empty() ? meta.service : options_.service;
    return "/" + service + "/" + options_.procedure;
  }
  const std::string& service = options_.service.empty() ? meta.service : options_.service;
  return "/" + service + "/" + meta.procedure;
}

void GrpcOutbound::CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) {
  const auto deadline = request.meta.EffectiveDeadline(clock_->Now());
  if (!deadline) {
    StartUnary(std::move(request), std::move(done), deadline);
    return;
  }
  auto task = std::make_shared<std::pair<dispatcher::Request, dispatcher::UnaryCallback>>(
      std::move(request), std::move(done));
  {
    std::lock_guard<std::mutex> lock(acquire_mu_);
    if (!acquire_stopping_) {
      acquire_queue_.push_back([this, task, deadline] {
        StartUnary(std::move(task->first), std::move(task->second), deadline);
      });
      acquire_cv_.notify_one();
      return;
    }
  }
  task->second(absl::UnavailableError("outbound is stopped"));
}

void GrpcOutbound::StartUnary(dispatcher::Request request, dispatcher::UnaryCallback done,
                              std::optional<core::TimePoint> deadline) {
  auto lease = pool_->Acquire(request.meta, deadline);
  if (!lease.ok()) {
    done(lease.status());
    return;
  }
  auto channel = LeasedChannel(*lease);
  if (channel == nullptr) {
    pool_->Release(*lease, absl::StatusCode::kInternal);
    done(absl::InternalError("outbound '" + options_.name + "' is not started"));
    return;
  }
  auto* call = new OutboundUnaryCall();
  call->pool = pool_;
  call->lease = *lease;
  call->done = std::move(done);
  if (deadline) call->ctx.set_deadline(*deadline);
  AddOutgoingMetadata(call->ctx, request.meta);
  call->request = ToBuffer(request.body);
  grpc::GenericStub stub(std::move(channel));
  call->reader =
      stub.PrepareUnaryCall(&call->ctx, MethodPath(request.meta), call->request, PickQueue());
  call->reader->StartCall();
  call->reader->Finish(&call->response, &call->status, call);
}

absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> GrpcOutbound::OpenStream(
    const core::RequestMeta& meta) {
  const auto deadline = meta.EffectiveDeadline(clock_->Now());
  auto lease = pool_->Acquire(meta, deadline);
  if (!lease.ok()) return lease.status();
  auto channel = LeasedChannel(*lease);
  if (channel == nullptr) {
    pool_->Release(*lease, absl::StatusCode::kInternal);
    return absl::InternalError("outbound '" + options_.name + "' is not started");
  }
  auto stream = std::make_unique<GrpcOutboundStream>(pool_, *lease, MethodPath(meta));
  if (deadline) stream->ctx().set_deadline(*deadline);
  AddOutgoingMetadata(stream->ctx(), meta);
  stream->Open(channel.get());
  return stream;
}

nlohmann::json GrpcOutbound::Snapshot() const {
  nlohmann::json out = pool_->Snapshot();
  out["transport"] = "grpc";
  out["service"] = options_.service;
  out["procedure"] = options_.procedure;
  return out;
}

}  // namespace omnirelay::transport
