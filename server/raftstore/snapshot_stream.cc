#include "server/raftstore/snapshot_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "server/raftstore/raft_storage.h"

namespace tessera::server {

namespace {

constexpr char kRecordData = 0x00;
constexpr char kRecordMeta = 0x01;
constexpr char kExportToken = 0x02;
constexpr char kStagedToken = 0x03;
constexpr size_t kTokenBytes = 9;

void PutVarint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

bool GetVarint(absl::string_view* in, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift <= 63 && !in->empty(); shift += 7) {
    const auto byte = static_cast<uint8_t>(in->front());
    in->remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *v = result;
      return true;
    }
  }
  return false;
}

bool GetLengthPrefixed(absl::string_view* in, std::string* out) {
  uint64_t n = 0;
  if (!GetVarint(in, &n) || n > in->size()) return false;
  out->assign(in->data(), static_cast<size_t>(n));
  in->remove_prefix(static_cast<size_t>(n));
  return true;
}

std::string MakeToken(char kind, uint64_t id) {
  std::string out(1, kind);
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(id >> shift));
  return out;
}

bool ParseToken(absl::string_view data, char kind, uint64_t* id) {
  if (data.size() != kTokenBytes || data[0] != kind) return false;
  uint64_t v = 0;
  for (size_t i = 1; i < kTokenBytes; ++i) v = (v << 8) | static_cast<uint8_t>(data[i]);
  *id = v;
  return true;
}

}  // namespace

void AppendSnapshotRecord(const storage::SnapshotRecord& record, std::string* out) {
  out->push_back(record.meta ? kRecordMeta : kRecordData);
  PutVarint(out, record.key.size());
  out->append(record.key);
  PutVarint(out, record.value.size());
  out->append(record.value);
}

bool ParseSnapshotRecord(absl::string_view* in, storage::SnapshotRecord* out) {
  if (in->empty()) return false;
  const char kind = in->front();
  if (kind != kRecordData && kind != kRecordMeta) return false;
  in->remove_prefix(1);
  out->meta = kind == kRecordMeta;
  return GetLengthPrefixed(in, &out->key) && GetLengthPrefixed(in, &out->value);
}

bool IsExportToken(absl::string_view data) {
  uint64_t id = 0;
  return ParseToken(data, kExportToken, &id);
}

bool IsStagedToken(absl::string_view data) {
  uint64_t id = 0;
  return ParseToken(data, kStagedToken, &id);
}

// ---- SnapshotExchange

SnapshotExchange::SnapshotExchange(storage::KvStore* kv, SnapshotExchangeOptions options)
    : kv_(kv), options_(options) {}

SnapshotExchange::~SnapshotExchange() = default;

void SnapshotExchange::ExpireLocked(absl::Time now) {
  std::erase_if(exports_, [&](const auto& e) { return now - e.second.since > options_.ttl; });
  std::erase_if(staged_, [&](const auto& e) { return now - e.second.since > options_.ttl; });
}

absl::StatusOr<std::string> SnapshotExchange::AddExport(
    ShardId shard, std::unique_ptr<storage::ShardSnapshot> view) {
  absl::MutexLock lock(&mu_);
  ExpireLocked(absl::Now());
  if (exports_.size() >= std::max<size_t>(options_.max_exports, 1)) {
    return absl::UnavailableError(absl::StrCat("shard ", shard, ": ", exports_.size(),
                                               " snapshots are already being sent; retry later"));
  }
  const uint64_t id = next_id_++;
  exports_[id] = {absl::Now(), std::move(view)};
  return MakeToken(kExportToken, id);
}

absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> SnapshotExchange::TakeExport(
    absl::string_view token) {
  uint64_t id = 0;
  if (!ParseToken(token, kExportToken, &id)) {
    return absl::InvalidArgumentError("not a snapshot export token");
  }
  absl::MutexLock lock(&mu_);
  ExpireLocked(absl::Now());
  auto it = exports_.find(id);
  if (it == exports_.end()) {
    return absl::NotFoundError(absl::StrCat("snapshot export ", id, " expired or unknown"));
  }
  std::unique_ptr<storage::ShardSnapshot> view = std::move(it->second.value);
  exports_.erase(it);
  return view;
}

void SnapshotExchange::DropExport(absl::string_view token) { TakeExport(token).IgnoreError(); }

absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> SnapshotExchange::BeginStaging(
    ShardId shard, uint64_t applied_index) {
  return kv_->StageSnapshot(shard, applied_index);
}

std::string SnapshotExchange::AddStaged(std::unique_ptr<storage::SnapshotStaging> staging) {
  std::unique_ptr<storage::SnapshotStaging> dropped;  // destroyed after unlocking
  absl::MutexLock lock(&mu_);
  ExpireLocked(absl::Now());
  if (staged_.size() >= std::max<size_t>(options_.max_staged, 1)) {
    dropped = std::move(staged_.begin()->second.value);
    staged_.erase(staged_.begin());
  }
  const uint64_t id = next_id_++;
  staged_[id] = {absl::Now(), std::move(staging)};
  return MakeToken(kStagedToken, id);
}

absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> SnapshotExchange::TakeStaged(
    absl::string_view token) {
  uint64_t id = 0;
  if (!ParseToken(token, kStagedToken, &id)) {
    return absl::InvalidArgumentError("not a staged snapshot token");
  }
  absl::MutexLock lock(&mu_);
  ExpireLocked(absl::Now());
  auto it = staged_.find(id);
  if (it == staged_.end()) {
    return absl::NotFoundError(absl::StrCat("staged snapshot ", id, " expired or unknown"));
  }
  std::unique_ptr<storage::SnapshotStaging> staging = std::move(it->second.value);
  staged_.erase(it);
  return staging;
}

size_t SnapshotExchange::exports() const {
  absl::MutexLock lock(&mu_);
  return exports_.size();
}

size_t SnapshotExchange::staged() const {
  absl::MutexLock lock(&mu_);
  return staged_.size();
}

// ---- SnapshotChunker

absl::StatusOr<std::unique_ptr<SnapshotChunker>> SnapshotChunker::Open(SnapshotExchange* exchange,
                                                                       raftpb::Snapshot* snapshot) {
  std::unique_ptr<SnapshotChunker> c(new SnapshotChunker());
  if (IsExportToken(snapshot->data())) {
    if (exchange == nullptr) {
      return absl::FailedPreconditionError("a snapshot export token but no snapshot exchange");
    }
    TESSERA_ASSIGN_OR_RETURN(c->view_, exchange->TakeExport(snapshot->data()));
    c->reader_ = std::make_unique<storage::ShardSnapshotReader>(c->view_.get());
  } else {
    c->inline_data_ = std::move(*snapshot->mutable_data());
    c->reader_ = std::make_unique<SnapshotDataReader>(c->inline_data_);
  }
  snapshot->clear_data();
  return c;
}

absl::StatusOr<bool> SnapshotChunker::Next(uint64_t max_bytes, std::string* out) {
  out->clear();
  while (out->size() < std::max<uint64_t>(max_bytes, 1)) {
    storage::SnapshotRecord record;
    TESSERA_ASSIGN_OR_RETURN(bool more, reader_->Next(&record));
    if (!more) break;
    AppendSnapshotRecord(record, out);
    ++records_;
  }
  return !out->empty();
}

// ---- SnapshotAssembler

absl::Status SnapshotAssembler::Begin(ShardId shard, raftpb::Message message) {
  if (begun_) return absl::FailedPreconditionError("snapshot transfer already begun");
  if (message.type() != raftpb::MSG_SNAP || !message.has_snapshot() ||
      message.snapshot().metadata().index() == 0) {
    return absl::InvalidArgumentError("the first snapshot chunk carries no MSG_SNAP with metadata");
  }
  if (!message.snapshot().data().empty()) {
    return absl::InvalidArgumentError("the first snapshot chunk's MSG_SNAP carries inline data");
  }
  begun_ = true;
  message_ = std::move(message);
  if (exchange_ != nullptr) {
    TESSERA_ASSIGN_OR_RETURN(
        staging_, exchange_->BeginStaging(shard, message_.snapshot().metadata().index()));
  } else {
    inline_data_.push_back(0x01);  // format 1
  }
  return absl::OkStatus();
}

absl::Status SnapshotAssembler::Add(absl::string_view data) {
  if (!begun_) return absl::FailedPreconditionError("snapshot chunk before the first");
  if (data.size() > max_bytes_ || bytes_ + data.size() > max_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("snapshot exceeds ", max_bytes_, " bytes (--max-snapshot-bytes)"));
  }
  bytes_ += data.size();
  storage::SnapshotRecord record;
  while (!data.empty()) {
    if (!ParseSnapshotRecord(&data, &record)) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed snapshot record after ", records_, " records"));
    }
    ++records_;
    if (staging_ != nullptr) {
      TESSERA_RETURN_IF_ERROR(staging_->Add(record));
    } else {
      AppendSnapshotRecord(record, &inline_data_);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<raftpb::Message> SnapshotAssembler::Finish(uint64_t records) {
  if (!begun_) return absl::FailedPreconditionError("snapshot ended before it began");
  if (records != records_) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot declares ", records, " records, ", records_, " arrived"));
  }
  if (staging_ != nullptr) {
    TESSERA_RETURN_IF_ERROR(staging_->Finish());
    *message_.mutable_snapshot()->mutable_data() = exchange_->AddStaged(std::move(staging_));
  } else {
    *message_.mutable_snapshot()->mutable_data() = std::move(inline_data_);
  }
  begun_ = false;
  return std::move(message_);
}

}  // namespace tessera::server
