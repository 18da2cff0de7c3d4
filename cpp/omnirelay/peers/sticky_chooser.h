#pragma once
// `sticky`: the peer kit's sticky-with-occupancy chooser (issue 15 item 4).
// The session gateway's clusters lease their instances through a
// PeerListCoordinator with this chooser, so gateway calls get the kit's
// lease metrics (omnirelay.peer.*), per-instance breaker, in-flight cap and
// contention rules like every other outbound; any outbound may select it by
// name too (`peerChooser: sticky`).
//
// The session key is the request header `ChooserOptions::sticky_header`
// (default `session-id`). Rules (issue 6, docs/session-gateway.md "Sticky
// with occupancy"):
//   - a bound session always gets its peer while that peer is in the list
//     and eligible (a peer at its in-flight cap is still its peer: the
//     coordinator's contention rules then apply — busy, or wait with a
//     deadline);
//   - a new session binds to an eligible peer holding fewer than
//     `sticky_occupancy` sessions (1 = one session per peer, the gateway
//     contract; 0 = unlimited), chosen in rotation order over the peers
//     sorted by id: the first such peer after the last peer handed out or,
//     for a session that lost its peer, after that peer — so a transferred
//     session lands on the next instance, deterministically;
//   - a binding ends when its peer leaves the list (or comes back at another
//     endpoint: another process), turns ineligible (breaker open, status
//     Unavailable, health tracker), is excluded by the caller, or is reported
//     failed (ReportFailure). Application errors never reach this class;
//   - a request without the key is round-robin over pickable peers
//     (occupancy ignored: Login and other stateless calls).
//
// Per-call exclusions: every value of the request header
// kStickyExcludeHeader is a peer id the pick must avoid (the instances that
// already failed in this call); the gateway adds them to the lease's meta,
// never to the wire. A keyless pick with every pickable peer excluded takes
// the next one anyway (a stateless retry; the caller bounds attempts).
//
// Why a pick refused (-1): LastOutcome() on the same thread, right after the
// coordinator's Acquire failed (Pick/ProbeOrder run on the acquiring
// thread), gives the gateway contract's reason; StickyStatus maps it to the
// client's answer.
//
// Thread-safety: Pick/ProbeOrder/Build and every method are thread-safe: one
// mutex guards the session table (held for a hash lookup on a bound pick);
// the rotation order lives in the snapshot (Build). The listener is set
// before the chooser is shared and runs outside the mutex.
#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "omnirelay/core/status.h"
#include "omnirelay/peers/chooser.h"

namespace omnirelay::peers {

// Request header naming a peer id a sticky pick must avoid (one value each).
inline constexpr char kStickyExcludeHeader[] = "omnirelay-sticky-exclude";

// The contract's answers (docs/session-gateway.md, "Sticky with occupancy").
inline constexpr char kAllInstancesBusy[] = "all instances are busy";
inline constexpr char kNoAvailableInstances[] = "no available instances";
inline constexpr char kBackendUnavailable[] = "backend service unavailable";

enum class StickyOutcome {
  kInstance,     // a peer was picked
  kAtCapacity,   // the session's peer (or every keyless candidate) is at its in-flight cap
  kBusy,         // every eligible peer holds its occupancy of other sessions
  kNoInstances,  // the list is empty
  kUnavailable,  // nothing eligible and unexcluded is left (or the session lost its peer
                 // and the list is empty)
};

// The status a caller answers for a refusal: kBusy and kAtCapacity ->
// RESOURCE_EXHAUSTED "all instances are busy"; kNoInstances ->
// RESOURCE_EXHAUSTED "no available instances", or UNAVAILABLE "backend
// service unavailable" when this call already saw an instance fail
// (`failed_any`); kUnavailable -> UNAVAILABLE "backend service unavailable".
// OK for kInstance.
absl::Status StickyStatus(StickyOutcome outcome, bool failed_any);

// A binding change, for the owner's metrics and logs.
struct StickyEvent {
  enum class Kind { kBound, kUnbound };
  enum class Reason {
    kNone,        // kBound
    kFailure,     // ReportFailure, or excluded by the caller (failed in this call)
    kLeft,        // the peer left the list or came back at another endpoint
    kIneligible,  // breaker open / Unavailable / unhealthy
  };
  Kind kind = Kind::kBound;
  Reason reason = Reason::kNone;
  std::string session;
  std::string peer_id;
  bool transferred = false;  // kBound: the session had lost an earlier peer
  size_t bindings = 0;       // bindings after the change
};

class StickyChooser final : public PeerChooser {
 public:
  // Sessions remembered after losing their peer (rotation start and the
  // kUnavailable answer); the oldest are forgotten first.
  static constexpr size_t kLostMemory = 4096;
  using Listener = std::function<void(const StickyEvent&)>;

  explicit StickyChooser(const ChooserOptions& options = {});
  std::string_view name() const override { return "sticky"; }
  std::shared_ptr<ChooserState> Build(const std::vector<Peer*>& peers) override;
  int Pick(const PeerSnapshot& snapshot, const core::RequestMeta& meta) override;
  // The pick itself, nothing else: a sticky session must not spill onto
  // another peer when its own refuses.
  void ProbeOrder(const PeerSnapshot& snapshot, const core::RequestMeta& meta, int first,
                  std::vector<int>* order) override;

  // Set before the chooser is shared; called outside the chooser's mutex.
  void SetListener(Listener listener) { listener_ = std::move(listener); }

  // The outcome of this thread's last Pick on this chooser.
  StickyOutcome LastOutcome() const;
  // The outcome for `meta` when the list is empty (the coordinator refuses
  // an empty list before any pick, `peer-list-empty`): kUnavailable for a
  // session that had a peer (or a call that saw one fail), else kNoInstances.
  StickyOutcome OutcomeWithoutPeers(const core::RequestMeta& meta) const;

  // `peer_id` failed at the transport level: its bindings end. Returns the
  // sessions that were bound to it.
  std::vector<std::string> ReportFailure(const std::string& peer_id);

  std::map<std::string, std::string> bindings() const;  // session -> peer id
  size_t binding_count() const;
  const std::string& key_header() const { return header_; }
  int occupancy() const { return occupancy_; }

 private:
  struct Binding {
    std::string peer_id;
    std::string endpoint;  // the incarnation it was bound to
  };
  int PickKeyless(const PeerSnapshot& snapshot, const core::RequestMeta& meta);
  int PickSession(const PeerSnapshot& snapshot, const core::RequestMeta& meta,
                  std::string_view session);
  void UnbindLocked(const std::string& session, StickyEvent::Reason reason,
                    std::vector<StickyEvent>* events);
  void RememberLostLocked(const std::string& session, const std::string& peer_id);
  void Fire(const std::vector<StickyEvent>& events) const;
  void SetOutcome(StickyOutcome outcome) const;

  const std::string header_;
  const int occupancy_;
  Listener listener_;
  std::atomic<std::uint64_t> cursor_{0};  // keyless round-robin

  // Lookups by string_view: a bound pick builds no std::string.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  mutable std::mutex mu_;
  std::unordered_map<std::string, Binding, Hash, std::equal_to<>> sessions_;
  std::unordered_map<std::string, std::vector<std::string>> by_peer_;  // peer id -> sessions
  std::unordered_map<std::string, std::string> lost_;                  // session -> peer id it lost
  std::deque<std::string> lost_order_;
  std::string last_picked_;  // rotation cursor (a peer id)
};

}  // namespace omnirelay::peers
