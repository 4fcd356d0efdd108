// Scheduler: the placement driver. It runs on every node and acts only while
// that node's replica of the metadata group leads it, so one node at a time
// drives the cluster (a new leader takes over where the last one stopped).
//
// It carries out the replica moves recorded in the cluster map (RecordMove:
// `tessera cluster move-replica`), one raft step per round for each shard,
// every step decided afresh from the stored map and the replicas' reported
// raft state (nothing is remembered between rounds, so a crash of any node
// or of the scheduler leaves a state the next round continues from):
//
//   1. the map lists the new replica B as a learner of shard S (recorded
//      with the move; B's node then hosts an empty replica);
//   2. S's leader adds B as a raft learner; B catches up by snapshot + log;
//   3. once B's applied index is within catch_up_entries of the leader's
//      commit index: if the leaving replica A leads, it hands leadership to
//      another voter first; then the leader proposes {add voter B, remove
//      A}, a joint change raft leaves by itself once applied;
//   4. when the leader's configuration has B as voter and A nowhere, the map
//      records it (A out, B in, the move done; conf_version + 1);
//   5. garbage collection: a node hosting a replica of S that neither the
//      map nor S's leader's configuration lists deletes it when told (here
//      A, after step 4; also a replica left by an interrupted move).
//
// Evacuation: the replicas of a member that is leaving (remove-node) or
// dead (silent for dead_after, as this scheduler measures it: a new leader
// of the metadata group starts the clock again) are moved, up to max_moves
// at a time, to the live member holding the fewest replicas that lacks the
// shard; each is an ordinary move (the shard keeps a quorum of its old
// voters throughout, as long as at most a minority of them is down). The
// metadata group's replicas (ClusterMap::meta()) are moved the same way,
// to a live member without one; it is not balanced. A leaving member that
// holds nothing any more (its metadata replica included) is removed from
// the map; the node exits when it sees that.
//
// Balancing: while fewer than max_moves moves are in progress, it records
// one more when the member holding the most replicas (voters and learners,
// among the members that answer) holds at least two more than the one
// holding the fewest: a shard of the first that the second lacks, the one
// whose replicas changed least recently (lowest conf_version, so a move just
// made is not undone), then the one the placement rule (PlacementWeight)
// ranks the second highest for. So a
// member that joins receives replicas until every member is within one of
// the mean, about 1/(N+1) of them when it is the (N+1)th.
// Splits: a split recorded in progress (ShardLayout::split_hash, by
// `tessera cluster split-shard`) is proposed to the shard's leader once its
// configuration is stable (no learner, no joint change); once the leader
// answers that it applied it (or, after a crash, reports the shrunken range:
// ShardStatus::range_version), the map records the split (the new shard,
// id num_shards, on the same replicas). Moves
// skip a splitting shard, and a moving one does not start a split. With
// split_bytes, the scheduler itself records a split of the largest shard
// at or above it (one at a time); with split_writes_per_sec, of one that
// kept that write rate for split_rate_rounds rounds.
// Every decision is logged in one line.
//
// Thread-safety: thread-safe; one thread runs the rounds. `control` is not
// owned and must outlive the Scheduler.
#ifndef TESSERA_SERVER_CLUSTER_SCHEDULER_H_
#define TESSERA_SERVER_CLUSTER_SCHEDULER_H_

#include <atomic>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/cluster/cluster_map.h"
#include "server/cluster/meta_group.h"
#include "server/kv/backend.h"
#include "tessera/command.pb.h"
#include "tessera/raft.pb.h"

