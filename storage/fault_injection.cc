#include "storage/fault_injection.h"

#include <sys/stat.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace tessera::storage {
namespace {

constexpr absl::string_view kNames[kNumFaultOps] = {"save", "sync", "apply", "install", "compact"};
constexpr uint32_t kAll = (1u << kNumFaultOps) - 1;

uint32_t Bit(FaultOp op) { return 1u << static_cast<int>(op); }

// The switches of control-file text: a mask, or an error naming a bad word.
absl::StatusOr<uint32_t> ParseControl(absl::string_view text) {
  uint32_t mask = 0;
  bool any = false;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" \t\r\n,"))) {
    if (word.empty()) continue;
    any = true;
    if (word == "all") {
      mask = kAll;
      continue;
    }
    std::optional<FaultOp> op = ParseFaultOp(word);
    if (!op.has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown storage fault \"", word,
                       "\" (expected save, sync, apply, install, compact or all)"));
    }
    mask |= Bit(*op);
  }
  return any ? mask : kAll;  // an empty file: everything fails
}

}  // namespace

absl::string_view FaultOpName(FaultOp op) { return kNames[static_cast<int>(op)]; }

std::optional<FaultOp> ParseFaultOp(absl::string_view name) {
  for (int i = 0; i < kNumFaultOps; ++i) {
    if (kNames[i] == name) return static_cast<FaultOp>(i);
  }
  return std::nullopt;
}

FaultInjector::FaultInjector(std::string control_file) : control_file_(std::move(control_file)) {}

void FaultInjector::Fail(FaultOp op) { manual_.fetch_or(Bit(op)); }
void FaultInjector::Heal(FaultOp op) { manual_.fetch_and(~Bit(op)); }
void FaultInjector::HealAll() { manual_.store(0); }

uint64_t FaultInjector::failures(FaultOp op) const {
  return failures_[static_cast<int>(op)].load(std::memory_order_relaxed);
}

uint32_t FaultInjector::FileMask(std::string* error) {
  if (control_file_.empty()) return 0;
  struct stat st;
  if (stat(control_file_.c_str(), &st) != 0) {
    absl::MutexLock lock(&mu_);
    valid_ = false;
    return 0;  // absent (or unreadable): no fault from the file
  }
  const int64_t mtime_ns =
      static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  {
    absl::MutexLock lock(&mu_);
    if (valid_ && inode_ == st.st_ino && size_ == st.st_size && mtime_ns_ == mtime_ns) {
      *error = file_error_;
      return file_mask_;
    }
  }
  // Changed (or first seen): read it without the lock held.
  std::ifstream in(control_file_);
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<uint32_t> parsed = ParseControl(text.str());
  absl::MutexLock lock(&mu_);
  valid_ = true;
  inode_ = st.st_ino;
  size_ = st.st_size;
  mtime_ns_ = mtime_ns;
  file_mask_ = parsed.ok() ? *parsed : kAll;
  file_error_ = parsed.ok() ? "" : std::string(parsed.status().message());
  *error = file_error_;
  return file_mask_;
}

absl::Status FaultInjector::Check(FaultOp op) {
  const uint32_t bit = Bit(op);
  std::string where;
  if ((manual_.load() & bit) != 0) {
    where = "switched on by the test";
  } else {
    std::string file_error;
    if ((FileMask(&file_error) & bit) == 0) return absl::OkStatus();
    where = file_error.empty() ? absl::StrCat("control file ", control_file_)
                               : absl::StrCat("control file ", control_file_, ": ", file_error);
  }
  failures_[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed);
  return absl::InternalError(absl::StrCat("injected I/O error: storage fault \"", FaultOpName(op),
                                          "\" is on (", where, ")"));
}

// ---------------------------------------------------------------- RaftLog

absl::StatusOr<LogState> FaultInjectingRaftLog::State(ShardId shard) const {
  return base_->State(shard);
}

absl::StatusOr<std::vector<ShardId>> FaultInjectingRaftLog::Shards() const {
  return base_->Shards();
}

absl::StatusOr<std::vector<raftpb::Entry>> FaultInjectingRaftLog::Entries(
    ShardId shard, uint64_t lo, uint64_t hi, uint64_t max_bytes) const {
  return base_->Entries(shard, lo, hi, max_bytes);
}

