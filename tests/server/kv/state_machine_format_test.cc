// Encodings of the StateMachine's on-disk format (server/sm_format.h).
#include "server/kv/sm_format.h"

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"

namespace tessera::server::sm {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST(SmFormat, ValueFormat1IsAHeaderThenTheBytes) {
  const VersionedValue value{.version = 0x0102030405060708,
                             .create_revision = 9,
                             .mod_revision = kMax,
                             .lease = 7,
                             .value = std::string("\0\xFF", 2)};
  const std::string encoded = EncodeValue(value);
  ASSERT_EQ(encoded.size(), 33u + 2u);
  EXPECT_EQ(encoded.substr(0, 9), std::string("\x01\x01\x02\x03\x04\x05\x06\x07\x08", 9));
  EXPECT_EQ(encoded.substr(33), std::string("\0\xFF", 2));
  absl::StatusOr<VersionedValue> decoded = DecodeValue(encoded);
  ASSERT_THAT(decoded, IsOk());
  EXPECT_EQ(decoded->version, value.version);
  EXPECT_EQ(decoded->create_revision, 9u);
  EXPECT_EQ(decoded->mod_revision, kMax);
  EXPECT_EQ(decoded->lease, 7u);
  EXPECT_EQ(decoded->value, value.value);
  absl::StatusOr<VersionedValue> empty = DecodeValue(EncodeValue({.version = 1}));
  ASSERT_THAT(empty, IsOk());
  EXPECT_EQ(empty->value, "");
}

TEST(SmFormat, ValueFormat0IsStillRead) {
  const std::string encoded = EncodeValueFormat0(0x0002030405060708, std::string("\0\xFF", 2));
  EXPECT_EQ(encoded, std::string("\x00\x02\x03\x04\x05\x06\x07\x08\0\xFF", 10));
  absl::StatusOr<VersionedValue> decoded = DecodeValue(encoded);
  ASSERT_THAT(decoded, IsOk());
  EXPECT_EQ(decoded->version, 0x0002030405060708u);
  EXPECT_EQ(decoded->create_revision, 0u);
  EXPECT_EQ(decoded->mod_revision, 0u);
  EXPECT_EQ(decoded->value, std::string("\0\xFF", 2));
}

TEST(SmFormat, HistoryEventsRoundTripAndSortByRevision) {
  HistoryEvent put{.revision = 300,
                   .n = 2,
                   .deleted = false,
                   .key = std::string("k\0", 2),
                   .stored = EncodeValue({.version = 2, .mod_revision = 300, .value = "v"}),
                   .prev_stored = EncodeValue({.version = 1, .mod_revision = 12, .value = "u"})};
  uint64_t revision = 0;
  uint32_t n = 0;
  ASSERT_TRUE(ParseHistoryKey(HistoryKey(300, 2), &revision, &n));
  EXPECT_EQ(revision, 300u);
  EXPECT_EQ(n, 2u);
  EXPECT_LT(HistoryKey(299, 7), HistoryKey(300, 0));
  EXPECT_LT(HistoryKey(300, 1), HistoryKey(300, 2));
  EXPECT_LT(HistoryKey(0xFF, 0), HistoryKey(0x100, 0));
  EXPECT_FALSE(ParseHistoryKey("H", &revision, &n));
  absl::StatusOr<HistoryEvent> back = DecodeHistoryEvent(300, 2, EncodeHistoryEvent(put));
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->key, put.key);
  EXPECT_EQ(back->stored, put.stored);
  EXPECT_EQ(back->prev_stored, put.prev_stored);
  EXPECT_FALSE(back->deleted);
  HistoryEvent del{.revision = 301, .deleted = true, .key = "k"};
  absl::StatusOr<HistoryEvent> del_back = DecodeHistoryEvent(301, 0, EncodeHistoryEvent(del));
  ASSERT_THAT(del_back, IsOk());
  EXPECT_TRUE(del_back->deleted);
  EXPECT_TRUE(del_back->prev_stored.empty());
  // Malformed: truncated, trailing bytes, a put without a value.
  const std::string good = EncodeHistoryEvent(put);
  EXPECT_THAT(DecodeHistoryEvent(1, 0, good.substr(0, good.size() - 1)),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeHistoryEvent(1, 0, good + "x"), StatusIs(absl::StatusCode::kDataLoss));
  HistoryEvent empty_put{.revision = 1, .key = "k"};
  EXPECT_THAT(DecodeHistoryEvent(1, 0, EncodeHistoryEvent(empty_put)),
              StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, ShardRangeRoundTripsAndMalformedIsDataLoss) {
  const ShardRange range{5, std::numeric_limits<uint64_t>::max(), 3};
  const std::string stored = EncodeRange(range);
  ASSERT_EQ(stored.size(), 25u);
  absl::StatusOr<ShardRange> back = DecodeRange(stored);
  ASSERT_THAT(back, IsOk());
  EXPECT_EQ(back->start, 5u);
  EXPECT_EQ(back->end, range.end);
  EXPECT_EQ(back->version, 3u);
  EXPECT_TRUE(back->Holds(5));
  EXPECT_FALSE(back->Holds(4));
  EXPECT_THAT(DecodeRange(stored.substr(1)), StatusIs(absl::StatusCode::kDataLoss));
  std::string bad_version = stored;
  bad_version[0] = 0x02;
  EXPECT_THAT(DecodeRange(bad_version), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeRange(EncodeRange({9, 8, 1})), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeRange(EncodeRange({1, 8, 0})), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, ShortValueIsDataLoss) {
  EXPECT_THAT(DecodeValue(""), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeValue("1234567"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeValue("12345678"), StatusIs(absl::StatusCode::kDataLoss));  // unknown format
  EXPECT_THAT(DecodeValue(std::string("\0"
                                      "1234567",
                                      8)),
              IsOk());  // format 0
  EXPECT_THAT(DecodeValue(std::string(32, '\x01')), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, SessionRecordsRoundTrip) {
  SessionRecord record{.first_incomplete_seq = 7,
                       .last_used_index = kMax,
                       .prev = 3,
                       .next = 0,
                       .seqs = {7, 9, kMax}};
  absl::StatusOr<SessionRecord> decoded = DecodeSessionRecord(EncodeSessionRecord(record));
  ASSERT_THAT(decoded, IsOk());
  EXPECT_EQ(decoded->first_incomplete_seq, 7u);
  EXPECT_EQ(decoded->last_used_index, kMax);
  EXPECT_EQ(decoded->prev, 3u);
  EXPECT_EQ(decoded->next, 0u);
  EXPECT_THAT(decoded->seqs, ElementsAre(7u, 9u, kMax));

  absl::StatusOr<SessionList> list = DecodeSessionList(EncodeSessionList({2, 5, kMax}));
  ASSERT_THAT(list, IsOk());
  EXPECT_EQ(list->count, 2u);
  EXPECT_EQ(list->head, 5u);
  EXPECT_EQ(list->tail, kMax);
}

TEST(SmFormat, MalformedSessionRecordsAreDataLoss) {
  std::string good = EncodeSessionRecord({.seqs = {1, 2}});
  EXPECT_THAT(DecodeSessionRecord(good.substr(0, good.size() - 1)),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeSessionRecord(good + "x"), StatusIs(absl::StatusCode::kDataLoss));
  std::string bad_version = good;
  bad_version[0] = 0x02;
  EXPECT_THAT(DecodeSessionRecord(bad_version), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeSessionRecord(EncodeSessionRecord({.seqs = {2, 1}})),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeSessionRecord(""), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeSessionList("short"), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, MetaKeysSortByClientThenSeq) {
  EXPECT_LT(ResultKey(1, kMax), ResultKey(2, 0));
  EXPECT_LT(ResultKey(1, 255), ResultKey(1, 256));
  EXPECT_NE(SessionKey(1), ResultKey(1, 0).substr(0, 9));
}

// ---- Format 2: checkpoint and delta windows ----

SessionMap SampleSessions() {
  SessionMap sessions;
  sessions[3] = Session{.first_incomplete_seq = 0, .last_used_index = 9, .results = {}};
  sessions[7] = Session{.first_incomplete_seq = 5,
                        .last_used_index = 12,
                        .results = {{5, std::string("r5\0", 3)}, {kMax, ""}}};
  sessions[kMax] = Session{.first_incomplete_seq = 1, .last_used_index = 2, .results = {{1, "x"}}};
  return sessions;
}

void ExpectSameSessions(const SessionMap& a, const SessionMap& b) {
  ASSERT_EQ(a.size(), b.size());
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib) {
    EXPECT_EQ(ia->first, ib->first);
    EXPECT_EQ(ia->second.first_incomplete_seq, ib->second.first_incomplete_seq);
    EXPECT_EQ(ia->second.last_used_index, ib->second.last_used_index);
    EXPECT_EQ(ia->second.results, ib->second.results);
  }
}

TEST(SmFormat, CheckpointRoundTrip) {
  const std::vector<std::string> encoded = EncodeCheckpoint(12, SampleSessions());
  ASSERT_EQ(encoded.size(), 1u);
  EXPECT_EQ(encoded[0][0], kSessionFormat);
  uint64_t index = 0;
  SessionMap decoded;
  ASSERT_THAT(DecodeCheckpoint(encoded, &index, &decoded), IsOk());
  EXPECT_EQ(index, 12u);
  ExpectSameSessions(decoded, SampleSessions());
  // Same table, same bytes.
  EXPECT_EQ(EncodeCheckpoint(index, decoded), encoded);
  // An empty table is one part with no sessions.
  ASSERT_EQ(EncodeCheckpoint(0, {}).size(), 1u);
  ASSERT_THAT(DecodeCheckpoint(EncodeCheckpoint(0, {}), &index, &decoded), IsOk());
  EXPECT_EQ(index, 0u);
  EXPECT_TRUE(decoded.empty());
}

TEST(SmFormat, CheckpointSplitsIntoPartsAtSessionBoundaries) {
  // Parts close once they hold 1 byte: one session each.
  const std::vector<std::string> parts = EncodeCheckpoint(12, SampleSessions(), 1);
  ASSERT_EQ(parts.size(), 3u);
  uint64_t index = 0;
  SessionMap decoded;
  ASSERT_THAT(DecodeCheckpoint(parts, &index, &decoded), IsOk());
  EXPECT_EQ(index, 12u);
  ExpectSameSessions(decoded, SampleSessions());
  uint32_t part = 9;
  EXPECT_TRUE(ParseCheckpointKey(CheckpointKey(2), &part));
  EXPECT_EQ(part, 2u);
  EXPECT_LT(CheckpointKey(255), CheckpointKey(256));
  // A part missing, parts swapped, a part of another checkpoint.
  EXPECT_THAT(DecodeCheckpoint({parts[0], parts[1]}, &index, &decoded),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeCheckpoint({parts[0], parts[2]}, &index, &decoded),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeCheckpoint({parts[1], parts[0], parts[2]}, &index, &decoded),
              StatusIs(absl::StatusCode::kDataLoss));
  const std::vector<std::string> other = EncodeCheckpoint(13, SampleSessions(), 1);
  EXPECT_THAT(DecodeCheckpoint({parts[0], other[1], parts[2]}, &index, &decoded),
              StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeCheckpoint({}, &index, &decoded), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, MalformedCheckpointIsDataLoss) {
  const std::string good = EncodeCheckpoint(12, SampleSessions())[0];
  uint64_t index = 0;
  SessionMap decoded;
  auto decode = [&](std::string part) {
    return DecodeCheckpoint(std::vector<std::string>{std::move(part)}, &index, &decoded);
  };
  // Every truncation, trailing bytes, another version.
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_THAT(decode(good.substr(0, n)), StatusIs(absl::StatusCode::kDataLoss)) << n;
  }
  EXPECT_THAT(decode(good + "x"), StatusIs(absl::StatusCode::kDataLoss));
  std::string bad_version = good;
  bad_version[0] = 0x01;
  EXPECT_THAT(decode(bad_version), StatusIs(absl::StatusCode::kDataLoss));
  // A last_used_index above the checkpoint's index, or shared.
  EXPECT_THAT(decode(EncodeCheckpoint(11, SampleSessions())[0]),
              StatusIs(absl::StatusCode::kDataLoss));
  SessionMap shared = SampleSessions();
  shared[3].last_used_index = 2;
  EXPECT_THAT(decode(EncodeCheckpoint(12, shared)[0]), StatusIs(absl::StatusCode::kDataLoss));
  // A result below its session's first_incomplete_seq.
  SessionMap below = SampleSessions();
  below[7].results[4] = "old";
  EXPECT_THAT(decode(EncodeCheckpoint(12, below)[0]), StatusIs(absl::StatusCode::kDataLoss));
  // Client id 0.
  SessionMap zero = SampleSessions();
  zero[0] = Session{.first_incomplete_seq = 0, .last_used_index = 1, .results = {}};
  EXPECT_THAT(decode(EncodeCheckpoint(12, zero)[0]), StatusIs(absl::StatusCode::kDataLoss));
}

std::vector<SessionOp> SampleOps() {
  return {SessionOp{.index = 20,
                    .client_id = 9,
                    .create = true,
                    .first_incomplete_seq = 1,
                    .seq = 1,
                    .result = "r1",
                    .evicted = {kMax, 3}},
          SessionOp{.index = 21,
                    .client_id = 7,
                    .create = false,
                    .first_incomplete_seq = 6,
                    .seq = 6,
                    .result = std::string("\0", 1),
                    .evicted = {}}};
}

TEST(SmFormat, DeltaWindowRoundTrip) {
  std::string window = NewDeltaWindow();
  for (const SessionOp& op : SampleOps()) AppendSessionOp(op, &window);
  absl::StatusOr<std::vector<SessionOp>> ops = DecodeDeltaWindow(window);
  ASSERT_THAT(ops, IsOk());
  ASSERT_EQ(ops->size(), 2u);
  const std::vector<SessionOp> sample = SampleOps();
  for (size_t i = 0; i < 2; ++i) {
    const SessionOp& want = sample[i];
    EXPECT_EQ((*ops)[i].index, want.index);
    EXPECT_EQ((*ops)[i].client_id, want.client_id);
    EXPECT_EQ((*ops)[i].create, want.create);
    EXPECT_EQ((*ops)[i].first_incomplete_seq, want.first_incomplete_seq);
    EXPECT_EQ((*ops)[i].seq, want.seq);
    EXPECT_EQ((*ops)[i].result, want.result);
    EXPECT_EQ((*ops)[i].evicted, want.evicted);
  }
  uint64_t start = 0;
  EXPECT_TRUE(ParseDeltaKey(DeltaKey(20), &start));
  EXPECT_EQ(start, 20u);
  EXPECT_FALSE(ParseDeltaKey(CheckpointKey(0), &start));
  // Windows sort by log index, after the checkpoint.
  EXPECT_LT(DeltaKey(255), DeltaKey(256));
  EXPECT_LT(CheckpointKey(0xFFFFFFFF), DeltaKey(0));
}

TEST(SmFormat, MalformedDeltaWindowIsDataLoss) {
  std::string good = NewDeltaWindow();
  for (const SessionOp& op : SampleOps()) AppendSessionOp(op, &good);
  std::string first_only = NewDeltaWindow();
  AppendSessionOp(SampleOps()[0], &first_only);
  for (size_t n = 0; n < good.size(); ++n) {
    if (n == first_only.size()) continue;  // ends after the first op: valid
    EXPECT_THAT(DecodeDeltaWindow(good.substr(0, n)), StatusIs(absl::StatusCode::kDataLoss)) << n;
  }
  std::string bad_version = good;
  bad_version[0] = 0x01;
  EXPECT_THAT(DecodeDeltaWindow(bad_version), StatusIs(absl::StatusCode::kDataLoss));
  std::string unordered = NewDeltaWindow();
  AppendSessionOp(SampleOps()[1], &unordered);
  AppendSessionOp(SampleOps()[0], &unordered);
  EXPECT_THAT(DecodeDeltaWindow(unordered), StatusIs(absl::StatusCode::kDataLoss));
  std::string bad_kind = NewDeltaWindow();
  AppendSessionOp(SampleOps()[0], &bad_kind);
  bad_kind[1 + 16] = 0x02;
  EXPECT_THAT(DecodeDeltaWindow(bad_kind), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(SmFormat, ReplayRejectsOpsThatDoNotFit) {
  SessionMap sessions = SampleSessions();
  std::map<uint64_t, uint64_t> lru;
  for (const auto& [client_id, session] : sessions) lru[session.last_used_index] = client_id;
  // Create of an existing session; update of a missing one; eviction of a
  // missing one.
  EXPECT_THAT(
      ReplaySessionOp({.index = 30, .client_id = 7, .create = true, .seq = 1}, &sessions, &lru),
      StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(
      ReplaySessionOp({.index = 30, .client_id = 8, .create = false, .seq = 1}, &sessions, &lru),
      StatusIs(absl::StatusCode::kDataLoss));
  SessionMap fresh = SampleSessions();
  EXPECT_THAT(
      ReplaySessionOp({.index = 30, .client_id = 8, .create = true, .seq = 1, .evicted = {4}},
                      &fresh, &lru),
      StatusIs(absl::StatusCode::kDataLoss));
  // A good op: results below first_incomplete_seq go, the evicted session
  // goes, the LRU order follows.
  SessionMap table = SampleSessions();
  std::map<uint64_t, uint64_t> order = {{9, 3}, {12, 7}, {2, kMax}};
  ASSERT_THAT(ReplaySessionOp({.index = 30,
                               .client_id = 7,
                               .create = false,
                               .first_incomplete_seq = 6,
                               .seq = 8,
                               .result = "r8",
                               .evicted = {kMax}},
                              &table, &order),
              IsOk());
  EXPECT_EQ(table.count(kMax), 0u);
  EXPECT_EQ(table[7].first_incomplete_seq, 6u);
  EXPECT_EQ(table[7].last_used_index, 30u);
  EXPECT_EQ(table[7].results.size(), 2u);  // kMax and 8; 5 dropped
  EXPECT_EQ(table[7].results.at(8), "r8");
  EXPECT_THAT(order, ElementsAre(std::pair<const uint64_t, uint64_t>(9, 3),
                                 std::pair<const uint64_t, uint64_t>(30, 7)));
}

TEST(SmFormat, ContinuationRoundTripAndRejects) {
  const std::string key("\0k\xFF", 3);
  absl::StatusOr<std::string> resume = DecodeContinuation(9, EncodeContinuation(9, key));
  ASSERT_THAT(resume, IsOk());
  EXPECT_EQ(*resume, key);
  EXPECT_THAT(DecodeContinuation(8, EncodeContinuation(9, key)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeContinuation(9, EncodeContinuation(9, "")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DecodeContinuation(9, "garbage"), StatusIs(absl::StatusCode::kInvalidArgument));
  std::string bad_version = EncodeContinuation(9, key);
  bad_version[0] = 0x7F;
  EXPECT_THAT(DecodeContinuation(9, bad_version), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace tessera::server::sm
