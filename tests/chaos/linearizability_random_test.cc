// Randomized tests: histories generated from a simulated linearizable store
// must always pass; specific corruptions of one read must be rejected; and a
// 10k-op history checks quickly. A failure prints the seed; TESSERA_SEED=<n>
// replays it.
#include <chrono>
#include <cstdio>
#include <random>

#include "gtest/gtest.h"
#include "tests/chaos/linearizability.h"
#include "tests/chaos/testing_history.h"

namespace tessera::chaos {
namespace {

using ::tessera::chaos::testing::GenerateLinearizableHistory;
using ::tessera::chaos::testing::GenOptions;
using ::tessera::chaos::testing::TestSeeds;

GenOptions RandomOptions(std::mt19937_64& rng) {
  GenOptions o;
  o.processes = 1 + static_cast<int>(rng() % 8);
  o.keys = 1 + static_cast<int>(rng() % 3);
  o.ops = 20 + static_cast<int>(rng() % 300);
  o.unknown_rate = static_cast<double>(rng() % 15) / 100;
  o.fail_rate = static_cast<double>(rng() % 5) / 100;
  o.max_latency_ns = 1 + static_cast<int64_t>(rng() % 100);
  o.max_gap_ns = 1 + static_cast<int64_t>(rng() % 50);
  return o;
}

std::string Dump(const std::vector<Op>& ops) {
  History h;
  h.ops = ops;
  return ops.size() <= 200 ? FormatHistory(h) : "(history too long to print)";
}

TEST(LinearizabilityRandom, GeneratedLinearizableHistoriesPass) {
  for (uint64_t seed : TestSeeds(1, 300)) {
    std::mt19937_64 rng(seed);
    std::vector<Op> ops = GenerateLinearizableHistory(RandomOptions(rng), rng);
    absl::StatusOr<LinearizabilityReport> r = CheckLinearizability(ops);
    ASSERT_TRUE(r.ok()) << "seed=" << seed << " " << r.status();
    ASSERT_EQ(r->verdict, Verdict::kOk) << "seed=" << seed << "\n" << r->Summary() << Dump(ops);
  }
}

// A read of a value nobody wrote.
TEST(LinearizabilityRandom, CorruptedReadOfNeverWrittenValueIsRejected) {
  int corrupted = 0;
  for (uint64_t seed : TestSeeds(1, 100)) {
    std::mt19937_64 rng(seed);
    std::vector<Op> ops = GenerateLinearizableHistory(RandomOptions(rng), rng);
    std::vector<size_t> reads;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].kind == OpKind::kGet && ops[i].outcome == Outcome::kOk) reads.push_back(i);
    }
    if (reads.empty()) continue;
    ops[reads[rng() % reads.size()]].value = "corrupt";
    ++corrupted;
    absl::StatusOr<LinearizabilityReport> r = CheckLinearizability(ops);
    ASSERT_TRUE(r.ok()) << "seed=" << seed;
    ASSERT_EQ(r->verdict, Verdict::kViolation) << "seed=" << seed << "\n" << Dump(ops);
  }
  EXPECT_GT(corrupted, 50);
}

// A read after two acknowledged writes that returns the older one: the
// writes are sequential (w1 completes before w2 is invoked), w2 completes
// before the read is invoked, and values are unique, so this is always a
// stale read.
TEST(LinearizabilityRandom, CorruptedStaleReadIsRejected) {
  int corrupted = 0;
  for (uint64_t seed : TestSeeds(1, 100)) {
    std::mt19937_64 rng(seed);
    GenOptions o = RandomOptions(rng);
    o.keys = 1;
    std::vector<Op> ops = GenerateLinearizableHistory(o, rng);
    auto writes_value = [](const Op& op) {
      return op.outcome == Outcome::kOk && (op.kind == OpKind::kPut || op.kind == OpKind::kCas);
    };
    auto acked_write = [](const Op& op) { return op.outcome == Outcome::kOk && op.IsWrite(); };
    bool done = false;
    for (size_t g = 0; g < ops.size() && !done; ++g) {
      if (ops[g].kind != OpKind::kGet || ops[g].outcome != Outcome::kOk) continue;
      for (size_t w2 = 0; w2 < ops.size() && !done; ++w2) {
        if (!acked_write(ops[w2]) || ops[w2].complete_ns >= ops[g].invoke_ns) continue;
        for (size_t w1 = 0; w1 < ops.size() && !done; ++w1) {
          if (!writes_value(ops[w1]) || ops[w1].complete_ns >= ops[w2].invoke_ns) continue;
          if (ops[w2].kind != OpKind::kDelete && ops[w2].value == ops[w1].value) continue;
          ops[g].value = ops[w1].value;
          done = true;
        }
      }
    }
    if (!done) continue;
    ++corrupted;
    absl::StatusOr<LinearizabilityReport> r = CheckLinearizability(ops);
    ASSERT_TRUE(r.ok()) << "seed=" << seed;
    ASSERT_EQ(r->verdict, Verdict::kViolation) << "seed=" << seed << "\n" << Dump(ops);
  }
  EXPECT_GT(corrupted, 50);
}

// 10k ops over 20 keys from 10 concurrent processes, and the same on a single
// key (all 10 processes contend on one register). README.md records the
// measured times.
TEST(LinearizabilityRandom, TenThousandOpsCheckQuickly) {
  struct Case {
    int keys;
    int64_t max_latency_ns;
    double unknown_rate;
  };
  for (Case c : {Case{20, 50, 0.02}, Case{20, 500, 0.02}, Case{1, 500, 0.02}}) {
    std::mt19937_64 rng(42);
    GenOptions o{.processes = 10,
                 .keys = c.keys,
                 .ops = 10'000,
                 .unknown_rate = c.unknown_rate,
                 .fail_rate = 0.01,
                 .max_latency_ns = c.max_latency_ns,
                 .max_gap_ns = 20};
    std::vector<Op> ops = GenerateLinearizableHistory(o, rng);
    auto start = std::chrono::steady_clock::now();
    absl::StatusOr<LinearizabilityReport> r = CheckLinearizability(ops);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->verdict, Verdict::kOk) << r->Summary();
    std::printf(
        "10k ops, %d keys, 10 processes, latency <= %lldns, %.0f%% unknown: %.3f s, %lld states\n",
        c.keys, static_cast<long long>(c.max_latency_ns), c.unknown_rate * 100, seconds,
        static_cast<long long>(r->states));
    EXPECT_LT(seconds, 10.0);  // typically well under a second (release)
  }
}

}  // namespace
}  // namespace tessera::chaos
