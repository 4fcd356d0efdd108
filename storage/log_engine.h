// LogEngine: the node's RaftLog outside RocksDB — one append-only set of
// segment files shared by every shard of the node (README.md "Raft log
// engine" has the file format, recovery and purge rules).
//
// Where it sits: Engine::Open (engine.h) opens it at <data-dir>/raftlog and
// hands it out as the node's RaftLog; the shard drivers persist every Ready
// through Save() (one write() and at most one fdatasync for all shards: group
// commit) and raft reads entries and terms back through Entries()/Term().
//
// Memory: every shard's hard state, snapshot metadata, truncated point and
// one small location record per stored entry (segment, offset, length, term)
// stay in memory, so State() and Term() never touch the disk. The most
// recently written entries (up to LogEngineOptions::cache_bytes for the whole
// node) are also kept parsed, so a leader sending its own fresh appends never
// reads the disk; older entries are read with pread.
//
// Crash rule across engines: the log and the KvStore are two engines with two
// write-ahead files, so one does not recover as a prefix of the other.
// Compact() is not synced, but ANY later synced write (or a purge) may make it
// durable: the caller must make the KvStore durable up to `index` first
// (KvStore::Sync, done by server/raftstore RaftStorage::Compact).
//
// Thread-safe. Writers (Save, Compact, DeleteShard, Import) are serialised by
// one writer lock held across their file I/O (it is the file's append
// position); readers take only the in-memory state lock, never held across
// I/O, and read entry bytes with pread outside it.
#ifndef TESSERA_STORAGE_LOG_ENGINE_H_
#define TESSERA_STORAGE_LOG_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "storage/disk_space.h"
#include "storage/raft_log.h"
#include "tessera/raft.pb.h"

namespace tessera::storage {

struct LogEngineOptions {
  // A segment is preallocated (fallocate) to this size; a write that does not
  // fit starts the next segment (a single larger write gets one alone).
  uint64_t segment_bytes = 64ull << 20;
  // Parsed recent entries kept in memory, for the whole node (0: none).
  uint64_t cache_bytes = 4ull << 20;
  // Preallocate segments with fallocate (off: files grow as written, about
  // 1 MiB ahead of the writer either way: see kZeroAheadBytes).
  bool preallocate = true;
  // Consulted before writes that add data; null: no check. Not owned.
  const DiskSpaceGuard* space = nullptr;
};

class LogEngine : public RaftLog {
 public:
  // Opens (creating if missing) the log in directory `dir` and recovers it:
  // a torn record at the tail of the newest segment (kill -9, power loss) is
  // cut off and counted in Stats; any bad record elsewhere is kDataLoss
  // naming the file and offset. Errors: kDataLoss, kInternal (I/O).
  static absl::StatusOr<std::unique_ptr<LogEngine>> Open(const std::string& dir,
                                                         const LogEngineOptions& options);
  ~LogEngine() override;
  LogEngine(const LogEngine&) = delete;
  LogEngine& operator=(const LogEngine&) = delete;

  absl::StatusOr<LogState> State(ShardId shard) const override;
  absl::StatusOr<std::vector<ShardId>> Shards() const override;
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override;
  // Not synced; may purge segments (synced) no shard needs any more.
  absl::Status Compact(ShardId shard, uint64_t index) override;
  absl::Status DeleteShard(ShardId shard) override;

  // A shard's whole state, for migrating a log from another implementation.
  struct ShardImport {
    ShardId shard = 0;
    raftpb::HardState hard_state;
    raftpb::SnapshotMetadata snapshot;
    uint64_t truncated_index = 0;
    uint64_t truncated_term = 0;
    std::vector<raftpb::Entry> entries;  // truncated_index + 1, ... contiguous
  };
  // Replaces each shard's state by the imported one, in one synced write
  // (idempotent: importing again gives the same state). kInvalidArgument for
  // non-contiguous entries; I/O errors as Save.
  absl::Status Import(absl::Span<const ShardImport> shards);

  struct Stats {
    uint64_t syncs = 0;              // fdatasyncs of segment files
    uint64_t sync_micros = 0;        // time spent in them
    uint64_t bytes_written = 0;      // record bytes appended since Open
    uint64_t segments = 0;           // segment files now
    uint64_t purged_segments = 0;    // unlinked since Open
    uint64_t torn_tail_bytes = 0;    // cut off the newest segment at Open
    uint64_t torn_tail_records = 0;  // 1 if the tail was torn at Open
    uint64_t cache_hits = 0;         // entries served from memory
    uint64_t cache_misses = 0;       // entries read from disk
    uint64_t cached_bytes = 0;       // entries in memory now
  };
  Stats GetStats() const;
  // Segment numbers present, oldest first.
  std::vector<uint64_t> SegmentsForTesting() const;

 protected:
  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override;

 private:
  struct Impl;
  explicit LogEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_LOG_ENGINE_H_
