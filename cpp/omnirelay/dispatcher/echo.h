#pragma once
// The echo procedure set: the demo/test backend any node can enable
// (`omnirelay echo`, `echo:` in the config).
//
//   omnirelay.echo.v1.Echo/Echo        unary: returns the request bytes as-is
//                                      (an EchoRequest{payload} reads back as
//                                      EchoResponse{payload}); the instance
//                                      name travels in the `x-omnirelay-instance`
//                                      response header.
//   omnirelay.echo.v1.Echo/EchoStream  server-stream: parses EchoRequest and
//                                      sends `count` EchoResponse messages.
//   omnirelay.echo.v1.Echo/EchoCollect client-stream: concatenates payloads.
//   omnirelay.echo.v1.Echo/EchoDuplex  duplex: echoes every message.
//   omnirelay.echo.v1.Echo/Notify      oneway: counts and discards.
//
// `max_concurrency` > 0 caps calls in flight on this instance; one more is
// rejected with ResourceExhausted (the contention scenario's capped backends).
// `latency` delays each unary answer without holding a thread (clock timer).
// Thread-safety: EchoStats is atomic; the procedures are called concurrently.
#include <atomic>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "omnirelay/core/clock.h"
#include "omnirelay/dispatcher/dispatcher.h"

namespace omnirelay::dispatcher {

inline constexpr char kEchoService[] = "omnirelay.echo.v1.Echo";

struct EchoOptions {
  std::string instance = "echo";
  int max_concurrency = 0;  // 0 = unlimited
  core::Duration latency{0};
  std::vector<std::string> procedures;  // extra "service/Method" names of the unary echo
  // Execution journal (at-most-once drills, docs/leadership.md): when set,
  // every executed unary echo appends its request body and a newline to
  // this file with one write(2) on an O_APPEND descriptor, before it
  // answers, so the record survives a kill -9 right after.
  std::string journal;
};

struct EchoStats {
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> rejected{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> peak_in_flight{0};
  std::atomic<int64_t> oneway{0};
  nlohmann::json ToJson() const;
};

// Registers the set on `dispatcher`; the returned stats live as long as any
// procedure holds them. InvalidArgument when the journal cannot be opened.
absl::StatusOr<std::shared_ptr<EchoStats>> RegisterEchoProcedures(Dispatcher& dispatcher,
                                                                  EchoOptions options);

}  // namespace omnirelay::dispatcher
