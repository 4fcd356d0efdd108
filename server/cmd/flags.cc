#include "server/cmd/flags.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "proto/status_macros.h"
#include "server/cmd/join.h"

ABSL_FLAG(uint64_t, node_id, 0, "this node's id in --initial-cluster (required)");
ABSL_FLAG(std::string, data_dir, "", "directory of this node's RocksDB (required)");
ABSL_FLAG(std::string, initial_cluster, "",
          "members: <id>=<client host:port>/<peer host:port>,... (required unless --join)");
ABSL_FLAG(std::string, join, "",
          "client host:port,... of members of a running cluster this node joins (after `tessera "
          "cluster add-node`, or by itself with --advertise-client and --advertise-peer): the "
          "cluster map comes from them; ignored by a node that --initial-cluster names");
ABSL_FLAG(std::string, advertise_client, "",
          "with --join and --advertise-peer: this node's client host:port as the others reach "
          "it; a node whose data directory is empty and that the cluster does not list adds "
          "itself with these addresses ({id} and {hostname} are replaced)");
ABSL_FLAG(std::string, advertise_peer, "",
          "with --join and --advertise-client: this node's peer host:port as the others reach it");
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
ABSL_FLAG(bool, metrics_tls, false,
          "serve --metrics-listen over HTTPS only, with the --tls-cert and --tls-key files "
          "(re-read when they change); needs client TLS");
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
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate of this member for the client port (common name node-<id>, naming "
          "the hosts clients dial; the --peer-cert file will do); {id} as in --peer-cert. With "
          "--tls-cert, --tls-key and --tls-ca the client port speaks only TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls-cert; {id} as there");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM certificate(s) of the CA that signs client certificates and other members' "
          "--tls-cert (the --peer-ca file will do)");
ABSL_FLAG(uint32_t, auth_token_ttl_seconds, 600,
          "how long a token from Auth.Authenticate is valid (users and roles: `tessera auth`)");
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
// ---- KV.Batch stream (issue 14) ----
// The smallest limits the SDK's defaults fit in (client/client.h
// ClientOptions::batch_max_ops / batch_max_bytes).
constexpr uint64_t kMinBatchOps = 256;
constexpr uint64_t kMinBatchBytes = 4 << 20;
ABSL_FLAG(uint64_t, max_batch_ops, 256,
          "operations per KV.Batch message (at least 256, the SDK's message size); a larger "
          "message gets INVALID_ARGUMENT for each of its operations");
ABSL_FLAG(uint64_t, max_batch_bytes, 8 << 20,
          "bytes per KV.Batch message (at least 4 MiB and one operation of --max-value-bytes); "
          "a larger message gets INVALID_ARGUMENT for each of its operations");
ABSL_FLAG(uint64_t, max_batch_inflight_ops, 1024,
          "operations of one KV.Batch stream between reading them and writing their results; "
          "the server stops reading the stream beyond it (backpressure)");
// ---- end KV.Batch ----
ABSL_FLAG(uint64_t, watch_history_revisions, 20000,
          "revisions of each shard's watch history kept for watchers that resume (0 or at "
          "least 1024; compacted every 1024 revisions; 0 keeps none, to measure its cost: "
          "watches then cannot resume and may end with OUT_OF_RANGE under writes); set it the "
          "same on every member");
ABSL_FLAG(int64_t, watch_history_seconds, 0,
          "also drop watch history older than this many seconds (0: no time bound; else at "
          "least 10): each shard's leader proposes the compaction, so every replica drops the "
          "same revisions");
ABSL_FLAG(uint64_t, max_watchers, 100000, "watchers on this node (KV.Watch); more are refused");
ABSL_FLAG(uint64_t, max_watcher_bytes, 1 << 20,
          "bytes of events queued for one watcher before it is ended as too slow (it resumes "
          "from its last revision)");
ABSL_FLAG(uint64_t, max_watch_bytes, 256 << 20,
          "bytes of events queued for all watchers of this node before the one receiving an "
          "event is ended as too slow");
ABSL_FLAG(uint64_t, max_leases, 1000000,
          "live leases in the cluster (kept by the metadata group's leader); more Grants are "
          "refused with RESOURCE_EXHAUSTED");
ABSL_FLAG(bool, hibernate_idle_shards, true,
          "idle shards stop ticking and heartbeating until a request or message wakes them "
          "(server/raftstore/README.md \"Hibernation\"); set it the same on every member");
ABSL_FLAG(int64_t, dead_node_timeout_ms, 300000,
          "a member silent this long is dead: the scheduler re-creates its replicas elsewhere");
