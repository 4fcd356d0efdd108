// Durability checker: after the cluster heals and every node restarts, the
// workload reads each key once more ("final" state). Every acknowledged write
// must still be there, or have been legitimately overwritten: some other
// write or delete of the key (ok, or unknown: it may have applied) may have
// taken effect after it, i.e. completed (unknown: +infinity) after the
// acknowledged write was invoked.
//
// Two checks per key whose final state was read:
//  1. Lost writes: an ok write whose result is not the final value and that
//     no other possibly-applied write of the key may follow.
//  2. Final value: it must be the result of a possible last write (a write
//     that is ok or unknown and that no ok write strictly follows), or absent
//     when no write was acknowledged. Otherwise it is stale (an older write's
//     value survived a newer acknowledged write) or was never written.
// Failed writes and failed (compare-failed) cas never count as writes.
//
// Keys written in the history but missing from the final state are counted
// as unchecked (kUnknown if nothing at all could be checked).
//
// Thread-compatible: pure functions over their arguments.
#ifndef TESSERA_TESTS_CHAOS_DURABILITY_H_
#define TESSERA_TESTS_CHAOS_DURABILITY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tests/chaos/history.h"

namespace tessera::chaos {

struct DurabilityReport {
  Verdict verdict = Verdict::kOk;
  int64_t keys_checked = 0;
  int64_t keys_unchecked = 0;           // written, but no final state recorded
  int64_t acknowledged_writes = 0;      // ok put/delete/cas on checked keys
  std::vector<int64_t> lost_op_ids;     // acknowledged writes that were lost
  std::vector<std::string> violations;  // one human-readable paragraph each

  std::string Summary() const;
};

DurabilityReport CheckDurability(const std::vector<Op>& ops,
                                 const std::map<std::string, Value>& final_state);

}  // namespace tessera::chaos

#endif  // TESSERA_TESTS_CHAOS_DURABILITY_H_
