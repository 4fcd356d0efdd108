// Internal to storage/: the per-shard cache and writer protocol of the
// RocksDB KvStore (a shard's applied index).
//
// A shard's value is loaded from disk on first use and then kept in memory.
// A writer waits until none of its shards is busy, plans from their published
// values under the lock, marks them busy, does its RocksDB write without the
// lock, then publishes the new values (or, if the write failed, only clears
// busy). Another writer of the same shards waits for busy to clear; readers
// never wait for a writer: they see the published values. Thread-safe.
#ifndef TESSERA_STORAGE_SHARD_CACHE_H_
#define TESSERA_STORAGE_SHARD_CACHE_H_

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "proto/ids.h"
#include "proto/status_macros.h"

namespace tessera::storage::internal {

// The distinct shards of `items` (anything with a `shard` member), in the
// order they first appear.
template <typename Item>
std::vector<ShardId> DistinctShards(absl::Span<const Item> items) {
  std::vector<ShardId> shards;
  for (const Item& item : items) {
    if (std::find(shards.begin(), shards.end(), item.shard) == shards.end()) {
      shards.push_back(item.shard);
    }
  }
  return shards;
}

template <typename T>
class ShardCache {
 public:
  using Values = absl::flat_hash_map<ShardId, T>;
  // Reads a shard's value from disk. Called without the lock: a writer cannot
  // make the result stale, since a shard is written only once it is loaded.
  using Loader = std::function<absl::StatusOr<T>(ShardId)>;

  explicit ShardCache(Loader load) : load_(std::move(load)) {}

  // Makes sure each of `shards` is loaded; the loader's error if not.
  absl::Status EnsureLoaded(absl::Span<const ShardId> shards) const ABSL_LOCKS_EXCLUDED(mu_) {
    for (ShardId shard : shards) {
      {
        absl::MutexLock lock(&mu_);
        if (values_.contains(shard)) continue;
      }
      TESSERA_ASSIGN_OR_RETURN(T value, load_(shard));
      absl::MutexLock lock(&mu_);
      values_.try_emplace(shard, Entry{std::move(value), false});
    }
    return absl::OkStatus();
  }

  // Returns read(published value of `shard`), called under the lock. The
  // shard must be loaded.
  template <typename F>
  auto Read(ShardId shard, F read) const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return read(static_cast<const T&>(values_.at(shard).value));
  }

  // Begins a write of `shards` (distinct): loads them, waits until none is
  // busy, and under the lock calls plan(&staged), `staged` holding their
  // published values. If plan returns OK, marks the shards busy and returns
  // `staged`, which the caller changes as it writes and hands to EndWrite().
  // Otherwise returns the error (or the loader's) and marks nothing.
  absl::StatusOr<Values> BeginWrite(const std::vector<ShardId>& shards,
                                    absl::FunctionRef<absl::Status(Values&)> plan)
      ABSL_LOCKS_EXCLUDED(mu_) {
    TESSERA_RETURN_IF_ERROR(EnsureLoaded(shards));
    BusyQuery query{&values_, &shards};
    absl::MutexLock lock(&mu_, absl::Condition(&NoneBusy, &query));
    Values staged;
    for (ShardId shard : shards) staged.emplace(shard, values_.at(shard).value);
    TESSERA_RETURN_IF_ERROR(plan(staged));
    for (ShardId shard : shards) values_.at(shard).busy = true;
    return staged;
  }

  // Ends a write begun with BeginWrite(): clears busy and, unless `written`
  // is null (the write failed), publishes its values.
  void EndWrite(const std::vector<ShardId>& shards, const Values* written)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (ShardId shard : shards) {
      Entry& entry = values_.at(shard);
      entry.busy = false;
      if (written != nullptr) entry.value = written->at(shard);
    }
  }

  // A write of one shard with no plan: runs `write` while the shard is busy
  // and, if it succeeds, publishes `value`.
  absl::Status WriteShard(ShardId shard, T value, absl::FunctionRef<absl::Status()> write)
      ABSL_LOCKS_EXCLUDED(mu_) {
    const std::vector<ShardId> shards = {shard};
    TESSERA_ASSIGN_OR_RETURN(Values staged,
                             BeginWrite(shards, [](Values&) { return absl::OkStatus(); }));
    absl::Status s = write();
    staged[shard] = std::move(value);
    EndWrite(shards, s.ok() ? &staged : nullptr);
    return s;
  }

 private:
  struct Entry {
    T value;
    bool busy = false;  // a writer of this shard is between BeginWrite and EndWrite
  };
  struct BusyQuery {
    const absl::flat_hash_map<ShardId, Entry>* values;
    const std::vector<ShardId>* shards;
  };
  static bool NoneBusy(BusyQuery* q) {
    for (ShardId s : *q->shards) {
      if (q->values->at(s).busy) return false;
    }
    return true;
  }

  const Loader load_;
  mutable absl::Mutex mu_;
  // Entries are never erased (a deleted shard is reset), so a loaded shard
  // stays loaded.
  mutable absl::flat_hash_map<ShardId, Entry> values_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::storage::internal

#endif  // TESSERA_STORAGE_SHARD_CACHE_H_
