// KvStore over the "data" column family of the node's RocksDB (layout in
// keys.h and README.md).
//
// Each shard's applied index is loaded lazily and cached; writers follow the
// busy-shard protocol of shard_cache.h, as rocks_raft_log.cc does. Reads go
// straight to RocksDB.
#include <algorithm>
#include <atomic>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/sst_file_writer.h"
#include "rocksdb/write_batch.h"
#include "storage/disk_space.h"
#include "storage/keys.h"
#include "storage/kv_internal.h"
#include "storage/kv_store.h"
#include "storage/shard_cache.h"

namespace tessera::storage {

// Defined in rocks_engine.cc (see the note there).
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context);
absl::Status DeleteShardRange(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, ShardId shard,
                              absl::string_view context);
std::unique_ptr<KvStore> NewRocksKvStore(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space, std::string staging_dir);

namespace {

rocksdb::Slice ToSlice(absl::string_view s) { return rocksdb::Slice(s.data(), s.size()); }
absl::string_view ToView(const rocksdb::Slice& s) { return absl::string_view(s.data(), s.size()); }

std::string EncodeIndex(uint64_t index) {
  std::string out;
  keys::AppendBigEndian64(index, &out);
  return out;
}

absl::StatusOr<uint64_t> ReadAppliedIndex(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                          const rocksdb::ReadOptions& ro, ShardId shard) {
  std::string value;
  rocksdb::Status s = db->Get(ro, cf, keys::TagKey(shard, keys::kAppliedTag), &value);
  if (s.IsNotFound()) return 0;
  TESSERA_RETURN_IF_ERROR(FromRocks(s, "RocksKvStore: applied index"));
  if (value.size() != 8) {
    return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt applied index"));
  }
  return keys::DecodeBigEndian64(value);
}

// Holds a RocksDB snapshot and an iterator over the shard's meta and data
// records as of that snapshot; releases both when destroyed.
class RocksShardSnapshot : public ShardSnapshot {
 public:
  RocksShardSnapshot(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, ShardId shard)
      : db_(db),
        shard_(shard),
        snapshot_(db->GetSnapshot()),
        lower_(keys::TagKey(shard, keys::kMetaTag)),
        upper_(keys::TagKey(shard, keys::kDataTag + 1)),
        lower_slice_(lower_),
        upper_slice_(upper_) {
    read_options_.snapshot = snapshot_;
    read_options_.iterate_lower_bound = &lower_slice_;
    read_options_.iterate_upper_bound = &upper_slice_;
    // A snapshot scan touches every block once: keep it from evicting the
    // hot working set.
    read_options_.fill_cache = false;
    iterator_.reset(db->NewIterator(read_options_, cf));
    iterator_->SeekToFirst();
  }
  ~RocksShardSnapshot() override {
    iterator_.reset();
    db_->ReleaseSnapshot(snapshot_);
  }

  absl::Status Init(rocksdb::ColumnFamilyHandle* cf) {
    rocksdb::ReadOptions ro;
    ro.snapshot = snapshot_;
    TESSERA_ASSIGN_OR_RETURN(applied_index_, ReadAppliedIndex(db_, cf, ro, shard_));
    return absl::OkStatus();
  }

  uint64_t applied_index() const override { return applied_index_; }

  absl::StatusOr<bool> Next(SnapshotRecord* out) override {
    if (!iterator_->Valid()) {
      TESSERA_RETURN_IF_ERROR(FromRocks(iterator_->status(), "RocksShardSnapshot::Next"));
      return false;
    }
    absl::string_view key = ToView(iterator_->key());
    if (key.size() < 10) {
      return absl::DataLossError(absl::StrCat("shard ", shard_, ": malformed data key"));
    }
    out->meta = key[8] == keys::kMetaTag;
    out->key.assign(key.data() + 9, key.size() - 9);
    out->value.assign(iterator_->value().data(), iterator_->value().size());
    iterator_->Next();
    return true;
  }

