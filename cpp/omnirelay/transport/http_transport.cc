#include "omnirelay/transport/http_transport.h"

#include <charconv>
#include <future>

#include "omnirelay/core/retry_after.h"
#include "omnirelay/transport/transport_util.h"

namespace omnirelay::transport {
namespace {

void SetStatusHeaders(core::Headers& headers, const absl::Status& status) {
  headers.Set("rpc-status", std::string(core::StatusCodeName(status.code())));
  if (!status.ok()) {
    if (auto code = core::ErrorCode(status)) headers.Set("rpc-error-code", *code);
    headers.Set("rpc-error-message", std::string(core::FromAbsl(status.message())));
  }
}

http::HttpResponse ErrorResponse(const absl::Status& status) {
  nlohmann::json body = {{"status", std::string(core::StatusCodeName(status.code()))},
                         {"message", std::string(core::FromAbsl(status.message()))}};
  if (auto code = core::ErrorCode(status)) body["errorCode"] = *code;
  auto response = http::HttpResponse::Json(core::ToHttpStatus(status.code()), body.dump());
  SetStatusHeaders(response.headers, status);
  if (auto after = core::RetryAfter(status)) {
    response.headers.Set("retry-after", std::to_string((after->count() + 999) / 1000));
    response.headers.Set("retry-after-ms", std::to_string(after->count()));
  } else if (status.code() == absl::StatusCode::kUnavailable) {
    response.headers.Set("retry-after", "1");
  }
  if (auto marker = core::Backpressure(status)) response.headers.Set("rpc-backpressure", *marker);
  return response;
}

// One SSE event; multi-line data becomes several data: lines.
std::string SseEvent(std::string_view event, std::string_view data) {
  std::string out;
  if (!event.empty()) out += "event: " + std::string(event) + "\n";
  size_t start = 0;
  for (;;) {
    size_t nl = data.find('\n', start);
    out += "data: ";
    out += data.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
    out += "\n";
    if (nl == std::string_view::npos) break;
    start = nl + 1;
  }
  out += "\n";
  return out;
}

class SseWriter final : public dispatcher::ServerStream {
 public:
  explicit SseWriter(const std::function<bool(std::string_view)>& write) : write_(write) {}
  bool Write(std::string message) override { return write_(SseEvent("", message)); }

