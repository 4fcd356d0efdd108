// node_sim: runs the node simulator (node_sim.h) from the command line.
//
//   node_sim --seed 1234                      replay one seed, print its trace on failure
//   node_sim --first_seed 1 --seeds 2000      a sweep (ctest sim_node_sweep)
//   node_sim --nodes 5 --shards 2 --seeds 500
//   node_sim --mutation ack_before_save --expect_violation --seeds 2000
//       passes only if some seed finds a violation (ctest sim_node_mutation_*);
//       prints the first failing seed and how long finding it took
//
// Mutations (server::NodeTestingKnobs): ack_unsynced, apply_before_commit,
// ack_before_save, lease_ticks_only.
#include <chrono>
#include <cstdint>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "tests/sim/node_sim.h"

ABSL_FLAG(uint64_t, seed, 0, "run exactly this seed (0: use --first_seed/--seeds)");
ABSL_FLAG(uint64_t, first_seed, 1, "first seed of a sweep");
ABSL_FLAG(uint64_t, seeds, 100, "number of seeds in a sweep");
ABSL_FLAG(int, nodes, 3, "nodes (3 or 5)");
ABSL_FLAG(int, shards, 1, "shards, each replicated on every node");
ABSL_FLAG(int64_t, duration_ms, 1200, "virtual time of the faulty phase of each seed");
ABSL_FLAG(std::string, mutation, "", "break a rule on purpose (see the file comment)");
ABSL_FLAG(bool, expect_violation, false,
          "succeed only if some seed finds a violation; stop at the first");
ABSL_FLAG(bool, hibernate, true,
          "hibernation on, with quiet spells of the clients (NodeSimOptions::hibernate)");
ABSL_FLAG(int, trace, 60, "trace lines printed on failure");
ABSL_FLAG(bool, fingerprint, false,
          "print each seed's fingerprint (history, stores, counters): equal across runs");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  uint64_t first = absl::GetFlag(FLAGS_first_seed);
  uint64_t count = absl::GetFlag(FLAGS_seeds);
  if (absl::GetFlag(FLAGS_seed) != 0) {
    first = absl::GetFlag(FLAGS_seed);
    count = 1;
  }
  tessera::sim::NodeSimOptions options;
  options.nodes = absl::GetFlag(FLAGS_nodes);
  options.shards = absl::GetFlag(FLAGS_shards);
  options.duration_ms = absl::GetFlag(FLAGS_duration_ms);
  options.hibernate = absl::GetFlag(FLAGS_hibernate);
  if (!options.hibernate) options.quiet_rate = 0;
  const std::string mutation = absl::GetFlag(FLAGS_mutation);
  if (!mutation.empty() && !tessera::sim::SetMutation(mutation, &options.knobs)) {
    std::cerr << "node_sim: unknown --mutation '" << mutation << "'\n";
    return 2;
  }
  const bool expect_violation = absl::GetFlag(FLAGS_expect_violation);
  // Wall time only measures the sweep for the report; nothing in a run reads it.
  const auto started = std::chrono::steady_clock::now();
  auto elapsed = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  uint64_t failures = 0, ran = 0;
  tessera::sim::NodeSimStats total;
  for (uint64_t seed = first; seed < first + count; ++seed) {
    options.seed = seed;
    tessera::sim::NodeSim sim(options);
    absl::Status status = sim.Run();
    ++ran;
    if (absl::GetFlag(FLAGS_fingerprint)) {
      std::cout << absl::StrFormat("seed %d fingerprint %016x\n", seed, sim.Fingerprint());
    }
    const tessera::sim::NodeSimStats& st = sim.stats();
    total.steps += st.steps;
    total.ops_ok += st.ops_ok;
    total.ops_fail += st.ops_fail;
    total.ops_unknown += st.ops_unknown;
    total.crashes += st.crashes;
    total.power_losses += st.power_losses;
    total.write_crashes += st.write_crashes;
    total.outages += st.outages;
    total.stalls += st.stalls;
    total.partitions += st.partitions;
    total.transfers += st.transfers;
    total.snapshots_delivered += st.snapshots_delivered;
    total.leaders_elected += st.leaders_elected;
    total.sleeps += st.sleeps;
    if (!status.ok()) {
      ++failures;
      std::cout << "FAIL seed=" << seed << ": " << status.message() << "\n";
      if (count == 1 || failures <= 3 || expect_violation) {
        std::cout << sim.Trace(static_cast<size_t>(absl::GetFlag(FLAGS_trace)));
      }
      std::cout << "replay: node_sim --seed " << seed << " --nodes " << options.nodes
                << " --shards " << options.shards << " --duration_ms " << options.duration_ms
                << (mutation.empty() ? "" : " --mutation " + mutation) << "\n";
      if (expect_violation) {
        std::cout << absl::StrFormat(
            "mutation %s caught: first failing seed %d, after %d seeds, %.2f s\n", mutation, seed,
            ran, elapsed());
        return 0;
      }
    } else if (count == 1) {
      std::cout << "seed " << seed << ": ok, " << st.ops_ok << " ops ok, " << st.ops_fail
                << " failed, " << st.ops_unknown << " unknown; " << st.leaders_elected
                << " leaders, highest commit " << st.max_commit << "\n";
    }
  }
  const double secs = elapsed();
  std::cout << absl::StrFormat(
      "%d seeds in %.2f s (%.1f seeds/s): %d passed, %d failed; per seed: %.0f steps, ops "
      "ok/fail/unknown %.1f/%.1f/%.1f, crashes %.2f (power losses %.2f, inside a write %.2f), "
      "outages %.2f, stalls %.2f, partitions %.2f, transfers %.2f, snapshots delivered %.2f, "
      "leaders %.1f, replicas fallen asleep %.1f\n",
      ran, secs, static_cast<double>(ran) / secs, ran - failures, failures,
      static_cast<double>(total.steps) / ran, static_cast<double>(total.ops_ok) / ran,
      static_cast<double>(total.ops_fail) / ran, static_cast<double>(total.ops_unknown) / ran,
      static_cast<double>(total.crashes + total.power_losses) / ran,
      static_cast<double>(total.power_losses) / ran, static_cast<double>(total.write_crashes) / ran,
      static_cast<double>(total.outages) / ran, static_cast<double>(total.stalls) / ran,
      static_cast<double>(total.partitions) / ran, static_cast<double>(total.transfers) / ran,
      static_cast<double>(total.snapshots_delivered) / ran,
      static_cast<double>(total.leaders_elected) / ran, static_cast<double>(total.sleeps) / ran);
  if (expect_violation) {
    std::cout << "mutation " << mutation << " NOT caught within " << ran << " seeds\n";
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
