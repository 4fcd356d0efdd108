// StateMachine tests: every typed test runs against MemKvStore and the
// RocksDB engine. The randomized determinism test feeds the same command log
// to a Mem-backed and a RocksDB-backed state machine in different batch
// splits and requires identical results and identical shard snapshots;
// TESSERA_SEED=<n> replays one seed.
#include "server/kv/state_machine.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/kv/sm_format.h"
#include "storage/kv_store.h"
#include "storage/mem_kv_store.h"
#include "tests/server/kv/counting_kv_store.h"
#include "tests/storage/test_util.h"

namespace tessera::server {
namespace {

using ::tessera::storage::testing::EnvNames;
using ::tessera::storage::testing::MemEnv;
using ::tessera::storage::testing::RocksEnv;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Results = std::vector<serverpb::CommandResult>;

constexpr ShardId kMaxShard = std::numeric_limits<ShardId>::max();
constexpr int kOk = 0;
constexpr int kInvalid = static_cast<int>(absl::StatusCode::kInvalidArgument);
constexpr int kPrecondition = static_cast<int>(absl::StatusCode::kFailedPrecondition);

// ---- Command builders ----

serverpb::Command PutCmd(const std::string& key, const std::string& value,
                         bool return_previous = false) {
  serverpb::Command c;
  c.mutable_put()->set_key(key);
  c.mutable_put()->set_value(value);
  c.mutable_put()->set_return_previous(return_previous);
  return c;
}

serverpb::Command DelCmd(const std::string& key) {
  serverpb::Command c;
  c.mutable_delete_()->set_key(key);
  return c;
}

v1::Compare ValueIs(const std::string& key, v1::Compare::Op op, const std::string& value) {
  v1::Compare c;
  c.set_key(key);
  c.set_target(v1::Compare::TARGET_VALUE);
  c.set_op(op);
  c.set_value(value);
  return c;
}

v1::Compare VersionIs(const std::string& key, v1::Compare::Op op, uint64_t version) {
  v1::Compare c;
  c.set_key(key);
  c.set_target(v1::Compare::TARGET_VERSION);
  c.set_op(op);
  c.set_version(version);
  return c;
}

v1::Compare Exists(const std::string& key, bool exists) {
  v1::Compare c;
  c.set_key(key);
  c.set_target(v1::Compare::TARGET_EXISTS);
  c.set_op(exists ? v1::Compare::OP_EQUAL : v1::Compare::OP_NOT_EQUAL);
  return c;
}

v1::TxnOp OpPut(const std::string& key, const std::string& value, bool return_previous = false) {
  v1::TxnOp op;
  op.mutable_put()->set_key(key);
  op.mutable_put()->set_value(value);
  op.mutable_put()->set_return_previous(return_previous);
  return op;
}

v1::TxnOp OpDel(const std::string& key) {
  v1::TxnOp op;
  op.mutable_delete_()->set_key(key);
  return op;
}

v1::TxnOp OpGet(const std::string& key) {
  v1::TxnOp op;
  op.mutable_get()->set_key(key);
  return op;
}

serverpb::Command TxnCmd(const std::vector<v1::Compare>& compares,
                         const std::vector<v1::TxnOp>& success,
                         const std::vector<v1::TxnOp>& failure = {}) {
  serverpb::Command c;
  c.mutable_txn();
  for (const v1::Compare& compare : compares) *c.mutable_txn()->add_compares() = compare;
  for (const v1::TxnOp& op : success) *c.mutable_txn()->add_success() = op;
  for (const v1::TxnOp& op : failure) *c.mutable_txn()->add_failure() = op;
  return c;
}

// A command without an operation (a set session keeps its encoding non-empty).
serverpb::Command NoOperation() {
  serverpb::Command c;
  c.mutable_session();
  return c;
}

serverpb::Command WithSession(serverpb::Command c, uint64_t client_id, uint64_t seq,
                              uint64_t first_incomplete_seq) {
  c.mutable_session()->set_client_id(client_id);
  c.mutable_session()->set_seq(seq);
  c.mutable_session()->set_first_incomplete_seq(first_incomplete_seq);
  return c;
}

std::string Bytes(const char* data, size_t size) { return std::string(data, size); }

bool SameSessions(const sm::SessionMap& a, const sm::SessionMap& b) {
  if (a.size() != b.size()) return false;
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
    if (ia->first != ib->first ||
        ia->second.first_incomplete_seq != ib->second.first_incomplete_seq ||
        ia->second.last_used_index != ib->second.last_used_index ||
        ia->second.results != ib->second.results) {
      return false;
    }
  }
  return true;
}

// ---- Fixture ----

template <typename Env>
class StateMachineTest : public ::testing::Test {
 protected:
  StateMachineTest() { sm_ = std::make_unique<StateMachine>(&kv(), options_); }

  storage::KvStore& kv() { return env_.kv_store(); }
  StateMachine& sm() { return *sm_; }

  void SetOptions(const StateMachineOptions& options) {
    options_ = options;
    sm_ = std::make_unique<StateMachine>(&kv(), options_);
  }

  // A new StateMachine; the RocksDB engine is closed and reopened first.
  void Restart() {
    sm_.reset();
    if constexpr (std::is_same_v<Env, RocksEnv>) env_.Reopen();
    sm_ = std::make_unique<StateMachine>(&kv(), options_);
  }

  // The entry at `shard`'s next log index.
  CommittedEntry Next(const serverpb::Command& command, ShardId shard = 1) {
    return {shard, ++last_index_[shard], command.SerializeAsString()};
  }
  CommittedEntry NextRaw(std::string data, ShardId shard = 1) {
    return {shard, ++last_index_[shard], std::move(data)};
  }

  Results ApplyOk(const std::vector<CommittedEntry>& entries) {
    Results results;
    absl::Status s = sm().Apply(entries, &results);
    EXPECT_THAT(s, IsOk());
    EXPECT_EQ(results.size(), s.ok() ? entries.size() : 0u);
    return results;
  }

  // Applies one command as its own batch.
  serverpb::CommandResult Run(const serverpb::Command& command, ShardId shard = 1) {
    Results results = ApplyOk({Next(command, shard)});
    return results.empty() ? serverpb::CommandResult() : results[0];
  }

  v1::GetResponse Get(const std::string& key, ShardId shard = 1) {
    absl::StatusOr<v1::GetResponse> r = sm().Get(shard, key);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *r : v1::GetResponse();
  }

  uint64_t AppliedIndex(ShardId shard = 1) {
    absl::StatusOr<uint64_t> index = kv().AppliedIndex(shard);
    EXPECT_THAT(index, IsOk());
    return index.ok() ? *index : 0;
  }

  // The session table as stored (rebuilt from the checkpoint and delta
  // windows, as a restart would), checked against the StateMachine's own.
  sm::SessionMap StoredSessions(ShardId shard = 1) {
    absl::StatusOr<sm::SessionMap> stored = LoadSessionsForTesting(kv(), shard);
    EXPECT_THAT(stored, IsOk());
    if (!stored.ok()) return {};
    const sm::SessionMap* live = sm().SessionsForTesting(shard);
    if (live != nullptr) {
      EXPECT_TRUE(SameSessions(*live, *stored)) << "shard " << shard;
    }
    return *std::move(stored);
  }
  bool HasSession(uint64_t client_id, ShardId shard = 1) {
    return StoredSessions(shard).count(client_id) > 0;
  }
  bool HasResult(uint64_t client_id, uint64_t seq, ShardId shard = 1) {
    sm::SessionMap sessions = StoredSessions(shard);
    auto it = sessions.find(client_id);
    return it != sessions.end() && it->second.results.count(seq) > 0;
  }
  // The shard's meta records (key -> value).
  std::map<std::string, std::string> MetaRecords(ShardId shard = 1) {
    std::map<std::string, std::string> out;
    absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snapshot = kv().ExportSnapshot(shard);
    EXPECT_THAT(snapshot, IsOk());
    if (!snapshot.ok()) return out;
    storage::SnapshotRecord record;
    while (true) {
      absl::StatusOr<bool> more = (*snapshot)->Next(&record);
      EXPECT_THAT(more, IsOk());
      if (!more.ok() || !*more || !record.meta) break;
      out[record.key] = record.value;
    }
    return out;
  }

