#include "tests/chaos/linearizability.h"

#include <algorithm>
#include <array>
#include <map>
#include <tuple>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"

namespace tessera::chaos {
namespace {

// Model states are interned values; absent is -1.
constexpr int32_t kAbsentState = -1;
// Any value that no op of the key reads or compares with (see CheckKey).
constexpr int32_t kUnreadState = -2;

enum class Type { kPut, kDelete, kCas, kCasFailed, kRead };

struct SearchOp {
  const Op* op = nullptr;
  Type type = Type::kRead;
  bool required = false;            // ok (or failed cas): must take effect before its completion
  int32_t arg = kAbsentState;       // put / cas: the new value; read: the value read
  int32_t expected = kAbsentState;  // cas
  int existed = -1;                 // delete: -1 unknown, 0 absent, 1 present
  int64_t call_ns = 0;
  int64_t return_ns = kNever;
  // This op's contribution to the linearized set's 128-bit fingerprint.
  uint64_t zobrist = 0;
  uint64_t zobrist2 = 0;
  int group = -1;  // unknown ops: interchangeable ops share a group
  int rank = 0;    // invoke order within the group
};

// Applies `s` to `state`. False if its precondition does not hold.
bool Step(const SearchOp& s, int32_t state, int32_t* next) {
  switch (s.type) {
    case Type::kPut:
      *next = s.arg;
      return true;
    case Type::kDelete:
      if (s.existed >= 0 && (state != kAbsentState) != (s.existed == 1)) return false;
      *next = kAbsentState;
      return true;
    case Type::kCas:
      if (state != s.expected) return false;
      *next = s.arg;
      return true;
    case Type::kCasFailed:
      if (state == s.expected) return false;
      *next = state;
      return true;
    case Type::kRead:
      if (state != s.arg) return false;
      *next = state;
      return true;
  }
  return false;
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// One memoised search state: a fingerprint of the set of linearized ops
// (outside counted groups) and the model state. 128-bit Zobrist hashing
// keeps the memo small; two different sets collide with probability about
// states^2 / 2^128, i.e. never in practice.
struct CacheKey {
  uint64_t h1;
  uint64_t h2;
  int32_t state;
  bool operator==(const CacheKey& o) const { return h1 == o.h1 && h2 == o.h2 && state == o.state; }
};
struct CacheKeyHash {
  size_t operator()(const CacheKey& k) const {
    return SplitMix64(k.h1 ^ (static_cast<uint64_t>(static_cast<uint32_t>(k.state)) << 1));
  }
};

// How many ops of each counted group are linearized (see Search::counted_).
constexpr int kMaxCounted = 4;
using Counts = std::array<int32_t, kMaxCounted>;

// An entry of Wing & Gong's list: the call or the return of an op.
struct Entry {
  int op = -1;  // -1: the head sentinel
  bool call = false;
  int match = -1;  // call: its return entry (-1: none, unknown outcome)
  int prev = -1;
  int next = -1;
};

class Search {
 public:
  Search(std::vector<SearchOp> ops, std::vector<Value> values, int64_t base_ns,
         const LinearizabilityOptions& options)
      : ops_(std::move(ops)),
        values_(std::move(values)),
        base_ns_(base_ns),
        options_(options),
        bits_((ops_.size() + 63) / 64, 0) {
    int groups = 0;
    for (const SearchOp& s : ops_) {
      required_total_ += s.required ? 1 : 0;
      groups = std::max(groups, s.group + 1);
    }
    group_used_.assign(groups, 0);
    std::vector<int> group_size(groups, 0);
    for (const SearchOp& s : ops_) {
      if (s.group >= 0) ++group_size[s.group];
    }
    std::vector<int> by_size(groups);
    for (int g = 0; g < groups; ++g) by_size[g] = g;
    std::stable_sort(by_size.begin(), by_size.end(),
                     [&](int a, int b) { return group_size[a] > group_size[b]; });
    counted_slot_.assign(groups, -1);
    for (int i = 0; i < groups && i < kMaxCounted && group_size[by_size[i]] >= 2; ++i) {
      counted_slot_[by_size[i]] = i;
    }
    // Unknown cas groups and the writers of each value, to tell when a group
    // can never apply again (see DeadMask).
    writers_left_.assign(values_.size() + 2, 0);
    std::vector<int> group_index(groups, -1);
    for (size_t i = 0; i < ops_.size(); ++i) {
      const SearchOp& s = ops_[i];
      int32_t result = Result(s);
      if (result != kNoResult) ++writers_left_[result + 2];
      if (s.group < 0 || s.type != Type::kCas) continue;
      if (group_index[s.group] == -1) {
        group_index[s.group] = static_cast<int>(cas_groups_.size());
        cas_groups_.push_back({s.expected, {}});
      }
      cas_groups_[group_index[s.group]].members.push_back(static_cast<int>(i));
    }
  }

  // Runs the search; fills verdict, states and explanation of `report`.
  void Run(KeyReport* report) {
    BuildEntries();
    remaining_ = required_total_;
    NoteProgress();     // the empty prefix
    bool fresh = true;  // just arrived at a new node of the search tree
    int entry = entries_[0].next;
    while (remaining_ > 0) {
      if (fresh) {
        fresh = false;
        entry = entries_[0].next;
        // A pure read (get, failed cas) that can go now may as well go first:
        // if any linearization from here exists, one places the read now
        // (its call is before every pending return and it changes nothing).
        // So it is a forced move: no other order is tried at this node.
        int read = FindApplicableRead();
        if (read != -1) {
          Push push = TryPush(read, /*forced=*/true);
          if (push == Push::kBudget) return BudgetExceeded(report);
          if (push == Push::kPushed) {
            fresh = true;
            continue;
          }
          entry = -1;  // explored before without success: this node fails
        }
      }
      if (entry != -1 && entries_[entry].call) {
        Push push = TryPush(entry, /*forced=*/false);
        if (push == Push::kBudget) return BudgetExceeded(report);
        if (push == Push::kPushed) {
          fresh = true;
        } else {
          entry = entries_[entry].next;
        }
        continue;
      }
      // A return (its op was not linearized and nothing more can go first),
      // or a failed node: backtrack past forced moves.
      Frame f;
      do {
        if (stack_.empty()) break;
        f = Pop();
      } while (f.forced);
      if (f.forced || f.entry == -1) break;  // the stack ran out: not linearizable
      entry = entries_[f.entry].next;
    }
    report->states = states_;
    if (remaining_ == 0) {
      report->verdict = Verdict::kOk;
      return;
    }
    report->verdict = Verdict::kViolation;
    report->explanation = Explain();
  }

 private:
  struct Frame {
    int entry = -1;
    int32_t before = kAbsentState;
    int32_t after = kAbsentState;
    bool forced = false;
  };
  enum class Push { kPushed, kNotApplicable, kSeen, kBudget };

  // The first pending pure read (before the first pending return) whose
  // precondition holds, or -1.
  int FindApplicableRead() const {
    for (int i = entries_[0].next; i != -1 && entries_[i].call; i = entries_[i].next) {
      const SearchOp& s = ops_[entries_[i].op];
      if (s.type != Type::kRead && s.type != Type::kCasFailed) continue;
      int32_t next;
      if (Step(s, state_, &next)) return i;
    }
    return -1;
  }

  // Whether some pending op cannot apply now but could at `state`. An
  // unknown write is only worth placing then: in any linearization it can be
  // moved to just before the first op that cannot apply without it (it has
  // no deadline, and the ops it moves past apply either way), or dropped if
  // no op needs it.
  bool Unblocks(int32_t state) const {
    for (int i = entries_[0].next; i != -1 && entries_[i].call; i = entries_[i].next) {
      const SearchOp& s = ops_[entries_[i].op];
      int32_t next;
      if (!Step(s, state_, &next) && Step(s, state, &next)) return true;
    }
    return false;
  }

  // Linearizes the op of call entry `entry` next, unless it cannot apply or
  // the resulting state was explored before.
  Push TryPush(int entry, bool forced) {
    const SearchOp& s = ops_[entries_[entry].op];
    int32_t next_state;
    bool in_turn = s.group < 0 || group_used_[s.group] == s.rank;
    if (!in_turn || !Step(s, state_, &next_state)) return Push::kNotApplicable;
    if (!s.required && !Unblocks(next_state)) return Push::kNotApplicable;
    SetBit(entries_[entry].op, true);
    AdjustWriters(s, -1);
    int slot = s.group >= 0 ? counted_slot_[s.group] : -1;
    CacheKey key{hash_, hash2_, next_state};
    Counts counts = counts_;
    if (slot >= 0) {
      ++counts[slot];
    } else {
      key.h1 ^= s.zobrist;
      key.h2 ^= s.zobrist2;
    }
    CanonicalizeDead(next_state, &key, &counts);
    if (!Remember(key, counts)) {
      SetBit(entries_[entry].op, false);
      AdjustWriters(s, +1);
      return Push::kSeen;
    }
    if (++states_ > options_.max_states_per_key) return Push::kBudget;
    stack_.push_back({entry, state_, next_state, forced});
    state_ = next_state;
    if (slot >= 0) {
      ++counts_[slot];
    } else {
      hash_ ^= s.zobrist;
      hash2_ ^= s.zobrist2;
    }
    if (s.required) --remaining_;
    if (s.group >= 0) ++group_used_[s.group];
    Lift(entry);
    NoteProgress();
    return Push::kPushed;
  }

  Frame Pop() {
    Frame f = stack_.back();
    stack_.pop_back();
    low_water_ = std::min(low_water_, stack_.size());
    const SearchOp& s = ops_[entries_[f.entry].op];
    SetBit(entries_[f.entry].op, false);
    AdjustWriters(s, +1);
    if (int slot = s.group >= 0 ? counted_slot_[s.group] : -1; slot >= 0) {
      --counts_[slot];
    } else {
      hash_ ^= s.zobrist;
      hash2_ ^= s.zobrist2;
    }
    state_ = f.before;
    if (s.required) ++remaining_;
    if (s.group >= 0) --group_used_[s.group];
    Unlift(f.entry);
    return f;
  }

  void BudgetExceeded(KeyReport* report) const {
    report->verdict = Verdict::kUnknown;
    report->states = states_;
    report->explanation =
        absl::StrCat("unknown: search budget exceeded (", options_.max_states_per_key,
                     " states) after linearizing ", best_required_, " of ", RequiredCount(),
                     " required ops; raise --max-states or shorten the run");
  }

  static constexpr int32_t kNoResult = -3;
  // The value an op writes, or kNoResult.
  static int32_t Result(const SearchOp& s) {
    switch (s.type) {
      case Type::kPut:
      case Type::kCas:
        return s.arg;
      case Type::kDelete:
        return kAbsentState;
      default:
        return kNoResult;
    }
  }
  void AdjustWriters(const SearchOp& s, int delta) {
    int32_t result = Result(s);
    if (result != kNoResult) writers_left_[result + 2] += delta;
  }

  // An unknown cas expecting e can never apply again once every op that
  // writes e is linearized and the value is not e. Whether such ops were
  // applied no longer matters, so the memo key counts them as linearized:
  // states that differ only in them are the same state.
  void CanonicalizeDead(int32_t state, CacheKey* key, Counts* counts) const {
    for (const CasGroup& g : cas_groups_) {
      if (writers_left_[g.expected + 2] != 0 || state == g.expected) continue;
      int slot = counted_slot_[ops_[g.members.front()].group];
      if (slot >= 0) {
        (*counts)[slot] = static_cast<int32_t>(g.members.size());
        continue;
      }
      for (int m : g.members) {
        uint64_t bit = uint64_t{1} << (m % 64);
        if (bits_[m / 64] & bit) continue;
        key->h1 ^= ops_[m].zobrist;
        key->h2 ^= ops_[m].zobrist2;
      }
    }
  }

  // Records a state; false if it, or a state that dominates it, was seen.
  // Ops of a counted group are interchangeable and optional, so of two
  // states that differ only in how many of them are linearized, the one
  // with fewer has every continuation the other has: if it failed, so does
  // the other.
  bool Remember(const CacheKey& key, const Counts& counts) {
    auto& seen = cache_[key];
    for (const Counts& c : seen) {
      bool dominated = true;
      for (int i = 0; i < kMaxCounted; ++i) dominated &= c[i] <= counts[i];
      if (dominated) return false;
    }
    seen.push_back(counts);
    return true;
  }

  int RequiredCount() const { return required_total_; }

  void SetBit(int i, bool on) {
    if (on) {
      bits_[i / 64] |= uint64_t{1} << (i % 64);
    } else {
      bits_[i / 64] &= ~(uint64_t{1} << (i % 64));
    }
  }

  void BuildEntries() {
    struct Event {
      int64_t t;
      int kind;  // 0 call, 1 return: calls first at equal times (concurrent)
      int op;
    };
    std::vector<Event> events;
    for (size_t i = 0; i < ops_.size(); ++i) {
      events.push_back({ops_[i].call_ns, 0, static_cast<int>(i)});
      if (ops_[i].required) events.push_back({ops_[i].return_ns, 1, static_cast<int>(i)});
    }
    std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
      return std::tie(a.t, a.kind, a.op) < std::tie(b.t, b.kind, b.op);
    });
    entries_.assign(events.size() + 1, Entry{});
    std::vector<int> call_entry(ops_.size(), -1);
    for (size_t i = 0; i < events.size(); ++i) {
      Entry& e = entries_[i + 1];
      e.op = events[i].op;
      e.call = events[i].kind == 0;
      if (e.call) {
        call_entry[e.op] = static_cast<int>(i + 1);
      } else {
        entries_[call_entry[e.op]].match = static_cast<int>(i + 1);
      }
    }
    for (size_t i = 0; i < entries_.size(); ++i) {
      entries_[i].prev = static_cast<int>(i) - 1;
      entries_[i].next = i + 1 < entries_.size() ? static_cast<int>(i + 1) : -1;
    }
  }

