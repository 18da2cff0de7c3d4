#pragma once
// The load generator behind `omnirelay benchmark`: one process, asynchronous,
// gRPC (HTTP/2 on nghttp2, one epoll loop per thread) or HTTP (Beast, one
// keep-alive connection per concurrent slot).
//
// Closed loop by default: `concurrency` slots each send the next request as
// soon as the previous one completes. With `rps` > 0 it is an open loop: the
// i-th request is due at start + i/rps and a free slot sends it when due; a
// request that finds no free slot at its due time is sent late (counted as
// `late_starts`), and latency is measured from the due time, so a saturated
// target shows up as latency instead of being hidden (no coordinated omission).
//
// The run ends after `duration` or `requests` measured requests (whichever
// comes first); `warmup` requests run before measuring and are not counted.
// Thread-safety: Run() blocks the caller; one run per LoadGenerator.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/latency_histogram.h"
#include "omnirelay/core/status.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::benchmark {

struct LoadOptions {
  std::string transport = "grpc";  // grpc | http
  std::string service;
  std::string procedure;  // "svc/Method", "/svc/Method" or "Method" (joined to service)
  std::vector<std::string> addresses;  // host:port (gRPC) — one channel set per address
  std::string url;                     // http(s)://host:port/path for HTTP
  int concurrency = 1;
  double rps = 0;  // 0 = closed loop
  std::optional<core::Duration> duration;
  std::optional<uint64_t> requests;
  core::Duration warmup{0};
  std::optional<core::Duration> ttl;
  std::optional<core::TimePoint> deadline;
  // Client-side per-request timeout; 0 = none. It propagates to the server as
  // a gRPC deadline, so the default stays "none": TTL-less load must stay TTL-less.
  core::Duration timeout{0};
  std::string encoding;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string shard_key;
  std::string routing_key;
  std::string caller = "omnirelay-benchmark";
  // gRPC over TLS (docs/security.md): the server must chain to `tls->ca_file`
  // (the system store when empty) and match the address's host; cert/key are
  // presented for mTLS. With `tls` set every address without a scheme uses
  // TLS; an https:// or grpcs:// address always does (system store without
  // `tls`), and an explicit http:// address with `tls` set is an error, so a
  // target is never silently dialled in plaintext.
  std::optional<tls::TlsOptions> tls;
  int connections = 1;  // gRPC TCP connections per address
  int threads = 0;      // event-loop threads; 0 = min(2, hardware)
  // Called about once per second with a one-line progress summary.
  std::function<void(const std::string&)> on_progress;

  // The gRPC method path ("/service/Method") these options call.
  std::string MethodPath() const;
  // Checks the combination of flags; the message names the offending flag.
  absl::Status Validate() const;
};

struct LoadReport {
  uint64_t requests = 0;
  uint64_t successes = 0;
  uint64_t failures = 0;
  uint64_t late_starts = 0;
  double duration_s = 0;
  double throughput_rps = 0;
  core::HistogramSummary success_latency_ms;
  core::HistogramSummary failure_latency_ms;
  std::map<std::string, uint64_t> status_counts;  // "OK", "RESOURCE_EXHAUSTED", ...
  // First message seen per failing status (helps explain failures).
  std::map<std::string, std::string> sample_errors;

  nlohmann::json ToJson() const;
  std::string ToText() const;
};

// Runs the load and returns the report, or an error if the target cannot be
// set up (bad address, bad options). Failing requests are data, not errors.
absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options);

}  // namespace omnirelay::benchmark
