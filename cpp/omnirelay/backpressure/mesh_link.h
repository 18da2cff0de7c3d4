#pragma once
// MeshLink: carries a BackpressureHub's state through mesh membership.
//  - Publishes: when the node's local state changes, its gossip metadata label
//    kGossipLabel becomes "on"/"off" (Membership::UpdateMeta, incarnation + 1),
//    so every member learns it within gossip convergence.
//  - Follows: every member's label feeds BackpressureHub::SetRemote; members
//    that are dead, left or removed are forgotten (their pressure lifts).
// Publishing runs on a clock timer, never inside the hub's listener: the
// listener may hold a queue's lock, and UpdateMeta flushes gossip and calls
// membership listeners (one of which is ours, which takes the hub's lock).
// Thread-safe.
#include <memory>
#include <mutex>

#include "omnirelay/backpressure/hub.h"
#include "omnirelay/mesh/membership.h"

namespace omnirelay::backpressure {

class MeshLink : public std::enable_shared_from_this<MeshLink> {
 public:
  static std::shared_ptr<MeshLink> Create(std::shared_ptr<BackpressureHub> hub,
                                          std::shared_ptr<core::Clock> clock, bool propagate);
  // Before membership->Start(): adds the membership listener and publishes
  // the current state.
  void Attach(const std::shared_ptr<mesh::Membership>& membership);
  // Writes the hub's current local state into the gossip metadata if it differs.
  void Publish();
  std::uint64_t publications() const;

 private:
  MeshLink(std::shared_ptr<BackpressureHub> hub, std::shared_ptr<core::Clock> clock, bool propagate)
      : hub_(std::move(hub)), clock_(std::move(clock)), propagate_(propagate) {}
  void SchedulePublish();

  std::shared_ptr<BackpressureHub> hub_;
  std::shared_ptr<core::Clock> clock_;
  const bool propagate_;
  mutable std::mutex mu_;  // serialises publications
  std::weak_ptr<mesh::Membership> membership_;
  std::uint64_t publications_ = 0;
};

}  // namespace omnirelay::backpressure
