#include "storage/log_meta.h"

#include "absl/strings/str_cat.h"

namespace tessera::storage::internal {

LogState ShardLogMeta::ToState() const {
  LogState state;
  state.hard_state = hard_state;
  state.snapshot = snapshot;
  state.first_index = first_index();
  state.last_index = last_index;
  return state;
}

absl::Status PlanLogUpdate(const LogUpdate& update, ShardLogMeta* meta,
                           std::vector<IndexRange>* deletes) {
  ShardLogMeta next = *meta;
  std::vector<IndexRange> planned;
  if (update.snapshot.has_value()) {
    const raftpb::SnapshotMetadata& snap = *update.snapshot;
    if (snap.index() < next.truncated_index) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", update.shard, ": snapshot index ", snap.index(),
                       " is older than the truncated index ", next.truncated_index));
    }
    if (next.last_index > next.truncated_index) {
      planned.push_back({next.first_index(), next.last_index});
    }
    next.snapshot = snap;
    next.truncated_index = snap.index();
    next.truncated_term = snap.term();
    next.last_index = snap.index();
    next.last_term = snap.term();
  }
  if (!update.entries.empty()) {
    const uint64_t first = update.entries.front().index();
    for (size_t i = 0; i < update.entries.size(); ++i) {
      const raftpb::Entry& e = update.entries[i];
      if (e.index() != first + i) {
        return absl::InvalidArgumentError(
            absl::StrCat("shard ", update.shard, ": entries not contiguous at position ", i,
                         " (index ", e.index(), ", expected ", first + i, ")"));
      }
      if (i > 0 && e.term() < update.entries[i - 1].term()) {
        return absl::InvalidArgumentError(absl::StrCat("shard ", update.shard, ": entry ",
                                                       e.index(),
                                                       " has a lower term than its predecessor"));
      }
    }
    if (first <= next.truncated_index) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", update.shard, ": entry ", first,
                                                     " is at or below the truncated index ",
                                                     next.truncated_index));
    }
    if (first > next.last_index + 1) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", update.shard, ": append at ", first,
                                                     " leaves a gap after last index ",
                                                     next.last_index));
    }
    const uint64_t new_last = update.entries.back().index();
    if (new_last < next.last_index) {
      // The conflicting suffix beyond the new entries; the rest is overwritten.
      planned.push_back({new_last + 1, next.last_index});
    }
    next.last_index = new_last;
    next.last_term = update.entries.back().term();
  }
  if (update.hard_state.has_value()) next.hard_state = *update.hard_state;
  *meta = std::move(next);
  deletes->insert(deletes->end(), planned.begin(), planned.end());
  return absl::OkStatus();
}

absl::Status CheckEntriesRange(const ShardLogMeta& meta, uint64_t lo, uint64_t hi) {
  if (lo > hi) {
    return absl::InvalidArgumentError(absl::StrCat("entries: lo ", lo, " > hi ", hi));
  }
  if (lo < meta.first_index()) {
    return absl::OutOfRangeError(
        absl::StrCat("entries: ", lo, " is compacted (first index ", meta.first_index(), ")"));
  }
  if (hi > meta.last_index + 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("entries: hi ", hi, " is beyond last index ", meta.last_index, " + 1"));
  }
  return absl::OkStatus();
}

absl::Status CheckTermIndex(const ShardLogMeta& meta, uint64_t index, bool* answered,
                            uint64_t* term) {
  *answered = false;
  if (index < meta.truncated_index) {
    return absl::OutOfRangeError(absl::StrCat("term: ", index, " is compacted (truncated index ",
                                              meta.truncated_index, ")"));
  }
  if (index > meta.last_index) {
    return absl::InvalidArgumentError(
        absl::StrCat("term: ", index, " is beyond last index ", meta.last_index));
  }
  if (index == meta.truncated_index) {
    *answered = true;
    *term = meta.truncated_term;
  } else if (index == meta.last_index) {
    *answered = true;
    *term = meta.last_term;
  }
  return absl::OkStatus();
}

absl::Status CheckCompactIndex(const ShardLogMeta& meta, uint64_t index) {
  if (index < meta.first_index()) {
    return absl::OutOfRangeError(absl::StrCat(
        "compact: ", index, " is already compacted (first index ", meta.first_index(), ")"));
  }
  if (index > meta.last_index) {
    return absl::InvalidArgumentError(
        absl::StrCat("compact: ", index, " is beyond last index ", meta.last_index));
  }
  return absl::OkStatus();
}

}  // namespace tessera::storage::internal
