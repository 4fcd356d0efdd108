// tessera-lease-bench: many leases kept alive at once (client/bench/README.md).
//
//   tessera-lease-bench --endpoints=127.0.0.1:7401,... --leases=10000 --ttl=10s
//       --threads=8 --duration=30s [--pids=PID,PID,PID]
//
// Grants --leases leases, then renews each about every TTL/3 from --threads
// threads (one RenewLease call at a time per thread) for --duration, then
// revokes them all. Prints the grant and revoke rates, the renewals per
// second and their latency, how many renewals were late (sent after a
// third of the TTL had passed) or failed, how many leases were lost (a
// renewal answered NOT_FOUND: the lease had ended), and with --pids the CPU
// seconds of those processes (the servers) during the renewal phase.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/bench/histogram.h"
#include "client/client.h"

namespace tessera::bench {
namespace {

struct Flags {
  std::vector<std::string> endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
  int64_t leases = 10000;
  absl::Duration ttl = absl::Seconds(10);
  int threads = 8;
  absl::Duration duration = absl::Seconds(30);
  std::vector<int> pids;
};

bool Parse(int argc, char** argv, Flags* flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) return false;
    const std::string name = arg.substr(2, eq - 2);
    const std::string value = arg.substr(eq + 1);
    bool ok = true;
    if (name == "endpoints") {
      flags->endpoints = absl::StrSplit(value, ',', absl::SkipEmpty());
    } else if (name == "leases") {
      ok = absl::SimpleAtoi(value, &flags->leases) && flags->leases > 0 && flags->leases <= 1000000;
    } else if (name == "ttl") {
      ok = absl::ParseDuration(value, &flags->ttl) && flags->ttl >= absl::Seconds(2);
    } else if (name == "threads") {
      ok = absl::SimpleAtoi(value, &flags->threads) && flags->threads > 0 && flags->threads <= 256;
    } else if (name == "duration") {
      ok = absl::ParseDuration(value, &flags->duration) && flags->duration > absl::ZeroDuration();
    } else if (name == "pids") {
      for (absl::string_view p : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        int pid = 0;
        ok = ok && absl::SimpleAtoi(p, &pid) && pid > 0;
        flags->pids.push_back(pid);
      }
    } else {
      ok = false;
    }
    if (!ok) return false;
  }
  return true;
}

// utime + stime of `pid` in seconds (0 if unreadable).
double CpuSeconds(int pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::vector<std::string> fields = absl::StrSplit(line.substr(close + 2), ' ');
  double utime = 0, stime = 0;
  // Fields 14 and 15 of stat, counted after the command name (field 3 on).
  if (fields.size() < 13 || !absl::SimpleAtod(fields[11], &utime) ||
      !absl::SimpleAtod(fields[12], &stime)) {
    return 0;
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Runs fn(i) for i in [0, n) on `threads` threads.
template <typename Fn>
void Parallel(int threads, int64_t n, Fn fn) {
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int64_t i; (i = next.fetch_add(1)) < n;) fn(i);
    });
  }
  for (std::thread& t : pool) t.join();
}

