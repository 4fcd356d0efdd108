// Conformance suite for KvStore: every test runs against MemKvStore and the
// RocksDB implementation. Includes the snapshot export -> install round trip.
#include "storage/kv_store.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::Pair;
using Kind = Mutation::Kind;
using Items = std::vector<std::pair<std::string, std::string>>;

constexpr ShardId kMaxShard = std::numeric_limits<ShardId>::max();

Mutation Put(std::string key, std::string value) {
  return {Kind::kPut, std::move(key), std::move(value)};
}
Mutation Del(std::string key) { return {Kind::kDelete, std::move(key), ""}; }
Mutation PutMeta(std::string key, std::string value) {
  return {Kind::kPutMeta, std::move(key), std::move(value)};
}
Mutation DelMeta(std::string key) { return {Kind::kDeleteMeta, std::move(key), ""}; }

// Reads a snapshot to the end.
std::vector<SnapshotRecord> Drain(ShardSnapshot& snapshot) {
  std::vector<SnapshotRecord> out;
  SnapshotRecord r;
  while (true) {
    absl::StatusOr<bool> more = snapshot.Next(&r);
    EXPECT_THAT(more, IsOk());
    if (!more.ok() || !*more) break;
    out.push_back(r);
  }
  return out;
}

// A reader that fails after `good` records.
class FailingReader : public SnapshotReader {
 public:
  explicit FailingReader(int good) : good_(good) {}
  absl::StatusOr<bool> Next(SnapshotRecord* out) override {
    if (good_-- <= 0) return absl::UnavailableError("connection lost");
    *out = {false, "k" + std::to_string(good_), "v"};
    return true;
  }

 private:
  int good_;
};

template <typename Env>
class KvStoreTest : public ::testing::Test {
 protected:
  KvStore& kv() { return env_.kv_store(); }

  absl::Status Apply(ShardId shard, uint64_t index, std::vector<Mutation> mutations) {
    ShardWrite w;
    w.shard = shard;
    w.applied_index = index;
    w.mutations = std::move(mutations);
    return kv().Apply({w});
  }

  // Scans the whole range page by page with `limit`, checking continuation.
  Items ScanAll(ShardId shard, ScanOptions options) {
    Items out;
    for (int pages = 0; pages < 1000; ++pages) {
      absl::StatusOr<ScanResult> r = kv().Scan(shard, options);
      EXPECT_THAT(r, IsOk());
      if (!r.ok()) break;
      out.insert(out.end(), r->items.begin(), r->items.end());
      if (!r->more) {
        EXPECT_TRUE(r->resume_key.empty());
        break;
      }
      EXPECT_FALSE(r->items.empty());
      options.start = r->resume_key;
    }
    return out;
  }

  Env env_;
};

using Envs = ::testing::Types<testing::MemEnv, testing::MemWalEnv, testing::RocksEnv>;
TYPED_TEST_SUITE(KvStoreTest, Envs, testing::EnvNames);

