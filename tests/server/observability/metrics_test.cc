// Unit tests of server/metrics.h and server/health.h: the /proc process
// collector (on a fake /proc tree and on the real one), metric naming rules
// (every family a real Metrics exports passes them; bad names are refused),
// the rate-limited slow-event log, the readiness rule, the HTTP endpoints and
// the RocksDB stats behind the storage metrics.
#include "server/observability/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/async_generic_service.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/byte_buffer.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "server/observability/health.h"
#include "storage/engine.h"
#include "tests/storage/test_util.h"

namespace tessera::server {
namespace {

using ::tessera::storage::testing::MakeEntry;
using ::tessera::storage::testing::TempDir;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << content;
}

// A /proc/<pid>/stat line whose comm has spaces and parentheses; fields 14,
// 15, 20, 22, 23, 24 are utime, stime, threads, starttime, vsize, rss.
std::string StatLine(const std::string& comm) {
  std::string line = absl::StrCat("42 (", comm, ")");
  for (int field = 3; field <= 52; ++field) {
    std::string v = field == 3 ? "S" : "0";
    if (field == 14) v = "250";        // utime ticks
    if (field == 15) v = "150";        // stime ticks
    if (field == 20) v = "7";          // threads
    if (field == 22) v = "1000";       // start ticks after boot
    if (field == 23) v = "123456789";  // vsize
    if (field == 24) v = "1000";       // rss pages
    absl::StrAppend(&line, " ", v);
  }
  return line + "\n";
}

TEST(ProcessCollector, ParsesStatWithAwkwardCommandName) {
  absl::StatusOr<ProcPidStat> st = ParseProcPidStat(StatLine("tessera (srv) x"));
  ASSERT_THAT(st.status(), IsOk());
  EXPECT_EQ(st->utime_ticks, 250u);
  EXPECT_EQ(st->stime_ticks, 150u);
  EXPECT_EQ(st->num_threads, 7u);
  EXPECT_EQ(st->start_ticks, 1000u);
  EXPECT_EQ(st->vsize_bytes, 123456789u);
  EXPECT_EQ(st->rss_pages, 1000u);
  EXPECT_THAT(ParseProcPidStat("42 tessera S 1 2 3").status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseProcPidStat("42 (x) S 1 2").status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ProcessCollector, ParsesBootTimeAndFdLimit) {
  EXPECT_EQ(*ParseBootTime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"), 1700000000u);
  EXPECT_THAT(ParseBootTime("cpu 1 2\n").status(), StatusIs(absl::StatusCode::kInvalidArgument));
  const std::string limits =
      "Limit                     Soft Limit           Hard Limit           Units\n"
      "Max cpu time              unlimited            unlimited            seconds\n"
      "Max open files            1024                 524288               files\n";
  EXPECT_EQ(ParseMaxOpenFiles(limits)->value(), 1024u);
  EXPECT_FALSE(ParseMaxOpenFiles("Max open files  unlimited unlimited files\n")->has_value());
  EXPECT_THAT(ParseMaxOpenFiles("Max cpu time 1 2\n").status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ProcessCollector, ReadsAFakeProcTree) {
  TempDir dir;
  WriteFile(dir.path() + "/42/stat", StatLine("tessera-server"));
  WriteFile(dir.path() + "/stat", "cpu 1 2 3\nbtime 1700000000\n");
  WriteFile(dir.path() + "/42/limits", "Max open files            4096      8192    files\n");
  for (const char* fd : {"0", "1", "2", "7"}) WriteFile(dir.path() + "/42/fd/" + fd, "");
  absl::StatusOr<ProcessStats> st = ReadProcessStats(dir.path(), "42");
  ASSERT_THAT(st.status(), IsOk());
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  EXPECT_DOUBLE_EQ(st->cpu_seconds, 400 / ticks);
  EXPECT_EQ(st->resident_bytes, 1000u * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  EXPECT_EQ(st->virtual_bytes, 123456789u);
  EXPECT_EQ(st->open_fds, 4u);
  EXPECT_EQ(st->max_fds, 4096u);
  EXPECT_EQ(st->threads, 7u);
  EXPECT_DOUBLE_EQ(st->start_time_seconds, 1700000000 + 1000 / ticks);

  EXPECT_THAT(ReadProcessStats(dir.path(), "43").status(),
              StatusIs(absl::StatusCode::kUnavailable));
  ProcessCollector missing(dir.path(), "43");
  EXPECT_TRUE(missing.Collect().empty());
}

TEST(ProcessCollector, ReadsThisProcess) {
  absl::StatusOr<ProcessStats> st = ReadProcessStats();
  ASSERT_THAT(st.status(), IsOk());
  EXPECT_GT(st->resident_bytes, 1u << 20);
  EXPECT_GE(st->open_fds, 3u);
  EXPECT_GE(st->threads, 1u);
  const double now = absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch());
  EXPECT_NEAR(st->start_time_seconds, now, 600);
  std::vector<prometheus::MetricFamily> families = ProcessCollector().Collect();
  std::vector<std::string> names;
  for (const auto& f : families) names.push_back(f.name);
  EXPECT_THAT(names,
              ::testing::IsSupersetOf({"process_cpu_seconds_total", "process_resident_memory_bytes",
                                       "process_open_fds", "process_start_time_seconds"}));
  EXPECT_THAT(CheckMetricFamilies(families), IsOk());
}

// A Metrics wired to a real engine and a fake node, with every hook used once.
struct Wired {
  TempDir dir;
  std::unique_ptr<storage::Engine> engine;
  Metrics metrics{MetricsOptions{.node_id = 3}};

  Wired() {
    absl::StatusOr<std::unique_ptr<storage::Engine>> e =
        storage::Engine::Open(dir.path() + "/db", storage::EngineOptions{});
    EXPECT_THAT(e.status(), IsOk());
    engine = *std::move(e);
    storage::LogUpdate u;
    u.shard = 1;
    u.entries = {MakeEntry(1, 1), MakeEntry(2, 1)};
    EXPECT_THAT(engine->raft_log().Save({u}), IsOk());
    metrics.SetEngine(engine.get());
    metrics.SetNodeStatusSource([] {
      ShardStatus s{.shard = 1,
                    .role = "leader",
                    .term = 4,
                    .leader = 3,
                    .commit_index = 9,
                    .applied_index = 8,
                    .last_index = 9};
      s.last_leader_contact = absl::Now();
      return std::vector<ShardStatus>{s};
    });
    metrics.SetAdmissionSource([] {
      return AdmissionStats{
          .in_flight_bytes = 5, .limit_bytes = 64, .admitted_total = 7, .rejected_total = 2};
    });
    metrics.SetBatchSource([] {
      BatchStats b;
      b.messages_total = 3;
      b.ops_total = 10;
      b.ops_per_message_le[3] = 2;  // <= 8 ops
      return b;
    });
    NodeMetrics* hooks = metrics.node_metrics();
    hooks->OnProposal(1, NodeMetrics::ProposalOutcome::kAccepted);
    hooks->OnProposal(1, NodeMetrics::ProposalOutcome::kRejected);
    hooks->OnLeaderChange(1, 3, 4);
    hooks->OnLogSaved(absl::Milliseconds(2), 1, 2);
    hooks->OnSnapshotSent(1);
    hooks->OnSnapshotReceived(1);
    metrics.ObserveRpc("/tessera.v1.KV/Put", grpc::StatusCode::OK, absl::Milliseconds(3));
    metrics.ObserveRpc("/tessera.v1.KV/Get", grpc::StatusCode::UNAVAILABLE, absl::Milliseconds(1));
  }
};

TEST(MetricNames, EveryExportedFamilyFollowsTheConventions) {
  Wired w;
  std::vector<prometheus::MetricFamily> families = w.metrics.Collect();
  EXPECT_THAT(CheckMetricFamilies(families), IsOk());
  std::vector<std::string> names;
  for (const auto& f : families) {
    if (!f.metric.empty()) names.push_back(f.name);
  }
  EXPECT_THAT(names, ::testing::IsSupersetOf({
                         "tessera_grpc_server_handled_total",
                         "tessera_grpc_server_handling_seconds",
                         "tessera_kv_batch_messages_total",
                         "tessera_kv_batch_message_ops",
                         "tessera_kv_batch_invalid_ops_total",
                         "tessera_raft_proposals_total",
                         "tessera_raft_leader_changes_total",
                         "tessera_raft_snapshots_sent_total",
                         "tessera_raft_snapshots_received_total",
                         "tessera_raft_log_append_seconds",
                         "tessera_storage_wal_fsync_seconds",
                         "tessera_raft_term",
                         "tessera_raft_role",
                         "tessera_raft_commit_index",
                         "tessera_raft_applied_index",
                         "tessera_storage_live_data_bytes",
                         "tessera_storage_memtable_bytes",
                         "tessera_storage_pending_compaction_bytes",
                         "tessera_storage_block_cache_hit_ratio",
                         "tessera_storage_write_stall_seconds_total",
                         "process_cpu_seconds_total",
                         "process_resident_memory_bytes",
                         "process_open_fds",
                         "tessera_admission_inflight_bytes",
                         "tessera_admission_limit_bytes",
                         "tessera_admission_admitted_total",
                         "tessera_admission_rejected_total",
                     }));
  const std::string text = w.metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_handled_total{grpc_code=\"UNAVAILABLE\","
                              "grpc_method=\"Get\",grpc_service=\"tessera.v1.KV\"} 1"));
  EXPECT_THAT(text, HasSubstr("tessera_raft_proposals_total{result=\"rejected\",shard=\"1\"} 1"));
  EXPECT_THAT(text, HasSubstr("tessera_raft_role{role=\"leader\",shard=\"1\"} 1"));
  EXPECT_THAT(text, HasSubstr("tessera_raft_role{role=\"stopped\",shard=\"1\"} 0"));
  EXPECT_THAT(text, HasSubstr("tessera_node_info{node_id=\"3\"} 1"));
  EXPECT_THAT(text, HasSubstr("tessera_admission_rejected_total 2"));
}

TEST(MetricNames, UnknownMethodsShareOneLabelSet) {
  Metrics metrics(MetricsOptions{});
  for (int i = 0; i < 100; ++i) {
    metrics.ObserveRpc(absl::StrCat("/evil.Service/M", i), grpc::StatusCode::UNIMPLEMENTED,
                       absl::Milliseconds(1));
  }
  metrics.ObserveRpc("/tessera.v1.KV/a/b", grpc::StatusCode::OK, absl::Milliseconds(1));
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("tessera_grpc_server_handled_total{grpc_code=\"UNIMPLEMENTED\","
                        "grpc_method=\"unknown\",grpc_service=\"unknown\"} 100"));
}

prometheus::MetricFamily MakeFamily(std::string name, prometheus::MetricType type,
                                    std::string label = "") {
  prometheus::MetricFamily f;
  f.name = std::move(name);
  f.help = "help";
  f.type = type;
  prometheus::ClientMetric m;
  if (!label.empty()) m.label.push_back({label, "x"});
  f.metric.push_back(m);
  return f;
}

// Issue 12: 20,000 calls to random "/tessera.v1.KV/X..." names made 359k
// series. Only the methods our services define get labels of their own.
TEST(MetricNames, RandomMethodNamesDoNotGrowMetrics) {
  Metrics metrics(MetricsOptions{});
  metrics.ObserveRpc("/tessera.v1.KV/Put", grpc::StatusCode::OK, absl::Milliseconds(1));
  metrics.ObserveRpc("/tessera.v1.Cluster/NodeStatus", grpc::StatusCode::OK, absl::Milliseconds(1));
  metrics.ObserveRpc("/grpc.health.v1.Health/Check", grpc::StatusCode::OK, absl::Milliseconds(1));
  metrics.ObserveRpc("/tessera.v1.KV/X0", grpc::StatusCode::UNIMPLEMENTED, absl::Milliseconds(1));
  const size_t before = metrics.Serialize().size();
  for (int i = 1; i < 1000; ++i) {
    metrics.ObserveRpc(absl::StrCat("/tessera.v1.KV/X", i), grpc::StatusCode::UNIMPLEMENTED,
                       absl::Milliseconds(1));
  }
  const std::string text = metrics.Serialize();
  // Counts change digits only (and process gauges may wiggle).
  EXPECT_LT(text.size(), before + 256);
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_handled_total{grpc_code=\"UNIMPLEMENTED\","
                              "grpc_method=\"unknown\",grpc_service=\"unknown\"} 1000"));
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_handled_total{grpc_code=\"OK\","
                              "grpc_method=\"Put\",grpc_service=\"tessera.v1.KV\"} 1"));
  EXPECT_THAT(text, HasSubstr("grpc_method=\"NodeStatus\",grpc_service=\"tessera.v1.Cluster\""));
  EXPECT_THAT(text, HasSubstr("grpc_method=\"Check\",grpc_service=\"grpc.health.v1.Health\""));
  EXPECT_THAT(text, Not(HasSubstr("X1")));
}

