// tessera-bench: a closed-loop load generator for Tessera and etcd, in the
// spirit of etcd's `benchmark` tool (client/bench/README.md).
//
// Parses its flags by hand (so that every usage error is one line on stderr
// and exit code 2), builds the backend, optionally fills the key space,
// runs the workload through the shared driver (driver.h) and prints a human
// summary followed by one JSON line, the last line of stdout.
// Exit codes: 0 the run completed (even with some errors), 1 every request
// failed, 2 usage error or the cluster cannot be reached, 3 --verify found a
// key whose version does not match the writes made to it, or could not read
// one.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/bench/backend.h"
#include "client/bench/driver.h"
#include "client/bench/etcd_backend.h"
#include "client/bench/histogram.h"
#include "client/bench/lock_check.h"
#include "client/bench/tessera_backend.h"
#include "client/bench/watch_check.h"

namespace tessera::bench {
namespace {

constexpr int kExitOk = 0;
constexpr int kExitAllFailed = 1;
constexpr int kExitUsage = 2;
constexpr int kExitVerifyFailed = 3;
// --verify keeps two versions and two counters per key.
constexpr uint64_t kMaxVerifyKeySpace = 10'000'000;

constexpr char kUsage[] = R"(usage: tessera-bench [flags] put|get|mixed|txn

Drives a Tessera cluster (C++ SDK) or an etcd v3 cluster (gRPC KV API) with a
closed loop of --clients concurrent requests and prints a latency summary, then
one JSON line (the last line of stdout).

workloads:
  put     put key = value
  get     get key (a missing key is a success, counted as a miss)
  mixed   --read-ratio gets, the rest puts
  txn     one transaction per op: if version(key) > 0 then put else put

flags:
  --backend=tessera|etcd       system to drive (default tessera)
  --endpoints=H:P,H:P,...      default 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
                               (tessera) / 127.0.0.1:2379 (etcd)
  --conns=N                    gRPC connections: tessera per node, etcd in total
                               (spread round-robin over the endpoints) (default 1)
  --api=batch|unary            tessera: one KV.Batch stream per node carrying many
                               requests per message (default, as the SDK), or one
                               unary RPC per request (ClientOptions::use_batch_stream);
                               etcd: ignored (always unary, as clientv3)
  --clients=N                  requests in flight (virtual clients) (default 1)
  --total=N                    stop after N measured requests
  --duration=D                 stop after D (e.g. 5s); default 10s if --total is not
                               given either; with both, whichever comes first
  --warmup=D                   run D first and discard its stats (default 0)
  --key-size=N                 key bytes: 'k' + zero-padded index (default 16)
  --value-size=N               value bytes (default 256)
  --key-space=N                keys 0..N-1 (default 100000)
  --sequential-keys            keys in order 0,1,2,... (wrapping) instead of random
  --read-ratio=F               mixed: fraction of gets, in [0,1] (default 0.9)
  --consistency=C              reads: linearizable (default) | lease | stale
                               (etcd: stale = serializable; no lease reads)
  --fill                       first write every key once (not measured)
  --timeout=D                  per-request deadline (default 5s)
  --seed=N                     random seed (default: random, printed)
  --verify                     read every key's version before and after the run
                               (after --fill) and check that each gained exactly
                               the writes acknowledged to it, plus at most those
                               that failed (unknown outcome): a lost or doubly
                               applied write fails the run (linearizable reads;
                               key space up to 10000000)
  --watch                      with --verify (tessera only): a prefix watcher on
                               the bench's keys (a client of its own) must see
                               every write that applied exactly once, in order
                               (each key's put events carry consecutive versions
                               up to the version read after the run)
  --locks=N                    (tessera only) N workers take one lock in turn and,
                               holding it, write a fenced resource; and a lease with
                               keys on every shard is kept alive, then revoked: a
                               write refused while its holder's lease was surely
                               live (two holders at once), or a leased key missing
                               while its lease lives or left after it ended, fails
                               the run (client/bench/lock_check.h)
  --json-only                  print only the JSON line
  --help                       this help

exit codes: 0 the run completed (even with some errors), 1 every request
failed, 2 usage error or the cluster cannot be reached, 3 --verify found a
mismatch or could not read a key, --watch found a lost or repeated event, or
--locks found a violation.
)";

struct Config {
  std::string backend = "tessera";
  std::vector<std::string> endpoints;  // empty: the backend's default
  int conns = 1;
  std::string api = "batch";
  int clients = 1;
  std::optional<int64_t> total;
  std::optional<absl::Duration> duration;
  absl::Duration warmup = absl::ZeroDuration();
  uint64_t key_size = 16;
  uint64_t value_size = 256;
  uint64_t key_space = 100000;
  bool sequential_keys = false;
  double read_ratio = 0.9;
  std::string consistency = "linearizable";
  bool fill = false;
  absl::Duration timeout = absl::Seconds(5);
  std::optional<uint64_t> seed;
  bool json_only = false;
  bool verify = false;
  bool watch = false;
  int locks = 0;
  std::string workload;
};

bool ParseBool(const std::string& text, bool* out) {
  if (text == "true" || text == "1") {
    *out = true;
  } else if (text == "false" || text == "0") {
    *out = false;
  } else {
    return false;
  }
  return true;
}

template <typename T>
bool ParseInt(const std::string& text, T min, T max, T* out) {
  T value;
  if (!absl::SimpleAtoi(text, &value) || value < min || value > max) return false;
  *out = value;
  return true;
}

// The same into an optional flag (set only when valid).
template <typename T>
bool ParseInt(const std::string& text, T min, T max, std::optional<T>* out) {
  T value;
  if (!ParseInt(text, min, max, &value)) return false;
  *out = value;
  return true;
}

bool ParseEndpoint(const std::string& endpoint) {
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  int port = 0;
  return ParseInt(endpoint.substr(colon + 1), 1, 65535, &port);
}

// Parses argv into `config`; an error message (one line) on a usage error.
// Sets *help for --help.
std::optional<std::string> ParseArgs(int argc, char** argv, Config* config, bool* help) {
  using Setter = std::function<bool(const std::string&)>;
  const std::map<std::string, Setter> valued = {
      {"backend",
       [&](const std::string& v) {
         config->backend = v;
         return v == "tessera" || v == "etcd";
       }},
      {"endpoints",
       [&](const std::string& v) {
         config->endpoints = absl::StrSplit(v, ',');
         return std::all_of(config->endpoints.begin(), config->endpoints.end(), ParseEndpoint);
       }},
      {"conns", [&](const std::string& v) { return ParseInt(v, 1, 4096, &config->conns); }},
      {"api",
       [&](const std::string& v) {
         config->api = v;
         return v == "batch" || v == "unary";
       }},
      {"clients", [&](const std::string& v) { return ParseInt(v, 1, 1 << 20, &config->clients); }},
      {"locks", [&](const std::string& v) { return ParseInt(v, 0, 64, &config->locks); }},
      {"total",
       [&](const std::string& v) { return ParseInt<int64_t>(v, 0, INT64_MAX, &config->total); }},
      {"duration",
       [&](const std::string& v) {
         absl::Duration d;
         if (!absl::ParseDuration(v, &d) || d <= absl::ZeroDuration()) return false;
         config->duration = d;
         return true;
       }},
      {"warmup",
       [&](const std::string& v) {
         return absl::ParseDuration(v, &config->warmup) && config->warmup >= absl::ZeroDuration();
       }},
      {"timeout",
       [&](const std::string& v) {
         return absl::ParseDuration(v, &config->timeout) && config->timeout > absl::ZeroDuration();
       }},
      {"key-size",
       [&](const std::string& v) { return ParseInt<uint64_t>(v, 1, 1 << 20, &config->key_size); }},
      {"value-size",
       [&](const std::string& v) {
         return ParseInt<uint64_t>(v, 1, 64 << 20, &config->value_size);
       }},
      {"key-space",
       [&](const std::string& v) {
         return ParseInt<uint64_t>(v, 1, UINT64_MAX, &config->key_space);
       }},
      {"read-ratio",
       [&](const std::string& v) {
         return absl::SimpleAtod(v, &config->read_ratio) && config->read_ratio >= 0 &&
                config->read_ratio <= 1;
       }},
      {"consistency",
       [&](const std::string& v) {
         config->consistency = v;
         return v == "linearizable" || v == "lease" || v == "stale";
       }},
      {"seed",
       [&](const std::string& v) { return ParseInt<uint64_t>(v, 0, UINT64_MAX, &config->seed); }},
  };
  const std::map<std::string, bool*> flags = {{"sequential-keys", &config->sequential_keys},
                                              {"fill", &config->fill},
                                              {"json-only", &config->json_only},
                                              {"verify", &config->verify},
                                              {"watch", &config->watch}};
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return std::nullopt;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      positional.push_back(arg);
      continue;
    }
    const size_t eq = arg.find('=');
    const std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    std::optional<std::string> value;
    if (eq != std::string::npos) value = arg.substr(eq + 1);
    if (auto flag = flags.find(name); flag != flags.end()) {
      if (value.has_value() && !ParseBool(*value, flag->second)) {
        return absl::StrCat("bad value '", *value, "' for --", name, " (true or false)");
      }
      if (!value.has_value()) *flag->second = true;
      continue;
    }
    auto setter = valued.find(name);
    if (setter == valued.end()) return absl::StrCat("unknown flag --", name, " (see --help)");
    if (!value.has_value()) {
      if (i + 1 >= argc) return absl::StrCat("--", name, " needs a value");
      value = argv[++i];
    }
    if (!setter->second(*value)) {
      return absl::StrCat("bad value '", *value, "' for --", name, " (see --help)");
    }
  }
  if (positional.size() != 1) {
    return positional.empty()
               ? "no workload given (put, get, mixed or txn)"
               : absl::StrCat("one workload expected, got '", absl::StrJoin(positional, " "), "'");
  }
  config->workload = positional[0];
  if (config->workload != "put" && config->workload != "get" && config->workload != "mixed" &&
      config->workload != "txn") {
    return absl::StrCat("unknown workload '", config->workload, "' (put, get, mixed or txn)");
  }
  if (config->backend == "etcd" && config->consistency == "lease") {
    return "--consistency=lease: etcd has no lease reads (use linearizable or stale)";
  }
  if (config->verify && config->consistency != "linearizable") {
    return "--verify reads the versions with linearizable reads: drop --consistency";
  }
  if (config->watch && (!config->verify || config->backend != "tessera")) {
    return "--watch needs --verify and the tessera backend";
  }
  if (config->locks > 0 && config->backend != "tessera") return "--locks needs the tessera backend";
  if (config->verify && config->key_space > kMaxVerifyKeySpace) {
    return absl::StrCat("--verify: --key-space is at most ", kMaxVerifyKeySpace);
  }
  if (config->endpoints.empty()) {
    if (config->backend == "etcd") {
      config->endpoints = {"127.0.0.1:2379"};
    } else {
      config->endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
    }
  }
  if (!config->total.has_value() && !config->duration.has_value()) {
    config->duration = absl::Seconds(10);
  }
  return std::nullopt;
}

