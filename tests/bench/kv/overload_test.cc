// Load shedding by bytes, end to end (issue 12, defect 10): 256 clients
// writing 1 MiB values against 3 real tessera-server processes. Before the
// byte budget, throughput fell from 68 to 6 ops/s with hundreds of
// DEADLINE_EXCEEDED and no RESOURCE_EXHAUSTED. Now the nodes refuse what does
// not fit with RESOURCE_EXHAUSTED + retry-after (counted in
// tessera_admission_rejected_total), the SDK waits the hint, and throughput
// stays within 2x of the 64-client figure. The two runs go back to back and
// only their ratio is checked (the machine is shared).
#include <cmath>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "tests/bench/kv/harness.h"

namespace tessera::bench {
namespace {

using ::tessera::testing::IsOk;

// A counter of tessera-bench's errors_by_code (0 if absent).
double ErrorsWithCode(const BenchRun& run, const std::string& code) {
  const std::string needle = absl::StrCat("\"", code, "\":");
  const size_t at = run.json.find(needle);
  return at == std::string::npos ? 0 : std::strtod(run.json.c_str() + at + needle.size(), nullptr);
}

// The value of an unlabelled sample in node `node`'s /metrics (curl), or -1.
double ScrapeMetric(const TesseraCluster& cluster, int node, const std::string& name) {
  const int port = cluster.metrics_port(node);
  if (port == 0) return -1;
  TempDir dir("tessera-overload-scrape");
  ChildProcess curl;
  curl.Start({"/usr/bin/curl", "-sS", "--max-time", "10",
              absl::StrCat("http://127.0.0.1:", port, "/metrics")},
             dir.path() + "/out");
  if (curl.Wait(absl::Seconds(20)) != 0) {
    curl.Kill();
    return -1;
  }
  for (absl::string_view line : absl::StrSplit(ReadFile(dir.path() + "/out"), '\n')) {
    if (absl::ConsumePrefix(&line, name + " ")) {
      double value = 0;
      if (absl::SimpleAtod(line, &value)) return value;
    }
  }
  return -1;
}

// VmRSS of a process, in MiB (-1 if unreadable).
double RssMiB(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024;
  }
  return -1;
}

TEST(BenchOverload, OneMiBValuesAt256ClientsAreShedNotTimedOut) {
  // The default timing (1 s election timeout): the harness's fast one would
  // measure elections on a loaded machine, not admission.
  TesseraCluster cluster({"--tick-ms=50", "--election-ticks=20"});
  client::ClientOptions options;
  options.endpoints = cluster.endpoints();
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  ASSERT_THAT(created, IsOk());
  ASSERT_TRUE(cluster.WaitReady(**created)) << "no leader for every shard";

  const std::vector<std::string> common = {"--endpoints=" + absl::StrJoin(cluster.endpoints(), ","),
                                           "--value-size=1048576",
                                           "--key-space=256",
                                           "--duration=6s",
                                           "--timeout=5s",
                                           "--seed=12",
                                           "--json-only"};
  auto run = [&](int clients) {
    std::vector<std::string> args = common;
    args.push_back(absl::StrCat("--clients=", clients));
    args.push_back("put");
    return RunBench(args);
  };
  const BenchRun at64 = run(64);
  ASSERT_EQ(at64.json.front(), '{') << at64.out << at64.err;
  std::vector<double> rss64;
  for (int i = 0; i < TesseraCluster::kNodes; ++i) rss64.push_back(RssMiB(cluster.pid(i)));
  const BenchRun at256 = run(256);
  ASSERT_EQ(at256.json.front(), '{') << at256.out << at256.err;
  std::vector<double> rss256;
  double rejected = 0;
  for (int i = 0; i < TesseraCluster::kNodes; ++i) {
    rss256.push_back(RssMiB(cluster.pid(i)));
    rejected += std::max(0.0, ScrapeMetric(cluster, i, "tessera_admission_rejected_total"));
  }
  std::cout << "64 clients:  " << at64.json << "\n256 clients: " << at256.json
            << "\nRSS MiB after 64: " << absl::StrJoin(rss64, ", ")
            << "; after 256: " << absl::StrJoin(rss256, ", ")
            << "\nrequests refused by the byte budget: " << rejected << "\n";

  // Throughput as the writes that succeeded among those issued in the same
  // 6 s: tessera-bench's ops_per_sec also divides by the tail spent waiting
  // for the last calls (up to their 5 s deadline), which is longer with more
  // clients waiting out retry-after hints and says nothing about capacity.
  const double ops64 = at64.Number("ops");
  const double ops256 = at256.Number("ops");
  ASSERT_GT(ops64, 0) << at64.json;
  EXPECT_GE(ops256, ops64 / 2) << "throughput collapsed under overload";
  // Shed with RESOURCE_EXHAUSTED, not queued until deadlines expire.
  EXPECT_GT(rejected, 0) << "no request was refused by the byte budget";
  // No DEADLINE_EXCEEDED storm: timed-out requests are no more frequent at
  // 256 clients than at 64 (on an idle machine both are 0; on a loaded one
  // the 64-client run has some too), with slack for a shared machine; the
  // run without admission control had 91%.
  auto timeout_share = [](const BenchRun& r) {
    const double requests = r.Number("ops") + r.Number("errors");
    return requests > 0 ? ErrorsWithCode(r, "DEADLINE_EXCEEDED") / requests : 0;
  };
  EXPECT_LE(timeout_share(at256), 2 * timeout_share(at64) + 0.15)
      << "64 clients: " << at64.json << "\n256 clients: " << at256.json;
  // Without admission control 90% of them timed out here.
  EXPECT_LE(timeout_share(at256), 0.5) << at256.json;
  // Memory follows the budget, not the offered load (without it a node grew
  // by 770 MiB here; 1.6 GB in the run).
  for (int i = 0; i < TesseraCluster::kNodes; ++i) {
    EXPECT_LE(rss256[i], rss64[i] + 384) << "node " << i + 1 << " RSS in MiB";
  }
}

}  // namespace
}  // namespace tessera::bench
