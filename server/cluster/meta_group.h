// MetaGroup: keeps this node's ClusterMapCache in step with the cluster map
// stored in the metadata raft group (kMetaShard, cluster_map.h).
//
// Where it sits: tessera-server creates one after the Node has started. The
// metadata group is an ordinary shard of the Node and the StateMachine
// (replicas: ClusterMap::meta_replicas()); its replicated state holds the
// serialized v1::ClusterMap under the single key kMetaMapKey. A background
// thread, every poll_interval:
//  1. reads the stored value: on a node with a metadata replica that has
//     it, from the local replica's applied state (KvBackend::Get, no read
//     barrier: a lagging replica sees an older version, which the next
//     polls replace; nothing goes back since the cache only moves forward);
//     otherwise (no replica here, or a new one still waiting for its
//     snapshot) through `remote` (server.cc asks the members'
//     Cluster.NodeStatus, the metadata group's first);
//  2. when nothing is stored and the local metadata replica leads its group,
//     bootstraps it: proposes a Txn "if kMetaMapKey does not exist, put the
//     map computed from the flags". The compare makes it idempotent: of two
//     leaders in a row (or two nodes with different flags) only the first
//     write lands, the others' Txns fail their compare and change nothing;
//  3. when a new stored value appears, checks it (Check()): the bootstrap
//     map (version 1) must equal the map computed from the flags
//     (`expected`); a later version rules over the flags, which only
//     bootstrap (a node started with stale flags serves by it), but must
//     still name this node as a member (else kNotFound: it was removed, and
//     tessera-server exits 0). Accepted → handed to `on_map`,
//     then published in the cache (the KV and Cluster services serve from
//     the cache); refused, or not a valid map → calls `on_conflict` once with
//     kFailedPrecondition (or kDataLoss) and stops polling; the cache is
//     left as it was (the node should refuse to serve: tessera-server
//     exits 2).
// Until step 3 succeeds the cache stays empty and the services answer
// UNAVAILABLE ("not loaded yet").
//
// Changes to the stored map (replica moves, members) go through Change(),
// a compare-and-swap on the stored bytes proposed to the metadata group.
//
// Thread-safety: thread-safe; the callbacks run on the MetaGroup's thread
// and must not call Stop(). Lifetime: `backend` and `cache` are not owned
// and must outlive the MetaGroup (Stop() or the destructor joins the thread).
#ifndef TESSERA_SERVER_CLUSTER_META_GROUP_H_
#define TESSERA_SERVER_CLUSTER_META_GROUP_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/cluster/cluster_map.h"
#include "server/kv/backend.h"

namespace tessera::server {

// The metadata group's key holding the serialized v1::ClusterMap.
inline constexpr char kMetaMapKey[] = "cluster-map";

struct MetaGroupOptions {
  NodeId self = 0;
  absl::Duration poll_interval = absl::Milliseconds(100);
  // Deadline of one bootstrap proposal.
  absl::Duration propose_timeout = absl::Seconds(5);
};

class MetaGroup {
 public:
  // The stored map's bytes as another node has them: nullopt if it has none
  // yet; errors (any code) are retried at the next poll.
  using RemoteReader = std::function<absl::StatusOr<std::optional<std::string>>()>;
  using ConflictHandler = std::function<void(const absl::Status&)>;
  using Logger = std::function<void(const std::string&)>;
  // Told of each map accepted, in version order, before the cache serves
  // by it (it may block briefly, e.g. to create the replicas it lists),
  // and of the current one again every 10 polls.
  using MapHandler = std::function<void(std::shared_ptr<const ClusterMap>)>;
  // Computes the next map from the stored one.
  using Mutation = std::function<absl::StatusOr<ClusterMap>(const ClusterMap& current)>;

  // Starts the polling thread. The stored map is read from `backend`'s
  // metadata replica when this node hosts one that has it (a replica can
  // move here or away at run time), else through `remote` (may be nullptr:
  // local only); `backend` may be nullptr (remote only). `log` gets
  // one line per noteworthy event (bootstrap proposed, map loaded).
  MetaGroup(const MetaGroupOptions& options, ClusterMap expected, KvBackend* backend,
            RemoteReader remote, ClusterMapCache* cache, ConflictHandler on_conflict, Logger log,
            MapHandler on_map = nullptr);
  ~MetaGroup();  // Stop()s.
  MetaGroup(const MetaGroup&) = delete;
  MetaGroup& operator=(const MetaGroup&) = delete;

  // Joins the thread. Idempotent.
  void Stop();

  // The map stored in the local metadata replica (nullopt: absent, no
  // replica here, or unreadable). Thread-safe.
  static std::optional<v1::ClusterMap> ReadLocal(const KvBackend& backend);

  // Checks a stored value for node `self` whose flags give `expected`: the
  // map to serve by, or kFailedPrecondition (a bootstrap map different from
  // `expected`, the message says both), kNotFound (a later map without
  // `self`: it was removed), kDataLoss (not a map), or FromProto's errors.
  static absl::StatusOr<ClusterMap> Check(const ClusterMap& expected, NodeId self,
                                          const std::string& stored);

  // Replaces the stored map with mutate(stored map) (its version must be
  // the stored one's + 1) if the stored value is still the one mutate saw
  // when the change commits; blocks until it did or failed (at most
  // propose_timeout). Only on a node holding a metadata replica, which
  // must lead the group. Returns the map stored. Errors: mutate's own;
  // kAborted (the stored map changed meanwhile: try again);
  // kUnavailable (not the group's leader, with its hint, or no map yet);
  // kDeadlineExceeded; kFailedPrecondition (no metadata replica here).
  absl::StatusOr<ClusterMap> Change(const Mutation& mutate) const;

 private:
  void Run();
  absl::StatusOr<std::optional<std::string>> ReadStored() const;
  // This node's metadata replica's raft state, if it hosts one.
  std::optional<ShardStatus> LocalReplica() const;
  bool LeadsMetaGroup() const;
  // Proposes the bootstrap Txn and waits for its outcome (or Stop()).
  void ProposeBootstrap();
  // Proposes `command` to the metadata group and waits for its outcome
  // (kCancelled on Stop()).
  absl::StatusOr<serverpb::CommandResult> ProposeAndWait(serverpb::Command command) const;
  // Checks a newly seen stored value; false when it conflicts (stop polling).
  bool Accept(const std::string& bytes);

  const MetaGroupOptions options_;
  const ClusterMap expected_;
  KvBackend* const backend_;
  const RemoteReader remote_;
  ClusterMapCache* const cache_;
  const ConflictHandler on_conflict_;
  const Logger log_;
  const MapHandler on_map_;

  absl::Notification stop_;
  std::string last_seen_;  // the thread's only
  std::thread thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CLUSTER_META_GROUP_H_
