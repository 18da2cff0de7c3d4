#include "omnirelay/benchmark/load_generator.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "omnirelay/benchmark/load_state.h"

namespace omnirelay::benchmark {

absl::StatusOr<LoadReport> RunGrpcLoad(const LoadOptions& options, LoadState& state);
absl::StatusOr<LoadReport> RunHttpLoad(const LoadOptions& options, LoadState& state);

std::string LoadOptions::MethodPath() const {
  if (!procedure.empty() && procedure.front() == '/') return procedure;
  if (procedure.find('/') != std::string::npos) return "/" + procedure;
  return "/" + service + "/" + procedure;
}

absl::Status LoadOptions::Validate() const {
  if (transport != "grpc" && transport != "http") {
    return absl::InvalidArgumentError("--transport must be 'grpc' or 'http', not '" + transport +
                                      "'");
  }
  if (procedure.empty()) return absl::InvalidArgumentError("--procedure is required");
  if (procedure.find('/') == std::string::npos && service.empty()) {
    return absl::InvalidArgumentError(
        "--service is required when --procedure is not 'service/Method'");
  }
  if (transport == "grpc" && addresses.empty()) {
    return absl::InvalidArgumentError("--address is required for --transport grpc");
  }
  if (transport == "http" && url.empty() && addresses.empty()) {
    return absl::InvalidArgumentError("--url (or --address) is required for --transport http");
  }
  if (transport == "http" && tls) {
    return absl::InvalidArgumentError("--tls-* flags apply to --transport grpc only");
  }
  if (concurrency < 1) return absl::InvalidArgumentError("--concurrency must be at least 1");
  if (rps < 0) return absl::InvalidArgumentError("--rps must not be negative");
  if (connections < 1) return absl::InvalidArgumentError("--connections must be at least 1");
  if (!duration && !requests) {
    return absl::InvalidArgumentError("give --duration or --requests (or both)");
  }
  if (requests && *requests == 0) return absl::InvalidArgumentError("--requests must be > 0");
  return absl::OkStatus();
}

namespace {

nlohmann::json SummaryJson(const core::HistogramSummary& s) {
  return {{"p50", s.p50},
          {"p90", s.p90},
          {"p95", s.p95},
          {"p99", s.p99},
          {"p999", s.p999},
          {"max", s.max},
          {"mean", s.count ? s.sum / s.count : 0.0}};
}

std::string Ms(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.3f", value);
  return buffer;
}

}  // namespace

nlohmann::json LoadReport::ToJson() const {
  return {{"requests", requests},
          {"successes", successes},
          {"failures", failures},
          {"late_starts", late_starts},
          {"duration_s", duration_s},
          {"throughput_rps", throughput_rps},
          {"latency_ms",
           {{"success", SummaryJson(success_latency_ms)},
            {"failure", SummaryJson(failure_latency_ms)}}},
          {"status_counts", status_counts},
          {"sample_errors", sample_errors}};
}

std::string LoadReport::ToText() const {
  std::ostringstream out;
  out << "requests:   " << requests << " in " << Ms(duration_s) << " s  (" << Ms(throughput_rps)
      << " req/s)\n";
  out << "successes:  " << successes << "\nfailures:   " << failures << "\n";
  if (late_starts) out << "late starts (open loop fell behind): " << late_starts << "\n";
  auto line = [&](const char* label, const core::HistogramSummary& s) {
    out << label << " p50 " << Ms(s.p50) << "  p90 " << Ms(s.p90) << "  p95 " << Ms(s.p95)
        << "  p99 " << Ms(s.p99) << "  p99.9 " << Ms(s.p999) << "  max " << Ms(s.max) << " ms\n";
  };
  if (successes) line("latency ok:  ", success_latency_ms);
  if (failures) line("latency err: ", failure_latency_ms);
  out << "status codes:\n";
  for (const auto& [name, count] : status_counts) {
    out << "  " << name << ": " << count;
    auto sample = sample_errors.find(name);
    if (sample != sample_errors.end()) out << "  (e.g. \"" << sample->second << "\")";
    out << "\n";
  }
  return out.str();
}

absl::StatusOr<LoadReport> RunLoad(const LoadOptions& options) {
  if (auto status = options.Validate(); !status.ok()) return status;
  LoadState state(options);
  return options.transport == "grpc" ? RunGrpcLoad(options, state) : RunHttpLoad(options, state);
}

}  // namespace omnirelay::benchmark
