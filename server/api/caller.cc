#include "server/api/caller.h"

#include <memory>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "server/api/kv_service.h"
#include "server/security/tls.h"

namespace tessera::server {
namespace {

// The view checks run against; nullptr while the node has none.
std::shared_ptr<const security::AuthView> ViewOf(const security::AuthCache* auth) {
  static const std::shared_ptr<const security::AuthView> open =
      std::make_shared<const security::AuthView>();
  return auth == nullptr ? open : auth->Current();
}

absl::Status NotLoaded() {
  return NodeUnavailableError(
      "this node has not loaded the users and roles from the metadata group yet; ask another node",
      v1::ErrorDetail::NotLeader::REASON_NO_CLUSTER_MAP);
}

}  // namespace

absl::StatusOr<Caller> Caller::Identify(const security::AuthCache* auth,
                                        const grpc::ServerContextBase& context) {
  Caller caller;
  caller.auth_ = auth;
  std::shared_ptr<const security::AuthView> view = ViewOf(auth);
  if (view == nullptr) return NotLoaded();
  if (!view->enabled()) return caller;
  const auto& metadata = context.client_metadata();
  auto token = metadata.find(kAuthorizationMetadata);
  if (token != metadata.end()) {
    absl::string_view value(token->second.data(), token->second.size());
    if (!absl::ConsumePrefix(&value, "Bearer ")) {
      return absl::UnauthenticatedError("the authorization metadata is not \"Bearer <token>\"");
    }
    absl::StatusOr<security::Principal> who = view->VerifyToken(value, absl::Now());
    if (!who.ok()) return who.status();
    caller.who_ = *std::move(who);
    return caller;
  }
  if (std::shared_ptr<const grpc::AuthContext> tls = context.auth_context()) {
    if (std::optional<std::string> name = security::CertifiedName(*tls)) {
      absl::StatusOr<security::Principal> who = view->FromCertificate(*name);
      if (!who.ok()) return who.status();
      caller.who_ = *std::move(who);
    }
  }
  return caller;
}

Caller Caller::Member(const security::AuthCache* auth) {
  Caller caller;
  caller.auth_ = auth;
  caller.who_.member = true;
  return caller;
}

absl::Status Caller::Check(security::Access access, absl::string_view key,
                           absl::string_view range_end) const {
  std::shared_ptr<const security::AuthView> view = ViewOf(auth_);
  if (view == nullptr) return NotLoaded();
  return view->Check(who_, access, key, range_end);
}

absl::Status Caller::CheckRoot(absl::string_view what) const {
  std::shared_ptr<const security::AuthView> view = ViewOf(auth_);
  if (view == nullptr) return NotLoaded();
  return view->CheckRoot(who_, what);
}

absl::Status Caller::CheckSignedIn() const {
  std::shared_ptr<const security::AuthView> view = ViewOf(auth_);
  if (view == nullptr) return NotLoaded();
  return view->CheckSignedIn(who_);
}

bool Caller::IsRoot() const {
  std::shared_ptr<const security::AuthView> view = ViewOf(auth_);
  return view != nullptr && (!view->enabled() || view->IsRoot(who_));
}

std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
  if (end.empty()) return std::string(1, '\0');
  end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
  return end;
}

}  // namespace tessera::server
