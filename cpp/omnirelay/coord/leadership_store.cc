#include "omnirelay/coord/leadership_store.h"

#include <condition_variable>
#include <cstdio>

#include "omnirelay/coord/etcd_backend.h"
#include "omnirelay/coord/memory_backend.h"
#include "omnirelay/coord/sqlite_backend.h"

namespace omnirelay::coord {

using core::MakeStatus;
using core::StatusCode;

const core::MetricDescriptor kFencedWritesRejectedMetric{
    "omnirelay.leadership.fenced_writes_rejected", core::MetricKind::kCounter, "{write}",
    "Control writes refused because the writer's leadership (fencing token) or lease was stale"};

namespace {

bool ValidName(std::string_view name) {
  if (name.empty()) return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::vector<std::string_view> Split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

std::string LeaseHex(LeaseId lease) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%016llx", static_cast<unsigned long long>(lease));
  return buffer;
}

}  // namespace

core::Status LeadershipStore::ValidateScope(std::string_view scope) {
  const auto parts = Split(scope, '/');
  bool ok = false;
  if (parts.size() == 1) ok = parts[0] == "global";
  if (parts.size() == 2) ok = parts[0] == "region" && ValidName(parts[1]);
  if (parts.size() == 3) ok = parts[0] == "shard" && ValidName(parts[1]) && ValidName(parts[2]);
  if (ok) return core::Status();
  return MakeStatus(StatusCode::kInvalidArgument,
                    "invalid leadership scope '" + std::string(scope) +
                        "': expected global, region/<name> or shard/<namespace>/<id>",
                    "invalid-scope");
}

core::StatusOr<std::unique_ptr<LeadershipStore>> LeadershipStore::Open(
    const StoreOptions& options, std::shared_ptr<core::Clock> clock,
    core::MetricsRegistry* metrics) {
  if (!clock) clock = core::SystemClock::Shared();
  std::shared_ptr<KvBackend> backend;
  if (options.kind == "memory") {
    backend = MemoryBackend::Create(clock);
  } else if (options.kind == "sqlite") {
    SqliteOptions sqlite;
    sqlite.path = options.path;
    sqlite.max_clock_skew = options.max_clock_skew;
    sqlite.poll_interval = options.poll_interval;
    auto opened = SqliteBackend::Open(std::move(sqlite), clock);
    if (!opened.ok()) return opened.status();
    backend = *std::move(opened);
  } else if (options.kind == "etcd") {
    EtcdOptions etcd;
    etcd.endpoints = options.endpoints;
    etcd.dial_timeout = options.dial_timeout;
    etcd.request_timeout = options.request_timeout;
    auto opened = EtcdBackend::Open(std::move(etcd));
    if (!opened.ok()) return opened.status();
    backend = *std::move(opened);
  } else {
    return MakeStatus(
        StatusCode::kInvalidArgument,
        "coordination store kind '" + options.kind + "' is not one of memory, sqlite, etcd",
        "coord-store-config");
  }
  return std::make_unique<LeadershipStore>(std::move(backend), std::move(clock), options.key_prefix,
                                           metrics);
}

LeadershipStore::LeadershipStore(std::shared_ptr<KvBackend> backend,
                                 std::shared_ptr<core::Clock> clock, std::string key_prefix,
                                 core::MetricsRegistry* metrics)
    : backend_(std::move(backend)),
      clock_(clock ? std::move(clock) : core::SystemClock::Shared()),
      key_prefix_(std::move(key_prefix)) {
  if (metrics != nullptr) {
    fenced_rejected_metric_ = &metrics->GetCounter(kFencedWritesRejectedMetric,
                                                   {{"store", std::string(backend_->kind())}});
  }
}

LeadershipStore::~LeadershipStore() = default;

std::string LeadershipStore::ElectionPrefix(std::string_view scope) const {
  // "#" marks candidate keys so scope "shard/a/1" never matches "shard/a/1x".
  return key_prefix_ + "election/" + std::string(scope) + "/#";
}

std::string LeadershipStore::CandidateKey(std::string_view scope, LeaseId lease) const {
  return ElectionPrefix(scope) + LeaseHex(lease);
}

// --- leases ---

core::StatusOr<Lease> LeadershipStore::GrantLease(core::Duration ttl) {
  const core::TimePoint sent = clock_->Now();
  auto grant = backend_->GrantLease(ttl);
  if (!grant.ok()) return grant.status();
  Lease lease{grant->id, grant->ttl, sent + grant->ttl};
  std::lock_guard lock(leases_mu_);
  leases_[lease.id] = lease;
  return lease;
}

core::StatusOr<Lease> LeadershipStore::KeepAlive(LeaseId id) {
  const core::TimePoint sent = clock_->Now();
  auto ttl = backend_->KeepAlive(id);
  std::lock_guard lock(leases_mu_);
  if (!ttl.ok()) {
    if (ttl.status().code() == StatusCode::kNotFound) {
      // Gone for good: make sure nothing acts on it locally any more.
      auto it = leases_.find(id);
      if (it != leases_.end()) it->second.expires_at = core::TimePoint::min();
    }
    return ttl.status();
  }
  auto& lease = leases_[id];
  lease.id = id;
  lease.ttl = *ttl;
  lease.expires_at = sent + *ttl;
  return lease;
}

core::Status LeadershipStore::RevokeLease(LeaseId id) {
  {
    std::lock_guard lock(leases_mu_);
    auto it = leases_.find(id);
    if (it != leases_.end()) it->second.expires_at = core::TimePoint::min();
  }
  auto status = backend_->RevokeLease(id);
  if (status.ok()) {
    std::lock_guard lock(leases_mu_);
    leases_.erase(id);
  }
  return status;
}

std::optional<core::TimePoint> LeadershipStore::LeaseDeadline(LeaseId id) const {
  std::lock_guard lock(leases_mu_);
  auto it = leases_.find(id);
  if (it == leases_.end()) return std::nullopt;
  return it->second.expires_at;
}

bool LeadershipStore::LeaseLocallyExpired(LeaseId id) const {
  std::lock_guard lock(leases_mu_);
  auto it = leases_.find(id);
  return it != leases_.end() && clock_->Now() >= it->second.expires_at;
}

// --- election ---

core::StatusOr<Revision> LeadershipStore::EnsureCandidate(const std::string& key, LeaseId lease,
                                                          std::string_view value) {
  TxnOp put{TxnOp::Kind::kPut, key, std::string(value), lease};
  auto txn = backend_->Txn({Compare{key, Compare::Target::kCreateRevision, 0}}, {put});
  if (!txn.ok()) {
    if (txn.status().code() == StatusCode::kNotFound) {
      return MakeStatus(StatusCode::kAborted, "campaign: the lease has expired", "lease-expired");
    }
    return txn.status();
  }
  if (txn->succeeded) return txn->revision;
  auto existing = backend_->Range(key, {});
  if (!existing.ok()) return existing.status();
  if (existing->kvs.empty()) {
    return MakeStatus(StatusCode::kAborted, "campaign: candidacy vanished (lease expired)",
                      "lease-expired");
  }
  return existing->kvs.front().create_revision;
}

core::StatusOr<std::optional<Leadership>> LeadershipStore::LeaderOf(std::string_view scope) {
  RangeOptions options;
  options.prefix = true;
  options.sort_by_create = true;
  options.limit = 1;
  auto range = backend_->Range(ElectionPrefix(scope), options);
  if (!range.ok()) return range.status();
  if (range->kvs.empty()) return std::optional<Leadership>();
  const auto& kv = range->kvs.front();
  return std::optional<Leadership>(
      Leadership{std::string(scope), kv.key, kv.value, kv.create_revision, kv.lease});
}

core::StatusOr<Leadership> LeadershipStore::Campaign(std::string_view scope, LeaseId lease,
                                                     std::string_view value, std::stop_token stop) {
  if (auto status = ValidateScope(scope); !status.ok()) return status;
  const std::string key = CandidateKey(scope, lease);
  auto created = EnsureCandidate(key, lease, value);
  if (!created.ok()) return created.status();

  std::mutex mu;
  std::condition_variable_any changed;
  std::uint64_t changes = 0;
  auto watch = backend_->Watch(ElectionPrefix(scope), [&](const std::vector<WatchEvent>&) {
    std::lock_guard lock(mu);
    ++changes;
    changed.notify_all();
  });
  if (!watch.ok()) return watch.status();

  while (true) {
    std::uint64_t seen;
    {
      std::lock_guard lock(mu);
      seen = changes;
    }
    RangeOptions options;
    options.prefix = true;
    options.sort_by_create = true;
    auto candidates = backend_->Range(ElectionPrefix(scope), options);
    if (!candidates.ok()) return candidates.status();
    bool present = false;
    for (const auto& kv : candidates->kvs) present = present || kv.key == key;
    if (!present) {
      return MakeStatus(StatusCode::kAborted, "campaign: the lease expired while waiting",
                        "lease-expired");
    }
    const auto& first = candidates->kvs.front();
    if (first.key == key) {
      return Leadership{std::string(scope), key, first.value, first.create_revision, lease};
    }
    std::unique_lock lock(mu);
    // The timeout is only a safety net: watch events wake us.
    changed.wait_for(lock, stop, std::chrono::milliseconds(500), [&] { return changes != seen; });
    if (stop.stop_requested()) {
      lock.unlock();
      backend_
          ->Txn({Compare{key, Compare::Target::kCreateRevision, *created}},
                {TxnOp{TxnOp::Kind::kDelete, key, "", 0}})
          .IgnoreError();
      return MakeStatus(StatusCode::kCancelled, "campaign cancelled");
    }
  }
}

core::StatusOr<std::optional<Leadership>> LeadershipStore::TryCampaign(std::string_view scope,
                                                                       LeaseId lease,
                                                                       std::string_view value) {
  if (auto status = ValidateScope(scope); !status.ok()) return status;
  const std::string key = CandidateKey(scope, lease);
  auto created = EnsureCandidate(key, lease, value);
  if (!created.ok()) return created.status();
  auto leader = LeaderOf(scope);
  if (!leader.ok()) return leader.status();
  if (leader->has_value() && (*leader)->key == key) return leader;
  // Someone else leads: withdraw so we do not silently queue behind them.
  auto withdrawn = backend_->Txn({Compare{key, Compare::Target::kCreateRevision, *created}},
                                 {TxnOp{TxnOp::Kind::kDelete, key, "", 0}});
  if (!withdrawn.ok()) return withdrawn.status();
  return std::optional<Leadership>();
}

core::Status LeadershipStore::RejectFenced(std::string_view why) {
  fenced_writes_rejected_.fetch_add(1);
  if (fenced_rejected_metric_ != nullptr) fenced_rejected_metric_->Add(1);
  return MakeStatus(StatusCode::kFailedPrecondition, why, "stale-fencing-token");
}

core::Status LeadershipStore::Proclaim(const Leadership& leadership, std::string_view value) {
  if (LeaseLocallyExpired(leadership.lease)) {
    return RejectFenced("proclaim: the leadership's lease is past its deadline");
  }
  auto txn = backend_->Txn(
      {Compare{leadership.key, Compare::Target::kCreateRevision, leadership.fencing_token}},
      {TxnOp{TxnOp::Kind::kPut, leadership.key, std::string(value), leadership.lease}});
  if (!txn.ok()) {
    if (txn.status().code() == StatusCode::kNotFound) {
      return RejectFenced("proclaim: the leadership's lease has expired");
    }
    return txn.status();
  }
  if (!txn->succeeded) {
    return RejectFenced("proclaim: not the leader of " + leadership.scope + " any more (token " +
                        std::to_string(leadership.fencing_token) + ")");
  }
  return core::Status();
}

core::Status LeadershipStore::Resign(const Leadership& leadership) {
  auto txn = backend_->Txn(
      {Compare{leadership.key, Compare::Target::kCreateRevision, leadership.fencing_token}},
      {TxnOp{TxnOp::Kind::kDelete, leadership.key, "", 0}});
  return txn.ok() ? core::Status() : txn.status();
}

core::StatusOr<std::optional<Leadership>> LeadershipStore::Leader(std::string_view scope) {
  if (auto status = ValidateScope(scope); !status.ok()) return status;
  return LeaderOf(scope);
}

core::StatusOr<WatchHandle> LeadershipStore::Observe(std::string_view scope,
                                                     LeaderCallback callback) {
  if (auto status = ValidateScope(scope); !status.ok()) return status;
  struct State {
    std::mutex mu;
    bool initialized = false;
    std::int64_t token = -1;
    std::string value;
    LeaderCallback callback;
  };
  auto state = std::make_shared<State>();
  state->callback = std::move(callback);
  const std::string scope_name(scope);
  // Reads the leader and reports it if it differs from the last report.
  auto refresh = [this, state, scope_name](bool initial) {
    std::lock_guard lock(state->mu);
    if (!initial && !state->initialized) return;  // the initial read will see it
    auto leader = LeaderOf(scope_name);
    if (!leader.ok()) return;  // transient; the next event or resync re-reads
    const std::int64_t token = leader->has_value() ? (*leader)->fencing_token : 0;
    const std::string value = leader->has_value() ? (*leader)->value : std::string();
    if (state->initialized && token == state->token && value == state->value) return;
    state->initialized = true;
    state->token = token;
    state->value = value;
    state->callback(*leader);
  };
  auto watch = backend_->Watch(ElectionPrefix(scope),
                               [refresh](const std::vector<WatchEvent>&) { refresh(false); });
  if (!watch.ok()) return watch.status();
  {
    auto first = LeaderOf(scope_name);
    if (!first.ok()) return first.status();
  }
  refresh(true);
  return watch;
}

// --- versioned control data ---

core::StatusOr<std::optional<KeyValue>> LeadershipStore::Get(std::string_view key) {
  auto range = backend_->Range(DataKey(key), {});
  if (!range.ok()) return range.status();
  if (range->kvs.empty()) return std::optional<KeyValue>();
  KeyValue kv = range->kvs.front();
  kv.key = std::string(key);
  return std::optional<KeyValue>(std::move(kv));
}

core::StatusOr<std::vector<KeyValue>> LeadershipStore::List(std::string_view prefix) {
  RangeOptions options;
  options.prefix = true;
  auto range = backend_->Range(DataKey(prefix), options);
  if (!range.ok()) return range.status();
  const size_t strip = DataKey("").size();
  for (auto& kv : range->kvs) kv.key.erase(0, strip);
  return std::move(range->kvs);
}

core::StatusOr<Revision> LeadershipStore::CompareAndSwap(std::string_view key,
                                                         std::string_view value,
                                                         Revision expected_revision) {
  const std::string full = DataKey(key);
  auto txn = backend_->Txn({Compare{full, Compare::Target::kModRevision, expected_revision}},
                           {TxnOp{TxnOp::Kind::kPut, full, std::string(value), 0}});
  if (!txn.ok()) return txn.status();
  if (!txn->succeeded) {
    return MakeStatus(StatusCode::kFailedPrecondition,
                      "compare-and-swap on '" + std::string(key) + "': revision is not " +
                          std::to_string(expected_revision),
                      "revision-mismatch");
  }
  return txn->revision;
}

core::StatusOr<Revision> LeadershipStore::FencedPut(const Leadership& leadership,
                                                    std::string_view key, std::string_view value,
                                                    std::optional<Revision> expected_revision) {
  if (LeaseLocallyExpired(leadership.lease)) {
    return RejectFenced("fenced write to '" + std::string(key) + "': the lease of leadership " +
                        leadership.scope + " is past its deadline");
  }
  const std::string full = DataKey(key);
  std::vector<Compare> compares{
      Compare{leadership.key, Compare::Target::kCreateRevision, leadership.fencing_token}};
  if (expected_revision) {
    compares.push_back(Compare{full, Compare::Target::kModRevision, *expected_revision});
  }
  auto txn = backend_->Txn(compares, {TxnOp{TxnOp::Kind::kPut, full, std::string(value), 0}});
  if (!txn.ok()) return txn.status();
  if (txn->succeeded) return txn->revision;
  // Which compare failed decides the answer.
  auto current = backend_->Range(leadership.key, {});
  if (!current.ok()) return current.status();
  if (current->kvs.empty() || current->kvs.front().create_revision != leadership.fencing_token) {
    return RejectFenced("fenced write to '" + std::string(key) + "': fencing token " +
                        std::to_string(leadership.fencing_token) + " of " + leadership.scope +
                        " is stale");
  }
  return MakeStatus(StatusCode::kFailedPrecondition,
                    "fenced write to '" + std::string(key) + "': revision is not " +
                        std::to_string(*expected_revision),
                    "revision-mismatch");
}

core::StatusOr<WatchHandle> LeadershipStore::Watch(std::string_view prefix,
                                                   WatchCallback callback) {
  const size_t strip = DataKey("").size();
  return backend_->Watch(DataKey(prefix), [callback = std::move(callback),
                                           strip](const std::vector<WatchEvent>& events) {
    std::vector<WatchEvent> relative = events;
    for (auto& event : relative) event.kv.key.erase(0, strip);
    callback(relative);
  });
}

}  // namespace omnirelay::coord