TEST(MetricNames, ConnectionReporterCountsOpenAndRefused) {
  Metrics metrics(MetricsOptions{});
  auto report = metrics.ConnectionReporter("client", 40);
  report(3, 0);
  report(40, 7);
  report(12, 9);
  const std::string text = metrics.Serialize();
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_open_connections{port=\"client\"} 12"));
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_max_connections{port=\"client\"} 40"));
  EXPECT_THAT(text, HasSubstr("tessera_grpc_server_refused_connections_total{port=\"client\"} 9"));
  EXPECT_THAT(CheckMetricFamilies(metrics.Collect()), IsOk());
}

TEST(MetricNames, RefusesNamesAgainstTheConventions) {
  using T = prometheus::MetricType;
  auto check = [](prometheus::MetricFamily f) { return CheckMetricFamilies({f}); };
  EXPECT_THAT(check(MakeFamily("tessera_requests_total", T::Counter)), IsOk());
  EXPECT_THAT(check(MakeFamily("tessera_requests", T::Counter)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_inflight_total", T::Gauge)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_fsync_ms", T::Histogram)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_latency_micros_total", T::Counter)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_size_mb", T::Gauge)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("raft_term", T::Gauge)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera-term", T::Gauge)),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_reads_total", T::Counter, "key")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(check(MakeFamily("tessera_reads_total", T::Counter, "shard")), IsOk());
  prometheus::MetricFamily no_help = MakeFamily("tessera_x", T::Gauge);
  no_help.help.clear();
  EXPECT_THAT(check(no_help), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      CheckMetricFamilies({MakeFamily("tessera_x", T::Gauge), MakeFamily("tessera_x", T::Gauge)}),
      StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RateLimitedLog, LogsTheFirstThenOncePerInterval) {
  RateLimitedLog log(absl::Seconds(10));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  std::optional<RateLimitedLog::Report> r = log.Record(t0, absl::Milliseconds(1500), "a");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->count, 1u);
  EXPECT_EQ(r->slowest, absl::Milliseconds(1500));
  EXPECT_EQ(r->what, "a");
  for (int i = 1; i <= 50; ++i) {
    EXPECT_FALSE(log.Record(t0 + absl::Milliseconds(100 * i), absl::Milliseconds(1000 + i),
                            absl::StrCat("b", i))
                     .has_value());
  }
  r = log.Record(t0 + absl::Seconds(11), absl::Milliseconds(1001), "c");
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->count, 51u);  // 50 suppressed + this one
  EXPECT_EQ(r->slowest, absl::Milliseconds(1050));
  EXPECT_EQ(r->what, "b50");
  EXPECT_FALSE(log.Record(t0 + absl::Seconds(12), absl::Seconds(5), "d").has_value());
}

