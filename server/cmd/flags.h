// tessera-server's flags (and --config), parsed and validated into one
// ServerConfig: the Server reads no flag itself.
#ifndef TESSERA_SERVER_CMD_FLAGS_H_
#define TESSERA_SERVER_CMD_FLAGS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/ids.h"
#include "server/cluster/cluster_map.h"
#include "server/security/tls.h"
#include "server/transport/grpc_server.h"
#include "spdlog/common.h"

namespace tessera::server {

// What one tessera-server is told to be; the flags' meanings are in
// flags.cc (and `tessera-server --help`).
struct ServerConfig {
  NodeId node_id = 0;
  std::string data_dir;
  std::string listen;
  std::string peer_listen;
  std::string metrics_listen;  // empty: no metrics HTTP server
  bool metrics_tls = false;    // HTTPS with client_tls's certificate and key
  std::string port_file;       // empty: none written
  spdlog::level::level_enum log_level = spdlog::level::info;
  ClusterMap map;                 // computed from --initial-cluster, --shards, --replication
  security::TlsFiles peer_tls;    // empty with --insecure-peers
  security::TlsFiles client_tls;  // empty: a plaintext client port
  FdBudget fds;
  absl::Duration tick = absl::Milliseconds(50);
  int election_ticks = 20;
  absl::Duration drain_timeout = absl::Seconds(5);
  absl::Duration slow_request = absl::Seconds(1);
  absl::Duration slow_fsync = absl::Milliseconds(500);
  uint64_t max_key_bytes = 4096;
  uint64_t max_value_bytes = 1 << 20;
  uint64_t max_inflight_bytes = 64 << 20;
  uint64_t max_batch_ops = 256;              // KV.Batch: operations per message
  uint64_t max_batch_bytes = 8 << 20;        // KV.Batch: bytes per message
  uint64_t max_batch_inflight_ops = 1024;    // KV.Batch: operations in flight per stream
  uint64_t watch_history_revisions = 20000;  // StateMachineOptions::history_revisions
  absl::Duration watch_history_seconds;      // HistoryRetention's keep; zero: none
  uint64_t max_watchers = 100000;            // WatchHubOptions
  uint64_t max_watcher_bytes = 1 << 20;
  uint64_t max_watch_bytes = 256 << 20;
  uint64_t max_leases = 1000000;                      // LeaseKeeperOptions::max_leases
  absl::Duration auth_token_ttl = absl::Minutes(10);  // AuthServiceOptions::token_ttl
  bool hibernate_idle_shards = true;
  absl::Duration dead_node_timeout = absl::Minutes(5);  // the scheduler's dead_after
  int max_replica_moves = 1;                            // the scheduler's max_moves
  bool balance_replicas = true;                         // the scheduler's balance
  uint64_t split_shard_bytes = 96ull << 20;             // the scheduler's split_bytes
  uint64_t split_shard_writes_per_sec = 0;              // the scheduler's split_writes_per_sec
  uint64_t snapshot_interval_entries = 10000;
  uint64_t min_free_disk_bytes = 256ull << 20;
  int max_inbound_snapshots = 2;
  uint64_t max_snapshot_bytes = 1ull << 30;
  absl::Duration snapshot_idle_timeout = absl::Seconds(30);
  // TESTING ONLY (--testing-storage-faults): the control file of the storage
  // fault injector (storage/fault_injection.h); empty: storage is not
  // wrapped at all.
  std::string testing_storage_faults;
};

// The environment variable that must be "1" for tessera-server to accept its
// testing-only flags (--testing-storage-faults).
inline constexpr char kAllowTestingFlagsEnv[] = "TESSERA_ALLOW_TESTING_FLAGS";

// Parses argv, then --config for what argv did not set, and validates the
// result (raising the file limit to size the connection caps).
// kInvalidArgument with one line for the user on bad flags. --help prints the
// usage and exits 0.
absl::StatusOr<ServerConfig> ParseServerFlags(int argc, char** argv);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CMD_FLAGS_H_
