#include "omnirelay/backpressure/mesh_link.h"

namespace omnirelay::backpressure {

std::shared_ptr<MeshLink> MeshLink::Create(std::shared_ptr<BackpressureHub> hub,
                                           std::shared_ptr<core::Clock> clock, bool propagate) {
  std::shared_ptr<MeshLink> link(new MeshLink(std::move(hub), std::move(clock), propagate));
  link->hub_->AddListener([weak = std::weak_ptr<MeshLink>(link)](const HubState&) {
    if (auto strong = weak.lock()) strong->SchedulePublish();
  });
  return link;
}

void MeshLink::Attach(const std::shared_ptr<mesh::Membership>& membership) {
  {
    std::lock_guard lock(mu_);
    membership_ = membership;
  }
  membership->AddListener(
      [weak_hub = std::weak_ptr<BackpressureHub>(hub_)](const mesh::MemberEvent& e) {
        if (e.kind == mesh::MemberEvent::Kind::kHeartbeat) return;
        auto hub = weak_hub.lock();
        if (!hub) return;
        const auto state = e.member.state;
        if (state == mesh::MemberState::kDead || state == mesh::MemberState::kLeft ||
            e.kind == mesh::MemberEvent::Kind::kRemoved) {
          hub->Forget(e.member.id);
          return;
        }
        const auto it = e.member.meta.labels.find(kGossipLabel);
        hub->SetRemote(e.member.id, it != e.member.meta.labels.end() && it->second == "on");
      });
  Publish();
}

void MeshLink::SchedulePublish() {
  if (!propagate_) return;
  clock_->ScheduleAt(clock_->Now(), [weak = weak_from_this()] {
    if (auto strong = weak.lock()) strong->Publish();
  });
}

void MeshLink::Publish() {
  if (!propagate_) return;
  std::lock_guard lock(mu_);
  auto membership = membership_.lock();
  if (!membership) return;
  const bool on = hub_->local();  // the latest state, whichever timer runs last
  auto meta = membership->SelfRecord().meta;
  auto it = meta.labels.find(kGossipLabel);
  if (it == meta.labels.end() ? !on : it->second == (on ? "on" : "off")) return;
  meta.labels[kGossipLabel] = on ? "on" : "off";
  membership->UpdateMeta(std::move(meta));
  ++publications_;
}

std::uint64_t MeshLink::publications() const {
  std::lock_guard lock(mu_);
  return publications_;
}

}  // namespace omnirelay::backpressure
