// LeaseKeeper: the lease table (tessera.v1.Lease in kv.proto), kept by the
// leader of the metadata group.
//
// Where it sits: tessera-server runs one on every node; it acts only while
// this node's replica of the metadata group (kMetaShard) leads the group,
// like the Scheduler. The Lease service calls it; a node that does not lead
// answers UNAVAILABLE.
//
// What is replicated and what is not (as etcd's lessor):
//  - each lease is a record in the metadata group (key "lease/" + 16 hex
//    digits, a serverpb::LeaseRecord: id, TTL, revoking), written by Grant
//    and when it ends;
//  - the countdown is not: the leader keeps, in memory, when each lease
//    ends on its monotonic clock (`clock`), and moves it to "received +
//    TTL" on each renewal. A new leader (a new term) loads the records after
//    a read barrier and starts every countdown at the full TTL: a leader
//    change can make a lease last longer, never end earlier;
//  - a renewal is acknowledged only after a read barrier of the metadata
//    group (a quorum confirms the leadership), so a leader cut off from its
//    group cannot keep a lease alive that the new leader will end.
//
// Ending a lease (expiry or Revoke), in steps that each survive a crash of
// the leader (the next one carries on from the records):
//  1. its record is rewritten with revoking = true (it is no longer live:
//     renewals, TimeToLive and new puts naming it get NOT_FOUND);
//  2. every client shard of the cluster map applies a serverpb::RevokeLeases
//     naming it (through `revoker`, in batches of max_revoke_batch), which
//     deletes the shard's keys attached to it at one revision and refuses
//     later puts naming it. The map is the one stored in the group, read
//     after a read barrier; this waits while a split is in progress there
//     (the new shard may hold keys of the lease before the map lists it),
//     and starts again if the stored map changed meanwhile;
//  3. the record is deleted; a Revoke waiting for it returns.
//
// Thread-safety: thread-safe. Grant/Revoke/KeepAlive complete through their
// callback, which may run on the raft loop thread (it must not block) or on
// the caller's. One thread runs the ticks (load, expiry, steps 1-3).
// `backend` and `revoker` are not owned and must outlive it.
#ifndef TESSERA_SERVER_CLUSTER_LEASE_KEEPER_H_
#define TESSERA_SERVER_CLUSTER_LEASE_KEEPER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/cluster/cluster_map.h"
#include "server/kv/backend.h"
#include "tessera/command.pb.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

// The metadata group's keys of lease records: kLeaseRecordPrefix + 16 hex digits.
inline constexpr char kLeaseRecordPrefix[] = "lease/";

struct LeaseKeeperOptions {
  absl::Duration tick = absl::Milliseconds(100);
  // Granted TTLs are clamped to [min, max]. The minimum keeps a lease from
  // ending during an ordinary leader election.
  int64_t min_ttl_seconds = 2;
  int64_t max_ttl_seconds = 30 * 24 * 3600;
  // Live leases at most; a Grant beyond gets RESOURCE_EXHAUSTED.
  size_t max_leases = 1'000'000;
  // Deadline of the keeper's own proposals and read barriers.
  absl::Duration propose_timeout = absl::Seconds(5);
  // Leases per RevokeLeases command (and per record rewrite).
  size_t max_revoke_batch = 1000;
};

// Has a client shard apply a RevokeLeases (step 2 above).
class LeaseRevoker {
 public:
  virtual ~LeaseRevoker() = default;
  // OK once `shard`'s leader applied a RevokeLeases of `leases`. Called
  // for several shards at once, from several threads.
  virtual absl::Status Revoke(const ShardLayout& shard, const std::vector<uint64_t>& leases) = 0;
};

// A monotonic clock: time since an arbitrary fixed point.
using MonotonicClock = std::function<absl::Duration()>;
MonotonicClock SteadyClock();

class LeaseKeeper {
 public:
  struct Stats {
    uint64_t live = 0;           // leases in the table (0 unless leading)
    uint64_t granted_total = 0;  // by this node while it led
    uint64_t expired_total = 0;
    uint64_t revoked_total = 0;  // by Revoke
    uint64_t keepalives_total = 0;
  };

