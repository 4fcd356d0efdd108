#include "tests/chaos/history.h"

#include <cstdio>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/chaos/testing_history.h"

namespace tessera::chaos {
namespace {

using ::tessera::chaos::testing::HistoryBuilder;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

bool SameOp(const Op& a, const Op& b) {
  return a.id == b.id && a.process == b.process && a.kind == b.kind && a.key == b.key &&
         a.value == b.value && a.expected == b.expected && a.existed == b.existed &&
         a.keys == b.keys && a.values == b.values && a.amount == b.amount &&
         a.invoke_ns == b.invoke_ns && a.complete_ns == b.complete_ns && a.outcome == b.outcome;
}

TEST(History, EscapingRoundTripsEveryByte) {
  std::string all;
  for (int c = 0; c < 256; ++c) all.push_back(static_cast<char>(c));
  for (const Value& v : {Value(all), Value(""), Value("~"), Value("a b=c,d%"), Value()}) {
    std::string escaped = EscapeValue(v);
    EXPECT_EQ(escaped.find_first_of(" \n\r\t,="), std::string::npos) << escaped;
    absl::StatusOr<Value> back = UnescapeValue(escaped);
    ASSERT_THAT(back, IsOk());
    EXPECT_EQ(*back, v);
  }
  EXPECT_EQ(EscapeValue(Value()), "~");
  EXPECT_EQ(EscapeValue(Value("~")), "%7E");
  EXPECT_THAT(UnescapeValue("%4"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(UnescapeValue("%zz"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(History, FormatThenParseRoundTrips) {
  HistoryBuilder b;
  b.Put(1, std::string("k\0ey", 4), "v 1", 0, 10);
  b.Get(2, "x", Value(), 5, 12);
  b.Get(2, "x", Value(""), 13, 14);
  b.Delete(3, "x", 15, 20, Outcome::kOk, true);
  b.Cas(1, "x", Value(), "n", 21, 30, Outcome::kFail);
  b.Cas(1, "x", "n", "m", 31, 35, Outcome::kUnknown);
  b.TxnRead(4, {"a,1", "b"}, {Value("7"), Value()}, 40, 50);
  b.Transfer(4, "a,1", "b", 3, 60, 70, Outcome::kUnknown);
  History h;
  h.ops = b.ops();
  h.final_state["x"] = "m";
  h.final_state["y"] = std::nullopt;
  h.bank = BankConfig{.accounts = {"a,1", "b"}, .total = 7};

  std::string text = FormatHistory(h);
  absl::StatusOr<History> back = ParseHistory(text);
  ASSERT_THAT(back, IsOk()) << text;
  ASSERT_EQ(back->ops.size(), h.ops.size()) << text;
  for (size_t i = 0; i < h.ops.size(); ++i) {
    EXPECT_TRUE(SameOp(back->ops[i], h.ops[i])) << i << "\n" << text;
  }
  EXPECT_EQ(back->final_state, h.final_state);
  ASSERT_TRUE(back->bank.has_value());
  EXPECT_EQ(back->bank->accounts, h.bank->accounts);
  EXPECT_EQ(back->bank->total, 7);
  EXPECT_FALSE(back->truncated);
  EXPECT_EQ(back->pending, 0);
}

TEST(History, WriterIsIncrementalAndPendingOpsReadBackUnknown) {
  std::string path = ::testing::TempDir() + "/history_writer_test.txt";
  auto writer = HistoryWriter::Open(path);
  ASSERT_THAT(writer, IsOk());
  Op put{.process = 1, .kind = OpKind::kPut, .key = "x", .value = "a", .invoke_ns = 100};
  Op get{.process = 2, .kind = OpKind::kGet, .key = "x", .invoke_ns = 110};
  ASSERT_THAT((*writer)->Invoke(&put), IsOk());
  ASSERT_THAT((*writer)->Invoke(&get), IsOk());
  EXPECT_NE(put.id, get.id);
  get.outcome = Outcome::kOk;
  get.complete_ns = 120;
  get.value = "a";
  ASSERT_THAT((*writer)->Complete(get), IsOk());
  ASSERT_THAT((*writer)->Final("x", Value("a")), IsOk());
  ASSERT_THAT((*writer)->Sync(), IsOk());

  // Read while the writer is still open, as after a crash of the workload.
  absl::StatusOr<History> h = ReadHistoryFile(path);
  ASSERT_THAT(h, IsOk());
  ASSERT_EQ(h->ops.size(), 2u);
  EXPECT_EQ(h->ops[0].outcome, Outcome::kUnknown);
  EXPECT_EQ(h->ops[0].complete_ns, kNever);
  EXPECT_EQ(h->ops[1].outcome, Outcome::kOk);
  EXPECT_EQ(h->ops[1].value, Value("a"));
  EXPECT_EQ(h->pending, 1);
  EXPECT_EQ(h->final_state.at("x"), Value("a"));
  writer->reset();
  std::remove(path.c_str());
}

TEST(History, PartialLastLineIsDropped) {
  std::string text =
      "invoke id=1 p=0 t=1 f=put k=x v=a\n"
      "ok id=1 t=2\n"
      "invoke id=2 p=0 t=3 f=get k=x\n"
      "ok id=2 t=4 v=";  // crashed mid-line: not "v=" (empty) but unfinished
  absl::StatusOr<History> h = ParseHistory(text);
  ASSERT_THAT(h, IsOk());
  EXPECT_TRUE(h->truncated);
  ASSERT_EQ(h->ops.size(), 2u);
  EXPECT_EQ(h->ops[1].outcome, Outcome::kUnknown);
  EXPECT_EQ(h->pending, 1);
}

TEST(History, UnknownOutcomeKeepsGiveUpTimeAndIgnoresUnknownFields) {
  absl::StatusOr<History> h = ParseHistory(
      "# comment\n"
      "\n"
      "invoke id=1 p=0 t=1 f=put k=x v=a future=1\n"
      "info id=1 t=9 error=DEADLINE_EXCEEDED\n");
  ASSERT_THAT(h, IsOk());
  EXPECT_EQ(h->ops[0].outcome, Outcome::kUnknown);
  EXPECT_EQ(h->ops[0].complete_ns, 9);
  EXPECT_EQ(h->pending, 0);
}

TEST(History, RejectsMalformedLinesNamingTheLine) {
  EXPECT_THAT(ParseHistory("invoke id=1 p=0 t=1 f=put k=x v=a\nok id=2 t=3\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2: completion of an")));
  EXPECT_THAT(ParseHistory("invoke id=1 p=0 t=1 f=jump k=x\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1: unknown op kind")));
  EXPECT_THAT(ParseHistory("invoke id=1 p=0 t=5 f=get k=x\nok id=1 t=4 v=~\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("before its invoke")));
  EXPECT_THAT(ParseHistory("invoke id=1 p=0 t=1 f=get k=x\nok id=1 t=4 v=~\nok id=1 t=5 v=~\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("completed twice")));
  EXPECT_THAT(ParseHistory("invoke id=1 p=x t=1 f=get k=x\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not an integer")));
  EXPECT_THAT(ParseHistory("invoke id=1 p=0 t=1 f=get\n"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("missing field k")));
  EXPECT_THAT(ParseHistory("hello\n"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(History, MissingFileIsNotFound) {
  EXPECT_THAT(ReadHistoryFile("/nonexistent/history.txt"), StatusIs(absl::StatusCode::kNotFound));
}

TEST(History, DescribeOpIsReadable) {
  Op op{.id = 7,
        .process = 3,
        .kind = OpKind::kCas,
        .key = "x",
        .value = "b",
        .expected = "a\n",
        .invoke_ns = 1'200'000,
        .complete_ns = 1'900'000,
        .outcome = Outcome::kFail};
  EXPECT_EQ(DescribeOp(op, 0),
            "#7 p3 cas \"x\" \"a\\n\" -> \"b\" (compare failed) fail [1.200ms, 1.900ms]");
}

}  // namespace
}  // namespace tessera::chaos
