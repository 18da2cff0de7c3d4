#include "omnirelay/core/process.h"

#include <pthread.h>
#include <time.h>

#include <cstdio>
#include <fstream>

namespace omnirelay::core {

TerminationWaiter::TerminationWaiter() {
  sigemptyset(&signals_);
  sigaddset(&signals_, SIGTERM);
  sigaddset(&signals_, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals_, nullptr);
}

int TerminationWaiter::Wait() {
  // Polling keeps RequestStop() free of signals and extra threads; 50 ms is
  // invisible next to the grace periods that follow.
  const timespec period{0, 50 * 1000 * 1000};
  while (!stop_requested_.load()) {
    const int signal_number = sigtimedwait(&signals_, nullptr, &period);
    if (signal_number > 0) return signal_number;
  }
  return 0;
}

bool WriteReadyFile(const std::string& path, const nlohmann::json& contents) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    if (!out) return false;
    out << contents.dump() << "\n";
    if (!out.flush()) return false;
  }
  return std::rename(temp.c_str(), path.c_str()) == 0;
}

}  // namespace omnirelay::core
