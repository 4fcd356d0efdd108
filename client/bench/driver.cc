#include "client/bench/driver.h"

#include <atomic>
#include <chrono>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"

namespace tessera::bench {

absl::StatusOr<KeyFormat> KeyFormat::Create(size_t key_size, uint64_t key_space) {
  if (key_space == 0) return absl::InvalidArgumentError("--key-space must be at least 1");
  size_t digits = 1;
  for (uint64_t largest = key_space - 1; largest >= 10; largest /= 10) ++digits;
  if (key_size < digits + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--key-size=", key_size, " cannot hold keys 'k' + ", digits,
                     " digits for --key-space=", key_space, " (need at least ", digits + 1, ")"));
  }
  return KeyFormat(key_size, key_space, digits);
}

void KeyFormat::Format(uint64_t index, std::string* key) const {
  if (key->size() != key_size_) {
    key->assign(key_size_, '0');
    (*key)[0] = 'k';
  }
  // The padding never changes: rewrite only the last `digits_` characters.
  char* end = key->data() + key_size_;
  for (size_t i = 0; i < digits_; ++i) {
    *--end = static_cast<char>('0' + index % 10);
    index /= 10;
  }
}

std::string KeyFormat::Key(uint64_t index) const {
  std::string key;
  Format(index, &key);
  return key;
}

WriteCounts::WriteCounts(uint64_t key_space)
    : acked_(new std::atomic<uint32_t>[key_space]()),
      failed_(new std::atomic<uint32_t>[key_space]()) {}

void WriteCounts::Record(uint64_t key, bool acknowledged) {
  (acknowledged ? acked_ : failed_)[key].fetch_add(1, std::memory_order_relaxed);
}

VersionCheck CheckVersions(const KeyFormat& keys, const KeyVersions& before,
                           const KeyVersions& after, const WriteCounts& writes) {
  constexpr size_t kExamples = 10;
  VersionCheck check;
  for (uint64_t i = 0; i < keys.key_space(); ++i) {
    if (i >= before.size() || i >= after.size() || !before[i].has_value() ||
        !after[i].has_value()) {
      ++check.keys_unchecked;
      continue;
    }
    ++check.keys_checked;
    const uint64_t acked = writes.acked(i);
    const uint64_t failed = writes.failed(i);
    check.acked_writes += acked;
    check.failed_writes += failed;
    const uint64_t was = *before[i];
    const uint64_t is = *after[i];
    if (is >= was + acked && is <= was + acked + failed) continue;
    ++check.mismatches;
    if (check.examples.size() < kExamples) {
      check.examples.push_back(
          absl::StrCat(keys.Key(i), ": version ", was, " before, ", is, " after, with ", acked,
                       " acknowledged and ", failed, " failed writes (expected ", was + acked,
                       failed > 0 ? absl::StrCat("..", was + acked + failed) : "", ")"));
    }
  }
  return check;
}

namespace {

int64_t NowNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// splitmix64: a cheap, good-enough per-client generator (not shared).
uint64_t NextRandom(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
  z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
  return z ^ (z >> 31);
}

enum Phase : int { kWarmup, kMeasure, kStop };

// Who continues a virtual client's loop (see ClosedLoop::Issue).
enum ClientState : int { kIdle, kIssuing, kCompletedWhileIssuing };

// The state of one run, shared by its virtual clients. Held by a
// shared_ptr: the client that retires last keeps it alive until it has
// finished notifying the waiting thread.
class ClosedLoop : public std::enable_shared_from_this<ClosedLoop> {
 public:
  ClosedLoop(Backend& backend, const KeyFormat& keys, const RunSpec& spec)
      : backend_(backend), keys_(keys), spec_(spec) {
    clients_.reserve(spec.clients);
    for (size_t i = 0; i < spec.clients; ++i) {
      auto client = std::make_unique<VirtualClient>();
      client->loop = this;
      client->index = i;
      client->rng = spec.seed * 0x2545f4914f6cdd1d + i;
      clients_.push_back(std::move(client));
    }
  }

  RunStats Run() {
    if (clients_.empty()) return RunStats{};
    active_.store(static_cast<int64_t>(clients_.size()));
    const bool warmup = spec_.warmup > absl::ZeroDuration();
    int64_t measure_start = NowNanos();
    phase_.store(warmup ? kWarmup : kMeasure);
    for (const auto& client : clients_) Issue(client.get());
    if (warmup) {
      // Clients never retire during the warmup: this only waits.
      WaitAllRetired(spec_.warmup);
      measure_start = NowNanos();
      phase_.store(kMeasure);
    }
    if (!WaitAllRetired(spec_.duration)) {
      phase_.store(kStop);
      WaitAllRetired(absl::InfiniteDuration());
    }
    RunStats stats;
    stats.seconds = static_cast<double>(NowNanos() - measure_start) / 1e9;
    stats.latencies = latencies_.Snapshot();
    stats.ops = stats.latencies.count();
    stats.misses = misses_.load();
    for (size_t i = 0; i < errors_.size(); ++i) {
      stats.errors_by_code[i] = errors_[i].load();
      stats.errors += stats.errors_by_code[i];
    }
    return stats;
  }

