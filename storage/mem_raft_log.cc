#include "storage/mem_raft_log.h"

#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tessera::storage {

namespace {

// A replay of a write that succeeded on the live state must succeed on the
// durable image (the same writes in the same order): anything else is a bug
// of the crash model.
void CheckReplay(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "MemRaftLog: replaying a write on the durable image failed: %s\n",
                 s.ToString().c_str());
    std::abort();
  }
}

}  // namespace

MemRaftLog::MemRaftLog(MemWal* wal) : wal_(wal) {
  wal_->Attach([this] {
    absl::MutexLock lock(&mu_);
    shards_ = durable_;
  });
}

absl::Status MemRaftLog::DoSave(absl::Span<const LogUpdate> updates, Durability durability) {
  absl::MutexLock lock(&mu_);
  if (wal_ == nullptr) return SaveTo(shards_, updates);
  if (updates.empty()) return absl::OkStatus();
  if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  absl::Status s = SaveTo(shards_, updates);
  if (!s.ok()) return s;
  wal_->Record([this, copy = std::vector<LogUpdate>(
                          updates.begin(), updates.end())] { CheckReplay(SaveTo(durable_, copy)); },
               durability == Durability::kSynced);
  return absl::OkStatus();
}

absl::Status MemRaftLog::SaveTo(ShardMap& shards, absl::Span<const LogUpdate> updates) {
  // Validate everything against staged copies first: all or nothing.
  std::map<ShardId, internal::ShardLogMeta> staged;
  std::vector<std::vector<internal::IndexRange>> deletes(updates.size());
  for (size_t i = 0; i < updates.size(); ++i) {
    const ShardId shard = updates[i].shard;
    auto it = staged.find(shard);
    if (it == staged.end()) {
      auto existing = shards.find(shard);
      it = staged
               .emplace(shard,
                        existing == shards.end() ? internal::ShardLogMeta{} : existing->second.meta)
               .first;
    }
    absl::Status s = internal::PlanLogUpdate(updates[i], &it->second, &deletes[i]);
    if (!s.ok()) return s;
  }
  for (size_t i = 0; i < updates.size(); ++i) {
    Shard& shard = shards[updates[i].shard];
    for (const internal::IndexRange& range : deletes[i]) {
      shard.entries.erase(shard.entries.lower_bound(range.first),
                          shard.entries.upper_bound(range.last));
    }
    for (const raftpb::Entry& e : updates[i].entries) shard.entries[e.index()] = e;
  }
  for (auto& [id, meta] : staged) shards[id].meta = std::move(meta);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ShardId>> MemRaftLog::Shards() const {
  absl::MutexLock lock(&mu_);
  std::vector<ShardId> out;
  for (const auto& [id, shard] : shards_) out.push_back(id);  // a std::map: in order
  return out;
}

absl::StatusOr<LogState> MemRaftLog::State(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  if (it == shards_.end()) return internal::ShardLogMeta{}.ToState();
  return it->second.meta.ToState();
}

absl::StatusOr<std::vector<raftpb::Entry>> MemRaftLog::Entries(ShardId shard, uint64_t lo,
                                                               uint64_t hi,
                                                               uint64_t max_bytes) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  const internal::ShardLogMeta empty;
  const internal::ShardLogMeta& meta = it == shards_.end() ? empty : it->second.meta;
  absl::Status s = internal::CheckEntriesRange(meta, lo, hi);
  if (!s.ok()) return s;
  std::vector<raftpb::Entry> out;
  uint64_t bytes = 0;
  for (uint64_t index = lo; index < hi; ++index) {
    auto e = it->second.entries.find(index);
    if (e == it->second.entries.end()) {
      return absl::InternalError(absl::StrCat("shard ", shard, ": entry ", index, " missing"));
    }
    bytes += e->second.ByteSizeLong();
    if (!out.empty() && bytes > max_bytes) break;
    out.push_back(e->second);
  }
  return out;
}

absl::StatusOr<uint64_t> MemRaftLog::Term(ShardId shard, uint64_t index) const {
  absl::MutexLock lock(&mu_);
  auto it = shards_.find(shard);
  const internal::ShardLogMeta empty;
  const internal::ShardLogMeta& meta = it == shards_.end() ? empty : it->second.meta;
  bool answered = false;
  uint64_t term = 0;
  absl::Status s = internal::CheckTermIndex(meta, index, &answered, &term);
  if (!s.ok()) return s;
  if (answered) return term;
  auto e = it->second.entries.find(index);
  if (e == it->second.entries.end()) {
    return absl::InternalError(absl::StrCat("shard ", shard, ": entry ", index, " missing"));
  }
  return e->second.term();
}

absl::Status MemRaftLog::Compact(ShardId shard, uint64_t index) {
  absl::MutexLock lock(&mu_);
  if (wal_ == nullptr) return CompactIn(shards_, shard, index);
  if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  absl::Status s = CompactIn(shards_, shard, index);
  if (!s.ok()) return s;
  wal_->Record([this, shard, index] { CheckReplay(CompactIn(durable_, shard, index)); },
               /*synced=*/false);
  return absl::OkStatus();
}

absl::Status MemRaftLog::CompactIn(ShardMap& shards, ShardId shard, uint64_t index) {
  auto it = shards.find(shard);
  absl::Status status = internal::CheckCompactIndex(
      it == shards.end() ? internal::ShardLogMeta{} : it->second.meta, index);
  if (!status.ok()) return status;
  Shard& s = it->second;
  auto e = s.entries.find(index);
  if (e == s.entries.end()) {
    return absl::InternalError(absl::StrCat("shard ", shard, ": entry ", index, " missing"));
  }
  s.meta.truncated_index = index;
  s.meta.truncated_term = e->second.term();
  s.entries.erase(s.entries.begin(), s.entries.upper_bound(index));
  return absl::OkStatus();
}

absl::Status MemRaftLog::DeleteShard(ShardId shard) {
  absl::MutexLock lock(&mu_);
  if (wal_ != nullptr) {
    if (absl::Status s = wal_->BeginWrite(); !s.ok()) return s;
  }
  shards_.erase(shard);
  if (wal_ != nullptr) wal_->Record([this, shard] { durable_.erase(shard); }, /*synced=*/true);
  return absl::OkStatus();
}

}  // namespace tessera::storage