int Main(int argc, char** argv) {
  Flags flags;
  if (!Parse(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: tessera-lease-bench [--endpoints=A,B] [--leases=N] [--ttl=D] "
                 "[--threads=N] [--duration=D] [--pids=P,Q]\n");
    return 2;
  }
  client::ClientOptions options;
  options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  options.endpoints = flags.endpoints;
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  if (!created.ok()) {
    std::fprintf(stderr, "%s\n", created.status().ToString().c_str());
    return 2;
  }
  client::Client& c = **created;
  std::vector<uint64_t> ids(static_cast<size_t>(flags.leases));
  std::atomic<int64_t> grant_errors{0};
  absl::Time start = absl::Now();
  Parallel(flags.threads, flags.leases, [&](int64_t i) {
    absl::StatusOr<client::LeaseGrant> g = c.GrantLease(flags.ttl);
    if (g.ok()) {
      ids[static_cast<size_t>(i)] = g->id;
    } else {
      ++grant_errors;
    }
  });
  const double grant_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("granted %lld leases in %.2f s (%.0f/s), %lld errors\n",
              static_cast<long long>(flags.leases), grant_seconds, flags.leases / grant_seconds,
              static_cast<long long>(grant_errors.load()));

  // Renewals: thread t owns the leases i with i % threads == t.
  absl::Mutex mu;
  LatencyHistogram latency;
  uint64_t renewals = 0, late = 0, failed = 0, lost = 0;
  std::vector<double> cpu_before;
  for (int pid : flags.pids) cpu_before.push_back(CpuSeconds(pid));
  start = absl::Now();
  const absl::Time end = start + flags.duration;
  std::vector<std::thread> pool;
  for (int t = 0; t < flags.threads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<std::pair<absl::Time, uint64_t>> due;  // (next renewal, id)
      for (size_t i = static_cast<size_t>(t); i < ids.size(); i += flags.threads) {
        if (ids[i] != 0) due.emplace_back(start, ids[i]);
      }
      LatencyHistogram mine;
      uint64_t my_renewals = 0, my_late = 0, my_failed = 0, my_lost = 0;
      size_t at = 0;
      while (!due.empty() && absl::Now() < end) {
        auto& [when, id] = due[at];
        const absl::Time now = absl::Now();
        if (when > now) absl::SleepFor(std::min(when, end) - now);
        if (absl::Now() >= end) break;
        const absl::Time sent = absl::Now();
        if (sent - when > flags.ttl / 3) ++my_late;
        absl::StatusOr<absl::Duration> ttl = c.RenewLease(id);
        mine.Record(static_cast<uint64_t>(absl::ToInt64Nanoseconds(absl::Now() - sent)));
        ++my_renewals;
        if (absl::IsNotFound(ttl.status())) {
          ++my_lost;
          due.erase(due.begin() + static_cast<std::ptrdiff_t>(at));
          if (at >= due.size()) at = 0;
          continue;
        }
        if (!ttl.ok()) ++my_failed;
        when = sent + flags.ttl / 3;
        at = (at + 1) % due.size();
      }
      absl::MutexLock lock(&mu);
      latency.Merge(mine);
      renewals += my_renewals;
      late += my_late;
      failed += my_failed;
      lost += my_lost;
    });
  }
  for (std::thread& t : pool) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf(
      "renewals: %llu in %.1f s (%.0f/s), p50 %.2f ms, p99 %.2f ms, max %.2f ms; %llu late "
      "(sent over TTL/3 after due), %llu failed, %llu leases lost\n",
      static_cast<unsigned long long>(renewals), seconds, renewals / seconds,
      latency.Percentile(50) / 1e6, latency.Percentile(99) / 1e6, latency.max_nanos() / 1e6,
      static_cast<unsigned long long>(late), static_cast<unsigned long long>(failed),
      static_cast<unsigned long long>(lost));
  for (size_t i = 0; i < flags.pids.size(); ++i) {
    const double used = CpuSeconds(flags.pids[i]) - cpu_before[i];
    std::printf("pid %d: %.2f CPU s (%.0f%% of one core)\n", flags.pids[i], used,
                100 * used / seconds);
  }

  std::atomic<int64_t> revoke_errors{0}, expired{0};
  start = absl::Now();
  Parallel(flags.threads, flags.leases, [&](int64_t i) {
    if (ids[static_cast<size_t>(i)] == 0) return;
    absl::Status revoked = c.RevokeLease(ids[static_cast<size_t>(i)]);
    if (absl::IsNotFound(revoked)) {
      ++expired;  // not renewed since the renewal phase: it may have expired first
    } else if (!revoked.ok()) {
      ++revoke_errors;
    }
  });
  const double revoke_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::printf("revoked in %.2f s (%.0f/s), %lld had expired first, %lld errors\n", revoke_seconds,
              flags.leases / revoke_seconds, static_cast<long long>(expired.load()),
              static_cast<long long>(revoke_errors.load()));
  return lost == 0 ? 0 : 1;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) { return tessera::bench::Main(argc, argv); }