Workload ToWorkload(const std::string& name) {
  if (name == "get") return Workload::kGet;
  if (name == "mixed") return Workload::kMixed;
  if (name == "txn") return Workload::kTxn;
  return Workload::kPut;
}

ReadConsistency ToConsistency(const std::string& name) {
  if (name == "lease") return ReadConsistency::kLease;
  if (name == "stale") return ReadConsistency::kStale;
  return ReadConsistency::kLinearizable;
}

std::string Ms(double nanos) { return FormatMillis(nanos); }

double OpsPerSecond(const RunStats& stats) {
  return stats.seconds > 0 ? static_cast<double>(stats.ops) / stats.seconds : 0;
}

// "DEADLINE_EXCEEDED: 3, UNAVAILABLE: 1", or "" without errors.
std::string ErrorList(const RunStats& stats, const char* separator, const char* quote) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < stats.errors_by_code.size(); ++i) {
    if (stats.errors_by_code[i] == 0) continue;
    parts.push_back(absl::StrCat(quote, absl::StatusCodeToString(static_cast<absl::StatusCode>(i)),
                                 quote, separator, stats.errors_by_code[i]));
  }
  return absl::StrJoin(parts, ", ");
}

// Text bars over ~15 log-spaced buckets between the fastest and the slowest.
void PrintHistogram(const LatencyHistogram& h) {
  std::printf("\nResponse time histogram (ms):\n");
  if (h.count() == 0) {
    std::printf("  (no successful requests)\n");
    return;
  }
  constexpr int kBars = 15;
  constexpr int kWidth = 40;
  const double lo = static_cast<double>(std::max<uint64_t>(1, h.min_nanos()));
  const double hi = static_cast<double>(h.max_nanos()) + 1;
  const int buckets = h.max_nanos() <= h.min_nanos() ? 1 : kBars;
  std::vector<uint64_t> bounds;
  for (int i = 0; i <= buckets; ++i) {
    bounds.push_back(
        static_cast<uint64_t>(lo * std::pow(hi / lo, static_cast<double>(i) / buckets)));
  }
  bounds.front() = 0;
  bounds.back() = h.max_nanos() + 1;
  std::vector<uint64_t> counts;
  uint64_t most = 1;
  for (int i = 0; i < buckets; ++i) {
    counts.push_back(h.CountBetween(bounds[i], bounds[i + 1]));
    most = std::max(most, counts.back());
  }
  for (int i = 0; i < buckets; ++i) {
    const double upper =
        i + 1 == buckets ? static_cast<double>(h.max_nanos()) : static_cast<double>(bounds[i + 1]);
    const int bar = static_cast<int>(counts[i] * kWidth / most);
    std::printf("  %10s [%9llu] |%s\n", Ms(upper).c_str(),
                static_cast<unsigned long long>(counts[i]), std::string(bar, '#').c_str());
  }
}

