#include "omnirelay/core/clock.h"

#include <optional>

namespace omnirelay::core {

TimerId TimerQueue::Add(TimePoint when, std::function<void()> callback) {
  const TimerId id = next_id_++;
  auto it = by_time_.emplace(when, std::make_pair(id, std::move(callback)));
  by_id_.emplace(id, it);
  return id;
}

bool TimerQueue::Remove(TimerId id) {
  auto it = by_id_.find(id);
  if (it == by_id_.end()) return false;
  by_time_.erase(it->second);
  by_id_.erase(it);
  return true;
}

std::function<void()> TimerQueue::PopDue(TimePoint now) {
  if (by_time_.empty() || by_time_.begin()->first > now) return nullptr;
  auto first = by_time_.begin();
  std::function<void()> callback = std::move(first->second.second);
  by_id_.erase(first->second.first);
  by_time_.erase(first);
  return callback;
}

std::optional<TimePoint> TimerQueue::NextDue() const {
  if (by_time_.empty()) return std::nullopt;
  return by_time_.begin()->first;
}

// ---------------------------------------------------------------- SystemClock

SystemClock::~SystemClock() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<SystemClock> SystemClock::Shared() {
  static auto* clock = new std::shared_ptr<SystemClock>(std::make_shared<SystemClock>());
  return *clock;  // intentionally leaked: timers may fire during static destruction
}

TimerId SystemClock::ScheduleAt(TimePoint when, std::function<void()> callback) {
  TimerId id;
  {
    std::lock_guard lock(mu_);
    id = timers_.Add(when, std::move(callback));
    if (!thread_.joinable()) thread_ = std::thread([this] { Run(); });
  }
  cv_.notify_all();
  return id;
}

bool SystemClock::Cancel(TimerId id) {
  std::lock_guard lock(mu_);
  return timers_.Remove(id);
}

void SystemClock::Run() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    if (auto due = timers_.PopDue(Now())) {
      lock.unlock();
      due();  // never under our lock: callbacks may schedule or cancel timers
      lock.lock();
      continue;
    }
    if (auto next = timers_.NextDue()) {
      cv_.wait_until(lock, *next);
    } else {
      cv_.wait(lock);
    }
  }
}

// ---------------------------------------------------------------- ManualClock

TimePoint ManualClock::Now() const {
  std::lock_guard lock(mu_);
  return now_;
}

TimerId ManualClock::ScheduleAt(TimePoint when, std::function<void()> callback) {
  {
    std::lock_guard lock(mu_);
    if (when > now_) return timers_.Add(when, std::move(callback));
  }
  // Already due: run now, as a real clock would at its next tick.
  callback();
  return 0;
}

bool ManualClock::Cancel(TimerId id) {
  std::lock_guard lock(mu_);
  return timers_.Remove(id);
}

void ManualClock::Advance(Duration delta) {
  {
    std::lock_guard lock(mu_);
    now_ += std::chrono::duration_cast<TimePoint::duration>(delta);
  }
  RunDue();
}

void ManualClock::Set(TimePoint now) {
  {
    std::lock_guard lock(mu_);
    if (now > now_) now_ = now;
  }
  RunDue();
}

size_t ManualClock::pending_timers() const {
  std::lock_guard lock(mu_);
  return timers_.size();
}

void ManualClock::RunDue() {
  for (;;) {
    std::function<void()> due;
    {
      std::lock_guard lock(mu_);
      due = timers_.PopDue(now_);
    }
    if (!due) return;
    due();
  }
}

}  // namespace omnirelay::core
