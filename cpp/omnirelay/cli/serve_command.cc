// `omnirelay serve`: runs one node until SIGTERM/SIGINT.
//
// Today a node is its admin surface (health, readiness, metrics,
// introspection); the data plane (dispatcher, transports, outbounds) plugs in
// here as it lands. Readiness is announced twice: /readyz turns 200 and, with
// --ready-file, a JSON file with the bound addresses appears (written to a
// temp name and renamed, so a reader never sees half a file).
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "omnirelay/cli/commands.h"
#include "omnirelay/core/logging.h"
#include "omnirelay/core/metrics.h"
#include "omnirelay/core/request_meta.h"
#include "omnirelay/http/http_server.h"

namespace omnirelay::cli {
namespace {

struct ServeOptions {
  std::string name = "omnirelay";
  std::string admin_address = "127.0.0.1:9901";
  std::string ready_file;
  std::string log_level = "info";
  std::string log_file;
};

// Splits "host:port"; port 0 means "any free port".
absl::StatusOr<std::pair<std::string, uint16_t>> SplitAddress(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError("address '" + address + "' is not host:port");
  }
  int port = -1;
  try {
    port = std::stoi(address.substr(colon + 1));
  } catch (...) {
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError("address '" + address + "' has no valid port");
  }
  return std::make_pair(address.substr(0, colon), static_cast<uint16_t>(port));
}

bool WriteReadyFile(const std::string& path, const nlohmann::json& contents) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp);
    if (!out) return false;
    out << contents.dump(2) << "\n";
  }
  return std::rename(temp.c_str(), path.c_str()) == 0;
}

int RunServe(const ServeOptions& options) {
  if (auto level = core::ParseLogLevel(options.log_level)) {
    core::SetLogLevel(*level);
  } else {
    std::cerr << "omnirelay serve: unknown --log-level '" << options.log_level << "'\n";
    return 2;
  }
  if (!options.log_file.empty()) core::SetLogFile(options.log_file);

  auto address = SplitAddress(options.admin_address);
  if (!address.ok()) {
    std::cerr << "omnirelay serve: --admin-address: " << address.status().message() << "\n";
    return 2;
  }

  // Block the termination signals in every thread; one thread waits for them
  // with sigwait, so no work happens inside a signal handler.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::atomic<bool> draining{false};
  const auto started = std::chrono::system_clock::now();
  auto metrics = core::MetricsRegistry::Default();

  http::HttpServer admin({.host = address->first, .port = address->second, .threads = 1});
  admin.Route("GET", "/healthz", [](const http::HttpRequest&) {
    return http::HttpResponse::Json(200, R"({"status":"ok"})");
  });
  admin.Route("GET", "/readyz", [&draining](const http::HttpRequest&) {
    if (draining.load()) {
      auto response = http::HttpResponse::Json(503, R"({"ready":false,"reasons":["draining"]})");
      response.headers.Set("retry-after", "1");
      return response;
    }
    return http::HttpResponse::Json(200, R"({"ready":true,"reasons":[]})");
  });
  admin.Route("GET", "/metrics", [metrics](const http::HttpRequest&) {
    http::HttpResponse response = http::HttpResponse::Text(200, metrics->RenderPrometheus());
    response.content_type = "text/plain; version=0.0.4; charset=utf-8";
    return response;
  });
  admin.Route("GET", "/omnirelay/introspect", [&](const http::HttpRequest&) {
    nlohmann::json body = {
        {"service", options.name},
        {"status", draining.load() ? "draining" : "running"},
        {"startedAt", core::FormatTimestamp(started)},
        {"adminAddress", admin.address()},
        {"procedures", nlohmann::json::array()},
        {"outbounds", nlohmann::json::object()},
    };
    return http::HttpResponse::Json(200, body.dump());
  });
  if (auto status = admin.Start(); !status.ok()) {
    std::cerr << "omnirelay serve: admin server: " << status.message() << "\n";
    return 1;
  }

  const nlohmann::json ready = {{"name", options.name},
                                {"pid", static_cast<int>(::getpid())},
                                {"admin", admin.address()}};
  if (!options.ready_file.empty() && !WriteReadyFile(options.ready_file, ready)) {
    std::cerr << "omnirelay serve: cannot write ready file " << options.ready_file << "\n";
    admin.Stop();
    return 1;
  }
  core::LogInfo("node.ready", ready);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  core::LogInfo("node.draining", {{"signal", signal_number}});
  draining = true;
  admin.Stop();
  core::LogInfo("node.stopped", {{"name", options.name}});
  return 0;
}

}  // namespace

void AddServeCommand(CLI::App& app, int* exit_code) {
  auto options = std::make_shared<ServeOptions>();
  auto* command = app.add_subcommand("serve", "Run an OmniRelay node until SIGTERM/SIGINT");
  command->add_option("--name", options->name, "Node name (introspection, logs)");
  command->add_option("--admin-address", options->admin_address,
                      "host:port of the admin endpoints (/healthz, /readyz, /metrics); port 0 = any")
      ->envname("OMNIRELAY_ADMIN_ADDRESS");
  command->add_option("--ready-file", options->ready_file,
                      "Write a JSON file with the bound addresses once listening");
  command->add_option("--log-level", options->log_level, "trace|debug|info|warn|error|off")
      ->envname("OMNIRELAY_LOG_LEVEL");
  command->add_option("--log-file", options->log_file, "Append JSON-lines logs here (default stderr)");
  command->callback([options, exit_code] { *exit_code = RunServe(*options); });
}

}  // namespace omnirelay::cli
