#include "omnirelay/mesh/codec.h"

#include <gtest/gtest.h>

#include "omnirelay/mesh/v1/gossip.pb.h"

namespace omnirelay::mesh {
namespace {

TEST(CodecTest, RoundTripsEveryField) {
  Message m;
  m.type = MessageType::kPushPull;
  m.cluster = "c";
  m.from = "a";
  m.from_address = "127.0.0.1:1";
  m.seq = 42;
  m.target = "b";
  m.target_address = "127.0.0.1:2";
  m.join = true;
  m.reason = "why";
  m.updates.push_back(MemberRecord{
      "x", "127.0.0.1:3",
      MemberMeta{{"r1", "r2"}, "east", "east-a", {{"k", "v"}}, {{"grpc", "127.0.0.1:9"}}},
      MemberState::kSuspect, 7, "a"});
  m.state.push_back(MemberRecord{"y", "127.0.0.1:4", {}, MemberState::kLeft, 9, "y"});
  auto decoded = DecodeMessage(EncodeMessage(m));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->type, MessageType::kPushPull);
  EXPECT_EQ(decoded->seq, 42u);
  EXPECT_TRUE(decoded->join);
  EXPECT_EQ(decoded->reason, "why");
  ASSERT_EQ(decoded->updates.size(), 1u);
  EXPECT_EQ(decoded->updates[0].meta.roles, (std::vector<std::string>{"r1", "r2"}));
  EXPECT_EQ(decoded->updates[0].meta.labels.at("k"), "v");
  EXPECT_EQ(decoded->updates[0].meta.endpoints.at("grpc"), "127.0.0.1:9");
  EXPECT_EQ(decoded->updates[0].state, MemberState::kSuspect);
  EXPECT_EQ(decoded->updates[0].incarnation, 7u);
  ASSERT_EQ(decoded->state.size(), 1u);
  EXPECT_EQ(decoded->state[0].state, MemberState::kLeft);
}

TEST(CodecTest, MalformedMessagesAreRefusedWithAReason) {
  EXPECT_FALSE(DecodeMessage(std::string("\xff\xff\xff garbage", 11)).ok());
  v1::GossipMessage unknown_type;
  unknown_type.set_type(static_cast<v1::MessageType>(99));
  unknown_type.set_from("a");
  unknown_type.set_from_address("h:1");
  auto s = DecodeMessage(unknown_type.SerializeAsString());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("unknown message type 99"), std::string::npos);
  v1::GossipMessage anonymous;
  anonymous.set_type(v1::MESSAGE_TYPE_PING);
  s = DecodeMessage(anonymous.SerializeAsString());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("without a sender id"), std::string::npos);
  v1::GossipMessage bad_record;
  bad_record.set_type(v1::MESSAGE_TYPE_GOSSIP);
  bad_record.set_from("a");
  bad_record.set_from_address("h:1");
  bad_record.add_updates()->set_address("h:2");  // no id
  s = DecodeMessage(bad_record.SerializeAsString());
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.status().message()).find("without an id"), std::string::npos);
}

}  // namespace
}  // namespace omnirelay::mesh
