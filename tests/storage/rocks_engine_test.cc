// RocksDB-only tests: persistence across reopen, group commit (one WAL fsync
// per Save), the sync policy of each write, stats, bad directories, and the
// key layout.
#include "storage/engine.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "storage/disk_space.h"
#include "storage/keys.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

using ::tessera::storage::testing::MakeEntry;
using ::tessera::storage::testing::RocksEnv;
using ::tessera::storage::testing::TempDir;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Pair;

constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();

LogUpdate Append(ShardId shard, std::vector<raftpb::Entry> entries) {
  LogUpdate u;
  u.shard = shard;
  u.entries = std::move(entries);
  return u;
}

TEST(RocksEngine, ReopenKeepsEverything) {
  RocksEnv env;
  {
    LogUpdate u;
    u.shard = 1;
    raftpb::SnapshotMetadata snap;
    snap.set_index(10);
    snap.set_term(2);
    snap.mutable_conf_state()->add_voters(3);
    u.snapshot = snap;
    for (uint64_t i = 11; i <= 20; ++i) u.entries.push_back(MakeEntry(i, 3));
    raftpb::HardState hs;
    hs.set_term(3);
    hs.set_vote(2);
    hs.set_commit(15);
    u.hard_state = hs;
    ASSERT_THAT(env.raft_log().Save({u, Append(2, {MakeEntry(1, 1)})}), IsOk());
    ASSERT_THAT(env.raft_log().Compact(1, 12), IsOk());
    ASSERT_THAT(
        env.kv_store().Apply({ShardWrite{
            1, 15, {{Mutation::Kind::kPut, "k", "v"}, {Mutation::Kind::kPutMeta, "m", "w"}}}}),
        IsOk());
  }
  env.Reopen();
  absl::StatusOr<LogState> state = env.raft_log().State(1);
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->first_index, 13u);
  EXPECT_EQ(state->last_index, 20u);
  EXPECT_EQ(state->hard_state.term(), 3u);
  EXPECT_EQ(state->hard_state.vote(), 2u);
  EXPECT_EQ(state->hard_state.commit(), 15u);
  EXPECT_EQ(state->snapshot.index(), 10u);
  EXPECT_THAT(state->snapshot.conf_state().voters(), ElementsAre(3));
  EXPECT_EQ(*env.raft_log().Term(1, 12), 3u);
  EXPECT_EQ(*env.raft_log().Term(1, 20), 3u);
  EXPECT_EQ(env.raft_log().Entries(1, 13, 21, kNoLimit)->size(), 8u);
  EXPECT_EQ(env.raft_log().State(2)->last_index, 1u);
  EXPECT_EQ(*env.kv_store().Get(1, "k"), "v");
  EXPECT_EQ(*env.kv_store().GetMeta(1, "m"), "w");
  EXPECT_EQ(*env.kv_store().AppliedIndex(1), 15u);
  // The log continues where it stopped.
  ASSERT_THAT(env.raft_log().Save({Append(1, {MakeEntry(21, 3)})}), IsOk());
  EXPECT_THAT(env.raft_log().Save({Append(1, {MakeEntry(23, 3)})}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RocksEngine, ReopenAfterFlushReadsFromSstFiles) {
  RocksEnv env;
  std::vector<Mutation> puts;
  for (int i = 0; i < 1000; ++i) {
    puts.push_back({Mutation::Kind::kPut, "key" + std::to_string(i), std::string(100, 'x')});
  }
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 1, puts}}), IsOk());
  std::vector<raftpb::Entry> entries;
  for (uint64_t i = 1; i <= 100; ++i) entries.push_back(MakeEntry(i, 1));
  ASSERT_THAT(env.raft_log().Save({Append(1, entries)}), IsOk());
  ASSERT_THAT(env.engine().FlushForTesting(), IsOk());
  ASSERT_THAT(env.raft_log().Compact(1, 50), IsOk());
  env.Reopen();
  EXPECT_EQ(*env.kv_store().Get(1, "key999"), std::string(100, 'x'));
  EXPECT_THAT(env.kv_store().Get(1, "key1000"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(env.kv_store().Scan(1, {.limit = 2000})->items.size(), 1000u);
  EXPECT_EQ(env.raft_log().State(1)->first_index, 51u);
  EXPECT_EQ(env.raft_log().Entries(1, 51, 101, kNoLimit)->size(), 50u);
  absl::StatusOr<uint64_t> live = env.engine().LiveDataSizeBytes();
  ASSERT_THAT(live, IsOk());
  EXPECT_GT(*live, 0u);
}

// A data directory of a version that kept the raft log in the raft column
// family is migrated to the log engine at the first open after the upgrade,
// exactly once: the column family is emptied, and writes made after the
// migration are not overwritten by a second one.
TEST(RocksEngine, MigratesTheRaftColumnFamilyOnce) {
  RocksEnv env;
  raftpb::HardState hs;
  hs.set_term(4);
  hs.set_vote(2);
  hs.set_commit(12);
  raftpb::SnapshotMetadata snap;
  snap.set_index(8);
  snap.set_term(3);
  snap.mutable_conf_state()->add_voters(1);
  snap.mutable_conf_state()->add_voters(2);
  std::vector<raftpb::Entry> entries;
  for (uint64_t i = 11; i <= 14; ++i) entries.push_back(MakeEntry(i, 4));
  // Shard 1: snapshot at 8, compacted to 10 (term 4), entries 11..14.
  ASSERT_THAT(env.engine().WriteLegacyRaftLogForTesting(1, hs, snap, 10, 4, entries), IsOk());
  // Shard 2: never compacted, entries 1..2, no snapshot.
  ASSERT_THAT(
      env.engine().WriteLegacyRaftLogForTesting(2, raftpb::HardState(), raftpb::SnapshotMetadata(),
                                                0, 0, {MakeEntry(1, 1), MakeEntry(2, 1)}),
      IsOk());
  env.Reopen();
  absl::StatusOr<LogState> state = env.raft_log().State(1);
  ASSERT_THAT(state, IsOk());
  EXPECT_EQ(state->first_index, 11u);
  EXPECT_EQ(state->last_index, 14u);
  EXPECT_EQ(state->hard_state.SerializeAsString(), hs.SerializeAsString());
  EXPECT_EQ(state->snapshot.SerializeAsString(), snap.SerializeAsString());
  EXPECT_EQ(*env.raft_log().Term(1, 10), 4u);
  absl::StatusOr<std::vector<raftpb::Entry>> got = env.raft_log().Entries(1, 11, 15, kNoLimit);
  ASSERT_THAT(got, IsOk());
  ASSERT_EQ(got->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*got)[i].SerializeAsString(), entries[i].SerializeAsString());
  }
  EXPECT_EQ(env.raft_log().State(2)->last_index, 2u);
  EXPECT_EQ(*env.raft_log().Term(2, 1), 1u);
  // New writes after the migration survive the next open (no second import).
  ASSERT_THAT(env.raft_log().Save({Append(2, {MakeEntry(2, 5), MakeEntry(3, 5)})}), IsOk());
  env.Reopen();
  EXPECT_EQ(env.raft_log().State(2)->last_index, 3u);
  EXPECT_EQ(*env.raft_log().Term(2, 2), 5u);
  EXPECT_EQ(env.raft_log().State(1)->first_index, 11u);
}

