#include "omnirelay/gateway/gateway.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <array>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "omnirelay/auth/jwt.h"
#include "omnirelay/auth/secrets.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/gateway/admission.h"
#include "omnirelay/h2relay/frame_relay.h"
#include "omnirelay/peers/sticky_chooser.h"
#include "omnirelay/samples/registry_client.h"
#include "omnirelay/tls/grpc_credentials.h"

namespace omnirelay::gateway {
namespace {

using peers::StickyChooser;
using peers::StickyMember;
using peers::StickyMembershipChange;
using peers::StickyOutcome;
using peers::StickyPick;

using Clock = std::chrono::steady_clock;

// A transferStreams call keeps at most this many request messages for replay
// after its first response (a server stream sends one).
constexpr size_t kMaxReplayMessages = 16;

// The gateway's metric table (docs/session-gateway.md, "Gateway mode").
const core::MetricDescriptor kRequests{"omnirelay.gateway.requests", core::MetricKind::kCounter,
                                       "{request}",
                                       "Calls answered by the gateway, by route and status code."};
const core::MetricDescriptor kSessions{"omnirelay.gateway.sessions", core::MetricKind::kGauge,
                                       "{session}", "Sticky bindings (session -> instance)."};
const core::MetricDescriptor kTransfers{
    "omnirelay.gateway.session_transfers", core::MetricKind::kCounter, "{session}",
    "Sessions re-bound to another instance after theirs failed or left."};
const core::MetricDescriptor kStreamTransfers{
    "omnirelay.gateway.stream_transfers", core::MetricKind::kCounter, "{stream}",
    "Live streams that continued on another instance after theirs failed mid-stream (the "
    "request was replayed there and its first message reached the client)."};
const core::MetricDescriptor kEvictions{
    "omnirelay.gateway.evictions", core::MetricKind::kCounter, "{binding}",
    "Bindings dropped: reason=transport_failure (the instance failed) or left (the registry "
    "no longer lists it)."};
const core::MetricDescriptor kAttempts{
    "omnirelay.gateway.attempts", core::MetricKind::kCounter, "{attempt}",
    "Backend attempts by outcome: ok (any status the application returned), "
    "transport_failure, timeout."};

// Metadata the gRPC stack owns on either side; everything else is forwarded.
bool Forwardable(std::string_view key) {
  if (key.empty() || key.front() == ':' || key.starts_with("grpc-")) return false;
  return key != "te" && key != "content-type" && key != "user-agent" && key != "host";
}

std::string Str(const grpc::string_ref& ref) { return std::string(ref.data(), ref.size()); }

// One thread running deadline callbacks (attempt timeouts). Callbacks must
// be short; they run with no gateway lock held.
class TimerQueue {
 public:
  TimerQueue() : thread_([this] { Run(); }) {}
  ~TimerQueue() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Schedule(Clock::time_point when, std::function<void()> fn) {
    bool earliest;
    {
      std::lock_guard<std::mutex> lock(mu_);
      earliest = queue_.empty() || when < queue_.begin()->first;
      queue_.emplace(when, std::move(fn));
    }
    // Waking the thread for every call would cost a context switch per call;
    // it only needs to re-arm when the head of the queue changed.
    if (earliest) cv_.notify_all();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto next = queue_.begin()->first;
      if (Clock::now() < next) {
        cv_.wait_until(lock, next);
        continue;
      }
      auto fn = std::move(queue_.begin()->second);
      queue_.erase(queue_.begin());
      lock.unlock();
      fn();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<Clock::time_point, std::function<void()>> queue_;
  bool stopping_ = false;
  std::thread thread_;
};

struct Cluster {
  config::GatewayClusterConfig config;
  std::optional<samples::RegistryClient> registry;
  StickyChooser balancer;  // the peer kit's sticky-with-occupancy chooser
  core::Gauge* sessions = nullptr;
  core::Counter* transfers = nullptr;
  core::Counter* stream_transfers = nullptr;
  core::Counter* evictions_failure = nullptr;
  core::Counter* evictions_left = nullptr;
  core::Counter* attempts_ok = nullptr;
  core::Counter* attempts_failed = nullptr;
  core::Counter* attempts_timeout = nullptr;

