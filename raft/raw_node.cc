#include "raft/raw_node.h"

#include <algorithm>
#include <utility>

#include "raft/raft.h"
#include "raft/util.h"

namespace tessera::raft {

absl::StatusOr<std::unique_ptr<RawNode>> RawNode::Create(const Config& config) {
  absl::StatusOr<std::unique_ptr<Raft>> r = Raft::Create(config);
  if (!r.ok()) return r.status();
  return std::unique_ptr<RawNode>(new RawNode(*std::move(r)));
}

RawNode::RawNode(std::unique_ptr<Raft> raft) : raft_(std::move(raft)) {
  prev_soft_state_ = raft_->soft_state();
  prev_hard_state_ = raft_->hard_state();
}

RawNode::~RawNode() = default;

void RawNode::Tick() { raft_->Tick(); }
void RawNode::SetNow(Clock::time_point now) { raft_->SetNow(now); }

absl::Status RawNode::Campaign() {
  if (!raft_->Promotable()) {
    return absl::FailedPreconditionError("this node cannot campaign (learner or not a member)");
  }
  raftpb::Message m;
  m.set_type(raftpb::MSG_HUP);
  return raft_->Step(std::move(m));
}

absl::Status RawNode::Propose(std::string data) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_PROP);
  m.add_entries()->set_data(std::move(data));
  return raft_->Step(std::move(m));
}

absl::Status RawNode::ProposeConfChange(const raftpb::ConfChange& cc) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_PROP);
  raftpb::Entry* e = m.add_entries();
  e->set_type(raftpb::ENTRY_CONF_CHANGE);
  e->set_data(cc.SerializeAsString());
  return raft_->Step(std::move(m));
}

absl::StatusOr<raftpb::ConfState> RawNode::ApplyConfChange(const raftpb::ConfChange& cc) {
  return raft_->ApplyConfChange(cc);
}

absl::Status RawNode::Step(const raftpb::Message& m) { return Step(raftpb::Message(m)); }

absl::Status RawNode::Step(raftpb::Message&& m) {
  if (IsLocalMessage(m.type())) {
    return absl::InvalidArgumentError("cannot step a local message type received from the network");
  }
  if (IsResponseMessage(m.type()) &&
      raft_->tracker().progress.find(m.from()) == raft_->tracker().progress.end()) {
    return absl::OkStatus();  // a response from a node that is not a member
  }
  const bool proposal = m.type() == raftpb::MSG_PROP;
  absl::Status s = raft_->Step(std::move(m));
  // A forwarded proposal the leader cannot take is dropped: the proposer
  // times out and retries. The error is meaningless to this node's driver.
  if (proposal) return absl::OkStatus();
  return s;
}

void RawNode::ReadIndex(std::string request_ctx, bool use_lease) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_READ_INDEX);
  if (!use_lease) m.set_context(kReadNoLease);
  m.add_entries()->set_data(std::move(request_ctx));
  raft_->Step(std::move(m)).IgnoreError();  // never fails: dropped without a leader
}

void RawNode::TransferLeader(uint64_t transferee) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_TRANSFER_LEADER);
  m.set_from(transferee);
  raft_->Step(std::move(m)).IgnoreError();  // never fails
}

void RawNode::ReportUnreachable(uint64_t id) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_UNREACHABLE);
  m.set_from(id);
  raft_->Step(std::move(m)).IgnoreError();  // never fails
}

void RawNode::ReportSnapshot(uint64_t id, bool success) {
  raftpb::Message m;
  m.set_type(raftpb::MSG_SNAP_STATUS);
  m.set_from(id);
  m.set_reject(!success);
  raft_->Step(std::move(m)).IgnoreError();  // never fails
}

bool RawNode::HasReady() const {
  const Raft& r = *raft_;
  // (Pending appends imply unstable entries or pending messages.)
  if (!(r.soft_state() == prev_soft_state_)) return true;
  if (!HardStateEqual(r.hard_state(), prev_hard_state_)) return true;
  const RaftLog& log = r.log();
  return log.HasPendingSnapshot() || log.HasUnstableEntries() || log.HasNextEntries() ||
         !r.msgs().empty() || !r.read_states().empty();
}

Ready RawNode::GetReady() {
  Raft& r = *raft_;
  r.FlushAppends();
  Ready rd;
  rd.entries = r.log().UnstableEntries();
  rd.committed_entries = r.log().NextEntries();
  for (const raftpb::Entry& e : rd.committed_entries) rd.committed_payload_bytes += PayloadSize(e);
  rd.messages = std::move(r.msgs());
  r.msgs().clear();
  rd.read_states = std::move(r.read_states());
  r.read_states().clear();
  if (const SoftState ss = r.soft_state(); !(ss == prev_soft_state_)) {
    rd.soft_state = ss;
    prev_soft_state_ = ss;
  }
  const raftpb::HardState hs = r.hard_state();
  rd.must_sync = !rd.entries.empty() || r.log().UnstableSnapshot().has_value() ||
                 hs.term() != prev_hard_state_.term() || hs.vote() != prev_hard_state_.vote();
  if (!HardStateEqual(hs, prev_hard_state_)) {
    rd.hard_state = hs;
    prev_hard_state_ = hs;
  }
  if (r.log().UnstableSnapshot().has_value()) rd.snapshot = *r.log().UnstableSnapshot();
  return rd;
}

void RawNode::Advance(const Ready& rd) {
  RaftLog& log = raft_->log();
  uint64_t applied = 0;
  if (rd.snapshot.has_value()) {
    log.StableSnapTo(rd.snapshot->metadata().index());
    applied = rd.snapshot->metadata().index();
  }
  if (!rd.entries.empty()) log.StableTo(rd.entries.back().index(), rd.entries.back().term());
  if (!rd.committed_entries.empty()) {
    applied = std::max(applied, rd.committed_entries.back().index());
  }
  if (applied > log.applied()) log.AppliedTo(applied);
  raft_->ReduceUncommittedSize(rd.committed_payload_bytes);
  raft_->MaybeAutoLeave();
}

uint64_t RawNode::id() const { return raft_->id(); }
uint64_t RawNode::term() const { return raft_->term(); }
Role RawNode::role() const { return raft_->role(); }
uint64_t RawNode::leader_id() const { return raft_->lead(); }
uint64_t RawNode::commit_index() const { return raft_->log().committed(); }
uint64_t RawNode::applied_index() const { return raft_->log().applied(); }
uint64_t RawNode::last_index() const { return raft_->log().LastIndex(); }
raftpb::ConfState RawNode::conf_state() const { return raft_->tracker().ConfState(); }
bool RawNode::LeaderIdle() const { return raft_->LeaderIdle(); }

}  // namespace tessera::raft
