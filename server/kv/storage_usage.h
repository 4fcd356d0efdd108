// StorageUsage: how many bytes this node's store holds, for the storage
// quota (kv.proto Limits::storage_quota_bytes), and the compaction that
// lets a node over its quota get under it by itself.
//
// A thread samples the engine every `interval`: its SST files plus
// memtables (the raft log and the WAL are not counted: they are trimmed by
// raft log compaction). While the bytes are above quota() it compacts the
// whole engine, at most once per `compact_every`, so that what deletes
// freed is given back (RocksDB keeps deleted data until compaction) and
// writes resume without anyone disarming anything. Before that it drops the
// watch history of the shards this node leads (a CompactHistory up to each
// one's applied index: the history holds deleted values too, and every
// replica drops the same revisions): a watcher resuming from before gets
// OUT_OF_RANGE, as after any compaction.
//
// Thread-safety: used() from any thread. `engine` must outlive it (Stop()
// or the destructor joins the thread).
#ifndef TESSERA_SERVER_KV_STORAGE_USAGE_H_
#define TESSERA_SERVER_KV_STORAGE_USAGE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/kv/backend.h"
#include "storage/engine.h"

namespace tessera::server {

struct StorageUsageOptions {
  absl::Duration interval = absl::Seconds(1);
  absl::Duration compact_every = absl::Seconds(20);
  std::function<void(const std::string&)> log;  // compactions; nullptr: none
};

class StorageUsage {
 public:
  // `quota`: the bytes allowed now (0: none), read every sample. `backend`
  // (optional) proposes the history compactions; it must outlive this.
  StorageUsage(StorageUsageOptions options, storage::Engine* engine,
               std::function<uint64_t()> quota, KvBackend* backend = nullptr);
  ~StorageUsage();
  StorageUsage(const StorageUsage&) = delete;
  StorageUsage& operator=(const StorageUsage&) = delete;
  void Stop();

  // The last sample (0 before the first).
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  void Run();
  uint64_t Sample();
  // Proposes a CompactHistory of everything applied on each shard it leads.
  void DropHistory();

  const StorageUsageOptions options_;
  storage::Engine* const engine_;
  const std::function<uint64_t()> quota_;
  KvBackend* const backend_;
  std::atomic<uint64_t> used_{0};
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_STORAGE_USAGE_H_
