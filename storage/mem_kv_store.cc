#include "storage/mem_kv_store.h"

#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "storage/kv_internal.h"

namespace tessera::storage {
namespace {

// A copy of one shard taken under the store's lock.
class MemShardSnapshot : public ShardSnapshot {
 public:
  MemShardSnapshot(uint64_t applied_index, std::vector<SnapshotRecord> records)
      : applied_index_(applied_index), reader_(std::move(records)) {}
  uint64_t applied_index() const override { return applied_index_; }
  absl::StatusOr<bool> Next(SnapshotRecord* out) override { return reader_.Next(out); }

 private:
  uint64_t applied_index_;
  VectorSnapshotReader reader_;
};

}  // namespace

MemKvStore::MemKvStore(MemWal* wal) : wal_(wal) {
  wal_->Attach([this] {
    absl::MutexLock lock(&mu_);
    shards_ = durable_;
  });
}

absl::Status MemKvStore::Apply(absl::Span<const ShardWrite> writes) {
  absl::MutexLock lock(&mu_);
  if (wal_ == nullptr) return ApplyTo(shards_, writes);
  if (writes.empty()) return absl::OkStatus();
  if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  absl::Status s = ApplyTo(shards_, writes);
  if (!s.ok()) return s;
  // Not synced (README.md "Durability contract").
  wal_->Record(
      [this, copy = std::vector<ShardWrite>(writes.begin(), writes.end())] {
        if (absl::Status replayed = ApplyTo(durable_, copy); !replayed.ok()) {
          std::fprintf(stderr, "MemKvStore: replaying an Apply on the durable image failed: %s\n",
                       replayed.ToString().c_str());
          std::abort();
        }
      },
      /*synced=*/false);
  return absl::OkStatus();
}

absl::Status MemKvStore::Sync() {
  absl::MutexLock lock(&mu_);
  if (wal_ == nullptr) return absl::OkStatus();
  if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  wal_->Record([] {}, /*synced=*/true);
  return absl::OkStatus();
}

absl::Status MemKvStore::ApplyTo(Shards& shards, absl::Span<const ShardWrite> writes) {
  std::map<ShardId, uint64_t> staged_applied;
  for (const ShardWrite& w : writes) {
    absl::Status s = internal::CheckMutations(w);
    if (!s.ok()) return s;
    auto it = staged_applied.find(w.shard);
    if (it == staged_applied.end()) {
      auto existing = shards.find(w.shard);
      it = staged_applied
               .emplace(w.shard, existing == shards.end() ? 0 : existing->second.applied_index)
               .first;
    }
    s = internal::CheckAppliedIndex(w, it->second);
    if (!s.ok()) return s;
    it->second = w.applied_index;
  }
  for (const ShardWrite& w : writes) {
    Shard& shard = shards[w.shard];
    for (const Mutation& m : w.mutations) {
      switch (m.kind) {
        case Mutation::Kind::kPut:
          shard.data[m.key] = m.value;
          break;
        case Mutation::Kind::kDelete:
          shard.data.erase(m.key);
          break;
        case Mutation::Kind::kPutMeta:
          shard.meta[m.key] = m.value;
          break;
        case Mutation::Kind::kDeleteMeta:
          shard.meta.erase(m.key);
          break;
        case Mutation::Kind::kDeleteMetaRange:
          shard.meta.erase(shard.meta.lower_bound(m.key), shard.meta.lower_bound(m.value));
          break;
      }
    }
    shard.applied_index = w.applied_index;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> MemKvStore::Lookup(ShardId shard, absl::string_view key,
                                               bool meta) const {
  absl::Status s = internal::CheckKey(key);
  if (!s.ok()) return s;
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  if (it != shards_.end()) {
    const auto& map = meta ? it->second.meta : it->second.data;
    auto found = map.find(std::string(key));
    if (found != map.end()) return found->second;
  }
  return absl::NotFoundError("key not found");
}

absl::StatusOr<std::string> MemKvStore::Get(ShardId shard, absl::string_view key) const {
  return Lookup(shard, key, /*meta=*/false);
}

absl::StatusOr<std::string> MemKvStore::GetMeta(ShardId shard, absl::string_view key) const {
  return Lookup(shard, key, /*meta=*/true);
}

absl::StatusOr<uint64_t> MemKvStore::AppliedIndex(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  return it == shards_.end() ? 0 : it->second.applied_index;
}

absl::StatusOr<ScanResult> MemKvStore::Scan(ShardId shard, const ScanOptions& options) const {
  absl::Status s = internal::CheckScanOptions(options);
  if (!s.ok()) return s;
  internal::ScanCollector collector(options);
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  if (it != shards_.end()) {
    const auto& data = options.meta ? it->second.meta : it->second.data;
    for (auto kv = data.lower_bound(options.start); kv != data.end(); ++kv) {
      if (!options.end.empty() && kv->first >= options.end) break;
      if (collector.Full()) {
        collector.SetResume(kv->first);
        break;
      }
      collector.Add(kv->first, kv->second);
    }
  }
  ScanResult result = collector.Finish();
  if (it != shards_.end()) result.applied_index = it->second.applied_index;
  return result;
}

absl::StatusOr<std::unique_ptr<ShardSnapshot>> MemKvStore::ExportSnapshot(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  if (it == shards_.end())
    return std::make_unique<MemShardSnapshot>(0, std::vector<SnapshotRecord>{});
  std::vector<SnapshotRecord> records;
  records.reserve(it->second.meta.size() + it->second.data.size());
  for (const auto& [k, v] : it->second.meta) records.push_back({true, k, v});
  for (const auto& [k, v] : it->second.data) records.push_back({false, k, v});
  return std::make_unique<MemShardSnapshot>(it->second.applied_index, std::move(records));
}

absl::Status MemKvStore::InstallSnapshot(ShardId shard, uint64_t applied_index,
                                         SnapshotReader& reader) {
  Shard replacement;
  replacement.applied_index = applied_index;
  SnapshotRecord record;
  while (true) {
    absl::StatusOr<bool> more = reader.Next(&record);
    if (!more.ok()) return more.status();
    if (!*more) break;
    absl::Status s = internal::CheckKey(record.key);
    if (!s.ok()) return s;
    (record.meta ? replacement.meta : replacement.data)[record.key] = std::move(record.value);
  }
  absl::MutexLock lock(&mu_);
  if (wal_ == nullptr) {
    shards_[shard] = std::move(replacement);
    return absl::OkStatus();
  }
  if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  shards_[shard] = replacement;
  // Synced: covers every earlier write too.
  wal_->Record([this, shard, copy = std::move(replacement)] { durable_[shard] = copy; },
               /*synced=*/true);
  return absl::OkStatus();
}

absl::Status MemKvStore::DeleteShard(ShardId shard) {
  absl::MutexLock lock(&mu_);
  if (wal_ != nullptr) {
    if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  }
  shards_.erase(shard);
  if (wal_ != nullptr) wal_->Record([this, shard] { durable_.erase(shard); }, /*synced=*/true);
  return absl::OkStatus();
}

uint64_t MemKvStore::ApproximateBytes(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  if (it == shards_.end()) return 0;
  uint64_t bytes = 0;
  for (const auto& [key, value] : it->second.data) bytes += key.size() + value.size();
  return bytes;
}

}  // namespace tessera::storage
