#include "tests/chaos/durability.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tessera::chaos {
namespace {

// When a possibly-applied write's effect window ends.
int64_t EffectEnd(const Op& op) { return op.outcome == Outcome::kOk ? op.complete_ns : kNever; }

Value Result(const Op& op) { return op.kind == OpKind::kDelete ? Value() : op.value; }

void CheckKeyDurability(const std::string& key, const std::vector<const Op*>& writes,
                        const Value& final_value, int64_t base_ns, DurabilityReport* report) {
  // Possible last writes: no acknowledged write strictly after them.
  bool any_ok = false;
  bool final_explained = false;
  for (const Op* w : writes) {
    if (w->outcome == Outcome::kOk) {
      any_ok = true;
      ++report->acknowledged_writes;
    }
  }
  if (!any_ok && !final_value.has_value()) final_explained = true;  // initial state
  std::vector<const Op*> superseded_writers;  // wrote the final value but were followed
  for (const Op* w : writes) {
    if (Result(*w) != final_value) continue;
    bool followed = std::any_of(writes.begin(), writes.end(), [&](const Op* x) {
      return x != w && x->outcome == Outcome::kOk && x->invoke_ns > EffectEnd(*w);
    });
    if (followed) {
      superseded_writers.push_back(w);
    } else {
      final_explained = true;
    }
  }

  std::vector<const Op*> lost;
  for (const Op* a : writes) {
    if (a->outcome != Outcome::kOk || Result(*a) == final_value) continue;
    bool may_be_overwritten = std::any_of(writes.begin(), writes.end(), [&](const Op* b) {
      return b != a && EffectEnd(*b) > a->invoke_ns;
    });
    if (!may_be_overwritten) lost.push_back(a);
  }

  if (final_explained && lost.empty()) return;
  std::string v =
      absl::StrCat("key ", DisplayValue(key), ": final value ", DisplayValue(final_value), "\n");
  if (!final_explained) {
    if (!superseded_writers.empty()) {
      absl::StrAppend(&v, "  it is stale: written by ",
                      DescribeOp(*superseded_writers.front(), base_ns),
                      "\n  but acknowledged writes came strictly after that:\n");
      for (const Op* x : writes) {
        if (x->outcome == Outcome::kOk && x->invoke_ns > EffectEnd(*superseded_writers.front())) {
          absl::StrAppend(&v, "    ", DescribeOp(*x, base_ns), "\n");
        }
      }
    } else if (!final_value.has_value()) {
      absl::StrAppend(&v,
                      "  the key is absent, but writes were acknowledged and no delete "
                      "could have come last\n");
    } else {
      absl::StrAppend(&v, "  no op ever wrote this value\n");
    }
  }
  for (const Op* a : lost) {
    report->lost_op_ids.push_back(a->id);
    absl::StrAppend(&v, "  lost acknowledged write: ", DescribeOp(*a, base_ns),
                    "\n    (no other write of the key could have come after it)\n");
  }
  report->violations.push_back(std::move(v));
}

}  // namespace

DurabilityReport CheckDurability(const std::vector<Op>& ops,
                                 const std::map<std::string, Value>& final_state) {
  DurabilityReport report;
  std::map<std::string, std::vector<const Op*>> writes;
  int64_t base_ns = kNever;
  for (const Op& op : ops) {
    base_ns = std::min(base_ns, op.invoke_ns);
    if (!op.IsWrite() || op.outcome == Outcome::kFail) continue;
    writes[op.key].push_back(&op);
  }
  for (const auto& [key, key_writes] : writes) {
    if (!final_state.contains(key)) ++report.keys_unchecked;
  }
  for (const auto& [key, final_value] : final_state) {
    ++report.keys_checked;
    auto it = writes.find(key);
    static const std::vector<const Op*> kNone;
    CheckKeyDurability(key, it == writes.end() ? kNone : it->second, final_value, base_ns, &report);
  }
  if (!report.violations.empty()) {
    report.verdict = Verdict::kViolation;
  } else if (report.keys_checked == 0 && report.keys_unchecked > 0) {
    report.verdict = Verdict::kUnknown;
  }
  return report;
}

std::string DurabilityReport::Summary() const {
  std::string out =
      absl::StrCat("durability: ", VerdictName(verdict), " (", keys_checked, " keys checked, ",
                   keys_unchecked, " written keys unchecked, ", acknowledged_writes,
                   " acknowledged writes, ", lost_op_ids.size(), " lost)\n");
  for (const std::string& v : violations) absl::StrAppend(&out, v);
  return out;
}

}  // namespace tessera::chaos
