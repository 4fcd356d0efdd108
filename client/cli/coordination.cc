// tessera lease | lock | elect: leases, locks and elections from the shell.
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/cli/cli.h"
#include "client/concurrency.h"

namespace tessera::client::cli {
namespace {

std::atomic<int> interrupted{0};

void OnSignal(int signal) { interrupted.store(signal); }

// SIGINT and SIGTERM set `interrupted` (and interrupt blocking calls).
void CatchSignals() {
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

std::string Seconds(absl::Duration d) {
  return absl::FormatDuration(absl::Trunc(d, absl::Milliseconds(1)));
}

absl::Duration TtlOf(const Args& args) { return args.ttl.value_or(absl::Seconds(10)); }

// Runs argv as a child with `env` added; while it runs, `lost` is polled:
// once true the child gets SIGTERM. Returns the child's exit code (128 +
// signal if killed), or -1 if it could not be started.
int RunChild(const std::vector<std::string>& argv, const std::vector<std::string>& env,
             const std::function<bool()>& lost, bool* was_lost) {
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    for (const std::string& kv : env) putenv(const_cast<char*>(kv.c_str()));
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    std::fprintf(stderr, "tessera: cannot run %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  bool signalled = false;
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) {
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
    if (done < 0 && errno != EINTR) return -1;
    if (!signalled && (lost() || interrupted.load() != 0)) {
      *was_lost = lost();
      kill(pid, SIGTERM);
      signalled = true;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
}

// Exit code when interrupted while waiting for a lock (as a shell's).
constexpr int kExitInterrupted = 130;

// Runs `wait` in slices of 2 s until it is not kDeadlineExceeded, or a
// signal came (then its last result).
absl::StatusOr<uint64_t> WaitInterruptibly(
    const std::function<absl::StatusOr<uint64_t>(absl::Time)>& wait) {
  while (true) {
    absl::StatusOr<uint64_t> result = wait(absl::Now() + absl::Seconds(2));
    if (!absl::IsDeadlineExceeded(result.status()) || interrupted.load() != 0) return result;
  }
}

}  // namespace

std::string LeaseIdText(uint64_t id) { return absl::StrFormat("%016x", id); }

std::optional<uint64_t> ParseLeaseId(const std::string& text) {
  uint64_t id = 0;
  if (text.empty() || text.size() > 16 || !absl::SimpleHexAtoi(text, &id) || id == 0) {
    return std::nullopt;
  }
  return id;
}

std::optional<std::string> CheckCoordination(const Args& args) {
  const std::vector<std::string>& pos = args.positional;
  const std::string& cmd = pos[0];
  const size_t n = pos.size() - 1;
  if (cmd == "lease") {
    const std::string sub = n >= 1 ? pos[1] : "";
    absl::Duration ttl;
    if (sub == "grant" && n == 2 && absl::ParseDuration(pos[2], &ttl) &&
        ttl > absl::ZeroDuration()) {
      return std::nullopt;
    }
    if (sub == "grant" && n == 2) {
      int64_t seconds = 0;
      if (absl::SimpleAtoi(pos[2], &seconds) && seconds > 0) return std::nullopt;
    }
    if ((sub == "keepalive" || sub == "revoke" || sub == "ttl") && n == 2 &&
        ParseLeaseId(pos[2]).has_value()) {
      return std::nullopt;
    }
    if (sub == "list" && n == 1) return std::nullopt;
    return "lease grant TTL | lease keepalive ID [--count N] | lease revoke ID | lease ttl ID | "
           "lease list  (TTL: seconds or a duration such as 30s; ID: 16 hex digits)";
  }
  if (cmd == "lock") {
    if (n < 2) return "lock NAME [--ttl 10s] -- COMMAND [ARGS...]";
    return std::nullopt;
  }
  if (cmd == "elect") {
    if (n < 1 || n > 2) return "elect NAME VALUE (campaign and hold) | elect NAME (observe)";
    return std::nullopt;
  }
  return std::nullopt;
}

int RunLease(Client& client, const Args& args) {
  const std::vector<std::string>& pos = args.positional;
  const std::string& sub = pos[1];
  CallOptions call;
  call.timeout = args.timeout;
  if (sub == "grant") {
    absl::Duration ttl;
    if (!absl::ParseDuration(pos[2], &ttl)) {
      int64_t seconds = 0;
      (void)absl::SimpleAtoi(pos[2], &seconds);  // validated
      ttl = absl::Seconds(seconds);
    }
    absl::StatusOr<LeaseGrant> lease = client.GrantLease(ttl, call);
    if (!lease.ok()) return Fail("lease grant", lease.status());
    if (args.json) {
      std::printf("{\"id\":\"%s\",\"ttl_seconds\":%lld}\n", LeaseIdText(lease->id).c_str(),
                  static_cast<long long>(absl::ToInt64Seconds(lease->ttl)));
    } else {
      std::printf("lease %s granted with TTL %s\n", LeaseIdText(lease->id).c_str(),
                  Seconds(lease->ttl).c_str());
    }
    return kExitOk;
  }
  if (sub == "list") {
    absl::StatusOr<std::vector<uint64_t>> ids = client.Leases(call);
    if (!ids.ok()) return Fail("lease list", ids.status());
    for (uint64_t id : *ids) std::printf("%s\n", LeaseIdText(id).c_str());
    return kExitOk;
  }
  const uint64_t id = *ParseLeaseId(pos[2]);  // validated
  if (sub == "revoke") {
    absl::Status revoked = client.RevokeLease(id, call);
    if (!revoked.ok()) return Fail("lease revoke", revoked);
    std::printf("lease %s revoked\n", LeaseIdText(id).c_str());
    return kExitOk;
  }
  if (sub == "ttl") {
    absl::StatusOr<LeaseTimeToLive> ttl = client.LeaseTtl(id, call);
    if (!ttl.ok()) return Fail("lease ttl", ttl.status());
    if (args.json) {
      std::printf("{\"id\":\"%s\",\"granted_ttl_seconds\":%lld,\"remaining_ms\":%lld}\n",
                  LeaseIdText(id).c_str(),
                  static_cast<long long>(absl::ToInt64Seconds(ttl->granted_ttl)),
                  static_cast<long long>(absl::ToInt64Milliseconds(ttl->remaining)));
    } else {
      std::printf("lease %s: granted TTL %s, remaining %s\n", LeaseIdText(id).c_str(),
                  Seconds(ttl->granted_ttl).c_str(), Seconds(ttl->remaining).c_str());
    }
    return kExitOk;
  }
  // keepalive: renew about every TTL/3 until interrupted, --count renewals,
  // or the lease is lost: the server says it ended (NOT_FOUND), or no
  // renewal succeeded within its TTL (exit 1 too). Other failures (no
  // leader, a timeout) are retried meanwhile.
  CatchSignals();
  uint64_t renewed = 0;
  std::optional<absl::Time> valid_until;  // known live until then
  while (interrupted.load() == 0 && (!args.count || renewed < *args.count)) {
    const absl::Time sent = absl::Now();
    absl::StatusOr<absl::Duration> ttl = client.RenewLease(id, call);
    if (!ttl.ok()) {
      if (absl::IsNotFound(ttl.status()) || !valid_until.has_value()) {
        return Fail("lease keepalive", ttl.status());
      }
      if (absl::Now() >= *valid_until) {
        return Fail("lease keepalive",
                    absl::NotFoundError(absl::StrCat("lease ", LeaseIdText(id),
                                                     " is lost: not renewed within its TTL (",
                                                     ttl.status().ToString(), ")")));
      }
      absl::SleepFor(absl::Milliseconds(200));
      continue;
    }
    valid_until = sent + *ttl;
    ++renewed;
    std::printf("lease %s renewed, TTL %s\n", LeaseIdText(id).c_str(), Seconds(*ttl).c_str());
    std::fflush(stdout);
    if (args.count && renewed >= *args.count) break;
    const absl::Time next = absl::Now() + *ttl / 3;
    while (interrupted.load() == 0 && absl::Now() < next) absl::SleepFor(absl::Milliseconds(50));
  }
  return kExitOk;
}

int RunLock(Client& client, const Args& args) {
  const std::vector<std::string>& pos = args.positional;
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Create(&client, TtlOf(args));
  if (!session.ok()) return Fail("lock", session.status());
  Mutex mutex(&client, session->get(), pos[1]);
  // Interrupted while waiting: leave the queue and exit 130.
  CatchSignals();
  absl::StatusOr<uint64_t> token =
      WaitInterruptibly([&](absl::Time deadline) { return mutex.Lock(deadline); });
  if (!token.ok()) {
    mutex.Unlock().IgnoreError();
    if (interrupted.load() != 0) return kExitInterrupted;
    return Fail("lock", token.status());
  }
  std::fprintf(stderr, "tessera: lock: holding %s (fencing token %llu)\n", pos[1].c_str(),
               static_cast<unsigned long long>(*token));
  const std::vector<std::string> command(pos.begin() + 2, pos.end());
  const std::vector<std::string> env = {
      absl::StrCat("TESSERA_LOCK_TOKEN=", *token), absl::StrCat("TESSERA_LOCK_KEY=", mutex.key()),
      absl::StrCat("TESSERA_LEASE=", LeaseIdText((*session)->lease()))};
  bool lost = false;
  const int code = RunChild(
      command, env, [&] { return (*session)->lost(); }, &lost);
  absl::Status unlocked = mutex.Unlock();
  if (lost) {
    std::fprintf(stderr,
                 "tessera: lock: lost %s (its lease was not renewed in time); the command was "
                 "stopped\n",
                 pos[1].c_str());
    return kExitError;
  }
  if (code < 0) return Fail("lock", absl::InternalError("cannot start the command"));
  if (!unlocked.ok()) Fail("lock (unlock)", unlocked);
  return code;
}

int RunElect(Client& client, const Args& args) {
  const std::vector<std::string>& pos = args.positional;
  if (pos.size() == 2) {  // observe until interrupted or --count values
    Election election(&client, nullptr, pos[1]);
    uint64_t printed = 0;
    absl::Status watched = election.Observe(
        [&](const std::optional<KeyValue>& leader) {
          if (args.json) {
            std::printf("{\"leader\":%s}\n", leader ? JsonString(leader->value).c_str() : "null");
          } else {
            std::printf("%s\n", leader ? leader->value.c_str() : "(no leader)");
          }
          std::fflush(stdout);
          return !args.count || ++printed < *args.count;
        },
        absl::InfiniteFuture());
    return watched.ok() ? kExitOk : Fail("elect", watched);
  }
  absl::StatusOr<std::unique_ptr<Session>> session = Session::Create(&client, TtlOf(args));
  if (!session.ok()) return Fail("elect", session.status());
  Election election(&client, session->get(), pos[1]);
  // Interrupted while campaigning or leading: resign, then exit.
  CatchSignals();
  absl::StatusOr<uint64_t> revision =
      WaitInterruptibly([&](absl::Time deadline) { return election.Campaign(pos[2], deadline); });
  if (!revision.ok()) {
    absl::Status resigned = election.Resign();
    if (interrupted.load() != 0) return resigned.ok() ? kExitOk : Fail("elect (resign)", resigned);
    return Fail("elect", revision.status());
  }
  std::printf("elected: %s = %s (revision %llu)\n", pos[1].c_str(), pos[2].c_str(),
              static_cast<unsigned long long>(*revision));
  std::fflush(stdout);
  // Lead until interrupted or the lease is lost.
  while (interrupted.load() == 0 && !(*session)->WaitLost(absl::Now() + absl::Milliseconds(200))) {
  }
  if ((*session)->lost()) {
    std::fprintf(stderr, "tessera: elect: lost the leadership (lease not renewed in time)\n");
    return kExitError;
  }
  absl::Status resigned = election.Resign();
  return resigned.ok() ? kExitOk : Fail("elect (resign)", resigned);
}

}  // namespace tessera::client::cli
