// Engine over RocksDB: opening the DB with tuned options, the one
// rocksdb::Status -> absl::Status conversion, helpers the other rocks_*.cc
// share, and stats.
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/convenience.h"
#include "rocksdb/db.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/options.h"
#include "rocksdb/statistics.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "storage/disk_space.h"
#include "storage/engine.h"
#include "storage/keys.h"
#include "storage/log_engine.h"

namespace tessera::storage {

// Declared here and in the other rocks_*.cc files rather than in a header, so
// that no header mentions a RocksDB type (STYLE.md §1). A mismatch between the
// declarations is a link error.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context);
absl::Status DeleteShardRange(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, ShardId shard,
                              absl::string_view context);
absl::StatusOr<uint64_t> MigrateRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                             LogEngine* log);
std::unique_ptr<KvStore> NewRocksKvStore(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space, std::string staging_dir);

// The only rocksdb::Status -> absl::Status conversion.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context) {
  if (s.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(message);
  // ENOSPC (DiskSpaceGuard::Annotate names the directory).
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
  if (s.IsCorruption()) return absl::DataLossError(message);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(message);
  if (s.IsNotSupported()) return absl::UnimplementedError(message);
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut() || s.IsShutdownInProgress()) {
    return absl::UnavailableError(message);
  }
  if (s.IsAborted()) return absl::AbortedError(message);
  // IOError (disk full, EIO, lock held by another process), Incomplete, ...
  return absl::InternalError(message);
}

// Deletes every record of `shard` in `cf` with one range tombstone, synced
// (the KvStore's DeleteShard()).
absl::Status DeleteShardRange(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, ShardId shard,
                              absl::string_view context) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(db->DeleteRange(wo, cf, keys::ShardStart(shard), keys::ShardEnd(shard)),
                   context);
}