  // Starts the tick thread unless options.tick is zero (tests call Tick()).
  LeaseKeeper(const LeaseKeeperOptions& options, KvBackend* backend, LeaseRevoker* revoker,
              MonotonicClock clock = SteadyClock());
  ~LeaseKeeper();  // Stop()s.
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  // Joins the tick thread and fails waiting Revokes. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Every call below fails with kUnavailable unless this node leads the
  // metadata group and has loaded the table (the message says which), and
  // with kNotFound for an id that is not a live lease.
  //
  // A new lease (its countdown starts when its record is committed).
  // kInvalidArgument for ttl_seconds < 0, kResourceExhausted at max_leases.
  // `owner`: the user granting it ("" without auth), kept in its record.
  void Grant(int64_t ttl_seconds, absl::Time deadline,
             std::function<void(absl::StatusOr<v1::LeaseGrantResponse>)> done,
             std::string owner = "") ABSL_LOCKS_EXCLUDED(mu_);
  // Ends the lease; done once every shard deleted its keys (or
  // kDeadlineExceeded at `deadline`: it ended, its keys are still being
  // deleted).
  void Revoke(uint64_t id, absl::Time deadline, std::function<void(absl::Status)> done)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Renews the lease: done(its TTL) once a read barrier confirmed the
  // leadership.
  void KeepAlive(uint64_t id, absl::Time deadline,
                 std::function<void(absl::StatusOr<int64_t>)> done) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::LeaseTimeToLiveResponse> TimeToLive(uint64_t id) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // The live leases, ascending; with `owner` set, only those it granted.
  absl::StatusOr<std::vector<uint64_t>> List(
      const std::optional<std::string>& owner = std::nullopt) const ABSL_LOCKS_EXCLUDED(mu_);
  // Who granted the lease ("" without auth).
  absl::StatusOr<std::string> Owner(uint64_t id) const ABSL_LOCKS_EXCLUDED(mu_);

  Stats stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // One round of the tick thread's work (tests with options.tick zero).
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Lease {
    int64_t ttl_seconds = 0;
    absl::Duration ends;  // on clock_
    bool revoking = false;
    std::string owner;
  };
  struct RevokeWaiter {
    absl::Time deadline;
    std::function<void(absl::Status)> done;
  };

  void Run();
  // Tick() steps.
  void Load(uint64_t term) ABSL_LOCKS_EXCLUDED(mu_);
  void EndExpired() ABSL_LOCKS_EXCLUDED(mu_);
  void FinishRevoking() ABSL_LOCKS_EXCLUDED(mu_);
  void ExpireWaiters() ABSL_LOCKS_EXCLUDED(mu_);
  // Fails every waiting Revoke with `status`.
  void FailWaiters(const absl::Status& status) ABSL_LOCKS_EXCLUDED(mu_);

  // OK if leading with the table loaded.
  absl::Status Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A Txn that rewrites the records of `ids` as revoking, or deletes them.
  static serverpb::Command RecordsCommand(const std::vector<uint64_t>& ids,
                                          const std::map<uint64_t, Lease>& table, bool erase);

  const LeaseKeeperOptions options_;
  KvBackend* const backend_;
  LeaseRevoker* const revoker_;
  const MonotonicClock clock_;

  mutable absl::Mutex mu_;
  uint64_t term_ ABSL_GUARDED_BY(mu_) = 0;  // the term this node leads in; 0: not leading
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
  std::map<uint64_t, Lease> leases_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::vector<RevokeWaiter>> waiters_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Wakes the tick thread before its next tick (a Revoke is waiting).
  void Wake() ABSL_LOCKS_EXCLUDED(wake_mu_);

  absl::Mutex wake_mu_;  // a leaf lock, never held with mu_
  bool wake_ ABSL_GUARDED_BY(wake_mu_) = false;
  absl::Notification stop_;
  std::thread thread_;
};

// The metadata group's key of lease `id`'s record.
std::string LeaseRecordKey(uint64_t id);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CLUSTER_LEASE_KEEPER_H_
