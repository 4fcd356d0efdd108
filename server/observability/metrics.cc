#include "server/observability/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "prometheus/check_names.h"
#include "prometheus/text_serializer.h"
#include "server/observability/grpc_log.h"
#include "spdlog/spdlog.h"
#include "tessera/kv.pb.h"
#include "tessera/peer.pb.h"

namespace tessera::server {

namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// Latency buckets: 0.5 ms to 10 s (requests), 100 µs to ~2 s (disk).
const prometheus::Histogram::BucketBoundaries& RequestBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return *b;
}
const prometheus::Histogram::BucketBoundaries& DiskBuckets() {
  static const auto* b = new prometheus::Histogram::BucketBoundaries{
      0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016,
      0.032,  0.064,   0.128,  0.256, 0.512, 1.024, 2.048};
  return *b;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::UnavailableError(absl::StrCat("cannot read ", path));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

MetricFamily Family(std::string name, std::string help, MetricType type) {
  MetricFamily f;
  f.name = std::move(name);
  f.help = std::move(help);
  f.type = type;
  return f;
}

void AddValue(MetricFamily& f, double value, std::vector<ClientMetric::Label> labels = {}) {
  ClientMetric m;
  m.label = std::move(labels);
  if (f.type == MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  f.metric.push_back(std::move(m));
}

// Appends a family of one unlabelled sample to `out`.
void AddSingle(std::vector<MetricFamily>& out, std::string name, std::string help, MetricType type,
               double value) {
  out.push_back(Family(std::move(name), std::move(help), type));
  AddValue(out.back(), value);
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

// "host:port" with a decimal port 0..65535 and a non-empty host.
std::string ShardLabel(ShardId shard) { return absl::StrCat(shard); }

// "/package.Service/Method" of every method our gRPC servers serve.
const absl::flat_hash_set<std::string>& KnownMethods() {
  static const auto* known = [] {
    auto* names = new absl::flat_hash_set<std::string>{"/grpc.health.v1.Health/Check",
                                                       "/grpc.health.v1.Health/Watch"};
    for (const google::protobuf::FileDescriptor* file :
         {v1::GetRequest::descriptor()->file(), peerpb::MessageBatch::descriptor()->file()}) {
      for (int i = 0; i < file->service_count(); ++i) {
        const google::protobuf::ServiceDescriptor* service = file->service(i);
        for (int j = 0; j < service->method_count(); ++j) {
          names->insert(absl::StrCat("/", service->full_name(), "/", service->method(j)->name()));
        }
      }
    }
    return names;
  }();
  return *known;
}

double Millis(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

// ---------------------------------------------------------------- /proc

absl::StatusOr<ProcPidStat> ParseProcPidStat(absl::string_view text) {
  const size_t paren = text.rfind(')');
  if (paren == absl::string_view::npos) {
    return absl::InvalidArgumentError("/proc/<pid>/stat: no ')' after the command name");
  }
  // Fields after "pid (comm)": field 3 (state) is the first.
  std::vector<absl::string_view> fields =
      absl::StrSplit(text.substr(paren + 1), ' ', absl::SkipWhitespace());
  auto field = [&fields](int number, uint64_t* out) {
    const size_t i = static_cast<size_t>(number - 3);
    return i < fields.size() && absl::SimpleAtoi(fields[i], out);
  };
  ProcPidStat st;
  if (!field(14, &st.utime_ticks) || !field(15, &st.stime_ticks) || !field(20, &st.num_threads) ||
      !field(22, &st.start_ticks) || !field(23, &st.vsize_bytes) || !field(24, &st.rss_pages)) {
    return absl::InvalidArgumentError("/proc/<pid>/stat: missing or malformed fields");
  }
  return st;
}

absl::StatusOr<uint64_t> ParseBootTime(absl::string_view proc_stat) {
  for (absl::string_view line : absl::StrSplit(proc_stat, '\n')) {
    if (!absl::ConsumePrefix(&line, "btime ")) continue;
    uint64_t btime = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &btime)) return btime;
    break;
  }
  return absl::InvalidArgumentError("/proc/stat: no btime line");
}

absl::StatusOr<std::optional<uint64_t>> ParseMaxOpenFiles(absl::string_view limits) {
  for (absl::string_view line : absl::StrSplit(limits, '\n')) {
    if (!absl::ConsumePrefix(&line, "Max open files")) continue;
    std::vector<absl::string_view> words = absl::StrSplit(line, ' ', absl::SkipWhitespace());
    if (words.empty()) break;
    if (words[0] == "unlimited") return std::optional<uint64_t>();
    uint64_t soft = 0;
    if (absl::SimpleAtoi(words[0], &soft)) return std::optional<uint64_t>(soft);
    break;
  }
  return absl::InvalidArgumentError("/proc/<pid>/limits: no 'Max open files' line");
}

absl::StatusOr<ProcessStats> ReadProcessStats(const std::string& proc_root,
                                              const std::string& pid) {
  const std::string dir = absl::StrCat(proc_root, "/", pid);
  absl::StatusOr<std::string> stat_text = ReadFile(dir + "/stat");
  if (!stat_text.ok()) return stat_text.status();
  absl::StatusOr<ProcPidStat> stat = ParseProcPidStat(*stat_text);
  if (!stat.ok()) return stat.status();
  absl::StatusOr<std::string> proc_stat = ReadFile(proc_root + "/stat");
  if (!proc_stat.ok()) return proc_stat.status();
  absl::StatusOr<uint64_t> boot = ParseBootTime(*proc_stat);
  if (!boot.ok()) return boot.status();
  absl::StatusOr<std::string> limits = ReadFile(dir + "/limits");
  if (!limits.ok()) return limits.status();
  absl::StatusOr<std::optional<uint64_t>> max_fds = ParseMaxOpenFiles(*limits);
  if (!max_fds.ok()) return max_fds.status();

  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  ProcessStats out;
  out.cpu_seconds = static_cast<double>(stat->utime_ticks + stat->stime_ticks) / ticks;
  out.resident_bytes = stat->rss_pages * page;
  out.virtual_bytes = stat->vsize_bytes;
  out.threads = stat->num_threads;
  out.start_time_seconds =
      static_cast<double>(*boot) + static_cast<double>(stat->start_ticks) / ticks;
  out.max_fds = *max_fds;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir + "/fd", ec), end; !ec && it != end;
       it.increment(ec)) {
    ++out.open_fds;
  }
  if (ec) return absl::UnavailableError(absl::StrCat("cannot list ", dir, "/fd: ", ec.message()));
  return out;
}