  std::mutex channels_mu;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;  // by address
  // TLS credentials for `tls` clusters; plaintext when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  std::shared_ptr<grpc::Channel> ChannelFor(const std::string& address) {
    std::lock_guard<std::mutex> lock(channels_mu);
    auto& channel = channels[address];
    if (!channel) {
      grpc::ChannelArguments args;
      args.SetMaxReceiveMessageSize(-1);
      // A channel of its own per instance (a restarted instance reconnects
      // without inheriting another channel's backoff), and short reconnect
      // backoff: an instance restarting at the same address is reachable again
      // as soon as it listens. Not grpc.min_reconnect_backoff_ms: gRPC uses it
      // as the connect timeout, and 100 ms fails handshakes on a loaded host
      // (attemptTimeout bounds a hung connect instead).
      args.SetInt("grpc.use_local_subchannel_pool", 1);
      args.SetInt("grpc.initial_reconnect_backoff_ms", 100);
      args.SetInt("grpc.max_reconnect_backoff_ms", 1000);
      channel = grpc::CreateCustomChannel(
          address, credentials ? credentials : grpc::InsecureChannelCredentials(), args);
    }
    return channel;
  }
  void DropChannel(const std::string& address) {
    std::lock_guard<std::mutex> lock(channels_mu);
    channels.erase(address);
  }
  void UpdateGauge() { sessions->Set(static_cast<double>(balancer.binding_count())); }
  // After a sticky pick on either path: a new binding moves the sessions gauge;
  // a transferred one is also counted and logged.
  void NoteBinding(const peers::StickyPick& pick, const std::string& session) {
    if (!pick.new_binding) return;
    UpdateGauge();
    if (pick.transferred) {
      transfers->Add();
      core::LogInfo("gateway.session_transfer",
                    {{"session", session}, {"instance", pick.member.id}});
    }
  }
};

struct Route {
  config::GatewayRouteConfig config;  // prefix "" + cluster "" = default error route
  Cluster* cluster = nullptr;
  bool sticky = false;
  bool auth = false;
  std::optional<grpc::StatusCode> error;   // default route answering an error
  AdmissionRule admission;                 // credentials checked before forwarding
  std::set<std::string> transfer_streams;  // methods whose live streams may move
  bool frame = false;                      // forwarded by the frame relay (dataPath)
  std::string label;                       // metrics tag
  std::array<std::atomic<core::Counter*>, 17> requests{};
};

}  // namespace

class Gateway::Impl : public grpc::CallbackGenericService {
 public:
  Impl(config::GatewayConfig config, std::shared_ptr<core::MetricsRegistry> metrics,
       std::optional<tls::TlsOptions> tls)
      : config_(std::move(config)), metrics_(std::move(metrics)), tls_(std::move(tls)) {}

  absl::Status Build();
  absl::Status Start();
  void Stop(std::chrono::milliseconds grace);
  nlohmann::json Introspect() const;
  std::string address() const {
    const int port = relay_ ? relay_->port() : port_;
    return config_.address.substr(0, config_.address.rfind(':')) + ":" + std::to_string(port);
  }

  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override;
  // The frame path's decisions (admission, sticky pick, attempts) on HEADERS.
  std::shared_ptr<h2relay::RouteHook> MakeRouteHook();

  // Longest matching prefix wins (as for the node's forwarding routes); ties
  // go to the first in configuration order.
  const Route& RouteFor(const std::string& method) const {
    const Route* best = nullptr;
    for (const auto& r : routes_) {
      if (method.starts_with(r->config.prefix) &&
          (best == nullptr || r->config.prefix.size() > best->config.prefix.size())) {
        best = r.get();
      }
    }
    return best != nullptr ? *best : *default_route_;
  }
  void CountRequest(const Route& route, grpc::StatusCode code) {
    const size_t i = static_cast<size_t>(code) < 17 ? static_cast<size_t>(code) : 2;
    core::Counter* counter = route.requests[i].load(std::memory_order_acquire);
    if (counter == nullptr) {
      counter = &metrics_->GetCounter(
          kRequests, {{"route", route.label}, {"status", config::StatusCodeNames()[i]}});
      const_cast<Route&>(route).requests[i].store(counter, std::memory_order_release);
    }
    counter->Add();
  }

  const config::GatewayConfig& config() const { return config_; }
  std::shared_ptr<core::MetricsRegistry>& metrics() { return metrics_; }
  const auth::JwtCodec* codec() const { return codec_.get(); }
  TimerQueue& timers() { return *timers_; }

 private:
  void RefreshLoop();
  void Refresh(Cluster& cluster);

