// KvStore: the applied state machine of every shard hosted by a node — user
// data, per-shard "meta" records and the applied index.
//
// Where it sits: a shard's driver applies committed raft entries through
// Apply() (STYLE.md §2, step 4c), serves reads through Get()/Scan(), and
// produces/installs raft snapshots through ExportSnapshot()/InstallSnapshot().
//
// Meta keys are a per-shard namespace beside user data for the server's
// state-machine bookkeeping (e.g. the (client_id, seq) table for exactly-once
// writes). They are part of the shard's snapshot but never visible to Get() or
// Scan() of user data.
//
// Keys are non-empty byte strings (any bytes, 0x00 and 0xFF included); values
// are any byte strings, empty included.
//
// Implementations: MemKvStore (mem_kv_store.h) and the RocksDB one handed out
// by Engine (engine.h). Both are thread-safe; writes touching the same shard
// are serialised internally.
#ifndef TESSERA_STORAGE_KV_STORE_H_
#define TESSERA_STORAGE_KV_STORE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "proto/ids.h"

namespace tessera::storage {

struct Mutation {
  // kDeleteMetaRange deletes the meta keys in [key, value): `value` is the
  // exclusive end (non-empty, not below `key`).
  enum class Kind { kPut, kDelete, kPutMeta, kDeleteMeta, kDeleteMetaRange };
  Kind kind = Kind::kPut;
  std::string key;    // non-empty
  std::string value;  // ignored by deletes
};

// One shard's apply step.
struct ShardWrite {
  ShardId shard = 0;
  uint64_t applied_index = 0;  // must be > the shard's current applied index
  std::vector<Mutation> mutations;
};

struct ScanOptions {
  std::string start{};     // inclusive; empty = the shard's first key
  std::string end{};       // exclusive; empty = to the shard's end
  size_t limit = 0;        // max items; 0 = no limit
  uint64_t max_bytes = 0;  // stop once keys+values exceed this; 0 = no budget
                           // (always at least one item when any is in range)
  bool meta = false;       // scan the shard's meta records instead of user data
};

struct ScanResult {
  std::vector<std::pair<std::string, std::string>> items;
  std::string resume_key;      // when `more`: the next key, pass it as the next start
  bool more = false;           // false: the range is exhausted (resume_key empty)
  uint64_t applied_index = 0;  // the shard's applied index in the view read
};

// One record of a shard snapshot.
struct SnapshotRecord {
  bool meta = false;  // true: a meta record, false: user data
  std::string key;
  std::string value;
};

// A point-in-time view of one shard (meta + data + applied index), made by
// ExportSnapshot(). Records come meta first, then data, each in key order.
//
// Lifetime: the RocksDB implementation pins a RocksDB snapshot, which keeps
// every version newer than it from being compacted away: iterate and release
// (destroy) it promptly. It must not outlive the KvStore / Engine that made
// it. Not thread-safe: one consumer at a time.
class ShardSnapshot {
 public:
  virtual ~ShardSnapshot() = default;
  virtual uint64_t applied_index() const = 0;
  // Fills `*out` with the next record and returns true, or returns false at
  // the end. Errors: kInternal/kDataLoss on I/O failure.
  virtual absl::StatusOr<bool> Next(SnapshotRecord* out) = 0;
};

// The source of a received snapshot's records for InstallSnapshot(): e.g.
// chunks arriving from the network, or a ShardSnapshot exported elsewhere.
class SnapshotReader {
 public:
  virtual ~SnapshotReader() = default;
  // Same contract as ShardSnapshot::Next(). An error aborts the install.
  virtual absl::StatusOr<bool> Next(SnapshotRecord* out) = 0;
};

// A SnapshotReader over records held in memory (tests, network chunks).
class VectorSnapshotReader : public SnapshotReader {
 public:
  explicit VectorSnapshotReader(std::vector<SnapshotRecord> records)
      : records_(std::move(records)) {}
  absl::StatusOr<bool> Next(SnapshotRecord* out) override;

 private:
  std::vector<SnapshotRecord> records_;
  size_t next_ = 0;
};

// Adapts a ShardSnapshot (it must outlive the adapter) to a SnapshotReader, so
// that an export can be installed directly (e.g. on another KvStore).
class ShardSnapshotReader : public SnapshotReader {
 public:
  explicit ShardSnapshotReader(ShardSnapshot* snapshot) : snapshot_(snapshot) {}
  absl::StatusOr<bool> Next(SnapshotRecord* out) override { return snapshot_->Next(out); }

