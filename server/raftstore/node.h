// Node: every shard replica hosted by one tessera-server process, driven by
// one raft loop thread.
//
// Where it sits: the KV service calls Propose()/ReadBarrier(); the transport
// delivers peer messages through Receive(). The raft loop thread owns every
// raft::RawNode and runs, per cycle (STYLE.md §2):
//   1. step queued messages, proposals, read requests (those of a shard
//      arriving together share one ReadIndex round) and due ticks;
//   2. collect the Ready of every shard that has one;
//   3. before the fsync: send leaders' appends and heartbeats (followers
//      write in parallel, Raft thesis §10.2.1), apply the committed entries
//      this node already persisted (ONE Applier::Apply) and answer their
//      proposals and the confirmed reads;
//   4. persist all Readys with ONE synced RaftLog::Save (group commit);
//   5. only then send the other messages, batched per destination node;
//   6. apply the remaining committed entries, answer; Advance every Ready.
// Snapshots are produced on demand from the KvStore (ExportSnapshot) when a
// follower needs compacted entries (streamed by the transport when
// NodeOptions::snapshots is set), and the log of a shard is compacted every
// snapshot_interval_entries applied entries.
//
// Thread-safety: all public methods are thread-safe. Callbacks run on the raft
// loop thread at the end of a cycle (after Status() reflects it) and must not
// block (hand work to another thread if needed) nor destroy the Node. Refusals
// decided at once (kNotFound, kResourceExhausted, kCancelled once stopping)
// call `done` inline, in the caller's thread, before Propose/ReadBarrier
// return; Stop() calls the kCancelled callbacks in its caller's thread.
// Step mode (NodeOptions::step_mode, for deterministic simulation): no
// thread is started; the caller runs one cycle at a time with
// RunCycleForTesting(), on its own thread, and time comes from
// NodeOptions::clock. Both modes run the same cycle code.
// Implementation notes (snapshot data format, restart, compaction): README.md
// "Node".
#ifndef TESSERA_SERVER_RAFTSTORE_NODE_H_
#define TESSERA_SERVER_RAFTSTORE_NODE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "raft/config.h"
#include "server/raftstore/applier.h"
#include "server/raftstore/node_metrics.h"
#include "server/raftstore/transport.h"
#include "storage/engine.h"
#include "tessera/command.pb.h"

