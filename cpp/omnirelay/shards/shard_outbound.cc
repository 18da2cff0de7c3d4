#include "omnirelay/shards/shard_outbound.h"

#include <condition_variable>
#include <deque>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/retry_after.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::shards {

const core::MetricDescriptor kShardCallsMetric{
    "omnirelay.shards.calls", core::MetricKind::kCounter, "{call}",
    "Shard-routed calls by outcome: local (served here), forwarded (sent to the owner or a "
    "replica), rejected (routing refused them), throttled (a shard under backpressure)"};

namespace {

// One direction of a locally served stream: a bounded queue of messages.
// Push blocks while full (the reader sets the pace, as a network stream's
// flow control would); Close ends it for the reader once drained; Cancel
// drops everything and fails both sides.
class MessagePipe {
 public:
  static constexpr std::size_t kCapacity = 64;
  bool Push(std::string message) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || closed_ || queue_.size() < kCapacity; });
    if (cancelled_ || closed_) return false;
    queue_.push_back(std::move(message));
    cv_.notify_all();
    return true;
  }
  std::optional<std::string> Pop() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return cancelled_ || closed_ || !queue_.empty(); });
    if (cancelled_ || queue_.empty()) return std::nullopt;
    std::string message = std::move(queue_.front());
    queue_.pop_front();
    cv_.notify_all();
    return message;
  }
  void Close() {
    std::lock_guard lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }
  void Cancel() {
    std::lock_guard lock(mu_);
    cancelled_ = true;
    queue_.clear();
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;
  bool closed_ = false;
  bool cancelled_ = false;
};

// A shard-routed stream served by this node: the local procedure's blocking
// handler runs on a thread of its own, fed through two pipes, so the
// dispatcher's stream pump treats it like any remote stream.
class LocalShardStream final : public dispatcher::OutboundStream {
 public:
  LocalShardStream(const dispatcher::BoundProcedure* bound, core::RequestMeta meta)
      : bound_(bound) {
    thread_ = std::thread([this, meta = std::move(meta)]() mutable { Run(std::move(meta)); });
  }
  ~LocalShardStream() override {
    if (thread_.joinable()) {
      Cancel();
      thread_.join();
    }
  }
  bool Write(std::string message) override { return in_.Push(std::move(message)); }
  bool WritesDone() override {
    in_.Close();
    return true;
  }
  std::optional<std::string> Read() override { return out_.Pop(); }
  absl::Status Finish() override {
    if (thread_.joinable()) thread_.join();
    return status_;
  }
  void Cancel() override {
    in_.Cancel();
    out_.Cancel();
  }

 private:
  struct Reader final : dispatcher::ClientStream {
    explicit Reader(MessagePipe& pipe) : pipe(pipe) {}
    std::optional<std::string> Read() override { return pipe.Pop(); }
    MessagePipe& pipe;
  };
  struct Writer final : dispatcher::ServerStream {
    explicit Writer(MessagePipe& pipe) : pipe(pipe) {}
    bool Write(std::string message) override { return pipe.Push(std::move(message)); }
    MessagePipe& pipe;
  };
  void Run(core::RequestMeta meta) {
    Reader reader(in_);
    Writer writer(out_);
    const auto& p = bound_->procedure;
    absl::Status status;
    switch (p.kind) {
      case dispatcher::ProcedureKind::kServerStream: {
        auto first = in_.Pop();
        if (!first) {
          status = absl::InvalidArgumentError("server-stream call without a request message");
        } else {
          status = p.server_stream(
              dispatcher::Request{.meta = std::move(meta), .body = std::move(*first)}, writer);
        }
        break;
      }
      case dispatcher::ProcedureKind::kClientStream: {
        auto result = p.client_stream(meta, reader);
        status = result.status();
        if (result.ok()) out_.Push(std::move(result->body));
        break;
      }
      default:
        status = p.duplex(meta, reader, writer);
        break;
    }
    status_ = std::move(status);
    out_.Close();
  }
  const dispatcher::BoundProcedure* bound_;
  MessagePipe in_;
  MessagePipe out_;
  absl::Status status_;  // written by the thread, read after join
  std::thread thread_;
};

bool IsStreamKind(dispatcher::ProcedureKind kind) {
  return kind == dispatcher::ProcedureKind::kServerStream ||
         kind == dispatcher::ProcedureKind::kClientStream ||
         kind == dispatcher::ProcedureKind::kDuplex;
}

}  // namespace

