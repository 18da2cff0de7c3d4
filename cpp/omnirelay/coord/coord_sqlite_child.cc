// Child process of sqlite_process_test: one "node" sharing a SQLite
// coordination file with other processes.
//
//   coord_sqlite_child DB NAME TTL_MS
//
// Campaigns for `global`, prints "LEADER <token>" once elected, then loops:
// a fenced write `history/<name>/<seq>` = "<token>" (the Jepsen-style
// history the parent checks), and a lease renewal every TTL/4. When a write
// is refused as stale it prints "FENCED" and exits 3; if the lease is lost it
// exits 4. Output is line-buffered so the parent can follow it.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "omnirelay/coord/leadership_store.h"

using namespace omnirelay;
using namespace std::chrono_literals;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: coord_sqlite_child DB NAME TTL_MS\n");
    return 2;
  }
  setvbuf(stdout, nullptr, _IOLBF, 0);
  coord::StoreOptions options;
  options.kind = "sqlite";
  options.path = argv[1];
  options.max_clock_skew = 100ms;
  options.poll_interval = 10ms;
  const std::string name = argv[2];
  const auto ttl = std::chrono::milliseconds(std::atoi(argv[3]));
  auto store = coord::LeadershipStore::Open(options);
  // A busy store (another process inside a write) is retried, a bad path is not.
  for (int attempt = 0;
       !store.ok() && store.status().code() == absl::StatusCode::kUnavailable && attempt < 100;
       ++attempt) {
    std::this_thread::sleep_for(100ms);
    store = coord::LeadershipStore::Open(options);
  }
  if (!store.ok()) {
    std::fprintf(stderr, "%s\n", store.status().ToString().c_str());
    return 1;
  }
  // Campaign until elected; a busy or stalled store (another process stopped
  // inside a write) can cost the lease: then start over with a new one.
  core::StatusOr<coord::Lease> lease = absl::UnknownError("no lease yet");
  core::StatusOr<coord::Leadership> leader = absl::UnknownError("not elected yet");
  for (int attempt = 0; attempt < 100; ++attempt) {
    lease = (*store)->GrantLease(ttl);
    if (!lease.ok()) {
      std::this_thread::sleep_for(100ms);
      continue;
    }
    // Renew while campaigning so a long wait does not lose the candidacy.
    std::atomic<bool> campaigning{true};
    std::thread renewer([&] {
      while (campaigning.load()) {
        (*store)->KeepAlive(lease->id).IgnoreError();
        std::this_thread::sleep_for(ttl / 4);
      }
    });
    leader = (*store)->Campaign("global", lease->id, name);
    campaigning.store(false);
    renewer.join();
    if (leader.ok()) break;
    std::fprintf(stderr, "campaign: %s (retrying)\n", leader.status().ToString().c_str());
  }
  if (!lease.ok() || !leader.ok()) return 1;
  std::printf("LEADER %lld\n", static_cast<long long>(leader->fencing_token));
  auto last_renewal = std::chrono::steady_clock::now();
  for (long seq = 0;; ++seq) {
    auto written = (*store)->FencedPut(*leader, "history/" + name + "/" + std::to_string(seq),
                                       std::to_string(leader->fencing_token));
    if (!written.ok()) {
      if (written.status().code() == absl::StatusCode::kFailedPrecondition) {
        std::printf("FENCED\n");
        return 3;
      }
      std::fprintf(stderr, "write: %s\n", written.status().ToString().c_str());
    }
    if (std::chrono::steady_clock::now() - last_renewal >= ttl / 4) {
      auto renewed = (*store)->KeepAlive(lease->id);
      if (!renewed.ok() && renewed.status().code() == absl::StatusCode::kNotFound) {
        // Keep going: the next write must be refused (and prove fencing).
        continue;
      }
      last_renewal = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(20ms);
  }
}