  Env env_;
  StateMachineOptions options_;
  std::unique_ptr<StateMachine> sm_;
  std::map<ShardId, uint64_t> last_index_;
};

using Envs = ::testing::Types<MemEnv, RocksEnv>;
TYPED_TEST_SUITE(StateMachineTest, Envs, EnvNames);

// ---- Put / Get / Delete ----

TYPED_TEST(StateMachineTest, PutGetDeleteVersions) {
  serverpb::CommandResult r = this->Run(PutCmd("a", "1"));
  EXPECT_EQ(r.code(), kOk);
  EXPECT_EQ(r.put().version(), 1u);
  EXPECT_FALSE(r.put().had_previous());

  r = this->Run(PutCmd("a", "2", /*return_previous=*/true));
  EXPECT_EQ(r.put().version(), 2u);
  EXPECT_TRUE(r.put().had_previous());
  EXPECT_EQ(r.put().previous().key(), "a");
  EXPECT_EQ(r.put().previous().value(), "1");
  EXPECT_EQ(r.put().previous().version(), 1u);

  r = this->Run(PutCmd("a", "3"));  // no return_previous: previous left empty
  EXPECT_EQ(r.put().version(), 3u);
  EXPECT_TRUE(r.put().had_previous());
  EXPECT_FALSE(r.put().has_previous());

  v1::GetResponse g = this->Get("a");
  EXPECT_TRUE(g.found());
  EXPECT_EQ(g.kv().key(), "a");
  EXPECT_EQ(g.kv().value(), "3");
  EXPECT_EQ(g.kv().version(), 3u);

  EXPECT_TRUE(this->Run(DelCmd("a")).delete_().deleted());
  EXPECT_FALSE(this->Run(DelCmd("a")).delete_().deleted());
  EXPECT_FALSE(this->Get("a").found());
  EXPECT_FALSE(this->Get("never").found());

  // A delete removes the key: a later put starts again at version 1.
  EXPECT_EQ(this->Run(PutCmd("a", "again")).put().version(), 1u);
  EXPECT_EQ(this->AppliedIndex(), 6u);
}

TYPED_TEST(StateMachineTest, BinaryKeysAndValuesAndEmptyValue) {
  const std::string zero = Bytes("\0", 1);
  const std::string ff = Bytes("\xFF\xFF", 2);
  const std::string mixed = Bytes("a\0b\xFF", 4);
  const std::string binary = Bytes("\0\xFF\0", 3);
  EXPECT_EQ(this->Run(PutCmd(zero, binary)).put().version(), 1u);
  EXPECT_EQ(this->Run(PutCmd(ff, "")).put().version(), 1u);
  EXPECT_EQ(this->Run(PutCmd(mixed, ff)).put().version(), 1u);
  EXPECT_EQ(this->Get(zero).kv().value(), binary);
  v1::GetResponse empty = this->Get(ff);
  EXPECT_TRUE(empty.found());
  EXPECT_EQ(empty.kv().value(), "");
  EXPECT_EQ(empty.kv().version(), 1u);
  EXPECT_EQ(this->Get(mixed).kv().value(), ff);
  // The stored form: format 1, version 1, create and mod revision (the
  // entry's index), no lease, then the value.
  absl::StatusOr<std::string> stored = this->kv().Get(1, zero);
  ASSERT_THAT(stored, IsOk());
  const uint64_t rev = this->Get(zero).kv().mod_revision();
  ASSERT_GT(rev, 0u);
  EXPECT_EQ(this->Get(zero).kv().create_revision(), rev);
  std::string expected = Bytes("\x01\0\0\0\0\0\0\0\x01", 9);
  for (int twice = 0; twice < 2; ++twice) {
    for (int shift = 56; shift >= 0; shift -= 8)
      expected.push_back(static_cast<char>(rev >> shift));
  }
  expected += std::string(8, '\0') + Bytes("\0\xFF\0", 3);
  EXPECT_EQ(*stored, expected);
}

// ---- Revisions and the watch history ----

TYPED_TEST(StateMachineTest, WritesAreStampedWithTheirRevision) {
  serverpb::CommandResult first = this->Run(PutCmd("k", "a"));
  const uint64_t r1 = this->last_index_[1];
  EXPECT_EQ(first.revision(), r1);
  this->ApplyOk({this->NextRaw("")});  // an empty entry uses up a revision
  serverpb::CommandResult second = this->Run(PutCmd("k", "b", /*return_previous=*/true));
  const uint64_t r2 = this->last_index_[1];
  EXPECT_EQ(second.revision(), r2);
  EXPECT_EQ(second.put().previous().mod_revision(), r1);
  v1::GetResponse got = this->Get("k");
  EXPECT_EQ(got.kv().create_revision(), r1);
  EXPECT_EQ(got.kv().mod_revision(), r2);
  EXPECT_EQ(got.kv().version(), 2u);
  EXPECT_EQ(got.header().revision(), r2);
  // A Txn's writes share its revision; a deleted key starts over.
  this->Run(TxnCmd({}, {OpPut("t1", "x"), OpDel("k"), OpPut("t2", "y")}));
  const uint64_t r3 = this->last_index_[1];
  EXPECT_EQ(this->Get("t1").kv().mod_revision(), r3);
  EXPECT_EQ(this->Get("t2").kv().mod_revision(), r3);
  this->Run(PutCmd("k", "c"));
  EXPECT_EQ(this->Get("k").kv().create_revision(), this->last_index_[1]);
  // A retried write answers with its original revision.
  serverpb::CommandResult once = this->Run(WithSession(PutCmd("s", "1"), 9, 1, 1));
  serverpb::CommandResult again = this->Run(WithSession(PutCmd("s", "1"), 9, 1, 1));
  EXPECT_EQ(again.revision(), once.revision());
  EXPECT_EQ(this->Get("s").kv().version(), 1u);
  // A failed write gets no revision.
  EXPECT_EQ(this->Run(DelCmd("")).revision(), 0u);
}

TYPED_TEST(StateMachineTest, HistoryHoldsEveryEventInOrderWithItsPrevious) {
  this->Run(PutCmd("a", "1"));
  const uint64_t first = this->last_index_[1];
  this->Run(PutCmd("a", "2"));
  this->Run(DelCmd("missing"));  // deletes nothing: no event
  this->Run(TxnCmd({Exists("a", true)}, {OpDel("a"), OpPut("b", "3"), OpGet("b")}));
  const uint64_t txn = this->last_index_[1];
  this->Run(TxnCmd({Exists("zzz", true)}, {OpPut("never", "x")}));  // compare fails: nothing
  this->Run(WithSession(PutCmd("c", "4"), 5, 1, 1));
  this->Run(WithSession(PutCmd("c", "4"), 5, 1, 1));  // a retry: no second event

  absl::StatusOr<HistoryPage> page = this->sm().ReadHistory(1, first, 1 << 20);
  ASSERT_THAT(page, IsOk());
  EXPECT_FALSE(page->compacted);
  EXPECT_FALSE(page->more);
  EXPECT_EQ(page->applied_index, this->last_index_[1]);
  EXPECT_EQ(page->floor, 1u) << "a new shard's history starts at revision 1";
  ASSERT_EQ(page->events.size(), 5u);
  const auto& e = page->events;
  EXPECT_EQ(e[0].key, "a");
  EXPECT_EQ(e[0].revision, first);
  EXPECT_TRUE(e[0].prev_stored.empty());
  EXPECT_EQ(e[1].key, "a");
  EXPECT_EQ(sm::DecodeValue(e[1].stored)->value, "2");
  EXPECT_EQ(sm::DecodeValue(e[1].prev_stored)->value, "1");
  EXPECT_EQ(e[2].key, "a");
  EXPECT_TRUE(e[2].deleted);
  EXPECT_EQ(e[2].revision, txn);
  EXPECT_EQ(e[2].n, 0u);
  EXPECT_EQ(sm::DecodeValue(e[2].prev_stored)->value, "2");
  EXPECT_EQ(e[3].key, "b");
  EXPECT_EQ(e[3].revision, txn);
  EXPECT_EQ(e[3].n, 1u);
  EXPECT_EQ(e[4].key, "c");
  // From a later revision: only what follows.
  absl::StatusOr<HistoryPage> later = this->sm().ReadHistory(1, txn + 1, 1 << 20);
  ASSERT_THAT(later, IsOk());
  ASSERT_EQ(later->events.size(), 1u);
  EXPECT_EQ(later->events[0].key, "c");
  // Small pages hold whole revisions: the Txn's two events come together.
  std::vector<std::string> keys;
  uint64_t from = first;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<HistoryPage> p = this->sm().ReadHistory(1, from, 1);
    ASSERT_THAT(p, IsOk());
    for (const sm::HistoryEvent& event : p->events) keys.push_back(event.key);
    if (!p->more) break;
    ASSERT_FALSE(p->events.empty());
    if (p->events.front().revision == txn) {
      EXPECT_EQ(p->events.size(), 2u);
    }
    from = p->next_revision;
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"a", "a", "a", "b", "c"}));
  // The history survives a restart.
  this->Restart();
  absl::StatusOr<HistoryPage> again = this->sm().ReadHistory(1, first, 1 << 20);
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->events.size(), 5u);
}

// ---- Leases ----

serverpb::Command LeasePut(const std::string& key, uint64_t lease) {
  serverpb::Command c = PutCmd(key, "v");
  c.mutable_put()->set_lease(lease);
  return c;
}

serverpb::Command Revoke(std::vector<uint64_t> leases) {
  serverpb::Command c;
  for (uint64_t lease : leases) c.mutable_revoke_leases()->add_leases(lease);
  return c;
}

constexpr int kNotFound = static_cast<int>(absl::StatusCode::kNotFound);

TYPED_TEST(StateMachineTest, RevokeDeletesTheLeasesKeysAtItsRevisionAndRefusesLaterPuts) {
  EXPECT_EQ(this->Run(LeasePut("a", 7)).code(), kOk);
  EXPECT_EQ(this->Run(LeasePut("b", 7)).code(), kOk);
  EXPECT_EQ(this->Run(LeasePut("c", 8)).code(), kOk);
  EXPECT_EQ(this->Run(PutCmd("d", "v")).code(), kOk);
  v1::TxnOp op = OpPut("e", "v");
  op.mutable_put()->set_lease(7);
  EXPECT_EQ(this->Run(TxnCmd({}, {op})).code(), kOk);
  EXPECT_EQ(this->Get("a").kv().lease(), 7u);

  serverpb::CommandResult revoked = this->Run(Revoke({7}));
  EXPECT_EQ(revoked.code(), kOk);
  const uint64_t at = this->last_index_[1];
  EXPECT_EQ(revoked.revision(), at);
  for (const char* gone : {"a", "b", "e"}) EXPECT_FALSE(this->Get(gone).found()) << gone;
  EXPECT_EQ(this->Get("c").kv().lease(), 8u);
  EXPECT_TRUE(this->Get("d").found());
  // Watchers see the deletes, all at the revoke's revision.
  absl::StatusOr<HistoryPage> page = this->sm().ReadHistory(1, at, 1 << 20);
  ASSERT_THAT(page, IsOk());
  std::vector<std::string> deleted;
  for (const sm::HistoryEvent& event : page->events) {
    EXPECT_TRUE(event.deleted);
    EXPECT_EQ(event.revision, at);
    deleted.push_back(event.key);
  }
  EXPECT_THAT(deleted, ElementsAre("a", "b", "e"));

  // A put (or a Txn's) naming the ended lease is refused; nothing changes.
  serverpb::CommandResult late = this->Run(LeasePut("f", 7));
  EXPECT_EQ(late.code(), kNotFound);
  EXPECT_THAT(late.message(), HasSubstr("lease 7"));
  EXPECT_EQ(this->Run(TxnCmd({}, {OpPut("g", "v"), op})).code(), kNotFound);
  EXPECT_FALSE(this->Get("f").found());
  EXPECT_FALSE(this->Get("g").found());
  // Revoking again is harmless; the other lease still works.
  EXPECT_EQ(this->Run(Revoke({7, 8})).code(), kOk);
  EXPECT_FALSE(this->Get("c").found());
  // The ended leases are remembered across a restart.
  this->Restart();
  EXPECT_EQ(this->Run(LeasePut("h", 8)).code(), kNotFound);
}

TYPED_TEST(StateMachineTest, APutOrDeleteDetachesAKeyFromItsLease) {
  this->Run(LeasePut("kept", 7));
  this->Run(PutCmd("kept", "no lease now"));  // detaches
  this->Run(LeasePut("moved", 7));
  this->Run(LeasePut("moved", 9));  // to another lease
  this->Run(LeasePut("recreated", 7));
  this->Run(DelCmd("recreated"));
  this->Run(PutCmd("recreated", "v"));
  EXPECT_EQ(this->Run(Revoke({7})).code(), kOk);
  EXPECT_TRUE(this->Get("kept").found());
  EXPECT_EQ(this->Get("moved").kv().lease(), 9u);
  EXPECT_TRUE(this->Get("recreated").found());
  EXPECT_EQ(this->Run(Revoke({9})).code(), kOk);
  EXPECT_FALSE(this->Get("moved").found());
  // No attachment records are left behind.
  for (const auto& [key, value] : this->MetaRecords()) {
    EXPECT_NE(key[0], sm::kLeaseKeyPrefix[0]) << "left: " << key;
  }
}

TYPED_TEST(StateMachineTest, AnEndedLeaseIsForgottenAfterTheTombstoneRevisions) {
  StateMachineOptions options;
  options.history_compact_step = 4;
  options.lease_tombstone_revisions = 8;
  this->SetOptions(options);
  this->Run(Revoke({5}));
  EXPECT_EQ(this->Run(LeasePut("a", 5)).code(), kNotFound);
  // The revoke was at index 1; from index 12 (a multiple of 4, minus 8
  // above it) it is forgotten, and its records are deleted.
  while (this->last_index_[1] < 11) this->Run(PutCmd("pad", "v"));
  EXPECT_EQ(this->Run(LeasePut("a", 5)).code(), kOk) << "at index " << this->last_index_[1];
  for (const auto& [key, value] : this->MetaRecords()) {
    EXPECT_NE(key[0], sm::kLeaseTombstonePrefix[0]);
    EXPECT_NE(key[0], sm::kLeaseTombstoneOrderPrefix[0]);
  }
}

