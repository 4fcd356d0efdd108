// One test per rule of Figure 2 of the Raft paper ("In Search of an
// Understandable Consensus Algorithm"), in the spirit of etcd-io/raft's
// raft_paper_test.go. PreVote and CheckQuorum are off here: they are
// extensions tested in raft_test.cc.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using namespace ::tessera::raft::testing;  // NOLINT

raftpb::Message App(uint64_t from, uint64_t to, uint64_t term, uint64_t index, uint64_t log_term,
                    std::vector<raftpb::Entry> ents, uint64_t commit) {
  raftpb::Message m = Msg(from, to, raftpb::MSG_APP, term);
  m.set_index(index);
  m.set_log_term(log_term);
  m.set_commit(commit);
  for (auto& e : ents) *m.add_entries() = e;
  return m;
}

raftpb::Message Vote(uint64_t from, uint64_t to, uint64_t term, uint64_t index, uint64_t log_term) {
  raftpb::Message m = Msg(from, to, raftpb::MSG_VOTE, term);
  m.set_index(index);
  m.set_log_term(log_term);
  return m;
}

void TickUntilElection(TestRaft& t) {
  for (int i = 0; i < 2 * 10; ++i) t.node->Tick();
}

// ---- All servers: "If RPC request or response contains term T >
// currentTerm: set currentTerm = T, convert to follower" (§5.1).
TEST(Figure2AllServers, HigherTermConvertsEveryRoleToFollower) {
  for (Role role : {Role::kFollower, Role::kCandidate, Role::kLeader}) {
    auto t = NewTestRaft(1, {1, 2, 3});
    if (role == Role::kCandidate) t->r().BecomeCandidateForTesting();
    if (role == Role::kLeader) {
      t->r().BecomeCandidateForTesting();
      t->r().BecomeLeaderForTesting();
    }
    ASSERT_THAT(t->r().Step(App(2, 1, 5, 0, 0, {}, 0)), IsOk());
    EXPECT_EQ(t->r().role(), Role::kFollower) << RoleName(role);
    EXPECT_EQ(t->r().term(), 5u);
    EXPECT_EQ(t->r().lead(), 2u);
    EXPECT_EQ(t->r().vote(), 0u);
  }
}

// ---- All servers: a message with a stale term is rejected (§5.1).
TEST(Figure2AllServers, StaleTermMessagesAreIgnored) {
  auto t = NewTestRaft(1, {1, 2, 3}, {.hs = [] {
                         raftpb::HardState hs;
                         hs.set_term(2);
                         return hs;
                       }()});
  ASSERT_THAT(t->r().Step(Vote(2, 1, 1, 10, 1)), IsOk());
  EXPECT_TRUE(t->Take().empty());  // no vote granted, no answer
  EXPECT_EQ(t->r().term(), 2u);
  EXPECT_EQ(t->r().vote(), 0u);
}

// ---- All servers: "If commitIndex > lastApplied: increment lastApplied,
// apply log[lastApplied] to state machine" (§5.3).
TEST(Figure2AllServers, CommittedEntriesAreHandedOutForApplyInOrder) {
  auto t = NewTestRaft(1, {1});
  ASSERT_THAT(t->node->Campaign(), IsOk());
  ASSERT_THAT(t->node->Propose("x"), IsOk());
  ASSERT_THAT(t->node->Propose("y"), IsOk());
  Ready rd = t->node->GetReady();
  ASSERT_EQ(rd.committed_entries.size(), 3u);
  EXPECT_EQ(rd.committed_entries[0].data(), "");
  EXPECT_EQ(rd.committed_entries[1].data(), "x");
  EXPECT_EQ(rd.committed_entries[2].data(), "y");
  t->node->Advance(rd);
  EXPECT_EQ(t->node->applied_index(), 3u);
  EXPECT_FALSE(t->node->HasReady());
}

// ---- Followers: "If election timeout elapses without receiving
// AppendEntries from current leader or granting vote to candidate: convert
// to candidate" (§5.2); Candidates: "On conversion to candidate, start
// election: increment currentTerm, vote for self, reset election timer, send
// RequestVote RPCs to all other servers".
TEST(Figure2Followers, ElectionTimeoutStartsElection) {
  for (Role start : {Role::kFollower, Role::kCandidate}) {
    auto t = NewTestRaft(1, {1, 2, 3});
    if (start == Role::kCandidate) t->r().BecomeCandidateForTesting();
    const uint64_t term = t->r().term();
    t->Take();
    TickUntilElection(*t);
    EXPECT_EQ(t->r().role(), Role::kCandidate);
    EXPECT_EQ(t->r().term(), term + 1);
    EXPECT_EQ(t->r().vote(), 1u);
    std::vector<raftpb::Message> msgs = t->Take();
    ASSERT_EQ(msgs.size(), 2u);
    for (const auto& m : msgs) {
      EXPECT_EQ(m.type(), raftpb::MSG_VOTE);
      EXPECT_EQ(m.term(), term + 1);
    }
    EXPECT_EQ(msgs[0].to(), 2u);
    EXPECT_EQ(msgs[1].to(), 3u);
  }
}