absl::StatusOr<uint64_t> FaultInjectingRaftLog::Term(ShardId shard, uint64_t index) const {
  return base_->Term(shard, index);
}

absl::Status FaultInjectingRaftLog::Compact(ShardId shard, uint64_t index) {
  if (absl::Status s = faults_->Check(FaultOp::kCompact); !s.ok()) return s;
  return base_->Compact(shard, index);
}

absl::Status FaultInjectingRaftLog::DeleteShard(ShardId shard) {
  if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
  return base_->DeleteShard(shard);
}

absl::Status FaultInjectingRaftLog::DoSave(absl::Span<const LogUpdate> updates,
                                           Durability durability) {
  if (updates.empty()) return absl::OkStatus();  // a no-op, as the contract says
  if (absl::Status s = faults_->Check(FaultOp::kSave); !s.ok()) return s;
  if (durability == Durability::kSynced) {
    if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
  }
  return base_->Save(updates, durability);
}

// ---------------------------------------------------------------- KvStore

absl::Status FaultInjectingKvStore::Apply(absl::Span<const ShardWrite> writes) {
  if (absl::Status s = faults_->Check(FaultOp::kApply); !s.ok()) return s;
  return base_->Apply(writes);
}

absl::Status FaultInjectingKvStore::Sync() {
  if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
  return base_->Sync();
}

absl::StatusOr<std::string> FaultInjectingKvStore::Get(ShardId shard, absl::string_view key) const {
  return base_->Get(shard, key);
}

absl::StatusOr<std::string> FaultInjectingKvStore::GetMeta(ShardId shard,
                                                           absl::string_view key) const {
  return base_->GetMeta(shard, key);
}

absl::StatusOr<uint64_t> FaultInjectingKvStore::AppliedIndex(ShardId shard) const {
  return base_->AppliedIndex(shard);
}

absl::StatusOr<ScanResult> FaultInjectingKvStore::Scan(ShardId shard,
                                                       const ScanOptions& options) const {
  return base_->Scan(shard, options);
}

absl::StatusOr<std::unique_ptr<ShardSnapshot>> FaultInjectingKvStore::ExportSnapshot(
    ShardId shard) const {
  return base_->ExportSnapshot(shard);
}

absl::Status FaultInjectingKvStore::InstallSnapshot(ShardId shard, uint64_t applied_index,
                                                    SnapshotReader& reader) {
  if (absl::Status s = faults_->Check(FaultOp::kInstallSnapshot); !s.ok()) return s;
  if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
  return base_->InstallSnapshot(shard, applied_index, reader);
}

namespace {

// The base store's staging, with the install faults checked at Commit.
class FaultInjectingStaging final : public SnapshotStaging {
 public:
  FaultInjectingStaging(std::unique_ptr<SnapshotStaging> base, FaultInjector* faults)
      : base_(std::move(base)), faults_(faults) {}
  ShardId shard() const override { return base_->shard(); }
  uint64_t applied_index() const override { return base_->applied_index(); }
  uint64_t bytes() const override { return base_->bytes(); }
  absl::Status Add(const SnapshotRecord& record) override { return base_->Add(record); }
  absl::Status Finish() override { return base_->Finish(); }
  absl::Status Commit() override {
    if (absl::Status s = faults_->Check(FaultOp::kInstallSnapshot); !s.ok()) return s;
    if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
    return base_->Commit();
  }

 private:
  const std::unique_ptr<SnapshotStaging> base_;
  FaultInjector* const faults_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<SnapshotStaging>> FaultInjectingKvStore::StageSnapshot(
    ShardId shard, uint64_t applied_index) {
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging =
      base_->StageSnapshot(shard, applied_index);
  if (!staging.ok()) return staging.status();
  return std::make_unique<FaultInjectingStaging>(*std::move(staging), faults_);
}

absl::Status FaultInjectingKvStore::DeleteShard(ShardId shard) {
  if (absl::Status s = faults_->Check(FaultOp::kSync); !s.ok()) return s;
  return base_->DeleteShard(shard);
}

}  // namespace tessera::storage