TYPED_TEST(StateMachineTest, TxnComparesCreateAndModRevisions) {
  this->Run(PutCmd("k", "1"));
  const uint64_t created = this->last_index_[1];
  this->Run(PutCmd("k", "2"));
  const uint64_t modified = this->last_index_[1];
  auto revision_is = [](v1::Compare::Target target, v1::Compare::Op op, uint64_t revision) {
    v1::Compare c;
    c.set_key("k");
    c.set_target(target);
    c.set_op(op);
    c.set_revision(revision);
    return c;
  };
  auto holds = [&](const v1::Compare& c) {
    serverpb::CommandResult r = this->Run(TxnCmd({c}, {}));
    EXPECT_EQ(r.code(), kOk);
    return r.txn().succeeded();
  };
  EXPECT_TRUE(
      holds(revision_is(v1::Compare::TARGET_CREATE_REVISION, v1::Compare::OP_EQUAL, created)));
  EXPECT_TRUE(
      holds(revision_is(v1::Compare::TARGET_MOD_REVISION, v1::Compare::OP_EQUAL, modified)));
  EXPECT_TRUE(
      holds(revision_is(v1::Compare::TARGET_CREATE_REVISION, v1::Compare::OP_LESS, modified)));
  EXPECT_FALSE(
      holds(revision_is(v1::Compare::TARGET_MOD_REVISION, v1::Compare::OP_LESS, modified)));
  v1::Compare missing = revision_is(v1::Compare::TARGET_CREATE_REVISION, v1::Compare::OP_EQUAL, 0);
  missing.set_key("absent");
  EXPECT_TRUE(holds(missing));
}

TYPED_TEST(StateMachineTest, HistoryIsCompactedByRevision) {
  StateMachineOptions options;
  options.history_revisions = 8;
  options.history_compact_step = 4;
  this->SetOptions(options);
  for (int i = 0; i < 30; ++i) this->Run(PutCmd("k" + std::to_string(i), "v"));
  // Compacted at index 28: revisions below 20 are gone.
  absl::StatusOr<HistoryPage> old = this->sm().ReadHistory(1, 19, 1 << 20);
  ASSERT_THAT(old, IsOk());
  EXPECT_TRUE(old->compacted);
  EXPECT_EQ(old->floor, 20u);
  absl::StatusOr<HistoryPage> kept = this->sm().ReadHistory(1, 20, 1 << 20);
  ASSERT_THAT(kept, IsOk());
  EXPECT_FALSE(kept->compacted);
  ASSERT_EQ(kept->events.size(), 11u);
  EXPECT_EQ(kept->events.front().revision, 20u);
  size_t history_records = 0;
  for (const auto& [key, value] : this->MetaRecords()) history_records += key[0] == 'W';
  EXPECT_EQ(history_records, 11u);
}

TYPED_TEST(StateMachineTest, CompactHistoryDropsTheEventsBelowItsRevision) {
  this->Run(PutCmd("a", "1"));
  this->Run(PutCmd("a", "2"));
  const uint64_t second = this->last_index_[1];
  serverpb::Command compact;
  compact.mutable_compact_history()->set_below_revision(second);
  // In one batch with a later put: the put's event stays.
  this->ApplyOk({this->Next(compact), this->Next(PutCmd("b", "3"))});
  absl::StatusOr<HistoryPage> page = this->sm().ReadHistory(1, second, 1 << 20);
  ASSERT_THAT(page, IsOk());
  EXPECT_EQ(page->floor, second);
  ASSERT_EQ(page->events.size(), 2u);
  EXPECT_EQ(page->events[0].revision, second);
  EXPECT_EQ(page->events[1].key, "b");
  EXPECT_TRUE(this->sm().ReadHistory(1, second - 1, 1 << 20)->compacted);
  // An older bound changes nothing; one above the entry stops at the entry.
  compact.mutable_compact_history()->set_below_revision(1);
  EXPECT_EQ(this->Run(compact).code(), kOk);
  EXPECT_EQ(this->sm().ReadHistory(1, second, 1 << 20)->floor, second);
  compact.mutable_compact_history()->set_below_revision(UINT64_MAX);
  EXPECT_EQ(this->Run(compact).code(), kOk);
  EXPECT_EQ(this->sm().ReadHistory(1, 0, 1 << 20)->floor, this->last_index_[1]);
  // With a session it is refused (only the leader's own, without one, count).
  EXPECT_EQ(this->Run(WithSession(compact, 9, 1, 1)).code(), kInvalid);
}

TYPED_TEST(StateMachineTest, NoHistoryIsKeptWhenItIsOff) {
  StateMachineOptions options;
  options.history_revisions = 0;
  this->SetOptions(options);
  for (int i = 0; i < 5; ++i) this->Run(PutCmd("k" + std::to_string(i), "v"));
  for (const auto& [key, value] : this->MetaRecords()) {
    EXPECT_TRUE(key[0] != 'W' && key[0] != 'F') << key;
  }
  absl::StatusOr<HistoryPage> past = this->sm().ReadHistory(1, 1, 1 << 20);
  ASSERT_THAT(past, IsOk());
  EXPECT_TRUE(past->compacted);
  EXPECT_EQ(past->floor, 6u);
  absl::StatusOr<HistoryPage> now = this->sm().ReadHistory(1, 6, 1 << 20);
  ASSERT_THAT(now, IsOk());
  EXPECT_FALSE(now->compacted);
  EXPECT_TRUE(now->events.empty());
}

// An ApplyObserver that records what it is told.
class RecordingObserver : public ApplyObserver {
 public:
  struct Call {
    ShardId shard;
    uint64_t applied;
    bool reset;
    std::vector<std::string> keys;
  };
  void OnApplied(ShardId shard, uint64_t applied_index, bool reset, bool /*split*/,
                 std::vector<sm::HistoryEvent> events) override {
    Call call{shard, applied_index, reset, {}};
    for (const sm::HistoryEvent& e : events) call.keys.push_back(e.key);
    calls.push_back(std::move(call));
  }
  std::vector<Call> calls;
};

TYPED_TEST(StateMachineTest, ObserverIsToldEachBatchAndResets) {
  RecordingObserver observer;
  this->sm().SetObserver(&observer);
  this->ApplyOk({this->Next(PutCmd("a", "1")), this->Next(PutCmd("b", "2")),
                 this->Next(PutCmd("c", "3"), 2)});
  ASSERT_EQ(observer.calls.size(), 2u);
  EXPECT_EQ(observer.calls[0].shard, 1u);
  EXPECT_TRUE(observer.calls[0].reset);  // the first apply loads the shard
  EXPECT_EQ(observer.calls[0].keys, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(observer.calls[0].applied, 2u);
  EXPECT_EQ(observer.calls[1].keys, (std::vector<std::string>{"c"}));
  this->Run(PutCmd("d", "4"));
  ASSERT_EQ(observer.calls.size(), 3u);
  EXPECT_FALSE(observer.calls[2].reset);
  EXPECT_EQ(observer.calls[2].keys, (std::vector<std::string>{"d"}));
  // A store moved underneath (as by a snapshot install): reset.
  ASSERT_THAT(this->kv().Apply({{1, ++this->last_index_[1], {}}}), IsOk());
  this->Run(PutCmd("e", "5"));
  ASSERT_EQ(observer.calls.size(), 4u);
  EXPECT_TRUE(observer.calls[3].reset);
  this->sm().SetObserver(nullptr);
}

TYPED_TEST(StateMachineTest, TwoCommandsOnOneKeyInOneBatch) {
  Results r = this->ApplyOk({this->Next(PutCmd("k", "a")),
                             this->Next(PutCmd("k", "b", /*return_previous=*/true)),
                             this->Next(DelCmd("k")), this->Next(DelCmd("k")),
                             this->Next(PutCmd("k", "c")), this->Next(PutCmd("k", "d"))});
  ASSERT_EQ(r.size(), 6u);
  EXPECT_EQ(r[0].put().version(), 1u);
  EXPECT_EQ(r[1].put().version(), 2u);
  EXPECT_EQ(r[1].put().previous().value(), "a");
  EXPECT_TRUE(r[2].delete_().deleted());
  EXPECT_FALSE(r[3].delete_().deleted());
  EXPECT_EQ(r[4].put().version(), 1u);
  EXPECT_EQ(r[5].put().version(), 2u);
  EXPECT_EQ(this->Get("k").kv().value(), "d");
  EXPECT_EQ(this->Get("k").kv().version(), 2u);
  EXPECT_EQ(this->AppliedIndex(), 6u);
}

TYPED_TEST(StateMachineTest, ShardsInOneBatchDoNotInterfere) {
  Results r =
      this->ApplyOk({this->Next(PutCmd("k", "s1"), 1), this->Next(PutCmd("k", "s0"), 0),
                     this->Next(PutCmd("k", "s1b"), 1), this->Next(PutCmd("k", "max"), kMaxShard),
                     this->Next(DelCmd("k"), 0), this->Next(PutCmd("k", "s1c"), 1)});
  ASSERT_EQ(r.size(), 6u);
  EXPECT_EQ(r[0].put().version(), 1u);
  EXPECT_EQ(r[1].put().version(), 1u);
  EXPECT_EQ(r[2].put().version(), 2u);
  EXPECT_EQ(r[3].put().version(), 1u);
  EXPECT_TRUE(r[4].delete_().deleted());
  EXPECT_EQ(r[5].put().version(), 3u);
  EXPECT_FALSE(this->Get("k", 0).found());
  EXPECT_EQ(this->Get("k", 1).kv().value(), "s1c");
  EXPECT_EQ(this->Get("k", kMaxShard).kv().value(), "max");
  EXPECT_FALSE(this->Get("k", 2).found());
  EXPECT_EQ(this->AppliedIndex(0), 2u);
  EXPECT_EQ(this->AppliedIndex(1), 3u);
  EXPECT_EQ(this->AppliedIndex(kMaxShard), 1u);
  EXPECT_EQ(this->AppliedIndex(2), 0u);
}

TYPED_TEST(StateMachineTest, EmptyEntryAdvancesAppliedIndexOnly) {
  Results r = this->ApplyOk({this->NextRaw(""), this->NextRaw(""), this->NextRaw("", 5)});
  ASSERT_EQ(r.size(), 3u);
  for (const serverpb::CommandResult& result : r) {
    EXPECT_EQ(result.code(), kOk);
    EXPECT_EQ(result.response_case(), serverpb::CommandResult::RESPONSE_NOT_SET);
  }
  EXPECT_EQ(this->AppliedIndex(1), 2u);
  EXPECT_EQ(this->AppliedIndex(5), 1u);
}

TYPED_TEST(StateMachineTest, UndecodableCommandIsInvalidArgumentAndAdvances) {
  // A varint that never ends: no protobuf parser accepts it.
  Results r = this->ApplyOk({this->NextRaw(std::string(11, '\xFF')), this->Next(PutCmd("k", "v"))});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].code(), kInvalid);
  EXPECT_THAT(r[0].message(), HasSubstr("undecodable"));
  EXPECT_EQ(r[1].put().version(), 1u);
  EXPECT_EQ(this->AppliedIndex(), 2u);
}

