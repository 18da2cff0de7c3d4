#include "omnirelay/backpressure/signal_middleware.h"

#include "omnirelay/core/retry_after.h"

namespace omnirelay::backpressure {

void BackpressureSignalMiddleware::HandleUnary(const dispatcher::CallInfo& info,
                                               dispatcher::Request request,
                                               dispatcher::UnaryCallback done,
                                               const dispatcher::UnaryHandler& next) {
  next(std::move(request),
       [this, done = std::move(done)](absl::StatusOr<dispatcher::Response> result) mutable {
         if (result.ok()) {
           if (hub_->local()) result->headers.Set(kResponseHeader, "node=" + hub_->node_id());
         } else if (result.status().code() == absl::StatusCode::kResourceExhausted &&
                    (hub_->throttling() || hub_->local())) {
           hub_->CountThrottled();
           absl::Status refused = result.status();
           if (!core::RetryAfter(refused)) {
             refused = core::WithRetryAfter(
                 std::move(refused),
                 std::chrono::duration_cast<std::chrono::milliseconds>(retry_after_));
           }
           // Who is saturated: this node itself, or members this node throttles for.
           if (!core::Backpressure(refused)) {
             refused = core::WithBackpressure(
                 std::move(refused), (hub_->local() ? "node=" : "upstream=") + hub_->node_id());
           }
           result = std::move(refused);
         }
         done(std::move(result));
       });
}

void BackpressureSignalMiddleware::StreamEnd(const dispatcher::CallInfo& info,
                                             const core::RequestMeta& meta,
                                             const absl::Status& status) {
  if (status.code() == absl::StatusCode::kResourceExhausted && hub_->throttling()) {
    hub_->CountThrottled();
  }
}

}  // namespace omnirelay::backpressure
