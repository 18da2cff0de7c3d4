#pragma once
// Process plumbing shared by the sample verbs (`omnirelay auth|worker|registry`):
// signal handling, ready files and a gRPC listener with port 0 support.
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <csignal>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "omnirelay/core/status.h"

namespace omnirelay::samples {

// Blocks SIGTERM/SIGINT in the calling thread and every thread it starts
// afterwards (construct it before starting any server), so no work runs in a
// signal handler; Wait() collects them with sigtimedwait.
class TerminationWaiter {
 public:
  TerminationWaiter();
  // Blocks until SIGTERM/SIGINT arrives or RequestStop() is called. Returns
  // the signal number, or 0 for RequestStop().
  int Wait();
  // Makes Wait() return (within its 50 ms polling period); any thread.
  void RequestStop() { stop_requested_.store(true); }

 private:
  sigset_t signals_;
  std::atomic<bool> stop_requested_{false};
};

// Writes `contents` to `path` atomically (temp file + rename) so a reader
// never sees half a file. Returns false on I/O failure.
bool WriteReadyFile(const std::string& path, const nlohmann::json& contents);

// Builds and starts a gRPC server listening on `listen` ("host:port", port 0 =
// any) with `services`. `bound_address` receives "host:port" with the real
// port. UNAVAILABLE if the address cannot be bound.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& listen, const std::vector<grpc::Service*>& services,
    std::string* bound_address);

}  // namespace omnirelay::samples
