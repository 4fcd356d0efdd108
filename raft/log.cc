#include "raft/log.h"

#include <algorithm>
#include <iterator>
#include <optional>
#include <utility>
#include <vector>

#include "raft/util.h"

namespace tessera::raft {

// ---- Unstable ----

std::optional<uint64_t> Unstable::MaybeFirstIndex() const {
  if (snapshot.has_value()) return snapshot->metadata().index() + 1;
  return std::nullopt;
}

std::optional<uint64_t> Unstable::MaybeLastIndex() const {
  if (!entries.empty()) return offset + entries.size() - 1;
  if (snapshot.has_value()) return snapshot->metadata().index();
  return std::nullopt;
}

std::optional<uint64_t> Unstable::MaybeTerm(uint64_t i) const {
  if (i < offset) {
    if (snapshot.has_value() && snapshot->metadata().index() == i) {
      return snapshot->metadata().term();
    }
    return std::nullopt;
  }
  std::optional<uint64_t> last = MaybeLastIndex();
  if (!last.has_value() || i > *last) return std::nullopt;
  if (i - offset >= entries.size()) {
    // Only the snapshot is unstable and i is its index + 0: handled above.
    return std::nullopt;
  }
  return entries[i - offset].term();
}

void Unstable::StableTo(uint64_t i, uint64_t t) {
  std::optional<uint64_t> gt = MaybeTerm(i);
  if (!gt.has_value()) return;
  // Only stabilize if the entry was not replaced by a newer one meanwhile.
  if (*gt == t && i >= offset) {
    entries.erase(entries.begin(), entries.begin() + static_cast<ptrdiff_t>(i + 1 - offset));
    offset = i + 1;
  }
}

void Unstable::StableSnapTo(uint64_t i) {
  if (snapshot.has_value() && snapshot->metadata().index() == i) snapshot.reset();
}

void Unstable::Restore(const raftpb::Snapshot& s) {
  offset = s.metadata().index() + 1;
  entries.clear();
  snapshot = s;
}

void Unstable::TruncateAndAppend(std::vector<raftpb::Entry> ents) {
  const uint64_t after = ents.front().index();
  if (after == offset + entries.size()) {
    if (entries.empty()) {
      entries = std::move(ents);
    } else {
      entries.insert(entries.end(), std::make_move_iterator(ents.begin()),
                     std::make_move_iterator(ents.end()));
    }
  } else if (after <= offset) {
    // Replaces all unstable entries; the storage suffix from `after` on is
    // replaced too once these are persisted.
    offset = after;
    entries = std::move(ents);
  } else {
    entries.resize(after - offset);
    entries.insert(entries.end(), std::make_move_iterator(ents.begin()),
                   std::make_move_iterator(ents.end()));
  }
}

void Unstable::Slice(uint64_t lo, uint64_t hi, std::vector<raftpb::Entry>* out) const {
  if (lo > hi || lo < offset || hi > offset + entries.size()) {
    TESSERA_RAFT_FATAL("unstable.Slice[%llu,%llu) out of bounds [%llu,%llu]", ull(lo), ull(hi),
                       ull(offset), ull(offset + entries.size()));
  }
  out->insert(out->end(), entries.begin() + static_cast<ptrdiff_t>(lo - offset),
              entries.begin() + static_cast<ptrdiff_t>(hi - offset));
}

// ---- RaftLog ----

RaftLog::RaftLog(const Storage* storage, uint64_t max_next_ents_size)
    : storage_(storage), max_next_ents_size_(max_next_ents_size) {
  const uint64_t first = storage_->FirstIndex();
  const uint64_t last = storage_->LastIndex();
  unstable_.offset = last + 1;
  committed_ = first - 1;
  applied_ = first - 1;
}

std::optional<uint64_t> RaftLog::MaybeAppend(uint64_t index, uint64_t log_term, uint64_t committed,
                                             std::vector<raftpb::Entry> ents) {
  if (!MatchTerm(index, log_term)) return std::nullopt;
  const uint64_t last_new = index + ents.size();
  const uint64_t ci = FindConflict(ents);
  if (ci != 0) {
    if (ci <= committed_) {
      TESSERA_RAFT_FATAL("entry %llu conflicts with committed entry (committed %llu)", ull(ci),
                         ull(committed_));
    }
    const uint64_t skip = ci - (index + 1);
    ents.erase(ents.begin(), ents.begin() + static_cast<ptrdiff_t>(skip));
    Append(std::move(ents));
  }
  CommitTo(std::min(committed, last_new));
  return last_new;
}

uint64_t RaftLog::Append(std::vector<raftpb::Entry> ents) {
  if (ents.empty()) return LastIndex();
  const uint64_t after = ents.front().index() - 1;
  if (after < committed_) {
    TESSERA_RAFT_FATAL("append after %llu is out of range: committed %llu", ull(after),
                       ull(committed_));
  }
  unstable_.TruncateAndAppend(std::move(ents));
  return LastIndex();
}

uint64_t RaftLog::FindConflict(const std::vector<raftpb::Entry>& ents) const {
  for (const raftpb::Entry& e : ents) {
    if (!MatchTerm(e.index(), e.term())) return e.index();
  }
  return 0;
}

std::pair<uint64_t, uint64_t> RaftLog::FindConflictByTerm(uint64_t index, uint64_t term) const {
  if (index > LastIndex()) return {index, 0};
  for (; index > 0; --index) {
    absl::StatusOr<uint64_t> t = Term(index);
    if (!t.ok()) return {index, 0};
    if (*t <= term) return {index, *t};
  }
  return {0, 0};
}

std::vector<raftpb::Entry> RaftLog::NextEntries() const {
  const uint64_t off = std::max(applied_ + 1, FirstIndex());
  if (committed_ + 1 <= off) return {};
  absl::StatusOr<std::vector<raftpb::Entry>> ents = Slice(off, committed_ + 1, max_next_ents_size_);
  if (!ents.ok()) {
    TESSERA_RAFT_FATAL("cannot read committed entries [%llu,%llu]: %s", ull(off), ull(committed_),
                       ents.status().ToString().c_str());
  }
  return *std::move(ents);
}

bool RaftLog::HasNextEntries() const {
  return committed_ + 1 > std::max(applied_ + 1, FirstIndex());
}

absl::StatusOr<raftpb::Snapshot> RaftLog::Snapshot() const {
  if (unstable_.snapshot.has_value()) return *unstable_.snapshot;
  return storage_->Snapshot();
}

uint64_t RaftLog::FirstIndex() const {
  if (std::optional<uint64_t> i = unstable_.MaybeFirstIndex()) return *i;
  return storage_->FirstIndex();
}

uint64_t RaftLog::LastIndex() const {
  if (std::optional<uint64_t> i = unstable_.MaybeLastIndex()) return *i;
  return storage_->LastIndex();
}

uint64_t RaftLog::LastTerm() const {
  absl::StatusOr<uint64_t> t = Term(LastIndex());
  if (!t.ok()) {
    TESSERA_RAFT_FATAL("cannot read the last term: %s", t.status().ToString().c_str());
  }
  return *t;
}

absl::StatusOr<uint64_t> RaftLog::Term(uint64_t i) const {
  const uint64_t dummy = FirstIndex() - 1;
  if (i < dummy) return absl::OutOfRangeError("compacted");
  if (i > LastIndex()) return absl::UnavailableError("beyond the last index");
  if (std::optional<uint64_t> t = unstable_.MaybeTerm(i)) return *t;
  return storage_->Term(i);
}

uint64_t RaftLog::ZeroTermOnError(uint64_t i) const {
  absl::StatusOr<uint64_t> t = Term(i);
  return t.ok() ? *t : 0;
}

bool RaftLog::MatchTerm(uint64_t i, uint64_t term) const {
  absl::StatusOr<uint64_t> t = Term(i);
  return t.ok() && *t == term;
}

bool RaftLog::IsUpToDate(uint64_t lasti, uint64_t term) const {
  const uint64_t last_term = LastTerm();
  return term > last_term || (term == last_term && lasti >= LastIndex());
}

absl::StatusOr<std::vector<raftpb::Entry>> RaftLog::Entries(uint64_t i, uint64_t max_bytes) const {
  if (i > LastIndex()) return std::vector<raftpb::Entry>();
  return Slice(i, LastIndex() + 1, max_bytes);
}

absl::StatusOr<std::vector<raftpb::Entry>> RaftLog::Slice(uint64_t lo, uint64_t hi,
                                                          uint64_t max_bytes) const {
  if (lo > hi) TESSERA_RAFT_FATAL("invalid slice %llu > %llu", ull(lo), ull(hi));
  const uint64_t fi = FirstIndex();
  if (lo < fi) return absl::OutOfRangeError("compacted");
  if (hi > LastIndex() + 1) {
    TESSERA_RAFT_FATAL("slice[%llu,%llu) out of bound [%llu,%llu]", ull(lo), ull(hi), ull(fi),
                       ull(LastIndex()));
  }
  std::vector<raftpb::Entry> ents;
  if (lo == hi) return ents;
  if (lo < unstable_.offset) {
    const uint64_t stored_hi = std::min(hi, unstable_.offset);
    absl::StatusOr<std::vector<raftpb::Entry>> stored = storage_->Entries(lo, stored_hi, max_bytes);
    if (!stored.ok()) {
      if (IsCompacted(stored.status())) return stored.status();
      TESSERA_RAFT_FATAL("storage entries [%llu,%llu): %s", ull(lo), ull(stored_hi),
                         stored.status().ToString().c_str());
    }
    ents = *std::move(stored);
    // Size-limited: the unstable part would not fit anyway.
    if (ents.size() < stored_hi - lo) return ents;
  }
  if (hi > unstable_.offset) unstable_.Slice(std::max(lo, unstable_.offset), hi, &ents);
  LimitSize(&ents, max_bytes);
  return ents;
}

void RaftLog::CommitTo(uint64_t to_commit) {
  if (to_commit <= committed_) return;  // never decrease the commit index
  if (LastIndex() < to_commit) {
    TESSERA_RAFT_FATAL(
        "commit %llu is out of range [last index %llu]; log corrupted, truncated "
        "or lost?",
        ull(to_commit), ull(LastIndex()));
  }
  committed_ = to_commit;
}

bool RaftLog::MaybeCommit(uint64_t max_index, uint64_t term) {
  if (max_index > committed_ && ZeroTermOnError(max_index) == term) {
    CommitTo(max_index);
    return true;
  }
  return false;
}

void RaftLog::AppliedTo(uint64_t i) {
  if (i == 0) return;
  if (committed_ < i || i < applied_) {
    TESSERA_RAFT_FATAL("applied %llu is out of range [prev applied %llu, committed %llu]", ull(i),
                       ull(applied_), ull(committed_));
  }
  applied_ = i;
}

void RaftLog::Restore(const raftpb::Snapshot& s) {
  committed_ = s.metadata().index();
  unstable_.Restore(s);
}

}  // namespace tessera::raft
