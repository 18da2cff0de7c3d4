#include "omnirelay/replication/durable_replicators.h"

#include <gtest/gtest.h>

#include <fstream>
#include <future>

#include "omnirelay/core/status.h"
#include "omnirelay/replication/test_util.h"

namespace omnirelay::replication {
namespace {

using testing::MakeEvent;
using testing::TempDir;

std::vector<ReplicationEvent> ReadAll(Replicator& r, std::string_view queue,
                                      absl::Status* status = nullptr) {
  std::vector<ReplicationEvent> out;
  absl::Status s = r.Read(queue, 0, [&](const ReplicationEvent& e) {
    out.push_back(e);
    return absl::OkStatus();
  });
  if (status) *status = s;
  return out;
}

// Publishes 1..n of `queue` and waits until all are durable.
void PublishDurably(Replicator& r, std::string_view queue, std::uint64_t from, std::uint64_t to) {
  for (std::uint64_t s = from; s <= to; ++s) {
    ASSERT_TRUE(r.Publish(MakeEvent(std::string(queue), s)).ok()) << s;
  }
  ASSERT_TRUE(r.Flush().ok());
}

void Sql(const std::string& path, const std::string& sql) {
  auto db = sqlite::Open(path, false);
  ASSERT_TRUE(db.ok()) << db.status();
  ASSERT_TRUE(sqlite::Exec(db->get(), sql).ok()) << sql;
}

// --- SQLite ---------------------------------------------------------------------------

TEST(SqliteReplicator, WritesInOrderAndReadsBack) {
  TempDir dir;
  auto r = SqliteReplicator::Open({.path = dir / "log.db"});
  ASSERT_TRUE(r.ok()) << r.status();
  PublishDurably(**r, "a", 1, 300);
  PublishDurably(**r, "b", 1, 10);
  auto events = ReadAll(**r, "a");
  ASSERT_EQ(events.size(), 300u);
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i], MakeEvent("a", i + 1));
  }
  EXPECT_EQ(ReadAll(**r, "b").size(), 10u);
  EXPECT_EQ((*r)->Status().events_written, 310u);
  EXPECT_GE((*r)->Status().batches, 1u);
}

TEST(SqliteReplicator, ResumesFromTheHighestSequenceAfterRestart) {
  TempDir dir;
  {
    auto r = SqliteReplicator::Open({.path = dir / "log.db"});
    ASSERT_TRUE(r.ok());
    PublishDurably(**r, "q", 1, 25);
  }
  auto r = SqliteReplicator::Open({.path = dir / "log.db"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*(*r)->LastSequence("q"), 25u);
  // The next sequence continues; a repeat or a gap is refused.
  EXPECT_EQ((*r)->Publish(MakeEvent("q", 25)).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*r)->Publish(MakeEvent("q", 27)).code(), absl::StatusCode::kFailedPrecondition);
  PublishDurably(**r, "q", 26, 30);
  EXPECT_EQ(ReadAll(**r, "q").size(), 30u);
}

TEST(SqliteReplicator, DurableAcknowledgementComesAfterTheCommit) {
  TempDir dir;
  auto r = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = true});
  ASSERT_TRUE(r.ok());
  std::promise<absl::Status> acked;
  ASSERT_TRUE((*r)->Publish(MakeEvent("q", 1)).ok());
  (*r)->WhenDurable("q", 1, [&](absl::Status s) { acked.set_value(s); });
  auto fut = acked.get_future();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  ASSERT_TRUE(fut.get().ok());
  // Durable means another connection reads it now.
  auto db = sqlite::Open(dir / "log.db", false);
  ASSERT_TRUE(db.ok());
  sqlite::Stmt count(db->get(), "SELECT COUNT(*) FROM lease_events");
  ASSERT_EQ(count.Step(), SQLITE_ROW);
  EXPECT_EQ(count.Int(0), 1);
  // An already-durable sequence answers inline.
  bool inline_ok = false;
  (*r)->WhenDurable("q", 1, [&](absl::Status s) { inline_ok = s.ok(); });
  EXPECT_TRUE(inline_ok);
}

