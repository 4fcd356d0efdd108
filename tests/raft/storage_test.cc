// Conformance tests of raft::MemoryStorage against the Storage contract in
// raft/storage.h.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "raft/storage.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using namespace ::tessera::raft::testing;  // NOLINT

// Storage holding a snapshot at 3 (term 3) and entries 4 (term 4), 5 (term 5).
std::unique_ptr<MemoryStorage> Sample() {
  auto s = std::make_unique<MemoryStorage>();
  raftpb::Snapshot snap;
  snap.mutable_metadata()->set_index(3);
  snap.mutable_metadata()->set_term(3);
  EXPECT_THAT(s->ApplySnapshot(snap), IsOk());
  EXPECT_THAT(s->Append({Ent(4, 4), Ent(5, 5)}), IsOk());
  return s;
}

std::vector<uint64_t> Indexes(const std::vector<raftpb::Entry>& ents) {
  std::vector<uint64_t> out;
  for (const auto& e : ents) out.push_back(e.index());
  return out;
}

TEST(MemoryStorage, EmptyStorageHasDummyAtZero) {
  MemoryStorage s;
  EXPECT_EQ(s.FirstIndex(), 1u);
  EXPECT_EQ(s.LastIndex(), 0u);
  EXPECT_THAT(s.Term(0), IsOk());
  EXPECT_EQ(*s.Term(0), 0u);
  EXPECT_THAT(s.Term(1), StatusIs(absl::StatusCode::kUnavailable));
  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(s.InitialState(&hs, &cs), IsOk());
  EXPECT_EQ(cs.voters_size(), 0);
}

