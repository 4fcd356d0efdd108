// Runs the raft simulator over fixed seed ranges (see sim.h for the checks).
// A failure prints the seed; TESSERA_SIM_SEED=<n> (or raft_sim --seed <n>)
// replays exactly that run.
#include <cstdint>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/sim/sim.h"

namespace tessera::sim {
namespace {

using ::tessera::testing::IsOk;

// Runs one seed: `steps` random events with safety checked after each, then
// heal everything and require a new command to commit everywhere.
void RunSeed(const SimOptions& options, int steps) {
  Sim sim(options);
  for (int step = 0; step < steps; ++step) {
    sim.Step();
    ASSERT_THAT(sim.CheckSafety(), IsOk()) << "seed=" << options.seed << "\n" << sim.Trace(60);
  }
  sim.HealAll();
  ASSERT_THAT(sim.ProposeAndWait("final", /*max_ticks=*/500), IsOk())
      << "seed=" << options.seed << "\n"
      << sim.Trace(60);
}

TEST(RaftSim, ThreeNodesSafeUnderPartitionsCrashesAndLoss) {
  for (uint64_t seed : SimSeeds(1, 4000)) {
    RunSeed({.nodes = 3, .seed = seed}, 3000);
    if (HasFatalFailure()) return;
  }
}

TEST(RaftSim, FiveNodesSafeUnderPartitionsCrashesAndLoss) {
  for (uint64_t seed : SimSeeds(100001, 2000)) {
    RunSeed({.nodes = 5, .seed = seed, .crash_rate = 0.01, .partition_rate = 0.01}, 3000);
    if (HasFatalFailure()) return;
  }
}

TEST(RaftSim, OneEntryPerMessageWithFrequentLeaderCrashes) {
  for (uint64_t seed : SimSeeds(300001, 2000)) {
    RunSeed({.nodes = 3, .seed = seed, .leader_crash_rate = 0.005, .max_size_per_msg = 1}, 3000);
    if (HasFatalFailure()) return;
  }
}

TEST(RaftSim, MembershipChangesAndTransfersDuringFaults) {
  for (uint64_t seed : SimSeeds(200001, 2000)) {
    RunSeed({.nodes = 3, .spare_nodes = 3, .seed = seed, .membership_changes = true}, 3000);
    if (HasFatalFailure()) return;
  }
  for (uint64_t seed : SimSeeds(250001, 1000)) {
    RunSeed({.nodes = 5, .spare_nodes = 3, .seed = seed, .membership_changes = true}, 3000);
    if (HasFatalFailure()) return;
  }
}

// The simulation must be able to fail: with a safety rule broken on purpose
// it has to find a violation within a bounded number of seeds. The runs are
// deterministic, so the number of seeds needed is fixed for a given raft/.
int SeedsUntilViolation(SimOptions options, int max_seeds, int steps) {
  for (int i = 1; i <= max_seeds; ++i) {
    options.seed = i;
    Sim sim(options);
    for (int step = 0; step < steps; ++step) {
      sim.Step();
      if (!sim.CheckSafety().ok()) return i;
    }
    sim.HealAll();
    if (!sim.ProposeAndWait("final", 500).ok() && !sim.CheckSafety().ok()) return i;
  }
  return -1;
}

TEST(RaftSimMutation, CatchesVotesGrantedWithoutLogCheck) {
  SimOptions options{.nodes = 3};
  options.knobs.grant_vote_without_log_check = true;
  int seeds = SeedsUntilViolation(options, 100, 3000);
  EXPECT_GT(seeds, 0) << "the simulator did not notice a broken election restriction";
  RecordProperty("seeds_until_violation", seeds);
}

TEST(RaftSimMutation, CatchesCommitOfEarlierTermByCounting) {
  // Figure 8 needs an entry of an old term to reach a quorum one message at a
  // time while leaders keep crashing.
  SimOptions options{.nodes = 3, .leader_crash_rate = 0.005, .max_size_per_msg = 1};
  options.knobs.commit_earlier_term_by_counting = true;
  int seeds = SeedsUntilViolation(options, 3000, 3000);
  EXPECT_GT(seeds, 0) << "the simulator did not notice a broken commitment rule";
  RecordProperty("seeds_until_violation", seeds);
}

}  // namespace
}  // namespace tessera::sim
