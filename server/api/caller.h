// Caller: who a client-port call comes from (security/auth.h), resolved
// once per unary call or stream and checked against the node's current auth
// state at every operation (so a revoked permission or a deleted user takes
// effect on open streams too).
//
// Identity, in order: the "authorization" metadata "Bearer <token>"
// (Auth.Authenticate), else the common name of the verified client
// certificate (client-port TLS), else nobody. While auth is disabled the
// identity is not looked at and every check passes; a stream opened then is
// nobody's once auth is enabled.
#ifndef TESSERA_SERVER_API_CALLER_H_
#define TESSERA_SERVER_API_CALLER_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"
#include "server/security/auth.h"

namespace tessera::server {

// The metadata key of tokens, as gRPC carries it (lower case).
inline constexpr char kAuthorizationMetadata[] = "authorization";

class Caller {
 public:
  // Allowed everything: services run without an auth cache (tests).
  Caller() = default;
  // `context`'s identity under `auth` (nullptr: allowed everything).
  // kUnavailable (with ErrorDetail.not_leader REASON_NO_CLUSTER_MAP) while
  // the node has not loaded the auth state yet; kUnauthenticated for a token
  // or certificate that names nobody valid, while auth is enabled.
  static absl::StatusOr<Caller> Identify(const security::AuthCache* auth,
                                         const grpc::ServerContextBase& context);
  // A member's own call (tests).
  static Caller Member(const security::AuthCache* auth);

  // security::AuthView's checks against the current state.
  absl::Status Check(security::Access access, absl::string_view key,
                     absl::string_view range_end = "") const;
  absl::Status CheckRoot(absl::string_view what) const;
  absl::Status CheckSignedIn() const;
  bool IsRoot() const;
  const security::Principal& who() const { return who_; }

 private:
  const security::AuthCache* auth_ = nullptr;
  security::Principal who_;
};

// The range_end that covers every key starting with `prefix`: the prefix
// with its last byte below 0xff raised by one (trailing 0xff bytes dropped);
// "\0" (every key from there on) when there is no such byte.
std::string PrefixEnd(absl::string_view prefix);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_CALLER_H_
