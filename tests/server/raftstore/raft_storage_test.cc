// RaftStorage (server/raft_storage.h) against raft::Storage's contract, over
// both RaftLog/KvStore implementations (Mem and RocksDB), and the snapshot
// data format.
#include "server/raftstore/raft_storage.h"

#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "raft/storage.h"
#include "storage/fault_injection.h"
#include "storage/mem_kv_store.h"
#include "storage/mem_raft_log.h"
#include "tests/storage/test_util.h"

namespace tessera::server {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;

constexpr ShardId kShard = 7;

MATCHER_P(IsOkAndHolds, value, "is OK and holds " + ::testing::PrintToString(value)) {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  *result_listener << "value is " << ::testing::PrintToString(*arg);
  return *arg == value;
}

raftpb::Entry Entry(uint64_t index, uint64_t term, std::string data = "x") {
  raftpb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_data(std::move(data));
  return e;
}

raftpb::ConfState Voters(std::vector<uint64_t> ids) {
  raftpb::ConfState cs;
  for (uint64_t id : ids) cs.add_voters(id);
  return cs;
}

template <typename Env>
class RaftStorageTest : public ::testing::Test {
 protected:
  // Saves `update` through the RaftLog, then tells the adapter.
  void Save(storage::LogUpdate update) {
    update.shard = kShard;
    ASSERT_THAT(env_.raft_log().Save({update}), IsOk());
    rs_->Saved(update);
  }
  // The bootstrap snapshot point (index 1, term 1, voters 1..3), then
  // entries 2..5 of terms 1, 1, 2, 2.
  void Bootstrap() {
    storage::LogUpdate u;
    raftpb::SnapshotMetadata& meta = u.snapshot.emplace();
    meta.set_index(1);
    meta.set_term(1);
    *meta.mutable_conf_state() = Voters({1, 2, 3});
    u.entries = {Entry(2, 1), Entry(3, 1), Entry(4, 2), Entry(5, 2)};
    raftpb::HardState hs;
    hs.set_term(2);
    hs.set_vote(1);
    hs.set_commit(5);
    u.hard_state = hs;
    Save(std::move(u));
  }
  void Open() {
    auto rs = RaftStorage::Open(kShard, &env_.raft_log(), &env_.kv_store());
    ASSERT_THAT(rs, IsOk());
    rs_ = *std::move(rs);
  }
  void SetUp() override { Open(); }