void PrintSummary(const Config& config, const RunStats& stats) {
  const LatencyHistogram& h = stats.latencies;
  std::printf("\nSummary:\n");
  std::printf("  Total:        %.4f secs.\n", stats.seconds);
  std::printf("  Requests:     %llu (%llu ok, %llu misses, %llu errors)\n",
              static_cast<unsigned long long>(stats.ops + stats.errors),
              static_cast<unsigned long long>(stats.ops),
              static_cast<unsigned long long>(stats.misses),
              static_cast<unsigned long long>(stats.errors));
  std::printf("  Requests/sec: %.1f\n", OpsPerSecond(stats));
  std::printf("  Slowest:      %s ms\n", Ms(static_cast<double>(h.max_nanos())).c_str());
  std::printf("  Fastest:      %s ms\n", Ms(static_cast<double>(h.min_nanos())).c_str());
  std::printf("  Average:      %s ms\n", Ms(h.mean_nanos()).c_str());
  std::printf("  Stddev:       %s ms\n", Ms(h.stddev_nanos()).c_str());
  PrintHistogram(h);
  std::printf("\nLatency distribution:\n");
  for (double p : {10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9}) {
    std::printf("  %g%% in %s ms\n", p, Ms(static_cast<double>(h.Percentile(p))).c_str());
  }
  std::printf("\nErrors: %s\n", stats.errors == 0 ? "none" : ErrorList(stats, ": ", "").c_str());
  std::printf("Seed: %llu (%s, %s, %s keys)\n", static_cast<unsigned long long>(*config.seed),
              config.workload.c_str(), config.backend.c_str(),
              config.sequential_keys ? "sequential" : "random");
}

