// Migration of a data directory written by versions that kept the raft log in
// the "raft" column family of the node's RocksDB (layout in keys.h) into the
// LogEngine (log_engine.h). Engine::Open runs it once: it reads every shard's
// hard state, snapshot metadata, truncated point and entries from the column
// family, imports them into the log engine with one synced write, then
// deletes the column family's whole range (synced). A crash between the two
// writes imports again at the next open, which gives the same state
// (LogEngine::Import replaces a shard). Nothing else reads the raft column
// family any more.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "rocksdb/db.h"
#include "rocksdb/iterator.h"
#include "rocksdb/options.h"
#include "storage/keys.h"
#include "storage/log_engine.h"

namespace tessera::storage {

// Defined in rocks_engine.cc.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view context);
absl::StatusOr<uint64_t> MigrateRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                             LogEngine* log);

// Returns the number of shards migrated (0: the column family was empty).
absl::StatusOr<uint64_t> MigrateRocksRaftLog(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf,
                                             LogEngine* log) {
  std::vector<LogEngine::ShardImport> imports;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    const absl::string_view key(it->key().data(), it->key().size());
    const absl::string_view value(it->value().data(), it->value().size());
    if (key.size() < 9) {
      return absl::DataLossError(
          absl::StrCat("raft CF migration: bad key of ", key.size(), " bytes"));
    }
    const ShardId shard = keys::DecodeBigEndian64(key);
    if (imports.empty() || imports.back().shard != shard) {
      imports.emplace_back();
      imports.back().shard = shard;
    }
    LogEngine::ShardImport& im = imports.back();
    auto corrupt = [&](absl::string_view what) {
      return absl::DataLossError(
          absl::StrCat("raft CF migration: shard ", shard, ": corrupt ", what));
    };
    switch (key[8]) {
      case keys::kHardStateTag:
        if (!im.hard_state.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          return corrupt("hard state");
        }
        break;
      case keys::kSnapshotTag:
        if (!im.snapshot.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
          return corrupt("snapshot metadata");
        }
        break;
      case keys::kTruncatedTag:
        if (value.size() != 16) return corrupt("truncated state");
        im.truncated_index = keys::DecodeBigEndian64(value);
        im.truncated_term = keys::DecodeBigEndian64(value.substr(8));
        break;
      case keys::kEntryTag: {
        // Entries sort after the tags above, so truncated_index is known.
        ShardId key_shard = 0;
        uint64_t index = 0;
        raftpb::Entry entry;
        if (!keys::ParseEntryKey(key, &key_shard, &index) ||
            !entry.ParseFromArray(value.data(), static_cast<int>(value.size())) ||
            entry.index() != index) {
          return corrupt("entry");
        }
        if (index <= im.truncated_index) break;  // compacted (a tombstone not yet visible)
        if (index != im.truncated_index + 1 + im.entries.size()) {
          return corrupt(absl::StrCat("log: entry ", index, " follows a gap"));
        }
        im.entries.push_back(std::move(entry));
        break;
      }
      default:
        return corrupt(absl::StrCat("key tag ", static_cast<int>(key[8])));
    }
  }
  TESSERA_RETURN_IF_ERROR(FromRocks(it->status(), "raft CF migration"));
  it.reset();
  if (imports.empty()) return 0;
  TESSERA_RETURN_IF_ERROR(log->Import(imports));
  rocksdb::WriteOptions wo;
  wo.sync = true;
  TESSERA_RETURN_IF_ERROR(
      FromRocks(db->DeleteRange(wo, cf, keys::ShardStart(0), keys::ShardEnd(~ShardId{0})),
                "raft CF migration: delete"));
  // Reclaims the space now rather than at some later compaction.
  rocksdb::CompactRangeOptions compact;
  TESSERA_RETURN_IF_ERROR(
      FromRocks(db->CompactRange(compact, cf, nullptr, nullptr), "raft CF migration: compact"));
  return imports.size();
}

}  // namespace tessera::storage
