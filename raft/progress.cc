#include "raft/progress.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "raft/util.h"

namespace tessera::raft {

void Inflights::Add(uint64_t index, uint64_t bytes) {
  if (count_ == capacity_) TESSERA_RAFT_FATAL("cannot add into a full inflights window");
  size_t next = start_ + count_;
  if (buffer_.size() < capacity_ && count_ == buffer_.size()) {
    // Grow (doubling, up to capacity), unrolling the ring into the new buffer.
    std::vector<Item> grown(std::min(capacity_, std::max<size_t>(1, buffer_.size() * 2)));
    for (size_t i = 0; i < count_; ++i) grown[i] = buffer_[(start_ + i) % buffer_.size()];
    buffer_ = std::move(grown);
    start_ = 0;
    next = count_;
  }
  buffer_[next % buffer_.size()] = Item{index, bytes};
  ++count_;
  bytes_ += bytes;
}

void Inflights::FreeLE(uint64_t to) {
  if (count_ == 0 || to < buffer_[start_].index) return;
  size_t i = 0;
  size_t idx = start_;
  for (; i < count_; ++i) {
    if (to < buffer_[idx].index) break;
    bytes_ -= buffer_[idx].bytes;
    if (++idx >= buffer_.size()) idx = 0;
  }
  count_ -= i;
  start_ = idx;
  if (count_ == 0) start_ = 0;
}

const char* ProgressStateName(ProgressState s) {
  switch (s) {
    case ProgressState::kProbe:
      return "probe";
    case ProgressState::kReplicate:
      return "replicate";
    case ProgressState::kSnapshot:
      return "snapshot";
  }
  return "?";
}

void Progress::ResetState(ProgressState s) {
  probe_sent = false;
  pending_snapshot = 0;
  state = s;
  inflights.Reset();
}

void Progress::BecomeProbe() {
  if (state == ProgressState::kSnapshot) {
    // After a snapshot, resume right after it (or after match if higher).
    const uint64_t pending = pending_snapshot;
    ResetState(ProgressState::kProbe);
    next = std::max(match + 1, pending + 1);
  } else {
    ResetState(ProgressState::kProbe);
    next = match + 1;
  }
}

void Progress::BecomeReplicate() {
  ResetState(ProgressState::kReplicate);
  next = match + 1;
}

void Progress::BecomeSnapshot(uint64_t snapshot_index) {
  ResetState(ProgressState::kSnapshot);
  pending_snapshot = snapshot_index;
}

void Progress::SentEntries(uint64_t last, uint64_t bytes) {
  switch (state) {
    case ProgressState::kReplicate:
      next = last + 1;  // optimistic: assume it arrives
      inflights.Add(last, bytes);
      break;
    case ProgressState::kProbe:
      probe_sent = true;
      break;
    case ProgressState::kSnapshot:
      TESSERA_RAFT_FATAL("sending entries to a follower in snapshot state");
  }
}

bool Progress::MaybeUpdate(uint64_t n) {
  bool updated = false;
  if (match < n) {
    match = n;
    updated = true;
    probe_sent = false;
  }
  next = std::max(next, n + 1);
  return updated;
}

bool Progress::MaybeDecrTo(uint64_t rejected, uint64_t match_hint) {
  if (state == ProgressState::kReplicate) {
    // A rejection of an index at or below match is stale (reordered).
    if (rejected <= match) return false;
    // Directly fall back to the last known match; the caller moves to probe.
    next = match + 1;
    return true;
  }
  // In probe only the rejection of the probe we sent (next-1) counts.
  if (next == 0 || next - 1 != rejected) return false;
  next = std::max(std::min(rejected, match_hint + 1), match + 1);
  probe_sent = false;
  return true;
}

bool Progress::IsPaused() const {
  switch (state) {
    case ProgressState::kProbe:
      return probe_sent;
    case ProgressState::kReplicate:
      return inflights.Full();
    case ProgressState::kSnapshot:
      return true;
  }
  return true;
}

std::string Progress::DebugString() const {
  std::string s = absl::StrCat(ProgressStateName(state), " match=", match, " next=", next);
  if (is_learner) absl::StrAppend(&s, " learner");
  if (probe_sent) absl::StrAppend(&s, " paused");
  if (pending_snapshot > 0) absl::StrAppend(&s, " pending_snap=", pending_snapshot);
  if (!recent_active) absl::StrAppend(&s, " inactive");
  if (inflights.Count() > 0) absl::StrAppend(&s, " inflight=", inflights.Count());
  return s;
}

raftpb::ConfState ProgressTracker::ConfState() const {
  raftpb::ConfState cs;
  for (uint64_t id : config.voters.incoming.ids()) cs.add_voters(id);
  for (uint64_t id : config.voters.outgoing.ids()) cs.add_voters_outgoing(id);
  for (uint64_t id : config.learners) cs.add_learners(id);
  for (uint64_t id : config.learners_next) cs.add_learners_next(id);
  cs.set_auto_leave(config.auto_leave);
  return cs;
}

uint64_t ProgressTracker::Committed() const {
  return config.voters.CommittedIndex([this](uint64_t id, uint64_t* index) {
    auto it = progress.find(id);
    if (it == progress.end()) return false;
    *index = it->second.match;
    return true;
  });
}

bool ProgressTracker::QuorumActive() const {
  std::map<uint64_t, bool> votes;
  for (const auto& [id, pr] : progress) {
    if (pr.is_learner) continue;
    votes[id] = pr.recent_active;
  }
  return config.voters.Vote(votes) == VoteResult::kWon;
}

Progress* ProgressTracker::Find(uint64_t id) {
  auto it = progress.find(id);
  return it == progress.end() ? nullptr : &it->second;
}

void ProgressTracker::RecordVote(uint64_t id, bool granted) {
  votes_.try_emplace(id, granted);  // the first vote counts
}

VoteResult ProgressTracker::TallyVotes(int* granted, int* rejected) const {
  *granted = 0;
  *rejected = 0;
  for (const auto& [id, pr] : progress) {
    if (pr.is_learner) continue;
    auto it = votes_.find(id);
    if (it == votes_.end()) continue;
    if (it->second) {
      ++*granted;
    } else {
      ++*rejected;
    }
  }
  return config.voters.Vote(votes_);
}

}  // namespace tessera::raft