// Every key's version (a get per key, --clients at a time); a key whose
// read failed is read again in the next pass, up to 3 passes.
KeyVersions ReadVersions(Backend& backend, const KeyFormat& keys, const Config& config) {
  KeyVersions versions(keys.key_space());
  for (int pass = 0; pass < 3; ++pass) {
    KeyVersions read(keys.key_space());
    RunSpec spec;
    spec.workload = Workload::kGet;
    spec.clients = static_cast<size_t>(config.clients);
    spec.total = static_cast<int64_t>(keys.key_space());
    spec.sequential_keys = true;
    spec.versions = &read;
    RunClosedLoop(backend, keys, spec);
    bool missing = false;
    for (uint64_t i = 0; i < keys.key_space(); ++i) {
      if (!versions[i].has_value()) versions[i] = read[i];
      missing = missing || !versions[i].has_value();
    }
    if (!missing) break;
  }
  return versions;
}

// The verdict on stdout (unless --json-only), each mismatch on stderr.
void PrintVersionCheck(const VersionCheck& check, bool json_only) {
  if (!json_only) {
    std::printf(
        "verify: %llu keys checked, %llu unreadable, %llu acknowledged and %llu failed "
        "writes, %llu mismatches\n",
        static_cast<unsigned long long>(check.keys_checked),
        static_cast<unsigned long long>(check.keys_unchecked),
        static_cast<unsigned long long>(check.acked_writes),
        static_cast<unsigned long long>(check.failed_writes),
        static_cast<unsigned long long>(check.mismatches));
  }
  for (const std::string& example : check.examples) {
    std::fprintf(stderr, "verify: mismatch: %s\n", example.c_str());
  }
}

