// Feature tests of the Raft state machine: election, PreVote, CheckQuorum,
// replication and flow control, commitment, snapshots, reads, membership
// changes, leadership transfer, proposal forwarding.
#include <algorithm>
#include <map>
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
using ::testing::HasSubstr;
using namespace ::tessera::raft::testing;  // NOLINT

// ---------------------------------------------------------------- election

TEST(Election, ThreeNodesElectOneLeader) {
  Network net({1, 2, 3});
  net.Elect(1);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_EQ(net.node(2)->role(), Role::kFollower);
  EXPECT_EQ(net.node(3)->role(), Role::kFollower);
  EXPECT_EQ(net.node(2)->leader_id(), 1u);
  EXPECT_EQ(net.node(1)->term(), 1u);
  // The leader's empty entry is committed everywhere.
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(net.node(id)->commit_index(), 2u);
}

TEST(Election, ElectionByTicksHappensWithinTwoTimeouts) {
  Network net({1, 2, 3});
  int ticks = 0;
  while (ticks < 40) {
    net.TickAll();
    ++ticks;
    bool leader = false;
    for (uint64_t id : {1, 2, 3}) leader |= net.node(id)->role() == Role::kLeader;
    if (leader) break;
  }
  EXPECT_LT(ticks, 2 * 10 + 1);
}

TEST(Replication, ProposalsCommitOnAllNodes) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->Propose("a"), IsOk());
  ASSERT_THAT(net.node(1)->Propose("b"), IsOk());
  net.Stabilize();
  for (uint64_t id : {1, 2, 3}) {
    EXPECT_THAT(net.AppliedData(id), ElementsAre("a", "b"));
    EXPECT_EQ(net.node(id)->commit_index(), 4u);
  }
}

uint64_t LeaderOf(Network& net) {
  for (uint64_t id : net.ids()) {
    if (net.node(id)->role() == Role::kLeader) return id;
  }
  return 0;
}

void NoPreVote(Config& c) {
  c.pre_vote = false;
  c.check_quorum = false;
}

// ---------------------------------------------------------------- PreVote

TEST(PreVote, IsolatedNodeDoesNotInflateItsTerm) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  net.Tick(3, 100);
  net.Stabilize();
  EXPECT_EQ(net.node(3)->term(), 1u);  // PreVote never succeeded
  EXPECT_EQ(net.node(3)->role(), Role::kPreCandidate);
  net.Recover();
  net.TickAll(3);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_EQ(net.node(1)->term(), 1u);
  EXPECT_EQ(net.node(3)->role(), Role::kFollower);
  EXPECT_EQ(net.node(3)->leader_id(), 1u);
}

TEST(PreVote, WithoutPreVoteIsolatedNodeInflatesTermAndDisruptsOnReturn) {
  Network net({1, 2, 3}, NoPreVote);
  net.Elect(1);
  net.Isolate(3);
  net.Tick(3, 100);
  net.Stabilize();
  EXPECT_GT(net.node(3)->term(), 3u);
  net.Recover();
  net.TickAll(20);
  // The leader learns the higher term and steps down: the disruption PreVote
  // avoids.
  EXPECT_GT(net.node(1)->term(), 1u);
}

TEST(PreVote, RoundWonThenRealElection) {
  Network net({1, 2, 3});
  net.Elect(1);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  bool saw_prevote = false, saw_vote = false;
  for (const auto& m : net.delivered()) {
    saw_prevote |= m.type() == raftpb::MSG_PRE_VOTE;
    saw_vote |= m.type() == raftpb::MSG_VOTE;
  }
  EXPECT_TRUE(saw_prevote);
  EXPECT_TRUE(saw_vote);
}

TEST(PreVote, LaggingNodeCannotWinPreVote) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  // Let the followers' leader lease lapse so they would vote.
  net.Isolate(1);
  net.Tick(2, 9);
  net.Recover();
  net.Isolate(1);
  ASSERT_THAT(net.node(3)->Campaign(), IsOk());
  net.Stabilize();
  EXPECT_NE(net.node(3)->role(), Role::kLeader);
  EXPECT_EQ(net.node(3)->term(), 1u);  // a lost PreVote does not bump the term
}

// ---------------------------------------------------------------- CheckQuorum

TEST(CheckQuorum, IsolatedLeaderStepsDown) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);
  net.Tick(1, 10);  // first check: followers were active in this period
  net.Stabilize();
  net.Tick(1, 10);
  net.Stabilize();
  EXPECT_EQ(net.node(1)->role(), Role::kFollower);
  EXPECT_EQ(net.node(1)->leader_id(), 0u);
}

TEST(CheckQuorum, ConnectedLeaderStaysLeader) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.TickAll(100);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_EQ(net.node(1)->term(), 1u);
}

TEST(CheckQuorum, FollowersIgnoreVotesWhileLeaderIsLive) {
  // PreVote off to exercise stickiness alone.
  Network net({1, 2, 3}, [](Config& c) {
    c.pre_vote = false;
    c.check_quorum = true;
  });
  net.Elect(1);
  net.Isolate(3);
  net.Tick(3, 20);  // 3 campaigns in term 2 (unheard)
  net.Stabilize();
  ASSERT_EQ(net.node(3)->role(), Role::kCandidate);
  net.Recover();
  ASSERT_THAT(net.node(3)->Campaign(), IsOk());
  net.Stabilize();
  // 2 heard from leader 1 within the election timeout: it ignores 3's vote.
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_EQ(net.node(2)->term(), 1u);
  EXPECT_NE(net.node(3)->role(), Role::kLeader);
}

TEST(CheckQuorum, FollowersVoteOnceLeaderLeaseExpired) {
  Network net({1, 2, 3}, [](Config& c) {
    c.pre_vote = false;
    c.check_quorum = true;
  });
  net.Elect(1);
  net.Isolate(1);
  net.Tick(2, 10);  // 2's election_elapsed reaches the timeout
  ASSERT_THAT(net.node(3)->Campaign(), IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(3)->role(), Role::kLeader);
}

