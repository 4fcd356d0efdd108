// Locks and leader election on leases, as etcd's concurrency package:
// Session (a lease kept alive), Mutex (a fair lock with a fencing token)
// and Election (campaign, leader, proclaim, resign, observe).
//
//   auto session = Session::Create(client.get(), absl::Seconds(10));
//   Mutex mutex(client.get(), session->get(), "reports");
//   absl::StatusOr<uint64_t> token = mutex.Lock(absl::Now() + absl::Minutes(1));
//   storage.Write(data, *token);  // the storage refuses tokens below the highest it saw
//   mutex.Unlock();
//
// How they work: every contender puts its own key under a common prefix,
// attached to its session's lease: "__lock/{NAME}/" (or "__election/{NAME}/")
// + the lease id in hex. The hash tag {NAME} puts them all in one shard,
// so their create revisions, which the shard's log orders, are comparable.
// The contender whose key has the lowest create revision holds the lock
// (leads); each other one waits for the deletion of the key just before
// its own, so they go in the order they asked (FIFO), and each wakes only
// when its turn may have come. A holder that dies or stalls past its TTL
// loses its lease; its key goes with it and the next one proceeds.
//
// The fencing token is the create revision of the holder's key: it grows
// with each holder (a later holder's key was created after the earlier
// one's). A process paused while holding the lock may resume believing it
// still holds it after its lease ended and another holds it; so whatever
// the lock protects must remember the highest token it accepted and refuse
// lower ones (client/README.md "Locks and fencing" shows it done with a
// Txn). NAME must be non-empty and must not contain '}'.
//
// Thread-safety: Session is thread-safe; a Mutex or an Election is used by
// one thread at a time.
#ifndef TESSERA_CLIENT_CONCURRENCY_H_
#define TESSERA_CLIENT_CONCURRENCY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/lease.h"

namespace tessera::client {

// A lease granted and kept alive for as long as the Session lives.
class Session {
 public:
  // Grants a lease of `ttl` and starts renewing it; Client::GrantLease's
  // errors.
  static absl::StatusOr<std::unique_ptr<Session>> Create(Client* client, absl::Duration ttl);
  // Stops renewing and revokes the lease (its keys go at once).
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  uint64_t lease() const { return keep_->id(); }
  absl::Duration ttl() const { return keep_->ttl(); }
  // KeepAlive::lost / valid_until / WaitLost.
  bool lost() const { return keep_->lost(); }
  absl::Time valid_until() const { return keep_->valid_until(); }
  bool WaitLost(absl::Time deadline) const { return keep_->WaitLost(deadline); }
  // Stops renewing without revoking: the lease ends TTL after its last
  // renewal (as if this process had died).
  void Abandon() {
    abandoned_ = true;
    keep_->Stop();
  }

 private:
  Session(Client* client, std::unique_ptr<KeepAlive> keep)
      : client_(client), keep_(std::move(keep)) {}
  Client* const client_;
  std::unique_ptr<KeepAlive> keep_;
  bool abandoned_ = false;
};

// One contender's key under `prefix`, and waiting for its turn.
class Contender {
 public:
  Contender(Client* client, const Session* session, std::string prefix);

  // Creates the key with `value` if absent (else keeps the one there, e.g.
  // after a retry) and returns its create revision.
  absl::StatusOr<uint64_t> Enter(const std::string& value, absl::Time deadline);
  // Waits until no key under the prefix was created before ours. Errors:
  // kDeadlineExceeded; kAborted if the session was lost or our key is gone.
  absl::Status WaitTurn(absl::Time deadline);
  // Deletes the key if it is still ours (by create revision).
  absl::Status Leave(absl::Time deadline);
  // Puts `value` in the key if it is still ours; kFailedPrecondition if not.
  absl::Status Update(const std::string& value, absl::Time deadline);

  const std::string& key() const { return key_; }
  uint64_t revision() const { return revision_; }

 private:
  // A Txn whose compare holds while the key is still ours.
  TxnRequest IfOurs() const;

  Client* const client_;
  const Session* const session_;
  const std::string prefix_;
  const std::string key_;
  uint64_t revision_ = 0;  // 0: not entered
};

class Mutex {
 public:
  // `client` and `session` must outlive the Mutex.
  Mutex(Client* client, const Session* session, const std::string& name);
  // Waits for the lock; returns the fencing token. Errors: kInvalidArgument
  // (bad name), kDeadlineExceeded (it stays queued: call Lock again to keep
  // waiting, or Unlock to leave), kAborted (the session was lost), and the
  // client's errors.
  absl::StatusOr<uint64_t> Lock(absl::Time deadline = absl::InfiniteFuture());
  // Releases the lock (or leaves the queue).
  absl::Status Unlock(absl::Time deadline = absl::InfiniteFuture());
  // The token of the lock held, 0 before Lock succeeded.
  uint64_t token() const { return token_; }
  const std::string& key() const { return contender_.key(); }

 private:
  const std::string name_;
  Contender contender_;
  uint64_t token_ = 0;
};

class Election {
 public:
  Election(Client* client, const Session* session, const std::string& name);
  // Waits until this contender leads, announcing `value`; returns the
  // leadership's revision (a fencing token). Errors as Mutex::Lock.
  absl::StatusOr<uint64_t> Campaign(const std::string& value,
                                    absl::Time deadline = absl::InfiniteFuture());
  // Announces a new value while leading; kFailedPrecondition if not.
  absl::Status Proclaim(const std::string& value, absl::Time deadline = absl::InfiniteFuture());
  // Steps down (or leaves the queue).
  absl::Status Resign(absl::Time deadline = absl::InfiniteFuture());
  // The current leader's key and value; nullopt if nobody leads.
  absl::StatusOr<std::optional<KeyValue>> Leader(absl::Time deadline = absl::InfiniteFuture());

  // Calls `on_change` with the leader now and after each change of leader
  // or value, until it returns false (OK) or `deadline` (OK). Needs no
  // Session (pass nullptr to the constructor to only observe).
  absl::Status Observe(const std::function<bool(const std::optional<KeyValue>&)>& on_change,
                       absl::Time deadline);

 private:
  Client* const client_;
  const std::string name_;
  const std::string prefix_;
  std::optional<Contender> contender_;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_CONCURRENCY_H_