ShardStatus Replica(ShardId shard, const std::string& role, NodeId leader, absl::Time contact) {
  ShardStatus s{.shard = shard,
                .role = role,
                .term = 2,
                .leader = leader,
                .commit_index = 10,
                .applied_index = 10,
                .last_index = 10};
  s.last_leader_contact = contact;
  return s;
}

TEST(Readiness, FollowsMembershipLeadersContactAndLag) {
  const absl::Time now = absl::Now();
  ReadinessOptions o{.max_leader_silence = absl::Seconds(2), .max_apply_lag = 100};
  std::vector<ShardStatus> shards = {Replica(0, "leader", 1, now),
                                     Replica(1, "follower", 2, now - absl::Seconds(1))};
  EXPECT_TRUE(EvaluateReadiness(true, false, shards, now, o).ready);
  EXPECT_EQ(EvaluateReadiness(true, true, shards, now, o).reason, "draining");
  EXPECT_THAT(EvaluateReadiness(false, false, shards, now, o).reason, HasSubstr("member"));
  EXPECT_FALSE(EvaluateReadiness(true, false, {}, now, o).ready);

  std::vector<ShardStatus> no_leader = shards;
  no_leader[1].leader = 0;
  EXPECT_THAT(EvaluateReadiness(true, false, no_leader, now, o).reason,
              HasSubstr("shard 1 has no known leader"));
  std::vector<ShardStatus> silent = shards;
  silent[1].last_leader_contact = now - absl::Seconds(3);
  EXPECT_THAT(EvaluateReadiness(true, false, silent, now, o).reason,
              HasSubstr("has not heard from its leader"));
  silent[1].last_leader_contact = absl::InfinitePast();
  EXPECT_FALSE(EvaluateReadiness(true, false, silent, now, o).ready);
  std::vector<ShardStatus> lagging = shards;
  lagging[1].commit_index = 500;
  lagging[1].applied_index = 399;
  EXPECT_THAT(EvaluateReadiness(true, false, lagging, now, o).reason, HasSubstr("catching up"));
  lagging[1].applied_index = 400;
  EXPECT_TRUE(EvaluateReadiness(true, false, lagging, now, o).ready);
}

