// tessera-server: one node of a Tessera cluster.
//
//   tessera-server --node-id=1 --data-dir=/var/lib/tessera
//     --initial-cluster=1=10.0.0.1:7001/10.0.0.1:7101,2=...,3=...
//
// Startup, one log line per step: parse flags (and --config), build the
// cluster map, open the storage engine, create the state machine, start the
// peer transport and its service (--peer-listen), start the Node (every
// shard replica this node hosts), start the client API (--listen), write
// --port-file. Then it serves until SIGTERM or SIGINT, and drains: hands
// shard leadership to other replicas, refuses new calls (UNAVAILABLE) and
// finishes in-flight ones (each step bounded by --drain-timeout-ms), closes
// the client API, stops the Node, the peer
// service and the transport, closes the engine and exits 0.
//
// The client API answers UNAVAILABLE until the cluster map has been loaded
// from the metadata group (meta_group.h: bootstrapped by its first leader
// with the map computed from the flags). If the stored map differs from the
// flags' map, the node logs one "refusing to serve" line and exits 2.
//
// Exit codes: 0 after a clean drain; 1 when startup fails (storage, ports);
// 2 for bad flags (one line on stderr) or a map that conflicts with the
// metadata group's; 3 when storage fails (the raft loop stopped on a
// storage error, or the disk is full, at start too), after one "fatal: ..."
// line. kill -9 is safe at any point: every acknowledged write is durable in
// the engine's WAL before it is acknowledged.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/status_macros.h"
#include "server/api/kv_service.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/meta_group.h"
#include "server/kv/node_backend.h"
#include "server/kv/state_machine.h"
#include "server/observability/health.h"
#include "server/observability/metrics.h"
#include "server/raftstore/log_prefix.h"
#include "server/raftstore/node.h"
#include "server/raftstore/snapshot_stream.h"
#include "server/security/data_dir_identity.h"
#include "server/security/peer_registry.h"
#include "server/security/peer_tls.h"
#include "server/transport/grpc_server.h"
#include "server/transport/grpc_transport.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"
#include "storage/engine.h"
#include "tessera/peer.grpc.pb.h"

ABSL_FLAG(uint64_t, node_id, 0, "this node's id in --initial-cluster (required)");
ABSL_FLAG(std::string, data_dir, "", "directory of this node's RocksDB (required)");
ABSL_FLAG(std::string, initial_cluster, "",
          "members: <id>=<client host:port>/<peer host:port>,... (required)");
ABSL_FLAG(std::string, listen, "",
          "host:port of the client API (default: this member's client address)");
ABSL_FLAG(std::string, peer_listen, "",
          "host:port of the peer service (default: this member's peer address)");
ABSL_FLAG(uint32_t, shards, tessera::server::kDefaultNumShards, "number of shards");
ABSL_FLAG(uint32_t, replication, tessera::server::kDefaultReplication,
          "replicas per shard (capped at the member count)");
ABSL_FLAG(std::string, config, "",
          "optional file of key=value lines with the same keys as these flags; flags override");
ABSL_FLAG(uint32_t, tick_ms, 50, "raft tick interval in milliseconds");
ABSL_FLAG(uint32_t, election_ticks, 20, "raft election timeout in ticks");
ABSL_FLAG(uint64_t, max_key_bytes, 4096, "largest key accepted");
ABSL_FLAG(uint64_t, max_value_bytes, 1 << 20, "largest value accepted");
ABSL_FLAG(uint32_t, drain_timeout_ms, 5000,
          "on SIGTERM: time to hand off leadership, and then to finish in-flight calls");
ABSL_FLAG(uint64_t, snapshot_interval_entries, 10000,
          "compact a shard's raft log after this many applied entries (lagging replicas then "
          "catch up by snapshot)");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:0",
          "host:port of the HTTP server for /metrics, /healthz and /readyz (port 0: any free "
          "port, written to --port-file as metrics_port; empty: no HTTP server)");
ABSL_FLAG(bool, node_id_from_hostname, false,
          "derive the node id from the hostname: 1 + the number after its last '-' (the "
          "Kubernetes StatefulSet pod tessera-0 is node 1); excludes --node-id");
ABSL_FLAG(uint32_t, slow_request_ms, 1000,
          "log client requests slower than this, at most once per 10 s (0: never)");
ABSL_FLAG(uint32_t, slow_fsync_ms, 500,
          "log WAL fsyncs slower than this, at most once per 10 s (0: never)");
ABSL_FLAG(std::string, log_level, "info", "debug, info, warn or error");
ABSL_FLAG(std::string, peer_cert, "",
          "PEM certificate of this member for the peer port (common name node-<id>, signed by "
          "--peer-ca; deploy/gen-certs.sh makes them); {id} is replaced by the node id");
ABSL_FLAG(std::string, peer_key, "", "PEM private key of --peer-cert; {id} as there");
ABSL_FLAG(std::string, peer_ca, "", "PEM certificate of the cluster CA that signs every member");
ABSL_FLAG(bool, insecure_peers, false,
          "plaintext peer port without authentication: anyone who reaches it can rewrite or "
          "erase data (logged as a warning on every start)");
