#pragma once
// Counting global operator new for the "no allocation on the hot path" tests
// and the benchmarks' allocs/op column (peer kit, shard lookup, ...).
//
// Replacement operator new/delete may not be inline, so they are expanded by
// OMNIRELAY_COUNT_ALLOCATIONS(), written once at global scope in the one file
// of a binary that counts: every other binary keeps the default allocator.
// Counts are per thread, so a test measures exactly its own thread's calls.
#include <cstdint>
#include <cstdlib>
#include <new>

namespace omnirelay::core::testing {

// Allocations made by the calling thread since it started.
inline thread_local std::uint64_t thread_allocations = 0;

}  // namespace omnirelay::core::testing

#define OMNIRELAY_COUNT_ALLOCATIONS()                                     \
  void* operator new(std::size_t size) {                                  \
    ++::omnirelay::core::testing::thread_allocations;                     \
    if (void* p = std::malloc(size == 0 ? 1 : size)) return p;            \
    throw std::bad_alloc();                                               \
  }                                                                       \
  void* operator new[](std::size_t size) { return operator new(size); }   \
  void operator delete(void* p) noexcept { std::free(p); }                \
  void operator delete[](void* p) noexcept { std::free(p); }              \
  void operator delete(void* p, std::size_t) noexcept { std::free(p); }   \
  void operator delete[](void* p, std::size_t) noexcept { std::free(p); } \
  static_assert(true, "a semicolon after the macro")