 private:
  const std::function<bool(std::string_view)>& write_;
};

}  // namespace

// ---------------------------------------------------------------- inbound

HttpInbound::HttpInbound(HttpInboundOptions options,
                         std::shared_ptr<dispatcher::Dispatcher> dispatcher)
    : options_(std::move(options)), dispatcher_(std::move(dispatcher)) {}

HttpInbound::~HttpInbound() { Stop(); }

absl::Status HttpInbound::Start(const std::function<void(http::HttpServer&)>& extra) {
  auto hp = ParseHostPort(options_.address);
  if (!hp.ok()) return hp.status();
  http::HttpServerOptions server_options{
      .host = hp->host, .port = hp->port, .threads = options_.threads};
  server_options.limits = options_.limits;
  server_options.max_body_bytes = options_.limits.max_body_bytes;
  server_options.tls = options_.tls;
  server_ = std::make_unique<http::HttpServer>(std::move(server_options));
  if (extra) extra(*server_);
  server_->Fallback([this](const http::HttpRequest& request) { return Handle(request); });
  return server_->Start();
}

void HttpInbound::Stop() {
  if (server_) server_->Stop();
}

http::HttpResponse HttpInbound::Handle(const http::HttpRequest& request) {
  if (request.method != "POST") {
    return ErrorResponse(absl::InvalidArgumentError("RPC requests must be POST"));
  }
  core::RequestMeta meta;
  meta.transport = "http";
  for (const auto& [k, v] : request.headers.entries()) {
    if (!IsTransportHeader(k)) meta.headers.Add(k, v);
  }
  if (auto bad = ApplyRpcHeaders(meta); !bad.ok()) return ErrorResponse(bad);
  meta.peer_address = request.remote_address;
  if (!request.peer.empty()) meta.peer_identity = request.peer.Principal();
  if (meta.time_to_live) meta.deadline = meta.EffectiveDeadline(std::chrono::system_clock::now());
  meta.service = std::string(request.headers.Get("rpc-service").value_or(""));
  meta.procedure = std::string(request.headers.Get("rpc-procedure").value_or(""));
  if (meta.procedure.empty()) {
    std::string_view path(request.path);
    if (!path.empty() && path.front() == '/') path.remove_prefix(1);
    if (auto slash = path.find('/'); slash != std::string_view::npos) {
      if (meta.service.empty()) meta.service = std::string(path.substr(0, slash));
      meta.procedure = std::string(path.substr(slash + 1));
    }
  }
  if (meta.procedure.empty()) {
    return ErrorResponse(absl::InvalidArgumentError("missing Rpc-Procedure header"));
  }
  if (meta.service.empty()) meta.service = dispatcher_->service();
  if (!dispatcher_->BeginCall()) {
    return ErrorResponse(
        core::MakeStatus(absl::StatusCode::kUnavailable, "node is draining", "draining"));
  }
  struct EndCall {
    dispatcher::Dispatcher* d;
    ~EndCall() {
      if (d) d->EndCall();
    }
  } end{dispatcher_.get()};
  const auto* bound = dispatcher_->Resolve(meta.service, meta.procedure);
  if (bound == nullptr) {
    return ErrorResponse(absl::UnimplementedError("unknown procedure '" + meta.service + "/" +
                                                  meta.procedure + "'"));
  }
  dispatcher::Request call{.meta = std::move(meta), .body = request.body};
  switch (bound->procedure.kind) {
    case dispatcher::ProcedureKind::kUnary: {
      std::promise<absl::StatusOr<dispatcher::Response>> promise;
      auto future = promise.get_future();
      dispatcher_->InvokeUnary(*bound, std::move(call),
                               [&promise](absl::StatusOr<dispatcher::Response> result) {
                                 promise.set_value(std::move(result));
                               });
      auto result = future.get();
      if (!result.ok()) return ErrorResponse(result.status());
      http::HttpResponse response;
      response.status = 200;
      response.content_type = "application/octet-stream";
      for (const auto& [k, v] : result->headers.entries()) {
        if (!IsTransportHeader(k)) response.headers.Set(k, v);
      }
      SetStatusHeaders(response.headers, absl::OkStatus());
      response.body = std::move(result->body);
      return response;
    }
    case dispatcher::ProcedureKind::kOneway: {
      dispatcher_->InvokeUnary(*bound, std::move(call),
                               [](absl::StatusOr<dispatcher::Response>) {});
      http::HttpResponse response;
      response.status = 202;
      SetStatusHeaders(response.headers, absl::OkStatus());
      return response;
    }
    case dispatcher::ProcedureKind::kServerStream: {
      http::HttpResponse response;
      response.status = 200;
      response.content_type = "text/event-stream";
      response.headers.Set("cache-control", "no-cache");
      // The stream body runs after Handle returns: keep the call admitted
      // until it ends.
      end.d = nullptr;
      auto d = dispatcher_;
      auto shared_call = std::make_shared<dispatcher::Request>(std::move(call));
      response.stream = [d, bound,
                         shared_call](const std::function<bool(std::string_view)>& write) {
        SseWriter writer(write);
        absl::Status status = d->InvokeServerStream(*bound, std::move(*shared_call), writer);
        nlohmann::json end = {{"status", std::string(core::StatusCodeName(status.code()))}};
        if (!status.ok()) end["message"] = std::string(core::FromAbsl(status.message()));
        write(SseEvent(status.ok() ? "end" : "error", end.dump()));
        d->EndCall();
      };
      return response;
    }
    default:
      return ErrorResponse(absl::UnimplementedError(
          "client-stream and duplex procedures are not available over HTTP/1.1; use gRPC"));
  }
}

// ---------------------------------------------------------------- outbound

HttpOutbound::HttpOutbound(HttpOutboundOptions options, std::shared_ptr<PeerPool> pool,
                           std::shared_ptr<core::Clock> clock)
    : options_(std::move(options)), pool_(std::move(pool)), clock_(std::move(clock)) {}

HttpOutbound::~HttpOutbound() { Stop(); }

absl::Status HttpOutbound::Start() {
  for (const auto& endpoint : pool_->addresses()) {
    auto hp = ParseHostPort(endpoint);
    if (!hp.ok()) return hp.status();
    if (hp->scheme == "https" && !tls_) {
      // "https://" is TLS, never silently plaintext (docs/security.md).
      auto source =
          tls::ContextSource::Create(options_.tls.value_or(tls::TlsOptions{}), tls::Role::kClient);
      if (!source.ok()) return source.status();
      tls_ = *source;
    }
  }
  if (!tls_ && options_.tls && pool_->addresses().empty()) {
    // A dynamic list (peers from membership) may bring https:// peers later.
    auto source = tls::ContextSource::Create(*options_.tls, tls::Role::kClient);
    if (!source.ok()) return source.status();
    tls_ = *source;
  }
  for (int i = 0; i < std::max(1, options_.threads); ++i) workers_.emplace_back([this] { Work(); });
  return absl::OkStatus();
}

void HttpOutbound::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void HttpOutbound::Work() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void HttpOutbound::CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) {
  auto shared = std::make_shared<std::pair<dispatcher::Request, dispatcher::UnaryCallback>>(
      std::move(request), std::move(done));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      shared->second(absl::UnavailableError("outbound is stopped"));
      return;
    }
    queue_.push_back([this, shared] { Run(std::move(shared->first), std::move(shared->second)); });
  }
  cv_.notify_one();
}