 private:
  ShardSnapshot* snapshot_;
};

// A snapshot being received for one shard, staged outside the shard's live
// data until Commit() switches to it in one atomic step. Made by
// KvStore::StageSnapshot(); the receiving transport feeds it chunk by chunk,
// so a large snapshot is never held in memory (RocksDB: an SST file under
// <db>/snapshot-staging/ with a range tombstone over the shard, ingested by
// Commit(); Mem: buffered records).
//
// A crash before Commit() returns leaves the old shard state (Engine::Open
// removes leftover staging files); after it, the new state. Never a mix.
//
// Not thread-safe: one owner at a time (it may move between threads).
// Destroying it without a successful Commit() discards what was staged. Must
// not outlive the KvStore that made it.
class SnapshotStaging {
 public:
  virtual ~SnapshotStaging() = default;
  virtual ShardId shard() const = 0;
  virtual uint64_t applied_index() const = 0;
  // Keys plus values added so far.
  virtual uint64_t bytes() const = 0;
  // Adds the next record. Records must come in ExportSnapshot() order: meta
  // first, then data, each in strictly increasing key order. Errors (the
  // staging is then unusable; destroy it): kInvalidArgument for an empty key
  // or a record out of order, kFailedPrecondition after Finish(),
  // kResourceExhausted for a full disk, kInternal for I/O errors.
  virtual absl::Status Add(const SnapshotRecord& record) = 0;
  // Ends the records and makes the staged data durable (not yet visible).
  // Errors: as Add().
  virtual absl::Status Finish() = 0;
  // Atomically replaces all of the shard's data and meta with the staged
  // records and sets its applied index to applied_index(); synced. Cheap (no
  // copy of the data). Errors (nothing changes): kFailedPrecondition if not
  // finished, already committed, or the shard's applied index is already at
  // or above applied_index() (the store is newer: drop the staging);
  // kResourceExhausted, kInternal as Add().
  virtual absl::Status Commit() = 0;
};

class KvStore {
 public:
  virtual ~KvStore() = default;

  // Applies the writes of many shards atomically: the data together with each
  // shard's applied index, in one batch; several writes of one shard apply in
  // order. Not synced: the raft log is the durable record, and after a power
  // loss the server re-applies from applied_index + 1 — as long as the raft
  // log still holds those entries, which is why the log (a separate engine)
  // is compacted only after Sync(). A kill -9 of the process does not lose
  // it (it is in the write-ahead log before returning).
  // Errors (nothing is written): kInvalidArgument for an empty key;
  // kFailedPrecondition if an applied_index is not above the shard's current
  // applied index (a duplicate or out-of-order apply: a bug in the caller).
  virtual absl::Status Apply(absl::Span<const ShardWrite> writes) = 0;

  // Makes every write so far durable, power loss included (RocksDB: one WAL
  // fsync; nothing to do if everything already is). The raft log lives in
  // another engine: RaftLog::Compact(shard, i) may become durable at the
  // log's next sync, so the caller syncs the store first to keep a durable
  // compaction point from getting ahead of the durable applied index.
  // Errors: kInternal/kResourceExhausted (I/O): the node should stop.
  virtual absl::Status Sync() = 0;

  // The value of user key `key`. Errors: kNotFound; kInvalidArgument (empty key).
  virtual absl::StatusOr<std::string> Get(ShardId shard, absl::string_view key) const = 0;
  // The value of meta key `key`. Errors: kNotFound; kInvalidArgument (empty key).
  virtual absl::StatusOr<std::string> GetMeta(ShardId shard, absl::string_view key) const = 0;
  // The shard's applied index; 0 if it never applied anything.
  virtual absl::StatusOr<uint64_t> AppliedIndex(ShardId shard) const = 0;

  // User keys (meta keys if options.meta) in [options.start, options.end)
  // of one shard in key order, at most options.limit items (and about
  // options.max_bytes), from one consistent view, with the applied index of
  // that view. Never returns another shard's keys, nor meta keys with user
  // keys.
  // Errors: kInvalidArgument if end is non-empty and start > end.
  virtual absl::StatusOr<ScanResult> Scan(ShardId shard, const ScanOptions& options) const = 0;

  // Point-in-time view of the whole shard for a raft snapshot. Writes after
  // the call are not visible through it. See ShardSnapshot for its lifetime.
  virtual absl::StatusOr<std::unique_ptr<ShardSnapshot>> ExportSnapshot(ShardId shard) const = 0;

  // Atomically replaces all of the shard's data and meta with the records read
  // from `reader` (used only during the call) and sets its applied index to
  // `applied_index`. On error nothing changes. The records are buffered in
  // memory before the single atomic write.
  // Errors: kInvalidArgument for a record with an empty key; any error
  // returned by the reader.
  virtual absl::Status InstallSnapshot(ShardId shard, uint64_t applied_index,
                                       SnapshotReader& reader) = 0;

  // Starts receiving a snapshot of `shard` at `applied_index` (see
  // SnapshotStaging). The default buffers the records in memory and commits
  // through InstallSnapshot() (MemKvStore); the RocksDB store stages an SST
  // file. Errors: kResourceExhausted (disk), kInternal (I/O).
  virtual absl::StatusOr<std::unique_ptr<SnapshotStaging>> StageSnapshot(ShardId shard,
                                                                         uint64_t applied_index);

  // Removes all of the shard's data, meta and applied index (the replica was
  // removed from this node). Synced.
  virtual absl::Status DeleteShard(ShardId shard) = 0;

  // About how many bytes the shard's user keys and values take (RocksDB:
  // its estimate over files and memtables, compressed sizes; cheap). For
  // split decisions, not accounting.
  virtual uint64_t ApproximateBytes(ShardId shard) const = 0;
};

// The smallest string greater than every string starting with `prefix`, for
// a prefix scan: ScanOptions{.start = prefix, .end = PrefixEnd(prefix)}.
// Returns "" (no upper bound: scan to the shard's end) if `prefix` is empty or
// all 0xFF bytes.
std::string PrefixEnd(absl::string_view prefix);

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_KV_STORE_H_