ShardOutbound::ShardOutbound(ShardOutboundOptions options,
                             std::shared_ptr<const ShardRouter> router,
                             std::weak_ptr<dispatcher::Dispatcher> dispatcher,
                             std::shared_ptr<core::Clock> clock,
                             std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(std::move(options)),
      router_(std::move(router)),
      dispatcher_(std::move(dispatcher)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)),
      synced_(new std::atomic<const ShardMap*>[router_->namespaces().size()]),
      synced_maps_(router_->namespaces().size()) {
  for (std::size_t i = 0; i < router_->namespaces().size(); ++i) synced_[i] = nullptr;
}

ShardOutbound::~ShardOutbound() { Stop(); }

absl::Status ShardOutbound::Start() {
  if (started_) return absl::OkStatus();
  transport::PeerPoolOptions peers{
      .chooser = "round-robin",
      .max_in_flight_per_peer = options_.forward.max_in_flight_per_peer,
      .breaker_consecutive_failures = options_.forward.breaker_consecutive_failures,
      .breaker_open_delay = options_.forward.breaker_open_delay,
      .service = "shards." + options_.ns,
      .transport = "grpc"};
  if (options_.geo) {
    peers::GeoChooserOptions geo = *options_.geo;
    if (geo.region.empty()) {
      return core::MakeStatus(core::StatusCode::kInvalidArgument,
                              "shard route '" + options_.ns + "': geo needs the caller's region",
                              "invalid-geo-option");
    }
    if (geo.tags.empty()) geo.tags = {{"rpc.service", "shards." + options_.ns}};
    auto made = peers::GeoChooser::Create(std::move(geo), clock_, metrics_);
    if (!made.ok()) return made.status();
    geo_ = std::shared_ptr<peers::GeoChooser>(std::move(*made));
  }
  peers.chooser_factory = [geo = geo_]() -> std::unique_ptr<peers::PeerChooser> {
    return std::make_unique<ShardTargetChooser>(geo);
  };
  // The target is one named node: "cannot lease it" (breaker open, at its
  // cap without a deadline, gone) is UNAVAILABLE, retryable like a moving
  // owner, never RESOURCE_EXHAUSTED (which means "throttled" to callers).
  peers.exhaustion_is_unavailable = true;
  peers.exhaustion_error_code = "shard-target-unreachable";
  peers.exhaustion_message =
      "the shard's target node cannot be leased right now (breaker open, "
      "at its in-flight cap, or no longer in the map)";
  auto pool = transport::MakeCoordinatorPeerPool({}, peers, clock_, metrics_);
  if (!pool.ok()) return pool.status();
  auto forward = std::make_shared<transport::GrpcOutbound>(
      transport::GrpcOutboundOptions{.name = "shards." + options_.ns,
                                     .service = "",
                                     .procedure = "",
                                     .endpoints = {},
                                     .peers = peers,
                                     .threads = std::max(1, options_.forward.threads),
                                     .tls = options_.tls},
      *pool, clock_);
  if (auto s = forward->Start(); !s.ok()) return s;
  {
    std::lock_guard lock(sync_mu_);
    pool_ = *pool;
    forward_ = forward;
  }
  router_->holder()->AddListener([weak = weak_from_this()](const ShardMap&) {
    if (auto self = weak.lock()) self->SyncPeers();
  });
  SyncPeers();
  started_ = true;
  return absl::OkStatus();
}

void ShardOutbound::Stop() {
  if (stopped_.exchange(true)) return;
  std::shared_ptr<transport::GrpcOutbound> forward;
  {
    std::lock_guard lock(sync_mu_);
    forward = forward_;
  }
  if (forward) forward->Stop();
}

std::shared_ptr<transport::PeerPool> ShardOutbound::pool() const {
  std::lock_guard lock(sync_mu_);
  return pool_;
}