// ---------------------------------------------------------------- replication

TEST(Replication, ProgressMovesFromProbeToReplicate) {
  Network net({1, 2, 3});
  net.Elect(1);
  Progress* pr = net.raft(1).tracker().Find(2);
  ASSERT_NE(pr, nullptr);
  EXPECT_EQ(pr->state, ProgressState::kReplicate);
  EXPECT_EQ(pr->match, 2u);  // bootstrap snapshot at 1, empty entry at 2
  EXPECT_EQ(pr->next, 3u);
}

TEST(Replication, ProbeSendsOneAppendUntilAnswered) {
  auto t = NewTestRaft(1, {1, 2});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();  // 2 starts in probe
  t->Take();
  Progress* pr = t->r().tracker().Find(2);
  ASSERT_EQ(pr->state, ProgressState::kProbe);
  auto apps_to_2 = [&] {
    int n = 0;
    for (const auto& m : t->Take()) n += m.type() == raftpb::MSG_APP && m.to() == 2;
    return n;
  };
  ASSERT_THAT(t->node->Propose("a"), IsOk());
  EXPECT_EQ(apps_to_2(), 1);
  EXPECT_TRUE(pr->probe_sent);
  ASSERT_THAT(t->node->Propose("b"), IsOk());
  ASSERT_THAT(t->node->Propose("c"), IsOk());
  EXPECT_EQ(apps_to_2(), 0);  // paused while the probe is unanswered
  // A heartbeat response unpauses: one more probe.
  ASSERT_THAT(t->r().Step(Msg(2, 1, raftpb::MSG_HEARTBEAT_RESP, 1)), IsOk());
  EXPECT_EQ(apps_to_2(), 1);
  // An ack moves 2 to replicate, and the rest is streamed.
  raftpb::Message ack = Msg(2, 1, raftpb::MSG_APP_RESP, 1);
  ack.set_index(1);
  ASSERT_THAT(t->r().Step(ack), IsOk());
  EXPECT_EQ(pr->state, ProgressState::kReplicate);
  EXPECT_EQ(apps_to_2(), 1);
  EXPECT_EQ(pr->next, 5u);
}

// Read rounds send heartbeats every cycle; their answers must not each
// resend a probe's entries (up to max_size_per_msg apiece) to a lagging
// follower: at most one resend per heartbeat interval, by the leader tick
// the answers echo.
TEST(Replication, HeartbeatAnswersResendAProbeOncePerHeartbeatInterval) {
  auto t = NewTestRaft(1, {1, 2}, {.heartbeat = 3});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();  // 2 starts in probe
  ASSERT_THAT(t->node->Propose("a"), IsOk());
  t->Take();  // the first probe
  Progress* pr = t->r().tracker().Find(2);
  ASSERT_TRUE(pr->probe_sent);
  auto apps_to_2 = [&] {
    int n = 0;
    for (const auto& m : t->Take()) n += m.type() == raftpb::MSG_APP && m.to() == 2;
    return n;
  };
  auto answer = [&](uint64_t echoed_tick) {
    raftpb::Message m = Msg(2, 1, raftpb::MSG_HEARTBEAT_RESP, t->r().term());
    m.set_index(echoed_tick);
    ASSERT_THAT(t->r().Step(m), IsOk());
  };
  for (int i = 0; i < 50; ++i) answer(1);  // 50 read rounds in one tick
  EXPECT_EQ(apps_to_2(), 1);
  answer(2);
  answer(3);
  EXPECT_EQ(apps_to_2(), 0);  // within the heartbeat interval
  answer(4);
  EXPECT_EQ(apps_to_2(), 1);
}

TEST(Replication, InflightWindowBoundsOutstandingAppends) {
  Network net({1, 2}, [](Config& c) { c.max_inflight_msgs = 2; });
  net.Elect(1);
  ASSERT_EQ(net.raft(1).tracker().Find(2)->state, ProgressState::kReplicate);
  net.Cut(1, 2);  // appends are lost (and their acks never come)
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(net.node(1)->Propose("p"), IsOk());
    net.Stabilize();  // one Ready (hence one MsgApp) per proposal
  }
  Progress* pr = net.raft(1).tracker().Find(2);
  EXPECT_EQ(pr->inflights.Count(), 2u);
  EXPECT_TRUE(pr->IsPaused());
  EXPECT_EQ(pr->next, 5u);  // entries 3 and 4 were sent, 5..7 wait
  // Once the link heals, a heartbeat response frees a slot and replication
  // resumes; everything commits.
  net.Recover();
  net.TickAll(3);
  EXPECT_EQ(net.node(2)->commit_index(), 7u);
}

TEST(Replication, InflightBytesBoundOutstandingAppends) {
  Network net({1, 2}, [](Config& c) { c.max_inflight_bytes = 100; });
  net.Elect(1);
  net.Cut(1, 2);
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(net.node(1)->Propose(std::string(60, 'x')), IsOk());
    net.Stabilize();
  }
  Progress* pr = net.raft(1).tracker().Find(2);
  EXPECT_EQ(pr->inflights.Count(), 2u);  // 120 bytes >= 100: full
  EXPECT_TRUE(pr->IsPaused());
}

