#include "omnirelay/dispatcher/dispatcher.h"

#include <algorithm>
#include <thread>

namespace omnirelay::dispatcher {

std::string_view ProcedureKindName(ProcedureKind kind) {
  switch (kind) {
    case ProcedureKind::kUnary:
      return "unary";
    case ProcedureKind::kOneway:
      return "oneway";
    case ProcedureKind::kServerStream:
      return "server-stream";
    case ProcedureKind::kClientStream:
      return "client-stream";
    case ProcedureKind::kDuplex:
      return "duplex";
  }
  return "unary";
}

std::optional<ProcedureKind> ParseProcedureKind(std::string_view name) {
  for (auto kind : {ProcedureKind::kUnary, ProcedureKind::kOneway, ProcedureKind::kServerStream,
                    ProcedureKind::kClientStream, ProcedureKind::kDuplex}) {
    if (ProcedureKindName(kind) == name) return kind;
  }
  return std::nullopt;
}

UnaryHandler WrapUnary(const MiddlewareChain& chain, CallInfo info, UnaryHandler handler) {
  UnaryHandler next = std::move(handler);
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    next = [middleware = *it, info, inner = std::move(next)](Request request, UnaryCallback done) {
      middleware->HandleUnary(info, std::move(request), std::move(done), inner);
    };
  }
  return next;
}

absl::Status StartStream(const MiddlewareChain& chain, const CallInfo& info,
                         core::RequestMeta& meta) {
  for (size_t i = 0; i < chain.size(); ++i) {
    absl::Status status = chain[i]->StreamStart(info, meta);
    if (!status.ok()) {
      for (size_t j = i; j-- > 0;) chain[j]->StreamEnd(info, meta, status);
      return status;
    }
  }
  return absl::OkStatus();
}

void EndStream(const MiddlewareChain& chain, const CallInfo& info, const core::RequestMeta& meta,
               const absl::Status& status) {
  for (size_t j = chain.size(); j-- > 0;) chain[j]->StreamEnd(info, meta, status);
}

Dispatcher::Dispatcher(std::string service) : service_(std::move(service)) {}

std::string Dispatcher::Key(std::string_view service, std::string_view name) {
  std::string key(service);
  key += '/';
  key += name;
  return key;
}

absl::Status Dispatcher::Register(Procedure procedure) {
  if (started_) return absl::FailedPreconditionError("dispatcher already started");
  if (procedure.service.empty()) procedure.service = service_;
  if (procedure.name.empty()) return absl::InvalidArgumentError("procedure name is empty");
  for (const auto& existing : procedures_) {
    if (existing.service != procedure.service) continue;
    std::vector<std::string> names = existing.aliases;
    names.push_back(existing.name);
    std::vector<std::string> wanted = procedure.aliases;
    wanted.push_back(procedure.name);
    for (const auto& a : names) {
      if (std::find(wanted.begin(), wanted.end(), a) != wanted.end()) {
        return absl::AlreadyExistsError("procedure '" + Key(procedure.service, a) +
                                        "' is already registered");
      }
    }
  }
  procedures_.push_back(std::move(procedure));
  return absl::OkStatus();
}

absl::Status Dispatcher::AddRoute(Route route) {
  if (started_) return absl::FailedPreconditionError("dispatcher already started");
  if (!route.prefix.empty() && route.prefix.front() == '/') route.prefix.erase(0, 1);
  routes_.push_back(std::move(route));
  return absl::OkStatus();
}

absl::Status Dispatcher::AddOutbound(std::string name, std::shared_ptr<Outbound> outbound,
                                     std::optional<MiddlewareChain> chain) {
  if (started_) return absl::FailedPreconditionError("dispatcher already started");
  if (chain) outbound_chains_[name] = std::move(*chain);
  if (!outbounds_.emplace(name, std::move(outbound)).second) {
    return absl::AlreadyExistsError("outbound '" + name + "' is already registered");
  }
  return absl::OkStatus();
}

std::shared_ptr<BoundProcedure> Dispatcher::Bind(Procedure procedure) const {
  auto bound = std::make_shared<BoundProcedure>();
  bound->info = CallInfo{.kind = procedure.kind, .outbound = false};
  if (procedure.unary) bound->unary = WrapUnary(inbound_chain_, bound->info, procedure.unary);
  bound->procedure = std::move(procedure);
  return bound;
}