std::string Json(const Config& config, const RunStats& stats, const RunStats* fill,
                 const VersionCheck* check) {
  const LatencyHistogram& h = stats.latencies;
  auto ms = [](uint64_t nanos) { return Ms(static_cast<double>(nanos)); };
  std::string json = absl::StrFormat(
      R"({"backend":"%s","api":"%s","workload":"%s","clients":%d,"conns":%d,"consistency":"%s",)"
      R"("key_size":%d,"value_size":%d,"key_space":%d,"ops":%d,"seconds":%.4f,)"
      R"("ops_per_sec":%.1f,"p50_ms":%s,"p90_ms":%s,"p95_ms":%s,"p99_ms":%s,"p999_ms":%s,)"
      R"("min_ms":%s,"mean_ms":%s,"max_ms":%s,"errors":%d,"errors_by_code":{%s},"misses":%d,)"
      R"("seed":%d)",
      config.backend, config.backend == "etcd" ? "unary" : config.api, config.workload,
      config.clients, config.conns, config.consistency, config.key_size, config.value_size,
      config.key_space, stats.ops, stats.seconds, OpsPerSecond(stats), ms(h.Percentile(50)),
      ms(h.Percentile(90)), ms(h.Percentile(95)), ms(h.Percentile(99)), ms(h.Percentile(99.9)),
      ms(h.min_nanos()), Ms(h.mean_nanos()), ms(h.max_nanos()), stats.errors,
      ErrorList(stats, ":", "\""), stats.misses, *config.seed);
  if (fill != nullptr) {
    absl::StrAppendFormat(&json,
                          R"(,"fill_ops":%d,"fill_seconds":%.4f,"fill_ops_per_sec":%.1f)"
                          R"(,"fill_errors":%d)",
                          fill->ops, fill->seconds, OpsPerSecond(*fill), fill->errors);
  }
  if (check != nullptr) {
    absl::StrAppendFormat(&json,
                          R"(,"verify_keys":%d,"verify_unreadable":%d,"verify_acked_writes":%d,)"
                          R"("verify_failed_writes":%d,"verify_mismatches":%d)",
                          check->keys_checked, check->keys_unchecked, check->acked_writes,
                          check->failed_writes, check->mismatches);
  }
  return json + "}";
}