namespace {

constexpr char kRaftCf[] = "raft";
constexpr char kDataCf[] = "data";

// LZ4 if this RocksDB build has it (cheap enough for the write path), else
// Snappy, else none.
rocksdb::CompressionType FastCompression() {
  std::vector<rocksdb::CompressionType> supported = rocksdb::GetSupportedCompressions();
  for (rocksdb::CompressionType t : {rocksdb::kLZ4Compression, rocksdb::kSnappyCompression}) {
    for (rocksdb::CompressionType s : supported) {
      if (s == t) return t;
    }
  }
  return rocksdb::kNoCompression;
}

// ZSTD for the bottommost level (most of the data, rarely rewritten) if
// available, else the fast one.
rocksdb::CompressionType DenseCompression() {
  for (rocksdb::CompressionType s : rocksdb::GetSupportedCompressions()) {
    if (s == rocksdb::kZSTD) return s;
  }
  return FastCompression();
}

rocksdb::DBOptions MakeDbOptions(const EngineOptions& options) {
  rocksdb::DBOptions db;
  db.create_if_missing = true;
  db.create_missing_column_families = true;
  // 2-core machines: one flush + one compaction thread is enough and keeps
  // background work from starving the raft drivers.
  db.max_background_jobs = options.max_background_jobs;
  // After kill -9 or power loss the WAL may end in a torn record: recover
  // every complete record before it (a prefix of the writes) instead of
  // refusing to open. Synced writes are never in the torn tail.
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // The raft CF is written constantly but its entries die after compaction;
  // a rarely-flushed data CF would otherwise pin old WAL files forever. Past
  // this size RocksDB flushes the CFs holding the oldest WAL.
  db.max_total_wal_size = options.max_total_wal_bytes;
  // Smooth SST writeback (flush/compaction) in 1 MiB steps so that a big
  // fsync at file end does not stall the synced WAL writes behind it.
  db.bytes_per_sync = 1 << 20;
  // WAL syncs are explicit (synced Save()); no background WAL writeback.
  db.wal_bytes_per_sync = 0;
  // Tickers (WAL_FILE_SYNCED, bytes written, ...) and timers, which cost a
  // clock read per operation but give the WAL fsync time (Engine::GetStats,
  // the node's fsync latency metric); no detailed or mutex timers.
  db.statistics = rocksdb::CreateDBStatistics();
  db.statistics->set_stats_level(rocksdb::StatsLevel::kExceptDetailedTimers);
  // With a free-space reserve (disk_space.h) the reserve must stay free for
  // RocksDB's own writes (flushes, compactions): fallocate would let a new
  // WAL or SST file grab it up front (1.1 x the write buffer, 70 MiB) and
  // make free space jump. Without it, files take space as they are written.
  db.allow_fallocate = options.min_free_disk_bytes == 0;
  // Bound the info LOG files.
  db.keep_log_file_num = 5;
  db.max_open_files = options.max_open_files;
  db.max_log_file_size = 16 << 20;
  return db;
}

// What both column families share: up to three memtables of
// `write_buffer_bytes`, fast compression above the last level, and a
// block-based table in the shared `cache` with `block_size` blocks.
rocksdb::ColumnFamilyOptions BaseCfOptions(uint64_t write_buffer_bytes) {
  rocksdb::ColumnFamilyOptions cf;
  cf.write_buffer_size = write_buffer_bytes;
  cf.max_write_buffer_number = 3;
  // Keeps space amplification near 1.1x whatever the data size.
  cf.level_compaction_dynamic_level_bytes = true;
  cf.compression = FastCompression();
  return cf;
}

rocksdb::BlockBasedTableOptions BaseTableOptions(const std::shared_ptr<rocksdb::Cache>& cache,
                                                 size_t block_size) {
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = cache;
  // Index and filter blocks compete for the same cache budget (bounded
  // memory); L0's are pinned since every read consults them.
  table.cache_index_and_filter_blocks = true;
  table.pin_l0_filter_and_index_blocks_in_cache = true;
  table.block_size = block_size;
  table.format_version = 5;
  return table;
}

rocksdb::ColumnFamilyOptions MakeRaftCfOptions(const EngineOptions& options,
                                               const std::shared_ptr<rocksdb::Cache>& cache) {
  // Entries are appended, read back soon (by followers' Entries()) and
  // deleted by Compact(): most never leave the memtable.
  rocksdb::ColumnFamilyOptions cf = BaseCfOptions(options.raft_write_buffer_bytes);
  cf.bottommost_compression = FastCompression();
  // No bloom filter: raft reads are iterations or Gets of entries known to
  // exist, which a filter cannot speed up. Entries are read sequentially:
  // bigger blocks, fewer index entries.
  rocksdb::BlockBasedTableOptions table = BaseTableOptions(cache, 16 << 10);
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

rocksdb::ColumnFamilyOptions MakeDataCfOptions(const EngineOptions& options,
                                               const std::shared_ptr<rocksdb::Cache>& cache) {
  rocksdb::ColumnFamilyOptions cf = BaseCfOptions(options.data_write_buffer_bytes);
  cf.bottommost_compression = DenseCompression();
  // A small whole-key bloom filter in the memtable: point Gets of absent or
  // flushed keys skip the memtable search.
  cf.memtable_prefix_bloom_size_ratio = 0.02;
  cf.memtable_whole_key_filtering = true;
  // 4 KiB blocks (the default) suit point reads of small values.
  rocksdb::BlockBasedTableOptions table = BaseTableOptions(cache, 4 << 10);
  // Whole-key bloom filter, 10 bits/key (~1% false positives): a Get of a
  // missing key reads no data block. No prefix extractor, so iterators over
  // any range (Scan, snapshot export) stay in total order.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.whole_key_filtering = true;
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

}  // namespace

struct Engine::Impl {
  std::unique_ptr<DiskSpaceGuard> space;  // outlives raft_log and kv_store
  rocksdb::DB* db = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;  // default, raft, data
  std::shared_ptr<rocksdb::Statistics> statistics;
  std::unique_ptr<LogEngine> raft_log;
  std::unique_ptr<KvStore> kv_store;

  ~Impl() {
    raft_log.reset();
    kv_store.reset();
    if (db == nullptr) return;
    for (rocksdb::ColumnFamilyHandle* h : handles) {
      // Only fails for a null handle.
      db->DestroyColumnFamilyHandle(h).PermitUncheckedError();
    }
    // Close() only reports errors of background work already logged; the WAL
    // holds every acknowledged write, so there is nothing to do about it here.
    db->Close().PermitUncheckedError();
    delete db;
  }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() = default;

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(const std::string& dir,
                                                     const EngineOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("Engine::Open: cannot create ", dir, ": ", ec.message()));
  }
  std::shared_ptr<rocksdb::Cache> cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  rocksdb::DBOptions db_options = MakeDbOptions(options);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kRaftCf, MakeRaftCfOptions(options, cache)},
      {kDataCf, MakeDataCfOptions(options, cache)},
  };
  auto impl = std::make_unique<Impl>();
  impl->space = std::make_unique<DiskSpaceGuard>(dir, options.min_free_disk_bytes);
  // Opening writes too (WAL recovery flushes, a new WAL): refuse on a full
  // disk with a clear message rather than let RocksDB abort.
  TESSERA_RETURN_IF_ERROR(impl->space->Check());
  impl->statistics = db_options.statistics;
  rocksdb::Status s = rocksdb::DB::Open(db_options, dir, cfs, &impl->handles, &impl->db);
  if (!s.ok()) return impl->space->Annotate(FromRocks(s, absl::StrCat("Engine::Open(", dir, ")")));
  // The raft log lives outside RocksDB (log_engine.h); a directory written
  // by an older version has it in the raft column family: move it over once.
  LogEngineOptions log_options;
  log_options.segment_bytes = options.raft_log_segment_bytes;
  log_options.cache_bytes = options.raft_log_cache_bytes;
  // As for RocksDB's files (MakeDbOptions): no preallocation eating the
  // free-space reserve.
  log_options.preallocate = options.min_free_disk_bytes == 0;
  log_options.space = impl->space.get();
  TESSERA_ASSIGN_OR_RETURN(impl->raft_log,
                           LogEngine::Open(absl::StrCat(dir, "/raftlog"), log_options));
  TESSERA_RETURN_IF_ERROR(
      MigrateRocksRaftLog(impl->db, impl->handles[1], impl->raft_log.get()).status());
  // Snapshots being received are staged here (KvStore::StageSnapshot) and
  // ingested from here (a hard link: same filesystem). What a crash left
  // behind was never committed: remove it.
  const std::string staging = absl::StrCat(dir, "/snapshot-staging");
  std::filesystem::remove_all(staging, ec);
  if (ec || !std::filesystem::create_directories(staging, ec) || ec) {
    return absl::InternalError(
        absl::StrCat("Engine::Open: cannot prepare ", staging, ": ", ec.message()));
  }
  impl->kv_store = NewRocksKvStore(impl->db, impl->handles[2], impl->space.get(), staging);
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