// ---- Followers: granting a vote or hearing from the leader resets the
// election timer.
TEST(Figure2Followers, HeartbeatFromLeaderPreventsElection) {
  auto t = NewTestRaft(1, {1, 2, 3});
  t->r().BecomeFollowerForTesting(1, 2);
  for (int i = 0; i < 100; ++i) {
    t->node->Tick();
    raftpb::Message hb = Msg(2, 1, raftpb::MSG_HEARTBEAT, 1);
    ASSERT_THAT(t->r().Step(hb), IsOk());
  }
  EXPECT_EQ(t->r().role(), Role::kFollower);
  EXPECT_EQ(t->r().term(), 1u);
}

// Randomized timeouts are in [election, 2*election) (§5.2).
TEST(Figure2Followers, ElectionTimeoutIsRandomizedInRange) {
  std::set<int> seen;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    auto t = NewTestRaft(1, {1, 2, 3}, {.tweak = [seed](Config& c) { c.seed = seed; }});
    int ticks = 0;
    while (t->r().role() == Role::kFollower) {
      t->node->Tick();
      ++ticks;
    }
    EXPECT_GE(ticks, 10);
    EXPECT_LT(ticks, 20);
    seen.insert(ticks);
  }
  EXPECT_GT(seen.size(), 3u);
}

// ---- Candidates: "If votes received from majority of servers: become
// leader" (§5.2).
TEST(Figure2Candidates, MajorityOfVotesWins) {
  struct Case {
    int size;
    std::map<uint64_t, bool> votes;
    Role want;
  };
  std::vector<Case> cases = {
      {1, {}, Role::kLeader},
      {3, {{2, true}, {3, true}}, Role::kLeader},
      {3, {{2, true}}, Role::kLeader},
      {5, {{2, true}, {3, true}, {4, true}, {5, true}}, Role::kLeader},
      {5, {{2, true}, {3, true}}, Role::kLeader},
      {3, {{2, false}, {3, false}}, Role::kFollower},
      {5, {{2, true}, {3, false}, {4, false}, {5, false}}, Role::kFollower},
      {3, {}, Role::kCandidate},
      {5, {{2, true}}, Role::kCandidate},
      {5, {{2, false}, {3, true}}, Role::kCandidate},
  };
  for (const Case& c : cases) {
    std::initializer_list<uint64_t> peers3 = {1, 2, 3}, peers5 = {1, 2, 3, 4, 5}, peers1 = {1};
    auto t = NewTestRaft(1, c.size == 1 ? peers1 : c.size == 3 ? peers3 : peers5);
    ASSERT_THAT(t->node->Campaign(), IsOk());
    for (auto [id, granted] : c.votes) {
      raftpb::Message m = Msg(id, 1, raftpb::MSG_VOTE_RESP, t->r().term());
      m.set_reject(!granted);
      ASSERT_THAT(t->r().Step(m), IsOk());
    }
    EXPECT_EQ(t->r().role(), c.want) << "size " << c.size << " votes " << c.votes.size();
    EXPECT_EQ(t->r().term(), 1u);
  }
}

// ---- Candidates: "If AppendEntries RPC received from new leader: convert
// to follower" (§5.2), also for a leader of the candidate's own term.
TEST(Figure2Candidates, AppendEntriesFromLeaderOfSameTermConverts) {
  auto t = NewTestRaft(1, {1, 2, 3});
  ASSERT_THAT(t->node->Campaign(), IsOk());
  ASSERT_EQ(t->r().role(), Role::kCandidate);
  ASSERT_THAT(t->r().Step(App(2, 1, t->r().term(), 0, 0, {}, 0)), IsOk());
  EXPECT_EQ(t->r().role(), Role::kFollower);
  EXPECT_EQ(t->r().lead(), 2u);
  EXPECT_EQ(t->r().term(), 1u);
}

// ---- Candidates: "If election timeout elapses: start new election".
TEST(Figure2Candidates, SplitVoteTimesOutIntoNewElection) {
  auto t = NewTestRaft(1, {1, 2, 3});
  ASSERT_THAT(t->node->Campaign(), IsOk());
  TickUntilElection(*t);
  EXPECT_EQ(t->r().role(), Role::kCandidate);
  EXPECT_EQ(t->r().term(), 2u);
}

