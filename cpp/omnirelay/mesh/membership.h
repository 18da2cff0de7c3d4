#pragma once
// SWIM membership with Lifeguard suspicion (the behaviour of
// hashicorp/memberlist, written for this code base):
//
//   * Probes: every probe_interval one member (round-robin over a shuffled
//     list) gets a ping; without an ack within probe_timeout, k members are
//     asked to ping it for us (indirect probe); without any ack by the next
//     probe tick the member becomes suspect.
//   * Suspicion: a suspect has a Lifeguard timeout (options.h) that shrinks
//     as other members independently confirm it; when it expires the member
//     is declared dead. A member that hears it is suspected (or declared dead)
//     refutes by raising its incarnation and broadcasting alive.
//   * Dissemination: state changes are queued as broadcasts and piggybacked
//     on every message (pings, acks, gossip) a bounded number of times
//     (retransmit_mult * ceil(log10(n + 1))); gossip_interval sends pending
//     broadcasts to gossip_nodes random members.
//   * Anti-entropy: every push_pull_interval a full-state exchange with one
//     random member; joining is a push-pull with the seeds; every
//     reconnect_interval a push-pull with one random dead member (and the
//     seeds while alone) heals partitions after both sides declared each
//     other dead.
//   * Leave: a graceful leave broadcasts "left" to every live member; left
//     members are never probed again.
//   * Refusals: a message from another cluster, or a join whose node id is
//     already used by a live member at another address, is answered with a
//     Reject naming the problem and counted; malformed messages are dropped by
//     the transport and counted in Stats.
//
// Threading: one mutex serialises all protocol state (the control plane's
// serial executor). Entry points (timers, HandleMessage, the accessors) may be
// called from any thread. Messages are sent and listeners are called after
// the mutex is released, in the order they were produced.
// Ownership: always held by shared_ptr (Create); timers hold weak_ptrs.
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"
#include "omnirelay/mesh/options.h"
#include "omnirelay/mesh/transport.h"
#include "omnirelay/mesh/types.h"

namespace omnirelay::mesh {

// Counters a node exports as metrics (node.cc registers them as observables)
// and the simulator sums. All monotonic except the member gauges.
struct Stats {
  std::atomic<std::uint64_t> probes_sent{0};
  std::atomic<std::uint64_t> probes_failed{0};  // no ack at all (direct nor indirect)
  std::atomic<std::uint64_t> indirect_probes{0};
  std::atomic<std::uint64_t> suspicions_raised{0};   // this node suspected a member
  std::atomic<std::uint64_t> suspicions_refuted{0};  // this node refuted a suspicion of itself
  std::atomic<std::uint64_t> deaths_declared{0};     // a suspicion of ours expired
  std::atomic<std::uint64_t> messages_sent{0};
  std::atomic<std::uint64_t> messages_received{0};
  std::atomic<std::uint64_t> bytes_sent{0};  // counted by transports that encode
  std::atomic<std::uint64_t> bytes_received{0};
  std::atomic<std::uint64_t> push_pull_syncs{0};
  std::atomic<std::uint64_t> dropped_malformed{0};
  std::atomic<std::uint64_t> dropped_cluster{0};
  std::atomic<std::uint64_t> dropped_misdirected{0};  // a ping meant for another node id
  std::atomic<std::uint64_t> conflicts{0};            // node id claimed by another address
  std::atomic<std::uint64_t> rejects_sent{0};
  std::atomic<std::uint64_t> rejects_received{0};
};

struct MemberEvent {
  enum class Kind { kJoin, kAlive, kUpdate, kSuspect, kDead, kLeft, kRemoved, kHeartbeat };
  Kind kind;
  MemberRecord member;
};
std::string_view MemberEventKindName(MemberEvent::Kind kind);

struct LocalIdentity {
  std::string id;
  std::string address;  // advertised
  MemberMeta meta;
};

class Membership : public std::enable_shared_from_this<Membership> {
 public:
  using Listener = std::function<void(const MemberEvent&)>;

  static std::shared_ptr<Membership> Create(LocalIdentity self, Options options,
                                            std::shared_ptr<core::Clock> clock,
                                            std::shared_ptr<Transport> transport);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  // Listeners are added before Start. Called outside the lock, in order.
  void AddListener(Listener listener);

  // Starts the timers and joins through `seeds` (addresses; the own address
  // is skipped). Joining retries every reconnect_interval while alone.
  void Start(std::vector<std::string> seeds = {});
  // Stops every timer; no message is sent afterwards.
  void Stop();
  // Announces a graceful leave to every live member, then stops.
  void Leave();

  // The advertised address may only be known after the listener is bound.
  void SetAdvertiseAddress(const std::string& address);
  // Publishes new metadata (incarnation + 1, broadcast).
  void UpdateMeta(MemberMeta meta);

  // A message from the transport (any thread).
  void HandleMessage(const Message& message);

  // Inserts members as if learned from a push-pull (the simulator starts big
  // clusters converged this way; tests use it to set up a table).
  void Seed(const std::vector<MemberRecord>& records);

