#pragma once
// The instance registry: where worker instances announce themselves and where
// the gateway learns its cluster (issue 6, "Discovery").
//
// A tiny HTTP service (JSON bodies):
//   POST /register   {"id","address","role"}  upsert; (re)starts the entry's TTL
//   POST /unregister {"id"}                   removes it; {"removed": true|false}
//   GET  /instances[?role=worker]             [{"id","address","role"}, ...] by id
//   GET  /healthz
// A heartbeat is simply another /register: the upsert refreshes the TTL, and
// because it carries the whole record a registry that restarted (and lost its
// in-memory table) is repopulated by the next round of heartbeats.
//
// Entries not refreshed within `ttl` disappear from listings, so a worker
// that was killed (no unregister) leaves the cluster after at most one TTL.
//
// Thread-safety: InstanceRegistry is thread-safe (one mutex); RegistryServer
// serves concurrent requests from the HTTP server's workers.
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnirelay/core/clock.h"
#include "omnirelay/core/status.h"
#include "omnirelay/http/http_server.h"

namespace omnirelay::samples {

struct Instance {
  std::string id;       // unique instance name (the worker's pod_name)
  std::string address;  // host:port of its gRPC listener
  std::string role;     // "worker", ...
  bool operator==(const Instance&) const = default;
};

struct RegistryOptions {
  // How long an entry lives without a heartbeat. Workers heartbeat every
  // second by default, so 5 s tolerates four lost heartbeats.
  core::Duration ttl = std::chrono::seconds(5);
  // POST /register and /unregister are authenticated (401 otherwise), so only
  // holders of the token file or of a certificate from the registry's CA can
  // put an instance into the gateway's rotation. GET /instances stays open.
  // A request is authenticated by `Authorization: Bearer <token>` when a
  // token is set, or by a client certificate the TLS listener verified
  // against its CA (mTLS).
  std::string token{};
  // Lets anyone who reaches the port register (local demos only). Without it
  // RegistryServer::Start refuses to run with neither a token nor a TLS
  // listener that requires client certificates.
  bool allow_unauthenticated = false;
};

class InstanceRegistry {
 public:
  explicit InstanceRegistry(RegistryOptions options = {},
                            std::shared_ptr<core::Clock> clock = nullptr);

  // Upserts `instance` with a fresh TTL. INVALID_ARGUMENT if a field is empty.
  absl::Status Register(const Instance& instance);
  // Returns whether an entry was removed.
  bool Unregister(std::string_view id);
  // Live entries, sorted by id; all roles when `role` is empty. Drops expired
  // entries as a side effect.
  std::vector<Instance> List(std::string_view role = {});

  const RegistryOptions& options() const { return options_; }

 private:
  void PruneLocked(core::TimePoint now);

  RegistryOptions options_;
  std::shared_ptr<core::Clock> clock_;
  std::mutex mu_;
  std::map<std::string, std::pair<Instance, core::TimePoint>, std::less<>> entries_;
};

// Serves an InstanceRegistry over HTTP (see the top of this file).
class RegistryServer {
 public:
  // TLS when `http_options.tls` is set (see RegistryOptions for mTLS).
  RegistryServer(http::HttpServerOptions http_options, RegistryOptions options = {},
                 std::shared_ptr<core::Clock> clock = nullptr);
  // FAILED_PRECONDITION when registrations would be unauthenticated (no
  // token, no verified client certificates, no allow_unauthenticated).
  absl::Status Start();
  void Stop();
  std::string address() const { return server_.address(); }
  uint16_t port() const { return server_.port(); }
  InstanceRegistry& registry() { return registry_; }

 private:
  std::optional<http::HttpResponse> Unauthorized(const http::HttpRequest& request) const;
  InstanceRegistry registry_;
  bool verifies_client_certificates_ = false;
  http::HttpServer server_;
};

// JSON shape shared by the server and the client.
std::string InstancesToJson(const std::vector<Instance>& instances);

}  // namespace omnirelay::samples