 private:
  rocksdb::DB* const db_;
  const ShardId shard_;
  const rocksdb::Snapshot* const snapshot_;
  const std::string lower_, upper_;
  const rocksdb::Slice lower_slice_, upper_slice_;
  rocksdb::ReadOptions read_options_;
  std::unique_ptr<rocksdb::Iterator> iterator_;
  uint64_t applied_index_ = 0;
};

class RocksKvStore : public KvStore {
 public:
  RocksKvStore(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, const DiskSpaceGuard* space,
               std::string staging_dir)
      : db_(db),
        cf_(cf),
        space_(space),
        staging_dir_(std::move(staging_dir)),
        applied_([db, cf](ShardId shard) {
          return ReadAppliedIndex(db, cf, rocksdb::ReadOptions(), shard);
        }) {}

  absl::Status Apply(absl::Span<const ShardWrite> writes) override;
  absl::Status Sync() override;
  absl::StatusOr<std::string> Get(ShardId shard, absl::string_view key) const override {
    return Lookup(shard, key, keys::kDataTag);
  }
  absl::StatusOr<std::string> GetMeta(ShardId shard, absl::string_view key) const override {
    return Lookup(shard, key, keys::kMetaTag);
  }
  absl::StatusOr<uint64_t> AppliedIndex(ShardId shard) const override;
  absl::StatusOr<ScanResult> Scan(ShardId shard, const ScanOptions& options) const override;
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> ExportSnapshot(ShardId shard) const override;
  absl::Status InstallSnapshot(ShardId shard, uint64_t applied_index,
                               SnapshotReader& reader) override;
  absl::Status DeleteShard(ShardId shard) override;
  uint64_t ApproximateBytes(ShardId shard) const override {
    const std::string start = keys::TagKey(shard, keys::kDataTag);
    const std::string limit = keys::TagKey(shard, keys::kDataTag + 1);
    const rocksdb::Range range(start, limit);
    uint64_t size = 0;
    rocksdb::SizeApproximationOptions options;
    options.include_memtables = true;
    options.include_files = true;
    if (!db_->GetApproximateSizes(options, cf_, &range, 1, &size).ok()) return 0;
    return size;
  }
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> StageSnapshot(ShardId shard,
                                                                 uint64_t applied_index) override;

  // SnapshotStaging::Commit of a finished staging file: ingests it (its range
  // tombstone drops the shard's old state, its records and applied index
  // replace it, all at one sequence number: atomic).
  absl::Status IngestStaged(ShardId shard, uint64_t applied_index, const std::string& path);
  // Flushes the memtable, so that IngestStaged rarely has to (the flush would
  // then run on the caller of Commit, the raft loop).
  absl::Status FlushForIngest() {
    return FromRocks(db_->Flush(rocksdb::FlushOptions(), cf_), "RocksKvStore: flush for ingest");
  }
  rocksdb::DB* db() const { return db_; }
  rocksdb::ColumnFamilyHandle* cf() const { return cf_; }
  const DiskSpaceGuard* space() const { return space_; }

 private:
  absl::StatusOr<std::string> Lookup(ShardId shard, absl::string_view key, char tag) const;

