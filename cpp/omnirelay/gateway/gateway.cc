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
#include <set>
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
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::gateway {
namespace {

using Clock = std::chrono::steady_clock;

// A transferStreams call keeps at most this many request messages for replay
// after its first response (a server stream sends one).
constexpr size_t kMaxReplayMessages = 16;

// Threads that wait out an instance's in-flight cap for calls with a deadline.
constexpr int kLeaseWaiterThreads = 4;

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
    "Bindings dropped: reason=transport_failure (the instance failed), left (the registry "
    "no longer lists it) or ineligible (its breaker opened)."};
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

// One instance incarnation, as the cluster's peer pool hands it out (the
// attachment of its transport::PoolPeer): a process-unique serial (the frame
// relay keys its upstream connection by it: ids and addresses are reused
// across restarts, an incarnation never is) and its grpc++ channel, made on
// first use. Dropped with the pool's peer when the instance leaves and the
// last lease on it is released.
struct Instance {
  Instance(std::string address, std::shared_ptr<grpc::ChannelCredentials> credentials)
      : serial(NextSerial()), address(std::move(address)), credentials(std::move(credentials)) {}

  std::shared_ptr<grpc::Channel> Channel() {
    std::lock_guard<std::mutex> lock(mu);
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

  static uint64_t NextSerial() {
    static std::atomic<uint64_t> next{1};
    return next.fetch_add(1, std::memory_order_relaxed);
  }

  const uint64_t serial;
  const std::string address;
  const std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::mutex mu;
  std::shared_ptr<grpc::Channel> channel;
};

Instance& InstanceOf(const transport::PeerLease& lease) {
  return *static_cast<Instance*>(lease.peer->attachment.get());
}

// Threads for leases that may wait (coordinator rule 5: a call with a
// deadline whose instance is at its in-flight cap waits for a slot): a
// waiting Acquire blocks its thread, so it never runs on a gRPC callback
// thread or a relay loop. Each wait is bounded by the call's deadline and
// attemptTimeout, so Stop joins within attemptTimeout.
class LeaseWaiters {
 public:
  explicit LeaseWaiters(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~LeaseWaiters() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  void Submit(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and every queued wait ran
      auto task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

struct Cluster {
  config::GatewayClusterConfig config;
  std::optional<samples::RegistryClient> registry;
  // The instances are peers of the peer kit (issue 15): a PeerListCoordinator
  // behind transport::PeerPool with the `sticky` chooser, so every attempt
  // leases its instance and releases it with the outcome and latency
  // (omnirelay.peer.* metrics, breaker, in-flight cap, contention rules).
  std::shared_ptr<transport::PeerPool> pool;
  peers::StickyChooser* chooser = nullptr;  // owned by the pool's coordinator
  core::Gauge* sessions = nullptr;
  core::Counter* transfers = nullptr;
  core::Counter* stream_transfers = nullptr;
  core::Counter* evictions_failure = nullptr;
  core::Counter* evictions_left = nullptr;
  core::Counter* evictions_ineligible = nullptr;
  core::Counter* attempts_ok = nullptr;
  core::Counter* attempts_failed = nullptr;
  core::Counter* attempts_timeout = nullptr;
  // TLS credentials for `tls` clusters; plaintext when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;

  // The chooser's binding changes, from whichever thread picked or
  // refreshed: the sessions gauge, transfers and evictions.
  void OnStickyEvent(const peers::StickyEvent& event) {
    sessions->Set(static_cast<double>(event.bindings));
    if (event.kind == peers::StickyEvent::Kind::kBound) {
      if (event.transferred) {
        transfers->Add();
        core::LogInfo("gateway.session_transfer",
                      {{"session", event.session}, {"instance", event.peer_id}});
      }
      return;
    }
    switch (event.reason) {
      case peers::StickyEvent::Reason::kLeft:
        evictions_left->Add();
        break;
      case peers::StickyEvent::Reason::kIneligible:
        evictions_ineligible->Add();
        core::LogInfo("gateway.instance_ineligible",
                      {{"session", event.session}, {"instance", event.peer_id}});
        break;
      default:
        evictions_failure->Add();
        break;
    }
  }

  // Leases an instance for one attempt without waiting (the in-flight cap
  // then answers at once, coordinator rule 4); the contract's status when
  // none can be leased. `session` is "" for a round-robin route; `excluded`
  // the instances that failed in this call.
  // `outcome` (optional) receives why nothing was leased: kAtCapacity is the
  // one refusal a call with a deadline may wait out (WaitForLease).
  absl::StatusOr<transport::PeerLease> Lease(const std::string& session,
                                             const std::set<std::string>& excluded, bool failed_any,
                                             peers::StickyOutcome* outcome = nullptr) {
    const core::RequestMeta meta = MetaFor(session, excluded);
    auto lease = pool->Acquire(meta, std::nullopt);
    if (lease.ok()) return lease;
    return Refusal(lease.status(), meta, failed_any, outcome);
  }

  // The lease request: the session key under the chooser's header (whatever
  // the route's sticky header is called) and the call's failed instances.
  // Internal to the gateway, never sent.
  core::RequestMeta MetaFor(const std::string& session, const std::set<std::string>& excluded) {
    core::RequestMeta meta;
    if (!session.empty()) meta.headers.Add(chooser->key_header(), session);
    for (const auto& id : excluded) meta.headers.Add(peers::kStickyExcludeHeader, id);
    return meta;
  }

  // The contract's answer for a failed Acquire on this thread (the chooser's
  // LastOutcome is per thread).
  absl::Status Refusal(const absl::Status& refused, const core::RequestMeta& meta, bool failed_any,
                       peers::StickyOutcome* outcome = nullptr) {
    // UNAVAILABLE from the pool: its list is empty (peer-list-empty).
    peers::StickyOutcome why = refused.code() == absl::StatusCode::kUnavailable
                                   ? chooser->OutcomeWithoutPeers(meta)
                                   : chooser->LastOutcome();
    // The pick succeeded but its peer refused (a breaker opened or the cap
    // was reached between the pick and the lease).
    if (why == peers::StickyOutcome::kInstance) why = peers::StickyOutcome::kAtCapacity;
    if (outcome != nullptr) *outcome = why;
    return peers::StickyStatus(why, failed_any);
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
  LeaseWaiters& lease_waiters() { return *lease_waiters_; }

  // Backend attempts (client reactors) alive: one that was replaced (a
  // transfer) may end after its inbound call finished, so Stop waits for
  // them before the clusters they release their leases into go away.
  void AttemptStarted() {
    std::lock_guard<std::mutex> lock(attempts_mu_);
    ++live_attempts_;
  }
  void AttemptEnded() {
    std::lock_guard<std::mutex> lock(attempts_mu_);
    if (--live_attempts_ == 0) attempts_cv_.notify_all();
  }

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
  std::unique_ptr<LeaseWaiters> lease_waiters_;
  std::mutex attempts_mu_;
  std::condition_variable attempts_cv_;
  int live_attempts_ = 0;
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
  Gateway::Impl* gateway() const { return gateway_; }

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
  void LaunchAttempt(transport::PeerLease lease);
  void WaitForLease();
  void OnWaitedLease(absl::StatusOr<transport::PeerLease> lease);
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
  bool waiting_ = false;  // a lease is being waited for (WaitForLease)
  std::set<std::string> excluded_;
};

class Attempt final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  Attempt(std::shared_ptr<ProxyCall> call, transport::PeerLease lease, Cluster* cluster,
          uint64_t seq)
      : call(std::move(call)),
        lease(std::move(lease)),
        id(this->lease.peer->id),
        address(this->lease.peer->address),
        cluster(cluster),
        channel(InstanceOf(this->lease).Channel()),
        seq(seq) {
    this->call->gateway()->AttemptStarted();
  }

  void OnReadDone(bool ok) override { call->AttemptRead(this, ok); }
  void OnWriteDone(bool ok) override { call->AttemptWrite(this, ok); }
  void OnDone(const grpc::Status& status) override {
    std::shared_ptr<ProxyCall> keep = std::move(call);
    Gateway::Impl* gateway = keep->gateway();
    keep->AttemptDone(this, status);
    delete this;
    gateway->AttemptEnded();  // last: Stop may now destroy the clusters
  }

  std::shared_ptr<ProxyCall> call;
  // The instance's lease: released once, in AttemptDone, with the outcome.
  transport::PeerLease lease;
  std::string id;  // instance id
  std::string address;
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
  peers::StickyOutcome outcome = peers::StickyOutcome::kInstance;
  auto lease = cluster->Lease(session_, excluded_, failed_any_, &outcome);
  if (!lease.ok() && outcome == peers::StickyOutcome::kAtCapacity &&
      deadline_ != std::chrono::system_clock::time_point::max()) {
    // The instance is at its in-flight cap and the call has a deadline:
    // wait for a slot (coordinator rule 5), off this thread.
    WaitForLease();
    return;
  }
  if (!lease.ok() && transferring_) {
    // A live stream lost its instance and no other can take it: the backend,
    // not capacity, ended it.
    FinishLocal(grpc::StatusCode::UNAVAILABLE, peers::kBackendUnavailable);
    return;
  }
  if (!lease.ok()) {
    FinishLocal(static_cast<grpc::StatusCode>(lease.status().code()),
                std::string(lease.status().message()));
    return;
  }
  LaunchAttempt(*std::move(lease));
}

void ProxyCall::WaitForLease() {
  Cluster* cluster = route_->cluster;
  core::RequestMeta meta = cluster->MetaFor(session_, excluded_);
  // Bounded by attemptTimeout too, so a stopping gateway joins its waiters.
  const auto bound = std::chrono::system_clock::now() +
                     std::chrono::duration_cast<std::chrono::system_clock::duration>(
                         gateway_->config().attempt_timeout);
  meta.deadline = std::min(deadline_, bound);
  waiting_ = true;
  std::weak_ptr<ProxyCall> weak = weak_from_this();
  gateway_->lease_waiters().Submit(
      [weak, cluster, meta = std::move(meta), failed_any = failed_any_] {
        absl::StatusOr<transport::PeerLease> lease = cluster->pool->Acquire(meta, meta.deadline);
        if (!lease.ok() && lease.status().code() != absl::StatusCode::kDeadlineExceeded) {
          lease = cluster->Refusal(lease.status(), meta, failed_any);
        }
        // self_ keeps the call alive until it finished, so this normally
        // finds it; a lease nobody takes is released CANCELLED.
        if (auto call = weak.lock()) call->OnWaitedLease(std::move(lease));
      });
}

void ProxyCall::OnWaitedLease(absl::StatusOr<transport::PeerLease> lease) {
  std::lock_guard<std::recursive_mutex> lock(mu_);
  waiting_ = false;
  if (finished_) return;
  if (cancelled_) {
    FinishLocal(grpc::StatusCode::CANCELLED, "cancelled while waiting for an instance");
    return;
  }
  if (!lease.ok()) {
    if (lease.status().code() == absl::StatusCode::kDeadlineExceeded) {
      // The call's own deadline, or the attemptTimeout bound of the wait.
      if (std::chrono::system_clock::now() >= deadline_) {
        FinishLocal(grpc::StatusCode::DEADLINE_EXCEEDED,
                    "deadline passed while waiting for a free instance");
      } else {
        FinishLocal(grpc::StatusCode::RESOURCE_EXHAUSTED, peers::kAllInstancesBusy);
      }
      return;
    }
    FinishLocal(static_cast<grpc::StatusCode>(lease.status().code()),
                std::string(lease.status().message()));
    return;
  }
  LaunchAttempt(*std::move(lease));
}

void ProxyCall::LaunchAttempt(transport::PeerLease lease) {
  const auto& config = gateway_->config();
  Cluster* cluster = route_->cluster;
  ++attempts_;
  auto* a = new Attempt(shared_from_this(), std::move(lease), cluster, ++seq_);
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
                    {{"session", session_}, {"method", method_}, {"instance", a->id}});
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
  // The lease goes back with the attempt's outcome (a transport failure
  // counts as UNAVAILABLE for the instance's breaker) before any retry leases.
  cluster->pool->Release(a->lease, transport_failure
                                       ? absl::StatusCode::kUnavailable
                                       : static_cast<absl::StatusCode>(status.error_code()));
  a->lease.token.reset();
  if (transport_failure) {
    (a->timed_out ? cluster->attempts_timeout : cluster->attempts_failed)->Add();
    // The instance is gone (or hung): its bindings end, whoever holds them.
    const std::vector<std::string> dropped = cluster->chooser->ReportFailure(a->id);
    core::LogInfo("gateway.instance_failed", {{"instance", a->id},
                                              {"address", a->address},
                                              {"method", method_},
                                              {"session", dropped.empty() ? "" : dropped.front()},
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
    excluded_.insert(a->id);
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
  void Release(absl::StatusCode outcome) {
    if (!lease_.token) return;
    route_->cluster->pool->Release(lease_, outcome);
    lease_.token.reset();
  }

  // `lease`: the first attempt's, taken by OnHeaders.
  FrameCall(Gateway::Impl* gateway, const Route* route, std::string session, std::string method,
            transport::PeerLease lease)
      : gateway_(gateway),
        route_(route),
        session_(std::move(session)),
        method_(std::move(method)),
        lease_(std::move(lease)) {}

  absl::StatusOr<h2relay::HookTarget> Next() override {
    Cluster* cluster = route_->cluster;
    if (attempts_ >= gateway_->config().max_attempts) {
      return absl::UnavailableError(peers::kBackendUnavailable);
    }
    if (!lease_.token) {
      // Retries never wait (they run on the loop): the cap answers at once.
      auto lease = cluster->Lease(session_, excluded_, failed_any_);
      if (!lease.ok()) return lease.status();
      lease_ = *std::move(lease);
    }
    ++attempts_;
    return h2relay::HookTarget{InstanceOf(lease_).serial, lease_.peer->address};
  }

  void AttemptFailed(bool timed_out, std::string_view reason) override {
    Cluster* cluster = route_->cluster;
    const std::string id = lease_.peer->id;
    const std::string address = lease_.peer->address;
    // A transport failure counts as UNAVAILABLE for the instance's breaker;
    // released before the next attempt leases.
    Release(absl::StatusCode::kUnavailable);
    (timed_out ? cluster->attempts_timeout : cluster->attempts_failed)->Add();
    // The instance is gone (or hung): its bindings end, whoever holds them.
    const std::vector<std::string> dropped = cluster->chooser->ReportFailure(id);
    core::LogInfo("gateway.instance_failed", {{"instance", id},
                                              {"address", address},
                                              {"method", method_},
                                              {"session", dropped.empty() ? "" : dropped.front()},
                                              {"message", std::string(reason)},
                                              {"timedOut", timed_out}});
    failed_any_ = true;
    excluded_.insert(id);
  }

  void AttemptAnswered() override { route_->cluster->attempts_ok->Add(); }

  void Finished(absl::StatusCode code) override {
    // The answered attempt's lease (if any is still held) ends with the
    // client's status: the application's, or the relay's mapped failure.
    Release(code);
    gateway_->CountRequest(*route_, static_cast<grpc::StatusCode>(code));
  }

 private:
  Gateway::Impl* gateway_;
  const Route* route_;
  std::string session_;
  std::string method_;
  // The current attempt's instance lease; released once (AttemptFailed or
  // Finished). Destroyed unreleased, it is released as CANCELLED.
  transport::PeerLease lease_;
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
    // The first attempt's lease, here rather than in Next(): a loop thread
    // never waits, so a call whose instance is at its in-flight cap goes to
    // the grpc++ path (the relay's fallback), which waits for a slot when the
    // call has a deadline (coordinator rule 5) and answers at once otherwise.
    peers::StickyOutcome outcome = peers::StickyOutcome::kInstance;
    auto lease = route.cluster->Lease(session, {}, false, &outcome);
    if (!lease.ok()) {
      if (outcome == peers::StickyOutcome::kAtCapacity) return nullptr;
      gateway_->CountRequest(route, static_cast<grpc::StatusCode>(lease.status().code()));
      return lease.status();
    }
    return std::make_unique<FrameCall>(gateway_, &route, std::move(session), std::move(method),
                                       *std::move(lease));
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
    }
    const core::Tags tags = {{"cluster", name}};
    cluster->sessions = &metrics_->GetGauge(kSessions, tags);
    cluster->transfers = &metrics_->GetCounter(kTransfers, tags);
    cluster->stream_transfers = &metrics_->GetCounter(kStreamTransfers, tags);
    cluster->evictions_failure =
        &metrics_->GetCounter(kEvictions, {{"cluster", name}, {"reason", "transport_failure"}});
    cluster->evictions_left =
        &metrics_->GetCounter(kEvictions, {{"cluster", name}, {"reason", "left"}});
    cluster->evictions_ineligible =
        &metrics_->GetCounter(kEvictions, {{"cluster", name}, {"reason", "ineligible"}});
    cluster->attempts_ok = &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "ok"}});
    cluster->attempts_failed =
        &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "transport_failure"}});
    cluster->attempts_timeout =
        &metrics_->GetCounter(kAttempts, {{"cluster", name}, {"outcome", "timeout"}});
    // The cluster's instances as peers of the peer kit: the `sticky`
    // chooser (keyless calls of round-robin routes rotate), the cluster's
    // in-flight cap and breaker; omnirelay.peer.* series tagged
    // rpc.service=<cluster>, rpc.peer=<instance id>.
    transport::PeerPoolOptions pool_options;
    pool_options.service = name;
    pool_options.transport = "grpc";
    pool_options.max_in_flight_per_peer = cc.max_in_flight_per_instance;
    pool_options.breaker_consecutive_failures =
        cc.circuit_breaker.enabled ? cc.circuit_breaker.consecutive_failures : 0;
    pool_options.breaker_open_delay = cc.circuit_breaker.open_delay;
    peers::ChooserOptions chooser_options;
    chooser_options.sticky_occupancy = cc.occupancy;
    Cluster* raw = cluster.get();
    pool_options.chooser_factory = [raw, chooser_options]() -> std::unique_ptr<peers::PeerChooser> {
      auto chooser = std::make_unique<peers::StickyChooser>(chooser_options);
      raw->chooser = chooser.get();
      chooser->SetListener([raw](const peers::StickyEvent& event) { raw->OnStickyEvent(event); });
      return chooser;
    };
    auto pool = transport::MakeCoordinatorPeerPool({}, std::move(pool_options),
                                                   core::SystemClock::Shared(), metrics_);
    if (!pool.ok()) return pool.status();
    cluster->pool = *std::move(pool);
    auto credentials = cluster->credentials;
    cluster->pool->SetAttachmentFactory([credentials](const std::string& address) {
      return std::static_pointer_cast<void>(std::make_shared<Instance>(address, credentials));
    });
    if (!cc.registry.empty()) {
      // filled by Start's first poll
    } else {
      std::vector<transport::PeerEndpoint> endpoints;
      for (const auto& e : cc.endpoints) endpoints.push_back({e, e});
      if (absl::Status set = cluster->pool->SetPeers(std::move(endpoints)); !set.ok()) {
        return absl::InvalidArgumentError("omniRelay.gateway.clusters." + name +
                                          ".endpoints: " + std::string(set.message()));
      }
    }
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
  std::map<std::string, std::string> next;  // id -> address (a listing has unique ids)
  for (const auto& instance : *listed) next.emplace(instance.id, instance.address);
  std::map<std::string, std::string> previous;
  for (const auto& p : cluster.pool->Peers()) previous.emplace(p.id, p.address);
  if (next == previous) return;
  std::vector<transport::PeerEndpoint> endpoints;
  for (const auto& [id, address] : next) endpoints.push_back({id, address});
  // Removed instances (and ids back at another address: another process)
  // lose their bindings through the chooser (evictions{reason=left}); their
  // channels go with the last lease on them.
  if (absl::Status set = cluster.pool->SetPeers(std::move(endpoints)); !set.ok()) {
    core::LogWarn("gateway.registry_unusable",
                  {{"cluster", cluster.config.name}, {"error", std::string(set.message())}});
    return;
  }
  for (const auto& [id, address] : previous) {
    auto it = next.find(id);
    if (it != next.end() && it->second == address) continue;
    core::LogInfo("gateway.instance_left",
                  {{"cluster", cluster.config.name}, {"instance", id}, {"address", address}});
  }
  for (const auto& [id, address] : next) {
    auto it = previous.find(id);
    if (it != previous.end() && it->second == address) continue;
    core::LogInfo("gateway.instance_joined",
                  {{"cluster", cluster.config.name}, {"instance", id}, {"address", address}});
  }
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
  lease_waiters_ = std::make_unique<LeaseWaiters>(kLeaseWaiterThreads);
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
  server_->Wait();  // calls waiting for a lease end within attemptTimeout
  {
    // Replaced attempts still ending (cancelled when replaced): bounded, as a
    // cancelled client call ends promptly.
    std::unique_lock<std::mutex> lock(attempts_mu_);
    attempts_cv_.wait_for(lock, grace + std::chrono::seconds(5),
                          [this] { return live_attempts_ == 0; });
  }
  server_.reset();
  lease_waiters_.reset();
  timers_.reset();
}