TYPED_TEST(StateMachineTest, BadCommandsAreInvalidArgumentAndChangeNothing) {
  this->Run(PutCmd("k", "v"));
  std::vector<serverpb::Command> bad = {
      PutCmd("", "v"),
      DelCmd(""),
      NoOperation(),
      TxnCmd({}, {OpPut("k", "changed"), OpPut("", "x")}),
      TxnCmd({}, {OpPut("k", "changed"), OpDel("")}),
      TxnCmd({}, {OpPut("k", "changed"), OpGet("")}),
      TxnCmd({}, {OpPut("k", "changed"), v1::TxnOp()}),
      TxnCmd({ValueIs("", v1::Compare::OP_EQUAL, "v")}, {OpPut("k", "changed")}),
      TxnCmd({}, {OpPut("k", "changed")}, {OpPut("", "x")}),
  };
  v1::Compare exists_less = Exists("k", true);
  exists_less.set_op(v1::Compare::OP_LESS);
  bad.push_back(TxnCmd({exists_less}, {OpPut("k", "changed")}));
  v1::Compare unknown_target = Exists("k", true);
  unknown_target.set_target(static_cast<v1::Compare::Target>(7));
  bad.push_back(TxnCmd({unknown_target}, {OpPut("k", "changed")}));
  v1::Compare unknown_op = VersionIs("k", v1::Compare::OP_EQUAL, 1);
  unknown_op.set_op(static_cast<v1::Compare::Op>(9));
  bad.push_back(TxnCmd({unknown_op}, {OpPut("k", "changed")}));

  for (size_t i = 0; i < bad.size(); ++i) {
    serverpb::CommandResult r = this->Run(bad[i]);
    EXPECT_EQ(r.code(), kInvalid) << "command " << i << ": " << bad[i].DebugString();
    EXPECT_FALSE(r.message().empty());
  }
  EXPECT_EQ(this->Get("k").kv().value(), "v");
  EXPECT_EQ(this->Get("k").kv().version(), 1u);
  EXPECT_EQ(this->AppliedIndex(), 1 + bad.size());
}

// ---- Txn ----

TYPED_TEST(StateMachineTest, TxnValueCompares) {
  this->Run(PutCmd("k", "m"));
  struct Case {
    v1::Compare::Op op;
    std::string value;
    bool holds;
  };
  const std::vector<Case> cases = {
      {v1::Compare::OP_EQUAL, "m", true},     {v1::Compare::OP_EQUAL, "n", false},
      {v1::Compare::OP_NOT_EQUAL, "n", true}, {v1::Compare::OP_NOT_EQUAL, "m", false},
      {v1::Compare::OP_LESS, "n", true},      {v1::Compare::OP_LESS, "m", false},
      {v1::Compare::OP_LESS, "a", false},     {v1::Compare::OP_GREATER, "a", true},
      {v1::Compare::OP_GREATER, "m", false},  {v1::Compare::OP_GREATER, "z", false},
      {v1::Compare::OP_LESS, "\xFF", true},   {v1::Compare::OP_GREATER, Bytes("\0", 1), true},
      {v1::Compare::OP_GREATER, "", true},    {v1::Compare::OP_LESS, "mm", true},
  };
  for (const Case& c : cases) {
    serverpb::CommandResult r = this->Run(TxnCmd({ValueIs("k", c.op, c.value)}, {OpGet("k")}));
    EXPECT_EQ(r.code(), kOk);
    EXPECT_EQ(r.txn().succeeded(), c.holds) << "op " << c.op << " value '" << c.value << "'";
    EXPECT_EQ(r.txn().results_size(), c.holds ? 1 : 0);
  }
  // A value compare on a missing key is false, whatever the op.
  for (v1::Compare::Op op : {v1::Compare::OP_EQUAL, v1::Compare::OP_NOT_EQUAL, v1::Compare::OP_LESS,
                             v1::Compare::OP_GREATER}) {
    EXPECT_FALSE(this->Run(TxnCmd({ValueIs("missing", op, "x")}, {})).txn().succeeded()) << op;
  }
}

TYPED_TEST(StateMachineTest, TxnVersionAndExistsCompares) {
  this->Run(PutCmd("k", "1"));
  this->Run(PutCmd("k", "2"));  // version 2
  auto holds = [&](const v1::Compare& c) { return this->Run(TxnCmd({c}, {})).txn().succeeded(); };
  EXPECT_TRUE(holds(VersionIs("k", v1::Compare::OP_EQUAL, 2)));
  EXPECT_FALSE(holds(VersionIs("k", v1::Compare::OP_EQUAL, 1)));
  EXPECT_TRUE(holds(VersionIs("k", v1::Compare::OP_NOT_EQUAL, 1)));
  EXPECT_TRUE(holds(VersionIs("k", v1::Compare::OP_LESS, 3)));
  EXPECT_FALSE(holds(VersionIs("k", v1::Compare::OP_LESS, 2)));
  EXPECT_TRUE(holds(VersionIs("k", v1::Compare::OP_GREATER, 1)));
  EXPECT_FALSE(holds(VersionIs("k", v1::Compare::OP_GREATER, 2)));
  // A missing key has version 0.
  EXPECT_TRUE(holds(VersionIs("missing", v1::Compare::OP_EQUAL, 0)));
  EXPECT_TRUE(holds(VersionIs("missing", v1::Compare::OP_LESS, 1)));
  EXPECT_FALSE(holds(VersionIs("missing", v1::Compare::OP_GREATER, 0)));
  EXPECT_TRUE(holds(Exists("k", true)));
  EXPECT_FALSE(holds(Exists("k", false)));
  EXPECT_FALSE(holds(Exists("missing", true)));
  EXPECT_TRUE(holds(Exists("missing", false)));
  // All compares must hold.
  EXPECT_TRUE(this->Run(TxnCmd({Exists("k", true), VersionIs("k", v1::Compare::OP_EQUAL, 2)}, {}))
                  .txn()
                  .succeeded());
  EXPECT_FALSE(
      this->Run(TxnCmd({Exists("k", true), Exists("missing", true)}, {})).txn().succeeded());
  // No compares: succeeds.
  EXPECT_TRUE(this->Run(TxnCmd({}, {})).txn().succeeded());
}

TYPED_TEST(StateMachineTest, TxnRunsBranchOpsInOrder) {
  this->Run(PutCmd("a", "1"));
  serverpb::CommandResult r =
      this->Run(TxnCmd({Exists("a", true)},
                       {OpPut("a", "2", /*return_previous=*/true), OpGet("a"), OpDel("a"),
                        OpGet("a"), OpDel("a"), OpPut("b", "x"), OpGet("b")},
                       {OpPut("failure", "ran")}));
  ASSERT_EQ(r.code(), kOk);
  ASSERT_TRUE(r.txn().succeeded());
  ASSERT_EQ(r.txn().results_size(), 7);
  EXPECT_EQ(r.txn().results(0).put().version(), 2u);
  EXPECT_EQ(r.txn().results(0).put().previous().value(), "1");
  EXPECT_EQ(r.txn().results(1).get().kv().value(), "2");
  EXPECT_EQ(r.txn().results(1).get().kv().version(), 2u);
  EXPECT_TRUE(r.txn().results(2).delete_().deleted());
  EXPECT_FALSE(r.txn().results(3).get().found());
  EXPECT_FALSE(r.txn().results(4).delete_().deleted());
  EXPECT_EQ(r.txn().results(5).put().version(), 1u);
  EXPECT_EQ(r.txn().results(6).get().kv().value(), "x");
  EXPECT_FALSE(this->Get("a").found());
  EXPECT_EQ(this->Get("b").kv().value(), "x");
  EXPECT_FALSE(this->Get("failure").found());

  // The failure branch.
  r = this->Run(TxnCmd({Exists("a", true)}, {OpPut("success", "ran")},
                       {OpPut("failure", "ran"), OpGet("failure"), OpGet("b")}));
  ASSERT_EQ(r.code(), kOk);
  EXPECT_FALSE(r.txn().succeeded());
  ASSERT_EQ(r.txn().results_size(), 3);
  EXPECT_EQ(r.txn().results(0).put().version(), 1u);
  EXPECT_EQ(r.txn().results(1).get().kv().value(), "ran");
  EXPECT_EQ(r.txn().results(2).get().kv().value(), "x");
  EXPECT_FALSE(this->Get("success").found());
  EXPECT_TRUE(this->Get("failure").found());
}

TYPED_TEST(StateMachineTest, CompareAndSwapByVersion) {
  const uint64_t v1 = this->Run(PutCmd("acct", "100")).put().version();
  // Two writers read version v1; the first CAS wins, the second sees the new version.
  auto cas = [&](const std::string& value) {
    return TxnCmd({VersionIs("acct", v1::Compare::OP_EQUAL, v1)}, {OpPut("acct", value)},
                  {OpGet("acct")});
  };
  Results r = this->ApplyOk({this->Next(cas("150")), this->Next(cas("175"))});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_TRUE(r[0].txn().succeeded());
  EXPECT_EQ(r[0].txn().results(0).put().version(), v1 + 1);
  EXPECT_FALSE(r[1].txn().succeeded());
  EXPECT_EQ(r[1].txn().results(0).get().kv().value(), "150");
  EXPECT_EQ(r[1].txn().results(0).get().kv().version(), v1 + 1);
  // Create-if-absent.
  serverpb::CommandResult create =
      this->Run(TxnCmd({VersionIs("new", v1::Compare::OP_EQUAL, 0)}, {OpPut("new", "first")}));
  EXPECT_TRUE(create.txn().succeeded());
  create = this->Run(TxnCmd({VersionIs("new", v1::Compare::OP_EQUAL, 0)}, {OpPut("new", "2nd")}));
  EXPECT_FALSE(create.txn().succeeded());
  EXPECT_EQ(this->Get("new").kv().value(), "first");
}

// ---- Replay ----

TYPED_TEST(StateMachineTest, ReplaySkipsAppliedEntries) {
  const serverpb::Command put = PutCmd("k", "v");
  const std::vector<CommittedEntry> log = {{1, 1, put.SerializeAsString()},
                                           {1, 2, put.SerializeAsString()},
                                           {1, 3, put.SerializeAsString()},
                                           {1, 4, put.SerializeAsString()},
                                           {1, 5, put.SerializeAsString()}};
  this->ApplyOk({log[0], log[1], log[2]});
  EXPECT_EQ(this->Get("k").kv().version(), 3u);

  // Entries 2 and 3 again, then new ones: only 4 and 5 apply.
  Results r = this->ApplyOk({log[1], log[2], log[3], log[4]});
  ASSERT_EQ(r.size(), 4u);
  EXPECT_EQ(r[0].ByteSizeLong(), 0u);
  EXPECT_EQ(r[1].ByteSizeLong(), 0u);
  EXPECT_EQ(r[2].put().version(), 4u);
  EXPECT_EQ(r[3].put().version(), 5u);
  EXPECT_EQ(this->AppliedIndex(), 5u);

  // After a restart the whole log replays as no-ops.
  this->Restart();
  r = this->ApplyOk(log);
  for (const serverpb::CommandResult& result : r) EXPECT_EQ(result.ByteSizeLong(), 0u);
  EXPECT_EQ(this->Get("k").kv().version(), 5u);
  EXPECT_EQ(this->AppliedIndex(), 5u);

  // A batch whose entries are all applied writes nothing (no error).
  r = this->ApplyOk({log[4]});
  EXPECT_EQ(r[0].ByteSizeLong(), 0u);
  // An index repeated inside one batch is skipped too.
  r = this->ApplyOk({{1, 6, put.SerializeAsString()}, {1, 6, put.SerializeAsString()}});
  EXPECT_EQ(r[0].put().version(), 6u);
  EXPECT_EQ(r[1].ByteSizeLong(), 0u);
  EXPECT_EQ(this->Get("k").kv().version(), 6u);
}

// ---- Sessions ----

TYPED_TEST(StateMachineTest, RetryInOneBatchReturnsFirstResult) {
  const serverpb::Command put = WithSession(PutCmd("k", "v", true), 42, 1, 1);
  Results r = this->ApplyOk({this->Next(put), this->Next(put)});
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].put().version(), 1u);
  EXPECT_EQ(r[1].SerializeAsString(), r[0].SerializeAsString());
  EXPECT_EQ(this->Get("k").kv().version(), 1u);
}

