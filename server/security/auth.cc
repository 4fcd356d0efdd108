#include "server/security/auth.h"

#include <sodium.h>

#include <algorithm>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"

namespace tessera::server::security {
namespace {

constexpr char kMemberPrefix[] = "node-";

void InitSodium() {
  // Idempotent and thread-safe after the first call; fails only if the
  // system has no randomness source, where nothing here can be safe.
  static const bool ready = sodium_init() >= 0;
  if (!ready) std::abort();
}

bool IsMemberName(absl::string_view name) {
  uint64_t id = 0;
  return absl::StartsWith(name, kMemberPrefix) &&
         absl::SimpleAtoi(name.substr(sizeof(kMemberPrefix) - 1), &id) && id != 0;
}

absl::Status ValidateName(absl::string_view name, const char* what) {
  if (name.empty() || name.size() > 64) {
    return absl::InvalidArgumentError(absl::StrCat(what, " name must be 1 to 64 characters"));
  }
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-' &&
        c != '@') {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " name '", name, "' may hold only letters, digits, . _ - @"));
    }
  }
  if (absl::StartsWith(name, kMemberPrefix)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " name '", name, "': node-* names are the cluster's members"));
  }
  return absl::OkStatus();
}

// A permission's keys as [start, end), end "" unbounded.
std::pair<std::string, std::string> RangeOf(const v1::Permission& p) {
  if (p.range_end().empty()) return {p.key(), p.key() + std::string(1, '\0')};
  if (p.range_end() == std::string(1, '\0')) return {p.key(), ""};
  return {p.key(), p.range_end()};
}

// Printable form of a key range for messages.
std::string KeysText(absl::string_view key, absl::string_view range_end) {
  if (range_end.empty()) return absl::StrCat("key \"", absl::CEscape(key), "\"");
  if (range_end == absl::string_view("\0", 1)) {
    return absl::StrCat("keys from \"", absl::CEscape(key), "\" on");
  }
  return absl::StrCat("keys [\"", absl::CEscape(key), "\", \"", absl::CEscape(range_end), "\")");
}

// Sorted, merged (overlapping or touching ranges joined).
std::vector<std::pair<std::string, std::string>> Merge(
    std::vector<std::pair<std::string, std::string>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<std::string, std::string>> out;
  for (auto& r : ranges) {
    if (!r.second.empty() && r.second <= r.first) continue;  // empty range
    if (!out.empty() && (out.back().second.empty() || r.first <= out.back().second)) {
      if (!out.back().second.empty() && (r.second.empty() || r.second > out.back().second)) {
        out.back().second = r.second;
      }
      continue;
    }
    out.push_back(std::move(r));
  }
  return out;
}

// Whether the merged `ranges` cover [start, end) (end "" unbounded).
bool Covers(const std::vector<std::pair<std::string, std::string>>& ranges, absl::string_view start,
            absl::string_view end) {
  auto it = std::upper_bound(ranges.begin(), ranges.end(), start,
                             [](absl::string_view s, const auto& r) { return s < r.first; });
  if (it == ranges.begin()) return false;
  const auto& r = *std::prev(it);
  if (!r.second.empty() && start >= r.second) return false;
  if (r.second.empty()) return true;
  return !end.empty() && end <= r.second;
}

absl::Status CheckPermission(const v1::Permission& p) {
  if (p.access() < v1::Permission::READ || p.access() > v1::Permission::READWRITE) {
    return absl::InvalidArgumentError("a permission needs access read, write or readwrite");
  }
  if (p.key().size() > kMaxPermissionKeyBytes || p.range_end().size() > kMaxPermissionKeyBytes) {
    return absl::InvalidArgumentError(absl::StrCat("a permission's key and range_end are at most ",
                                                   kMaxPermissionKeyBytes, " bytes"));
  }
  if (p.key().empty() && p.range_end() != std::string(1, '\0')) {
    return absl::InvalidArgumentError("a permission needs a key (or key \"\" with range_end \\0)");
  }
  if (!p.range_end().empty() && p.range_end() != std::string(1, '\0') && p.range_end() <= p.key()) {
    return absl::InvalidArgumentError("a permission's range_end must be above its key");
  }
  return absl::OkStatus();
}

