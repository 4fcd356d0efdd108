// The operation history of a chaos run: what each client asked, when, and what
// it learned. The workload records it (HistoryWriter); the checkers
// (linearizability.h, durability.h, bank.h) and tessera-check read it back
// (ParseHistory / ReadHistoryFile).
//
// Model. An Op is one client call on one key (put / get / delete / cas) or one
// single-shard transaction of the bank workload (txn_read / transfer). It has
// an invoke time and a completion time (nanoseconds of one monotonic clock
// shared by all clients of the run) and an outcome:
//   kOk       the call took effect (writes) or returned its result (reads);
//   kFail     definitely not applied (for a cas: the compare failed, see
//             Op::expected);
//   kUnknown  timeout / connection lost: a write may or may not have been
//             applied, at any time after its invoke.
//
// File format (version 1): UTF-8-agnostic text, one event per line, so that a
// history is written incrementally and a crash of the writer leaves a readable
// prefix. Each line is a word followed by space-separated name=value fields:
//
//   # tessera history v1                         comment (ignored)
//   invoke id=7 p=3 t=1200 f=put k=x v=a         an op starts
//   invoke id=8 p=1 t=1300 f=get k=x
//   invoke id=9 p=2 t=1350 f=cas k=x old=a v=b   compare-and-swap a -> b
//   invoke id=10 p=0 t=1400 f=delete k=x
//   invoke id=11 p=4 t=1500 f=txn_read ks=a0,a1
//   invoke id=12 p=4 t=1600 f=transfer ks=a0,a1 amount=5   move 5 from a0 to a1
//   ok id=7 t=1900                               it completed: applied
//   ok id=8 t=2000 v=a                           a get's result (v=~: not found)
//   fail id=9 t=2100                             definitely not applied
//   ok id=10 t=2200 existed=1                    optional: the key existed
//   ok id=11 t=2300 vs=50,50                     a txn_read's values, one per key
//   info id=12 t=2400                            outcome unknown
//   final k=x v=b                                state read after heal+restart
//   bank total=100 ks=a0,a1                      the bank invariant's parameters
//
// Values and keys are escaped: every byte outside '!'..'~' and each of
// '%', '=', ',', '~' becomes %XX (two upper-case hex digits), so any byte
// string round-trips; a lone "~" means absent (not found / must not exist);
// "v=" is the empty string. Unknown fields are ignored (forward compatible).
//
// Crash semantics: each line is written with one write and flushed, so a
// crash leaves whole lines plus at most one partial last line without its
// '\n'; the reader drops that line and sets History::truncated. An op whose
// invoke has no completion line gets outcome kUnknown and complete_ns =
// kNever. (For any kUnknown op, complete_ns is only the time the client gave
// up; the checkers treat its completion as +infinity.)
#ifndef TESSERA_TESTS_CHAOS_HISTORY_H_
#define TESSERA_TESTS_CHAOS_HISTORY_H_

#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace tessera::chaos {

// A key's value; nullopt = the key is absent.
using Value = std::optional<std::string>;

// Completion time of an op that never completed (outcome kUnknown).
inline constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

enum class OpKind { kPut, kGet, kDelete, kCas, kTxnRead, kTransfer };
enum class Outcome { kOk, kFail, kUnknown };

struct Op {
  int64_t id = 0;       // unique within the history; assigned by HistoryWriter
  int64_t process = 0;  // the client (worker) that issued it
  OpKind kind = OpKind::kGet;
  std::string key;  // put/get/delete/cas

  // put: the value written. cas: the new value. get (ok): the value read
  // (nullopt: not found).
  Value value;
  // cas only: the value the key must hold for the swap (nullopt: the key
  // must be absent). A cas with outcome kFail means the compare failed: the
  // key held something other than `expected` at some instant between invoke
  // and completion (the checker uses that as a read). A workload must record
  // other definite cas errors as kUnknown, never as kFail.
  Value expected;
  // delete (ok) only: whether the key existed (DeleteResponse.deleted), when
  // the client knows it.
  std::optional<bool> existed;

  // txn_read: the keys read; transfer: {from, to}.
  std::vector<std::string> keys;
  // txn_read (ok): one value per key.
  std::vector<Value> values;
  int64_t amount = 0;  // transfer only