nlohmann::json Gateway::Impl::Introspect() const {
  auto ms = [](core::Duration d) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  };
  nlohmann::json clusters = nlohmann::json::object();
  for (const auto& [name, cluster] : clusters_) {
    nlohmann::json members = nlohmann::json::array();
    const auto bindings = cluster->chooser->bindings();
    std::map<std::string, std::vector<std::string>> by_instance;
    for (const auto& [session, id] : bindings) by_instance[id].push_back(session);
    // The peer kit's view of each instance (sorted by id): breaker, load,
    // outcome totals.
    const nlohmann::json pool = cluster->pool->Snapshot();
    std::map<std::string, nlohmann::json> sorted;
    for (const auto& peer : pool["peers"]) {
      const std::string id = peer["id"];
      nlohmann::json j = {{"id", id},
                          {"address", peer["address"]},
                          {"eligible", peer["eligible"]},
                          {"breaker", peer["breaker"]},
                          {"inFlight", peer["inFlight"]},
                          {"successes", peer["successes"]},
                          {"failures", peer["failures"]}};
      auto it = by_instance.find(id);
      // One session per instance at the default occupancy; the first otherwise.
      j["session"] =
          it == by_instance.end() ? nlohmann::json(nullptr) : nlohmann::json(it->second.front());
      if (cluster->config.occupancy != 1) {
        j["sessions"] =
            it == by_instance.end() ? nlohmann::json::array() : nlohmann::json(it->second);
      }
      sorted.emplace(id, std::move(j));
    }
    for (auto& [id, j] : sorted) members.push_back(std::move(j));
    clusters[name] = {{"source", cluster->registry ? "registry" : "static"},
                      {"members", members},
                      {"bindings", bindings},
                      {"chooser", pool["chooser"]},
                      {"occupancy", cluster->config.occupancy},
                      {"maxInFlightPerInstance", cluster->config.max_in_flight_per_instance},
                      {"waiting", pool["waiting"]}};
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
