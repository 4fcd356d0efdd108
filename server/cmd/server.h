// Server: one running tessera-server. It owns every part of the node and the
// order they start and stop in:
//
//   start: metrics and health (/healthz answers while the node starts), peer
//     identity (credentials, data directory identity, known peers), storage,
//     state machine (a stored cluster map is checked before any replica
//     starts), peer transport and service, Node (the metadata group's replica
//     and the shards on disk), client API, port file, metadata group (the
//     node then hosts what the stored map lists: FollowMap), and on a node
//     holding a metadata replica the scheduler (server/cluster/scheduler.h);
//   drain (SIGTERM, Cluster.Drain): health says draining, leaderships are
//     handed to other replicas, new calls get UNAVAILABLE and in-flight ones
//     finish (each step bounded by the drain timeout), then everything stops;
//   stop: everything stops at once, in the reverse order of start.
//
// The Server never reads flags (ServerConfig holds them) and never decides
// to exit: what it cannot live with it reports through ServerHooks, and
// tessera-server's main() acts on it (server/cmd/main.cc).
//
// Thread-safety: Start, Drain and Stop are called from one thread (main's);
// the hooks run on other threads and must only hand the news over.
#ifndef TESSERA_SERVER_CMD_SERVER_H_
#define TESSERA_SERVER_CMD_SERVER_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "server/api/auth_service.h"
#include "server/api/kv_service.h"
#include "server/api/lease_service.h"
#include "server/cluster/auth_store.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/lease_keeper.h"
#include "server/cluster/meta_group.h"
#include "server/cluster/scheduler.h"
#include "server/cmd/cluster_control.h"
#include "server/cmd/flags.h"
#include "server/cmd/lease_check.h"
#include "server/kv/history_retention.h"
#include "server/kv/node_backend.h"
#include "server/kv/state_machine.h"
#include "server/kv/storage_usage.h"
#include "server/observability/health.h"
#include "server/observability/metrics.h"
#include "server/raftstore/node.h"
#include "server/raftstore/snapshot_stream.h"
#include "server/security/data_dir_identity.h"
#include "server/security/peer_registry.h"
#include "server/security/tls.h"
#include "server/transport/grpc_server.h"
#include "server/transport/grpc_transport.h"
#include "storage/engine.h"
#include "storage/fault_injection.h"

namespace tessera::server {

// What a running Server reports; each runs on some other thread.
struct ServerHooks {
  // The node must stop serving: the stored cluster map conflicts with the
  // flags, or a peer knows this member under another incarnation.
  std::function<void(const absl::Status& why)> on_refusal;
  // The raft loop stopped on a storage error (fail-stop: exit at once).
  std::function<void(const absl::Status& why)> on_fatal;
  // Cluster.Drain was called on this node.
  std::function<void()> on_drain_requested;
};

// Exit codes of tessera-server (main.cc's header comment).
inline constexpr int kExitStartFailure = 1;
inline constexpr int kExitRefused = 2;
inline constexpr int kExitStorageFailure = 3;

// Logs the one line saying why and exits with kExitStorageFailure at once:
// closing RocksDB after an I/O error may trip its assertions (Debian's build
// keeps them), and nothing needs closing: every acknowledged write is in the
// WAL, as after kill -9.
[[noreturn]] void ExitOnStorageFailure(const absl::Status& why);

class Server {
 public:
  // Starts every part in order. On failure, what was started is stopped and
  // the error's message is the line to log: kFailedPrecondition when the
  // node refuses to start (bad identity, credentials, a conflicting stored
  // map: exit kExitRefused), another code when a part could not start (exit
  // kExitStartFailure). A full disk at start exits kExitStorageFailure.
  static absl::StatusOr<std::unique_ptr<Server>> Start(ServerConfig config, ServerHooks hooks);

  // The graceful path: drain, then stop everything. Returns the storage
  // error that stopped the raft loop meanwhile, if one did.
  absl::Status Drain();
  // Checks the peer and client certificate files now in place and logs the
  // verdict (gRPC picks valid new files up within TlsCredentials::
  // kReloadSeconds by itself). Thread-safe.
  void RecheckCertificates() const;
  // Stops everything at once. Idempotent; the destructor calls it.
  void Stop();
  ~Server();

  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

