#include "server/api/auth_service.h"

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "proto/grpc_status.h"
#include "server/api/caller.h"
#include "server/api/kv_service.h"
#include "server/api/lease_service.h"

namespace tessera::server {

AuthService::AuthService(AuthServiceOptions options, AuthStore* store,
                         const security::AuthCache* cache, const ClusterMapCache* maps,
                         KvBackend* backend)
    : options_(std::move(options)),
      store_(store),
      cache_(cache),
      maps_(maps),
      backend_(backend),
      throttle_(options_.throttle) {
  for (int i = 0; i < kCheckers; ++i) checkers_.emplace_back([this] { RunChecker(); });
}

AuthService::~AuthService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  for (std::thread& t : checkers_) t.join();
}

bool AuthService::Submit(std::function<void()> job) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || jobs_.size() >= kQueued) return false;
  jobs_.push_back(std::move(job));
  return true;
}

void AuthService::RunChecker() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || !jobs_.empty(); };
      mu_.Await(absl::Condition(&ready));
      // Queued jobs still run when stopping: each finishes its call.
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

void AuthService::LogFailure(const std::string& line) {
  if (!options_.log) return;
  uint64_t more = 0;
  {
    absl::MutexLock lock(&log_mu_);
    const absl::Time now = absl::Now();
    if (now - last_logged_ < absl::Seconds(1)) {
      ++unlogged_;
      return;
    }
    last_logged_ = now;
    more = unlogged_;
    unlogged_ = 0;
  }
  options_.log(more == 0 ? line
                         : absl::StrCat(line, " (and ", more, " failures not logged before it)"));
}

grpc::Status AuthService::ToWire(absl::Status status) const {
  return ToGrpcStatus(WithMetaLeaderHint(std::move(status), options_.self, *backend_, *maps_));
}

grpc::ServerUnaryReactor* AuthService::Authenticate(grpc::CallbackServerContext* context,
                                                    const v1::AuthenticateRequest* request,
                                                    v1::AuthenticateResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const std::string source = security::SourceAddress(context->peer());
  if (absl::Duration wait = throttle_.Wait(source, absl::Now()); wait > absl::ZeroDuration()) {
    LogFailure(absl::StrCat("sign-in of user '", request->name().substr(0, 64), "' from ", source,
                            " refused: too many failed attempts from there"));
    reactor->Finish(ToGrpcStatus(
        RetryLaterError(absl::StrCat("too many failed sign-ins from ", source, "; retry in ",
                                     absl::ToInt64Milliseconds(wait), " ms"),
                        wait)));
    return reactor;
  }
  auto check = [this, reactor, request, response, source] {
    std::shared_ptr<const security::AuthView> view = cache_->Current();
    absl::Status status;
    std::string why;
    if (view == nullptr) {
      status = NodeUnavailableError("this node has not loaded the users yet; ask another node",
                                    v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP);
    } else if (!view->enabled()) {
      status = absl::FailedPreconditionError("auth is not enabled: no token is needed");
    } else {
      const serverpb::StoredUser* user = nullptr;
      for (const serverpb::StoredUser& u : view->state().users()) {
        if (u.name() == request->name()) user = &u;
      }
      if (user == nullptr) {
        why = "no such user";
      } else if (user->password_hash().empty()) {
        why = "the user has no password (certificate only)";
      } else if (!security::PasswordMatches(user->password_hash(), request->password())) {
        why = "wrong password";
      }
      if (!why.empty()) {
        throttle_.Failed(source, absl::Now());
        LogFailure(absl::StrCat("sign-in of user '", request->name().substr(0, 64), "' from ",
                                source, " failed: ", why));
        status = absl::UnauthenticatedError("wrong user name or password");
      } else {
        absl::StatusOr<std::string> token =
            view->MintToken(request->name(), absl::Now() + options_.token_ttl);
        if (token.ok()) {
          response->set_token(*std::move(token));
          response->set_ttl_ms(absl::ToInt64Milliseconds(options_.token_ttl));
        }
        status = token.status();
      }
    }
    reactor->Finish(ToGrpcStatus(status));
  };
  if (!Submit(std::move(check))) {
    reactor->Finish(ToGrpcStatus(
        RetryLaterError("too many password checks are waiting on this node; retry shortly",
                        absl::Milliseconds(200))));
  }
  return reactor;
}

grpc::ServerUnaryReactor* AuthService::Status(grpc::CallbackServerContext* context,
                                              const v1::AuthStatusRequest* /*request*/,
                                              v1::AuthStatusResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(cache_, *context);
  if (!caller.ok()) {
    reactor->Finish(ToGrpcStatus(caller.status()));
    return reactor;
  }
  std::shared_ptr<const security::AuthView> view = cache_->Current();
  response->set_enabled(view != nullptr && view->enabled());
  response->set_user(caller->who().user);
  if (view != nullptr) {
    for (std::string& role : view->RolesOf(caller->who().user))
      response->add_roles(std::move(role));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* AuthService::Change(grpc::CallbackServerContext* context,
                                              const v1::AuthChangeRequest* request,
                                              v1::AuthChangeResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(cache_, *context);
  absl::Status allowed =
      caller.ok() ? caller->CheckRoot("change users, roles or permissions") : caller.status();
  if (!allowed.ok()) {
    reactor->Finish(ToGrpcStatus(allowed));
    return reactor;
  }
  auto change = [this, reactor, request] { reactor->Finish(ToWire(store_->Change(*request))); };
  if (!Submit(std::move(change))) {
    reactor->Finish(ToGrpcStatus(RetryLaterError(
        "too many auth changes and password checks are waiting on this node; retry shortly",
        absl::Milliseconds(200))));
  }
  return reactor;
}

grpc::ServerUnaryReactor* AuthService::List(grpc::CallbackServerContext* context,
                                            const v1::AuthListRequest* /*request*/,
                                            v1::AuthListResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Caller> caller = Caller::Identify(cache_, *context);
  absl::Status allowed = caller.ok() ? caller->CheckRoot("list users and roles") : caller.status();
  std::shared_ptr<const security::AuthView> view = cache_->Current();
  if (allowed.ok() && view != nullptr) {
    response->set_enabled(view->enabled());
    for (const serverpb::StoredUser& u : view->state().users()) {
      v1::User* user = response->add_users();
      user->set_name(u.name());
      *user->mutable_roles() = u.roles();
    }
    *response->mutable_roles() = view->state().roles();
    *response->mutable_limits() = view->state().limits();
  }
  reactor->Finish(ToGrpcStatus(allowed));
  return reactor;
}

}  // namespace tessera::server
