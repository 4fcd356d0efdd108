// RaftLog over the "raft" column family of the node's RocksDB (layout in
// keys.h and README.md).
//
// Each shard's bookkeeping (internal::ShardLogMeta: hard state, snapshot,
// truncated and last index/term) is loaded lazily from disk on first use and
// then kept in memory, guarded by mu_. Writers mark their shards `busy` under
// mu_, do the RocksDB write without holding it, then publish the new meta;
// another writer of the same shard waits for busy to clear. Readers never
// wait for a writer: they validate against the published meta and read
// RocksDB without the lock.
#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "rocksdb/write_batch.h"
#include "storage/disk_space.h"
#include "storage/keys.h"
#include "storage/log_meta.h"
#include "storage/raft_log.h"

namespace tessera::storage {

// Defined in rocks_engine.cc (see the note there).
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context);
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
      : db_(db), cf_(cf), space_(space) {}

  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<LogState> State(ShardId shard) const override ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override
      ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Compact(ShardId shard, uint64_t index) override ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status DeleteShard(ShardId shard) override ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Cached {
    ShardLogMeta meta;
    bool busy = false;  // a writer of this shard is between plan and publish
  };
  struct BusyQuery {
    const absl::flat_hash_map<ShardId, Cached>* cache;
    const std::vector<ShardId>* shards;
  };
  static bool NoneBusy(BusyQuery* q) {
    for (ShardId s : *q->shards) {
      if (q->cache->at(s).busy) return false;
    }
    return true;
  }

  // Reads a shard's meta from disk (no lock; see the file comment for why a
  // concurrent writer cannot make the result stale once it is published).
  absl::StatusOr<ShardLogMeta> LoadMeta(ShardId shard) const;
  // Makes sure cache_ has an entry for each shard.
  absl::Status EnsureLoaded(const std::vector<ShardId>& shards) const ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until none of `shards` (all loaded) is busy and locks mu_.
  void LockWhenIdle(const std::vector<ShardId>& shards) const ABSL_EXCLUSIVE_LOCK_FUNCTION(mu_);
  // Clears busy and publishes `staged` (if given).
  void Publish(const std::vector<ShardId>& shards,
               const absl::flat_hash_map<ShardId, ShardLogMeta>* staged) ABSL_LOCKS_EXCLUDED(mu_);
  // The error for an entry that was expected but is not on disk.
  absl::Status MissingEntry(ShardId shard, uint64_t index) const ABSL_LOCKS_EXCLUDED(mu_);
  // Adds deletes of entries [first, last] to `batch`.
  void DeleteEntries(ShardId shard, uint64_t first, uint64_t last, rocksdb::WriteBatch* batch);

  rocksdb::DB* const db_;
  rocksdb::ColumnFamilyHandle* const cf_;
  const DiskSpaceGuard* const space_;

  mutable absl::Mutex mu_;
  // Entries are never erased (DeleteShard resets them), so a loaded shard
  // stays loaded.
  mutable absl::flat_hash_map<ShardId, Cached> cache_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<ShardLogMeta> RocksRaftLog::LoadMeta(ShardId shard) const {
  ShardLogMeta meta;
  rocksdb::ReadOptions ro;
  std::string value;
  rocksdb::Status s = db_->Get(ro, cf_, keys::TagKey(shard, keys::kHardStateTag), &value);
  if (s.ok()) {
    if (!meta.hard_state.ParseFromString(value)) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt hard state"));
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "RocksRaftLog::LoadMeta");
  }
  s = db_->Get(ro, cf_, keys::TagKey(shard, keys::kSnapshotTag), &value);
  if (s.ok()) {
    if (!meta.snapshot.ParseFromString(value)) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt snapshot metadata"));
    }
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "RocksRaftLog::LoadMeta");
  }
  s = db_->Get(ro, cf_, keys::TagKey(shard, keys::kTruncatedTag), &value);
  if (s.ok()) {
    if (value.size() != 16) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": corrupt truncated state"));
    }
    meta.truncated_index = keys::DecodeBigEndian64(value);
    meta.truncated_term = keys::DecodeBigEndian64(absl::string_view(value).substr(8));
  } else if (!s.IsNotFound()) {
    return FromRocks(s, "RocksRaftLog::LoadMeta");
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

absl::Status RocksRaftLog::EnsureLoaded(const std::vector<ShardId>& shards) const {
  for (ShardId shard : shards) {
    {
      absl::MutexLock lock(&mu_);
      if (cache_.contains(shard)) continue;
    }
    TESSERA_ASSIGN_OR_RETURN(ShardLogMeta meta, LoadMeta(shard));
    absl::MutexLock lock(&mu_);
    cache_.try_emplace(shard, Cached{std::move(meta), false});
  }
  return absl::OkStatus();
}

void RocksRaftLog::LockWhenIdle(const std::vector<ShardId>& shards) const {
  BusyQuery query{&cache_, &shards};
  mu_.LockWhen(absl::Condition(&NoneBusy, &query));
}

void RocksRaftLog::Publish(const std::vector<ShardId>& shards,
                           const absl::flat_hash_map<ShardId, ShardLogMeta>* staged) {
  absl::MutexLock lock(&mu_);
  for (ShardId shard : shards) {
    Cached& cached = cache_.at(shard);
    cached.busy = false;
    if (staged != nullptr) cached.meta = staged->at(shard);
  }
}

absl::Status RocksRaftLog::MissingEntry(ShardId shard, uint64_t index) const {
  absl::MutexLock lock(&mu_);
  const ShardLogMeta& meta = cache_.at(shard).meta;
  if (index < meta.first_index()) {
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
  std::vector<ShardId> shards;
  for (const LogUpdate& u : updates) {
    if (std::find(shards.begin(), shards.end(), u.shard) == shards.end()) {
      shards.push_back(u.shard);
    }
  }
  TESSERA_RETURN_IF_ERROR(EnsureLoaded(shards));

  absl::flat_hash_map<ShardId, ShardLogMeta> staged;
  std::vector<std::vector<internal::IndexRange>> deletes(updates.size());
  LockWhenIdle(shards);
  for (ShardId shard : shards) staged.emplace(shard, cache_.at(shard).meta);
  for (size_t i = 0; i < updates.size(); ++i) {
    absl::Status s = internal::PlanLogUpdate(updates[i], &staged.at(updates[i].shard), &deletes[i]);
    if (!s.ok()) {
      mu_.Unlock();
      return s;
    }
  }
  for (ShardId shard : shards) cache_.at(shard).busy = true;
  mu_.Unlock();

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
  Publish(shards, status.ok() ? &staged : nullptr);
  return status;
}

absl::StatusOr<LogState> RocksRaftLog::State(ShardId shard) const {
  TESSERA_RETURN_IF_ERROR(EnsureLoaded({shard}));
  absl::MutexLock lock(&mu_);
  return cache_.at(shard).meta.ToState();
}

absl::StatusOr<std::vector<raftpb::Entry>> RocksRaftLog::Entries(ShardId shard, uint64_t lo,
                                                                 uint64_t hi,
                                                                 uint64_t max_bytes) const {
  TESSERA_RETURN_IF_ERROR(EnsureLoaded({shard}));
  {
    absl::MutexLock lock(&mu_);
    TESSERA_RETURN_IF_ERROR(internal::CheckEntriesRange(cache_.at(shard).meta, lo, hi));
  }
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
  TESSERA_RETURN_IF_ERROR(EnsureLoaded({shard}));
  {
    absl::MutexLock lock(&mu_);
    bool answered = false;
    uint64_t term = 0;
    TESSERA_RETURN_IF_ERROR(
        internal::CheckTermIndex(cache_.at(shard).meta, index, &answered, &term));
    if (answered) return term;
  }
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
  TESSERA_RETURN_IF_ERROR(EnsureLoaded(shards));
  LockWhenIdle(shards);
  ShardLogMeta meta = cache_.at(shard).meta;
  absl::Status s = internal::CheckCompactIndex(meta, index);
  if (!s.ok()) {
    mu_.Unlock();
    return s;
  }
  cache_.at(shard).busy = true;
  mu_.Unlock();

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
      Publish(shards, nullptr);
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
  absl::flat_hash_map<ShardId, ShardLogMeta> staged;
  if (s.ok()) {
    meta.truncated_index = index;
    meta.truncated_term = term;
    staged.emplace(shard, std::move(meta));
  }
  Publish(shards, s.ok() ? &staged : nullptr);
  return s;
}

absl::Status RocksRaftLog::DeleteShard(ShardId shard) {
  const std::vector<ShardId> shards = {shard};
  TESSERA_RETURN_IF_ERROR(EnsureLoaded(shards));
  LockWhenIdle(shards);
  cache_.at(shard).busy = true;
  mu_.Unlock();
  rocksdb::WriteOptions wo;
  wo.sync = true;
  absl::Status s =
      FromRocks(db_->DeleteRange(wo, cf_, keys::ShardStart(shard), keys::ShardEnd(shard)),
                "RocksRaftLog::DeleteShard");
  absl::flat_hash_map<ShardId, ShardLogMeta> staged;
  staged.emplace(shard, ShardLogMeta{});
  Publish(shards, s.ok() ? &staged : nullptr);
  return s;
}

}  // namespace

std::unique_ptr<RaftLog> NewRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                         const DiskSpaceGuard* space) {
  return std::make_unique<RocksRaftLog>(db, cf, space);
}

}  // namespace tessera::storage