 private:
  struct VirtualClient final : Completion {
    ClosedLoop* loop = nullptr;
    size_t index = 0;
    uint64_t rng = 0;
    std::string key;  // the key of the request in flight (rewritten in place)
    // Of the request in flight: written before it starts, read by its
    // completion (ordered by the RPC itself; atomics so that no tool needs
    // to see through gRPC for that).
    std::atomic<uint64_t> key_index{0};
    std::atomic<Op> op{Op::kGet};
    std::atomic<int64_t> start_nanos{0};
    std::atomic<bool> measured{false};
    std::atomic<int> state{kIdle};

    void OnComplete(absl::StatusCode code, bool miss, uint64_t version) override {
      loop->Completed(this, code, miss, version);
    }
  };

  // Issues `c`'s next request, or retires it once the run is over. A
  // completion that arrives while Start() is still running (inline, or on
  // another thread) only flags it, and this loop issues the next request:
  // no recursion, and one request in flight per client.
  void Issue(VirtualClient* c) {
    while (true) {
      const int phase = phase_.load();
      const bool measured = phase == kMeasure;
      if (phase == kStop || (measured && spec_.total >= 0 && measured_issued_++ >= spec_.total)) {
        return Retire();
      }
      const Op op = PickOp(c);
      const uint64_t key_index = PickKey(c);
      keys_.Format(key_index, &c->key);
      c->op.store(op, std::memory_order_relaxed);
      c->key_index.store(key_index, std::memory_order_relaxed);
      c->measured.store(measured, std::memory_order_relaxed);
      c->state.store(kIssuing);
      c->start_nanos.store(NowNanos(), std::memory_order_relaxed);
      backend_.Start(op, c->key, c->index, c);
      int expected = kIssuing;
      if (c->state.compare_exchange_strong(expected, kIdle)) return;  // the completion goes on
    }
  }

  void Completed(VirtualClient* c, absl::StatusCode code, bool miss, uint64_t version) {
    const int64_t end = NowNanos();
    const bool ok = code == absl::StatusCode::kOk;
    const uint64_t key_index = c->key_index.load(std::memory_order_relaxed);
    if (c->op.load(std::memory_order_relaxed) == Op::kGet) {
      if (spec_.versions != nullptr) {
        (*spec_.versions)[key_index] = ok ? std::optional<uint64_t>(version) : std::nullopt;
      }
    } else if (spec_.writes != nullptr) {
      spec_.writes->Record(key_index, ok);
    }
    if (c->measured.load(std::memory_order_relaxed)) {
      if (ok) {
        latencies_.Record(
            static_cast<uint64_t>(end - c->start_nanos.load(std::memory_order_relaxed)));
        if (miss) misses_.fetch_add(1, std::memory_order_relaxed);
      } else {
        const size_t i = static_cast<size_t>(code) < errors_.size()
                             ? static_cast<size_t>(code)
                             : static_cast<size_t>(absl::StatusCode::kUnknown);
        errors_[i].fetch_add(1, std::memory_order_relaxed);
      }
    }
    int expected = kIssuing;
    if (c->state.compare_exchange_strong(expected, kCompletedWhileIssuing))
      return;  // Issue() goes on
    Issue(c);
  }

  void Retire() ABSL_LOCKS_EXCLUDED(mu_) {
    if (active_.fetch_sub(1) != 1) return;
    std::shared_ptr<ClosedLoop> keep = shared_from_this();  // until the unlock has returned
    absl::MutexLock lock(&mu_);
    all_retired_ = true;
  }

  // True once every client retired; false if `timeout` passed first.
  // (AwaitWithDeadline: Debian's AwaitWithTimeout calls it, and the TSan
  // build's annotations of both would then count the wait twice.)
  bool WaitAllRetired(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithDeadline(absl::Condition(&all_retired_), absl::Now() + timeout);
  }

  Op PickOp(VirtualClient* c) {
    switch (spec_.workload) {
      case Workload::kPut:
        return Op::kPut;
      case Workload::kGet:
        return Op::kGet;
      case Workload::kTxn:
        return Op::kTxn;
      case Workload::kMixed: {
        const double u = static_cast<double>(NextRandom(c->rng) >> 11) * 0x1.0p-53;
        return u < spec_.read_ratio ? Op::kGet : Op::kPut;
      }
    }
    return Op::kPut;
  }

  uint64_t PickKey(VirtualClient* c) {
    const uint64_t space = keys_.key_space();
    if (spec_.sequential_keys) return next_key_.fetch_add(1, std::memory_order_relaxed) % space;
    // Multiply-shift: uniform in [0, space) without a division.
    return static_cast<uint64_t>((static_cast<unsigned __int128>(NextRandom(c->rng)) * space) >>
                                 64);
  }

  Backend& backend_;
  const KeyFormat& keys_;
  const RunSpec spec_;
  std::vector<std::unique_ptr<VirtualClient>> clients_;

  std::atomic<int> phase_{kWarmup};
  std::atomic<int64_t> measured_issued_{0};
  std::atomic<uint64_t> next_key_{0};
  std::atomic<int64_t> active_{0};  // clients not retired yet
  absl::Mutex mu_;
  bool all_retired_ ABSL_GUARDED_BY(mu_) = false;

  ConcurrentHistogram latencies_;
  std::atomic<uint64_t> misses_{0};
  std::array<std::atomic<uint64_t>, 17> errors_{};
};

}  // namespace

RunStats RunClosedLoop(Backend& backend, const KeyFormat& keys, const RunSpec& spec) {
  auto loop = std::make_shared<ClosedLoop>(backend, keys, spec);
  return loop->Run();
}

}  // namespace tessera::bench
