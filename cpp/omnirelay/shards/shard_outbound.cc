#include "omnirelay/shards/shard_outbound.h"

#include "absl/strings/numbers.h"
#include "omnirelay/transport/grpc_transport.h"
#include "omnirelay/transport/peer_pool.h"

namespace omnirelay::shards {

const core::MetricDescriptor kShardCallsMetric{
    "omnirelay.shards.calls", core::MetricKind::kCounter, "{call}",
    "Shard-routed calls by outcome: local (served here), forwarded (sent to the owner), "
    "rejected (routing refused them)"};

ShardOutbound::ShardOutbound(ShardOutboundOptions options,
                             std::shared_ptr<const ShardRouter> router,
                             std::weak_ptr<dispatcher::Dispatcher> dispatcher,
                             std::shared_ptr<core::Clock> clock,
                             std::shared_ptr<core::MetricsRegistry> metrics)
    : options_(std::move(options)),
      router_(std::move(router)),
      dispatcher_(std::move(dispatcher)),
      clock_(std::move(clock)),
      metrics_(std::move(metrics)) {}

ShardOutbound::~ShardOutbound() { Stop(); }

void ShardOutbound::Stop() {
  std::map<std::string, std::shared_ptr<dispatcher::Outbound>> owners;
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
    owners.swap(owners_);
  }
  for (auto& [key, outbound] : owners) outbound->Stop();
}

void ShardOutbound::Count(std::string_view outcome) {
  if (metrics_) {
    metrics_
        ->GetCounter(kShardCallsMetric,
                     {{"namespace", options_.ns}, {"outcome", std::string(outcome)}})
        .Add();
  }
}

void ShardOutbound::CallUnary(dispatcher::Request request, dispatcher::UnaryCallback done) {
  Route(std::move(request), std::move(done), 0);
}

void ShardOutbound::Route(dispatcher::Request request, dispatcher::UnaryCallback done, int waits) {
  std::string ns = options_.ns;
  if (auto named = request.meta.headers.Get(kShardNamespaceHeader)) ns = std::string(*named);
  auto route = router_->Route(ns, request.meta.shard_key);
  if (!route.ok()) {
    Count("rejected");
    done(route.status());
    return;
  }
  const std::string version = std::to_string(route->map->version);
  if (route->local) {
    ServeLocally(std::move(request), *route, std::move(done));
    return;
  }
  if (auto from = request.meta.headers.Get(kShardForwardedByHeader)) {
    // Forwarded to us by a node whose map named us; ours does not. If ours
    // is newer (the shard moved, e.g. a rebalance, and the sender has not
    // seen it yet) pass it on to the owner under our version: every hop
    // strictly raises the version, so this cannot loop. If theirs is as new
    // or newer, we are the stale one: refuse rather than guess.
    std::int64_t sender_version = 0;
    const std::string sent(request.meta.headers.Get(kShardVersionHeader).value_or(""));
    if (!absl::SimpleAtoi(core::ToAbsl(sent), &sender_version)) sender_version = 0;
    if (sender_version > 0 && sender_version < route->map->version) {
      auto outbound = OwnerOutbound(*route->owner);
      if (outbound.ok()) {
        Count("forwarded");
        request.meta.headers.Set(kShardForwardedByHeader, router_->self_id());
        request.meta.headers.Set(kShardVersionHeader, version);
        (*outbound)->CallUnary(std::move(request), std::move(done));
        return;
      }
    }
    // The sender's map is newer and names us: ours will, once the watch
    // delivers that version (milliseconds). Re-route then, without holding
    // a thread (a clock timer), within the call's deadline and a cap.
    const auto deadline = request.meta.EffectiveDeadline(clock_->Now());
    if (sender_version > route->map->version && waits < kMaxVersionWaits &&
        (!deadline || clock_->Now() + kVersionWait < *deadline)) {
      clock_->ScheduleAfter(kVersionWait, [weak = weak_from_this(), request = std::move(request),
                                           done = std::move(done), waits]() mutable {
        if (auto self = weak.lock()) {
          self->Route(std::move(request), std::move(done), waits + 1);
        } else {
          done(absl::UnavailableError("shard outbound stopped"));
        }
      });
      return;
    }
    Count("rejected");
    done(core::MakeStatus(
        core::StatusCode::kUnavailable,
        "node " + router_->self_id() + " does not own shard " + std::to_string(route->shard) +
            " of '" + ns + "' under its map version " + version + " (owner: " + route->owner->id +
            "; forwarded by " + std::string(*from) + " under version " +
            std::string(request.meta.headers.Get(kShardVersionHeader).value_or("?")) + ")",
        "not-shard-owner"));
    return;
  }
  auto outbound = OwnerOutbound(*route->owner);
  if (!outbound.ok()) {
    Count("rejected");
    done(outbound.status());
    return;
  }
  Count("forwarded");
  request.meta.headers.Set(kShardForwardedByHeader, router_->self_id());
  request.meta.headers.Set(kShardVersionHeader, version);
  request.meta.headers.Set(kShardNamespaceHeader, ns);
  (*outbound)->CallUnary(std::move(request), std::move(done));
}

