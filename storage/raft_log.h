// RaftLog: the durable raft state of every shard hosted by a node — log
// entries, hard state (term, vote, commit) and the metadata of the latest
// snapshot.
//
// Where it sits: a shard's driver persists each raft Ready through Save()
// BEFORE sending the Ready's messages (STYLE.md §2, step 4a), and the raft
// state machine reads entries and terms back through Entries()/Term(). One
// instance serves all shards of a node so that the Readys of many shards can
// be persisted with a single fsync (group commit).
//
// Implementations: MemRaftLog (mem_raft_log.h, tests and the raft simulator)
// and LogEngine (log_engine.h, segment files outside RocksDB), which Engine
// (engine.h) hands out. Both are thread-safe. Save()/Compact()/DeleteShard()
// calls touching the same shard are serialised internally (LogEngine
// serialises all writers: one append position).
//
// Index conventions (as etcd-io/raft storage.go): a shard's log holds the
// entries [first_index, last_index]. Everything up to the "truncated" index
// (first_index - 1) has been discarded by a snapshot or by Compact(); only the
// truncated entry's term is remembered. A shard never written to has
// first_index 1, last_index 0 and truncated index/term 0.
#ifndef TESSERA_STORAGE_RAFT_LOG_H_
#define TESSERA_STORAGE_RAFT_LOG_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "proto/ids.h"
#include "tessera/raft.pb.h"

namespace tessera::storage {

// What one shard's raft Ready asks to persist. Parts are applied in field
// order: snapshot, then entries, then hard_state.
struct LogUpdate {
  ShardId shard = 0;
  // When set: discards the shard's whole log; the log restarts after
  // snapshot.index, whose term becomes the truncated term. Its index must not
  // be below the shard's current truncated index.
  std::optional<raftpb::SnapshotMetadata> snapshot;
  // Contiguous (entries[i].index == entries[0].index + i), terms
  // non-decreasing. entries[0].index may be <= last_index + 1: the stored
  // suffix from entries[0].index on (the conflicting suffix) is replaced.
  std::vector<raftpb::Entry> entries;
  std::optional<raftpb::HardState> hard_state;
};

// A shard's persisted raft state as seen by State().
struct LogState {
  raftpb::HardState hard_state;
  raftpb::SnapshotMetadata snapshot;  // latest snapshot saved through Save()
  uint64_t first_index = 1;           // first entry still stored (= truncated index + 1)
  uint64_t last_index = 0;            // last entry, or the truncated index when no entry is stored
};

class RaftLog {
 public:
  virtual ~RaftLog() = default;

  // How durable a Save() is once it returns OK.
  enum class Durability {
    kSynced,  // fsynced: survives a process crash and power loss
    // Written to the WAL file but not fsynced: survives a process crash
    // (kill -9), not power loss, until the next synced write (which covers
    // everything written before it). For what raft need not sync, such as a
    // commit-index-only HardState (raft::Ready::must_sync false).
    kBuffered,
  };

  // Persists all `updates` (of one or many shards; several updates of one
  // shard are applied in order) atomically with ONE synced write: when it
  // returns OK everything survives a crash or power loss; on error nothing was
  // written. An empty span is a no-op.
  // Errors:
  //  kInvalidArgument: non-contiguous entries or decreasing terms, an append
  //    leaving a gap after last_index, entries at/below the truncated index,
  //    a snapshot older than the truncated index. Nothing is written: a bug
  //    in the caller.
  //  kInternal/kDataLoss/kUnavailable: I/O failure; the node should stop.
  absl::Status Save(absl::Span<const LogUpdate> updates) {
    return Save(updates, Durability::kSynced);
  }
  // Same, as durable as `durability` says.
  absl::Status Save(absl::Span<const LogUpdate> updates, Durability durability) {
    return DoSave(updates, durability);
  }

  // The shard's state (defaults for a shard never written to).
  virtual absl::StatusOr<LogState> State(ShardId shard) const = 0;

  // Every shard with raft state (written through Save and not deleted by
  // DeleteShard), by increasing id: the replicas this node holds.
  virtual absl::StatusOr<std::vector<ShardId>> Shards() const = 0;

  // Entries [lo, hi), stopping before the total ByteSizeLong() of the
  // returned entries exceeds max_bytes, but always at least one if lo < hi.
  // Errors: kOutOfRange if lo < first_index (compacted: send a snapshot
  // instead); kInvalidArgument if hi > last_index + 1 or lo > hi.
  virtual absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo,
                                                             uint64_t hi,
                                                             uint64_t max_bytes) const = 0;

  // Term of the entry at `index`. The truncated index's term is answerable
  // (0 for index 0 of a fresh log). Errors: kOutOfRange below the truncated
  // index (compacted); kInvalidArgument past last_index.
  virtual absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const = 0;

  // Log compaction after a snapshot: deletes the entries <= index and
  // remembers (index, term of index) as the truncated point.
  // Errors: kOutOfRange if index < first_index (already compacted);
  // kInvalidArgument if index > last_index.
  //
  // Not synced: losing the compaction in a crash leaves more entries than
  // needed (harmless: the raft state is a superset). But the next synced
  // Save() (or a segment purge) may make it durable at any time, and the
  // KvStore is a separate engine that does not recover as a prefix of this
  // log: the caller must first make the KvStore durable up to `index`
  // (KvStore::Sync), so that a surviving compaction never removes entries
  // whose Apply() a power loss undid. RaftStorage::Compact does.
  virtual absl::Status Compact(ShardId shard, uint64_t index) = 0;

  // Removes everything of the shard (entries, hard state, snapshot metadata):
  // the replica was removed from this node. Synced. Afterwards State() returns
  // the defaults.
  virtual absl::Status DeleteShard(ShardId shard) = 0;

 protected:
  // Save() of the implementation.
  virtual absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) = 0;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_RAFT_LOG_H_
