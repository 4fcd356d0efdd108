// Raft: the consensus state machine behind RawNode (the design of
// etcd-io/raft raft.go). It reacts to ticks and messages by changing its
// state and queueing outgoing messages; it never blocks, sleeps or does I/O.
// Persistence and message delivery are the application's job (see
// raw_node.h for the Ready loop).
//
// Not thread-safe; owned by RawNode (one shard driver).
#ifndef TESSERA_RAFT_RAFT_H_
#define TESSERA_RAFT_RAFT_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "raft/confchange.h"
#include "raft/config.h"
#include "raft/log.h"
#include "raft/progress.h"
#include "raft/read_only.h"
#include "raft/util.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

// Context of a MsgVote sent after MsgTimeoutNow: bypasses leader stickiness.
inline constexpr char kCampaignTransfer[] = "CampaignTransfer";
// Context of a MsgReadIndex that must be confirmed by a heartbeat round even
// when the leader holds a lease (RawNode::ReadIndex with use_lease=false).
inline constexpr char kReadNoLease[] = "ReadNoLease";

enum class CampaignType { kPreElection, kElection, kTransfer };

bool IsLocalMessage(raftpb::MessageType t);
bool IsResponseMessage(raftpb::MessageType t);

class Raft {
 public:
  // Validates `config` and restores the state persisted in config.storage.
  static absl::StatusOr<std::unique_ptr<Raft>> Create(const Config& config);

  void Tick();
  // Handles a message (network or local). Errors are only returned for
  // proposals (see RawNode::Propose).
  absl::Status Step(raftpb::Message m);
  // Applies a committed conf change; returns the new ConfState, or the
  // Changer's error (configuration unchanged) for a change that is invalid
  // against the current configuration (see RawNode::ApplyConfChange).
  absl::StatusOr<raftpb::ConfState> ApplyConfChange(const raftpb::ConfChange& cc);
  // Called by RawNode::Advance with the payload bytes of the entries the
  // application applied (counted when the Ready was made).
  void ReduceUncommittedSize(uint64_t payload_bytes);
  // Proposes leaving an auto-leave joint config once the joint config is
  // applied (leader only).
  void MaybeAutoLeave();
  // Sends the MsgApp for proposals accepted since the last call (leader).
  // RawNode calls it before building a Ready, so that all proposals made
  // between two Ready rounds travel in one MsgApp per follower.
  void FlushAppends();
  bool Promotable() const;

  // State, for RawNode and tests.
  uint64_t id() const { return id_; }
  uint64_t term() const { return term_; }
  uint64_t vote() const { return vote_; }
  uint64_t lead() const { return lead_; }
  Role role() const { return role_; }
  bool is_learner() const { return is_learner_; }
  uint64_t lead_transferee() const { return lead_transferee_; }
  uint64_t pending_conf_index() const { return pending_conf_index_; }
  uint64_t uncommitted_size() const { return uncommitted_size_; }
  int election_elapsed() const { return election_elapsed_; }
  int randomized_election_timeout() const { return randomized_election_timeout_; }
  bool LeaseValid() const;
  // True when this node leads and has nothing in flight: every entry is
  // committed and applied, every follower (voters and learners) has
  // acknowledged the whole log and has no append or snapshot outstanding, and
  // no read, conf change or leadership transfer is pending. An application
  // may then stop ticking the group until new input arrives (hibernation,
  // server/raftstore/README.md); raft itself does not act on it.
  bool LeaderIdle() const;
  // The application's clock reading (RawNode::SetNow); never goes back.
  void SetNow(Clock::time_point now);
  SoftState soft_state() const { return SoftState{lead_, role_}; }
  raftpb::HardState hard_state() const;
  RaftLog& log() { return log_; }
  const RaftLog& log() const { return log_; }
  ProgressTracker& tracker() { return prs_; }
  const ProgressTracker& tracker() const { return prs_; }
  const ReadOnly& read_only() const { return read_only_; }
  std::vector<raftpb::Message>& msgs() { return msgs_; }
  const std::vector<raftpb::Message>& msgs() const { return msgs_; }
  std::vector<ReadState>& read_states() { return read_states_; }
  const std::vector<ReadState>& read_states() const { return read_states_; }

  // Test hooks.
  void BecomeFollowerForTesting(uint64_t term, uint64_t lead) { BecomeFollower(term, lead); }
  void BecomeCandidateForTesting() { BecomeCandidate(); }
  void BecomePreCandidateForTesting() { BecomePreCandidate(); }
  void BecomeLeaderForTesting() { BecomeLeader(); }
  void SetRandomizedElectionTimeoutForTesting(int t) { randomized_election_timeout_ = t; }