void ShardOutbound::SyncPeers() {
  std::lock_guard lock(sync_mu_);
  if (!pool_) return;
  // The union of every held map's nodes (a call may name another namespace
  // in rpc-shard-namespace); the same id in two maps has one address.
  std::vector<transport::PeerEndpoint> wanted;
  std::set<std::string> seen;
  const auto& namespaces = router_->namespaces();
  for (std::size_t i = 0; i < namespaces.size(); ++i) {
    auto map = router_->holder()->Get(namespaces[i].spec.ns);
    synced_maps_[i] = map;
    if (!map) continue;
    for (const auto& node : map->nodes) {
      if (node.id == router_->self_id() || !seen.insert(node.id).second) continue;
      std::string address = node.address;
      if (auto it = options_.peer_addresses.find(node.id); it != options_.peer_addresses.end()) {
        address = it->second;
      }
      wanted.push_back({node.id, address, node.region, node.zone});
    }
  }
  if (auto s = pool_->SetPeers(std::move(wanted)); !s.ok()) {
    core::Log(core::LogLevel::kWarn, "shards.route.peers_rejected",
              {{"namespace", options_.ns}, {"error", std::string(s.message())}});
  }
  for (std::size_t i = 0; i < namespaces.size(); ++i) {
    synced_[i].store(synced_maps_[i].get(), std::memory_order_release);
  }
}

void ShardOutbound::EnsureSynced(const std::string& ns, const ShardMap* map) {
  const auto& namespaces = router_->namespaces();
  for (std::size_t i = 0; i < namespaces.size(); ++i) {
    if (namespaces[i].spec.ns != ns) continue;
    // The install listener normally got here first; a call that raced it
    // (it saw the new map before the listener ran) syncs itself.
    if (synced_[i].load(std::memory_order_acquire) != map) SyncPeers();
    return;
  }
}

void ShardOutbound::Count(std::string_view outcome) {
  if (metrics_) {
    metrics_
        ->GetCounter(kShardCallsMetric,
                     {{"namespace", options_.ns}, {"outcome", std::string(outcome)}})
        .Add();
  }
}

std::string ShardOutbound::LocalService(const std::string& ns) const {
  const auto* n = router_->Find(ns);
  return n && !n->local_service.empty() ? n->local_service : options_.local_service;
}

ShardOutbound::Decision ShardOutbound::Decide(const core::RequestMeta& meta, int waits) {
  Decision d;
  d.ns = options_.ns;
  if (auto named = meta.headers.Get(kShardNamespaceHeader)) d.ns = std::string(*named);
  auto route = router_->Route(d.ns, meta.shard_key);
  if (!route.ok()) {
    d.status = route.status();
    return d;
  }
  d.route = *std::move(route);
  const ShardMap& map = *d.route.map;
  const std::string& self = router_->self_id();
  auto from = meta.headers.Get(kShardForwardedByHeader);
  if (!from) {
    // First hop: the owner, or (geo) the owner or a replica in the chosen region.
    ShardTarget target;
    if (geo_) {
      target =
          ChooseShardTarget(map, d.route.shard, self, options_.geo->region, geo_->PreferLocal(),
                            [this](std::string_view id) { return router_->IsRoutable(id); });
    } else {
      target = {d.route.owner, false};
    }
    d.target = target.node;
    d.replica = target.replica;
    d.kind = target.node->id == self ? Decision::Kind::kServe : Decision::Kind::kForward;
    return d;
  }
  if (d.route.local) {
    d.kind = Decision::Kind::kServe;
    d.target = d.route.owner;
    return d;
  }
  // Sent to us as a replica (geo): served only if our own map names us one.
  if (meta.headers.Get(kShardRoleHeader).value_or("") == "replica") {
    if (auto me = map.IndexOf(self)) {
      const auto placement = map.Placement(d.route.shard);
      for (std::size_t r = 1; r < placement.size(); ++r) {
        if (placement[r] == *me) {
          d.kind = Decision::Kind::kServe;
          d.target = &map.nodes[*me];
          d.replica = true;
          return d;
        }
      }
    }
  }
  // Forwarded to us by a node whose map named us; ours does not. If ours
  // is newer (the shard moved, e.g. a rebalance, and the sender has not
  // seen it yet) pass it on to the owner under our version: every hop
  // strictly raises the version, so this cannot loop. If theirs is as new
  // or newer, we are the stale one: wait for it, or refuse rather than guess.
  std::int64_t sender_version = 0;
  const std::string sent(meta.headers.Get(kShardVersionHeader).value_or(""));
  if (!absl::SimpleAtoi(core::ToAbsl(sent), &sender_version)) sender_version = 0;
  if (sender_version > 0 && sender_version < map.version) {
    d.kind = Decision::Kind::kForward;
    d.target = d.route.owner;
    d.pass_on = true;
    return d;
  }
  // The sender's map is newer and names us: ours will, once the watch
  // delivers that version (milliseconds). Route again then, within the
  // call's deadline and a cap.
  const auto deadline = meta.EffectiveDeadline(clock_->Now());
  if (sender_version > map.version && waits < kMaxVersionWaits &&
      (!deadline || clock_->Now() + kVersionWait < *deadline)) {
    d.kind = Decision::Kind::kWait;
    return d;
  }
  d.status = core::MakeStatus(
      core::StatusCode::kUnavailable,
      "node " + self + " does not own shard " + std::to_string(d.route.shard) + " of '" + d.ns +
          "' under its map version " + std::to_string(map.version) +
          " (owner: " + d.route.owner->id + "; forwarded by " + std::string(*from) +
          " under version " + (sent.empty() ? "?" : sent) + ")",
      "not-shard-owner");
  return d;
}