  void Remove(int i) {
    Entry& e = entries_[i];
    entries_[e.prev].next = e.next;
    if (e.next != -1) entries_[e.next].prev = e.prev;
  }
  void Restore(int i) {
    Entry& e = entries_[i];
    entries_[e.prev].next = i;
    if (e.next != -1) entries_[e.next].prev = i;
  }
  // Removes a call and its return (dancing links: Unlift undoes in reverse).
  void Lift(int call) {
    Remove(call);
    if (entries_[call].match != -1) Remove(entries_[call].match);
  }
  void Unlift(int call) {
    if (entries_[call].match != -1) Restore(entries_[call].match);
    Restore(call);
  }

  // Keeps, for the explanation, the linearization that got furthest: the one
  // whose first unplaced return (the op that must go next) is latest, and
  // among those the shortest, so ops concurrent with that op are shown as
  // candidates rather than as placed. Copies only the part of the stack that
  // changed since the last copy.
  void NoteProgress() {
    int frontier = entries_[0].next;
    while (frontier != -1 && entries_[frontier].call) frontier = entries_[frontier].next;
    if (frontier == -1) return;  // everything required is placed: success
    if (frontier < best_frontier_ ||
        (frontier == best_frontier_ && stack_.size() >= best_ops_.size())) {
      return;
    }
    best_frontier_ = frontier;
    best_required_ = required_total_ - remaining_;
    size_t keep = std::min(low_water_, best_ops_.size());
    best_ops_.resize(keep);
    best_after_.resize(keep);
    for (size_t i = keep; i < stack_.size(); ++i) {
      best_ops_.push_back(entries_[stack_[i].entry].op);
      best_after_.push_back(stack_[i].after);
    }
    low_water_ = stack_.size();
  }

