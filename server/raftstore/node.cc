#include "server/raftstore/node.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <thread>
#include <utility>

#include "absl/base/internal/raw_logging.h"
#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "proto/grpc_status.h"
#include "proto/status_macros.h"
#include "raft/raw_node.h"
#include "server/raftstore/completion_scope.h"
#include "server/raftstore/log_prefix.h"
#include "server/raftstore/peer_message_check.h"
#include "server/raftstore/raft_storage.h"
#include "server/raftstore/snapshot_stream.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

namespace {

// kUnavailable naming the leader (0 = unknown) in ErrorDetail.not_leader.
absl::Status NotLeaderError(uint64_t leader, absl::string_view why) {
  absl::Status s = absl::UnavailableError(
      leader != 0 ? absl::StrCat(why, "; leader is node ", leader) : absl::StrCat(why));
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(leader);
  SetErrorDetail(s, detail);
  return s;
}

// `s` with `what` (the shard(s) and the operation) in front of its message.
absl::Status WithContext(const absl::Status& s, absl::string_view what) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// "shards 1, 2, 5" of a batch, in order.
template <typename ShardPtrs>
std::string ShardList(const ShardPtrs& shards) {
  std::vector<ShardId> ids;
  for (const auto* s : shards) ids.push_back(s->id);
  std::sort(ids.begin(), ids.end());
  return absl::StrCat(ids.size() == 1 ? "shard " : "shards ", absl::StrJoin(ids, ", "));
}

// Every member of a configuration (voters, outgoing voters, learners,
// learners to be), by id, once each.
std::vector<NodeId> Members(const raftpb::ConfState& cs) {
  std::vector<NodeId> out;
  for (const auto* ids :
       {&cs.voters(), &cs.voters_outgoing(), &cs.learners(), &cs.learners_next()}) {
    out.insert(out.end(), ids->begin(), ids->end());
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool IsEmptyLog(const storage::LogState& state) {
  const raftpb::HardState& hs = state.hard_state;
  return hs.term() == 0 && hs.vote() == 0 && hs.commit() == 0 && state.last_index == 0 &&
         state.snapshot.index() == 0;
}

// Heartbeat contexts of hibernation (README.md "Hibernation"). The loop
// builds these messages itself, raft only steps them: the leader's notice
// that the group sleeps (a MSG_HEARTBEAT carrying its commit index, also
// its answer to a probe; followers echo the context in their response) and
// a sleeping follower's probe of a leader node it has not heard from, and a
// follower's wake-up call to its leader (both MSG_HEARTBEAT_RESP).
constexpr char kSleepContext[] = "tessera/hibernate";
constexpr char kProbeContext[] = "tessera/hibernate-probe";
constexpr char kWakeContext[] = "tessera/wake";

struct ProposeRequest {
  ShardId shard = 0;
  std::string data;
  absl::Time deadline;
  Node::ProposeCallback done;
};

struct ReadRequest {
  ShardId shard = 0;
  bool lease = false;  // may be answered from the leader's lease
  absl::Time deadline;
  Node::ReadCallback done;
  // Non-zero: Node::WaitApplied (no leader involved): done once applied.
  uint64_t min_applied = 0;
  // Node::FollowerReadBarrier: a follower asks its leader (ReadIndex).
  bool on_follower = false;
};

struct Inbound {
  NodeId from = 0;
  std::vector<ShardMessage> messages;
};

struct SnapshotOutcome {
  NodeId to = 0;
  ShardId shard = 0;
  bool ok = false;
};

// AddReplica / RemoveReplica / ProposeConfChange, handled at the start of
// the next cycle.
struct MembershipRequest {
  enum class Kind { kAddReplica, kRemoveReplica, kConfChange, kTransferLeader };
  Kind kind = Kind::kAddReplica;
  ShardId shard = 0;
  std::vector<NodeId> founders;  // kAddReplica
  raftpb::ConfChange cc;         // kConfChange
  NodeId to = 0;                 // kTransferLeader
  Node::StatusCallback done;
};

struct Inbox {
  std::vector<Inbound> messages;
  std::vector<ProposeRequest> proposals;
  std::vector<ReadRequest> reads;
  std::vector<NodeId> unreachable;
  std::vector<SnapshotOutcome> snapshots;
  std::vector<MembershipRequest> membership;
  bool empty() const {
    return messages.empty() && proposals.empty() && reads.empty() && unreachable.empty() &&
           snapshots.empty() && membership.empty();
  }
};

struct PendingProposal {
  uint64_t term = 0;  // the term the entry was appended in
  absl::Time deadline;
  uint64_t bytes = 0;  // the entry's payload
  Node::ProposeCallback done;
};

struct PendingRead {
  absl::Time deadline;
  Node::ReadCallback done;
};

// Requests waiting in a shard (queued or pending); beyond
// max_pending_per_shard new ones are refused.
struct ShardCounter {
  std::atomic<size_t> pending{0};
};

class SystemClock final : public NodeClock {
 public:
  raft::Clock::time_point MonotonicNow() const override { return raft::Clock::now(); }
  absl::Time Now() const override { return absl::Now(); }
};

}  // namespace

const NodeClock& RealNodeClock() {
  static const SystemClock* const clock = new SystemClock();
  return *clock;
}

class Node::Impl {
 public:
  Impl(const NodeOptions& options, storage::RaftLog* log, storage::KvStore* kv, Applier* applier,
       Transport* transport)
      : options_(options),
        clock_(options.clock != nullptr ? options.clock : &RealNodeClock()),
        // Generous by default: a slow fsync on a loaded disk is not a wedge.
        max_loop_stall_(
            options.max_loop_stall > absl::ZeroDuration()
                ? options.max_loop_stall
                : std::max(10 * options.election_ticks * options.tick_interval, absl::Seconds(5))),
        log_(log),
        kv_(kv),
        applier_(applier),
        transport_(transport) {
    for (const ShardPlacement& p : options_.shards) CounterFor(p.shard);
  }

  ~Impl() { Stop(); }

  absl::Status Init();
  // Writes the bootstrap state of every shard in `shards` whose raft state
  // is empty (a snapshot point at index 1 with its replicas as voters).
  absl::Status Bootstrap(const std::vector<ShardPlacement>& shards);
  // Opens the raft state of `shard` (empty for a new replica) and starts
  // driving it; `replicas` until raft knows its configuration.
  absl::Status CreateShard(ShardId shard, const std::vector<NodeId>& replicas);
  void StartLoop() {
    last_cycle_ns_.store(absl::ToUnixNanos(clock_->Now()), std::memory_order_relaxed);
    next_tick_ = clock_->MonotonicNow() + absl::ToChronoNanoseconds(options_.tick_interval);
    if (!options_.step_mode) thread_ = std::thread([this] { Loop(); });
  }
  absl::Status RunCycleForTesting() ABSL_LOCKS_EXCLUDED(mu_);
  void Propose(ShardId shard, serverpb::Command command, absl::Time deadline, ProposeCallback done)
      ABSL_LOCKS_EXCLUDED(mu_);
  void ReadBarrier(ShardId shard, bool lease, absl::Time deadline, ReadCallback done,
                   uint64_t min_applied = 0, bool on_follower = false) ABSL_LOCKS_EXCLUDED(mu_);
  void Receive(NodeId from, std::vector<ShardMessage> messages) ABSL_LOCKS_EXCLUDED(mu_);
  void ReportUnreachable(NodeId to) ABSL_LOCKS_EXCLUDED(mu_);
  void ReportSnapshot(NodeId to, ShardId shard, bool ok) ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<ShardStatus> Status() const ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status Health() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t AbandonedBytes() const { return abandoned_bytes_.load(std::memory_order_relaxed); }
  std::optional<ShardStatus> StatusOf(ShardId shard) const ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status TransferLeadershipAway(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_, stop_mu_);
  // Node::AddReplica / RemoveReplica / ProposeConfChange: queued for the loop.
  void QueueMembership(MembershipRequest request) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // State of one hosted shard; used by the raft loop thread only (and by
  // Stop() after the loop has exited).
  struct Shard {
    ShardId id = 0;
    std::vector<NodeId> replicas;
    ShardCounter* counter = nullptr;
    std::unique_ptr<RaftStorage> storage;
    std::unique_ptr<raft::RawNode> raw;
    bool leader = false;
    NodeId known_leader = 0;  // from the last soft state (0 = none), for metrics
    absl::Time last_leader_contact = absl::InfinitePast();
    // Proposals appended by this node as leader, by entry index.
    std::map<uint64_t, PendingProposal> proposals;
    // Proposals answered at their deadline whose entries this leader still
    // has to commit and apply: index -> payload bytes (AbandonedBytes()).
    std::map<uint64_t, uint64_t> abandoned;
    // Reads sent to raft, then confirmed (by read index). The reads of one
    // shard that arrive in one cycle share one ReadIndex request (context):
    // one heartbeat round confirms all of them.
    absl::flat_hash_map<std::string, std::vector<PendingRead>> unconfirmed_reads;
    std::multimap<uint64_t, PendingRead> confirmed_reads;
    uint64_t applied_since_compaction = 0;
    uint64_t snapshots_installed = 0;
    // Followers' progress as seen in their append responses (for transfers).
    absl::flat_hash_map<NodeId, uint64_t> follower_match;
    absl::flat_hash_map<NodeId, absl::Time> follower_heard;
    // Snapshots sent: (follower, tick at which to report it as failed unless
    // raft has seen it succeed by then).
    std::vector<std::pair<NodeId, uint64_t>> snapshot_reports;
    // Hibernation (README.md "Hibernation"). Asleep: not in awake_, not
    // ticked. touched: asleep but given input this cycle (in touched_).
    bool asleep = false;
    bool touched = false;
    // Woken this cycle: its reads take a heartbeat round, not the lease.
    bool woke_this_cycle = false;
    // The configuration changed (or the shard's slot in status_ did) since
    // PublishStatus last copied it: copied only then, since building a
    // ConfState allocates and PublishStatus visits sleeping shards too.
    bool conf_dirty = true;
    // Leader: consecutive ticks with nothing to do.
    int idle_ticks = 0;
    // Follower: the leader's sleep notice stepped this cycle (from, term,
    // commit); it sleeps after the cycle's Readys if caught up with it.
    struct SleepNotice {
      NodeId from = 0;
      uint64_t term = 0;
      uint64_t commit = 0;
    };
    std::optional<SleepNotice> sleep_notice;
  };

  // The loop's side of the membership requests (at the start of a cycle,
  // when no Shard pointer of the cycle is held).
  void HandleMembership(std::vector<MembershipRequest>& requests);
  absl::Status AddShard(ShardId shard, const std::vector<NodeId>& founders);
  absl::Status RemoveShard(ShardId shard);
  absl::Status ProposeConfChangeNow(ShardId shard, const raftpb::ConfChange& cc);
  absl::Status TransferLeaderNow(ShardId shard, NodeId to);
  // The replica of `shard` if this node leads it (woken). Errors: kNotFound,
  // kUnavailable (not the leader, naming the one it knows).
  absl::StatusOr<Shard*> LedHere(ShardId shard);

  bool HasWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || transfer_requested_ || !inbox_.empty();
  }

  // The loop thread: waits for input or the next tick, runs a cycle, again.
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  // One cycle (the loop body, shared by the thread and step mode). False
  // once the loop must end: stopping, or stopped on an error (Fail).
  bool RunCycle() ABSL_LOCKS_EXCLUDED(mu_);
  // NodeTestingKnobs::apply_before_commit: applies a leader's new entries.
  absl::Status ApplyAppendedForTesting(const std::vector<Shard*>& shards,
                                       const std::vector<raft::Ready>& readys);
  void StepMessages(std::vector<Inbound>& inbound, absl::Time now);
  void HandlePropose(ProposeRequest& req, absl::Time now);
  // Coalesces the cycle's reads into one ReadIndex per shard and kind.
  void HandleReads(std::vector<ReadRequest>& reads, absl::Time now);
  void OnTicks(absl::Time now, int ticks, bool transfer_active);
  void IssueTransfers();
  // Hibernation (README.md "Hibernation"); all no-ops when
  // NodeOptions::hibernate_idle_shards is off.
  // A sleeping shard starts ticking again (counted under `reason`).
  void Wake(Shard& s, const char* reason);
  // A sleeping shard got input this cycle: HandleReadys looks at it.
  void Touch(Shard& s);
  // A follower woken by a request: a heartbeat response with kWakeContext
  // wakes its leader.
  void WakeLeaderOf(Shard& s);
  // Whether a leader has nothing to do (raft's LeaderIdle plus the loop's
  // own waiters, every follower heard from within an election timeout).
  bool LeaderCanSleep(const Shard& s, absl::Time now) const;
  // Whether follower `r` of a shard led here was heard within `recent`; for
  // a sleeping shard, anything from its node counts, within twice that (the
  // probes keep it within about two check periods).
  bool FollowerHeard(const Shard& s, NodeId r, absl::Time now, absl::Duration recent) const;
  // After the cycle's Readys: idle leaders send their sleep notices and
  // sleep; followers that stepped a notice and are caught up sleep.
  void Hibernate(absl::Time now);
  // Every hibernate_check_ticks: a sleeping shard probes the peer nodes it
  // depends on (a follower its leader's, a leader its followers') that were
  // silent since the last check; one still silent a whole check after its
  // probe wakes the shard (a follower then elects another leader if the
  // leader is gone; a leader that lost its quorum steps down).
  void CheckSleepingShards();
  // A loop-built hibernation message of shard `s` (see kSleepContext).
  raftpb::Message HibernateMessage(const Shard& s, raftpb::MessageType type, NodeId to,
                                   const char* context) const;
  void SendHibernateMessages();
  void PublishShardCounts();
  // Inbox::unreachable and Inbox::snapshots to raft.
  void HandleTransportFeedback(const Inbox& in);
  // NodeOptions::balance_leaders: at most one transfer per call.
  void BalanceLeaders(absl::Time now);
  absl::Status HandleReadys();
  // Sends the readys' messages batched per destination node: only leaders'
  // MSG_APP and MSG_HEARTBEAT if `leaders_appends_only` (the others stay in
  // the readys), else all.
  void SendMessages(const std::vector<Shard*>& shards, std::vector<raft::Ready>& readys,
                    bool leaders_appends_only);
  // Applies committed_entries[begin[i], end[i]) of every ready with ONE
  // Applier::Apply and completes their proposals and the reads they make
  // servable.
  absl::Status ApplyCommitted(const std::vector<Shard*>& shards, std::vector<raft::Ready>& readys,
                              const std::vector<size_t>& begin, const std::vector<size_t>& end);
  // ApplyCommitted for ranges that hold no split entry.
  absl::Status ApplyRange(const std::vector<Shard*>& shards, std::vector<raft::Ready>& readys,
                          const std::vector<size_t>& begin, const std::vector<size_t>& end);
  // Applies split entry `e` of `s` alone (README.md "Shard splits"): the new
  // shard's raft starting point is saved before the data moves, and its
  // group starts once the data is durable.
  absl::Status ApplySplit(Shard& s, const raftpb::Entry& e);
  absl::Status InstallSnapshot(Shard& s, const raftpb::Snapshot& snap);
  // A received MSG_SNAP whose data was staged by the transport: commits the
  // staging before raft steps the message, when raft will take it. False:
  // drop the message (staging expired, or a storage error, then in
  // step_failure_).
  bool CommitStagedSnapshot(Shard& s, const raftpb::Message& m);
  void CompleteProposal(Shard& s, const raftpb::Entry& e, serverpb::CommandResult result);
  void CompleteReads(Shard& s);
  // Drops the abandoned proposals up to `index` (applied, or no longer led).
  void ForgetAbandoned(Shard& s, uint64_t index);
  void FailWaiters(Shard& s, const absl::Status& status, bool confirmed_reads_too);
  void PublishStatus(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  // The loop stopped on `error`: fail everything with kUnavailable, report
  // every replica "stopped", then tell options_.on_fatal.
  void Fail(const absl::Status& error) ABSL_LOCKS_EXCLUDED(mu_);
  // What Propose/ReadBarrier answer once stopping_ is set.
  absl::Status StoppedError() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failure_.ok()) return absl::CancelledError("node is stopping");
    return absl::UnavailableError(absl::StrCat("node ", options_.id, " failed (",
                                               failure_.message(), "); try another replica"));
  }