TEST(SqliteReplicator, ChecksumMismatchIsReportedWithItsPosition) {
  TempDir dir;
  const std::string path = dir / "log.db";
  {
    auto r = SqliteReplicator::Open({.path = path});
    ASSERT_TRUE(r.ok());
    PublishDurably(**r, "q", 1, 10);
  }
  // A flipped byte inside row 5's event.
  Sql(path, "UPDATE lease_events SET event = replace(event, 't-5', 't-6') WHERE sequence = 5");
  auto r = SqliteReplicator::Open({.path = path});
  ASSERT_TRUE(r.ok());
  absl::Status s;
  auto events = ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("sequence 5"), std::string_view::npos) << s;
  EXPECT_NE(s.message().find("checksum"), std::string_view::npos) << s;
  EXPECT_EQ(core::ErrorCode(s).value_or(""), kErrCorrupt);
  EXPECT_EQ(events.size(), 4u);  // delivered up to the bad row, never past it
}

TEST(SqliteReplicator, TruncatedRowAndMissingRowAreDetected) {
  TempDir dir;
  const std::string path = dir / "log.db";
  {
    auto r = SqliteReplicator::Open({.path = path});
    ASSERT_TRUE(r.ok());
    PublishDurably(**r, "q", 1, 10);
  }
  Sql(path, "UPDATE lease_events SET event = substr(event, 1, 30) WHERE sequence = 3");
  auto r = SqliteReplicator::Open({.path = path});
  ASSERT_TRUE(r.ok());
  absl::Status s;
  ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("sequence 3"), std::string_view::npos) << s;

  Sql(path, "DELETE FROM lease_events WHERE sequence IN (3, 7)");
  ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("sequence 3 is missing"), std::string_view::npos) << s;
  // Reading from past the hole finds the next one.
  s = (*r)->Read("q", 3, [](const ReplicationEvent&) { return absl::OkStatus(); });
  EXPECT_NE(s.message().find("sequence 7 is missing"), std::string_view::npos) << s;
}

TEST(SqliteReplicator, AFileThatIsNotADatabaseIsAnError) {
  TempDir dir;
  {
    std::ofstream out(dir / "log.db");
    out << std::string(8192, 'x');
  }
  auto r = SqliteReplicator::Open({.path = dir / "log.db"});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
}

TEST(SqliteReplicator, AFullLogStopsAcknowledgingAndLosesNothing) {
  TempDir dir;
  // The cap behaves exactly like a full disk: SQLITE_FULL on commit.
  auto r = SqliteReplicator::Open({.path = dir / "log.db",
                                   .full_sync = false,
                                   .batch = {.retry_interval = std::chrono::milliseconds(20)}});
  ASSERT_TRUE(r.ok());
  PublishDurably(**r, "q", 1, 5);
  auto pages = [&] {
    auto db = sqlite::Open(dir / "log.db", false);
    sqlite::Stmt st(db->get(), "PRAGMA page_count");
    st.Step();
    return st.Int(0);
  }();
  (*r)->SetMaxPageCount(pages);
  // Big events fill the remaining space at once.
  std::uint64_t seq = 6;
  for (; seq <= 40; ++seq) {
    ReplicationEvent e = MakeEvent("q", seq);
    e.payload->body = std::string(16384, 'z');
    ASSERT_TRUE((*r)->Publish(std::move(e)).ok());
  }
  std::promise<absl::Status> answer;
  (*r)->WhenDurable("q", 40, [&](absl::Status s) { answer.set_value(s); });
  auto fut = answer.get_future();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  absl::Status failed = fut.get();
  EXPECT_EQ(failed.code(), absl::StatusCode::kUnavailable) << failed;
  EXPECT_EQ(core::ErrorCode(failed).value_or(""), kErrWriteFailed);
  EXPECT_FALSE((*r)->Status().write_error.ok());
  EXPECT_GE((*r)->Status().write_failures, 1u);
  // New acknowledgements fail at once while the log is full.
  absl::Status again;
  (*r)->WhenDurable("q", 40, [&](absl::Status s) { again = s; });
  EXPECT_EQ(again.code(), absl::StatusCode::kUnavailable);
  // Space comes back: the buffered events are written, nothing was dropped.
  (*r)->SetMaxPageCount(1 << 20);
  for (int i = 0; i < 3000 && (*(*r)->LastSequence("q")) < 40; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(*(*r)->LastSequence("q"), 40u);
  EXPECT_TRUE((*r)->Status().write_error.ok());
  auto events = ReadAll(**r, "q");
  ASSERT_EQ(events.size(), 40u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].sequence, i + 1);
}

