// Streamed snapshots: how a shard snapshot travels from the leader's KvStore
// to a follower's without being held in memory or built on the raft loop.
//
// Where it sits (server/README.md "Snapshots"):
//   sender:   raft asks RaftStorage::Snapshot() on the loop; it pins a
//             consistent view (KvStore::ExportSnapshot: a RocksDB snapshot
//             and iterator, O(1)) in the node's SnapshotExchange and puts
//             only a token in Snapshot::data (an "export token"). The
//             MSG_SNAP (metadata + token) goes to the transport, whose
//             per-peer snapshot thread takes the view (TakeExport) and
//             streams it with a SnapshotChunker, one bounded chunk of whole
//             records per write.
//   receiver: the transport feeds the chunks to a SnapshotAssembler, which
//             validates them and writes them to a KvStore staging
//             (KvStore::StageSnapshot: an SST file). Once the last chunk is
//             durable, the staging is parked in the exchange and the MSG_SNAP
//             is handed to the Node with a "staged token" as its data; the
//             loop commits the staging (one atomic, synced ingestion) BEFORE
//             raft steps the message, so raft never believes in a snapshot
//             whose data is not there.
//
// Chunk data (format 2, part of the wire format between nodes): whole
// records back to back, each: kind byte (0x00 user data, 0x01 meta), varint
// key length, key, varint value length, value (LEB128 varints), in
// ExportSnapshot() order. Format 1 (Snapshot::data inline, RaftStorage's
// EncodeSnapshotData) is byte 0x01 followed by the same records.
//
// Thread-safety: SnapshotExchange is thread-safe. SnapshotChunker and
// SnapshotAssembler are not (one transfer, one owner at a time).
#ifndef TESSERA_SERVER_RAFTSTORE_SNAPSHOT_STREAM_H_
#define TESSERA_SERVER_RAFTSTORE_SNAPSHOT_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "proto/ids.h"
#include "storage/kv_store.h"
#include "tessera/raft.pb.h"

namespace tessera::server {

// Appends `record` in the chunk encoding above.
void AppendSnapshotRecord(const storage::SnapshotRecord& record, std::string* out);
// Parses one record from the front of `*in` and removes it; false if the
// bytes are not a whole, well-formed record.
bool ParseSnapshotRecord(absl::string_view* in, storage::SnapshotRecord* out);

// Snapshot::data that names an export pinned in the sender's exchange, or a
// staging parked in the receiver's exchange (byte 0x02 / 0x03, then the id as
// 8 bytes big-endian). Anything else is inline data (format 1).
bool IsExportToken(absl::string_view data);
bool IsStagedToken(absl::string_view data);

struct SnapshotExchangeOptions {
  // Exports pinned at once (each holds a RocksDB snapshot, which keeps old
  // versions from being compacted away). Beyond it AddExport() answers
  // kUnavailable and raft tries again later.
  size_t max_exports = 8;
  // Received snapshots staged but not yet committed; beyond it the oldest is
  // dropped (its file removed).
  size_t max_staged = 4;
  // An export not taken, or a staging not committed, within this is dropped.
  absl::Duration ttl = absl::Minutes(5);
};

// The node's registry of snapshots in flight, shared by its raft loop (which
// adds exports and commits stagings) and its transport (which streams exports
// and stages what arrives). Thread-safe. Not owned by either; must outlive
// both. The KvStore must outlive it.
class SnapshotExchange {
 public:
  explicit SnapshotExchange(storage::KvStore* kv, SnapshotExchangeOptions options = {});
  ~SnapshotExchange();
  SnapshotExchange(const SnapshotExchange&) = delete;
  SnapshotExchange& operator=(const SnapshotExchange&) = delete;

  // --- sending node