  // Queues the completion of a waiter; RunCompletions() calls them once the
  // cycle's state (and Status()) is published, with no lock held.
  void Finish(ShardCounter* counter, Node::ProposeCallback& done,
              absl::StatusOr<serverpb::CommandResult> result) {
    completions_.push_back([counter, done = std::move(done), result = std::move(result)]() mutable {
      counter->pending.fetch_sub(1);
      done(std::move(result));
    });
  }
  void Finish(ShardCounter* counter, Node::ReadCallback& done, absl::Status status) {
    completions_.push_back([counter, done = std::move(done), status = std::move(status)]() mutable {
      counter->pending.fetch_sub(1);
      done(std::move(status));
    });
  }
  void Finish(Shard& s, Node::ProposeCallback& done,
              absl::StatusOr<serverpb::CommandResult> result) {
    Finish(s.counter, done, std::move(result));
  }
  void Finish(Shard& s, Node::ReadCallback& done, absl::Status status) {
    Finish(s.counter, done, std::move(status));
  }
  // A queued request whose shard may have been removed since it was queued.
  template <typename Callback, typename Result>
  void FinishQueued(ShardId shard, Callback& done, Result result) {
    Finish(CounterFor(shard), done, std::move(result));
  }
  absl::Status RemovedError(ShardId shard) const {
    return absl::UnavailableError(
        absl::StrCat("shard ", shard, " is no longer hosted on node ", options_.id));
  }
  void RunCompletions() {
    std::vector<std::function<void()>> run;
    run.swap(completions_);
    // Callbacks may defer work to the end of the run (a Batch stream writes
    // the run's results in one message).
    CompletionScope scope;
    for (std::function<void()>& f : run) f();
  }
  void CountProposal(ShardId shard, NodeMetrics::ProposalOutcome outcome) const {
    if (options_.metrics != nullptr) options_.metrics->OnProposal(shard, outcome);
  }
  // Reserves a pending slot; false if the shard is full.
  bool Reserve(ShardCounter* c) const {
    if (c->pending.fetch_add(1) >= options_.max_pending_per_shard) {
      c->pending.fetch_sub(1);
      return false;
    }
    return true;
  }

  // Constant after construction.
  const NodeOptions options_;
  const NodeClock* const clock_;
  const absl::Duration max_loop_stall_;
  storage::RaftLog* const log_;
  storage::KvStore* const kv_;
  Applier* const applier_;
  Transport* const transport_;
  // Every shard ever hosted since Start (entries are never removed, so the
  // pointers stay valid for requests still queued for a removed shard).
  mutable absl::Mutex counters_mu_;
  absl::flat_hash_map<ShardId, std::unique_ptr<ShardCounter>> counters_
      ABSL_GUARDED_BY(counters_mu_);
  // The counter of a hosted shard (nullptr when not hosted).
  ShardCounter* HostedCounter(ShardId shard) const ABSL_LOCKS_EXCLUDED(counters_mu_, hosted_mu_);
  // The counter of `shard`, created if needed.
  ShardCounter* CounterFor(ShardId shard) ABSL_LOCKS_EXCLUDED(counters_mu_);
  // The shards hosted now (written by the loop, read by Propose/ReadBarrier).
  mutable absl::Mutex hosted_mu_;
  absl::flat_hash_set<ShardId> hosted_ ABSL_GUARDED_BY(hosted_mu_);

  // Raft loop thread only (then Stop(), after joining it).
  absl::flat_hash_map<ShardId, std::unique_ptr<Shard>> shards_;
  // Hibernation: the shards that tick (all of them when it is off), ordered
  // for deterministic iteration; the sleeping ones given input this cycle;
  // when each peer node was last heard from (tick, time); the nodes probed
  // at the last check; loop-built messages to send at the end of the cycle.
  std::map<ShardId, Shard*> awake_;
  std::vector<Shard*> ordered_;  // every shard, by id (PublishStatus)
  std::vector<Shard*> touched_;
  std::vector<Shard*> woken_;  // this cycle (woke_this_cycle set)
  absl::flat_hash_map<NodeId, uint64_t> node_heard_tick_;
  absl::flat_hash_map<NodeId, absl::Time> node_heard_time_;
  std::vector<NodeId> probed_;
  std::map<NodeId, std::vector<ShardMessage>> hibernate_out_;
  uint64_t next_check_tick_ = 0;
  uint64_t last_check_tick_ = 0;
  size_t published_awake_ = std::numeric_limits<size_t>::max();
  // The cycle's monotonic clock reading (given to shards woken in it).
  raft::Clock::time_point cycle_mono_;
  uint64_t tick_ = 0;
  raft::Clock::time_point next_tick_;  // when the next tick is due
  // Step mode: a cycle is running (Stop() from one of its callbacks only
  // marks the node stopping).
  bool in_cycle_ = false;
  uint64_t next_read_id_ = 1;
  uint64_t next_transfer_tick_ = 0;
  uint64_t next_balance_tick_ = 0;
  // BalanceLeaders: the leader of every shard hosted here at the last round,
  // how many rounds it has been unchanged, the last transfer it asked for,
  // and followers that did not take one (a draining node declines), by the
  // tick until which they are not asked again.
  std::vector<std::pair<ShardId, NodeId>> balance_layout_;
  int balance_stable_rounds_ = 0;
  std::optional<std::pair<ShardId, NodeId>> balance_asked_;
  absl::flat_hash_map<NodeId, uint64_t> balance_declined_until_;
  // TransferLeadershipAway is in progress (a drain): leadership offered to
  // this node (MsgTimeoutNow) is declined.
  bool handing_off_ = false;
  std::vector<std::function<void()>> completions_;
  // A storage error met while stepping messages (committing a staged
  // snapshot); HandleReadys returns it, which stops the loop.
  absl::Status step_failure_;
  std::thread thread_;
  // When the loop last completed a cycle (absl::ToUnixNanos), for Health().
  std::atomic<int64_t> last_cycle_ns_{0};
  // Sum of every shard's `abandoned` bytes (written by the loop, read by
  // AbandonedBytes() from any thread).
  std::atomic<uint64_t> abandoned_bytes_{0};

  absl::Mutex stop_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // serialises Stop()
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;

  mutable absl::Mutex mu_;
  Inbox inbox_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status failure_ ABSL_GUARDED_BY(mu_);  // why the loop stopped on its own
  bool transfer_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time transfer_until_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  std::vector<ShardStatus> status_ ABSL_GUARDED_BY(mu_);
  size_t led_shards_ ABSL_GUARDED_BY(mu_) = 0;
};

// ---------------------------------------------------------------- startup

absl::Status Node::Impl::Init() {
  TESSERA_RETURN_IF_ERROR(Bootstrap(options_.shards));
  for (const ShardPlacement& p : options_.shards) {
    TESSERA_RETURN_IF_ERROR(CreateShard(p.shard, p.replicas));
  }
  // Every other shard with raft state on disk (bootstrapped or added at run
  // time) is hosted again, until RemoveReplica deletes it. An added replica
  // still waiting for its first snapshot has nothing on disk: it must be
  // added again.
  TESSERA_ASSIGN_OR_RETURN(std::vector<ShardId> on_disk, log_->Shards());
  for (ShardId shard : on_disk) {
    if (shards_.contains(shard)) continue;
    TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(shard));
    TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(shard));
    if (applied == 0 && state.last_index + 1 == state.first_index && state.snapshot.index() > 1 &&
        state.hard_state.vote() == 0) {
      // A split's starting point saved before a crash took the split's
      // data (ApplySplit): the parent applies the split again.
      ABSL_RAW_LOG(INFO, "node %llu: shard %llu: split cut short by a crash; redone by its parent",
                   static_cast<unsigned long long>(options_.id),
                   static_cast<unsigned long long>(shard));
      TESSERA_RETURN_IF_ERROR(log_->DeleteShard(shard));
      continue;
    }
    if (applied + 1 < state.first_index) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", shard, ": data applied up to ", applied,
                       " but the raft log is compacted up to ", state.first_index - 1));
    }
    TESSERA_RETURN_IF_ERROR(CreateShard(shard, {}));
  }
  PublishShardCounts();
  PublishStatus(clock_->Now());
  return absl::OkStatus();
}

