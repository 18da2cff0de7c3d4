#include "omnirelay/node/replication_wiring.h"

#include "omnirelay/core/address.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/retry_after.h"
#include "omnirelay/core/status.h"
#include "omnirelay/replication/durable_replicators.h"
#include "omnirelay/replication/hub.h"
#include "omnirelay/tls/grpc_credentials.h"

namespace omnirelay::node {

namespace {

constexpr char kBase[] = "omniRelay.resourceLease.replication";

// A lease answered before its event reached the log (durableAck off) cannot
// be known after a crash: tokens jump this far past the logged ones.
constexpr std::uint64_t kTokenMarginWithoutDurableAck = 1ull << 24;

absl::Status At(std::string_view field, const absl::Status& s) {
  return absl::Status(s.code(), std::string(kBase) + (field.empty() ? "" : ".") +
                                    std::string(field) + ": " + std::string(s.message()));
}

}  // namespace

absl::StatusOr<HubTargetChoice> HubTarget(std::string_view hub,
                                          const std::optional<tls::TlsOptions>& tls) {
  // The scheme rule of every outbound (docs/security.md): https:// and grpcs://
  // are TLS with omniRelay.tls (the system store without it), never plaintext.
  auto parsed = core::ParseHostPort(hub);
  if (!parsed.ok()) return parsed.status();
  HubTargetChoice choice{.address = parsed->Authority(), .credentials = nullptr};
  if (parsed->tls())
    choice.credentials = tls::GrpcChannelCredentials(tls.value_or(tls::TlsOptions{}));
  return choice;
}

absl::StatusOr<std::unique_ptr<ResourceLeaseReplication>> ResourceLeaseReplication::Create(
    const config::ResourceLeaseReplicationConfig& config, std::shared_ptr<core::Clock> clock,
    std::shared_ptr<core::MetricsRegistry> metrics, const std::optional<tls::TlsOptions>& tls) {
  std::unique_ptr<ResourceLeaseReplication> r(new ResourceLeaseReplication());
  r->config_ = config;
  r->clock_ = clock;
  const replication::BatchOptions batch{.max_batch = static_cast<size_t>(config.max_batch)};
  std::shared_ptr<replication::Replicator> base;
  if (config.kind == "sqlite") {
    auto log = replication::SqliteReplicator::Open({.path = config.path,
                                                    .table = config.table,
                                                    .full_sync = config.durable_ack,
                                                    .batch = batch});
    if (!log.ok()) return At("path", log.status());
    base = *log;
  } else if (config.kind == "file") {
    auto log = replication::FileSegmentReplicator::Open(
        {.root = config.path, .full_sync = config.durable_ack, .batch = batch});
    if (!log.ok()) return At("path", log.status());
    base = *log;
  } else if (config.kind == "grpc") {
    auto target = HubTarget(config.hub, tls);
    if (!target.ok()) return At("hub", target.status());
    auto log = replication::GrpcHubReplicator::Open(
        {.address = target->address, .credentials = target->credentials, .batch = batch});
    if (!log.ok()) return At("hub", log.status());
    base = *log;
  } else {
    base = std::make_shared<replication::MemoryReplicator>();
  }
  r->replicator_ = config.shard.empty()
                       ? base
                       : std::make_shared<replication::ShardedReplicator>(base, config.shard);

  const auto& det = config.deterministic;
  // A hub client keeps no local files unless told where: memory by default.
  const std::string kind = !det.kind.empty()       ? det.kind
                           : config.kind == "grpc" ? "memory"
                                                   : config.kind;
  std::shared_ptr<replication::DeterministicStateStore> store;
  if (kind == "sqlite") {
    const std::string path = det.path.empty() ? config.path + "-effects.db" : det.path;
    auto s = replication::SqliteDeterministicStore::Open({.path = path});
    if (!s.ok()) return At("deterministic.path", s.status());
    store = *s;
  } else if (kind == "file") {
    const std::string path = det.path.empty() ? config.path + "-effects" : det.path;
    auto s = replication::FileSystemDeterministicStore::Open({.root = path});
    if (!s.ok()) return At("deterministic.path", s.status());
    store = *s;
  } else if (kind == "memory") {
    store = std::make_shared<replication::MemoryDeterministicStore>();
  }
  std::shared_ptr<replication::ReplicationSink> inner;
  if (store) {
    replication::DeterministicOptions options{.change_id = det.change_id,
                                              .effect_id_format = det.effect_id_format};
    if (auto s = replication::ValidateDeterministicOptions(options); !s.ok()) {
      return At("deterministic", s);
    }
    r->coordinator_ =
        std::make_shared<replication::DeterministicCoordinator>(store, options, clock, metrics);
    inner = r->coordinator_;
  }
  r->checkpoint_ = std::make_shared<replication::CheckpointingSink>(
      r->coordinator_ ? r->coordinator_->name() : "checkpoint", inner, clock, metrics);
  r->replicator_->AddSink(r->checkpoint_);
  return r;
}

ResourceLeaseReplication::~ResourceLeaseReplication() { Close(); }

absl::Status ResourceLeaseReplication::Attach(resourcelease::Queue& queue) {
  const std::string name = queue.options().name;
  replication::RecoveryFold fold(config_.durable_ack ? 0 : kTokenMarginWithoutDurableAck);
  auto report = replication::ReplayLog(*replicator_, name, {checkpoint_}, fold, coordinator_.get());
  if (!report.ok()) {
    return absl::Status(report.status().code(), "omniRelay.resourceLease.namespaces." + name +
                                                    ": replaying the replication log failed: " +
                                                    std::string(report.status().message()));
  }
  replays_[name] = *report;
  if (report->events > 0) {
    core::LogInfo("resourcelease replay", {{"namespace", name},
                                           {"events", report->events},
                                           {"lastSequence", report->last_sequence},
                                           {"effectsRecorded", report->effects_recorded},
                                           {"effectsSkipped", report->effects_skipped},
                                           {"pending", report->pending},
                                           {"deadLetters", report->dead_letters},
                                           {"seconds", report->seconds}});
  }
  auto replicator = replicator_;
  queue.SetObserver([replicator, name](const resourcelease::MutationEvent& m) {
    // Runs under the queue's lock: Publish only buffers.
    if (auto s = replicator->Publish(replication::FromMutation(name, m)); !s.ok()) {
      core::LogError("replication publish failed",
                     {{"namespace", name}, {"sequence", m.sequence}, {"error", s.ToString()}});
    }
  });
  if (auto s = queue.Recover(fold.Finish()); !s.ok()) {
    return absl::Status(s.code(),
                        "omniRelay.resourceLease.namespaces." + name +
                            ": loading the replayed state failed: " + std::string(s.message()));
  }
  return absl::OkStatus();
}

std::function<void(std::uint64_t, std::function<void(absl::Status)>)>
ResourceLeaseReplication::AwaitDurable(std::string queue) const {
  if (!config_.durable_ack) return nullptr;
  auto replicator = replicator_;
  return [replicator, queue](std::uint64_t sequence, std::function<void(absl::Status)> done) {
    replicator->WhenDurable(queue, sequence, std::move(done));
  };
}

std::function<absl::Status()> ResourceLeaseReplication::AdmitEnqueue(std::string queue) const {
  if (config_.max_buffered <= 0) return nullptr;
  auto replicator = replicator_;
  const auto limit = static_cast<std::uint64_t>(config_.max_buffered);
  // Status() copies the per-queue positions under the replicator's lock: one
  // short critical section per enqueue, paid only when the bound is configured.
  return [replicator, queue, limit]() -> absl::Status {
    const auto status = replicator->Status();
    const auto it = status.queues.find(queue);
    if (it == status.queues.end()) return absl::OkStatus();
    const std::uint64_t backlog = it->second.published - it->second.durable;
    if (backlog < limit) return absl::OkStatus();
    // The writer retries every 200 ms: ask producers to come back after one retry.
    return core::WithRetryAfter(
        core::WithErrorCode(
            absl::ResourceExhaustedError("replication backlog of queue '" + queue + "' is " +
                                         std::to_string(backlog) + " events (maxBuffered " +
                                         std::to_string(limit) + "): the log is not keeping up"),
            "replication-backlog"),
        std::chrono::milliseconds(200));
  };
}

nlohmann::json ResourceLeaseReplication::Checkpoints() const {
  const auto status = replicator_->Status();
  nlohmann::json queues = nlohmann::json::object();
  for (const auto& [q, pos] : status.queues) {
    queues[q] = {
        {"published", pos.published}, {"durable", pos.durable}, {"delivered", pos.delivered}};
  }
  nlohmann::json sinks = nlohmann::json::array();
  for (const auto& c : checkpoint_->Checkpoints()) {
    sinks.push_back({{"sink", c.sink},
                     {"queue", c.queue},
                     {"shard", c.shard},
                     {"sequence", c.sequence},
                     {"applied", c.applied},
                     {"duplicates", c.duplicates},
                     {"replayed", c.replayed},
                     {"updatedAtUs", c.updated_at_us}});
  }
  nlohmann::json replays = nlohmann::json::object();
  for (const auto& [q, r] : replays_) {
    replays[q] = {{"events", r.events},
                  {"lastSequence", r.last_sequence},
                  {"effectsRecorded", r.effects_recorded},
                  {"effectsSkipped", r.effects_skipped},
                  {"pending", r.pending},
                  {"deadLetters", r.dead_letters},
                  {"completed", r.completed},
                  {"seconds", r.seconds}};
  }
  nlohmann::json body = {
      {"replicator",
       {{"name", status.name},
        {"kind", status.kind},
        {"shard", config_.shard},
        {"durableAck", config_.durable_ack},
        {"path", config_.path},
        {"queues", queues},
        {"writeError", status.write_error.ok() ? nlohmann::json(nullptr)
                                               : nlohmann::json(status.write_error.ToString())},
        {"writeFailures", status.write_failures},
        {"sinkFailures", status.sink_failures},
        {"lastSinkError", status.last_sink_error},
        {"batches", status.batches},
        {"eventsWritten", status.events_written},
        {"writerCpuUs", status.writer_cpu_us}}},
      {"sinks", sinks},
      {"replay", replays}};
  if (coordinator_) {
    body["deterministic"] = {{"store", coordinator_->store()->kind()},
                             {"hits", coordinator_->hits()},
                             {"misses", coordinator_->misses()}};
  }
  return body;
}

void ResourceLeaseReplication::Close() {
  if (!replicator_) return;
  (void)replicator_->Flush();
  replicator_->Close();
}

}  // namespace omnirelay::node
