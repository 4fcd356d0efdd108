// Linearizability checker for Tessera's key-value API: every key is an
// independent register (P-compositionality: a history is linearizable iff
// each key's sub-history is), so the history is split per key and each part
// is searched on its own.
//
// Model (one key): the state is the key's value or absent; initially absent.
// Values need not be unique, but unique values (as the workload writes) make
// violations easier to explain and the search faster.
//   put(v)          ok: state := v.
//   delete          ok: state := absent; if `existed` was recorded, the
//                   state before must match it (present / absent).
//   cas(e, n)       ok: the state must be e (absent: must be absent); := n.
//   cas(e, n)       fail (compare failed): the state is != e at that instant;
//                   unchanged. (A definite compare failure is a read: it
//                   carries information, so we keep it rather than drop it.)
//   get             ok: the state must equal the result (or absent).
// Outcomes:
//   ok       takes effect at one instant between its invoke and completion;
//   fail     never takes effect: dropped (except a cas, modelled as above);
//   unknown  a write may take effect at any instant after its invoke, or
//            never (its completion is +infinity and it may be left out); an
//            unknown get says nothing and is dropped.
// Ops whose intervals touch (one completes at the very nanosecond the other
// is invoked) count as concurrent.
//
// Search: Wing & Gong's backtracking over the entry list (calls and returns
// in time order): repeatedly linearize a pending call that comes before the
// first return still in the list; backtrack when that return's op cannot be
// placed. With Lowe's memoisation: a (set of linearized ops, model state)
// pair already explored is never explored again, as in Knossos/Porcupine.
// The set is kept as a 128-bit Zobrist fingerprint (a false "seen" needs a
// 128-bit collision). Reductions, each keeping the search complete:
//  - Precheck: a get (or an ok cas) needing a value that no possibly-applied
//    write ever wrote is rejected at once, without a search.
//  - Forced reads: a get / failed cas that can apply now is placed now and
//    no other order is tried at that node (it changes nothing and every
//    pending return comes after its call, so some linearization has it here
//    if any exists).
//  - Unknown writes have no deadline, so one is placed only when it lets a
//    pending op apply that cannot apply now; otherwise it could be moved
//    later or dropped.
//  - An unknown write whose result no op of the key reads is dropped when the
//    key has no negative observations (failed cas, delete existed=1), and
//    otherwise takes one shared "value nobody reads" state.
//  - Unknown writes with the same precondition and effect are
//    interchangeable: they are placed in invoke order, and for the largest
//    such groups the memo keeps how many were placed, a state with fewer
//    dominating one with more. An unknown cas group whose expected value can
//    never come back counts as fully placed.
//
// Bounded: each key's search stops after `max_states_per_key` states and
// reports kUnknown ("budget exceeded") rather than running forever. Memory
// is about 100 bytes per state (~200 MB at the default budget).
//
// Thread-compatible: pure functions over their arguments.
#ifndef TESSERA_TESTS_CHAOS_LINEARIZABILITY_H_
#define TESSERA_TESTS_CHAOS_LINEARIZABILITY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/chaos/history.h"

namespace tessera::chaos {

struct LinearizabilityOptions {
  // States (distinct (linearized set, value) pairs) one key may explore.
  int64_t max_states_per_key = 2'000'000;
  // How many linearized ops before the failure point an explanation shows.
  int explain_context_ops = 8;
};

struct KeyReport {
  std::string key;
  Verdict verdict = Verdict::kOk;
  int64_t ops = 0;          // ops of this key taken into the search
  int64_t dropped_ops = 0;  // failed writes, non-ok gets, unobserved unknown writes
  int64_t states = 0;       // states explored
  // kViolation: the longest linearizable prefix, the op that cannot be placed
  // after it and the ops concurrent with it. kUnknown: why. Multi-line.
  std::string explanation;
};

struct LinearizabilityReport {
  Verdict verdict = Verdict::kOk;  // kViolation if any key is; else kUnknown if any is
  std::vector<KeyReport> keys;     // one per key, sorted by key
  int64_t states = 0;              // total over keys

  // The non-ok keys' explanations (or "linearizable: N keys").
  std::string Summary() const;
};

// Checks the put/get/delete/cas ops of `ops` (others are ignored). Times in
// explanations are relative to the earliest invoke. Returns kInvalidArgument
// for an ok/fail op that completes before its invoke or a put/cas without a
// value.
absl::StatusOr<LinearizabilityReport> CheckLinearizability(
    const std::vector<Op>& ops, const LinearizabilityOptions& options = {});

// Checks the ops of one key only (all must have that key).
KeyReport CheckKey(const std::vector<const Op*>& ops, int64_t base_ns,
                   const LinearizabilityOptions& options = {});

}  // namespace tessera::chaos

#endif  // TESSERA_TESTS_CHAOS_LINEARIZABILITY_H_