absl::Status Node::Impl::Bootstrap(const std::vector<ShardPlacement>& shards) {
  // A snapshot point at index 1, term 1 with the replicas as voters
  // (raft/README.md), and the store's applied index at 1 so that the
  // applier starts at 2.
  std::vector<storage::LogUpdate> boot_log;
  std::vector<storage::ShardWrite> boot_kv;
  for (const ShardPlacement& p : shards) {
    TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(p.shard));
    TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(p.shard));
    if (IsEmptyLog(state)) {
      if (applied > 1) {
        return absl::FailedPreconditionError(
            absl::StrCat("shard ", p.shard, ": empty raft log but data applied up to ", applied));
      }
      storage::LogUpdate u;
      u.shard = p.shard;
      raftpb::SnapshotMetadata& meta = u.snapshot.emplace();
      meta.set_index(1);
      meta.set_term(1);
      for (NodeId r : p.replicas) meta.mutable_conf_state()->add_voters(r);
      boot_log.push_back(std::move(u));
      if (applied == 0)
        boot_kv.push_back(storage::ShardWrite{.shard = p.shard, .applied_index = 1});
    } else if (applied + 1 < state.first_index) {
      return absl::FailedPreconditionError(
          absl::StrCat("shard ", p.shard, ": data applied up to ", applied,
                       " but the raft log is compacted up to ", state.first_index - 1));
    }
  }
  // The store's applied index first, made durable (KvStore::Apply is not
  // synced, and the raft log is a separate engine whose synced Save does not
  // cover the store). The other order let a power loss keep the snapshot
  // point but lose the applied index, and Init then refused to start ("data
  // applied up to 0 but the raft log is compacted up to 1"; found by the
  // node simulator). A crash between the two leaves applied 1 with an empty
  // log: bootstrapped again.
  if (!boot_kv.empty()) {
    TESSERA_RETURN_IF_ERROR(kv_->Apply(boot_kv));
    TESSERA_RETURN_IF_ERROR(kv_->Sync());
  }
  if (!boot_log.empty()) TESSERA_RETURN_IF_ERROR(log_->Save(boot_log));
  return absl::OkStatus();
}

absl::Status Node::Impl::CreateShard(ShardId shard, const std::vector<NodeId>& replicas) {
  auto s = std::make_unique<Shard>();
  s->id = shard;
  s->replicas = replicas;
  s->counter = CounterFor(shard);
  TESSERA_ASSIGN_OR_RETURN(s->storage, RaftStorage::Open(shard, log_, kv_, options_.snapshots));
  raft::Config config;
  config.id = options_.id;
  config.election_ticks = options_.election_ticks;
  config.heartbeat_ticks = options_.heartbeat_ticks;
  config.storage = s->storage.get();
  // Raft re-delivers the committed entries after the log's truncated index
  // (the snapshot point); the applier skips those the store already has,
  // and the loop re-applies their conf changes.
  config.applied = 0;
  config.max_size_per_msg = options_.max_size_per_msg;
  config.max_uncommitted_entries_size = options_.max_uncommitted_bytes_per_shard;
  config.max_inflight_bytes = options_.max_inflight_bytes_per_follower;
  config.check_quorum = true;
  config.pre_vote = true;
  // Lease bookkeeping on; each read chooses (ReadBarrier's `lease`). The
  // lease is also measured against the monotonic clock (Loop: SetNow).
  config.read_only_option = raft::ReadOnlyOption::kLeaseBased;
  config.tick_interval = absl::ToChronoNanoseconds(options_.tick_interval);
  config.disable_proposal_forwarding = true;
  config.testing.lease_in_ticks_only = options_.testing.lease_in_ticks_only;
  // Different shards of one node must not time out in lockstep.
  config.seed = options_.seed ^ (shard * 0x9E3779B97F4A7C15ull);
  absl::StatusOr<std::unique_ptr<raft::RawNode>> raw = raft::RawNode::Create(config);
  if (!raw.ok()) {
    return absl::Status(raw.status().code(),
                        absl::StrCat("shard ", shard, ": ", raw.status().message()));
  }
  s->raw = *std::move(raw);
  // The configuration raft recovered is the truth (it may have changed
  // since the placement the caller knows); none yet for a new replica.
  if (std::vector<NodeId> members = Members(s->raw->conf_state()); !members.empty()) {
    s->replicas = std::move(members);
  }
  awake_.emplace(shard, s.get());  // every shard starts awake
  ordered_.insert(std::lower_bound(ordered_.begin(), ordered_.end(), shard,
                                   [](const Shard* a, ShardId id) { return a->id < id; }),
                  s.get());
  shards_.emplace(shard, std::move(s));
  {
    absl::MutexLock lock(&hosted_mu_);
    hosted_.insert(shard);
  }
  return absl::OkStatus();
}

void Node::Impl::HandleMembership(std::vector<MembershipRequest>& requests) {
  for (MembershipRequest& r : requests) {
    absl::Status status;
    switch (r.kind) {
      case MembershipRequest::Kind::kAddReplica:
        status = AddShard(r.shard, r.founders);
        break;
      case MembershipRequest::Kind::kRemoveReplica:
        status = RemoveShard(r.shard);
        break;
      case MembershipRequest::Kind::kConfChange:
        status = ProposeConfChangeNow(r.shard, r.cc);
        break;
      case MembershipRequest::Kind::kTransferLeader:
        status = TransferLeaderNow(r.shard, r.to);
        break;
    }
    completions_.push_back([done = std::move(r.done), status]() { done(status); });
  }
}

absl::Status Node::Impl::AddShard(ShardId shard, const std::vector<NodeId>& founders) {
  if (shards_.contains(shard)) {
    return absl::AlreadyExistsError(
        absl::StrCat("shard ", shard, " already has a replica on node ", options_.id));
  }
  TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(shard));
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(shard));
  // A founder's bootstrap cut short by a crash leaves applied 1 and no log.
  if (!IsEmptyLog(state) || applied > (founders.empty() ? 0 : 1)) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", shard, ": raft state or data left on node ", options_.id,
                     " (applied index ", applied, "); remove the replica first"));
  }
  if (!founders.empty()) {
    if (std::find(founders.begin(), founders.end(), options_.id) == founders.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", shard, ": founders do not include node ", options_.id));
    }
    TESSERA_RETURN_IF_ERROR(Bootstrap({{.shard = shard, .replicas = founders}}));
  }
  // Without founders, no bootstrap: the replica learns its configuration
  // and state from the leader's snapshot (raw_node.h: only founders start
  // from index 1).
  TESSERA_RETURN_IF_ERROR(CreateShard(shard, founders));
  for (Shard* sp : ordered_) sp->conf_dirty = true;  // status_ slots moved
  ABSL_RAW_LOG(INFO, "node %llu: replica of shard %llu added",
               static_cast<unsigned long long>(options_.id),
               static_cast<unsigned long long>(shard));
  PublishShardCounts();
  return absl::OkStatus();
}

absl::Status Node::Impl::RemoveShard(ShardId shard) {
  auto it = shards_.find(shard);
  if (it == shards_.end()) {
    // Not hosted, but maybe left on disk (a removal cut short by a crash
    // before the deletes reached the disk): delete what is there.
    TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(shard));
    TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(shard));
    if (IsEmptyLog(state) && applied == 0) {
      return absl::NotFoundError(
          absl::StrCat("shard ", shard, " has no replica on node ", options_.id));
    }
    TESSERA_RETURN_IF_ERROR(log_->DeleteShard(shard));
    return kv_->DeleteShard(shard);
  }
  Shard& s = *it->second;
  {
    absl::MutexLock lock(&hosted_mu_);
    hosted_.erase(shard);
  }
  FailWaiters(s, RemovedError(shard), /*confirmed_reads_too=*/true);
  awake_.erase(shard);
  ordered_.erase(std::find(ordered_.begin(), ordered_.end(), &s));
  if (balance_asked_.has_value() && balance_asked_->first == shard) balance_asked_.reset();
  shards_.erase(it);                                 // touched_ and woken_ are empty between cycles
  for (Shard* sp : ordered_) sp->conf_dirty = true;  // status_ slots moved
  PublishShardCounts();
  ABSL_RAW_LOG(INFO, "node %llu: replica of shard %llu removed",
               static_cast<unsigned long long>(options_.id),
               static_cast<unsigned long long>(shard));
  TESSERA_RETURN_IF_ERROR(log_->DeleteShard(shard));
  return kv_->DeleteShard(shard);
}

absl::StatusOr<Node::Impl::Shard*> Node::Impl::LedHere(ShardId shard) {
  auto it = shards_.find(shard);
  if (it == shards_.end()) {
    return absl::NotFoundError(
        absl::StrCat("shard ", shard, " has no replica on node ", options_.id));
  }
  Shard& s = *it->second;
  Wake(s, "proposal");
  if (s.raw->role() != raft::Role::kLeader) {
    return absl::UnavailableError(absl::StrCat("node ", options_.id, " does not lead shard ", shard,
                                               " (leader: ", s.raw->leader_id(), ")"));
  }
  return &s;
}

absl::Status Node::Impl::ProposeConfChangeNow(ShardId shard, const raftpb::ConfChange& cc) {
  TESSERA_ASSIGN_OR_RETURN(Shard * led, LedHere(shard));
  LogShardScope log_shard(shard);
  return led->raw->ProposeConfChange(cc);
}

absl::Status Node::Impl::TransferLeaderNow(ShardId shard, NodeId to) {
  TESSERA_ASSIGN_OR_RETURN(Shard * led, LedHere(shard));
  Shard& s = *led;
  const raftpb::ConfState conf = s.raw->conf_state();
  if (to == options_.id ||
      std::find(conf.voters().begin(), conf.voters().end(), to) == conf.voters().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("node ", to, " is not another voter of shard ", shard));
  }
  LogShardScope log_shard(shard);
  s.raw->TransferLeader(to);
  return absl::OkStatus();
}

// ---------------------------------------------------------------- API

ShardCounter* Node::Impl::HostedCounter(ShardId shard) const {
  {
    absl::MutexLock lock(&hosted_mu_);
    if (!hosted_.contains(shard)) return nullptr;
  }
  absl::MutexLock lock(&counters_mu_);
  auto it = counters_.find(shard);
  return it == counters_.end() ? nullptr : it->second.get();
}

ShardCounter* Node::Impl::CounterFor(ShardId shard) {
  absl::MutexLock lock(&counters_mu_);
  std::unique_ptr<ShardCounter>& c = counters_[shard];
  if (c == nullptr) c = std::make_unique<ShardCounter>();
  return c.get();
}

void Node::Impl::QueueMembership(MembershipRequest request) {
  absl::Status stopped;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      inbox_.membership.push_back(std::move(request));
      return;
    }
    stopped = StoppedError();
  }
  request.done(stopped);
}

void Node::Impl::Propose(ShardId shard, serverpb::Command command, absl::Time deadline,
                         ProposeCallback done) {
  ShardCounter* counter = HostedCounter(shard);
  if (counter == nullptr) {
    done(absl::NotFoundError(absl::StrCat("shard ", shard, " has no replica on this node")));
    return;
  }
  if (!Reserve(counter)) {
    CountProposal(shard, NodeMetrics::ProposalOutcome::kRejected);
    done(absl::ResourceExhaustedError(
        absl::StrCat("shard ", shard, ": too many pending requests; retry later")));
    return;
  }
  std::string data = command.SerializeAsString();
  absl::Status stopped;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      inbox_.proposals.push_back(ProposeRequest{shard, std::move(data), deadline, std::move(done)});
      return;
    }
    stopped = StoppedError();
  }
  counter->pending.fetch_sub(1);
  done(std::move(stopped));
}

void Node::Impl::ReadBarrier(ShardId shard, bool lease, absl::Time deadline, ReadCallback done,
                             uint64_t min_applied, bool on_follower) {
  ShardCounter* counter = HostedCounter(shard);
  if (counter == nullptr) {
    done(absl::NotFoundError(absl::StrCat("shard ", shard, " has no replica on this node")));
    return;
  }
  if (!Reserve(counter)) {
    done(absl::ResourceExhaustedError(
        absl::StrCat("shard ", shard, ": too many pending requests; retry later")));
    return;
  }
  absl::Status stopped;
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_) {
      inbox_.reads.push_back(
          ReadRequest{shard, lease, deadline, std::move(done), min_applied, on_follower});
      return;
    }
    stopped = StoppedError();
  }
  counter->pending.fetch_sub(1);
  done(std::move(stopped));
}

void Node::Impl::Receive(NodeId from, std::vector<ShardMessage> messages) {
  // Bounded: a loop that fell behind (a slow disk) must not buffer its
  // peers' traffic without limit. Raft tolerates the loss (resends).
  constexpr size_t kMaxInboundBatches = 4096;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    if (inbox_.messages.size() < kMaxInboundBatches) {
      inbox_.messages.push_back(Inbound{from, std::move(messages)});
      return;
    }
  }
  if (options_.metrics != nullptr) options_.metrics->OnPeerMessageRefused("inbox_full");
}

std::vector<ShardStatus> Node::Impl::Status() const {
  absl::MutexLock lock(&mu_);
  return status_;
}

absl::Status Node::Impl::Health() const {
  {
    absl::MutexLock lock(&mu_);
    if (!failure_.ok()) return failure_;
    if (stopping_) return absl::UnavailableError("node stopped");
  }
  const absl::Duration since =
      clock_->Now() - absl::FromUnixNanos(last_cycle_ns_.load(std::memory_order_relaxed));
  if (since > max_loop_stall_) {
    return absl::UnavailableError(
        absl::StrCat("raft loop wedged: no cycle completed for ",
                     absl::FormatDuration(absl::Trunc(since, absl::Milliseconds(1)))));
  }
  return absl::OkStatus();
}