  config::GatewayConfig config_;
  std::shared_ptr<core::MetricsRegistry> metrics_;
  std::optional<tls::TlsOptions> tls_;
  std::shared_ptr<const auth::JwtCodec> codec_;
  std::map<std::string, std::unique_ptr<Cluster>> clusters_;
  std::vector<std::unique_ptr<Route>> routes_;
  std::unique_ptr<Route> default_route_;
  std::unique_ptr<TimerQueue> timers_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  // The frame path (docs/session-gateway.md "Data path"): the relay owns the
  // gateway's address; the grpc++ server above then listens on loopback as
  // its fallback for the calls that need messages.
  std::unique_ptr<h2relay::FrameRelay> relay_;
  bool frame_ = false;
  std::thread refresher_;
  std::mutex refresh_mu_;
  std::condition_variable refresh_cv_;
  bool stopping_ = false;
  bool started_ = false;
};

namespace {

class Attempt;

// One inbound call: the server-side reactor plus the current backend attempt.
// Every state change happens under `mu_` (recursive: a gRPC operation started
// under it may complete inline on this thread). Lifetime: owned by `self_`
// until gRPC's OnDone, and by each attempt until that attempt's OnDone.
class ProxyCall : public grpc::ServerGenericBidiReactor,
                  public std::enable_shared_from_this<ProxyCall> {
 public:
  ProxyCall(Gateway::Impl* gateway, grpc::GenericCallbackServerContext* ctx)
      : gateway_(gateway), ctx_(ctx) {}

  void Begin(std::shared_ptr<ProxyCall> self);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

  // Attempt reactions.
  void AttemptRead(Attempt* a, bool ok);
  void AttemptWrite(Attempt* a, bool ok);
  void AttemptDone(Attempt* a, const grpc::Status& status);
  void AttemptTimeout(uint64_t seq);

 private:
  void StartAttempt();
  void PumpToBackend(Attempt* a);
  void CloseWrites(Attempt* a);
  void CloseReads(Attempt* a);
  void MaybeRelease(Attempt* a);
  void MaybeReadClient();
  void FinishWith(const grpc::Status& status);
  void FinishLocal(grpc::StatusCode code, const std::string& message) {
    FinishWith(grpc::Status(code, message));
  }

  Gateway::Impl* gateway_;
  grpc::GenericCallbackServerContext* ctx_;
  std::recursive_mutex mu_;
  std::shared_ptr<ProxyCall> self_;
  const Route* route_ = nullptr;
  std::string method_;
  std::string session_;
  std::vector<std::pair<std::string, std::string>> metadata_;
  std::chrono::system_clock::time_point deadline_ = std::chrono::system_clock::time_point::max();

  // Client -> backend.
  grpc::ByteBuffer client_in_;
  bool reading_client_ = false;
  bool client_half_closed_ = false;
  std::deque<grpc::ByteBuffer> pending_;  // not yet written to the current attempt
  std::deque<grpc::ByteBuffer> replay_;   // written, kept until committed
  // Backend -> client.
  grpc::ByteBuffer client_out_;
  bool writing_client_ = false;
  bool committed_ = false;             // a response message reached the client: no more retries
                                       // (unless transferable_)
  bool transferable_ = false;          // a transferStreams method: replayable after commit too
  bool transferring_ = false;          // committed, and the stream is moving to another instance
  bool cancelled_ = false;             // client cancelled or went away
  std::optional<grpc::Status> final_;  // waiting for a client write to finish
  bool finished_ = false;
  bool server_done_ = false;

  Attempt* current_ = nullptr;
  uint64_t seq_ = 0;
  int attempts_ = 0;
  bool failed_any_ = false;
  std::set<std::string> excluded_;
};

class Attempt final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Attempt(std::shared_ptr<ProxyCall> call, StickyMember member, Cluster* cluster,
          std::shared_ptr<grpc::Channel> channel, uint64_t seq)
      : call(std::move(call)),
        member(std::move(member)),
        cluster(cluster),
        channel(std::move(channel)),
        seq(seq) {}

  void OnReadDone(bool ok) override { call->AttemptRead(this, ok); }
  void OnWriteDone(bool ok) override { call->AttemptWrite(this, ok); }
  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<ProxyCall> keep = std::move(call);
    keep->AttemptDone(this, status);
    delete this;
  }

  std::shared_ptr<ProxyCall> call;
  StickyMember member;
  Cluster* cluster;
  std::shared_ptr<grpc::Channel> channel;
  uint64_t seq;
  grpc::ClientContext ctx;
  grpc::ByteBuffer out;
  grpc::ByteBuffer in;
  bool writing = false;
  bool stop_writes = false;
  bool writes_closed = false;
  bool reading = false;
  bool stop_reads = false;
  bool reads_closed = false;
  bool held = true;
  bool got_message = false;
  bool timed_out = false;
};

void ProxyCall::Begin(std::shared_ptr<ProxyCall> self) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  self_ = std::move(self);
  method_ = ctx_->method();
  route_ = &gateway_->RouteFor(method_);
  std::optional<std::string> authorization, session_id, sticky;
  for (const auto& [k, v] : ctx_->client_metadata()) {
    std::string key = Str(k);
    if (!Forwardable(key)) continue;
    std::string value = Str(v);
    if (key == "authorization" && !authorization) authorization = value;
    if (key == "session-id" && !session_id) session_id = value;
    if (route_->sticky && key == route_->config.sticky_header && !sticky) sticky = value;
    metadata_.emplace_back(std::move(key), std::move(value));
  }
  if (route_->error) {
    FinishLocal(*route_->error, "no route for " + method_);
    return;
  }
  if (route_->auth || route_->sticky) {
    AdmissionHeaders headers;
    if (authorization) headers.authorization = *authorization;
    if (session_id) headers.session_id = *session_id;
    if (sticky) headers.sticky = *sticky;
    std::string reason;
    auto admitted = Admit(route_->admission, gateway_->codec(), headers, &reason);
    if (!admitted.ok()) {
      // The client gets one message for every token failure; the reason is
      // for the operator.
      if (!reason.empty() && core::LogEnabled(core::LogLevel::kDebug)) {
        core::Log(core::LogLevel::kDebug, "gateway.unauthenticated",
                  {{"method", method_}, {"reason", reason}});
      }
      FinishLocal(grpc::StatusCode::UNAUTHENTICATED, std::string(admitted.status().message()));
      return;
    }
    session_ = std::move(*admitted);
  }
  transferable_ = route_->transfer_streams.count(method_) > 0;
  deadline_ = ctx_->deadline();
  reading_client_ = true;
  StartRead(&client_in_);
  StartAttempt();
}

