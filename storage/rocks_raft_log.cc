// RaftLog over the "raft" column family of the node's RocksDB (layout in
// keys.h and README.md).
//
// Each shard's bookkeeping (internal::ShardLogMeta: hard state, snapshot,
// truncated and last index/term) is loaded lazily from disk on first use and
// then kept in memory; writers follow the busy-shard protocol of
// shard_cache.h. Readers never wait for a writer: they validate against the
// published meta and read RocksDB without the lock.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "storage/disk_space.h"
#include "storage/keys.h"
#include "storage/log_meta.h"
#include "storage/raft_log.h"
#include "storage/shard_cache.h"

namespace tessera::storage {

// Defined in rocks_engine.cc (see the note there).
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context);
absl::Status DeleteShardRange(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, ShardId shard,
                              absl::string_view context);
std::unique_ptr<RaftLog> NewRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space);

namespace {

using internal::ShardLogMeta;

// Ranges up to this many entries are deleted with point tombstones; longer
// ones with one range tombstone (cheap to write, but every read of the range
// pays for it until compaction drops it).
constexpr uint64_t kMaxPointDeletes = 64;

std::string EncodeTruncated(uint64_t index, uint64_t term) {
  std::string out;
  keys::AppendBigEndian64(index, &out);
  keys::AppendBigEndian64(term, &out);
  return out;
}

class RocksRaftLog : public RaftLog {
 public:
  RocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, const DiskSpaceGuard* space)
      : db_(db),
        cf_(cf),
        space_(space),
        metas_([this](ShardId shard) { return LoadMeta(shard); }) {}

  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override;
  absl::StatusOr<LogState> State(ShardId shard) const override;
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override;
  absl::Status Compact(ShardId shard, uint64_t index) override;
  absl::Status DeleteShard(ShardId shard) override;

 private:
  using Metas = internal::ShardCache<ShardLogMeta>::Values;

  // Reads a shard's meta from disk (metas_' loader).
  absl::StatusOr<ShardLogMeta> LoadMeta(ShardId shard) const;
  // The error for an entry that was expected but is not on disk.
  absl::Status MissingEntry(ShardId shard, uint64_t index) const;
  // Adds deletes of entries [first, last] to `batch`.
  void DeleteEntries(ShardId shard, uint64_t first, uint64_t last, rocksdb::WriteBatch* batch);

  rocksdb::DB* const db_;
  rocksdb::ColumnFamilyHandle* const cf_;
  const DiskSpaceGuard* const space_;
  internal::ShardCache<ShardLogMeta> metas_;
};

absl::StatusOr<ShardLogMeta> RocksRaftLog::LoadMeta(ShardId shard) const {
  ShardLogMeta meta;
  rocksdb::ReadOptions ro;
  std::string value;
  // Reads the shard's record with `tag` into `value`; false if there is none.
  auto read = [&](char tag) -> absl::StatusOr<bool> {
    rocksdb::Status s = db_->Get(ro, cf_, keys::TagKey(shard, tag), &value);
    if (s.IsNotFound()) return false;
    TESSERA_RETURN_IF_ERROR(FromRocks(s, "RocksRaftLog::LoadMeta"));
    return true;
  };
  TESSERA_ASSIGN_OR_RETURN(bool found, read(keys::kHardStateTag));
  if (found && !meta.hard_state.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt hard state"));
  }
  TESSERA_ASSIGN_OR_RETURN(found, read(keys::kSnapshotTag));
  if (found && !meta.snapshot.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt snapshot metadata"));
  }
  TESSERA_ASSIGN_OR_RETURN(found, read(keys::kTruncatedTag));
  if (found) {
    if (value.size() != 16) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt truncated state"));
    }
    meta.truncated_index = keys::DecodeBigEndian64(value);
    meta.truncated_term = keys::DecodeBigEndian64(absl::string_view(value).substr(8));
  }
  meta.last_index = meta.truncated_index;
  meta.last_term = meta.truncated_term;

  const std::string lower = keys::TagKey(shard, keys::kEntryTag);
  const std::string upper = keys::TagKey(shard, keys::kEntryTag + 1);
  rocksdb::Slice lower_slice(lower), upper_slice(upper);
  ro.iterate_lower_bound = &lower_slice;
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_));
  it->SeekToLast();
  if (it->Valid()) {
    ShardId key_shard = 0;
    uint64_t index = 0;
    raftpb::Entry entry;
    if (!keys::ParseEntryKey(absl::string_view(it->key().data(), it->key().size()), &key_shard,
                             &index) ||
        !entry.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt last entry"));
    }
    meta.last_index = index;
    meta.last_term = entry.term();
  }
  TESSERA_RETURN_IF_ERROR(FromRocks(it->status(), "RocksRaftLog::LoadMeta"));
  return meta;
}