  std::string Show(int32_t state) const {
    if (state == kUnreadState) return "<a value nobody reads>";
    return DisplayValue(state == kAbsentState ? Value() : values_[state]);
  }

  std::string Why(const SearchOp& s, int32_t state) const {
    switch (s.type) {
      case Type::kRead:
        return absl::StrCat("it read ", Show(s.arg), " but the value is ", Show(state));
      case Type::kCas:
        return absl::StrCat("it expected ", Show(s.expected), " but the value is ", Show(state));
      case Type::kCasFailed:
        return absl::StrCat("its compare failed, yet the value is ", Show(state),
                            " (what it expected)");
      case Type::kDelete:
        return absl::StrCat("it reported existed=", s.existed, " but the value is ", Show(state));
      case Type::kPut:
        break;
    }
    return "a put always applies";
  }

  std::string Explain() const {
    std::vector<bool> done(ops_.size(), false);
    for (int i : best_ops_) done[i] = true;
    int32_t state = best_after_.empty() ? kAbsentState : best_after_.back();
    int blocking = -1;
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (done[i] || !ops_[i].required) continue;
      if (blocking == -1 || ops_[i].return_ns < ops_[blocking].return_ns) {
        blocking = static_cast<int>(i);
      }
    }
    std::string out = absl::StrCat("not linearizable: longest linearizable prefix has ",
                                   best_required_, " of ", RequiredCount(), " required ops (",
                                   best_ops_.size(), " ops); value after it: ", Show(state), "\n");
    size_t first = best_ops_.size() > static_cast<size_t>(options_.explain_context_ops)
                       ? best_ops_.size() - options_.explain_context_ops
                       : 0;
    if (first > 0) absl::StrAppend(&out, "  ... ", first, " earlier ops\n");
    for (size_t i = first; i < best_ops_.size(); ++i) {
      absl::StrAppend(&out, "  linearized ", DescribeOp(*ops_[best_ops_[i]].op, base_ns_), "  => ",
                      Show(best_after_[i]), "\n");
    }
    if (blocking == -1) return out;
    const SearchOp& b = ops_[blocking];
    absl::StrAppend(&out, "  cannot place ", DescribeOp(*b.op, base_ns_), "\n    ", Why(b, state),
                    ", and no order of the ops concurrent with it fixes that\n");
    int shown = 0;
    for (size_t i = 0; i < ops_.size(); ++i) {
      if (done[i] || static_cast<int>(i) == blocking || ops_[i].call_ns > b.return_ns) continue;
      if (++shown > 2 * options_.explain_context_ops) {
        absl::StrAppend(&out, "  ... more concurrent ops\n");
        break;
      }
      int32_t next;
      bool can = Step(ops_[i], state, &next);
      absl::StrAppend(&out, "  concurrent ", DescribeOp(*ops_[i].op, base_ns_),
                      can ? absl::StrCat("  (could apply: => ", Show(next), ")")
                          : absl::StrCat("  (cannot apply: ", Why(ops_[i], state), ")"),
                      "\n");
    }
    return out;
  }

