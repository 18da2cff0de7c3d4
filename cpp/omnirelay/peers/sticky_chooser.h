#pragma once
// The peer kit's sticky-with-occupancy chooser (issue 15): the instance
// selection of a session gateway cluster — the membership (static endpoints
// or a registry's latest list), round-robin picks, and the sticky session
// table with OCCUPANCY — an instance holds at most one session. It moved here
// from the gateway (its former `Balancer`) so the mesh has one place where
// instances are chosen; the gateway's grpc++ path and its frame-relay path
// (h2relay RouteHook) both pick through it. The answers the client sees for
// each outcome are the gateway contract's and live here too (StickyStatus).
//
// Sticky rules (issue 6, docs/session-gateway.md "Gateway mode"):
//   - a bound session always gets its instance while that instance is a member;
//   - a new session gets a FREE instance (bound to no session), chosen in
//     rotation order: the first free id after the last instance handed out, or,
//     for a session that lost its instance, the first free id after that
//     instance — so a transferred session lands on the next instance,
//     deterministically (ids are kept sorted);
//   - no free instance -> kBusy ("all instances are busy"); no member at all ->
//     kNoInstances ("no available instances"); and when the caller has already
//     seen instances fail in this call (`exclude` non-empty) or the session
//     lost its instance and nothing at all is left -> kUnavailable ("backend
//     service unavailable"), because then the backend, not capacity, is the
//     problem;
//   - a binding ends when its instance fails at the transport level
//     (ReportFailure) or leaves the membership (SetMembers; also when it comes
//     back at another address: that is another process). Application errors
//     never reach this class.
//
// Thread-safety: every method is thread-safe (one mutex, short critical
// sections, no I/O). Pure logic: no clock, no gRPC — the unit tests drive it
// with fake instances.
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "omnirelay/core/status.h"

namespace omnirelay::peers {

struct StickyMember {
  std::string id;       // instance id (the worker's pod_name; the address for static endpoints)
  std::string address;  // host:port
  // Process-unique number of this incarnation (id at this address), given by
  // SetMembers: a key for per-instance connections that never names a
  // different process (ids and addresses are reused across restarts).
  uint64_t serial = 0;
  bool operator==(const StickyMember&) const = default;
};

enum class StickyOutcome { kInstance, kBusy, kNoInstances, kUnavailable };

struct StickyPick {
  StickyOutcome outcome = StickyOutcome::kNoInstances;
  StickyMember member;
  bool new_binding = false;  // the session was bound by this pick
  bool transferred = false;  // ... and had lost an earlier instance (session transfer)
};

// The contract's answers (docs/session-gateway.md, "Sticky with occupancy").
inline constexpr char kAllInstancesBusy[] = "all instances are busy";
inline constexpr char kNoAvailableInstances[] = "no available instances";
inline constexpr char kBackendUnavailable[] = "backend service unavailable";

// The status a caller answers when `pick` is not kInstance:
// kBusy -> RESOURCE_EXHAUSTED "all instances are busy"; kNoInstances ->
// RESOURCE_EXHAUSTED "no available instances", or UNAVAILABLE "backend
// service unavailable" when this call already saw an instance fail
// (`failed_any`); kUnavailable -> UNAVAILABLE "backend service unavailable".
// OK for kInstance.
absl::Status StickyStatus(const StickyPick& pick, bool failed_any);

// What SetMembers changed, for logs, metrics and channel clean-up.
struct StickyMembershipChange {
  std::vector<StickyMember> added;
  std::vector<StickyMember> removed;  // left, or re-registered at another address
  std::vector<std::string> unbound;   // sessions whose instance was removed
};

class StickyChooser {
 public:
  // Sessions remembered after losing their instance (rotation start and the
  // kUnavailable answer); the oldest are forgotten first.
  static constexpr size_t kLostMemory = 4096;

  // Replaces the membership (any order; kept sorted by id). Members that are
  // new (or at a new address) get a fresh `serial`; kept ones keep theirs.
  StickyMembershipChange SetMembers(std::vector<StickyMember> members);

  // Sticky pick for `session`, never returning an id in `exclude`.
  StickyPick PickSticky(const std::string& session, const std::set<std::string>& exclude);
  // Round-robin over members not in `exclude` (occupancy is ignored); when
  // every member is excluded, the next one anyway (stateless retry).
  StickyPick PickRoundRobin(const std::set<std::string>& exclude);

  // The instance `id` failed at the transport level: drops its binding.
  // Returns the session that was bound to it ("" if none).
  std::string ReportFailure(const std::string& id);

  std::vector<StickyMember> members() const;
  std::map<std::string, std::string> bindings() const;  // session -> instance id
  size_t binding_count() const;

 private:
  void UnbindLocked(const std::string& session, const std::string& id);
  void RememberLostLocked(const std::string& session, const std::string& id);

  mutable std::mutex mu_;
  std::vector<StickyMember> members_;  // sorted by id
  std::map<std::string, std::string> session_to_id_;
  std::map<std::string, std::string> id_to_session_;
  std::map<std::string, std::string> lost_;  // session -> id it lost
  std::deque<std::string> lost_order_;
  std::string last_picked_;  // rotation cursor (an id)
  uint64_t round_robin_ = 0;
};

}  // namespace omnirelay::peers