std::optional<ShardStatus> Node::Impl::StatusOf(ShardId shard) const {
  absl::MutexLock lock(&mu_);
  auto it = std::lower_bound(status_.begin(), status_.end(), shard,
                             [](const ShardStatus& s, ShardId id) { return s.shard < id; });
  if (it == status_.end() || it->shard != shard) return std::nullopt;
  return *it;
}

absl::Status Node::Impl::TransferLeadershipAway(absl::Duration timeout) {
  const absl::Time deadline = clock_->Now() + timeout;
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::CancelledError("node is stopping");
  transfer_requested_ = true;
  transfer_until_ = std::max(transfer_until_, deadline);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (!transfer_requested_ && led_shards_ == 0);
  };
  // Step mode: no loop runs while we wait; the caller polls instead.
  mu_.AwaitWithDeadline(absl::Condition(&done),
                        absl::Now() + (options_.step_mode ? absl::ZeroDuration() : timeout));
  if (led_shards_ == 0 && !transfer_requested_) return absl::OkStatus();
  if (stopping_) return absl::CancelledError("node is stopping");
  return absl::DeadlineExceededError(absl::StrCat(led_shards_, " shard(s) still led by this node"));
}

void Node::Impl::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  if (stopped_) return;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (in_cycle_) return;  // step mode, from a callback: the next Stop() finishes
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id()) {
      // Called from a callback on the loop thread: the loop exits after this
      // cycle; the destructor (on another thread) joins it.
      return;
    }
    thread_.join();
  }
  stopped_ = true;
  Inbox left;
  {
    absl::MutexLock lock(&mu_);
    std::swap(left, inbox_);
  }
  const absl::Status cancelled = absl::CancelledError("node stopped");
  for (ProposeRequest& p : left.proposals) FinishQueued(p.shard, p.done, cancelled);
  for (MembershipRequest& m : left.membership) {
    completions_.push_back([done = std::move(m.done), cancelled]() { done(cancelled); });
  }
  for (ReadRequest& r : left.reads) FinishQueued(r.shard, r.done, cancelled);
  for (auto& [id, s] : shards_) FailWaiters(*s, cancelled, /*confirmed_reads_too=*/true);
  RunCompletions();
}

// ---------------------------------------------------------------- the loop

void Node::Impl::Loop() {
  pthread_setname_np(pthread_self(), "raft-loop");  // for top -H and perf
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithDeadline(absl::Condition(this, &Impl::HasWork),
                            absl::Now() + absl::FromChrono(next_tick_ - clock_->MonotonicNow()));
    }
    if (!RunCycle()) return;
  }
}

absl::Status Node::Impl::RunCycleForTesting() {
  if (!options_.step_mode) return absl::FailedPreconditionError("the node is not in step mode");
  in_cycle_ = true;
  const bool running = RunCycle();
  in_cycle_ = false;
  if (running) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  return failure_.ok() ? absl::CancelledError("node is stopping") : failure_;
}

bool Node::Impl::RunCycle() {
  // Ticks follow the monotonic clock: a wall-clock step must not add ticks
  // (a follower counts its promise not to vote in ticks; raft/README.md).
  const raft::Clock::duration interval = absl::ToChronoNanoseconds(options_.tick_interval);
  Inbox in;
  bool transfer_active = false;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return false;
    std::swap(in, inbox_);
    if (transfer_requested_) {
      transfer_requested_ = false;
      next_transfer_tick_ = tick_;  // transfer at the next tick handling
    }
    transfer_active = clock_->Now() < transfer_until_;
  }
  // Read after taking the inbox: every request in it arrived before this
  // instant, so a lease valid now is valid for all of them (issue 18: a
  // leader whose process stalled finds its lease expired here).
  const raft::Clock::time_point mono = clock_->MonotonicNow();
  const absl::Time now = clock_->Now();
  int ticks = 0;
  if (mono >= next_tick_) {
    // Catch up on missed ticks after a slow cycle, but only a few: a long
    // stall must not look like many election timeouts at once. Never more
    // ticks than intervals passed.
    ticks = static_cast<int>(std::min<int64_t>(3, 1 + (mono - next_tick_) / interval));
    next_tick_ += interval * ticks;
    if (next_tick_ <= mono) next_tick_ = mono + interval;
  }
  // The ticks are time that passed before this cycle's inputs: a follower
  // that acknowledges a heartbeat below counts only later ticks against
  // its promise not to vote.
  // Only the awake shards: a sleeping one gets the reading when it wakes.
  cycle_mono_ = mono;
  for (auto& [id, s] : awake_) s->raw->SetNow(mono);
  for (int i = 0; i < ticks; ++i) {
    ++tick_;
    for (auto& [id, s] : awake_) {
      LogShardScope log_shard(id);
      s->raw->Tick();
    }
  }

  handing_off_ = transfer_active;
  HandleMembership(in.membership);
  HandleTransportFeedback(in);
  StepMessages(in.messages, now);
  for (ProposeRequest& p : in.proposals) HandlePropose(p, now);
  HandleReads(in.reads, now);
  if (ticks > 0 || transfer_active) OnTicks(now, ticks, transfer_active);

  if (absl::Status s = HandleReadys(); !s.ok()) {
    Fail(s);
    return false;
  }
  Hibernate(now);
  PublishStatus(now);
  RunCompletions();
  last_cycle_ns_.store(absl::ToUnixNanos(clock_->Now()), std::memory_order_relaxed);
  return true;
}

void Node::Impl::Fail(const absl::Status& error) {
  Inbox left;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    failure_ = error;
    std::swap(left, inbox_);
  }
  // kUnavailable without a leader: the SDK goes to another replica.
  const absl::Status failed = absl::UnavailableError(
      absl::StrCat("node ", options_.id, " failed (", error.message(), "); try another replica"));
  for (ProposeRequest& p : left.proposals) FinishQueued(p.shard, p.done, failed);
  for (MembershipRequest& m : left.membership) {
    completions_.push_back([done = std::move(m.done), failed]() { done(failed); });
  }
  for (ReadRequest& r : left.reads) FinishQueued(r.shard, r.done, failed);
  for (auto& [id, shard] : shards_) FailWaiters(*shard, failed, /*confirmed_reads_too=*/true);
  // Nothing here leads or follows any more (metrics, NodeStatus, readiness).
  std::vector<ShardStatus> status;
  for (auto& [id, sp] : shards_) {
    ShardStatus st;
    st.shard = id;
    st.role = "stopped";
    st.term = sp->raw->term();
    st.commit_index = sp->raw->commit_index();
    st.applied_index = sp->storage->applied_index();
    st.last_index = sp->raw->last_index();
    st.snapshots_installed = sp->snapshots_installed;
    status.push_back(std::move(st));
  }
  std::sort(status.begin(), status.end(),
            [](const ShardStatus& a, const ShardStatus& b) { return a.shard < b.shard; });
  {
    absl::MutexLock lock(&mu_);
    status_ = std::move(status);
    led_shards_ = 0;
  }
  RunCompletions();
  if (options_.on_fatal) {
    options_.on_fatal(error);
  } else {
    ABSL_RAW_LOG(ERROR, "node %llu: raft loop stopped: %s",
                 static_cast<unsigned long long>(options_.id), error.ToString().c_str());
  }
}

void Node::Impl::StepMessages(std::vector<Inbound>& inbound, absl::Time now) {
  for (Inbound& batch : inbound) {
    if (options_.hibernate_idle_shards) {
      node_heard_tick_[batch.from] = tick_;
      node_heard_time_[batch.from] = now;
    }
    for (ShardMessage& sm : batch.messages) {
      auto it = shards_.find(sm.shard);
      if (it == shards_.end()) continue;  // not hosted here (any more)
      Shard& s = *it->second;
      const raftpb::ConfState conf = s.raw->conf_state();
      const ReplicaView view{.self = options_.id, .last_index = s.raw->last_index(), .conf = &conf};
      if (const char* refused = CheckPeerMessage(sm.message, batch.from, view)) {
        if (options_.metrics != nullptr) options_.metrics->OnPeerMessageRefused(refused);
        continue;
      }
      const raftpb::MessageType type = sm.message.type();
      const NodeId from = sm.message.from();
      if (type == raftpb::MSG_TIMEOUT_NOW &&
          (handing_off_ || (options_.accept_leadership && !options_.accept_leadership()))) {
        continue;  // draining, or not serving: declined
      }
      if (type == raftpb::MSG_SNAP && !CommitStagedSnapshot(s, sm.message)) continue;
      if (options_.hibernate_idle_shards) {
        // Heartbeats keep a sleeping shard asleep: those of its leader in
        // its term (the notice, or plain ones of a leader woken meanwhile:
        // answered, and new entries would come in a MSG_APP) and heartbeat
        // responses (late answers to heartbeats sent before it slept), but
        // for a follower's wake-up call, and a probe a sleeping leader
        // answers with its notice. Anything else wakes it.
        const std::string& ctx = sm.message.context();
        const bool leader = s.raw->role() == raft::Role::kLeader;
        const bool same_term = sm.message.term() == s.raw->term();
        if (type == raftpb::MSG_HEARTBEAT && ctx == kSleepContext) {
          s.sleep_notice = Shard::SleepNotice{from, sm.message.term(), sm.message.commit()};
        }
        bool quiet = false;
        if (type == raftpb::MSG_HEARTBEAT) {
          quiet = !leader && same_term && from == s.raw->leader_id();
        } else if (type == raftpb::MSG_HEARTBEAT_RESP && ctx == kProbeContext) {
          quiet = leader && same_term;
          if (quiet && s.asleep) {
            hibernate_out_[from].push_back(ShardMessage{
                s.id, HibernateMessage(s, raftpb::MSG_HEARTBEAT, from, kSleepContext)});
          }
        } else if (type == raftpb::MSG_HEARTBEAT_RESP) {
          quiet = ctx != kWakeContext;
        }
        if (!quiet) Wake(s, "message");
        Touch(s);
      }
      if (type == raftpb::MSG_APP_RESP || type == raftpb::MSG_HEARTBEAT_RESP) {
        s.follower_heard[from] = now;
        if (type == raftpb::MSG_APP_RESP && !sm.message.reject()) {
          uint64_t& match = s.follower_match[from];
          match = std::max(match, sm.message.index());
        }
      }
      // Errors: local message types from a peer (ignored, as raft does).
      LogShardScope log_shard(sm.shard);
      s.raw->Step(std::move(sm.message)).IgnoreError();
      if ((type == raftpb::MSG_APP || type == raftpb::MSG_HEARTBEAT || type == raftpb::MSG_SNAP) &&
          from == s.raw->leader_id()) {
        s.last_leader_contact = now;
      }
    }
  }
}

void Node::Impl::HandlePropose(ProposeRequest& req, absl::Time now) {
  auto found = shards_.find(req.shard);
  if (found == shards_.end()) {  // removed since it was queued
    FinishQueued(req.shard, req.done, RemovedError(req.shard));
    return;
  }
  Shard& s = *found->second;
  if (s.asleep) {
    Wake(s, "proposal");
    WakeLeaderOf(s);
  }
  if (req.deadline <= now) {
    CountProposal(s.id, NodeMetrics::ProposalOutcome::kDropped);
    Finish(s, req.done, absl::DeadlineExceededError("deadline passed before proposing"));
    return;
  }
  const uint64_t me = options_.id;
  if (s.raw->role() != raft::Role::kLeader) {
    CountProposal(s.id, NodeMetrics::ProposalOutcome::kDropped);
    const uint64_t leader = s.raw->leader_id();
    Finish(s, req.done, NotLeaderError(leader == me ? 0 : leader, "not leader"));
    return;
  }
  LogShardScope log_shard(s.id);
  const uint64_t bytes = req.data.size();
  absl::Status st = s.raw->Propose(std::move(req.data));
  CountProposal(s.id, st.ok() ? NodeMetrics::ProposalOutcome::kAccepted
                              : NodeMetrics::ProposalOutcome::kDropped);
  if (!st.ok()) {
    if (st.code() == absl::StatusCode::kUnavailable) {
      const uint64_t leader = s.raw->leader_id();
      st = NotLeaderError(leader == me ? 0 : leader, st.message());
    }
    Finish(s, req.done, st);
    return;
  }
  // Forwarding is disabled, so an accepted proposal was appended here as the
  // last entry of the leader's log.
  auto [it, inserted] = s.proposals.try_emplace(s.raw->last_index());
  if (!inserted) {  // a proposal of an earlier term at the same index: lost
    Finish(s, it->second.done, NotLeaderError(0, "the proposal was overwritten"));
  }
  it->second = PendingProposal{s.raw->term(), req.deadline, bytes, std::move(req.done)};
}

