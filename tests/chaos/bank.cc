#include "tests/chaos/bank.h"

#include <algorithm>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace tessera::chaos {
namespace {

// Returns "" if `op` (an ok txn_read of the accounts) satisfies the
// invariant, else why not.
std::string CheckRead(const Op& op, const BankConfig& config, const BankOptions& options) {
  std::string why;
  int64_t sum = 0;
  for (size_t i = 0; i < op.keys.size(); ++i) {
    const Value& v = op.values[i];
    int64_t balance = 0;
    if (!v.has_value()) {
      absl::StrAppend(&why, "  account ", DisplayValue(op.keys[i]), " is missing\n");
      continue;
    }
    if (!absl::SimpleAtoi(*v, &balance)) {
      absl::StrAppend(&why, "  account ", DisplayValue(op.keys[i]), " holds ", DisplayValue(v),
                      ", not an integer\n");
      continue;
    }
    if (balance < 0 && !options.allow_negative) {
      absl::StrAppend(&why, "  account ", DisplayValue(op.keys[i]), " is negative: ", balance,
                      "\n");
    }
    sum += balance;
  }
  if (why.empty() && sum != config.total) {
    absl::StrAppend(&why, "  balances sum to ", sum, ", expected ", config.total, " (off by ",
                    sum - config.total, ")\n");
  }
  return why;
}

}  // namespace

BankReport CheckBank(const std::vector<Op>& ops, const BankConfig& config,
                     const BankOptions& options) {
  BankReport report;
  std::vector<std::string> accounts = config.accounts;
  std::sort(accounts.begin(), accounts.end());
  int64_t base_ns = kNever;
  for (const Op& op : ops) base_ns = std::min(base_ns, op.invoke_ns);
  for (const Op& op : ops) {
    if (op.kind == OpKind::kTransfer) {
      if (op.outcome == Outcome::kOk) ++report.transfers_ok;
      if (op.outcome == Outcome::kFail) ++report.transfers_failed;
      if (op.outcome == Outcome::kUnknown) ++report.transfers_unknown;
      continue;
    }
    if (op.kind != OpKind::kTxnRead || op.outcome != Outcome::kOk) continue;
    std::vector<std::string> keys = op.keys;
    std::sort(keys.begin(), keys.end());
    if (keys != accounts || op.values.size() != op.keys.size()) {
      ++report.reads_ignored;
      continue;
    }
    ++report.reads_checked;
    std::string why = CheckRead(op, config, options);
    if (why.empty()) continue;
    ++report.bad_reads;
    if (static_cast<int>(report.violations.size()) < options.max_reported) {
      report.violations.push_back(absl::StrCat("bad read ", DescribeOp(op, base_ns), "\n", why));
    }
  }
  if (report.bad_reads > 0) {
    report.verdict = Verdict::kViolation;
  } else if (report.reads_checked == 0) {
    report.verdict = Verdict::kUnknown;
  }
  return report;
}

std::string BankReport::Summary() const {
  std::string out =
      absl::StrCat("bank: ", VerdictName(verdict), " (", reads_checked, " reads checked, ",
                   bad_reads, " bad, ", reads_ignored, " ignored; transfers ok/fail/unknown ",
                   transfers_ok, "/", transfers_failed, "/", transfers_unknown, ")\n");
  for (const std::string& v : violations) absl::StrAppend(&out, v);
  if (bad_reads > static_cast<int64_t>(violations.size())) {
    absl::StrAppend(&out, "  ... ", bad_reads - static_cast<int64_t>(violations.size()),
                    " more bad reads\n");
  }
  return out;
}

}  // namespace tessera::chaos
