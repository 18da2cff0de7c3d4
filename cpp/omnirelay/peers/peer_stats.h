#pragma once
// Per-thread release statistics of every peer in the process: successes,
// failures and the lease.duration histogram, each written by exactly one
// thread and summed when a scrape (or Peer::Snapshot) reads them.
//
// Why: a lease release used to do a handful of locked read-modify-writes on
// cache lines every thread shares (the success counter, three histogram
// atomics, min/max). Here each thread owns a block of cells; a release does
// relaxed loads and stores on its own thread's cell (no lock prefix, no line
// transfer), and the scraper adds the cells of every block.
//
// Layout: a peer gets a process-wide stat id (PeerStatId, lowest free id,
// reused after the peer is destroyed). A ThreadBlock is a two-level table
// id -> StatCell (pages of 64 cells allocated on a thread's first release on
// a peer of that page); a cell's histogram keeps only the rows (64 buckets,
// one power of two of latency) that were hit, allocated on first use. So a
// steady-state release allocates nothing.
//
// Exactness: every completed release is in exactly one cell; a scrape sums
// all blocks, including those of exited threads: a thread's block goes back
// to a pool when the thread exits and is adopted, values and all, by the next
// new thread, which keeps adding to it (sums never lose a count and memory
// stays bounded by the peak number of threads). A scrape taken while releases
// run sees each cell at some point of its own history (relaxed reads), so
// concurrent scrapes are monotonic and, once the releases are done (joined),
// exact.
//
// Thread-safety: Record* only from the owning thread (ThreadStats() is this
// thread's block); Sum*/Merge*/Release of an id under the directory mutex
// (they take it). A stat id must only be recorded into while its peer is
// alive, and freed (PeerStatId's destructor) once no release can record into
// it any more; freeing zeroes every block's cell for reuse.
#include <array>
#include <atomic>
#include <bit>
#include <cstdint>

#include "omnirelay/core/latency_histogram.h"

