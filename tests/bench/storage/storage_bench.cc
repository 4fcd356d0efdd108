// Benchmarks of the storage hot paths on the RocksDB engine: synced raft log
// appends (group commit), point gets and scans. Each benchmark opens a fresh
// engine in a temporary directory ($TMPDIR or /tmp) and removes it after.
//
//   ninja -C build/<dir> storage_bench && build/<dir>/tests/bench/storage/storage_bench
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "storage/engine.h"

namespace tessera::storage {
namespace {

constexpr int kPayloadBytes = 256;
constexpr int kKeys = 100'000;
constexpr int kValueBytes = 100;

// A fresh engine in a temporary directory, removed on destruction.
class BenchEngine {
 public:
  BenchEngine() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/tessera-bench-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) std::abort();
    dir_ = pattern;
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir_ + "/db", {});
    if (!engine.ok()) {
      std::fprintf(stderr, "open: %s\n", engine.status().ToString().c_str());
      std::abort();
    }
    engine_ = *std::move(engine);
  }
  ~BenchEngine() {
    engine_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  Engine& operator*() { return *engine_; }
  Engine* operator->() { return engine_.get(); }

 private:
  std::string dir_;
  std::unique_ptr<Engine> engine_;
};

std::string Key(int i) {
  char key[16];
  std::snprintf(key, sizeof(key), "key%08d", i);
  return key;
}

void Check(const absl::Status& s, benchmark::State& state) {
  if (!s.ok()) state.SkipWithError(s.ToString().c_str());
}

// One synced Save of `range(0)` entries of one shard per iteration.
void BM_SaveSynced(benchmark::State& state) {
  BenchEngine engine;
  RaftLog& log = engine->raft_log();
  const int batch = static_cast<int>(state.range(0));
  const std::string payload(kPayloadBytes, 'p');
  uint64_t next = 1;
  std::vector<LogUpdate> updates(1);
  updates[0].shard = 1;
  for (auto _ : state) {
    updates[0].entries.clear();
    for (int i = 0; i < batch; ++i) {
      raftpb::Entry e;
      e.set_index(next++);
      e.set_term(1);
      e.set_data(payload);
      updates[0].entries.push_back(std::move(e));
    }
    raftpb::HardState hs;
    hs.set_term(1);
    hs.set_commit(next - 1);
    updates[0].hard_state = hs;
    Check(log.Save(updates), state);
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * kPayloadBytes);
  state.counters["fsyncs"] = static_cast<double>(engine->SyncedWalWritesForTesting());
}
BENCHMARK(BM_SaveSynced)->Arg(1)->Arg(16)->Arg(256)->UseRealTime();

// Group commit across shards: one synced Save carrying one entry for each of
// `range(0)` shards.
void BM_SaveSyncedManyShards(benchmark::State& state) {
  BenchEngine engine;
  RaftLog& log = engine->raft_log();
  const int shards = static_cast<int>(state.range(0));
  const std::string payload(kPayloadBytes, 'p');
  uint64_t next = 1;
  std::vector<LogUpdate> updates(shards);
  for (auto _ : state) {
    for (int s = 0; s < shards; ++s) {
      updates[s].shard = s;
      updates[s].entries.clear();
      raftpb::Entry e;
      e.set_index(next);
      e.set_term(1);
      e.set_data(payload);
      updates[s].entries.push_back(std::move(e));
    }
    ++next;
    Check(log.Save(updates), state);
  }
  state.SetItemsProcessed(state.iterations() * shards);
}
BENCHMARK(BM_SaveSyncedManyShards)->Arg(16)->Arg(128)->UseRealTime();

