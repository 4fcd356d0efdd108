// MemWal: the in-memory engine crashes like the RocksDB engine (storage/
// README.md "What a crash leaves behind"): synced writes and everything
// before them survive; a power loss keeps only a prefix of the unsynced
// writes of both stores, in the order they were made; a process crash keeps
// everything; a crash scheduled inside a write writes nothing.
#include "storage/mem_wal.h"

#include <cstdint>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "storage/mem_kv_store.h"
#include "storage/mem_raft_log.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using testing::MakeEntry;

constexpr ShardId kShard = 7;

class MemWalTest : public ::testing::Test {
 protected:
  // Appends entry `index` (term 1) to the log, synced or buffered.
  absl::Status Append(uint64_t index, RaftLog::Durability durability) {
    LogUpdate u;
    u.shard = kShard;
    u.entries.push_back(MakeEntry(index, 1, "e" + std::to_string(index)));
    raftpb::HardState hs;
    hs.set_term(1);
    hs.set_commit(index);
    u.hard_state = hs;
    return log_.Save({u}, durability);
  }
  // Puts key=value with applied index `applied` (not synced).
  absl::Status Put(const std::string& key, const std::string& value, uint64_t applied) {
    ShardWrite w{.shard = kShard, .applied_index = applied};
    w.mutations.push_back(Mutation{Mutation::Kind::kPut, key, value});
    return kv_.Apply({w});
  }
  uint64_t LastIndex() { return log_.State(kShard)->last_index; }
  uint64_t Applied() { return *kv_.AppliedIndex(kShard); }

  MemWal wal_;
  MemRaftLog log_{&wal_};
  MemKvStore kv_{&wal_};
};

TEST_F(MemWalTest, PowerLossKeepsSyncedWritesAndDropsTheRest) {
  ASSERT_THAT(Append(1, RaftLog::Durability::kSynced), IsOk());
  ASSERT_THAT(Put("a", "1", 1), IsOk());
  ASSERT_THAT(Append(2, RaftLog::Durability::kBuffered), IsOk());
  EXPECT_EQ(wal_.unsynced_writes(), 2u);
  wal_.SimulateCrash(/*keep_unsynced=*/0);
  EXPECT_EQ(LastIndex(), 1u);
  EXPECT_EQ(Applied(), 0u);
  EXPECT_THAT(kv_.Get(kShard, "a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(wal_.unsynced_writes(), 0u);
}

TEST_F(MemWalTest, ASyncedSaveCoversEarlierAppliesOfTheOtherStore) {
  ASSERT_THAT(Put("a", "1", 1), IsOk());
  ASSERT_THAT(Append(1, RaftLog::Durability::kSynced), IsOk());
  wal_.SimulateCrash(0);
  EXPECT_EQ(Applied(), 1u);
  EXPECT_EQ(*kv_.Get(kShard, "a"), "1");
  EXPECT_EQ(LastIndex(), 1u);
}

TEST_F(MemWalTest, PowerLossKeepsAPrefixInWriteOrder) {
  ASSERT_THAT(Put("a", "1", 1), IsOk());                           // unsynced #1
  ASSERT_THAT(Append(1, RaftLog::Durability::kBuffered), IsOk());  // #2
  ASSERT_THAT(Put("a", "2", 2), IsOk());                           // #3
  wal_.SimulateCrash(/*keep_unsynced=*/2);
  EXPECT_EQ(*kv_.Get(kShard, "a"), "1");
  EXPECT_EQ(Applied(), 1u);
  EXPECT_EQ(LastIndex(), 1u);
}

TEST_F(MemWalTest, ProcessCrashLosesNothing) {
  ASSERT_THAT(Append(1, RaftLog::Durability::kSynced), IsOk());
  ASSERT_THAT(Append(2, RaftLog::Durability::kBuffered), IsOk());
  ASSERT_THAT(Put("a", "1", 2), IsOk());
  wal_.SimulateCrash(wal_.unsynced_writes());
  EXPECT_EQ(LastIndex(), 2u);
  EXPECT_EQ(*kv_.Get(kShard, "a"), "1");
}

TEST_F(MemWalTest, LostCompactionLeavesTheEntries) {
  ASSERT_THAT(Append(1, RaftLog::Durability::kSynced), IsOk());
  ASSERT_THAT(Append(2, RaftLog::Durability::kSynced), IsOk());
  ASSERT_THAT(log_.Compact(kShard, 1), IsOk());
  EXPECT_EQ(log_.State(kShard)->first_index, 2u);
  wal_.SimulateCrash(0);
  EXPECT_EQ(log_.State(kShard)->first_index, 1u);
  EXPECT_EQ(LastIndex(), 2u);
}

TEST_F(MemWalTest, InstallSnapshotIsSynced) {
  ASSERT_THAT(Put("a", "1", 1), IsOk());
  VectorSnapshotReader reader({SnapshotRecord{false, "b", "2"}});
  ASSERT_THAT(kv_.InstallSnapshot(kShard, 5, reader), IsOk());
  ASSERT_THAT(Put("c", "3", 6), IsOk());
  wal_.SimulateCrash(0);
  EXPECT_EQ(Applied(), 5u);
  EXPECT_EQ(*kv_.Get(kShard, "b"), "2");
  EXPECT_THAT(kv_.Get(kShard, "a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(kv_.Get(kShard, "c"), StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(MemWalTest, CrashAtWriteFailsThatWriteAndEveryLaterOne) {
  ASSERT_THAT(Append(1, RaftLog::Durability::kSynced), IsOk());
  wal_.CrashAtWrite(2);
  ASSERT_THAT(Put("a", "1", 1), IsOk());
  EXPECT_THAT(Append(2, RaftLog::Durability::kSynced), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(wal_.crashed());
  EXPECT_EQ(LastIndex(), 1u);  // nothing of the failed write
  EXPECT_THAT(Put("b", "1", 2), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(log_.Compact(kShard, 1), StatusIs(absl::StatusCode::kUnavailable));
  wal_.SimulateCrash(wal_.unsynced_writes());
  EXPECT_FALSE(wal_.crashed());
  EXPECT_EQ(*kv_.Get(kShard, "a"), "1");  // written before the crash, kept by kill -9
  EXPECT_THAT(Append(2, RaftLog::Durability::kSynced), IsOk());
}

TEST_F(MemWalTest, WithoutAWalBothDurabilitiesAreTheSame) {
  MemRaftLog log;
  LogUpdate u;
  u.shard = kShard;
  u.entries.push_back(MakeEntry(1, 1));
  ASSERT_THAT(log.Save({u}, RaftLog::Durability::kBuffered), IsOk());
  EXPECT_EQ(log.State(kShard)->last_index, 1u);
}

}  // namespace
}  // namespace tessera::storage
