// Engine: the node's one RocksDB instance, shared by every shard it hosts.
//
// It opens (creating if missing) a RocksDB at a directory with three column
// families: "default" (unused, RocksDB requires it), "raft" (empty: the raft
// log of older versions, migrated at open) and "data" (user data, meta
// records, applied indexes: see KvStore), and the raft log engine in
// <dir>/raftlog (log_engine.h: entries, hard states, snapshot metadata), and
// hands out that RaftLog and the RocksDB-backed KvStore. The two are separate
// engines with separate write-ahead files: one does NOT recover as a prefix
// of the other (README.md "Durability" has the rules that keep a crash
// between them safe: KvStore::Sync before RaftLog::Compact).
//
// Thread-safe. The Engine owns the DB, the RaftLog and the KvStore; references
// returned by raft_log()/kv_store() and every ShardSnapshot must not outlive
// it. Destroying it closes the DB and the log (flushing nothing: the WAL and
// the log segments have everything).
//
//   absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open("/var/lib/tessera/db", {});
//   if (!engine.ok()) return engine.status();
//   RaftLog& log = (*engine)->raft_log();
#ifndef TESSERA_STORAGE_ENGINE_H_
#define TESSERA_STORAGE_ENGINE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "storage/kv_store.h"
#include "storage/raft_log.h"

namespace tessera::storage {

// Tuning knobs; README.md explains each default.
struct EngineOptions {
  // Shared LRU block cache for both column families.
  uint64_t block_cache_bytes = 256ull << 20;
  // Memtable size of the raft column family (only read once, to migrate an
  // older data directory).
  uint64_t raft_write_buffer_bytes = 32ull << 20;
  // Raft log engine (log_engine.h): segment file size, and the memory for
  // recent entries of all shards (a leader re-reading its own appends).
  uint64_t raft_log_segment_bytes = 64ull << 20;
  uint64_t raft_log_cache_bytes = 4ull << 20;
  // Memtable size of the data column family.
  uint64_t data_write_buffer_bytes = 64ull << 20;
  // WAL size that forces flushing the column families pinning old WAL files.
  uint64_t max_total_wal_bytes = 512ull << 20;
  // Flush + compaction threads.
  int max_background_jobs = 2;
  // SST files RocksDB keeps open (its table cache); -1: all. tessera-server
  // sets it from the file limit so that connections cannot starve storage
  // of descriptors (server/transport/grpc_server.h, PlanFdBudget).
  int max_open_files = -1;
  // Writes that add data (RaftLog::Save, KvStore::Apply/InstallSnapshot) and
  // Open() fail with kResourceExhausted "no space left on <dir>: ..." while
  // fewer bytes than this are free on the directory's filesystem (0: no
  // check). See disk_space.h for why and how large.
  uint64_t min_free_disk_bytes = 0;
};

class Engine {
 public:
  // Opens or creates the DB in `dir` (created if missing).
  // Errors: kResourceExhausted (no space left on the disk, see
  // EngineOptions::min_free_disk_bytes), kInvalidArgument (e.g. not a DB directory), kDataLoss
  // (corrupted), kInternal/kUnavailable (I/O, or the DB is locked by another process).
  static absl::StatusOr<std::unique_ptr<Engine>> Open(const std::string& dir,
                                                      const EngineOptions& options);

  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  RaftLog& raft_log();
  KvStore& kv_store();

  // Estimated bytes of live data in SST files (raft + data column families).
  absl::StatusOr<uint64_t> LiveDataSizeBytes() const;
  // Bytes held by memtables (active and immutable) of all column families.
  absl::StatusOr<uint64_t> MemtableBytes() const;

  // Counters and gauges for metrics, read from RocksDB properties and
  // statistics (cheap: no I/O, a few atomic reads). Counters count since
  // Open(). Errors: kInternal when a property is unavailable.
  struct Stats {
    uint64_t live_data_bytes = 0;           // estimated live data in SST files
    uint64_t sst_files_bytes = 0;           // all SST files (live + obsolete not yet deleted)
    uint64_t memtable_bytes = 0;            // active + immutable memtables
    uint64_t pending_compaction_bytes = 0;  // estimated bytes compaction must rewrite
    uint64_t block_cache_hits = 0;
    uint64_t block_cache_misses = 0;
    uint64_t write_stall_micros = 0;  // time writers spent delayed or stopped
    uint64_t write_slowdowns = 0;     // write slowdown events (all column families)
    uint64_t write_stops = 0;         // write stop events (all column families)
    bool write_stopped = false;       // writes are stopped right now
    // WAL and raft log segment fsyncs (RocksDB ticker WAL_FILE_SYNCED plus
    // the log engine's fdatasyncs), the time spent in them, and the bytes
    // written to both.
    uint64_t wal_syncs = 0;
    uint64_t wal_sync_micros = 0;
    uint64_t wal_bytes = 0;
    uint64_t raft_log_segments = 0;         // segment files of the raft log
    uint64_t raft_log_cache_hits = 0;       // entries read from memory
    uint64_t raft_log_cache_misses = 0;     // entries read from disk
    uint64_t raft_log_torn_tail_bytes = 0;  // cut off a torn log tail at Open
  };
  absl::StatusOr<Stats> GetStats() const;
  // Cumulative (WAL + raft log fsyncs, microseconds spent in them) since Open(): cheap
  // enough to read around every synced write, so a caller can time the fsync
  // part of it (the difference of two readings).
  std::pair<uint64_t, uint64_t> WalSyncTotals() const;

  // Number of WAL and raft log fsyncs since Open(): proves group commit in
  // tests, and a useful metric.
  uint64_t SyncedWalWritesForTesting() const;
  // Writes a shard's raft state in the raft column family as versions before
  // the log engine did (keys.h), for the migration test; the next Open()
  // moves it to the log engine.
  absl::Status WriteLegacyRaftLogForTesting(ShardId shard, const raftpb::HardState& hs,
                                            const raftpb::SnapshotMetadata& snapshot,
                                            uint64_t truncated_index, uint64_t truncated_term,
                                            const std::vector<raftpb::Entry>& entries);
  // Flushes all memtables to SST files, so tests read through the SST path.
  absl::Status FlushForTesting();
  // Compacts every column family fully (deleted data and range tombstones
  // are dropped, memtables flushed first): what a node over its storage
  // quota runs to get under it again. Heavy: seconds per GiB; it runs
  // beside writes (RocksDB's background threads), blocking only the caller.
  absl::Status CompactAll();

 private:
  struct Impl;
  explicit Engine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_ENGINE_H_
