#include "omnirelay/mesh/mesh_metrics.h"

namespace omnirelay::mesh {
namespace {

using core::MetricKind;

const core::MetricDescriptor kMembers{"omnirelay.mesh.members", MetricKind::kGauge, "{member}",
                                      "Members this node sees, by state"};
const core::MetricDescriptor kIncarnation{"omnirelay.mesh.incarnation", MetricKind::kGauge, "1",
                                          "This node's incarnation number"};
const core::MetricDescriptor kProbesSent{"omnirelay.mesh.probes.sent", MetricKind::kCounter,
                                         "{probe}", "Direct probes sent"};
const core::MetricDescriptor kProbesFailed{"omnirelay.mesh.probes.failed", MetricKind::kCounter,
                                           "{probe}",
                                           "Probes without any ack (direct or indirect)"};
const core::MetricDescriptor kProbesIndirect{"omnirelay.mesh.probes.indirect", MetricKind::kCounter,
                                             "{request}",
                                             "Indirect probe requests sent (ping-req)"};
const core::MetricDescriptor kSuspicionsRaised{"omnirelay.mesh.suspicions.raised",
                                               MetricKind::kCounter, "{suspicion}",
                                               "Suspicions this node raised"};
const core::MetricDescriptor kSuspicionsRefuted{"omnirelay.mesh.suspicions.refuted",
                                                MetricKind::kCounter, "{suspicion}",
                                                "Suspicions of this node it refuted"};
const core::MetricDescriptor kDeaths{"omnirelay.mesh.deaths.declared", MetricKind::kCounter,
                                     "{member}", "Suspicions of this node that expired into death"};
const core::MetricDescriptor kMessages{"omnirelay.mesh.gossip.messages", MetricKind::kCounter,
                                       "{message}", "Gossip messages by direction"};
const core::MetricDescriptor kBytes{"omnirelay.mesh.gossip.bytes", MetricKind::kCounter, "By",
                                    "Encoded gossip bytes by direction"};
const core::MetricDescriptor kPushPull{"omnirelay.mesh.push_pull.syncs", MetricKind::kCounter,
                                       "{sync}", "Full-state push-pull exchanges"};
const core::MetricDescriptor kDropped{"omnirelay.mesh.messages.dropped", MetricKind::kCounter,
                                      "{message}", "Gossip messages dropped, by reason"};
const core::MetricDescriptor kConflicts{"omnirelay.mesh.conflicts", MetricKind::kCounter,
                                        "{message}", "Node id claimed from another address"};

}  // namespace

const std::vector<core::MetricDescriptor>& MeshMetricDescriptors() {
  static const std::vector<core::MetricDescriptor> all = {
      kMembers,          kIncarnation,       kProbesSent, kProbesFailed, kProbesIndirect,
      kSuspicionsRaised, kSuspicionsRefuted, kDeaths,     kMessages,     kBytes,
      kPushPull,         kDropped,           kConflicts};
  return all;
}

std::vector<core::ObservableHandle> RegisterMeshMetrics(core::MetricsRegistry& registry,
                                                        std::shared_ptr<Membership> membership) {
  std::vector<core::ObservableHandle> handles;
  std::weak_ptr<Membership> weak = membership;
  auto counter = [&](const core::MetricDescriptor& d, core::Tags tags,
                     std::atomic<std::uint64_t> Stats::*field) {
    handles.push_back(registry.RegisterObservable(d, tags, [weak, field] {
      auto m = weak.lock();
      return m ? static_cast<double>((m->stats().*field).load(std::memory_order_relaxed)) : 0.0;
    }));
  };
  for (auto state :
       {MemberState::kAlive, MemberState::kSuspect, MemberState::kDead, MemberState::kLeft}) {
    handles.push_back(registry.RegisterObservable(
        kMembers, {{"state", std::string(MemberStateName(state))}}, [weak, state] {
          auto m = weak.lock();
          if (!m) return 0.0;
          double n = 0;
          for (const auto& member : m->Members()) n += member.record.state == state ? 1 : 0;
          return n;
        }));
  }
  handles.push_back(registry.RegisterObservable(kIncarnation, {}, [weak] {
    auto m = weak.lock();
    return m ? static_cast<double>(m->incarnation()) : 0.0;
  }));
  counter(kProbesSent, {}, &Stats::probes_sent);
  counter(kProbesFailed, {}, &Stats::probes_failed);
  counter(kProbesIndirect, {}, &Stats::indirect_probes);
  counter(kSuspicionsRaised, {}, &Stats::suspicions_raised);
  counter(kSuspicionsRefuted, {}, &Stats::suspicions_refuted);
  counter(kDeaths, {}, &Stats::deaths_declared);
  counter(kMessages, {{"direction", "sent"}}, &Stats::messages_sent);
  counter(kMessages, {{"direction", "received"}}, &Stats::messages_received);
  counter(kBytes, {{"direction", "sent"}}, &Stats::bytes_sent);
  counter(kBytes, {{"direction", "received"}}, &Stats::bytes_received);
  counter(kPushPull, {}, &Stats::push_pull_syncs);
  counter(kDropped, {{"reason", "malformed"}}, &Stats::dropped_malformed);
  counter(kDropped, {{"reason", "cluster"}}, &Stats::dropped_cluster);
  counter(kDropped, {{"reason", "misdirected"}}, &Stats::dropped_misdirected);
  counter(kConflicts, {}, &Stats::conflicts);
  return handles;
}

}  // namespace omnirelay::mesh