TEST(Replication, EntriesAreBatchedUpToMaxSizePerMsg) {
  Network net({1, 2}, [](Config& c) { c.max_size_per_msg = 250; });
  net.Elect(1);
  net.Cut(1, 2);
  for (int i = 0; i < 10; ++i) ASSERT_THAT(net.node(1)->Propose(std::string(100, 'x')), IsOk());
  net.Stabilize();
  net.Recover();
  net.delivered().clear();
  net.node(1)->ReportUnreachable(2);  // probe from match again
  net.TickAll(2);
  int apps = 0;
  size_t max_entries = 0;
  for (const auto& m : net.delivered()) {
    if (m.type() != raftpb::MSG_APP || m.to() != 2 || m.entries_size() == 0) continue;
    ++apps;
    max_entries = std::max<size_t>(max_entries, m.entries_size());
  }
  EXPECT_EQ(max_entries, 2u);  // two ~105-byte entries fit in 250 bytes
  EXPECT_GE(apps, 5);
  EXPECT_EQ(net.node(2)->commit_index(), 12u);
}

// A follower with a long divergent tail of an old term is repaired in a few
// round trips thanks to the (reject_hint, hint_term) back-off.
TEST(Replication, FastBackOffSkipsConflictingTerms) {
  std::vector<raftpb::Entry> leader_log = {Ent(1, 1), Ent(2, 1), Ent(3, 1)};
  for (uint64_t i = 4; i <= 30; ++i) leader_log.push_back(Ent(i, 4));
  std::vector<raftpb::Entry> follower_log = {Ent(1, 1), Ent(2, 1), Ent(3, 1)};
  for (uint64_t i = 4; i <= 60; ++i) follower_log.push_back(Ent(i, 2));
  raftpb::HardState hs;
  hs.set_term(4);
  auto leader = NewTestRaft(1, {1, 2}, {.entries = leader_log, .hs = hs});
  auto follower = NewTestRaft(2, {1, 2}, {.entries = follower_log, .hs = hs});
  leader->r().BecomeCandidateForTesting();
  leader->r().BecomeLeaderForTesting();  // term 5, probes 2 at index 31
  leader->Persist();
  raftpb::Message hb = Msg(1, 2, raftpb::MSG_HEARTBEAT, 5);
  ASSERT_THAT(follower->r().Step(hb), IsOk());
  follower->Take();
  leader->node->ReportUnreachable(2);  // make sure we are probing
  raftpb::Message probe = Msg(2, 1, raftpb::MSG_HEARTBEAT_RESP, 5);
  ASSERT_THAT(leader->r().Step(probe), IsOk());
  int rejections = 0;
  for (int round = 0; round < 20; ++round) {
    std::vector<raftpb::Message> to_follower = leader->Take();
    if (to_follower.empty()) break;
    for (auto& m : to_follower) {
      if (m.to() != 2) continue;
      ASSERT_THAT(follower->r().Step(m), IsOk());
    }
    follower->Persist();
    for (auto& m : follower->Take()) {
      rejections += m.reject();
      ASSERT_THAT(leader->r().Step(m), IsOk());
    }
  }
  EXPECT_LE(rejections, 2);
  EXPECT_EQ(follower->r().log().LastIndex(), 31u);
  EXPECT_EQ(*follower->r().log().Term(30), 4u);
  EXPECT_EQ(*follower->r().log().Term(4), 4u);
}

TEST(Replication, ProposalsBetweenReadiesShareOneAppend) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.delivered().clear();
  for (int i = 0; i < 10; ++i) ASSERT_THAT(net.node(1)->Propose("p"), IsOk());
  net.Stabilize();
  int apps = 0;
  for (const auto& m : net.delivered()) {
    if (m.type() == raftpb::MSG_APP && m.entries_size() > 0) {
      ++apps;
      EXPECT_EQ(m.entries_size(), 10);
    }
  }
  EXPECT_EQ(apps, 2);  // one per follower
  EXPECT_EQ(net.node(3)->commit_index(), 12u);
}

TEST(Replication, FollowerProposalIsForwardedToLeader) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(2)->Propose("fwd"), IsOk());
  net.Stabilize();
  for (uint64_t id : {1, 2, 3}) EXPECT_THAT(net.AppliedData(id), ElementsAre("fwd"));
}

TEST(Replication, ProposalWithoutForwardingNamesTheLeader) {
  Network net({1, 2, 3}, [](Config& c) { c.disable_proposal_forwarding = true; });
  net.Elect(1);
  EXPECT_THAT(net.node(2)->Propose("x"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("leader is 1")));
}

TEST(Replication, ProposalWithoutLeaderIsUnavailable) {
  Network net({1, 2, 3});
  EXPECT_THAT(net.node(2)->Propose("x"), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(Replication, UncommittedSizeLimitRejectsProposals) {
  Network net({1, 2, 3}, [](Config& c) { c.max_uncommitted_entries_size = 100; });
  net.Elect(1);
  net.Isolate(1);
  ASSERT_THAT(net.node(1)->Propose(std::string(60, 'a')), IsOk());
  EXPECT_THAT(net.node(1)->Propose(std::string(60, 'b')),
              StatusIs(absl::StatusCode::kResourceExhausted));
  net.Recover();
  net.TickAll(2);
  EXPECT_THAT(net.node(1)->Propose(std::string(60, 'c')), IsOk());
}

// ---------------------------------------------------------------- snapshots

// Compacts the leader's log at its applied index.
void SnapshotAndCompact(Network& net, uint64_t id) {
  const uint64_t applied = net.node(id)->applied_index();
  raftpb::ConfState cs = net.node(id)->conf_state();
  ASSERT_THAT(net.storage(id)->CreateSnapshot(applied, &cs, "state").status(), IsOk());
  ASSERT_THAT(net.storage(id)->Compact(applied), IsOk());
}

TEST(Snapshot, LaggingFollowerIsSentSnapshotAndCatchesUp) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  for (int i = 0; i < 10; ++i) ASSERT_THAT(net.node(1)->Propose("e"), IsOk());
  net.Stabilize();
  SnapshotAndCompact(net, 1);
  EXPECT_EQ(net.storage(1)->FirstIndex(), 13u);
  net.Recover();
  net.delivered().clear();
  net.TickAll(3);
  bool saw_snap = false;
  for (const auto& m : net.delivered()) saw_snap |= m.type() == raftpb::MSG_SNAP && m.to() == 3;
  EXPECT_TRUE(saw_snap);
  EXPECT_EQ(net.storage(3)->FirstIndex(), 13u);  // restored from the snapshot
  EXPECT_EQ(net.node(3)->commit_index(), 12u);
  ASSERT_THAT(net.node(1)->Propose("after"), IsOk());
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(3), ElementsAre("after"));
  EXPECT_EQ(net.raft(1).tracker().Find(3)->state, ProgressState::kReplicate);
}