void ProxyCall::StartAttempt() {
  const auto& config = gateway_->config();
  if (finished_) return;
  Cluster* cluster = route_->cluster;
  if (attempts_ >= config.max_attempts) {
    FinishLocal(grpc::StatusCode::UNAVAILABLE, peers::kBackendUnavailable);
    return;
  }
  StickyPick pick = route_->sticky ? cluster->balancer.PickSticky(session_, excluded_)
                                   : cluster->balancer.PickRoundRobin(excluded_);
  if (transferring_ && pick.outcome != StickyOutcome::kInstance) {
    // A live stream lost its instance and no other can take it: the backend,
    // not capacity, ended it.
    FinishLocal(grpc::StatusCode::UNAVAILABLE, peers::kBackendUnavailable);
    return;
  }
  if (absl::Status refused = peers::StickyStatus(pick, failed_any_); !refused.ok()) {
    FinishLocal(static_cast<grpc::StatusCode>(refused.code()), std::string(refused.message()));
    return;
  }
  cluster->NoteBinding(pick, session_);
  ++attempts_;
  auto* a = new Attempt(shared_from_this(), pick.member, cluster,
                        cluster->ChannelFor(pick.member.address), ++seq_);
  for (const auto& [k, v] : metadata_) a->ctx.AddMetadata(k, v);
  if (deadline_ != std::chrono::system_clock::time_point::max()) a->ctx.set_deadline(deadline_);
  grpc::GenericStub stub(a->channel);
  stub.PrepareBidiStreamingCall(&a->ctx, method_, grpc::StubOptions(), a);
  current_ = a;
  // Replay what earlier attempts already sent, then whatever is still queued.
  while (!replay_.empty()) {
    pending_.push_front(std::move(replay_.back()));
    replay_.pop_back();
  }
  a->AddHold();
  // A transferred stream may still be writing the failed instance's last
  // message to the client: OnWriteDone then starts this attempt's first read
  // (one client write at a time).
  if (!writing_client_) {
    a->reading = true;
    a->StartRead(&a->in);
  }
  a->StartCall();
  PumpToBackend(a);
  std::weak_ptr<ProxyCall> weak = weak_from_this();
  const uint64_t seq = a->seq;
  gateway_->timers().Schedule(Clock::now() + config.attempt_timeout, [weak, seq] {
    if (auto call = weak.lock()) call->AttemptTimeout(seq);
  });
}

void ProxyCall::AttemptTimeout(uint64_t seq) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  Attempt* a = current_;
  // Also bounds the replacement attempt of a transferred stream.
  if (a == nullptr || a->seq != seq || a->got_message) return;
  a->timed_out = true;
  a->ctx.TryCancel();
}

void ProxyCall::PumpToBackend(Attempt* a) {
  if (a != current_ || a->writing || a->stop_writes) return;
  if (!pending_.empty()) {
    a->out = pending_.front();
    if (!committed_ || transferable_) replay_.push_back(std::move(pending_.front()));
    pending_.pop_front();
    if (committed_ && transferable_ && replay_.size() > kMaxReplayMessages) {
      // Not the one-request shape of a server stream: stop keeping a copy.
      transferable_ = false;
      replay_.clear();
    }
    a->writing = true;
    a->StartWrite(&a->out);
    MaybeReadClient();
    return;
  }
  if (client_half_closed_) {
    a->StartWritesDone();
    CloseWrites(a);
  }
}

void ProxyCall::CloseWrites(Attempt* a) {
  a->stop_writes = true;
  if (!a->writing) a->writes_closed = true;
  MaybeRelease(a);
}

void ProxyCall::CloseReads(Attempt* a) {
  a->stop_reads = true;
  if (!a->reading) a->reads_closed = true;
  MaybeRelease(a);
}

void ProxyCall::MaybeRelease(Attempt* a) {
  if (a->held && a->writes_closed && a->reads_closed) {
    a->held = false;
    a->RemoveHold();  // OnDone may now run (possibly inline)
  }
}

void ProxyCall::MaybeReadClient() {
  if (reading_client_ || client_half_closed_ || finished_ || cancelled_ || !pending_.empty()) {
    return;
  }
  reading_client_ = true;
  StartRead(&client_in_);
}

void ProxyCall::OnReadDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  reading_client_ = false;
  if (finished_) return;
  if (!ok) {
    client_half_closed_ = true;  // or cancelled: OnCancel handles that
  } else {
    pending_.push_back(std::move(client_in_));
    client_in_.Clear();
  }
  if (current_ != nullptr) {
    PumpToBackend(current_);
  }
  MaybeReadClient();
}

void ProxyCall::AttemptWrite(Attempt* a, bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  a->writing = false;
  a->out.Clear();
  if (!ok) a->stop_writes = true;  // the stream broke; OnDone tells how
  if (a->stop_writes || a != current_) {
    a->stop_writes = true;
    a->writes_closed = true;
    MaybeRelease(a);
    return;
  }
  PumpToBackend(a);
  MaybeReadClient();
}

void ProxyCall::AttemptRead(Attempt* a, bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  a->reading = false;
  if (!ok || a != current_ || cancelled_ || finished_) {
    // The backend finished (status follows in OnDone), or nobody listens.
    a->stop_reads = true;
    a->reads_closed = true;
    CloseWrites(a);
    return;
  }
  if (!a->got_message) {
    // This attempt delivers: a new transfer episode gets maxAttempts again.
    attempts_ = 0;
    excluded_.clear();
    failed_any_ = false;
    if (transferring_) {
      transferring_ = false;
      a->cluster->stream_transfers->Add();
      core::LogInfo("gateway.stream_transfer",
                    {{"session", session_}, {"method", method_}, {"instance", a->member.id}});
    }
  }
  if (!committed_) {
    committed_ = true;
    if (!transferable_) replay_.clear();
    // The backend's initial metadata goes out with the first message.
    for (const auto& [k, v] : a->ctx.GetServerInitialMetadata()) {
      std::string key = Str(k);
      if (Forwardable(key)) ctx_->AddInitialMetadata(key, Str(v));
    }
  }
  a->got_message = true;
  client_out_ = std::move(a->in);
  a->in.Clear();
  writing_client_ = true;
  StartWrite(&client_out_);
}