ABSL_FLAG(int32_t, max_replica_moves, 1,
          "replica moves in progress at once (balancing, decommission, re-replication)");
ABSL_FLAG(uint64_t, split_shard_bytes, 96ull << 20,
          "the scheduler splits a shard whose keys and values take about this many bytes on its "
          "leader (0: only `tessera cluster split-shard`); takes effect where the metadata "
          "group's leader runs");
ABSL_FLAG(uint64_t, split_shard_writes_per_sec, 0,
          "the scheduler splits a shard whose writes (raft entries committed) keep this rate or "
          "more for 10 s (0: never by load); takes effect where the metadata group's leader runs");
ABSL_FLAG(bool, balance_replicas, true,
          "the scheduler spreads replicas evenly over the members (false: only moves by hand, "
          "decommission and dead members); takes effect where the metadata group's leader runs");
// ---- testing only (issue 13 item 2) ----
ABSL_FLAG(std::string, testing_storage_faults, "",
          "TESTING ONLY, never in production: storage operations fail with an injected I/O "
          "error while this file exists and names them (save, sync, apply, install, compact, "
          "all; empty file = all), so tests can prove the fail-stop path (exit code 3). "
          "Refused unless the environment has TESSERA_ALLOW_TESTING_FLAGS=1. Empty (default): "
          "storage is not wrapped");
// ---- end testing only ----
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
    "usage: tessera-server --node-id=N --data-dir=DIR\n"
    "  (--initial-cluster=ID=CLIENT/PEER,... | --join=HOST:PORT,...)\n"
    "  [--advertise-client=HOST:PORT --advertise-peer=HOST:PORT]\n"
    "  [--listen=HOST:PORT] [--peer-listen=HOST:PORT] [--shards=16] [--replication=3]\n"
    "  [--config=FILE] [--tick-ms=50] [--election-ticks=20] [--max-key-bytes=4096]\n"
    "  [--max-value-bytes=1048576] [--drain-timeout-ms=5000] [--port-file=FILE]\n"
    "  [--snapshot-interval-entries=10000] [--metrics-listen=127.0.0.1:0] [--metrics-tls]\n"
    "  [--node-id-from-hostname=false] [--slow-request-ms=1000] [--slow-fsync-ms=500]\n"
    "  [--log-level=info] [--min-free-disk-bytes=268435456]\n"
    "  [--max-client-connections=0] [--max-peer-connections=0]\n"
    "  --peer-cert=FILE --peer-key=FILE --peer-ca=FILE | --insecure-peers\n"
    "  [--tls-cert=FILE --tls-key=FILE --tls-ca=FILE] [--auth-token-ttl-seconds=600]\n"
    "  [--max-inbound-snapshots=2] [--max-snapshot-bytes=1073741824]\n"
    "  [--snapshot-idle-timeout-ms=30000]\n"
    "  [--max-inflight-bytes=67108864] [--hibernate-idle-shards=true]\n"
    "  [--dead-node-timeout-ms=300000] [--max-replica-moves=1] [--balance-replicas=true]\n"
    "  [--split-shard-bytes=100663296] [--split-shard-writes-per-sec=0]\n"
    "  [--testing-storage-faults=FILE]  (tests only; needs TESSERA_ALLOW_TESTING_FLAGS=1)\n"
    "Flag names take '-' or '_'; a true/false flag alone means true. --config holds\n"
    "key=value lines (same keys, '#' comments).\n";

// --tls-cert, --tls-key and --tls-ca of node `id`: all or none.
absl::StatusOr<security::TlsFiles> ClientTlsFiles(NodeId id) {
  const std::string id_text = absl::StrCat(id);
  security::TlsFiles files = {
      .cert = absl::StrReplaceAll(absl::GetFlag(FLAGS_tls_cert), {{"{id}", id_text}}),
      .key = absl::StrReplaceAll(absl::GetFlag(FLAGS_tls_key), {{"{id}", id_text}}),
      .ca = absl::GetFlag(FLAGS_tls_ca)};
  const int set = !files.cert.empty() + !files.key.empty() + !files.ca.empty();
  if (set != 0 && set != 3) {
    return absl::InvalidArgumentError(
        "client TLS needs all of --tls-cert, --tls-key and --tls-ca (or none: plaintext)");
  }
  return files;
}

