#include "omnirelay/coord/kv_backend.h"

#include <algorithm>

namespace omnirelay::coord {

struct WatchRegistry::Entry {
  std::string prefix;
  WatchCallback callback;
  // Held while the callback runs, so cancellation waits it out. Recursive so
  // a callback may cancel its own watch.
  std::recursive_mutex mu;
  bool active = true;
};

WatchHandle WatchRegistry::Add(std::string prefix, WatchCallback callback) {
  auto entry = std::make_shared<Entry>();
  entry->prefix = std::move(prefix);
  entry->callback = std::move(callback);
  {
    std::lock_guard lock(mu_);
    entries_.push_back(entry);
  }
  return WatchHandle([this, entry] {
    {
      std::lock_guard lock(entry->mu);
      entry->active = false;
    }
    Remove(entry);
  });
}

void WatchRegistry::Remove(const std::shared_ptr<Entry>& entry) {
  std::lock_guard lock(mu_);
  entries_.erase(std::remove(entries_.begin(), entries_.end(), entry), entries_.end());
}

bool WatchRegistry::empty() const {
  std::lock_guard lock(mu_);
  return entries_.empty();
}

void WatchRegistry::Dispatch(const std::vector<WatchEvent>& events) {
  if (events.empty()) return;
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard lock(mu_);
    entries = entries_;
  }
  for (const auto& entry : entries) {
    std::vector<WatchEvent> matching;
    for (const auto& event : events) {
      if (event.kv.key.compare(0, entry->prefix.size(), entry->prefix) == 0) {
        matching.push_back(event);
      }
    }
    if (matching.empty()) continue;
    std::lock_guard lock(entry->mu);
    if (entry->active) entry->callback(matching);
  }
}

void WatchRegistry::DispatchResync() {
  std::vector<std::shared_ptr<Entry>> entries;
  {
    std::lock_guard lock(mu_);
    entries = entries_;
  }
  const std::vector<WatchEvent> none;
  for (const auto& entry : entries) {
    std::lock_guard lock(entry->mu);
    if (entry->active) entry->callback(none);
  }
}

std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto& last = reinterpret_cast<unsigned char&>(end.back());
    if (last < 0xff) {
      ++last;
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // etcd: "\0" = every key >= start
}

}  // namespace omnirelay::coord