ABSL_FLAG(uint32_t, max_inbound_snapshots, 2, "snapshots received at once; more wait");
ABSL_FLAG(uint64_t, max_snapshot_bytes, 1ull << 30, "largest snapshot accepted from a peer");
ABSL_FLAG(uint32_t, snapshot_idle_timeout_ms, 30000,
          "cut an inbound snapshot that sends nothing for this long");
// ---- fail-stop (issue 12) ----
ABSL_FLAG(uint64_t, min_free_disk_bytes, 256ull << 20,
          "refuse writes, and exit (code 3) or refuse to start, while less than this is free on "
          "the --data-dir filesystem: RocksDB must never hit a full disk (0: no check)");
// ---- end fail-stop ----
// ---- Admission control and clear answers (issue 12) ----
ABSL_FLAG(uint64_t, max_inflight_bytes, 64 << 20,
          "node-wide budget of client request bytes in flight; beyond it requests get "
          "RESOURCE_EXHAUSTED with a retry-after hint (0: no limit)");
// ---- end admission control ----
ABSL_FLAG(std::string, port_file, "",
          "if set, written after startup: client_port=<port> and peer_port=<port> lines");
// Resource bounds (issue 12): connection caps per port, sized with storage's
// open files from the file limit (raised to the hard limit at start).
ABSL_FLAG(uint64_t, max_client_connections, 0,
          "open connections on the client port; more are refused at accept (0: derived from "
          "the file limit)");
ABSL_FLAG(uint64_t, max_peer_connections, 0,
          "open connections on the peer port; more are refused at accept (0: derived from the "
          "file limit)");

