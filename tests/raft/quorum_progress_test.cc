// Tests of quorum computations, Inflights, Progress and conf changes.
#include <map>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "raft/confchange.h"
#include "raft/progress.h"
#include "raft/quorum.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using namespace ::tessera::raft::testing;  // NOLINT

uint64_t Committed(const JointConfig& c, const std::map<uint64_t, uint64_t>& acked) {
  return c.CommittedIndex([&](uint64_t id, uint64_t* idx) {
    auto it = acked.find(id);
    if (it == acked.end()) return false;
    *idx = it->second;
    return true;
  });
}

TEST(Quorum, MajorityCommittedIndex) {
  JointConfig c;
  c.incoming = MajorityConfig({1, 2, 3});
  EXPECT_EQ(Committed(c, {{1, 5}, {2, 3}, {3, 1}}), 3u);
  EXPECT_EQ(Committed(c, {{1, 5}}), 0u);  // missing acks count as 0
  EXPECT_EQ(Committed(c, {{1, 5}, {2, 5}}), 5u);
  c.incoming = MajorityConfig({1, 2, 3, 4});
  EXPECT_EQ(Committed(c, {{1, 5}, {2, 4}, {3, 3}, {4, 2}}), 3u);  // 3 of 4
}

TEST(Quorum, JointCommittedIndexIsMinOfBothMajorities) {
  JointConfig c;
  c.incoming = MajorityConfig({1, 4, 5});
  c.outgoing = MajorityConfig({1, 2, 3});
  EXPECT_EQ(Committed(c, {{1, 9}, {4, 9}, {5, 9}, {2, 1}, {3, 1}}), 1u);
  EXPECT_EQ(Committed(c, {{1, 9}, {4, 9}, {5, 9}, {2, 7}, {3, 1}}), 7u);
}

TEST(Quorum, VoteResults) {
  MajorityConfig m({1, 2, 3});
  EXPECT_EQ(m.Vote({{1, true}, {2, true}}), VoteResult::kWon);
  EXPECT_EQ(m.Vote({{1, true}}), VoteResult::kPending);
  EXPECT_EQ(m.Vote({{1, true}, {2, false}, {3, false}}), VoteResult::kLost);
  EXPECT_EQ(MajorityConfig().Vote({}), VoteResult::kWon);
  JointConfig j;
  j.incoming = MajorityConfig({1, 2, 3});
  j.outgoing = MajorityConfig({3, 4, 5});
  EXPECT_EQ(j.Vote({{1, true}, {2, true}, {3, true}}), VoteResult::kPending);
  EXPECT_EQ(j.Vote({{1, true}, {2, true}, {3, true}, {4, true}}), VoteResult::kWon);
  EXPECT_EQ(j.Vote({{1, true}, {2, true}, {4, false}, {5, false}}), VoteResult::kLost);
}

TEST(Inflights, WindowFillsAndFrees) {
  Inflights in(3, 0);
  in.Add(1, 10);
  in.Add(2, 10);
  EXPECT_FALSE(in.Full());
  in.Add(5, 10);
  EXPECT_TRUE(in.Full());
  in.FreeLE(2);
  EXPECT_EQ(in.Count(), 1u);
  EXPECT_EQ(in.bytes(), 10u);
  in.Add(6, 1);
  in.Add(7, 1);  // wraps around the ring
  EXPECT_TRUE(in.Full());
  in.FreeFirstOne();
  EXPECT_EQ(in.Count(), 2u);
  in.FreeLE(100);
  EXPECT_EQ(in.Count(), 0u);
  EXPECT_EQ(in.bytes(), 0u);
}

TEST(Inflights, ByteBudget) {
  Inflights in(100, 25);
  in.Add(1, 10);
  in.Add(2, 10);
  EXPECT_FALSE(in.Full());
  in.Add(3, 10);
  EXPECT_TRUE(in.Full());
  in.FreeLE(1);
  EXPECT_FALSE(in.Full());
}

TEST(Progress, StateTransitions) {
  Progress pr(5, 4, 0, false);
  pr.match = 3;
  EXPECT_EQ(pr.state, ProgressState::kProbe);
  pr.SentEntries(6, 10);
  EXPECT_TRUE(pr.IsPaused());  // probe: one message until answered
  EXPECT_TRUE(pr.MaybeUpdate(6));
  EXPECT_FALSE(pr.IsPaused());
  pr.BecomeReplicate();
  EXPECT_EQ(pr.next, 7u);
  pr.SentEntries(9, 10);
  EXPECT_EQ(pr.next, 10u);  // optimistic
  EXPECT_EQ(pr.inflights.Count(), 1u);
  pr.BecomeSnapshot(20);
  EXPECT_TRUE(pr.IsPaused());
  pr.BecomeProbe();
  EXPECT_EQ(pr.next, 21u);  // resume after the snapshot
}

