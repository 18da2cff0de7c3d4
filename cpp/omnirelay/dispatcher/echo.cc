#include "omnirelay/dispatcher/echo.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "omnirelay/echo/v1/echo.pb.h"

namespace omnirelay::dispatcher {
namespace {

// Admission for the per-instance cap. Returns false (and counts a rejection)
// when the cap is reached.
bool Enter(EchoStats& stats, int cap) {
  int64_t now = stats.in_flight.fetch_add(1) + 1;
  if (cap > 0 && now > cap) {
    stats.in_flight.fetch_sub(1);
    stats.rejected.fetch_add(1);
    return false;
  }
  int64_t peak = stats.peak_in_flight.load();
  while (now > peak && !stats.peak_in_flight.compare_exchange_weak(peak, now)) {
  }
  stats.calls.fetch_add(1);
  return true;
}

absl::Status Busy(const EchoOptions& options) {
  return core::MakeStatus(absl::StatusCode::kResourceExhausted,
                          "echo instance '" + options.instance + "' is at its concurrency cap",
                          "echo-busy");
}

// The journal's descriptor, closed with the last procedure holding it.
struct Journal {
  int fd = -1;
  ~Journal() {
    if (fd >= 0) ::close(fd);
  }
  void Append(const std::string& body) const {
    std::string line = body + "\n";
    // One write on O_APPEND: lines of concurrent calls never interleave.
    // The journal is a test aid: a short or failed write is not the call's
    // failure.
    (void)!::write(fd, line.data(), line.size());
  }
};

}  // namespace

nlohmann::json EchoStats::ToJson() const {
  return {{"calls", calls.load()},
          {"rejected", rejected.load()},
          {"inFlight", in_flight.load()},
          {"peakInFlight", peak_in_flight.load()},
          {"oneway", oneway.load()}};
}

absl::StatusOr<std::shared_ptr<EchoStats>> RegisterEchoProcedures(Dispatcher& dispatcher,
                                                                  EchoOptions options) {
  auto stats = std::make_shared<EchoStats>();
  auto clock = core::SystemClock::Shared();
  std::shared_ptr<const Journal> journal;
  if (!options.journal.empty()) {
    auto opened = std::make_shared<Journal>();
    opened->fd = ::open(options.journal.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (opened->fd < 0) {
      return absl::InvalidArgumentError("echo journal '" + options.journal +
                                        "': " + std::strerror(errno));
    }
    journal = std::move(opened);
  }

  Procedure unary;
  unary.service = kEchoService;
  unary.name = "Echo";
  unary.kind = ProcedureKind::kUnary;
  unary.encoding = "proto";
  unary.unary = [stats, options, clock, journal](Request request, UnaryCallback done) {
    if (!Enter(*stats, options.max_concurrency)) {
      done(Busy(options));
      return;
    }
    if (journal) journal->Append(request.body);
    Response response;
    response.headers.Set("x-omnirelay-instance", options.instance);
    // Who the principal middleware says the caller is (docs/security.md):
    // lets clients and tests see the identity a node bound.
    if (auto principal = request.meta.headers.Get("rpc.principal")) {
      response.headers.Set("x-omnirelay-principal", std::string(*principal));
    }
    response.body = std::move(request.body);
    if (options.latency.count() <= 0) {
      stats->in_flight.fetch_sub(1);
      done(std::move(response));
      return;
    }
    auto shared =
        std::make_shared<std::pair<Response, UnaryCallback>>(std::move(response), std::move(done));
    clock->ScheduleAfter(options.latency, [stats, shared] {
      stats->in_flight.fetch_sub(1);
      shared->second(std::move(shared->first));
    });
  };
  // The same unary echo under every extra name (one procedure each: aliases
  // stay within a service, these cross services).
  for (const std::string& full_name : options.procedures) {
    std::string_view name = full_name;
    if (name.starts_with("/")) name.remove_prefix(1);
    const auto slash = name.find('/');
    if (slash == std::string_view::npos) {
      return absl::InvalidArgumentError("echo procedure '" + full_name + "' is not service/Method");
    }
    Procedure extra = unary;
    extra.service = std::string(name.substr(0, slash));
    extra.name = std::string(name.substr(slash + 1));
    if (auto s = dispatcher.Register(std::move(extra)); !s.ok()) return s;
  }
  if (auto s = dispatcher.Register(std::move(unary)); !s.ok()) return s;

  Procedure stream;
  stream.service = kEchoService;
  stream.name = "EchoStream";
  stream.kind = ProcedureKind::kServerStream;
  stream.encoding = "proto";
  stream.server_stream = [stats, options](const Request& request, ServerStream& out) {
    if (!Enter(*stats, options.max_concurrency)) return Busy(options);
    omnirelay::echo::v1::EchoRequest parsed;
    absl::Status status;
    if (!parsed.ParseFromString(request.body)) {
      status = absl::InvalidArgumentError("EchoStream: request is not an EchoRequest");
    } else {
      int count = parsed.count() > 0 ? parsed.count() : 1;
      for (int i = 0; i < count; ++i) {
        if (options.latency.count() > 0) std::this_thread::sleep_for(options.latency);
        omnirelay::echo::v1::EchoResponse reply;
        reply.set_payload(parsed.payload());
        reply.set_instance(options.instance);
        reply.set_index(i);
        if (!out.Write(reply.SerializeAsString())) {
          status = absl::CancelledError("client went away");
          break;
        }
      }
    }
    stats->in_flight.fetch_sub(1);
    return status;
  };
  if (auto s = dispatcher.Register(std::move(stream)); !s.ok()) return s;

  Procedure collect;
  collect.service = kEchoService;
  collect.name = "EchoCollect";
  collect.kind = ProcedureKind::kClientStream;
  collect.encoding = "raw";
  collect.client_stream = [stats, options](const core::RequestMeta&,
                                           ClientStream& in) -> absl::StatusOr<Response> {
    if (!Enter(*stats, options.max_concurrency)) return Busy(options);
    Response response;
    while (auto message = in.Read()) response.body += *message;
    stats->in_flight.fetch_sub(1);
    return response;
  };
  if (auto s = dispatcher.Register(std::move(collect)); !s.ok()) return s;

  Procedure duplex;
  duplex.service = kEchoService;
  duplex.name = "EchoDuplex";
  duplex.kind = ProcedureKind::kDuplex;
  duplex.encoding = "raw";
  duplex.duplex = [stats, options](const core::RequestMeta&, ClientStream& in, ServerStream& out) {
    if (!Enter(*stats, options.max_concurrency)) return Busy(options);
    absl::Status status;
    while (auto message = in.Read()) {
      if (!out.Write(std::move(*message))) {
        status = absl::CancelledError("client went away");
        break;
      }
    }
    stats->in_flight.fetch_sub(1);
    return status;
  };
  if (auto s = dispatcher.Register(std::move(duplex)); !s.ok()) return s;

  Procedure notify;
  notify.service = kEchoService;
  notify.name = "Notify";
  notify.kind = ProcedureKind::kOneway;
  notify.encoding = "raw";
  notify.unary = [stats](Request, UnaryCallback done) {
    stats->oneway.fetch_add(1);
    done(Response{});
  };
  if (auto s = dispatcher.Register(std::move(notify)); !s.ok()) return s;
  return stats;
}

}  // namespace omnirelay::dispatcher
