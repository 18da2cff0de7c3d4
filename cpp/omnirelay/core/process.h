#pragma once
// Process plumbing every long-running verb shares (`serve`, `echo`, `auth`,
// `worker`, `registry`): termination signals collected on one thread, and
// ready files written atomically.
#include <atomic>
#include <csignal>
#include <nlohmann/json.hpp>
#include <string>

namespace omnirelay::core {

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
// (the harness polling for readiness) never sees half a file. Returns false
// on I/O failure.
bool WriteReadyFile(const std::string& path, const nlohmann::json& contents);

}  // namespace omnirelay::core
