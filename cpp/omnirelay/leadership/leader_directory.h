#pragma once
// Who leads which scope, as this node last observed it, and the peer-kit
// chooser that routes to "the current leader of scope X".
//
// LeaderDirectory is written by the LeadershipManager's observe stream (one
// writer at a time) and read by the data plane. Readers on the hot path
// (LeaderChooser::Pick) pay one relaxed atomic load of the directory's
// generation plus a thread-local cache check; only after a change do they
// take the directory's mutex once to refresh.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/peers/chooser.h"

namespace omnirelay::leadership {

struct LeaderInfo {
  std::string node;  // the leader's proclaimed value (its node id)
  std::int64_t fencing_token = 0;
  bool operator==(const LeaderInfo&) const = default;
};

class LeaderDirectory {
 public:
  // Called after a scope's leader changed (another node, another token, or
  // none), outside the directory's mutex, on the writer's thread. Leader
  // outbounds use it to wake calls waiting for a leader.
  using Listener = std::function<void(const std::string& scope, const std::optional<LeaderInfo>&)>;

  // Records the leader of `scope` (nullopt: leaderless). Thread-safe.
  void Set(const std::string& scope, const std::optional<LeaderInfo>& leader);
  // Add listeners before the directory is written to.
  void AddListener(Listener listener);
  std::optional<LeaderInfo> Get(std::string_view scope) const;
  std::map<std::string, LeaderInfo> All() const;
  // Bumped on every change; readers cache against it.
  std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  std::map<std::string, LeaderInfo, std::less<>> leaders_;
  std::vector<Listener> listeners_;  // guarded by mu_
  std::atomic<std::uint64_t> generation_{1};
};

// Picks the peer whose id is the current leader of `scope`; no leader (or
// the leader is not among the peers / not pickable) → -1, which the
// coordinator turns into a retryable "no peer" failure. Never falls back to
// another peer: an RPC meant for the leader must not run on a non-leader.
class LeaderChooser final : public peers::PeerChooser {
 public:
  LeaderChooser(std::shared_ptr<const LeaderDirectory> directory, std::string scope);
  std::string_view name() const override { return "leader"; }
  int Pick(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  void ProbeOrder(const peers::PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;
  const std::string& scope() const { return scope_; }

 private:
  int LeaderIndex(const peers::PeerSnapshot& snapshot);
  std::shared_ptr<const LeaderDirectory> directory_;
  std::string scope_;
  std::uint64_t id_;  // distinguishes choosers in the thread-local cache
};

}  // namespace omnirelay::leadership