TEST(Progress, MaybeDecrTo) {
  Progress pr(10, 4, 0, false);
  pr.match = 2;
  EXPECT_FALSE(pr.MaybeDecrTo(5, 5));  // stale: not our probe (next-1 = 9)
  EXPECT_TRUE(pr.MaybeDecrTo(9, 4));
  EXPECT_EQ(pr.next, 5u);  // jumps to the hint + 1
  EXPECT_TRUE(pr.MaybeDecrTo(4, 0));
  EXPECT_EQ(pr.next, 3u);  // never below match + 1
  pr.BecomeReplicate();
  pr.SentEntries(8, 1);
  EXPECT_FALSE(pr.MaybeDecrTo(2, 0));  // <= match: stale
  EXPECT_TRUE(pr.MaybeDecrTo(5, 0));
  EXPECT_EQ(pr.next, 3u);
}

ProgressTracker Tracker(std::initializer_list<uint64_t> voters) {
  ProgressTracker t(8, 0);
  auto r = RestoreConfig(Voters(voters), 8, 0, 10);
  EXPECT_THAT(r, IsOk());
  t.config = r->first;
  t.progress = r->second;
  return t;
}

TEST(ConfChange, SimpleChangesAtMostOneVoter) {
  ProgressTracker t = Tracker({1, 2, 3});
  EXPECT_THAT(Changer(t, 10).Simple(SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4)), IsOk());
  raftpb::ConfChange two = SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4);
  *two.add_changes() = SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 5).changes(0);
  EXPECT_THAT(Changer(t, 10).Simple(two), StatusIs(absl::StatusCode::kInvalidArgument));
  // Adding a learner does not change voters.
  raftpb::ConfChange l = SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4);
  *l.add_changes() = SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 5).changes(0);
  EXPECT_THAT(Changer(t, 10).Simple(l), IsOk());
}

TEST(ConfChange, EnterAndLeaveJoint) {
  ProgressTracker t = Tracker({1, 2, 3});
  raftpb::ConfChange cc = SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4);
  *cc.add_changes() = SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 3).changes(0);
  auto joint = Changer(t, 10).EnterJoint(true, cc);
  ASSERT_THAT(joint, IsOk());
  t.config = joint->first;
  t.progress = joint->second;
  raftpb::ConfState cs = t.ConfState();
  EXPECT_THAT(std::vector<uint64_t>(cs.voters().begin(), cs.voters().end()),
              ::testing::ElementsAre(1, 2, 4));
  EXPECT_THAT(std::vector<uint64_t>(cs.voters_outgoing().begin(), cs.voters_outgoing().end()),
              ::testing::ElementsAre(1, 2, 3));
  EXPECT_THAT(std::vector<uint64_t>(cs.learners_next().begin(), cs.learners_next().end()),
              ::testing::ElementsAre(3));
  EXPECT_TRUE(cs.auto_leave());
  EXPECT_THAT(Changer(t, 10).EnterJoint(false, cc),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(Changer(t, 10).Simple(cc), StatusIs(absl::StatusCode::kFailedPrecondition));
  // Restoring from the ConfState gives the same config.
  auto restored = RestoreConfig(cs, 8, 0, 10);
  ASSERT_THAT(restored, IsOk());
  EXPECT_TRUE(restored->first == t.config);
  auto left = Changer(t, 10).LeaveJoint();
  ASSERT_THAT(left, IsOk());
  t.config = left->first;
  t.progress = left->second;
  cs = t.ConfState();
  EXPECT_EQ(cs.voters_outgoing_size(), 0);
  EXPECT_THAT(std::vector<uint64_t>(cs.learners().begin(), cs.learners().end()),
              ::testing::ElementsAre(3));
  EXPECT_TRUE(t.progress.at(3).is_learner);
  EXPECT_FALSE(cs.auto_leave());
  EXPECT_THAT(Changer(t, 10).LeaveJoint(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(ConfChange, RemovingAllVotersIsInvalid) {
  ProgressTracker t = Tracker({1});
  EXPECT_THAT(Changer(t, 10).Simple(SingleChange(raftpb::CONF_CHANGE_REMOVE_NODE, 1)),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::raft
