#include "omnirelay/core/process.h"

#include <gtest/gtest.h>

#include <csignal>
#include <fstream>
#include <thread>

namespace omnirelay::core {
namespace {

TEST(ProcessTest, ReadyFileIsWholeJsonAndReplacesAtomically) {
  const std::string path = ::testing::TempDir() + "/omnirelay_ready_test.json";
  ASSERT_TRUE(WriteReadyFile(path, {{"admin", "127.0.0.1:1"}, {"pid", 1}}));
  ASSERT_TRUE(WriteReadyFile(path, {{"admin", "127.0.0.1:2"}, {"pid", 2}}));
  std::ifstream in(path);
  const auto parsed = nlohmann::json::parse(in);
  EXPECT_EQ(parsed["admin"], "127.0.0.1:2");
  EXPECT_FALSE(std::ifstream(path + ".tmp").good());  // no temp file left behind
  EXPECT_FALSE(WriteReadyFile("/nonexistent-dir/ready.json", {}));
}

TEST(ProcessTest, WaiterCollectsSigtermAndRequestStop) {
  TerminationWaiter waiter;  // blocks SIGTERM in this thread before raising it
  std::raise(SIGTERM);       // pending, not delivered: the waiter collects it
  EXPECT_EQ(waiter.Wait(), SIGTERM);
  std::thread stopper([&] { waiter.RequestStop(); });
  EXPECT_EQ(waiter.Wait(), 0);
  stopper.join();
}

}  // namespace
}  // namespace omnirelay::core
