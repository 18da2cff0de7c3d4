#pragma once
// Gateway mode of a node (issue 6): a gRPC listener that forwards every call,
// unary or streaming, byte for byte to an instance of the cluster its route
// names, chosen by method-name prefix (the longest matching prefix, else the
// default route).
//
// Per call:
//   1. route by method prefix; unmatched -> defaultRoute (an error code, or a
//      cluster reached round-robin);
//   2. admission (admission.h): a sticky route's header, then for
//      authorization `required` the session-id and the token
//      (auth::VerifyRequest) -> UNAUTHENTICATED "missing session-id" /
//      "missing or invalid token";
//   3. lease an instance from the cluster's transport::PeerPool (the peer
//      kit's `sticky` chooser: round-robin without a session key, sticky by
//      a header with occupancy; breaker, in-flight cap, omnirelay.peer.*
//      metrics) -> RESOURCE_EXHAUSTED "all instances are busy" /
//      "no available instances"; each attempt releases its lease with its
//      outcome and latency;
//   4. forward request metadata and messages; stream back the backend's
//      messages, trailing metadata and status unchanged. Client cancellation
//      cancels the backend call; the client's deadline is the backend's.
//   5. session transfer: while no response message has reached the client, a
//      transport failure of the instance (UNAVAILABLE from the channel or the
//      worker's "instance is shutting down", or no first response within
//      attemptTimeout) drops its binding and retries the buffered request on
//      another instance, up to maxAttempts; nothing left to try ->
//      UNAVAILABLE "backend service unavailable". Other statuses are the
//      application's and pass through without evicting anything. After the
//      first response message only the route's `transferStreams` methods
//      (server streams) are replayed: the live stream continues with the new
//      instance's messages; when no instance can take it, it ends
//      UNAVAILABLE "backend service unavailable". Any other call's transport
//      failure after its first response message drops the binding and reaches
//      the client as is.
//
// Registry clusters are refreshed every refreshInterval on one control
// thread; a failed poll keeps the last good list. Removed instances lose
// their bindings and their channels.
//
// Metrics (core::MetricsRegistry): omnirelay.gateway.requests{route,status},
// omnirelay.gateway.sessions{cluster} (bindings), omnirelay.gateway.session_transfers{cluster},
// omnirelay.gateway.stream_transfers{cluster},
// omnirelay.gateway.evictions{cluster,reason=transport_failure|left|ineligible},
// omnirelay.gateway.attempts{cluster,outcome}; and the peer kit's
// omnirelay.peer.*{rpc.service=<cluster>, rpc.peer=<instance>} per instance.
//
// Thread-safety: Start/Stop from one controlling thread; Introspect and
// address are thread-safe. Calls run on gRPC's callback threads.
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "omnirelay/config/config.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/status.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::gateway {

class Gateway {
 public:
  // Loads the JWT secret (when a route requires authorization) and builds the
  // clusters. INVALID_ARGUMENT / FAILED_PRECONDITION / INTERNAL from config or the secret file.
  // `tls` (the node's omniRelay.tls): the listener serves TLS (mTLS per its
  // client_auth) and clusters with `tls` dial their instances over TLS with
  // the same files as client identity; a `tls` cluster without it verifies
  // against the system store.
  static absl::StatusOr<std::unique_ptr<Gateway>> Create(
      config::GatewayConfig config, std::shared_ptr<core::MetricsRegistry> metrics = nullptr,
      std::optional<tls::TlsOptions> tls = std::nullopt);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Polls every registry cluster once, binds the listener and starts the
  // refresh thread. UNAVAILABLE if the address cannot be bound.
  absl::Status Start();
  // Stops accepting, cancels in-flight calls after `grace`, joins threads. Idempotent.
  void Stop(std::chrono::milliseconds grace = std::chrono::milliseconds(500));

  // Bound "host:port" (after Start).
  std::string address() const;
  // {"address","routes","clusters":{name:{"members","bindings"}},...}
  nlohmann::json Introspect() const;

  class Impl;

 private:
  explicit Gateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace omnirelay::gateway
