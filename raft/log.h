// RaftLog: the log as raft sees it. A stable prefix in Storage (what the
// application has persisted) followed by an unstable suffix held in memory
// until the application persists it (Ready::entries / Ready::snapshot) and
// calls Advance. Also tracks commit_index and last_applied.
//
//   storage: [FirstIndex ........ LastIndex]
//   unstable:                  [offset .......... last]   (may overlap and
//                                                           replace a suffix)
// Not thread-safe; owned by Raft.
#ifndef TESSERA_RAFT_LOG_H_
#define TESSERA_RAFT_LOG_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "raft/storage.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

// Entries and/or a snapshot not yet persisted by the application.
class Unstable {
 public:
  std::optional<uint64_t> MaybeFirstIndex() const;
  std::optional<uint64_t> MaybeLastIndex() const;
  std::optional<uint64_t> MaybeTerm(uint64_t i) const;
  void StableTo(uint64_t i, uint64_t t);
  void StableSnapTo(uint64_t i);
  void Restore(const raftpb::Snapshot& s);
  void TruncateAndAppend(std::vector<raftpb::Entry> ents);
  // Appends entries [lo, hi) to *out.
  void Slice(uint64_t lo, uint64_t hi, std::vector<raftpb::Entry>* out) const;

  std::optional<raftpb::Snapshot> snapshot;
  std::vector<raftpb::Entry> entries;  // entries[i] has index offset + i
  uint64_t offset = 0;
};

class RaftLog {
 public:
  RaftLog(const Storage* storage, uint64_t max_next_ents_size);

  // The follower side of AppendEntries: if the entry at `index` has term
  // `log_term`, appends `ents` (truncating a conflicting suffix), advances the
  // commit index to min(committed, last new index) and returns the last new
  // index; otherwise nullopt.
  std::optional<uint64_t> MaybeAppend(uint64_t index, uint64_t log_term, uint64_t committed,
                                      std::vector<raftpb::Entry> ents);
  // Appends entries after the current log (truncating a suffix if they start
  // earlier); returns the new last index. Crashes if that would truncate a
  // committed entry.
  uint64_t Append(std::vector<raftpb::Entry> ents);
  // The index of the first entry of `ents` that conflicts with (or extends)
  // the log, or 0 if all of them are already present.
  uint64_t FindConflict(const std::vector<raftpb::Entry>& ents) const;
  // Fast back-off: the largest index <= `index` whose term is <= `term`, and
  // that term. Used by both sides of a rejected MsgApp.
  std::pair<uint64_t, uint64_t> FindConflictByTerm(uint64_t index, uint64_t term) const;

  std::vector<raftpb::Entry> UnstableEntries() const { return unstable_.entries; }
  bool HasUnstableEntries() const { return !unstable_.entries.empty(); }
  // Committed entries not yet applied, at most max_next_ents_size bytes.
  std::vector<raftpb::Entry> NextEntries() const;
  bool HasNextEntries() const;
  const std::optional<raftpb::Snapshot>& UnstableSnapshot() const { return unstable_.snapshot; }
  bool HasPendingSnapshot() const { return unstable_.snapshot.has_value(); }
  absl::StatusOr<raftpb::Snapshot> Snapshot() const;

  uint64_t FirstIndex() const;
  uint64_t LastIndex() const;
  uint64_t LastTerm() const;
  // kOutOfRange if compacted, kUnavailable if beyond the last index.
  absl::StatusOr<uint64_t> Term(uint64_t i) const;
  uint64_t ZeroTermOnError(uint64_t i) const;
  bool MatchTerm(uint64_t i, uint64_t term) const;
  // True if a log ending at (lasti, term) is at least as up-to-date as ours
  // (§5.4.1).
  bool IsUpToDate(uint64_t lasti, uint64_t term) const;

  // Entries [i, last], at most max_bytes (at least one).
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(uint64_t i, uint64_t max_bytes) const;
  // Entries [lo, hi), at most max_bytes (at least one).
  absl::StatusOr<std::vector<raftpb::Entry>> Slice(uint64_t lo, uint64_t hi,
                                                   uint64_t max_bytes) const;

  void CommitTo(uint64_t to_commit);
  // Commits max_index if its entry has term `term` (the current-term rule).
  bool MaybeCommit(uint64_t max_index, uint64_t term);
  void AppliedTo(uint64_t i);
  void StableTo(uint64_t i, uint64_t t) { unstable_.StableTo(i, t); }
  void StableSnapTo(uint64_t i) { unstable_.StableSnapTo(i); }
  void Restore(const raftpb::Snapshot& s);

  uint64_t committed() const { return committed_; }
  uint64_t applied() const { return applied_; }

 private:
  const Storage* storage_;
  Unstable unstable_;
  uint64_t committed_ = 0;
  uint64_t applied_ = 0;
  uint64_t max_next_ents_size_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_LOG_H_