  // Views.
  std::vector<Member> Members() const;  // includes self, sorted by id
  std::optional<Member> Find(const std::string& id) const;
  MemberRecord SelfRecord() const;
  std::uint64_t incarnation() const;
  std::size_t NumAlive() const;  // alive + suspect, self included
  // The last refusal received (wrong cluster, id collision), empty if none.
  std::string refusal() const;
  const Options& options() const { return options_; }
  const std::string& id() const { return self_.id; }
  Stats& stats() { return stats_; }
  // {"self":{...},"members":[...],"incarnation":..}
  nlohmann::json ToJson() const;
  static nlohmann::json MemberToJson(const Member& member);

 private:
  struct Suspicion {
    core::TimePoint start;
    core::Duration min{};
    core::Duration max{};
    int expected = 0;
    std::vector<std::string> confirmers;  // includes whoever raised it
    core::TimerId timer = 0;
    std::uint64_t incarnation = 0;
  };
  struct Broadcast {
    MemberRecord record;
    int transmits = 0;
    std::uint64_t order = 0;  // newer first among equal transmit counts
  };
  struct Relay {  // an indirect probe we perform for someone else
    std::string requester;
    std::string requester_address;
    std::uint64_t requester_seq = 0;
    core::TimePoint expires;
  };
  struct Outgoing {
    std::string to;
    std::string address;
    MessagePtr message;
  };
  struct MemberEntry {
    Member member;
    std::unique_ptr<Suspicion> suspicion;
  };

  Membership(LocalIdentity self, Options options, std::shared_ptr<core::Clock> clock,
             std::shared_ptr<Transport> transport);

  // A timer callback that runs `fn` under the lock while running, then flushes.
  template <typename F>
  std::function<void()> Guard(F fn) {
    return [weak = weak_from_this(), fn = std::move(fn)] {
      if (auto self = weak.lock()) {
        {
          std::lock_guard lock(self->mu_);
          if (!self->running_) return;
          fn(*self);
        }
        self->Flush();
      }
    };
  }

  // All private helpers run with mu_ held.
  MemberRecord SelfLocked() const;
  void ScheduleProbe(core::Duration delay);
  void ScheduleGossip();
  void SchedulePushPull();
  void ScheduleReconnect();
  void OnProbeTick();
  void OnProbeTimeout(std::uint64_t seq);
  void OnGossipTick();
  void OnPushPullTick();
  void OnReconnectTick();
  void OnSuspicionTimeout(const std::string& id, std::uint64_t incarnation);

  void HandleLocked(const Message& m);
  void ApplyUpdates(const std::vector<MemberRecord>& updates);
  void MergeState(const std::vector<MemberRecord>& state, const std::string& from);
  void ApplyAlive(const MemberRecord& record);
  void ApplySuspect(const MemberRecord& record);
  void ApplyDead(const MemberRecord& record);
  void Refute(std::uint64_t heard);
  void SuspectLocally(const std::string& id);
  void Touch(const std::string& id);

  void Enqueue(const MemberRecord& record);
  std::vector<MemberRecord> TakeBroadcasts(std::size_t budget_bytes);
  std::shared_ptr<Message> NewMessage(MessageType type);
  void Send(const std::string& to, const std::string& address, std::shared_ptr<Message> m);
  void SendPushPull(const std::string& to, const std::string& address, bool join);
  std::vector<MemberRecord> FullState() const;
  void Emit(MemberEvent::Kind kind, const MemberRecord& record);
  void Reject(const Message& m, const std::string& reason);
  void Reap();
  std::string AddressOf(const MemberEntry& e) const { return e.member.record.address; }
  std::vector<const MemberEntry*> PickRandom(std::size_t k,
                                             const std::function<bool(const MemberEntry&)>& ok);
  std::size_t LiveCount() const;
  void Changed() { ++version_; }
  // Sends and listener calls produced under the lock (call without it).
  void Flush();

  const Options options_;
  const std::shared_ptr<core::Clock> clock_;
  const std::shared_ptr<Transport> transport_;
  Stats stats_;

  mutable std::mutex mu_;
  LocalIdentity self_;
  std::uint64_t incarnation_ = 0;
  std::unordered_map<std::string, MemberEntry> members_;  // excludes self
  std::vector<std::string> probe_order_;
  std::size_t probe_index_ = 0;
  std::mt19937_64 rng_;
  std::uint64_t next_seq_ = 0;
  // The probe in flight.
  std::uint64_t probe_seq_ = 0;
  std::string probe_target_;
  bool probe_acked_ = true;
  std::unordered_map<std::uint64_t, Relay> relays_;
  std::unordered_map<std::string, Broadcast> broadcasts_;
  std::uint64_t broadcast_order_ = 0;
  std::vector<std::string> seeds_;
  std::vector<core::TimerId> timers_;  // periodic timers (cancelled by Stop)
  core::TimerId probe_timer_ = 0, probe_timeout_timer_ = 0, gossip_timer_ = 0, push_pull_timer_ = 0,
                reconnect_timer_ = 0;
  bool running_ = false;
  bool leaving_ = false;
  std::string refusal_;
  std::uint64_t version_ = 0;
  std::size_t live_others_ = 0;  // members_ alive or suspect
  std::vector<Listener> listeners_;
  std::vector<Outgoing> outbox_;
  std::vector<MemberEvent> events_;
  std::mutex flush_mu_;  // keeps listener calls in production order
};

}  // namespace omnirelay::mesh