void ShardOutbound::Mark(core::RequestMeta& meta, const Decision& d) const {
  meta.headers.Set(kShardForwardedByHeader, router_->self_id());
  meta.headers.Set(kShardVersionHeader, std::to_string(d.route.map->version));
  meta.headers.Set(kShardNamespaceHeader, d.ns);
  meta.headers.Set(kShardTargetHeader, d.target->id);
  meta.headers.Set(kShardRoleHeader, d.replica ? "replica" : "owner");
}

void ShardOutbound::CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) {
  Route(std::move(request), std::move(done), 0);
}

void ShardOutbound::Route(dispatcher::Request request, dispatcher::UnaryCallback done, int waits) {
  Decision d = Decide(request.meta, waits);
  switch (d.kind) {
    case Decision::Kind::kRefuse:
      Count("rejected");
      done(d.status);
      return;
    case Decision::Kind::kServe:
      ServeLocally(std::move(request), d, std::move(done));
      return;
    case Decision::Kind::kWait:
      // A clock timer, no thread held.
      clock_->ScheduleAfter(kVersionWait, [weak = weak_from_this(), request = std::move(request),
                                           done = std::move(done), waits]() mutable {
        if (auto self = weak.lock()) {
          self->Route(std::move(request), std::move(done), waits + 1);
        } else {
          done(absl::UnavailableError("shard outbound stopped"));
        }
      });
      return;
    case Decision::Kind::kForward:
      break;
  }
  if (stopped_.load() || !forward_) {
    Count("rejected");
    done(absl::UnavailableError("shard outbound '" + options_.ns + "' is stopped"));
    return;
  }
  EnsureSynced(d.ns, d.route.map.get());
  Count("forwarded");
  Mark(request.meta, d);
  forward_->CallUnary(std::move(request), std::move(done));
}

absl::Status ShardOutbound::Admit(const Decision& d) {
  const auto* ns = router_->Find(d.route.map->spec.ns);
  const auto* meter = router_->meter(d.route.map->spec.ns);
  // The effective budget: the runtime override (SetShardBudget) if one is
  // applied, else the configured one.
  const double budget = meter != nullptr ? meter->Budget(d.route.shard) : 0;
  if (options_.throttle_pressured_shards && ns != nullptr && meter != nullptr && budget > 0 &&
      meter->Pressured(d.route.shard) &&
      static_cast<double>(meter->CurrentSecond(d.route.shard, clock_->Now())) >= budget) {
    Count("throttled");
    auto status = core::MakeStatus(
        core::StatusCode::kResourceExhausted,
        "shard " + std::to_string(d.route.shard) + " of '" + ns->spec.ns + "' is under " +
            "backpressure on " + router_->self_id() + " (over its budget of " +
            std::to_string(static_cast<std::int64_t>(budget)) + " calls/s)",
        "shard-backpressure");
    status = core::WithRetryAfter(
        std::move(status),
        std::chrono::duration_cast<std::chrono::milliseconds>(options_.retry_after));
    return core::WithBackpressure(std::move(status), "node=" + router_->self_id());
  }
  Count("local");
  router_->RecordServed(d.route.map->spec.ns, d.route.shard);
  return absl::OkStatus();
}

