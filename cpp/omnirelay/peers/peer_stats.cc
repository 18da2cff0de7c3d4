#include "omnirelay/peers/peer_stats.h"

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

namespace omnirelay::peers::internal {

constinit thread_local ThreadBlock* tls_block = nullptr;

namespace {

void ZeroCell(StatCell& cell) {
  cell.successes.store(0, std::memory_order_relaxed);
  cell.failures.store(0, std::memory_order_relaxed);
  cell.sum_ticks.store(0, std::memory_order_relaxed);
  cell.min_ticks.store(UINT64_MAX, std::memory_order_relaxed);
  cell.max_ticks.store(0, std::memory_order_relaxed);
  for (auto& row_ptr : cell.rows) {
    if (HistogramRow* row = row_ptr.load(std::memory_order_relaxed)) {
      for (auto& bucket : row->buckets) bucket.store(0, std::memory_order_relaxed);
    }
  }
}

// Process-wide and never destroyed (threads may exit during static
// destruction and still hand their block back).
class Directory {
 public:
  static Directory& Get() {
    static auto* directory = new Directory();
    return *directory;
  }

  std::mutex mu;
  std::vector<ThreadBlock*> blocks;     // every block ever made (live or pooled)
  std::vector<ThreadBlock*> pooled;     // blocks of exited threads, to adopt
  std::vector<std::uint32_t> free_ids;  // ids freed by destroyed peers
  std::uint32_t next_id = 0;

  ThreadBlock* Adopt() {
    std::lock_guard lock(mu);
    if (!pooled.empty()) {
      ThreadBlock* block = pooled.back();
      pooled.pop_back();
      return block;
    }
    blocks.push_back(new ThreadBlock());
    return blocks.back();
  }

  void Return(ThreadBlock* block) {
    std::lock_guard lock(mu);
    pooled.push_back(block);
  }

  // The cell of `id` in `block`, or null if that page was never touched.
  static StatCell* Find(const ThreadBlock& block, std::uint32_t id) {
    Page* page = block.pages[id / kCellsPerPage].load(std::memory_order_acquire);
    return page ? &page->cells[id % kCellsPerPage] : nullptr;
  }
};

struct ThreadBlockOwner {
  ThreadBlock* block = nullptr;
  ~ThreadBlockOwner() {
    if (block) Directory::Get().Return(block);
  }
};

// This thread's block (tls_block), adopted on first use and pooled again at
// thread exit. (A lease released from another thread_local's destructor after
// this one ran would record into a pooled block: not supported.)
ThreadBlock& ThisThreadBlock() {
  if (tls_block != nullptr) return *tls_block;
  thread_local ThreadBlockOwner owner;
  owner.block = Directory::Get().Adopt();
  tls_block = owner.block;
  return *tls_block;
}

}  // namespace

StatCell& ThreadCellSlow(std::uint32_t id) {
  ThreadBlock& block = ThisThreadBlock();
  auto& page_ptr = block.pages[id / kCellsPerPage];
  Page* page = page_ptr.load(std::memory_order_relaxed);  // we are its only writer
  if (page == nullptr) {
    page = new Page();
    // Published under the mutex too, so a scraper iterating blocks sees
    // either no page or a fully built one.
    std::lock_guard lock(Directory::Get().mu);
    page_ptr.store(page, std::memory_order_release);
  }
  return page->cells[id % kCellsPerPage];
}

HistogramRow* NewRow(StatCell& cell, std::uint32_t row) {
  auto* fresh = new HistogramRow();
  // Release: a scraper that sees the pointer sees zeroed buckets.
  cell.rows[row].store(fresh, std::memory_order_release);
  return fresh;
}

PeerStatId::PeerStatId() {
  Directory& directory = Directory::Get();
  std::lock_guard lock(directory.mu);
  if (!directory.free_ids.empty()) {
    id_ = directory.free_ids.back();
    directory.free_ids.pop_back();
    return;
  }
  if (directory.next_id >= kMaxPages * kCellsPerPage) {
    std::fprintf(stderr, "omnirelay peers: more than %u peers alive in one process\n",
                 kMaxPages * kCellsPerPage);
    std::abort();
  }
  id_ = directory.next_id++;
}

PeerStatId::~PeerStatId() {
  Directory& directory = Directory::Get();
  std::lock_guard lock(directory.mu);
  // No release records into this id any more (its peer is gone): zero every
  // block's cell so the next peer given this id starts from nothing.
  for (ThreadBlock* block : directory.blocks) {
    if (StatCell* cell = Directory::Find(*block, id_)) ZeroCell(*cell);
  }
  directory.free_ids.push_back(id_);
}

std::uint64_t SumSuccesses(std::uint32_t id) {
  Directory& directory = Directory::Get();
  std::lock_guard lock(directory.mu);
  std::uint64_t total = 0;
  for (const ThreadBlock* block : directory.blocks) {
    if (const StatCell* cell = Directory::Find(*block, id)) {
      total += cell->successes.load(std::memory_order_relaxed);
    }
  }
  return total;
}

std::uint64_t SumFailures(std::uint32_t id) {
  Directory& directory = Directory::Get();
  std::lock_guard lock(directory.mu);
  std::uint64_t total = 0;
  for (const ThreadBlock* block : directory.blocks) {
    if (const StatCell* cell = Directory::Find(*block, id)) {
      total += cell->failures.load(std::memory_order_relaxed);
    }
  }
  return total;
}

void MergeLatency(std::uint32_t id, core::LatencyHistogram& out) {
  Directory& directory = Directory::Get();
  std::lock_guard lock(directory.mu);
  for (const ThreadBlock* block : directory.blocks) {
    const StatCell* cell = Directory::Find(*block, id);
    if (cell == nullptr) continue;
    // Buckets first, then the totals (a concurrent release adds its bucket
    // before its sum and extremes).
    // The count is the buckets' sum (a release keeps no separate count).
    std::uint64_t count = 0;
    for (std::size_t r = 0; r < kHistogramRows; ++r) {
      const HistogramRow* row = cell->rows[r].load(std::memory_order_acquire);
      if (row == nullptr) continue;
      for (std::size_t b = 0; b < kHistogramRowSize; ++b) {
        const std::uint64_t samples = row->buckets[b].load(std::memory_order_relaxed);
        count += samples;
        out.AddRaw(r * kHistogramRowSize + b, samples);
      }
    }
    out.AddTotals(count, cell->sum_ticks.load(std::memory_order_relaxed),
                  cell->min_ticks.load(std::memory_order_relaxed),
                  cell->max_ticks.load(std::memory_order_relaxed));
  }
}

}  // namespace omnirelay::peers::internal
