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

}  // namespace
}  // namespace tessera::client
