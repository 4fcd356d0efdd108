// SessionTable: per-shard client ids, global seqs, first_incomplete_seq.
#include "client/sessions.h"

#include "gtest/gtest.h"

namespace tessera::client {
namespace {

TEST(Sessions, ClientIdPerShardNonZeroAndStable) {
  SessionTable t;
  SessionTable::Ticket a = t.Begin(0);
  SessionTable::Ticket b = t.Begin(1);
  EXPECT_NE(a.session->client_id, 0u);
  EXPECT_NE(b.session->client_id, 0u);
  EXPECT_NE(a.session->client_id, b.session->client_id);
  EXPECT_EQ(t.Begin(0).session->client_id, a.session->client_id);
}

TEST(Sessions, SeqsAreGlobalAndIncreasing) {
  SessionTable t;
  uint64_t last = 0;
  for (uint32_t shard : {0u, 1u, 0u, 2u}) {
    SessionTable::Ticket x = t.Begin(shard);
    EXPECT_GT(x.seq, last);
    last = x.seq;
  }
}

TEST(Sessions, FirstIncompleteSeqIsZeroUntilTheShardAnswered) {
  SessionTable t;
  SessionTable::Ticket a = t.Begin(3);
  EXPECT_EQ(t.Header(a).first_incomplete_seq(), 0u);
  t.Answered(a);
  t.End(a);
  SessionTable::Ticket b = t.Begin(3);
  SessionTable::Ticket c = t.Begin(3);
  EXPECT_EQ(t.Header(c).first_incomplete_seq(), b.seq);  // b still in flight
  t.Answered(b);
  t.End(b);
  EXPECT_EQ(t.Header(c).first_incomplete_seq(), c.seq);
  EXPECT_EQ(t.Header(c).seq(), c.seq);
  // Another shard knows nothing of this client yet.
  SessionTable::Ticket d = t.Begin(4);
  EXPECT_EQ(t.Header(d).first_incomplete_seq(), 0u);
}

TEST(Sessions, RenewStartsAFreshSessionOnce) {
  SessionTable t;
  SessionTable::Ticket a = t.Begin(0);
  SessionTable::Ticket b = t.Begin(0);
  t.Answered(a);
  const uint64_t old_id = a.session->client_id;
  SessionTable::Ticket a2 = t.Renew(a);
  EXPECT_NE(a2.session->client_id, old_id);
  EXPECT_EQ(t.Header(a2).first_incomplete_seq(), 0u);
  // b's renewal joins the session a's renewal created.
  SessionTable::Ticket b2 = t.Renew(b);
  EXPECT_EQ(b2.session->client_id, a2.session->client_id);
  EXPECT_EQ(t.ClientIdForTesting(0), a2.session->client_id);
}

TEST(Sessions, MoveToAnotherShardTakesAFreshSeq) {
  SessionTable t;
  SessionTable::Ticket a = t.Begin(0);
  SessionTable::Ticket moved = t.Move(a, 5);
  EXPECT_GT(moved.seq, a.seq);
  EXPECT_EQ(moved.shard, 5u);
  EXPECT_TRUE(a.session->in_flight.empty());
}

// After a split the new shard continues the parent's session (the servers
// copied it): a write moved there keeps its seq, so a first attempt applied
// before the split is answered from the copy, not applied again; new writes
// to either shard share the client id and the rising seqs.
TEST(Sessions, AShardASplitMadeContinuesItsParentsSession) {
  SessionTable t;
  SessionTable::Ticket a = t.Begin(2);
  t.Answered(a);
  t.Split(2, 9);
  EXPECT_EQ(t.ClientIdForTesting(9), t.ClientIdForTesting(2));
  SessionTable::Ticket moved = t.Move(a, 9);
  EXPECT_EQ(moved.seq, a.seq);
  EXPECT_EQ(moved.shard, 9u);
  EXPECT_EQ(t.Header(moved).client_id(), t.Header(a).client_id());
  EXPECT_EQ(t.Header(moved).first_incomplete_seq(), a.seq);
  SessionTable::Ticket b = t.Begin(9);
  EXPECT_GT(b.seq, a.seq);
  EXPECT_EQ(t.Header(b).first_incomplete_seq(), a.seq);  // a still in flight
  t.End(moved);
  EXPECT_EQ(t.Header(b).first_incomplete_seq(), b.seq);
  // A shard that already has its own session keeps it.
  SessionTable::Ticket c = t.Begin(4);
  t.Split(2, 4);
  EXPECT_NE(t.ClientIdForTesting(4), t.ClientIdForTesting(2));
  EXPECT_GT(t.Move(t.Begin(2), 4).seq, c.seq);
}

// A write stuck in retries while the client's other writes to the shard go
// on: the server keeps at most 1024 results per session, so after
// kMaxSessionLag later writes new writes go to a fresh session, and the stuck
// one keeps its own session and seq (its retry is then neither refused as
// stale nor applied twice).
TEST(Sessions, AStuckWriteMovesLaterWritesToAFreshSession) {
  SessionTable t;
  SessionTable::Ticket warm = t.Begin(0);
  t.Answered(warm);
  t.End(warm);
  SessionTable::Ticket stuck = t.Begin(0);
  const uint64_t stuck_id = stuck.session->client_id;
  uint64_t on_stuck_session = 0;
  uint64_t fresh_id = 0;
  for (int i = 0; i < 3000; ++i) {
    SessionTable::Ticket x = t.Begin(0);
    if (x.session->client_id == stuck_id) {
      ++on_stuck_session;
    } else if (fresh_id == 0) {
      fresh_id = x.session->client_id;
    }
    t.Answered(x);
    t.End(x);
  }
  EXPECT_EQ(on_stuck_session, SessionTable::kMaxSessionLag - 1);
  EXPECT_NE(fresh_id, 0u);
  EXPECT_EQ(t.ClientIdForTesting(0), fresh_id) << "one fresh session, not one per write";
  const v1::Session retry = t.Header(stuck);
  EXPECT_EQ(retry.client_id(), stuck_id);
  EXPECT_EQ(retry.seq(), stuck.seq);
  EXPECT_EQ(retry.first_incomplete_seq(), stuck.seq);
  t.End(stuck);
}

// Writes that end promptly never leave their session, however many.
TEST(Sessions, PromptWritesStayOnOneSession) {
  SessionTable t;
  SessionTable::Ticket first = t.Begin(1);
  const uint64_t id = first.session->client_id;
  t.End(first);
  for (int i = 0; i < 5000; ++i) {
    SessionTable::Ticket a = t.Begin(1);
    SessionTable::Ticket b = t.Begin(1);  // two in flight at a time
    EXPECT_EQ(a.session->client_id, id);
    EXPECT_EQ(b.session->client_id, id);
    t.End(a);
    t.End(b);
  }
}

}  // namespace
}  // namespace tessera::client