namespace tessera::server {

class SnapshotExchange;

// A shard and the nodes holding its replicas (this node among them).
struct ShardPlacement {
  ShardId shard = 0;
  std::vector<NodeId> replicas;
};

// The clocks a Node reads: the monotonic one that drives ticks and measures
// leases (raft::RawNode::SetNow), and the wall clock that request deadlines
// (absl::Time) are compared with. The default reads the real clocks; the
// deterministic simulator (tests/sim/node_sim.h) injects virtual time.
// Implementations must be thread-safe; the Node never changes them.
class NodeClock {
 public:
  virtual ~NodeClock() = default;
  virtual raft::Clock::time_point MonotonicNow() const = 0;
  virtual absl::Time Now() const = 0;
};

// The real clocks (steady_clock and absl::Now()).
const NodeClock& RealNodeClock();

// TESTING ONLY. Mutation switches that break a durability or ordering rule
// of the cycle on purpose, so that the node simulator (tests/sim/node_sim.h)
// can prove it detects the violation. All off in production; tessera-server
// never sets them.
struct NodeTestingKnobs {
  // Every RaftLog::Save is kBuffered: writes are acknowledged (by followers,
  // hence to clients) before a quorum has synced them. Lost on power loss.
  bool acknowledge_unsynced_writes = false;
  // A leader applies (and answers) the entries it appends right away, before
  // they commit.
  bool apply_before_commit = false;
  // Every message leaves before the cycle's Save: a follower acknowledges
  // entries it has not persisted yet.
  bool ack_before_save = false;
  // raft::TestingKnobs::lease_in_ticks_only: a leader that stalled keeps its
  // lease (the lease counts ticks only, not the monotonic clock).
  bool lease_in_ticks_only = false;
};

struct NodeOptions {
  NodeId id = 0;
  // Shards to host from the start. A shard whose raft state is empty on
  // disk is bootstrapped with `replicas` as its voters. Every other shard
  // with raft state on disk (bootstrapped or added at run time by
  // AddReplica) is opened too (README.md "Membership changes").
  std::vector<ShardPlacement> shards;
  absl::Duration tick_interval = absl::Milliseconds(50);
  int election_ticks = 20;  // 1 s with the default tick
  int heartbeat_ticks = 2;
  // Proposals plus reads waiting per shard; beyond it kResourceExhausted.
  size_t max_pending_per_shard = 4096;
  // Compact a shard's log after this many entries applied since the last time.
  uint64_t snapshot_interval_entries = 10000;
  uint64_t max_size_per_msg = 1 << 20;
  // Memory bounds of raft (0 = unlimited): entry bytes a leader keeps
  // proposed but uncommitted per shard (beyond it Propose fails with
  // kResourceExhausted), and entry bytes sent but not acknowledged per
  // follower and shard (raft then waits for acks before sending more).
  uint64_t max_uncommitted_bytes_per_shard = 64 << 20;
  uint64_t max_inflight_bytes_per_follower = 16 << 20;
  // Seeds raft's randomized election timeouts (mixed with the node id).
  uint64_t seed = 0;
  // Snapshots in flight (snapshot_stream.h), shared with the transport: a
  // snapshot for a follower is a view pinned there that the transport
  // streams, and a received one is committed from its staging before raft
  // steps the MSG_SNAP. nullptr: snapshot data inline in the MSG_SNAP (tests
  // with LocalNetwork). Not owned; must outlive the Node.
  SnapshotExchange* snapshots = nullptr;
  // A snapshot sent to a follower that the transport has not reported
  // (ReportSnapshot) within this counts as failed, and raft probes again.
  // Zero: 4 election timeouts, for transports that never report (the tests'
  // LocalNetwork). GrpcTransport reports every transfer, which may take
  // minutes for a large shard: tessera-server sets this above the
  // transport's transfer deadline, so that a transfer still in progress is
  // not declared lost (raft would send the whole snapshot again after it).
  absl::Duration snapshot_report_timeout = absl::ZeroDuration();
  // Hooks for metrics (server/node_metrics.h); nullptr = none. Not owned;
  // must outlive the Node.
  NodeMetrics* metrics = nullptr;
  // Called once, on the raft loop thread, when the loop stops on an error
  // (a failed RaftLog::Save, Apply, snapshot install or compaction: the node
  // cannot go on safely) with that error, which names the shard(s) and the
  // operation. By then the node refuses requests with kUnavailable, Status()
  // reports every replica "stopped" and Health() returns the error. Must not
  // block or destroy the Node; the process should exit (tessera-server does).
  // Empty: the error is logged to stderr only.
  std::function<void(const absl::Status&)> on_fatal;
  // Health() reports a loop that has not completed a cycle for this long as
  // wedged. Zero: 10 election timeouts, at least 5 s.
  absl::Duration max_loop_stall = absl::ZeroDuration();
  // Spread leaderships evenly: once per election timeout, when every shard
  // hosted here has a leader, a node that leads at least two more of the
  // shards it shares with one of its followers than that follower does
  // hands one of them to it (raft leadership transfer; the follower it
  // out-leads most). Counting over the shared shards keeps two nodes that
  // host different sets from handing one back and forth. So leaders spread after a cluster
  // starts and after a node returns (until a scheduler of the elastic
  // cluster takes over).
  bool balance_leaders = true;
  // Whether this node takes leadership handed to it by a transfer
  // (MsgTimeoutNow, e.g. another node's balancing): false declines it (the
  // transfer lapses at the leader, which offers it elsewhere later).
  // Called on the raft loop thread; must be thread-safe, cheap and not
  // block. Empty: always. Elections by timeout are not affected (raft needs
  // them for liveness). tessera-server declines while it does not serve.
  std::function<bool()> accept_leadership;
  // Hibernation (README.md "Hibernation"): a shard whose leader had nothing
  // to do for hibernate_idle_ticks ticks (everything committed, applied and
  // acknowledged by every follower, each heard from recently, no request,
  // read, transfer or snapshot pending) tells its followers and stops
  // ticking and heartbeating; a follower told so, and caught up, stops
  // ticking too. Any proposal, read, message or transfer wakes it. Sleeping
  // followers check every hibernate_check_ticks ticks that the leader's node
  // is alive (a probe when they have not heard from it) and wake when it
  // stays silent for a check. Zero ticks: election_ticks (idle) and
  // election_ticks / 2 (check). Should be the same on every node.
  bool hibernate_idle_shards = true;
  int hibernate_idle_ticks = 0;
  int hibernate_check_ticks = 0;
  // Time source (not owned; must outlive the Node). nullptr: RealNodeClock().
  // The threaded loop still sleeps on the real clock between cycles, so an
  // injected clock there must run at the real rate (e.g. offset or skewed).
  const NodeClock* clock = nullptr;
  // Step mode: Start() starts no thread; the caller drives the loop with
  // RunCycleForTesting(). TransferLeadershipAway() then only files the
  // request (it is carried out by later cycles) and returns at once.
  bool step_mode = false;
  // Mutation switches; see NodeTestingKnobs. Testing only.
  NodeTestingKnobs testing;
};

// A snapshot of one shard replica's raft state, for status and metrics.
struct ShardStatus {
  ShardId shard = 0;
  // "leader", "follower", "candidate", "pre-candidate", or "stopped" once the
  // raft loop stopped on an error (then leader is 0).
  std::string role;
  uint64_t term = 0;
  NodeId leader = 0;  // 0 = unknown
  uint64_t commit_index = 0;
  uint64_t applied_index = 0;
  uint64_t last_index = 0;
  uint64_t snapshots_installed = 0;  // from the leader, since Start()
  absl::Time last_leader_contact;    // when this replica last heard from its leader (now if leader)
  // Hibernating (README.md "Hibernation"): not ticking until woken. For a
  // sleeping follower, last_leader_contact is the last message from the
  // leader's node (probes keep it fresh while the group sleeps).
  bool asleep = false;
  // The shard's membership as this replica knows it (voters, outgoing
  // voters while a joint change is in progress, learners), by id; all
  // empty for a replica added by AddReplica until its first snapshot.
  std::vector<NodeId> voters;
  std::vector<NodeId> voters_outgoing;
  std::vector<NodeId> learners;
  // The hash range the replica has applied (v1::ShardStatus): 0, 0 for a
  // shard that never split. The Node leaves them 0; the KV backend fills
  // them from the state machine (KvBackend::AddStoredState).
  uint64_t range_version = 0;
  uint64_t hash_end = 0;
  // About how many bytes its keys and values take (KvStore::
  // ApproximateBytes; filled by the KV backend too).
  uint64_t approximate_bytes = 0;
};

class Node {
 public:
  using ProposeCallback = std::function<void(absl::StatusOr<serverpb::CommandResult>)>;
  using ReadCallback = std::function<void(absl::Status)>;
  using StatusCallback = std::function<void(absl::Status)>;

