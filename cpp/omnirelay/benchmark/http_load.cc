// HTTP load loop: one Asio io_context on `threads` threads; every slot is a
// coroutine with its own keep-alive connection, reconnecting after errors.
// Requests are POSTs carrying OmniRelay's Rpc-* headers; the reply's
// `Rpc-Status` header (or, without it, the HTTP status) gives the outcome.
// Boost 1.74's awaitable.hpp uses std::exchange without including <utility>.
// clang-format off
#include <utility>
// clang-format on

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

#include "omnirelay/benchmark/load_state.h"
#include "omnirelay/core/address.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::benchmark {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;

struct Target {
  std::string host;
  std::string port;
  std::string path;
};

absl::StatusOr<Target> ParseTarget(const LoadOptions& options) {
  std::string url = options.url.empty() ? options.addresses.front() : options.url;
  auto parsed = core::ParseHostPort(url);  // the one address parser
  if (!parsed.ok())
    return absl::InvalidArgumentError("--url: " + std::string(parsed.status().message()));
  if (parsed->tls()) {
    return absl::InvalidArgumentError("--url: https is not supported by the HTTP load client");
  }
  Target target;
  target.host = parsed->host;
  target.port = std::to_string(parsed->port);
  target.path = parsed->path;
  return target;
}

class HttpSlots {
 public:
  HttpSlots(const LoadOptions& options, LoadState& state, Target target,
            tcp::resolver::results_type endpoints)
      : options_(options), state_(state), target_(std::move(target)), endpoints_(endpoints) {}

  asio::awaitable<void> RunSlot() {
    auto executor = co_await asio::this_coro::executor;
    std::optional<beast::tcp_stream> stream;
    beast::flat_buffer buffer;  // coroutine-local: lives in this slot's frame
    asio::steady_timer timer(executor);
    for (;;) {
      LoadState::Ticket ticket = state_.Next();
      if (ticket.stop) break;
      if (ticket.due > SteadyClock::now()) {
        timer.expires_at(ticket.due);
        beast::error_code ignored;
        co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
      }
      beast::error_code ec;
      if (!stream) {
        stream.emplace(executor);
        stream->expires_after(std::chrono::seconds(10));
        co_await stream->async_connect(endpoints_, asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
          state_.Record(ticket, absl::StatusCode::kUnavailable, "connect: " + ec.message());
          stream.reset();
          continue;
        }
        stream->socket().set_option(tcp::no_delay(true));
      }
      bhttp::request<bhttp::string_body> request(bhttp::verb::post, target_.path, 11);
      request.set(bhttp::field::host, target_.host);
      request.set("Rpc-Caller", options_.caller);
      request.set("Rpc-Procedure", options_.procedure);
      if (!options_.service.empty()) request.set("Rpc-Service", options_.service);
      if (!options_.encoding.empty()) {
        request.set("Rpc-Encoding", options_.encoding);
        request.set(bhttp::field::content_type, options_.encoding);
      }
      if (!options_.shard_key.empty()) request.set("Rpc-Shard-Key", options_.shard_key);
      if (!options_.routing_key.empty()) request.set("Rpc-Routing-Key", options_.routing_key);
      if (options_.ttl) {
        request.set(
            "Rpc-Ttl-Ms",
            std::to_string(
                std::chrono::duration_cast<std::chrono::milliseconds>(*options_.ttl).count()));
      }
      if (options_.deadline) request.set("Rpc-Deadline", core::FormatTimestamp(*options_.deadline));
      for (const auto& [name, value] : options_.headers) request.set(name, value);
      request.body() = options_.body;
      request.prepare_payload();

      // Client-side bound: the request's deadline if it has one, else a long
      // safety bound so a wedged server cannot stall the run forever.
      const auto deadline = state_.RequestDeadline();
      auto budget = std::chrono::milliseconds(60000);
      if (deadline) {
        budget = std::max(std::chrono::milliseconds(0),
                          std::chrono::duration_cast<std::chrono::milliseconds>(
                              *deadline - std::chrono::system_clock::now()));
      }
      if (budget.count() == 0) {
        state_.Record(ticket, absl::StatusCode::kDeadlineExceeded, "deadline passed before send");
        continue;
      }
      stream->expires_after(budget);
      co_await bhttp::async_write(*stream, request, asio::redirect_error(asio::use_awaitable, ec));
      bhttp::response<bhttp::string_body> response;
      if (!ec) {
        co_await bhttp::async_read(*stream, buffer, response,
                                   asio::redirect_error(asio::use_awaitable, ec));
      }
      if (ec) {
        const bool timed_out = ec == beast::error::timeout;
        state_.Record(
            ticket,
            timed_out ? absl::StatusCode::kDeadlineExceeded : absl::StatusCode::kUnavailable,
            ec.message());
        stream.reset();
        buffer.clear();
        continue;
      }
      absl::StatusCode code = core::FromHttpStatus(static_cast<int>(response.result_int()));
      if (auto it = response.find("Rpc-Status"); it != response.end()) {
        if (auto parsed = core::ParseStatusCodeName(std::string(it->value()))) code = *parsed;
      }
      std::string message;
      if (code != absl::StatusCode::kOk) {
        auto it = response.find("Rpc-Error-Message");
        message = it != response.end() ? std::string(it->value()) : response.body();
      }
      state_.Record(ticket, code, message);
      if (!response.keep_alive()) {
        stream.reset();
        buffer.clear();
      }
    }
    co_return;
  }

 private:
  const LoadOptions& options_;
  LoadState& state_;
  Target target_;
  tcp::resolver::results_type endpoints_;
};

}  // namespace

absl::StatusOr<LoadReport> RunHttpLoad(const LoadOptions& options, LoadState& state) {
  auto target = ParseTarget(options);
  if (!target.ok()) return target.status();
  asio::io_context io;
  tcp::resolver resolver(io);
  beast::error_code ec;
  auto endpoints = resolver.resolve(target->host, target->port, ec);
  if (ec) return absl::InvalidArgumentError("cannot resolve " + target->host + ": " + ec.message());
  HttpSlots slots(options, state, *target, endpoints);
  state.StartClock();
  for (int i = 0; i < options.concurrency; ++i) {
    asio::co_spawn(io, slots.RunSlot(), asio::detached);
  }
  std::atomic<bool> done{false};
  std::thread progress([&] { state.ReportProgressUntil(done); });
  const int threads = options.threads > 0 ? options.threads : 1;
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) workers.emplace_back([&io] { io.run(); });
  for (auto& worker : workers) worker.join();
  done = true;
  progress.join();
  return state.BuildReport();
}

}  // namespace omnirelay::benchmark