TEST(SqliteReplicator, SinksSeeCommittedBatchesInOrder) {
  TempDir dir;
  auto r = SqliteReplicator::Open({.path = dir / "log.db", .full_sync = false});
  ASSERT_TRUE(r.ok());
  auto sink = std::make_shared<RecordingSink>();
  (*r)->AddSink(sink);
  std::thread producer([&] { PublishDurably(**r, "q", 1, 2000); });
  producer.join();
  auto seen = sink->Events();
  ASSERT_EQ(seen.size(), 2000u);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i].sequence, i + 1);
}

TEST(SqliteReplicator, RejectsABadTableName) {
  TempDir dir;
  auto r = SqliteReplicator::Open({.path = dir / "log.db", .table = "x; DROP TABLE y"});
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

// --- file segments ------------------------------------------------------------------------

TEST(FileSegmentReplicator, WritesOneImmutableSegmentPerEvent) {
  TempDir dir;
  auto r = FileSegmentReplicator::Open({.root = dir / "segments"});
  ASSERT_TRUE(r.ok()) << r.status();
  PublishDurably(**r, "q", 1, 12);
  EXPECT_TRUE(std::filesystem::exists(dir / "segments/q/00000000000000000001.json"));
  EXPECT_TRUE(std::filesystem::exists(dir / "segments/q/00000000000000000012.json"));
  auto events = ReadAll(**r, "q");
  ASSERT_EQ(events.size(), 12u);
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i], MakeEvent("q", i + 1));
}

TEST(FileSegmentReplicator, ResumesAfterRestart) {
  TempDir dir;
  {
    auto r = FileSegmentReplicator::Open({.root = dir.path(), .full_sync = false});
    ASSERT_TRUE(r.ok());
    PublishDurably(**r, "q", 1, 7);
  }
  auto r = FileSegmentReplicator::Open({.root = dir.path(), .full_sync = false});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*(*r)->LastSequence("q"), 7u);
  PublishDurably(**r, "q", 8, 9);
  EXPECT_EQ(ReadAll(**r, "q").size(), 9u);
}

TEST(FileSegmentReplicator, CorruptTruncatedAndMissingSegmentsAreReported) {
  TempDir dir;
  auto r = FileSegmentReplicator::Open({.root = dir.path(), .full_sync = false});
  ASSERT_TRUE(r.ok());
  PublishDurably(**r, "q", 1, 9);
  const std::string seg4 = dir / "q/00000000000000000004.json";
  std::string text;
  {
    std::ifstream in(seg4);
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  {
    std::string bad = text;
    bad[bad.size() / 2] ^= 0x01;
    std::ofstream(seg4, std::ios::trunc) << bad;
  }
  absl::Status s;
  auto events = ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("00000000000000000004.json"), std::string_view::npos) << s;
  EXPECT_EQ(events.size(), 3u);

  std::ofstream(seg4, std::ios::trunc) << text.substr(0, text.size() / 3);
  ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("00000000000000000004.json"), std::string_view::npos) << s;

  std::filesystem::remove(seg4);
  ReadAll(**r, "q", &s);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("00000000000000000004.json is missing"), std::string_view::npos) << s;
}

TEST(FileSegmentReplicator, AWriteErrorStopsAcknowledging) {
  TempDir dir;
  auto r =
      FileSegmentReplicator::Open({.root = dir.path(),
                                   .full_sync = false,
                                   .batch = {.retry_interval = std::chrono::milliseconds(20)}});
  ASSERT_TRUE(r.ok());
  // A plain file where the queue's directory must go: every write fails.
  std::ofstream(dir / "q") << "in the way";
  ASSERT_TRUE((*r)->Publish(MakeEvent("q", 1)).ok());
  std::promise<absl::Status> answer;
  (*r)->WhenDurable("q", 1, [&](absl::Status s) { answer.set_value(s); });
  auto fut = answer.get_future();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_EQ(fut.get().code(), absl::StatusCode::kUnavailable);
  // Cleared: the retried write lands.
  std::filesystem::remove(dir / "q");
  for (int i = 0; i < 3000 && *(*r)->LastSequence("q") < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(ReadAll(**r, "q").size(), 1u);
}

}  // namespace
}  // namespace omnirelay::replication
