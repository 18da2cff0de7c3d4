#pragma once
// The stable hashes of the shard subsystem. Every node must compute the same
// key -> shard and shard -> owner answers, across processes, builds and
// machines, so nothing here may depend on std::hash (implementation-defined)
// or on the address of anything: FNV-1a over the bytes, then the splitmix64
// finaliser to spread FNV's weak low bits. Changing any of these functions
// re-shards every namespace: they are part of the wire contract
// (docs/shards.md "Hashing").
#include <cstdint>
#include <string_view>

namespace omnirelay::shards {

// splitmix64's finaliser: a bijective avalanche mix of 64 bits.
constexpr std::uint64_t Mix64(std::uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

constexpr std::uint64_t StableHash(std::string_view bytes) {
  std::uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a offset basis
  for (char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;  // FNV prime
  }
  return Mix64(h);
}

// Combines a hash with a small integer (virtual node index, shard id) without
// building a string.
constexpr std::uint64_t HashCombine(std::uint64_t h, std::uint64_t v) {
  return Mix64(h ^ Mix64(v + 0x9e3779b97f4a7c15ULL));
}

// Maps a 64-bit hash uniformly onto [0, n) with a multiply-shift of its top
// 32 bits (Lemire's reduction: no division on the hot path, bias < n / 2^32).
constexpr std::uint32_t ReduceToRange(std::uint64_t h, std::uint32_t n) {
  return static_cast<std::uint32_t>(((h >> 32) * n) >> 32);
}

// Rpc-Shard-Key -> shard id in [0, shard_count).
constexpr std::uint32_t ShardOfKey(std::string_view key, std::uint32_t shard_count) {
  return ReduceToRange(StableHash(key), shard_count);
}

}  // namespace omnirelay::shards
