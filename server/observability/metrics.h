// Metrics: a tessera-server's Prometheus metrics, and the small HTTP server
// that serves them with the health endpoints.
//
// Where it sits: main.cc creates one Metrics per process and hands its hooks
// to the parts that count things: NodeMetrics (NodeOptions::metrics) for the
// raft loop, a gRPC server interceptor for every client RPC. Gauges that
// already exist elsewhere are read at scrape time: the Node's Status() (term,
// role, indexes per shard), the storage Engine's stats (RocksDB) and /proc
// (process CPU, memory, fds; prometheus-cpp has no process collector).
// MetricsHttpServer serves /metrics, /healthz and /readyz on --metrics-listen.
//
// Names (checked by CheckMetricFamilies, and by `promtool check metrics` in
// the tests): `tessera_` prefix (`process_` for the standard process
// metrics), base units (`_seconds`, `_bytes`), counters end in `_total`.
// Labels are bounded: shard ids, gRPC service/method/code, roles and fixed
// outcome names; never keys or client ids. server/README.md "Observability"
// lists every metric.
//
// Thread-safety: Metrics is thread-safe. Sources set with SetNodeStatusSource
// and SetEngine are called from scrape threads: their targets must outlive
// every scrape, i.e. stop the MetricsHttpServer before destroying them.
#ifndef TESSERA_SERVER_OBSERVABILITY_METRICS_H_
#define TESSERA_SERVER_OBSERVABILITY_METRICS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/support/server_interceptor.h"
#include "grpcpp/support/status.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/metric_family.h"
#include "prometheus/registry.h"
#include "server/api/admission.h"
#include "server/api/batch_stats.h"
#include "server/api/watch_hub.h"
#include "server/cluster/lease_keeper.h"
#include "server/observability/http_server.h"
#include "server/raftstore/node.h"
#include "server/raftstore/node_metrics.h"
#include "storage/engine.h"

namespace tessera::server {

// ---------------------------------------------------------------- /proc

// What the process collector reports, read from /proc/<pid>/{stat,fd,limits}
// and /proc/stat.
struct ProcessStats {
  double cpu_seconds = 0;           // user + system
  uint64_t resident_bytes = 0;      // RSS
  uint64_t virtual_bytes = 0;       // VSZ
  uint64_t open_fds = 0;            // entries of /proc/<pid>/fd
  std::optional<uint64_t> max_fds;  // soft RLIMIT_NOFILE; nullopt if unlimited
  double start_time_seconds = 0;    // since the Unix epoch
  uint64_t threads = 0;
};

// Fields of /proc/<pid>/stat (proc(5)); `comm` may contain spaces and
// parentheses, so parsing starts after the last ')'. Errors: kInvalidArgument.
struct ProcPidStat {
  uint64_t utime_ticks = 0;  // field 14
  uint64_t stime_ticks = 0;  // field 15
  uint64_t num_threads = 0;  // field 20
  uint64_t start_ticks = 0;  // field 22, clock ticks after boot
  uint64_t vsize_bytes = 0;  // field 23
  uint64_t rss_pages = 0;    // field 24
};
absl::StatusOr<ProcPidStat> ParseProcPidStat(absl::string_view text);
// The "btime" line of /proc/stat (boot time, seconds since the epoch).
absl::StatusOr<uint64_t> ParseBootTime(absl::string_view proc_stat);
// The soft limit of "Max open files" in /proc/<pid>/limits; nullopt when
// "unlimited". Errors: kInvalidArgument when the line is missing.
absl::StatusOr<std::optional<uint64_t>> ParseMaxOpenFiles(absl::string_view limits);

// Reads the stats of process `pid` ("self" or a number) under `proc_root`
// (normally "/proc"; tests pass a fake tree). Errors: kUnavailable when a
// file cannot be read, kInvalidArgument when one cannot be parsed.
absl::StatusOr<ProcessStats> ReadProcessStats(const std::string& proc_root = "/proc",
                                              const std::string& pid = "self");

// The standard process_* metric families (process_cpu_seconds_total,
// process_resident_memory_bytes, process_virtual_memory_bytes,
// process_open_fds, process_max_fds, process_start_time_seconds) plus
// tessera_process_threads, read from /proc at every Collect(). A read error
// yields no families (and is not fatal). Thread-safe.
class ProcessCollector : public prometheus::Collectable {
 public:
  explicit ProcessCollector(std::string proc_root = "/proc", std::string pid = "self")
      : proc_root_(std::move(proc_root)), pid_(std::move(pid)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  const std::string proc_root_;
  const std::string pid_;
};

// ---------------------------------------------------------------- naming

// Checks Prometheus naming conventions and our own rules on `families`:
// valid metric and label names, `tessera_` or `process_` prefix, counters
// (and only counters) end in `_total`, histograms measure `_seconds` or
// `_bytes`, no non-base units (`_ms`, `_micros`, `_kb`, `_percent`, ...),
// a help text, and label names from a fixed allow-list (bounded
// cardinality: no key or client labels). Errors: kInvalidArgument naming
// the first offending family.
absl::Status CheckMetricFamilies(const std::vector<prometheus::MetricFamily>& families);

// ---------------------------------------------------------------- slow-event log

// Decides when a recurring slow event (a slow request, a slow fsync) is
// logged: the first one at once, then at most once per `interval`, with how
// many happened since the last line and the slowest of them. Events after
// the last line are reported with the next slow event past the interval.
// Thread-safe.
class RateLimitedLog {
 public:
  struct Report {
    uint64_t count = 0;      // slow events since the previous line (this one included)
    absl::Duration slowest;  // the slowest of them
    std::string what;        // its description
  };
  explicit RateLimitedLog(absl::Duration interval) : interval_(interval) {}

