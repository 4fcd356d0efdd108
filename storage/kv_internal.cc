#include "storage/kv_internal.h"

#include "absl/strings/str_cat.h"

namespace tessera::storage::internal {

absl::Status CheckKey(absl::string_view key) {
  if (key.empty()) return absl::InvalidArgumentError("empty key");
  return absl::OkStatus();
}

absl::Status CheckMutations(const ShardWrite& write) {
  for (const Mutation& m : write.mutations) {
    if (m.key.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", write.shard, ": mutation with an empty key"));
    }
    if (m.kind == Mutation::Kind::kDeleteMetaRange && (m.value.empty() || m.value < m.key)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", write.shard, ": meta range delete with a bad end"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckAppliedIndex(const ShardWrite& write, uint64_t current_applied) {
  if (write.applied_index <= current_applied) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", write.shard, ": applied index ", write.applied_index,
                     " is not above the current applied index ", current_applied));
  }
  return absl::OkStatus();
}

absl::Status CheckScanOptions(const ScanOptions& options) {
  if (!options.end.empty() && options.start > options.end) {
    return absl::InvalidArgumentError("scan: start is after end");
  }
  return absl::OkStatus();
}

absl::Status SnapshotOrder::Check(const SnapshotRecord& record) {
  if (record.key.empty()) return absl::InvalidArgumentError("snapshot record with an empty key");
  if (any_) {
    const bool ordered =
        last_meta_ == record.meta ? last_key_ < record.key : (last_meta_ && !record.meta);
    if (!ordered) {
      return absl::InvalidArgumentError(
          "snapshot records out of order (meta first, then data, each in increasing key order)");
    }
  }
  any_ = true;
  last_meta_ = record.meta;
  last_key_ = record.key;
  return absl::OkStatus();
}

bool ScanCollector::Full() const {
  if (options_.limit != 0 && result_.items.size() >= options_.limit) return true;
  if (options_.max_bytes != 0 && bytes_ >= options_.max_bytes) return true;
  return false;
}

void ScanCollector::Add(absl::string_view key, absl::string_view value) {
  bytes_ += key.size() + value.size();
  result_.items.emplace_back(std::string(key), std::string(value));
}

void ScanCollector::SetResume(absl::string_view next_key) {
  result_.more = true;
  result_.resume_key = std::string(next_key);
}

}  // namespace tessera::storage::internal
