// Authentication and authorization: who a call comes from and what that
// user may do (server/README.md "Authentication and authorization").
//
// The state (users with Argon2id password hashes, roles with permissions on
// key ranges, the token key, on/off) is one serverpb::AuthState stored in
// the metadata group; cluster/auth_store.h keeps every node's AuthCache in
// step with it and proposes the changes ApplyAuthChange() computes. An
// AuthView is an immutable snapshot of it with what the checks need
// precomputed (each user's readable and writable key ranges, merged).
//
// Identities:
//  - a token: "<payload>.<mac>", both base64url; the payload is a
//    serverpb::AuthToken (user, the user's password generation, expiry),
//    the mac its HMAC-SHA-256 under the token key (libsodium). Any node
//    verifies it without asking another; a new password (generation), a
//    deleted user or a disabled-then-enabled cluster with a new key ends it;
//  - a verified client certificate: its common name names the user, who
//    must exist;
//  - a member of the cluster: a certificate or a token naming
//    "node-<id>" (tokens minted by a node for its own calls, with the key
//    only members hold); members may do everything.
// Crypto is libsodium's (Debian's libsodium-dev): crypto_pwhash_str
// (Argon2id, the INTERACTIVE limits: 64 MiB, 2 passes), crypto_auth_hmacsha256,
// randombytes_buf. Nothing here is home-made.
//
// Thread-safety: AuthView is immutable; AuthCache and SignInThrottle are
// thread-safe.
#ifndef TESSERA_SERVER_SECURITY_AUTH_H_
#define TESSERA_SERVER_SECURITY_AUTH_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "tessera/command.pb.h"
#include "tessera/kv.pb.h"

namespace tessera::server::security {

inline constexpr char kRootName[] = "root";  // the built-in role, and the user enable needs
// The serialized AuthState is kept below this (a few thousand users).
inline constexpr size_t kMaxAuthStateBytes = 768 << 10;
inline constexpr size_t kMaxPermissionKeyBytes = 4096;

// Argon2id hash of `password` in libsodium's string format (salt and limits
// inside). kResourceExhausted if the memory could not be had.
absl::StatusOr<std::string> HashPassword(absl::string_view password);
bool PasswordMatches(const std::string& hash, absl::string_view password);

// Who a call comes from.
struct Principal {
  std::string user;     // "" : nobody (no token, no certificate)
  bool member = false;  // a node of the cluster
  // A token's expiry: past it the principal is nobody's (streams opened with
  // the token end their rights then). Certificates: never (TLS checked them).
  absl::Time expires = absl::InfiniteFuture();
};

enum class Access { kRead, kWrite };

class AuthView {
 public:
  // Auth disabled, nobody known.
  AuthView() = default;
  // kInvalidArgument if the stored state is not one ApplyAuthChange makes.
  static absl::StatusOr<std::shared_ptr<const AuthView>> Make(serverpb::AuthState state);

  const serverpb::AuthState& state() const { return state_; }
  bool enabled() const { return state_.enabled(); }

  // A token for `user` (who must exist, or be a member name "node-<id>")
  // valid until `expires`. kFailedPrecondition while no token key exists
  // (auth was never enabled).
  absl::StatusOr<std::string> MintToken(absl::string_view user, absl::Time expires) const;
  // kUnauthenticated (the message says why: malformed, bad signature,
  // expired, unknown user, password changed) or the principal.
  absl::StatusOr<Principal> VerifyToken(absl::string_view token, absl::Time now) const;
  // The principal a verified certificate's common name stands for;
  // kUnauthenticated for a name that is no user.
  absl::StatusOr<Principal> FromCertificate(absl::string_view common_name) const;