TEST(Snapshot, ReportSnapshotMovesProgressOutOfSnapshotState) {
  for (bool ok : {true, false}) {
    Network net({1, 2, 3});
    net.Elect(1);
    net.Isolate(3);
    for (int i = 0; i < 5; ++i) ASSERT_THAT(net.node(1)->Propose("e"), IsOk());
    net.Stabilize();
    SnapshotAndCompact(net, 1);
    net.Recover();
    net.DropType(raftpb::MSG_SNAP);  // the transport fails to deliver it
    net.TickAll(1);
    Progress* pr = net.raft(1).tracker().Find(3);
    ASSERT_EQ(pr->state, ProgressState::kSnapshot);
    EXPECT_EQ(pr->pending_snapshot, 7u);
    EXPECT_TRUE(pr->IsPaused());
    net.node(1)->ReportSnapshot(3, ok);
    EXPECT_EQ(pr->state, ProgressState::kProbe);
    EXPECT_TRUE(pr->probe_sent);        // waits for the next heartbeat response
    EXPECT_EQ(pr->next, ok ? 8u : 3u);  // else match + 1
  }
}

TEST(Snapshot, FollowerIgnoresSnapshotOlderThanCommit) {
  auto t = NewTestRaft(2, {1, 2}, {.entries = {Ent(1, 1), Ent(2, 1)}, .hs = [] {
                                     raftpb::HardState hs;
                                     hs.set_term(1);
                                     hs.set_commit(2);
                                     return hs;
                                   }()});
  raftpb::Message m = Msg(1, 2, raftpb::MSG_SNAP, 1);
  m.mutable_snapshot()->mutable_metadata()->set_index(1);
  m.mutable_snapshot()->mutable_metadata()->set_term(1);
  *m.mutable_snapshot()->mutable_metadata()->mutable_conf_state() = Voters({1, 2});
  ASSERT_THAT(t->r().Step(m), IsOk());
  EXPECT_FALSE(t->r().log().HasPendingSnapshot());
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].index(), 2u);  // tells the leader its commit index
}

TEST(Snapshot, RestoredFollowerReportsSnapshotInReady) {
  auto t = NewTestRaft(2, {1, 2});
  raftpb::Message m = Msg(1, 2, raftpb::MSG_SNAP, 3);
  auto* md = m.mutable_snapshot()->mutable_metadata();
  md->set_index(10);
  md->set_term(2);
  *md->mutable_conf_state() = Voters({1, 2, 3});
  m.mutable_snapshot()->set_data("app-state");
  ASSERT_THAT(t->r().Step(m), IsOk());
  EXPECT_EQ(t->node->commit_index(), 10u);
  EXPECT_EQ(t->node->conf_state().voters_size(), 3);
  Ready rd = t->node->GetReady();
  ASSERT_TRUE(rd.snapshot.has_value());
  EXPECT_EQ(rd.snapshot->data(), "app-state");
  EXPECT_TRUE(rd.committed_entries.empty());
  ASSERT_THAT(t->storage.ApplySnapshot(*rd.snapshot), IsOk());
  t->node->Advance(rd);
  EXPECT_EQ(t->node->applied_index(), 10u);
  EXPECT_EQ(t->node->last_index(), 10u);
}

// ---------------------------------------------------------------- reads

TEST(ReadIndex, LeaderConfirmsWithHeartbeatQuorum) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  net.delivered().clear();
  net.node(1)->ReadIndex("r1");
  net.Stabilize();
  ASSERT_EQ(net.read_states(1).size(), 1u);
  EXPECT_EQ(net.read_states(1)[0].index, 3u);
  EXPECT_EQ(net.read_states(1)[0].request_ctx, "r1");
  // No log write happened.
  EXPECT_EQ(net.node(1)->last_index(), 3u);
  bool heartbeat_with_ctx = false;
  for (const auto& m : net.delivered()) {
    heartbeat_with_ctx |= m.type() == raftpb::MSG_HEARTBEAT && m.context() == "r1";
  }
  EXPECT_TRUE(heartbeat_with_ctx);
}

TEST(ReadIndex, NotAnsweredWithoutQuorum) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);
  net.node(1)->ReadIndex("r1");
  net.Stabilize();
  EXPECT_TRUE(net.read_states(1).empty());
  // Acks from one follower (2 of 3 with the leader) suffice.
  net.Recover();
  net.Cut(1, 3);
  net.TickAll(1);  // periodic heartbeats carry the pending context
  ASSERT_EQ(net.read_states(1).size(), 1u);
}

TEST(ReadIndex, FollowerForwardsToLeader) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.node(2)->ReadIndex("f1");
  net.Stabilize();
  ASSERT_EQ(net.read_states(2).size(), 1u);
  EXPECT_EQ(net.read_states(2)[0].index, 2u);
  EXPECT_EQ(net.read_states(2)[0].request_ctx, "f1");
  EXPECT_TRUE(net.read_states(1).empty());
}

