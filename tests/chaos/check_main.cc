// tessera-check: runs every checker over a chaos-test history.
//
//   tessera-check [--final FILE] [--max-states N] [--allow-negative] HISTORY
//
// HISTORY is a history file (history.h). The final state (after heal and
// restart) comes from its own "final" lines and/or from --final FILE, a file
// of "final" lines in the same format. Prints a summary (ops per outcome and
// kind, keys, each checker's result and explanation) and exits with
//   0  every checker that ran says ok;
//   1  a checker found a violation;
//   2  bad usage or input, or a checker could not decide (budget exceeded).
#include <cstdio>
#include <map>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "tests/chaos/bank.h"
#include "tests/chaos/durability.h"
#include "tests/chaos/history.h"
#include "tests/chaos/linearizability.h"

namespace tessera::chaos {
namespace {

constexpr char kUsage[] =
    "usage: tessera-check [--final FILE] [--max-states N] [--allow-negative] HISTORY\n";

int Fail(const std::string& message) {
  std::fprintf(stderr, "tessera-check: %s\n", message.c_str());
  return 2;
}

std::string Counts(const History& h) {
  std::map<Outcome, int64_t> by_outcome;
  std::map<OpKind, int64_t> by_kind;
  std::map<std::string, int64_t> keys;
  for (const Op& op : h.ops) {
    ++by_outcome[op.outcome];
    ++by_kind[op.kind];
    if (!op.key.empty()) ++keys[op.key];
  }
  std::string out = absl::StrCat(h.ops.size(), " ops (ok ", by_outcome[Outcome::kOk], ", fail ",
                                 by_outcome[Outcome::kFail], ", unknown ",
                                 by_outcome[Outcome::kUnknown], " of which ", h.pending,
                                 " never completed), ", keys.size(), " keys\n  by kind:");
  for (const auto& [kind, n] : by_kind) absl::StrAppend(&out, " ", OpKindName(kind), " ", n);
  absl::StrAppend(&out, "\n");
  if (h.truncated) absl::StrAppend(&out, "  note: the last line was partial and was dropped\n");
  return out;
}

int Main(int argc, char** argv) {
  std::string history_path;
  std::string final_path;
  LinearizabilityOptions lin_options;
  BankOptions bank_options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "--final" || arg == "--max-states") && i + 1 >= argc) {
      return Fail(absl::StrCat(arg, " needs a value\n", kUsage));
    }
    if (arg == "--final") {
      final_path = argv[++i];
    } else if (arg == "--max-states") {
      if (!absl::SimpleAtoi(argv[++i], &lin_options.max_states_per_key) ||
          lin_options.max_states_per_key <= 0) {
        return Fail(absl::StrCat("bad --max-states\n", kUsage));
      }
    } else if (arg == "--allow-negative") {
      bank_options.allow_negative = true;
    } else if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      return Fail(absl::StrCat("unknown flag ", arg, "\n", kUsage));
    } else if (history_path.empty()) {
      history_path = arg;
    } else {
      return Fail(absl::StrCat("more than one history file\n", kUsage));
    }
  }
  if (history_path.empty()) return Fail(kUsage);

  absl::StatusOr<History> history = ReadHistoryFile(history_path);
  if (!history.ok()) return Fail(absl::StrCat(history_path, ": ", history.status().ToString()));
  if (!final_path.empty()) {
    absl::StatusOr<History> final_file = ReadHistoryFile(final_path);
    if (!final_file.ok()) {
      return Fail(absl::StrCat(final_path, ": ", final_file.status().ToString()));
    }
    for (auto& [key, value] : final_file->final_state) history->final_state[key] = value;
  }

  std::string out = absl::StrCat("history ", history_path, ": ", Counts(*history));
  bool violation = false;
  bool unknown = false;
  auto note = [&](Verdict v) {
    violation |= v == Verdict::kViolation;
    unknown |= v == Verdict::kUnknown;
  };

  absl::StatusOr<LinearizabilityReport> lin = CheckLinearizability(history->ops, lin_options);
  if (!lin.ok()) return Fail(absl::StrCat(history_path, ": ", lin.status().ToString()));
  note(lin->verdict);
  absl::StrAppend(&out, lin->Summary());

  if (history->final_state.empty()) {
    absl::StrAppend(&out, "durability: skipped (no final state)\n");
  } else {
    DurabilityReport d = CheckDurability(history->ops, history->final_state);
    note(d.verdict);
    absl::StrAppend(&out, d.Summary());
  }

  if (!history->bank.has_value()) {
    absl::StrAppend(&out, "bank: skipped (no bank line)\n");
  } else {
    BankReport b = CheckBank(history->ops, *history->bank, bank_options);
    note(b.verdict);
    absl::StrAppend(&out, b.Summary());
  }

  const char* result = violation ? "VIOLATION" : unknown ? "UNKNOWN" : "OK";
  absl::StrAppend(&out, "result: ", result, "\n");
  std::fputs(out.c_str(), stdout);
  return violation ? 1 : unknown ? 2 : 0;
}

}  // namespace
}  // namespace tessera::chaos

int main(int argc, char** argv) { return tessera::chaos::Main(argc, argv); }