  // OK if auth is disabled or `who` may `access` every key of [key,
  // range_end) (range_end empty: `key` alone; "\0": every key from `key`);
  // else kUnauthenticated (nobody) or kPermissionDenied naming the user, the
  // access and the keys.
  absl::Status Check(const Principal& who, Access access, absl::string_view key,
                     absl::string_view range_end = "") const;
  // OK if auth is disabled or `who` is a member or holds role root; else
  // kUnauthenticated / kPermissionDenied "... needs role root to <what>".
  absl::Status CheckRoot(const Principal& who, absl::string_view what) const;
  // OK if auth is disabled or `who` is anybody (member or known user).
  absl::Status CheckSignedIn(const Principal& who) const;
  bool IsRoot(const Principal& who) const;
  std::vector<std::string> RolesOf(absl::string_view user) const;

 private:
  // Merged, sorted, disjoint [start, end) ranges; end "" means unbounded.
  using Ranges = std::vector<std::pair<std::string, std::string>>;
  struct Rights {
    bool root = false;
    Ranges read, write;
  };
  const serverpb::StoredUser* FindUser(absl::string_view name) const;

  serverpb::AuthState state_;
  absl::flat_hash_map<std::string, Rights> rights_;  // by user
};

// The state after `change`, made by `who` (Auth.Change; the caller checks
// CheckRoot first). Errors: kInvalidArgument (names, permissions),
// kNotFound / kAlreadyExists, kFailedPrecondition (enable without user root
// holding role root; removing root while enabled), kResourceExhausted (past
// kMaxAuthStateBytes). Hashes passwords (slow: run it off hot threads).
absl::StatusOr<serverpb::AuthState> ApplyAuthChange(serverpb::AuthState state,
                                                    const v1::AuthChangeRequest& change);

// Every node's current AuthView: nullptr until the first is published (the
// node does not know yet whether auth is on: it serves nobody).
class AuthCache {
 public:
  AuthCache() = default;
  // With a view already (tests, tools).
  explicit AuthCache(std::shared_ptr<const AuthView> view) : current_(std::move(view)) {}
  std::shared_ptr<const AuthView> Current() const ABSL_LOCKS_EXCLUDED(mu_);
  void Publish(std::shared_ptr<const AuthView> view) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  std::shared_ptr<const AuthView> current_ ABSL_GUARDED_BY(mu_);
};

// Failed sign-ins per source address: each source may fail `burst` times,
// then once per `refill` (a token bucket); at most `max_sources` are
// tracked (the oldest idle ones are forgotten first).
class SignInThrottle {
 public:
  struct Options {
    int burst = 5;
    absl::Duration refill = absl::Seconds(2);
    size_t max_sources = 10000;
  };
  explicit SignInThrottle(Options options) : options_(options) {}
  // Zero if `source` may try now, else how long until it may.
  absl::Duration Wait(absl::string_view source, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  void Failed(absl::string_view source, absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated;
  };
  void Refill(Bucket& b, absl::Time now) const;

  const Options options_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Bucket> buckets_ ABSL_GUARDED_BY(mu_);
};

// Per-user limits on operations and request bytes per second (Limits in
// kv.proto), on one node: a token bucket per user and kind holding one
// second's worth, refilled continuously. Users are those the auth state
// knows plus "" (everyone without an identity): bounded by that state.
class RateLimiter {
 public:
  // Zero if `user` may make `ops` operations of `bytes` now (they are
  // taken), else how long until it may (nothing taken). Members and
  // unlimited users always pass.
  absl::Duration Admit(const Principal& who, const v1::Limits& limits, uint64_t ops, uint64_t bytes,
                       absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time updated = absl::InfinitePast();
  };
  // Refills `b` at `rate` per second (capacity one second's worth); the wait
  // until it holds `need`.
  static absl::Duration Wait(Bucket& b, double rate, double need, absl::Time now);

  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::pair<Bucket, Bucket>> buckets_ ABSL_GUARDED_BY(mu_);
};

// "ipv4:10.0.0.1:5000" (gRPC's peer string) -> "ipv4:10.0.0.1".
std::string SourceAddress(absl::string_view grpc_peer);

}  // namespace tessera::server::security

#endif  // TESSERA_SERVER_SECURITY_AUTH_H_
