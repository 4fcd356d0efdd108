// AuthService: tessera.v1.Auth (kv.proto): sign-in with a password, who am
// I, and the changes to users, roles and permissions (security/auth.h,
// cluster/auth_store.h).
//
// Authenticate checks the password against the node's own copy of the
// users (any node answers) and returns a token valid for token_ttl.
// Password checks (Argon2id: tens of milliseconds and 64 MiB each) run on
// the service's own threads, at most kCheckers at once with kQueued more
// waiting; beyond that, and for a source address past its failed-attempt
// budget (SignInThrottle), the answer is RESOURCE_EXHAUSTED with
// ErrorDetail.retry_after. Every failure is logged through `log`, at most
// one line per second (it says how many it stands for), with the user and
// the reason.
//
// Change runs on the metadata group's leader (UNAVAILABLE with the leader
// elsewhere), on the same threads (it hashes passwords and waits for the
// proposal). Change and List need role root once auth is enabled.
//
// Thread-safety: thread-safe. `store`, `cache`, `maps` and `backend` are not
// owned and must outlive the service; destroy it after the gRPC server
// stopped (the destructor joins its threads).
#ifndef TESSERA_SERVER_API_AUTH_SERVICE_H_
#define TESSERA_SERVER_API_AUTH_SERVICE_H_

#include <deque>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/cluster/auth_store.h"
#include "server/cluster/cluster_map.h"
#include "server/kv/backend.h"
#include "server/security/auth.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::server {

struct AuthServiceOptions {
  NodeId self = 0;
  absl::Duration token_ttl = absl::Minutes(10);
  security::SignInThrottle::Options throttle;
  std::function<void(const std::string&)> log;  // failures; nullptr: not logged
};

class AuthService final : public v1::Auth::CallbackService {
 public:
  static constexpr int kCheckers = 2;
  static constexpr size_t kQueued = 32;

  AuthService(AuthServiceOptions options, AuthStore* store, const security::AuthCache* cache,
              const ClusterMapCache* maps, KvBackend* backend);
  ~AuthService() override;

  grpc::ServerUnaryReactor* Authenticate(grpc::CallbackServerContext* context,
                                         const v1::AuthenticateRequest* request,
                                         v1::AuthenticateResponse* response) override;
  grpc::ServerUnaryReactor* Status(grpc::CallbackServerContext* context,
                                   const v1::AuthStatusRequest* request,
                                   v1::AuthStatusResponse* response) override;
  grpc::ServerUnaryReactor* Change(grpc::CallbackServerContext* context,
                                   const v1::AuthChangeRequest* request,
                                   v1::AuthChangeResponse* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const v1::AuthListRequest* request,
                                 v1::AuthListResponse* response) override;

 private:
  // Queues `job` for the checker threads; false if kQueued wait already.
  bool Submit(std::function<void()> job) ABSL_LOCKS_EXCLUDED(mu_);
  void RunChecker() ABSL_LOCKS_EXCLUDED(mu_);
  void LogFailure(const std::string& line) ABSL_LOCKS_EXCLUDED(log_mu_);
  grpc::Status ToWire(absl::Status status) const;

  const AuthServiceOptions options_;
  AuthStore* const store_;
  const security::AuthCache* const cache_;
  const ClusterMapCache* const maps_;
  KvBackend* const backend_;
  security::SignInThrottle throttle_;

  absl::Mutex mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> checkers_;

  absl::Mutex log_mu_;
  absl::Time last_logged_ ABSL_GUARDED_BY(log_mu_) = absl::InfinitePast();
  uint64_t unlogged_ ABSL_GUARDED_BY(log_mu_) = 0;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_AUTH_SERVICE_H_
