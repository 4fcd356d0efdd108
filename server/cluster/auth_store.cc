#include "server/cluster/auth_store.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "server/cluster/cluster_map.h"

namespace tessera::server {

AuthStore::AuthStore(AuthStoreOptions options, KvBackend* backend, security::AuthCache* cache,
                     RemoteReader remote)
    : options_(options), backend_(backend), cache_(cache), remote_(std::move(remote)) {
  thread_ = std::thread([this] { Run(); });
}

AuthStore::~AuthStore() { Stop(); }

void AuthStore::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

bool AuthStore::LeadsMetaGroup() const {
  const std::optional<ShardStatus> local = backend_->StatusOf(kMetaShard);
  return local.has_value() && local->role == "leader";
}

absl::StatusOr<std::optional<std::string>> AuthStore::ReadLocal() const {
  if (!backend_->StatusOf(kMetaShard).has_value()) {
    return absl::NotFoundError("this node holds no replica of the metadata group");
  }
  absl::StatusOr<v1::GetResponse> got = backend_->Get(kMetaShard, kMetaAuthKey);
  if (!got.ok()) return got.status();
  if (!got->found()) return std::optional<std::string>();
  return std::optional<std::string>(got->kv().value());
}

absl::StatusOr<std::optional<std::string>> AuthStore::ReadStored() const {
  absl::StatusOr<std::optional<std::string>> local = ReadLocal();
  // The local replica is the source when it holds the state, or leads (a
  // leader has every committed entry applied or about to be). A follower
  // without it may be waiting for its first snapshot: ask the others.
  if (local.ok() && (local->has_value() || LeadsMetaGroup() || remote_ == nullptr)) return local;
  if (remote_ == nullptr) return local.status();
  return remote_();
}

void AuthStore::Log(const std::string& line) const {
  if (options_.log) options_.log(line);
}

void AuthStore::Run() {
  std::optional<std::string> last;  // the bytes published; nullopt: none yet
  bool published = false;
  while (!stop_.WaitForNotificationWithTimeout(options_.poll_interval)) {
    absl::StatusOr<std::optional<std::string>> stored = ReadStored();
    if (!stored.ok()) continue;  // retried next poll; the cache keeps what it has
    if (published && *stored == last) continue;
    serverpb::AuthState state;
    if (stored->has_value() && !state.ParseFromString(**stored)) {
      Log("the stored auth state does not parse; keeping the previous one");
      continue;
    }
    absl::StatusOr<std::shared_ptr<const security::AuthView>> view =
        security::AuthView::Make(std::move(state));
    if (!view.ok()) {
      Log(absl::StrCat("the stored auth state is not valid (", view.status().message(),
                       "); keeping the previous one"));
      continue;
    }
    std::shared_ptr<const security::AuthView> before = cache_->Current();
    if (before == nullptr || (*view)->enabled() != before->enabled()) {
      Log(absl::StrCat("auth is ", (*view)->enabled() ? "enabled" : "disabled",
                       " (auth state version ", (*view)->state().version(), ", ",
                       (*view)->state().users_size(), " users, ", (*view)->state().roles_size(),
                       " roles)"));
    }
    cache_->Publish(*std::move(view));
    last = *std::move(stored);
    published = true;
  }
}

absl::Status AuthStore::Change(const v1::AuthChangeRequest& change) {
  absl::Status last = absl::AbortedError("the auth state kept changing");
  for (int attempt = 0; attempt < 5; ++attempt) {
    if (!LeadsMetaGroup()) {
      return absl::UnavailableError("this node does not lead the metadata group");
    }
    absl::StatusOr<std::optional<std::string>> current = ReadLocal();
    if (!current.ok()) return current.status();
    serverpb::AuthState state;
    if (current->has_value() && !state.ParseFromString(**current)) {
      return absl::DataLossError("the stored auth state does not parse");
    }
    absl::StatusOr<serverpb::AuthState> next = security::ApplyAuthChange(std::move(state), change);
    if (!next.ok()) return next.status();

    serverpb::Command command;
    v1::TxnRequest* txn = command.mutable_txn();
    v1::Compare* unchanged = txn->add_compares();
    unchanged->set_key(kMetaAuthKey);
    if (current->has_value()) {
      unchanged->set_target(v1::Compare::TARGET_VALUE);
      unchanged->set_op(v1::Compare::OP_EQUAL);
      unchanged->set_value(**current);
    } else {
      unchanged->set_target(v1::Compare::TARGET_EXISTS);
      unchanged->set_op(v1::Compare::OP_NOT_EQUAL);
    }
    v1::PutRequest* put = txn->add_success()->mutable_put();
    put->set_key(kMetaAuthKey);
    put->set_value(next->SerializeAsString());
    absl::StatusOr<serverpb::CommandResult> result = ProposeAndWait(
        *backend_, kMetaShard, std::move(command), absl::Now() + options_.propose_timeout, stop_);
    if (!result.ok()) return result.status();
    if (result->code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(result->code()), result->message());
    }
    if (result->txn().succeeded()) return absl::OkStatus();
    last = absl::AbortedError("the auth state changed while this change was proposed");
  }
  return last;
}

}  // namespace tessera::server
