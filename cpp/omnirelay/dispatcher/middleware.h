#pragma once
// The middleware interface shared by inbound and outbound chains.
//
// A unary middleware sees the request, may change it, call `next` (or not),
// and may observe or replace the result on the way back by wrapping `done`.
// Streams get admission (StreamStart may reject the call before the handler
// runs) and completion (StreamEnd with the final status); per-message hooks
// are not needed by any middleware we ship.
//
// Chains are built once per procedure (Dispatcher::Start) and are immutable
// afterwards; middleware objects are shared by every call on every thread and
// must be thread-safe.
#include <memory>
#include <string_view>
#include <vector>

#include "omnirelay/dispatcher/procedure.h"

namespace omnirelay::dispatcher {

struct CallInfo {
  ProcedureKind kind = ProcedureKind::kUnary;
  bool outbound = false;  // which side of the node the chain runs on
};

class Middleware {
 public:
  virtual ~Middleware() = default;
  virtual std::string_view name() const = 0;
  virtual void HandleUnary(const CallInfo& info, Request request, UnaryCallback done,
                           const UnaryHandler& next) {
    next(std::move(request), std::move(done));
  }
  virtual absl::Status StreamStart(const CallInfo& info, core::RequestMeta& meta) {
    return absl::OkStatus();
  }
  virtual void StreamEnd(const CallInfo& info, const core::RequestMeta& meta,
                         const absl::Status& status) {}
};

using MiddlewareChain = std::vector<std::shared_ptr<Middleware>>;

// Wraps `handler` so that chain[0] runs first. The returned handler keeps the
// chain alive.
UnaryHandler WrapUnary(const MiddlewareChain& chain, CallInfo info, UnaryHandler handler);

// Runs StreamStart of each middleware in order; on the first rejection runs
// StreamEnd of the ones already started (in reverse) and returns it.
absl::Status StartStream(const MiddlewareChain& chain, const CallInfo& info,
                         core::RequestMeta& meta);
void EndStream(const MiddlewareChain& chain, const CallInfo& info, const core::RequestMeta& meta,
               const absl::Status& status);

}  // namespace omnirelay::dispatcher