TEST(RocksEngine, GroupCommitSyncsOncePerSave) {
  RocksEnv env;
  std::vector<LogUpdate> updates;
  for (ShardId s = 0; s < 100; ++s)
    updates.push_back(Append(s, {MakeEntry(1, 1), MakeEntry(2, 1)}));
  const uint64_t before = env.engine().SyncedWalWritesForTesting();
  ASSERT_THAT(env.raft_log().Save(updates), IsOk());
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting() - before, 1u);
  ASSERT_THAT(env.raft_log().Save({Append(7, {MakeEntry(3, 1)})}), IsOk());
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting() - before, 2u);
}

TEST(RocksEngine, OnlySaveInstallAndDeleteShardSync) {
  RocksEnv env;
  ASSERT_THAT(env.raft_log().Save({Append(1, {MakeEntry(1, 1), MakeEntry(2, 1)})}), IsOk());
  const uint64_t before = env.engine().SyncedWalWritesForTesting();
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 1, {{Mutation::Kind::kPut, "k", "v"}}}}), IsOk());
  ASSERT_THAT(env.raft_log().Compact(1, 1), IsOk());
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting(), before);  // not synced
  VectorSnapshotReader reader({});
  ASSERT_THAT(env.kv_store().InstallSnapshot(2, 5, reader), IsOk());
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting(), before + 1);
  ASSERT_THAT(env.raft_log().Save({}), IsOk());  // nothing to write: no fsync
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting(), before + 1);
}

