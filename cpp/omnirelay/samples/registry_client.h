#pragma once
// Client of the instance registry (registry.h), used by workers to announce
// themselves and by the gateway to refresh its cluster.
//
// Every call is one blocking HTTP/1.1 request bounded by `timeout`.
//
// The address's scheme decides the transport (core/address.h): `https://`
// is always TLS: the registry's certificate must chain to the CA of `tls`
// (the system store when no `tls` is given) and match the host, and the
// client presents tls's certificate when it has one (mTLS); a failed
// handshake is UNAVAILABLE naming why, never a plaintext retry. `http://` or
// no scheme is plaintext. Any other scheme is INVALID_ARGUMENT.
//
// Errors:
// UNAVAILABLE when the registry cannot be reached, INTERNAL for an
// unexpected reply (non-200 or malformed JSON).
// Thread-safety: RegistryClient is immutable; calls are thread-safe.
//
// Gateway use (issue 6, "Discovery"): poll List("worker") every second or so
// on the control plane; diff against the current cluster; drop sticky
// bindings of instances that disappeared. Keep the last good list when a
// poll fails, so a registry restart does not empty the cluster.
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "omnirelay/core/status.h"
#include "omnirelay/http/http_server.h"
#include "omnirelay/samples/registry.h"
#include "omnirelay/tls/tls.h"

namespace omnirelay::samples {

class RegistryClient {
 public:
  // `address` is "[http://|https://]host:port". INVALID_ARGUMENT if it does
  // not parse or `tls` does not load.
  static absl::StatusOr<RegistryClient> Create(
      std::string_view address, std::chrono::milliseconds timeout = std::chrono::seconds(2),
      const std::optional<tls::TlsOptions>& tls = std::nullopt);

  absl::Status Register(const Instance& instance) const;
  // Refreshes the TTL; identical to Register (an upsert) by design.
  absl::Status Heartbeat(const Instance& instance) const { return Register(instance); }
  // OK whether or not the id was registered.
  absl::Status Unregister(std::string_view id) const;
  // Live instances, sorted by id; all roles when `role` is empty.
  absl::StatusOr<std::vector<Instance>> List(std::string_view role = {}) const;

  // Bearer token sent with Register/Unregister (RegistryOptions::token).
  void set_token(std::string token) { token_ = std::move(token); }

  const std::string& host() const { return host_; }
  uint16_t port() const { return port_; }
  // Whether calls use TLS (an https:// address).
  bool secure() const { return tls_ != nullptr; }

 private:
  RegistryClient(std::string host, uint16_t port, std::chrono::milliseconds timeout,
                 std::shared_ptr<tls::ContextSource> tls)
      : host_(std::move(host)), port_(port), timeout_(timeout), tls_(std::move(tls)) {}
  absl::StatusOr<http::HttpClientResult> Call(const std::string& method, const std::string& target,
                                              const std::string& body,
                                              const core::Headers& headers) const;
  absl::StatusOr<std::string> Post(const std::string& path, const std::string& body) const;

  std::string host_;
  uint16_t port_;
  std::chrono::milliseconds timeout_;
  std::string token_;
  std::shared_ptr<tls::ContextSource> tls_;  // set = https; shared by copies (reloads files)
};

// Keeps one instance registered: registers on Start(), heartbeats every
// `interval` on its own thread (logging, never failing, while the registry is
// down), and unregisters on Stop(). Used by `omnirelay worker --registry`.
class RegistrationLoop {
 public:
  RegistrationLoop(RegistryClient client, Instance instance,
                   std::chrono::milliseconds interval = std::chrono::seconds(1));
  ~RegistrationLoop();
  RegistrationLoop(const RegistrationLoop&) = delete;
  RegistrationLoop& operator=(const RegistrationLoop&) = delete;

  // Registers once synchronously (returns that result, so a caller can log
  // it) and starts the heartbeat thread either way: a worker started before
  // its registry joins as soon as the registry is up.
  absl::Status Start();
  // Stops heartbeating and, if `unregister`, removes the entry. Idempotent.
  void Stop(bool unregister = true);

 private:
  void Run();

  RegistryClient client_;
  Instance instance_;
  std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

// Splits "host:port" (port 0..65535). INVALID_ARGUMENT otherwise.
absl::StatusOr<std::pair<std::string, uint16_t>> SplitHostPort(std::string_view address);

}  // namespace omnirelay::samples