TYPED_TEST(StateMachineTest, RetryAcrossBatchesAndRestartReturnsFirstResult) {
  this->Run(PutCmd("k", "old"));
  const serverpb::Command put = WithSession(PutCmd("k", "v", true), 42, 1, 1);
  const serverpb::CommandResult first = this->Run(put);
  EXPECT_EQ(first.put().version(), 2u);
  EXPECT_EQ(first.put().previous().value(), "old");
  this->Run(PutCmd("other", "x"));
  EXPECT_EQ(this->Run(put).SerializeAsString(), first.SerializeAsString());
  this->Restart();
  EXPECT_EQ(this->Run(put).SerializeAsString(), first.SerializeAsString());
  EXPECT_EQ(this->Get("k").kv().version(), 2u);
  // A retried Txn keeps its original answer even though the state changed.
  const serverpb::Command txn = WithSession(
      TxnCmd({VersionIs("k", v1::Compare::OP_EQUAL, 2)}, {OpPut("k", "cas")}), 42, 2, 1);
  EXPECT_TRUE(this->Run(txn).txn().succeeded());
  EXPECT_TRUE(this->Run(txn).txn().succeeded());
  EXPECT_EQ(this->Get("k").kv().version(), 3u);
  // Another client with the same seq is independent.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "w"), 43, 1, 1)).put().version(), 4u);
  // The same client on another shard is an independent session.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "s2"), 42, 1, 1), 2).put().version(), 1u);
}

// Regression (issue 12, defect 12): a seq reused by a different request
// used to return the first request's result silently.
TYPED_TEST(StateMachineTest, SeqReusedByADifferentRequestIsFailedPrecondition) {
  const serverpb::Command put = WithSession(PutCmd("k", "v"), 42, 1, 1);
  const serverpb::CommandResult first = this->Run(put);
  ASSERT_EQ(first.put().version(), 1u);
  EXPECT_EQ(first.request_fingerprint(), 0u);  // internal: not handed back
  const std::map<std::string, std::string> meta = this->MetaRecords();
  ASSERT_TRUE(this->HasResult(42, 1));
  for (const serverpb::Command& other :
       {WithSession(PutCmd("k", "w"), 42, 1, 1), WithSession(PutCmd("j", "v"), 42, 1, 1),
        WithSession(DelCmd("k"), 42, 1, 1), WithSession(TxnCmd({}, {OpPut("k", "v")}), 42, 1, 1)}) {
    const serverpb::CommandResult r = this->Run(other);
    EXPECT_EQ(r.code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
    EXPECT_THAT(r.message(), HasSubstr("already used by a different request"));
  }
  // Nothing changed: the data, the session and its remembered result.
  EXPECT_EQ(this->Get("k").kv().value(), "v");
  EXPECT_EQ(this->Get("k").kv().version(), 1u);
  EXPECT_FALSE(this->Get("j").found());
  EXPECT_EQ(this->MetaRecords(), meta);
  // The same request still gets the first result, also after a restart, and
  // a retry may carry a higher first_incomplete_seq.
  EXPECT_EQ(this->Run(put).SerializeAsString(), first.SerializeAsString());
  this->Restart();
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 42, 1, 0)).SerializeAsString(),
            first.SerializeAsString());
}

// A shard written in session format 1 ("S"/"L"/"R" records, results
// without fingerprints from before they existed): read as is, converted to a
// checkpoint with the shard's next write, and its results still answer
// retries, by any request with their seq (no fingerprint), after restarts too.
TYPED_TEST(StateMachineTest, Format1SessionsAreConverted) {
  serverpb::CommandResult old_result;
  old_result.mutable_put()->set_version(1);
  sm::SessionRecord s42{.first_incomplete_seq = 1, .last_used_index = 1, .seqs = {1}};
  sm::SessionRecord s43{.first_incomplete_seq = 2, .last_used_index = 2, .prev = 42, .seqs = {}};
  s42.next = 43;
  using Kind = storage::Mutation::Kind;
  storage::ShardWrite old_format{
      .shard = 1,
      .applied_index = 2,
      .mutations = {{Kind::kPutMeta, sm::SessionListKey(), sm::EncodeSessionList({2, 42, 43})},
                    {Kind::kPutMeta, sm::SessionKey(42), sm::EncodeSessionRecord(s42)},
                    {Kind::kPutMeta, sm::SessionKey(43), sm::EncodeSessionRecord(s43)},
                    {Kind::kPutMeta, sm::ResultKey(42, 1), old_result.SerializeAsString()},
                    {Kind::kPut, "k", sm::EncodeValueFormat0(1, "v")}}};
  ASSERT_THAT(this->kv().Apply({old_format}), IsOk());
  this->last_index_[1] = 2;
  this->Restart();

  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "other"), 42, 1, 1)).SerializeAsString(),
            old_result.SerializeAsString());
  EXPECT_EQ(this->Get("k").kv().value(), "v");
  // Converted: no format 1 record is left, a checkpoint holds the table.
  std::map<std::string, std::string> meta = this->MetaRecords();
  ASSERT_EQ(meta.count(sm::CheckpointKey(0)), 1u);
  for (const auto& [key, value] : meta) {
    EXPECT_TRUE(key[0] == 'C' || key[0] == 'D' || key[0] == 'F' || key[0] == 'W') << key;
  }
  EXPECT_TRUE(this->HasSession(43));
  // Client 43 completed seq 1: a retry of it is refused, seq 2 applies.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "x"), 43, 1, 1)).code(), kPrecondition);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "x"), 43, 2, 2)).put().version(), 2u);
  this->Restart();
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "again"), 42, 1, 1)).SerializeAsString(),
            old_result.SerializeAsString());
  EXPECT_EQ(this->Get("k").kv().version(), 2u);
}

TYPED_TEST(StateMachineTest, ErrorResultsAreRememberedToo) {
  const serverpb::Command bad = WithSession(PutCmd("", "v"), 7, 1, 1);
  const serverpb::CommandResult first = this->Run(bad);
  EXPECT_EQ(first.code(), kInvalid);
  EXPECT_EQ(this->Run(bad).SerializeAsString(), first.SerializeAsString());
  // seq 0 is never valid with a client id.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 7, 0, 0)).code(), kInvalid);
  EXPECT_FALSE(this->Get("k").found());
}

TYPED_TEST(StateMachineTest, StaleSeqIsFailedPrecondition) {
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "1"), 5, 1, 1)).put().version(), 1u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "2"), 5, 2, 1)).put().version(), 2u);
  // The client got both replies: first_incomplete_seq 3 lets the server forget them.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "3"), 5, 3, 3)).put().version(), 3u);
  EXPECT_FALSE(this->HasResult(5, 1));
  EXPECT_FALSE(this->HasResult(5, 2));
  EXPECT_TRUE(this->HasResult(5, 3));
  serverpb::CommandResult r = this->Run(WithSession(PutCmd("k", "retry"), 5, 1, 1));
  EXPECT_EQ(r.code(), kPrecondition);
  EXPECT_THAT(r.message(), HasSubstr("session expired or stale seq"));
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "retry"), 5, 2, 3)).code(), kPrecondition);
  // A seq below the request's own first_incomplete_seq is rejected as well.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "bad"), 5, 4, 6)).code(), kPrecondition);
  // first_incomplete_seq never goes back: an older value in a request is ignored.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "4"), 5, 4, 1)).put().version(), 4u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "retry"), 5, 2, 1)).code(), kPrecondition);
  EXPECT_EQ(this->Get("k").kv().value(), "4");
  EXPECT_EQ(this->Get("k").kv().version(), 4u);
}

TYPED_TEST(StateMachineTest, SessionsEvictedLeastRecentlyUsedFirst) {
  this->SetOptions({.max_sessions_per_shard = 2});
  EXPECT_EQ(this->Run(WithSession(PutCmd("a", "1"), 1, 1, 1)).code(), kOk);
  EXPECT_EQ(this->Run(WithSession(PutCmd("b", "1"), 2, 1, 1)).code(), kOk);
  // Client 1 is used again, so client 2 is now the least recently used.
  EXPECT_EQ(this->Run(WithSession(PutCmd("a", "2"), 1, 2, 2)).code(), kOk);
  // A duplicate does not refresh a session.
  EXPECT_EQ(this->Run(WithSession(PutCmd("a", "2"), 1, 2, 2)).put().version(), 2u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("c", "1"), 3, 1, 1)).code(), kOk);  // evicts 2
  EXPECT_FALSE(this->HasSession(2));
  EXPECT_TRUE(this->HasSession(1));
  EXPECT_TRUE(this->HasSession(3));

  // Client 2 completed seq 1: its next write says first_incomplete_seq 2 and
  // is refused, since a retry of a forgotten write could apply twice.
  serverpb::CommandResult r = this->Run(WithSession(PutCmd("b", "2"), 2, 2, 2));
  EXPECT_EQ(r.code(), kPrecondition);
  EXPECT_EQ(this->Get("b").kv().version(), 1u);
  EXPECT_FALSE(this->HasSession(2));  // the refusal creates nothing

  // Sessions 1 and 3 still answer retries.
  EXPECT_EQ(this->Run(WithSession(PutCmd("a", "2"), 1, 2, 2)).put().version(), 2u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("c", "1"), 3, 1, 1)).put().version(), 1u);

  // Survives a restart: the LRU order is rebuilt from the meta records. Client 1 was last
  // used before client 3 (retries do not count), so a new client evicts it.
  this->Restart();
  EXPECT_EQ(this->Run(WithSession(PutCmd("d", "1"), 4, 1, 1)).code(), kOk);
  EXPECT_FALSE(this->HasSession(1));
  EXPECT_TRUE(this->HasSession(3));
  EXPECT_EQ(this->Run(WithSession(PutCmd("a", "3"), 1, 3, 3)).code(), kPrecondition);
  EXPECT_EQ(this->Get("a").kv().version(), 2u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("c", "1"), 3, 1, 1)).put().version(), 1u);
}

TYPED_TEST(StateMachineTest, EvictionWithinOneBatchAndMaxSessionsOne) {
  this->SetOptions({.max_sessions_per_shard = 1});
  Results r = this->ApplyOk({this->Next(WithSession(PutCmd("a", "1"), 1, 1, 1)),
                             this->Next(WithSession(PutCmd("a", "2"), 2, 1, 1)),
                             this->Next(WithSession(PutCmd("a", "3"), 1, 2, 2)),
                             this->Next(WithSession(PutCmd("a", "4"), 3, 1, 1)),
                             this->Next(WithSession(PutCmd("a", "4"), 3, 1, 1))});
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[0].put().version(), 1u);
  EXPECT_EQ(r[1].put().version(), 2u);
  EXPECT_EQ(r[2].code(), kPrecondition);
  EXPECT_EQ(r[3].put().version(), 3u);
  EXPECT_EQ(r[4].put().version(), 3u);
  EXPECT_EQ(this->Get("a").kv().version(), 3u);
  EXPECT_FALSE(this->HasSession(1));
  EXPECT_FALSE(this->HasSession(2));
  EXPECT_TRUE(this->HasSession(3));
}

