// Test helpers for the chaos checkers: a terse builder for hand-written
// histories and a generator of random histories from a simulated
// linearizable key-value store. Test-only.
#ifndef TESSERA_TESTS_CHAOS_TESTING_HISTORY_H_
#define TESSERA_TESTS_CHAOS_TESTING_HISTORY_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tests/chaos/history.h"

namespace tessera::chaos::testing {

// Builds a history op by op; times are plain integers (nanoseconds).
class HistoryBuilder {
 public:
  int64_t Put(int64_t p, std::string key, std::string v, int64_t inv, int64_t cmp,
              Outcome o = Outcome::kOk);
  int64_t Get(int64_t p, std::string key, Value v, int64_t inv, int64_t cmp,
              Outcome o = Outcome::kOk);
  int64_t Delete(int64_t p, std::string key, int64_t inv, int64_t cmp, Outcome o = Outcome::kOk,
                 std::optional<bool> existed = std::nullopt);
  int64_t Cas(int64_t p, std::string key, Value expected, std::string v, int64_t inv, int64_t cmp,
              Outcome o = Outcome::kOk);
  int64_t TxnRead(int64_t p, std::vector<std::string> keys, std::vector<Value> values, int64_t inv,
                  int64_t cmp, Outcome o = Outcome::kOk);
  int64_t Transfer(int64_t p, std::string from, std::string to, int64_t amount, int64_t inv,
                   int64_t cmp, Outcome o = Outcome::kOk);

  const std::vector<Op>& ops() const { return ops_; }
  std::vector<Op>& mutable_ops() { return ops_; }

 private:
  int64_t Add(Op op, int64_t inv, int64_t cmp, Outcome o);
  std::vector<Op> ops_;
};

struct GenOptions {
  int processes = 5;
  int keys = 1;
  int ops = 200;
  double unknown_rate = 0.05;  // writes (and gets) whose outcome is lost
  double fail_rate = 0.03;     // put/delete definitely not applied
  int64_t max_latency_ns = 50;
  int64_t max_gap_ns = 20;
};

// A history of a linearizable store: each applied op takes effect at a
// random instant inside its interval (an unknown write: any instant after
// its invoke, or never), results follow from that order. Values are unique
// ("v<id>"). Deterministic for a given `rng` state.
std::vector<Op> GenerateLinearizableHistory(const GenOptions& options, std::mt19937_64& rng);

// Seeds for randomized tests: TESSERA_SEED=<n> replays one; else
// first..first+count-1, where TESSERA_SEED_COUNT=<n> overrides count.
std::vector<uint64_t> TestSeeds(uint64_t first, int count);

}  // namespace tessera::chaos::testing

#endif  // TESSERA_TESTS_CHAOS_TESTING_HISTORY_H_
