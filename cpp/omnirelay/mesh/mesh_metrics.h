#pragma once
// The mesh's metric descriptors (dotted names in the seeds' style) and the
// observables a node registers for its Membership: the hot protocol paths
// only bump Stats atomics; the registry reads them at scrape time.
//
//   omnirelay.mesh.members            gauge     {state=alive|suspect|dead|left}
//   omnirelay.mesh.incarnation        gauge     this node's incarnation
//   omnirelay.mesh.probes.sent        counter
//   omnirelay.mesh.probes.failed      counter   no ack, direct nor indirect
//   omnirelay.mesh.probes.indirect    counter   ping-req messages sent
//   omnirelay.mesh.suspicions.raised  counter   suspicions this node raised
//   omnirelay.mesh.suspicions.refuted counter   suspicions of itself this node refuted
//   omnirelay.mesh.deaths.declared    counter   suspicions of ours that expired
//   omnirelay.mesh.gossip.messages    counter   {direction=sent|received}
//   omnirelay.mesh.gossip.bytes       counter   {direction=sent|received}, encoded bytes
//   omnirelay.mesh.push_pull.syncs    counter
//   omnirelay.mesh.messages.dropped   counter   {reason=malformed|cluster|misdirected}
//   omnirelay.mesh.conflicts          counter   node id claimed from another address
#include <memory>
#include <vector>

#include "omnirelay/core/metrics.h"
#include "omnirelay/mesh/membership.h"

namespace omnirelay::mesh {

const std::vector<core::MetricDescriptor>& MeshMetricDescriptors();

// Handles keep the observables registered; drop them before `membership`.
std::vector<core::ObservableHandle> RegisterMeshMetrics(core::MetricsRegistry& registry,
                                                        std::shared_ptr<Membership> membership);

}  // namespace omnirelay::mesh
