// Tests of the RawNode interface: config validation, the Ready contract,
// bootstrapping and restart.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using namespace ::tessera::raft::testing;  // NOLINT

TEST(RawNode, CreateValidatesConfig) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1}));
  Config c = TestConfig(1, &s);
  c.id = 0;
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, nullptr);
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, &s, /*election=*/2, /*heartbeat=*/2);
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, &s);
  c.max_inflight_msgs = 0;
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, &s);
  c.read_only_option = ReadOnlyOption::kLeaseBased;
  c.max_clock_drift_ticks = 8;
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, &s);
  c.read_only_option = ReadOnlyOption::kLeaseBased;
  c.tick_interval = Clock::duration::zero();
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
  c = TestConfig(1, &s);
  EXPECT_THAT(RawNode::Create(c), IsOk());
}

TEST(RawNode, CreateRejectsInconsistentStorage) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1}));
  raftpb::HardState hs;
  hs.set_term(1);
  hs.set_commit(5);  // beyond the last index
  s.SetHardState(hs);
  EXPECT_THAT(RawNode::Create(TestConfig(1, &s)), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(RawNode, StepRejectsLocalMessages) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1, 2}));
  auto node = *RawNode::Create(TestConfig(1, &s));
  for (auto t : {raftpb::MSG_HUP, raftpb::MSG_BEAT, raftpb::MSG_UNREACHABLE,
                 raftpb::MSG_SNAP_STATUS, raftpb::MSG_CHECK_QUORUM}) {
    EXPECT_THAT(node->Step(Msg(2, 1, t)), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  // Responses from non-members are ignored.
  EXPECT_THAT(node->Step(Msg(9, 1, raftpb::MSG_APP_RESP, 1)), IsOk());
}

// The documented bootstrap: a snapshot at index 1 with the voters.
TEST(RawNode, SingleNodeBootstrapProposeApply) {
  MemoryStorage storage;
  raftpb::Snapshot boot;
  boot.mutable_metadata()->set_index(1);
  boot.mutable_metadata()->set_term(1);
  boot.mutable_metadata()->mutable_conf_state()->add_voters(1);
  ASSERT_THAT(storage.ApplySnapshot(boot), IsOk());
  Config config;
  config.id = 1;
  config.storage = &storage;
  auto node = *RawNode::Create(config);
  EXPECT_FALSE(node->HasReady());
  ASSERT_THAT(node->Campaign(), IsOk());
  ASSERT_THAT(node->Propose("hello"), IsOk());
  std::vector<std::string> applied;
  while (node->HasReady()) {
    Ready rd = node->GetReady();
    ASSERT_THAT(storage.Append(rd.entries), IsOk());
    if (rd.hard_state) storage.SetHardState(*rd.hard_state);
    for (const auto& e : rd.committed_entries) {
      if (!e.data().empty()) applied.push_back(e.data());
    }
    node->Advance(rd);
  }
  EXPECT_THAT(applied, ElementsAre("hello"));
  EXPECT_EQ(node->role(), Role::kLeader);
  EXPECT_EQ(node->commit_index(), 3u);
  EXPECT_EQ(node->applied_index(), 3u);
  // Idle: ticks produce no work for a single-node leader.
  for (int i = 0; i < 100; ++i) node->Tick();
  EXPECT_FALSE(node->HasReady());
}

// The uncommitted-size budget is given back when committed entries are
// applied, even though the application moves their data out to apply it (as
// the server's node does). It once was not: every shard's leader refused all
// proposals for good after max_uncommitted_entries_size bytes of writes.
TEST(RawNode, ApplyingWithDataMovedOutReleasesTheUncommittedBudget) {
  MemoryStorage storage;
  Bootstrap(&storage, Voters({1}));
  Config config = TestConfig(1, &storage);
  config.max_uncommitted_entries_size = 1000;
  auto node = *RawNode::Create(config);
  ASSERT_THAT(node->Campaign(), IsOk());
  int applied = 0;
  // 50 x 100 bytes: five times the budget, proposed and applied in turn.
  for (int i = 0; i < 50; ++i) {
    ASSERT_THAT(node->Propose(std::string(100, 'v')), IsOk()) << "proposal " << i;
    for (int cycle = 0; cycle < 10 && node->HasReady(); ++cycle) {
      Ready rd = node->GetReady();
      ASSERT_THAT(storage.Append(rd.entries), IsOk());
      if (rd.hard_state) storage.SetHardState(*rd.hard_state);
      for (raftpb::Entry& e : rd.committed_entries) {
        const std::string data = std::move(*e.mutable_data());
        if (!data.empty()) ++applied;
      }
      node->Advance(rd);
    }
  }
  EXPECT_EQ(applied, 50);
}

TEST(RawNode, ReadyCarriesStateToPersistWithTheMessagesThatDependOnIt) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1, 2}));
  Config c = TestConfig(1, &s);
  c.pre_vote = false;
  auto node = *RawNode::Create(c);
  ASSERT_THAT(node->Campaign(), IsOk());
  Ready rd = node->GetReady();
  // The vote for ourselves is in the same Ready as the MsgVote it enables.
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->term(), 1u);
  EXPECT_EQ(rd.hard_state->vote(), 1u);
  EXPECT_TRUE(rd.must_sync);
  ASSERT_TRUE(rd.soft_state.has_value());
  EXPECT_EQ(rd.soft_state->role, Role::kCandidate);
  ASSERT_EQ(rd.messages.size(), 1u);
  EXPECT_EQ(rd.messages[0].type(), raftpb::MSG_VOTE);
  s.SetHardState(*rd.hard_state);
  node->Advance(rd);
  raftpb::Message resp = Msg(2, 1, raftpb::MSG_VOTE_RESP, 1);
  ASSERT_THAT(node->Step(resp), IsOk());
  rd = node->GetReady();
  // The new leader's entry and the MsgApp carrying it come together: the
  // entry must be persisted before the message is sent.
  ASSERT_EQ(rd.entries.size(), 1u);
  EXPECT_EQ(rd.entries[0].index(), 2u);
  EXPECT_TRUE(rd.must_sync);
  ASSERT_EQ(rd.messages.size(), 1u);
  EXPECT_EQ(rd.messages[0].type(), raftpb::MSG_APP);
  EXPECT_TRUE(rd.committed_entries.empty());  // not yet on a quorum
  ASSERT_THAT(s.Append(rd.entries), IsOk());
  node->Advance(rd);
  EXPECT_FALSE(node->HasReady());
  // A commit-only change need not be synced.
  raftpb::Message ack = Msg(2, 1, raftpb::MSG_APP_RESP, 1);
  ack.set_index(2);
  ASSERT_THAT(node->Step(ack), IsOk());
  rd = node->GetReady();
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->commit(), 2u);
  EXPECT_FALSE(rd.must_sync);
  ASSERT_EQ(rd.committed_entries.size(), 1u);
  node->Advance(rd);
}

