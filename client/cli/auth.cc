// `tessera auth`, `tessera user` and `tessera role`: users, roles and
// permissions (client.h ChangeAuth / ListAuth / AuthStatus).
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/cli.h"

namespace tessera::client::cli {
namespace {

// A new password: the first line of stdin (so it is not in the process list).
std::string ReadPassword() {
  std::string line;
  std::getline(std::cin, line);
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

std::optional<v1::Permission::Access> ParseAccess(const std::string& text) {
  if (text == "read") return v1::Permission::READ;
  if (text == "write") return v1::Permission::WRITE;
  if (text == "readwrite") return v1::Permission::READWRITE;
  return std::nullopt;
}

// KEY [RANGE_END] or --prefix KEY, as a permission's keys.
v1::Permission PermissionOf(const Args& args, const std::string& key,
                            const std::optional<std::string>& range_end) {
  v1::Permission p;
  if (args.prefix.has_value()) {
    p.set_key(*args.prefix);
    std::string end = *args.prefix;
    while (!end.empty() && static_cast<unsigned char>(end.back()) == 0xff) end.pop_back();
    if (end.empty()) {
      end = std::string(1, '\0');
    } else {
      end.back() = static_cast<char>(static_cast<unsigned char>(end.back()) + 1);
    }
    p.set_range_end(end);
    return p;
  }
  p.set_key(key);
  if (range_end.has_value()) p.set_range_end(*range_end);
  return p;
}

std::string PermissionText(const v1::Permission& p) {
  const char* access = p.access() == v1::Permission::READ    ? "read"
                       : p.access() == v1::Permission::WRITE ? "write"
                                                             : "readwrite";
  if (p.range_end().empty()) return absl::StrCat(access, " ", JsonString(p.key()));
  if (p.range_end() == std::string(1, '\0')) {
    return absl::StrCat(access, " ", JsonString(p.key()), " and every key after it");
  }
  return absl::StrCat(access, " [", JsonString(p.key()), ", ", JsonString(p.range_end()), ")");
}

}  // namespace

std::optional<std::string> CheckAuthCommand(const Args& args) {
  const std::vector<std::string>& pos = args.positional;
  const std::string& cmd = pos[0];
  const size_t n = pos.size() - 1;
  const std::string sub = n >= 1 ? pos[1] : "";
  if (cmd == "auth") {
    if ((sub == "enable" || sub == "disable" || sub == "status") && n == 1) return std::nullopt;
    return "auth enable | auth disable | auth status";
  }
  if (cmd == "user") {
    if ((sub == "add" || sub == "delete" || sub == "passwd") && n == 2) return std::nullopt;
    if ((sub == "grant-role" || sub == "revoke-role") && n == 3) return std::nullopt;
    if (sub == "list" && n == 1) return std::nullopt;
    return "user add NAME [--no-password] | user delete NAME | user passwd NAME | user "
           "grant-role USER ROLE | user revoke-role USER ROLE | user list  (passwords are read "
           "from the first line of stdin)";
  }
  if (cmd == "limits") {
    if (sub == "show" && n == 1) return std::nullopt;
    if (sub == "set" && n == 1 &&
        (args.storage_quota_bytes || args.ops_per_sec || args.bytes_per_sec)) {
      if (args.for_user && args.storage_quota_bytes) {
        return "--storage-quota-bytes is per node, not per user";
      }
      return std::nullopt;
    }
    return "limits show | limits set [--storage-quota-bytes N] [--ops-per-sec N] "
           "[--bytes-per-sec N] [--for-user USER]";
  }
  if (cmd == "role") {
    if ((sub == "add" || sub == "delete") && n == 2) return std::nullopt;
    if (sub == "list" && n == 1) return std::nullopt;
    if (sub == "grant" && ParseAccess(n >= 3 ? pos[3] : "").has_value() &&
        ((args.prefix.has_value() && n == 3) || (!args.prefix.has_value() && (n == 4 || n == 5)))) {
      return std::nullopt;
    }
    if (sub == "revoke" &&
        ((args.prefix.has_value() && n == 2) || (!args.prefix.has_value() && (n == 3 || n == 4)))) {
      return std::nullopt;
    }
    return "role add NAME | role delete NAME | role grant ROLE read|write|readwrite (KEY "
           "[RANGE_END] | --prefix P) | role revoke ROLE (KEY [RANGE_END] | --prefix P) | role "
           "list";
  }
  return std::nullopt;
}

int RunAuth(Client& client, const Args& args, const CallOptions& call) {
  const std::vector<std::string>& pos = args.positional;
  const std::string& cmd = pos[0];
  const std::string& sub = pos[1];
  const std::string what = absl::StrCat(cmd, " ", sub);
  v1::AuthChangeRequest change;
  if (cmd == "auth" && sub == "status") {
    absl::StatusOr<v1::AuthStatusResponse> s = client.AuthStatus(call);
    if (!s.ok()) return Fail(what, s.status());
    std::printf("auth %s; you are %s%s%s\n", s->enabled() ? "enabled" : "disabled",
                s->user().empty() ? "nobody (no token or certificate)" : s->user().c_str(),
                s->roles().empty() ? "" : ", roles ", absl::StrJoin(s->roles(), ", ").c_str());
    return kExitOk;
  }
  if (cmd == "limits") {
    absl::StatusOr<v1::AuthListResponse> list = client.ListAuth(call);
    if (!list.ok()) return Fail(what, list.status());
    v1::Limits limits = list->limits();
    if (sub == "show") {
      auto text = [](uint64_t n) { return n == 0 ? std::string("none") : absl::StrCat(n); };
      std::printf("storage quota per node: %s bytes\nper user and node: %s ops/s, %s bytes/s\n",
                  text(limits.storage_quota_bytes()).c_str(), text(limits.ops_per_sec()).c_str(),
                  text(limits.bytes_per_sec()).c_str());
      for (const v1::Limits::User& u : limits.users()) {
        std::printf("user %s: %s ops/s, %s bytes/s\n", u.user().c_str(),
                    text(u.ops_per_sec()).c_str(), text(u.bytes_per_sec()).c_str());
      }
      return kExitOk;
    }
    if (args.storage_quota_bytes) limits.set_storage_quota_bytes(*args.storage_quota_bytes);
    if (args.for_user) {
      v1::Limits::User* own = nullptr;
      for (v1::Limits::User& u : *limits.mutable_users()) {
        if (u.user() == *args.for_user) own = &u;
      }
      if (own == nullptr) {
        own = limits.add_users();
        own->set_user(*args.for_user);
        own->set_ops_per_sec(limits.ops_per_sec());
        own->set_bytes_per_sec(limits.bytes_per_sec());
      }
      if (args.ops_per_sec) own->set_ops_per_sec(*args.ops_per_sec);
      if (args.bytes_per_sec) own->set_bytes_per_sec(*args.bytes_per_sec);
    } else {
      if (args.ops_per_sec) limits.set_ops_per_sec(*args.ops_per_sec);
      if (args.bytes_per_sec) limits.set_bytes_per_sec(*args.bytes_per_sec);
    }
    *change.mutable_set_limits() = std::move(limits);
    if (absl::Status done = client.ChangeAuth(change, call); !done.ok()) return Fail(what, done);
    std::printf("OK\n");
    return kExitOk;
  }
  if ((cmd == "user" || cmd == "role") && sub == "list") {
    absl::StatusOr<v1::AuthListResponse> list = client.ListAuth(call);
    if (!list.ok()) return Fail(what, list.status());
    if (cmd == "user") {
      for (const v1::User& u : list->users()) {
        std::printf("%s%s%s\n", u.name().c_str(),
                    u.roles().empty() ? "" : "\troles: ", absl::StrJoin(u.roles(), ", ").c_str());
      }
    } else {
      std::printf("root\t(built in: every permission, and administration)\n");
      for (const v1::Role& r : list->roles()) {
        std::vector<std::string> perms;
        for (const v1::Permission& p : r.permissions()) perms.push_back(PermissionText(p));
        std::printf("%s%s%s\n", r.name().c_str(), perms.empty() ? "" : "\t",
                    absl::StrJoin(perms, "; ").c_str());
      }
    }
    return kExitOk;
  }
  if (cmd == "auth") {
    if (sub == "enable") change.set_enable(true);
    if (sub == "disable") change.set_disable(true);
  } else if (cmd == "user") {
    if (sub == "add") {
      change.mutable_user_add()->set_name(pos[2]);
      if (!args.no_password) change.mutable_user_add()->set_password(ReadPassword());
    } else if (sub == "delete") {
      change.set_user_delete(pos[2]);
    } else if (sub == "passwd") {
      change.mutable_user_password()->set_name(pos[2]);
      change.mutable_user_password()->set_password(ReadPassword());
    } else {
      auto* ur = sub == "grant-role" ? change.mutable_user_grant_role()
                                     : change.mutable_user_revoke_role();
      ur->set_user(pos[2]);
      ur->set_role(pos[3]);
    }
  } else if (cmd == "role") {
    if (sub == "add") {
      change.set_role_add(pos[2]);
    } else if (sub == "delete") {
      change.set_role_delete(pos[2]);
    } else if (sub == "grant") {
      auto* rp = change.mutable_role_grant();
      rp->set_role(pos[2]);
      *rp->mutable_permission() =
          PermissionOf(args, pos.size() > 4 ? pos[4] : "",
                       pos.size() > 5 ? std::optional<std::string>(pos[5]) : std::nullopt);
      rp->mutable_permission()->set_access(*ParseAccess(pos[3]));
    } else {
      auto* rp = change.mutable_role_revoke();
      rp->set_role(pos[2]);
      *rp->mutable_permission() =
          PermissionOf(args, pos.size() > 3 ? pos[3] : "",
                       pos.size() > 4 ? std::optional<std::string>(pos[4]) : std::nullopt);
    }
  }
  if (absl::Status done = client.ChangeAuth(change, call); !done.ok()) return Fail(what, done);
  std::printf("OK\n");
  return kExitOk;
}

}  // namespace tessera::client::cli
