#include "storage/kv_store.h"

#include "absl/strings/str_cat.h"
#include "storage/kv_internal.h"

namespace tessera::storage {

absl::StatusOr<bool> VectorSnapshotReader::Next(SnapshotRecord* out) {
  if (next_ >= records_.size()) return false;
  *out = records_[next_++];
  return true;
}

namespace {

// The default SnapshotStaging: records buffered in memory, installed with
// KvStore::InstallSnapshot() (one atomic replacement) by Commit().
class BufferedStaging : public SnapshotStaging {
 public:
  BufferedStaging(KvStore* kv, ShardId shard, uint64_t applied_index)
      : kv_(kv), shard_(shard), applied_index_(applied_index) {}
  ShardId shard() const override { return shard_; }
  uint64_t applied_index() const override { return applied_index_; }
  uint64_t bytes() const override { return bytes_; }

  absl::Status Add(const SnapshotRecord& record) override {
    if (finished_) return absl::FailedPreconditionError("snapshot staging already finished");
    absl::Status s = order_.Check(record);
    if (!s.ok()) return s;
    bytes_ += record.key.size() + record.value.size();
    records_.push_back(record);
    return absl::OkStatus();
  }
  absl::Status Finish() override {
    finished_ = true;
    return absl::OkStatus();
  }
  absl::Status Commit() override {
    if (!finished_ || committed_) {
      return absl::FailedPreconditionError("snapshot staging not finished or already committed");
    }
    absl::StatusOr<uint64_t> applied = kv_->AppliedIndex(shard_);
    if (!applied.ok()) return applied.status();
    if (*applied >= applied_index_) {
      return absl::FailedPreconditionError(absl::StrCat("shard ", shard_, ": applied index ",
                                                        *applied, " is not below the snapshot's ",
                                                        applied_index_));
    }
    VectorSnapshotReader reader(std::move(records_));
    absl::Status s = kv_->InstallSnapshot(shard_, applied_index_, reader);
    if (s.ok()) committed_ = true;
    return s;
  }

 private:
  KvStore* const kv_;
  const ShardId shard_;
  const uint64_t applied_index_;
  internal::SnapshotOrder order_;
  std::vector<SnapshotRecord> records_;
  uint64_t bytes_ = 0;
  bool finished_ = false;
  bool committed_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SnapshotStaging>> KvStore::StageSnapshot(ShardId shard,
                                                                        uint64_t applied_index) {
  return std::make_unique<BufferedStaging>(this, shard, applied_index);
}

std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) != 0xFF) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return end;  // empty or all 0xFF: no upper bound
}

}  // namespace tessera::storage