TEST(RawNode, RestartRecoversPersistedStateAndReappliesAfterApplied) {
  Network net({1, 2, 3});
  net.Elect(1);
  for (std::string d : {"a", "b", "c"}) ASSERT_THAT(net.node(1)->Propose(d), IsOk());
  net.Stabilize();
  const uint64_t term = net.node(2)->term();
  const uint64_t commit = net.node(2)->commit_index();
  net.Restart(2);
  EXPECT_EQ(net.node(2)->term(), term);
  EXPECT_EQ(net.node(2)->commit_index(), commit);
  EXPECT_EQ(net.node(2)->role(), Role::kFollower);
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(2), ElementsAre("a", "b", "c"));  // re-applied
  // With Config::applied, only later entries come back.
  MemoryStorage* s = net.storage(3);
  Config c = TestConfig(3, s);
  c.applied = commit - 1;
  auto node = *RawNode::Create(c);
  Ready rd = node->GetReady();
  ASSERT_EQ(rd.committed_entries.size(), 1u);
  EXPECT_EQ(rd.committed_entries[0].data(), "c");
}

TEST(RawNode, RestartedLeaderBecomesFollowerAndRejoins) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->Propose("a"), IsOk());
  net.Stabilize();
  net.Restart(1);
  EXPECT_EQ(net.node(1)->role(), Role::kFollower);
  net.TickAll(50);
  ASSERT_THAT(net.node(2)->Propose("b"), IsOk());
  net.Stabilize();
  for (uint64_t id : {1, 2, 3}) EXPECT_THAT(net.AppliedData(id), ElementsAre("a", "b"));
}

TEST(RawNodeDeathTest, JoinerWithoutMembershipRefusesToInventAGroup) {
  // A group bootstrapped at index 0 replicates its log from index 1, so a
  // joiner never learns the initial membership: raft crashes rather than
  // apply "add 4" to an empty config.
  MemoryStorage s;
  auto node = *RawNode::Create(TestConfig(4, &s));
  EXPECT_DEATH(node->ApplyConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4)),
               "without knowing the group's configuration");
}

TEST(RawNode, ReadStatesAreReturnedOnce) {
  Network net({1});
  net.Elect(1);
  net.node(1)->ReadIndex("x");
  net.Stabilize();
  ASSERT_EQ(net.read_states(1).size(), 1u);
  EXPECT_EQ(net.read_states(1)[0].index, 2u);
  EXPECT_FALSE(net.node(1)->HasReady());
}

TEST(RawNode, ApplyConfChangeReturnsNewConfState) {
  Network net({1, 2, 3});
  net.Elect(1);
  raftpb::ConfState cs =
      *net.node(1)->ApplyConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 7));
  EXPECT_THAT(std::vector<uint64_t>(cs.learners().begin(), cs.learners().end()), ElementsAre(7));
}

TEST(RawNode, AnInvalidCommittedConfChangeIsRefusedAndChangesNothing) {
  Network net({1, 2, 3});
  net.Elect(1);
  // Removing every voter; leaving a joint config that is not joint (an
  // empty change, as an unparsable entry is applied).
  raftpb::ConfChange all;
  for (uint64_t id : {1, 2, 3}) {
    raftpb::ConfChangeSingle* c = all.add_changes();
    c->set_type(raftpb::CONF_CHANGE_REMOVE_NODE);
    c->set_node_id(id);
  }
  for (const raftpb::ConfChange& cc : {all, raftpb::ConfChange()}) {
    absl::StatusOr<raftpb::ConfState> cs = net.node(2)->ApplyConfChange(cc);
    EXPECT_FALSE(cs.ok()) << cc.DebugString();
  }
  raftpb::ConfState now = *net.node(2)->ApplyConfChange(
      raftpb::ConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 4)));
  EXPECT_THAT(std::vector<uint64_t>(now.voters().begin(), now.voters().end()),
              ::testing::UnorderedElementsAre(1, 2, 3));
  ASSERT_THAT(net.node(1)->Propose("still works"), IsOk());
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(2), ::testing::Contains("still works"));
}

}  // namespace
}  // namespace tessera::raft