TYPED_TEST(StateMachineTest, MaxResultsPerSessionDropsOldest) {
  this->SetOptions({.max_results_per_session = 3});
  for (uint64_t seq = 1; seq <= 5; ++seq) {
    // The client has all five in flight (first_incomplete_seq stays 1).
    EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 9, seq, 1)).put().version(), seq);
  }
  EXPECT_FALSE(this->HasResult(9, 1));
  EXPECT_FALSE(this->HasResult(9, 2));
  // Dropped results cannot be replayed, so their retries are refused.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 9, 1, 1)).code(), kPrecondition);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 9, 2, 1)).code(), kPrecondition);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 9, 3, 1)).put().version(), 3u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 9, 5, 1)).put().version(), 5u);
  EXPECT_EQ(this->Get("k").kv().version(), 5u);
}

TYPED_TEST(StateMachineTest, UnknownSessionCreatedOnFirstUseWithAnySeq) {
  // A client's first write on this shard may carry any seq when nothing completed.
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 11, 17, 1)).put().version(), 1u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 12, 3, 0)).put().version(), 2u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 11, 17, 1)).put().version(), 1u);
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 13, 9, 2)).code(), kPrecondition);
}

TYPED_TEST(StateMachineTest, SessionsTravelWithTheSnapshot) {
  const serverpb::Command put = WithSession(PutCmd("k", "v"), 42, 1, 1);
  const serverpb::CommandResult first = this->Run(put);
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snapshot = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snapshot, IsOk());
  storage::MemKvStore other;
  storage::ShardSnapshotReader reader(snapshot->get());
  ASSERT_THAT(other.InstallSnapshot(1, (*snapshot)->applied_index(), reader), IsOk());
  StateMachine replica(&other, {});
  Results r;
  ASSERT_THAT(replica.Apply({{1, 2, put.SerializeAsString()}}, &r), IsOk());
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].SerializeAsString(), first.SerializeAsString());
}

// ---- Scan ----

std::string Key(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "key%05d", i);
  return buf;
}

TYPED_TEST(StateMachineTest, ScanPagesWithContinuation) {
  constexpr int kKeys = 2345;
  std::vector<CommittedEntry> batch;
  for (int i = 0; i < kKeys; ++i) batch.push_back(this->Next(PutCmd(Key(i), "v" + Key(i))));
  batch.push_back(this->Next(PutCmd(Key(7), "again")));
  this->ApplyOk(batch);
  this->Run(PutCmd("other-shard", "x"), 2);

  v1::ScanRequest request;  // limit 0: the default (1000)
  std::vector<v1::KeyValue> all;
  std::vector<int> page_sizes;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<v1::ScanResponse> page = this->sm().Scan(1, request);
    ASSERT_THAT(page, IsOk());
    page_sizes.push_back(page->kvs_size());
    all.insert(all.end(), page->kvs().begin(), page->kvs().end());
    if (page->continuation().empty()) break;
    request.set_continuation(page->continuation());
  }
  EXPECT_THAT(page_sizes, ElementsAre(1000, 1000, 345));
  ASSERT_EQ(all.size(), static_cast<size_t>(kKeys));
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_EQ(all[i].key(), Key(i));
    EXPECT_EQ(all[i].value(), i == 7 ? "again" : "v" + Key(i));
    EXPECT_EQ(all[i].version(), i == 7 ? 2u : 1u);
  }

  // A bounded range with a small limit.
  request.Clear();
  request.set_start(Key(10));
  request.set_end(Key(15));
  request.set_limit(2);
  std::vector<std::string> keys;
  for (int pages = 0; pages < 10; ++pages) {
    absl::StatusOr<v1::ScanResponse> page = this->sm().Scan(1, request);
    ASSERT_THAT(page, IsOk());
    for (const v1::KeyValue& kv : page->kvs()) keys.push_back(kv.key());
    if (page->continuation().empty()) break;
    request.set_continuation(page->continuation());
  }
  EXPECT_THAT(keys, ElementsAre(Key(10), Key(11), Key(12), Key(13), Key(14)));
}

TYPED_TEST(StateMachineTest, ScanPrefixAndEdges) {
  const std::string ff = Bytes("\xFF", 1);
  const std::string ff_a = Bytes(
      "\xFF"
      "a",
      2);
  const std::string ffff = Bytes("\xFF\xFF", 2);
  std::vector<CommittedEntry> batch;
  for (const std::string& k :
       {std::string("p"), std::string("p/1"), std::string("p/2"), std::string("p0"),
        std::string("q"), std::string("o"), ff, ff_a, ffff, Bytes("\0", 1)}) {
    batch.push_back(this->Next(PutCmd(k, "")));
  }
  this->ApplyOk(batch);
  auto scan_keys = [&](v1::ScanRequest request) {
    std::vector<std::string> keys;
    absl::StatusOr<v1::ScanResponse> page = this->sm().Scan(1, request);
    EXPECT_THAT(page, IsOk());
    if (!page.ok()) return keys;
    EXPECT_TRUE(page->continuation().empty());
    for (const v1::KeyValue& kv : page->kvs()) keys.push_back(kv.key());
    return keys;
  };
  v1::ScanRequest request;
  request.set_prefix("p/");
  EXPECT_THAT(scan_keys(request), ElementsAre("p/1", "p/2"));
  request.set_prefix("p");
  EXPECT_THAT(scan_keys(request), ElementsAre("p", "p/1", "p/2", "p0"));
  request.set_prefix(ff);
  EXPECT_THAT(scan_keys(request), ElementsAre(ff, ff_a, ffff));
  request.set_prefix("nothing");
  EXPECT_THAT(scan_keys(request), ElementsAre());
  request.Clear();
  request.set_start("p0");
  EXPECT_THAT(scan_keys(request), ElementsAre("p0", "q", ff, ff_a, ffff));
  request.Clear();
  request.set_end("o");
  EXPECT_THAT(scan_keys(request), ElementsAre(Bytes("\0", 1)));
  request.set_start("o");  // start == end: empty
  EXPECT_THAT(scan_keys(request), ElementsAre());
  EXPECT_THAT(scan_keys(v1::ScanRequest()).size(), 10u);
  // An empty shard.
  absl::StatusOr<v1::ScanResponse> empty = this->sm().Scan(77, v1::ScanRequest());
  ASSERT_THAT(empty, IsOk());
  EXPECT_EQ(empty->kvs_size(), 0);
  EXPECT_TRUE(empty->continuation().empty());
}

TYPED_TEST(StateMachineTest, ScanLimitDefaultAndCap) {
  this->SetOptions({.default_scan_limit = 5, .max_scan_limit = 7});
  std::vector<CommittedEntry> batch;
  for (int i = 0; i < 20; ++i) batch.push_back(this->Next(PutCmd(Key(i), "v")));
  this->ApplyOk(batch);
  auto count = [&](uint32_t limit) {
    v1::ScanRequest request;
    request.set_limit(limit);
    absl::StatusOr<v1::ScanResponse> page = this->sm().Scan(1, request);
    EXPECT_THAT(page, IsOk());
    if (!page.ok()) return -1;
    EXPECT_FALSE(page->continuation().empty());
    return page->kvs_size();
  };
  EXPECT_EQ(count(0), 5);
  EXPECT_EQ(count(3), 3);
  EXPECT_EQ(count(7), 7);
  EXPECT_EQ(count(1000), 7);
  // The last page of an exact fit has an empty continuation.
  v1::ScanRequest request;
  request.set_start(Key(13));
  request.set_limit(7);
  absl::StatusOr<v1::ScanResponse> last = this->sm().Scan(1, request);
  ASSERT_THAT(last, IsOk());
  EXPECT_EQ(last->kvs_size(), 7);
  EXPECT_TRUE(last->continuation().empty());
}

TYPED_TEST(StateMachineTest, ScanRejectsBadRequests) {
  std::vector<CommittedEntry> batch;
  for (int i = 0; i < 10; ++i) batch.push_back(this->Next(PutCmd(Key(i), "v")));
  this->ApplyOk(batch);
  v1::ScanRequest request;
  request.set_limit(3);
  absl::StatusOr<v1::ScanResponse> page = this->sm().Scan(1, request);
  ASSERT_THAT(page, IsOk());
  const std::string good = page->continuation();
  ASSERT_FALSE(good.empty());

  auto code = [&](const v1::ScanRequest& r, ShardId shard = 1) {
    return this->sm().Scan(shard, r).status().code();
  };
  v1::ScanRequest bad = request;
  bad.set_continuation("garbage");
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad.set_continuation(good.substr(0, 5));
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad.set_continuation(good);
  EXPECT_EQ(code(bad, 2), absl::StatusCode::kInvalidArgument);  // another shard's token
  bad.set_end(Key(2));  // the resume key is outside [start, end)
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad.Clear();
  bad.set_prefix("key");
  bad.set_start("a");
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad.Clear();
  bad.set_prefix("key");
  bad.set_end("z");
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad.Clear();
  bad.set_start("b");
  bad.set_end("a");
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  // The good token resumes.
  request.set_continuation(good);
  page = this->sm().Scan(1, request);
  ASSERT_THAT(page, IsOk());
  ASSERT_EQ(page->kvs_size(), 3);
  EXPECT_EQ(page->kvs(0).key(), Key(3));
}

// ---- Corruption and storage errors ----

