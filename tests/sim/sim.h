// A deterministic, single-threaded simulator of one Raft group.
//
// It runs N raft::RawNode instances over MemoryStorage, a network queue and
// logical ticks; every choice comes from one std::mt19937_64 seeded by the
// caller, so a run replays exactly from its seed. Each Step() performs one
// randomly chosen event: tick a node, handle a node's Ready, deliver a random
// pending message (reordering), drop or duplicate one, cut or heal links
// (asymmetric cuts, leader isolation, majority/minority splits), crash a node
// (losing everything it had not persisted) and restart it, propose a command,
// request a linearizable read, change membership, transfer leadership, take a
// snapshot and compact the log.
//
// After every event CheckSafety() verifies, over the whole run:
//   Election Safety      at most one leader per term;
//   Leader Append-Only   a leader never overwrites or truncates its own log;
//   Log Matching         same index and term => identical prefixes;
//   Leader Completeness  a new leader holds every entry committed before it;
//   State Machine Safety no two nodes apply different entries at one index;
//   ReadIndex safety     a read is served at an index >= every commit known
//                        anywhere when the read was issued.
// After HealAll(), ProposeAndWait() checks liveness: a leader emerges and a
// new proposal is applied by every live voter within a bounded number of
// ticks.
//
// Not thread-safe; one Sim per thread.
#ifndef TESSERA_TESTS_SIM_SIM_H_
#define TESSERA_TESTS_SIM_SIM_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "raft/raw_node.h"
#include "raft/storage.h"
#include "tessera/raft.pb.h"

namespace tessera::sim {

struct SimOptions {
  int nodes = 3;        // founding voters (ids 1..nodes)
  int spare_nodes = 0;  // extra ids that may be added by membership changes
  uint64_t seed = 1;
  double drop_rate = 0.05;           // chance a delivered message is lost instead
  double duplicate_rate = 0.02;      // chance a delivery is duplicated
  double crash_rate = 0.005;         // per-step chance of crashing a node
  double partition_rate = 0.005;     // per-step chance of a new partition
  double leader_crash_rate = 0.002;  // per-step chance of crashing the current leader
  uint64_t max_size_per_msg = 0;     // 0: varies with the seed (1 B .. 1 MiB)
  bool membership_changes = false;
  bool leader_transfers = true;
  bool snapshots = true;
  bool reads = true;
  raft::TestingKnobs knobs;  // mutation switches (see raft/config.h)
};

class Sim {
 public:
  explicit Sim(const SimOptions& options);
  ~Sim();

  // Performs one random event, then checks safety (first violation sticks).
  void Step();
  // The first safety violation seen so far, or OK.
  absl::Status CheckSafety() const { return violation_; }
  // Restarts every crashed node, heals every link and stops message loss.
  void HealAll();
  // After HealAll: ticks and delivers until a leader has accepted a new
  // command and every live member voter applied it. kDeadlineExceeded if that
  // takes more than `max_ticks` ticks per node.
  absl::Status ProposeAndWait(const std::string& command, int max_ticks);
  // The last `n` events, one per line.
  std::string Trace(int n) const;
  // Counters for tests of the simulator itself.
  uint64_t commits() const { return max_commit_; }
  uint64_t leaders_elected() const { return leaders_by_term_.size(); }
  uint64_t reads_served() const { return reads_served_; }
  uint64_t snapshots_installed() const { return snapshots_installed_; }

 private:
  struct Node;
  struct Envelope {
    raftpb::Message msg;
    uint64_t incarnation_from;  // sender incarnation (for snapshot reports)
  };

  // Events.
  void TickNode(Node& n);
  void HandleReady(Node& n);
  void DeliverOne();
  void DuplicateOne();
  void Partition();
  void Crash(Node& n);
  void Restart(Node& n);
  void ProposeCommand(Node& n);
  void RequestRead(Node& n);
  void ChangeMembership();
  void Transfer(Node& n);
  void MaybeSnapshot(Node& n);

  // Helpers.
  uint64_t Rand() { return rng_(); }
  uint64_t Pick(uint64_t n) { return rng_() % n; }
  bool Chance(double p) { return static_cast<double>(rng_() >> 11) * 0x1.0p-53 < p; }
  Node& RandomNode();
  Node* Leader();
  void StartNode(Node& n);
  void ApplyEntry(Node& n, const raftpb::Entry& e);
  void PersistEntries(Node& n, const std::vector<raftpb::Entry>& entries);
  void Fail(const std::string& what);
  void Record(std::string event);
  bool LinkUp(uint64_t from, uint64_t to) const;
  void CheckInvariants();
  uint64_t LogHash(const Node& n, uint64_t index) const;  // chain hash of prefix [1, index]
  std::set<uint64_t> Members(const raftpb::ConfState& cs) const;

  SimOptions options_;
  std::mt19937_64 rng_;
  std::vector<std::unique_ptr<Node>> nodes_;  // index = id - 1
  std::vector<Envelope> network_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;  // (from, to) links that drop
  bool lossy_ = true;
  uint64_t step_ = 0;
  uint64_t next_command_ = 1;
  uint64_t next_read_ = 1;
  absl::Status violation_;
  std::deque<std::string> trace_;

  // Global observations for the invariants.
  std::map<uint64_t, uint64_t> leaders_by_term_;   // term -> leader id
  std::vector<uint64_t> applied_hash_;             // index -> state-machine hash after applying it
  std::vector<uint64_t> committed_hash_;           // index -> log chain hash, once committed
  std::string watch_command_;                      // ProposeAndWait's command
  std::set<uint64_t> watched_;                     // nodes that applied watch_command_
  uint64_t max_commit_ = 0;                        // highest commit index any node persisted
  uint64_t max_commit_hash_ = 0;                   // chain hash of that prefix
  std::map<std::string, uint64_t> pending_reads_;  // ctx -> max_commit_ when issued
  uint64_t reads_served_ = 0;
  uint64_t snapshots_installed_ = 0;
  std::set<uint64_t> retired_;  // ids removed from the group (never restarted as members)
};

// Seeds [first, first + count), or just TESSERA_SIM_SEED when that is set.
std::vector<uint64_t> SimSeeds(uint64_t first, uint64_t count);

}  // namespace tessera::sim

#endif  // TESSERA_TESTS_SIM_SIM_H_