  std::vector<SearchOp> ops_;
  std::vector<Value> values_;
  int64_t base_ns_;
  LinearizabilityOptions options_;
  int required_total_ = 0;
  std::vector<Entry> entries_;  // [0] is the head sentinel
  std::vector<uint64_t> bits_;
  std::vector<Frame> stack_;
  int32_t state_ = kAbsentState;  // the model state after the stack
  uint64_t hash_ = 0;             // fingerprint of the linearized set
  uint64_t hash2_ = 0;            //   (outside counted groups)
  Counts counts_{};               // linearized ops per counted group
  // Per group: its slot in Counts, or -1. The largest groups (2+ ops) are
  // counted rather than fingerprinted, for the dominance rule of Remember().
  std::vector<int> counted_slot_;
  int remaining_ = 0;            // required ops not linearized
  int64_t states_ = 0;           // states explored
  std::vector<int> group_used_;  // per group: how many are linearized
  struct CasGroup {
    int32_t expected;
    std::vector<int> members;
  };
  std::vector<CasGroup> cas_groups_;  // groups of unknown cas ops
  std::vector<int> writers_left_;     // per value + 2: writers not yet linearized
  absl::flat_hash_map<CacheKey, absl::InlinedVector<Counts, 1>, CacheKeyHash> cache_;
  // The deepest linearization seen, for explanations.
  int best_frontier_ = -1;
  int best_required_ = 0;
  std::vector<int> best_ops_;
  std::vector<int32_t> best_after_;
  size_t low_water_ = 0;
};