TEST(ReadIndex, ConcurrentReadsAreBatchedIntoOneRound) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.delivered().clear();
  for (int i = 0; i < 5; ++i) net.node(1)->ReadIndex("r" + std::to_string(i));
  net.Stabilize();
  int heartbeats = 0;
  for (const auto& m : net.delivered()) heartbeats += m.type() == raftpb::MSG_HEARTBEAT;
  EXPECT_EQ(heartbeats, 2);  // one round, to 2 followers
  ASSERT_EQ(net.read_states(1).size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(net.read_states(1)[i].request_ctx, "r" + std::to_string(i));
}

TEST(ReadIndex, LaterRoundConfirmsEarlierRequests) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.DropType(raftpb::MSG_HEARTBEAT);
  net.node(1)->ReadIndex("a");
  net.Stabilize();
  net.node(1)->ReadIndex("b");
  net.Stabilize();
  EXPECT_TRUE(net.read_states(1).empty());
  net.Recover();
  net.node(1)->ReadIndex("c");
  net.Stabilize();
  ASSERT_EQ(net.read_states(1).size(), 3u);
  EXPECT_EQ(net.read_states(1)[0].request_ctx, "a");
  EXPECT_EQ(net.read_states(1)[2].request_ctx, "c");
}

TEST(ReadIndex, NewLeaderDelaysReadsUntilItCommitsInItsTerm) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.DropType(raftpb::MSG_APP_RESP);  // the new leader cannot commit yet
  net.Isolate(1);
  net.Recover();
  net.DropType(raftpb::MSG_APP_RESP);
  net.Isolate(1);
  net.Tick(2, 10);
  net.Tick(3, 10);
  ASSERT_THAT(net.node(2)->Campaign(), IsOk());
  net.Stabilize();
  ASSERT_EQ(net.node(2)->role(), Role::kLeader);
  ASSERT_EQ(net.node(2)->commit_index(), 2u);  // term-1 entry only
  net.node(2)->ReadIndex("r");
  net.Stabilize();
  EXPECT_TRUE(net.read_states(2).empty());
  net.Recover();
  net.TickAll(2);
  ASSERT_EQ(net.read_states(2).size(), 1u);
  EXPECT_EQ(net.read_states(2)[0].index, 3u);  // the new term's empty entry
}

void LeaseReads(Config& c) { c.read_only_option = ReadOnlyOption::kLeaseBased; }

TEST(ReadIndex, LeaseReadNeedsCheckQuorum) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1}));
  Config c = TestConfig(1, &s);
  c.read_only_option = ReadOnlyOption::kLeaseBased;
  c.check_quorum = false;
  EXPECT_THAT(RawNode::Create(c), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ReadIndex, LeaseReadIsAnsweredLocallyWhileLeaseHolds) {
  Network net({1, 2, 3}, LeaseReads);
  net.Elect(1);
  net.TickAll(1);  // one heartbeat round acked: lease established
  ASSERT_TRUE(net.raft(1).LeaseValid());
  net.delivered().clear();
  net.Isolate(1);
  net.node(1)->ReadIndex("l1");
  net.HandleReady(1);
  ASSERT_EQ(net.read_states(1).size(), 1u);  // no round trip needed
  EXPECT_EQ(net.read_states(1)[0].index, 2u);
  // Isolated, the lease runs out after election - 2 - drift = 7 ticks and the
  // leader falls back to a (failing) heartbeat round.
  net.Tick(1, 8);
  net.Stabilize();
  EXPECT_FALSE(net.raft(1).LeaseValid());
  net.node(1)->ReadIndex("l2");
  net.Stabilize();
  EXPECT_EQ(net.read_states(1).size(), 1u);
}

// Issue 18: ticks stop while a process stalls, time does not. A leader that
// resumes after a stall longer than its lease must not answer from it, even
// though it counted no tick meanwhile (the others may have elected a new
// leader and committed writes).
TEST(ReadIndex, LeaseEndsInClockTimeWhenTheLeaderStalls) {
  Network net({1, 2, 3}, LeaseReads);
  net.Elect(1);
  net.TickAll(1);  // lease established
  ASSERT_TRUE(net.raft(1).LeaseValid());
  net.Isolate(1);
  net.Stall(1, std::chrono::seconds(3));  // no tick, 3 s of clock
  EXPECT_FALSE(net.raft(1).LeaseValid());
  net.node(1)->ReadIndex("after-stall");
  net.Stabilize();
  EXPECT_TRUE(net.read_states(1).empty());  // needs a heartbeat round: cut off
  // Within the lease (7 ticks of 100 ms), a shorter stall keeps it.
  Network net2({1, 2, 3}, LeaseReads);
  net2.Elect(1);
  net2.TickAll(1);
  net2.Stall(1, std::chrono::milliseconds(300));
  EXPECT_TRUE(net2.raft(1).LeaseValid());
}

// The mutation switch restores the old rule, which the randomized test must
// catch (random_test.cc): here, the stalled leader still believes its lease.
TEST(ReadIndex, LeaseInTicksOnlySurvivesAStall) {
  Network net({1, 2, 3}, [](Config& c) {
    LeaseReads(c);
    c.testing.lease_in_ticks_only = true;
  });
  net.Elect(1);
  net.TickAll(1);
  net.Stall(1, std::chrono::seconds(3));
  EXPECT_TRUE(net.raft(1).LeaseValid());
}

// Without any clock reading a leader never holds a lease.
TEST(ReadIndex, NoClockReadingNoLease) {
  MemoryStorage s;
  Bootstrap(&s, Voters({1}));
  Config c = TestConfig(1, &s);
  c.read_only_option = ReadOnlyOption::kLeaseBased;
  auto node = *RawNode::Create(c);
  ASSERT_THAT(node->Campaign(), IsOk());
  for (int i = 0; i < 3; ++i) node->Tick();
  EXPECT_FALSE(node->raft_for_testing().LeaseValid());
  node->SetNow(Clock::time_point() + std::chrono::seconds(1));
  node->Tick();
  EXPECT_TRUE(node->raft_for_testing().LeaseValid());
}