namespace tessera::server {
namespace {

constexpr char kUsage[] =
    "usage: tessera-server --node-id=N --data-dir=DIR --initial-cluster=ID=CLIENT/PEER,...\n"
    "  [--listen=HOST:PORT] [--peer-listen=HOST:PORT] [--shards=16] [--replication=3]\n"
    "  [--config=FILE] [--tick-ms=50] [--election-ticks=20] [--max-key-bytes=4096]\n"
    "  [--max-value-bytes=1048576] [--drain-timeout-ms=5000] [--port-file=FILE]\n"
    "  [--snapshot-interval-entries=10000] [--metrics-listen=127.0.0.1:0]\n"
    "  [--node-id-from-hostname=false] [--slow-request-ms=1000] [--slow-fsync-ms=500]\n"
    "  [--log-level=info] [--min-free-disk-bytes=268435456]\n"
    "  [--max-client-connections=0] [--max-peer-connections=0]\n"
    "  --peer-cert=FILE --peer-key=FILE --peer-ca=FILE | --insecure-peers\n"
    "  [--max-inbound-snapshots=2] [--max-snapshot-bytes=1073741824]\n"
    "  [--snapshot-idle-timeout-ms=30000]\n"
    "  [--max-inflight-bytes=67108864]\n"
    "Flag names take '-' or '_'. --config holds key=value lines (same keys, '#' comments).\n";

// Sets flag `name` (dashes allowed) to `value`.
absl::Status SetFlag(std::string name, const std::string& value, std::set<std::string>* seen) {
  name = absl::StrReplaceAll(name, {{"-", "_"}});
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  static const std::set<std::string> kOurs = {"node_id",
                                              "data_dir",
                                              "initial_cluster",
                                              "listen",
                                              "peer_listen",
                                              "shards",
                                              "replication",
                                              "config",
                                              "tick_ms",
                                              "election_ticks",
                                              "max_key_bytes",
                                              "max_value_bytes",
                                              "drain_timeout_ms",
                                              "port_file",
                                              "snapshot_interval_entries",
                                              "metrics_listen",
                                              "node_id_from_hostname",
                                              "slow_request_ms",
                                              "slow_fsync_ms",
                                              "log_level",
                                              "peer_cert",
                                              "peer_key",
                                              "peer_ca",
                                              "insecure_peers",
                                              "max_inbound_snapshots",
                                              "max_snapshot_bytes",
                                              "snapshot_idle_timeout_ms",
                                              "max_client_connections",
                                              "max_peer_connections",
                                              "min_free_disk_bytes",
                                              "max_inflight_bytes"};
  if (flag == nullptr || kOurs.count(name) == 0) {
    return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
  }
  std::string error;
  if (!flag->ParseFrom(value, &error)) {
    return absl::InvalidArgumentError(absl::StrCat("bad value '", value, "' for --", name, ": ",
                                                   absl::StripAsciiWhitespace(error)));
  }
  if (seen != nullptr) seen->insert(name);
  return absl::OkStatus();
}

// Parses argv, then --config for what argv did not set. --help exits 0.
absl::Status ParseFlags(int argc, char** argv) {
  std::set<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h" || arg == "-help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    }
    std::string name = arg.substr(2);
    std::string value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
    }
    TESSERA_RETURN_IF_ERROR(SetFlag(name, value, &seen));
  }
  const std::string config = absl::GetFlag(FLAGS_config);
  if (config.empty()) return absl::OkStatus();
  std::ifstream in(config);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read --config ", config));
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    size_t eq = text.find('=');
    if (eq == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(config, ":", number, ": expected key=value, got '", text, "'"));
    }
    std::string key =
        absl::StrReplaceAll(absl::StripAsciiWhitespace(text.substr(0, eq)), {{"-", "_"}});
    std::string value(absl::StripAsciiWhitespace(text.substr(eq + 1)));
    if (key == "config") {
      return absl::InvalidArgumentError(absl::StrCat(config, ":", number, ": nested config"));
    }
    if (seen.count(key)) continue;  // the command line wins
    absl::Status s = SetFlag(key, value, nullptr);
    if (!s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(config, ":", number, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

struct Config {
  NodeId node_id = 0;
  std::string data_dir;
  std::string listen;
  std::string peer_listen;
  std::string metrics_listen;
  spdlog::level::level_enum log_level = spdlog::level::info;
  ClusterMap map;
  security::PeerTlsFiles peer_tls;  // empty with --insecure-peers
  FdBudget fds;
};

// The node id of --node-id-from-hostname: 1 + the number after the last '-'
// of `hostname` ("tessera-0" -> 1).
absl::StatusOr<NodeId> NodeIdFromHostname(const std::string& hostname) {
  const size_t dash = hostname.rfind('-');
  uint64_t ordinal = 0;
  if (dash == std::string::npos ||
      !absl::SimpleAtoi(absl::string_view(hostname).substr(dash + 1), &ordinal) ||
      ordinal >= (uint64_t{1} << 62)) {
    return absl::InvalidArgumentError(absl::StrCat("--node-id-from-hostname: hostname '", hostname,
                                                   "' does not end in -<number>"));
  }
  return ordinal + 1;
}

absl::StatusOr<Config> Validate() {
  NodeId id = absl::GetFlag(FLAGS_node_id);
  if (absl::GetFlag(FLAGS_node_id_from_hostname)) {
    if (id != 0) {
      return absl::InvalidArgumentError("--node-id and --node-id-from-hostname exclude each other");
    }
    char hostname[256] = {0};
    if (gethostname(hostname, sizeof(hostname) - 1) != 0) {
      return absl::InvalidArgumentError("--node-id-from-hostname: cannot read the hostname");
    }
    absl::StatusOr<NodeId> from_hostname = NodeIdFromHostname(hostname);
    if (!from_hostname.ok()) return from_hostname.status();
    id = *from_hostname;
  }
  if (id == 0) return absl::InvalidArgumentError("--node-id is required (non-zero)");
  const spdlog::level::level_enum log_level =
      spdlog::level::from_str(absl::GetFlag(FLAGS_log_level));
  if (log_level == spdlog::level::off && absl::GetFlag(FLAGS_log_level) != "off") {
    return absl::InvalidArgumentError("--log-level must be debug, info, warn or error");
  }
  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  if (data_dir.empty()) return absl::InvalidArgumentError("--data-dir is required");
  if (absl::GetFlag(FLAGS_initial_cluster).empty()) {
    return absl::InvalidArgumentError("--initial-cluster is required");
  }
  if (absl::GetFlag(FLAGS_tick_ms) < 1 || absl::GetFlag(FLAGS_tick_ms) > 10000) {
    return absl::InvalidArgumentError("--tick-ms must be in [1, 10000]");
  }
  if (absl::GetFlag(FLAGS_election_ticks) < 2 || absl::GetFlag(FLAGS_election_ticks) > 1000) {
    return absl::InvalidArgumentError("--election-ticks must be in [2, 1000]");
  }
  if (absl::GetFlag(FLAGS_max_key_bytes) < 1 || absl::GetFlag(FLAGS_max_key_bytes) > (1 << 20)) {
    return absl::InvalidArgumentError("--max-key-bytes must be in [1, 1048576]");
  }
  if (absl::GetFlag(FLAGS_snapshot_interval_entries) < 1) {
    return absl::InvalidArgumentError("--snapshot-interval-entries must be at least 1");
  }
  if (absl::GetFlag(FLAGS_max_value_bytes) > (64 << 20)) {
    return absl::InvalidArgumentError("--max-value-bytes must be at most 67108864");
  }
  absl::StatusOr<ClusterMap> map =
      ClusterMap::Parse(absl::GetFlag(FLAGS_initial_cluster), absl::GetFlag(FLAGS_shards),
                        absl::GetFlag(FLAGS_replication));
  if (!map.ok()) return map.status();
  const MemberInfo* self = map->FindMember(id);
  if (self == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--node-id ", id, " is not a member of --initial-cluster"));
  }
  Config config{.node_id = id,
                .data_dir = data_dir,
                .listen = absl::GetFlag(FLAGS_listen),
                .peer_listen = absl::GetFlag(FLAGS_peer_listen),
                .map = *std::move(map)};
  if (config.listen.empty()) config.listen = self->client_address;
  if (config.peer_listen.empty()) config.peer_listen = self->peer_address;
  for (const std::string* address : {&config.listen, &config.peer_listen}) {
    TESSERA_RETURN_IF_ERROR(ValidateHostPort(*address));
  }
  config.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  if (!config.metrics_listen.empty())
    TESSERA_RETURN_IF_ERROR(ValidateHostPort(config.metrics_listen));
  config.log_level = log_level;
  // "{id}" lets one configuration serve every node (e.g. Kubernetes pods).
  const std::string id_text = absl::StrCat(id);
  config.peer_tls = {
      .cert = absl::StrReplaceAll(absl::GetFlag(FLAGS_peer_cert), {{"{id}", id_text}}),
      .key = absl::StrReplaceAll(absl::GetFlag(FLAGS_peer_key), {{"{id}", id_text}}),
      .ca = absl::GetFlag(FLAGS_peer_ca)};
  const bool any_tls =
      !config.peer_tls.cert.empty() || !config.peer_tls.key.empty() || !config.peer_tls.ca.empty();
  if (absl::GetFlag(FLAGS_insecure_peers)) {
    if (any_tls) {
      return absl::InvalidArgumentError(
          "--insecure-peers excludes --peer-cert/--peer-key/--peer-ca");
    }
  } else if (config.peer_tls.cert.empty() || config.peer_tls.key.empty() ||
             config.peer_tls.ca.empty()) {
    return absl::InvalidArgumentError(
        "the peer port needs --peer-cert, --peer-key and --peer-ca (deploy/gen-certs.sh makes "
        "them), or --insecure-peers to run it without authentication");
  }
  if (absl::GetFlag(FLAGS_max_inbound_snapshots) < 1 ||
      absl::GetFlag(FLAGS_snapshot_idle_timeout_ms) < 1) {
    return absl::InvalidArgumentError(
        "--max-inbound-snapshots and --snapshot-idle-timeout-ms must be at least 1");
  }
  absl::StatusOr<uint64_t> file_limit = RaiseFileLimit();
  if (!file_limit.ok()) return file_limit.status();
  absl::StatusOr<FdBudget> fds =
      PlanFdBudget(*file_limit, absl::GetFlag(FLAGS_max_client_connections),
                   absl::GetFlag(FLAGS_max_peer_connections));
  if (!fds.ok()) return fds.status();
  config.fds = *fds;
  return config;
}

// Writes `content` to `path` atomically (temp file + rename).
absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", temp));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot rename ", temp, " to ", path));
  }
  return absl::OkStatus();
}

