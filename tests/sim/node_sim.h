// A deterministic simulator of a whole Tessera cluster at the Node level.
//
// Each simulated node is a real server::Node in step mode (no threads, a
// virtual clock) with the real StateMachine (server/kv) on the in-memory
// engine (storage/mem_*), whose MemWal models crashes. The nodes talk
// through SimNetwork (node_sim_network.h): filters drop, delay, duplicate,
// reorder and partition messages. One process, one thread, virtual time;
// every choice comes from one seed, so `node_sim --seed N` replays a run
// exactly.
//
// Each Step() advances virtual time by 0-2 ms, may inject a fault, restarts
// nodes whose downtime ended, delivers the messages that are due, runs one
// loop cycle of every running node (in a random order), lets the clients act,
// and then checks the invariants. Faults:
//   partitions (random split, leader isolated, one-way cuts), healed later;
//   crashes: kill -9 (nothing lost), power loss (the unsynced writes lost,
//     or a prefix of them kept), a crash inside a later write (that write
//     and the rest of the cycle never happen), a power outage of every node
//     at once; restarts as a new Node over the surviving engine;
//   stalls: a node runs no cycle for a while (a paused process; its clock
//     goes on), alone or while cut off from its peers (stall-isolate);
//   leader transfers (TransferLeadershipAway) and, with a snapshot interval
//     of a few entries, followers caught up by snapshot.
// Quiet spells (hibernation): every client pauses while faults go on, so
// that groups fall asleep (NodeOptions::hibernate_idle_shards) and wake.
// Clients run put / get (linearizable or lease) / delete / cas (a Txn) /
// unconditional Txn puts over a few keys, with exactly-once sessions
// (client_id, seq) and retries that reuse the seq; every operation goes into
// a chaos::History, checked at the end by the linearizability checker
// (tests/chaos/linearizability.h) after a heal, a quiet period and final
// reads of every key.
//
// Invariants checked after every step (the first violation sticks):
//   Election Safety   at most one leader per (shard, term) over the run;
//   committed entries never change: every entry at or below a node's commit
//     index equals the one first seen committed at that index;
//   commit indexes do not go back within one incarnation of a node;
//   State Machine Safety: two replicas whose store has applied the same
//     index hold the same data and session records (a digest of the store);
//   liveness after the heal: every replica converges to one applied index.
//
// Not thread-safe.
#ifndef TESSERA_TESTS_SIM_NODE_SIM_H_
#define TESSERA_TESTS_SIM_NODE_SIM_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "server/raftstore/node.h"
#include "tests/chaos/history.h"
#include "tests/sim/node_sim_network.h"

namespace tessera::sim {

struct NodeSimOptions {
  int nodes = 3;
  int shards = 1;
  uint64_t seed = 1;
  // Virtual time of the faulty phase; then heal, quiet period, final reads.
  int64_t duration_ms = 1200;
  int clients = 5;
  int keys = 3;
  // Small, so that lagging followers are caught up by snapshot.
  uint64_t snapshot_interval_entries = 6;
  // Per-step fault probabilities (a step is ~1 ms of virtual time).
  double partition_rate = 0.003;
  double crash_rate = 0.003;
  double outage_rate = 0.0004;  // power loss of every node at once
  double stall_rate = 0.002;    // half of them while cut off (stall-isolate)
  double transfer_rate = 0.002;
  // Share of gets that may be answered from the leader's lease.
  double lease_read_share = 0.5;
  // Hibernation (NodeOptions::hibernate_*): on, with a short idle period so
  // that groups fall asleep between bursts, and quiet spells (every client
  // pauses for 50-300 ms, faults go on) so that crashes, partitions, stalls
  // and transfers also hit sleeping groups.
  bool hibernate = true;
  int hibernate_idle_ticks = 3;
  double quiet_rate = 0.003;
  // Mutation switches of the nodes (testing only; see NodeTestingKnobs).
  server::NodeTestingKnobs knobs;
};

// What one run did, for tests of the simulator and the sweep's report.
struct NodeSimStats {
  uint64_t steps = 0;
  uint64_t cycles = 0;
  uint64_t messages = 0;
  uint64_t ops_ok = 0, ops_fail = 0, ops_unknown = 0;
  uint64_t crashes = 0, power_losses = 0, write_crashes = 0, outages = 0;
  uint64_t stalls = 0, partitions = 0, transfers = 0;
  uint64_t snapshots_delivered = 0;
  uint64_t leaders_elected = 0;
  uint64_t max_commit = 0;
  uint64_t quiet_spells = 0;
  // Steps after which some replica was asleep (hibernation), and times a
  // replica was seen asleep after being seen awake.
  uint64_t steps_with_sleepers = 0;
  uint64_t sleeps = 0;
};

class NodeSim {
 public:
  explicit NodeSim(const NodeSimOptions& options);
  ~NodeSim();
  NodeSim(const NodeSim&) = delete;
  NodeSim& operator=(const NodeSim&) = delete;