// A socket connected to 127.0.0.1:port, or -1.
int ConnectLocal(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// GET http://127.0.0.1:port/path; returns "<status>\n<body>". A read that
// waits longer than `timeout` ends the response there.
std::string HttpGet(int port, const std::string& path, absl::Duration timeout = absl::Seconds(30)) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  timeval tv = absl::ToTimeval(timeout);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
  if (write(fd, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
    close(fd);
    return "write failed";
  }
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;)
    response.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.size() < 12 || body == std::string::npos) return "bad response: " + response;
  return response.substr(9, 3) + "\n" + response.substr(body + 4);
}

TEST(MetricsHttpServer, ServesMetricsHealthAndReadiness) {
  Wired w;
  HealthMonitor health(ReadinessOptions{});
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", {{"/metrics", MetricsHandler(&w.metrics)},
                                               {"/healthz", health.LivenessHandler()},
                                               {"/readyz", health.ReadinessHandler()}});
  ASSERT_THAT(server.status(), IsOk());
  const int port = (*server)->port();
  ASSERT_GT(port, 0);
  std::string metrics = HttpGet(port, "/metrics");
  EXPECT_TRUE(absl::StartsWith(metrics, "200\n")) << metrics;
  EXPECT_THAT(metrics, HasSubstr("# TYPE tessera_raft_term gauge"));
  EXPECT_THAT(metrics, HasSubstr("process_open_fds"));
  EXPECT_EQ(HttpGet(port, "/healthz"), "200\nok\n");
  EXPECT_EQ(HttpGet(port, "/readyz"), "503\nstarting\n");
  health.SetSources(
      {.member = [] { return true; },
       .shards = [] { return std::vector<ShardStatus>{Replica(0, "leader", 1, absl::Now())}; }});
  EXPECT_EQ(HttpGet(port, "/readyz"), "200\nready\n");
  health.SetDraining();
  EXPECT_EQ(HttpGet(port, "/readyz"), "503\ndraining\n");
  EXPECT_THAT(HttpGet(port, "/nope"), ::testing::StartsWith("404"));
  EXPECT_THAT(HttpGet(port, "/metrics/x"), ::testing::StartsWith("404"));

  // Issue 12: /healthz was 200 for a node whose raft loop had stopped.
  absl::Mutex live_mu;
  absl::Status live = absl::UnavailableError("raft loop wedged: no cycle completed for 6s");
  health.SetSources(
      {.member = [] { return true; },
       .shards = [] { return std::vector<ShardStatus>{Replica(0, "leader", 1, absl::Now())}; },
       .live =
           [&] {
             absl::MutexLock lock(&live_mu);
             return live;
           }});
  EXPECT_EQ(HttpGet(port, "/healthz"),
            "503\nUNAVAILABLE: raft loop wedged: no cycle completed for 6s\n");
  EXPECT_EQ(HttpGet(port, "/readyz"),
            "503\nnot live: UNAVAILABLE: raft loop wedged: no cycle completed for 6s\n");
  {
    absl::MutexLock lock(&live_mu);
    live = absl::OkStatus();
  }
  EXPECT_EQ(HttpGet(port, "/healthz"), "200\nok\n");

  // The port is taken now.
  EXPECT_THAT(MetricsHttpServer::Start(absl::StrCat("127.0.0.1:", port), {}).status(),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(MetricsHttpServer::Start("nonsense", {}).status(),
              StatusIs(absl::StatusCode::kInvalidArgument));
  (*server)->Stop();
  EXPECT_EQ(HttpGet(port, "/healthz"), "connect failed");
}