template <typename T>
T* FindByName(google::protobuf::RepeatedPtrField<T>* items, absl::string_view name) {
  for (T& item : *items) {
    if (item.name() == name) return &item;
  }
  return nullptr;
}

template <typename T>
void SortByName(google::protobuf::RepeatedPtrField<T>* items) {
  std::sort(items->begin(), items->end(),
            [](const T& a, const T& b) { return a.name() < b.name(); });
}

}  // namespace

absl::StatusOr<std::string> HashPassword(absl::string_view password) {
  InitSodium();
  char out[crypto_pwhash_STRBYTES];
  if (crypto_pwhash_str(out, password.data(), password.size(), crypto_pwhash_OPSLIMIT_INTERACTIVE,
                        crypto_pwhash_MEMLIMIT_INTERACTIVE) != 0) {
    return absl::ResourceExhaustedError("not enough memory to hash a password");
  }
  return std::string(out);
}

bool PasswordMatches(const std::string& hash, absl::string_view password) {
  InitSodium();
  if (hash.empty()) return false;
  return crypto_pwhash_str_verify(hash.c_str(), password.data(), password.size()) == 0;
}

absl::StatusOr<std::shared_ptr<const AuthView>> AuthView::Make(serverpb::AuthState state) {
  auto view = std::make_shared<AuthView>();
  if (state.enabled() && state.token_key().size() != crypto_auth_hmacsha256_KEYBYTES) {
    return absl::InvalidArgumentError("stored auth state: enabled without a token key");
  }
  absl::flat_hash_map<std::string, const v1::Role*> roles;
  for (const v1::Role& role : state.roles()) roles[role.name()] = &role;
  for (const serverpb::StoredUser& user : state.users()) {
    Rights rights;
    std::vector<std::pair<std::string, std::string>> read, write;
    for (const std::string& name : user.roles()) {
      if (name == kRootName) rights.root = true;
      auto it = roles.find(name);
      if (it == roles.end()) continue;
      for (const v1::Permission& p : it->second->permissions()) {
        if (p.access() & v1::Permission::READ) read.push_back(RangeOf(p));
        if (p.access() & v1::Permission::WRITE) write.push_back(RangeOf(p));
      }
    }
    rights.read = Merge(std::move(read));
    rights.write = Merge(std::move(write));
    view->rights_[user.name()] = std::move(rights);
  }
  view->state_ = std::move(state);
  return std::shared_ptr<const AuthView>(std::move(view));
}

const serverpb::StoredUser* AuthView::FindUser(absl::string_view name) const {
  for (const serverpb::StoredUser& user : state_.users()) {
    if (user.name() == name) return &user;
  }
  return nullptr;
}

absl::StatusOr<std::string> AuthView::MintToken(absl::string_view user, absl::Time expires) const {
  InitSodium();
  if (state_.token_key().size() != crypto_auth_hmacsha256_KEYBYTES) {
    return absl::FailedPreconditionError("auth has never been enabled: no token key yet");
  }
  serverpb::AuthToken token;
  token.set_user(std::string(user));
  if (!IsMemberName(user)) {
    const serverpb::StoredUser* stored = FindUser(user);
    if (stored == nullptr) return absl::NotFoundError(absl::StrCat("no user '", user, "'"));
    token.set_generation(stored->generation());
  }
  token.set_expires_unix_ms(absl::ToUnixMillis(expires));
  const std::string payload = token.SerializeAsString();
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  crypto_auth_hmacsha256(mac, reinterpret_cast<const unsigned char*>(payload.data()),
                         payload.size(),
                         reinterpret_cast<const unsigned char*>(state_.token_key().data()));
  return absl::StrCat(absl::WebSafeBase64Escape(payload), ".",
                      absl::WebSafeBase64Escape(
                          absl::string_view(reinterpret_cast<const char*>(mac), sizeof(mac))));
}

