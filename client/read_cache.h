// Opt-in client-side read cache (ClientOptions::read_cache_bytes).
//
// Where it sits: a Get with Consistency::kStale first looks here and is a hit
// if the key's cached copy is younger than the read's staleness budget.
// Successful Gets fill it; this client's own writes update it (a Put stores
// the new value and version, a Delete a "not found"), so the client always
// reads its own writes. A read does not fill the cache when a write of the
// same client to any key started or finished while the read was in flight
// (it might carry a value older than that write). Bounded by bytes (key +
// value + a fixed per-entry overhead), least recently used entries go first.
//
// Thread-safe.
#ifndef TESSERA_CLIENT_READ_CACHE_H_
#define TESSERA_CLIENT_READ_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tessera::client {

struct CachedValue {
  bool found = false;
  std::string value;
  uint64_t version = 0;
  absl::Time fetched_at;  // when the read that produced it was sent (writes: acknowledged)
};

struct ReadCacheStats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  size_t bytes = 0;
  size_t entries = 0;
};

class ReadCache {
 public:
  static constexpr size_t kEntryOverheadBytes = 64;

  // capacity_bytes == 0 disables the cache (every call is a no-op).
  explicit ReadCache(size_t capacity_bytes) : capacity_bytes_(capacity_bytes) {}

  bool enabled() const { return capacity_bytes_ > 0; }

  // The cached copy of `key` if it was fetched at or after now - max_age;
  // counts a hit or a miss.
  std::optional<CachedValue> Lookup(absl::string_view key, absl::Time now, absl::Duration max_age)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Call when a read starts; pass the token to Fill.
  uint64_t ReadToken() const ABSL_LOCKS_EXCLUDED(mu_);
  // Stores a read's answer unless a write started or ended since `token`.
  void Fill(const std::string& key, CachedValue value, uint64_t token) ABSL_LOCKS_EXCLUDED(mu_);

  // A write of `key` starts: drops the cached copy.
  void BeginWrite(const std::string& key) ABSL_LOCKS_EXCLUDED(mu_);
  // The write ended: with its result (the key's new state) when known, else
  // the key stays uncached. While another write of the key is in flight,
  // the key stays uncached too.
  void EndWrite(const std::string& key, std::optional<CachedValue> result) ABSL_LOCKS_EXCLUDED(mu_);

  ReadCacheStats stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Entry {
    std::string key;
    CachedValue value;
    size_t bytes = 0;
  };
  using Lru = std::list<Entry>;  // front = most recently used

  void Insert(const std::string& key, CachedValue value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Erase(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const size_t capacity_bytes_;
  mutable absl::Mutex mu_;
  Lru lru_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Lru::iterator> index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, int> writes_in_flight_ ABSL_GUARDED_BY(mu_);
  uint64_t write_events_ ABSL_GUARDED_BY(mu_) = 0;
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_READ_CACHE_H_
