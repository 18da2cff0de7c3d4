#include "omnirelay/core/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <vector>

namespace omnirelay::core {
namespace {

using std::chrono::milliseconds;

TEST(ManualClockTest, TimersFireInOrderOnlyWhenDue) {
  ManualClock clock;
  std::vector<int> fired;
  clock.ScheduleAfter(milliseconds(30), [&] { fired.push_back(30); });
  clock.ScheduleAfter(milliseconds(10), [&] { fired.push_back(10); });
  const TimerId cancelled = clock.ScheduleAfter(milliseconds(20), [&] { fired.push_back(20); });
  EXPECT_TRUE(clock.Cancel(cancelled));
  EXPECT_FALSE(clock.Cancel(cancelled));
  clock.Advance(milliseconds(9));
  EXPECT_TRUE(fired.empty());
  clock.Advance(milliseconds(1));
  EXPECT_EQ(fired, std::vector<int>({10}));
  clock.Advance(milliseconds(100));
  EXPECT_EQ(fired, std::vector<int>({10, 30}));
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(ManualClockTest, CallbackMayScheduleAnotherTimer) {
  ManualClock clock;
  int count = 0;
  std::function<void()> tick = [&] {
    if (++count < 3) clock.ScheduleAfter(milliseconds(1), tick);
  };
  clock.ScheduleAfter(milliseconds(1), tick);
  clock.Advance(milliseconds(1));
  EXPECT_EQ(count, 1);
  clock.Advance(milliseconds(5));  // the +2 timer fires and schedules now+1 = +7
  EXPECT_EQ(count, 2);
  clock.Advance(milliseconds(1));
  EXPECT_EQ(count, 3);
  EXPECT_EQ(clock.pending_timers(), 0u);
}

TEST(ManualClockTest, SetNeverGoesBackwards) {
  ManualClock clock;
  const TimePoint start = clock.Now();
  clock.Set(start - milliseconds(5));
  EXPECT_EQ(clock.Now(), start);
}

TEST(SystemClockTest, TimerFiresOnItsThread) {
  SystemClock clock;
  std::promise<std::thread::id> fired;
  clock.ScheduleAfter(milliseconds(5), [&] { fired.set_value(std::this_thread::get_id()); });
  auto future = fired.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  EXPECT_NE(future.get(), std::this_thread::get_id());
}

TEST(SystemClockTest, CancelledTimerNeverRuns) {
  SystemClock clock;
  std::atomic<bool> ran{false};
  const TimerId id = clock.ScheduleAfter(milliseconds(30), [&] { ran = true; });
  EXPECT_TRUE(clock.Cancel(id));
  std::promise<void> later;
  clock.ScheduleAfter(milliseconds(60), [&] { later.set_value(); });
  later.get_future().wait();
  EXPECT_FALSE(ran.load());
}

}  // namespace
}  // namespace omnirelay::core
