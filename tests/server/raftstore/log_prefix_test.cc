// The prefix of raw log lines (server/log_prefix.h). Regression (issue 12,
// defect 12): fatal lines from raft/ and Abseil were bare "RAW:" lines with
// no time, level, node or shard.
#include "server/raftstore/log_prefix.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "raft/util.h"

namespace tessera::server {
namespace {

constexpr char kTime[] = "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}";

TEST(RawLogPrefixDeathTest, FatalRaftInvariantLineCarriesTimeLevelNodeAndShard) {
  EXPECT_DEATH(
      {
        InstallRawLogPrefix(7);
        LogShardScope shard(5);
        TESSERA_RAFT_FATAL("commit %llu is out of range", 1000000000000ull);
      },
      std::string("(^|\n)") + kTime +
          " F node7 shard=5 \\[[^]]*log_prefix_test.cc:[0-9]+\\] commit 1000000000000 is out of "
          "range");
}

TEST(RawLogPrefix, ShardOnlyWithinAScopeAndScopesNest) {
  InstallRawLogPrefix(3);
  ::testing::internal::CaptureStderr();
  ABSL_RAW_LOG(ERROR, "no shard here");
  {
    LogShardScope outer(1);
    {
      LogShardScope inner(2);
      ABSL_RAW_LOG(WARNING, "in two");
    }
    ABSL_RAW_LOG(INFO, "in one");
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err,
              ::testing::ContainsRegex(std::string(kTime) + " E node3 \\[[^]]*\\] no shard here"));
  EXPECT_THAT(err, ::testing::ContainsRegex(" W node3 shard=2 \\[[^]]*\\] in two"));
  EXPECT_THAT(err, ::testing::ContainsRegex(" I node3 shard=1 \\[[^]]*\\] in one"));
  EXPECT_THAT(err, ::testing::Not(::testing::HasSubstr("RAW:")));
}

}  // namespace
}  // namespace tessera::server