 private:
  Server(ServerConfig config, ServerHooks hooks);
  absl::Status StartParts();
  // Stops the scrapes and readiness checks, which read the node and the
  // engine (before either goes away).
  void StopObservers();
  absl::Status Fatal() const ABSL_LOCKS_EXCLUDED(fatal_mu_);
  // Follows a map the metadata group accepted (its thread, before the map
  // is served): sends to members that joined, hosts what it lists.
  void FollowMap(const ClusterMap& map);
  // Hosts a replica of every shard `map` lists on this node that is not
  // hosted yet (the metadata group's thread, before the map is served).
  // Replicas it no longer lists are removed by the scheduler, once their
  // group's committed configuration excludes them.
  void HostReplicas(const ClusterMap& map);
  // Replicas being added by HostReplicas, which waits (bounded) for them.
  struct PendingReplicas {
    absl::Mutex mu;
    int left ABSL_GUARDED_BY(mu) = 0;
  };
  // Asks the node to host `shard` (founders: bootstrap it), counted in
  // `pending` until the node answers.
  void AddReplicaHere(ShardId shard, const std::vector<NodeId>& founders,
                      const std::shared_ptr<PendingReplicas>& pending);
  // Whether a replica hosted here has not applied a split the map records
  // (its local range_version is behind the map's).
  bool SplitPendingHere(const ClusterMap& map, const absl::flat_hash_set<ShardId>& hosted) const;
  // Carries out a scheduler's Peer.ChangeReplica on the node.
  void ChangeReplica(const peerpb::ReplicaChangeRequest& request,
                     std::function<void(absl::Status)> done);

  const ServerConfig config_;
  const ServerHooks hooks_;
  mutable absl::Mutex fatal_mu_;
  absl::Status fatal_ ABSL_GUARDED_BY(fatal_mu_);
  bool stopped_ = false;

  // In start order; Stop() takes them down in reverse.
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<HealthMonitor> health_;
  std::unique_ptr<MetricsHttpServer> http_;
  std::optional<security::TlsCredentials> peer_credentials_;
  std::optional<security::TlsCredentials> client_credentials_;
  // Users and roles as this node knows them (AuthStore keeps it current);
  // read by every service, so it outlives them.
  security::AuthCache auth_cache_;
  security::DataDirIdentity identity_;
  // Set when this node came back empty after losing its data
  // (security::LoadReplacement): the map version from which the cluster
  // records it as replaced. It then founds nothing, hosts nothing by an
  // older map, and while the map still records it, hosts only the
  // replicas moving to it (learners). Written before the node starts.
  std::optional<uint64_t> replaced_at_version_;
  std::unique_ptr<security::PeerRegistry> registry_;
  std::unique_ptr<storage::Engine> engine_;
  // Only with --testing-storage-faults: the engine's RaftLog and KvStore
  // wrapped to fail on command; the Node and the StateMachine use these.
  std::unique_ptr<storage::FaultInjectionEngine> testing_faults_;
  std::unique_ptr<StateMachine> state_machine_;
  // Outlives the transport, the peer service and the node (declared after
  // it), goes before the engine.
  std::unique_ptr<SnapshotExchange> snapshots_;
  // The Node once it runs, for the transport's callbacks (null before and
  // after: messages are then dropped, as raft tolerates).
  std::atomic<Node*> node_for_peers_{nullptr};
  std::unique_ptr<GrpcTransport> transport_;
  std::unique_ptr<PeerService> peer_service_;
  std::unique_ptr<GrpcServer> peer_server_;
  std::unique_ptr<Node> node_;
  std::unique_ptr<NodeKvBackend> backend_;
  std::unique_ptr<HistoryRetention> history_retention_;  // with --watch-history-seconds
  std::unique_ptr<ClusterMapCache> maps_;
  // Created before the KV service, which checks leases through them.
  std::unique_ptr<GrpcClusterControl> cluster_control_;
  std::unique_ptr<LeaseKeeper> lease_keeper_;
  std::unique_ptr<LeaseCheck> lease_check_;
  std::unique_ptr<AuthStore> auth_store_;
  // The store's bytes for the storage quota (Limits, in the auth state).
  std::unique_ptr<StorageUsage> storage_usage_;
  // The AuthStore once it runs, for Peer.ReadAuthState (null before and after).
  std::atomic<AuthStore*> auth_store_for_peers_{nullptr};
  std::unique_ptr<AuthService> auth_service_;
  std::unique_ptr<KvService> kv_service_;
  std::unique_ptr<ClusterService> cluster_service_;
  std::unique_ptr<LeaseService> lease_service_;
  std::unique_ptr<GrpcServer> client_server_;
  std::unique_ptr<MetaGroup> meta_group_owned_;
  // The metadata group once it runs, for the Cluster service's handlers
  // (null before and after).
  std::atomic<MetaGroup*> meta_group_{nullptr};
  std::unique_ptr<Scheduler> scheduler_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CMD_SERVER_H_
