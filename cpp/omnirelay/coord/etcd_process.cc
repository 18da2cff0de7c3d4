#include "omnirelay/coord/etcd_process.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "omnirelay/coord/etcd_backend.h"

namespace omnirelay::coord::testing {

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

EtcdProcess::~EtcdProcess() {
  Kill();
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

core::Status EtcdProcess::Start() {
  constexpr char kBinary[] = "/usr/bin/etcd";
  if (access(kBinary, X_OK) != 0) {
    return core::MakeStatus(core::StatusCode::kFailedPrecondition,
                            "etcd tests need /usr/bin/etcd: install etcd-server "
                            "(scripts/install-deps.sh)");
  }
  if (dir_.empty()) {
    char templ[] = "/tmp/omnirelay-etcd-XXXXXX";
    if (mkdtemp(templ) == nullptr) {
      return core::MakeStatus(core::StatusCode::kInternal, "mkdtemp failed");
    }
    dir_ = templ;
    data_dir_ = dir_ + "/data";
    client_port_ = FreePort();
    peer_port_ = FreePort();
  }
  const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
  std::vector<std::string> args = {
      kBinary, "--name=omnirelay-test", "--data-dir=" + data_dir_, "--listen-client-urls=" + client,
      "--advertise-client-urls=" + client, "--listen-peer-urls=" + peer,
      "--initial-advertise-peer-urls=" + peer, "--initial-cluster=omnirelay-test=" + peer,
      // Short Raft timings: a 1 s lease is then allowed.
      "--heartbeat-interval=50", "--election-timeout=500", "--logger=zap",
      "--log-outputs=" + dir_ + "/etcd.log"};
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return core::MakeStatus(core::StatusCode::kInternal, "fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    const int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    execv(kBinary, argv.data());
    _exit(127);
  }
  pid_ = pid;
  EtcdOptions options;
  options.endpoints = {endpoint()};
  options.dial_timeout = std::chrono::seconds(1);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  core::Status last;
  while (std::chrono::steady_clock::now() < deadline) {
    int wstatus = 0;
    if (waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return core::MakeStatus(core::StatusCode::kInternal,
                              "etcd exited during startup; see " + dir_ + "/etcd.log");
    }
    auto backend = EtcdBackend::Open(options);
    if (backend.ok()) return core::Status();
    last = backend.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  Kill();
  return core::MakeStatus(core::StatusCode::kDeadlineExceeded,
                          "etcd did not answer within 30 s: " + std::string(last.message()));
}

void EtcdProcess::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGTERM);
  for (int i = 0; i < 100; ++i) {
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
      pid_ = -1;
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  Kill();
}

void EtcdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

}  // namespace omnirelay::coord::testing
