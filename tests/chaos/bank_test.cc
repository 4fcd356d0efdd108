#include "tests/chaos/bank.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/chaos/testing_history.h"

namespace tessera::chaos {
namespace {

using ::tessera::chaos::testing::HistoryBuilder;
using ::testing::HasSubstr;

const BankConfig kBank{.accounts = {"bank:{1}:acct:0", "bank:{1}:acct:1", "bank:{1}:acct:2"},
                       .total = 30};

std::vector<std::string> Accounts() { return kBank.accounts; }

TEST(Bank, ConstantTotalPasses) {
  HistoryBuilder h;
  h.TxnRead(1, Accounts(), {Value("10"), Value("10"), Value("10")}, 0, 10);
  h.Transfer(2, kBank.accounts[0], kBank.accounts[1], 5, 5, 15);
  h.Transfer(2, kBank.accounts[1], kBank.accounts[2], 1, 16, 20, Outcome::kUnknown);
  h.TxnRead(1, Accounts(), {Value("5"), Value("14"), Value("11")}, 20, 30);
  // Keys in another order are still the account set.
  h.TxnRead(1, {kBank.accounts[2], kBank.accounts[0], kBank.accounts[1]},
            {Value("0"), Value("30"), Value("0")}, 40, 50);
  h.TxnRead(1, Accounts(), {Value("bogus"), Value(), Value()}, 60, 70, Outcome::kUnknown);
  BankReport r = CheckBank(h.ops(), kBank);
  EXPECT_EQ(r.verdict, Verdict::kOk) << r.Summary();
  EXPECT_EQ(r.reads_checked, 3);
  EXPECT_EQ(r.transfers_ok, 1);
  EXPECT_EQ(r.transfers_unknown, 1);
}

TEST(Bank, RejectsWrongTotal) {
  HistoryBuilder h;
  h.TxnRead(1, Accounts(), {Value("10"), Value("10"), Value("10")}, 0, 10);
  h.TxnRead(1, Accounts(), {Value("5"), Value("10"), Value("10")}, 20, 30);  // lost 5
  BankReport r = CheckBank(h.ops(), kBank);
  EXPECT_EQ(r.verdict, Verdict::kViolation);
  EXPECT_EQ(r.bad_reads, 1);
  EXPECT_THAT(r.Summary(), HasSubstr("balances sum to 25, expected 30 (off by -5)"));
}

TEST(Bank, RejectsMissingNegativeAndGarbageBalances) {
  HistoryBuilder h;
  h.TxnRead(1, Accounts(), {Value("10"), Value(), Value("20")}, 0, 10);
  h.TxnRead(1, Accounts(), {Value("-5"), Value("15"), Value("20")}, 20, 30);
  h.TxnRead(1, Accounts(), {Value("1x"), Value("9"), Value("20")}, 40, 50);
  BankReport r = CheckBank(h.ops(), kBank);
  EXPECT_EQ(r.bad_reads, 3);
  EXPECT_THAT(r.Summary(), HasSubstr("is missing"));
  EXPECT_THAT(r.Summary(), HasSubstr("is negative: -5"));
  EXPECT_THAT(r.Summary(), HasSubstr("not an integer"));

  BankReport lenient = CheckBank(h.ops(), kBank, {.allow_negative = true});
  EXPECT_EQ(lenient.bad_reads, 2);
}

TEST(Bank, OtherReadsAreIgnoredAndNoReadsIsUnknown) {
  HistoryBuilder h;
  h.TxnRead(1, {kBank.accounts[0]}, {Value("999")}, 0, 10);
  BankReport r = CheckBank(h.ops(), kBank);
  EXPECT_EQ(r.verdict, Verdict::kUnknown);
  EXPECT_EQ(r.reads_ignored, 1);
}

TEST(Bank, ReportsAtMostMaxReportedButCountsAll) {
  HistoryBuilder h;
  for (int i = 0; i < 5; ++i) {
    h.TxnRead(1, Accounts(), {Value("1"), Value("1"), Value("1")}, i * 10, i * 10 + 5);
  }
  BankReport r = CheckBank(h.ops(), kBank, {.max_reported = 2});
  EXPECT_EQ(r.bad_reads, 5);
  EXPECT_EQ(r.violations.size(), 2u);
  EXPECT_THAT(r.Summary(), HasSubstr("3 more bad reads"));
}

}  // namespace
}  // namespace tessera::chaos