void Node::Impl::HandleReads(std::vector<ReadRequest>& reads, absl::Time now) {
  // (shard, lease) -> the context of the ReadIndex issued for it this cycle.
  absl::flat_hash_map<std::pair<ShardId, bool>, std::string> issued;
  for (ReadRequest& req : reads) {
    auto found = shards_.find(req.shard);
    if (found == shards_.end()) {  // removed since it was queued
      FinishQueued(req.shard, req.done, RemovedError(req.shard));
      continue;
    }
    Shard& s = *found->second;
    if (req.min_applied != 0 && s.storage->applied_index() >= req.min_applied) {
      Finish(s, req.done, absl::OkStatus());
      continue;
    }
    if (s.asleep) {  // awake, its waiters' deadlines are checked
      Wake(s, "read");
      WakeLeaderOf(s);
    }
    if (req.min_applied != 0) {
      s.confirmed_reads.emplace(req.min_applied, PendingRead{req.deadline, std::move(req.done)});
      continue;
    }
    // A leader that slept confirms its leadership with a heartbeat round
    // before it answers from its lease again (README.md "Hibernation").
    if (s.woke_this_cycle) req.lease = false;
    if (req.deadline <= now) {
      Finish(s, req.done, absl::DeadlineExceededError("deadline passed before reading"));
      continue;
    }
    // A follower that knows its leader forwards the ReadIndex to it (raft
    // answers with the leader's confirmed commit index).
    const bool forwarded = req.on_follower && s.raw->role() == raft::Role::kFollower &&
                           s.raw->leader_id() != 0 && s.raw->leader_id() != options_.id;
    if (s.raw->role() != raft::Role::kLeader && !forwarded) {
      const uint64_t leader = s.raw->leader_id();
      Finish(s, req.done, NotLeaderError(leader == options_.id ? 0 : leader, "not leader"));
      continue;
    }
    if (forwarded) req.lease = false;
    auto [it, first] = issued.try_emplace({req.shard, req.lease});
    if (first) {
      std::string ctx(8, '\0');
      uint64_t id = next_read_id_++;
      for (int i = 7; i >= 0; --i, id >>= 8) {
        ctx[static_cast<size_t>(i)] = static_cast<char>(id & 0xff);
      }
      LogShardScope log_shard(s.id);
      s.raw->ReadIndex(ctx, /*use_lease=*/req.lease);
      it->second = std::move(ctx);
    }
    s.unconfirmed_reads[it->second].push_back(PendingRead{req.deadline, std::move(req.done)});
  }
}

void Node::Impl::OnTicks(absl::Time now, int ticks, bool transfer_active) {
  const absl::Status expired = absl::DeadlineExceededError("deadline exceeded; outcome unknown");
  // A sleeping shard has no waiters, snapshot reports or pending work.
  for (auto& [id, sp] : awake_) {
    Shard& s = *sp;
    if (options_.hibernate_idle_shards) {
      s.idle_ticks =
          s.raw->role() == raft::Role::kLeader && LeaderCanSleep(s, now) ? s.idle_ticks + ticks : 0;
    }
    for (auto it = s.proposals.begin(); it != s.proposals.end();) {
      if (it->second.deadline <= now) {
        Finish(s, it->second.done, expired);
        s.abandoned.emplace(it->first, it->second.bytes);
        abandoned_bytes_.fetch_add(it->second.bytes, std::memory_order_relaxed);
        it = s.proposals.erase(it);
      } else {
        ++it;
      }
    }
    for (auto it = s.unconfirmed_reads.begin(); it != s.unconfirmed_reads.end();) {
      std::erase_if(it->second, [&](PendingRead& r) {
        if (r.deadline > now) return false;
        Finish(s, r.done, absl::DeadlineExceededError("read barrier deadline exceeded"));
        return true;
      });
      if (it->second.empty()) {
        s.unconfirmed_reads.erase(it++);
      } else {
        ++it;
      }
    }
    for (auto it = s.confirmed_reads.begin(); it != s.confirmed_reads.end();) {
      if (it->second.deadline <= now) {
        Finish(s, it->second.done, absl::DeadlineExceededError("read barrier deadline exceeded"));
        it = s.confirmed_reads.erase(it);
      } else {
        ++it;
      }
    }
    // A snapshot the follower has not acknowledged for a while was probably
    // lost (the transport is best effort): let raft probe again. Ignored by
    // raft when the follower already caught up.
    std::erase_if(s.snapshot_reports, [&](const std::pair<NodeId, uint64_t>& r) {
      if (r.second > tick_) return false;
      LogShardScope log_shard(s.id);
      s.raw->ReportSnapshot(r.first, /*success=*/false);
      return true;
    });
  }
  if (options_.hibernate_idle_shards && tick_ >= next_check_tick_) {
    CheckSleepingShards();
    next_check_tick_ =
        tick_ + static_cast<uint64_t>(options_.hibernate_check_ticks > 0
                                          ? options_.hibernate_check_ticks
                                          : std::max(1, options_.election_ticks / 2));
  }
  if (transfer_active && tick_ >= next_transfer_tick_) {
    IssueTransfers();
    // A transfer aborts after an election timeout; then try again.
    next_transfer_tick_ = tick_ + static_cast<uint64_t>(options_.election_ticks);
  }
  if (options_.balance_leaders && !transfer_active && tick_ >= next_balance_tick_) {
    BalanceLeaders(now);
    next_balance_tick_ = tick_ + static_cast<uint64_t>(options_.election_ticks);
  }
}

// ---------------------------------------------------------------- hibernation

void Node::Impl::Wake(Shard& s, const char* reason) {
  if (!s.asleep) return;
  s.asleep = false;
  s.idle_ticks = 0;
  s.woke_this_cycle = true;
  woken_.push_back(&s);
  s.raw->SetNow(cycle_mono_);
  awake_.emplace(s.id, &s);
  if (options_.metrics != nullptr) options_.metrics->OnShardWoke(reason);
}

void Node::Impl::Touch(Shard& s) {
  if (!s.asleep || s.touched) return;
  s.touched = true;
  touched_.push_back(&s);
}

raftpb::Message Node::Impl::HibernateMessage(const Shard& s, raftpb::MessageType type, NodeId to,
                                             const char* context) const {
  raftpb::Message m;
  m.set_type(type);
  m.set_from(options_.id);
  m.set_to(to);
  m.set_term(s.raw->term());
  // Only sent by an idle leader: every follower has the whole log.
  if (type == raftpb::MSG_HEARTBEAT) m.set_commit(s.raw->commit_index());
  m.set_context(context);
  return m;
}

void Node::Impl::WakeLeaderOf(Shard& s) {
  const NodeId leader = s.raw->leader_id();
  if (s.raw->role() == raft::Role::kLeader || leader == 0 || leader == options_.id) return;
  hibernate_out_[leader].push_back(
      ShardMessage{s.id, HibernateMessage(s, raftpb::MSG_HEARTBEAT_RESP, leader, kWakeContext)});
}

bool Node::Impl::LeaderCanSleep(const Shard& s, absl::Time now) const {
  if (handing_off_ || !s.raw->LeaderIdle()) return false;
  if (!s.proposals.empty() || !s.abandoned.empty() || !s.unconfirmed_reads.empty() ||
      !s.confirmed_reads.empty() || !s.snapshot_reports.empty()) {
    return false;
  }
  const absl::Duration recent = options_.tick_interval * options_.election_ticks;
  for (NodeId r : s.replicas) {
    if (r == options_.id) continue;
    auto heard = s.follower_heard.find(r);
    if (heard == s.follower_heard.end() || now - heard->second > recent) return false;
  }
  return true;
}

bool Node::Impl::FollowerHeard(const Shard& s, NodeId r, absl::Time now,
                               absl::Duration recent) const {
  auto heard = s.follower_heard.find(r);
  if (heard != s.follower_heard.end() && now - heard->second <= recent) return true;
  if (!s.asleep) return false;
  auto node = node_heard_time_.find(r);
  return node != node_heard_time_.end() && now - node->second <= 2 * recent;
}

void Node::Impl::Hibernate(absl::Time now) {
  if (!options_.hibernate_idle_shards) return;
  const int idle_needed =
      options_.hibernate_idle_ticks > 0 ? options_.hibernate_idle_ticks : options_.election_ticks;
  std::vector<Shard*> to_sleep;
  // A follower sleeps when the leader's notice found it caught up: the same
  // leader and term, the whole log committed and applied.
  auto consider_notice = [&](Shard& s) {
    const Shard::SleepNotice n = *s.sleep_notice;
    s.sleep_notice.reset();
    const raft::RawNode& raw = *s.raw;
    const bool caught_up = raw.role() == raft::Role::kFollower && raw.leader_id() == n.from &&
                           raw.term() == n.term && raw.last_index() == n.commit &&
                           raw.commit_index() == n.commit && raw.applied_index() == n.commit &&
                           !raw.HasReady();
    if (!caught_up) {
      Wake(s, "message");
    } else if (!s.asleep) {
      to_sleep.push_back(&s);
    }
  };
  for (Shard* sp : touched_) {
    if (sp->sleep_notice.has_value()) consider_notice(*sp);
  }
  for (auto& [id, sp] : awake_) {
    Shard& s = *sp;
    if (s.sleep_notice.has_value()) {
      consider_notice(s);
      continue;
    }
    if (s.idle_ticks < idle_needed || s.raw->role() != raft::Role::kLeader || s.raw->HasReady() ||
        !LeaderCanSleep(s, now)) {
      continue;
    }
    for (NodeId r : s.replicas) {
      if (r == options_.id) continue;
      hibernate_out_[r].push_back(
          ShardMessage{s.id, HibernateMessage(s, raftpb::MSG_HEARTBEAT, r, kSleepContext)});
    }
    to_sleep.push_back(&s);
  }
  for (Shard* sp : to_sleep) {
    sp->asleep = true;
    sp->idle_ticks = 0;
    awake_.erase(sp->id);
  }
  for (Shard* sp : touched_) sp->touched = false;
  touched_.clear();
  for (Shard* sp : woken_) sp->woke_this_cycle = false;
  woken_.clear();
  SendHibernateMessages();
  PublishShardCounts();
}

void Node::Impl::CheckSleepingShards() {
  // The peer nodes silent since the last check: probe each once (carried by
  // one of its shards); those already probed then wake their shards.
  std::map<NodeId, raftpb::Message> probes;
  std::map<NodeId, ShardId> carrier;
  std::vector<Shard*> wake;
  auto silent = [&](NodeId node) {
    auto heard = node_heard_tick_.find(node);
    return heard == node_heard_tick_.end() || heard->second < last_check_tick_;
  };
  auto probed = [&](NodeId node) {
    return std::find(probed_.begin(), probed_.end(), node) != probed_.end();
  };
  for (Shard* sp : ordered_) {  // in shard order: the same probes in every run
    Shard& s = *sp;
    if (!s.asleep) continue;
    const bool leader = s.raw->role() == raft::Role::kLeader;
    for (NodeId peer : s.replicas) {
      if (peer == options_.id || (!leader && peer != s.raw->leader_id()) || !silent(peer)) {
        continue;
      }
      if (probed(peer)) {
        wake.push_back(&s);
        break;
      }
      if (probes.count(peer) == 0) {
        // A leader re-sends its notice (the follower echoes it), a follower
        // sends a probe (a sleeping leader answers with its notice).
        probes.emplace(
            peer, leader ? HibernateMessage(s, raftpb::MSG_HEARTBEAT, peer, kSleepContext)
                         : HibernateMessage(s, raftpb::MSG_HEARTBEAT_RESP, peer, kProbeContext));
        carrier.emplace(peer, s.id);
      }
    }
  }
  for (Shard* s : wake) {
    Wake(*s, s->raw->role() == raft::Role::kLeader ? "follower_silent" : "leader_silent");
  }
  probed_.clear();
  for (auto& [peer, m] : probes) {
    probed_.push_back(peer);
    hibernate_out_[peer].push_back(ShardMessage{carrier.at(peer), std::move(m)});
  }
  last_check_tick_ = tick_;
}

void Node::Impl::SendHibernateMessages() {
  std::map<NodeId, std::vector<ShardMessage>> out;
  out.swap(hibernate_out_);
  for (auto& [to, messages] : out) transport_->Send(to, std::move(messages));
}

void Node::Impl::PublishShardCounts() {
  if (awake_.size() == published_awake_) return;
  published_awake_ = awake_.size();
  if (options_.metrics != nullptr) {
    options_.metrics->OnShardsAwake(awake_.size(), shards_.size() - awake_.size());
  }
}