// The node's hot path without the fsync: one kBuffered Save of kShards16
// shards x 4 entries of ~300 bytes plus a hard state each, then every shard's
// new entries read back (a leader sending its own appends), then a
// compaction every 64 rounds. Items are entries; compare cpu_time per item.
void BM_SaveAndReadBack16Shards(benchmark::State& state) {
  constexpr int kShards16 = 16;
  constexpr int kPerShard = 4;
  BenchEngine engine;
  RaftLog& log = engine->raft_log();
  const std::string payload(300, 'p');
  uint64_t next = 1;
  std::vector<LogUpdate> updates(kShards16);
  for (auto _ : state) {
    for (int s = 0; s < kShards16; ++s) {
      updates[s].shard = s;
      updates[s].entries.clear();
      for (int i = 0; i < kPerShard; ++i) {
        raftpb::Entry e;
        e.set_index(next + i);
        e.set_term(1);
        e.set_data(payload);
        updates[s].entries.push_back(std::move(e));
      }
      raftpb::HardState hs;
      hs.set_term(1);
      hs.set_commit(next + kPerShard - 1);
      updates[s].hard_state = hs;
    }
    Check(log.Save(updates, RaftLog::Durability::kBuffered), state);
    for (int s = 0; s < kShards16; ++s) {
      absl::StatusOr<std::vector<raftpb::Entry>> got =
          log.Entries(s, next, next + kPerShard, 1 << 20);
      if (!got.ok() || got->size() != kPerShard) state.SkipWithError("short read");
      benchmark::DoNotOptimize(got);
    }
    next += kPerShard;
    if (next % (64 * kPerShard) == 1) {
      for (int s = 0; s < kShards16; ++s) Check(log.Compact(s, next - 33), state);
    }
  }
  state.SetItemsProcessed(state.iterations() * kShards16 * kPerShard);
}
BENCHMARK(BM_SaveAndReadBack16Shards);

// Fills shard 1 with kKeys keys of kValueBytes (plus a neighbour shard).
void Fill(KvStore& kv, benchmark::State& state) {
  const std::string value(kValueBytes, 'v');
  uint64_t index = 1;
  for (int start = 0; start < kKeys; start += 1000) {
    std::vector<ShardWrite> writes(2);
    for (int s = 0; s < 2; ++s) {
      writes[s].shard = s + 1;
      writes[s].applied_index = index;
      for (int i = start; i < start + 1000; ++i) {
        writes[s].mutations.push_back({Mutation::Kind::kPut, Key(i), value});
      }
    }
    ++index;
    Check(kv.Apply(writes), state);
  }
}

// Random point gets of existing keys; range(0) = 1: after flushing to SSTs.
void BM_Get(benchmark::State& state) {
  BenchEngine engine;
  KvStore& kv = engine->kv_store();
  Fill(kv, state);
  if (state.range(0) == 1) Check(engine->FlushForTesting(), state);
  std::mt19937_64 rng(1);
  for (auto _ : state) {
    absl::StatusOr<std::string> v = kv.Get(2, Key(static_cast<int>(rng() % kKeys)));
    if (!v.ok()) state.SkipWithError(v.status().ToString().c_str());
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Get)->ArgName("flushed")->Arg(0)->Arg(1);

// Gets of absent keys (served by the bloom filters once flushed).
void BM_GetMissing(benchmark::State& state) {
  BenchEngine engine;
  KvStore& kv = engine->kv_store();
  Fill(kv, state);
  Check(engine->FlushForTesting(), state);
  std::mt19937_64 rng(2);
  for (auto _ : state) {
    absl::StatusOr<std::string> v = kv.Get(2, Key(kKeys + static_cast<int>(rng() % kKeys)));
    benchmark::DoNotOptimize(v);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_GetMissing);

// Scans of 100 keys from a random start; range(0) = 1: after flushing.
void BM_Scan100(benchmark::State& state) {
  BenchEngine engine;
  KvStore& kv = engine->kv_store();
  Fill(kv, state);
  if (state.range(0) == 1) Check(engine->FlushForTesting(), state);
  std::mt19937_64 rng(3);
  for (auto _ : state) {
    absl::StatusOr<ScanResult> r =
        kv.Scan(2, {.start = Key(static_cast<int>(rng() % (kKeys - 100))), .limit = 100});
    if (!r.ok() || r->items.size() != 100) state.SkipWithError("short scan");
    benchmark::DoNotOptimize(r);
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_Scan100)->ArgName("flushed")->Arg(0)->Arg(1);

// One apply step: 16 puts of kValueBytes plus the applied index (not synced).
void BM_Apply16(benchmark::State& state) {
  BenchEngine engine;
  KvStore& kv = engine->kv_store();
  const std::string value(kValueBytes, 'v');
  uint64_t index = 1;
  std::mt19937_64 rng(4);
  for (auto _ : state) {
    std::vector<ShardWrite> writes(1);
    writes[0].shard = 1;
    writes[0].applied_index = index++;
    for (int i = 0; i < 16; ++i) {
      writes[0].mutations.push_back(
          {Mutation::Kind::kPut, Key(static_cast<int>(rng() % kKeys)), value});
    }
    Check(kv.Apply(writes), state);
  }
  state.SetItemsProcessed(state.iterations() * 16);
}
BENCHMARK(BM_Apply16);

}  // namespace
}  // namespace tessera::storage

BENCHMARK_MAIN();