// Issue 12: two half-sent requests (slowloris) held both of the HTTP
// server's worker threads, and /healthz timed out for ~10 s. Now twice as
// many as it has threads must not.
TEST(MetricsHttpServer, SlowClientsDoNotStallHealthz) {
  HealthMonitor health(ReadinessOptions{});
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", {{"/healthz", health.LivenessHandler()}});
  ASSERT_THAT(server.status(), IsOk());
  const int port = (*server)->port();
  std::vector<int> slow;
  for (int i = 0; i < 2 * MetricsHttpServer::kHttpThreads; ++i) {
    const int fd = ConnectLocal(port);
    ASSERT_GE(fd, 0);
    const std::string half = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n";  // no blank line
    ASSERT_EQ(write(fd, half.data(), half.size()), static_cast<ssize_t>(half.size()));
    slow.push_back(fd);
  }
  // A liveness probe's usual timeout is 1 s: each probe must answer in that.
  for (int probe = 0; probe < 3; ++probe) {
    EXPECT_EQ(HttpGet(port, "/healthz", absl::Seconds(1)), "200\nok\n") << "probe " << probe;
  }
  // The slow clients are cut off after the request timeout.
  for (int fd : slow) {
    timeval tv = absl::ToTimeval(MetricsHttpServer::kHttpRequestTimeout + absl::Seconds(10));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[256];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
    }
    EXPECT_EQ(n, 0) << "the server kept a half-sent request open";
    close(fd);
  }
}

