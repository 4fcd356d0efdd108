// LeaseCheck: the KV service's check that the leases a write names are live
// (KvServiceOptions::check_leases), before the write is proposed.
//
// Asked of the lease keeper here when this node leads the metadata group,
// else of the group's leader over its client port (Lease.TimeToLive): the
// leader this node's metadata replica knows, then the group's members in
// turn. A lease found live is not asked about again for `cache_for`: the
// shards refuse a put naming a lease they saw end, and remember that far
// longer (StateMachineOptions::lease_tombstone_revisions), so the cache
// only has to be short next to that.
//
// Thread-safety: thread-safe. Everything passed in is not owned and must
// outlive it.
#ifndef TESSERA_SERVER_CMD_LEASE_CHECK_H_
#define TESSERA_SERVER_CMD_LEASE_CHECK_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/lease_keeper.h"
#include "server/cmd/cluster_control.h"
#include "server/kv/backend.h"

namespace tessera::server {

class LeaseCheck {
 public:
  LeaseCheck(NodeId self, LeaseKeeper* keeper, const ClusterMapCache* maps, KvBackend* backend,
             GrpcClusterControl* control, absl::Duration cache_for = absl::Milliseconds(500));

  // done(OK) if every lease is live; else NOT_FOUND naming the first that
  // is not, or UNAVAILABLE when the metadata group's leader cannot be
  // reached.
  void Check(std::vector<uint64_t> leases, absl::Time deadline,
             std::function<void(absl::Status)> done) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Checks leases[next..] one after the other.
  void CheckFrom(std::shared_ptr<std::vector<uint64_t>> leases, size_t next, absl::Time deadline,
                 std::function<void(absl::Status)> done);
  // Asks candidates[i..] about `id` until one answers other than UNAVAILABLE.
  void AskFrom(std::shared_ptr<std::vector<NodeId>> candidates, size_t i, uint64_t id,
               absl::Time deadline, std::function<void(absl::Status)> done);
  bool Fresh(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);
  void Remember(uint64_t id) ABSL_LOCKS_EXCLUDED(mu_);

  const NodeId self_;
  LeaseKeeper* const keeper_;
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  GrpcClusterControl* const control_;
  const absl::Duration cache_for_;

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, absl::Time> live_ ABSL_GUARDED_BY(mu_);  // when checked
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CMD_LEASE_CHECK_H_