// Reads the map stored in the metadata group from the members holding a
// replica of it (for a node without one): their Cluster.NodeStatus
// stored_map. nullopt if a member answered without one; kUnavailable if
// none answered.
MetaGroup::RemoteReader RemoteMapReader(const ClusterMap& map) {
  std::vector<std::shared_ptr<v1::Cluster::Stub>> stubs;
  for (NodeId id : map.meta_replicas()) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    stubs.push_back(v1::Cluster::NewStub(grpc::CreateCustomChannel(
        map.FindMember(id)->client_address, grpc::InsecureChannelCredentials(), args)));
  }
  return [stubs]() -> absl::StatusOr<std::optional<std::string>> {
    bool answered = false;
    for (const auto& stub : stubs) {
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
      v1::NodeStatusResponse status;
      if (!stub->NodeStatus(&context, {}, &status).ok()) continue;
      answered = true;
      if (status.has_stored_map())
        return std::optional<std::string>(status.stored_map().SerializeAsString());
    }
    if (answered) return std::optional<std::string>();
    return absl::UnavailableError("no member of the metadata group answered");
  };
}

// For a data directory created just now (a new member, or one whose data is
// gone): asks every reachable peer whether it knows this member under
// another incarnation. kFailedPrecondition (the line to log) if one does;
// peers that do not answer are skipped (they refuse the member later if they
// know it, see PeerRegistry).
absl::Status CheckNotReplaced(const Config& config, uint64_t incarnation,
                              const security::PeerCredentials& credentials) {
  for (const MemberInfo& m : config.map.members()) {
    if (m.id == config.node_id) continue;
    grpc::ChannelArguments args;
    credentials.ConfigureChannelTo(m.id, &args);
    std::unique_ptr<peerpb::Peer::Stub> stub = peerpb::Peer::NewStub(
        grpc::CreateCustomChannel(m.peer_address, credentials.channel(), args));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    peerpb::HelloRequest request;
    request.set_from_node(config.node_id);
    request.set_incarnation(incarnation);
    peerpb::HelloResponse response;
    if (!stub->Hello(&context, request, &response).ok()) continue;
    const uint64_t known = response.known_incarnation();
    if (known != 0 && known != incarnation) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the data directory ", config.data_dir, " is new, but node ", m.id, " knows node ",
          config.node_id, " from an earlier one (incarnation ", known,
          "): this node's data is gone, and rejoining under its old identity could lose "
          "acknowledged writes; restore its data directory, or remove the member and add a new "
          "one"));
    }
  }
  return absl::OkStatus();
}

// Set by the MetaGroup or the transport (then SIGUSR1 wakes the main
// thread): why this node refuses to serve.
absl::Mutex refusal_mu;
absl::Status refusal ABSL_GUARDED_BY(refusal_mu);

// ---- fail-stop (issue 12) ----
// Set by NodeOptions::on_fatal (then SIGUSR2 wakes the main thread): the
// storage error that stopped the raft loop.
constexpr int kExitStorageFailure = 3;
absl::Mutex fatal_mu;
absl::Status fatal ABSL_GUARDED_BY(fatal_mu);

// Logs the one line saying why and exits at once: closing RocksDB after an
// I/O error may trip its assertions (Debian's build keeps them), and nothing
// needs closing: every acknowledged write is in the WAL, as after kill -9.
[[noreturn]] void ExitOnStorageFailure(const absl::Status& why) {
  spdlog::critical("fatal: {}; exiting with code {}", why.ToString(), kExitStorageFailure);
  spdlog::default_logger()->flush();
  std::_Exit(kExitStorageFailure);
}
// ---- end fail-stop ----