void ProxyCall::OnWriteDone(bool ok) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  writing_client_ = false;
  client_out_.Clear();
  if (!ok && !cancelled_) {
    cancelled_ = true;  // the client is gone
    if (current_ != nullptr) current_->ctx.TryCancel();
  }
  if (final_) {
    auto status = *final_;
    final_.reset();
    FinishWith(status);
    return;
  }
  Attempt* a = current_;
  if (a == nullptr) return;
  if (cancelled_ || a->stop_reads) {
    CloseReads(a);
    if (cancelled_) CloseWrites(a);
    return;
  }
  if (a->reading) return;
  a->reading = true;
  a->StartRead(&a->in);
}

void ProxyCall::OnCancel() {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  cancelled_ = true;
  if (Attempt* a = current_) {
    a->ctx.TryCancel();
    CloseWrites(a);
    if (!a->reading) CloseReads(a);
  }
}

void ProxyCall::AttemptDone(Attempt* a, const grpc::Status& status) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  const bool is_current = a == current_;
  if (is_current) current_ = nullptr;
  Cluster* cluster = a->cluster;
  // CANCELLED that the client did not ask for is a server shutting down
  // (grpc::Server::Shutdown cancels the calls it still holds): the instance
  // is going away, like UNAVAILABLE, not an application answer.
  const bool transport_failure =
      a->timed_out || (!cancelled_ && (status.error_code() == grpc::StatusCode::UNAVAILABLE ||
                                       status.error_code() == grpc::StatusCode::CANCELLED));
  if (transport_failure) {
    (a->timed_out ? cluster->attempts_timeout : cluster->attempts_failed)->Add();
    // The instance is gone (or hung): its binding ends, whoever holds it.
    const std::string dropped = cluster->balancer.ReportFailure(a->member.id);
    if (!dropped.empty()) {
      cluster->evictions_failure->Add();
      cluster->UpdateGauge();
    }
    core::LogInfo("gateway.instance_failed", {{"instance", a->member.id},
                                              {"address", a->member.address},
                                              {"method", method_},
                                              {"session", dropped},
                                              {"code", static_cast<int>(status.error_code())},
                                              {"message", status.error_message()},
                                              {"timedOut", a->timed_out}});
  } else {
    cluster->attempts_ok->Add();
  }
  if (!is_current || finished_) return;
  if (transport_failure && !cancelled_ && (!committed_ || transferable_)) {
    // Before the first response message any call is replayed; after it only
    // a transferStreams method (a server stream: its request is kept).
    failed_any_ = true;
    excluded_.insert(a->member.id);
    if (committed_) transferring_ = true;
    StartAttempt();
    return;
  }
  // Pass the backend's answer through unchanged.
  if (!committed_) {
    for (const auto& [k, v] : a->ctx.GetServerInitialMetadata()) {
      std::string key = Str(k);
      if (Forwardable(key)) ctx_->AddInitialMetadata(key, Str(v));
    }
  }
  for (const auto& [k, v] : a->ctx.GetServerTrailingMetadata()) {
    std::string key = Str(k);
    if (Forwardable(key)) ctx_->AddTrailingMetadata(key, Str(v));
  }
  grpc::Status out = status;
  if (a->timed_out)
    out = grpc::Status(grpc::StatusCode::UNAVAILABLE, "backend service unavailable");
  FinishWith(out);
}

void ProxyCall::FinishWith(const grpc::Status& status) {
  if (finished_) return;
  if (writing_client_) {
    final_ = status;
    return;
  }
  finished_ = true;
  gateway_->CountRequest(*route_, status.error_code());
  Finish(status);
}

void ProxyCall::OnDone() {
  std::shared_ptr<ProxyCall> keep;
  {
    std::lock_guard<std::recursive_mutex> lock(mu_);
    server_done_ = true;
    keep.swap(self_);
    if (current_ != nullptr) {
      current_->ctx.TryCancel();
      CloseWrites(current_);
      if (!current_->reading) CloseReads(current_);
    }
  }
}

// ------------------------------------------------------------ frame path
//
// The same decisions as ProxyCall, made on the inbound HEADERS for the frame
// relay (h2relay/route_hook.h): route, admission, the sticky pick per
// attempt, the binding dropped on a transport failure, metrics. The relay
// pumps the frames and replays the request until the first response message.

// One call on the frame path; used by one relay loop thread.
class FrameCall final : public h2relay::CallHook {
 public:
  FrameCall(Gateway::Impl* gateway, const Route* route, std::string session, std::string method)
      : gateway_(gateway),
        route_(route),
        session_(std::move(session)),
        method_(std::move(method)) {}

  absl::StatusOr<h2relay::HookTarget> Next() override {
    Cluster* cluster = route_->cluster;
    if (attempts_ >= gateway_->config().max_attempts) {
      return absl::UnavailableError(peers::kBackendUnavailable);
    }
    StickyPick pick = route_->sticky ? cluster->balancer.PickSticky(session_, excluded_)
                                     : cluster->balancer.PickRoundRobin(excluded_);
    if (absl::Status refused = peers::StickyStatus(pick, failed_any_); !refused.ok()) {
      return refused;
    }
    cluster->NoteBinding(pick, session_);
    ++attempts_;
    current_ = std::move(pick.member);
    return h2relay::HookTarget{current_.serial, current_.address};
  }

