// ClusterMap: the static layout of a Tessera cluster (members, shards and
// which members hold each shard's replicas), computed identically by every
// node from the same flags, so nodes never need to agree on it at run time.
//
// Where it sits: tessera-server builds it at startup from --initial-cluster,
// --shards and --replication; the Node learns from it which shards it hosts
// (and their voters), the GrpcTransport where its peers listen, and the KV
// service checks each request's routing against it and hands it (as a
// v1::ClusterMap) to clients whose routing is stale.
//
// --initial-cluster syntax: comma-separated members, each
//   <id>=<client host:port>/<peer host:port>
// e.g. "1=127.0.0.1:7001/127.0.0.1:7101,2=127.0.0.1:7002/127.0.0.1:7102".
// Ids are non-zero decimal uint64 and unique; addresses are non-empty
// "host:port" with a decimal port in [0, 65535] and unique. Whitespace around
// members and around '=' and '/' is ignored. Member order does not matter.
//
// Shards: at bootstrap shard i of N owns the key hashes
// [HashRangeStart(i, N), HashRangeStart(i + 1, N) - 1] (proto/key_hash.h);
// the last one ends at 2^64 - 1. A split (WithSplit) halves a shard's range
// and gives the upper part the next shard id, so ids stay 0..num_shards-1
// and a key's shard is the one whose range holds its hash (ShardForKey).
//
// Placement: rendezvous (highest random weight) hashing. For shard s, every
// member m gets the weight PlacementWeight(s, m) = XXH3_64bits (seed 0) of
// the 16 bytes little-endian(uint64 s) || little-endian(uint64 m); the
// `replication` members with the highest weights (ties: lower id first) hold
// the replicas, listed by decreasing weight. Adding or removing a member
// therefore moves only the replicas that member gains or loses.
//
// Epoch: XXH3_64bits (seed 0) of a canonical text of the configuration
// ("tessera-map-v1;shards=N;replication=R;" then "id=client/peer;" per member
// in increasing id order), with the top bit cleared and 0 mapped to 1. It is
// an identity, not a counter: equal configurations have equal epochs, a
// different configuration has (with overwhelming probability) a different
// epoch, and clients compare epochs for equality only.
//
// Version: a counter of the stored map's changes (1 for the map Create()
// makes, which --initial-cluster bootstraps), and per shard a conf_version
// (its replica set) and a range_version (its hash range), also 1 at first
// (TiKV's region epoch). Nodes and clients only move forward to a map of a
// higher version; a request routed by an older map is refused only when
// its shard's range_version differs (v1::RequestHeader). After version 1
// the map is a record, not a computation: replica moves and new members
// change it (WithShardReplicas, WithMember), and the placement rule only
// says where new replicas should go.
//
// Metadata group: the replicated copy of the map lives in a small raft group,
// shard kMetaShard (outside the uint32 range of client shards, so no client
// request can name it), bootstrapped on the kMetaReplication members with the
// highest PlacementWeight(kMetaShard, m), or every member when there are
// fewer. Its replicas move like a shard's (meta(): a ShardLayout with id
// kMetaShard and no hash range), so a member holding one can leave or die.
// See meta_group.h and server/README.md.
//
// ClusterMap is immutable after construction and thread-safe;
// ClusterMapCache is thread-safe.
#ifndef TESSERA_SERVER_CLUSTER_CLUSTER_MAP_H_
#define TESSERA_SERVER_CLUSTER_CLUSTER_MAP_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "proto/ids.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

struct MemberInfo {
  NodeId id = 0;
  std::string client_address;  // host:port of the KV and Cluster services
  std::string peer_address;    // host:port of the Peer service
};

struct ShardLayout {
  ShardId id = 0;
  uint64_t hash_start = 0;       // inclusive
  uint64_t hash_end = 0;         // inclusive
  std::vector<NodeId> replicas;  // voters; by decreasing placement weight at bootstrap
  std::vector<NodeId> learners;  // non-voting replicas catching up in a move
  uint64_t conf_version = 1;     // grows when `replicas` or `learners` change
  uint64_t range_version = 1;    // grows when the hash range changes
  // A replica move in progress: the replica on move_from goes to move_to.
  NodeId move_from = 0;
  NodeId move_to = 0;
  // A split in progress: [split_hash, hash_end] becomes shard num_shards.
  uint64_t split_hash = 0;
};