int Main(int argc, char** argv) {
  // Abseil's Mutex deadlock detection (on in Debian's build) costs every
  // lock gRPC takes a graph update: a few % of the bench's CPU, which it
  // shares with the servers it measures.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  Config config;
  bool help = false;
  auto usage = [](const std::string& message) {
    std::fprintf(stderr, "tessera-bench: %s\n", message.c_str());
    return kExitUsage;
  };
  if (std::optional<std::string> error = ParseArgs(argc, argv, &config, &help)) {
    return usage(*error);
  }
  if (help) {
    std::fputs(kUsage, stdout);
    return kExitOk;
  }
  absl::StatusOr<KeyFormat> keys = KeyFormat::Create(config.key_size, config.key_space);
  if (!keys.ok()) return usage(std::string(keys.status().message()));
  if (!config.seed.has_value()) config.seed = absl::Uniform<uint32_t>(absl::BitGen());

  BackendOptions options;
  options.value.assign(config.value_size, 'v');
  options.consistency = ToConsistency(config.consistency);
  options.timeout = config.timeout;
  options.conns = config.conns;
  options.batch_stream = config.api == "batch";
  options.clients = static_cast<size_t>(config.clients);
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      config.backend == "etcd" ? NewEtcdBackend(config.endpoints, std::move(options))
                               : NewTesseraBackend(config.endpoints, std::move(options));
  if (!backend.ok()) return usage(std::string(backend.status().message()));

  if (!config.json_only) {
    std::printf(
        "tessera-bench: %s (%s) %s, %d clients, %d conns, %s, key %llu B, value %llu B, "
        "key space %llu\n",
        config.backend.c_str(), config.backend == "etcd" ? "unary" : config.api.c_str(),
        config.workload.c_str(), config.clients, config.conns,
        absl::StrJoin(config.endpoints, ",").c_str(),
        static_cast<unsigned long long>(config.key_size),
        static_cast<unsigned long long>(config.value_size),
        static_cast<unsigned long long>(config.key_space));
    std::fflush(stdout);
  }

  std::optional<RunStats> fill;
  if (config.fill) {
    RunSpec spec;
    spec.workload = Workload::kPut;
    spec.clients = static_cast<size_t>(config.clients);
    spec.total = static_cast<int64_t>(config.key_space);
    spec.sequential_keys = true;
    spec.seed = *config.seed;
    fill = RunClosedLoop(**backend, *keys, spec);
    if (!config.json_only) {
      std::printf("fill: %llu keys in %.2f s (%.0f ops/s)\n",
                  static_cast<unsigned long long>(fill->ops), fill->seconds, OpsPerSecond(*fill));
      if (fill->errors > 0) {
        std::printf("fill errors: %llu (%s)\n", static_cast<unsigned long long>(fill->errors),
                    ErrorList(*fill, ": ", "").c_str());
      }
      std::fflush(stdout);
    }
  }

  std::optional<KeyVersions> before;
  std::optional<WriteCounts> writes;
  std::unique_ptr<WatchCheck> watch_check;
  if (config.verify) {
    before = ReadVersions(**backend, *keys, config);
    writes.emplace(keys->key_space());
  }
  if (config.watch) {
    absl::StatusOr<std::unique_ptr<WatchCheck>> started =
        WatchCheck::Start(config.endpoints, *keys, *before);
    if (!started.ok()) return usage(absl::StrCat("--watch: ", started.status().ToString()));
    watch_check = *std::move(started);
  }
  std::unique_ptr<LockCheck> lock_check;
  if (config.locks > 0) {
    absl::StatusOr<std::unique_ptr<LockCheck>> started =
        LockCheck::Start(config.endpoints, config.locks);
    if (!started.ok()) return usage(absl::StrCat("--locks: ", started.status().ToString()));
    lock_check = *std::move(started);
  }

  RunSpec spec;
  spec.workload = ToWorkload(config.workload);
  spec.clients = static_cast<size_t>(config.clients);
  spec.total = config.total.value_or(-1);
  spec.duration = config.duration.value_or(absl::InfiniteDuration());
  spec.warmup = config.warmup;
  spec.sequential_keys = config.sequential_keys;
  spec.read_ratio = config.read_ratio;
  spec.seed = *config.seed;
  if (writes.has_value()) spec.writes = &*writes;
  const RunStats stats = RunClosedLoop(**backend, *keys, spec);

  std::optional<VersionCheck> check;
  std::optional<WatchVerdict> watched;
  if (config.verify) {
    const KeyVersions after = ReadVersions(**backend, *keys, config);
    check = CheckVersions(*keys, *before, after, *writes);
    if (watch_check != nullptr) watched = watch_check->Finish(after, absl::Seconds(60));
  }
  std::optional<LockVerdict> locked;
  if (lock_check != nullptr) locked = lock_check->Finish();
  if (!config.json_only) PrintSummary(config, stats);
  if (locked.has_value()) {
    if (!config.json_only) {
      std::printf(
          "locks: %llu acquired, %llu fenced writes, %llu refused after a lost lease, "
          "%llu sessions lost, %llu violations\n",
          static_cast<unsigned long long>(locked->acquisitions),
          static_cast<unsigned long long>(locked->fenced_writes),
          static_cast<unsigned long long>(locked->fenced_refused),
          static_cast<unsigned long long>(locked->sessions_lost),
          static_cast<unsigned long long>(locked->violations));
    }
    for (const std::string& example : locked->examples) {
      std::fprintf(stderr, "locks: violation: %s\n", example.c_str());
    }
  }
  if (check.has_value()) PrintVersionCheck(*check, config.json_only);
  if (watched.has_value()) {
    if (!config.json_only) {
      std::printf("watch: %llu events, %llu mismatches, %llu restarts\n",
                  static_cast<unsigned long long>(watched->events),
                  static_cast<unsigned long long>(watched->mismatches),
                  static_cast<unsigned long long>(watched->restarts));
    }
    for (const std::string& example : watched->examples) {
      std::fprintf(stderr, "watch: mismatch: %s\n", example.c_str());
    }
  }
  std::string json = Json(config, stats, fill.has_value() ? &*fill : nullptr,
                          check.has_value() ? &*check : nullptr);
  if (watched.has_value()) {
    json.pop_back();  // the closing brace
    absl::StrAppendFormat(&json, R"(,"watch_events":%d,"watch_mismatches":%d,"watch_restarts":%d})",
                          watched->events, watched->mismatches, watched->restarts);
  }
  if (locked.has_value()) {
    json.pop_back();
    absl::StrAppendFormat(&json,
                          R"(,"lock_acquisitions":%d,"lock_fenced_writes":%d,"lock_refused":%d,)"
                          R"("lock_sessions_lost":%d,"lock_violations":%d})",
                          locked->acquisitions, locked->fenced_writes, locked->fenced_refused,
                          locked->sessions_lost, locked->violations);
  }
  std::printf("%s\n", json.c_str());
  std::fflush(stdout);
  const bool fill_failed = fill.has_value() && fill->ops == 0 && fill->errors > 0;
  const bool run_failed = stats.ops == 0 && stats.errors > 0;
  if (fill_failed || run_failed) return kExitAllFailed;
  if (check.has_value() && (check->mismatches > 0 || check->keys_unchecked > 0)) {
    return kExitVerifyFailed;
  }
  if (watched.has_value() && watched->mismatches > 0) return kExitVerifyFailed;
  if (locked.has_value() && locked->violations > 0) return kExitVerifyFailed;
  return kExitOk;
}

}  // namespace
}  // namespace tessera::bench

int main(int argc, char** argv) { return tessera::bench::Main(argc, argv); }