TEST(ReadIndex, LeaseIsChosenPerRequest) {
  Network net({1, 2, 3}, LeaseReads);
  net.Elect(1);
  net.TickAll(1);  // lease established
  ASSERT_TRUE(net.raft(1).LeaseValid());
  net.Isolate(1);
  // A request that declines the lease needs a heartbeat round, which cannot
  // complete while the leader is cut off.
  net.node(1)->ReadIndex("quorum", /*use_lease=*/false);
  net.Stabilize();
  EXPECT_TRUE(net.read_states(1).empty());
  // One that accepts it is answered locally.
  net.node(1)->ReadIndex("lease", /*use_lease=*/true);
  net.HandleReady(1);
  ASSERT_EQ(net.read_states(1).size(), 1u);
  EXPECT_EQ(net.read_states(1)[0].request_ctx, "lease");
  // Healed, the quorum read completes too.
  net.Recover();
  net.TickAll(1);
  net.Stabilize();
  ASSERT_EQ(net.read_states(1).size(), 2u);
  EXPECT_EQ(net.read_states(1)[1].request_ctx, "quorum");
}

// The deposed-leader scenario the lease must survive: the old leader is cut
// off, the others elect a new leader as soon as stickiness allows and commit
// a write; the old leader, still believing it leads (CheckQuorum has not
// fired yet), must not answer a read from its lease with a stale index.
TEST(ReadIndex, DeposedLeaderNeverServesStaleLeaseRead) {
  Network net({1, 2, 3}, LeaseReads);
  net.Elect(1);
  net.TickAll(1);
  ASSERT_TRUE(net.raft(1).LeaseValid());
  net.Isolate(1);
  uint64_t new_commit = 0;
  bool wrote = false;
  std::map<std::string, uint64_t> floor;
  for (int t = 0; t < 30; ++t) {
    for (uint64_t id : {1, 2, 3}) net.Tick(id);
    net.Stabilize();
    if (net.node(2)->role() != Role::kLeader) {
      ASSERT_THAT(net.node(2)->Campaign(), IsOk());
      net.Stabilize();
    }
    if (net.node(2)->role() == Role::kLeader && !wrote) {
      ASSERT_THAT(net.node(2)->Propose("w"), IsOk());
      net.Stabilize();
      wrote = true;
    }
    new_commit = std::max(new_commit, net.node(2)->commit_index());
    const std::string ctx = "t" + std::to_string(t);
    floor[ctx] = new_commit;
    net.node(1)->ReadIndex(ctx);
    net.Stabilize();
  }
  ASSERT_TRUE(wrote);  // the new leader was elected while 1 was cut off
  for (const ReadState& rs : net.read_states(1)) {
    EXPECT_GE(rs.index, floor.at(rs.request_ctx)) << "stale lease read " << rs.request_ctx;
  }
}

TEST(ReadIndex, LeaseIsRevokedByLeadershipTransfer) {
  Network net({1, 2, 3}, LeaseReads);
  net.Elect(1);
  net.TickAll(1);
  ASSERT_TRUE(net.raft(1).LeaseValid());
  net.DropType(raftpb::MSG_TIMEOUT_NOW);
  net.node(1)->TransferLeader(2);
  net.Stabilize();
  EXPECT_FALSE(net.raft(1).LeaseValid());
}

TEST(ReadIndex, RestartedFollowerHonoursLeaseBeforeVoting) {
  Network net({1, 2, 3}, [](Config& c) {
    LeaseReads(c);
    c.pre_vote = false;
  });
  net.Elect(1);
  net.TickAll(1);
  net.Restart(2);
  net.Isolate(1);
  ASSERT_THAT(net.node(3)->Campaign(), IsOk());
  net.Stabilize();
  // 2 restarted and cannot know whether 1's lease is live: no vote yet.
  EXPECT_NE(net.node(3)->role(), Role::kLeader);
}

// ---------------------------------------------------------------- membership

raftpb::ConfChange Joint(std::vector<std::pair<raftpb::ConfChangeType, uint64_t>> changes,
                         raftpb::ConfChangeTransition tr = raftpb::CONF_CHANGE_TRANSITION_AUTO) {
  raftpb::ConfChange cc;
  cc.set_transition(tr);
  for (auto [type, id] : changes) {
    auto* c = cc.add_changes();
    c->set_type(type);
    c->set_node_id(id);
  }
  return cc;
}

std::vector<uint64_t> Ids(const google::protobuf::RepeatedField<uint64_t>& f) {
  return std::vector<uint64_t>(f.begin(), f.end());
}

TEST(Membership, AddVoterSingleStep) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);  // joins with an empty log
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4)),
              IsOk());
  net.Stabilize();
  EXPECT_THAT(Ids(net.node(1)->conf_state().voters()), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(Ids(net.node(4)->conf_state().voters()), ElementsAre(1, 2, 3, 4));
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(4), ElementsAre("x"));
  // A quorum is now 3 of 4: with 3 and 4 cut off nothing commits.
  net.Isolate(3);
  net.Isolate(4);
  const uint64_t commit = net.node(1)->commit_index();
  ASSERT_THAT(net.node(1)->Propose("y"), IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(1)->commit_index(), commit);
}

TEST(Membership, RemoveFollower) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_REMOVE_NODE, 3)),
              IsOk());
  net.Stabilize();
  EXPECT_THAT(Ids(net.node(1)->conf_state().voters()), ElementsAre(1, 2));
  net.Isolate(3);
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(2), ElementsAre("x"));
}

TEST(Membership, RemovedLeaderStepsDown) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_REMOVE_NODE, 1)),
              IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(1)->role(), Role::kFollower);
  EXPECT_THAT(net.node(1)->Propose("x"), StatusIs(absl::StatusCode::kUnavailable));
  net.TickAll(30);
  const uint64_t leader = LeaderOf(net);
  EXPECT_TRUE(leader == 2 || leader == 3) << leader;
}