void Node::Impl::BalanceLeaders(absl::Time now) {
  std::vector<std::pair<ShardId, NodeId>> layout;
  for (auto& [id, sp] : shards_) layout.emplace_back(id, sp->raw->leader_id());
  std::sort(layout.begin(), layout.end());  // deterministic choices below
  // Only a layout that held for 3 rounds: not during elections, drains or
  // other nodes' transfers (a draining node would look like the best target).
  // The transfer this node asked for last round is no such change: when it
  // is the only one, the next transfer may follow at once (one a round, not
  // one per 4 rounds: a restarted node gets its share back 4x sooner).
  bool only_own_transfer = false;
  if (balance_asked_.has_value()) {
    std::vector<std::pair<ShardId, NodeId>> expected = balance_layout_;
    for (auto& [id, leader] : expected) {
      if (id == balance_asked_->first) leader = balance_asked_->second;
    }
    only_own_transfer = layout == expected;
  }
  balance_stable_rounds_ =
      layout == balance_layout_ || only_own_transfer ? balance_stable_rounds_ + 1 : 0;
  balance_layout_ = layout;
  if (balance_asked_.has_value()) {
    // The last transfer asked for: if the shard is still led here, that
    // follower did not take it; leave it alone for a while.
    auto [shard, to] = *balance_asked_;
    balance_asked_.reset();
    auto it = shards_.find(shard);
    if (it != shards_.end() && it->second->raw->role() == raft::Role::kLeader) {
      balance_declined_until_[to] = tick_ + 10 * static_cast<uint64_t>(options_.election_ticks);
    }
  }
  if (balance_stable_rounds_ < 3) return;
  // Leaderships compared pairwise, over the shards both nodes host: for a
  // follower r, how many of the shards hosted here and by r this node leads
  // and r leads. r computes the same two numbers (it knows the same
  // leaders), so the two never disagree about who leads more and hand a
  // shard back and forth; when every node hosts every shard this is the
  // plain count.
  absl::flat_hash_map<NodeId, std::pair<int, int>> shared;  // r -> (led here, led by r)
  for (auto& [id, sp] : shards_) {
    const NodeId leader = sp->raw->leader_id();
    if (leader == 0) return;  // an election is under way
    for (NodeId r : sp->replicas) {
      if (r == options_.id) continue;
      std::pair<int, int>& counts = shared[r];
      if (leader == options_.id) ++counts.first;
      if (leader == r) ++counts.second;
    }
  }
  const absl::Duration recent = options_.tick_interval * options_.election_ticks;
  // The live follower, of a shard led here, that this node out-leads most
  // over the shards they share, by at least two (else the transfer only
  // swaps the roles).
  Shard* from = nullptr;
  NodeId to = 0;
  int mine = 0;
  int fewest = 0;
  int best_gap = 1;
  for (const auto& [id, leader] : layout) {
    Shard& s = *shards_.at(id);
    if (s.raw->role() != raft::Role::kLeader) continue;
    for (NodeId r : s.replicas) {
      if (r == options_.id) continue;
      const auto [here, there] = shared[r];
      if (here - there <= best_gap) continue;
      auto declined = balance_declined_until_.find(r);
      if (declined != balance_declined_until_.end() && tick_ < declined->second) continue;
      if (!FollowerHeard(s, r, now, recent)) continue;
      from = &s;
      to = r;
      mine = here;
      fewest = there;
      best_gap = here - there;
    }
  }
  if (from == nullptr) return;
  ABSL_RAW_LOG(INFO, "event=leader_balance shard=%llu to=%llu leads_here=%d leads_there=%d",
               static_cast<unsigned long long>(from->id), static_cast<unsigned long long>(to), mine,
               fewest);
  Wake(*from, "balance");
  LogShardScope log_shard(from->id);
  from->raw->TransferLeader(to);
  balance_asked_.emplace(from->id, to);
}

void Node::Impl::ReportUnreachable(NodeId to) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  if (std::find(inbox_.unreachable.begin(), inbox_.unreachable.end(), to) ==
      inbox_.unreachable.end()) {
    inbox_.unreachable.push_back(to);
  }
}

void Node::Impl::ReportSnapshot(NodeId to, ShardId shard, bool ok) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  inbox_.snapshots.push_back(SnapshotOutcome{to, shard, ok});
}

void Node::Impl::HandleTransportFeedback(const Inbox& in) {
  for (NodeId to : in.unreachable) {
    for (auto& [id, sp] : shards_) {
      // A sleeping follower whose leader's node cannot be reached wakes (and
      // elects another leader if it is gone); a sleeping leader wakes to
      // probe the follower.
      if (sp->asleep && sp->raw->role() != raft::Role::kLeader && sp->raw->leader_id() == to) {
        Wake(*sp, "unreachable");
      }
      if (sp->raw->role() != raft::Role::kLeader) continue;
      if (sp->asleep &&
          std::find(sp->replicas.begin(), sp->replicas.end(), to) != sp->replicas.end()) {
        Wake(*sp, "unreachable");
      }
      if (std::find(sp->replicas.begin(), sp->replicas.end(), to) == sp->replicas.end()) continue;
      LogShardScope log_shard(id);
      sp->raw->ReportUnreachable(to);
    }
  }
  for (const SnapshotOutcome& o : in.snapshots) {
    auto it = shards_.find(o.shard);
    if (it == shards_.end()) continue;
    Shard& s = *it->second;
    // The outcome is known: the fallback report after 4 election timeouts
    // (OnTicks) is not needed for this transfer.
    auto pending =
        std::find_if(s.snapshot_reports.begin(), s.snapshot_reports.end(),
                     [&](const std::pair<NodeId, uint64_t>& r) { return r.first == o.to; });
    if (pending != s.snapshot_reports.end()) s.snapshot_reports.erase(pending);
    if (s.raw->role() != raft::Role::kLeader) continue;
    Wake(s, "message");
    LogShardScope log_shard(s.id);
    s.raw->ReportSnapshot(o.to, o.ok);
  }
}

void Node::Impl::IssueTransfers() {
  const absl::Time now = clock_->Now();
  const absl::Duration recent = options_.tick_interval * options_.election_ticks;
  for (auto& [id, sp] : shards_) {
    Shard& s = *sp;
    if (s.raw->role() != raft::Role::kLeader) continue;
    // The most up-to-date follower heard from recently; else any other one.
    NodeId best = 0;
    uint64_t best_match = 0;
    for (NodeId r : s.replicas) {
      if (r == options_.id) continue;
      if (best == 0) best = r;
      if (!FollowerHeard(s, r, now, recent)) continue;
      auto match = s.follower_match.find(r);
      const uint64_t m = match == s.follower_match.end() ? 0 : match->second;
      if (m >= best_match) {
        best = r;
        best_match = m;
      }
    }
    if (best != 0) {
      Wake(s, "transfer");
      LogShardScope log_shard(s.id);
      s.raw->TransferLeader(best);
    }
  }
}

absl::Status Node::Impl::HandleReadys() {
  if (!step_failure_.ok()) return std::exchange(step_failure_, absl::OkStatus());
  std::vector<Shard*> ready_shards;
  std::vector<raft::Ready> readys;
  // The awake shards and the sleeping ones given input this cycle: nothing
  // else can have a Ready.
  auto collect = [&](Shard* sp) {
    LogShardScope log_shard(sp->id);
    if (!sp->raw->HasReady()) return;
    ready_shards.push_back(sp);
    readys.push_back(sp->raw->GetReady());
  };
  for (auto& [id, sp] : awake_) collect(sp);
  for (Shard* sp : touched_) {
    if (sp->asleep) collect(sp);
  }
  if (readys.empty()) return absl::OkStatus();
  const size_t n = readys.size();

  // Leadership changes: a deposed leader's waiters learn it now (their
  // entries may still commit under the new leader: kUnavailable says so).
  for (size_t i = 0; i < n; ++i) {
    Shard& s = *ready_shards[i];
    if (!readys[i].soft_state.has_value()) continue;
    const bool leader = readys[i].soft_state->role == raft::Role::kLeader;
    const NodeId leader_id = readys[i].soft_state->leader_id;
    if (options_.metrics != nullptr && leader_id != 0 && leader_id != s.known_leader) {
      options_.metrics->OnLeaderChange(s.id, leader_id, s.raw->term());
    }
    s.known_leader = leader_id;
    if (s.leader && !leader) {
      const uint64_t hint = readys[i].soft_state->leader_id;
      FailWaiters(s, NotLeaderError(hint == options_.id ? 0 : hint, "leadership lost"),
                  /*confirmed_reads_too=*/false);
      ForgetAbandoned(s, std::numeric_limits<uint64_t>::max());  // no longer this node's work
    }
    if (leader && !s.leader) {
      s.follower_match.clear();
      s.follower_heard.clear();
    }
    s.leader = leader;
  }

  // 1. Received snapshots: the data goes to the store first (synced), then
  //    the snapshot point to the raft log below. A crash in between leaves
  //    data newer than the raft log, which is consistent: raft re-delivers
  //    the committed entries and the applier skips those the store has.
  //    The other order could leave a log that starts after data never
  //    installed.
  for (size_t i = 0; i < n; ++i) {
    if (readys[i].snapshot.has_value()) {
      TESSERA_RETURN_IF_ERROR(
          WithContext(InstallSnapshot(*ready_shards[i], *readys[i].snapshot),
                      absl::StrCat("shard ", ready_shards[i]->id, ": install snapshot at index ",
                                   readys[i].snapshot->metadata().index())));
    }
  }

  // 2. What need not wait for this cycle's fsync happens before it.
  //  a. A leader's appends and heartbeats leave now, so that its followers
  //     write in parallel with it (Raft thesis §10.2.1). Safe: an entry
  //     commits only once a follower acknowledged it, and that response is
  //     stepped in a later cycle, after this cycle's Save; a leader's term
  //     and vote were persisted before it could win the election.
  SendMessages(ready_shards, readys,
               /*leaders_appends_only=*/!options_.testing.ack_before_save);
  //  b. Confirmed reads, and committed entries this node has already
  //     persisted (on a leader: all of them, by the argument above) are
  //     applied and answered now, not one fsync later. The apply write is
  //     not synced: it needs no durability of its own, as the entries are
  //     in the synced raft log and replayed after a crash.
  std::vector<size_t> applied_early(n, 0);
  for (size_t i = 0; i < n; ++i) {
    Shard& s = *ready_shards[i];
    for (raft::ReadState& rs : readys[i].read_states) {
      auto node = s.unconfirmed_reads.extract(rs.request_ctx);
      if (node.empty()) continue;
      for (PendingRead& r : node.mapped()) s.confirmed_reads.emplace(rs.index, std::move(r));
    }
    if (readys[i].snapshot.has_value()) continue;
    // Persisted and not overwritten by this Ready's entries.
    uint64_t persisted = s.storage->LastIndex();
    if (!readys[i].entries.empty()) {
      persisted = std::min(persisted, readys[i].entries.front().index() - 1);
    }
    const std::vector<raftpb::Entry>& committed = readys[i].committed_entries;
    while (applied_early[i] < committed.size() &&
           committed[applied_early[i]].index() <= persisted) {
      ++applied_early[i];
    }
  }
  TESSERA_RETURN_IF_ERROR(
      ApplyCommitted(ready_shards, readys, std::vector<size_t>(n, 0), applied_early));
  if (options_.testing.apply_before_commit) {
    TESSERA_RETURN_IF_ERROR(ApplyAppendedForTesting(ready_shards, readys));
  }
  if (!completions_.empty()) {
    // The answers' response headers read Status() (applied index): publish
    // first.
    PublishStatus(clock_->Now());
    RunCompletions();
  }

  // 3. Persist every shard's entries, hard state and snapshot point with ONE
  //    write, before any other message leaves.
  //    Synced only if some Ready needs it: a commit-index-only HardState
  //    need not be (raft recovers the commit index), which saves the leader
  //    an fsync per commit; written, it still survives kill -9.
  std::vector<storage::LogUpdate> updates;
  std::vector<size_t> update_of;
  bool must_sync = false;
  for (size_t i = 0; i < n; ++i) {
    raft::Ready& rd = readys[i];
    if (!rd.snapshot.has_value() && rd.entries.empty() && !rd.hard_state.has_value()) continue;
    must_sync = must_sync || rd.must_sync;
    storage::LogUpdate u;
    u.shard = ready_shards[i]->id;
    if (rd.snapshot.has_value()) u.snapshot = rd.snapshot->metadata();
    u.entries = std::move(rd.entries);
    u.hard_state = rd.hard_state;
    updates.push_back(std::move(u));
    update_of.push_back(i);
  }
  if (!updates.empty()) {
    size_t entries = 0;
    for (const storage::LogUpdate& u : updates) entries += u.entries.size();
    const absl::Time save_start = clock_->Now();
    if (options_.testing.acknowledge_unsynced_writes) must_sync = false;
    absl::Status saved = log_->Save(updates, must_sync ? storage::RaftLog::Durability::kSynced
                                                       : storage::RaftLog::Durability::kBuffered);
    if (options_.metrics != nullptr && saved.ok() && must_sync) {
      options_.metrics->OnLogSaved(clock_->Now() - save_start, updates.size(), entries);
    }
    for (size_t k = 0; k < updates.size(); ++k) {
      if (saved.ok()) ready_shards[update_of[k]]->storage->Saved(updates[k]);
      readys[update_of[k]].entries = std::move(updates[k].entries);
    }
    if (!saved.ok()) {
      std::vector<Shard*> saving;
      for (size_t i : update_of) saving.push_back(ready_shards[i]);
      return WithContext(saved, absl::StrCat(ShardList(saving), ": raft log save"));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if (!readys[i].snapshot.has_value()) continue;
    // Proposals the snapshot covers: this node cannot tell whether they were
    // applied.
    Shard& s = *ready_shards[i];
    const uint64_t index = readys[i].snapshot->metadata().index();
    while (!s.proposals.empty() && s.proposals.begin()->first <= index) {
      Finish(s, s.proposals.begin()->second.done,
             NotLeaderError(s.raw->leader_id(), "replaced by a snapshot; outcome unknown"));
      s.proposals.erase(s.proposals.begin());
    }
  }

  // 4. Send the rest, batched per destination node.
  SendMessages(ready_shards, readys, /*leaders_appends_only=*/false);

  // 5. Apply the remaining committed entries (ONE Applier::Apply), answer,
  //    and Advance.
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = readys[i].committed_entries.size();
  TESSERA_RETURN_IF_ERROR(ApplyCommitted(ready_shards, readys, applied_early, all));
  for (size_t i = 0; i < n; ++i) {
    LogShardScope log_shard(ready_shards[i]->id);
    ready_shards[i]->raw->Advance(readys[i]);
  }

  // Log compaction, keeping a margin of entries for slightly lagging
  // followers (anything older is answered by an on-demand snapshot).
  const uint64_t interval = std::max<uint64_t>(1, options_.snapshot_interval_entries);
  const uint64_t margin = std::min<uint64_t>(1024, interval / 2);
  for (Shard* s : ready_shards) {
    if (s->applied_since_compaction < interval) continue;
    const uint64_t applied = s->storage->applied_index();
    if (applied <= margin) continue;
    TESSERA_RETURN_IF_ERROR(
        WithContext(s->storage->Compact(applied - margin),
                    absl::StrCat("shard ", s->id, ": compact raft log to ", applied - margin)));
    s->applied_since_compaction = 0;
  }
  return absl::OkStatus();
}

void Node::Impl::SendMessages(const std::vector<Shard*>& shards, std::vector<raft::Ready>& readys,
                              bool leaders_appends_only) {
  absl::flat_hash_map<NodeId, std::vector<ShardMessage>> out;
  // When a sent snapshot counts as lost unless the transport reported it.
  const uint64_t report_ticks =
      options_.snapshot_report_timeout > absl::ZeroDuration()
          ? static_cast<uint64_t>(
                absl::Ceil(options_.snapshot_report_timeout, options_.tick_interval) /
                options_.tick_interval)
          : 4 * static_cast<uint64_t>(options_.election_ticks);
  const uint64_t report_at = tick_ + report_ticks;
  for (size_t i = 0; i < shards.size(); ++i) {
    Shard& s = *shards[i];
    const bool leader = s.raw->role() == raft::Role::kLeader;
    std::vector<raftpb::Message> kept;
    for (raftpb::Message& m : readys[i].messages) {
      if (leaders_appends_only &&
          !(leader && (m.type() == raftpb::MSG_APP || m.type() == raftpb::MSG_HEARTBEAT))) {
        kept.push_back(std::move(m));
        continue;
      }
      if (m.type() == raftpb::MSG_SNAP) {
        s.snapshot_reports.emplace_back(m.to(), report_at);
        if (options_.metrics != nullptr) options_.metrics->OnSnapshotSent(s.id);
      }
      const NodeId to = m.to();
      out[to].push_back(ShardMessage{s.id, std::move(m)});
    }
    readys[i].messages = std::move(kept);
  }
  for (auto& [to, messages] : out) transport_->Send(to, std::move(messages));
}

absl::Status Node::Impl::ApplyCommitted(const std::vector<Shard*>& shards,
                                        std::vector<raft::Ready>& readys,
                                        const std::vector<size_t>& begin,
                                        const std::vector<size_t>& end) {
  // Up to each shard's next split entry in one Apply, then the splits one
  // by one (each sees the configuration as of its index), until done.
  std::vector<size_t> from = begin;
  while (true) {
    std::vector<size_t> upto = end;
    bool split = false;
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::vector<raftpb::Entry>& committed = readys[i].committed_entries;
      for (size_t j = from[i]; j < end[i]; ++j) {
        if (committed[j].type() == raftpb::ENTRY_NORMAL && IsSplitEntry(committed[j].data())) {
          upto[i] = j;
          split = true;
          break;
        }
      }
    }
    TESSERA_RETURN_IF_ERROR(ApplyRange(shards, readys, from, upto));
    if (!split) return absl::OkStatus();
    for (size_t i = 0; i < shards.size(); ++i) {
      from[i] = upto[i];
      if (upto[i] == end[i]) continue;
      TESSERA_RETURN_IF_ERROR(ApplySplit(*shards[i], readys[i].committed_entries[upto[i]]));
      ++from[i];
    }
  }
}

