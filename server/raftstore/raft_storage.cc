#include "server/raftstore/raft_storage.h"

#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"
#include "server/raftstore/snapshot_stream.h"

namespace tessera::server {

namespace {

constexpr char kSnapshotFormatV1 = 0x01;

// RaftLog reports "past the last index" as kInvalidArgument; raft wants
// kUnavailable.
absl::Status ToRaftCode(absl::Status s) {
  if (s.code() == absl::StatusCode::kInvalidArgument) return absl::UnavailableError(s.message());
  return s;
}

bool SameConf(const raftpb::ConfState& a, const raftpb::ConfState& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RaftStorage>> RaftStorage::Open(ShardId shard, storage::RaftLog* log,
                                                               storage::KvStore* kv,
                                                               SnapshotExchange* exchange) {
  std::unique_ptr<RaftStorage> s(new RaftStorage(shard, log, kv, exchange));
  TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log->State(shard));
  s->first_index_ = state.first_index;
  s->last_index_ = state.last_index;
  s->recorded_ = state.snapshot;
  TESSERA_ASSIGN_OR_RETURN(s->truncated_term_, log->Term(shard, state.first_index - 1));
  if (state.last_index >= state.first_index) {
    TESSERA_ASSIGN_OR_RETURN(s->last_term_, log->Term(shard, state.last_index));
  } else {
    s->last_term_ = s->truncated_term_;
  }
  s->applied_index_ = state.first_index - 1;
  s->base_conf_ = state.snapshot.conf_state();
  return s;
}

absl::Status RaftStorage::InitialState(raftpb::HardState* hs, raftpb::ConfState* cs) const {
  TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(shard_));
  *hs = state.hard_state;
  *cs = base_conf_;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<raftpb::Entry>> RaftStorage::Entries(uint64_t lo, uint64_t hi,
                                                                uint64_t max_bytes) const {
  if (lo < first_index_) {
    return absl::OutOfRangeError(absl::StrCat("entry ", lo, " is compacted"));
  }
  if (hi > last_index_ + 1) {
    return absl::UnavailableError(absl::StrCat("entries up to ", hi, " beyond last ", last_index_));
  }
  if (lo > hi) return absl::InvalidArgumentError("lo > hi");
  absl::StatusOr<std::vector<raftpb::Entry>> ents = log_->Entries(shard_, lo, hi, max_bytes);
  if (!ents.ok()) return ToRaftCode(ents.status());
  return ents;
}

absl::StatusOr<uint64_t> RaftStorage::Term(uint64_t index) const {
  if (index + 1 < first_index_) {
    return absl::OutOfRangeError(absl::StrCat("term of ", index, " is compacted"));
  }
  if (index > last_index_) {
    return absl::UnavailableError(absl::StrCat("term of ", index, " beyond last ", last_index_));
  }
  if (index + 1 == first_index_) return truncated_term_;
  if (index == last_index_) return last_term_;
  absl::StatusOr<uint64_t> t = log_->Term(shard_, index);
  if (!t.ok()) return ToRaftCode(t.status());
  return t;
}

uint64_t RaftStorage::FirstIndex() const { return first_index_; }

uint64_t RaftStorage::LastIndex() const { return last_index_; }

absl::StatusOr<raftpb::Snapshot> RaftStorage::Snapshot() const {
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(shard_));
  if (applied != applied_index_ || applied + 1 < first_index_ || applied > last_index_) {
    return absl::UnavailableError(absl::StrCat("snapshot not ready: store applied ", applied,
                                               ", raft applied ", applied_index_, ", log [",
                                               first_index_, ", ", last_index_, "]"));
  }
  absl::StatusOr<uint64_t> term = Term(applied);
  if (!term.ok()) return absl::UnavailableError(term.status().message());
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<storage::ShardSnapshot> exported,
                           kv_->ExportSnapshot(shard_));
  if (exported->applied_index() != applied) {
    return absl::UnavailableError("the store moved while exporting; retry");
  }
  raftpb::Snapshot snap;
  if (exchange_ != nullptr) {
    // Only the pinned view's token: the transport streams the records.
    TESSERA_ASSIGN_OR_RETURN(*snap.mutable_data(),
                             exchange_->AddExport(shard_, std::move(exported)));
  } else {
    TESSERA_ASSIGN_OR_RETURN(*snap.mutable_data(), EncodeSnapshotData(*exported));
  }
  raftpb::SnapshotMetadata* meta = snap.mutable_metadata();
  meta->set_index(applied);
  meta->set_term(*term);
  *meta->mutable_conf_state() = ConfStateAt(applied);
  return snap;
}