// Runs `command` in sh; its stdout (stderr dropped), or "exit N" after it.
std::string Shell(const std::string& command) {
  FILE* pipe = popen(absl::StrCat(command, " 2>/dev/null").c_str(), "r");
  if (pipe == nullptr) return "popen failed";
  std::string out;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) out.append(buf, n);
  const int rc = pclose(pipe);
  if (rc != 0) absl::StrAppend(&out, "exit ", rc);
  return out;
}

// GET https://localhost:port/healthz with curl, trusting only `ca`.
std::string HttpsGet(int port, const std::string& ca) {
  return Shell(absl::StrCat("curl -sS --max-time 20 --cacert '", ca, "' --resolve localhost:", port,
                            ":127.0.0.1 https://localhost:", port, "/healthz"));
}

void CopyFile(const std::string& from, const std::string& to) {
  // Through a rename, as a deployment tool replaces a file.
  std::filesystem::copy_file(from, to + ".new", std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(to + ".new", to);
}

// --metrics-tls: HTTPS only, and a rotated certificate is used without a
// restart (ReloadTls, as SIGHUP does, and by itself within seconds); an
// unusable pair is refused at start and leaves the served one in place.
TEST(MetricsHttpServer, ServesHttpsAndRotatesItsCertificate) {
  TempDir tmp;
  const std::string ca1 = tmp.path() + "/ca1", ca2 = tmp.path() + "/ca2";
  for (const std::string& dir : {ca1, ca2}) {
    const std::string command =
        absl::StrCat(TESSERA_SOURCE_DIR, "/deploy/gen-certs.sh '", dir, "' 1 >/dev/null");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
  }
  const HttpTlsFiles files{tmp.path() + "/cert.pem", tmp.path() + "/key.pem"};
  CopyFile(ca1 + "/node-1.crt", files.cert);
  CopyFile(ca2 + "/node-1.key", files.key);
  HealthMonitor health(ReadinessOptions{});
  EXPECT_THAT(MetricsHttpServer::Start("127.0.0.1:0", {}, files).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("not a usable")));
  CopyFile(ca1 + "/node-1.key", files.key);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1:0", {{"/healthz", health.LivenessHandler()}}, files);
  ASSERT_THAT(server.status(), IsOk());
  const int port = (*server)->port();
  EXPECT_EQ(HttpsGet(port, ca1 + "/ca.crt"), "ok\n");
  EXPECT_THAT(HttpsGet(port, ca2 + "/ca.crt"), HasSubstr("exit"));
  EXPECT_THAT(HttpGet(port, "/healthz"), Not(::testing::StartsWith("200")));

  // Rotation to a certificate of another CA, then a broken file.
  CopyFile(ca2 + "/node-1.key", files.key);
  CopyFile(ca2 + "/node-1.crt", files.cert);
  ASSERT_THAT((*server)->ReloadTls(), IsOk());
  EXPECT_EQ(HttpsGet(port, ca2 + "/ca.crt"), "ok\n");
  EXPECT_THAT(HttpsGet(port, ca1 + "/ca.crt"), HasSubstr("exit"));
  { std::ofstream(files.cert) << "not a certificate"; }
  EXPECT_THAT((*server)->ReloadTls(), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(HttpsGet(port, ca2 + "/ca.crt"), "ok\n");

  // Back to the first pair, picked up by the server itself (it checks every
  // second; bounded wait).
  CopyFile(ca1 + "/node-1.key", files.key);
  CopyFile(ca1 + "/node-1.crt", files.cert);
  std::string got;
  for (int i = 0; i < 60 && got != "ok\n"; ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    got = HttpsGet(port, ca1 + "/ca.crt");
  }
  EXPECT_EQ(got, "ok\n");
  (*server)->Stop();
  EXPECT_THAT(HttpsGet(port, ca1 + "/ca.crt"), HasSubstr("exit"));
}

// Calls grpc.health.v1.Health/Check for `service`; returns the serving
// status (1 SERVING, 2 NOT_SERVING) or -code for an RPC error.
int HealthCheck(grpc::GenericStub& stub, const std::string& service) {
  std::string request;
  if (!service.empty()) {  // HealthCheckRequest.service (field 1, bytes)
    request = std::string("\x0a") + static_cast<char>(service.size()) + service;
  }
  grpc::Slice slice(request);
  grpc::ByteBuffer in(&slice, 1);
  grpc::ByteBuffer out;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &in, &out,
                 [&](grpc::Status s) {
                   status = std::move(s);
                   done.Notify();
                 });
  done.WaitForNotification();
  if (!status.ok()) return -static_cast<int>(status.error_code());
  std::vector<grpc::Slice> slices;
  if (!out.Dump(&slices).ok()) return -100;
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  if (bytes.empty()) return 0;  // UNKNOWN
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : -101;
}

