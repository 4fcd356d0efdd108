#include "raft/storage.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "raft/util.h"

namespace tessera::raft {

bool IsCompacted(const absl::Status& s) { return s.code() == absl::StatusCode::kOutOfRange; }

void LimitSize(std::vector<raftpb::Entry>* ents, uint64_t max_bytes) {
  if (ents->empty()) return;
  uint64_t size = EntrySize((*ents)[0]);
  size_t limit = 1;
  for (; limit < ents->size(); ++limit) {
    size += EntrySize((*ents)[limit]);
    if (size > max_bytes) break;
  }
  ents->resize(limit);
}

bool IsEmptySnapshot(const raftpb::Snapshot& s) { return s.metadata().index() == 0; }

bool IsEmptyHardState(const raftpb::HardState& hs) {
  return hs.term() == 0 && hs.vote() == 0 && hs.commit() == 0;
}

bool HardStateEqual(const raftpb::HardState& a, const raftpb::HardState& b) {
  return a.term() == b.term() && a.vote() == b.vote() && a.commit() == b.commit();
}

MemoryStorage::MemoryStorage() { ents_.resize(1); }

absl::Status MemoryStorage::InitialState(raftpb::HardState* hs, raftpb::ConfState* cs) const {
  *hs = hard_state_;
  *cs = snapshot_.metadata().conf_state();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<raftpb::Entry>> MemoryStorage::Entries(uint64_t lo, uint64_t hi,
                                                                  uint64_t max_bytes) const {
  if (lo <= offset()) {
    return absl::OutOfRangeError(absl::StrCat("requested index ", lo, " is compacted"));
  }
  if (hi > LastIndex() + 1) {
    return absl::UnavailableError(
        absl::StrCat("entries [", lo, ", ", hi, ") beyond last index ", LastIndex()));
  }
  std::vector<raftpb::Entry> out;
  if (lo >= hi) return out;
  uint64_t size = 0;
  for (uint64_t i = lo; i < hi; ++i) {
    const raftpb::Entry& e = ents_[i - offset()];
    size += EntrySize(e);
    if (!out.empty() && size > max_bytes) break;
    out.push_back(e);
  }
  return out;
}

absl::StatusOr<uint64_t> MemoryStorage::Term(uint64_t index) const {
  if (index < offset()) {
    return absl::OutOfRangeError(absl::StrCat("requested index ", index, " is compacted"));
  }
  if (index - offset() >= ents_.size()) {
    return absl::UnavailableError(
        absl::StrCat("requested index ", index, " beyond last index ", LastIndex()));
  }
  return ents_[index - offset()].term();
}

uint64_t MemoryStorage::FirstIndex() const { return offset() + 1; }

uint64_t MemoryStorage::LastIndex() const { return offset() + ents_.size() - 1; }

absl::StatusOr<raftpb::Snapshot> MemoryStorage::Snapshot() const { return snapshot_; }

absl::Status MemoryStorage::Append(const std::vector<raftpb::Entry>& entries) {
  if (entries.empty()) return absl::OkStatus();
  for (size_t i = 1; i < entries.size(); ++i) {
    if (entries[i].index() != entries[i - 1].index() + 1) {
      return absl::InvalidArgumentError("Append: entries are not consecutive");
    }
  }
  const uint64_t first = FirstIndex();
  const uint64_t last = entries.back().index();
  if (last < first) return absl::OkStatus();  // all already compacted
  size_t skip = entries.front().index() < first ? first - entries.front().index() : 0;
  const uint64_t start = entries[skip].index();
  if (start > LastIndex() + 1) {
    return absl::InvalidArgumentError(absl::StrCat("Append: missing log entries: last index ",
                                                   LastIndex(), ", appended from ", start));
  }
  ents_.resize(start - offset());  // drop the conflicting suffix, if any
  ents_.insert(ents_.end(), entries.begin() + skip, entries.end());
  return absl::OkStatus();
}

void MemoryStorage::SetHardState(const raftpb::HardState& hs) { hard_state_ = hs; }

absl::Status MemoryStorage::ApplySnapshot(const raftpb::Snapshot& snap) {
  if (snap.metadata().index() < snapshot_.metadata().index()) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot at ", snap.metadata().index(),
                                                      " is older than the stored one at ",
                                                      snapshot_.metadata().index()));
  }
  snapshot_ = snap;
  ents_.clear();
  ents_.resize(1);
  ents_[0].set_index(snap.metadata().index());
  ents_[0].set_term(snap.metadata().term());
  return absl::OkStatus();
}

absl::StatusOr<raftpb::Snapshot> MemoryStorage::CreateSnapshot(uint64_t index,
                                                               const raftpb::ConfState* cs,
                                                               std::string data) {
  if (index <= snapshot_.metadata().index()) {
    return absl::FailedPreconditionError(absl::StrCat("snapshot at ", index, " is out of date"));
  }
  if (index > LastIndex()) {
    return absl::InvalidArgumentError(
        absl::StrCat("snapshot index ", index, " beyond last index ", LastIndex()));
  }
  if (index < offset()) {
    return absl::OutOfRangeError(absl::StrCat("snapshot index ", index, " is compacted"));
  }
  raftpb::SnapshotMetadata* md = snapshot_.mutable_metadata();
  md->set_index(index);
  md->set_term(ents_[index - offset()].term());
  if (cs != nullptr) *md->mutable_conf_state() = *cs;
  snapshot_.set_data(std::move(data));
  return snapshot_;
}

absl::Status MemoryStorage::Compact(uint64_t compact_index) {
  if (compact_index <= offset()) {
    return absl::OutOfRangeError(absl::StrCat("index ", compact_index, " already compacted"));
  }
  if (compact_index > LastIndex()) {
    return absl::InvalidArgumentError(
        absl::StrCat("compact index ", compact_index, " beyond last index ", LastIndex()));
  }
  const size_t i = compact_index - offset();
  std::vector<raftpb::Entry> kept;
  kept.reserve(ents_.size() - i);
  kept.emplace_back();
  kept[0].set_index(ents_[i].index());
  kept[0].set_term(ents_[i].term());
  for (size_t j = i + 1; j < ents_.size(); ++j) kept.push_back(std::move(ents_[j]));
  ents_ = std::move(kept);
  return absl::OkStatus();
}

}  // namespace tessera::raft