absl::StatusOr<Principal> AuthView::VerifyToken(absl::string_view token, absl::Time now) const {
  InitSodium();
  if (token.size() > 4096) return absl::UnauthenticatedError("malformed token");
  std::vector<absl::string_view> parts = absl::StrSplit(token, '.');
  std::string payload, mac;
  if (parts.size() != 2 || !absl::WebSafeBase64Unescape(parts[0], &payload) ||
      !absl::WebSafeBase64Unescape(parts[1], &mac) || mac.size() != crypto_auth_hmacsha256_BYTES) {
    return absl::UnauthenticatedError("malformed token");
  }
  if (state_.token_key().size() != crypto_auth_hmacsha256_KEYBYTES ||
      crypto_auth_hmacsha256_verify(
          reinterpret_cast<const unsigned char*>(mac.data()),
          reinterpret_cast<const unsigned char*>(payload.data()), payload.size(),
          reinterpret_cast<const unsigned char*>(state_.token_key().data())) != 0) {
    return absl::UnauthenticatedError("invalid token (not signed by this cluster's current key)");
  }
  serverpb::AuthToken parsed;
  if (!parsed.ParseFromString(payload)) return absl::UnauthenticatedError("malformed token");
  if (absl::FromUnixMillis(parsed.expires_unix_ms()) <= now) {
    return absl::UnauthenticatedError("token expired: authenticate again");
  }
  const absl::Time expires = absl::FromUnixMillis(parsed.expires_unix_ms());
  if (IsMemberName(parsed.user())) {
    return Principal{.user = parsed.user(), .member = true, .expires = expires};
  }
  const serverpb::StoredUser* user = FindUser(parsed.user());
  if (user == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat("token of user '", parsed.user(), "', who no longer exists"));
  }
  if (user->generation() != parsed.generation()) {
    return absl::UnauthenticatedError(
        absl::StrCat("token of user '", parsed.user(), "' from before a password change"));
  }
  return Principal{.user = parsed.user(), .expires = expires};
}

absl::StatusOr<Principal> AuthView::FromCertificate(absl::string_view common_name) const {
  if (IsMemberName(common_name)) return Principal{.user = std::string(common_name), .member = true};
  if (FindUser(common_name) == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat("the client certificate names '", common_name, "', who is no user"));
  }
  return Principal{.user = std::string(common_name)};
}

bool AuthView::IsRoot(const Principal& who) const {
  if (who.member) return true;
  auto it = rights_.find(who.user);
  return it != rights_.end() && it->second.root;
}

absl::Status AuthView::CheckSignedIn(const Principal& who) const {
  if (!enabled()) return absl::OkStatus();
  if (who.expires <= absl::Now()) {
    return absl::UnauthenticatedError("token expired: authenticate again");
  }
  if (who.member) return absl::OkStatus();
  if (who.user.empty()) {
    return absl::UnauthenticatedError(
        "auth is enabled: authenticate (a token or a client certificate)");
  }
  if (!rights_.contains(who.user)) {
    return absl::UnauthenticatedError(absl::StrCat("user '", who.user, "' no longer exists"));
  }
  return absl::OkStatus();
}

absl::Status AuthView::Check(const Principal& who, Access access, absl::string_view key,
                             absl::string_view range_end) const {
  if (!enabled()) return absl::OkStatus();
  if (absl::Status signed_in = CheckSignedIn(who); !signed_in.ok()) return signed_in;
  if (who.member) return absl::OkStatus();
  const Rights& rights = rights_.at(who.user);
  if (rights.root) return absl::OkStatus();
  std::string end;
  if (range_end.empty()) {
    end = absl::StrCat(key, absl::string_view("\0", 1));
  } else if (range_end != absl::string_view("\0", 1)) {
    end = std::string(range_end);
  }
  if (Covers(access == Access::kRead ? rights.read : rights.write, key, end)) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat("user '", who.user, "' has no ",
                                                  access == Access::kRead ? "read" : "write",
                                                  " permission on ", KeysText(key, range_end)));
}

absl::Status AuthView::CheckRoot(const Principal& who, absl::string_view what) const {
  if (!enabled()) return absl::OkStatus();
  if (absl::Status signed_in = CheckSignedIn(who); !signed_in.ok()) return signed_in;
  if (IsRoot(who)) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("user '", who.user, "' needs role root to ", what));
}

std::vector<std::string> AuthView::RolesOf(absl::string_view user) const {
  const serverpb::StoredUser* stored = FindUser(user);
  if (stored == nullptr) return {};
  return {stored->roles().begin(), stored->roles().end()};
}

