#pragma once
// The dispatcher: the table of procedures a node serves, the routes it
// forwards, its outbounds, and the middleware chains around both.
//
// Lifecycle: configure (Register, AddRoute, AddOutbound, Use*Middleware),
// then Start() freezes the tables and builds every procedure's chain once;
// lookups afterwards are lock-free reads of immutable maps. Drain() makes
// BeginCall() refuse new calls (transports answer Unavailable / HTTP 503)
// while calls already admitted finish; WaitIdle() waits for them.
//
// Resolution of (service, name): a registered procedure or alias first, then
// the longest route prefix matching "service/name", else Unimplemented.
//
// Thread-safety: configuration methods before Start() from one thread; every
// const method and BeginCall/EndCall/Call* afterwards from any thread.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "omnirelay/dispatcher/middleware.h"
#include "omnirelay/dispatcher/outbound.h"
#include "omnirelay/dispatcher/procedure.h"

namespace omnirelay::dispatcher {

struct Route {
  std::string prefix;    // matched against "service/procedure" (no leading '/')
  std::string outbound;  // outbound name
  ProcedureKind kind = ProcedureKind::kUnary;  // how forwarded calls are pumped
};

// A resolved procedure with its middleware already applied.
struct BoundProcedure {
  Procedure procedure;
  CallInfo info;
  UnaryHandler unary;  // wrapped (unary/oneway kinds)
};

class Dispatcher {
 public:
  explicit Dispatcher(std::string service);
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  const std::string& service() const { return service_; }

  // AlreadyExists if the (service, name) or an alias is taken; an empty
  // service means the dispatcher's own.
  absl::Status Register(Procedure procedure);
  absl::Status AddRoute(Route route);
  // `chain` (optional) replaces the dispatcher-wide outbound chain for this
  // outbound (e.g. with its own retry policy).
  absl::Status AddOutbound(std::string name, std::shared_ptr<Outbound> outbound,
                           std::optional<MiddlewareChain> chain = std::nullopt);
  void UseInboundMiddleware(MiddlewareChain chain) { inbound_chain_ = std::move(chain); }
  void UseOutboundMiddleware(MiddlewareChain chain) { outbound_chain_ = std::move(chain); }

  // Builds the bound procedures (routes become forwarding procedures) and
  // starts the outbounds.
  absl::Status Start();
  void Stop();

  // nullptr -> Unimplemented.
  const BoundProcedure* Resolve(std::string_view service, std::string_view name) const;

  // Admission for the drain protocol. EndCall exactly once per admitted call.
  bool BeginCall();
  void EndCall();
  void Drain() { draining_.store(true); }
  bool draining() const { return draining_.load(); }
  // Waits until no admitted call is in flight; false on timeout.
  bool WaitIdle(std::chrono::milliseconds timeout);
  int64_t in_flight() const { return in_flight_.load(); }

  // Invocation with the procedure's inbound chain applied.
  void InvokeUnary(const BoundProcedure& bound, Request request, UnaryCallback done) const;
  absl::Status InvokeServerStream(const BoundProcedure& bound, Request request,
                                  ServerStream& out) const;
  absl::StatusOr<Response> InvokeClientStream(const BoundProcedure& bound, core::RequestMeta meta,
                                              ClientStream& in) const;
  absl::Status InvokeDuplex(const BoundProcedure& bound, core::RequestMeta meta, ClientStream& in,
                            ServerStream& out) const;

  // Calls through a named outbound with the outbound chain applied.
  void CallOutbound(const std::string& outbound, Request request, UnaryCallback done) const;
  std::shared_ptr<Outbound> outbound(const std::string& name) const;
  const std::map<std::string, std::shared_ptr<Outbound>>& outbounds() const { return outbounds_; }

  // {"service":..,"status":..,"procedures":[..],"routes":[..],"outbounds":{..},"middleware":{..}}
  nlohmann::json Introspect() const;

 private:
  static std::string Key(std::string_view service, std::string_view name);
  std::shared_ptr<BoundProcedure> Bind(Procedure procedure) const;

  const std::string service_;
  std::vector<Procedure> procedures_;
  std::vector<Route> routes_;  // sorted longest prefix first at Start()
  std::map<std::string, std::shared_ptr<Outbound>> outbounds_;
  std::map<std::string, std::shared_ptr<BoundProcedure>, std::less<>> bound_;
  std::vector<std::pair<Route, std::shared_ptr<BoundProcedure>>> bound_routes_;
  std::map<std::string, UnaryHandler> outbound_handlers_;
  std::map<std::string, MiddlewareChain> outbound_chains_;
  MiddlewareChain inbound_chain_;
  MiddlewareChain outbound_chain_;
  bool started_ = false;

  std::atomic<bool> draining_{false};
  std::atomic<int64_t> in_flight_{0};
  std::mutex idle_mu_;
  std::condition_variable idle_cv_;
};

}  // namespace omnirelay::dispatcher