RaftLog& Engine::raft_log() { return *impl_->raft_log; }
KvStore& Engine::kv_store() { return *impl_->kv_store; }

namespace {

absl::StatusOr<uint64_t> SumProperty(rocksdb::DB* db,
                                     const std::vector<rocksdb::ColumnFamilyHandle*>& handles,
                                     const std::string& property) {
  uint64_t total = 0;
  for (rocksdb::ColumnFamilyHandle* h : handles) {
    uint64_t value = 0;
    if (!db->GetIntProperty(h, property, &value)) {
      return absl::InternalError(absl::StrCat("property ", property, " unavailable"));
    }
    total += value;
  }
  return total;
}

}  // namespace

absl::StatusOr<uint64_t> Engine::LiveDataSizeBytes() const {
  return SumProperty(impl_->db, impl_->handles, rocksdb::DB::Properties::kEstimateLiveDataSize);
}

absl::StatusOr<uint64_t> Engine::MemtableBytes() const {
  return SumProperty(impl_->db, impl_->handles, rocksdb::DB::Properties::kCurSizeAllMemTables);
}

absl::StatusOr<Engine::Stats> Engine::GetStats() const {
  rocksdb::DB* db = impl_->db;
  const auto& handles = impl_->handles;
  Stats stats;
  TESSERA_ASSIGN_OR_RETURN(
      stats.live_data_bytes,
      SumProperty(db, handles, rocksdb::DB::Properties::kEstimateLiveDataSize));
  TESSERA_ASSIGN_OR_RETURN(stats.sst_files_bytes,
                           SumProperty(db, handles, rocksdb::DB::Properties::kTotalSstFilesSize));
  TESSERA_ASSIGN_OR_RETURN(stats.memtable_bytes,
                           SumProperty(db, handles, rocksdb::DB::Properties::kCurSizeAllMemTables));
  TESSERA_ASSIGN_OR_RETURN(
      stats.pending_compaction_bytes,
      SumProperty(db, handles, rocksdb::DB::Properties::kEstimatePendingCompactionBytes));
  uint64_t stopped = 0;
  if (db->GetIntProperty(rocksdb::DB::Properties::kIsWriteStopped, &stopped)) {
    stats.write_stopped = stopped != 0;
  }
  for (rocksdb::ColumnFamilyHandle* h : handles) {
    std::map<std::string, std::string> cf_stats;
    if (!db->GetMapProperty(h, rocksdb::DB::Properties::kCFStats, &cf_stats)) continue;
    auto count = [&cf_stats](const char* key) -> uint64_t {
      auto it = cf_stats.find(key);
      if (it == cf_stats.end()) return 0;
      return static_cast<uint64_t>(std::strtod(it->second.c_str(), nullptr));
    };
    stats.write_slowdowns += count("io_stalls.total_slowdown");
    stats.write_stops += count("io_stalls.total_stop");
  }
  rocksdb::Statistics& st = *impl_->statistics;
  stats.block_cache_hits = st.getTickerCount(rocksdb::BLOCK_CACHE_HIT);
  stats.block_cache_misses = st.getTickerCount(rocksdb::BLOCK_CACHE_MISS);
  stats.write_stall_micros = st.getTickerCount(rocksdb::STALL_MICROS);
  stats.wal_bytes = st.getTickerCount(rocksdb::WAL_FILE_BYTES);
  std::tie(stats.wal_syncs, stats.wal_sync_micros) = WalSyncTotals();
  const LogEngine::Stats log = impl_->raft_log->GetStats();
  stats.wal_bytes += log.bytes_written;
  stats.raft_log_segments = log.segments;
  stats.raft_log_cache_hits = log.cache_hits;
  stats.raft_log_cache_misses = log.cache_misses;
  stats.raft_log_torn_tail_bytes = log.torn_tail_bytes;
  return stats;
}