TYPED_TEST(StateMachineTest, CorruptStoredValueIsDataLoss) {
  this->Run(PutCmd("good", "v"));
  storage::ShardWrite corrupt{.shard = 1,
                              .applied_index = 2,
                              .mutations = {{storage::Mutation::Kind::kPut, "bad", "short"}}};
  ASSERT_THAT(this->kv().Apply({corrupt}), IsOk());
  this->last_index_[1] = 2;

  EXPECT_THAT(this->sm().Get(1, "bad"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(this->sm().Scan(1, v1::ScanRequest()), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_TRUE(this->Get("good").found());

  // Applying a command that reads it fails the whole batch: nothing applies.
  for (const serverpb::Command& c :
       {PutCmd("bad", "v"), DelCmd("bad"), TxnCmd({Exists("bad", true)}, {}),
        TxnCmd({}, {OpGet("bad")})}) {
    Results results;
    EXPECT_THAT(this->sm().Apply({{1, 3, PutCmd("good", "v2").SerializeAsString()},
                                  {1, 4, c.SerializeAsString()}},
                                 &results),
                StatusIs(absl::StatusCode::kDataLoss));
    EXPECT_TRUE(results.empty());
    EXPECT_EQ(this->AppliedIndex(), 2u);
    EXPECT_EQ(this->Get("good").kv().version(), 1u);
  }
}

TYPED_TEST(StateMachineTest, CorruptSessionRecordIsDataLoss) {
  storage::ShardWrite corrupt{
      .shard = 1,
      .applied_index = 1,
      .mutations = {{storage::Mutation::Kind::kPutMeta, sm::SessionKey(5), "junk"}}};
  ASSERT_THAT(this->kv().Apply({corrupt}), IsOk());
  Results results;
  EXPECT_THAT(this->sm().Apply({{1, 2, WithSession(PutCmd("k", "v"), 5, 1, 1).SerializeAsString()}},
                               &results),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_EQ(this->AppliedIndex(), 1u);
}

// A corrupt checkpoint or delta window is found when the table is loaded
// (restart): the batch fails with kDataLoss, nothing is written, no abort.
TYPED_TEST(StateMachineTest, CorruptCheckpointOrDeltaIsDataLoss) {
  this->SetOptions({.session_checkpoint_ops = 3});
  for (uint64_t seq = 1; seq <= 4; ++seq) this->Run(WithSession(PutCmd("k", "v"), 5, seq, seq));
  std::map<std::string, std::string> meta = this->MetaRecords();
  ASSERT_EQ(meta.count(sm::CheckpointKey(0)), 1u);
  ASSERT_EQ(meta.count(sm::DeltaKey(4)), 1u);  // the op after the checkpoint at 3
  for (const std::string& key : {sm::CheckpointKey(0), sm::DeltaKey(4)}) {
    for (const std::string& junk :
         {std::string("junk"), meta[key].substr(0, meta[key].size() - 1), meta[key] + "x"}) {
      storage::ShardWrite corrupt{.shard = 1,
                                  .applied_index = ++this->last_index_[1],
                                  .mutations = {{storage::Mutation::Kind::kPutMeta, key, junk}}};
      ASSERT_THAT(this->kv().Apply({corrupt}), IsOk());
      this->Restart();
      const uint64_t applied = this->AppliedIndex();
      Results results;
      EXPECT_THAT(this->sm().Apply({this->Next(PutCmd("k", "w"))}, &results),
                  StatusIs(absl::StatusCode::kDataLoss, HasSubstr("session")))
          << key;
      --this->last_index_[1];
      EXPECT_TRUE(results.empty());
      EXPECT_EQ(this->AppliedIndex(), applied);
      EXPECT_THAT(LoadSessionsForTesting(this->kv(), 1), StatusIs(absl::StatusCode::kDataLoss));
      // Put the good record back.
      storage::ShardWrite repair{
          .shard = 1,
          .applied_index = ++this->last_index_[1],
          .mutations = {{storage::Mutation::Kind::kPutMeta, key, meta[key]}}};
      ASSERT_THAT(this->kv().Apply({repair}), IsOk());
      this->Restart();
    }
  }
  EXPECT_EQ(this->Run(WithSession(PutCmd("k", "v"), 5, 4, 4)).put().version(), 4u);
}

// Checkpoints replace the delta windows; every restart rebuilds exactly the
// table the StateMachine had (StoredSessions compares them), and behaviour
// (retries answered, stale seqs and evicted sessions refused) matches a
// reference StateMachine that never restarts, fed the same log.
TYPED_TEST(StateMachineTest, RestartRebuildsTheExactTable) {
  const StateMachineOptions options{
      .max_sessions_per_shard = 4, .max_results_per_session = 3, .session_checkpoint_ops = 40};
  this->SetOptions(options);
  storage::MemKvStore reference_kv;
  StateMachine reference(&reference_kv, options);
  auto apply_both = [&](const std::vector<CommittedEntry>& batch) {
    Results want;
    EXPECT_THAT(reference.Apply(batch, &want), IsOk());
    Results got = this->ApplyOk(batch);
    EXPECT_EQ(got.size(), want.size());
    for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
      EXPECT_EQ(got[i].SerializeAsString(), want[i].SerializeAsString()) << "entry " << i;
    }
    return got;
  };
  std::mt19937_64 rng(7);
  std::map<uint64_t, uint64_t> next_seq;
  std::vector<serverpb::Command> sent;
  int refused = 0;
  int remembered = 0;
  for (int round = 0; round < 8; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<CommittedEntry> batch;
    const int n = 1 + static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) {
      const uint64_t client = 1 + rng() % 6;
      const uint64_t seq = ++next_seq[client];
      const uint64_t first_incomplete = seq > 2 ? seq - rng() % 3 : 1;
      sent.push_back(
          WithSession(PutCmd("k" + std::to_string(client), "v"), client, seq, first_incomplete));
      batch.push_back(this->Next(sent.back()));
    }
    apply_both(batch);
    const sm::SessionMap before = this->StoredSessions();
    ASSERT_NE(reference.SessionsForTesting(1), nullptr);
    EXPECT_TRUE(SameSessions(before, *reference.SessionsForTesting(1)));
    this->Restart();
    EXPECT_TRUE(SameSessions(before, this->StoredSessions()));
    // Every command sent so far, again.
    std::vector<CommittedEntry> retries;
    for (const serverpb::Command& c : sent) retries.push_back(this->Next(c));
    for (const serverpb::CommandResult& r : apply_both(retries)) {
      refused += r.code() == kPrecondition ? 1 : 0;
      remembered += r.code() == kOk ? 1 : 0;
    }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(remembered, 0);
  std::map<std::string, std::string> meta = this->MetaRecords();
  EXPECT_EQ(meta.count(sm::CheckpointKey(0)), 1u);
  EXPECT_GE(meta.size(), 2u);  // and at least one delta window
}

// A snapshot installed into the store underneath a StateMachine that holds
// the shard's table (as the Node's raft loop does): the next Apply sees the
// store's applied index moved and reloads the sessions from the snapshot.
TYPED_TEST(StateMachineTest, SnapshotInstalledUnderneathReloadsSessions) {
  const serverpb::Command first = WithSession(PutCmd("k", "1"), 42, 1, 1);
  EXPECT_EQ(this->Run(first).put().version(), 1u);  // index 1; the table is loaded

  // Another replica got further: client 42 wrote seq 2, client 7 exists.
  storage::MemKvStore leader;
  StateMachine leader_sm(&leader, {});
  const serverpb::Command second = WithSession(PutCmd("k", "2"), 42, 2, 1);
  Results r;
  ASSERT_THAT(leader_sm.Apply({{1, 1, first.SerializeAsString()},
                               {1, 2, second.SerializeAsString()},
                               {1, 3, WithSession(PutCmd("j", "x"), 7, 1, 1).SerializeAsString()}},
                              &r),
              IsOk());
  const serverpb::CommandResult second_result = r[1];
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snapshot = leader.ExportSnapshot(1);
  ASSERT_THAT(snapshot, IsOk());
  storage::ShardSnapshotReader reader(snapshot->get());
  ASSERT_THAT(this->kv().InstallSnapshot(1, 3, reader), IsOk());
  this->last_index_[1] = 3;

  // A retry of seq 2 gets the leader's answer; without the reload it would
  // apply again (version 3).
  EXPECT_EQ(this->Run(second).SerializeAsString(), second_result.SerializeAsString());
  EXPECT_EQ(this->Get("k").kv().version(), 2u);
  EXPECT_TRUE(this->HasSession(7));
  EXPECT_EQ(this->Run(WithSession(PutCmd("j", "x"), 7, 1, 1)).put().version(), 1u);
}

// The cost this format exists for: per put with a session, one point read
// (the key's version) and one write (the value), plus the batch's delta
// window; no meta reads.
TYPED_TEST(StateMachineTest, OneReadAndOneWritePerPut) {
  storage::MemKvStore base;
  testing::CountingKvStore kv(&base);
  StateMachine sm(&kv, {});
  uint64_t index = 0;
  auto batch = [&](uint64_t seq) {
    std::vector<CommittedEntry> entries;
    for (uint64_t c = 1; c <= 64; ++c) {
      entries.push_back(
          {1, ++index,
           WithSession(PutCmd("k" + std::to_string(c), "v"), c, seq, seq).SerializeAsString()});
    }
    return entries;
  };
  Results r;
  ASSERT_THAT(sm.Apply(batch(1), &r), IsOk());  // loads the (empty) table, creates sessions
  for (uint64_t seq = 2; seq <= 5; ++seq) {
    kv.Reset();
    ASSERT_THAT(sm.Apply(batch(seq), &r), IsOk());
    for (const serverpb::CommandResult& result : r) ASSERT_EQ(result.code(), kOk);
    const testing::CountingKvStore::Counts& n = kv.counts();
    EXPECT_EQ(n.gets, 64u);
    EXPECT_EQ(n.get_metas, 0u);
    EXPECT_EQ(n.exports, 0u);
    EXPECT_EQ(n.applied_reads, 1u);
    EXPECT_EQ(n.applies, 1u);
    EXPECT_EQ(n.puts, 64u);
    EXPECT_EQ(n.deletes, 0u);
    // One history event per put; 64 ops fill two session windows of 32,
    // plus at most one partly filled one.
    EXPECT_LE(n.meta_puts, 64u + 3u);
    EXPECT_EQ(n.meta_deletes, 0u);
  }
}

// A MemKvStore whose Apply fails, as a full disk would.
class FailingApplyKvStore : public storage::MemKvStore {
 public:
  absl::Status Apply(absl::Span<const storage::ShardWrite>) override {
    return absl::UnavailableError("disk full");
  }
};

TEST(StateMachineStorage, ApplyErrorPropagatesAndClearsResults) {
  FailingApplyKvStore kv;
  StateMachine sm(&kv, {});
  Results results = {serverpb::CommandResult()};
  EXPECT_THAT(sm.Apply({{1, 1, PutCmd("k", "v").SerializeAsString()}}, &results),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("disk full")));
  EXPECT_TRUE(results.empty());
  // A batch of skipped entries does not write at all.
  EXPECT_THAT(sm.Apply({{1, 0, ""}}, &results), IsOk());
  ASSERT_EQ(results.size(), 1u);
}

// ---- Determinism ----

// A random command log over a few shards, keys and clients, with retries,
// stale seqs, evictions, Txns, empty and undecodable entries.
std::vector<CommittedEntry> RandomLog(std::mt19937_64& rng, int length) {
  const std::vector<ShardId> shards = {0, 1, kMaxShard};
  const std::vector<std::string> keys = {"a", "b", "c", Bytes("\0", 1), Bytes("\xFF", 1), ""};
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto key = [&]() { return keys[pick(keys.size() - (pick(20) == 0 ? 0 : 1))]; };
  auto value = [&]() { return std::string(pick(4), static_cast<char>('a' + pick(3))); };
  auto compare = [&]() {
    v1::Compare c;
    c.set_key(key());
    c.set_target(static_cast<v1::Compare::Target>(pick(3)));
    c.set_op(
        static_cast<v1::Compare::Op>(c.target() == v1::Compare::TARGET_EXISTS ? pick(2) : pick(4)));
    c.set_value(value());
    c.set_version(pick(4));
    return c;
  };
  // Draws are sequenced in statements (argument order is unspecified), so a
  // seed gives the same log with every compiler.
  auto put_op = [&]() {
    const std::string k = key();
    const std::string v = value();
    v1::TxnOp op = OpPut(k, v, pick(2) == 0);
    op.mutable_put()->set_lease(pick(3));  // 0: none
    return op;
  };
  auto txn_op = [&]() {
    switch (pick(3)) {
      case 0:
        return put_op();
      case 1:
        return OpDel(key());
      default:
        return OpGet(key());
    }
  };
  struct Client {
    uint64_t next_seq = 1;
    uint64_t first_incomplete = 1;
  };
  std::map<std::pair<uint64_t, ShardId>, Client> clients;
  std::map<ShardId, uint64_t> index;
  std::vector<CommittedEntry> log;
  for (int i = 0; i < length; ++i) {
    const ShardId shard = shards[pick(shards.size())];
    const uint64_t at = ++index[shard];
    const size_t kind = pick(20);
    if (kind == 0) {
      log.push_back({shard, at, ""});
      continue;
    }
    if (kind == 1) {
      log.push_back({shard, at, std::string(11, '\xFF')});
      continue;
    }
    if (kind == 2) {  // leases 1 and 2 end (again: the puts bring them back)
      serverpb::Command c;
      c.mutable_revoke_leases()->add_leases(1 + pick(2));
      log.push_back({shard, at, c.SerializeAsString()});
      continue;
    }
    if (kind == 3) {  // the history's time bound, anywhere (even above this entry)
      serverpb::Command c;
      c.mutable_compact_history()->set_below_revision(1 + pick(at + 8));
      log.push_back({shard, at, c.SerializeAsString()});
      continue;
    }
    serverpb::Command c;
    switch (pick(3)) {
      case 0: {
        const std::string k = key();
        const std::string v = value();
        c = PutCmd(k, v, pick(2) == 0);
        c.mutable_put()->set_lease(pick(3));
        break;
      }
      case 1:
        c = DelCmd(key());
        break;
      default: {
        std::vector<v1::Compare> compares(pick(3));
        for (v1::Compare& cmp : compares) cmp = compare();
        std::vector<v1::TxnOp> success(pick(4)), failure(pick(3));
        for (v1::TxnOp& op : success) op = txn_op();
        for (v1::TxnOp& op : failure) op = txn_op();
        c = TxnCmd(compares, success, failure);
      }
    }
    if (pick(4) != 0) {
      const uint64_t client_id = 1 + pick(6);
      Client& client = clients[{client_id, shard}];
      uint64_t seq = client.next_seq;
      if (client.next_seq > 1 && pick(4) == 0) {
        seq = 1 + pick(client.next_seq - 1);  // a retry, maybe of a forgotten seq
      } else {
        ++client.next_seq;
      }
      if (pick(3) == 0) client.first_incomplete = 1 + pick(client.next_seq);
      c = WithSession(c, client_id, seq, client.first_incomplete);
    }
    log.push_back({shard, at, c.SerializeAsString()});
  }
  return log;
}

// Applies `log` in random batches; sometimes re-sends the previous batch,
// which must come back as empty results.
Results ApplyInBatches(StateMachine& sm, const std::vector<CommittedEntry>& log,
                       std::mt19937_64& rng) {
  Results all;
  size_t begin = 0;
  size_t previous_begin = 0;
  while (begin < log.size()) {
    const size_t end = std::min(log.size(), begin + 1 + static_cast<size_t>(rng() % 12));
    std::vector<CommittedEntry> batch(log.begin() + begin, log.begin() + end);
    Results results;
    absl::Status s = sm.Apply(batch, &results);
    EXPECT_THAT(s, IsOk());
    if (!s.ok()) return all;
    all.insert(all.end(), results.begin(), results.end());
    if (begin > 0 && rng() % 8 == 0) {
      std::vector<CommittedEntry> again(log.begin() + previous_begin, log.begin() + end);
      EXPECT_THAT(sm.Apply(again, &results), IsOk());
      for (const serverpb::CommandResult& r : results) EXPECT_EQ(r.ByteSizeLong(), 0u);
    }
    previous_begin = begin;
    begin = end;
  }
  return all;
}

std::vector<storage::SnapshotRecord> Export(storage::KvStore& kv, ShardId shard,
                                            uint64_t* applied_index) {
  std::vector<storage::SnapshotRecord> records;
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snapshot = kv.ExportSnapshot(shard);
  EXPECT_THAT(snapshot, IsOk());
  if (!snapshot.ok()) return records;
  *applied_index = (*snapshot)->applied_index();
  storage::SnapshotRecord record;
  while (true) {
    absl::StatusOr<bool> more = (*snapshot)->Next(&record);
    EXPECT_THAT(more, IsOk());
    if (!more.ok() || !*more) break;
    records.push_back(record);
  }
  return records;
}

std::vector<uint64_t> Seeds() {
  if (const char* env = std::getenv("TESSERA_SEED"); env != nullptr && *env != '\0') {
    return {std::strtoull(env, nullptr, 10)};
  }
  std::vector<uint64_t> seeds;
  for (uint64_t seed = 1; seed <= 20; ++seed) seeds.push_back(seed);
  return seeds;
}

// Checks that `sm`'s session tables equal what a restart would load.
void ExpectTablesMatchStore(const StateMachine& sm, const storage::KvStore& kv) {
  for (ShardId shard : {ShardId{0}, ShardId{1}, kMaxShard}) {
    absl::StatusOr<sm::SessionMap> stored = LoadSessionsForTesting(kv, shard);
    ASSERT_THAT(stored, IsOk());
    const sm::SessionMap* live = sm.SessionsForTesting(shard);
    if (live != nullptr) {
      EXPECT_TRUE(SameSessions(*live, *stored)) << "shard " << shard;
    }
  }
}

void ExpectSameShards(storage::KvStore& a, storage::KvStore& b) {
  for (ShardId shard : {ShardId{0}, ShardId{1}, kMaxShard}) {
    uint64_t applied_a = 0;
    uint64_t applied_b = 0;
    const std::vector<storage::SnapshotRecord> records_a = Export(a, shard, &applied_a);
    const std::vector<storage::SnapshotRecord> records_b = Export(b, shard, &applied_b);
    EXPECT_EQ(applied_a, applied_b);
    ASSERT_EQ(records_a.size(), records_b.size()) << "shard " << shard;
    bool has_meta = false;
    for (size_t i = 0; i < records_a.size(); ++i) {
      EXPECT_EQ(records_a[i].meta, records_b[i].meta);
      EXPECT_EQ(records_a[i].key, records_b[i].key);
      EXPECT_EQ(records_a[i].value, records_b[i].value);
      has_meta = has_meta || records_a[i].meta;
    }
    EXPECT_TRUE(has_meta) << "shard " << shard;
  }
}

std::string SeedTrace(uint64_t seed) {
  return "seed=" + std::to_string(seed) + " (replay: TESSERA_SEED=" + std::to_string(seed) + ")";
}

// Small checkpoint thresholds, so that the 400-entry logs cross several
// checkpoints (of one to a few parts) and delta windows.
constexpr StateMachineOptions kDeterminismOptions{.max_sessions_per_shard = 3,
                                                  .max_results_per_session = 4,
                                                  .session_checkpoint_ops = 20,
                                                  .session_checkpoint_bytes = 1500,
                                                  .session_checkpoint_part_bytes = 100,
                                                  .history_revisions = 40,
                                                  .history_compact_step = 16,
                                                  .lease_tombstone_revisions = 32};

TEST(StateMachineDeterminism, SameLogGivesSameResultsAndBytes) {
  const StateMachineOptions options = kDeterminismOptions;
  for (uint64_t seed : Seeds()) {
    SCOPED_TRACE(SeedTrace(seed));
    std::mt19937_64 rng(seed);
    const std::vector<CommittedEntry> log = RandomLog(rng, 400);

    MemEnv mem;
    RocksEnv rocks;
    StateMachine a(&mem.kv_store(), options);
    StateMachine b(&rocks.kv_store(), options);
    std::mt19937_64 split_a(seed * 2 + 1);
    std::mt19937_64 split_b(seed * 2 + 2);
    const Results results_a = ApplyInBatches(a, log, split_a);
    const Results results_b = ApplyInBatches(b, log, split_b);
    ASSERT_EQ(results_a.size(), log.size());
    ASSERT_EQ(results_b.size(), log.size());
    int ok = 0;
    int stale = 0;
    int ended = 0;
    for (size_t i = 0; i < log.size(); ++i) {
      ASSERT_EQ(results_a[i].SerializeAsString(), results_b[i].SerializeAsString())
          << "entry " << i << " (shard " << log[i].shard << ", index " << log[i].index << "):\n"
          << results_a[i].DebugString() << "vs\n"
          << results_b[i].DebugString();
      ok += results_a[i].code() == kOk ? 1 : 0;
      stale += results_a[i].code() == kPrecondition ? 1 : 0;
      ended += results_a[i].code() == kNotFound ? 1 : 0;
    }
    EXPECT_GT(ok, 150);
    EXPECT_GT(stale, 0);  // sessions were evicted or seqs went stale
    EXPECT_GT(ended, 0);  // puts named ended leases
    ExpectSameShards(mem.kv_store(), rocks.kv_store());
    ExpectTablesMatchStore(a, mem.kv_store());
    ExpectTablesMatchStore(b, rocks.kv_store());
  }
}

// The same log on three replicas: A (Mem) applies it straight; B (RocksDB)
// is restarted (engine closed and reopened, a new StateMachine) at random
// batch boundaries; C (Mem) applies a prefix itself, then gets B's shards
// installed underneath it as snapshots at some later point and continues
// from there. Same results for every entry each applied, same session
// behaviour (retries answered, evicted sessions refused), same bytes.
TEST(StateMachineDeterminism, RestartsAndSnapshotInstallMidStream) {
  const StateMachineOptions options = kDeterminismOptions;
  for (uint64_t seed : Seeds()) {
    SCOPED_TRACE(SeedTrace(seed));
    std::mt19937_64 rng(seed);
    const std::vector<CommittedEntry> log = RandomLog(rng, 400);

    MemEnv mem;
    StateMachine a(&mem.kv_store(), options);
    std::mt19937_64 split_a(seed * 3 + 1);
    const Results results_a = ApplyInBatches(a, log, split_a);
    ASSERT_EQ(results_a.size(), log.size());

    RocksEnv rocks;
    auto b = std::make_unique<StateMachine>(&rocks.kv_store(), options);
    storage::MemKvStore c_kv;
    auto c = std::make_unique<StateMachine>(&c_kv, options);
    std::mt19937_64 split(seed * 3 + 2);
    const size_t c_stops = log.size() / 4 + split() % (log.size() / 4);     // C applies up to here
    const size_t install_at = log.size() / 2 + split() % (log.size() / 4);  // then B's state
    bool installed = false;
    int restarts = 0;
    size_t begin = 0;
    while (begin < log.size()) {
      const size_t end = std::min(log.size(), begin + 1 + static_cast<size_t>(split() % 12));
      const std::vector<CommittedEntry> batch(log.begin() + begin, log.begin() + end);
      Results results_b;
      ASSERT_THAT(b->Apply(batch, &results_b), IsOk()) << "B at " << begin;
      for (size_t i = 0; i < batch.size(); ++i) {
        ASSERT_EQ(results_b[i].SerializeAsString(), results_a[begin + i].SerializeAsString())
            << "B, entry " << begin + i;
      }
      if (end <= c_stops || installed) {
        Results results_c;
        ASSERT_THAT(c->Apply(batch, &results_c), IsOk()) << "C at " << begin;
        for (size_t i = 0; i < batch.size(); ++i) {
          ASSERT_EQ(results_c[i].SerializeAsString(), results_a[begin + i].SerializeAsString())
              << "C, entry " << begin + i;
        }
      } else if (end >= install_at) {
        // B's shards installed under C's live StateMachine.
        for (ShardId shard : {ShardId{0}, ShardId{1}, kMaxShard}) {
          absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snapshot =
              rocks.kv_store().ExportSnapshot(shard);
          ASSERT_THAT(snapshot, IsOk());
          storage::ShardSnapshotReader reader(snapshot->get());
          ASSERT_THAT(c_kv.InstallSnapshot(shard, (*snapshot)->applied_index(), reader), IsOk());
        }
        installed = true;
      }
      if (split() % 6 == 0) {
        b.reset();
        rocks.Reopen();
        b = std::make_unique<StateMachine>(&rocks.kv_store(), options);
        ++restarts;
      }
      begin = end;
    }
    EXPECT_GT(restarts, 0);
    EXPECT_TRUE(installed);
    ExpectSameShards(mem.kv_store(), rocks.kv_store());
    ExpectSameShards(mem.kv_store(), c_kv);
    ExpectTablesMatchStore(a, mem.kv_store());
    ExpectTablesMatchStore(*b, rocks.kv_store());
    ExpectTablesMatchStore(*c, c_kv);
  }
}

}  // namespace
}  // namespace tessera::server