 private:
  explicit Raft(const Config& c);

  void Send(raftpb::Message m);
  void SendAppend(uint64_t to) { MaybeSendAppend(to, /*send_if_empty=*/true); }
  bool MaybeSendAppend(uint64_t to, bool send_if_empty);
  void SendHeartbeat(uint64_t to, const std::string& ctx);
  void BcastAppend();
  void BcastHeartbeat();
  void BcastHeartbeatWithCtx(const std::string& ctx);
  void SendTimeoutNow(uint64_t to);

  bool MaybeCommit();
  void Reset(uint64_t term);
  bool AppendEntry(std::vector<raftpb::Entry> ents);
  bool IncreaseUncommittedSize(const std::vector<raftpb::Entry>& ents);

  void TickElection();
  void TickHeartbeat();
  bool PastElectionTimeout() const { return election_elapsed_ >= randomized_election_timeout_; }
  void ResetRandomizedElectionTimeout();

  void BecomeFollower(uint64_t term, uint64_t lead);
  void BecomeCandidate();
  void BecomePreCandidate();
  void BecomeLeader();
  void Hup(CampaignType t);
  void Campaign(CampaignType t);
  VoteResult Poll(uint64_t id, bool granted);
  bool HasUnappliedConfChanges() const;

  absl::Status StepLeader(raftpb::Message& m);
  absl::Status StepCandidate(raftpb::Message& m);
  absl::Status StepFollower(raftpb::Message& m);
  absl::Status ProposeOnLeader(raftpb::Message& m);

  void HandleAppendEntries(raftpb::Message& m);
  void HandleHeartbeat(const raftpb::Message& m);
  void HandleSnapshot(const raftpb::Message& m);
  bool Restore(const raftpb::Snapshot& s);
  raftpb::ConfState SwitchToConfig(TrackerConfig cfg, ProgressMap prs);
  void AbortLeaderTransfer() { lead_transferee_ = 0; }

  bool CommittedEntryInCurrentTerm() const;
  void SendReadIndexResponse(const raftpb::Message& m);
  void RespondToReadIndex(const raftpb::Message& req, uint64_t index);
  void ReleasePendingReadIndexMessages();
  // Remembers the clock reading of the leader tick just begun.
  void RecordLeaderTickTime();

  // Constant after construction.
  const uint64_t id_;
  const int election_timeout_;
  const int heartbeat_timeout_;
  const uint64_t max_msg_size_;
  const uint64_t max_uncommitted_size_;
  const bool check_quorum_;
  const bool pre_vote_;
  const ReadOnlyOption read_only_option_;
  const int lease_ticks_;
  const Clock::duration lease_duration_;
  const bool disable_proposal_forwarding_;
  const TestingKnobs knobs_;

  // Persistent (HardState): current_term, voted_for; commit lives in log_.
  uint64_t term_ = 0;
  uint64_t vote_ = 0;

  RaftLog log_;
  ProgressTracker prs_;
  Role role_ = Role::kFollower;
  bool is_learner_ = false;
  uint64_t lead_ = 0;
  // Target of an in-progress leadership transfer (0 = none).
  uint64_t lead_transferee_ = 0;
  // Only one conf change may be pending: the index of the latest one, which
  // must be applied before another is proposed.
  uint64_t pending_conf_index_ = 0;
  uint64_t uncommitted_size_ = 0;
  // Proposals were appended but not yet sent (see FlushAppends).
  bool append_pending_ = false;
  ReadOnly read_only_;
  // Read requests waiting for the first commit in this leader's term.
  std::vector<raftpb::Message> pending_read_index_messages_;

  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_election_timeout_ = 0;
  SplitMix64 rng_;

  // Lease-based reads: the leader's tick counter this term (starts at 1),
  // whether the lease was given up (MsgTimeoutNow sent), and whether this
  // node must treat itself as in a leader's lease after a restart.
  uint64_t leader_tick_ = 0;
  // The clock reading (SetNow) at each of the last lease_ticks_ + 1 leader
  // ticks, the last being leader_tick_ (nullopt: no reading yet).
  std::deque<std::optional<Clock::time_point>> leader_tick_times_;
  // The latest clock reading (nullopt until the application gives one).
  std::optional<Clock::time_point> now_;
  bool lease_revoked_ = false;
  bool restart_guard_ = false;

  std::vector<raftpb::Message> msgs_;
  std::vector<ReadState> read_states_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_RAFT_H_