TEST(Membership, OnlyOnePendingConfChange) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(1);  // keeps the first change uncommitted
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 4)),
              IsOk());
  EXPECT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 5)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  net.Recover();
  net.Stabilize();
  EXPECT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 5)),
              IsOk());
}

TEST(Membership, InvalidChangesAreRefusedAtProposal) {
  Network net({1, 2, 3});
  net.Elect(1);
  // Two voters at once without joint consensus.
  raftpb::ConfChange two = Joint({{raftpb::CONF_CHANGE_ADD_NODE, 4}});
  two.add_changes()->CopyFrom(two.changes(0));
  two.mutable_changes(1)->set_node_id(5);
  two.set_transition(raftpb::CONF_CHANGE_TRANSITION_AUTO);
  // (AUTO with two changes enters joint: fine.) Remove every voter instead:
  raftpb::ConfChange all = Joint({{raftpb::CONF_CHANGE_REMOVE_NODE, 1},
                                  {raftpb::CONF_CHANGE_REMOVE_NODE, 2},
                                  {raftpb::CONF_CHANGE_REMOVE_NODE, 3}});
  EXPECT_THAT(net.node(1)->ProposeConfChange(all), StatusIs(absl::StatusCode::kInvalidArgument));
  raftpb::ConfChange leave;  // empty: leave joint, but we are not joint
  EXPECT_THAT(net.node(1)->ProposeConfChange(leave),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(Membership, JointConsensusReplacesVoterAndLeavesAutomatically) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(
                  Joint({{raftpb::CONF_CHANGE_ADD_NODE, 4}, {raftpb::CONF_CHANGE_REMOVE_NODE, 3}})),
              IsOk());
  net.Stabilize();
  // Entered joint and left it automatically (two conf change entries).
  int conf_entries = 0;
  for (const auto& e : net.applied(2)) conf_entries += e.type() == raftpb::ENTRY_CONF_CHANGE;
  EXPECT_EQ(conf_entries, 2);
  for (uint64_t id : {1, 2, 4}) {
    raftpb::ConfState cs = net.node(id)->conf_state();
    EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 2, 4)) << id;
    EXPECT_TRUE(cs.voters_outgoing().empty());
  }
}

TEST(Membership, JointQuorumNeedsBothMajorities) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);
  net.AddNode(5, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(Joint({{raftpb::CONF_CHANGE_ADD_NODE, 4},
                                                    {raftpb::CONF_CHANGE_ADD_NODE, 5},
                                                    {raftpb::CONF_CHANGE_REMOVE_NODE, 2},
                                                    {raftpb::CONF_CHANGE_REMOVE_NODE, 3}},
                                                   raftpb::CONF_CHANGE_TRANSITION_JOINT_EXPLICIT)),
              IsOk());
  net.Stabilize();
  raftpb::ConfState cs = net.node(1)->conf_state();
  EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 4, 5));
  EXPECT_THAT(Ids(cs.voters_outgoing()), ElementsAre(1, 2, 3));  // explicit: still joint
  // Majority of the new set (1, 4, 5) but only 1 of the old (1, 2, 3): stuck.
  net.Isolate(2);
  net.Isolate(3);
  const uint64_t commit = net.node(1)->commit_index();
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(1)->commit_index(), commit);
  // With 2 back: majorities of both (1,2 of old; 1,4,5 of new).
  net.Recover();
  net.Isolate(3);
  net.TickAll(2);
  EXPECT_GT(net.node(1)->commit_index(), commit);
  // Leave explicitly with an empty ConfChange.
  ASSERT_THAT(net.node(1)->ProposeConfChange(raftpb::ConfChange()), IsOk());
  net.Stabilize();
  cs = net.node(1)->conf_state();
  EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 4, 5));
  EXPECT_TRUE(cs.voters_outgoing().empty());
}

TEST(Membership, LearnerReplicatesButDoesNotVoteOrCount) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 4)),
              IsOk());
  net.Stabilize();
  EXPECT_THAT(Ids(net.node(1)->conf_state().learners()), ElementsAre(4));
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  EXPECT_THAT(net.AppliedData(4), ElementsAre("x"));
  EXPECT_TRUE(net.raft(4).is_learner());
  // Not counted: with 2 and 3 cut off, 1 + learner 4 cannot commit.
  net.Isolate(2);
  net.Isolate(3);
  const uint64_t commit = net.node(1)->commit_index();
  ASSERT_THAT(net.node(1)->Propose("y"), IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(1)->commit_index(), commit);
  // A learner never campaigns.
  net.Recover();
  net.Isolate(1);
  net.Tick(4, 100);
  net.Stabilize();
  EXPECT_EQ(net.node(4)->role(), Role::kFollower);
  EXPECT_THAT(net.node(4)->Campaign(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(Membership, LearnerIsPromotedToVoter) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 4)),
              IsOk());
  net.Stabilize();
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_NODE, 4)),
              IsOk());
  net.Stabilize();
  raftpb::ConfState cs = net.node(4)->conf_state();
  EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 2, 3, 4));
  EXPECT_TRUE(cs.learners().empty());
  EXPECT_FALSE(net.raft(4).is_learner());
  // 4 can now campaign and win (once 2 and 3 no longer hear from 1).
  net.Isolate(1);
  net.Tick(2, 10);
  net.Tick(3, 10);
  ASSERT_THAT(net.node(4)->Campaign(), IsOk());
  net.Stabilize();
  EXPECT_EQ(net.node(4)->role(), Role::kLeader);
}

