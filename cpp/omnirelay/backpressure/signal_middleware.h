#pragma once
// BackpressureSignalMiddleware: the inbound side of docs/backpressure.md.
// It runs first in the inbound chain, so it also sees the rate limiter's and
// the queues' refusals:
//  - a successful answer of a node under backpressure carries
//    `rpc-backpressure: node=<id>` (gRPC initial metadata / HTTP header), so
//    upstreams learn before they are refused;
//  - a RESOURCE_EXHAUSTED answer while the node throttles always carries a
//    retry-after hint (added when the refusal has none) and is counted in
//    omnirelay.backpressure.throttled.
// Thread-safe (reads the hub's atomics).
#include <memory>

#include "omnirelay/backpressure/hub.h"
#include "omnirelay/dispatcher/middleware.h"

namespace omnirelay::backpressure {

class BackpressureSignalMiddleware final : public dispatcher::Middleware {
 public:
  BackpressureSignalMiddleware(std::shared_ptr<BackpressureHub> hub, core::Duration retry_after)
      : hub_(std::move(hub)), retry_after_(retry_after) {}
  std::string_view name() const override { return "backpressure"; }
  void HandleUnary(const dispatcher::CallInfo& info, dispatcher::Request request,
                   dispatcher::UnaryCallback done, const dispatcher::UnaryHandler& next) override;
  void StreamEnd(const dispatcher::CallInfo& info, const core::RequestMeta& meta,
                 const absl::Status& status) override;

 private:
  std::shared_ptr<BackpressureHub> hub_;
  const core::Duration retry_after_;
};

}  // namespace omnirelay::backpressure