namespace omnirelay::peers::internal {

inline constexpr std::size_t kHistogramRowSize = core::LatencyHistogram::kSubBuckets;
inline constexpr std::size_t kHistogramRows =
    core::LatencyHistogram::kBucketCount / kHistogramRowSize;

struct HistogramRow {
  std::array<std::atomic<std::uint64_t>, kHistogramRowSize> buckets{};
};

// One thread's view of one peer. Single writer (the owning thread), so
// increments are a relaxed load + store, never a locked RMW.
// Cache-line aligned with everything a release writes in the first line
// (counters, totals, and the row the last sample went to), so a release on a
// cold peer misses on this line and the one bucket line, not also on `rows`.
// There is no sample count: the scrape sums the buckets (MergeLatency), which
// also keeps the count equal to the buckets' sum at every instant.
struct alignas(64) StatCell {
  std::atomic<std::uint64_t> successes{0};
  std::atomic<std::uint64_t> failures{0};
  std::atomic<std::uint64_t> sum_ticks{0};
  std::atomic<std::uint64_t> min_ticks{UINT64_MAX};
  std::atomic<std::uint64_t> max_ticks{0};
  // The owning thread's shortcut to rows[last_row] (only it reads or writes
  // these two; rows are never freed, only zeroed, so the pointer stays valid).
  HistogramRow* last_row_ptr = nullptr;
  std::uint32_t last_row = UINT32_MAX;
  std::array<std::atomic<HistogramRow*>, kHistogramRows> rows{};
};
static_assert(sizeof(std::atomic<std::uint64_t>) * 5 + sizeof(HistogramRow*) +
                      sizeof(std::uint32_t) <=
                  64,
              "a release's writes to its StatCell stay in one cache line");

inline constexpr std::uint32_t kCellsPerPage = 64;
// 4096 pages of 64 cells: up to 262,144 peers alive at once in one process.
inline constexpr std::uint32_t kMaxPages = 4096;

struct Page {
  std::array<StatCell, kCellsPerPage> cells;
};

// One thread's cells (or a pooled block of an exited thread).
struct ThreadBlock {
  std::array<std::atomic<Page*>, kMaxPages> pages{};
};

// This thread's block (null until its first release). constinit: no TLS
// wrapper call on access from other translation units.
extern constinit thread_local ThreadBlock* tls_block;

// First release of this thread, or on a page it has not touched: adopts a
// block / allocates the page.
StatCell& ThreadCellSlow(std::uint32_t id);

// The cell of `id` in the calling thread's block (created on first use).
inline StatCell& ThreadCell(std::uint32_t id) {
  if (ThreadBlock* block = tls_block) {
    // We are the page pointer's only writer: a relaxed load suffices.
    if (Page* page = block->pages[id / kCellsPerPage].load(std::memory_order_relaxed)) {
      return page->cells[id % kCellsPerPage];
    }
  }
  return ThreadCellSlow(id);
}

// Single-writer increment.
inline void Bump(std::atomic<std::uint64_t>& value, std::uint64_t delta = 1) {
  value.store(value.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

// The histogram row (power of two) and the bucket within it of `ticks`,
// exactly core::LatencyHistogram::BucketIndex(ticks) / and % kHistogramRowSize
// (peer_stats_test checks them against each other), without the call:
// ticks < 64 are row 0, bucket = ticks; above, row = floor(log2 ticks) - 5
// and the bucket is the next 6 bits below the leading one.
inline void BucketOf(std::uint64_t ticks, std::uint32_t& row, std::uint32_t& bucket) {
  constexpr int kBits = core::LatencyHistogram::kSubBucketBits;  // 6
  const int exponent = 63 - std::countl_zero(ticks | 1);
  if (exponent > core::LatencyHistogram::kMaxExponent) [[unlikely]] {
    row = kHistogramRows - 1;  // saturate, as BucketIndex does
    bucket = kHistogramRowSize - 1;
    return;
  }
  const int shift = exponent > kBits ? exponent - kBits : 0;
  row = static_cast<std::uint32_t>(exponent >= kBits ? exponent - kBits + 1 : 0);
  bucket = static_cast<std::uint32_t>((ticks >> shift) & (kHistogramRowSize - 1));
}

// The first sample of `cell` in `row`: allocates the row (once per thread,
// peer and row).
HistogramRow* NewRow(StatCell& cell, std::uint32_t row);

// Records one latency sample (`ticks` in the histogram's 1/1000-ms unit)
// into this thread's cell. Allocates only the first time a row is hit.
inline void RecordLatency(StatCell& cell, std::uint64_t ticks) {
  std::uint32_t row_index, bucket;
  BucketOf(ticks, row_index, bucket);
  HistogramRow* row = cell.last_row_ptr;
  if (cell.last_row != row_index) [[unlikely]] {
    row = cell.rows[row_index].load(std::memory_order_relaxed);
    if (row == nullptr) row = NewRow(cell, row_index);
    cell.last_row = row_index;
    cell.last_row_ptr = row;
  }
  Bump(row->buckets[bucket]);
  Bump(cell.sum_ticks, ticks);
  if (ticks < cell.min_ticks.load(std::memory_order_relaxed)) {
    cell.min_ticks.store(ticks, std::memory_order_relaxed);
  }
  if (ticks > cell.max_ticks.load(std::memory_order_relaxed)) {
    cell.max_ticks.store(ticks, std::memory_order_relaxed);
  }
}

// A peer's stat id, held for the peer's lifetime.
class PeerStatId {
 public:
  PeerStatId();
  ~PeerStatId();
  PeerStatId(const PeerStatId&) = delete;
  PeerStatId& operator=(const PeerStatId&) = delete;
  std::uint32_t id() const { return id_; }

 private:
  std::uint32_t id_;
};

// Scrape side: sums over every thread block (takes the directory mutex).
std::uint64_t SumSuccesses(std::uint32_t id);
std::uint64_t SumFailures(std::uint32_t id);
void MergeLatency(std::uint32_t id, core::LatencyHistogram& out);

}  // namespace omnirelay::peers::internal
