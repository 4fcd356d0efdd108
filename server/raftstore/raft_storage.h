// RaftStorage: raft's read-only view (raft::Storage) of one shard's durable
// state, over the node's storage::RaftLog (entries, hard state, snapshot
// metadata) and storage::KvStore (the applied data, for snapshots).
//
// Where it sits: the Node's raft loop creates one per hosted shard and hands
// it to the shard's raft::RawNode. The loop persists every Ready itself (one
// RaftLog::Save for all shards, group commit) and then tells the adapter what
// it wrote (Saved()), so that FirstIndex()/LastIndex() and the terms at both
// ends of the log are answered from memory; entries and other terms are read
// from the RaftLog.
//
// Snapshots are made on demand: Snapshot() exports the shard's KvStore at its
// applied index with the membership as of that index, which the loop reports
// through AppliedTo()/ConfChanged(). With a SnapshotExchange the export is
// only pinned there (O(1) on the loop) and Snapshot::data is its token, which
// the transport streams (snapshot_stream.h); without one, the records are
// encoded inline (EncodeSnapshotData; tests). Nothing is stored for a
// snapshot: a leader that compacted its log answers a lagging follower with a
// fresh export.
//
// Invariant kept for restarts: the ConfState in the RaftLog's snapshot
// metadata (what InitialState() returns) is the membership as of the log's
// truncated index (FirstIndex() - 1), so that re-applying the entries after it
// (raft re-delivers them from FirstIndex() on) rebuilds the current one.
// Compact() keeps it: when the membership changed since the recorded
// metadata, it records a new metadata point instead of a plain compaction.
//
// Not thread-safe: owned and used by the Node's raft loop thread only (raft
// calls it from the same thread).
#ifndef TESSERA_SERVER_RAFTSTORE_RAFT_STORAGE_H_
#define TESSERA_SERVER_RAFTSTORE_RAFT_STORAGE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "raft/storage.h"
#include "server/raftstore/transport.h"
#include "storage/kv_store.h"
#include "storage/raft_log.h"
#include "tessera/raft.pb.h"

namespace tessera::server {

class SnapshotExchange;

class RaftStorage : public raft::Storage {
 public:
  // Loads the shard's positions from `log`. No pointer is owned; all must
  // outlive the adapter; `exchange` may be null (inline snapshot data).
  // Errors: those of RaftLog::State / Term.
  static absl::StatusOr<std::unique_ptr<RaftStorage>> Open(ShardId shard, storage::RaftLog* log,
                                                           storage::KvStore* kv,
                                                           SnapshotExchange* exchange = nullptr);

  // raft::Storage. Error codes follow raft's contract: kOutOfRange for
  // compacted indexes (raft::IsCompacted), kUnavailable beyond LastIndex();
  // other storage errors pass through.
  absl::Status InitialState(raftpb::HardState* hs, raftpb::ConfState* cs) const override;
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(uint64_t index) const override;
  uint64_t FirstIndex() const override;
  uint64_t LastIndex() const override;
  // Exports the shard's KvStore: metadata {index = applied index, its term,
  // the ConfState as of it}, data = the export token of the view pinned in
  // the exchange (or EncodeSnapshotData without one). kUnavailable while
  // the loop's applied index (AppliedTo) differs from the KvStore's (after a
  // restart, until the replay caught up) or the applied entry's term is not
  // readable, or the exchange holds its maximum of exports; raft retries
  // later. Other errors: the KvStore's.
  absl::StatusOr<raftpb::Snapshot> Snapshot() const override;

  // --- Application side (the raft loop) ---

  // Updates the cached positions after `update` (of this shard) was saved
  // through RaftLog::Save. A snapshot in it also resets the applied index and
  // membership to the snapshot's.
  void Saved(const storage::LogUpdate& update);
  // The loop applied every entry up to `index` (to the KvStore, and each conf
  // change through ConfChanged()).
  void AppliedTo(uint64_t index) { applied_index_ = index; }
  // The conf change at `index` was applied and produced `cs`.
  void ConfChanged(uint64_t index, raftpb::ConfState cs);
  uint64_t applied_index() const { return applied_index_; }

  // Discards the entries <= index (which must be applied) keeping the
  // invariant above: a plain RaftLog::Compact when the membership at `index`
  // is the recorded one, else one synced RaftLog::Save recording metadata at
  // `index` and re-writing the entries after it. No-op if index < FirstIndex().
  // First makes the KvStore durable (KvStore::Sync): the log is a separate
  // engine, and a durable compaction point must never be ahead of the
  // durable applied index.
  // Errors: the KvStore's Sync and the RaftLog's (the loop stops).
  absl::Status Compact(uint64_t index);

 private:
  RaftStorage(ShardId shard, storage::RaftLog* log, storage::KvStore* kv,
              SnapshotExchange* exchange)
      : shard_(shard), log_(log), kv_(kv), exchange_(exchange) {}
  raftpb::ConfState ConfStateAt(uint64_t index) const;

  const ShardId shard_;
  storage::RaftLog* const log_;
  storage::KvStore* const kv_;
  SnapshotExchange* const exchange_;

  // Cached positions, equal to the RaftLog's after every Saved()/Compact().
  uint64_t first_index_ = 1;
  uint64_t last_index_ = 0;
  uint64_t truncated_term_ = 0;        // term of first_index_ - 1
  uint64_t last_term_ = 0;             // term of last_index_
  raftpb::SnapshotMetadata recorded_;  // the RaftLog's snapshot metadata

  uint64_t applied_index_ = 0;
  // Membership as of first_index_ - 1, then the conf changes applied after.
  raftpb::ConfState base_conf_;
  std::vector<std::pair<uint64_t, raftpb::ConfState>> conf_changes_;
};

// Snapshot::data format (version 1), the records of KvStore::ExportSnapshot:
//   byte 0x01 (format version), then per record:
//   byte kind (0x00 user data, 0x01 meta), varint key length, key,
//   varint value length, value.
// Varints are LEB128 (protobuf's). Used where no SnapshotExchange streams
// the records (snapshot_stream.h has the streamed format).
absl::StatusOr<std::string> EncodeSnapshotData(storage::ShardSnapshot& snapshot);

// Reads the records of EncodeSnapshotData's output, for
// KvStore::InstallSnapshot. `data` must outlive the reader. Next() returns
// kDataLoss for malformed data (a bad version, a truncated record).
class SnapshotDataReader : public storage::SnapshotReader {
 public:
  explicit SnapshotDataReader(absl::string_view data) : data_(data) {}
  absl::StatusOr<bool> Next(storage::SnapshotRecord* out) override;

 private:
  absl::string_view data_;
  bool header_read_ = false;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_RAFT_STORAGE_H_