  // Pins `view` (an export of `shard`) and returns the export token to put
  // in Snapshot::data. kUnavailable when max_exports are pinned.
  absl::StatusOr<std::string> AddExport(ShardId shard, std::unique_ptr<storage::ShardSnapshot> view)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Takes the view an export token names (the caller streams and then
  // destroys it). kNotFound if unknown or expired; kInvalidArgument if
  // `token` is not an export token.
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> TakeExport(absl::string_view token)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Releases the view of an export token that will not be sent (no-op for
  // anything else).
  void DropExport(absl::string_view token) ABSL_LOCKS_EXCLUDED(mu_);

  // --- receiving node

  // KvStore::StageSnapshot.
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> BeginStaging(ShardId shard,
                                                                         uint64_t applied_index);
  // Parks a finished staging; returns the staged token for Snapshot::data.
  std::string AddStaged(std::unique_ptr<storage::SnapshotStaging> staging) ABSL_LOCKS_EXCLUDED(mu_);
  // Takes the staging a staged token names. kNotFound if unknown, expired or
  // dropped; kInvalidArgument if `token` is not a staged token.
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> TakeStaged(absl::string_view token)
      ABSL_LOCKS_EXCLUDED(mu_);

  size_t exports() const ABSL_LOCKS_EXCLUDED(mu_);
  size_t staged() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  template <typename T>
  struct Parked {
    absl::Time since;
    T value;
  };
  void ExpireLocked(absl::Time now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  storage::KvStore* const kv_;
  const SnapshotExchangeOptions options_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Parked<std::unique_ptr<storage::ShardSnapshot>>> exports_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, Parked<std::unique_ptr<storage::SnapshotStaging>>> staged_
      ABSL_GUARDED_BY(mu_);
};

// The sender's side of one transfer: the records of a MSG_SNAP's snapshot,
// cut into chunks of whole records.
class SnapshotChunker {
 public:
  // Takes the snapshot's records out of `snapshot`: from `exchange` for an
  // export token (kNotFound if it expired), else from its inline format-1
  // data (moved out; kDataLoss if malformed, later from Next()). Leaves
  // `snapshot->data()` empty. `exchange` may be null (then only inline data).
  static absl::StatusOr<std::unique_ptr<SnapshotChunker>> Open(SnapshotExchange* exchange,
                                                               raftpb::Snapshot* snapshot);

  // Fills `*out` with the next chunk: whole records, at least one, ending
  // with the first that reaches `max_bytes` (a record larger than that is a
  // chunk of its own). Returns false (and leaves `*out` empty) at the end.
  // Errors: the export's (kInternal, kDataLoss).
  absl::StatusOr<bool> Next(uint64_t max_bytes, std::string* out);
  // Records returned so far.
  uint64_t records() const { return records_; }

 private:
  SnapshotChunker() = default;
  std::unique_ptr<storage::ShardSnapshot> view_;
  std::string inline_data_;
  std::unique_ptr<storage::SnapshotReader> reader_;
  uint64_t records_ = 0;
};

// The receiver's side of one transfer: validates each chunk and stages its
// records (nothing is held in memory beyond one chunk). Without an exchange
// (tests of the transport alone) the records are reassembled in memory as
// format-1 inline data instead.
class SnapshotAssembler {
 public:
  // `max_bytes` bounds the chunk bytes of the whole snapshot.
  SnapshotAssembler(SnapshotExchange* exchange, uint64_t max_bytes)
      : exchange_(exchange), max_bytes_(max_bytes) {}

  // The first chunk's message. Errors: kInvalidArgument (not a MSG_SNAP with
  // snapshot metadata), those of KvStore::StageSnapshot.
  absl::Status Begin(ShardId shard, raftpb::Message message);
  // One chunk's data. Errors (the transfer must end): kResourceExhausted
  // beyond max_bytes; kInvalidArgument for a malformed record or records out
  // of order; the staging's (kResourceExhausted, kInternal).
  absl::Status Add(absl::string_view data);
  // After the last chunk, which declares `records` in all: makes the staged
  // data durable and returns the MSG_SNAP for the Node, its data the staged
  // token (or the inline data). kInvalidArgument if the count differs.
  absl::StatusOr<raftpb::Message> Finish(uint64_t records);

  uint64_t bytes() const { return bytes_; }
  uint64_t records() const { return records_; }

 private:
  SnapshotExchange* const exchange_;
  const uint64_t max_bytes_;
  raftpb::Message message_;
  std::unique_ptr<storage::SnapshotStaging> staging_;
  std::string inline_data_;
  uint64_t bytes_ = 0;
  uint64_t records_ = 0;
  bool begun_ = false;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_SNAPSHOT_STREAM_H_
