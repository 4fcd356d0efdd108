// Streamed snapshots (snapshot_stream.h): the exchange's bounds and tokens,
// and an export cut into chunks and assembled into a staging, on the Mem and
// the RocksDB KvStore, including hostile chunks.
#include "server/raftstore/snapshot_stream.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/raftstore/raft_storage.h"
#include "tests/storage/test_util.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;

raftpb::Message SnapMessage(uint64_t index) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_SNAP);
  m.set_from(1);
  m.set_to(2);
  m.set_term(3);
  m.mutable_snapshot()->mutable_metadata()->set_index(index);
  m.mutable_snapshot()->mutable_metadata()->set_term(3);
  m.mutable_snapshot()->mutable_metadata()->mutable_conf_state()->add_voters(1);
  return m;
}

std::string Chunk(const std::vector<storage::SnapshotRecord>& records) {
  std::string out;
  for (const storage::SnapshotRecord& r : records) AppendSnapshotRecord(r, &out);
  return out;
}

template <typename Env>
class SnapshotStreamTest : public ::testing::Test {
 protected:
  storage::KvStore& kv() { return env_.kv_store(); }
  absl::Status Fill(ShardId shard, uint64_t index, int keys) {
    storage::ShardWrite w{shard, index, {}};
    w.mutations.push_back({storage::Mutation::Kind::kPutMeta, "session", "s"});
    for (int i = 0; i < keys; ++i) {
      w.mutations.push_back(
          {storage::Mutation::Kind::kPut, absl::StrCat("key", 100000 + i), std::string(50, 'x')});
    }
    return kv().Apply({w});
  }
  Env env_;
};

using Envs = ::testing::Types<storage::testing::MemEnv, storage::testing::RocksEnv>;
class EnvNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return T::kName;
  }
};
TYPED_TEST_SUITE(SnapshotStreamTest, Envs, EnvNames);

