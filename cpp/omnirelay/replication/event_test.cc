#include "omnirelay/replication/event.h"

#include <gtest/gtest.h>

#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

using testing::MakeEvent;

TEST(ReplicationEvent, JsonRoundTripKeepsEveryField) {
  ReplicationEvent e = MakeEvent("billing", 42);
  e.shard_id = "users";
  e.metadata[kShardTag] = "users";
  e.fencing_token = 7;
  e.owner = "worker-1";
  e.principal = "svc-a";
  e.attempt = 2;
  e.expires_at_us = 123;
  e.reason = "boom";
  auto back = DecodeJson(EncodeJson(e));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, e);
  EXPECT_EQ(back->payload->body, std::string("\x00\x01 body \xff", 10));
}

TEST(ReplicationEvent, EncodingIsCanonical) {
  // The checksum covers the bytes: the same event must encode identically.
  ReplicationEvent a = MakeEvent("q", 1);
  ReplicationEvent b = a;
  b.metadata = {{"z", "1"}, {"a", "2"}};
  a.metadata = {{"a", "2"}, {"z", "1"}};
  EXPECT_EQ(EncodeJson(a), EncodeJson(b));
}

TEST(ReplicationEvent, FromMutationCopiesThePayloadAndTimes) {
  resourcelease::ItemPayload payload;
  payload.request_id = "r1";
  payload.resource_id = "x";
  resourcelease::MutationEvent m;
  m.sequence = 3;
  m.op = resourcelease::Op::kLease;
  m.item_id = 9;
  m.fencing_token = 11;
  m.owner = "w";
  m.attempt = 1;
  m.at = FromUnixMicros(1'000'000);
  m.payload = &payload;
  ReplicationEvent e = FromMutation("default", m);
  EXPECT_EQ(e.queue, "default");
  EXPECT_EQ(e.sequence, 3u);
  EXPECT_EQ(e.op, "lease");
  EXPECT_EQ(e.fencing_token, 11u);
  EXPECT_EQ(e.owner, "w");
  EXPECT_EQ(e.request_id, "r1");
  EXPECT_EQ(e.occurred_at_us, 1'000'000);
  ASSERT_TRUE(e.payload.has_value());
  EXPECT_EQ(e.payload->resource_id, "x");
}

TEST(ReplicationEvent, LineDetectsFlippedAndTruncatedBytes) {
  const std::string line = EncodeLine(MakeEvent("q", 5));
  ASSERT_TRUE(DecodeLine(line).ok());
  for (size_t i = 0; i + 1 < line.size(); i += 7) {
    std::string bad = line;
    bad[i] ^= 0x20;
    auto r = DecodeLine(bad);
    EXPECT_FALSE(r.ok()) << "flipped byte " << i << " went unnoticed";
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
    }
  }
  for (size_t cut : {size_t{0}, size_t{5}, size_t{9}, line.size() / 2, line.size() - 1}) {
    auto r = DecodeLine(line.substr(0, cut));
    EXPECT_FALSE(r.ok()) << "truncated at " << cut;
  }
}

TEST(ReplicationEvent, SegmentDetectsCorruption) {
  const std::string seg = EncodeSegment(MakeEvent("q", 6));
  auto ok = DecodeSegment(seg);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->sequence, 6u);
  std::string flipped = seg;
  flipped[seg.size() / 2] ^= 0x01;
  EXPECT_EQ(DecodeSegment(flipped).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSegment(seg.substr(0, seg.size() - 10)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeSegment("").status().code(), absl::StatusCode::kDataLoss);
}

TEST(ReplicationEvent, DecodeRejectsWrongTypesWithoutThrowing) {
  EXPECT_FALSE(DecodeJson(R"({"queue":1,"sequence":1,"op":"x"})").ok());
  EXPECT_FALSE(DecodeJson(R"({"queue":"q","sequence":-1,"op":"x"})").ok());
  EXPECT_FALSE(DecodeJson(R"({"queue":"q","op":"x"})").ok());
  EXPECT_FALSE(DecodeJson(R"({"queue":"q","sequence":1,"op":"x","payload":{"body":"%%%"}})").ok());
  EXPECT_FALSE(DecodeJson("[1,2]").ok());
  EXPECT_FALSE(DecodeJson("{").ok());
}

}  // namespace
}  // namespace omnirelay::replication