absl::StatusOr<serverpb::AuthState> ApplyAuthChange(serverpb::AuthState state,
                                                    const v1::AuthChangeRequest& change) {
  InitSodium();
  auto user_of = [&state](const std::string& name) -> absl::StatusOr<serverpb::StoredUser*> {
    serverpb::StoredUser* user = FindByName(state.mutable_users(), name);
    if (user == nullptr) return absl::NotFoundError(absl::StrCat("no user '", name, "'"));
    return user;
  };
  auto role_exists = [&state](const std::string& name) {
    return name == kRootName || FindByName(state.mutable_roles(), name) != nullptr;
  };
  auto root_holds_root = [&state] {
    const serverpb::StoredUser* root = FindByName(state.mutable_users(), kRootName);
    return root != nullptr &&
           std::find(root->roles().begin(), root->roles().end(), kRootName) != root->roles().end();
  };
  switch (change.change_case()) {
    case v1::AuthChangeRequest::kEnable:
      if (!root_holds_root()) {
        return absl::FailedPreconditionError(
            "enable auth only once user 'root' exists and holds role 'root' (tessera user add "
            "root; tessera user grant-role root root)");
      }
      if (state.token_key().empty()) {
        std::string key(crypto_auth_hmacsha256_KEYBYTES, '\0');
        randombytes_buf(key.data(), key.size());
        state.set_token_key(std::move(key));
      }
      state.set_enabled(true);
      break;
    case v1::AuthChangeRequest::kDisable:
      state.set_enabled(false);
      break;
    case v1::AuthChangeRequest::kUserAdd: {
      const auto& add = change.user_add();
      if (absl::Status s = ValidateName(add.name(), "user"); !s.ok()) return s;
      if (FindByName(state.mutable_users(), add.name()) != nullptr) {
        return absl::AlreadyExistsError(absl::StrCat("user '", add.name(), "' exists"));
      }
      serverpb::StoredUser* user = state.add_users();
      user->set_name(add.name());
      user->set_generation(1);
      if (!add.password().empty()) {
        absl::StatusOr<std::string> hash = HashPassword(add.password());
        if (!hash.ok()) return hash.status();
        user->set_password_hash(*std::move(hash));
      }
      SortByName(state.mutable_users());
      break;
    }
    case v1::AuthChangeRequest::kUserDelete: {
      const std::string& name = change.user_delete();
      if (name == kRootName && state.enabled()) {
        return absl::FailedPreconditionError("user 'root' cannot be deleted while auth is enabled");
      }
      auto* users = state.mutable_users();
      auto it = std::find_if(users->begin(), users->end(),
                             [&](const serverpb::StoredUser& u) { return u.name() == name; });
      if (it == users->end()) return absl::NotFoundError(absl::StrCat("no user '", name, "'"));
      users->erase(it);
      break;
    }
    case v1::AuthChangeRequest::kUserPassword: {
      absl::StatusOr<serverpb::StoredUser*> user = user_of(change.user_password().name());
      if (!user.ok()) return user.status();
      std::string hash;
      if (!change.user_password().password().empty()) {
        absl::StatusOr<std::string> made = HashPassword(change.user_password().password());
        if (!made.ok()) return made.status();
        hash = *std::move(made);
      }
      (*user)->set_password_hash(std::move(hash));
      (*user)->set_generation((*user)->generation() + 1);
      break;
    }
    case v1::AuthChangeRequest::kUserGrantRole:
    case v1::AuthChangeRequest::kUserRevokeRole: {
      const bool grant = change.change_case() == v1::AuthChangeRequest::kUserGrantRole;
      const auto& ur = grant ? change.user_grant_role() : change.user_revoke_role();
      absl::StatusOr<serverpb::StoredUser*> user = user_of(ur.user());
      if (!user.ok()) return user.status();
      if (!role_exists(ur.role()))
        return absl::NotFoundError(absl::StrCat("no role '", ur.role(), "'"));
      auto* roles = (*user)->mutable_roles();
      auto it = std::find(roles->begin(), roles->end(), ur.role());
      if (grant) {
        if (it == roles->end()) {
          roles->Add(std::string(ur.role()));
          std::sort(roles->begin(), roles->end());
        }
      } else {
        if (it == roles->end()) {
          return absl::NotFoundError(
              absl::StrCat("user '", ur.user(), "' does not hold role '", ur.role(), "'"));
        }
        roles->erase(it);
        if (state.enabled() && !root_holds_root()) {
          return absl::FailedPreconditionError(
              "user 'root' must keep role 'root' while auth is enabled");
        }
      }
      break;
    }
    case v1::AuthChangeRequest::kRoleAdd: {
      const std::string& name = change.role_add();
      if (absl::Status s = ValidateName(name, "role"); !s.ok()) return s;
      if (role_exists(name))
        return absl::AlreadyExistsError(absl::StrCat("role '", name, "' exists"));
      state.add_roles()->set_name(name);
      SortByName(state.mutable_roles());
      break;
    }
    case v1::AuthChangeRequest::kRoleDelete: {
      const std::string& name = change.role_delete();
      if (name == kRootName) return absl::FailedPreconditionError("role 'root' is built in");
      auto* roles = state.mutable_roles();
      auto it = std::find_if(roles->begin(), roles->end(),
                             [&](const v1::Role& r) { return r.name() == name; });
      if (it == roles->end()) return absl::NotFoundError(absl::StrCat("no role '", name, "'"));
      roles->erase(it);
      for (serverpb::StoredUser& user : *state.mutable_users()) {
        auto* held = user.mutable_roles();
        held->erase(std::remove(held->begin(), held->end(), name), held->end());
      }
      break;
    }
    case v1::AuthChangeRequest::kRoleGrant:
    case v1::AuthChangeRequest::kRoleRevoke: {
      const bool grant = change.change_case() == v1::AuthChangeRequest::kRoleGrant;
      const auto& rp = grant ? change.role_grant() : change.role_revoke();
      if (rp.role() == kRootName) {
        return absl::FailedPreconditionError("role 'root' holds every permission already");
      }
      v1::Role* role = FindByName(state.mutable_roles(), rp.role());
      if (role == nullptr) return absl::NotFoundError(absl::StrCat("no role '", rp.role(), "'"));
      auto* perms = role->mutable_permissions();
      auto same_keys = [&rp](const v1::Permission& p) {
        return p.key() == rp.permission().key() && p.range_end() == rp.permission().range_end();
      };
      auto it = std::find_if(perms->begin(), perms->end(), same_keys);
      if (grant) {
        if (absl::Status s = CheckPermission(rp.permission()); !s.ok()) return s;
        if (it != perms->end()) {
          it->set_access(rp.permission().access());  // a grant replaces the access
        } else {
          *perms->Add() = rp.permission();
        }
      } else {
        if (it == perms->end()) {
          return absl::NotFoundError(
              absl::StrCat("role '", rp.role(), "' has no permission on ",
                           KeysText(rp.permission().key(), rp.permission().range_end())));
        }
        perms->erase(it);
      }
      break;
    }
    case v1::AuthChangeRequest::kSetLimits: {
      absl::flat_hash_map<std::string, bool> seen;
      for (const v1::Limits::User& u : change.set_limits().users()) {
        if (absl::Status s = ValidateName(u.user(), "user"); !s.ok()) return s;
        if (!seen.emplace(u.user(), true).second) {
          return absl::InvalidArgumentError(
              absl::StrCat("user '", u.user(), "' appears twice in the limits"));
        }
      }
      *state.mutable_limits() = change.set_limits();
      break;
    }
    case v1::AuthChangeRequest::CHANGE_NOT_SET:
      return absl::InvalidArgumentError("AuthChangeRequest names no change");
  }
  state.set_version(state.version() + 1);
  if (state.ByteSizeLong() > kMaxAuthStateBytes) {
    return absl::ResourceExhaustedError(absl::StrCat("the users and roles would take more than ",
                                                     kMaxAuthStateBytes >> 10, " KiB"));
  }
  return state;
}

