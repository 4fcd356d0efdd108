// A first Tessera program: put, get, compare-and-set, scan.
//
//   ./deploy/local-cluster.sh up
//   build/release/client/tessera_hello 127.0.0.1:7001
#include <cstdio>
#include <memory>
#include <string>

#include "client/client.h"

int main(int argc, char** argv) {
  tessera::client::ClientOptions options;
  if (argc > 1) options.endpoints = {argv[1]};
  absl::StatusOr<std::unique_ptr<tessera::client::Client>> client =
      tessera::client::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "hello: %s\n", client.status().ToString().c_str());
    return 1;
  }
  tessera::client::Client& kv = **client;

  absl::StatusOr<tessera::client::PutResult> put = kv.Put("hello:{demo}:greeting", "hello");
  if (!put.ok()) {
    std::fprintf(stderr, "hello: put: %s\n", put.status().ToString().c_str());
    return 1;
  }
  std::printf("put version %llu\n", static_cast<unsigned long long>(put->version));

  absl::StatusOr<tessera::client::KeyValue> got = kv.Get("hello:{demo}:greeting");
  if (got.ok())
    std::printf("get -> %s (version %llu)\n", got->value.c_str(),
                static_cast<unsigned long long>(got->version));

  // Replace the value only if nobody changed it in between.
  absl::StatusOr<uint64_t> cas = kv.CompareAndSet("hello:{demo}:greeting", "hello", "bonjour");
  std::printf("cas -> %s\n", cas.ok() ? "set" : cas.status().ToString().c_str());

  // A stale read may come from any replica at most 2 s behind the leader.
  tessera::client::CallOptions stale;
  stale.consistency = tessera::client::Consistency::kStale;
  stale.max_staleness = absl::Seconds(2);
  got = kv.Get("hello:{demo}:greeting", stale);
  if (got.ok()) std::printf("stale get -> %s\n", got->value.c_str());

  absl::StatusOr<tessera::client::ScanResult> scan = kv.Scan({.prefix = "hello:", .limit = 10});
  if (scan.ok()) {
    for (const auto& item : scan->kvs)
      std::printf("scan: %s = %s\n", item.key.c_str(), item.value.c_str());
  }
  return 0;
}