void ShardOutbound::ServeLocally(dispatcher::Request request, const ShardRoute& route,
                                 dispatcher::UnaryCallback done) {
  auto dispatcher = dispatcher_.lock();
  const auto* ns = router_->Find(route.map->spec.ns);
  const std::string local_service =
      ns && !ns->local_service.empty() ? ns->local_service : options_.local_service;
  const dispatcher::BoundProcedure* bound =
      dispatcher ? dispatcher->Resolve(local_service, request.meta.procedure) : nullptr;
  if (bound == nullptr || !bound->unary || !bound->procedure.forward_outbound.empty()) {
    Count("rejected");
    done(core::MakeStatus(core::StatusCode::kUnimplemented,
                          "shard owner " + router_->self_id() + " serves '" + route.map->spec.ns +
                              "' with " + local_service + "/" + request.meta.procedure +
                              ", which is not registered",
                          "shard-local-procedure-missing"));
    return;
  }
  Count("local");
  router_->RecordServed(route.map->spec.ns, route.shard);
  request.meta.service = local_service;
  bound->unary(std::move(request),
               [done = std::move(done), shard = std::to_string(route.shard),
                owner = router_->self_id(), version = std::to_string(route.map->version)](
                   absl::StatusOr<dispatcher::Response> response) {
                 if (response.ok()) {
                   response->headers.Set(kShardIdHeader, shard);
                   response->headers.Set(kShardOwnerHeader, owner);
                   response->headers.Set(kShardVersionHeader, version);
                 }
                 done(std::move(response));
               });
}

core::StatusOr<std::shared_ptr<dispatcher::Outbound>> ShardOutbound::OwnerOutbound(
    const ShardNode& owner) {
  std::string address = owner.address;
  if (auto it = options_.peer_addresses.find(owner.id); it != options_.peer_addresses.end()) {
    address = it->second;
  }
  const std::string key = owner.id + "@" + address;
  std::lock_guard lock(mu_);
  if (stopped_) return absl::UnavailableError("shard outbound '" + options_.ns + "' is stopped");
  if (auto it = owners_.find(key); it != owners_.end()) return it->second;
  transport::PeerPoolOptions peers{.chooser = "round-robin",
                                   .max_in_flight_per_peer = 0,
                                   .breaker_consecutive_failures = 0,
                                   .breaker_open_delay = std::chrono::seconds(1),
                                   .service = "shards." + options_.ns,
                                   .transport = "grpc"};
  auto pool = transport::MakeCoordinatorPeerPool({address}, peers, clock_, metrics_);
  if (!pool.ok()) return pool.status();
  auto outbound = std::make_shared<transport::GrpcOutbound>(
      transport::GrpcOutboundOptions{.name = "shards." + options_.ns + "->" + owner.id,
                                     .service = "",
                                     .procedure = "",
                                     .endpoints = {address},
                                     .peers = peers,
                                     .threads = 1,
                                     .tls = options_.tls},
      *pool, clock_);
  if (auto s = outbound->Start(); !s.ok()) return s;
  owners_[key] = outbound;
  return std::shared_ptr<dispatcher::Outbound>(outbound);
}

nlohmann::json ShardOutbound::Snapshot() const {
  nlohmann::json owners = nlohmann::json::array();
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, outbound] : owners_) owners.push_back(key);
  }
  auto map = router_->holder()->Get(options_.ns);
  return {{"transport", "shard"},
          {"namespace", options_.ns},
          {"localService", options_.local_service},
          {"version", map ? map->version : 0},
          {"owners", owners}};
}

}  // namespace omnirelay::shards