int Run(const Config& config, const sigset_t& signals) {
  const ClusterMap& map = config.map;
  const std::vector<ShardId> hosted = map.ShardsOf(config.node_id);
  const bool hosts_meta = map.HostsMeta(config.node_id);
  spdlog::info(
      "cluster map from flags: {} members, {} shards, replication {}, epoch {}; node {} hosts {} "
      "shards{}",
      map.members().size(), map.num_shards(), map.replication(), map.epoch(), config.node_id,
      hosted.size(), hosts_meta ? " and a replica of the metadata group" : "");

  // Metrics and health first: /healthz answers while the node starts.
  MetricsOptions metrics_options;
  metrics_options.node_id = config.node_id;
  metrics_options.slow_request = absl::Milliseconds(absl::GetFlag(FLAGS_slow_request_ms));
  metrics_options.slow_fsync = absl::Milliseconds(absl::GetFlag(FLAGS_slow_fsync_ms));
  Metrics metrics(metrics_options);
  ReadinessOptions readiness;
  readiness.max_leader_silence = 2 * absl::Milliseconds(absl::GetFlag(FLAGS_tick_ms)) *
                                 static_cast<int64_t>(absl::GetFlag(FLAGS_election_ticks));
  HealthMonitor health(readiness);
  std::unique_ptr<MetricsHttpServer> http;
  if (!config.metrics_listen.empty()) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(config.metrics_listen, {{"/metrics", MetricsHandler(&metrics)},
                                                         {"/healthz", health.LivenessHandler()},
                                                         {"/readyz", health.ReadinessHandler()}});
    if (!started.ok()) {
      spdlog::error("{}", started.status().ToString());
      return 1;
    }
    http = *std::move(started);
    spdlog::info("metrics, /healthz and /readyz on http://{} (port {})", config.metrics_listen,
                 http->port());
  }
  // Scrapes and readiness checks read the node and the engine: stop them
  // before either goes away (on every return path below).
  auto stop_observers = [&http, &health, &metrics] {
    if (http != nullptr) http->Stop();
    health.Stop();
    metrics.SetNodeStatusSource(nullptr);
    metrics.SetEngine(nullptr);
    metrics.SetAdmissionSource(nullptr);
  };

  // Peer identity before any storage or raft: whose data directory this is,
  // with which credentials it talks to its peers.
  absl::StatusOr<security::PeerCredentials> peer_credentials =
      config.peer_tls.cert.empty()
          ? absl::StatusOr<security::PeerCredentials>(security::PeerCredentials::Insecure())
          : security::PeerCredentials::Load(config.peer_tls, config.node_id);
  if (!peer_credentials.ok()) {
    spdlog::error("refusing to start: {}", std::string(peer_credentials.status().message()));
    return 2;
  }
  if (!peer_credentials->secure()) {
    spdlog::warn(
        "--insecure-peers: the peer port {} accepts plaintext raft traffic from anyone who can "
        "reach it, who can then rewrite or erase this cluster's data; use --peer-cert, --peer-key "
        "and --peer-ca outside closed test networks",
        config.peer_listen);
  }
  absl::StatusOr<security::DataDirIdentity> identity =
      security::LoadOrCreateIdentity(config.data_dir, config.map.cluster_id(), config.node_id);
  if (!identity.ok()) {
    spdlog::error("refusing to start: {}", std::string(identity.status().message()));
    return 2;
  }
  if (identity->created) {
    absl::Status fresh = CheckNotReplaced(config, identity->incarnation, *peer_credentials);
    if (!fresh.ok()) {
      // Not keep the new identity: the operator may still restore the old data.
      std::filesystem::remove(absl::StrCat(config.data_dir, "/", security::kIdentityFileName));
      spdlog::error("refusing to start: {}", std::string(fresh.message()));
      return 2;
    }
    spdlog::info("new data directory {}: node {}, incarnation {}", config.data_dir, config.node_id,
                 identity->incarnation);
  }
  absl::StatusOr<std::unique_ptr<security::PeerRegistry>> registry =
      security::PeerRegistry::Open(config.data_dir);
  if (!registry.ok()) {
    spdlog::error("refusing to start: {}", std::string(registry.status().message()));
    return 2;
  }
  spdlog::info(
      "file limit {}: storage keeps at most {} files open, {} are reserved, ports take at most "
      "{} client and {} peer connections",
      config.fds.file_limit, config.fds.storage_max_open_files, config.fds.reserved,
      config.fds.max_client_connections, config.fds.max_peer_connections);
  storage::EngineOptions engine_options;
  engine_options.max_open_files = config.fds.storage_max_open_files;
  engine_options.min_free_disk_bytes = absl::GetFlag(FLAGS_min_free_disk_bytes);
  absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
      storage::Engine::Open(config.data_dir, engine_options);
  if (engine.status().code() == absl::StatusCode::kResourceExhausted) {
    ExitOnStorageFailure(engine.status());  // no space left on the data dir
  }
  if (!engine.ok()) {
    spdlog::error("cannot open storage at {}: {}", config.data_dir, engine.status().ToString());
    return 1;
  }
  spdlog::info("opened storage at {}", config.data_dir);
  // Each Cleanup runs before the objects declared before it are destroyed.
  absl::Cleanup stop_observers_before_engine = stop_observers;
  metrics.SetEngine(engine->get());

  StateMachine state_machine(&(*engine)->kv_store(), StateMachineOptions{});
  // Snapshots in flight: exports the transport streams to followers, and
  // received snapshots staged for the raft loop to commit (shared by the
  // Node, the transport and the peer service, which all go before it).
  SnapshotExchange snapshots(&(*engine)->kv_store());
  // A map already stored in this node's metadata replica is checked before
  // any shard replica is created or joins its group.
  if (hosts_meta) {
    absl::StatusOr<v1::GetResponse> stored = state_machine.Get(kMetaShard, kMetaMapKey);
    if (stored.ok() && stored->found()) {
      absl::StatusOr<ClusterMap> checked = MetaGroup::Check(map, stored->kv().value());
      if (!checked.ok()) {
        spdlog::error("refusing to serve: {}", std::string(checked.status().message()));
        return 2;
      }
    }
  }

  GrpcTransportOptions transport_options;
  transport_options.self = config.node_id;
  transport_options.incarnation = identity->incarnation;
  transport_options.snapshots = &snapshots;
  transport_options.credentials = &*peer_credentials;
  transport_options.on_refused = [](NodeId to, const absl::Status& why) {
    if (why.code() == absl::StatusCode::kFailedPrecondition) {
      // The peer knows this member under another incarnation: stop.
      {
        absl::MutexLock lock(&refusal_mu);
        refusal = absl::FailedPreconditionError(
            absl::StrCat("node ", to, " refuses us: ", why.message()));
      }
      kill(getpid(), SIGUSR1);
      return;
    }
    static std::atomic<int64_t> last_warning{0};
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    if (now - last_warning.exchange(now) >= 10) {
      spdlog::warn("node {} refuses this node's peer identity: {}", to, why.ToString());
    }
  };
  for (const MemberInfo& m : map.members()) {
    if (m.id != config.node_id) transport_options.peers[m.id] = m.peer_address;
  }
  // Transport feedback goes to the node once it runs (node_for_peers).
  std::atomic<Node*> node_for_peers{nullptr};
  transport_options.on_unreachable = [&node_for_peers](NodeId to) {
    if (Node* node = node_for_peers.load(std::memory_order_acquire)) node->ReportUnreachable(to);
  };
  transport_options.on_snapshot_sent = [&node_for_peers](NodeId to, ShardId shard, bool ok) {
    if (Node* node = node_for_peers.load(std::memory_order_acquire)) {
      node->ReportSnapshot(to, shard, ok);
    }
  };
  auto transport = std::make_unique<GrpcTransport>(std::move(transport_options));

  PeerServiceOptions peer_options{
      .self = config.node_id,
      .require_certified_sender = peer_credentials->secure(),
      .registry = registry->get(),
      .max_inbound_snapshots = static_cast<int>(absl::GetFlag(FLAGS_max_inbound_snapshots)),
      .max_snapshot_bytes = absl::GetFlag(FLAGS_max_snapshot_bytes),
      .snapshot_idle_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_snapshot_idle_timeout_ms)),
      .snapshots = &snapshots,
      .on_refused = [hooks = metrics.node_metrics()](const char* reason) {
        hooks->OnPeerMessageRefused(reason);
      }};
  PeerService peer_service(std::move(peer_options),
                           [&node_for_peers](NodeId from, std::vector<ShardMessage> messages) {
                             if (Node* node = node_for_peers.load(std::memory_order_acquire)) {
                               node->Receive(from, std::move(messages));
                             }
                           });
  // The largest message either port accepts: a request, or a peer batch of
  // a few MiB of messages plus one entry, holds at most one value of up to
  // --max-value-bytes and its key.
  const int max_message_bytes = static_cast<int>(
      std::min<uint64_t>(2 * absl::GetFlag(FLAGS_max_value_bytes) + (64 << 20), 1 << 30));
  GrpcServerOptions peer_server_options;
  peer_server_options.address = config.peer_listen;
  peer_server_options.services = {&peer_service};
  peer_server_options.max_receive_bytes = max_message_bytes;
  peer_server_options.credentials = peer_credentials->server();
  peer_server_options.max_connections = config.fds.max_peer_connections;
  peer_server_options.name = "peer";
  peer_server_options.on_connections =
      metrics.ConnectionReporter("peer", config.fds.max_peer_connections);
  absl::StatusOr<std::unique_ptr<GrpcServer>> peer_server =
      StartGrpcServer(std::move(peer_server_options));
  if (!peer_server.ok()) {
    spdlog::error("peer service: {}", peer_server.status().ToString());
    return 1;
  }
  spdlog::info("peer service listening on {} (port {}, {})", config.peer_listen,
               (*peer_server)->port(),
               peer_credentials->secure() ? "mutual TLS" : "PLAINTEXT, --insecure-peers");

  NodeOptions node_options;
  node_options.id = config.node_id;
  for (ShardId shard : hosted) {
    node_options.shards.push_back({.shard = shard, .replicas = map.shards()[shard].replicas});
  }
  if (hosts_meta) {
    node_options.shards.push_back({.shard = kMetaShard, .replicas = map.meta_replicas()});
  }
  node_options.snapshot_interval_entries = absl::GetFlag(FLAGS_snapshot_interval_entries);
  node_options.tick_interval = absl::Milliseconds(absl::GetFlag(FLAGS_tick_ms));
  node_options.election_ticks = static_cast<int>(absl::GetFlag(FLAGS_election_ticks));
  node_options.seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  node_options.metrics = metrics.node_metrics();
  node_options.snapshots = &snapshots;
  // The transport reports every transfer (its deadline: 10 minutes).
  node_options.snapshot_report_timeout = absl::Minutes(11);
  // Raft holds no more uncommitted bytes per shard than the node admits.
  if (absl::GetFlag(FLAGS_max_inflight_bytes) != 0) {
    node_options.max_uncommitted_bytes_per_shard = absl::GetFlag(FLAGS_max_inflight_bytes);
  }
  node_options.on_fatal = [](const absl::Status& status) {
    {
      absl::MutexLock lock(&fatal_mu);
      fatal = status;
    }
    kill(getpid(), SIGUSR2);
  };
  {
    std::vector<ShardId> shard_ids;
    for (const ShardPlacement& p : node_options.shards) shard_ids.push_back(p.shard);
    metrics.RegisterShards(shard_ids);
  }
  absl::StatusOr<std::unique_ptr<Node>> node =
      Node::Start(node_options, engine->get(), &state_machine, transport.get());
  if (node.status().code() == absl::StatusCode::kResourceExhausted) {
    ExitOnStorageFailure(node.status());  // bootstrap writes on a full disk
  }
  if (!node.ok()) {
    spdlog::error("cannot start the node: {}", node.status().ToString());
    (*peer_server)->Shutdown();
    return 1;
  }
  node_for_peers.store(node->get(), std::memory_order_release);
  absl::Cleanup stop_observers_before_node = stop_observers;
  metrics.SetNodeStatusSource([n = node->get()] { return n->Status(); });
  spdlog::info("raft node started: {} shard replicas, tick {} ms, election timeout {} ticks",
               node_options.shards.size(), absl::GetFlag(FLAGS_tick_ms),
               absl::GetFlag(FLAGS_election_ticks));

  NodeKvBackend backend(node->get(), &state_machine);
  // The services serve by the map of the metadata group, once loaded.
  ClusterMapCache maps;
  KvServiceOptions kv_options;
  kv_options.self = config.node_id;
  kv_options.max_key_bytes = absl::GetFlag(FLAGS_max_key_bytes);
  kv_options.max_value_bytes = absl::GetFlag(FLAGS_max_value_bytes);
  kv_options.max_inflight_bytes = absl::GetFlag(FLAGS_max_inflight_bytes);
  auto kv_service = std::make_unique<KvService>(kv_options, &maps, &backend);
  metrics.SetAdmissionSource([kv = kv_service.get()] { return kv->admission_stats(); });
  ClusterService::StoredMapReader stored_map;
  if (hosts_meta) stored_map = [&backend] { return MetaGroup::ReadLocal(backend); };
  ClusterService cluster_service(config.node_id, &maps, &backend, std::move(stored_map));
  // `tessera cluster drain N`: the same path as SIGTERM (sigwait below).
  cluster_service.SetDrainHandler([] { kill(getpid(), SIGTERM); });
  // The standard grpc.health.v1.Health service on the client port, kept in
  // step with readiness by the HealthMonitor.
  grpc::EnableDefaultHealthCheckService(true);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(metrics.NewGrpcInterceptorFactory());
  GrpcServerOptions client_server_options;
  client_server_options.address = config.listen;
  client_server_options.services = {kv_service.get(), &cluster_service};
  client_server_options.max_receive_bytes = max_message_bytes;
  client_server_options.interceptors = std::move(interceptors);
  client_server_options.max_connections = config.fds.max_client_connections;
  client_server_options.name = "client";
  client_server_options.on_connections =
      metrics.ConnectionReporter("client", config.fds.max_client_connections);
  absl::StatusOr<std::unique_ptr<GrpcServer>> client_server =
      StartGrpcServer(std::move(client_server_options));
  if (!client_server.ok()) {
    spdlog::error("client API: {}", client_server.status().ToString());
    (*node)->Stop();
    (*peer_server)->Shutdown();
    return 1;
  }
  spdlog::info("client API (KV, Cluster) listening on {} (port {})", config.listen,
               (*client_server)->port());
  health.SetSources({.member =
                         [&maps, id = config.node_id] {
                           std::shared_ptr<const ClusterMap> current = maps.Current();
                           return current != nullptr && current->FindMember(id) != nullptr;
                         },
                     .shards = [n = node->get()] { return n->Status(); },
                     .live = [n = node->get()] { return n->Health(); }});
  absl::Cleanup stop_observers_before_maps = stop_observers;
  health.SetGrpcHealth((*client_server)->server()->GetHealthCheckService());
  health.Start(absl::Milliseconds(500));

  const std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    absl::Status s = WriteFileAtomically(
        port_file,
        absl::StrCat("client_port=", (*client_server)->port(),
                     "\npeer_port=", (*peer_server)->port(), "\n",
                     http != nullptr ? absl::StrCat("metrics_port=", http->port(), "\n") : ""));
    if (!s.ok()) spdlog::error("port file: {}", s.ToString());
    spdlog::info("wrote ports to {}", port_file);
  }
  MetaGroupOptions meta_options;
  meta_options.self = config.node_id;
  MetaGroup meta_group(
      meta_options, map, hosts_meta ? &backend : nullptr,
      hosts_meta ? nullptr : RemoteMapReader(map), &maps,
      [](const absl::Status& status) {
        {
          absl::MutexLock lock(&refusal_mu);
          refusal = status;
        }
        kill(getpid(), SIGUSR1);
      },
      [](const std::string& line) { spdlog::info("metadata group: {}", line); });
  spdlog::info("node {} started; serving once the cluster map is loaded from the metadata group",
               config.node_id);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  if (signal_number == SIGUSR2) {
    absl::Status why;
    {
      absl::MutexLock lock(&fatal_mu);
      why = fatal;
    }
    ExitOnStorageFailure(why);
  }
  meta_group.Stop();
  if (signal_number == SIGUSR1) {
    absl::Status why;
    {
      absl::MutexLock lock(&refusal_mu);
      why = refusal;
    }
    spdlog::error("refusing to serve: {}", std::string(why.message()));
    (*client_server)->Shutdown();
    (*node)->Stop();
    (*peer_server)->Shutdown();
    node_for_peers.store(nullptr, std::memory_order_release);
    transport->Stop();
    kv_service.reset();
    return 2;
  }
  const absl::Duration drain = absl::Milliseconds(absl::GetFlag(FLAGS_drain_timeout_ms));
  spdlog::info("received {}: draining (up to {} ms per step)", strsignal(signal_number),
               absl::ToInt64Milliseconds(drain));
  health.SetDraining();

  // With one replica per shard there is nobody to hand leadership to.
  absl::Status transferred = map.replication() > 1
                                 ? (*node)->TransferLeadershipAway(drain)
                                 : absl::FailedPreconditionError("no other replicas");
  if (transferred.ok()) {
    spdlog::info("handed off leadership of every shard");
  } else {
    spdlog::warn("leadership hand-off incomplete: {}", transferred.ToString());
  }

  // Stop accepting calls (new ones get UNAVAILABLE and go to another
  // replica) and let in-flight ones finish. Then shut the server down at
  // once: gRPC's own graceful Shutdown would also wait for clients to close
  // their idle connections. Shutdown waits for every call, and a call may
  // wait for the Node: if that takes too long, stopping the Node completes
  // them all.
  kv_service->BeginDrain();
  if (kv_service->WaitIdle(absl::Now() + drain)) {
    spdlog::info("in-flight client calls finished");
  } else {
    spdlog::warn("client calls still in flight after {} ms; cancelling them",
                 absl::ToInt64Milliseconds(drain));
  }
  absl::Notification shut_down;
  std::thread shutdown_thread([&] {
    (*client_server)->Shutdown();
    shut_down.Notify();
  });
  if (!shut_down.WaitForNotificationWithTimeout(absl::Seconds(2))) {
    spdlog::warn("client calls still pending; stopping the node to complete them");
    (*node)->Stop();
  }
  shutdown_thread.join();
  spdlog::info("client API stopped");

  (*node)->Stop();
  // ---- fail-stop: a storage failure during the drain still exits 3 ----
  {
    absl::Status why;
    {
      absl::MutexLock lock(&fatal_mu);
      why = fatal;
    }
    if (!why.ok()) ExitOnStorageFailure(why);
  }
  spdlog::info("raft node stopped");
  (*peer_server)->Shutdown();
  node_for_peers.store(nullptr, std::memory_order_release);
  transport->Stop();
  spdlog::info("peer service and transport stopped");
  metrics.SetAdmissionSource(nullptr);
  kv_service.reset();
  stop_observers();
  node->reset();
  transport.reset();
  engine->reset();
  spdlog::info("storage closed; node {} exits", config.node_id);
  return 0;
}

}  // namespace
}  // namespace tessera::server