absl::Status RocksRaftLog::MissingEntry(ShardId shard, uint64_t index) const {
  const uint64_t first_index =
      metas_.Read(shard, [](const ShardLogMeta& meta) { return meta.first_index(); });
  if (index < first_index) {
    return absl::OutOfRangeError(
        absl::StrCat("shard ", shard, ": entry ", index, " was compacted concurrently"));
  }
  return absl::DataLossError(absl::StrCat("shard ", shard, ": entry ", index, " missing"));
}

void RocksRaftLog::DeleteEntries(ShardId shard, uint64_t first, uint64_t last,
                                 rocksdb::WriteBatch* batch) {
  if (last < first) return;
  if (last - first < kMaxPointDeletes) {
    for (uint64_t i = first; i <= last; ++i) {
      // WriteBatch operations fail only on size overflow (> 4 GiB).
      batch->Delete(cf_, keys::EntryKey(shard, i)).PermitUncheckedError();
    }
    return;
  }
  const std::string end = last == UINT64_MAX ? keys::TagKey(shard, keys::kEntryTag + 1)
                                             : keys::EntryKey(shard, last + 1);
  batch->DeleteRange(cf_, keys::EntryKey(shard, first), end).PermitUncheckedError();
}

absl::Status RocksRaftLog::DoSave(absl::Span<const LogUpdate> updates, Durability durability) {
  if (updates.empty()) return absl::OkStatus();
  TESSERA_RETURN_IF_ERROR(space_->Check());
  const std::vector<ShardId> shards = internal::DistinctShards(updates);
  std::vector<std::vector<internal::IndexRange>> deletes(updates.size());
  auto plan = [&](Metas& metas) {
    for (size_t i = 0; i < updates.size(); ++i) {
      TESSERA_RETURN_IF_ERROR(
          internal::PlanLogUpdate(updates[i], &metas.at(updates[i].shard), &deletes[i]));
    }
    return absl::OkStatus();
  };
  TESSERA_ASSIGN_OR_RETURN(Metas staged, metas_.BeginWrite(shards, plan));

  // Serialising happens outside the lock. WriteBatch operations fail only on
  // size overflow (> 4 GiB), which Write() then reports.
  rocksdb::WriteBatch batch;
  std::string value;
  for (size_t i = 0; i < updates.size(); ++i) {
    const LogUpdate& u = updates[i];
    for (const internal::IndexRange& range : deletes[i]) {
      DeleteEntries(u.shard, range.first, range.last, &batch);
    }
    if (u.snapshot.has_value()) {
      u.snapshot->SerializeToString(&value);
      batch.Put(cf_, keys::TagKey(u.shard, keys::kSnapshotTag), value).PermitUncheckedError();
      batch
          .Put(cf_, keys::TagKey(u.shard, keys::kTruncatedTag),
               EncodeTruncated(u.snapshot->index(), u.snapshot->term()))
          .PermitUncheckedError();
    }
    for (const raftpb::Entry& e : u.entries) {
      e.SerializeToString(&value);
      batch.Put(cf_, keys::EntryKey(u.shard, e.index()), value).PermitUncheckedError();
    }
    if (u.hard_state.has_value()) {
      u.hard_state->SerializeToString(&value);
      batch.Put(cf_, keys::TagKey(u.shard, keys::kHardStateTag), value).PermitUncheckedError();
    }
  }
  rocksdb::WriteOptions wo;
  // The whole batch, all shards: one WAL fsync. Unsynced, the write still
  // reaches the WAL file (no manual WAL flush), so it survives kill -9.
  wo.sync = durability == Durability::kSynced;
  absl::Status status = space_->Annotate(FromRocks(db_->Write(wo, &batch), "RocksRaftLog::Save"));
  metas_.EndWrite(shards, status.ok() ? &staged : nullptr);
  return status;
}

absl::StatusOr<LogState> RocksRaftLog::State(ShardId shard) const {
  TESSERA_RETURN_IF_ERROR(metas_.EnsureLoaded({shard}));
  return metas_.Read(shard, [](const ShardLogMeta& meta) { return meta.ToState(); });
}