  Env env_;
  std::unique_ptr<RaftStorage> rs_;
};

using Envs = ::testing::Types<storage::testing::MemEnv, storage::testing::RocksEnv>;
TYPED_TEST_SUITE(RaftStorageTest, Envs);

TYPED_TEST(RaftStorageTest, EmptyLog) {
  RaftStorage& rs = *this->rs_;
  EXPECT_EQ(rs.FirstIndex(), 1u);
  EXPECT_EQ(rs.LastIndex(), 0u);
  EXPECT_THAT(rs.Term(0), IsOkAndHolds(0u));
  EXPECT_THAT(rs.Term(1), StatusIs(absl::StatusCode::kUnavailable));
  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(rs.InitialState(&hs, &cs), IsOk());
  EXPECT_EQ(hs.term(), 0u);
  EXPECT_EQ(cs.voters_size(), 0);
}

TYPED_TEST(RaftStorageTest, PositionsAndErrorCodes) {
  this->Bootstrap();
  RaftStorage& rs = *this->rs_;
  EXPECT_EQ(rs.FirstIndex(), 2u);
  EXPECT_EQ(rs.LastIndex(), 5u);
  EXPECT_THAT(rs.Term(1), IsOkAndHolds(1u));  // the snapshot's term
  EXPECT_THAT(rs.Term(3), IsOkAndHolds(1u));
  EXPECT_THAT(rs.Term(5), IsOkAndHolds(2u));
  EXPECT_TRUE(raft::IsCompacted(rs.Term(0).status()));
  EXPECT_THAT(rs.Term(6), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(raft::IsCompacted(rs.Entries(1, 3, UINT64_MAX).status()));
  EXPECT_THAT(rs.Entries(2, 7, UINT64_MAX), StatusIs(absl::StatusCode::kUnavailable));

  auto all = rs.Entries(2, 6, UINT64_MAX);
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ(all->front().index(), 2u);
  EXPECT_EQ(all->back().index(), 5u);
  // A byte budget smaller than one entry still returns one.
  auto one = rs.Entries(3, 6, 1);
  ASSERT_THAT(one, IsOk());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ(one->front().index(), 3u);

  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(rs.InitialState(&hs, &cs), IsOk());
  EXPECT_EQ(hs.term(), 2u);
  EXPECT_EQ(hs.commit(), 5u);
  EXPECT_THAT(cs.voters(), ::testing::ElementsAre(1, 2, 3));
}

TYPED_TEST(RaftStorageTest, ConflictingSuffixMovesLastIndex) {
  this->Bootstrap();
  storage::LogUpdate u;
  u.entries = {Entry(4, 3)};
  this->Save(std::move(u));
  EXPECT_EQ(this->rs_->LastIndex(), 4u);
  EXPECT_THAT(this->rs_->Term(4), IsOkAndHolds(3u));
  EXPECT_THAT(this->rs_->Term(5), StatusIs(absl::StatusCode::kUnavailable));
}

TYPED_TEST(RaftStorageTest, CompactKeepsTruncatedTermAcrossReopen) {
  this->Bootstrap();
  this->rs_->AppliedTo(5);
  EXPECT_THAT(this->rs_->Compact(6), StatusIs(absl::StatusCode::kFailedPrecondition));
  ASSERT_THAT(this->rs_->Compact(3), IsOk());
  EXPECT_EQ(this->rs_->FirstIndex(), 4u);
  EXPECT_THAT(this->rs_->Term(3), IsOkAndHolds(1u));
  EXPECT_TRUE(raft::IsCompacted(this->rs_->Term(2).status()));
  ASSERT_THAT(this->rs_->Compact(2), IsOk());  // already compacted: no-op

  this->Open();
  EXPECT_EQ(this->rs_->FirstIndex(), 4u);
  EXPECT_EQ(this->rs_->LastIndex(), 5u);
  EXPECT_THAT(this->rs_->Term(3), IsOkAndHolds(1u));
  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(this->rs_->InitialState(&hs, &cs), IsOk());
  EXPECT_THAT(cs.voters(), ::testing::ElementsAre(1, 2, 3));
}

// A membership change inside the compacted range must survive a restart:
// InitialState's ConfState is the one as of the truncated index.
TYPED_TEST(RaftStorageTest, CompactPastConfChangeRecordsMembership) {
  this->Bootstrap();
  this->rs_->ConfChanged(3, Voters({1, 2, 3, 4}));
  this->rs_->ConfChanged(5, Voters({1, 2, 4}));
  this->rs_->AppliedTo(5);
  ASSERT_THAT(this->rs_->Compact(4), IsOk());
  EXPECT_EQ(this->rs_->FirstIndex(), 5u);

  this->Open();
  EXPECT_EQ(this->rs_->FirstIndex(), 5u);
  EXPECT_EQ(this->rs_->LastIndex(), 5u);
  EXPECT_THAT(this->rs_->Term(4), IsOkAndHolds(2u));
  auto e5 = this->rs_->Entries(5, 6, UINT64_MAX);
  ASSERT_THAT(e5, IsOk());
  ASSERT_EQ(e5->size(), 1u);
  EXPECT_EQ(e5->front().term(), 2u);
  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(this->rs_->InitialState(&hs, &cs), IsOk());
  EXPECT_THAT(cs.voters(), ::testing::ElementsAre(1, 2, 3, 4));  // as of index 4
  EXPECT_EQ(hs.commit(), 5u);                                    // the hard state is untouched
}

TYPED_TEST(RaftStorageTest, SnapshotOnDemandRoundTrip) {
  this->Bootstrap();
  storage::KvStore& kv = this->env_.kv_store();
  storage::ShardWrite w;
  w.shard = kShard;
  w.applied_index = 4;
  w.mutations = {
      {storage::Mutation::Kind::kPut, "a", "1"},
      {storage::Mutation::Kind::kPut, std::string("\x00\xff", 2), std::string(300, 'v')},
      {storage::Mutation::Kind::kPut, "empty", ""},
      {storage::Mutation::Kind::kPutMeta, "session", "s"},
  };
  ASSERT_THAT(kv.Apply({w}), IsOk());
  this->rs_->ConfChanged(3, Voters({1, 2, 3, 4}));

  // The loop has not applied up to the store's index yet: not ready.
  this->rs_->AppliedTo(3);
  EXPECT_THAT(this->rs_->Snapshot(), StatusIs(absl::StatusCode::kUnavailable));

  this->rs_->AppliedTo(4);
  auto snap = this->rs_->Snapshot();
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ(snap->metadata().index(), 4u);
  EXPECT_EQ(snap->metadata().term(), 2u);
  EXPECT_THAT(snap->metadata().conf_state().voters(), ::testing::ElementsAre(1, 2, 3, 4));

  storage::MemKvStore other;
  SnapshotDataReader reader(snap->data());
  ASSERT_THAT(other.InstallSnapshot(kShard, 4, reader), IsOk());
  EXPECT_THAT(other.Get(kShard, "a"), IsOkAndHolds(std::string("1")));
  EXPECT_THAT(other.Get(kShard, std::string("\x00\xff", 2)), IsOkAndHolds(std::string(300, 'v')));
  EXPECT_THAT(other.Get(kShard, "empty"), IsOkAndHolds(std::string()));
  EXPECT_THAT(other.GetMeta(kShard, "session"), IsOkAndHolds(std::string("s")));
  EXPECT_THAT(other.Get(kShard, "session"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(other.AppliedIndex(kShard), IsOkAndHolds(4u));
}

// The raft log and the KvStore are separate engines: a compaction that may
// become durable must not get ahead of the durable applied data, so Compact
// syncs the store first and compacts nothing if that fails.
TEST(RaftStorageCompact, SyncsTheKvStoreBeforeCompactingTheLog) {
  storage::MemRaftLog log;
  storage::MemKvStore kv;
  storage::FaultInjectionEngine faulty(&log, &kv);
  absl::StatusOr<std::unique_ptr<RaftStorage>> rs =
      RaftStorage::Open(kShard, &faulty.raft_log(), &faulty.kv_store());
  ASSERT_THAT(rs, IsOk());
  storage::LogUpdate u;
  u.shard = kShard;
  raftpb::SnapshotMetadata& meta = u.snapshot.emplace();
  meta.set_index(1);
  meta.set_term(1);
  *meta.mutable_conf_state() = Voters({1, 2, 3});
  u.entries = {Entry(2, 1), Entry(3, 1), Entry(4, 1)};
  ASSERT_THAT(log.Save({u}), IsOk());
  (*rs)->Saved(u);
  (*rs)->AppliedTo(4);
  faulty.faults().Fail(storage::FaultOp::kSync);
  EXPECT_THAT((*rs)->Compact(3), StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(log.State(kShard)->first_index, 2u);  // not compacted
  EXPECT_EQ(faulty.faults().failures(storage::FaultOp::kSync), 1u);
  faulty.faults().Heal(storage::FaultOp::kSync);
  ASSERT_THAT((*rs)->Compact(3), IsOk());
  EXPECT_EQ(log.State(kShard)->first_index, 4u);
}

TEST(SnapshotData, RejectsMalformedData) {
  storage::SnapshotRecord r;
  {
    SnapshotDataReader reader("");
    EXPECT_THAT(reader.Next(&r), StatusIs(absl::StatusCode::kDataLoss));
  }
  {
    SnapshotDataReader reader("\x02");
    EXPECT_THAT(reader.Next(&r), StatusIs(absl::StatusCode::kDataLoss));
  }
  {
    SnapshotDataReader reader("\x01");  // no records
    EXPECT_THAT(reader.Next(&r), IsOkAndHolds(false));
  }
  {
    const std::string truncated(
        "\x01\x00\x05"
        "ab",
        5);  // key of 5 bytes, 2 present
    SnapshotDataReader reader(truncated);
    EXPECT_THAT(reader.Next(&r), StatusIs(absl::StatusCode::kDataLoss));
  }
  {
    const std::string bad_kind("\x01\x07\x01k\x00", 5);
    SnapshotDataReader reader(bad_kind);
    EXPECT_THAT(reader.Next(&r), StatusIs(absl::StatusCode::kDataLoss));
  }
}

}  // namespace
}  // namespace tessera::server