absl::Status Node::Impl::ApplySplit(Shard& s, const raftpb::Entry& e) {
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(s.id));
  if (e.index() <= applied) {  // re-delivered after a restart: done before
    s.storage->AppliedTo(e.index());
    return absl::OkStatus();
  }
  serverpb::Command command;
  const bool parsed = command.ParseFromString(e.data()) && command.has_split();
  const ShardId child = parsed ? command.split().new_shard() : 0;
  const raftpb::ConfState conf = s.raw->conf_state();
  CommittedEntry entry{.shard = s.id, .index = e.index(), .data = e.data()};
  SplitContext& split = entry.split.emplace();
  split.membership_stable = conf.learners().empty() && conf.learners_next().empty() &&
                            conf.voters_outgoing().empty() && !conf.voters().empty();
  bool booted = false;
  if (parsed && child != s.id) {
    TESSERA_ASSIGN_OR_RETURN(storage::LogState state, log_->State(child));
    TESSERA_ASSIGN_OR_RETURN(uint64_t child_applied, kv_->AppliedIndex(child));
    split.new_shard_hosted = shards_.contains(child) || !IsEmptyLog(state) || child_applied > 0;
    if (split.membership_stable && !split.new_shard_hosted) {
      // The new group starts where the split is, on the same voters; term
      // and commit too, so that its log's terms never go backwards. Saved
      // (synced) first: a crash before the data is applied leaves this
      // point with no data, which Init deletes (the split applies again).
      storage::LogUpdate u;
      u.shard = child;
      raftpb::SnapshotMetadata& meta = u.snapshot.emplace();
      meta.set_index(e.index());
      meta.set_term(e.term());
      *meta.mutable_conf_state()->mutable_voters() = conf.voters();
      raftpb::HardState& hs = u.hard_state.emplace();
      hs.set_term(e.term());
      hs.set_commit(e.index());
      TESSERA_RETURN_IF_ERROR(
          WithContext(log_->Save({u}), absl::StrCat("shard ", child, ": split starting point")));
      booted = true;
    }
  }
  std::vector<serverpb::CommandResult> results;
  TESSERA_RETURN_IF_ERROR(
      WithContext(applier_->Apply({entry}, &results),
                  absl::StrCat("shard ", s.id, ": apply split at index ", e.index())));
  if (results.size() != 1) return absl::InternalError("applier returned no result for a split");
  serverpb::CommandResult result = std::move(results[0]);
  if (booted && result.code() == 0) {
    // The data first (the KvStore is not synced per apply), then the group.
    TESSERA_RETURN_IF_ERROR(kv_->Sync());
    TESSERA_RETURN_IF_ERROR(CreateShard(child, {}));
    for (Shard* sp : ordered_) sp->conf_dirty = true;  // status_ slots moved
    PublishShardCounts();
    // The parent's leader campaigns at once: the new shard is writable
    // without waiting out an election timeout.
    if (s.raw->role() == raft::Role::kLeader) {
      LogShardScope log_shard(child);
      (void)shards_.at(child)->raw->Campaign();
    }
    ABSL_RAW_LOG(INFO, "node %llu: shard %llu split at index %llu; shard %llu started",
                 static_cast<unsigned long long>(options_.id),
                 static_cast<unsigned long long>(s.id), static_cast<unsigned long long>(e.index()),
                 static_cast<unsigned long long>(child));
  } else if (booted) {
    TESSERA_RETURN_IF_ERROR(log_->DeleteShard(child));
  }
  if (result.code() != 0) {
    ABSL_RAW_LOG(WARNING, "node %llu: shard %llu: %s", static_cast<unsigned long long>(options_.id),
                 static_cast<unsigned long long>(s.id), result.message().c_str());
  }
  CompleteProposal(s, e, std::move(result));
  s.storage->AppliedTo(e.index());
  ++s.applied_since_compaction;
  ForgetAbandoned(s, e.index());
  return absl::OkStatus();
}

absl::Status Node::Impl::ApplyRange(const std::vector<Shard*>& shards,
                                    std::vector<raft::Ready>& readys,
                                    const std::vector<size_t>& begin,
                                    const std::vector<size_t>& end) {
  std::vector<CommittedEntry> batch;
  for (size_t i = 0; i < shards.size(); ++i) {
    for (size_t j = begin[i]; j < end[i]; ++j) {
      raftpb::Entry& e = readys[i].committed_entries[j];
      CommittedEntry ce;
      ce.shard = shards[i]->id;
      ce.index = e.index();
      if (e.type() == raftpb::ENTRY_NORMAL) ce.data = std::move(*e.mutable_data());
      batch.push_back(std::move(ce));
    }
  }
  std::vector<serverpb::CommandResult> results;
  if (!batch.empty()) {
    if (absl::Status s = applier_->Apply(batch, &results); !s.ok()) {
      std::vector<Shard*> applying;
      for (size_t i = 0; i < shards.size(); ++i) {
        if (end[i] > begin[i]) applying.push_back(shards[i]);
      }
      return WithContext(s, absl::StrCat(ShardList(applying), ": apply committed entries"));
    }
    if (results.size() != batch.size()) {
      return absl::InternalError(absl::StrCat("applier returned ", results.size(), " results for ",
                                              batch.size(), " entries"));
    }
  }
  size_t k = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    Shard& s = *shards[i];
    const std::vector<raftpb::Entry>& committed = readys[i].committed_entries;
    for (size_t j = begin[i]; j < end[i]; ++j, ++k) {
      const raftpb::Entry& e = committed[j];
      if (e.type() == raftpb::ENTRY_CONF_CHANGE) {
        raftpb::ConfChange cc;
        if (!cc.ParseFromString(e.data())) cc.Clear();  // applied as empty (raw_node.h)
        LogShardScope log_shard(s.id);
        absl::StatusOr<raftpb::ConfState> cs = s.raw->ApplyConfChange(cc);
        if (cs.ok()) {
          s.storage->ConfChanged(e.index(), *cs);
          s.replicas = Members(*cs);
          s.conf_dirty = true;
        } else {
          // Every replica refuses it alike (raw_node.h): nothing changes.
          ABSL_RAW_LOG(ERROR, "node %llu shard %llu: conf change at index %llu refused: %s",
                       static_cast<unsigned long long>(options_.id),
                       static_cast<unsigned long long>(s.id),
                       static_cast<unsigned long long>(e.index()), cs.status().ToString().c_str());
        }
      } else {
        CompleteProposal(s, e, std::move(results[k]));
      }
    }
    if (end[i] > begin[i]) {
      s.storage->AppliedTo(committed[end[i] - 1].index());
      s.applied_since_compaction += end[i] - begin[i];
      ForgetAbandoned(s, committed[end[i] - 1].index());
    }
    CompleteReads(s);
  }
  return absl::OkStatus();
}