// ---- Leaders: "Upon election: send initial empty AppendEntries RPCs
// (heartbeat) to each server; repeat during idle periods" (§5.2).
TEST(Figure2Leaders, SendsAppendOnElectionAndHeartbeatsWhenIdle) {
  auto t = NewTestRaft(1, {1, 2, 3});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();
  t->Take();
  t->node->Tick();  // heartbeat_ticks = 1
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 2u);
  for (const auto& m : msgs) {
    EXPECT_EQ(m.type(), raftpb::MSG_HEARTBEAT);
    EXPECT_EQ(m.term(), 1u);
  }
}

// ---- Leaders: "If command received from client: append entry to local
// log" and send it to every follower (§5.3).
TEST(Figure2Leaders, ProposalIsAppendedAndReplicated) {
  auto t = NewTestRaft(1, {1, 2, 3});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();
  // Followers acked the empty entry: they are in replicate state.
  for (uint64_t id : {2, 3}) {
    raftpb::Message r = Msg(id, 1, raftpb::MSG_APP_RESP, 1);
    r.set_index(1);
    ASSERT_THAT(t->r().Step(r), IsOk());
  }
  t->Take();
  ASSERT_THAT(t->node->Propose("cmd"), IsOk());
  EXPECT_EQ(t->r().log().LastIndex(), 2u);
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 2u);
  for (const auto& m : msgs) {
    EXPECT_EQ(m.type(), raftpb::MSG_APP);
    EXPECT_EQ(m.index(), 1u);
    EXPECT_EQ(m.log_term(), 1u);
    ASSERT_EQ(m.entries_size(), 1);
    EXPECT_EQ(m.entries(0).data(), "cmd");
    EXPECT_EQ(m.entries(0).index(), 2u);
    EXPECT_EQ(m.commit(), 1u);
  }
}

// ---- Leaders: "If AppendEntries fails because of log inconsistency:
// decrement nextIndex and retry" (§5.3).
TEST(Figure2Leaders, RejectionDecrementsNextIndexAndRetries) {
  auto t = NewTestRaft(1, {1, 2}, {.entries = {Ent(1, 1), Ent(2, 2), Ent(3, 3)}, .hs = [] {
                                     raftpb::HardState hs;
                                     hs.set_term(3);
                                     return hs;
                                   }()});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();  // term 4, appends index 4
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 0u);  // the bcast is done by the election path
  t->Persist();
  raftpb::Message r = Msg(2, 1, raftpb::MSG_APP_RESP, 4);
  r.set_index(3);
  r.set_reject(true);
  r.set_reject_hint(3);  // no hint term: plain decrement
  ASSERT_THAT(t->r().Step(r), IsOk());
  msgs = t->Take();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].type(), raftpb::MSG_APP);
  EXPECT_EQ(msgs[0].index(), 2u);  // retried one entry earlier
  EXPECT_EQ(msgs[0].log_term(), 2u);
  ASSERT_EQ(msgs[0].entries_size(), 2);
}

// ---- Leaders: "If there exists an N such that N > commitIndex, a majority
// of matchIndex[i] >= N, and log[N].term == currentTerm: set commitIndex = N"
// (§5.3, §5.4).
TEST(Figure2Leaders, CommitsOnlyCurrentTermEntriesByCounting) {
  auto t = NewTestRaft(1, {1, 2, 3}, {.entries = {Ent(1, 1), Ent(2, 2)}, .hs = [] {
                                        raftpb::HardState hs;
                                        hs.set_term(2);
                                        return hs;
                                      }()});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();  // term 3, empty entry at 3
  // A majority (1 and 2) stores index 2 (term 2): not committed.
  raftpb::Message r = Msg(2, 1, raftpb::MSG_APP_RESP, 3);
  r.set_index(2);
  ASSERT_THAT(t->r().Step(r), IsOk());
  EXPECT_EQ(t->r().log().committed(), 0u);
  // Once index 3 (term 3) is on a majority, 1..3 are committed together.
  r.set_index(3);
  ASSERT_THAT(t->r().Step(r), IsOk());
  EXPECT_EQ(t->r().log().committed(), 3u);
}

