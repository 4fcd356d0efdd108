// MemRaftLog: an in-memory RaftLog for tests and the simulators. Without a
// MemWal nothing survives the object, and both durabilities are the same.
// With one (shared with the node's MemKvStore) it keeps a durable image too,
// and MemWal::SimulateCrash() drops what a crash of the RocksDB engine would
// (mem_wal.h): kBuffered Saves and Compacts since the last synced write.
// Thread-safe (one mutex; no I/O).
#ifndef TESSERA_STORAGE_MEM_RAFT_LOG_H_
#define TESSERA_STORAGE_MEM_RAFT_LOG_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/log_meta.h"
#include "storage/mem_wal.h"
#include "storage/raft_log.h"

namespace tessera::storage {

class MemRaftLog : public RaftLog {
 public:
  MemRaftLog() = default;
  // Records every write in `wal` (not owned; must outlive this log) so that
  // wal->SimulateCrash() can undo the unsynced ones.
  explicit MemRaftLog(MemWal* wal);
  MemRaftLog(const MemRaftLog&) = delete;
  MemRaftLog& operator=(const MemRaftLog&) = delete;

  absl::StatusOr<LogState> State(ShardId shard) const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<ShardId>> Shards() const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Compact(ShardId shard, uint64_t index) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteShard(ShardId shard) override ABSL_LOCKS_EXCLUDED(mu_);

 protected:
  // Without a MemWal both durabilities are the same.
  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Shard {
    internal::ShardLogMeta meta;
    std::map<uint64_t, raftpb::Entry> entries;
  };
  using ShardMap = std::map<ShardId, Shard>;

  // The writes, on the live state or on the durable image.
  static absl::Status SaveTo(ShardMap& shards, absl::Span<const LogUpdate> updates);
  static absl::Status CompactIn(ShardMap& shards, ShardId shard, uint64_t index);

  MemWal* const wal_ = nullptr;
  mutable absl::Mutex mu_;
  ShardMap shards_ ABSL_GUARDED_BY(mu_);
  // With a MemWal: the state as of the last synced write plus the unsynced
  // writes the WAL has replayed since; touched only by the WAL's closures
  // (under its lock) and by SimulateCrash.
  ShardMap durable_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_MEM_RAFT_LOG_H_
