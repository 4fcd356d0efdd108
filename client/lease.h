// Leases in the SDK: Client::GrantLease, RevokeLease, LeaseTtl, Leases,
// RenewLease and KeepLeaseAlive (client.h), and KeepAlive, which renews a
// lease in the background and says when it may be lost.
//
//   absl::StatusOr<LeaseGrant> lease = client->GrantLease(absl::Seconds(10));
//   auto keep = client->KeepLeaseAlive(lease->id);
//   CallOptions put;
//   put.lease = lease->id;
//   client->Put("services/api/node-1", "10.0.0.7:80", put);  // gone if we die
//
// What a holder may assume (client/README.md "Leases"): the server ends a
// lease no earlier than TTL after it received the last renewal, so the
// lease is surely live until (send time of the last acknowledged renewal)
// + TTL: KeepAlive::valid_until(). Past it the lease may have ended, and
// anything built on it (a lock) must be treated as lost; fencing tokens
// (client/concurrency.h) protect against a holder that does not notice in
// time (a pause, a slow clock).
//
// Thread-safety: KeepAlive is thread-safe.
#ifndef TESSERA_CLIENT_LEASE_H_
#define TESSERA_CLIENT_LEASE_H_

#include <cstdint>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::client {

class Client;

struct LeaseGrant {
  uint64_t id = 0;
  absl::Duration ttl;  // as granted
};

struct LeaseTimeToLive {
  uint64_t id = 0;
  absl::Duration granted_ttl;
  absl::Duration remaining;  // until it ends unless renewed
};

class KeepAlive {
 public:
  // Renews lease `id` of TTL `ttl` about every ttl/3 through `client`
  // (which must outlive it), starting now. `valid_until`: until when the
  // lease is known live (e.g. grant time + ttl).
  KeepAlive(Client* client, uint64_t id, absl::Duration ttl, absl::Time valid_until);
  ~KeepAlive();  // Stop()s; the lease then ends ttl after its last renewal
  KeepAlive(const KeepAlive&) = delete;
  KeepAlive& operator=(const KeepAlive&) = delete;

  uint64_t id() const { return id_; }
  absl::Duration ttl() const { return ttl_; }
  // The lease is live at least until then (see the top).
  absl::Time valid_until() const ABSL_LOCKS_EXCLUDED(mu_);
  // The lease ended (the server said so) or was not renewed in time (now
  // is past valid_until()). Final: renewals stop.
  bool lost() const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until lost() or `deadline`; returns lost().
  bool WaitLost(absl::Time deadline) const ABSL_LOCKS_EXCLUDED(mu_);
  // Stops renewing. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Run() ABSL_LOCKS_EXCLUDED(mu_);

  Client* const client_;
  const uint64_t id_;
  const absl::Duration ttl_;
  mutable absl::Mutex mu_;
  absl::Time valid_until_ ABSL_GUARDED_BY(mu_);
  bool lost_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_LEASE_H_