int main(int argc, char** argv) {
  // Signals are taken synchronously by sigwait() in Run(): block them before
  // any thread starts so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // the MetaGroup: the stored map conflicts with the flags
  sigaddset(&signals, SIGUSR2);  // NodeOptions::on_fatal: the raft loop stopped
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Debian builds Abseil with Mutex deadlock detection on: every lock (gRPC
  // takes many per request) then updates a global lock graph, a few % of the
  // server's CPU. Tests keep it on; the server runs without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  absl::Status parsed = tessera::server::ParseFlags(argc, argv);
  absl::StatusOr<tessera::server::Config> config =
      parsed.ok() ? tessera::server::Validate() : absl::StatusOr<tessera::server::Config>(parsed);
  if (!config.ok()) {
    std::fprintf(stderr, "tessera-server: %s\n", std::string(config.status().message()).c_str());
    return 2;
  }
  auto logger = spdlog::stderr_logger_mt("tessera");
  // UTC, as the raw (Abseil, raft invariant) lines of InstallRawLogPrefix.
  logger->set_pattern(absl::StrCat("%Y-%m-%dT%H:%M:%S.%e %L node", config->node_id, " %v"),
                      spdlog::pattern_time_type::utc);
  tessera::server::InstallRawLogPrefix(config->node_id);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  spdlog::set_level(config->log_level);
  spdlog::info("tessera-server starting: node {}, data dir {}", config->node_id, config->data_dir);
  return tessera::server::Run(*config, signals);
}
