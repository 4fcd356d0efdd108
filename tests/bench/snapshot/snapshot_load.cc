// tessera-snapshot-load: the client side of tests/bench/snapshot.sh.
//
//   tessera-snapshot-load fill --bytes=N [--value-bytes=1000000] [--tag=big]
//       [--first=0]
//       puts N bytes of random values under keys "{TAG}:<first + i>" (one
//       shard: the hash tag), 4 in flight, and prints that shard's id.
//   tessera-snapshot-load load --out=FILE [--seconds=60] [--clients=8]
//       [--value-bytes=256] [--tag=big] [--stop-file=PATH]
//       a closed-loop put load on keys of every shard but the tag's, until
//       --seconds pass or PATH exists; one line per request to FILE:
//       "<unix ms at completion> <latency us> <ok 0/1>".
//
// Common: --endpoints=h:p,h:p (default the local cluster), --shards=16 (the
// cluster's shard count, to tell the tag's shard). Every loop is bounded.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "proto/key_hash.h"

namespace {

using tessera::client::Client;
using tessera::client::ClientOptions;
using tessera::client::PutResult;

// Guards the counters of Fill/Load. Global: the last callback may still be
// unlocking it when Fill/Load return (the Client, destroyed later in main,
// waits for its callbacks).
absl::Mutex g_mu;

std::string Flag(int argc, char** argv, const std::string& name, const std::string& def) {
  const std::string prefix = "--" + name + "=";
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind(prefix, 0) == 0) return a.substr(prefix.size());
  }
  return def;
}

uint64_t IntFlag(int argc, char** argv, const std::string& name, uint64_t def) {
  uint64_t v = def;
  std::string s = Flag(argc, argv, name, "");
  if (!s.empty() && !absl::SimpleAtoi(s, &v)) {
    std::cerr << "bad --" << name << "\n";
    std::exit(2);
  }
  return v;
}

int Fill(Client& client, uint64_t bytes, uint64_t value_bytes, const std::string& tag,
         uint32_t shards, uint64_t first) {
  // Random bytes (one buffer for every key): incompressible, as real data
  // would be, so storage and transfer carry the full size.
  std::string value(value_bytes, '\0');
  std::mt19937_64 rng(value_bytes);
  for (char& c : value) c = static_cast<char>(rng());
  const uint64_t n = (bytes + value_bytes - 1) / value_bytes;
  std::cout << "shard " << tessera::ShardForKey(absl::StrCat("{", tag, "}:0"), shards) << "\n";
  absl::Mutex& mu = g_mu;
  uint64_t next = 0, done = 0, errors = 0, running = 4;
  const absl::Time start = absl::Now();
  // Each of 4 loops issues its next put from the previous one's callback
  // and ends (running--) when no key is left: Fill returns only after every
  // callback has.
  std::function<void()> issue = [&]() {
    uint64_t i;
    {
      absl::MutexLock lock(&mu);
      if (next >= n) {
        --running;
        return;
      }
      i = next++;
    }
    client.PutAsync(absl::StrCat("{", tag, "}:", 10000000 + first + i), value, {},
                    [&, i](absl::StatusOr<PutResult> r) {
                      {
                        absl::MutexLock lock(&mu);
                        ++done;
                        if (!r.ok()) {
                          ++errors;
                          if (errors < 5) std::cerr << "put " << i << ": " << r.status() << "\n";
                        }
                      }
                      issue();
                    });
  };
  for (int c = 0; c < 4; ++c) issue();
  absl::MutexLock lock(&mu);
  auto finished = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return running == 0; };
  mu.AwaitWithTimeout(absl::Condition(&finished), absl::Hours(1));
  const double s = absl::ToDoubleSeconds(absl::Now() - start);
  std::cout << "filled " << done << " values of " << value_bytes << " bytes in " << s << " s, "
            << errors << " errors\n";
  return errors == 0 && done == n ? 0 : 1;
}

int Load(Client& client, const std::string& out, uint64_t seconds, uint64_t clients,
         uint64_t value_bytes, const std::string& tag, uint32_t shards,
         const std::string& stop_file) {
  const uint32_t avoid = tessera::ShardForKey(absl::StrCat("{", tag, "}:0"), shards);
  std::vector<std::string> keys;
  for (int i = 0; keys.size() < 10000 && i < 1000000; ++i) {
    std::string k = absl::StrCat("load:", i);
    if (tessera::ShardForKey(k, shards) != avoid) keys.push_back(std::move(k));
  }
  const std::string value(value_bytes, 'l');
  std::ofstream file(out);
  absl::Mutex& mu = g_mu;
  uint64_t next = 0, running = 0;
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  std::atomic<bool> stop{false};
  absl::Time next_check = absl::Now();
  std::function<void()> issue = [&]() {
    std::string key;
    {
      absl::MutexLock lock(&mu);
      const absl::Time now = absl::Now();
      if (!stop_file.empty() && now >= next_check) {
        next_check = now + absl::Milliseconds(100);
        if (std::ifstream(stop_file).good()) stop = true;
      }
      if (now >= end || stop) {
        --running;
        return;
      }
      key = keys[next++ % keys.size()];
    }
    const absl::Time t0 = absl::Now();
    client.PutAsync(key, value, {}, [&, t0](absl::StatusOr<PutResult> r) {
      const absl::Time t1 = absl::Now();
      {
        absl::MutexLock lock(&mu);
        file << absl::ToUnixMillis(t1) << " " << absl::ToInt64Microseconds(t1 - t0) << " "
             << (r.ok() ? 1 : 0) << "\n";
      }
      issue();
    });
  };
  {
    absl::MutexLock lock(&mu);
    running = clients;
  }
  for (uint64_t c = 0; c < clients; ++c) issue();
  absl::MutexLock lock(&mu);
  auto finished = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return running == 0; };
  mu.AwaitWithTimeout(absl::Condition(&finished), absl::Seconds(seconds + 60));
  file.flush();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: tessera-snapshot-load fill|load [flags] (see the source)\n";
    return 2;
  }
  const std::string mode = argv[1];
  ClientOptions options;
  options.endpoints = absl::StrSplit(
      Flag(argc, argv, "endpoints", "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003"), ',');
  options.default_timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) {
    std::cerr << client.status() << "\n";
    return 1;
  }
  const auto shards = static_cast<uint32_t>(IntFlag(argc, argv, "shards", 16));
  const std::string tag = Flag(argc, argv, "tag", "big");
  if (mode == "fill") {
    return Fill(**client, IntFlag(argc, argv, "bytes", 1ull << 30),
                IntFlag(argc, argv, "value-bytes", 1000000), tag, shards,
                IntFlag(argc, argv, "first", 0));
  }
  if (mode == "load") {
    return Load(**client, Flag(argc, argv, "out", "load.txt"), IntFlag(argc, argv, "seconds", 60),
                IntFlag(argc, argv, "clients", 8), IntFlag(argc, argv, "value-bytes", 256), tag,
                shards, Flag(argc, argv, "stop-file", ""));
  }
  std::cerr << "unknown mode " << mode << "\n";
  return 2;
}