TEST(Figure2Leaders, MutationKnobCommitsEarlierTermByCounting) {
  auto t =
      NewTestRaft(1, {1, 2, 3},
                  {.entries = {Ent(1, 1), Ent(2, 2)},
                   .hs =
                       [] {
                         raftpb::HardState hs;
                         hs.set_term(2);
                         return hs;
                       }(),
                   .tweak = [](Config& c) { c.testing.commit_earlier_term_by_counting = true; }});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();
  raftpb::Message r = Msg(2, 1, raftpb::MSG_APP_RESP, 3);
  r.set_index(2);
  ASSERT_THAT(t->r().Step(r), IsOk());
  EXPECT_EQ(t->r().log().committed(), 2u);  // the unsafe behaviour, on purpose
}

// ---- RequestVote receiver: "Reply false if term < currentTerm" is
// StaleTermMessagesAreIgnored; "If votedFor is null or candidateId, and
// candidate's log is at least as up-to-date as receiver's log, grant vote"
// (§5.2, §5.4).
TEST(Figure2RequestVote, GrantsOnlyToUpToDateCandidates) {
  struct Case {
    uint64_t index, log_term;
    bool granted;
  };
  // Our log: (1,1) (2,2).
  for (const Case& c : std::vector<Case>{
           {2, 2, true}, {3, 2, true}, {1, 2, false}, {3, 1, false}, {1, 3, true}, {0, 0, false}}) {
    auto t = NewTestRaft(1, {1, 2, 3}, {.entries = {Ent(1, 1), Ent(2, 2)}, .hs = [] {
                                          raftpb::HardState hs;
                                          hs.set_term(2);
                                          return hs;
                                        }()});
    ASSERT_THAT(t->r().Step(Vote(2, 1, 3, c.index, c.log_term)), IsOk());
    std::vector<raftpb::Message> msgs = t->Take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].type(), raftpb::MSG_VOTE_RESP);
    EXPECT_EQ(!msgs[0].reject(), c.granted) << c.index << "/" << c.log_term;
    EXPECT_EQ(t->r().vote(), c.granted ? 2u : 0u);
  }
}

TEST(Figure2RequestVote, MutationKnobGrantsStaleCandidates) {
  auto t = NewTestRaft(1, {1, 2, 3},
                       {.entries = {Ent(1, 1), Ent(2, 2)},
                        .hs =
                            [] {
                              raftpb::HardState hs;
                              hs.set_term(2);
                              return hs;
                            }(),
                        .tweak = [](Config& c) { c.testing.grant_vote_without_log_check = true; }});
  ASSERT_THAT(t->r().Step(Vote(2, 1, 3, 1, 1)), IsOk());
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_FALSE(msgs[0].reject());
}

TEST(Figure2RequestVote, VotesAtMostOncePerTerm) {
  auto t = NewTestRaft(1, {1, 2, 3});
  ASSERT_THAT(t->r().Step(Vote(2, 1, 1, 0, 0)), IsOk());
  ASSERT_THAT(t->r().Step(Vote(3, 1, 1, 0, 0)), IsOk());  // same term, other candidate
  ASSERT_THAT(t->r().Step(Vote(2, 1, 1, 0, 0)), IsOk());  // duplicate: granted again
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 3u);
  EXPECT_FALSE(msgs[0].reject());
  EXPECT_TRUE(msgs[1].reject());
  EXPECT_FALSE(msgs[2].reject());
  EXPECT_EQ(t->r().vote(), 2u);
  // The vote is part of the persisted hard state.
  Ready rd = t->node->GetReady();
  ASSERT_TRUE(rd.hard_state.has_value());
  EXPECT_EQ(rd.hard_state->vote(), 2u);
  EXPECT_TRUE(rd.must_sync);
}

// ---- AppendEntries receiver: "Reply false if term < currentTerm".
TEST(Figure2AppendEntries, StaleLeaderIsAnsweredWithCurrentTerm) {
  auto t = NewTestRaft(1, {1, 2, 3}, {.check_quorum = true, .hs = [] {
                                        raftpb::HardState hs;
                                        hs.set_term(5);
                                        return hs;
                                      }()});
  ASSERT_THAT(t->r().Step(App(2, 1, 3, 0, 0, {Ent(1, 3)}, 0)), IsOk());
  EXPECT_EQ(t->r().log().LastIndex(), 0u);
  std::vector<raftpb::Message> msgs = t->Take();
  ASSERT_EQ(msgs.size(), 1u);
  EXPECT_EQ(msgs[0].type(), raftpb::MSG_APP_RESP);
  EXPECT_EQ(msgs[0].term(), 5u);  // makes the stale leader step down
}

