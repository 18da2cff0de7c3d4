// `omnirelay benchmark`: drives load at a node and reports throughput,
// latency percentiles (successes and failures apart) and status codes.
// Flags follow the seed's CLI (`--transport grpc --service trace.Analytics
// --procedure trace.Analytics/Process --address ... --concurrency 400 --rps 200
// --duration 10m --warmup 30s --encoding application/json --body '{...}'`).
// TLS: an https:// address, or --tls-ca-file (and --tls-cert-file /
// --tls-key-file for mTLS) with host:port addresses; never plaintext to an
// https:// address.
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "omnirelay/benchmark/load_generator.h"
#include "omnirelay/cli/commands.h"
#include "omnirelay/cli/tls_flags.h"
#include "omnirelay/core/request_meta.h"

namespace omnirelay::cli {
namespace {

struct BenchmarkFlags {
  benchmark::LoadOptions load;
  std::string duration, warmup, ttl, deadline, timeout, body_file;
  std::vector<std::string> headers;
  uint64_t requests = 0;
  bool json = false;
  bool quiet = false;
  TlsFlags tls;
};

// Returns an error message naming the flag, or empty.
std::string Resolve(BenchmarkFlags& flags) {
  auto duration_flag = [](const std::string& text, const char* name,
                          std::optional<core::Duration>* out) -> std::string {
    if (text.empty()) return "";
    auto parsed = core::ParseDuration(text);
    if (!parsed)
      return std::string(name) + ": '" + text + "' is not a duration (e.g. 250ms, 30s, 10m)";
    *out = *parsed;
    return "";
  };
  std::optional<core::Duration> warmup, timeout;
  for (auto error : {duration_flag(flags.duration, "--duration", &flags.load.duration),
                     duration_flag(flags.warmup, "--warmup", &warmup),
                     duration_flag(flags.ttl, "--ttl", &flags.load.ttl),
                     duration_flag(flags.timeout, "--timeout", &timeout)}) {
    if (!error.empty()) return error;
  }
  if (warmup) flags.load.warmup = *warmup;
  flags.load.timeout = timeout.value_or(core::Duration(0));
  if (!flags.deadline.empty()) {
    auto parsed = core::ParseTimestamp(flags.deadline);
    if (!parsed) {
      return "--deadline: '" + flags.deadline +
             "' is not an ISO-8601 timestamp (e.g. 2026-11-23T10:00:00Z)";
    }
    flags.load.deadline = *parsed;
  }
  if (flags.requests > 0) flags.load.requests = flags.requests;
  auto tls = TlsOptionsFromFlags(flags.tls, /*listener=*/false);
  if (!tls.ok()) return std::string(tls.status().message());
  flags.load.tls = *tls;
  for (const std::string& header : flags.headers) {
    const auto eq = header.find('=');
    if (eq == std::string::npos || eq == 0) return "--header: '" + header + "' is not k=v";
    flags.load.headers.emplace_back(core::Headers::Normalize(header.substr(0, eq)),
                                    header.substr(eq + 1));
  }
  if (!flags.body_file.empty()) {
    std::ifstream in(flags.body_file, std::ios::binary);
    if (!in) return "--body-file: cannot read " + flags.body_file;
    std::stringstream contents;
    contents << in.rdbuf();
    flags.load.body = contents.str();
  }
  return "";
}

int RunBenchmark(BenchmarkFlags& flags) {
  if (std::string error = Resolve(flags); !error.empty()) {
    std::cerr << "omnirelay benchmark: " << error << "\n";
    return 2;
  }
  if (auto status = flags.load.Validate(); !status.ok()) {
    std::cerr << "omnirelay benchmark: " << status.message() << "\n";
    return 2;
  }
  // A live progress line on a terminal; nothing when output is redirected.
  const bool terminal = ::isatty(STDERR_FILENO) && !flags.quiet;
  if (terminal) {
    flags.load.on_progress = [](const std::string& line) {
      std::cerr << "\r\033[K" << line << std::flush;
    };
  }
  auto report = benchmark::RunLoad(flags.load);
  if (terminal) std::cerr << "\r\033[K";
  if (!report.ok()) {
    std::cerr << "omnirelay benchmark: " << report.status().message() << "\n";
    return 1;
  }
  if (flags.json) {
    std::cout << report->ToJson().dump(2) << "\n";
  } else {
    std::cout << "omnirelay benchmark: " << flags.load.transport << " " << flags.load.MethodPath()
              << ", concurrency " << flags.load.concurrency
              << (flags.load.rps > 0 ? ", open loop at " + absl::StrCat(flags.load.rps) + " rps"
                                     : ", closed loop")
              << "\n"
              << report->ToText();
  }
  return 0;
}

}  // namespace

void AddBenchmarkCommand(CLI::App& app, int* exit_code) {
  auto flags = std::make_shared<BenchmarkFlags>();
  auto& load = flags->load;
  auto* command = app.add_subcommand("benchmark", "Drive load at a node and report latency");
  command->add_option("--transport", load.transport, "grpc or http")->capture_default_str();
  command->add_option("--service", load.service, "Remote service name (rpc-service)");
  command->add_option("--procedure", load.procedure,
                      "Procedure: 'service/Method' (gRPC path) or a name within --service");
  // expected(1): one value per occurrence, so `--address a --address b` repeats
  // and a value can never swallow the next flag.
  command
      ->add_option("--address", load.addresses,
                   "[https://]host:port of a node (repeatable); https:// = TLS")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  command->add_option("--url", load.url, "URL for --transport http (http://host:port/path)");
  command->add_option("--concurrency", load.concurrency, "Requests in flight at once")
      ->capture_default_str();
  command->add_option("--rps", load.rps, "Open-loop rate in requests/s (0 = closed loop)");
  command->add_option("--duration", flags->duration, "How long to measure (e.g. 30s, 10m)");
  command->add_option("--requests", flags->requests, "Stop after this many measured requests");
  command->add_option("--warmup", flags->warmup, "Load before measuring (not counted)");
  command->add_option("--ttl", flags->ttl, "Per-request time to live (e.g. 50ms)");
  command->add_option("--deadline", flags->deadline,
                      "Absolute ISO-8601 deadline for every request");
  command->add_option("--timeout", flags->timeout,
                      "Client-side per-request timeout (propagates as a deadline; default none)");
  command->add_option("--encoding", load.encoding, "rpc-encoding, e.g. application/json");
  command->add_option("--body", load.body, "Request body");
  command->add_option("--body-file", flags->body_file, "Read the request body from a file");
  command->add_option("--header", flags->headers, "Extra header/metadata k=v (repeatable)")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  command->add_option("--shard-key", load.shard_key, "rpc-shard-key");
  command->add_option("--routing-key", load.routing_key, "rpc-routing-key");
  command->add_option("--caller", load.caller, "rpc-caller")->capture_default_str();
  command->add_option("--connections", load.connections, "gRPC connections per address")
      ->capture_default_str();
  command->add_option("--threads", load.threads, "Client threads (0 = min(2, cores))");
  AddTlsFlags(command, &flags->tls, /*listener=*/false);
  command->add_flag("--json", flags->json, "Print the report as JSON");
  command->add_flag("--quiet", flags->quiet, "No live progress line");
  command->callback([flags, exit_code] { *exit_code = RunBenchmark(*flags); });
}

}  // namespace omnirelay::cli
