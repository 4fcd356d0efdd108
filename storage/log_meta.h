// Internal to storage/: the per-shard bookkeeping and validation rules shared
// by MemRaftLog and the RocksDB RaftLog, so both accept and reject exactly the
// same inputs. Not thread-safe: callers guard it.
#ifndef TESSERA_STORAGE_LOG_META_H_
#define TESSERA_STORAGE_LOG_META_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/raft_log.h"
#include "tessera/raft.pb.h"

namespace tessera::storage::internal {

// What a shard's log looks like, without its entries.
struct ShardLogMeta {
  raftpb::HardState hard_state;
  raftpb::SnapshotMetadata snapshot;
  uint64_t truncated_index = 0;  // entries <= this are gone
  uint64_t truncated_term = 0;
  uint64_t last_index = 0;  // == truncated_index when no entry is stored
  uint64_t last_term = 0;

  uint64_t first_index() const { return truncated_index + 1; }
  LogState ToState() const;
};

// An inclusive range of entry indexes to delete.
struct IndexRange {
  uint64_t first = 0;
  uint64_t last = 0;
};

// Validates `update` against `*meta` and, when valid, advances `*meta` to the
// state after it and fills `*deletes` with the stored entries to remove (to be
// done before writing update.entries). kInvalidArgument (meta untouched
// except on success) for the cases listed in RaftLog::Save().
absl::Status PlanLogUpdate(const LogUpdate& update, ShardLogMeta* meta,
                           std::vector<IndexRange>* deletes);

// Checks for Entries(lo, hi): kOutOfRange / kInvalidArgument as RaftLog says.
absl::Status CheckEntriesRange(const ShardLogMeta& meta, uint64_t lo, uint64_t hi);

// Checks for Term(index). Sets *answered and *term when the meta alone answers
// (the truncated or the last index); otherwise the caller reads the entry.
absl::Status CheckTermIndex(const ShardLogMeta& meta, uint64_t index, bool* answered,
                            uint64_t* term);

// Checks for Compact(index).
absl::Status CheckCompactIndex(const ShardLogMeta& meta, uint64_t index);

}  // namespace tessera::storage::internal

#endif  // TESSERA_STORAGE_LOG_META_H_