TYPED_TEST(SnapshotStreamTest, ExportStreamsInChunksIntoAStagingThatCommits) {
  ASSERT_THAT(this->Fill(1, 9, 1000), IsOk());
  ASSERT_THAT(this->Fill(2, 3, 5), IsOk());
  SnapshotExchange exchange(&this->kv());
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> view = this->kv().ExportSnapshot(1);
  ASSERT_THAT(view, IsOk());
  absl::StatusOr<std::string> token = exchange.AddExport(1, *std::move(view));
  ASSERT_THAT(token, IsOk());
  EXPECT_TRUE(IsExportToken(*token));
  EXPECT_EQ(exchange.exports(), 1u);
  // Writes after the export are not in it.
  ASSERT_THAT(this->Fill(1, 10, 1001), IsOk());

  raftpb::Message m = SnapMessage(9);
  m.mutable_snapshot()->set_data(*token);
  absl::StatusOr<std::unique_ptr<SnapshotChunker>> chunker =
      SnapshotChunker::Open(&exchange, m.mutable_snapshot());
  ASSERT_THAT(chunker, IsOk());
  EXPECT_EQ(exchange.exports(), 0u);
  EXPECT_TRUE(m.snapshot().data().empty());

  // Shard 2 of the same store receives it.
  SnapshotAssembler assembler(&exchange, 1 << 20);
  ASSERT_THAT(assembler.Begin(2, m), IsOk());
  std::string chunk;
  int chunks = 0;
  while (true) {
    absl::StatusOr<bool> more = (*chunker)->Next(1000, &chunk);
    ASSERT_THAT(more, IsOk());
    if (!*more) break;
    EXPECT_LE(chunk.size(), 1000u + 80u);  // whole records: at most one past the bound
    ASSERT_THAT(assembler.Add(chunk), IsOk());
    ++chunks;
  }
  EXPECT_GT(chunks, 50);
  EXPECT_EQ((*chunker)->records(), 1001u);
  absl::StatusOr<raftpb::Message> done = assembler.Finish((*chunker)->records());
  ASSERT_THAT(done, IsOk());
  EXPECT_TRUE(IsStagedToken(done->snapshot().data()));
  EXPECT_EQ(done->snapshot().metadata().index(), 9u);
  EXPECT_EQ(exchange.staged(), 1u);
  // Staged, not visible until committed.
  EXPECT_EQ(*this->kv().AppliedIndex(2), 3u);
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> staging =
      exchange.TakeStaged(done->snapshot().data());
  ASSERT_THAT(staging, IsOk());
  EXPECT_THAT(exchange.TakeStaged(done->snapshot().data()), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT((*staging)->Commit(), IsOk());
  EXPECT_EQ(*this->kv().AppliedIndex(2), 9u);
  EXPECT_EQ(this->kv().Scan(2, {})->items.size(), 1000u);
  EXPECT_EQ(*this->kv().GetMeta(2, "session"), "s");
}

TYPED_TEST(SnapshotStreamTest, HostileChunksEndTheTransferWithClearErrors) {
  ASSERT_THAT(this->Fill(2, 3, 5), IsOk());
  SnapshotExchange exchange(&this->kv());
  {
    SnapshotAssembler a(&exchange, 1 << 20);
    raftpb::Message not_snap = SnapMessage(9);
    not_snap.set_type(raftpb::MSG_APP);
    EXPECT_THAT(a.Begin(2, not_snap), StatusIs(absl::StatusCode::kInvalidArgument));
    EXPECT_THAT(a.Add(Chunk({{false, "a", "1"}})), StatusIs(absl::StatusCode::kFailedPrecondition));
    raftpb::Message with_data = SnapMessage(9);
    with_data.mutable_snapshot()->set_data("\x03" + std::string(8, '\0'));  // a forged token
    EXPECT_THAT(a.Begin(2, with_data), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    SnapshotAssembler a(&exchange, 1 << 20);  // records out of order
    ASSERT_THAT(a.Begin(2, SnapMessage(9)), IsOk());
    ASSERT_THAT(a.Add(Chunk({{false, "b", "1"}})), IsOk());
    EXPECT_THAT(a.Add(Chunk({{false, "a", "1"}})), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    SnapshotAssembler a(&exchange, 1 << 20);  // garbage and a truncated record
    ASSERT_THAT(a.Begin(2, SnapMessage(9)), IsOk());
    EXPECT_THAT(a.Add("\x07garbage"), StatusIs(absl::StatusCode::kInvalidArgument));
    SnapshotAssembler b(&exchange, 1 << 20);
    ASSERT_THAT(b.Begin(2, SnapMessage(9)), IsOk());
    std::string truncated = Chunk({{false, "key", "value"}});
    truncated.pop_back();
    EXPECT_THAT(b.Add(truncated), StatusIs(absl::StatusCode::kInvalidArgument));
    SnapshotAssembler c(&exchange, 1 << 20);
    ASSERT_THAT(c.Begin(2, SnapMessage(9)), IsOk());
    std::string huge_length("\x00\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 10);
    EXPECT_THAT(c.Add(huge_length), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    SnapshotAssembler a(&exchange, 100);  // too many bytes
    ASSERT_THAT(a.Begin(2, SnapMessage(9)), IsOk());
    ASSERT_THAT(a.Add(Chunk({{false, "a", std::string(60, 'x')}})), IsOk());
    EXPECT_THAT(a.Add(Chunk({{false, "b", std::string(60, 'x')}})),
                StatusIs(absl::StatusCode::kResourceExhausted));
    EXPECT_EQ(a.bytes(), 64u);
  }
  {
    SnapshotAssembler a(&exchange, 1 << 20);  // a stream that lost records
    ASSERT_THAT(a.Begin(2, SnapMessage(9)), IsOk());
    ASSERT_THAT(a.Add(Chunk({{false, "a", "1"}, {false, "b", "2"}})), IsOk());
    EXPECT_THAT(a.Finish(3), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // Nothing was staged or changed.
  EXPECT_EQ(exchange.staged(), 0u);
  EXPECT_EQ(*this->kv().AppliedIndex(2), 3u);
  EXPECT_EQ(this->kv().Scan(2, {})->items.size(), 5u);
}

TEST(SnapshotExchange, BoundsExpiresAndChecksTokens) {
  storage::MemKvStore kv;
  SnapshotExchange exchange(&kv, {.max_exports = 2, .max_staged = 1, .ttl = absl::Hours(1)});
  std::vector<std::string> tokens;
  for (int i = 0; i < 2; ++i) {
    absl::StatusOr<std::string> t = exchange.AddExport(1, *kv.ExportSnapshot(1));
    ASSERT_THAT(t, IsOk());
    tokens.push_back(*t);
  }
  EXPECT_THAT(exchange.AddExport(1, *kv.ExportSnapshot(1)),
              StatusIs(absl::StatusCode::kUnavailable));
  exchange.DropExport(tokens[0]);
  EXPECT_THAT(exchange.TakeExport(tokens[0]), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(exchange.TakeExport(std::string("\x01") + "abc"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(exchange.TakeStaged(tokens[1]), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(exchange.AddExport(1, *kv.ExportSnapshot(1)), IsOk());
  // Staged beyond the bound: the oldest is dropped.
  auto staged = [&] {
    std::unique_ptr<storage::SnapshotStaging> s = *kv.StageSnapshot(1, 5);
    EXPECT_THAT(s->Finish(), IsOk());
    return exchange.AddStaged(std::move(s));
  };
  const std::string first = staged();
  const std::string second = staged();
  EXPECT_EQ(exchange.staged(), 1u);
  EXPECT_THAT(exchange.TakeStaged(first), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(exchange.TakeStaged(second), IsOk());

  SnapshotExchange expiring(&kv, {.ttl = absl::ZeroDuration()});
  absl::StatusOr<std::string> t = expiring.AddExport(1, *kv.ExportSnapshot(1));
  ASSERT_THAT(t, IsOk());
  absl::SleepFor(absl::Milliseconds(2));
  EXPECT_THAT(expiring.TakeExport(*t), StatusIs(absl::StatusCode::kNotFound));
}

TEST(SnapshotChunker, InlineFormatOneDataIsChunkedToo) {
  storage::MemKvStore kv;
  ASSERT_THAT(kv.Apply({{1,
                         4,
                         {{storage::Mutation::Kind::kPut, "a", "1"},
                          {storage::Mutation::Kind::kPut, "b", "2"}}}}),
              IsOk());
  absl::StatusOr<std::string> data = EncodeSnapshotData(**kv.ExportSnapshot(1));
  ASSERT_THAT(data, IsOk());
  raftpb::Snapshot snap;
  snap.set_data(*data);
  absl::StatusOr<std::unique_ptr<SnapshotChunker>> chunker = SnapshotChunker::Open(nullptr, &snap);
  ASSERT_THAT(chunker, IsOk());
  std::string chunk;
  ASSERT_TRUE(*(*chunker)->Next(1, &chunk));
  EXPECT_EQ(chunk, Chunk({{false, "a", "1"}}));
  ASSERT_TRUE(*(*chunker)->Next(1, &chunk));
  EXPECT_FALSE(*(*chunker)->Next(1, &chunk));
  EXPECT_EQ((*chunker)->records(), 2u);
  // Without an exchange an export token cannot be streamed.
  snap.set_data("\x02" + std::string(8, '\0'));
  EXPECT_THAT(SnapshotChunker::Open(nullptr, &snap),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

}  // namespace
}  // namespace tessera::server
