// AuthStore: keeps this node's security::AuthCache in step with the users,
// roles and permissions stored in the metadata group, and changes them.
//
// Where it sits: tessera-server creates one after the MetaGroup. The state
// is one serverpb::AuthState under the metadata group's key kMetaAuthKey
// (absent until the first change: auth disabled, nobody known). A
// background thread, every poll_interval, reads the stored bytes (from the
// local metadata replica, or, without one or while it waits for its first
// snapshot and does not lead, through `remote`: tessera-server asks the
// metadata replicas' Peer.ReadAuthState) and, when they changed, publishes
// a new AuthView. Until the first read succeeds the cache holds nullptr:
// the services refuse calls (UNAVAILABLE), never serve them as if auth were
// off. A replica reads its applied state without a barrier: it lags its
// leader by a replication round, so a change is in force on every node
// that hears from the group within about a poll interval.
//
// Change() runs on the metadata group's leader (else UNAVAILABLE): it
// applies the change to the state its replica holds and proposes a
// compare-and-swap of the stored bytes, retrying a few times if another
// change landed in between.
//
// Thread-safety: thread-safe. `backend` and `cache` are not owned and must
// outlive the AuthStore (Stop() or the destructor joins its thread).
#ifndef TESSERA_SERVER_CLUSTER_AUTH_STORE_H_
#define TESSERA_SERVER_CLUSTER_AUTH_STORE_H_

#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/kv/backend.h"
#include "server/security/auth.h"

namespace tessera::server {

// The metadata group's key holding the serialized serverpb::AuthState.
inline constexpr char kMetaAuthKey[] = "auth";

struct AuthStoreOptions {
  absl::Duration poll_interval = absl::Milliseconds(100);
  absl::Duration propose_timeout = absl::Seconds(5);
  // Where the store's few lines go (auth turned on or off, a stored state
  // that does not parse); nullptr: nowhere.
  std::function<void(const std::string&)> log;
};

class AuthStore {
 public:
  // The stored bytes as another member has them (nullopt: nothing stored).
  using RemoteReader = std::function<absl::StatusOr<std::optional<std::string>>()>;

  AuthStore(AuthStoreOptions options, KvBackend* backend, security::AuthCache* cache,
            RemoteReader remote);
  ~AuthStore();
  AuthStore(const AuthStore&) = delete;
  AuthStore& operator=(const AuthStore&) = delete;

  void Stop();

  // The bytes stored in this node's metadata replica: nullopt if none;
  // kNotFound without a replica here (for Peer.ReadAuthState).
  absl::StatusOr<std::optional<std::string>> ReadLocal() const;

  // Applies `change` (security::ApplyAuthChange) and waits until it is
  // committed and applied here, so the caller sees it at once. Errors:
  // ApplyAuthChange's, kUnavailable (this node does not lead the metadata
  // group), kAborted (it kept changing), the proposal's.
  absl::Status Change(const v1::AuthChangeRequest& change);

 private:
  void Run();
  // What the poll reads (see the file comment).
  absl::StatusOr<std::optional<std::string>> ReadStored() const;
  bool LeadsMetaGroup() const;
  void Log(const std::string& line) const;

  const AuthStoreOptions options_;
  KvBackend* const backend_;
  security::AuthCache* const cache_;
  const RemoteReader remote_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CLUSTER_AUTH_STORE_H_