// The staged snapshot is one SST file under <db>/snapshot-staging whose range
// tombstone and records share one sequence number: after ingestion, flushes
// and compactions the shard holds exactly the snapshot.
TEST(RocksEngine, StagedSnapshotSurvivesReopenAndCompaction) {
  RocksEnv env;
  std::vector<Mutation> old;
  for (int i = 0; i < 500; ++i) {
    old.push_back({Mutation::Kind::kPut, absl::StrCat("old", i), "o"});
    old.push_back({Mutation::Kind::kPut, absl::StrCat("key", i), "o"});
  }
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 4, old}, ShardWrite{2, 4, old}}), IsOk());
  ASSERT_THAT(env.engine().FlushForTesting(), IsOk());  // old state in SST files too
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 5, {{Mutation::Kind::kPut, "mem", "o"}}}}),
              IsOk());  // and in the memtable
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = env.kv_store().StageSnapshot(1, 20);
  ASSERT_THAT(staging, IsOk());
  ASSERT_THAT((*staging)->Add({true, "session", "s"}), IsOk());
  for (int i = 0; i < 300; ++i) {
    ASSERT_THAT((*staging)->Add({false, absl::StrCat("key", 1000 + i), "n"}), IsOk());
  }
  ASSERT_THAT((*staging)->Finish(), IsOk());
  const uint64_t syncs = env.engine().SyncedWalWritesForTesting();
  ASSERT_THAT((*staging)->Commit(), IsOk());
  EXPECT_EQ(env.engine().SyncedWalWritesForTesting(), syncs);  // durable through the MANIFEST
  staging->reset();
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "after reopen" : "after compaction");
    env.Reopen();
    if (round == 1) {
      ASSERT_THAT(env.engine().CompactAll(), IsOk());
    }
    EXPECT_EQ(*env.kv_store().AppliedIndex(1), 20u);
    absl::StatusOr<ScanResult> all = env.kv_store().Scan(1, {});
    ASSERT_THAT(all, IsOk());
    ASSERT_EQ(all->items.size(), 300u);
    EXPECT_EQ(all->items.front().first, "key1000");
    EXPECT_EQ(*env.kv_store().GetMeta(1, "session"), "s");
    EXPECT_THAT(env.kv_store().Get(1, "mem"), StatusIs(absl::StatusCode::kNotFound));
    EXPECT_EQ(env.kv_store().Scan(2, {})->items.size(), 1000u);  // the neighbour is untouched
    EXPECT_EQ(*env.kv_store().AppliedIndex(2), 4u);
  }
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 21, {{Mutation::Kind::kPut, "key0", "a"}}}}),
              IsOk());
  EXPECT_EQ(*env.kv_store().Get(1, "key0"), "a");
}

// A staging never committed (the process crashed, or the transfer failed)
// changes nothing, and the next Open removes its file.
TEST(RocksEngine, UncommittedStagingLeavesOldStateAndIsRemovedAtOpen) {
  RocksEnv env;
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{1, 4, {{Mutation::Kind::kPut, "a", "old"}}}}),
              IsOk());
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = env.kv_store().StageSnapshot(1, 20);
  ASSERT_THAT(staging, IsOk());
  ASSERT_THAT((*staging)->Add({false, "b", "new"}), IsOk());
  ASSERT_THAT((*staging)->Finish(), IsOk());
  const std::string staging_dir = env.dir() + "/db/snapshot-staging";
  EXPECT_FALSE(std::filesystem::is_empty(staging_dir));
  // "Crash": the engine goes away with the staging file still there.
  std::unique_ptr<SnapshotStaging> leaked = *std::move(staging);
  std::filesystem::path file = std::filesystem::directory_iterator(staging_dir)->path();
  std::filesystem::copy_file(file, file.string() + ".copy");
  leaked.reset();
  EXPECT_TRUE(std::filesystem::exists(file.string() + ".copy"));
  env.Reopen();
  EXPECT_TRUE(std::filesystem::is_empty(staging_dir));
  EXPECT_EQ(*env.kv_store().Get(1, "a"), "old");
  EXPECT_THAT(env.kv_store().Get(1, "b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*env.kv_store().AppliedIndex(1), 4u);
}

TEST(RocksEngine, StatsReflectWrites) {
  RocksEnv env;
  absl::StatusOr<uint64_t> empty = env.engine().MemtableBytes();
  ASSERT_THAT(empty, IsOk());
  ASSERT_THAT(env.kv_store().Apply(
                  {ShardWrite{1, 1, {{Mutation::Kind::kPut, "k", std::string(1 << 20, 'v')}}}}),
              IsOk());
  absl::StatusOr<uint64_t> full = env.engine().MemtableBytes();
  ASSERT_THAT(full, IsOk());
  EXPECT_GT(*full, *empty + (1 << 20) - 1);
  EXPECT_THAT(env.engine().LiveDataSizeBytes(), IsOk());
}

TEST(RocksEngine, OpenFailsCleanlyOnBadDirectories) {
  TempDir dir;
  const std::string file = dir.path() + "/not-a-dir";
  std::ofstream(file) << "x";
  EXPECT_THAT(Engine::Open(file, {}), StatusIs(absl::StatusCode::kInternal));
  EXPECT_THAT(Engine::Open(file + "/db", {}), StatusIs(absl::StatusCode::kInternal));
  // A second engine on a DB in use is refused (RocksDB's LOCK file).
  absl::StatusOr<std::unique_ptr<Engine>> first = Engine::Open(dir.path() + "/db", {});
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(Engine::Open(dir.path() + "/db", {}), StatusIs(absl::StatusCode::kInternal));
}

// Issue 12, defect 7: on a full disk RocksDB aborted with no word about the
// disk. Below the reserve, Open and every write that adds data are refused
// with "no space left on <dir>" (the real full filesystem: the server's
// integration test).
TEST(RocksEngine, RefusesToOpenBelowTheFreeSpaceReserve) {
  TempDir dir;
  const std::string db = dir.path() + "/db";
  absl::StatusOr<uint64_t> free = FreeDiskBytes(dir.path());
  ASSERT_THAT(free, IsOk());
  EngineOptions o;
  o.min_free_disk_bytes = *free + (uint64_t{1} << 50);
  EXPECT_THAT(Engine::Open(db, o),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       ::testing::StartsWith(absl::StrCat("no space left on ", db, ": "))));
  o.min_free_disk_bytes = 1;  // anything free will do
  EXPECT_THAT(Engine::Open(db, o), IsOk());
}

