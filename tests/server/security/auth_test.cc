// Users, roles, permissions and tokens (security/auth.h): the pure logic,
// no cluster. The cluster-wide behaviour is in tests/client/e2e_test.cc.
#include "server/security/auth.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"

namespace tessera::server::security {
namespace {

using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;
using ::testing::HasSubstr;

v1::AuthChangeRequest UserAdd(const std::string& name, const std::string& password) {
  v1::AuthChangeRequest c;
  c.mutable_user_add()->set_name(name);
  c.mutable_user_add()->set_password(password);
  return c;
}
v1::AuthChangeRequest GrantRole(const std::string& user, const std::string& role) {
  v1::AuthChangeRequest c;
  c.mutable_user_grant_role()->set_user(user);
  c.mutable_user_grant_role()->set_role(role);
  return c;
}
v1::AuthChangeRequest RoleAdd(const std::string& name) {
  v1::AuthChangeRequest c;
  c.set_role_add(name);
  return c;
}
v1::AuthChangeRequest RoleGrant(const std::string& role, v1::Permission::Access access,
                                const std::string& key, const std::string& range_end = "") {
  v1::AuthChangeRequest c;
  c.mutable_role_grant()->set_role(role);
  c.mutable_role_grant()->mutable_permission()->set_access(access);
  c.mutable_role_grant()->mutable_permission()->set_key(key);
  c.mutable_role_grant()->mutable_permission()->set_range_end(range_end);
  return c;
}
v1::AuthChangeRequest Enable() {
  v1::AuthChangeRequest c;
  c.set_enable(true);
  return c;
}

// Applies the changes in order, each expected to succeed.
serverpb::AuthState Apply(serverpb::AuthState state,
                          const std::vector<v1::AuthChangeRequest>& changes) {
  for (const v1::AuthChangeRequest& c : changes) {
    absl::StatusOr<serverpb::AuthState> next = ApplyAuthChange(state, c);
    EXPECT_THAT(next, IsOk()) << c.ShortDebugString();
    if (next.ok()) state = *std::move(next);
  }
  return state;
}

// root (password "r"), alice (password "a") reading app/ and writing
// app/alice/, bob (certificate only) without roles; enabled.
serverpb::AuthState Cluster() {
  return Apply({}, {UserAdd("root", "r"), GrantRole("root", "root"), UserAdd("alice", "a"),
                    UserAdd("bob", ""), RoleAdd("app"),
                    RoleGrant("app", v1::Permission::READ, "app/", "app0"),
                    RoleGrant("app", v1::Permission::READWRITE, "app/alice/", "app/alice0"),
                    GrantRole("alice", "app"), Enable()});
}

std::shared_ptr<const AuthView> ViewOf(serverpb::AuthState state) {
  absl::StatusOr<std::shared_ptr<const AuthView>> view = AuthView::Make(std::move(state));
  EXPECT_THAT(view, IsOk());
  return view.ok() ? *view : std::make_shared<const AuthView>();
}

TEST(Passwords, AreArgon2idHashesThatOnlyTheRightPasswordMatches) {
  absl::StatusOr<std::string> hash = HashPassword("correct horse");
  ASSERT_THAT(hash, IsOk());
  EXPECT_THAT(*hash, ::testing::StartsWith("$argon2id$"));
  EXPECT_TRUE(PasswordMatches(*hash, "correct horse"));
  EXPECT_FALSE(PasswordMatches(*hash, "correct horse "));
  EXPECT_FALSE(PasswordMatches("", ""));
  absl::StatusOr<std::string> again = HashPassword("correct horse");
  ASSERT_THAT(again, IsOk());
  EXPECT_NE(*hash, *again) << "salted";
}

TEST(AuthChanges, EnableNeedsUserRootHoldingRoleRoot) {
  EXPECT_THAT(ApplyAuthChange({}, Enable()), StatusIs(absl::StatusCode::kFailedPrecondition));
  serverpb::AuthState state = Apply({}, {UserAdd("root", "r")});
  EXPECT_THAT(ApplyAuthChange(state, Enable()), StatusIs(absl::StatusCode::kFailedPrecondition));
  state = Apply(state, {GrantRole("root", "root"), Enable()});
  EXPECT_TRUE(state.enabled());
  EXPECT_EQ(state.token_key().size(), 32u);
  EXPECT_EQ(state.version(), 3u);
  // Root cannot be locked out while enabled.
  v1::AuthChangeRequest drop_root;
  drop_root.set_user_delete("root");
  EXPECT_THAT(ApplyAuthChange(state, drop_root), StatusIs(absl::StatusCode::kFailedPrecondition));
  v1::AuthChangeRequest revoke;
  revoke.mutable_user_revoke_role()->set_user("root");
  revoke.mutable_user_revoke_role()->set_role("root");
  EXPECT_THAT(ApplyAuthChange(state, revoke), StatusIs(absl::StatusCode::kFailedPrecondition));
  v1::AuthChangeRequest delete_role;
  delete_role.set_role_delete("root");
  EXPECT_THAT(ApplyAuthChange(state, delete_role), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(AuthChanges, RefuseBadNamesDuplicatesAndUnknowns) {
  serverpb::AuthState state = Cluster();
  EXPECT_THAT(ApplyAuthChange(state, UserAdd("alice", "x")),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(ApplyAuthChange(state, UserAdd("node-3", "x")),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("members")));
  EXPECT_THAT(ApplyAuthChange(state, UserAdd("a b", "x")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyAuthChange(state, UserAdd(std::string(65, 'a'), "x")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyAuthChange(state, GrantRole("carol", "app")),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ApplyAuthChange(state, GrantRole("alice", "nope")),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(ApplyAuthChange(state, RoleAdd("root")), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_THAT(ApplyAuthChange(state, RoleGrant("app", v1::Permission::ACCESS_UNSPECIFIED, "k")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyAuthChange(state, RoleGrant("app", v1::Permission::READ, "b", "a")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(
      ApplyAuthChange(state, RoleGrant("app", v1::Permission::READ, std::string(5000, 'k'))),
      StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ApplyAuthChange(state, v1::AuthChangeRequest()),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(AuthChanges, TheStateStaysBounded) {
  serverpb::AuthState state = Apply({}, {RoleAdd("big")});
  absl::Status last;
  int grants = 0;
  for (; grants < 1000; ++grants) {
    absl::StatusOr<serverpb::AuthState> next = ApplyAuthChange(
        state, RoleGrant("big", v1::Permission::READ,
                         absl::StrCat(grants, "/", std::string(kMaxPermissionKeyBytes - 8, 'k'))));
    if (!next.ok()) {
      last = next.status();
      break;
    }
    state = *std::move(next);
  }
  EXPECT_THAT(last, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_LE(state.ByteSizeLong(), kMaxAuthStateBytes);
  EXPECT_GT(grants, 100);
}

TEST(AuthView, ChecksKeysAgainstMergedRanges) {
  std::shared_ptr<const AuthView> view = ViewOf(Cluster());
  const Principal alice{.user = "alice"};
  EXPECT_THAT(view->Check(alice, Access::kRead, "app/x"), IsOk());
  EXPECT_THAT(view->Check(alice, Access::kWrite, "app/x"),
              StatusIs(absl::StatusCode::kPermissionDenied,
                       HasSubstr("user 'alice' has no write permission on key \"app/x\"")));
  EXPECT_THAT(view->Check(alice, Access::kRead, "other/y"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(view->Check(alice, Access::kWrite, "app/alice/1"), IsOk());
  // A range inside what the role grants, and one reaching past it.
  EXPECT_THAT(view->Check(alice, Access::kRead, "app/", "app0"), IsOk());
  EXPECT_THAT(view->Check(alice, Access::kRead, "app/", "app1"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(view->Check(alice, Access::kRead, "app/", std::string(1, '\0')),
              StatusIs(absl::StatusCode::kPermissionDenied));
  // Two adjacent grants cover a range across both.
  serverpb::AuthState state =
      Apply(Cluster(), {RoleGrant("app", v1::Permission::READ, "app0", "b")});
  view = ViewOf(state);
  EXPECT_THAT(view->Check(alice, Access::kRead, "app/x", "az"), IsOk());
  // Root, members and a disabled cluster may do anything; nobody nothing.
  EXPECT_THAT(view->Check({.user = "root"}, Access::kWrite, "", std::string(1, '\0')), IsOk());
  EXPECT_THAT(view->Check({.user = "node-2", .member = true}, Access::kWrite, "x"), IsOk());
  EXPECT_THAT(view->Check({}, Access::kRead, "app/x"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(view->Check({.user = "bob"}, Access::kRead, "app/x"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(view->CheckRoot(alice, "add users"),
              StatusIs(absl::StatusCode::kPermissionDenied, HasSubstr("needs role root")));
  EXPECT_THAT(AuthView().Check({}, Access::kWrite, "x"), IsOk());
}

TEST(AuthView, TokensVerifyUntilTheyExpireOrThePasswordChanges) {
  std::shared_ptr<const AuthView> view = ViewOf(Cluster());
  const absl::Time now = absl::Now();
  absl::StatusOr<std::string> token = view->MintToken("alice", now + absl::Minutes(1));
  ASSERT_THAT(token, IsOk());
  absl::StatusOr<Principal> who = view->VerifyToken(*token, now);
  ASSERT_THAT(who, IsOk());
  EXPECT_EQ(who->user, "alice");
  EXPECT_FALSE(who->member);
  EXPECT_THAT(view->VerifyToken(*token, now + absl::Minutes(2)),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("expired")));
  // Tampered: any change to the payload breaks the signature.
  std::string tampered = *token;
  tampered[3] = tampered[3] == 'A' ? 'B' : 'A';
  EXPECT_THAT(view->VerifyToken(tampered, now), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(view->VerifyToken("garbage", now), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(view->VerifyToken(std::string(10000, 'a'), now),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // Another cluster's key.
  EXPECT_THAT(ViewOf(Cluster())->VerifyToken(*token, now),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("not signed")));
  // A new password ends the old tokens; so does deleting the user.
  v1::AuthChangeRequest passwd;
  passwd.mutable_user_password()->set_name("alice");
  passwd.mutable_user_password()->set_password("new");
  serverpb::AuthState changed = Apply(view->state(), {passwd});
  EXPECT_THAT(ViewOf(changed)->VerifyToken(*token, now),
              StatusIs(absl::StatusCode::kUnauthenticated, HasSubstr("password change")));
  v1::AuthChangeRequest drop;
  drop.set_user_delete("alice");
  EXPECT_THAT(ViewOf(Apply(view->state(), {drop}))->VerifyToken(*token, now),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // Members' own tokens.
  absl::StatusOr<std::string> member = view->MintToken("node-2", now + absl::Minutes(1));
  ASSERT_THAT(member, IsOk());
  absl::StatusOr<Principal> node = view->VerifyToken(*member, now);
  ASSERT_THAT(node, IsOk());
  EXPECT_TRUE(node->member);
  // Before auth was ever enabled there is no key to sign with.
  EXPECT_THAT(AuthView().MintToken("alice", now + absl::Minutes(1)),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST(AuthView, ACertificateNamesAUserOrAMember) {
  std::shared_ptr<const AuthView> view = ViewOf(Cluster());
  absl::StatusOr<Principal> bob = view->FromCertificate("bob");
  ASSERT_THAT(bob, IsOk());
  EXPECT_EQ(bob->user, "bob");
  EXPECT_THAT(view->FromCertificate("mallory"), StatusIs(absl::StatusCode::kUnauthenticated));
  absl::StatusOr<Principal> node = view->FromCertificate("node-7");
  ASSERT_THAT(node, IsOk());
  EXPECT_TRUE(node->member);
}

TEST(SignInThrottle, LetsABurstThroughThenOneAttemptPerRefill) {
  SignInThrottle throttle({.burst = 3, .refill = absl::Seconds(2), .max_sources = 2});
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(throttle.Wait("a", t0), absl::ZeroDuration()) << i;
    throttle.Failed("a", t0);
  }
  EXPECT_EQ(throttle.Wait("a", t0), absl::Seconds(2));
  EXPECT_EQ(throttle.Wait("b", t0), absl::ZeroDuration()) << "per source";
  EXPECT_EQ(throttle.Wait("a", t0 + absl::Seconds(1)), absl::Seconds(1));
  EXPECT_EQ(throttle.Wait("a", t0 + absl::Seconds(2)), absl::ZeroDuration());
  // Bounded: a third source pushes out the stalest.
  throttle.Failed("b", t0 + absl::Seconds(3));
  throttle.Failed("c", t0 + absl::Seconds(3));
  EXPECT_EQ(throttle.Wait("a", t0 + absl::Seconds(3)), absl::ZeroDuration()) << "forgotten";
}

TEST(RateLimiter, LimitsEachUserToItsRateAndSaysWhenToComeBack) {
  RateLimiter limiter;
  v1::Limits limits;
  limits.set_ops_per_sec(5);
  limits.set_bytes_per_sec(1000);
  v1::Limits::User* fast = limits.add_users();
  fast->set_user("fast");  // no limits of its own
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  const Principal alice{.user = "alice"};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(limiter.Admit(alice, limits, 1, 10, t0), absl::ZeroDuration()) << i;
  }
  EXPECT_EQ(limiter.Admit(alice, limits, 1, 10, t0), absl::Milliseconds(200));
  EXPECT_EQ(limiter.Admit(alice, limits, 1, 10, t0 + absl::Milliseconds(200)),
            absl::ZeroDuration());
  // Bytes: a second's worth at most, then one waits for what is missing.
  const Principal bob{.user = "bob"};
  EXPECT_EQ(limiter.Admit(bob, limits, 1, 900, t0), absl::ZeroDuration());
  EXPECT_EQ(limiter.Admit(bob, limits, 1, 300, t0), absl::Milliseconds(200));
  // Others, members and users with their own (no) limits are not held up.
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(limiter.Admit({.user = "fast"}, limits, 1, 100000, t0), absl::ZeroDuration());
    EXPECT_EQ(limiter.Admit({.user = "node-1", .member = true}, limits, 1, 100000, t0),
              absl::ZeroDuration());
  }
  EXPECT_EQ(limiter.Admit(alice, v1::Limits(), 1000, 1 << 30, t0), absl::ZeroDuration());
}

TEST(AuthChanges, LimitsAreValidatedAndKept) {
  v1::AuthChangeRequest c;
  c.mutable_set_limits()->set_storage_quota_bytes(1 << 20);
  c.mutable_set_limits()->add_users()->set_user("alice");
  c.mutable_set_limits()->add_users()->set_user("alice");
  EXPECT_THAT(ApplyAuthChange({}, c), StatusIs(absl::StatusCode::kInvalidArgument));
  c.mutable_set_limits()->mutable_users()->RemoveLast();
  serverpb::AuthState state = Apply({}, {c});
  EXPECT_EQ(state.limits().storage_quota_bytes(), 1u << 20);
  EXPECT_EQ(state.limits().users_size(), 1);
}

TEST(SourceAddress, DropsThePort) {
  EXPECT_EQ(SourceAddress("ipv4:10.1.2.3:5555"), "ipv4:10.1.2.3");
  EXPECT_EQ(SourceAddress("ipv6:[::1]:5555"), "ipv6:[::1]");
  EXPECT_EQ(SourceAddress("unix:/tmp/s"), "unix:/tmp/s");
}

}  // namespace
}  // namespace tessera::server::security