  // Records a slow event; returns what to log now, if anything.
  std::optional<Report> Record(absl::Time now, absl::Duration duration, std::string what)
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const absl::Duration interval_;
  absl::Mutex mu_;
  absl::Time last_logged_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t pending_count_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration pending_slowest_ ABSL_GUARDED_BY(mu_);
  std::string pending_what_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------- Metrics

struct MetricsOptions {
  NodeId node_id = 0;
  // Requests / fsyncs slower than this are logged (rate-limited); zero turns
  // the log off.
  absl::Duration slow_request = absl::Seconds(1);
  absl::Duration slow_fsync = absl::Milliseconds(500);
  absl::Duration slow_log_interval = absl::Seconds(10);
  std::string proc_root = "/proc";
};

// The cluster as a node sees it, for /metrics: from the cluster map it
// serves by, and from its scheduler (which acts only while the node leads
// the metadata group; its counters stay 0 elsewhere).
struct ClusterStats {
  uint64_t map_version = 0;  // 0 while no map is loaded
  uint64_t members = 0;
  uint64_t leaving_members = 0;
  uint64_t moves_in_progress = 0;
  // Shards with fewer voters than the replication factor, or a voter on a
  // leaving member.
  uint64_t under_replicated_shards = 0;
  uint64_t moves_started = 0;     // recorded by this node's scheduler (balance, evacuation)
  uint64_t moves_completed = 0;   // recorded done by this node's scheduler
  uint64_t shards = 0;            // in the map (grows with splits)
  uint64_t splits_completed = 0;  // recorded done by this node's scheduler
};

class Metrics {
 public:
  explicit Metrics(const MetricsOptions& options);
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // The hooks of the raft loop (NodeOptions::metrics); owned by this object.
  NodeMetrics* node_metrics();
  // Creates the per-shard counters of `shards` at 0, so that their series
  // exist before the first event (rate() and dashboards need them).
  void RegisterShards(const std::vector<ShardId>& shards);