TEST(MemoryStorage, TermOfSnapshotIndexIsAnswerable) {
  auto s = Sample();
  EXPECT_THAT(s->Term(2), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_TRUE(IsCompacted(s->Term(2).status()));
  EXPECT_EQ(*s->Term(3), 3u);
  EXPECT_EQ(*s->Term(4), 4u);
  EXPECT_EQ(*s->Term(5), 5u);
  EXPECT_THAT(s->Term(6), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(s->FirstIndex(), 4u);
  EXPECT_EQ(s->LastIndex(), 5u);
}

TEST(MemoryStorage, EntriesBoundsAndSizeLimit) {
  auto s = Sample();
  ASSERT_THAT(s->Append({Ent(6, 6, std::string(100, 'x'))}), IsOk());
  EXPECT_THAT(s->Entries(3, 5, UINT64_MAX), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(s->Entries(4, 8, UINT64_MAX), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(Indexes(*s->Entries(4, 7, UINT64_MAX)), (std::vector<uint64_t>{4, 5, 6}));
  EXPECT_EQ(Indexes(*s->Entries(4, 4, UINT64_MAX)), (std::vector<uint64_t>{}));
  // At least one entry even if it alone exceeds the limit.
  EXPECT_EQ(Indexes(*s->Entries(4, 7, 0)), (std::vector<uint64_t>{4}));
  const uint64_t two = EntrySize(Ent(4, 4)) + EntrySize(Ent(5, 5));
  EXPECT_EQ(Indexes(*s->Entries(4, 7, two)), (std::vector<uint64_t>{4, 5}));
  EXPECT_EQ(Indexes(*s->Entries(4, 7, two + 1)), (std::vector<uint64_t>{4, 5}));
}

TEST(MemoryStorage, AppendTruncatesConflictingSuffix) {
  auto s = Sample();
  ASSERT_THAT(s->Append({Ent(5, 6), Ent(6, 6)}), IsOk());
  EXPECT_EQ(s->LastIndex(), 6u);
  EXPECT_EQ(*s->Term(5), 6u);
  ASSERT_THAT(s->Append({Ent(4, 7)}), IsOk());
  EXPECT_EQ(s->LastIndex(), 4u);
  EXPECT_EQ(*s->Term(4), 7u);
}

TEST(MemoryStorage, AppendSkipsCompactedPrefixAndRejectsGaps) {
  auto s = Sample();
  ASSERT_THAT(s->Append({Ent(2, 2), Ent(3, 3), Ent(4, 4), Ent(5, 5), Ent(6, 5)}), IsOk());
  EXPECT_EQ(s->LastIndex(), 6u);
  EXPECT_EQ(*s->Term(3), 3u);
  ASSERT_THAT(s->Append({Ent(1, 1), Ent(2, 2)}), IsOk());  // all compacted: no-op
  EXPECT_EQ(s->LastIndex(), 6u);
  EXPECT_THAT(s->Append({Ent(8, 5)}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(s->Append({Ent(7, 5), Ent(9, 5)}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(MemoryStorage, CompactKeepsTermOfCompactIndex) {
  auto s = Sample();
  ASSERT_THAT(s->Append({Ent(6, 5), Ent(7, 5)}), IsOk());
  EXPECT_THAT(s->Compact(3), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(s->Compact(8), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_THAT(s->Compact(5), IsOk());
  EXPECT_EQ(s->FirstIndex(), 6u);
  EXPECT_EQ(s->LastIndex(), 7u);
  EXPECT_EQ(*s->Term(5), 5u);
  EXPECT_THAT(s->Entries(5, 7, UINT64_MAX), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_EQ(Indexes(*s->Entries(6, 8, UINT64_MAX)), (std::vector<uint64_t>{6, 7}));
  ASSERT_THAT(s->Compact(7), IsOk());  // compacting everything leaves an empty log
  EXPECT_EQ(s->FirstIndex(), 8u);
  EXPECT_EQ(s->LastIndex(), 7u);
}

TEST(MemoryStorage, CreateSnapshot) {
  auto s = Sample();
  raftpb::ConfState cs = Voters({1, 2, 3});
  EXPECT_THAT(s->CreateSnapshot(3, &cs, "x").status(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(s->CreateSnapshot(6, &cs, "x").status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  absl::StatusOr<raftpb::Snapshot> snap = s->CreateSnapshot(5, &cs, "data");
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ(snap->metadata().index(), 5u);
  EXPECT_EQ(snap->metadata().term(), 5u);
  EXPECT_EQ(snap->metadata().conf_state().voters_size(), 3);
  EXPECT_EQ(snap->data(), "data");
  EXPECT_EQ(s->Snapshot()->metadata().index(), 5u);
  // Creating a snapshot does not compact.
  EXPECT_EQ(s->FirstIndex(), 4u);
}

TEST(MemoryStorage, ApplySnapshotReplacesLogAndRejectsOlder) {
  auto s = Sample();
  raftpb::Snapshot snap;
  snap.mutable_metadata()->set_index(10);
  snap.mutable_metadata()->set_term(7);
  *snap.mutable_metadata()->mutable_conf_state() = Voters({1});
  ASSERT_THAT(s->ApplySnapshot(snap), IsOk());
  EXPECT_EQ(s->FirstIndex(), 11u);
  EXPECT_EQ(s->LastIndex(), 10u);
  EXPECT_EQ(*s->Term(10), 7u);
  raftpb::HardState hs;
  raftpb::ConfState cs;
  ASSERT_THAT(s->InitialState(&hs, &cs), IsOk());
  EXPECT_EQ(cs.voters_size(), 1);
  snap.mutable_metadata()->set_index(9);
  EXPECT_THAT(s->ApplySnapshot(snap), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(MemoryStorage, HardStateRoundTrip) {
  MemoryStorage s;
  raftpb::HardState hs;
  hs.set_term(3);
  hs.set_vote(2);
  hs.set_commit(0);
  s.SetHardState(hs);
  raftpb::HardState got;
  raftpb::ConfState cs;
  ASSERT_THAT(s.InitialState(&got, &cs), IsOk());
  EXPECT_EQ(got.term(), 3u);
  EXPECT_EQ(got.vote(), 2u);
}

}  // namespace
}  // namespace tessera::raft
