#pragma once
// The RPC surface of a ResourceLease queue: procedures on the dispatcher.
//
//   <service>::enqueue | lease | complete | heartbeat | fail | drain | restore
//   <service>::stats | deadLetters | requeue            (operator procedures)
//
// where <service> is `resourcelease` for the namespace "default" and
// `resourcelease.<namespace>` otherwise. Messages are
// proto/omnirelay/resourcelease/v1/resourcelease.proto; each procedure takes
// and answers either encoding, with identical semantics because the JSON
// form is the message's proto3 JSON mapping (camelCase field names, 64-bit
// integers as strings or numbers on input and strings on output, `body` as
// base64):
//   * `rpc-encoding: json` or `proto`/`protobuf` picks explicitly;
//   * otherwise a body starting with '{' is JSON, any other non-empty body
//     protobuf, and an empty body is JSON over HTTP and protobuf over gRPC.
// The answer uses the request's encoding (and says so in `rpc-encoding`).
//
// The owner of a lease is the caller's principal: header `rpc.principal` as
// the principal middleware binds it, else `rpc-caller`, else "anonymous".
// `lease` long-polls without a thread: it waits up to min(waitMs,
// maxLeaseWait, time left before the call's deadline minus 50 ms).
// Thread-safety: handlers are called concurrently; the queue is thread-safe.
#include <memory>
#include <string>

#include "omnirelay/dispatcher/dispatcher.h"
#include "omnirelay/resourcelease/queue.h"

namespace omnirelay::resourcelease {

inline constexpr char kDefaultNamespace[] = "default";

// "default" -> "resourcelease", "billing" -> "resourcelease.billing".
std::string ServiceName(std::string_view ns);

struct ServiceOptions {
  core::Duration max_lease_wait = std::chrono::seconds(30);
  // Durable acknowledgements (replication with durableAck): when set,
  // enqueue, lease, complete, fail, drain, restore and requeue answer only
  // after await_durable(sequence, done) reports that the queue's mutations up
  // to `sequence` are durable; an error from it is the call's answer.
  std::function<void(std::uint64_t sequence, std::function<void(absl::Status)> done)>
      await_durable{};
  // Admission of enqueues (replication backlog bound): when set and it answers
  // an error, enqueue answers that error without touching the queue.
  std::function<absl::Status()> admit_enqueue{};
};

// The owner identity a call carries (see above).
std::string OwnerOf(const core::RequestMeta& meta);

absl::Status RegisterProcedures(dispatcher::Dispatcher& dispatcher, std::shared_ptr<Queue> queue,
                                ServiceOptions options, std::shared_ptr<core::Clock> clock);

// The procedure names registered per queue (for docs, tests, introspection).
const std::vector<std::string>& ProcedureNames();

}  // namespace omnirelay::resourcelease
