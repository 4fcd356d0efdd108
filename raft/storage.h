// Storage: raft's read-only view of the persisted log.
//
// The application owns the persisted state: it writes Ready::entries,
// Ready::hard_state and Ready::snapshot to its storage and raft reads them
// back through this interface (as in etcd-io/raft storage.go). Positions:
//
//   [ snapshot (index S, term T) ][ entry S+1 ][ entry S+2 ] ... [ LastIndex ]
//                                  ^ FirstIndex() == S + 1
//
// Term(S) must be answerable (it is the snapshot's term), everything before S
// is compacted. An empty log has S == 0 and term 0.
#ifndef TESSERA_RAFT_STORAGE_H_
#define TESSERA_RAFT_STORAGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

// True if `s` says the requested index was compacted away (kOutOfRange). The
// leader then sends a snapshot instead of entries.
bool IsCompacted(const absl::Status& s);

// Read-only view of the persisted log (the application writes it). Raft calls
// it from the thread that drives the RawNode only.
class Storage {
 public:
  virtual ~Storage() = default;
  // Persisted HardState and ConfState at startup. The ConfState is the one of
  // the latest snapshot; conf changes in later entries are re-applied by the
  // application (ApplyConfChange) when it re-applies those entries.
  virtual absl::Status InitialState(raftpb::HardState* hs, raftpb::ConfState* cs) const = 0;
  // Entries [lo, hi), at most max_bytes total (sum of Entry::ByteSizeLong) but
  // at least one entry if any. kOutOfRange (see IsCompacted) if lo <= the
  // snapshot index; kUnavailable if hi > LastIndex()+1.
  virtual absl::StatusOr<std::vector<raftpb::Entry>> Entries(uint64_t lo, uint64_t hi,
                                                             uint64_t max_bytes) const = 0;
  // Term of entry `index`; the snapshot index's term is answerable.
  // kOutOfRange if index < snapshot index, kUnavailable if index > LastIndex().
  virtual absl::StatusOr<uint64_t> Term(uint64_t index) const = 0;
  // Index of the first entry that Entries can return (snapshot index + 1).
  virtual uint64_t FirstIndex() const = 0;
  // Index of the last entry (the snapshot index if there are no entries).
  virtual uint64_t LastIndex() const = 0;
  // The most recent snapshot. kUnavailable if it is temporarily not ready
  // (raft retries later).
  virtual absl::StatusOr<raftpb::Snapshot> Snapshot() const = 0;
};

// Thread-unsafe in-memory Storage, for tests and the simulator. It is both
// the raft-side view and the application-side writer: the Ready loop calls
// ApplySnapshot / Append / SetHardState and raft reads it back.
//
// Bootstrapping a new group: apply a snapshot at index 1, term 1 whose
// conf_state lists the initial voters (see raw_node.h).
class MemoryStorage : public Storage {
 public:
  MemoryStorage();

  absl::Status InitialState(raftpb::HardState* hs, raftpb::ConfState* cs) const override;
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(uint64_t index) const override;
  uint64_t FirstIndex() const override;
  uint64_t LastIndex() const override;
  absl::StatusOr<raftpb::Snapshot> Snapshot() const override;

  // Appends entries (consecutive indexes). Entries at or below the snapshot
  // index are skipped; an entry whose index is already present replaces it
  // and everything after it (the conflicting suffix). kInvalidArgument if the
  // first new entry would leave a gap after LastIndex().
  absl::Status Append(const std::vector<raftpb::Entry>& entries);
  void SetHardState(const raftpb::HardState& hs);
  const raftpb::HardState& hard_state() const { return hard_state_; }
  // Replaces the whole log with `snap`. kFailedPrecondition if snap is older
  // than the current snapshot (a smaller index). A snapshot at the same index
  // is accepted.
  absl::Status ApplySnapshot(const raftpb::Snapshot& snap);
  // Records a snapshot of the application state at `index` (which must be
  // applied, hence <= LastIndex()) with optional new membership `cs` and
  // returns it. Does not compact; call Compact afterwards. kFailedPrecondition
  // if index <= the current snapshot index (out of date); kInvalidArgument if
  // index > LastIndex().
  absl::StatusOr<raftpb::Snapshot> CreateSnapshot(uint64_t index, const raftpb::ConfState* cs,
                                                  std::string data);
  // Discards entries up to and including compact_index: afterwards
  // FirstIndex() == compact_index + 1 and Term(compact_index) still answers.
  // The application must not compact past its applied index, and should
  // CreateSnapshot at an index >= compact_index first, so that a follower that
  // needs a discarded entry can be sent a snapshot instead.
  // kOutOfRange if compact_index <= the current first index - 1 (already
  // compacted), kInvalidArgument if compact_index > LastIndex().
  absl::Status Compact(uint64_t compact_index);

 private:
  uint64_t offset() const { return ents_[0].index(); }

  raftpb::HardState hard_state_;
  raftpb::Snapshot snapshot_;
  // ents_[0] is a dummy entry holding the index and term of the last
  // compacted entry (the snapshot's, initially 0/0); ents_[i] has index
  // offset() + i.
  std::vector<raftpb::Entry> ents_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_STORAGE_H_