  // Recovers every hosted shard from `engine` (bootstrapping new ones), and
  // starts the raft loop. None of the pointers is owned; all must outlive
  // the Node. Errors: kInvalidArgument (bad options), storage errors.
  static absl::StatusOr<std::unique_ptr<Node>> Start(const NodeOptions& options,
                                                     storage::Engine* engine, Applier* applier,
                                                     Transport* transport);
  // The same over a RaftLog and a KvStore given separately (e.g. the
  // in-memory ones of storage/mem_*.h). Neither is owned.
  static absl::StatusOr<std::unique_ptr<Node>> Start(const NodeOptions& options,
                                                     storage::RaftLog* log, storage::KvStore* kv,
                                                     Applier* applier, Transport* transport);
  ~Node();  // Stop()s.
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Replicates `command` in `shard` and calls `done` exactly once: with the
  // CommandResult once it is applied on this node, or with an error:
  //  kUnavailable: this replica is not the leader (ErrorDetail.not_leader
  //    names the leader if known) or leadership changed before the command
  //    committed (the command may still apply: retry with the same session);
  //  kResourceExhausted: too many pending requests in the shard;
  //  kDeadlineExceeded: not applied by `deadline` (outcome unknown);
  //  kNotFound: the shard has no replica here; kCancelled: the node stops;
  //  kUnavailable without a leader hint also once the raft loop stopped on
  //  an error (another replica may serve).
  void Propose(ShardId shard, serverpb::Command command, absl::Time deadline, ProposeCallback done);

  // Calls `done` with OK once this replica's applied state is fresh enough
  // for a linearizable read started now: the leader confirmed its leadership
  // (a heartbeat quorum, or its lease when `lease` is true) and the local
  // applied index reached the confirmed commit index. Errors as Propose.
  void ReadBarrier(ShardId shard, bool lease, absl::Time deadline, ReadCallback done);

  // As ReadBarrier without the lease, on a follower too: a follower that
  // knows its leader asks it for its confirmed commit index (raft's
  // ReadIndex, forwarded) and calls `done` once it applied that far. The
  // start of a watch "from now" on any replica.
  void FollowerReadBarrier(ShardId shard, absl::Time deadline, ReadCallback done);

  // Calls `done` with OK once this replica has applied `index` of `shard`
  // (at once if it has), without asking the leader: read-your-writes for a
  // stale read. Errors: kDeadlineExceeded, and Propose's kNotFound,
  // kResourceExhausted, kCancelled.
  void WaitApplied(ShardId shard, uint64_t index, absl::Time deadline, ReadCallback done);