bool IsRegisterOp(const Op& op) {
  return op.kind == OpKind::kPut || op.kind == OpKind::kGet || op.kind == OpKind::kDelete ||
         op.kind == OpKind::kCas;
}

}  // namespace

KeyReport CheckKey(const std::vector<const Op*>& ops, int64_t base_ns,
                   const LinearizabilityOptions& options) {
  KeyReport report;
  if (!ops.empty()) report.key = ops.front()->key;
  std::vector<Value> values;
  absl::flat_hash_map<std::string, int32_t> ids;
  auto intern = [&](const Value& v) -> int32_t {
    if (!v.has_value()) return kAbsentState;
    auto [it, inserted] = ids.try_emplace(*v, static_cast<int32_t>(values.size()));
    if (inserted) values.push_back(v);
    return it->second;
  };

  std::vector<SearchOp> candidates;
  for (const Op* op : ops) {
    SearchOp s;
    s.op = op;
    s.call_ns = op->invoke_ns;
    s.required = op->outcome != Outcome::kUnknown;
    s.return_ns = s.required ? op->complete_ns : kNever;
    switch (op->kind) {
      case OpKind::kGet:
        if (op->outcome != Outcome::kOk) {
          ++report.dropped_ops;  // no result: says nothing
          continue;
        }
        s.type = Type::kRead;
        s.arg = intern(op->value);
        break;
      case OpKind::kPut:
        if (op->outcome == Outcome::kFail) {
          ++report.dropped_ops;
          continue;
        }
        s.type = Type::kPut;
        s.arg = intern(op->value);
        break;
      case OpKind::kDelete:
        if (op->outcome == Outcome::kFail) {
          ++report.dropped_ops;
          continue;
        }
        s.type = Type::kDelete;
        if (op->outcome == Outcome::kOk && op->existed.has_value()) s.existed = *op->existed;
        break;
      case OpKind::kCas:
        s.type = op->outcome == Outcome::kFail ? Type::kCasFailed : Type::kCas;
        s.expected = intern(op->expected);
        s.arg = intern(op->value);
        break;
      default:
        continue;
    }
    candidates.push_back(s);
  }

  // Unknown writes nobody observes can be left out (see the header) unless the
  // key has negative observations, which such a write might satisfy.
  absl::flat_hash_set<int32_t> observed;
  bool negative = false;
  for (const SearchOp& s : candidates) {
    if (s.type == Type::kRead) observed.insert(s.arg);
    if (s.type == Type::kCas || s.type == Type::kCasFailed) observed.insert(s.expected);
    if (s.type == Type::kCasFailed || s.existed == 1) negative = true;
    if (s.existed == 0) observed.insert(kAbsentState);
  }
  std::vector<SearchOp> kept;
  for (SearchOp& s : candidates) {
    bool write = s.type == Type::kPut || s.type == Type::kCas || s.type == Type::kDelete;
    int32_t result = s.type == Type::kDelete ? kAbsentState : s.arg;
    if (!s.required && write && !observed.contains(result)) {
      if (!negative) {
        ++report.dropped_ops;
        continue;
      }
      // No op can tell this value from any other nobody reads: one state.
      if (s.type != Type::kDelete) s.arg = kUnreadState;
    }
    kept.push_back(s);
  }

  // A read (or an acknowledged cas's expected value) that no write which may
  // have applied ever wrote cannot be linearized whatever the order.
  absl::flat_hash_set<int32_t> written = {kAbsentState, kUnreadState};
  for (const SearchOp& s : kept) {
    if (s.type == Type::kPut || s.type == Type::kCas) written.insert(s.arg);
  }
  for (const SearchOp& s : kept) {
    int32_t needed = s.type == Type::kRead                ? s.arg
                     : s.type == Type::kCas && s.required ? s.expected
                                                          : kAbsentState;
    if (written.contains(needed)) continue;
    report.ops = static_cast<int64_t>(kept.size());
    report.verdict = Verdict::kViolation;
    report.explanation = absl::StrCat(
        "key ", DisplayValue(report.key), ": not linearizable: ", DescribeOp(*s.op, base_ns),
        "\n    ", s.type == Type::kRead ? "it read " : "it expected ", DisplayValue(values[needed]),
        ", a value no write that may have applied ever wrote");
    for (const Op* op : ops) {
      if (op->outcome == Outcome::kFail && op->kind == OpKind::kPut &&
          op->value == values[needed]) {
        absl::StrAppend(&report.explanation,
                        "\n    (a failed write did: ", DescribeOp(*op, base_ns), ")");
      }
    }
    absl::StrAppend(&report.explanation, "\n");
    return report;
  }

  // Unknown ops with the same effect and precondition are interchangeable
  // (each may apply at any time after its invoke): the search applies those
  // of one group only in invoke order, so it explores how many of them
  // applied rather than which (2^k subsets otherwise).
  std::map<std::tuple<Type, int32_t, int32_t>, int> groups;
  std::vector<int> group_size;
  std::vector<size_t> order(kept.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return kept[a].call_ns < kept[b].call_ns; });
  for (size_t i : order) {
    SearchOp& s = kept[i];
    if (s.required || s.type == Type::kRead || s.type == Type::kCasFailed) continue;
    auto [it, inserted] =
        groups.try_emplace({s.type, s.expected, s.arg}, static_cast<int>(group_size.size()));
    if (inserted) group_size.push_back(0);
    s.group = it->second;
    s.rank = group_size[s.group]++;
  }
  for (size_t i = 0; i < kept.size(); ++i) {
    kept[i].zobrist = SplitMix64(i * 2 + 1);
    kept[i].zobrist2 = SplitMix64(SplitMix64(i * 2 + 2));
  }
  report.ops = static_cast<int64_t>(kept.size());
  Search search(std::move(kept), std::move(values), base_ns, options);
  search.Run(&report);
  if (report.verdict != Verdict::kOk) {
    report.explanation = absl::StrCat("key ", DisplayValue(report.key), ": ", report.explanation);
  }
  return report;
}

