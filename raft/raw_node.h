// RawNode: the application-facing interface of one Raft group member.
//
// RawNode is a pure, deterministic state machine (the design of etcd-io/raft
// rawnode.go): it has no threads, clocks, timers or I/O. The owner drives it:
//
//   Tick()                          every tick of logical time
//   Step(msg)                       for every message received from a peer
//   Propose / ProposeConfChange / ReadIndex / TransferLeader / Campaign
//   while (node.HasReady()) {       the Ready loop
//     Ready rd = node.GetReady();
//     1. if rd.snapshot: persist it (and restore the application state)
//     2. persist rd.entries and rd.hard_state (one synced write when
//        rd.must_sync) -- BEFORE step 3
//     3. send rd.messages
//     4. apply rd.committed_entries in order (ApplyConfChange for
//        ENTRY_CONF_CHANGE entries); answer rd.read_states once applied
//     5. node.Advance(rd)
//   }
//
// Not thread-safe; owned by one shard driver.
//
// Bootstrapping a brand-new group: before creating the nodes, write the
// initial membership into every founding member's storage as a snapshot at
// index 1, term 1 (empty application data). The group's history then starts
// with a snapshot, so a node that joins later (with an empty storage) is
// always sent a snapshot carrying the membership first:
//
//   MemoryStorage storage;
//   raftpb::Snapshot boot;
//   boot.mutable_metadata()->set_index(1);
//   boot.mutable_metadata()->set_term(1);
//   for (uint64_t id : {1, 2, 3}) boot.mutable_metadata()->mutable_conf_state()->add_voters(id);
//   absl::Status s = storage.ApplySnapshot(boot);  // OK on a fresh storage
//   Config config;
//   config.id = 1;
//   config.storage = &storage;
//   auto node = RawNode::Create(config);
//
// (A snapshot at index 0 also starts a group, but then a joining node would
// replay the log without the initial membership; raft crashes rather than
// let it apply a conf change to an empty configuration.)
//
// A node that joins an existing group later starts with an empty storage and
// learns everything from the leader once it has been added with
// ProposeConfChange. Restart: create the RawNode again over the same storage
// (and Config::applied); the application restores its state machine from the
// storage's snapshot and re-applies the committed entries after it.
#ifndef TESSERA_RAFT_RAW_NODE_H_
#define TESSERA_RAFT_RAW_NODE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "raft/config.h"
#include "raft/storage.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {

class Raft;

// Everything the application must do after a batch of inputs. See the Ready
// loop above for the order.
struct Ready {
  std::optional<SoftState> soft_state;           // set when changed
  std::optional<raftpb::HardState> hard_state;   // set when changed; persist
  std::vector<ReadState> read_states;            // answered ReadIndex requests
  std::vector<raftpb::Entry> entries;            // persist BEFORE sending messages
  std::optional<raftpb::Snapshot> snapshot;      // persist/apply before entries
  std::vector<raftpb::Entry> committed_entries;  // apply
  // The committed entries' payload bytes, counted by GetReady: Advance gives
  // them back to the uncommitted-size budget (Config::max_uncommitted_entries_size)
  // even if the caller has moved the entries' data out to apply them.
  uint64_t committed_payload_bytes = 0;
  std::vector<raftpb::Message> messages;  // send after persisting
  // True when entries, a snapshot or the term/vote changed: the write must be
  // synced before messages are sent. (A commit-only change need not be.)
  bool must_sync = false;
};

class RawNode {
 public:
  // Creates a node from config.storage (restarting from its hard state,
  // snapshot and entries). kInvalidArgument for a bad config (id 0, no
  // storage, election_ticks <= heartbeat_ticks, max_inflight_msgs <= 0,
  // kLeaseBased without check_quorum or with a non-positive lease);
  // kFailedPrecondition if the storage is inconsistent (e.g. commit beyond the
  // last entry); otherwise the storage's error.
  static absl::StatusOr<std::unique_ptr<RawNode>> Create(const Config& config);
  ~RawNode();
  RawNode(const RawNode&) = delete;
  RawNode& operator=(const RawNode&) = delete;