inline constexpr uint32_t kDefaultNumShards = 16;
inline constexpr uint32_t kDefaultReplication = 3;
// Upper bound on --shards: keeps maps (and per-shard state) reasonable.
inline constexpr uint32_t kMaxNumShards = 1 << 16;
// Upper bound on members: every node keeps a peer connection and its
// threads per member, and members can be added at run time.
inline constexpr size_t kMaxMembers = 1024;
// The metadata raft group's shard id: above every client shard id (client
// shards are 0..N-1 with N <= kMaxNumShards, and uint32 on the wire).
inline constexpr ShardId kMetaShard = ShardId{1} << 32;
// Members holding a replica of the metadata group (fewer when the cluster
// has fewer members).
inline constexpr uint32_t kMetaReplication = 5;
// A leaving member's metadata replica is dropped rather than moved (when
// every staying member holds one already) only while more voters remain.
inline constexpr uint32_t kMinMetaVoters = 3;

class ClusterMap {
 public:
  // Builds the map of `members` (any order). `replication` above the member
  // count is capped to it. Errors: kInvalidArgument (no members, id 0 or
  // duplicated, empty/duplicated/malformed address, num_shards outside
  // [1, kMaxNumShards], replication 0) with a one-line message.
  static absl::StatusOr<ClusterMap> Create(std::vector<MemberInfo> members, uint32_t num_shards,
                                           uint32_t replication);

  // Parses the --initial-cluster syntax above, then Create()s.
  static absl::StatusOr<ClusterMap> Parse(absl::string_view initial_cluster, uint32_t num_shards,
                                          uint32_t replication);

  // Rebuilds a map from its wire form (leader hints and fields this build
  // does not know ignored; versions of 0 read as 1). A version 1 map must be
  // what Create() makes of its members, shard count and replication (same
  // placement, same epoch); a later one must have Create()'s hash ranges and
  // epoch, and every shard voters (at least one) and learners that are
  // distinct members. Errors: kInvalidArgument as Create() or a malformed
  // shard; kFailedPrecondition when the proto's placement, ranges or epoch
  // are not the ones this build computes (another placement rule).
  static absl::StatusOr<ClusterMap> FromProto(const v1::ClusterMap& proto);

  // Changes: each returns the next map (version + 1); this one is unchanged.
  //
  // `shard`'s voters and learners become the given ones (conf_version + 1)
  // and its move is set (0, 0 = none). Errors: kInvalidArgument (unknown
  // shard or member, no voter, a member listed twice). `shard` may be
  // kMetaShard (the metadata group).
  absl::StatusOr<ClusterMap> WithShardReplicas(ShardId shard, std::vector<NodeId> voters,
                                               std::vector<NodeId> learners, NodeId move_from,
                                               NodeId move_to) const;
  // Records a split of `shard` at the middle of its range as in progress
  // (ShardLayout::split_hash). Errors: kInvalidArgument (unknown shard, a
  // range of one hash), kFailedPrecondition (a split anywhere or a move of
  // the shard in progress, kMaxNumShards reached).
  absl::StatusOr<ClusterMap> WithSplitStarted(ShardId shard) const;
  // The split in progress at the shard's split_hash, if any.
  const ShardLayout* Splitting() const;
  // `shard` keeps the hashes below `split_hash` (range_version + 1); a new
  // shard, id num_shards(), takes the rest of its range with the same
  // voters, conf_version and the new range_version. Errors:
  // kInvalidArgument (unknown shard, `split_hash` not inside its range
  // above its first hash), kFailedPrecondition (kMaxNumShards reached).
  // Clears the split in progress.
  absl::StatusOr<ClusterMap> WithSplit(ShardId shard, uint64_t split_hash) const;
  // Adds a member (it holds nothing until replicas move to it). Errors:
  // kInvalidArgument (id or address taken, malformed), as Create().
  absl::StatusOr<ClusterMap> WithMember(MemberInfo member) const;
  // Removes a member that holds no replica (of a shard or the metadata
  // group). Errors: kNotFound, kFailedPrecondition (it still holds some).
  absl::StatusOr<ClusterMap> WithoutMember(NodeId id) const;
  // Marks a member leaving (decommission: its replicas move off). Errors:
  // kNotFound; kFailedPrecondition (no other member is left to take its
  // replicas, or, when it holds a metadata replica, none to take that).
  absl::StatusOr<ClusterMap> WithLeaving(NodeId id) const;

  // Records that member `id` lost its data and came back under
  // `incarnation` (non-zero); replaces an earlier record of it. Errors:
  // kNotFound, kInvalidArgument (incarnation 0).
  absl::StatusOr<ClusterMap> WithReplaced(NodeId id, uint64_t incarnation) const;
  // Clears that record. Errors: kNotFound (no record).
  absl::StatusOr<ClusterMap> WithoutReplaced(NodeId id) const;
  // The incarnation member `id` was replaced under, or 0.
  uint64_t ReplacedIncarnation(NodeId id) const;
  // Every such record: (member, incarnation), by increasing id.
  const std::vector<std::pair<NodeId, uint64_t>>& replaced() const { return replaced_; }