absl::StatusOr<LinearizabilityReport> CheckLinearizability(const std::vector<Op>& ops,
                                                           const LinearizabilityOptions& options) {
  std::map<std::string, std::vector<const Op*>> by_key;
  int64_t base_ns = kNever;
  for (const Op& op : ops) {
    if (!IsRegisterOp(op)) continue;
    if (op.outcome != Outcome::kUnknown &&
        (op.complete_ns == kNever || op.complete_ns < op.invoke_ns)) {
      return absl::InvalidArgumentError(
          absl::StrCat("op #", op.id, ": completion missing or before its invoke"));
    }
    if ((op.kind == OpKind::kPut || op.kind == OpKind::kCas) && !op.value.has_value()) {
      return absl::InvalidArgumentError(absl::StrCat("op #", op.id, ": put/cas without a value"));
    }
    base_ns = std::min(base_ns, op.invoke_ns);
    by_key[op.key].push_back(&op);
  }
  LinearizabilityReport report;
  bool unknown = false;
  for (const auto& [key, key_ops] : by_key) {
    KeyReport k = CheckKey(key_ops, base_ns, options);
    report.states += k.states;
    if (k.verdict == Verdict::kViolation) report.verdict = Verdict::kViolation;
    if (k.verdict == Verdict::kUnknown) unknown = true;
    report.keys.push_back(std::move(k));
  }
  if (report.verdict != Verdict::kViolation && unknown) report.verdict = Verdict::kUnknown;
  return report;
}

std::string LinearizabilityReport::Summary() const {
  int64_t ok = 0;
  std::string out;
  for (const KeyReport& k : keys) {
    if (k.verdict == Verdict::kOk) {
      ++ok;
      continue;
    }
    absl::StrAppend(&out, k.explanation, "\n");
  }
  return absl::StrCat("linearizability: ", VerdictName(verdict), " (", ok, " of ", keys.size(),
                      " keys linearizable, ", states, " states explored)\n", out);
}

}  // namespace tessera::chaos
