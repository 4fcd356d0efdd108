#include "tests/chaos/testing_history.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::chaos::testing {

int64_t HistoryBuilder::Add(Op op, int64_t inv, int64_t cmp, Outcome o) {
  op.id = static_cast<int64_t>(ops_.size()) + 1;
  op.invoke_ns = inv;
  op.complete_ns = cmp;
  op.outcome = o;
  ops_.push_back(std::move(op));
  return ops_.back().id;
}

int64_t HistoryBuilder::Put(int64_t p, std::string key, std::string v, int64_t inv, int64_t cmp,
                            Outcome o) {
  return Add({.process = p, .kind = OpKind::kPut, .key = std::move(key), .value = std::move(v)},
             inv, cmp, o);
}

int64_t HistoryBuilder::Get(int64_t p, std::string key, Value v, int64_t inv, int64_t cmp,
                            Outcome o) {
  return Add({.process = p, .kind = OpKind::kGet, .key = std::move(key), .value = std::move(v)},
             inv, cmp, o);
}

int64_t HistoryBuilder::Delete(int64_t p, std::string key, int64_t inv, int64_t cmp, Outcome o,
                               std::optional<bool> existed) {
  return Add({.process = p, .kind = OpKind::kDelete, .key = std::move(key), .existed = existed},
             inv, cmp, o);
}

int64_t HistoryBuilder::Cas(int64_t p, std::string key, Value expected, std::string v, int64_t inv,
                            int64_t cmp, Outcome o) {
  return Add({.process = p,
              .kind = OpKind::kCas,
              .key = std::move(key),
              .value = std::move(v),
              .expected = std::move(expected)},
             inv, cmp, o);
}

int64_t HistoryBuilder::TxnRead(int64_t p, std::vector<std::string> keys, std::vector<Value> values,
                                int64_t inv, int64_t cmp, Outcome o) {
  return Add({.process = p,
              .kind = OpKind::kTxnRead,
              .keys = std::move(keys),
              .values = std::move(values)},
             inv, cmp, o);
}

int64_t HistoryBuilder::Transfer(int64_t p, std::string from, std::string to, int64_t amount,
                                 int64_t inv, int64_t cmp, Outcome o) {
  return Add({.process = p,
              .kind = OpKind::kTransfer,
              .keys = {std::move(from), std::move(to)},
              .amount = amount},
             inv, cmp, o);
}

std::vector<Op> GenerateLinearizableHistory(const GenOptions& options, std::mt19937_64& rng) {
  auto uniform = [&](int64_t lo, int64_t hi) {  // inclusive, from raw output
    return lo + static_cast<int64_t>(rng() % static_cast<uint64_t>(hi - lo + 1));
  };
  auto chance = [&](double p) { return static_cast<double>(rng() >> 11) * 0x1.0p-53 < p; };

  std::vector<Op> ops;
  std::vector<int64_t> lin;  // linearization instant; -1 = never applied
  std::vector<int64_t> free_at(options.processes, 0);
  std::map<std::string, std::vector<std::string>> written;  // recent values per key
  for (int i = 0; i < options.ops; ++i) {
    int p = static_cast<int>(uniform(0, options.processes - 1));
    Op op;
    op.id = i + 1;
    op.process = p;
    op.key = absl::StrCat("k", uniform(0, options.keys - 1));
    op.invoke_ns = free_at[p] + uniform(1, options.max_gap_ns);
    op.complete_ns = op.invoke_ns + uniform(1, options.max_latency_ns);
    free_at[p] = op.complete_ns;
    int64_t r = uniform(0, 99);
    op.kind = r < 40   ? OpKind::kGet
              : r < 70 ? OpKind::kPut
              : r < 80 ? OpKind::kDelete
                       : OpKind::kCas;
    std::vector<std::string>& recent = written[op.key];
    if (op.kind == OpKind::kPut || op.kind == OpKind::kCas) op.value = absl::StrCat("v", op.id);
    if (op.kind == OpKind::kCas) {
      if (recent.empty() || chance(0.1)) {
        op.expected = std::nullopt;
      } else {
        op.expected =
            recent[recent.size() - 1 - uniform(0, std::min<int64_t>(2, recent.size() - 1))];
      }
    }
    if (op.value.has_value()) recent.push_back(*op.value);
    // Outcome and the instant it takes effect.
    int64_t at = uniform(op.invoke_ns, op.complete_ns);
    op.outcome = Outcome::kOk;
    if (chance(options.unknown_rate)) {
      op.outcome = Outcome::kUnknown;
      if (chance(0.3)) {
        at = -1;  // never applied
      } else if (chance(0.5)) {
        at = op.complete_ns + uniform(0, 10 * options.max_latency_ns);  // applied late
      }
    } else if (op.kind != OpKind::kGet && op.kind != OpKind::kCas && chance(options.fail_rate)) {
      op.outcome = Outcome::kFail;
      at = -1;
    }
    ops.push_back(std::move(op));
    lin.push_back(at);
  }

  // Apply in linearization order (ties: by id) per key.
  std::vector<size_t> order;
  for (size_t i = 0; i < ops.size(); ++i) {
    if (lin[i] >= 0) order.push_back(i);
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::make_pair(lin[a], a) < std::make_pair(lin[b], b);
  });
  std::map<std::string, Value> state;
  for (size_t i : order) {
    Op& op = ops[i];
    Value& cur = state[op.key];
    switch (op.kind) {
      case OpKind::kGet:
        op.value = cur;
        break;
      case OpKind::kPut:
        cur = op.value;
        break;
      case OpKind::kDelete:
        if (op.outcome == Outcome::kOk && (op.id % 2 == 0)) op.existed = cur.has_value();
        cur = std::nullopt;
        break;
      case OpKind::kCas:
        if (cur == op.expected) {
          cur = op.value;
        } else if (op.outcome == Outcome::kOk) {
          op.outcome = Outcome::kFail;  // the compare failed
        }
        break;
      default:
        break;
    }
  }
  for (Op& op : ops) {
    if (op.kind == OpKind::kGet && op.outcome != Outcome::kOk) op.value = std::nullopt;
  }
  return ops;
}

std::vector<uint64_t> TestSeeds(uint64_t first, int count) {
  if (const char* env = std::getenv("TESSERA_SEED"); env != nullptr) {
    uint64_t seed = 0;
    if (absl::SimpleAtoi(env, &seed)) return {seed};
  }
  if (const char* env = std::getenv("TESSERA_SEED_COUNT"); env != nullptr) {
    int n = 0;
    if (absl::SimpleAtoi(env, &n) && n > 0) count = n;  // a long sweep
  }
  std::vector<uint64_t> seeds;
  for (int i = 0; i < count; ++i) seeds.push_back(first + i);
  return seeds;
}

}  // namespace tessera::chaos::testing
