// Membership changes (etcd-io/raft confchange/): computes the configuration
// and progress map that result from a ConfChange, without touching the
// tracker it starts from. Errors mean the change is invalid for the current
// configuration; the leader checks proposals with the same code, so a
// committed change never fails to apply.
#ifndef TESSERA_RAFT_CONFCHANGE_H_
#define TESSERA_RAFT_CONFCHANGE_H_

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "raft/progress.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

using ConfigAndProgress = std::pair<TrackerConfig, ProgressMap>;

// True if `cc` leaves a joint configuration (no changes, AUTO transition).
bool LeavesJoint(const raftpb::ConfChange& cc);
// True if `cc` enters a joint configuration; *auto_leave tells whether it is
// left automatically.
bool EntersJoint(const raftpb::ConfChange& cc, bool* auto_leave);

class Changer {
 public:
  Changer(const ProgressTracker& tracker, uint64_t last_index)
      : tracker_(tracker), last_index_(last_index) {}

  // Enters a joint config: outgoing := current voters, incoming := current
  // voters with `cc` applied. kFailedPrecondition if already joint.
  absl::StatusOr<ConfigAndProgress> EnterJoint(bool auto_leave, const raftpb::ConfChange& cc) const;
  // Leaves the joint config: drops outgoing, demotes learners_next.
  // kFailedPrecondition if not joint.
  absl::StatusOr<ConfigAndProgress> LeaveJoint() const;
  // A single-step change, changing at most one voter. kFailedPrecondition if
  // joint, kInvalidArgument if more than one voter changes.
  absl::StatusOr<ConfigAndProgress> Simple(const raftpb::ConfChange& cc) const;
  // Dispatches on the kind of `cc` (leave, enter joint, or simple).
  absl::StatusOr<ConfigAndProgress> Apply(const raftpb::ConfChange& cc) const;

 private:
  const ProgressTracker& tracker_;
  uint64_t last_index_;
};

// Rebuilds the configuration described by `cs` from scratch (at startup and
// on snapshot restore).
absl::StatusOr<ConfigAndProgress> RestoreConfig(const raftpb::ConfState& cs, size_t max_inflight,
                                                uint64_t max_inflight_bytes, uint64_t last_index);

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_CONFCHANGE_H_