namespace tessera::server {

// How the scheduler observes and acts on the members (tessera-server:
// Cluster.NodeStatus and Peer.ChangeReplica; tests: in-process nodes).
// Calls block (bounded by the implementation's deadlines).
class ClusterControl {
 public:
  virtual ~ClusterControl() = default;
  // The replicas `node` hosts and their raft state (kUnavailable if it
  // does not answer).
  virtual absl::StatusOr<std::vector<ShardStatus>> Status(NodeId node) = 0;
  // Asks `node`, which leads `shard`, to propose `cc`.
  virtual absl::Status ProposeConfChange(NodeId node, ShardId shard,
                                         const raftpb::ConfChange& cc) = 0;
  // Asks `node`, which leads `shard`, to hand its leadership to `to`.
  virtual absl::Status TransferLeader(NodeId node, ShardId shard, NodeId to) = 0;
  // Asks `node` to delete its replica of `shard`.
  virtual absl::Status RemoveReplica(NodeId node, ShardId shard) = 0;
  // Asks `node`, which leads `shard`, to propose `split` (answered once
  // applied; a refusal is the apply's error).
  virtual absl::Status Split(NodeId node, ShardId shard, const serverpb::SplitShard& split) = 0;
};

struct SchedulerOptions {
  absl::Duration interval = absl::Milliseconds(500);
  // Moves in progress at once, the ones recorded by hand included; the
  // scheduler starts none beyond it (bounds the snapshot traffic that
  // competes with foreground requests: with 2, put p99 while a 4th node
  // filled up was 2.5x the steady one on a 2-core machine, with 1 1.65x;
  // tests/bench/RESULTS.md "Growing a loaded cluster").
  int max_moves = 1;
  // A member that has not answered for this long is dead: its replicas are
  // re-created on other members.
  absl::Duration dead_after = absl::Minutes(5);
  // Whether it balances replicas across members (moves by hand,
  // decommission and dead members are carried out either way).
  bool balance = true;
  // A learner is promoted once its applied index is within this many
  // entries of its leader's commit index.
  uint64_t catch_up_entries = 64;
  // A shard whose leader reports at least this many bytes of keys and
  // values (ShardStatus::approximate_bytes) is split (0: never by size).
  uint64_t split_bytes = 0;
  // A shard whose leader's commit index grows by at least this many
  // entries a second (its writes; per round, over the nominal interval)
  // for split_rate_rounds rounds in a row is split (0: never by load).
  // Split by size first when both apply.
  uint64_t split_writes_per_sec = 0;
  int split_rate_rounds = 20;
};

class Scheduler {
 public:
  using Logger = std::function<void(const std::string&)>;

  // Changes the stored map (MetaGroup::Change).
  using MapChanger = std::function<absl::StatusOr<ClusterMap>(const MetaGroup::Mutation&)>;
  // The stored map as fresh as this node has it (nullptr: none yet).
  using MapReader = std::function<std::shared_ptr<const ClusterMap>()>;

  // Starts the thread (a round every interval while leads_meta() holds).
  // `read_map` gives the stored map (tessera-server: the local metadata
  // replica's, which on its leader is at least as new as any other node's,
  // so a replica the map has just listed is not taken for garbage);
  // `change_map` changes it.
  Scheduler(const SchedulerOptions& options, MapChanger change_map, MapReader read_map,
            std::function<bool()> leads_meta, ClusterControl* control, Logger log);
  ~Scheduler();  // Stop()s.
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Joins the thread. Idempotent.
  void Stop();

  // The map with a replica of `shard` added on `to` recorded (a move from
  // nobody: `to` becomes a learner). Errors as RecordMove.
  static absl::StatusOr<ClusterMap> RecordAdd(const ClusterMap& map, ShardId shard, NodeId to);

  // The map with a move of `shard`'s replica from `from` to `to` recorded:
  // `to` becomes a learner (the next version). Errors: kInvalidArgument (no
  // such shard or member, `from` is not a voter of it, `to` already holds a
  // replica of it), kFailedPrecondition (another move of the shard is in
  // progress, or `to` is recorded replaced: its lost replicas are still
  // being dropped).
  static absl::StatusOr<ClusterMap> RecordMove(const ClusterMap& map, ShardId shard, NodeId from,
                                               NodeId to);

  // Moves this scheduler recorded: started (balancing, evacuation) and
  // done. Thread-safe.
  uint64_t moves_started() const { return moves_started_.load(std::memory_order_relaxed); }
  uint64_t moves_completed() const { return moves_completed_.load(std::memory_order_relaxed); }
  uint64_t splits_completed() const { return splits_completed_.load(std::memory_order_relaxed); }

  // One round, on the caller's thread (tests; give the thread an interval
  // that never comes).
  void RunOnceForTesting() { RunOnce(); }