  void AttemptFailed(bool timed_out, std::string_view reason) override {
    Cluster* cluster = route_->cluster;
    (timed_out ? cluster->attempts_timeout : cluster->attempts_failed)->Add();
    // The instance is gone (or hung): its binding ends, whoever holds it.
    const std::string dropped = cluster->balancer.ReportFailure(current_.id);
    if (!dropped.empty()) {
      cluster->evictions_failure->Add();
      cluster->UpdateGauge();
    }
    core::LogInfo("gateway.instance_failed", {{"instance", current_.id},
                                              {"address", current_.address},
                                              {"method", method_},
                                              {"session", dropped},
                                              {"message", std::string(reason)},
                                              {"timedOut", timed_out}});
    failed_any_ = true;
    excluded_.insert(current_.id);
  }

  void AttemptAnswered() override { route_->cluster->attempts_ok->Add(); }

  void Finished(absl::StatusCode code) override {
    gateway_->CountRequest(*route_, static_cast<grpc::StatusCode>(code));
  }

 private:
  Gateway::Impl* gateway_;
  const Route* route_;
  std::string session_;
  std::string method_;
  StickyMember current_;
  int attempts_ = 0;
  bool failed_any_ = false;
  std::set<std::string> excluded_;
};

class FrameRouteHook final : public h2relay::RouteHook {
 public:
  explicit FrameRouteHook(Gateway::Impl* gateway) : gateway_(gateway) {}

  absl::StatusOr<std::unique_ptr<h2relay::CallHook>> OnHeaders(
      std::string_view path, std::span<const h2relay::RelayHeader> headers) override {
    std::string method(path);
    const Route& route = gateway_->RouteFor(method);
    if (route.error) {
      gateway_->CountRequest(route, *route.error);
      return absl::Status(static_cast<absl::StatusCode>(*route.error), "no route for " + method);
    }
    // Calls that need their messages (live stream transfer) or TLS: grpc++.
    if (!route.frame || route.transfer_streams.count(method) > 0) return nullptr;
    std::string session;
    if (route.auth || route.sticky) {
      AdmissionHeaders admission;
      for (const auto& [k, v] : headers) {
        if (k == "authorization" && !admission.authorization) admission.authorization = v;
        if (k == "session-id" && !admission.session_id) admission.session_id = v;
        if (route.sticky && k == route.config.sticky_header && !admission.sticky) {
          admission.sticky = v;
        }
      }
      std::string reason;
      // Per loop thread: a loop belongs to this gateway's relay only.
      thread_local VerifiedTokenCache verified;
      auto admitted = Admit(route.admission, gateway_->codec(), admission, &reason, &verified);
      if (!admitted.ok()) {
        if (!reason.empty() && core::LogEnabled(core::LogLevel::kDebug)) {
          core::Log(core::LogLevel::kDebug, "gateway.unauthenticated",
                    {{"method", method}, {"reason", reason}});
        }
        gateway_->CountRequest(route, grpc::StatusCode::UNAUTHENTICATED);
        return absl::UnauthenticatedError(admitted.status().message());
      }
      session = std::move(*admitted);
    }
    return std::make_unique<FrameCall>(gateway_, &route, std::move(session), std::move(method));
  }

  std::chrono::milliseconds attempt_timeout() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        gateway_->config().attempt_timeout);
  }

 private:
  Gateway::Impl* gateway_;
};

}  // namespace

std::shared_ptr<h2relay::RouteHook> Gateway::Impl::MakeRouteHook() {
  return std::make_shared<FrameRouteHook>(this);
}

grpc::ServerGenericBidiReactor* Gateway::Impl::CreateReactor(
    grpc::GenericCallbackServerContext* ctx) {
  auto call = std::make_shared<ProxyCall>(this, ctx);
  ProxyCall* raw = call.get();
  raw->Begin(std::move(call));
  return raw;
}