  // Advances logical time by one tick.
  void Tick();
  // The application's monotonic clock reading. With kLeaseBased, lease reads
  // are judged against the latest one as well as in ticks: call it with a
  // fresh reading at the start of each batch of work (after its inputs were
  // received, before Tick, Step and ReadIndex), so that a process that
  // stalled finds its lease expired. Readings that go back are ignored.
  // Without any reading a kLeaseBased leader never holds a lease.
  void SetNow(Clock::time_point now);
  // Starts an election now (with PreVote if configured). kFailedPrecondition
  // if this node cannot campaign (learner, not in the config).
  absl::Status Campaign();
  // Proposes `data` to be appended to the log. OK means accepted for
  // replication (by this leader, or forwarded to the leader), not committed:
  // the entry may still be lost, so the caller waits for it in
  // committed_entries with a timeout. kUnavailable if there is no leader, if
  // forwarding is disabled on a follower (the message names the leader id:
  // "not leader; leader is 3"), while a leadership transfer is in progress or
  // when this leader was removed from the group: retry (at the leader).
  // kResourceExhausted if max_uncommitted_entries_size would be exceeded:
  // retry later.
  absl::Status Propose(std::string data);
  // Proposes a membership change. As Propose; in addition, on the leader,
  // kFailedPrecondition if another conf change is still unapplied or if the
  // change does not fit the current (joint or not) configuration, and
  // kInvalidArgument if the change itself is invalid (e.g. removes every
  // voter, changes several voters without joint consensus).
  absl::Status ProposeConfChange(const raftpb::ConfChange& cc);
  // Applies a committed conf change (call it when applying an
  // ENTRY_CONF_CHANGE entry, with the ConfChange parsed from its data) and
  // returns the new membership. An entry whose data does not parse must be
  // applied as an empty ConfChange. A change that is invalid against the
  // current configuration (never one this leader code proposed: it checks
  // proposals the same way; possible from a faulty peer's log) is refused
  // with the Changer's error and changes nothing: every replica applies the
  // same log to the same configuration, so all refuse it alike. Applying
  // any change before the configuration is known is a bug: it aborts.
  absl::StatusOr<raftpb::ConfState> ApplyConfChange(const raftpb::ConfChange& cc);
  // Feeds a message received from the network. kInvalidArgument for local
  // message types (MSG_HUP, MSG_BEAT, MSG_UNREACHABLE, MSG_SNAP_STATUS,
  // MSG_CHECK_QUORUM). Messages for an old term, responses from unknown peers
  // and forwarded proposals that the leader drops are ignored (OK).
  absl::Status Step(const raftpb::Message& m);
  // As above, consuming `m` (saves copying its entries).
  absl::Status Step(raftpb::Message&& m);
  // Requests a linearizable read. When confirmed, Ready::read_states holds
  // {index, request_ctx}: serve the read once applied >= index. The request is
  // dropped silently when there is no leader; the caller retries on timeout.
  // request_ctx must be unique among pending reads (e.g. a request id).
  // With ReadOnlyOption::kLeaseBased, `use_lease` chooses per request: true
  // answers from the leader's lease when it holds one at the latest SetNow
  // reading (no round trip; relies on the clock-drift bound in README.md),
  // false always confirms leadership with a heartbeat round. With kSafe
  // every read takes the heartbeat round.
  void ReadIndex(std::string request_ctx, bool use_lease = true);
  // Asks the leader to hand leadership to `transferee` (forwarded when called
  // on a follower). Aborted after an election timeout.
  void TransferLeader(uint64_t transferee);
  // Tells the leader that the last message to `id` may have been lost.
  void ReportUnreachable(uint64_t id);
  // Tells the leader whether sending a snapshot to `id` succeeded.
  void ReportSnapshot(uint64_t id, bool success);

  bool HasReady() const;
  // Returns the pending work. Must be followed by Advance(rd) once handled.
  Ready GetReady();
  // Call after persisting rd and applying rd.committed_entries.
  void Advance(const Ready& rd);

  // Introspection (tests, metrics):
  uint64_t id() const;
  uint64_t term() const;
  Role role() const;
  uint64_t leader_id() const;
  uint64_t commit_index() const;
  uint64_t applied_index() const;
  uint64_t last_index() const;
  raftpb::ConfState conf_state() const;
  // Raft::LeaderIdle: this leader has nothing in flight (hibernation hook).
  bool LeaderIdle() const;

  // The state machine itself, for white-box unit tests.
  Raft& raft_for_testing() { return *raft_; }

 private:
  explicit RawNode(std::unique_ptr<Raft> raft);

  std::unique_ptr<Raft> raft_;
  SoftState prev_soft_state_;
  raftpb::HardState prev_hard_state_;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_RAW_NODE_H_