  // Transport ingress (the MessageHandler).
  // Queued for the raft loop; beyond 4096 queued batches, dropped (counted
  // as a refused peer message, reason "inbox_full"): raft resends.
  void Receive(NodeId from, std::vector<ShardMessage> messages);

  // Replica lifecycle: the steps of a membership change (README.md
  // "Membership changes"). Each `done` runs on the raft loop thread.
  //
  // Starts hosting a replica of `shard`. Without `founders`, an empty one:
  // it knows no configuration, answers nothing but a leader's messages and
  // serves nothing until a leader that added this node (as learner or
  // voter) sends it a snapshot. With `founders` (this node among them), a
  // replica of a new group bootstrapped with them as voters, as NodeOptions
  // ::shards does at start. Errors: kAlreadyExists (hosted here),
  // kFailedPrecondition (raft state or data of the shard left on disk),
  // kInvalidArgument (founders without this node), storage errors.
  void AddReplica(ShardId shard, std::vector<NodeId> founders, StatusCallback done);
  // Stops hosting `shard`: its waiting requests fail with kUnavailable, and
  // its raft log and data are deleted (also when it is no longer hosted but
  // left on disk). Call it only once a committed change took this node out
  // of the shard's configuration. Errors: kNotFound (nothing of it here).
  void RemoveReplica(ShardId shard, StatusCallback done);
  // Proposes a membership change of `shard`, which this node must lead.
  // `done` runs once raft appended it (its commit shows in ShardStatus).
  // Errors: kNotFound, kUnavailable (not the leader), raft's refusals:
  // kInvalidArgument / kFailedPrecondition (invalid for the configuration,
  // or another change pending; raft/raw_node.h ProposeConfChange).
  void ProposeConfChange(ShardId shard, raftpb::ConfChange cc, StatusCallback done);
  // Starts handing this node's leadership of `shard` to voter `to` (raft
  // leadership transfer; it lapses after an election timeout if `to` does
  // not take it: watch ShardStatus). Errors: kNotFound, kUnavailable (not
  // the leader), kInvalidArgument (`to` is not another voter).
  void TransferLeader(ShardId shard, NodeId to, StatusCallback done);
  // Transport feedback (thread-safe, queued for the raft loop): messages to
  // `to` were lost because it could not be reached (raft probes it instead
  // of streaming appends blindly), and a snapshot of `shard` sent to `to`
  // was delivered or failed (a failed one is retried promptly).
  void ReportUnreachable(NodeId to);
  void ReportSnapshot(NodeId to, ShardId shard, bool ok);

  std::vector<ShardStatus> Status() const;

  // OK while the raft loop runs and completes cycles. Otherwise:
  // the loop's error if it stopped on one (see NodeOptions::on_fatal);
  // kUnavailable if it has not completed a cycle for max_loop_stall (wedged,
  // e.g. on a hung disk; OK again if it recovers) or after Stop().
  absl::Status Health() const;
  // Payload bytes of proposals this node leads that were answered
  // DEADLINE_EXCEEDED (their callers gave up) but whose entries it still has
  // to replicate and apply: queued work that no waiting request accounts for.
  // Admission control counts them as in flight. Thread-safe.
  uint64_t AbandonedProposalBytes() const;
  // Status() of one shard; nullopt if it has no replica here.
  std::optional<ShardStatus> StatusOf(ShardId shard) const;

  // Asks every shard this node leads to hand leadership to another
  // up-to-date replica, and waits (up to `timeout`) until it leads none.
  // kDeadlineExceeded if some shard is still led here at the deadline.
  // In step mode it does not wait: kDeadlineExceeded while some shard is
  // still led here (the request stays active until the deadline by
  // NodeOptions::clock; poll Status()).
  absl::Status TransferLeadershipAway(absl::Duration timeout);

  // Stops the raft loop; pending callbacks get kCancelled. Idempotent. In
  // step mode, not from inside a callback.
  void Stop();

  // Step mode only: runs exactly one cycle of the raft loop on the caller's
  // thread (take the inbox, tick by NodeOptions::clock, step messages,
  // proposals and reads, handle the Readys: persist, send, apply, complete
  // waiters, advance), running the cycle's callbacks before it returns.
  // Errors: kFailedPrecondition when not in step mode; kCancelled after
  // Stop(); the loop's error once it stopped on one (on_fatal was called).
  absl::Status RunCycleForTesting();

 private:
  class Impl;
  explicit Node(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_NODE_H_
