// Encodings of the StateMachine's on-disk format (server/sm_format.h).
#include "server/kv/sm_format.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"

namespace tessera::server::sm {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

TEST(SmFormat, ValueIsBigEndianVersionThenBytes) {
  const std::string encoded = EncodeValue(0x0102030405060708, std::string("\0\xFF", 2));
  EXPECT_EQ(encoded, std::string("\x01\x02\x03\x04\x05\x06\x07\x08\0\xFF", 10));
  absl::StatusOr<VersionedValue> decoded = DecodeValue(encoded);
  ASSERT_THAT(decoded, IsOk());
  EXPECT_EQ(decoded->version, 0x0102030405060708u);
  EXPECT_EQ(decoded->value, std::string("\0\xFF", 2));
  absl::StatusOr<VersionedValue> empty = DecodeValue(EncodeValue(kMax, ""));
  ASSERT_THAT(empty, IsOk());
  EXPECT_EQ(empty->version, kMax);
  EXPECT_EQ(empty->value, "");
}

TEST(SmFormat, ShortValueIsDataLoss) {
  EXPECT_THAT(DecodeValue(""), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeValue("1234567"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_THAT(DecodeValue("12345678"), IsOk());
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