  // The whole run: faulty phase, heal, quiet period, final reads, then the
  // linearizability check. OK or the first violation (with the seed, the
  // step and the virtual time in its message).
  absl::Status Run();

  // The pieces of Run(), for targeted tests.
  void Step();
  absl::Status violation() const { return violation_; }
  // Ends every fault: restarts crashed nodes, resumes stalled ones, removes
  // partitions and message loss (a small delay stays).
  void HealAll();
  // Steps until every client op has completed and every replica applied the
  // same index (kDeadlineExceeded after `max_ms` of virtual time).
  absl::Status Settle(int64_t max_ms);
  // Reads every key once (recorded), then checks the history.
  absl::Status FinalReadsAndCheck();

  const chaos::History& history() const { return history_; }
  const NodeSimStats& stats() const { return stats_; }
  // The last `n` events, one per line.
  std::string Trace(size_t n) const;
  // A digest of the run (every node's applied state and the history), to
  // check that a seed replays exactly.
  uint64_t Fingerprint() const;

 private:
  struct Host;
  struct Client;
  class Clock;

  // Time and events.
  int64_t now() const { return now_ns_; }
  void MaybeFault();
  void Partition();
  void Crash(Host& h, const char* how);
  void PowerLoss(Host& h, const char* why);
  void ScheduleRestart(Host& h);
  void Restart(Host& h);
  void Stall(Host& h, bool isolate);
  void Transfer();
  void Deliver();
  void RunCycle(Host& h);
  void ClientsAct();
  void ClientAct(Client& c);
  void StartOp(Client& c);
  void SendAttempt(Client& c);
  void Complete(Client& c, chaos::Outcome outcome);
  void NewIdentity(Client& c);

  // Checks.
  void CheckInvariants();
  void CheckHost(Host& h);
  void Fail(const std::string& what);
  void Record(std::string event);

  Host* LeaderOf(ShardId shard);
  Host& RandomHost();
  ShardId ShardOf(const std::string& key) const;
  absl::Time Wall(int64_t ns) const;

  NodeSimOptions options_;
  SimRng rng_;
  SimNetwork net_;
  int64_t now_ns_;
  int64_t start_ns_;
  std::unique_ptr<Clock> clock_;
  std::vector<std::unique_ptr<Host>> hosts_;  // index = id - 1
  std::vector<std::unique_ptr<Client>> clients_;
  bool workload_on_ = true;
  int64_t quiet_until_ns_ = 0;  // clients start no operation before
  bool sleepers_now_ = false;   // CheckInvariants: some replica is asleep
  bool faults_on_ = true;
  std::vector<int> base_filters_;
  std::map<int, int64_t> timed_filters_;  // filter id -> heal time
  int64_t next_process_ = 1;
  int64_t next_op_id_ = 1;
  chaos::History history_;
  NodeSimStats stats_;
  absl::Status violation_;
  std::deque<std::string> trace_;

  // Global observations for the invariants.
  std::map<std::pair<ShardId, uint64_t>, NodeId> leaders_;           // (shard, term)
  std::map<std::pair<ShardId, uint64_t>, uint64_t> committed_;       // (shard, index) -> hash
  std::map<std::pair<ShardId, uint64_t>, uint64_t> applied_digest_;  // (shard, applied)
};

// Seeds [first, first + count), or just TESSERA_SIM_SEED when that is set.
std::vector<uint64_t> NodeSimSeeds(uint64_t first, uint64_t count);

// Parses a mutation name (ack_unsynced, apply_before_commit, ack_before_save,
// lease_ticks_only) into `knobs`; false for an unknown name.
bool SetMutation(const std::string& name, server::NodeTestingKnobs* knobs);

}  // namespace tessera::sim

#endif  // TESSERA_TESTS_SIM_NODE_SIM_H_