TEST(DiskSpaceGuard, ChecksTheReserveAndNamesTheDirectory) {
  TempDir dir;
  EXPECT_THAT(DiskSpaceGuard(dir.path(), 0).Check(), IsOk());
  EXPECT_THAT(DiskSpaceGuard(dir.path(), 1).Check(), IsOk());
  const DiskSpaceGuard full(dir.path(), uint64_t{1} << 62);
  EXPECT_THAT(
      full.Check(),
      StatusIs(absl::StatusCode::kResourceExhausted,
               ::testing::AllOf(::testing::HasSubstr("no space left on " + dir.path() + ": "),
                                ::testing::HasSubstr("below the reserve"))));
  // RocksDB's ENOSPC (kResourceExhausted from the engine) gets the directory.
  EXPECT_THAT(full.Annotate(absl::ResourceExhaustedError("IO error: No space left on device")),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       "no space left on " + dir.path() + ": IO error: No space left on device"));
  EXPECT_THAT(full.Annotate(absl::InternalError("other")),
              StatusIs(absl::StatusCode::kInternal, "other"));
}

TEST(RocksEngine, AppliedIndexSurvivesReopenAndStillMustIncrease) {
  RocksEnv env;
  ASSERT_THAT(env.kv_store().Apply({ShardWrite{3, 42, {}}}), IsOk());
  env.Reopen();
  EXPECT_EQ(*env.kv_store().AppliedIndex(3), 42u);
  EXPECT_THAT(env.kv_store().Apply({ShardWrite{3, 42, {}}}),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(env.kv_store().Apply({ShardWrite{3, 43, {}}}), IsOk());
}

TEST(Keys, ShardRangesAreContiguousAndOrdered) {
  const ShardId max = std::numeric_limits<ShardId>::max();
  for (ShardId s : {ShardId{0}, ShardId{1}, ShardId{255}, ShardId{256}, max - 1, max}) {
    const std::string start = keys::ShardStart(s);
    const std::string end = keys::ShardEnd(s);
    for (const std::string& key :
         {keys::TagKey(s, keys::kHardStateTag), keys::EntryKey(s, 0), keys::EntryKey(s, ~0ull),
          keys::TagKey(s, keys::kDataTag, std::string(100, '\xFF')),
          keys::TagKey(s, keys::kAppliedTag)}) {
      EXPECT_LE(start, key);
      EXPECT_LT(key, end);
    }
    if (s != max) {
      EXPECT_LE(end, keys::ShardStart(s + 1));
    }
  }
  ShardId shard = 0;
  uint64_t index = 0;
  ASSERT_TRUE(keys::ParseEntryKey(keys::EntryKey(258, 0x0102030405060708), &shard, &index));
  EXPECT_EQ(shard, 258u);
  EXPECT_EQ(index, 0x0102030405060708u);
  EXPECT_FALSE(keys::ParseEntryKey(keys::TagKey(1, keys::kHardStateTag), &shard, &index));
  EXPECT_LT(keys::EntryKey(1, 255), keys::EntryKey(1, 256));  // big-endian sorts numerically
}

}  // namespace
}  // namespace tessera::storage