  int64_t invoke_ns = 0;
  // When the client got its answer (kUnknown: when it gave up, or kNever).
  int64_t complete_ns = kNever;
  Outcome outcome = Outcome::kUnknown;

  bool IsWrite() const {
    return kind == OpKind::kPut || kind == OpKind::kDelete || kind == OpKind::kCas;
  }
};

// Parameters of the bank invariant (bank.h), recorded in the history.
struct BankConfig {
  std::vector<std::string> accounts;  // the account keys
  int64_t total = 0;                  // the sum every read must see
};

struct History {
  std::vector<Op> ops;  // in invoke order (file order)
  // State read after heal + restart ("final" lines), when recorded.
  std::map<std::string, Value> final_state;
  std::optional<BankConfig> bank;
  bool truncated = false;  // the last line was partial and was dropped
  int64_t pending = 0;     // invokes without a completion (kUnknown, kNever)
};

// A checker's result: kUnknown = could not decide (budget, missing input).
enum class Verdict { kOk, kViolation, kUnknown };
absl::string_view VerdictName(Verdict v);  // "ok", "VIOLATION", "unknown"

absl::string_view OpKindName(OpKind kind);
absl::string_view OutcomeName(Outcome outcome);

// Escaping used by the file format (see above). Unescape fails with
// kInvalidArgument on a malformed %XX.
std::string EscapeValue(const Value& v);
absl::StatusOr<Value> UnescapeValue(absl::string_view s);

// Human-readable rendering for reports: "abc" (C-escaped) or <absent>.
std::string DisplayValue(const Value& v);
// One op on one line, e.g. `#7 p3 put k="x" v="a" ok [1.200ms, 1.900ms]`,
// with times relative to `base_ns` (the first invoke of the history).
std::string DescribeOp(const Op& op, int64_t base_ns);

// Parses a whole history file's contents. Returns kInvalidArgument naming the
// line for a malformed line, a completion of an unknown or already completed
// id, or a completion before its invoke. A partial last line (no '\n') is
// dropped and sets `truncated`.
absl::StatusOr<History> ParseHistory(absl::string_view text);
// Reads and parses `path`. kNotFound / kInternal on I/O errors, else as
// ParseHistory.
absl::StatusOr<History> ReadHistoryFile(const std::string& path);

// Serialises a complete history (ops, final state, bank) in the file format;
// ParseHistory(FormatHistory(h)) == h up to op order by invoke.
std::string FormatHistory(const History& history);

// Appends a history to a file, one line per event, flushed after each line so
// a crash of the process leaves a readable prefix. Thread-safe: workers share
// one writer.
class HistoryWriter {
 public:
  // Creates (truncates) `path`. kInternal if it cannot be opened.
  static absl::StatusOr<std::unique_ptr<HistoryWriter>> Open(const std::string& path);
  ~HistoryWriter();
  HistoryWriter(const HistoryWriter&) = delete;
  HistoryWriter& operator=(const HistoryWriter&) = delete;

  // Records the start of `op` (process, kind, key, value / expected / keys /
  // amount, invoke_ns) and assigns op->id. kInternal on a write error.
  absl::Status Invoke(Op* op) ABSL_LOCKS_EXCLUDED(mu_);
  // Records the end of `op` (id, outcome, complete_ns and, for an ok get /
  // delete / txn_read, its result). An op left without Complete() reads back
  // as kUnknown. kInternal on a write error.
  absl::Status Complete(const Op& op) ABSL_LOCKS_EXCLUDED(mu_);
  // Records the state of `key` read after heal + restart.
  absl::Status Final(const std::string& key, const Value& value) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Bank(const BankConfig& config) ABSL_LOCKS_EXCLUDED(mu_);
  // Flushes to the OS and fsyncs. kInternal on error.
  absl::Status Sync() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  explicit HistoryWriter(std::FILE* file) : file_(file) {}
  absl::Status WriteLine(const std::string& line) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  std::FILE* file_ ABSL_GUARDED_BY(mu_);
  int64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
};

// Line builders shared by HistoryWriter and FormatHistory.
std::string InvokeLine(const Op& op);
std::string CompleteLine(const Op& op);
std::string FinalLine(const std::string& key, const Value& value);
std::string BankLine(const BankConfig& config);

}  // namespace tessera::chaos

#endif  // TESSERA_TESTS_CHAOS_HISTORY_H_