// Sets flag `name` (dashes allowed) to `value`.
absl::Status SetFlag(std::string name, const std::string& value, std::set<std::string>* seen) {
  name = absl::StrReplaceAll(name, {{"-", "_"}});
  absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
  static const std::set<std::string> kOurs = {"node_id",
                                              "data_dir",
                                              "initial_cluster",
                                              "join",
                                              "advertise_client",
                                              "advertise_peer",
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
                                              "metrics_tls",
                                              "node_id_from_hostname",
                                              "slow_request_ms",
                                              "slow_fsync_ms",
                                              "log_level",
                                              "peer_cert",
                                              "peer_key",
                                              "peer_ca",
                                              "insecure_peers",
                                              "tls_cert",
                                              "tls_key",
                                              "tls_ca",
                                              "auth_token_ttl_seconds",
                                              "max_inbound_snapshots",
                                              "max_snapshot_bytes",
                                              "snapshot_idle_timeout_ms",
                                              "max_client_connections",
                                              "max_peer_connections",
                                              "min_free_disk_bytes",
                                              "max_inflight_bytes",
                                              "max_batch_ops",
                                              "max_batch_bytes",
                                              "max_batch_inflight_ops",
                                              "watch_history_revisions",
                                              "watch_history_seconds",
                                              "max_watchers",
                                              "max_watcher_bytes",
                                              "max_watch_bytes",
                                              "max_leases",
                                              "hibernate_idle_shards",
                                              "dead_node_timeout_ms",
                                              "max_replica_moves",
                                              "split_shard_bytes",
                                              "split_shard_writes_per_sec",
                                              "balance_replicas",
                                              "testing_storage_faults"};
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
    const absl::CommandLineFlag* flag =
        absl::FindCommandLineFlag(absl::StrReplaceAll(name.substr(0, eq), {{"-", "_"}}));
    const bool boolean = flag != nullptr && flag->IsOfType<bool>();
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    } else if (boolean && (i + 1 == argc || (std::string_view(argv[i + 1]) != "true" &&
                                             std::string_view(argv[i + 1]) != "false"))) {
      value = "true";  // a switch: --metrics-tls alone
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

absl::StatusOr<std::string> Hostname() {
  char hostname[256] = {0};
  if (gethostname(hostname, sizeof(hostname) - 1) != 0) {
    return absl::InvalidArgumentError("cannot read the hostname");
  }
  return std::string(hostname);
}

// --advertise-client and --advertise-peer, {id} and {hostname} replaced:
// the member this node adds itself as when it joins with an empty data
// directory, or nullopt when neither flag is set.
absl::StatusOr<std::optional<MemberInfo>> AdvertisedSelf(NodeId id, const std::string& data_dir) {
  const std::string client = absl::GetFlag(FLAGS_advertise_client);
  const std::string peer = absl::GetFlag(FLAGS_advertise_peer);
  if (client.empty() && peer.empty()) return std::nullopt;
  if (client.empty() || peer.empty() || absl::GetFlag(FLAGS_join).empty()) {
    return absl::InvalidArgumentError(
        "--advertise-client and --advertise-peer go together, with --join");
  }
  std::string hostname;
  if (absl::StrContains(client + peer, "{hostname}")) {
    absl::StatusOr<std::string> read = Hostname();
    if (!read.ok()) return read.status();
    hostname = *read;
  }
  const std::vector<std::pair<std::string, std::string>> replace = {{"{id}", absl::StrCat(id)},
                                                                    {"{hostname}", hostname}};
  MemberInfo self{.id = id,
                  .client_address = absl::StrReplaceAll(client, replace),
                  .peer_address = absl::StrReplaceAll(peer, replace)};
  TESSERA_RETURN_IF_ERROR(ValidateHostPort(self.client_address));
  TESSERA_RETURN_IF_ERROR(ValidateHostPort(self.peer_address));
  // Only a node that has never run adds itself: one whose directory holds
  // something was a member (and, missing from the map, was removed).
  std::error_code error;
  const bool fresh =
      !std::filesystem::exists(data_dir, error) || std::filesystem::is_empty(data_dir, error);
  if (!fresh) return std::nullopt;
  return self;
}

absl::StatusOr<ServerConfig> Validate() {
  NodeId id = absl::GetFlag(FLAGS_node_id);
  if (absl::GetFlag(FLAGS_node_id_from_hostname)) {
    if (id != 0) {
      return absl::InvalidArgumentError("--node-id and --node-id-from-hostname exclude each other");
    }
    absl::StatusOr<std::string> hostname = Hostname();
    if (!hostname.ok()) return hostname.status();
    absl::StatusOr<NodeId> from_hostname = NodeIdFromHostname(*hostname);
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
  const std::string join = absl::GetFlag(FLAGS_join);
  if (absl::GetFlag(FLAGS_initial_cluster).empty() && join.empty()) {
    return absl::InvalidArgumentError("--initial-cluster (or --join) is required");
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
  // The SDK packs up to 256 operations and about 4 MiB into one KV.Batch
  // message (one operation always goes, whatever its size) and the server
  // refuses every operation of a larger message: lower limits would fail
  // every SDK client, so they are refused here.
  const uint64_t min_batch_bytes =
      std::max<uint64_t>(kMinBatchBytes, absl::GetFlag(FLAGS_max_value_bytes) +
                                             absl::GetFlag(FLAGS_max_key_bytes) + (64 << 10));
  if (absl::GetFlag(FLAGS_max_batch_ops) < kMinBatchOps ||
      absl::GetFlag(FLAGS_max_batch_inflight_ops) < absl::GetFlag(FLAGS_max_batch_ops) ||
      absl::GetFlag(FLAGS_max_batch_bytes) < min_batch_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max-batch-ops must be at least ", kMinBatchOps,
        " and at most --max-batch-inflight-ops, and --max-batch-bytes at least ", min_batch_bytes,
        " (4 MiB, and one operation of --max-value-bytes + --max-key-bytes + 64 KiB): the SDK "
        "sends messages that large"));
  }
  std::vector<std::string> join_endpoints;
  for (absl::string_view endpoint : absl::StrSplit(join, ',', absl::SkipWhitespace())) {
    TESSERA_RETURN_IF_ERROR(ValidateHostPort(absl::StripAsciiWhitespace(endpoint)));
    join_endpoints.emplace_back(absl::StripAsciiWhitespace(endpoint));
  }
  absl::StatusOr<std::optional<MemberInfo>> advertised = AdvertisedSelf(id, data_dir);
  if (!advertised.ok()) return advertised.status();
  // A node --initial-cluster names bootstraps from it (or, once the cluster
  // runs, follows the stored map); any other joins through --join (so one
  // set of flags serves founders and later nodes alike, e.g. a StatefulSet).
  absl::StatusOr<ClusterMap> map = absl::InvalidArgumentError("no map");
  if (!absl::GetFlag(FLAGS_initial_cluster).empty()) {
    map = ClusterMap::Parse(absl::GetFlag(FLAGS_initial_cluster), absl::GetFlag(FLAGS_shards),
                            absl::GetFlag(FLAGS_replication));
    if (!map.ok()) return map.status();
  }
  absl::StatusOr<security::TlsFiles> client_tls = ClientTlsFiles(id);
  if (!client_tls.ok()) return client_tls.status();
  const bool joining = !join.empty() && (!map.ok() || map->FindMember(id) == nullptr);
  if (joining) {
    absl::StatusOr<security::TlsCredentials> credentials =
        client_tls->cert.empty()
            ? absl::StatusOr<security::TlsCredentials>(security::TlsCredentials::Insecure())
            : security::TlsCredentials::Load(*client_tls, id, "--tls");
    if (!credentials.ok()) return credentials.status();
    map = FetchClusterMap(join_endpoints, id, advertised->has_value() ? &**advertised : nullptr,
                          absl::Seconds(30), credentials->channel());
  }
  if (!map.ok()) return map.status();
  const MemberInfo* self = map->FindMember(id);
  if (self == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("--node-id ", id, " is not a member of --initial-cluster"));
  }
  if (joining && advertised->has_value() &&
      (self->client_address != (*advertised)->client_address ||
       self->peer_address != (*advertised)->peer_address)) {
    // Another node already holds this id (two nodes given the same one?).
    return absl::InvalidArgumentError(
        absl::StrCat("node ", id, " is already a member at ", self->client_address, " / ",
                     self->peer_address, "; this node advertises ", (*advertised)->client_address,
                     " / ", (*advertised)->peer_address, ": give it an id of its own"));
  }
  ServerConfig config{.node_id = id,
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
  config.client_tls = *client_tls;
  config.metrics_tls = absl::GetFlag(FLAGS_metrics_tls);
  if (config.metrics_tls && (config.client_tls.cert.empty() || config.metrics_listen.empty())) {
    return absl::InvalidArgumentError(
        "--metrics-tls needs --metrics-listen and client TLS (--tls-cert, --tls-key, --tls-ca)");
  }
  if (absl::GetFlag(FLAGS_auth_token_ttl_seconds) < 10) {
    return absl::InvalidArgumentError("--auth-token-ttl-seconds must be at least 10");
  }
  config.auth_token_ttl = absl::Seconds(absl::GetFlag(FLAGS_auth_token_ttl_seconds));
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
  config.port_file = absl::GetFlag(FLAGS_port_file);
  config.tick = absl::Milliseconds(absl::GetFlag(FLAGS_tick_ms));
  config.election_ticks = static_cast<int>(absl::GetFlag(FLAGS_election_ticks));
  config.drain_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_drain_timeout_ms));
  config.slow_request = absl::Milliseconds(absl::GetFlag(FLAGS_slow_request_ms));
  config.slow_fsync = absl::Milliseconds(absl::GetFlag(FLAGS_slow_fsync_ms));
  config.max_key_bytes = absl::GetFlag(FLAGS_max_key_bytes);
  config.max_value_bytes = absl::GetFlag(FLAGS_max_value_bytes);
  config.max_inflight_bytes = absl::GetFlag(FLAGS_max_inflight_bytes);
  config.max_batch_ops = absl::GetFlag(FLAGS_max_batch_ops);
  config.max_batch_bytes = absl::GetFlag(FLAGS_max_batch_bytes);
  config.max_batch_inflight_ops = absl::GetFlag(FLAGS_max_batch_inflight_ops);
  config.hibernate_idle_shards = absl::GetFlag(FLAGS_hibernate_idle_shards);
  if ((absl::GetFlag(FLAGS_watch_history_revisions) != 0 &&
       absl::GetFlag(FLAGS_watch_history_revisions) < 1024) ||
      absl::GetFlag(FLAGS_max_watcher_bytes) < 4096 ||
      absl::GetFlag(FLAGS_max_watch_bytes) < absl::GetFlag(FLAGS_max_watcher_bytes)) {
    return absl::InvalidArgumentError(
        "--watch-history-revisions must be 0 or at least 1024, --max-watcher-bytes at least 4096 "
        "and --max-watch-bytes at least --max-watcher-bytes");
  }
  config.watch_history_revisions = absl::GetFlag(FLAGS_watch_history_revisions);
  if (const int64_t seconds = absl::GetFlag(FLAGS_watch_history_seconds);
      seconds != 0 && (seconds < 10 || seconds > int64_t{10} * 365 * 24 * 3600)) {
    return absl::InvalidArgumentError(
        "--watch-history-seconds must be 0 (no time bound) or between 10 and 10 years");
  }
  config.watch_history_seconds = absl::Seconds(absl::GetFlag(FLAGS_watch_history_seconds));
  config.max_watchers = absl::GetFlag(FLAGS_max_watchers);
  config.max_watcher_bytes = absl::GetFlag(FLAGS_max_watcher_bytes);
  config.max_watch_bytes = absl::GetFlag(FLAGS_max_watch_bytes);
  config.max_leases = absl::GetFlag(FLAGS_max_leases);
  if (absl::GetFlag(FLAGS_dead_node_timeout_ms) < 1000 ||
      absl::GetFlag(FLAGS_max_replica_moves) < 1 || absl::GetFlag(FLAGS_max_replica_moves) > 64) {
    return absl::InvalidArgumentError(
        "--dead-node-timeout-ms must be at least 1000 and --max-replica-moves in [1, 64]");
  }
  config.dead_node_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_dead_node_timeout_ms));
  config.max_replica_moves = absl::GetFlag(FLAGS_max_replica_moves);
  config.balance_replicas = absl::GetFlag(FLAGS_balance_replicas);
  config.split_shard_bytes = absl::GetFlag(FLAGS_split_shard_bytes);
  if (config.split_shard_bytes != 0 && config.split_shard_bytes < (1 << 20)) {
    return absl::InvalidArgumentError("--split-shard-bytes must be 0 or at least 1048576");
  }
  config.split_shard_writes_per_sec = absl::GetFlag(FLAGS_split_shard_writes_per_sec);
  config.snapshot_interval_entries = absl::GetFlag(FLAGS_snapshot_interval_entries);
  config.min_free_disk_bytes = absl::GetFlag(FLAGS_min_free_disk_bytes);
  config.max_inbound_snapshots = static_cast<int>(absl::GetFlag(FLAGS_max_inbound_snapshots));
  config.max_snapshot_bytes = absl::GetFlag(FLAGS_max_snapshot_bytes);
  config.snapshot_idle_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_snapshot_idle_timeout_ms));
  config.testing_storage_faults = absl::GetFlag(FLAGS_testing_storage_faults);
  if (!config.testing_storage_faults.empty()) {
    const char* allow = std::getenv(kAllowTestingFlagsEnv);
    if (allow == nullptr || std::string(allow) != "1") {
      return absl::InvalidArgumentError(
          absl::StrCat("--testing-storage-faults is for tests only (it makes storage fail on "
                       "command); refused unless the environment has ",
                       kAllowTestingFlagsEnv, "=1"));
    }
  }
  return config;
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerFlags(int argc, char** argv) {
  TESSERA_RETURN_IF_ERROR(ParseFlags(argc, argv));
  return Validate();
}

}  // namespace tessera::server
