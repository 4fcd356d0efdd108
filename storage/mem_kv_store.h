// MemKvStore: an in-memory KvStore for tests and the simulators. Thread-safe
// (one mutex; no I/O). ExportSnapshot() copies the shard. With a MemWal
// (shared with the node's MemRaftLog) it keeps a durable image too, and
// MemWal::SimulateCrash() drops what a crash of the RocksDB engine would
// (mem_wal.h): the Applies since the last synced write.
#ifndef TESSERA_STORAGE_MEM_KV_STORE_H_
#define TESSERA_STORAGE_MEM_KV_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/kv_store.h"
#include "storage/mem_wal.h"

namespace tessera::storage {

class MemKvStore : public KvStore {
 public:
  MemKvStore() = default;
  // Records every write in `wal` (not owned; must outlive this store) so that
  // wal->SimulateCrash() can undo the unsynced ones.
  explicit MemKvStore(MemWal* wal);
  MemKvStore(const MemKvStore&) = delete;
  MemKvStore& operator=(const MemKvStore&) = delete;

  absl::Status Apply(absl::Span<const ShardWrite> writes) override ABSL_LOCKS_EXCLUDED(mu_);
  // With a MemWal: a synced no-op write (covering every earlier write).
  absl::Status Sync() override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> Get(ShardId shard, absl::string_view key) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::string> GetMeta(ShardId shard, absl::string_view key) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> AppliedIndex(ShardId shard) const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<ScanResult> Scan(ShardId shard, const ScanOptions& options) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> ExportSnapshot(ShardId shard) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status InstallSnapshot(ShardId shard, uint64_t applied_index,
                               SnapshotReader& reader) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteShard(ShardId shard) override ABSL_LOCKS_EXCLUDED(mu_);
  // The exact bytes of its keys and values.
  uint64_t ApproximateBytes(ShardId shard) const override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Shard {
    uint64_t applied_index = 0;
    std::map<std::string, std::string> data;
    std::map<std::string, std::string> meta;
  };

  using Shards = std::map<ShardId, Shard>;

  absl::StatusOr<std::string> Lookup(ShardId shard, absl::string_view key, bool meta) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Apply() on the live state or on the durable image.
  static absl::Status ApplyTo(Shards& shards, absl::Span<const ShardWrite> writes);

  MemWal* const wal_ = nullptr;
  mutable absl::Mutex mu_;
  Shards shards_ ABSL_GUARDED_BY(mu_);
  // With a MemWal: the state as of the last synced write plus the unsynced
  // writes the WAL has replayed since (see MemRaftLog::durable_).
  Shards durable_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_MEM_KV_STORE_H_