absl::Status Gateway::Impl::Build() {
  bool needs_jwt = false;
  for (const auto& r : config_.routes) needs_jwt = needs_jwt || r.authorization == "required";
  if (needs_jwt) {
    // A secret that cannot be read is an error, not a fresh random key (a
    // typo would otherwise reject every token); create only when asked.
    auto secret = config_.jwt_create_if_missing ? auth::LoadOrCreateSecret(config_.jwt_secret_file)
                                                : auth::LoadSecret(config_.jwt_secret_file);
    if (!secret.ok()) {
      return absl::Status(secret.status().code(), "omniRelay.gateway.jwt.secretFile: " +
                                                      std::string(secret.status().message()));
    }
    codec_ = std::make_shared<const auth::JwtCodec>(*secret);
  }
  for (const auto& [name, cc] : config_.clusters) {
    auto cluster = std::make_unique<Cluster>();
    cluster->config = cc;
    if (cc.tls)
      cluster->credentials = tls::GrpcChannelCredentials(tls_.value_or(tls::TlsOptions{}));
    if (!cc.registry.empty()) {
      // https:// = TLS with the node's options (CA to verify the registry,
      // certificate for mTLS); the scheme was stripped by the config loader.
      std::optional<tls::TlsOptions> registry_tls;
      if (cc.registry_tls) {
        registry_tls = tls_.value_or(tls::TlsOptions{});
        registry_tls->client_auth = tls::ClientAuth::kNone;
      }
      auto client = samples::RegistryClient::Create(
          (cc.registry_tls ? "https://" : "") + cc.registry,
          std::min<std::chrono::milliseconds>(
              std::chrono::seconds(1),
              std::max<std::chrono::milliseconds>(
                  std::chrono::milliseconds(200),
                  std::chrono::duration_cast<std::chrono::milliseconds>(cc.refresh_interval))),
          registry_tls);
      if (!client.ok()) {
        return absl::InvalidArgumentError("omniRelay.gateway.clusters." + name +
                                          ".registry: " + std::string(client.status().message()));
      }
      cluster->registry = std::move(*client);
    } else {
      std::vector<StickyMember> members;
      for (const auto& e : cc.endpoints) members.push_back({e, e});
      cluster->balancer.SetMembers(std::move(members));
    }
    const core::Tags tags = {{"cluster", name}};
    cluster->sessions = &metrics_->GetGauge(kSessions, tags);
    cluster->transfers = &metrics_->GetCounter(kTransfers, tags);
    cluster->stream_transfers = &metrics_->GetCounter(kStreamTransfers, tags);
    cluster->evictions_failure =
        &metrics_->GetCounter(kEvictions, {{"cluster", name}, {"reason", "transport_failure"}});
    cluster->evictions_left =
        &metrics_->GetCounter(kEvictions, {{"cluster", name}, {"reason", "left"}});
    cluster->attempts_ok = &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "ok"}});
    cluster->attempts_failed =
        &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "transport_failure"}});
    cluster->attempts_timeout =
        &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "timeout"}});
    clusters_[name] = std::move(cluster);
  }
  for (const auto& rc : config_.routes) {
    auto route = std::make_unique<Route>();
    route->config = rc;
    route->cluster = clusters_.at(rc.cluster).get();
    route->sticky = rc.balancer == "sticky";
    route->auth = rc.authorization == "required";
    route->label = rc.prefix.empty() ? "*" : rc.prefix;
    route->admission.require_token = route->auth;
    if (route->sticky) route->admission.sticky_header = rc.sticky_header;
    route->transfer_streams.insert(rc.transfer_streams.begin(), rc.transfer_streams.end());
    // auto: the frame relay unless the node serves TLS or the cluster dials
    // it (the relay speaks plaintext HTTP/2 only).
    route->frame = rc.data_path != "grpc" && !tls_ && !route->cluster->config.tls;
    if (rc.data_path == "frame" && tls_) {
      return absl::InvalidArgumentError(
          "omniRelay.gateway.routes: dataPath frame for prefix '" + rc.prefix +
          "': the frame relay does not serve TLS (omniRelay.tls is set; use auto or grpc)");
    }
    frame_ = frame_ || route->frame;
    routes_.push_back(std::move(route));
  }
  default_route_ = std::make_unique<Route>();
  default_route_->label = "default";
  if (!config_.default_route.cluster.empty()) {
    default_route_->config.cluster = config_.default_route.cluster;
    default_route_->cluster = clusters_.at(config_.default_route.cluster).get();
    default_route_->frame = !tls_ && !default_route_->cluster->config.tls;
  } else {
    const auto& names = config::StatusCodeNames();
    auto it = std::find(names.begin(), names.end(), config_.default_route.error);
    default_route_->error = it == names.end() ? grpc::StatusCode::UNIMPLEMENTED
                                              : static_cast<grpc::StatusCode>(it - names.begin());
  }
  return absl::OkStatus();
}

void Gateway::Impl::Refresh(Cluster& cluster) {
  auto listed = cluster.registry->List(cluster.config.role);
  if (!listed.ok()) {
    // Keep the last good list: a registry restart must not empty the cluster.
    core::LogWarn(
        "gateway.registry_unavailable",
        {{"cluster", cluster.config.name}, {"error", std::string(listed.status().message())}});
    return;
  }
  std::vector<StickyMember> members;
  for (const auto& instance : *listed) members.push_back({instance.id, instance.address});
  StickyMembershipChange change = cluster.balancer.SetMembers(std::move(members));
  for (const auto& m : change.removed) {
    cluster.DropChannel(m.address);
    core::LogInfo("gateway.instance_left",
                  {{"cluster", cluster.config.name}, {"instance", m.id}, {"address", m.address}});
  }
  for (const auto& m : change.added) {
    core::LogInfo("gateway.instance_joined",
                  {{"cluster", cluster.config.name}, {"instance", m.id}, {"address", m.address}});
  }
  if (!change.unbound.empty()) {
    cluster.evictions_left->Add(static_cast<double>(change.unbound.size()));
  }
  cluster.UpdateGauge();
}

void Gateway::Impl::RefreshLoop() {
  std::map<std::string, Clock::time_point> due;
  for (;;) {
    const auto now = Clock::now();
    auto next = now + std::chrono::seconds(60);
    for (auto& [name, cluster] : clusters_) {
      if (!cluster->registry) continue;
      auto& when = due[name];
      if (when <= now) {
        Refresh(*cluster);
        when = Clock::now() + cluster->config.refresh_interval;
      }
      next = std::min(next, when);
    }
    std::unique_lock<std::mutex> lock(refresh_mu_);
    if (refresh_cv_.wait_until(lock, next, [this] { return stopping_; })) return;
  }
}

