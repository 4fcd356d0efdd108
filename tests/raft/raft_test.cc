// Feature tests of the Raft state machine: election, PreVote, CheckQuorum,
// replication and flow control, commitment, snapshots, reads, membership
// changes, leadership transfer, proposal forwarding.
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace ::tessera::raft::testing;  // NOLINT

// ---------------------------------------------------------------- election

TEST(Election, ThreeNodesElectOneLeader) {
  Network net({1, 2, 3});
  net.Elect(1);
  EXPECT_EQ(net.node(1)->role(), Role::kLeader);
  EXPECT_EQ(net.node(2)->role(), Role::kFollower);
  EXPECT_EQ(net.node(3)->role(), Role::kFollower);
  EXPECT_EQ(net.node(2)->leader_id(), 1u);
  EXPECT_EQ(net.node(1)->term(), 1u);
  // The leader's empty entry is committed everywhere.
  for (uint64_t id : {1, 2, 3}) EXPECT_EQ(net.node(id)->commit_index(), 1u);
}

TEST(Election, ElectionByTicksHappensWithinTwoTimeouts) {
  Network net({1, 2, 3});
  int ticks = 0;
  while (ticks < 40) {
    net.TickAll();
    ++ticks;
    bool leader = false;
    for (uint64_t id : {1, 2, 3}) leader |= net.node(id)->role() == Role::kLeader;
    if (leader) break;
  }
  EXPECT_LT(ticks, 2 * 10 + 1);
}

TEST(Replication, ProposalsCommitOnAllNodes) {
  Network net({1, 2, 3});
  net.Elect(1);
  ASSERT_THAT(net.node(1)->Propose("a"), IsOk());
  ASSERT_THAT(net.node(1)->Propose("b"), IsOk());
  net.Stabilize();
  for (uint64_t id : {1, 2, 3}) {
    EXPECT_THAT(net.AppliedData(id), ElementsAre("a", "b"));
    EXPECT_EQ(net.node(id)->commit_index(), 3u);
  }
}

}  // namespace
}  // namespace tessera::raft