  // A gRPC server interceptor factory counting every call of the server it
  // is installed in (StartGrpcServer's `interceptors`) by service, method and
  // code, and timing it from the arrival of its metadata to its status.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  NewGrpcInterceptorFactory();
  // What the interceptor calls per finished RPC. `full_method` is gRPC's
  // "/package.Service/Method". Only the methods our services define (every
  // service of proto/tessera/kv.proto and peer.proto, grpc.health.v1.Health)
  // get their own labels; any other name (a client can send any) is counted
  // as service "unknown", method "unknown", so labels stay bounded.
  void ObserveRpc(absl::string_view full_method, grpc::StatusCode code, absl::Duration duration);

  // The GrpcServerOptions::on_connections hook of the gRPC server on `port`
  // ("client" or "peer"): tessera_grpc_server_open_connections,
  // tessera_grpc_server_max_connections (set to `max_connections` now) and
  // tessera_grpc_server_refused_connections_total, labelled port=`port`.
  std::function<void(uint64_t open, uint64_t refused_total)> ConnectionReporter(
      const std::string& port, uint64_t max_connections);

  // Scrape-time sources (see the file comment for lifetimes). Each may be
  // set, replaced or cleared (nullptr / empty function) at any time.
  void SetNodeStatusSource(std::function<std::vector<ShardStatus>()> source)
      ABSL_LOCKS_EXCLUDED(mu_);
  void SetEngine(const storage::Engine* engine) ABSL_LOCKS_EXCLUDED(mu_);
  // The KV service's byte budget (KvService::admission_stats).
  void SetAdmissionSource(std::function<AdmissionStats()> source) ABSL_LOCKS_EXCLUDED(mu_);
  // The KV service's Batch stream counters (KvService::batch_stats).
  void SetBatchSource(std::function<BatchStats()> source) ABSL_LOCKS_EXCLUDED(mu_);
  // The watch hub's counters (KvService::watch_hub()->Stats()).
  void SetWatchSource(std::function<WatchHubStats()> source) ABSL_LOCKS_EXCLUDED(mu_);
  // The lease keeper's counters (LeaseKeeper::stats()).
  void SetLeaseSource(std::function<LeaseKeeper::Stats()> source) ABSL_LOCKS_EXCLUDED(mu_);
  // The cluster as this node sees it (tessera_cluster_*, tessera_scheduler_*).
  void SetClusterSource(std::function<ClusterStats()> source) ABSL_LOCKS_EXCLUDED(mu_);

  // Every metric family, in the text exposition format (version 0.0.4).
  std::string Serialize() const;
  std::vector<prometheus::MetricFamily> Collect() const;

 private:
  class NodeHooks;
  class ScrapeCollector;
  class GrpcInterceptorFactory;

  const MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<ProcessCollector> process_;
  std::unique_ptr<ScrapeCollector> scrape_;
  std::unique_ptr<NodeHooks> node_hooks_;

  prometheus::Family<prometheus::Counter>* rpc_handled_ = nullptr;
  prometheus::Family<prometheus::Histogram>* rpc_seconds_ = nullptr;
  prometheus::Family<prometheus::Gauge>* open_connections_ = nullptr;
  prometheus::Family<prometheus::Gauge>* max_connections_ = nullptr;
  prometheus::Family<prometheus::Counter>* refused_connections_ = nullptr;
  RateLimitedLog slow_requests_;

  mutable absl::Mutex mu_;
  std::function<std::vector<ShardStatus>()> node_status_ ABSL_GUARDED_BY(mu_);
  const storage::Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::function<AdmissionStats()> admission_ ABSL_GUARDED_BY(mu_);
  std::function<BatchStats()> batch_ ABSL_GUARDED_BY(mu_);
  std::function<WatchHubStats()> watch_ ABSL_GUARDED_BY(mu_);
  std::function<LeaseKeeper::Stats()> lease_ ABSL_GUARDED_BY(mu_);
  std::function<ClusterStats()> cluster_ ABSL_GUARDED_BY(mu_);
};

// The /metrics handler for `metrics` (not owned; must outlive the server).
MetricsHttpServer::Handler MetricsHandler(const Metrics* metrics);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_OBSERVABILITY_METRICS_H_