  // The --initial-cluster members alone. Errors: kInvalidArgument.
  static absl::StatusOr<std::vector<MemberInfo>> ParseMembers(absl::string_view initial_cluster);

  uint64_t epoch() const { return epoch_; }
  uint64_t version() const { return version_; }
  // Names the cluster by the members it was bootstrapped with (ids and peer
  // addresses; not the shard count, which the metadata group checks), kept
  // as members come and go: what a data directory records as the cluster
  // it belongs to (security/data_dir_identity.h).
  uint64_t cluster_id() const { return cluster_id_; }
  uint32_t num_shards() const { return num_shards_; }
  uint32_t replication() const { return replication_; }
  // By increasing id.
  const std::vector<MemberInfo>& members() const { return members_; }
  // Indexed by shard id.
  const std::vector<ShardLayout>& shards() const { return shards_; }

  // The voters of the metadata group (kMetaShard), by decreasing placement
  // weight at bootstrap.
  const std::vector<NodeId>& meta_replicas() const { return meta_.replicas; }
  // The metadata group's layout: voters, learners, move, conf_version.
  const ShardLayout& meta() const { return meta_; }
  // Whether `node` holds any replica (voter or learner) of the metadata
  // group: whether it should host one.
  bool HostsMeta(NodeId node) const;
  // The layout of `shard` (a client shard or kMetaShard), or nullptr.
  const ShardLayout* Layout(ShardId shard) const;
  // Members being decommissioned, by increasing id.
  const std::vector<NodeId>& leaving() const { return leaving_; }
  bool IsLeaving(NodeId node) const;

  // The shard whose hash range holds `hash` / KeyHash(key).
  ShardId ShardForHash(uint64_t hash) const;
  ShardId ShardForKey(absl::string_view key) const;

  // The member with `id`, or nullptr. The pointer lives as long as the map.
  const MemberInfo* FindMember(NodeId id) const;
  // Whether `node` holds a voting replica of `shard` (false for an unknown
  // shard).
  bool Hosts(NodeId node, ShardId shard) const;
  // The shards `node` holds a voting replica of, by increasing id.
  std::vector<ShardId> ShardsOf(NodeId node) const;
  // The shards `node` holds any replica of (voter or learner), by
  // increasing id: what it should host.
  std::vector<ShardId> ReplicasOn(NodeId node) const;

  // The wire form, without leader hints (ShardInfo.leader/term = 0).
  v1::ClusterMap ToProto() const;

 private:
  ClusterMap() = default;
  // Checks that the shards' ranges cover the hash space once and indexes
  // them for ShardForHash. kInvalidArgument otherwise.
  absl::Status IndexRanges();

  uint64_t epoch_ = 0;
  uint64_t version_ = 1;
  uint64_t cluster_id_ = 0;
  uint32_t num_shards_ = 0;
  uint32_t replication_ = 0;
  std::vector<MemberInfo> members_;
  std::vector<ShardLayout> shards_;
  ShardLayout meta_{.id = kMetaShard};
  std::vector<NodeId> leaving_;
  std::vector<std::pair<NodeId, uint64_t>> replaced_;
  // The shards' hash_start in increasing order, and the shard of each.
  std::vector<uint64_t> range_starts_;
  std::vector<uint32_t> range_order_;
};

// The map a node currently serves by: empty until the metadata group's
// stored map has been loaded (see meta_group.h), then replaced whenever a
// new stored value is verified. Thread-safe.
class ClusterMapCache {
 public:
  ClusterMapCache() = default;
  // Starts loaded with `map` (tests, fixed maps).
  explicit ClusterMapCache(ClusterMap map)
      : map_(std::make_shared<const ClusterMap>(std::move(map))) {}

  // The current map, or nullptr while none is loaded. The map stays valid
  // as long as the caller holds the pointer.
  std::shared_ptr<const ClusterMap> Current() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return map_;
  }
  // Installs `map` unless the current one has a higher version (the cache
  // only moves forward); false when refused.
  bool Set(std::shared_ptr<const ClusterMap> map) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (map_ != nullptr && map != nullptr && map->version() < map_->version()) return false;
    map_ = std::move(map);
    return true;
  }

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const ClusterMap> map_ ABSL_GUARDED_BY(mu_);
};

// The rendezvous weight of `member` for `shard` (see the file comment).
// Part of the placement contract: never change it.
uint64_t PlacementWeight(ShardId shard, NodeId member);

// Parses "host:port" (port decimal, 0..65535). Errors: kInvalidArgument.
absl::Status ValidateHostPort(absl::string_view address);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CLUSTER_CLUSTER_MAP_H_
