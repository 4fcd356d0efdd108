// CheckPeerMessage (server/peer_message_check.h): which peer messages may
// reach raft, and the reason each refused one is counted under.
#include "server/raftstore/peer_message_check.h"

#include <string>

#include "gtest/gtest.h"

namespace tessera::server {
namespace {

class PeerMessageCheck : public ::testing::Test {
 protected:
  PeerMessageCheck() {
    for (uint64_t id : {1, 2, 3}) conf_.add_voters(id);
  }
  // A message of `type` from node 2 to node 1 (us) in term 5.
  raftpb::Message Make(raftpb::MessageType type) {
    raftpb::Message m;
    m.set_type(type);
    m.set_from(2);
    m.set_to(1);
    m.set_term(5);
    return m;
  }
  // nullptr when accepted, else the reason.
  std::string Check(const raftpb::Message& m, NodeId sender = 2) {
    const char* reason = CheckPeerMessage(m, sender, {.self = 1, .last_index = 10, .conf = &conf_});
    return reason == nullptr ? "ok" : reason;
  }
  raftpb::ConfState conf_;
};

TEST_F(PeerMessageCheck, AcceptsWhatHonestPeersSend) {
  raftpb::Message app = Make(raftpb::MSG_APP);
  app.set_index(10);
  app.set_log_term(4);
  app.set_commit(50);  // beyond our log: raft bounds it by the last new entry
  for (uint64_t i = 11; i <= 12; ++i) {
    raftpb::Entry* e = app.add_entries();
    e->set_index(i);
    e->set_term(5);
  }
  EXPECT_EQ(Check(app), "ok");
  raftpb::Message hb = Make(raftpb::MSG_HEARTBEAT);
  hb.set_commit(10);
  EXPECT_EQ(Check(hb), "ok");
  raftpb::Message resp = Make(raftpb::MSG_APP_RESP);
  resp.set_index(10);
  EXPECT_EQ(Check(resp), "ok");
  resp.set_index(99);
  resp.set_reject(true);  // a rejection names the probe index; raft bounds it
  EXPECT_EQ(Check(resp), "ok");
  for (raftpb::MessageType t : {raftpb::MSG_VOTE_RESP, raftpb::MSG_HEARTBEAT_RESP,
                                raftpb::MSG_TIMEOUT_NOW, raftpb::MSG_READ_INDEX_RESP}) {
    EXPECT_EQ(Check(Make(t)), "ok") << t;
  }
  for (raftpb::MessageType t : {raftpb::MSG_VOTE, raftpb::MSG_PRE_VOTE}) {
    raftpb::Message vote = Make(t);
    vote.set_index(1);  // the bootstrap point
    vote.set_log_term(1);
    EXPECT_EQ(Check(vote), "ok") << t;
  }
  raftpb::Message read = Make(raftpb::MSG_READ_INDEX);  // forwarded: no term
  read.set_term(0);
  read.add_entries();
  EXPECT_EQ(Check(read), "ok");
  raftpb::Message snap = Make(raftpb::MSG_SNAP);
  snap.mutable_snapshot()->mutable_metadata()->set_index(40);
  snap.mutable_snapshot()->mutable_metadata()->set_term(5);
  *snap.mutable_snapshot()->mutable_metadata()->mutable_conf_state() = conf_;
  EXPECT_EQ(Check(snap), "ok");
}

TEST_F(PeerMessageCheck, RefusesCommitsAndAcksBeyondOurLog) {
  raftpb::Message hb = Make(raftpb::MSG_HEARTBEAT);
  hb.set_commit(11);
  EXPECT_EQ(Check(hb), "commit_out_of_range");
  hb.set_commit(1000000000000ull);
  EXPECT_EQ(Check(hb), "commit_out_of_range");
  raftpb::Message resp = Make(raftpb::MSG_APP_RESP);
  resp.set_index(11);
  EXPECT_EQ(Check(resp), "ack_out_of_range");
}

TEST_F(PeerMessageCheck, RefusesSendersThatAreNotWhoTheySay) {
  EXPECT_EQ(Check(Make(raftpb::MSG_VOTE), /*sender=*/3), "sender_mismatch");
  raftpb::Message stranger = Make(raftpb::MSG_VOTE);
  stranger.set_from(9);
  EXPECT_EQ(Check(stranger, 9), "not_a_replica");
  raftpb::Message other = Make(raftpb::MSG_VOTE);
  other.set_to(3);
  EXPECT_EQ(Check(other), "misaddressed");
}

TEST_F(PeerMessageCheck, RefusesLocalTypesAndForwardedProposals) {
  for (raftpb::MessageType t :
       {raftpb::MSG_HUP, raftpb::MSG_BEAT, raftpb::MSG_PROP, raftpb::MSG_UNREACHABLE,
        raftpb::MSG_SNAP_STATUS, raftpb::MSG_CHECK_QUORUM, static_cast<raftpb::MessageType>(77)}) {
    EXPECT_EQ(Check(Make(t)), "bad_type") << t;
  }
}

TEST_F(PeerMessageCheck, RefusesEntriesThatDoNotFollowTheirIndex) {
  raftpb::Message app = Make(raftpb::MSG_APP);
  app.set_index(10);
  app.set_log_term(4);
  raftpb::Entry* e = app.add_entries();
  e->set_index(12);  // a gap
  e->set_term(5);
  EXPECT_EQ(Check(app), "bad_entries");
  e->set_index(11);
  e->set_term(6);  // beyond the message's term
  EXPECT_EQ(Check(app), "bad_entries");
  e->set_term(3);  // before the previous entry's term
  EXPECT_EQ(Check(app), "bad_entries");
  e->set_term(5);
  e->set_type(static_cast<raftpb::EntryType>(9));
  EXPECT_EQ(Check(app), "bad_entries");
  raftpb::Message hb = Make(raftpb::MSG_HEARTBEAT);
  hb.add_entries();
  EXPECT_EQ(Check(hb), "bad_entries");
}

// Found by peer_batch_fuzz: each of these made raft abort when it answered.
TEST_F(PeerMessageCheck, RefusesTermsWhereRaftWouldAbortAnswering) {
  raftpb::Message vote = Make(raftpb::MSG_VOTE);
  vote.set_index(1);
  vote.set_log_term(1);
  vote.set_term(0);  // the grant would carry term 0
  EXPECT_EQ(Check(vote), "bad_term_or_index");
  raftpb::Message read = Make(raftpb::MSG_READ_INDEX);  // forwarded with a term
  read.add_entries();
  EXPECT_EQ(Check(read), "bad_term_or_index");
  raftpb::Message behind = Make(raftpb::MSG_PRE_VOTE);  // rejected at term 0
  EXPECT_EQ(Check(behind), "bad_term_or_index");
}

TEST_F(PeerMessageCheck, ConfChangeEntriesMustParse) {
  raftpb::Message app = Make(raftpb::MSG_APP);
  app.set_index(10);
  app.set_log_term(5);
  raftpb::Entry* e = app.add_entries();
  e->set_index(11);
  e->set_term(5);
  e->set_type(raftpb::ENTRY_CONF_CHANGE);
  raftpb::ConfChange cc;
  raftpb::ConfChangeSingle* add = cc.add_changes();
  add->set_type(raftpb::CONF_CHANGE_ADD_LEARNER);
  add->set_node_id(4);
  e->set_data(cc.SerializeAsString());
  EXPECT_EQ(Check(app), "ok");  // raft refuses one invalid at apply (raw_node.h)
  e->set_data("\xff\xff");
  EXPECT_EQ(Check(app), "bad_entries");
  add->set_node_id(0);
  e->set_data(cc.SerializeAsString());
  EXPECT_EQ(Check(app), "bad_entries");
}

TEST_F(PeerMessageCheck, AReplicaWithoutAConfigurationTakesOnlyALeadersMessages) {
  conf_.Clear();  // a new replica, waiting for its first snapshot
  raftpb::Message snap = Make(raftpb::MSG_SNAP);
  raftpb::SnapshotMetadata* md = snap.mutable_snapshot()->mutable_metadata();
  md->set_index(40);
  md->set_term(5);
  for (uint64_t id : {2, 3, 4}) md->mutable_conf_state()->add_voters(id);
  md->mutable_conf_state()->add_learners(1);
  EXPECT_EQ(Check(snap), "ok");
  raftpb::Message hb = Make(raftpb::MSG_HEARTBEAT);
  hb.set_commit(0);
  EXPECT_EQ(Check(hb), "ok");
  raftpb::Message app = Make(raftpb::MSG_APP);
  app.set_index(39);
  app.set_log_term(5);
  EXPECT_EQ(Check(app), "ok");  // rejected by raft: the leader then sends a snapshot
  app.set_index(0);             // entries from the start of a log: only a bootstrap writes those
  app.set_log_term(0);
  EXPECT_EQ(Check(app), "bad_term_or_index");
  raftpb::Message vote = Make(raftpb::MSG_VOTE);
  vote.set_index(1);
  vote.set_log_term(1);
  EXPECT_EQ(Check(vote), "not_a_replica");
  EXPECT_EQ(Check(Make(raftpb::MSG_APP_RESP)), "not_a_replica");
}

TEST_F(PeerMessageCheck, RefusesImpossibleTermsAndIndexes) {
  raftpb::Message vote = Make(raftpb::MSG_VOTE);
  vote.set_index(1);
  vote.set_log_term(6);  // a last entry newer than the candidate's term
  EXPECT_EQ(Check(vote), "bad_term_or_index");
  raftpb::Message huge = Make(raftpb::MSG_APP);
  huge.set_index(~uint64_t{0});
  EXPECT_EQ(Check(huge), "bad_term_or_index");
  raftpb::Message context = Make(raftpb::MSG_HEARTBEAT);
  context.set_context(std::string(10000, 'c'));
  EXPECT_EQ(Check(context), "bad_term_or_index");
}

TEST_F(PeerMessageCheck, RefusesSnapshotsWithUnrestorableConfigs) {
  raftpb::Message snap = Make(raftpb::MSG_SNAP);
  raftpb::SnapshotMetadata* md = snap.mutable_snapshot()->mutable_metadata();
  md->set_index(40);
  md->set_term(5);
  EXPECT_EQ(Check(snap), "bad_snapshot");  // no voters
  md->mutable_conf_state()->add_voters(2);
  md->mutable_conf_state()->add_voters(99);  // members changed, but without us
  EXPECT_EQ(Check(snap), "bad_snapshot");
  md->mutable_conf_state()->add_voters(0);
  md->mutable_conf_state()->add_voters(1);
  EXPECT_EQ(Check(snap), "bad_snapshot");  // node id 0
  md->mutable_conf_state()->clear_voters();
  md->mutable_conf_state()->add_voters(1);
  md->mutable_conf_state()->add_voters(99);
  EXPECT_EQ(Check(snap), "ok");  // a member we do not know yet
  md->mutable_conf_state()->clear_voters();
  md->mutable_conf_state()->add_voters(1);
  md->mutable_conf_state()->add_learners(1);  // voter and learner at once
  EXPECT_EQ(Check(snap), "bad_snapshot");
  md->mutable_conf_state()->clear_learners();
  md->set_term(6);  // newer than the message
  EXPECT_EQ(Check(snap), "bad_snapshot");
  md->set_term(5);
  md->set_index(0);
  EXPECT_EQ(Check(snap), "bad_snapshot");
}

}  // namespace
}  // namespace tessera::server