  rocksdb::DB* const db_;
  rocksdb::ColumnFamilyHandle* const cf_;
  const DiskSpaceGuard* const space_;
  const std::string staging_dir_;
  std::atomic<uint64_t> next_staging_{1};
  internal::ShardCache<uint64_t> applied_;  // each shard's applied index
};

absl::Status RocksKvStore::Sync() {
  // Writes reach the WAL file before Write() returns (no manual WAL flush):
  // SyncWAL() fsyncs it.
  return space_->Annotate(FromRocks(db_->SyncWAL(), "RocksKvStore::Sync"));
}

absl::Status RocksKvStore::Apply(absl::Span<const ShardWrite> writes) {
  if (writes.empty()) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(space_->Check());
  for (const ShardWrite& w : writes) TESSERA_RETURN_IF_ERROR(internal::CheckMutations(w));
  const std::vector<ShardId> shards = internal::DistinctShards(writes);
  auto plan = [&](absl::flat_hash_map<ShardId, uint64_t>& applied) {
    for (const ShardWrite& w : writes) {
      TESSERA_RETURN_IF_ERROR(internal::CheckAppliedIndex(w, applied.at(w.shard)));
      applied.at(w.shard) = w.applied_index;
    }
    return absl::OkStatus();
  };
  TESSERA_ASSIGN_OR_RETURN(auto staged, applied_.BeginWrite(shards, plan));

  // WriteBatch operations fail only on size overflow (> 4 GiB), which Write()
  // then reports.
  rocksdb::WriteBatch batch;
  for (const ShardWrite& w : writes) {
    for (const Mutation& m : w.mutations) {
      switch (m.kind) {
        case Mutation::Kind::kPut:
          batch.Put(cf_, keys::TagKey(w.shard, keys::kDataTag, m.key), ToSlice(m.value))
              .PermitUncheckedError();
          break;
        case Mutation::Kind::kDelete:
          batch.Delete(cf_, keys::TagKey(w.shard, keys::kDataTag, m.key)).PermitUncheckedError();
          break;
        case Mutation::Kind::kPutMeta:
          batch.Put(cf_, keys::TagKey(w.shard, keys::kMetaTag, m.key), ToSlice(m.value))
              .PermitUncheckedError();
          break;
        case Mutation::Kind::kDeleteMeta:
          batch.Delete(cf_, keys::TagKey(w.shard, keys::kMetaTag, m.key)).PermitUncheckedError();
          break;
        case Mutation::Kind::kDeleteMetaRange:
          batch
              .DeleteRange(cf_, keys::TagKey(w.shard, keys::kMetaTag, m.key),
                           keys::TagKey(w.shard, keys::kMetaTag, m.value))
              .PermitUncheckedError();
          break;
      }
    }
    batch.Put(cf_, keys::TagKey(w.shard, keys::kAppliedTag), EncodeIndex(w.applied_index))
        .PermitUncheckedError();
  }
  // Not synced, but written to the WAL before Write() returns: survives kill -9.
  absl::Status s = space_->Annotate(
      FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "RocksKvStore::Apply"));
  applied_.EndWrite(shards, s.ok() ? &staged : nullptr);
  return s;
}

absl::StatusOr<std::string> RocksKvStore::Lookup(ShardId shard, absl::string_view key,
                                                 char tag) const {
  TESSERA_RETURN_IF_ERROR(internal::CheckKey(key));
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_, keys::TagKey(shard, tag, key), &value);
  if (s.IsNotFound()) return absl::NotFoundError("key not found");
  TESSERA_RETURN_IF_ERROR(FromRocks(s, "RocksKvStore::Get"));
  return value;
}

absl::StatusOr<uint64_t> RocksKvStore::AppliedIndex(ShardId shard) const {
  TESSERA_RETURN_IF_ERROR(applied_.EnsureLoaded({shard}));
  return applied_.Read(shard, [](uint64_t applied) { return applied; });
}

absl::StatusOr<ScanResult> RocksKvStore::Scan(ShardId shard, const ScanOptions& options) const {
  TESSERA_RETURN_IF_ERROR(internal::CheckScanOptions(options));
  const char tag = options.meta ? keys::kMetaTag : keys::kDataTag;
  const std::string lower = keys::TagKey(shard, tag, options.start);
  const std::string upper =
      options.end.empty() ? keys::TagKey(shard, tag + 1) : keys::TagKey(shard, tag, options.end);
  rocksdb::Slice lower_slice(lower), upper_slice(upper);
  // One snapshot for the applied index and the items.
  const rocksdb::Snapshot* snapshot = db_->GetSnapshot();
  absl::Cleanup release = [this, snapshot] { db_->ReleaseSnapshot(snapshot); };
  rocksdb::ReadOptions ro;
  ro.snapshot = snapshot;
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, ReadAppliedIndex(db_, cf_, ro, shard));
  ro.iterate_lower_bound = &lower_slice;
  ro.iterate_upper_bound = &upper_slice;
  internal::ScanCollector collector(options);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::string_view user_key = ToView(it->key()).substr(9);
    if (collector.Full()) {
      collector.SetResume(user_key);
      break;
    }
    collector.Add(user_key, ToView(it->value()));
  }
  TESSERA_RETURN_IF_ERROR(FromRocks(it->status(), "RocksKvStore::Scan"));
  it.reset();
  ScanResult result = collector.Finish();
  result.applied_index = applied;
  return result;
}

