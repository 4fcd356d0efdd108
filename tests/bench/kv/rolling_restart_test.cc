// A rolling restart under load (issue 19): every node of a 3-node cluster is
// restarted in turn (SIGTERM: it hands its leaderships away, drains, exits;
// then it starts again and gets its share of leaderships back) while
// tessera-bench runs 64 clients of puts and linearizable gets. No client may
// see an error, and p99 during the restarts stays under 10x the steady p99
// (figures: tests/bench/RESULTS.md, "Rolling restart").
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/bench/kv/harness.h"

namespace tessera::bench {
namespace {

using ::tessera::testing::IsOk;

// How many shards node `node` (0-based) leads, as it reports; -1 if it does
// not answer.
int LeaderCount(client::Client& client, const std::string& address, int node_id) {
  client::CallOptions call;
  call.timeout = absl::Seconds(1);
  absl::StatusOr<v1::NodeStatusResponse> status = client.NodeStatus(address, call);
  if (!status.ok()) return -1;
  int led = 0;
  for (const v1::ShardStatus& s : status->shards())
    led += s.leader() == static_cast<uint64_t>(node_id);
  return led;
}

TEST(BenchRollingRestart, NoClientErrorsAndBoundedLatency) {
  TesseraCluster cluster({"--tick-ms=50", "--election-ticks=20"});
  client::ClientOptions options;
  options.endpoints = cluster.endpoints();
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  ASSERT_THAT(created, IsOk());
  client::Client& client = **created;
  ASSERT_TRUE(cluster.WaitReady(client)) << "no leader for every shard";

  auto bench_args = [&](const std::string& duration) {
    return std::vector<std::string>{"--endpoints=" + absl::StrJoin(cluster.endpoints(), ","),
                                    "--clients=64",
                                    "--value-size=256",
                                    "--key-space=10000",
                                    "--read-ratio=0.5",
                                    "--consistency=linearizable",
                                    "--duration=" + duration,
                                    "--timeout=10s",
                                    "--seed=19",
                                    "--json-only",
                                    "mixed"};
  };
  const BenchRun steady = RunBench(bench_args("8s"));
  ASSERT_EQ(steady.json.front(), '{') << steady.out << steady.err;

  BenchProcess rolling(bench_args("45s"));
  std::vector<std::string> restarts;
  for (int node = 0; node < TesseraCluster::kNodes; ++node) {
    const absl::Time start = absl::Now();
    const int exit_code = cluster.Restart(node);
    EXPECT_EQ(exit_code, 0) << "node " << node + 1 << " did not drain and exit cleanly";
    ASSERT_TRUE(cluster.WaitReady(client, node)) << "node " << node + 1 << " did not come back";
    const absl::Duration back = absl::Now() - start;
    // Its share of the 8 shards' leaderships back: the scheduler evens
    // leaders out to within one (3, 3, 2), so at least 2.
    const std::string address = cluster.endpoints()[node];
    int led = 0;
    for (int i = 0; i < 300 && (led = LeaderCount(client, address, node + 1)) < 2; ++i) {
      absl::SleepFor(absl::Milliseconds(100));
    }
    EXPECT_GE(led, 2) << "node " << node + 1 << " did not get its share of leaderships back";
    restarts.push_back(absl::StrCat("node ", node + 1, ": back in ", absl::FormatDuration(back),
                                    ", leading ", led, " after ",
                                    absl::FormatDuration(absl::Now() - start)));
  }
  const BenchRun during = rolling.Finish(absl::Seconds(90));
  ASSERT_EQ(during.json.front(), '{') << during.out << during.err;
  std::cout << "steady:  " << steady.json << "\nrolling: " << during.json << "\n"
            << absl::StrJoin(restarts, "\n") << "\n";

  EXPECT_EQ(steady.Number("errors"), 0) << steady.json;
  EXPECT_EQ(during.Number("errors"), 0)
      << "errors surfaced during the rolling restart: " << during.json;
  EXPECT_GT(during.Number("ops"), 0);
  EXPECT_LT(during.Number("p99_ms"), 10 * steady.Number("p99_ms"))
      << "steady: " << steady.json << "\nrolling: " << during.json;
}

}  // namespace
}  // namespace tessera::bench