std::shared_ptr<const AuthView> AuthCache::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

void AuthCache::Publish(std::shared_ptr<const AuthView> view) {
  absl::MutexLock lock(&mu_);
  current_ = std::move(view);
}

void SignInThrottle::Refill(Bucket& b, absl::Time now) const {
  const double earned = absl::FDivDuration(now - b.updated, options_.refill);
  b.tokens = std::min<double>(options_.burst, b.tokens + std::max(0.0, earned));
  b.updated = now;
}

absl::Duration SignInThrottle::Wait(absl::string_view source, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(source);
  if (it == buckets_.end()) return absl::ZeroDuration();
  Refill(it->second, now);
  if (it->second.tokens >= 1) return absl::ZeroDuration();
  return (1 - it->second.tokens) * options_.refill;
}

void SignInThrottle::Failed(absl::string_view source, absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto it = buckets_.find(source);
  if (it == buckets_.end()) {
    if (buckets_.size() >= options_.max_sources) {
      // Forget the sources that have refilled completely (they lose
      // nothing), or else the stalest one.
      for (auto b = buckets_.begin(); b != buckets_.end();) {
        Refill(b->second, now);
        if (b->second.tokens >= options_.burst) {
          buckets_.erase(b++);
        } else {
          ++b;
        }
      }
      if (buckets_.size() >= options_.max_sources) {
        auto stalest = buckets_.begin();
        for (auto b = buckets_.begin(); b != buckets_.end(); ++b) {
          if (b->second.updated < stalest->second.updated) stalest = b;
        }
        buckets_.erase(stalest);
      }
    }
    it = buckets_
             .emplace(std::string(source), Bucket{.tokens = double(options_.burst), .updated = now})
             .first;
  }
  Refill(it->second, now);
  it->second.tokens = std::max(0.0, it->second.tokens - 1);
}