 private:
  // Each layout's leader node and its report.
  using Leaders = std::map<ShardId, std::pair<NodeId, const ShardStatus*>>;
  // What DropVoter did this round.
  enum class DropStep {
    kNotListed,  // `node` is a voter in neither the map nor raft
    kWaiting,    // listed, but the layout is busy or its leader unknown
    kAsked,      // asked raft (a leadership hand-off or the removal)
    kRecorded,   // out of raft already: dropped from the map
  };

  void Run();
  void RunOnce();
  // Takes `node`'s voting replica out of layout `s`: out of raft first (a
  // leader on `node` hands its leadership over first), then out of the
  // map. `why` ends the log line.
  DropStep DropVoter(const ShardLayout& s, NodeId node, const Leaders& leaders,
                     const std::string& why);
  // A leaving member's metadata replica when no live staying member lacks
  // one (so Evacuate cannot move it) and more than kMinMetaVoters remain:
  // dropped with DropVoter instead of moved. True if it changed the map.
  bool ShrinkMeta(const ClusterMap& map, const std::vector<NodeId>& live, const Leaders& leaders);
  // Records moves off leaving and dead members (see above); false when it
  // recorded none. `live`: the members that answered this round and are
  // not leaving.
  bool Evacuate(const ClusterMap& map, const std::vector<NodeId>& live, absl::Time now);
  // Records one balancing move if the replicas are uneven (see above).
  void Balance(const ClusterMap& map, const std::vector<NodeId>& live);
  // Drops the replicas of members recorded as replaced (their data was
  // lost): one raft step or map change per layout and round; clears the
  // record once no layout lists the member; true if it changed the map.
  // `leaders`: each layout's leader node and report.
  bool DropReplaced(const ClusterMap& map, const Leaders& leaders);
  // Records an added replica (to a live member lacking it, not replaced,
  // holding the fewest) for a layout with fewer voters than its target
  // (shards: the replication factor; the metadata group: the largest odd
  // number up to kMetaReplication and the staying members); false if none.
  bool Repair(const ClusterMap& map, const std::vector<NodeId>& live);
  // Hands one leadership from the member leading the most shards to one
  // leading at least two fewer (a voter of that shard, caught up), if any.
  void BalanceLeaders(const ClusterMap& map, const std::vector<NodeId>& live,
                      const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders,
                      const std::map<std::pair<ShardId, NodeId>, uint64_t>& applied);
  // Counts, per shard, the rounds in a row its leader's commit index grew
  // at split_writes_per_sec or more.
  void TrackWriteRates(const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders);
  // Records a split of the largest shard at or above split_bytes, else of
  // the busiest one over split_writes_per_sec for split_rate_rounds, if any.
  void SplitLarge(const ClusterMap& map,
                  const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders);
  // Carries out the split in progress, one step per round (see above).
  void CarryOutSplit(const ClusterMap& map, const ShardLayout& layout, const ShardStatus* leader,
                     NodeId leader_node);
  // Removes a leaving member that the map lists nowhere and that hosts no
  // replica any more (`hosting`: replicas each answering member reports).
  void RemoveLeft(const ClusterMap& map, const std::map<NodeId, int>& hosting);

  const SchedulerOptions options_;
  const MapChanger change_map_;
  const MapReader read_map_;
  const std::function<bool()> leads_meta_;
  ClusterControl* const control_;
  const Logger log_;
  absl::Notification stop_;
  // When each member last answered (the scheduler thread's only; a member
  // not heard from yet counts from the first round that asked it).
  std::map<NodeId, absl::Time> last_answer_;
  // The last leadership handed (shard, giver, taker), and takers that did
  // not take one, left alone until the time given (a transfer pauses the
  // shard's writes until it completes or lapses).
  std::optional<std::tuple<ShardId, NodeId, NodeId>> last_transfer_;
  std::map<NodeId, absl::Time> declined_until_;
  // Per shard: its leader's commit index at the last round, and the rounds
  // in a row it grew at split_writes_per_sec or more (thread's only).
  struct WriteRate {
    uint64_t commit = 0;
    double per_sec = 0;
    int busy_rounds = 0;
  };
  std::map<ShardId, WriteRate> write_rates_;
  std::atomic<uint64_t> moves_started_{0};
  std::atomic<uint64_t> moves_completed_{0};
  std::atomic<uint64_t> splits_completed_{0};
  std::thread thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_CLUSTER_SCHEDULER_H_
