#include "omnirelay/replication/event.h"

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "nlohmann/json.hpp"
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

// The same object through nlohmann (sorted keys, compact): the hand-written
// encoder must produce exactly these bytes.
std::string ReferenceJson(const ReplicationEvent& e) {
  nlohmann::json j = {{"queue", e.queue},
                      {"sequence", e.sequence},
                      {"op", e.op},
                      {"itemId", e.item_id},
                      {"occurredAtUs", e.occurred_at_us}};
  if (!e.shard_id.empty()) j["shardId"] = e.shard_id;
  if (e.fencing_token != 0) j["fencingToken"] = e.fencing_token;
  if (!e.owner.empty()) j["owner"] = e.owner;
  if (!e.principal.empty()) j["principal"] = e.principal;
  if (!e.request_id.empty()) j["requestId"] = e.request_id;
  if (e.attempt != 0) j["attempt"] = e.attempt;
  if (e.expires_at_us != 0) j["expiresAtUs"] = e.expires_at_us;
  if (!e.reason.empty()) j["reason"] = e.reason;
  if (!e.metadata.empty()) j["metadata"] = e.metadata;
  if (e.payload) {
    const auto& p = *e.payload;
    nlohmann::json pj = {{"resourceType", p.resource_type},
                         {"resourceId", p.resource_id},
                         {"requestId", p.request_id},
                         {"priority", p.priority}};
    if (!p.partition_key.empty()) pj["partitionKey"] = p.partition_key;
    if (!p.attributes.empty()) pj["attributes"] = p.attributes;
    if (!p.body.empty()) pj["body"] = absl::Base64Escape(p.body);
    j["payload"] = std::move(pj);
  }
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

TEST(ReplicationEvent, EncoderMatchesTheReferenceJson) {
  ReplicationEvent plain = MakeEvent("q", 1);
  ReplicationEvent full = MakeEvent("billing", 99);
  full.shard_id = "users";
  full.metadata = {{kShardTag, "users"}, {"x", "quote\" and \\ backslash"}};
  full.fencing_token = 18446744073709551615ull;
  full.owner = "w\n\t\x01\x1f";
  full.principal = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";  // é € 😀
  full.attempt = -3;
  full.expires_at_us = -5;
  full.reason = "\b\f\r";
  full.payload->partition_key = "p";
  ReplicationEvent lease = MakeEvent("q", 2, "lease");
  lease.owner = "w";
  for (const auto* e : {&plain, &full, &lease}) {
    EXPECT_EQ(EncodeJson(*e), ReferenceJson(*e));
    auto back = DecodeJson(EncodeJson(*e));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, *e);
  }
}

TEST(ReplicationEvent, InvalidUtf8IsReplacedSoTheLogAlwaysParses) {
  ReplicationEvent e = MakeEvent("q", 3);
  e.reason = std::string("bad \xff\xc3 end \xed\xa0\x80");  // stray, truncated, surrogate
  const std::string json = EncodeJson(e);
  auto back = DecodeJson(json);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->reason.substr(0, 4), "bad ");
  EXPECT_NE(back->reason.find("\xEF\xBF\xBD"), std::string::npos);
  EXPECT_EQ(json, ReferenceJson(e));
}

TEST(ReplicationEvent, TheReplayFlagIsNotPartOfTheEncoding) {
  ReplicationEvent live = MakeEvent("q", 4);
  ReplicationEvent replayed = live;
  replayed.metadata[kReplayTag] = "true";
  EXPECT_TRUE(replayed.replay());
  EXPECT_EQ(EncodeJson(replayed), EncodeJson(live));
  replayed.metadata[kShardTag] = "s";
  live.metadata[kShardTag] = "s";
  EXPECT_EQ(EncodeJson(replayed), EncodeJson(live));
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
