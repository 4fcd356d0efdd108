#include "raft/raft.h"

#include <algorithm>
#include <iterator>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/strings/str_cat.h"
#include "raft/util.h"

namespace tessera::raft {

using raftpb::Message;
using raftpb::MessageType;

const char* RoleName(Role role) {
  switch (role) {
    case Role::kFollower:
      return "follower";
    case Role::kPreCandidate:
      return "pre-candidate";
    case Role::kCandidate:
      return "candidate";
    case Role::kLeader:
      return "leader";
  }
  return "?";
}

bool IsLocalMessage(MessageType t) {
  return t == raftpb::MSG_HUP || t == raftpb::MSG_BEAT || t == raftpb::MSG_UNREACHABLE ||
         t == raftpb::MSG_SNAP_STATUS || t == raftpb::MSG_CHECK_QUORUM;
}

bool IsResponseMessage(MessageType t) {
  return t == raftpb::MSG_APP_RESP || t == raftpb::MSG_VOTE_RESP ||
         t == raftpb::MSG_HEARTBEAT_RESP || t == raftpb::MSG_UNREACHABLE ||
         t == raftpb::MSG_PRE_VOTE_RESP;
}

namespace {

MessageType VoteRespType(MessageType t) {
  return t == raftpb::MSG_VOTE ? raftpb::MSG_VOTE_RESP : raftpb::MSG_PRE_VOTE_RESP;
}

Message NewMessage(MessageType type, uint64_t to) {
  Message m;
  m.set_type(type);
  m.set_to(to);
  return m;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Raft>> Raft::Create(const Config& c) {
  if (c.id == 0) return absl::InvalidArgumentError("config: id must not be 0");
  if (c.storage == nullptr) return absl::InvalidArgumentError("config: storage must be set");
  if (c.heartbeat_ticks <= 0) {
    return absl::InvalidArgumentError("config: heartbeat_ticks must be greater than 0");
  }
  if (c.election_ticks <= c.heartbeat_ticks) {
    return absl::InvalidArgumentError(
        "config: election_ticks must be greater than heartbeat_ticks");
  }
  if (c.max_inflight_msgs <= 0) {
    return absl::InvalidArgumentError("config: max_inflight_msgs must be greater than 0");
  }
  if (c.read_only_option == ReadOnlyOption::kLeaseBased) {
    if (!c.check_quorum) {
      return absl::InvalidArgumentError("config: kLeaseBased reads require check_quorum");
    }
    if (c.max_clock_drift_ticks < 0 || c.election_ticks - 2 - c.max_clock_drift_ticks < 1) {
      return absl::InvalidArgumentError(
          "config: kLeaseBased needs election_ticks - 2 - max_clock_drift_ticks >= 1");
    }
    if (c.tick_interval <= Clock::duration::zero()) {
      return absl::InvalidArgumentError("config: kLeaseBased needs a positive tick_interval");
    }
  }
  raftpb::HardState hs;
  raftpb::ConfState cs;
  if (absl::Status s = c.storage->InitialState(&hs, &cs); !s.ok()) return s;

  std::unique_ptr<Raft> r(new Raft(c));
  absl::StatusOr<ConfigAndProgress> restored = RestoreConfig(
      cs, static_cast<size_t>(c.max_inflight_msgs), c.max_inflight_bytes, r->log_.LastIndex());
  if (!restored.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("invalid ConfState in storage: ", restored.status().message()));
  }
  r->SwitchToConfig(std::move(restored->first), std::move(restored->second));
  if (!IsEmptyHardState(hs)) {
    if (hs.commit() < r->log_.committed() || hs.commit() > r->log_.LastIndex()) {
      return absl::FailedPreconditionError(absl::StrCat("hard state commit ", hs.commit(),
                                                        " is out of range [", r->log_.committed(),
                                                        ", ", r->log_.LastIndex(), "]"));
    }
    r->log_.CommitTo(hs.commit());
    r->term_ = hs.term();
    r->vote_ = hs.vote();
  }
  if (c.applied > 0) {
    if (c.applied > r->log_.committed()) {
      return absl::FailedPreconditionError(
          absl::StrCat("applied ", c.applied, " is beyond the commit index ", r->log_.committed()));
    }
    if (c.applied > r->log_.applied()) r->log_.AppliedTo(c.applied);
  }
  // A brand-new node cannot have acked any leader's lease.
  if (IsEmptyHardState(hs)) r->restart_guard_ = false;
  r->BecomeFollower(r->term_, 0);
  return r;
}

Raft::Raft(const Config& c)
    : id_(c.id),
      election_timeout_(c.election_ticks),
      heartbeat_timeout_(c.heartbeat_ticks),
      max_msg_size_(c.max_size_per_msg),
      max_uncommitted_size_(c.max_uncommitted_entries_size),
      check_quorum_(c.check_quorum),
      pre_vote_(c.pre_vote),
      read_only_option_(c.read_only_option),
      lease_ticks_(c.election_ticks - 2 - c.max_clock_drift_ticks),
      lease_duration_(lease_ticks_ * c.tick_interval),
      disable_proposal_forwarding_(c.disable_proposal_forwarding),
      knobs_(c.testing),
      log_(c.storage, c.max_committed_size_per_ready),
      prs_(static_cast<size_t>(c.max_inflight_msgs), c.max_inflight_bytes),
      rng_(c.seed ^ (c.id * 0xd1b54a32d192ed03ULL)),
      // A restarted node cannot know whether it acked a lease-granting
      // heartbeat just before the crash, so it honours a lease for one
      // election timeout (only needed when lease reads are on).
      restart_guard_(c.read_only_option == ReadOnlyOption::kLeaseBased) {}

raftpb::HardState Raft::hard_state() const {
  raftpb::HardState hs;
  hs.set_term(term_);
  hs.set_vote(vote_);
  hs.set_commit(log_.committed());
  return hs;
}

// ---------------------------------------------------------------- sending

void Raft::Send(Message m) {
  if (m.from() == 0) m.set_from(id_);
  const MessageType t = m.type();
  if (t == raftpb::MSG_VOTE || t == raftpb::MSG_VOTE_RESP || t == raftpb::MSG_PRE_VOTE ||
      t == raftpb::MSG_PRE_VOTE_RESP) {
    // Votes carry the term they are for (a PreVote the next term).
    if (m.term() == 0) TESSERA_RAFT_FATAL("vote message type %d sent without a term", t);
  } else {
    if (m.term() != 0) {
      TESSERA_RAFT_FATAL("message type %d has term %llu set by the caller", t, ull(m.term()));
    }
    // Proposals and read requests forwarded to the leader act as local
    // messages there and carry no term.
    if (t != raftpb::MSG_PROP && t != raftpb::MSG_READ_INDEX) m.set_term(term_);
  }
  msgs_.push_back(std::move(m));
}

bool Raft::MaybeSendAppend(uint64_t to, bool send_if_empty) {
  Progress* pr = prs_.Find(to);
  if (pr == nullptr || pr->IsPaused()) return false;
  Message m = NewMessage(raftpb::MSG_APP, to);
  absl::StatusOr<uint64_t> term = log_.Term(pr->next - 1);
  absl::StatusOr<std::vector<raftpb::Entry>> ents = log_.Entries(pr->next, max_msg_size_);
  if (term.ok() && ents.ok() && ents->empty() && !send_if_empty) return false;
  if (!term.ok() || !ents.ok()) {
    // The entries were compacted: send a snapshot, but only to a follower we
    // recently heard from.
    if (!pr->recent_active) return false;
    absl::StatusOr<raftpb::Snapshot> snap = log_.Snapshot();
    if (!snap.ok()) {
      if (snap.status().code() == absl::StatusCode::kUnavailable) return false;
      TESSERA_RAFT_FATAL("storage Snapshot failed: %s", snap.status().ToString().c_str());
    }
    if (IsEmptySnapshot(*snap)) TESSERA_RAFT_FATAL("need a non-empty snapshot");
    m.set_type(raftpb::MSG_SNAP);
    pr->BecomeSnapshot(snap->metadata().index());
    *m.mutable_snapshot() = *std::move(snap);
  } else {
    m.set_index(pr->next - 1);
    m.set_log_term(*term);
    m.set_commit(log_.committed());
    if (!ents->empty()) {
      uint64_t bytes = 0;
      for (const raftpb::Entry& e : *ents) bytes += PayloadSize(e);
      const uint64_t last = ents->back().index();
      pr->SentEntries(last, bytes);
      m.mutable_entries()->Reserve(static_cast<int>(ents->size()));
      for (raftpb::Entry& e : *ents) *m.add_entries() = std::move(e);
    }
  }
  Send(std::move(m));
  return true;
}

void Raft::SendHeartbeat(uint64_t to, const std::string& ctx) {
  const Progress* pr = prs_.Find(to);
  // Never tell a follower to commit beyond what it is known to have.
  Message m = NewMessage(raftpb::MSG_HEARTBEAT, to);
  m.set_commit(std::min(pr->match, log_.committed()));
  m.set_index(leader_tick_);  // echoed back: lease bookkeeping
  if (!ctx.empty()) m.set_context(ctx);
  Send(std::move(m));
}

void Raft::BcastAppend() {
  append_pending_ = false;
  for (auto& [id, pr] : prs_.progress) {
    if (id != id_) SendAppend(id);
  }
}

void Raft::FlushAppends() {
  if (!append_pending_) return;
  append_pending_ = false;
  if (role_ != Role::kLeader) return;
  for (auto& [id, pr] : prs_.progress) {
    if (id != id_) MaybeSendAppend(id, /*send_if_empty=*/false);
  }
}

void Raft::BcastHeartbeat() { BcastHeartbeatWithCtx(read_only_.LastPendingRequestCtx()); }

void Raft::BcastHeartbeatWithCtx(const std::string& ctx) {
  // Batching of reads: a heartbeat carrying a read context that is still
  // queued (not yet handed to the application) is retargeted to the newest
  // context, whose acks confirm every earlier request too.
  absl::InlinedVector<uint64_t, 8> covered;
  if (!ctx.empty()) {
    for (Message& m : msgs_) {
      if (m.type() == raftpb::MSG_HEARTBEAT && !m.context().empty()) {
        m.set_context(ctx);
        covered.push_back(m.to());
      }
    }
  }
  for (auto& [id, pr] : prs_.progress) {
    if (id == id_) continue;
    if (std::find(covered.begin(), covered.end(), id) != covered.end()) continue;
    SendHeartbeat(id, ctx);
  }
}

void Raft::SendTimeoutNow(uint64_t to) {
  // The transferee will campaign bypassing leader stickiness, so this
  // leader's lease is no longer safe to rely on.
  lease_revoked_ = true;
  Send(NewMessage(raftpb::MSG_TIMEOUT_NOW, to));
}

// ---------------------------------------------------------------- log

bool Raft::MaybeCommit() {
  const uint64_t mci = prs_.Committed();
  bool committed = false;
  if (knobs_.commit_earlier_term_by_counting) {
    // Deliberately broken (Figure 8): commit whatever a quorum stores.
    if (mci > log_.committed() && mci <= log_.LastIndex()) {
      log_.CommitTo(mci);
      committed = true;
    }
  } else {
    // Figure 2: only entries of the current term are committed by counting.
    committed = log_.MaybeCommit(mci, term_);
  }
  if (committed) ReleasePendingReadIndexMessages();
  return committed;
}

bool Raft::IncreaseUncommittedSize(const std::vector<raftpb::Entry>& ents) {
  uint64_t s = 0;
  for (const raftpb::Entry& e : ents) s += PayloadSize(e);
  // Always admit a proposal when nothing is uncommitted, however large.
  if (max_uncommitted_size_ != 0 && uncommitted_size_ > 0 && s > 0 &&
      uncommitted_size_ + s > max_uncommitted_size_) {
    return false;
  }
  uncommitted_size_ += s;
  return true;
}

void Raft::ReduceUncommittedSize(uint64_t payload_bytes) {
  if (role_ != Role::kLeader) return;
  uncommitted_size_ = payload_bytes > uncommitted_size_ ? 0 : uncommitted_size_ - payload_bytes;
}

bool Raft::AppendEntry(std::vector<raftpb::Entry> ents) {
  uint64_t li = log_.LastIndex();
  for (size_t i = 0; i < ents.size(); ++i) {
    ents[i].set_term(term_);
    ents[i].set_index(li + 1 + i);
  }
  if (!IncreaseUncommittedSize(ents)) return false;
  li = log_.Append(std::move(ents));
  // The leader counts its own entries as matched: they are persisted before
  // any message that could let a follower ack them is sent.
  if (Progress* self = prs_.Find(id_)) self->MaybeUpdate(li);
  MaybeCommit();
  return true;
}

// ---------------------------------------------------------------- roles

void Raft::Reset(uint64_t term) {
  if (term_ != term) {
    term_ = term;
    vote_ = 0;
  }
  lead_ = 0;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  ResetRandomizedElectionTimeout();
  AbortLeaderTransfer();
  prs_.ResetVotes();
  const uint64_t last = log_.LastIndex();
  for (auto& [id, pr] : prs_.progress) {
    const bool learner = pr.is_learner;
    pr = Progress(last + 1, prs_.max_inflight(), prs_.max_inflight_bytes(), learner);
    if (id == id_) pr.match = last;
  }
  pending_conf_index_ = 0;
  uncommitted_size_ = 0;
  append_pending_ = false;
  read_only_.Reset();
  pending_read_index_messages_.clear();
  leader_tick_ = 0;
  leader_tick_times_.clear();
  lease_revoked_ = false;
}

void Raft::ResetRandomizedElectionTimeout() {
  randomized_election_timeout_ =
      election_timeout_ + static_cast<int>(rng_.Uniform(static_cast<uint64_t>(election_timeout_)));
}

void Raft::BecomeFollower(uint64_t term, uint64_t lead) {
  Reset(term);
  lead_ = lead;
  role_ = Role::kFollower;
}

void Raft::BecomeCandidate() {
  if (role_ == Role::kLeader) TESSERA_RAFT_FATAL("invalid transition [leader -> candidate]");
  Reset(term_ + 1);
  vote_ = id_;
  role_ = Role::kCandidate;
}

void Raft::BecomePreCandidate() {
  if (role_ == Role::kLeader) TESSERA_RAFT_FATAL("invalid transition [leader -> pre-candidate]");
  // Neither the term nor the vote change: a PreVote round is side-effect
  // free for everybody.
  prs_.ResetVotes();
  lead_ = 0;
  role_ = Role::kPreCandidate;
}

void Raft::BecomeLeader() {
  if (role_ == Role::kFollower) TESSERA_RAFT_FATAL("invalid transition [follower -> leader]");
  Reset(term_);
  lead_ = id_;
  role_ = Role::kLeader;
  leader_tick_ = 1;
  RecordLeaderTickTime();
  if (Progress* self = prs_.Find(id_)) {
    self->BecomeReplicate();
    self->recent_active = true;
  }
  // Conf changes in the uncommitted tail may be pending; be conservative.
  pending_conf_index_ = log_.LastIndex();
  // An empty entry of the new term: committing it commits everything before
  // it (Figure 8 rule) and allows ReadIndex.
  if (!AppendEntry(std::vector<raftpb::Entry>(1))) {
    TESSERA_RAFT_FATAL("empty entry was dropped");
  }
}

bool Raft::Promotable() const {
  auto it = prs_.progress.find(id_);
  return it != prs_.progress.end() && !it->second.is_learner && !log_.HasPendingSnapshot();
}

bool Raft::HasUnappliedConfChanges() const {
  if (log_.applied() >= log_.committed()) return false;
  const uint64_t lo = std::max(log_.applied() + 1, log_.FirstIndex());
  if (lo > log_.committed()) return false;
  absl::StatusOr<std::vector<raftpb::Entry>> ents =
      log_.Slice(lo, log_.committed() + 1, std::numeric_limits<uint64_t>::max());
  if (!ents.ok()) return true;  // be conservative
  for (const raftpb::Entry& e : *ents) {
    if (e.type() == raftpb::ENTRY_CONF_CHANGE) return true;
  }
  return false;
}

void Raft::Hup(CampaignType t) {
  restart_guard_ = false;
  if (role_ == Role::kLeader) return;
  if (!Promotable()) return;
  // A node must not campaign while a committed conf change is unapplied: it
  // could count votes under the wrong configuration.
  if (HasUnappliedConfChanges()) return;
  Campaign(t);
}

void Raft::Campaign(CampaignType t) {
  if (!Promotable()) return;
  uint64_t term;
  MessageType vote_msg;
  if (t == CampaignType::kPreElection) {
    BecomePreCandidate();
    vote_msg = raftpb::MSG_PRE_VOTE;
    term = term_ + 1;  // the term we would campaign in; ours is unchanged
  } else {
    BecomeCandidate();
    vote_msg = raftpb::MSG_VOTE;
    term = term_;
  }
  if (Poll(id_, true) == VoteResult::kWon) {
    // Single-voter config: won on our own vote.
    if (t == CampaignType::kPreElection) {
      Campaign(CampaignType::kElection);
    } else {
      BecomeLeader();
    }
    return;
  }
  const uint64_t last_index = log_.LastIndex();
  const uint64_t last_term = log_.LastTerm();
  for (uint64_t id : prs_.config.voters.Ids()) {
    if (id == id_) continue;
    Message m = NewMessage(vote_msg, id);
    m.set_term(term);
    m.set_index(last_index);
    m.set_log_term(last_term);
    if (t == CampaignType::kTransfer) m.set_context(kCampaignTransfer);
    Send(std::move(m));
  }
}

VoteResult Raft::Poll(uint64_t id, bool granted) {
  prs_.RecordVote(id, granted);
  int g = 0, r = 0;
  return prs_.TallyVotes(&g, &r);
}

// ---------------------------------------------------------------- ticks

void Raft::Tick() {
  if (role_ == Role::kLeader) {
    TickHeartbeat();
  } else {
    TickElection();
  }
}

void Raft::TickElection() {
  ++election_elapsed_;
  if (election_elapsed_ >= election_timeout_) restart_guard_ = false;
  if (Promotable() && PastElectionTimeout()) {
    election_elapsed_ = 0;
    Hup(pre_vote_ ? CampaignType::kPreElection : CampaignType::kElection);
  }
}

void Raft::TickHeartbeat() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  ++leader_tick_;
  RecordLeaderTickTime();
  if (election_elapsed_ >= election_timeout_) {
    election_elapsed_ = 0;
    if (check_quorum_) {
      Message m;
      m.set_type(raftpb::MSG_CHECK_QUORUM);
      m.set_from(id_);
      Step(std::move(m)).IgnoreError();  // local message: never fails
    }
    // Abort a transfer that did not finish within an election timeout.
    if (role_ == Role::kLeader && lead_transferee_ != 0) AbortLeaderTransfer();
  }
  if (role_ != Role::kLeader) return;
  if (heartbeat_elapsed_ >= heartbeat_timeout_) {
    heartbeat_elapsed_ = 0;
    BcastHeartbeat();
  }
}

// ---------------------------------------------------------------- Step

absl::Status Raft::Step(Message m) {
  if (m.term() == 0) {
    // Local message (or a forwarded proposal / read request).
  } else if (m.term() > term_) {
    if (m.type() == raftpb::MSG_VOTE || m.type() == raftpb::MSG_PRE_VOTE) {
      const bool force = m.context() == kCampaignTransfer;
      // Leader stickiness: while we heard from a live leader within the
      // election timeout, ignore (pre)votes so that a partitioned node that
      // comes back cannot disrupt the group.
      const bool in_lease =
          check_quorum_ && (lead_ != 0 || restart_guard_) && election_elapsed_ < election_timeout_;
      if (!force && in_lease) return absl::OkStatus();
    }
    if (m.type() == raftpb::MSG_PRE_VOTE) {
      // Never change the term in response to a PreVote.
    } else if (m.type() == raftpb::MSG_PRE_VOTE_RESP && !m.reject()) {
      // The term is bumped when the PreVote round is won.
    } else if (m.type() == raftpb::MSG_APP || m.type() == raftpb::MSG_HEARTBEAT ||
               m.type() == raftpb::MSG_SNAP) {
      BecomeFollower(m.term(), m.from());
    } else {
      BecomeFollower(m.term(), 0);
    }
  } else if (m.term() < term_) {
    if ((check_quorum_ || pre_vote_) &&
        (m.type() == raftpb::MSG_HEARTBEAT || m.type() == raftpb::MSG_APP)) {
      // A leader of an old term (e.g. after a partition healed) learns the
      // new term from this response and steps down; without it, a node that
      // was partitioned away with a higher term could never rejoin.
      Send(NewMessage(raftpb::MSG_APP_RESP, m.from()));
    } else if (m.type() == raftpb::MSG_PRE_VOTE) {
      Message r = NewMessage(raftpb::MSG_PRE_VOTE_RESP, m.from());
      r.set_term(term_);
      r.set_reject(true);
      Send(std::move(r));
    }
    return absl::OkStatus();  // otherwise ignore stale messages
  }

  switch (m.type()) {
    case raftpb::MSG_HUP:
      Hup(pre_vote_ ? CampaignType::kPreElection : CampaignType::kElection);
      return absl::OkStatus();
    case raftpb::MSG_VOTE:
    case raftpb::MSG_PRE_VOTE: {
      // We can vote for a node we already voted for (duplicate), when we have
      // neither voted nor know a leader in this term, or, for a PreVote, for
      // a future term.
      const bool can_vote = vote_ == m.from() || (vote_ == 0 && lead_ == 0) ||
                            (m.type() == raftpb::MSG_PRE_VOTE && m.term() > term_);
      const bool up_to_date =
          knobs_.grant_vote_without_log_check || log_.IsUpToDate(m.index(), m.log_term());
      Message r = NewMessage(VoteRespType(m.type()), m.from());
      if (can_vote && up_to_date) {
        // Answer with the term of the request: for a PreVote our own term
        // may be lower and the candidate would otherwise ignore the answer.
        r.set_term(m.term());
        Send(std::move(r));
        if (m.type() == raftpb::MSG_VOTE) {
          election_elapsed_ = 0;
          vote_ = m.from();
        }
      } else {
        r.set_term(term_);
        r.set_reject(true);
        Send(std::move(r));
      }
      return absl::OkStatus();
    }
    default:
      break;
  }
  switch (role_) {
    case Role::kLeader:
      return StepLeader(m);
    case Role::kCandidate:
    case Role::kPreCandidate:
      return StepCandidate(m);
    case Role::kFollower:
      return StepFollower(m);
  }
  return absl::OkStatus();
}

absl::Status Raft::ProposeOnLeader(Message& m) {
  if (m.entries_size() == 0) return absl::InvalidArgumentError("empty proposal");
  if (prs_.Find(id_) == nullptr) {
    return absl::UnavailableError("this node was removed from the group");
  }
  if (lead_transferee_ != 0) {
    return absl::UnavailableError(
        absl::StrCat("leadership transfer to ", lead_transferee_, " in progress; leader is ", id_));
  }
  uint64_t conf_index = 0;
  for (int i = 0; i < m.entries_size(); ++i) {
    const raftpb::Entry& e = m.entries(i);
    if (e.type() != raftpb::ENTRY_CONF_CHANGE) continue;
    raftpb::ConfChange cc;
    if (!cc.ParseFromString(e.data())) {
      return absl::InvalidArgumentError("conf change entry does not parse");
    }
    if (conf_index != 0 || pending_conf_index_ > log_.applied()) {
      return absl::FailedPreconditionError(absl::StrCat("possible unapplied conf change at index ",
                                                        pending_conf_index_, " (applied to ",
                                                        log_.applied(), ")"));
    }
    const bool already_joint = prs_.config.voters.joint();
    const bool wants_leave = cc.changes_size() == 0;
    if (already_joint && !wants_leave) {
      return absl::FailedPreconditionError("must transition out of joint config first");
    }
    if (!already_joint && wants_leave) {
      return absl::FailedPreconditionError("not in joint state; refusing empty conf change");
    }
    // Dry run: the config this entry will be applied to is the current one
    // (no other conf change is pending), so a committed change always applies.
    absl::StatusOr<ConfigAndProgress> dry = Changer(prs_, log_.LastIndex()).Apply(cc);
    if (!dry.ok()) return dry.status();
    conf_index = log_.LastIndex() + static_cast<uint64_t>(i) + 1;
  }
  std::vector<raftpb::Entry> ents(std::make_move_iterator(m.mutable_entries()->begin()),
                                  std::make_move_iterator(m.mutable_entries()->end()));
  if (!AppendEntry(std::move(ents))) {
    return absl::ResourceExhaustedError("too many uncommitted entry bytes; retry later");
  }
  if (conf_index != 0) pending_conf_index_ = conf_index;
  // Batching: the MsgApp carrying this entry is sent when the application
  // next collects a Ready (FlushAppends), together with every other proposal
  // made until then.
  append_pending_ = true;
  return absl::OkStatus();
}

absl::Status Raft::StepLeader(Message& m) {
  switch (m.type()) {
    case raftpb::MSG_BEAT:
      BcastHeartbeat();
      return absl::OkStatus();
    case raftpb::MSG_CHECK_QUORUM:
      if (Progress* self = prs_.Find(id_)) self->recent_active = true;
      if (!prs_.QuorumActive()) {
        // No quorum heard from within an election timeout: we may be
        // partitioned away; stop acting as leader.
        BecomeFollower(term_, 0);
      }
      for (auto& [id, pr] : prs_.progress) {
        if (id != id_) pr.recent_active = false;
      }
      return absl::OkStatus();
    case raftpb::MSG_PROP:
      return ProposeOnLeader(m);
    case raftpb::MSG_READ_INDEX:
      if (m.entries_size() != 1) return absl::InvalidArgumentError("bad read index request");
      if (prs_.IsSingleton()) {
        RespondToReadIndex(m, log_.committed());
        return absl::OkStatus();
      }
      // Until an entry of this term is committed the leader does not know
      // the true commit index (§6.4): delay the read.
      if (!CommittedEntryInCurrentTerm()) {
        pending_read_index_messages_.push_back(m);
        return absl::OkStatus();
      }
      SendReadIndexResponse(m);
      return absl::OkStatus();
    default:
      break;
  }

  Progress* pr = prs_.Find(m.from());
  if (pr == nullptr) return absl::OkStatus();
  switch (m.type()) {
    case raftpb::MSG_APP_RESP: {
      pr->recent_active = true;
      if (m.reject()) {
        // Fast back-off: skip the follower's whole conflicting term at once.
        uint64_t next_probe = m.reject_hint();
        if (m.hint_term() > 0) {
          next_probe = log_.FindConflictByTerm(m.reject_hint(), m.hint_term()).first;
        }
        if (pr->MaybeDecrTo(m.index(), next_probe)) {
          if (pr->state == ProgressState::kReplicate) pr->BecomeProbe();
          SendAppend(m.from());
        }
      } else {
        const bool old_paused = pr->IsPaused();
        if (pr->MaybeUpdate(m.index())) {
          if (pr->state == ProgressState::kProbe) {
            pr->BecomeReplicate();
          } else if (pr->state == ProgressState::kSnapshot && pr->match >= pr->pending_snapshot) {
            pr->BecomeProbe();
            pr->BecomeReplicate();
          } else if (pr->state == ProgressState::kReplicate) {
            pr->inflights.FreeLE(m.index());
          }
          if (MaybeCommit()) {
            BcastAppend();
          } else if (old_paused) {
            SendAppend(m.from());
          }
          // Fill the in-flight window.
          while (MaybeSendAppend(m.from(), /*send_if_empty=*/false)) {
          }
          if (m.from() == lead_transferee_ && pr->match == log_.LastIndex()) {
            SendTimeoutNow(m.from());
          }
        }
      }
      return absl::OkStatus();
    }
    case raftpb::MSG_HEARTBEAT_RESP: {
      pr->recent_active = true;
      if (m.index() > pr->lease_ack_tick) pr->lease_ack_tick = m.index();
      // The last probe, or the acks of a full window, may have been lost:
      // resume the flow, but once per heartbeat interval (by the tick the
      // answer echoes). Read rounds send heartbeats every cycle; resending up
      // to max_size_per_msg of entries on each of their answers flooded a
      // lagging follower with gigabytes of duplicates.
      if (!pr->resumed_tick.has_value() ||
          m.index() >= *pr->resumed_tick + static_cast<uint64_t>(heartbeat_timeout_)) {
        pr->resumed_tick = m.index();
        pr->probe_sent = false;
        if (pr->state == ProgressState::kReplicate && pr->inflights.Full()) {
          pr->inflights.FreeFirstOne();
        }
      }
      if (pr->match < log_.LastIndex()) SendAppend(m.from());
      if (m.context().empty()) return absl::OkStatus();
      const std::map<uint64_t, bool>* acks = read_only_.RecvAck(m.from(), m.context());
      if (acks == nullptr || prs_.config.voters.Vote(*acks) != VoteResult::kWon) {
        return absl::OkStatus();
      }
      for (ReadIndexStatus& rs : read_only_.Advance(m.context())) {
        RespondToReadIndex(rs.req, rs.index);
      }
      return absl::OkStatus();
    }
    case raftpb::MSG_SNAP_STATUS:
      if (pr->state != ProgressState::kSnapshot) return absl::OkStatus();
      if (m.reject()) pr->pending_snapshot = 0;  // failed: probe from match
      pr->BecomeProbe();
      // Wait for an answer (to a heartbeat) before sending the next MsgApp.
      pr->probe_sent = true;
      return absl::OkStatus();
    case raftpb::MSG_UNREACHABLE:
      // Optimistic replication probably lost a message: probe again.
      if (pr->state == ProgressState::kReplicate) pr->BecomeProbe();
      return absl::OkStatus();
    case raftpb::MSG_TRANSFER_LEADER: {
      if (pr->is_learner) return absl::OkStatus();
      const uint64_t transferee = m.from();
      if (lead_transferee_ != 0) {
        if (lead_transferee_ == transferee) return absl::OkStatus();  // already on it
        AbortLeaderTransfer();
      }
      if (transferee == id_) return absl::OkStatus();  // already leader
      // The transfer must finish within an election timeout.
      election_elapsed_ = 0;
      lead_transferee_ = transferee;
      if (pr->match == log_.LastIndex()) {
        SendTimeoutNow(transferee);
      } else {
        SendAppend(transferee);
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

absl::Status Raft::StepCandidate(Message& m) {
  const MessageType my_resp =
      role_ == Role::kPreCandidate ? raftpb::MSG_PRE_VOTE_RESP : raftpb::MSG_VOTE_RESP;
  switch (m.type()) {
    case raftpb::MSG_PROP:
      return absl::UnavailableError("no leader (election in progress)");
    case raftpb::MSG_APP:
      BecomeFollower(m.term(), m.from());  // a leader of our term exists
      HandleAppendEntries(m);
      return absl::OkStatus();
    case raftpb::MSG_HEARTBEAT:
      BecomeFollower(m.term(), m.from());
      HandleHeartbeat(m);
      return absl::OkStatus();
    case raftpb::MSG_SNAP:
      BecomeFollower(m.term(), m.from());
      HandleSnapshot(m);
      return absl::OkStatus();
    default:
      break;
  }
  if (m.type() == my_resp) {
    switch (Poll(m.from(), !m.reject())) {
      case VoteResult::kWon:
        if (role_ == Role::kPreCandidate) {
          Campaign(CampaignType::kElection);
        } else {
          BecomeLeader();
          BcastAppend();
        }
        break;
      case VoteResult::kLost:
        // A lost PreVote leaves the term unchanged.
        BecomeFollower(term_, 0);
        break;
      case VoteResult::kPending:
        break;
    }
  }
  return absl::OkStatus();  // MsgTimeoutNow and others are ignored
}

absl::Status Raft::StepFollower(Message& m) {
  switch (m.type()) {
    case raftpb::MSG_PROP:
      if (lead_ == 0) return absl::UnavailableError("no leader");
      if (disable_proposal_forwarding_) {
        return absl::UnavailableError(absl::StrCat("not leader; leader is ", lead_));
      }
      m.set_to(lead_);
      Send(std::move(m));
      return absl::OkStatus();
    case raftpb::MSG_APP:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleAppendEntries(m);
      return absl::OkStatus();
    case raftpb::MSG_HEARTBEAT:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleHeartbeat(m);
      return absl::OkStatus();
    case raftpb::MSG_SNAP:
      election_elapsed_ = 0;
      lead_ = m.from();
      HandleSnapshot(m);
      return absl::OkStatus();
    case raftpb::MSG_TRANSFER_LEADER:
      if (lead_ == 0) return absl::OkStatus();  // dropped: no leader
      m.set_to(lead_);
      m.set_term(0);
      Send(std::move(m));
      return absl::OkStatus();
    case raftpb::MSG_TIMEOUT_NOW:
      // Leadership transfers skip PreVote: the leader asked us to campaign.
      Hup(CampaignType::kTransfer);
      return absl::OkStatus();
    case raftpb::MSG_READ_INDEX:
      if (lead_ == 0) return absl::OkStatus();  // dropped: no leader
      m.set_to(lead_);
      Send(std::move(m));
      return absl::OkStatus();
    case raftpb::MSG_READ_INDEX_RESP:
      if (m.entries_size() != 1) return absl::OkStatus();
      read_states_.push_back(ReadState{m.index(), m.entries(0).data()});
      return absl::OkStatus();
    default:
      return absl::OkStatus();
  }
}

// ---------------------------------------------------------------- follower

void Raft::HandleAppendEntries(Message& m) {
  Message r = NewMessage(raftpb::MSG_APP_RESP, m.from());
  if (m.index() < log_.committed()) {
    // Already committed here: tell the leader where we are.
    r.set_index(log_.committed());
    Send(std::move(r));
    return;
  }
  std::vector<raftpb::Entry> ents(std::make_move_iterator(m.mutable_entries()->begin()),
                                  std::make_move_iterator(m.mutable_entries()->end()));
  if (std::optional<uint64_t> last_new =
          log_.MaybeAppend(m.index(), m.log_term(), m.commit(), std::move(ents))) {
    r.set_index(*last_new);
    Send(std::move(r));
    return;
  }
  // Reject, with a hint for fast back-off: the largest index <= m.index()
  // whose term is <= m.log_term(). The leader can skip everything after it.
  const uint64_t hint_index = std::min(m.index(), log_.LastIndex());
  const auto [idx, term] = log_.FindConflictByTerm(hint_index, m.log_term());
  r.set_index(m.index());
  r.set_reject(true);
  r.set_reject_hint(idx);
  r.set_hint_term(term);
  Send(std::move(r));
}

void Raft::HandleHeartbeat(const Message& m) {
  log_.CommitTo(m.commit());
  Message r = NewMessage(raftpb::MSG_HEARTBEAT_RESP, m.from());
  r.set_index(m.index());  // echo the leader's tick (lease bookkeeping)
  if (!m.context().empty()) r.set_context(m.context());
  Send(std::move(r));
}

void Raft::HandleSnapshot(const Message& m) {
  Message r = NewMessage(raftpb::MSG_APP_RESP, m.from());
  if (Restore(m.snapshot())) {
    r.set_index(log_.LastIndex());
  } else {
    r.set_index(log_.committed());
  }
  Send(std::move(r));
}

bool Raft::Restore(const raftpb::Snapshot& s) {
  const raftpb::SnapshotMetadata& md = s.metadata();
  if (md.index() <= log_.committed()) return false;
  if (role_ != Role::kFollower) {
    // Defensive: only followers install snapshots.
    BecomeFollower(term_ + 1, 0);
    return false;
  }
  const raftpb::ConfState& cs = md.conf_state();
  // A node that joins a group is not necessarily in the snapshot's config
  // yet (the snapshot may predate its addition): it restores the config it is
  // sent and learns of its own addition from the entries that follow. It
  // cannot campaign until it is a voter.
  if (log_.MatchTerm(md.index(), md.term())) {
    // We already have the entries: just fast-forward the commit index.
    log_.CommitTo(md.index());
    return false;
  }
  log_.Restore(s);
  absl::StatusOr<ConfigAndProgress> restored =
      RestoreConfig(cs, prs_.max_inflight(), prs_.max_inflight_bytes(), log_.LastIndex());
  if (!restored.ok()) {
    TESSERA_RAFT_FATAL("cannot restore the snapshot's config: %s",
                       restored.status().ToString().c_str());
  }
  SwitchToConfig(std::move(restored->first), std::move(restored->second));
  if (Progress* self = prs_.Find(id_)) self->MaybeUpdate(self->next - 1);
  return true;
}

// ---------------------------------------------------------------- config

absl::StatusOr<raftpb::ConfState> Raft::ApplyConfChange(const raftpb::ConfChange& cc) {
  if (prs_.config.voters.incoming.empty()) {
    // Applying a change to an empty config would make up a group out of
    // nothing (e.g. {4} for "add 4"), which could elect a second leader.
    TESSERA_RAFT_FATAL(
        "node %llu applies a conf change without knowing the group's configuration: bootstrap "
        "founders with a snapshot at index 1 (see raw_node.h) so joiners receive it",
        ull(id_));
  }
  absl::StatusOr<ConfigAndProgress> next = Changer(prs_, log_.LastIndex()).Apply(cc);
  if (!next.ok()) return next.status();
  return SwitchToConfig(std::move(next->first), std::move(next->second));
}

raftpb::ConfState Raft::SwitchToConfig(TrackerConfig cfg, ProgressMap prs) {
  prs_.config = std::move(cfg);
  prs_.progress = std::move(prs);
  raftpb::ConfState cs = prs_.ConfState();
  const Progress* self = prs_.Find(id_);
  is_learner_ = self != nullptr && self->is_learner;
  if ((self == nullptr || is_learner_) && role_ == Role::kLeader) {
    // This leader was removed (or demoted): step down so that the remaining
    // voters elect a leader among themselves.
    BecomeFollower(term_, 0);
    return cs;
  }
  if (role_ != Role::kLeader || prs_.config.voters.incoming.empty()) return cs;
  // The quorum may have changed: maybe we can commit more; and new members
  // need to be probed.
  if (MaybeCommit()) {
    BcastAppend();
  } else {
    for (auto& [id, pr] : prs_.progress) {
      if (id != id_) MaybeSendAppend(id, /*send_if_empty=*/false);
    }
  }
  if (lead_transferee_ != 0 && !prs_.config.voters.contains(lead_transferee_)) {
    AbortLeaderTransfer();
  }
  return cs;
}

void Raft::MaybeAutoLeave() {
  if (role_ != Role::kLeader || !prs_.config.auto_leave || log_.applied() < pending_conf_index_) {
    return;
  }
  Message m;
  m.set_type(raftpb::MSG_PROP);
  raftpb::Entry* e = m.add_entries();
  e->set_type(raftpb::ENTRY_CONF_CHANGE);
  e->set_data(raftpb::ConfChange().SerializeAsString());
  // May fail (e.g. during a leadership transfer); retried on the next Advance.
  Step(std::move(m)).IgnoreError();
}

// ---------------------------------------------------------------- reads

bool Raft::CommittedEntryInCurrentTerm() const {
  return log_.ZeroTermOnError(log_.committed()) == term_;
}

bool Raft::LeaseValid() const {
  if (read_only_option_ != ReadOnlyOption::kLeaseBased || role_ != Role::kLeader ||
      lease_revoked_) {
    return false;
  }
  // The newest leader tick acked by a quorum (ourselves: now). A follower
  // that acked a heartbeat sent at tick q ignores votes until it has ticked
  // election_ticks times after receiving it, so no other leader can exist
  // before our tick q + election_ticks - 2 - drift (see README.md).
  const uint64_t q = prs_.config.voters.CommittedIndex([this](uint64_t id, uint64_t* tick) {
    if (id == id_) {
      *tick = leader_tick_;
      return true;
    }
    auto it = prs_.progress.find(id);
    if (it == prs_.progress.end()) return false;
    *tick = it->second.lease_ack_tick;
    return true;
  });
  if (q == 0 || q == std::numeric_limits<uint64_t>::max()) return false;
  if (leader_tick_ - q > static_cast<uint64_t>(lease_ticks_)) return false;
  if (knobs_.lease_in_ticks_only) return true;
  // And in time: ticks stop while the process stalls, the clock does not.
  // Tick q happened at leader_tick_times_[q - first], before the heartbeat
  // that carried it was sent (README.md).
  const uint64_t first = leader_tick_ + 1 - leader_tick_times_.size();
  if (!now_.has_value() || q < first) return false;
  const std::optional<Clock::time_point>& sent = leader_tick_times_[q - first];
  return sent.has_value() && *now_ < *sent + lease_duration_;
}

bool Raft::LeaderIdle() const {
  if (role_ != Role::kLeader || lead_transferee_ != 0 || append_pending_) return false;
  const uint64_t last = log_.LastIndex();
  if (log_.committed() != last || log_.applied() != last || pending_conf_index_ > last ||
      log_.HasPendingSnapshot()) {
    return false;
  }
  if (read_only_.pending() != 0 || !pending_read_index_messages_.empty()) return false;
  for (const auto& [id, pr] : prs_.progress) {
    if (id == id_) continue;
    if (pr.match != last || pr.state != ProgressState::kReplicate || pr.inflights.Count() != 0) {
      return false;
    }
  }
  return true;
}

void Raft::RecordLeaderTickTime() {
  if (read_only_option_ != ReadOnlyOption::kLeaseBased) return;
  leader_tick_times_.push_back(now_);
  // An older tick cannot satisfy the tick rule above.
  while (leader_tick_times_.size() > static_cast<size_t>(lease_ticks_) + 1) {
    leader_tick_times_.pop_front();
  }
}

void Raft::SetNow(Clock::time_point now) {
  if (!now_.has_value() || now > *now_) now_ = now;
}

void Raft::SendReadIndexResponse(const Message& m) {
  // A request marked kReadNoLease (RawNode::ReadIndex with use_lease=false)
  // always takes the heartbeat round, even when a lease is held.
  if (m.context() != kReadNoLease && LeaseValid()) {
    RespondToReadIndex(m, log_.committed());
    return;
  }
  // Safe read: confirm leadership with a heartbeat round carrying the
  // request's context.
  const std::string& ctx = m.entries(0).data();
  read_only_.AddRequest(log_.committed(), m);
  read_only_.RecvAck(id_, ctx);
  BcastHeartbeatWithCtx(ctx);
}

void Raft::RespondToReadIndex(const Message& req, uint64_t index) {
  if (req.from() == 0 || req.from() == id_) {
    read_states_.push_back(ReadState{index, req.entries(0).data()});
    return;
  }
  Message r = NewMessage(raftpb::MSG_READ_INDEX_RESP, req.from());
  r.set_index(index);
  *r.mutable_entries() = req.entries();
  Send(std::move(r));
}

void Raft::ReleasePendingReadIndexMessages() {
  if (pending_read_index_messages_.empty() || !CommittedEntryInCurrentTerm()) return;
  std::vector<Message> pending = std::move(pending_read_index_messages_);
  pending_read_index_messages_.clear();
  for (const Message& m : pending) SendReadIndexResponse(m);
}

}  // namespace tessera::raft