namespace {

// Copies server-side stream messages into an outbound stream and back. Used
// by forwarding routes of streaming kinds: a second thread pumps the request
// direction so a duplex peer can talk in any order.
absl::Status Pump(OutboundStream& remote, ClientStream* in, ServerStream& out,
                  std::optional<std::string> single_request) {
  std::thread writer;
  if (single_request) {
    remote.Write(std::move(*single_request));
    remote.WritesDone();
  } else if (in != nullptr) {
    writer = std::thread([&remote, in] {
      while (auto message = in->Read()) {
        if (!remote.Write(std::move(*message))) break;
      }
      remote.WritesDone();
    });
  }
  bool client_gone = false;
  while (auto message = remote.Read()) {
    if (!out.Write(std::move(*message))) {
      client_gone = true;
      remote.Cancel();
      break;
    }
  }
  if (client_gone) {
    while (remote.Read()) {
    }
  }
  absl::Status status = remote.Finish();
  if (writer.joinable()) writer.join();
  return status;
}

// Collects a single response (client-stream) from the remote.
class CollectOne final : public ServerStream {
 public:
  bool Write(std::string message) override {
    body = std::move(message);
    return true;
  }
  std::string body;
};

}  // namespace

absl::Status Dispatcher::Start() {
  if (started_) return absl::OkStatus();
  for (auto& [name, outbound] : outbounds_) {
    if (auto status = outbound->Start(); !status.ok()) return status;
    std::shared_ptr<Outbound> target = outbound;
    auto chain = outbound_chains_.find(name);
    outbound_handlers_[name] =
        WrapUnary(chain != outbound_chains_.end() ? chain->second : outbound_chain_,
                  CallInfo{.kind = ProcedureKind::kUnary, .outbound = true},
                  [target](Request request, UnaryCallback done) {
                    target->CallUnary(std::move(request), std::move(done));
                  });
  }
  for (const auto& procedure : procedures_) {
    auto bound = Bind(procedure);
    bound_[Key(procedure.service, procedure.name)] = bound;
    for (const auto& alias : procedure.aliases) bound_[Key(procedure.service, alias)] = bound;
  }
  std::stable_sort(routes_.begin(), routes_.end(), [](const Route& a, const Route& b) {
    return a.prefix.size() > b.prefix.size();
  });
  for (const auto& route : routes_) {
    auto it = outbounds_.find(route.outbound);
    if (it == outbounds_.end()) {
      return absl::InvalidArgumentError("route '" + route.prefix + "' names unknown outbound '" +
                                        route.outbound + "'");
    }
    std::shared_ptr<Outbound> target = it->second;
    Procedure forward;
    forward.service = "*";
    forward.name = route.prefix + "*";
    forward.kind = route.kind;
    forward.encoding = "raw";
    forward.forward_outbound = route.outbound;
    switch (route.kind) {
      case ProcedureKind::kUnary:
      case ProcedureKind::kOneway: {
        UnaryHandler call = outbound_handlers_[route.outbound];
        forward.unary = [call](Request request, UnaryCallback done) {
          call(std::move(request), std::move(done));
        };
        break;
      }
      case ProcedureKind::kServerStream:
        forward.server_stream = [target](const Request& request, ServerStream& out) {
          auto remote = target->OpenStream(request.meta);
          if (!remote.ok()) return remote.status();
          return Pump(**remote, nullptr, out, request.body);
        };
        break;
      case ProcedureKind::kClientStream:
        forward.client_stream = [target](const core::RequestMeta& meta,
                                         ClientStream& in) -> absl::StatusOr<Response> {
          auto remote = target->OpenStream(meta);
          if (!remote.ok()) return remote.status();
          CollectOne out;
          absl::Status status = Pump(**remote, &in, out, std::nullopt);
          if (!status.ok()) return status;
          return Response{.headers = {}, .body = std::move(out.body)};
        };
        break;
      case ProcedureKind::kDuplex:
        forward.duplex = [target](const core::RequestMeta& meta, ClientStream& in,
                                  ServerStream& out) {
          auto remote = target->OpenStream(meta);
          if (!remote.ok()) return remote.status();
          return Pump(**remote, &in, out, std::nullopt);
        };
        break;
    }
    bound_routes_.emplace_back(route, Bind(std::move(forward)));
  }
  started_ = true;
  return absl::OkStatus();
}

void Dispatcher::Stop() {
  for (auto& [name, outbound] : outbounds_) outbound->Stop();
}

const BoundProcedure* Dispatcher::Resolve(std::string_view service, std::string_view name) const {
  std::string key = Key(service.empty() ? std::string_view(service_) : service, name);
  if (auto it = bound_.find(key); it != bound_.end()) return it->second.get();
  for (const auto& [route, bound] : bound_routes_) {
    if (key.compare(0, route.prefix.size(), route.prefix) == 0) return bound.get();
  }
  return nullptr;
}