absl::StatusOr<std::unique_ptr<ShardSnapshot>> RocksKvStore::ExportSnapshot(ShardId shard) const {
  auto snapshot = std::make_unique<RocksShardSnapshot>(db_, cf_, shard);
  TESSERA_RETURN_IF_ERROR(snapshot->Init(cf_));
  return std::unique_ptr<ShardSnapshot>(std::move(snapshot));
}

absl::Status RocksKvStore::InstallSnapshot(ShardId shard, uint64_t applied_index,
                                           SnapshotReader& reader) {
  // One batch: drop the shard's whole range (data, meta, applied index), then
  // write the received records. Range tombstone first, puts after: the puts
  // have higher sequence numbers and survive it.
  TESSERA_RETURN_IF_ERROR(space_->Check());
  rocksdb::WriteBatch batch;
  batch.DeleteRange(cf_, keys::ShardStart(shard), keys::ShardEnd(shard)).PermitUncheckedError();
  SnapshotRecord record;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(bool more, reader.Next(&record));
    if (!more) break;
    TESSERA_RETURN_IF_ERROR(internal::CheckKey(record.key));
    batch
        .Put(cf_, keys::TagKey(shard, record.meta ? keys::kMetaTag : keys::kDataTag, record.key),
             ToSlice(record.value))
        .PermitUncheckedError();
  }
  batch.Put(cf_, keys::TagKey(shard, keys::kAppliedTag), EncodeIndex(applied_index))
      .PermitUncheckedError();

  return applied_.WriteShard(shard, applied_index, [&] {
    // Synced: the raft log may discard its entries once the snapshot is
    // installed, so the installed state must be durable by itself.
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return space_->Annotate(FromRocks(db_->Write(wo, &batch), "RocksKvStore::InstallSnapshot"));
  });
}

// Stages a received snapshot in one SST file: a range tombstone over the
// shard's whole range, its applied index, then its records (full internal
// keys, in order). The SstFileWriter keeps about one block plus the index in
// memory, whatever the snapshot's size.
class RocksSnapshotStaging : public SnapshotStaging {
 public:
  RocksSnapshotStaging(RocksKvStore* store, ShardId shard, uint64_t applied_index, std::string path)
      : store_(store),
        shard_(shard),
        applied_index_(applied_index),
        path_(std::move(path)),
        writer_(std::in_place, rocksdb::EnvOptions(), store->db()->GetOptions(store->cf()),
                store->cf()) {}
  ~RocksSnapshotStaging() override {
    writer_.reset();
    std::error_code ec;
    std::filesystem::remove(path_, ec);  // gone already once ingested
  }

  absl::Status Open() {
    TESSERA_RETURN_IF_ERROR(store_->space()->Check());
    TESSERA_RETURN_IF_ERROR(Rocks(writer_->Open(path_), "open"));
    TESSERA_RETURN_IF_ERROR(
        Rocks(writer_->DeleteRange(keys::ShardStart(shard_), keys::ShardEnd(shard_)), "tombstone"));
    return Rocks(writer_->Put(keys::TagKey(shard_, keys::kAppliedTag), EncodeIndex(applied_index_)),
                 "applied index");
  }

  ShardId shard() const override { return shard_; }
  uint64_t applied_index() const override { return applied_index_; }
  uint64_t bytes() const override { return bytes_; }

  absl::Status Add(const SnapshotRecord& record) override {
    TESSERA_RETURN_IF_ERROR(Usable());
    absl::Status s = order_.Check(record);
    if (!s.ok()) return Broken(s);
    // Check the disk now and then (statvfs), not per record.
    if (bytes_ / kSpaceCheckBytes !=
        (bytes_ + record.key.size() + record.value.size()) / kSpaceCheckBytes) {
      s = store_->space()->Check();
      if (!s.ok()) return Broken(s);
    }
    bytes_ += record.key.size() + record.value.size();
    return Rocks(writer_->Put(keys::TagKey(shard_, record.meta ? keys::kMetaTag : keys::kDataTag,
                                           record.key),
                              ToSlice(record.value)),
                 "put");
  }