absl::Duration RateLimiter::Wait(Bucket& b, double rate, double need, absl::Time now) {
  if (b.updated == absl::InfinitePast()) {
    b.tokens = rate;
  } else {
    b.tokens =
        std::min(rate, b.tokens + rate * absl::FDivDuration(now - b.updated, absl::Seconds(1)));
  }
  b.updated = now;
  // A request above the whole capacity waits for a full bucket (then goes).
  need = std::min(need, rate);
  if (b.tokens >= need) return absl::ZeroDuration();
  return absl::Seconds((need - b.tokens) / rate);
}

absl::Duration RateLimiter::Admit(const Principal& who, const v1::Limits& limits, uint64_t ops,
                                  uint64_t bytes, absl::Time now) {
  if (who.member) return absl::ZeroDuration();
  uint64_t ops_rate = limits.ops_per_sec();
  uint64_t bytes_rate = limits.bytes_per_sec();
  for (const v1::Limits::User& u : limits.users()) {
    if (u.user() == who.user) {
      ops_rate = u.ops_per_sec();
      bytes_rate = u.bytes_per_sec();
    }
  }
  if (ops_rate == 0 && bytes_rate == 0) return absl::ZeroDuration();
  absl::MutexLock lock(&mu_);
  auto& [op_bucket, byte_bucket] = buckets_[who.user];
  absl::Duration wait;
  if (ops_rate != 0) wait = std::max(wait, Wait(op_bucket, double(ops_rate), double(ops), now));
  if (bytes_rate != 0) {
    wait = std::max(wait, Wait(byte_bucket, double(bytes_rate), double(bytes), now));
  }
  if (wait > absl::ZeroDuration()) return wait;
  if (ops_rate != 0) op_bucket.tokens -= std::min<double>(double(ops), double(ops_rate));
  if (bytes_rate != 0) byte_bucket.tokens -= std::min<double>(double(bytes), double(bytes_rate));
  return absl::ZeroDuration();
}

std::string SourceAddress(absl::string_view grpc_peer) {
  // "ipv4:1.2.3.4:5", "ipv6:[::1]:5", "unix:/path".
  const size_t colon = grpc_peer.rfind(':');
  if (colon == absl::string_view::npos || absl::StartsWith(grpc_peer, "unix:")) {
    return std::string(grpc_peer);
  }
  const size_t first = grpc_peer.find(':');
  if (colon == first) return std::string(grpc_peer);
  return std::string(grpc_peer.substr(0, colon));
}

}  // namespace tessera::server::security