bool Dispatcher::BeginCall() {
  in_flight_.fetch_add(1, std::memory_order_acq_rel);
  if (draining_.load(std::memory_order_acquire)) {
    EndCall();
    return false;
  }
  return true;
}

void Dispatcher::EndCall() {
  if (in_flight_.fetch_sub(1, std::memory_order_acq_rel) == 1 && draining_.load()) {
    std::lock_guard<std::mutex> lock(idle_mu_);
    idle_cv_.notify_all();
  }
}

bool Dispatcher::WaitIdle(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(idle_mu_);
  return idle_cv_.wait_for(lock, timeout, [this] { return in_flight_.load() == 0; });
}

void Dispatcher::InvokeUnary(const BoundProcedure& bound, Request request,
                             UnaryCallback done) const {
  bound.unary(std::move(request), std::move(done));
}

absl::Status Dispatcher::InvokeServerStream(const BoundProcedure& bound, Request request,
                                            ServerStream& out) const {
  absl::Status status = StartStream(inbound_chain_, bound.info, request.meta);
  if (!status.ok()) return status;
  status = bound.procedure.server_stream(request, out);
  EndStream(inbound_chain_, bound.info, request.meta, status);
  return status;
}

absl::StatusOr<Response> Dispatcher::InvokeClientStream(const BoundProcedure& bound,
                                                        core::RequestMeta meta,
                                                        ClientStream& in) const {
  absl::Status status = StartStream(inbound_chain_, bound.info, meta);
  if (!status.ok()) return status;
  auto result = bound.procedure.client_stream(meta, in);
  EndStream(inbound_chain_, bound.info, meta, result.status());
  return result;
}

absl::Status Dispatcher::InvokeDuplex(const BoundProcedure& bound, core::RequestMeta meta,
                                      ClientStream& in, ServerStream& out) const {
  absl::Status status = StartStream(inbound_chain_, bound.info, meta);
  if (!status.ok()) return status;
  status = bound.procedure.duplex(meta, in, out);
  EndStream(inbound_chain_, bound.info, meta, status);
  return status;
}

void Dispatcher::CallOutbound(const std::string& outbound, Request request,
                              UnaryCallback done) const {
  auto it = outbound_handlers_.find(outbound);
  if (it == outbound_handlers_.end()) {
    done(absl::NotFoundError("unknown outbound '" + outbound + "'"));
    return;
  }
  it->second(std::move(request), std::move(done));
}

std::shared_ptr<Outbound> Dispatcher::outbound(const std::string& name) const {
  auto it = outbounds_.find(name);
  return it == outbounds_.end() ? nullptr : it->second;
}

nlohmann::json Dispatcher::Introspect() const {
  nlohmann::json procedures = nlohmann::json::array();
  for (const auto& p : procedures_) {
    procedures.push_back({{"service", p.service},
                          {"name", p.name},
                          {"kind", ProcedureKindName(p.kind)},
                          {"aliases", p.aliases},
                          {"encoding", p.encoding}});
  }
  nlohmann::json routes = nlohmann::json::array();
  for (const auto& r : routes_) {
    routes.push_back(
        {{"prefix", r.prefix}, {"outbound", r.outbound}, {"kind", ProcedureKindName(r.kind)}});
  }
  nlohmann::json outbounds = nlohmann::json::object();
  for (const auto& [name, outbound] : outbounds_) {
    outbounds[name] = outbound->Snapshot();
    if (auto chain = outbound_chains_.find(name); chain != outbound_chains_.end()) {
      nlohmann::json names = nlohmann::json::array();
      for (const auto& m : chain->second) names.push_back(std::string(m->name()));
      outbounds[name]["middleware"] = names;
    }
  }
  nlohmann::json inbound_mw = nlohmann::json::array();
  for (const auto& m : inbound_chain_) inbound_mw.push_back(std::string(m->name()));
  nlohmann::json outbound_mw = nlohmann::json::array();
  for (const auto& m : outbound_chain_) outbound_mw.push_back(std::string(m->name()));
  return {{"service", service_},
          {"status", draining() ? "draining" : (started_ ? "running" : "created")},
          {"inFlight", in_flight()},
          {"procedures", procedures},
          {"routes", routes},
          {"outbounds", outbounds},
          {"middleware", {{"inbound", inbound_mw}, {"outbound", outbound_mw}}}};
}

}  // namespace omnirelay::dispatcher