absl::StatusOr<std::vector<raftpb::Entry>> RocksRaftLog::Entries(ShardId shard, uint64_t lo,
                                                                 uint64_t hi,
                                                                 uint64_t max_bytes) const {
  TESSERA_RETURN_IF_ERROR(metas_.EnsureLoaded({shard}));
  TESSERA_RETURN_IF_ERROR(metas_.Read(
      shard, [&](const ShardLogMeta& meta) { return internal::CheckEntriesRange(meta, lo, hi); }));
  std::vector<raftpb::Entry> out;
  if (lo == hi) return out;
  rocksdb::ReadOptions ro;
  const std::string upper = keys::EntryKey(shard, hi);
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_));
  uint64_t expected = lo;
  uint64_t bytes = 0;
  for (it->Seek(keys::EntryKey(shard, lo)); it->Valid() && expected < hi; it->Next()) {
    ShardId key_shard = 0;
    uint64_t index = 0;
    if (!keys::ParseEntryKey(absl::string_view(it->key().data(), it->key().size()), &key_shard,
                             &index) ||
        key_shard != shard || index != expected) {
      break;
    }
    raftpb::Entry entry;
    if (!entry.ParseFromArray(it->value().data(), static_cast<int>(it->value().size()))) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt entry ", index));
    }
    bytes += entry.ByteSizeLong();
    if (!out.empty() && bytes > max_bytes) return out;
    out.push_back(std::move(entry));
    ++expected;
  }
  TESSERA_RETURN_IF_ERROR(FromRocks(it->status(), "RocksRaftLog::Entries"));
  if (expected < hi) return MissingEntry(shard, expected);
  return out;
}

absl::StatusOr<uint64_t> RocksRaftLog::Term(ShardId shard, uint64_t index) const {
  TESSERA_RETURN_IF_ERROR(metas_.EnsureLoaded({shard}));
  bool answered = false;
  uint64_t term = 0;
  TESSERA_RETURN_IF_ERROR(metas_.Read(shard, [&](const ShardLogMeta& meta) {
    return internal::CheckTermIndex(meta, index, &answered, &term);
  }));
  if (answered) return term;
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf_, keys::EntryKey(shard, index), &value);
  if (s.IsNotFound()) return MissingEntry(shard, index);
  TESSERA_RETURN_IF_ERROR(FromRocks(s, "RocksRaftLog::Term"));
  raftpb::Entry entry;
  if (!entry.ParseFromString(value)) {
    return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt entry ", index));
  }
  return entry.term();
}

absl::Status RocksRaftLog::Compact(ShardId shard, uint64_t index) {
  const std::vector<ShardId> shards = {shard};
  TESSERA_ASSIGN_OR_RETURN(Metas staged, metas_.BeginWrite(shards, [&](Metas& metas) {
    return internal::CheckCompactIndex(metas.at(shard), index);
  }));
  ShardLogMeta& meta = staged.at(shard);
  absl::Status s;
  uint64_t term = meta.last_term;
  if (index != meta.last_index) {
    std::string value;
    raftpb::Entry entry;
    s = FromRocks(db_->Get(rocksdb::ReadOptions(), cf_, keys::EntryKey(shard, index), &value),
                  "RocksRaftLog::Compact");
    if (s.ok() && !entry.ParseFromString(value)) {
      s = absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt entry ", index));
    }
    if (!s.ok()) {
      metas_.EndWrite(shards, nullptr);
      return s;
    }
    term = entry.term();
  }
  rocksdb::WriteBatch batch;
  DeleteEntries(shard, meta.first_index(), index, &batch);
  batch.Put(cf_, keys::TagKey(shard, keys::kTruncatedTag), EncodeTruncated(index, term))
      .PermitUncheckedError();
  // Not synced: see RaftLog::Compact() for why that is safe.
  s = FromRocks(db_->Write(rocksdb::WriteOptions(), &batch), "RocksRaftLog::Compact");
  meta.truncated_index = index;
  meta.truncated_term = term;
  metas_.EndWrite(shards, s.ok() ? &staged : nullptr);
  return s;
}

absl::Status RocksRaftLog::DeleteShard(ShardId shard) {
  return metas_.WriteShard(shard, ShardLogMeta{}, [&] {
    return DeleteShardRange(db_, cf_, shard, "RocksRaftLog::DeleteShard");
  });
}

}  // namespace

std::unique_ptr<RaftLog> NewRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space) {
  return std::make_unique<RocksRaftLog>(db, cf, space);
}

}  // namespace tessera::storage