  absl::Status Finish() override {
    TESSERA_RETURN_IF_ERROR(Usable());
    rocksdb::ExternalSstFileInfo info;
    TESSERA_RETURN_IF_ERROR(Rocks(writer_->Finish(&info), "finish"));  // synced
    finished_ = true;
    absl::Status s = store_->FlushForIngest();
    if (!s.ok()) return Broken(s);
    return absl::OkStatus();
  }

  absl::Status Commit() override {
    if (!finished_ || committed_ || broken_) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", shard_, ": snapshot staging not finished or already committed"));
    }
    TESSERA_RETURN_IF_ERROR(store_->IngestStaged(shard_, applied_index_, path_));
    committed_ = true;
    return absl::OkStatus();
  }

 private:
  static constexpr uint64_t kSpaceCheckBytes = 64ull << 20;

  absl::Status Usable() const {
    if (broken_) return absl::FailedPreconditionError("snapshot staging failed earlier");
    if (finished_) return absl::FailedPreconditionError("snapshot staging already finished");
    return absl::OkStatus();
  }
  absl::Status Broken(absl::Status s) {
    broken_ = true;
    return s;
  }
  absl::Status Rocks(const rocksdb::Status& s, absl::string_view what) {
    if (s.ok()) return absl::OkStatus();
    broken_ = true;
    return store_->space()->Annotate(FromRocks(
        s, absl::StrCat("shard ", shard_, ": snapshot staging ", what, " (", path_, ")")));
  }

  RocksKvStore* const store_;
  const ShardId shard_;
  const uint64_t applied_index_;
  const std::string path_;
  std::optional<rocksdb::SstFileWriter> writer_;
  internal::SnapshotOrder order_;
  uint64_t bytes_ = 0;
  bool finished_ = false;
  bool committed_ = false;
  bool broken_ = false;
};

absl::StatusOr<std::unique_ptr<SnapshotStaging>> RocksKvStore::StageSnapshot(
    ShardId shard, uint64_t applied_index) {
  std::string path = absl::StrCat(staging_dir_, "/shard-", shard, "-", applied_index, "-",
                                  next_staging_.fetch_add(1), ".sst");
  auto staging = std::make_unique<RocksSnapshotStaging>(this, shard, applied_index, path);
  TESSERA_RETURN_IF_ERROR(staging->Open());
  return std::unique_ptr<SnapshotStaging>(std::move(staging));
}

absl::Status RocksKvStore::IngestStaged(ShardId shard, uint64_t applied_index,
                                        const std::string& path) {
  TESSERA_RETURN_IF_ERROR(space_->Check());
  const std::vector<ShardId> shards = {shard};
  TESSERA_ASSIGN_OR_RETURN(
      internal::ShardCache<uint64_t>::Values staged,
      applied_.BeginWrite(shards, [&](internal::ShardCache<uint64_t>::Values& v) {
        const uint64_t current = v.at(shard);
        if (current >= applied_index) {
          return absl::FailedPreconditionError(
              absl::StrCat("shard ", shard, ": applied index ", current,
                           " is not below the snapshot's ", applied_index));
        }
        return absl::OkStatus();
      }));
  rocksdb::IngestExternalFileOptions options;
  options.move_files = true;  // a hard link: no copy of the data
  options.allow_global_seqno = true;
  options.allow_blocking_flush = true;  // rare: Finish() flushed
  options.write_global_seqno = false;
  // Ingestion is recorded in the MANIFEST, synced: durable on return.
  absl::Status s = space_->Annotate(
      FromRocks(db_->IngestExternalFile(cf_, {path}, options), "RocksKvStore: ingest snapshot"));
  staged[shard] = applied_index;
  applied_.EndWrite(shards, s.ok() ? &staged : nullptr);
  return s;
}

absl::Status RocksKvStore::DeleteShard(ShardId shard) {
  return applied_.WriteShard(shard, /*value=*/0, [&] {
    return DeleteShardRange(db_, cf_, shard, "RocksKvStore::DeleteShard");
  });
}

}  // namespace

std::unique_ptr<KvStore> NewRocksKvStore(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space, std::string staging_dir) {
  return std::make_unique<RocksKvStore>(db, cf, space, std::move(staging_dir));
}

}  // namespace tessera::storage
