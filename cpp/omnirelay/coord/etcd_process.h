#pragma once
// Test support: a real etcd server (Debian's etcd-server, /usr/bin/etcd)
// on free loopback ports in a fresh temp dir, killed with the test (also if
// the test process dies: the child gets SIGKILL via PR_SET_PDEATHSIG).
#include <sys/types.h>

#include <string>

#include "omnirelay/core/status.h"

namespace omnirelay::coord::testing {

class EtcdProcess {
 public:
  EtcdProcess() = default;
  ~EtcdProcess();
  EtcdProcess(const EtcdProcess&) = delete;
  EtcdProcess& operator=(const EtcdProcess&) = delete;

  // Starts etcd and waits until it answers (FAILED_PRECONDITION if the
  // binary is missing: install etcd-server via scripts/install-deps.sh).
  core::Status Start();
  // Stops it (SIGTERM, then SIGKILL) keeping the data dir; Start() again
  // restarts it on the same ports with the same data.
  void Stop();
  void Kill();  // SIGKILL
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  const std::string& data_dir() const { return data_dir_; }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int client_port_ = 0;
  int peer_port_ = 0;
  std::string dir_;
  std::string data_dir_;
};

// A free TCP port on 127.0.0.1 (bound to port 0 and released).
int FreePort();

}  // namespace omnirelay::coord::testing
