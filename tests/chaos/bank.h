// Bank invariant checker. The bank workload keeps N accounts under one hash
// tag (e.g. "bank:{1}:acct:0" .. "bank:{1}:acct:N-1", so one shard holds
// them all), moves money between two accounts with single-shard Txns that
// compare both accounts' versions, and reads every account in one Txn
// (txn_read). Money is neither created nor destroyed, so every successful
// read must see all N accounts present, each balance a decimal integer, not
// negative (unless allowed) and summing to the constant total.
//
// Only ok txn_reads of exactly the configured account set (any order) are
// checked; other txn_reads are counted as ignored. Transfers are counted, not
// checked: their effect is what the reads see.
//
// Thread-compatible: pure functions over their arguments.
#ifndef TESSERA_TESTS_CHAOS_BANK_H_
#define TESSERA_TESTS_CHAOS_BANK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "tests/chaos/history.h"

namespace tessera::chaos {

struct BankOptions {
  bool allow_negative = false;
  int max_reported = 20;  // violations explained in full; the rest only counted
};

struct BankReport {
  Verdict verdict = Verdict::kOk;  // kUnknown: no read could be checked
  int64_t reads_checked = 0;
  int64_t reads_ignored = 0;  // ok txn_reads of another key set
  int64_t transfers_ok = 0;
  int64_t transfers_failed = 0;
  int64_t transfers_unknown = 0;
  int64_t bad_reads = 0;                // reads violating the invariant
  std::vector<std::string> violations;  // the first max_reported, explained

  std::string Summary() const;
};

BankReport CheckBank(const std::vector<Op>& ops, const BankConfig& config,
                     const BankOptions& options = {});

}  // namespace tessera::chaos

#endif  // TESSERA_TESTS_CHAOS_BANK_H_