void ShardOutbound::ServeLocally(dispatcher::Request request, const Decision& d,
                                 dispatcher::UnaryCallback done) {
  auto dispatcher = dispatcher_.lock();
  const std::string local_service = LocalService(d.route.map->spec.ns);
  const dispatcher::BoundProcedure* bound =
      dispatcher ? dispatcher->Resolve(local_service, request.meta.procedure) : nullptr;
  if (bound == nullptr || !bound->unary || !bound->procedure.forward_outbound.empty()) {
    Count("rejected");
    done(core::MakeStatus(core::StatusCode::kUnimplemented,
                          "shard owner " + router_->self_id() + " serves '" + d.route.map->spec.ns +
                              "' with " + local_service + "/" + request.meta.procedure +
                              ", which is not registered",
                          "shard-local-procedure-missing"));
    return;
  }
  if (auto admitted = Admit(d); !admitted.ok()) {
    done(std::move(admitted));
    return;
  }
  request.meta.service = local_service;
  bound->unary(std::move(request), [done = std::move(done), shard = std::to_string(d.route.shard),
                                    owner = d.route.owner->id, self = router_->self_id(),
                                    role = d.replica ? "replica" : "owner",
                                    version = std::to_string(d.route.map->version)](
                                       absl::StatusOr<dispatcher::Response> response) {
    if (response.ok()) {
      response->headers.Set(kShardIdHeader, shard);
      response->headers.Set(kShardOwnerHeader, owner);
      response->headers.Set(kShardVersionHeader, version);
      response->headers.Set(kShardServedByHeader, self);
      response->headers.Set(kShardRoleHeader, role);
    }
    done(std::move(response));
  });
}

absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> ShardOutbound::OpenStream(
    const core::RequestMeta& meta) {
  for (int waits = 0;; ++waits) {
    Decision d = Decide(meta, waits);
    switch (d.kind) {
      case Decision::Kind::kRefuse:
        Count("rejected");
        return d.status;
      case Decision::Kind::kServe:
        return OpenLocalStream(meta, d);
      case Decision::Kind::kWait: {
        // Streams run on a thread of their own: wait on it (a clock timer
        // wakes it, so a ManualClock drives it in tests).
        auto woken = std::make_shared<std::pair<std::mutex, std::condition_variable>>();
        auto fired = std::make_shared<bool>(false);
        clock_->ScheduleAfter(kVersionWait, [woken, fired] {
          std::lock_guard lock(woken->first);
          *fired = true;
          woken->second.notify_all();
        });
        std::unique_lock lock(woken->first);
        woken->second.wait(lock, [&] { return *fired || stopped_.load(); });
        continue;
      }
      case Decision::Kind::kForward: {
        if (stopped_.load() || !forward_) {
          Count("rejected");
          return absl::UnavailableError("shard outbound '" + options_.ns + "' is stopped");
        }
        EnsureSynced(d.ns, d.route.map.get());
        Count("forwarded");
        core::RequestMeta forwarded = meta;
        Mark(forwarded, d);
        return forward_->OpenStream(forwarded);
      }
    }
  }
}

absl::StatusOr<std::unique_ptr<dispatcher::OutboundStream>> ShardOutbound::OpenLocalStream(
    const core::RequestMeta& meta, const Decision& d) {
  auto dispatcher = dispatcher_.lock();
  const std::string local_service = LocalService(d.route.map->spec.ns);
  const dispatcher::BoundProcedure* bound =
      dispatcher ? dispatcher->Resolve(local_service, meta.procedure) : nullptr;
  if (bound == nullptr || !IsStreamKind(bound->procedure.kind) ||
      !bound->procedure.forward_outbound.empty()) {
    Count("rejected");
    return core::MakeStatus(core::StatusCode::kUnimplemented,
                            "shard owner " + router_->self_id() + " serves '" +
                                d.route.map->spec.ns + "' with " + local_service + "/" +
                                meta.procedure + ", which is not a registered streaming procedure",
                            "shard-local-procedure-missing");
  }
  if (auto admitted = Admit(d); !admitted.ok()) return admitted;
  // The route's inbound chain already ran for this call; the local handler
  // is called directly (a second pass would count the stream twice in a
  // rate limiter's concurrency).
  core::RequestMeta local = meta;
  local.service = local_service;
  return std::unique_ptr<dispatcher::OutboundStream>(
      std::make_unique<LocalShardStream>(bound, std::move(local)));
}

nlohmann::json ShardOutbound::Snapshot() const {
  auto map = router_->holder()->Get(options_.ns);
  nlohmann::json out = {{"transport", "shard"},
                        {"namespace", options_.ns},
                        {"localService", options_.local_service},
                        {"version", map ? map->version : 0},
                        {"geo", geo_ != nullptr}};
  if (auto pool = this->pool()) out["pool"] = pool->Snapshot();
  if (geo_) {
    out["geoRegion"] = options_.geo->region;
    out["geoMode"] = geo_->mode() == peers::GeoChooser::Mode::kLocal ? "local" : "fallback";
  }
  return out;
}

}  // namespace omnirelay::shards
