// MemRaftLog: an in-memory RaftLog for tests and the raft simulator. Nothing
// survives the object: a "crash" is modelled by dropping it. Thread-safe (one
// mutex; no I/O).
#ifndef TESSERA_STORAGE_MEM_RAFT_LOG_H_
#define TESSERA_STORAGE_MEM_RAFT_LOG_H_

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "storage/log_meta.h"
#include "storage/raft_log.h"

namespace tessera::storage {

class MemRaftLog : public RaftLog {
 public:
  MemRaftLog() = default;
  MemRaftLog(const MemRaftLog&) = delete;
  MemRaftLog& operator=(const MemRaftLog&) = delete;

  absl::StatusOr<LogState> State(ShardId shard) const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Compact(ShardId shard, uint64_t index) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteShard(ShardId shard) override ABSL_LOCKS_EXCLUDED(mu_);

 protected:
  // Memory only: both durabilities are the same.
  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Shard {
    internal::ShardLogMeta meta;
    std::map<uint64_t, raftpb::Entry> entries;
  };

  mutable absl::Mutex mu_;
  std::map<ShardId, Shard> shards_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_MEM_RAFT_LOG_H_
