// raft_sim: runs the raft simulator from the command line.
//
//   raft_sim --seed 1234                     replay one seed, print its trace on failure
//   raft_sim --seeds 100000 --first_seed 1   long sweep
//   raft_sim --nodes 5 --membership --steps 5000
//   raft_sim --mutation vote_without_log_check   (expects violations)
#include <cstdint>
#include <iostream>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "tests/sim/sim.h"

ABSL_FLAG(uint64_t, seed, 0, "run exactly this seed (0: use --first_seed/--seeds)");
ABSL_FLAG(uint64_t, first_seed, 1, "first seed of a sweep");
ABSL_FLAG(uint64_t, seeds, 1000, "number of seeds in a sweep");
ABSL_FLAG(int, nodes, 3, "founding voters");
ABSL_FLAG(int, steps, 3000, "random events per seed");
ABSL_FLAG(bool, membership, false, "membership changes (with 3 spare nodes)");
ABSL_FLAG(std::string, mutation, "",
          "break a rule on purpose: vote_without_log_check | commit_earlier_term");
ABSL_FLAG(double, crash_rate, 0.005, "per-step chance of crashing a node");
ABSL_FLAG(double, partition_rate, 0.005, "per-step chance of a new partition");
ABSL_FLAG(double, leader_crash_rate, 0.002, "per-step chance of crashing the leader");
ABSL_FLAG(uint64_t, max_size_per_msg, 0, "bytes of entries per MsgApp (0: varies by seed)");
ABSL_FLAG(double, drop_rate, 0.05, "chance a delivered message is lost");
ABSL_FLAG(int, trace, 80, "trace lines printed on failure");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  uint64_t first = absl::GetFlag(FLAGS_first_seed);
  uint64_t count = absl::GetFlag(FLAGS_seeds);
  if (absl::GetFlag(FLAGS_seed) != 0) {
    first = absl::GetFlag(FLAGS_seed);
    count = 1;
  }
  tessera::sim::SimOptions options;
  options.nodes = absl::GetFlag(FLAGS_nodes);
  options.crash_rate = absl::GetFlag(FLAGS_crash_rate);
  options.partition_rate = absl::GetFlag(FLAGS_partition_rate);
  options.drop_rate = absl::GetFlag(FLAGS_drop_rate);
  options.leader_crash_rate = absl::GetFlag(FLAGS_leader_crash_rate);
  options.max_size_per_msg = absl::GetFlag(FLAGS_max_size_per_msg);
  if (absl::GetFlag(FLAGS_membership)) {
    options.spare_nodes = 3;
    options.membership_changes = true;
  }
  const std::string mutation = absl::GetFlag(FLAGS_mutation);
  if (mutation == "vote_without_log_check") {
    options.knobs.grant_vote_without_log_check = true;
  } else if (mutation == "commit_earlier_term") {
    options.knobs.commit_earlier_term_by_counting = true;
  } else if (!mutation.empty()) {
    std::cerr << "raft_sim: unknown --mutation '" << mutation << "'\n";
    return 2;
  }
  uint64_t failures = 0;
  uint64_t last_commits = 0, last_leaders = 0, total_commits = 0, total_reads = 0,
           total_snapshots = 0;
  for (uint64_t seed = first; seed < first + count; ++seed) {
    options.seed = seed;
    tessera::sim::Sim sim(options);
    absl::Status status;
    for (int step = 0; step < absl::GetFlag(FLAGS_steps) && status.ok(); ++step) {
      sim.Step();
      status = sim.CheckSafety();
    }
    if (status.ok()) {
      sim.HealAll();
      status = sim.ProposeAndWait("final", 500);
    }
    last_commits = sim.commits();
    total_commits += sim.commits();
    total_reads += sim.reads_served();
    total_snapshots += sim.snapshots_installed();
    last_leaders = sim.leaders_elected();
    if (!status.ok()) {
      ++failures;
      std::cout << "FAIL seed=" << seed << ": " << status.message() << " (commits " << sim.commits()
                << ", terms with a leader " << sim.leaders_elected() << ")\n";
      if (count == 1 || failures <= 3) std::cout << sim.Trace(absl::GetFlag(FLAGS_trace)) << "\n";
    }
  }
  if (count == 1 && failures == 0) {
    std::cout << "seed " << first << ": highest commit index " << last_commits
              << ", terms with a leader " << last_leaders << "\n";
  }
  std::cout << "per seed: mean highest commit index " << static_cast<double>(total_commits) / count
            << ", reads served " << static_cast<double>(total_reads) / count
            << ", snapshots installed " << static_cast<double>(total_snapshots) / count << "\n";
  std::cout << (count - failures) << " passed, " << failures << " failed\n";
  return failures == 0 ? 0 : 1;
}