std::vector<MetricFamily> ProcessCollector::Collect() const {
  absl::StatusOr<ProcessStats> st = ReadProcessStats(proc_root_, pid_);
  if (!st.ok()) return {};
  std::vector<MetricFamily> out;
  auto add = [&out](std::string name, std::string help, MetricType type, double value) {
    AddSingle(out, std::move(name), std::move(help), type, value);
  };
  add("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
      MetricType::Counter, st->cpu_seconds);
  add("process_resident_memory_bytes", "Resident memory size in bytes.", MetricType::Gauge,
      static_cast<double>(st->resident_bytes));
  add("process_virtual_memory_bytes", "Virtual memory size in bytes.", MetricType::Gauge,
      static_cast<double>(st->virtual_bytes));
  add("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
      static_cast<double>(st->open_fds));
  if (st->max_fds.has_value()) {
    add("process_max_fds", "Maximum number of open file descriptors.", MetricType::Gauge,
        static_cast<double>(*st->max_fds));
  }
  add("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
      MetricType::Gauge, st->start_time_seconds);
  add("tessera_process_threads", "Threads of the tessera-server process.", MetricType::Gauge,
      static_cast<double>(st->threads));
  return out;
}

// ---------------------------------------------------------------- naming

absl::Status CheckMetricFamilies(const std::vector<MetricFamily>& families) {
  static const auto* kLabels = new absl::flat_hash_set<std::string>{
      "shard",     "role",    "result", "grpc_service", "grpc_method",
      "grpc_code", "node_id", "le",     "port"};
  static const char* const kBadUnits[] = {
      "_ms",  "_milliseconds", "_us",  "_micros", "_microseconds", "_ns",      "_nanos", "_kb",
      "_kib", "_mb",           "_mib", "_gb",     "_percent",      "_minutes", "_hours"};
  absl::flat_hash_set<std::string> seen;
  for (const MetricFamily& f : families) {
    auto bad = [&f](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrCat("metric ", f.name, ": ", why));
    };
    if (!prometheus::CheckMetricName(f.name)) return bad("invalid metric name");
    if (!seen.insert(f.name).second) return bad("family listed twice");
    if (!absl::StartsWith(f.name, "tessera_") && !absl::StartsWith(f.name, "process_")) {
      return bad("must start with tessera_ (or process_ for the standard process metrics)");
    }
    if (f.help.empty()) return bad("no help text");
    const bool total = absl::EndsWith(f.name, "_total");
    if (f.type == MetricType::Counter && !total) return bad("a counter must end in _total");
    if (f.type != MetricType::Counter && total) return bad("only counters end in _total");
    // ..._ops: a count of operations (per KV.Batch message), unitless.
    if (f.type == MetricType::Histogram && !absl::EndsWith(f.name, "_seconds") &&
        !absl::EndsWith(f.name, "_bytes") && !absl::EndsWith(f.name, "_ops")) {
      return bad("a histogram must measure _seconds or _bytes (or count _ops)");
    }
    absl::string_view base = f.name;
    absl::ConsumeSuffix(&base, "_total");
    for (const char* unit : kBadUnits) {
      if (absl::EndsWith(base, unit) || absl::StrContains(base, absl::StrCat(unit, "_"))) {
        return bad(absl::StrCat("non-base unit '", unit, "' (use _seconds or _bytes)"));
      }
    }
    for (const ClientMetric& m : f.metric) {
      for (const ClientMetric::Label& l : m.label) {
        if (!prometheus::CheckLabelName(l.name)) return bad(absl::StrCat("bad label ", l.name));
        if (!kLabels->contains(l.name)) {
          return bad(absl::StrCat("label '", l.name,
                                  "' is not in the allow-list (unbounded cardinality?)"));
        }
      }
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- slow-event log

std::optional<RateLimitedLog::Report> RateLimitedLog::Record(absl::Time now,
                                                             absl::Duration duration,
                                                             std::string what) {
  absl::MutexLock lock(&mu_);
  ++pending_count_;
  if (pending_count_ == 1 || duration > pending_slowest_) {
    pending_slowest_ = duration;
    pending_what_ = std::move(what);
  }
  if (now - last_logged_ < interval_) return std::nullopt;
  Report r{pending_count_, pending_slowest_, std::move(pending_what_)};
  last_logged_ = now;
  pending_count_ = 0;
  pending_slowest_ = absl::ZeroDuration();
  pending_what_.clear();
  return r;
}

// ---------------------------------------------------------------- node hooks

class Metrics::NodeHooks final : public NodeMetrics {
 public:
  NodeHooks(Metrics* parent, prometheus::Registry& registry)
      : parent_(parent),
        proposals_(prometheus::BuildCounter()
                       .Name("tessera_raft_proposals_total")
                       .Help("Proposals per shard by result: accepted (appended by the leader), "
                             "dropped (not leader, deadline passed), rejected (backpressure).")
                       .Register(registry)),
        leader_changes_(prometheus::BuildCounter()
                            .Name("tessera_raft_leader_changes_total")
                            .Help("Times this replica of the shard learned of a new leader.")
                            .Register(registry)),
        snapshots_sent_(prometheus::BuildCounter()
                            .Name("tessera_raft_snapshots_sent_total")
                            .Help("Snapshots this node sent to followers of the shard.")
                            .Register(registry)),
        snapshots_received_(prometheus::BuildCounter()
                                .Name("tessera_raft_snapshots_received_total")
                                .Help("Snapshots received from the shard's leader and installed.")
                                .Register(registry)),
        refused_(prometheus::BuildCounter()
                     .Name("tessera_peer_messages_refused_total")
                     .Help("Peer input refused before raft saw it, by reason (sender_mismatch, "
                           "inbox_full, "
                           "unauthenticated, replaced_member, commit_out_of_range, "
                           "snapshot_too_large, ...).")
                     .Register(registry)),
        shards_by_state_(prometheus::BuildGauge()
                             .Name("tessera_raft_shards")
                             .Help("Shard replicas hosted here by hibernation state: awake "
                                   "(ticking) or asleep (idle group, not ticking).")
                             .Register(registry)),
        wakeups_(prometheus::BuildCounter()
                     .Name("tessera_raft_shard_wakeups_total")
                     .Help("Sleeping shard replicas woken up, by reason (proposal, read, "
                           "message, leader_silent, follower_silent, unreachable, transfer, "
                           "balance).")
                     .Register(registry)),
        append_(prometheus::BuildHistogram()
                    .Name("tessera_raft_log_append_seconds")
                    .Help("Duration of a ready cycle's synced raft log write (all shards' "
                          "entries and hard states, WAL write + fsync).")
                    .Register(registry)
                    .Add({}, DiskBuckets())),
        append_entries_(prometheus::BuildCounter()
                            .Name("tessera_raft_log_appended_entries_total")
                            .Help("Raft log entries persisted by this node (all shards).")
                            .Register(registry)
                            .Add({})),
        fsync_(prometheus::BuildHistogram()
                   .Name("tessera_storage_wal_fsync_seconds")
                   .Help("Duration of the storage engine's WAL fsyncs (RocksDB timer).")
                   .Register(registry)
                   .Add({}, DiskBuckets())),
        slow_fsyncs_(parent->options_.slow_log_interval) {}

  void OnProposal(ShardId shard, ProposalOutcome outcome) override {
    PerShard& s = For(shard);
    switch (outcome) {
      case ProposalOutcome::kAccepted:
        s.accepted->Increment();
        break;
      case ProposalOutcome::kDropped:
        s.dropped->Increment();
        break;
      case ProposalOutcome::kRejected:
        s.rejected->Increment();
        break;
    }
  }

  void OnLeaderChange(ShardId shard, NodeId leader, uint64_t term) override {
    For(shard).leader_changes->Increment();
    spdlog::info("event=leader_change shard={} leader={} term={}{}", shard, leader, term,
                 leader == parent_->options_.node_id ? " (this node)" : "");
  }

  void OnLogSaved(absl::Duration duration, size_t shards, size_t entries) override {
    append_.Observe(absl::ToDoubleSeconds(duration));
    append_entries_.Increment(static_cast<double>(entries));
    const storage::Engine* engine;
    {
      absl::MutexLock lock(&parent_->mu_);
      engine = parent_->engine_;
    }
    // The fsync part: RocksDB's cumulative WAL sync time since the last
    // save (nearly always exactly this save's fsync).
    absl::Duration fsync = duration;
    if (engine != nullptr) {
      const auto [count, micros] = engine->WalSyncTotals();
      absl::MutexLock lock(&mu_);
      const uint64_t n = count - std::min(count, last_syncs_);
      const uint64_t us = micros - std::min(micros, last_sync_micros_);
      last_syncs_ = count;
      last_sync_micros_ = micros;
      if (n == 0) return;
      fsync = absl::Microseconds(static_cast<double>(us) / static_cast<double>(n));
      for (uint64_t i = 0; i < n; ++i) fsync_.Observe(absl::ToDoubleSeconds(fsync));
    }
    const absl::Duration slow = parent_->options_.slow_fsync;
    if (slow > absl::ZeroDuration() && fsync >= slow) {
      if (std::optional<RateLimitedLog::Report> r = slow_fsyncs_.Record(
              absl::Now(), fsync,
              absl::StrCat("shards=", shards, " entries=", entries,
                           " save_ms=", absl::StrFormat("%.1f", Millis(duration))))) {
        spdlog::warn("event=slow_fsync fsync_ms={:.1f} {} slow_fsyncs_since_last_report={}",
                     Millis(r->slowest), r->what, r->count);
      }
    }
  }

  void Register(ShardId shard) { For(shard); }

  void OnSnapshotSent(ShardId shard) override { For(shard).snapshots_sent->Increment(); }
  // `reason` comes from a fixed set in our code: the label stays bounded.
  void OnPeerMessageRefused(const char* reason) override {
    refused_.Add({{"reason", reason}}).Increment();
  }
  void OnShardsAwake(size_t awake, size_t asleep) override {
    shards_by_state_.Add({{"state", "awake"}}).Set(static_cast<double>(awake));
    shards_by_state_.Add({{"state", "asleep"}}).Set(static_cast<double>(asleep));
  }
  // `reason` comes from a fixed set in our code: the label stays bounded.
  void OnShardWoke(const char* reason) override { wakeups_.Add({{"reason", reason}}).Increment(); }
  void OnSnapshotReceived(ShardId shard) override {
    For(shard).snapshots_received->Increment();
    spdlog::info("event=snapshot_installed shard={}", shard);
  }

 private:
  struct PerShard {
    prometheus::Counter* accepted;
    prometheus::Counter* dropped;
    prometheus::Counter* rejected;
    prometheus::Counter* leader_changes;
    prometheus::Counter* snapshots_sent;
    prometheus::Counter* snapshots_received;
  };

  PerShard& For(ShardId shard) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    auto it = shards_.find(shard);
    if (it != shards_.end()) return *it->second;
    const std::string id = ShardLabel(shard);
    auto s = std::make_unique<PerShard>(PerShard{
        &proposals_.Add({{"shard", id}, {"result", "accepted"}}),
        &proposals_.Add({{"shard", id}, {"result", "dropped"}}),
        &proposals_.Add({{"shard", id}, {"result", "rejected"}}),
        &leader_changes_.Add({{"shard", id}}),
        &snapshots_sent_.Add({{"shard", id}}),
        &snapshots_received_.Add({{"shard", id}}),
    });
    return *shards_.emplace(shard, std::move(s)).first->second;
  }

  Metrics* const parent_;
  prometheus::Family<prometheus::Counter>& proposals_;
  prometheus::Family<prometheus::Counter>& leader_changes_;
  prometheus::Family<prometheus::Counter>& snapshots_sent_;
  prometheus::Family<prometheus::Counter>& snapshots_received_;
  prometheus::Family<prometheus::Counter>& refused_;
  prometheus::Family<prometheus::Gauge>& shards_by_state_;
  prometheus::Family<prometheus::Counter>& wakeups_;
  prometheus::Histogram& append_;
  prometheus::Counter& append_entries_;
  prometheus::Histogram& fsync_;
  RateLimitedLog slow_fsyncs_;

  absl::Mutex mu_;
  absl::flat_hash_map<ShardId, std::unique_ptr<PerShard>> shards_ ABSL_GUARDED_BY(mu_);
  uint64_t last_syncs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t last_sync_micros_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------- scrape-time gauges

class Metrics::ScrapeCollector final : public prometheus::Collectable {
 public:
  explicit ScrapeCollector(const Metrics* parent) : parent_(parent) {}

  std::vector<MetricFamily> Collect() const override {
    std::function<std::vector<ShardStatus>()> node_status;
    const storage::Engine* engine;
    std::function<AdmissionStats()> admission;
    std::function<BatchStats()> batch;
    std::function<WatchHubStats()> watch;
    std::function<LeaseKeeper::Stats()> lease;
    std::function<ClusterStats()> cluster;
    {
      absl::MutexLock lock(&parent_->mu_);
      node_status = parent_->node_status_;
      engine = parent_->engine_;
      admission = parent_->admission_;
      batch = parent_->batch_;
      watch = parent_->watch_;
      lease = parent_->lease_;
      cluster = parent_->cluster_;
    }
    std::vector<MetricFamily> out;
    MetricFamily info =
        Family("tessera_node_info", "Constant 1, labelled with this node's id.", MetricType::Gauge);
    AddValue(info, 1, {{"node_id", absl::StrCat(parent_->options_.node_id)}});
    out.push_back(std::move(info));
    if (node_status) CollectRaft(node_status(), out);
    if (engine != nullptr) CollectStorage(*engine, out);
    if (admission) CollectAdmission(admission(), out);
    if (batch) CollectBatch(batch(), out);
    if (watch) CollectWatch(watch(), out);
    if (lease) CollectLeases(lease(), out);
    if (cluster) CollectCluster(cluster(), out);
    AddSingle(out, "tessera_tls_handshake_failures_total",
              "TLS handshakes that failed on either port, either side (no or an untrusted "
              "certificate, plaintext sent to a TLS port).",
              MetricType::Counter, static_cast<double>(TlsHandshakeFailures()));
    return out;
  }

 private:
  static void CollectRaft(const std::vector<ShardStatus>& shards, std::vector<MetricFamily>& out) {
    MetricFamily term =
        Family("tessera_raft_term", "Current raft term of the shard's replica.", MetricType::Gauge);
    MetricFamily role =
        Family("tessera_raft_role", "1 for the replica's current raft role, 0 for the others.",
               MetricType::Gauge);
    MetricFamily has_leader = Family(
        "tessera_raft_has_leader", "1 if the replica knows its shard's leader.", MetricType::Gauge);
    MetricFamily commit = Family("tessera_raft_commit_index", "Highest log index known committed.",
                                 MetricType::Gauge);
    MetricFamily applied =
        Family("tessera_raft_applied_index", "Highest log index applied to the state machine.",
               MetricType::Gauge);
    MetricFamily last = Family("tessera_raft_last_index", "Last index of the replica's raft log.",
                               MetricType::Gauge);
    MetricFamily contact =
        Family("tessera_raft_leader_contact_age_seconds",
               "Seconds since the replica last heard from its leader (0 on the leader).",
               MetricType::Gauge);
    const absl::Time now = absl::Now();
    for (const ShardStatus& s : shards) {
      const std::string id = ShardLabel(s.shard);
      AddValue(term, static_cast<double>(s.term), {{"shard", id}});
      // "stopped": the raft loop failed (the process is exiting).
      for (const char* r : {"leader", "follower", "candidate", "pre-candidate", "stopped"}) {
        AddValue(role, s.role == r ? 1 : 0, {{"role", r}, {"shard", id}});
      }
      AddValue(has_leader, s.leader != 0 ? 1 : 0, {{"shard", id}});
      AddValue(commit, static_cast<double>(s.commit_index), {{"shard", id}});
      AddValue(applied, static_cast<double>(s.applied_index), {{"shard", id}});
      AddValue(last, static_cast<double>(s.last_index), {{"shard", id}});
      const absl::Duration age = s.last_leader_contact == absl::InfinitePast()
                                     ? absl::InfiniteDuration()
                                     : std::max(absl::ZeroDuration(), now - s.last_leader_contact);
      AddValue(contact, age == absl::InfiniteDuration() ? -1 : absl::ToDoubleSeconds(age),
               {{"shard", id}});
    }
    for (MetricFamily* f : {&term, &role, &has_leader, &commit, &applied, &last, &contact}) {
      out.push_back(std::move(*f));
    }
  }

  static void CollectCluster(const ClusterStats& c, std::vector<MetricFamily>& out) {
    auto gauge = [&out](const char* name, const char* help, uint64_t value) {
      MetricFamily f = Family(name, help, MetricType::Gauge);
      AddValue(f, static_cast<double>(value));
      out.push_back(std::move(f));
    };
    auto counter = [&out](const char* name, const char* help, uint64_t value) {
      MetricFamily f = Family(name, help, MetricType::Counter);
      AddValue(f, static_cast<double>(value));
      out.push_back(std::move(f));
    };
    gauge("tessera_cluster_map_version", "Version of the cluster map this node serves by.",
          c.map_version);
    gauge("tessera_cluster_members", "Members in the cluster map.", c.members);
    gauge("tessera_cluster_leaving_members", "Members being decommissioned.", c.leaving_members);
    gauge("tessera_cluster_replica_moves", "Replica moves in progress (cluster map).",
          c.moves_in_progress);
    gauge("tessera_cluster_under_replicated_shards",
          "Shards with fewer voters than the replication factor or a voter on a leaving member.",
          c.under_replicated_shards);
    counter("tessera_scheduler_moves_started_total",
            "Replica moves this node's scheduler started (balancing, decommission, dead members).",
            c.moves_started);
    counter("tessera_scheduler_moves_completed_total",
            "Replica moves this node's scheduler recorded as done.", c.moves_completed);
    gauge("tessera_cluster_shards", "Shards in the cluster map (splits add shards).", c.shards);
    counter("tessera_scheduler_splits_completed_total",
            "Shard splits this node's scheduler recorded as done.", c.splits_completed);
  }

  static void CollectAdmission(const AdmissionStats& a, std::vector<MetricFamily>& out) {
    auto add = [&out](std::string name, std::string help, MetricType type, uint64_t value) {
      AddSingle(out, std::move(name), std::move(help), type, static_cast<double>(value));
    };
    add("tessera_admission_inflight_bytes",
        "Client request bytes admitted and not yet answered (--max-inflight-bytes).",
        MetricType::Gauge, a.in_flight_bytes);
    add("tessera_admission_limit_bytes", "The budget of request bytes in flight (0: none).",
        MetricType::Gauge, a.limit_bytes);
    add("tessera_admission_admitted_total", "Client requests admitted by the byte budget.",
        MetricType::Counter, a.admitted_total);
    add("tessera_admission_rejected_total",
        "Client requests refused with RESOURCE_EXHAUSTED: the byte budget was full.",
        MetricType::Counter, a.rejected_total);
    add("tessera_admission_rejected_for_deadline_total",
        "Of those: refused because the bytes ahead of it would not be done before its deadline "
        "at the node's recent rate.",
        MetricType::Counter, a.rejected_deadline_total);
  }

  static void CollectWatch(const WatchHubStats& w, std::vector<MetricFamily>& out) {
    auto add = [&out](std::string name, std::string help, MetricType type, uint64_t value) {
      AddSingle(out, std::move(name), std::move(help), type, static_cast<double>(value));
    };
    add("tessera_watchers", "Watchers (KV.Watch watches) registered on this node.",
        MetricType::Gauge, w.watchers);
    add("tessera_watchers_catching_up",
        "Of them, watchers reading the history before they get live events.", MetricType::Gauge,
        w.catching_up);
    add("tessera_watch_queued_bytes",
        "Bytes of events queued for this node's watchers (bounded by --max-watch-bytes).",
        MetricType::Gauge, w.queued_bytes);
    add("tessera_watch_events_sent_total", "Events sent to watchers.", MetricType::Counter,
        w.events_sent_total);
    add("tessera_watch_slow_cancelled_total",
        "Watchers ended because they fell behind (--max-watcher-bytes, --max-watch-bytes); "
        "clients resume them.",
        MetricType::Counter, w.slow_cancelled_total);
    add("tessera_watch_compacted_total",
        "Watches refused because their start revision was compacted (OUT_OF_RANGE).",
        MetricType::Counter, w.compacted_total);
  }

  static void CollectLeases(const LeaseKeeper::Stats& l, std::vector<MetricFamily>& out) {
    auto add = [&out](std::string name, std::string help, MetricType type, uint64_t value) {
      AddSingle(out, std::move(name), std::move(help), type, static_cast<double>(value));
    };
    add("tessera_leases", "Live leases, on the node leading the metadata group (0 on the others).",
        MetricType::Gauge, l.live);
    add("tessera_leases_granted_total", "Leases granted while this node led the metadata group.",
        MetricType::Counter, l.granted_total);
    add("tessera_leases_expired_total",
        "Leases that expired (not renewed within their TTL) while this node led the metadata "
        "group.",
        MetricType::Counter, l.expired_total);
    add("tessera_leases_revoked_total", "Leases ended by Lease.Revoke on this node.",
        MetricType::Counter, l.revoked_total);
    add("tessera_lease_keepalives_total", "Lease renewals acknowledged by this node.",
        MetricType::Counter, l.keepalives_total);
  }

  static void CollectBatch(const BatchStats& b, std::vector<MetricFamily>& out) {
    auto add = [&out](std::string name, std::string help, MetricType type, uint64_t value) {
      AddSingle(out, std::move(name), std::move(help), type, static_cast<double>(value));
    };
    add("tessera_kv_batch_streams_open", "KV.Batch streams open.", MetricType::Gauge,
        b.streams_open);
    add("tessera_kv_batch_messages_total", "BatchRequest messages read on KV.Batch streams.",
        MetricType::Counter, b.messages_total);
    add("tessera_kv_batch_responses_total", "BatchResponse messages written on KV.Batch streams.",
        MetricType::Counter, b.responses_total);
    add("tessera_kv_batch_invalid_messages_total",
        "KV.Batch messages that did not decode (the stream ended with INVALID_ARGUMENT).",
        MetricType::Counter, b.invalid_messages_total);
    add("tessera_kv_batch_invalid_ops_total",
        "KV.Batch operations refused with INVALID_ARGUMENT by the batch limits "
        "(--max-batch-ops, --max-batch-bytes) or for having no op.",
        MetricType::Counter, b.invalid_ops_total);
    add("tessera_kv_batch_results_dropped_total",
        "Results of KV.Batch operations that completed after their stream ended.",
        MetricType::Counter, b.results_dropped_total);
    MetricFamily ops = Family("tessera_kv_batch_message_ops", "Operations per KV.Batch message.",
                              MetricType::Histogram);
    ClientMetric m;
    m.histogram.sample_count = b.messages_total;
    m.histogram.sample_sum = static_cast<double>(b.ops_total);
    for (size_t i = 0; i < std::size(BatchStats::kOpsBuckets); ++i) {
      m.histogram.bucket.push_back(
          {b.ops_per_message_le[i], static_cast<double>(BatchStats::kOpsBuckets[i])});
    }
    m.histogram.bucket.push_back({b.messages_total, std::numeric_limits<double>::infinity()});
    ops.metric.push_back(std::move(m));
    out.push_back(std::move(ops));
  }

  static void CollectStorage(const storage::Engine& engine, std::vector<MetricFamily>& out) {
    absl::StatusOr<storage::Engine::Stats> st = engine.GetStats();
    if (!st.ok()) return;
    auto add = [&out](std::string name, std::string help, MetricType type, double value) {
      AddSingle(out, std::move(name), std::move(help), type, value);
    };
    auto d = [](uint64_t v) { return static_cast<double>(v); };
    add("tessera_storage_live_data_bytes", "Estimated live data in RocksDB SST files.",
        MetricType::Gauge, d(st->live_data_bytes));
    add("tessera_storage_sst_files_bytes", "Size of all RocksDB SST files (disk usage).",
        MetricType::Gauge, d(st->sst_files_bytes));
    add("tessera_storage_memtable_bytes", "Bytes held by RocksDB memtables.", MetricType::Gauge,
        d(st->memtable_bytes));
    add("tessera_storage_pending_compaction_bytes",
        "Estimated bytes RocksDB compaction still has to rewrite.", MetricType::Gauge,
        d(st->pending_compaction_bytes));
    add("tessera_storage_block_cache_hits_total", "RocksDB block cache hits.", MetricType::Counter,
        d(st->block_cache_hits));
    add("tessera_storage_block_cache_misses_total", "RocksDB block cache misses.",
        MetricType::Counter, d(st->block_cache_misses));
    const uint64_t lookups = st->block_cache_hits + st->block_cache_misses;
    add("tessera_storage_block_cache_hit_ratio",
        "Block cache hits / lookups since start (rate the counters for a windowed ratio).",
        MetricType::Gauge, lookups == 0 ? 0 : d(st->block_cache_hits) / d(lookups));
    add("tessera_storage_write_stall_seconds_total",
        "Time RocksDB delayed or stopped writes (write stalls).", MetricType::Counter,
        d(st->write_stall_micros) / 1e6);
    add("tessera_storage_write_slowdowns_total", "RocksDB write slowdown events.",
        MetricType::Counter, d(st->write_slowdowns));
    add("tessera_storage_write_stops_total", "RocksDB write stop events.", MetricType::Counter,
        d(st->write_stops));
    add("tessera_storage_write_stopped", "1 while RocksDB stops writes.", MetricType::Gauge,
        st->write_stopped ? 1 : 0);
    add("tessera_storage_wal_written_bytes_total", "Bytes written to the RocksDB WAL.",
        MetricType::Counter, d(st->wal_bytes));
    add("tessera_storage_wal_fsyncs_total", "RocksDB WAL fsyncs.", MetricType::Counter,
        d(st->wal_syncs));
  }

  const Metrics* const parent_;
};

// ---------------------------------------------------------------- gRPC

namespace {

class RpcInterceptor final : public grpc::experimental::Interceptor {
 public:
  RpcInterceptor(Metrics* metrics, const char* method)
      : metrics_(metrics), method_(method == nullptr ? "" : method), start_(absl::Now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->ObserveRpc(method_, methods->GetSendStatus().error_code(), absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  Metrics* const metrics_;
  const std::string method_;
  const absl::Time start_;
};

}  // namespace

class Metrics::GrpcInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit GrpcInterceptorFactory(Metrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcInterceptor(metrics_, info->method());
  }

 private:
  Metrics* const metrics_;
};

// ---------------------------------------------------------------- Metrics

Metrics::Metrics(const MetricsOptions& options)
    : options_(options),
      registry_(std::make_shared<prometheus::Registry>()),
      process_(std::make_unique<ProcessCollector>(options.proc_root)),
      scrape_(std::make_unique<ScrapeCollector>(this)),
      slow_requests_(options.slow_log_interval) {
  rpc_handled_ = &prometheus::BuildCounter()
                      .Name("tessera_grpc_server_handled_total")
                      .Help("Client RPCs completed, by service, method and gRPC status code.")
                      .Register(*registry_);
  rpc_seconds_ = &prometheus::BuildHistogram()
                      .Name("tessera_grpc_server_handling_seconds")
                      .Help("Client RPC latency (metadata received to status sent), by method.")
                      .Register(*registry_);
  open_connections_ = &prometheus::BuildGauge()
                           .Name("tessera_grpc_server_open_connections")
                           .Help("Connections open on the gRPC port (client or peer).")
                           .Register(*registry_);
  max_connections_ = &prometheus::BuildGauge()
                          .Name("tessera_grpc_server_max_connections")
                          .Help("Open connections allowed on the gRPC port; more are refused.")
                          .Register(*registry_);
  refused_connections_ = &prometheus::BuildCounter()
                              .Name("tessera_grpc_server_refused_connections_total")
                              .Help("Connections closed at accept: the port was at its cap.")
                              .Register(*registry_);
  node_hooks_ = std::make_unique<NodeHooks>(this, *registry_);
}

Metrics::~Metrics() = default;

NodeMetrics* Metrics::node_metrics() { return node_hooks_.get(); }

void Metrics::RegisterShards(const std::vector<ShardId>& shards) {
  for (ShardId shard : shards) node_hooks_->Register(shard);
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
Metrics::NewGrpcInterceptorFactory() {
  return std::make_unique<GrpcInterceptorFactory>(this);
}

void Metrics::ObserveRpc(absl::string_view full_method, grpc::StatusCode code,
                         absl::Duration duration) {
  std::string service = "unknown";
  std::string method = "unknown";
  if (KnownMethods().contains(full_method)) {
    absl::string_view m = full_method.substr(1);
    const size_t slash = m.find('/');
    service = std::string(m.substr(0, slash));
    method = std::string(m.substr(slash + 1));
  }
  rpc_handled_
      ->Add({{"grpc_service", service}, {"grpc_method", method}, {"grpc_code", GrpcCodeName(code)}})
      .Increment();
  rpc_seconds_->Add({{"grpc_service", service}, {"grpc_method", method}}, RequestBuckets())
      .Observe(absl::ToDoubleSeconds(duration));
  const absl::Duration slow = options_.slow_request;
  // Watch is a long poll and Batch a long-lived stream by design: never
  // "slow" (a batched operation is observed as its own method).
  if (slow > absl::ZeroDuration() && duration >= slow && method != "Watch" && method != "Batch") {
    if (std::optional<RateLimitedLog::Report> r = slow_requests_.Record(
            absl::Now(), duration,
            absl::StrCat("method=", service, "/", method, " code=", GrpcCodeName(code)))) {
      spdlog::warn("event=slow_request duration_ms={:.1f} {} slow_requests_since_last_report={}",
                   Millis(r->slowest), r->what, r->count);
    }
  }
}

std::function<void(uint64_t, uint64_t)> Metrics::ConnectionReporter(const std::string& port,
                                                                    uint64_t max_connections) {
  prometheus::Gauge& open = open_connections_->Add({{"port", port}});
  max_connections_->Add({{"port", port}}).Set(static_cast<double>(max_connections));
  prometheus::Counter& refused = refused_connections_->Add({{"port", port}});
  auto reported = std::make_shared<std::atomic<uint64_t>>(0);
  return [&open, &refused, reported](uint64_t open_now, uint64_t refused_total) {
    open.Set(static_cast<double>(open_now));
    const uint64_t before = reported->exchange(refused_total);
    if (refused_total > before) refused.Increment(static_cast<double>(refused_total - before));
  };
}

void Metrics::SetNodeStatusSource(std::function<std::vector<ShardStatus>()> source) {
  absl::MutexLock lock(&mu_);
  node_status_ = std::move(source);
}

void Metrics::SetAdmissionSource(std::function<AdmissionStats()> source) {
  absl::MutexLock lock(&mu_);
  admission_ = std::move(source);
}

void Metrics::SetClusterSource(std::function<ClusterStats()> source) {
  absl::MutexLock lock(&mu_);
  cluster_ = std::move(source);
}

void Metrics::SetBatchSource(std::function<BatchStats()> source) {
  absl::MutexLock lock(&mu_);
  batch_ = std::move(source);
}

void Metrics::SetWatchSource(std::function<WatchHubStats()> source) {
  absl::MutexLock lock(&mu_);
  watch_ = std::move(source);
}

void Metrics::SetLeaseSource(std::function<LeaseKeeper::Stats()> source) {
  absl::MutexLock lock(&mu_);
  lease_ = std::move(source);
}

void Metrics::SetEngine(const storage::Engine* engine) {
  absl::MutexLock lock(&mu_);
  engine_ = engine;
}

std::vector<MetricFamily> Metrics::Collect() const {
  std::vector<MetricFamily> out = registry_->Collect();
  for (const prometheus::Collectable* c :
       {static_cast<const prometheus::Collectable*>(scrape_.get()),
        static_cast<const prometheus::Collectable*>(process_.get())}) {
    std::vector<MetricFamily> more = c->Collect();
    std::move(more.begin(), more.end(), std::back_inserter(out));
  }
  return out;
}

std::string Metrics::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, Collect());
  return out.str();
}

MetricsHttpServer::Handler MetricsHandler(const Metrics* metrics) {
  return [metrics] {
    return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", metrics->Serialize()};
  };
}

}  // namespace tessera::server