absl::Status Gateway::Impl::Start() {
  if (started_) return absl::OkStatus();
  for (auto& [name, cluster] : clusters_) {
    if (cluster->registry) Refresh(*cluster);
  }
  timers_ = std::make_unique<TimerQueue>();
  grpc::ServerBuilder builder;
  // On the frame path the grpc++ server only serves the relay's fallback.
  builder.AddListeningPort(
      frame_ ? std::string("127.0.0.1:0") : config_.address,
      tls_ ? tls::GrpcServerCredentials(*tls_) : grpc::InsecureServerCredentials(), &port_);
  builder.SetMaxReceiveMessageSize(-1);
  builder.RegisterCallbackGenericService(this);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    server_.reset();
    timers_.reset();
    return absl::UnavailableError("gateway: cannot listen on " + config_.address);
  }
  if (frame_) {
    h2relay::FrameRelayOptions options;
    options.address = config_.address;
    options.threads = config_.frame_threads;
    options.fallback = "127.0.0.1:" + std::to_string(port_);
    h2relay::FrameRoute route;
    route.prefix = "";  // every call: the hook routes by the gateway's own table
    route.outbound = "gateway";
    route.hook = MakeRouteHook();
    options.routes.push_back(std::move(route));
    relay_ = std::make_unique<h2relay::FrameRelay>(std::move(options));
    if (absl::Status started = relay_->Start(); !started.ok()) {
      relay_.reset();
      server_->Shutdown();
      server_.reset();
      timers_.reset();
      return absl::UnavailableError("gateway: cannot listen on " + config_.address + ": " +
                                    std::string(started.message()));
    }
  }
  refresher_ = std::thread([this] { RefreshLoop(); });
  started_ = true;
  core::LogInfo("gateway.started", {{"address", address()}});
  return absl::OkStatus();
}

void Gateway::Impl::Stop(std::chrono::milliseconds grace) {
  if (!started_) return;
  started_ = false;
  {
    std::lock_guard<std::mutex> lock(refresh_mu_);
    stopping_ = true;
  }
  refresh_cv_.notify_all();
  if (refresher_.joinable()) refresher_.join();
  if (relay_) {
    relay_->Shutdown(std::chrono::duration_cast<std::chrono::milliseconds>(grace));
    relay_.reset();
  }
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  server_.reset();
  timers_.reset();
}

nlohmann::json Gateway::Impl::Introspect() const {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  nlohmann::json clusters = nlohmann::json::object();
  for (const auto& [name, cluster] : clusters_) {
    nlohmann::json members = nlohmann::json::array();
    const auto bindings = cluster->balancer.bindings();
    std::map<std::string, std::string> by_instance;
    for (const auto& [session, id] : bindings) by_instance[id] = session;
    for (const auto& m : cluster->balancer.members()) {
      nlohmann::json j = {{"id", m.id}, {"address", m.address}};
      auto it = by_instance.find(m.id);
      j["session"] = it == by_instance.end() ? nlohmann::json(nullptr) : nlohmann::json(it->second);
      members.push_back(j);
    }
    clusters[name] = {{"source", cluster->registry ? "registry" : "static"},
                      {"members", members},
                      {"bindings", bindings}};
    if (cluster->registry) {
      clusters[name]["registry"] = cluster->config.registry;
      clusters[name]["refreshIntervalMs"] = ms(cluster->config.refresh_interval);
    }
  }
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : routes_) {
    routes.push_back({{"prefix", r->config.prefix},
                      {"cluster", r->config.cluster},
                      {"authorization", r->config.authorization},
                      {"balancer", r->config.balancer},
                      {"stickyHeader", r->sticky ? r->config.sticky_header : ""},
                      {"transferStreams", r->config.transfer_streams},
                      {"dataPath", r->frame ? "frame" : "grpc"}});
  }
  return {{"address", started_ ? address() : config_.address},
          {"routes", routes},
          {"defaultRoute", config_.default_route.cluster.empty()
                               ? nlohmann::json{{"error", config_.default_route.error}}
                               : nlohmann::json{{"cluster", config_.default_route.cluster}}},
          {"clusters", clusters},
          {"maxAttempts", config_.max_attempts},
          {"frameRelay", relay_ != nullptr},
          {"attemptTimeoutMs", ms(config_.attempt_timeout)}};
}

// ----------------------------------------------------------------- Gateway

Gateway::Gateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Gateway::~Gateway() { Stop(); }

absl::StatusOr<std::unique_ptr<Gateway>> Gateway::Create(
    config::GatewayConfig config, std::shared_ptr<core::MetricsRegistry> metrics,
    std::optional<tls::TlsOptions> tls) {
  if (!metrics) metrics = core::MetricsRegistry::Default();
  auto impl = std::make_unique<Impl>(std::move(config), std::move(metrics), std::move(tls));
  if (auto status = impl->Build(); !status.ok()) return status;
  return std::unique_ptr<Gateway>(new Gateway(std::move(impl)));
}

absl::Status Gateway::Start() { return impl_->Start(); }
void Gateway::Stop(std::chrono::milliseconds grace) { impl_->Stop(grace); }
std::string Gateway::address() const { return impl_->address(); }
nlohmann::json Gateway::Introspect() const { return impl_->Introspect(); }

}  // namespace omnirelay::gateway