// ---- AppendEntries receiver: "Reply false if log doesn't contain an entry
// at prevLogIndex whose term matches prevLogTerm" (§5.3).
TEST(Figure2AppendEntries, RejectsWhenPrevEntryDoesNotMatch) {
  struct Case {
    uint64_t index, log_term;
    bool reject;
  };
  for (const Case& c :
       std::vector<Case>{{2, 2, false}, {2, 3, true}, {3, 2, true}, {1, 1, false}}) {
    auto t = NewTestRaft(1, {1, 2, 3}, {.entries = {Ent(1, 1), Ent(2, 2)}, .hs = [] {
                                          raftpb::HardState hs;
                                          hs.set_term(2);
                                          return hs;
                                        }()});
    ASSERT_THAT(t->r().Step(App(2, 1, 2, c.index, c.log_term, {}, 0)), IsOk());
    std::vector<raftpb::Message> msgs = t->Take();
    ASSERT_EQ(msgs.size(), 1u);
    EXPECT_EQ(msgs[0].reject(), c.reject) << c.index << "/" << c.log_term;
    if (c.reject) {
      EXPECT_EQ(msgs[0].index(), c.index);
    }
  }
}

// ---- AppendEntries receiver: "If an existing entry conflicts with a new one
// (same index but different terms), delete the existing entry and all that
// follow it; append any new entries not already in the log" (§5.3).
TEST(Figure2AppendEntries, TruncatesConflictingSuffixAndAppendsNew) {
  struct Case {
    uint64_t index, log_term;
    std::vector<raftpb::Entry> ents;
    std::vector<uint64_t> want_terms;
  };
  std::vector<Case> cases = {
      {0, 0, {Ent(1, 3)}, {3}},                      // conflict at 1
      {1, 1, {Ent(2, 3), Ent(3, 4)}, {1, 3, 4}},     // conflict at 2
      {0, 0, {Ent(1, 1)}, {1, 2}},                   // already present: no truncation
      {1, 1, {Ent(2, 2), Ent(3, 3)}, {1, 2, 3}},     // append new
      {2, 2, {Ent(3, 2), Ent(4, 2)}, {1, 2, 2, 2}},  // append new
  };
  for (const Case& c : cases) {
    auto t = NewTestRaft(1, {1, 2, 3}, {.entries = {Ent(1, 1), Ent(2, 2)}, .hs = [] {
                                          raftpb::HardState hs;
                                          hs.set_term(2);
                                          return hs;
                                        }()});
    ASSERT_THAT(t->r().Step(App(2, 1, 4, c.index, c.log_term, c.ents, 0)), IsOk());
    std::vector<uint64_t> terms;
    for (uint64_t i = 1; i <= t->r().log().LastIndex(); ++i) {
      terms.push_back(*t->r().log().Term(i));
    }
    EXPECT_EQ(terms, c.want_terms);
  }
}

// ---- AppendEntries receiver: "If leaderCommit > commitIndex, set
// commitIndex = min(leaderCommit, index of last new entry)" (§5.3).
TEST(Figure2AppendEntries, CommitIsMinOfLeaderCommitAndLastNewEntry) {
  struct Case {
    uint64_t index, log_term, commit;
    std::vector<raftpb::Entry> ents;
    uint64_t want;
  };
  std::vector<Case> cases = {
      {2, 2, 5, {Ent(3, 2)}, 3},  // capped by the last new entry
      {2, 2, 1, {Ent(3, 2)}, 1},
      {1, 1, 5, {}, 1},  // capped by the last new entry (prev index)
      {0, 0, 2, {Ent(1, 1), Ent(2, 2)}, 2},
  };
  for (const Case& c : cases) {
    auto t = NewTestRaft(1, {1, 2, 3}, {.entries = {Ent(1, 1), Ent(2, 2)}, .hs = [] {
                                          raftpb::HardState hs;
                                          hs.set_term(2);
                                          return hs;
                                        }()});
    ASSERT_THAT(t->r().Step(App(2, 1, 2, c.index, c.log_term, c.ents, c.commit)), IsOk());
    EXPECT_EQ(t->r().log().committed(), c.want);
  }
}

// Leader Append-Only (§5.3): a leader never overwrites its own entries, even
// when a stale MsgApp of its own term is echoed at it.
TEST(Figure2Leaders, LeaderNeverTruncatesItsLog) {
  auto t = NewTestRaft(1, {1, 2, 3});
  t->r().BecomeCandidateForTesting();
  t->r().BecomeLeaderForTesting();
  ASSERT_THAT(t->node->Propose("a"), IsOk());
  const uint64_t last = t->r().log().LastIndex();
  ASSERT_THAT(t->r().Step(App(2, 1, 0, 0, 0, {Ent(1, 0)}, 0)), IsOk());  // local-looking junk
  EXPECT_EQ(t->r().log().LastIndex(), last);
  EXPECT_EQ(t->r().role(), Role::kLeader);
}

}  // namespace
}  // namespace tessera::raft
