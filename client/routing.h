// Routing state of the client SDK: the cached cluster map and the per-shard
// leader cache.
//
// Where it sits: a call computes its shard with ShardForKey() (the key's
// hash, proto/key_hash.h, looked up in the map's hash ranges), asks Route() for the shard's
// replicas and cached leader, and reports what it learns: a not-leader hint (SetLeader), a node
// that failed as leader (ForgetLeader), a newer map from a stale_route error
// or Cluster.GetClusterMap (Update).
//
// Thread-safe. Addresses are the members' client addresses ("host:port").
#ifndef TESSERA_CLIENT_ROUTING_H_
#define TESSERA_CLIENT_ROUTING_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "tessera/kv.pb.h"

namespace tessera::client {

// Where to send a request for one shard.
struct ShardRoute {
  uint32_t shard = 0;
  uint64_t epoch = 0;
  uint64_t range_version = 0;         // of this shard in the map routed by
  std::vector<std::string> replicas;  // client addresses, in map order
  std::optional<std::string> leader;  // cached leader address, if known
};

class RouteTable {
 public:
  RouteTable() = default;

  // Installs `map` if it differs from the current one and is not older
  // (a lower version: a node that has not caught up answered with the map
  // it has; ignored, OK). Leader-cache entries survive
  // while the cached leader is still a replica of its shard (a shard keeps
  // its id across a split); the map's own leader hints fill the rest. Returns
  // the number of leader-cache entries dropped. kInvalidArgument (and the
  // old map stays) when the map is malformed: no shards, a shard id out of
  // range or repeated, or hash ranges that do not cover the 64-bit hash
  // space exactly once (a split changes them: ranges need not be the
  // equal ones proto/key_hash.h starts with).
  // `splits`, if given, receives (new shard, the shard of the old map whose
  // range held the new one's first hash) for each shard id the installed
  // map adds: the shards a split made and where they came from.
  absl::Status Update(const v1::ClusterMap& map, int* dropped_leaders = nullptr,
                      std::vector<std::pair<uint32_t, uint32_t>>* splits = nullptr)
      ABSL_LOCKS_EXCLUDED(mu_);

  bool has_map() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t epoch() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t version() const ABSL_LOCKS_EXCLUDED(mu_);     // 0 without a map
  uint32_t num_shards() const ABSL_LOCKS_EXCLUDED(mu_);  // 0 without a map
  std::optional<v1::ClusterMap> map() const ABSL_LOCKS_EXCLUDED(mu_);

  // The shard whose hash range holds KeyHash(key); nullopt without a map.
  std::optional<uint32_t> ShardForKey(absl::string_view key) const ABSL_LOCKS_EXCLUDED(mu_);
  // The shard whose [hash_start, hash_end] in the map holds `hash` (binary
  // search over the map's ranges); nullopt without a map.
  std::optional<uint32_t> ShardForHashInMap(uint64_t hash) const ABSL_LOCKS_EXCLUDED(mu_);

  // nullopt without a map or for a shard id out of range.
  std::optional<ShardRoute> Route(uint32_t shard) const ABSL_LOCKS_EXCLUDED(mu_);

  // Records `address` as the leader of `shard`.
  void SetLeader(uint32_t shard, const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);
  // Forgets the leader of `shard` if it is `address`.
  void ForgetLeader(uint32_t shard, const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);
  // shard -> cached leader address (tests, `tessera cluster status`).
  absl::flat_hash_map<uint32_t, std::string> Leaders() const ABSL_LOCKS_EXCLUDED(mu_);

  // Every member's client address (empty without a map).
  std::vector<std::string> MemberAddresses() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::optional<v1::ClusterMap> map_ ABSL_GUARDED_BY(mu_);
  // shard -> replica client addresses, from map_.
  std::vector<std::vector<std::string>> replicas_ ABSL_GUARDED_BY(mu_);
  // The shards' hash_start, sorted, and the shard starting at each.
  std::vector<uint64_t> range_starts_ ABSL_GUARDED_BY(mu_);
  std::vector<uint32_t> range_shards_ ABSL_GUARDED_BY(mu_);
  // Each shard's range_version (0 in the map read as 1), index = shard id.
  std::vector<uint64_t> range_versions_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::string> leaders_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_ROUTING_H_