void RaftStorage::Saved(const storage::LogUpdate& update) {
  if (update.snapshot.has_value()) {
    const raftpb::SnapshotMetadata& meta = *update.snapshot;
    first_index_ = meta.index() + 1;
    last_index_ = meta.index();
    truncated_term_ = meta.term();
    last_term_ = meta.term();
    recorded_ = meta;
    base_conf_ = meta.conf_state();
    conf_changes_.clear();
    applied_index_ = meta.index();
  }
  if (!update.entries.empty()) {
    last_index_ = update.entries.back().index();
    last_term_ = update.entries.back().term();
  }
}

void RaftStorage::ConfChanged(uint64_t index, raftpb::ConfState cs) {
  conf_changes_.emplace_back(index, std::move(cs));
}

raftpb::ConfState RaftStorage::ConfStateAt(uint64_t index) const {
  for (auto it = conf_changes_.rbegin(); it != conf_changes_.rend(); ++it) {
    if (it->first <= index) return it->second;
  }
  return base_conf_;
}

absl::Status RaftStorage::Compact(uint64_t index) {
  if (index < first_index_) return absl::OkStatus();
  if (index > applied_index_ || index > last_index_) {
    return absl::FailedPreconditionError(absl::StrCat("cannot compact to ", index, ": applied ",
                                                      applied_index_, ", last ", last_index_));
  }
  TESSERA_ASSIGN_OR_RETURN(uint64_t term, Term(index));
  raftpb::ConfState cs = ConfStateAt(index);
  // The raft log and the KvStore are separate engines: the compaction may
  // become durable at the log's next sync, so the applied data it relies on
  // (entries <= index, applied unsynced) must be durable first. Otherwise a
  // power loss could keep the compaction and lose the applies, leaving
  // entries that nothing can re-apply.
  TESSERA_RETURN_IF_ERROR(kv_->Sync());
  if (SameConf(cs, recorded_.conf_state())) {
    TESSERA_RETURN_IF_ERROR(log_->Compact(shard_, index));
  } else {
    // Record the membership at `index`: a snapshot point discards the whole
    // log, so the entries after it are written again in the same batch.
    storage::LogUpdate update;
    update.shard = shard_;
    raftpb::SnapshotMetadata& meta = update.snapshot.emplace();
    meta.set_index(index);
    meta.set_term(term);
    *meta.mutable_conf_state() = cs;
    if (index < last_index_) {
      TESSERA_ASSIGN_OR_RETURN(update.entries, log_->Entries(shard_, index + 1, last_index_ + 1,
                                                             std::numeric_limits<uint64_t>::max()));
    }
    TESSERA_RETURN_IF_ERROR(log_->Save({update}));
    recorded_ = meta;
  }
  first_index_ = index + 1;
  truncated_term_ = term;
  base_conf_ = std::move(cs);
  std::erase_if(conf_changes_, [index](const auto& c) { return c.first <= index; });
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeSnapshotData(storage::ShardSnapshot& snapshot) {
  std::string out;
  out.push_back(kSnapshotFormatV1);
  storage::SnapshotRecord record;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(bool more, snapshot.Next(&record));
    if (!more) break;
    AppendSnapshotRecord(record, &out);
  }
  return out;
}

absl::StatusOr<bool> SnapshotDataReader::Next(storage::SnapshotRecord* out) {
  if (!header_read_) {
    if (data_.empty() || data_.front() != kSnapshotFormatV1) {
      return absl::DataLossError("snapshot data: unknown format version");
    }
    data_.remove_prefix(1);
    header_read_ = true;
  }
  if (data_.empty()) return false;
  if (data_.front() != 0x00 && data_.front() != 0x01) {
    return absl::DataLossError("snapshot data: bad record kind");
  }
  if (!ParseSnapshotRecord(&data_, out)) {
    return absl::DataLossError("snapshot data: truncated record");
  }
  return true;
}

}  // namespace tessera::server