TEST(Membership, VoterDemotedToLearnerThroughJointConfig) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->ProposeConfChange(Joint({{raftpb::CONF_CHANGE_ADD_LEARNER, 3}},
                                                   raftpb::CONF_CHANGE_TRANSITION_JOINT_IMPLICIT)),
              IsOk());
  net.Stabilize();
  raftpb::ConfState cs = net.node(2)->conf_state();
  EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 2));
  EXPECT_THAT(Ids(cs.learners()), ElementsAre(3));
  EXPECT_TRUE(cs.learners_next().empty());
  EXPECT_TRUE(net.raft(3).is_learner());
}

TEST(Membership, RestartRestoresJointConfigFromSnapshot) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.AddNode(4, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(Joint({{raftpb::CONF_CHANGE_ADD_NODE, 4}},
                                                   raftpb::CONF_CHANGE_TRANSITION_JOINT_EXPLICIT)),
              IsOk());
  net.Stabilize();
  SnapshotAndCompact(net, 2);
  net.Restart(2);
  raftpb::ConfState cs = net.node(2)->conf_state();
  EXPECT_THAT(Ids(cs.voters()), ElementsAre(1, 2, 3, 4));
  EXPECT_THAT(Ids(cs.voters_outgoing()), ElementsAre(1, 2, 3));
}

// ---------------------------------------------------------------- transfer

TEST(Transfer, ToUpToDateFollower) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.node(1)->TransferLeader(2);
  net.Stabilize();
  EXPECT_EQ(net.node(2)->role(), Role::kLeader);
  EXPECT_EQ(net.node(2)->term(), 2u);
  EXPECT_EQ(net.node(1)->role(), Role::kFollower);
  EXPECT_EQ(net.node(1)->leader_id(), 2u);
}

TEST(Transfer, BypassesLeaderStickiness) {
  Network net({1, 2, 3}, [](Config& c) { c.check_quorum = true; });
  net.Elect(1);
  net.TickAll(2);
  net.node(1)->TransferLeader(3);
  net.Stabilize();
  EXPECT_EQ(net.node(3)->role(), Role::kLeader);
}

TEST(Transfer, CatchesUpLaggingTransfereeFirst) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  for (int i = 0; i < 3; ++i) ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();
  net.Recover();
  net.node(1)->TransferLeader(3);
  net.Stabilize();
  EXPECT_EQ(net.node(3)->role(), Role::kLeader);
  EXPECT_THAT(net.AppliedData(3), ElementsAre("x", "x", "x"));
}

TEST(Transfer, ProposalsAreRejectedDuringTransferAndTransferAborts) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  net.node(1)->TransferLeader(3);
  net.Stabilize();
  EXPECT_EQ(net.raft(1).lead_transferee(), 3u);
  EXPECT_THAT(net.node(1)->Propose("x"),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("transfer")));
  net.Tick(1, 10);  // an election timeout
  net.Stabilize();
  EXPECT_EQ(net.raft(1).lead_transferee(), 0u);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_THAT(net.node(1)->Propose("x"), IsOk());
}

TEST(Transfer, FollowerForwardsTransferRequest) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.node(2)->TransferLeader(2);
  net.Stabilize();
  EXPECT_EQ(net.node(2)->role(), Role::kLeader);
}

TEST(Transfer, ToLearnerOrSelfIsIgnored) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.node(1)->TransferLeader(1);
  net.Stabilize();
  EXPECT_EQ(net.raft(1).lead_transferee(), 0u);
  net.AddNode(4, nullptr);
  ASSERT_THAT(net.node(1)->ProposeConfChange(SingleChange(raftpb::CONF_CHANGE_ADD_LEARNER, 4)),
              IsOk());
  net.Stabilize();
  net.node(1)->TransferLeader(4);
  net.Stabilize();
  EXPECT_EQ(net.raft(1).lead_transferee(), 0u);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
}

TEST(Transfer, NewerRequestReplacesPendingOne) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  net.node(1)->TransferLeader(3);
  net.Stabilize();
  EXPECT_EQ(net.raft(1).lead_transferee(), 3u);
  net.node(1)->TransferLeader(2);
  net.Stabilize();
  EXPECT_EQ(net.node(2)->role(), Role::kLeader);
}

// ---------------------------------------------------------------- LeaderIdle

TEST(LeaderIdle, OnlyAQuiescentLeaderIsIdle) {
  Network net({1, 2, 3});
  net.Elect(1);
  EXPECT_TRUE(net.node(1)->LeaderIdle());
  EXPECT_FALSE(net.node(2)->LeaderIdle());  // followers never are
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  EXPECT_FALSE(net.node(1)->LeaderIdle());  // appended, not sent
  net.Stabilize();
  EXPECT_TRUE(net.node(1)->LeaderIdle());
}

TEST(LeaderIdle, LaggingFollowerKeepsTheLeaderBusy) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.Isolate(3);
  ASSERT_THAT(net.node(1)->Propose("x"), IsOk());
  net.Stabilize();  // committed by 1 and 2; 3 never acknowledged it
  EXPECT_EQ(net.node(1)->commit_index(), net.node(1)->last_index());
  EXPECT_FALSE(net.node(1)->LeaderIdle());
  net.Recover();
  net.Tick(1, 2);  // a heartbeat round: 3 answers and is caught up
  net.Stabilize();
  EXPECT_TRUE(net.node(1)->LeaderIdle());
}

TEST(LeaderIdle, PendingReadOrTransferKeepsTheLeaderBusy) {
  Network net({1, 2, 3});
  net.Elect(1);
  net.set_hold(true);
  net.node(1)->ReadIndex("r1", /*use_lease=*/false);
  EXPECT_FALSE(net.node(1)->LeaderIdle());
  net.set_hold(false);
  net.Stabilize();
  EXPECT_TRUE(net.node(1)->LeaderIdle());
  net.Isolate(3);
  net.node(1)->TransferLeader(3);
  net.Stabilize();
  EXPECT_FALSE(net.node(1)->LeaderIdle());
}

}  // namespace
}  // namespace tessera::raft