void HttpOutbound::Run(dispatcher::Request request, dispatcher::UnaryCallback done) {
  const auto now = clock_->Now();
  const auto deadline = request.meta.EffectiveDeadline(now);
  auto lease = pool_->Acquire(request.meta, deadline);
  if (!lease.ok()) {
    done(lease.status());
    return;
  }
  // Peers may join at runtime (mesh-selected outbounds): the lease names
  // the address, and a malformed or unverifiable one fails this call only.
  auto hp = ParseHostPort(lease->peer->address);
  if (!hp.ok() || (hp->scheme == "https" && !tls_)) {
    pool_->Release(*lease, absl::StatusCode::kFailedPrecondition);
    done(!hp.ok() ? hp.status()
                  : absl::FailedPreconditionError("peer '" + lease->peer->address +
                                                  "' is https but the outbound has no TLS"));
    return;
  }
  core::Headers headers;
  for (const auto& [k, v] : request.meta.headers.entries()) {
    if (!IsTransportHeader(k) && !IsRpcHeader(k)) headers.Add(k, v);
  }
  const auto& m = request.meta;
  headers.Set("rpc-service", options_.service.empty() ? m.service : options_.service);
  headers.Set("rpc-procedure", options_.procedure.empty() ? m.procedure : options_.procedure);
  if (!m.caller.empty()) headers.Set("rpc-caller", m.caller);
  if (!m.encoding.empty()) headers.Set("rpc-encoding", m.encoding);
  if (!m.shard_key.empty()) headers.Set("rpc-shard-key", m.shard_key);
  if (!m.routing_key.empty()) headers.Set("rpc-routing-key", m.routing_key);
  if (!m.routing_delegate.empty()) headers.Set("rpc-routing-delegate", m.routing_delegate);
  std::chrono::milliseconds timeout = std::chrono::seconds(30);
  if (deadline) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*deadline - now);
    if (left.count() < 1) left = std::chrono::milliseconds(1);
    timeout = left;
    headers.Set("rpc-ttl-ms", std::to_string(left.count()));
    headers.Set("rpc-deadline", core::FormatTimestamp(*deadline));
  }
  auto result = http::HttpCall(hp->host, hp->port, "POST", hp->path, request.body, headers, timeout,
                               hp->scheme == "https" ? tls_.get() : nullptr);
  if (!result.ok()) {
    absl::Status status = result.status();
    if (deadline && clock_->Now() >= *deadline) {
      status = absl::DeadlineExceededError("HTTP outbound call exceeded its deadline");
    }
    pool_->Release(*lease, status.code());
    done(status);
    return;
  }
  absl::StatusCode code = core::FromHttpStatus(result->status);
  if (auto s = result->headers.Get("rpc-status")) {
    if (auto parsed = core::ParseStatusCodeName(*s)) code = *parsed;
  }
  pool_->Release(*lease, code);
  if (code != absl::StatusCode::kOk) {
    std::string message(result->headers.Get("rpc-error-message").value_or(result->body));
    absl::Status status(code, core::ToAbsl(message));
    if (auto ec = result->headers.Get("rpc-error-code")) status = core::WithErrorCode(status, *ec);
    done(status);
    return;
  }
  dispatcher::Response response;
  for (const auto& [k, v] : result->headers.entries()) {
    if (!IsTransportHeader(k) && !k.starts_with("rpc-")) response.headers.Add(k, v);
  }
  response.body = std::move(result->body);
  done(std::move(response));
}

nlohmann::json HttpOutbound::Snapshot() const {
  nlohmann::json out = pool_->Snapshot();
  out["transport"] = "http";
  out["service"] = options_.service;
  out["procedure"] = options_.procedure;
  return out;
}

}  // namespace omnirelay::transport