TEST(GrpcHealthAndInterceptor, ServingStatusFollowsReadinessAndCallsAreCounted) {
  Metrics metrics(MetricsOptions{});
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> factories;
  factories.push_back(metrics.NewGrpcInterceptorFactory());
  builder.experimental().SetInterceptorCreators(std::move(factories));
  // A callback service, as tessera-server's: the default health service
  // needs one (a server without any service does not build).
  grpc::CallbackGenericService generic;
  builder.RegisterCallbackGenericService(&generic);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_NE(server->GetHealthCheckService(), nullptr);

  HealthMonitor health(ReadinessOptions{});
  health.SetGrpcHealth(server->GetHealthCheckService());
  health.Start(absl::Milliseconds(20));
  grpc::GenericStub stub(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  auto wait_status = [&](const std::string& service, int want) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    int got = HealthCheck(stub, service);
    while (got != want && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(20));
      got = HealthCheck(stub, service);
    }
    return got;
  };
  EXPECT_EQ(wait_status("", 2), 2);  // starting: NOT_SERVING
  EXPECT_EQ(wait_status("tessera.v1.KV", 2), 2);
  health.SetSources(
      {.member = [] { return true; },
       .shards = [] { return std::vector<ShardStatus>{Replica(0, "leader", 1, absl::Now())}; }});
  EXPECT_EQ(wait_status("", 1), 1);
  EXPECT_EQ(wait_status("tessera.v1.KV", 1), 1);
  // Issue 12: a stopped raft loop turns the node NOT_SERVING.
  health.SetSources(
      {.member = [] { return true; },
       .shards = [] { return std::vector<ShardStatus>{Replica(0, "leader", 1, absl::Now())}; },
       .live = [] { return absl::DataLossError("shard 0: install snapshot"); }});
  EXPECT_EQ(wait_status("", 2), 2);
  EXPECT_EQ(wait_status("tessera.v1.KV", 2), 2);
  health.SetDraining();
  EXPECT_EQ(HealthCheck(stub, ""), 2);
  health.Stop();
  server->Shutdown(std::chrono::system_clock::now());
  EXPECT_THAT(metrics.Serialize(),
              HasSubstr("tessera_grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Check\","
                        "grpc_service=\"grpc.health.v1.Health\"}"));
}

