// sm_apply_bench: the cost of StateMachine::Apply on the RocksDB engine for
// batches of puts from many session clients (issue 14 item 3). Not a gtest
// and not registered with ctest; run by hand:
//
//   build/release/tests/bench/kv/sm_apply_bench [--batches 200] [--clients 64]
//       [--keys 10000] [--value-bytes 100]
//
// Each batch holds one put per client (client c, its next seq, and
// first_incomplete_seq = that seq: every earlier write was answered), on
// keys that already exist, so a put reads the key's version. Prints, per put,
// the KvStore point reads (Get + GetMeta) and the mutations Apply wrote
// (counted by CountingKvStore), and the thread CPU time of Apply per batch.
// For instruction counts, run it under callgrind: collection is switched on
// only around the measured batches (CALLGRIND_TOGGLE_COLLECT; a no-op
// outside valgrind), so the total is StateMachine::Apply of those batches:
//
//   valgrind --tool=callgrind --collect-atstart=no
//       build/release/tests/bench/kv/sm_apply_bench --batches 20
//   (one command line; the total "Collected" Ir / (20 * 64) = Ir per put)
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#else
#define CALLGRIND_TOGGLE_COLLECT
#endif

#include "server/kv/state_machine.h"
#include "storage/engine.h"
#include "tests/server/kv/counting_kv_store.h"

namespace tessera::server {
namespace {

struct Flags {
  int batches = 200;
  int clients = 64;
  int keys = 10000;
  int value_bytes = 100;
};

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i + 1 < argc; i += 2) {
    const int v = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--batches") == 0) {
      flags.batches = v;
    } else if (std::strcmp(argv[i], "--clients") == 0) {
      flags.clients = v;
    } else if (std::strcmp(argv[i], "--keys") == 0) {
      flags.keys = v;
    } else if (std::strcmp(argv[i], "--value-bytes") == 0) {
      flags.value_bytes = v;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      std::exit(2);
    }
  }
  return flags;
}

double ThreadCpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

std::string KeyName(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "key%07d", i);
  return buf;
}

int Run(const Flags& flags) {
  std::string pattern = std::filesystem::temp_directory_path().string() + "/sm-bench-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = pattern;
  int rc = 0;
  {
    absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
        storage::Engine::Open(dir + "/db", {});
    if (!engine.ok()) {
      std::fprintf(stderr, "open: %s\n", engine.status().ToString().c_str());
      return 1;
    }
    testing::CountingKvStore kv(&(*engine)->kv_store());
    StateMachine sm(&kv, {});
    const ShardId shard = 1;
    uint64_t index = 0;
    std::vector<serverpb::CommandResult> results;
    auto apply = [&](const std::vector<CommittedEntry>& batch) {
      absl::Status s = sm.Apply(batch, &results);
      if (!s.ok()) {
        std::fprintf(stderr, "apply: %s\n", s.ToString().c_str());
        std::exit(1);
      }
    };

    // Fill the keys without sessions.
    const std::string value(static_cast<size_t>(flags.value_bytes), 'v');
    for (int begin = 0; begin < flags.keys; begin += 256) {
      std::vector<CommittedEntry> batch;
      for (int i = begin; i < std::min(flags.keys, begin + 256); ++i) {
        serverpb::Command c;
        c.mutable_put()->set_key(KeyName(i));
        c.mutable_put()->set_value(value);
        batch.push_back({shard, ++index, c.SerializeAsString()});
      }
      apply(batch);
    }

    std::mt19937_64 rng(1);
    std::vector<uint64_t> next_seq(static_cast<size_t>(flags.clients), 1);
    auto make_batch = [&]() {
      std::vector<CommittedEntry> batch;
      for (int c = 0; c < flags.clients; ++c) {
        serverpb::Command command;
        command.mutable_put()->set_key(KeyName(static_cast<int>(rng() % flags.keys)));
        command.mutable_put()->set_value(value);
        const uint64_t seq = next_seq[static_cast<size_t>(c)]++;
        command.mutable_session()->set_client_id(1000 + static_cast<uint64_t>(c));
        command.mutable_session()->set_seq(seq);
        command.mutable_session()->set_first_incomplete_seq(seq);
        batch.push_back({shard, ++index, command.SerializeAsString()});
      }
      return batch;
    };
    // Warm up: every client's session exists before the measured batches.
    for (int i = 0; i < 4; ++i) apply(make_batch());

    std::vector<std::vector<CommittedEntry>> batches;
    for (int b = 0; b < flags.batches; ++b) batches.push_back(make_batch());
    kv.Reset();
    const double start = ThreadCpuSeconds();
    CALLGRIND_TOGGLE_COLLECT;
    for (const std::vector<CommittedEntry>& batch : batches) apply(batch);
    CALLGRIND_TOGGLE_COLLECT;
    const double cpu = ThreadCpuSeconds() - start;

    const testing::CountingKvStore::Counts& n = kv.counts();
    const double puts = static_cast<double>(flags.batches) * flags.clients;
    std::printf("batches=%d clients=%d keys=%d value_bytes=%d\n", flags.batches, flags.clients,
                flags.keys, flags.value_bytes);
    std::printf(
        "per put: reads %.3f (Get %.3f, GetMeta %.3f), writes %.3f (put %.3f, delete %.3f, "
        "meta put %.3f, meta delete %.3f), meta bytes written %.1f\n",
        static_cast<double>(n.reads()) / puts, static_cast<double>(n.gets) / puts,
        static_cast<double>(n.get_metas) / puts, static_cast<double>(n.writes()) / puts,
        static_cast<double>(n.puts) / puts, static_cast<double>(n.deletes) / puts,
        static_cast<double>(n.meta_puts) / puts, static_cast<double>(n.meta_deletes) / puts,
        static_cast<double>(n.meta_put_bytes) / puts);
    std::printf("per batch: applied-index reads %.3f, KvStore::Apply calls %.3f\n",
                static_cast<double>(n.applied_reads) / flags.batches,
                static_cast<double>(n.applies) / flags.batches);
    std::printf("Apply CPU: %.1f us per batch, %.2f us per put\n", cpu * 1e6 / flags.batches,
                cpu * 1e6 / puts);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return rc;
}

}  // namespace
}  // namespace tessera::server

int main(int argc, char** argv) {
  return tessera::server::Run(tessera::server::ParseFlags(argc, argv));
}
