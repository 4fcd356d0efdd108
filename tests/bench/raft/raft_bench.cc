// Raft throughput: proposals to commit across 3 in-memory nodes (one
// process, no I/O), with batching. Reports entries/s and heap allocations
// per committed entry (counted by replacing the global operator new).
//
//   build/h-raft/tests/bench/raft/raft_bench
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "raft/raw_node.h"
#include "raft/storage.h"

namespace {
uint64_t g_allocs = 0;
}  // namespace

// gcc flags malloc/free inside replaced operator new/delete as "mismatched";
// pairing them is exactly what a replacement does.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  ++g_allocs;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace tessera::raft {
namespace {

class Cluster {
 public:
  explicit Cluster(int n, uint64_t max_size_per_msg) {
    raftpb::Snapshot boot;
    boot.mutable_metadata()->set_index(1);
    boot.mutable_metadata()->set_term(1);
    for (int i = 1; i <= n; ++i) boot.mutable_metadata()->mutable_conf_state()->add_voters(i);
    for (uint64_t id = 1; id <= static_cast<uint64_t>(n); ++id) {
      auto& node = nodes_[id];
      node.storage = std::make_unique<MemoryStorage>();
      if (!node.storage->ApplySnapshot(boot).ok()) std::abort();
      Config c;
      c.id = id;
      c.storage = node.storage.get();
      c.seed = id;
      c.max_size_per_msg = max_size_per_msg;
      node.raw = *RawNode::Create(c);
    }
    if (!nodes_[1].raw->Campaign().ok()) std::abort();
    Stabilize();
  }

  RawNode& leader() { return *nodes_[1].raw; }
  uint64_t applied(uint64_t id) { return nodes_[id].raw->applied_index(); }

  void Stabilize() {
    bool any = true;
    while (any) {
      any = false;
      for (auto& [id, n] : nodes_) {
        while (n.raw->HasReady()) {
          any = true;
          Ready rd = n.raw->GetReady();
          if (!n.storage->Append(rd.entries).ok()) std::abort();
          if (rd.hard_state) n.storage->SetHardState(*rd.hard_state);
          for (auto& m : rd.messages) inbox_.push_back(std::move(m));
          n.raw->Advance(rd);
          // Keep memory bounded: compact well behind the applied index.
          const uint64_t applied = n.raw->applied_index();
          if (applied > n.storage->FirstIndex() + 20000) {
            if (!n.storage->Compact(applied - 10000).ok()) std::abort();
          }
        }
      }
      std::vector<raftpb::Message> msgs;
      msgs.swap(inbox_);
      for (auto& m : msgs) {
        any = true;
        if (!nodes_[m.to()].raw->Step(std::move(m)).ok()) std::abort();
      }
    }
  }

 private:
  struct Node {
    std::unique_ptr<MemoryStorage> storage;
    std::unique_ptr<RawNode> raw;
  };
  std::map<uint64_t, Node> nodes_;
  std::vector<raftpb::Message> inbox_;
};

// Arguments: batch size (proposals between two Ready rounds), payload bytes.
void BM_ProposeToCommit3Nodes(benchmark::State& state) {
  const int batch = static_cast<int>(state.range(0));
  const std::string payload(static_cast<size_t>(state.range(1)), 'x');
  Cluster cluster(3, 1 << 20);
  uint64_t entries = 0;
  const uint64_t allocs_before = g_allocs;
  for (auto _ : state) {
    for (int i = 0; i < batch; ++i) {
      if (!cluster.leader().Propose(payload).ok()) std::abort();
    }
    cluster.Stabilize();
    entries += static_cast<uint64_t>(batch);
  }
  const uint64_t allocs = g_allocs - allocs_before;
  if (cluster.applied(3) < entries) state.SkipWithError("not everything was applied");
  state.SetItemsProcessed(static_cast<int64_t>(entries));
  state.counters["allocs_per_entry"] =
      benchmark::Counter(static_cast<double>(allocs) / static_cast<double>(entries));
}
BENCHMARK(BM_ProposeToCommit3Nodes)
    ->Args({1, 128})
    ->Args({16, 128})
    ->Args({256, 128})
    ->Args({256, 1024});

}  // namespace
}  // namespace tessera::raft

BENCHMARK_MAIN();