TEST(EngineStats, ReportsRocksDbCountersAndWalSyncTime) {
  TempDir dir;
  absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
      storage::Engine::Open(dir.path() + "/db", storage::EngineOptions{});
  ASSERT_THAT(engine.status(), IsOk());
  for (uint64_t i = 1; i <= 5; ++i) {
    storage::LogUpdate u;
    u.shard = 7;
    u.entries = {MakeEntry(i, 1, std::string(1000, 'x'))};
    ASSERT_THAT((*engine)->raft_log().Save({u}), IsOk());
    // The raft log is not in RocksDB: the store's writes fill its memtable.
    ASSERT_THAT((*engine)->kv_store().Apply({storage::ShardWrite{
                    7, i, {{storage::Mutation::Kind::kPut, "k" + std::to_string(i), "v"}}}}),
                IsOk());
  }
  absl::StatusOr<storage::Engine::Stats> st = (*engine)->GetStats();
  ASSERT_THAT(st.status(), IsOk());
  EXPECT_GT(st->memtable_bytes, 0u);
  EXPECT_GE(st->wal_syncs, 5u);
  EXPECT_GT(st->wal_sync_micros, 0u);
  EXPECT_GT(st->wal_bytes, 5000u);
  EXPECT_FALSE(st->write_stopped);
  auto [syncs, micros] = (*engine)->WalSyncTotals();
  EXPECT_EQ(syncs, st->wal_syncs);
  EXPECT_EQ(micros, st->wal_sync_micros);
  ASSERT_THAT((*engine)->FlushForTesting(), IsOk());
  st = (*engine)->GetStats();
  ASSERT_THAT(st.status(), IsOk());
  EXPECT_GT(st->sst_files_bytes, 0u);
}

}  // namespace
}  // namespace tessera::server
