// Tests of RaftLog (stable storage + unstable suffix).
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "raft/log.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using namespace ::tessera::raft::testing;  // NOLINT

std::vector<uint64_t> Terms(const RaftLog& log) {
  std::vector<uint64_t> out;
  for (uint64_t i = log.FirstIndex(); i <= log.LastIndex(); ++i) out.push_back(*log.Term(i));
  return out;
}

TEST(RaftLog, FindConflict) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 2), Ent(3, 3)});
  EXPECT_EQ(log.FindConflict({}), 0u);
  EXPECT_EQ(log.FindConflict({Ent(1, 1), Ent(2, 2), Ent(3, 3)}), 0u);
  EXPECT_EQ(log.FindConflict({Ent(2, 2), Ent(3, 3), Ent(4, 4)}), 4u);  // new entries
  EXPECT_EQ(log.FindConflict({Ent(2, 1), Ent(3, 4)}), 2u);             // conflict
  EXPECT_EQ(log.FindConflict({Ent(3, 4)}), 3u);
}

TEST(RaftLog, FindConflictByTerm) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 1), Ent(3, 2), Ent(4, 2), Ent(5, 5)});
  EXPECT_EQ(log.FindConflictByTerm(5, 4), (std::pair<uint64_t, uint64_t>{4, 2}));
  EXPECT_EQ(log.FindConflictByTerm(5, 5), (std::pair<uint64_t, uint64_t>{5, 5}));
  EXPECT_EQ(log.FindConflictByTerm(4, 1), (std::pair<uint64_t, uint64_t>{2, 1}));
  EXPECT_EQ(log.FindConflictByTerm(2, 0), (std::pair<uint64_t, uint64_t>{0, 0}));
}

TEST(RaftLog, MaybeAppendTruncatesAndCommits) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 2), Ent(3, 3)});
  EXPECT_FALSE(log.MaybeAppend(3, 2, 3, {Ent(4, 4)}).has_value());  // mismatch
  EXPECT_FALSE(log.MaybeAppend(4, 3, 3, {}).has_value());           // beyond last
  EXPECT_EQ(log.MaybeAppend(1, 1, 2, {Ent(2, 4)}), 2u);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 4}));
  EXPECT_EQ(log.committed(), 2u);
  EXPECT_EQ(log.MaybeAppend(2, 4, 10, {Ent(3, 4)}), 3u);
  EXPECT_EQ(log.committed(), 3u);  // min(leader commit, last new)
}

TEST(RaftLogDeathTest, ConflictWithCommittedEntryCrashes) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 1)});
  log.CommitTo(2);
  EXPECT_DEATH(log.MaybeAppend(1, 1, 2, {Ent(2, 2)}), "conflicts with committed");
}

TEST(RaftLogDeathTest, CommitBeyondLastIndexCrashes) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1)});
  EXPECT_DEATH(log.CommitTo(5), "out of range");
}

TEST(RaftLog, CommitNeverGoesBackwards) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 1)});
  log.CommitTo(2);
  log.CommitTo(1);
  EXPECT_EQ(log.committed(), 2u);
}

TEST(RaftLog, MaybeCommitOnlyForGivenTerm) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 2)});
  EXPECT_FALSE(log.MaybeCommit(1, 2));
  EXPECT_TRUE(log.MaybeCommit(2, 2));
  EXPECT_EQ(log.committed(), 2u);
}

TEST(RaftLog, UnstableEntriesBecomeStable) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 1)});
  ASSERT_EQ(log.UnstableEntries().size(), 2u);
  ASSERT_THAT(s.Append(log.UnstableEntries()), IsOk());
  log.StableTo(2, 1);
  EXPECT_FALSE(log.HasUnstableEntries());
  EXPECT_EQ(log.LastIndex(), 2u);
  // A stale StableTo (term mismatch after truncation) is ignored.
  log.Append({Ent(2, 3), Ent(3, 3)});
  log.StableTo(3, 1);
  EXPECT_EQ(log.UnstableEntries().size(), 2u);
  EXPECT_EQ(Terms(log), (std::vector<uint64_t>{1, 3, 3}));
}

TEST(RaftLog, NextEntriesRespectAppliedAndSizeLimit) {
  MemoryStorage s;
  RaftLog log(&s, EntrySize(Ent(1, 1, "aaaa")) + 1);
  log.Append({Ent(1, 1, "aaaa"), Ent(2, 1, "bbbb"), Ent(3, 1, "cccc")});
  log.CommitTo(3);
  std::vector<raftpb::Entry> next = log.NextEntries();
  ASSERT_EQ(next.size(), 1u);  // size-limited
  log.AppliedTo(1);
  next = log.NextEntries();
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].index(), 2u);
  log.AppliedTo(3);
  EXPECT_FALSE(log.HasNextEntries());
}

TEST(RaftLog, SliceSpansStorageAndUnstable) {
  MemoryStorage s;
  ASSERT_THAT(s.Append({Ent(1, 1), Ent(2, 1)}), IsOk());
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(3, 2), Ent(4, 2)});
  auto ents = log.Slice(1, 5, UINT64_MAX);
  ASSERT_THAT(ents, IsOk());
  ASSERT_EQ(ents->size(), 4u);
  EXPECT_EQ((*ents)[2].term(), 2u);
  ASSERT_THAT(s.Compact(1), IsOk());
  EXPECT_THAT(log.Slice(1, 3, UINT64_MAX), StatusIs(absl::StatusCode::kOutOfRange));
}

TEST(RaftLog, RestoreFromSnapshot) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1)});
  raftpb::Snapshot snap;
  snap.mutable_metadata()->set_index(10);
  snap.mutable_metadata()->set_term(3);
  log.Restore(snap);
  EXPECT_EQ(log.committed(), 10u);
  EXPECT_EQ(log.FirstIndex(), 11u);
  EXPECT_EQ(log.LastIndex(), 10u);
  EXPECT_EQ(*log.Term(10), 3u);
  EXPECT_TRUE(log.HasPendingSnapshot());
  log.StableSnapTo(10);
  EXPECT_FALSE(log.HasPendingSnapshot());
}

TEST(RaftLog, IsUpToDate) {
  MemoryStorage s;
  RaftLog log(&s, UINT64_MAX);
  log.Append({Ent(1, 1), Ent(2, 2), Ent(3, 3)});
  EXPECT_TRUE(log.IsUpToDate(3, 3));
  EXPECT_TRUE(log.IsUpToDate(4, 3));
  EXPECT_TRUE(log.IsUpToDate(1, 4));
  EXPECT_FALSE(log.IsUpToDate(2, 3));
  EXPECT_FALSE(log.IsUpToDate(5, 2));
}

}  // namespace
}  // namespace tessera::raft