TYPED_TEST(KvStoreTest, FreshShardIsEmpty) {
  EXPECT_THAT(this->kv().Get(1, "k"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().GetMeta(1, "k"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_THAT(this->kv().AppliedIndex(1), IsOk());
  EXPECT_EQ(*this->kv().AppliedIndex(1), 0u);
  absl::StatusOr<ScanResult> r = this->kv().Scan(1, {});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, IsEmpty());
  EXPECT_FALSE(r->more);
}

TYPED_TEST(KvStoreTest, PutGetDelete) {
  ASSERT_THAT(this->Apply(1, 1, {Put("a", "1"), Put("b", "2")}), IsOk());
  EXPECT_EQ(*this->kv().Get(1, "a"), "1");
  EXPECT_EQ(*this->kv().AppliedIndex(1), 1u);
  ASSERT_THAT(this->Apply(1, 2, {Put("a", "3"), Del("b"), Del("never-there")}), IsOk());
  EXPECT_EQ(*this->kv().Get(1, "a"), "3");
  EXPECT_THAT(this->kv().Get(1, "b"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 2u);
  // Mutations of one write apply in order.
  ASSERT_THAT(this->Apply(1, 3, {Put("c", "x"), Del("c"), Put("d", "y"), Put("d", "z")}), IsOk());
  EXPECT_THAT(this->kv().Get(1, "c"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().Get(1, "d"), "z");
}

TYPED_TEST(KvStoreTest, EmptyValuesBinaryKeysAndLargeValues) {
  const std::string zero_key("\0", 1);
  const std::string ff_key("\xFF\xFF", 2);
  const std::string mixed_key("a\0b\xFF", 4);
  const std::string binary_value("\0\xFF\0", 3);
  const std::string large(8 << 20, 'L');
  ASSERT_THAT(this->Apply(1, 1,
                          {Put("empty", ""), Put(zero_key, binary_value), Put(ff_key, "ff"),
                           Put(mixed_key, "mixed"), Put("large", large)}),
              IsOk());
  absl::StatusOr<std::string> v = this->kv().Get(1, "empty");
  ASSERT_THAT(v, IsOk());
  EXPECT_EQ(*v, "");
  EXPECT_EQ(*this->kv().Get(1, zero_key), binary_value);
  EXPECT_EQ(*this->kv().Get(1, ff_key), "ff");
  EXPECT_EQ(*this->kv().Get(1, mixed_key), "mixed");
  EXPECT_THAT(this->kv().Get(1, std::string("a\0b", 3)), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().Get(1, "large"), large);
  absl::StatusOr<ScanResult> r = this->kv().Scan(1, {});
  ASSERT_THAT(r, IsOk());
  ASSERT_EQ(r->items.size(), 5u);
  // Bytewise order: 0x00 first, 0xFF last.
  EXPECT_EQ(r->items.front().first, zero_key);
  EXPECT_EQ(r->items[1].first, mixed_key);
  EXPECT_EQ(r->items.back().first, ff_key);
}

TYPED_TEST(KvStoreTest, EmptyKeysAreRejected) {
  EXPECT_THAT(this->kv().Get(1, ""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(this->kv().GetMeta(1, ""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(this->Apply(1, 1, {Put("ok", "v"), Put("", "v")}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(this->Apply(1, 1, {Del("")}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(this->Apply(1, 1, {PutMeta("", "v")}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(this->kv().Get(1, "ok"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 0u);
}

TYPED_TEST(KvStoreTest, AppliedIndexMustIncrease) {
  ASSERT_THAT(this->Apply(1, 5, {Put("a", "1")}), IsOk());
  EXPECT_THAT(this->Apply(1, 5, {Put("a", "2")}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->Apply(1, 4, {Put("a", "2")}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->Apply(2, 0, {}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(*this->kv().Get(1, "a"), "1");
  EXPECT_EQ(*this->kv().AppliedIndex(1), 5u);
  // Gaps are fine (entries without state-machine effect need no apply).
  ASSERT_THAT(this->Apply(1, 9, {}), IsOk());
  EXPECT_EQ(*this->kv().AppliedIndex(1), 9u);
}

TYPED_TEST(KvStoreTest, ApplyIsAtomicAcrossShards) {
  ShardWrite a{1, 1, {Put("a", "1")}};
  ShardWrite b{2, 1, {Put("b", "1")}};
  ShardWrite a2{1, 2, {Put("a", "2")}};
  ASSERT_THAT(this->kv().Apply({a, b, a2}), IsOk());
  EXPECT_EQ(*this->kv().Get(1, "a"), "2");
  EXPECT_EQ(*this->kv().AppliedIndex(1), 2u);
  EXPECT_EQ(*this->kv().AppliedIndex(2), 1u);
  // The second write of shard 2 goes backwards: nothing at all is applied.
  ShardWrite c{3, 1, {Put("c", "1")}};
  ShardWrite b2{2, 3, {Put("b", "3")}};
  ShardWrite b_back{2, 2, {Put("b", "2")}};
  EXPECT_THAT(this->kv().Apply({c, b2, b_back}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->kv().Get(3, "c"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().Get(2, "b"), "1");
  EXPECT_EQ(*this->kv().AppliedIndex(2), 1u);
  EXPECT_EQ(*this->kv().AppliedIndex(3), 0u);
  EXPECT_THAT(this->kv().Apply({}), IsOk());
}

TYPED_TEST(KvStoreTest, MetaIsSeparateFromData) {
  ASSERT_THAT(this->Apply(1, 1, {PutMeta("session/7", "seq=3"), Put("user", "u")}), IsOk());
  EXPECT_EQ(*this->kv().GetMeta(1, "session/7"), "seq=3");
  EXPECT_THAT(this->kv().Get(1, "session/7"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().GetMeta(1, "user"), StatusIs(absl::StatusCode::kNotFound));
  absl::StatusOr<ScanResult> r = this->kv().Scan(1, {});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, ElementsAre(Pair("user", "u")));
  ASSERT_THAT(this->Apply(1, 2, {DelMeta("session/7"), Del("session/7")}), IsOk());
  EXPECT_THAT(this->kv().GetMeta(1, "session/7"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().Get(1, "user"), "u");
}

TYPED_TEST(KvStoreTest, ScanRangesLimitsAndContinuation) {
  std::vector<Mutation> puts;
  for (int i = 0; i < 50; ++i) {
    char key[8];
    snprintf(key, sizeof(key), "k%02d", i);
    puts.push_back(Put(key, "v" + std::to_string(i)));
  }
  ASSERT_THAT(this->Apply(1, 1, puts), IsOk());

  absl::StatusOr<ScanResult> r = this->kv().Scan(1, {.start = "k10", .end = "k13"});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, ElementsAre(Pair("k10", "v10"), Pair("k11", "v11"), Pair("k12", "v12")));
  EXPECT_FALSE(r->more);

  r = this->kv().Scan(1, {.start = "k10", .limit = 2});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, ElementsAre(Pair("k10", "v10"), Pair("k11", "v11")));
  EXPECT_TRUE(r->more);
  EXPECT_EQ(r->resume_key, "k12");

  // A limit exactly reaching the end of the range reports no more.
  r = this->kv().Scan(1, {.start = "k48", .limit = 2});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->items.size(), 2u);
  EXPECT_FALSE(r->more);

  // Start between keys, end beyond the last key.
  r = this->kv().Scan(1, {.start = "k45x", .end = "z"});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->items.size(), 4u);

  // Paging through everything returns every key once, in order.
  for (size_t limit : {1, 3, 7, 50, 100}) {
    Items all = this->ScanAll(1, {.limit = limit});
    ASSERT_EQ(all.size(), 50u) << limit;
    for (int i = 0; i < 50; ++i) EXPECT_EQ(all[i].second, "v" + std::to_string(i));
  }
  // A byte budget pages too, always returning at least one item.
  r = this->kv().Scan(1, {.max_bytes = 1});
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->items.size(), 1u);
  EXPECT_TRUE(r->more);
  r = this->kv().Scan(1, {.max_bytes = 10});  // 5 bytes per item: stops at 10
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->items.size(), 2u);
  EXPECT_EQ(this->ScanAll(1, {.max_bytes = 23}).size(), 50u);

  // Empty and inverted ranges.
  r = this->kv().Scan(1, {.start = "k20", .end = "k20"});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, IsEmpty());
  EXPECT_THAT(this->kv().Scan(1, {.start = "k21", .end = "k20"}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TYPED_TEST(KvStoreTest, ScansNeverLeakAnotherShardsKeys) {
  const std::string ff("\xFF\xFF\xFF", 3);
  const std::string zero("\0", 1);
  for (ShardId s : {ShardId{0}, ShardId{1}, ShardId{2}, ShardId{256}, kMaxShard - 1, kMaxShard}) {
    const std::string tag = std::to_string(s);
    ASSERT_THAT(this->Apply(s, 1,
                            {Put(zero, tag), Put(ff, tag), Put("m", tag), PutMeta("meta", tag),
                             PutMeta(ff, tag)}),
                IsOk());
  }
  for (ShardId s : {ShardId{0}, ShardId{1}, ShardId{2}, ShardId{256}, kMaxShard - 1, kMaxShard}) {
    const std::string tag = std::to_string(s);
    Items all = this->ScanAll(s, {.limit = 1});
    EXPECT_THAT(all, ElementsAre(Pair(zero, tag), Pair("m", tag), Pair(ff, tag))) << s;
    absl::StatusOr<ScanResult> r = this->kv().Scan(s, {.start = "m"});
    ASSERT_THAT(r, IsOk());
    EXPECT_THAT(r->items, ElementsAre(Pair("m", tag), Pair(ff, tag)));
  }
  absl::StatusOr<ScanResult> r = this->kv().Scan(3, {});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, IsEmpty());
}

TYPED_TEST(KvStoreTest, PrefixScan) {
  const std::string ab_ff("ab\xFF", 3);
  ASSERT_THAT(
      this->Apply(1, 1,
                  {Put("a", "1"), Put("ab", "2"), Put(ab_ff, "3"), Put("ac", "4"), Put("b", "5"),
                   Put(std::string("\xFF", 1), "6"), Put(std::string("\xFF\x01", 2), "7")}),
      IsOk());
  absl::StatusOr<ScanResult> r = this->kv().Scan(1, {.start = "ab", .end = PrefixEnd("ab")});
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, ElementsAre(Pair("ab", "2"), Pair(ab_ff, "3")));
  const std::string ff("\xFF", 1);
  r = this->kv().Scan(1, {.start = ff, .end = PrefixEnd(ff)});  // to the shard's end
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(r->items, ElementsAre(Pair(ff, "6"), Pair(std::string("\xFF\x01", 2), "7")));
}

TEST(PrefixEnd, IncrementsTheLastNonFFByte) {
  EXPECT_EQ(PrefixEnd("ab"), "ac");
  EXPECT_EQ(PrefixEnd(std::string("a\xFF", 2)), "b");
  EXPECT_EQ(PrefixEnd(std::string("a\xFE\xFF", 3)), std::string("a\xFF", 2));
  EXPECT_EQ(PrefixEnd(std::string("\0", 1)), std::string("\x01", 1));
  EXPECT_EQ(PrefixEnd(std::string("\xFF\xFF", 2)), "");
  EXPECT_EQ(PrefixEnd(""), "");
}

TYPED_TEST(KvStoreTest, DeleteShardRemovesDataMetaAndAppliedIndex) {
  ASSERT_THAT(this->Apply(1, 3, {Put("a", "1"), PutMeta("m", "1")}), IsOk());
  ASSERT_THAT(this->Apply(2, 4, {Put("a", "2"), PutMeta("m", "2")}), IsOk());
  ASSERT_THAT(this->kv().DeleteShard(1), IsOk());
  EXPECT_THAT(this->kv().Get(1, "a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().GetMeta(1, "m"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 0u);
  EXPECT_EQ(*this->kv().Get(2, "a"), "2");
  EXPECT_EQ(*this->kv().GetMeta(2, "m"), "2");
  EXPECT_EQ(*this->kv().AppliedIndex(2), 4u);
  // The shard can start over.
  ASSERT_THAT(this->Apply(1, 1, {Put("b", "1")}), IsOk());
  EXPECT_THAT(this->kv().DeleteShard(99), IsOk());
}

TYPED_TEST(KvStoreTest, SnapshotExportInstallRoundTrip) {
  const std::string bin("\0\xFF", 2);
  ASSERT_THAT(this->Apply(1, 7,
                          {Put("a", "1"), Put(bin, bin), Put("empty", ""), PutMeta("s/1", "x"),
                           PutMeta("s/2", "y")}),
              IsOk());
  ASSERT_THAT(this->Apply(2, 1, {Put("other", "o")}), IsOk());
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ((*snap)->applied_index(), 7u);
  std::vector<SnapshotRecord> records = Drain(**snap);
  ASSERT_EQ(records.size(), 5u);
  // Meta first, then data, each in key order.
  EXPECT_TRUE(records[0].meta);
  EXPECT_EQ(records[0].key, "s/1");
  EXPECT_TRUE(records[1].meta);
  EXPECT_FALSE(records[2].meta);
  EXPECT_EQ(records[2].key, bin);
  EXPECT_EQ(records[2].value, bin);
  EXPECT_EQ(records[4].key, "empty");
  EXPECT_EQ(records[4].value, "");
  // Next() after the end keeps returning false.
  SnapshotRecord extra;
  EXPECT_FALSE(*(*snap)->Next(&extra));
  snap->reset();

  // Install into shard 2: its old data is replaced, shard 1 is untouched.
  VectorSnapshotReader reader(records);
  ASSERT_THAT(this->kv().InstallSnapshot(2, 7, reader), IsOk());
  EXPECT_THAT(this->kv().Get(2, "other"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().Get(2, "a"), "1");
  EXPECT_EQ(*this->kv().Get(2, bin), bin);
  EXPECT_EQ(*this->kv().Get(2, "empty"), "");
  EXPECT_EQ(*this->kv().GetMeta(2, "s/2"), "y");
  EXPECT_THAT(this->kv().Get(2, "s/2"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(2), 7u);
  EXPECT_EQ(*this->kv().Get(1, "a"), "1");
  // Re-exporting the installed shard yields the same records.
  snap = this->kv().ExportSnapshot(2);
  ASSERT_THAT(snap, IsOk());
  std::vector<SnapshotRecord> again = Drain(**snap);
  ASSERT_EQ(again.size(), records.size());
  for (size_t i = 0; i < again.size(); ++i) {
    EXPECT_EQ(again[i].meta, records[i].meta);
    EXPECT_EQ(again[i].key, records[i].key);
    EXPECT_EQ(again[i].value, records[i].value);
  }
  // Applying continues after the installed index.
  EXPECT_THAT(this->Apply(2, 7, {}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->Apply(2, 8, {Put("b", "2")}), IsOk());
}

TYPED_TEST(KvStoreTest, SnapshotInstallDirectlyFromExport) {
  for (int i = 0; i < 1000; ++i) {
    ASSERT_THAT(this->Apply(1, i + 1, {Put("key" + std::to_string(i), std::string(100, 'v'))}),
                IsOk());
  }
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap, IsOk());
  ShardSnapshotReader reader(snap->get());
  ASSERT_THAT(this->kv().InstallSnapshot(5, (*snap)->applied_index(), reader), IsOk());
  EXPECT_EQ(this->ScanAll(5, {.limit = 128}).size(), 1000u);
  EXPECT_EQ(*this->kv().AppliedIndex(5), 1000u);
}

TYPED_TEST(KvStoreTest, SnapshotIsIsolatedFromLaterWrites) {
  ASSERT_THAT(this->Apply(1, 1, {Put("a", "old"), Put("b", "old"), PutMeta("m", "old")}), IsOk());
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap, IsOk());
  ASSERT_THAT(this->Apply(1, 2, {Put("a", "new"), Del("b"), Put("c", "new"), DelMeta("m")}),
              IsOk());
  EXPECT_EQ((*snap)->applied_index(), 1u);
  std::vector<SnapshotRecord> records = Drain(**snap);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_EQ(records[0].key, "m");
  EXPECT_EQ(records[0].value, "old");
  EXPECT_EQ(records[1].key, "a");
  EXPECT_EQ(records[1].value, "old");
  EXPECT_EQ(records[2].key, "b");
  // Even a DeleteShard after the export does not affect it.
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap2 = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap2, IsOk());
  ASSERT_THAT(this->kv().DeleteShard(1), IsOk());
  EXPECT_EQ((*snap2)->applied_index(), 2u);
  EXPECT_EQ(Drain(**snap2).size(), 2u);
}

TYPED_TEST(KvStoreTest, EmptyShardSnapshot) {
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(42);
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ((*snap)->applied_index(), 0u);
  EXPECT_TRUE(Drain(**snap).empty());
  // Installing an empty snapshot wipes the shard.
  ASSERT_THAT(this->Apply(1, 1, {Put("a", "1"), PutMeta("m", "1")}), IsOk());
  VectorSnapshotReader empty({});
  ASSERT_THAT(this->kv().InstallSnapshot(1, 10, empty), IsOk());
  EXPECT_THAT(this->kv().Get(1, "a"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().GetMeta(1, "m"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 10u);
}

TYPED_TEST(KvStoreTest, FailedInstallChangesNothing) {
  ASSERT_THAT(this->Apply(1, 3, {Put("a", "1"), PutMeta("m", "1")}), IsOk());
  VectorSnapshotReader bad({{false, "x", "1"}, {false, "", "empty key"}});
  EXPECT_THAT(this->kv().InstallSnapshot(1, 9, bad), StatusIs(absl::StatusCode::kInvalidArgument));
  FailingReader failing(3);
  EXPECT_THAT(this->kv().InstallSnapshot(1, 9, failing), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(*this->kv().Get(1, "a"), "1");
  EXPECT_EQ(*this->kv().GetMeta(1, "m"), "1");
  EXPECT_THAT(this->kv().Get(1, "x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().Get(1, "k0"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 3u);
}

// Stages every record of `records` and finishes; returns the staging.
template <typename KvStoreT>
std::unique_ptr<SnapshotStaging> StageAll(KvStoreT& kv, ShardId shard, uint64_t index,
                                          const std::vector<SnapshotRecord>& records) {
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = kv.StageSnapshot(shard, index);
  EXPECT_THAT(staging, IsOk());
  if (!staging.ok()) return nullptr;
  for (const SnapshotRecord& r : records) EXPECT_THAT((*staging)->Add(r), IsOk());
  EXPECT_THAT((*staging)->Finish(), IsOk());
  return *std::move(staging);
}

TYPED_TEST(KvStoreTest, StagedSnapshotCommitReplacesShardAtomically) {
  ASSERT_THAT(this->Apply(1, 3, {Put("a", "old"), Put("z", "old"), PutMeta("m", "old")}), IsOk());
  ASSERT_THAT(this->Apply(2, 4, {Put("a", "neighbour")}), IsOk());
  const std::string bin("\0\xFF", 2);
  std::vector<SnapshotRecord> records = {
      {true, "m", "new"}, {true, "n", ""}, {false, bin, bin}, {false, "a", "new"}};
  std::sort(records.begin() + 2, records.end(),
            [](const SnapshotRecord& x, const SnapshotRecord& y) { return x.key < y.key; });
  std::unique_ptr<SnapshotStaging> staging = StageAll(this->kv(), 1, 9, records);
  ASSERT_NE(staging, nullptr);
  EXPECT_EQ(staging->shard(), 1u);
  EXPECT_EQ(staging->applied_index(), 9u);
  EXPECT_EQ(staging->bytes(), 13u);  // keys + values
  // Staged, not yet visible.
  EXPECT_EQ(*this->kv().Get(1, "z"), "old");
  EXPECT_EQ(*this->kv().AppliedIndex(1), 3u);
  ASSERT_THAT(staging->Commit(), IsOk());
  EXPECT_EQ(*this->kv().AppliedIndex(1), 9u);
  EXPECT_EQ(*this->kv().Get(1, "a"), "new");
  EXPECT_EQ(*this->kv().Get(1, bin), bin);
  EXPECT_THAT(this->kv().Get(1, "z"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().GetMeta(1, "m"), "new");
  EXPECT_EQ(*this->kv().GetMeta(1, "n"), "");
  EXPECT_EQ(*this->kv().Get(2, "a"), "neighbour");
  // Committed once only; applying continues after the snapshot.
  EXPECT_THAT(staging->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->Apply(1, 9, {}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(this->Apply(1, 10, {Put("b", "after")}), IsOk());
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap, IsOk());
  EXPECT_EQ(Drain(**snap).size(), 5u);
}

TYPED_TEST(KvStoreTest, StagedSnapshotOfManyRecordsRoundTrips) {
  for (int i = 0; i < 50; ++i) {
    std::vector<Mutation> puts;
    for (int j = 0; j < 100; ++j) {
      puts.push_back(Put(absl::StrCat("key", i * 100 + j), std::string(200, 'a' + j % 26)));
    }
    ASSERT_THAT(this->Apply(1, i + 1, std::move(puts)), IsOk());
  }
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(1);
  ASSERT_THAT(snap, IsOk());
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(3, 50);
  ASSERT_THAT(staging, IsOk());
  SnapshotRecord r;
  while (*(*snap)->Next(&r)) ASSERT_THAT((*staging)->Add(r), IsOk());
  ASSERT_THAT((*staging)->Finish(), IsOk());
  ASSERT_THAT((*staging)->Commit(), IsOk());
  EXPECT_EQ(this->ScanAll(3, {.limit = 1000}).size(), 5000u);
  EXPECT_EQ(*this->kv().Get(3, "key4999"), std::string(200, 'a' + 99 % 26));
}

TYPED_TEST(KvStoreTest, StagedSnapshotRefusesBadRecordsAndStaleCommits) {
  ASSERT_THAT(this->Apply(1, 5, {Put("a", "old")}), IsOk());
  {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(1, 9);
    ASSERT_THAT(staging, IsOk());
    ASSERT_THAT((*staging)->Add({false, "b", "1"}), IsOk());
    EXPECT_THAT((*staging)->Add({false, "a", "1"}), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(1, 9);
    ASSERT_THAT(staging, IsOk());
    ASSERT_THAT((*staging)->Add({false, "b", "1"}), IsOk());
    EXPECT_THAT((*staging)->Add({false, "b", "2"}), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(1, 9);
    ASSERT_THAT(staging, IsOk());
    ASSERT_THAT((*staging)->Add({false, "b", "1"}), IsOk());
    EXPECT_THAT((*staging)->Add({true, "m", "1"}), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(1, 9);
    ASSERT_THAT(staging, IsOk());
    EXPECT_THAT((*staging)->Add({false, "", "1"}), StatusIs(absl::StatusCode::kInvalidArgument));
  }
  {
    // Not finished: no commit. Abandoned: nothing changes.
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = this->kv().StageSnapshot(1, 9);
    ASSERT_THAT(staging, IsOk());
    ASSERT_THAT((*staging)->Add({false, "x", "1"}), IsOk());
    EXPECT_THAT((*staging)->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  }
  // A snapshot at or below the store's applied index is refused.
  std::unique_ptr<SnapshotStaging> stale = StageAll(this->kv(), 1, 5, {{false, "s", "1"}});
  ASSERT_NE(stale, nullptr);
  EXPECT_THAT(stale->Commit(), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(stale->Add({false, "t", "1"}), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(*this->kv().Get(1, "a"), "old");
  EXPECT_THAT(this->kv().Get(1, "x"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(this->kv().Get(1, "s"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(*this->kv().AppliedIndex(1), 5u);
}

TYPED_TEST(KvStoreTest, ConcurrentAppliesAndReads) {
  constexpr int kThreads = 4;
  constexpr int kSteps = 100;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      for (int i = 1; i <= kSteps; ++i) {
        EXPECT_THAT(this->Apply(t, i, {Put("k" + std::to_string(i), "v")}), IsOk());
        EXPECT_THAT(this->kv().Get(t, "k" + std::to_string(i)), IsOk());
        EXPECT_THAT(this->kv().Scan((t + 1) % kThreads, {.limit = 10}), IsOk());
        if (i % 25 == 0) {
          absl::StatusOr<std::unique_ptr<ShardSnapshot>> snap = this->kv().ExportSnapshot(t);
          ASSERT_THAT(snap, IsOk());
          EXPECT_EQ(Drain(**snap).size(), static_cast<size_t>(i));
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(*this->kv().AppliedIndex(t), uint64_t{kSteps});
}

}  // namespace
}  // namespace tessera::storage