std::pair<uint64_t, uint64_t> Engine::WalSyncTotals() const {
  rocksdb::HistogramData data;
  impl_->statistics->histogramData(rocksdb::WAL_FILE_SYNC_MICROS, &data);
  const LogEngine::Stats log = impl_->raft_log->GetStats();
  return {data.count + log.syncs, data.sum + log.sync_micros};
}

uint64_t Engine::SyncedWalWritesForTesting() const {
  return impl_->statistics->getTickerCount(rocksdb::WAL_FILE_SYNCED) +
         impl_->raft_log->GetStats().syncs;
}

absl::Status Engine::WriteLegacyRaftLogForTesting(ShardId shard, const raftpb::HardState& hs,
                                                  const raftpb::SnapshotMetadata& snapshot,
                                                  uint64_t truncated_index, uint64_t truncated_term,
                                                  const std::vector<raftpb::Entry>& entries) {
  rocksdb::ColumnFamilyHandle* cf = impl_->handles[1];
  rocksdb::WriteBatch batch;
  batch.Put(cf, keys::TagKey(shard, keys::kHardStateTag), hs.SerializeAsString())
      .PermitUncheckedError();
  batch.Put(cf, keys::TagKey(shard, keys::kSnapshotTag), snapshot.SerializeAsString())
      .PermitUncheckedError();
  std::string truncated;
  keys::AppendBigEndian64(truncated_index, &truncated);
  keys::AppendBigEndian64(truncated_term, &truncated);
  batch.Put(cf, keys::TagKey(shard, keys::kTruncatedTag), truncated).PermitUncheckedError();
  for (const raftpb::Entry& e : entries) {
    batch.Put(cf, keys::EntryKey(shard, e.index()), e.SerializeAsString()).PermitUncheckedError();
  }
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(impl_->db->Write(wo, &batch), "Engine::WriteLegacyRaftLogForTesting");
}

absl::Status Engine::FlushForTesting() {
  return FromRocks(impl_->db->Flush(rocksdb::FlushOptions(), impl_->handles),
                   "Engine::FlushForTesting");
}

absl::Status Engine::CompactAll() {
  for (rocksdb::ColumnFamilyHandle* h : impl_->handles) {
    TESSERA_RETURN_IF_ERROR(
        FromRocks(impl_->db->CompactRange(rocksdb::CompactRangeOptions(), h, nullptr, nullptr),
                  "Engine::CompactAll"));
  }
  return absl::OkStatus();
}

}  // namespace tessera::storage