bool Node::Impl::CommitStagedSnapshot(Shard& s, const raftpb::Message& m) {
  const raftpb::Snapshot& snap = m.snapshot();
  if (IsExportToken(snap.data())) return false;  // another node's token: never valid here
  if (!IsStagedToken(snap.data())) return true;  // inline data: installed from the Ready
  if (options_.snapshots == nullptr) return false;
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> staging =
      options_.snapshots->TakeStaged(snap.data());
  if (!staging.ok()) {
    ABSL_RAW_LOG(WARNING, "shard %llu: dropping a snapshot from node %llu: %s",
                 static_cast<unsigned long long>(s.id), static_cast<unsigned long long>(m.from()),
                 staging.status().ToString().c_str());
    return false;
  }
  // Raft takes the snapshot only from a current leader, past its commit
  // index and unless its log already has the entry (raft.cc Restore); then
  // the data must be there first. Installed otherwise (the message is
  // stale), the data is still committed state of the shard at its index,
  // newer than raft's: the applier skips the entries it covers.
  const raftpb::SnapshotMetadata& md = snap.metadata();
  const bool needed = m.term() >= s.raw->term() && md.index() > s.raw->commit_index() &&
                      !(md.index() <= s.storage->LastIndex() &&
                        s.storage->Term(md.index()).value_or(0) == md.term());
  if (!needed) return true;  // raft will not restore it: the staging is dropped
  absl::Status committed = (*staging)->Commit();
  if (committed.code() == absl::StatusCode::kFailedPrecondition) return true;  // store is newer
  if (!committed.ok()) {
    step_failure_ = WithContext(
        committed, absl::StrCat("shard ", s.id, ": install snapshot at index ", md.index()));
    return false;
  }
  ++s.snapshots_installed;
  s.conf_dirty = true;  // the snapshot's configuration
  if (options_.metrics != nullptr) options_.metrics->OnSnapshotReceived(s.id);
  return true;
}

absl::Status Node::Impl::ApplyAppendedForTesting(const std::vector<Shard*>& shards,
                                                 const std::vector<raft::Ready>& readys) {
  // The leaders' new normal entries, as if they were committed already.
  std::vector<Shard*> leading;
  std::vector<raft::Ready> appended;
  for (size_t i = 0; i < shards.size(); ++i) {
    if (!shards[i]->leader || readys[i].snapshot.has_value()) continue;
    raft::Ready rd;
    for (const raftpb::Entry& e : readys[i].entries) {
      if (e.type() != raftpb::ENTRY_NORMAL || e.index() <= shards[i]->storage->applied_index()) {
        continue;
      }
      if (!rd.committed_entries.empty() && e.index() != rd.committed_entries.back().index() + 1) {
        break;
      }
      rd.committed_entries.push_back(e);
    }
    if (rd.committed_entries.empty() ||
        rd.committed_entries.front().index() != shards[i]->storage->applied_index() + 1) {
      continue;  // entries in between not applied yet
    }
    leading.push_back(shards[i]);
    appended.push_back(std::move(rd));
  }
  if (leading.empty()) return absl::OkStatus();
  std::vector<size_t> begin(leading.size(), 0), end(leading.size());
  for (size_t i = 0; i < leading.size(); ++i) end[i] = appended[i].committed_entries.size();
  return ApplyCommitted(leading, appended, begin, end);
}

absl::Status Node::Impl::InstallSnapshot(Shard& s, const raftpb::Snapshot& snap) {
  const uint64_t index = snap.metadata().index();
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(s.id));
  if (applied >= index) return absl::OkStatus();  // the store is already newer
  if (IsStagedToken(snap.data()) || IsExportToken(snap.data())) {
    // CommitStagedSnapshot installs before raft steps the message.
    return absl::InternalError(
        absl::StrCat("raft restored a snapshot at ", index, " whose data is not installed"));
  }
  SnapshotDataReader reader(snap.data());
  TESSERA_RETURN_IF_ERROR(kv_->InstallSnapshot(s.id, index, reader));
  ++s.snapshots_installed;
  s.conf_dirty = true;  // the snapshot's configuration
  if (options_.metrics != nullptr) options_.metrics->OnSnapshotReceived(s.id);
  return absl::OkStatus();
}

void Node::Impl::CompleteProposal(Shard& s, const raftpb::Entry& e,
                                  serverpb::CommandResult result) {
  // Waiting proposals below this index were lost (overwritten and skipped).
  while (!s.proposals.empty() && s.proposals.begin()->first <= e.index()) {
    auto it = s.proposals.begin();
    if (it->first == e.index() && it->second.term == e.term()) {
      Finish(s, it->second.done, std::move(result));
    } else {
      const uint64_t leader = s.raw->leader_id();
      Finish(s, it->second.done,
             NotLeaderError(leader == options_.id ? 0 : leader,
                            "the proposal was overwritten by another leader"));
    }
    s.proposals.erase(it);
  }
}

void Node::Impl::ForgetAbandoned(Shard& s, uint64_t index) {
  uint64_t bytes = 0;
  while (!s.abandoned.empty() && s.abandoned.begin()->first <= index) {
    bytes += s.abandoned.begin()->second;
    s.abandoned.erase(s.abandoned.begin());
  }
  if (bytes != 0) abandoned_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
}

void Node::Impl::CompleteReads(Shard& s) {
  const uint64_t applied = s.storage->applied_index();
  while (!s.confirmed_reads.empty() && s.confirmed_reads.begin()->first <= applied) {
    auto it = s.confirmed_reads.begin();
    Finish(s, it->second.done, absl::OkStatus());
    s.confirmed_reads.erase(it);
  }
}

void Node::Impl::FailWaiters(Shard& s, const absl::Status& status, bool confirmed_reads_too) {
  for (auto& [index, p] : s.proposals) Finish(s, p.done, status);
  s.proposals.clear();
  for (auto& [ctx, waiting] : s.unconfirmed_reads) {
    for (PendingRead& r : waiting) Finish(s, r.done, status);
  }
  s.unconfirmed_reads.clear();
  if (confirmed_reads_too) {
    for (auto& [index, r] : s.confirmed_reads) Finish(s, r.done, status);
    s.confirmed_reads.clear();
  }
}

void Node::Impl::PublishStatus(absl::Time now) {
  // In place, in shard order (ordered_): no allocation or sort per cycle,
  // which matters with many sleeping shards (README.md "Hibernation").
  size_t led = 0;
  absl::MutexLock lock(&mu_);
  status_.resize(ordered_.size());
  for (size_t i = 0; i < ordered_.size(); ++i) {
    Shard& sp = *ordered_[i];
    const raft::RawNode& raw = *sp.raw;
    const bool leader = raw.role() == raft::Role::kLeader;
    ShardStatus& st = status_[i];
    st.shard = sp.id;
    st.role = raft::RoleName(raw.role());
    st.term = raw.term();
    st.leader = raw.leader_id();
    st.commit_index = raw.commit_index();
    st.applied_index = sp.storage->applied_index();
    st.last_index = raw.last_index();
    st.snapshots_installed = sp.snapshots_installed;
    st.asleep = sp.asleep;
    st.last_leader_contact = leader ? now : sp.last_leader_contact;
    if (sp.conf_dirty) {
      sp.conf_dirty = false;
      const raftpb::ConfState cs = raw.conf_state();
      st.voters.assign(cs.voters().begin(), cs.voters().end());
      st.voters_outgoing.assign(cs.voters_outgoing().begin(), cs.voters_outgoing().end());
      st.learners.assign(cs.learners().begin(), cs.learners().end());
    }
    if (sp.asleep && !leader) {
      // Asleep: the leader tells before anything changes; the latest sign
      // of life of its node is the contact (probes keep it fresh).
      auto heard = node_heard_time_.find(raw.leader_id());
      if (heard != node_heard_time_.end()) {
        st.last_leader_contact = std::max(st.last_leader_contact, heard->second);
      }
    }
    if (leader) ++led;
  }
  led_shards_ = led;
}

// ---------------------------------------------------------------- Node

absl::StatusOr<std::unique_ptr<Node>> Node::Start(const NodeOptions& options,
                                                  storage::Engine* engine, Applier* applier,
                                                  Transport* transport) {
  if (engine == nullptr) return absl::InvalidArgumentError("engine is required");
  return Start(options, &engine->raft_log(), &engine->kv_store(), applier, transport);
}

absl::StatusOr<std::unique_ptr<Node>> Node::Start(const NodeOptions& options, storage::RaftLog* log,
                                                  storage::KvStore* kv, Applier* applier,
                                                  Transport* transport) {
  if (options.id == 0) return absl::InvalidArgumentError("node id must not be 0");
  if (log == nullptr || kv == nullptr || applier == nullptr || transport == nullptr) {
    return absl::InvalidArgumentError("engine, applier and transport are required");
  }
  if (options.tick_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("tick_interval must be positive");
  }
  if (options.heartbeat_ticks <= 0 || options.election_ticks <= options.heartbeat_ticks) {
    return absl::InvalidArgumentError("need 0 < heartbeat_ticks < election_ticks");
  }
  if (options.max_pending_per_shard == 0 || options.snapshot_interval_entries == 0) {
    return absl::InvalidArgumentError(
        "max_pending_per_shard and snapshot_interval_entries must be positive");
  }
  absl::flat_hash_map<ShardId, bool> seen;
  for (const ShardPlacement& p : options.shards) {
    if (!seen.emplace(p.shard, true).second) {
      return absl::InvalidArgumentError(absl::StrCat("shard ", p.shard, " listed twice"));
    }
    if (std::find(p.replicas.begin(), p.replicas.end(), options.id) == p.replicas.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("shard ", p.shard, ": replicas do not include this node"));
    }
    for (NodeId r : p.replicas) {
      if (r == 0) return absl::InvalidArgumentError("replica id 0");
    }
  }
  auto impl = std::make_unique<Impl>(options, log, kv, applier, transport);
  TESSERA_RETURN_IF_ERROR(impl->Init());
  impl->StartLoop();
  return std::unique_ptr<Node>(new Node(std::move(impl)));
}

Node::Node(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Node::~Node() { impl_->Stop(); }

uint64_t Node::AbandonedProposalBytes() const { return impl_->AbandonedBytes(); }

void Node::ReportUnreachable(NodeId to) { impl_->ReportUnreachable(to); }

void Node::ReportSnapshot(NodeId to, ShardId shard, bool ok) {
  impl_->ReportSnapshot(to, shard, ok);
}

void Node::Propose(ShardId shard, serverpb::Command command, absl::Time deadline,
                   ProposeCallback done) {
  impl_->Propose(shard, std::move(command), deadline, std::move(done));
}

void Node::ReadBarrier(ShardId shard, bool lease, absl::Time deadline, ReadCallback done) {
  impl_->ReadBarrier(shard, lease, deadline, std::move(done));
}

void Node::FollowerReadBarrier(ShardId shard, absl::Time deadline, ReadCallback done) {
  impl_->ReadBarrier(shard, /*lease=*/false, deadline, std::move(done), /*min_applied=*/0,
                     /*on_follower=*/true);
}

void Node::WaitApplied(ShardId shard, uint64_t index, absl::Time deadline, ReadCallback done) {
  impl_->ReadBarrier(shard, /*lease=*/false, deadline, std::move(done),
                     std::max<uint64_t>(index, 1));
}

void Node::Receive(NodeId from, std::vector<ShardMessage> messages) {
  impl_->Receive(from, std::move(messages));
}

void Node::AddReplica(ShardId shard, std::vector<NodeId> founders, StatusCallback done) {
  impl_->QueueMembership({.kind = MembershipRequest::Kind::kAddReplica,
                          .shard = shard,
                          .founders = std::move(founders),
                          .done = std::move(done)});
}

void Node::RemoveReplica(ShardId shard, StatusCallback done) {
  impl_->QueueMembership(
      {.kind = MembershipRequest::Kind::kRemoveReplica, .shard = shard, .done = std::move(done)});
}

void Node::TransferLeader(ShardId shard, NodeId to, StatusCallback done) {
  impl_->QueueMembership({.kind = MembershipRequest::Kind::kTransferLeader,
                          .shard = shard,
                          .to = to,
                          .done = std::move(done)});
}

void Node::ProposeConfChange(ShardId shard, raftpb::ConfChange cc, StatusCallback done) {
  impl_->QueueMembership({.kind = MembershipRequest::Kind::kConfChange,
                          .shard = shard,
                          .cc = std::move(cc),
                          .done = std::move(done)});
}

std::vector<ShardStatus> Node::Status() const { return impl_->Status(); }

absl::Status Node::Health() const { return impl_->Health(); }

std::optional<ShardStatus> Node::StatusOf(ShardId shard) const { return impl_->StatusOf(shard); }

absl::Status Node::TransferLeadershipAway(absl::Duration timeout) {
  return impl_->TransferLeadershipAway(timeout);
}

void Node::Stop() { impl_->Stop(); }

absl::Status Node::RunCycleForTesting() { return impl_->RunCycleForTesting(); }

}  // namespace tessera::server
