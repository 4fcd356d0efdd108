// Test helpers for raft/: node construction and a small deterministic
// in-memory network of RawNodes (in the spirit of etcd-io/raft's `network`).
#ifndef TESSERA_TESTS_RAFT_RAFT_TEST_UTIL_H_
#define TESSERA_TESTS_RAFT_RAFT_TEST_UTIL_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "raft/raft.h"
#include "raft/raw_node.h"
#include "raft/storage.h"
#include "tessera/raft.pb.h"

namespace tessera::raft {
inline void PrintTo(Role r, std::ostream* os) { *os << RoleName(r); }
}  // namespace tessera::raft

namespace tessera::raft::testing {

inline raftpb::ConfState Voters(std::initializer_list<uint64_t> ids) {
  raftpb::ConfState cs;
  for (uint64_t id : ids) cs.add_voters(id);
  return cs;
}

// Writes the bootstrap snapshot with `cs` into `s`: at index 1, term 1 as
// documented in raw_node.h, or at index 0, term 0 when `index` is 0 (for
// white-box tests that preload a log from index 1).
inline void Bootstrap(MemoryStorage* s, const raftpb::ConfState& cs, uint64_t index = 1) {
  raftpb::Snapshot snap;
  snap.mutable_metadata()->set_index(index);
  snap.mutable_metadata()->set_term(index);
  *snap.mutable_metadata()->mutable_conf_state() = cs;
  ASSERT_TRUE(s->ApplySnapshot(snap).ok());
}

// The nominal tick of the tests' virtual clocks (Network, TestConfig).
inline constexpr Clock::duration kTestTickInterval = std::chrono::milliseconds(100);

inline Config TestConfig(uint64_t id, const Storage* storage, int election = 10,
                         int heartbeat = 1) {
  Config c;
  c.tick_interval = kTestTickInterval;
  c.id = id;
  c.election_ticks = election;
  c.heartbeat_ticks = heartbeat;
  c.storage = storage;
  c.seed = 42;
  return c;
}

inline raftpb::Entry Ent(uint64_t index, uint64_t term, std::string data = "") {
  raftpb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_data(std::move(data));
  return e;
}

inline raftpb::Message Msg(uint64_t from, uint64_t to, raftpb::MessageType type,
                           uint64_t term = 0) {
  raftpb::Message m;
  m.set_from(from);
  m.set_to(to);
  m.set_type(type);
  m.set_term(term);
  return m;
}

inline std::vector<raftpb::Message> TakeMessages(Raft& r) {
  r.FlushAppends();
  std::vector<raftpb::Message> out = std::move(r.msgs());
  r.msgs().clear();
  return out;
}

inline raftpb::ConfChange SingleChange(raftpb::ConfChangeType type, uint64_t id) {
  raftpb::ConfChange cc;
  auto* c = cc.add_changes();
  c->set_type(type);
  c->set_node_id(id);
  return cc;
}

// A group of RawNodes over MemoryStorage with a lossless, instantaneous but
// filterable network. Every Ready is handled following the contract:
// persist snapshot, entries and hard state, then send, then apply (conf
// changes included), then Advance.
class Network {
 public:
  using ConfigTweak = std::function<void(Config&)>;

  // Creates one node per id, all bootstrapped with `ids` as voters (or with
  // `cs` when given).
  explicit Network(std::vector<uint64_t> ids, ConfigTweak tweak = nullptr,
                   std::optional<raftpb::ConfState> cs = std::nullopt)
      : tweak_(std::move(tweak)) {
    raftpb::ConfState conf;
    if (cs.has_value()) {
      conf = *cs;
    } else {
      for (uint64_t id : ids) conf.add_voters(id);
    }
    for (uint64_t id : ids) AddNode(id, &conf);
  }

  // Adds a node; bootstrapped with `cs` if non-null, else empty (joining).
  void AddNode(uint64_t id, const raftpb::ConfState* cs) {
    auto& n = nodes_[id];
    n.storage = std::make_unique<MemoryStorage>();
    if (cs != nullptr) Bootstrap(n.storage.get(), *cs);
    Start(id);
  }

  // Recreates the RawNode of `id` from its storage (a crash and restart;
  // everything persisted survives, in-flight messages to it are lost).
  void Restart(uint64_t id) { Start(id); }

  RawNode* node(uint64_t id) { return nodes_.at(id).node.get(); }
  Raft& raft(uint64_t id) { return nodes_.at(id).node->raft_for_testing(); }
  MemoryStorage* storage(uint64_t id) { return nodes_.at(id).storage.get(); }
  const std::vector<raftpb::Entry>& applied(uint64_t id) { return nodes_.at(id).applied; }
  std::vector<std::string> AppliedData(uint64_t id) {
    std::vector<std::string> out;
    for (const auto& e : nodes_.at(id).applied) {
      if (e.type() == raftpb::ENTRY_NORMAL && !e.data().empty()) out.push_back(e.data());
    }
    return out;
  }
  std::vector<ReadState>& read_states(uint64_t id) { return nodes_.at(id).read_states; }
  std::vector<uint64_t> ids() const {
    std::vector<uint64_t> out;
    for (const auto& [id, n] : nodes_) out.push_back(id);
    return out;
  }

  // Filters.
  void Cut(uint64_t a, uint64_t b) {
    cut_.insert({a, b});
    cut_.insert({b, a});
  }
  void Isolate(uint64_t id) {
    for (const auto& [other, n] : nodes_) {
      if (other != id) Cut(id, other);
    }
  }
  void Recover() {
    cut_.clear();
    dropped_types_.clear();
  }
  void DropType(raftpb::MessageType t) { dropped_types_.insert(t); }
  // Messages that passed every filter, in delivery order (for assertions).
  std::vector<raftpb::Message>& delivered() { return delivered_; }
  // When set, messages are not delivered but collected in pending().
  void set_hold(bool hold) { hold_ = hold; }
  std::vector<raftpb::Message>& pending() { return pending_; }

  // Handles every node's Ready and delivers messages until the network is
  // quiet.
  void Stabilize(int max_rounds = 10000) {
    for (int round = 0; round < max_rounds; ++round) {
      bool any = false;
      for (auto& [id, n] : nodes_) any |= HandleReady(id);
      if (hold_) return;
      std::vector<raftpb::Message> msgs = std::move(pending_);
      pending_.clear();
      for (raftpb::Message& m : msgs) {
        any = true;
        Deliver(m);
      }
      if (!any) return;
    }
    ADD_FAILURE() << "network did not stabilize";
  }

  // Delivers one message (subject to filters).
  void Deliver(const raftpb::Message& m) {
    if (cut_.contains({m.from(), m.to()}) || dropped_types_.contains(m.type())) return;
    auto it = nodes_.find(m.to());
    if (it == nodes_.end()) return;
    delivered_.push_back(m);
    EXPECT_TRUE(it->second.node->Step(m).ok());
  }

  // Delivers `m` and stabilizes.
  void Send(const raftpb::Message& m) {
    Deliver(m);
    Stabilize();
  }

  // Ticks advance each node's virtual clock by kTestTickInterval (given to
  // the node with SetNow before the tick).
  void Tick(uint64_t id, int n = 1) {
    for (int i = 0; i < n; ++i) TickNode(nodes_.at(id));
  }
  void TickAll(int n = 1) {
    for (int i = 0; i < n; ++i) {
      for (auto& [id, nd] : nodes_) TickNode(nd);
      Stabilize();
    }
  }
  // A stall of node `id`'s process: its clock moves on by `d` while it
  // ticks and processes nothing; it resumes with a fresh clock reading.
  void Stall(uint64_t id, Clock::duration d) {
    TestNode& n = nodes_.at(id);
    n.clock += d;
    n.node->SetNow(n.clock);
  }

  // Campaigns on `id` and stabilizes.
  void Elect(uint64_t id) {
    EXPECT_TRUE(node(id)->Campaign().ok());
    Stabilize();
  }

  // Handles the pending Ready of one node; returns whether there was one.
  bool HandleReady(uint64_t id) {
    auto& n = nodes_.at(id);
    bool any = false;
    while (n.node->HasReady()) {
      any = true;
      Ready rd = n.node->GetReady();
      if (rd.snapshot.has_value()) {
        EXPECT_TRUE(n.storage->ApplySnapshot(*rd.snapshot).ok());
        n.applied.clear();
        n.snapshot_index = rd.snapshot->metadata().index();
      }
      EXPECT_TRUE(n.storage->Append(rd.entries).ok());
      if (rd.hard_state.has_value()) n.storage->SetHardState(*rd.hard_state);
      for (raftpb::Message& m : rd.messages) pending_.push_back(std::move(m));
      for (const raftpb::Entry& e : rd.committed_entries) {
        n.applied.push_back(e);
        if (e.type() == raftpb::ENTRY_CONF_CHANGE) {
          raftpb::ConfChange cc;
          EXPECT_TRUE(cc.ParseFromString(e.data()));
          EXPECT_TRUE(n.node->ApplyConfChange(cc).ok());
        }
      }
      for (ReadState& rs : rd.read_states) n.read_states.push_back(std::move(rs));
      n.node->Advance(rd);
    }
    return any;
  }

 private:
  struct TestNode {
    std::unique_ptr<MemoryStorage> storage;
    std::unique_ptr<RawNode> node;
    Clock::time_point clock;  // virtual, kept across restarts
    std::vector<raftpb::Entry> applied;
    std::vector<ReadState> read_states;
    uint64_t snapshot_index = 0;
  };

  void Start(uint64_t id) {
    auto& n = nodes_[id];
    Config c = TestConfig(id, n.storage.get());
    c.seed = id;
    if (tweak_) tweak_(c);
    // Restart from the persisted state; entries after the snapshot are
    // applied again.
    n.applied.clear();
    auto node = RawNode::Create(c);
    ASSERT_TRUE(node.ok()) << node.status();
    n.node = *std::move(node);
    n.node->SetNow(n.clock);
  }

  static void TickNode(TestNode& n) {
    n.clock += kTestTickInterval;
    n.node->SetNow(n.clock);
    n.node->Tick();
  }

  ConfigTweak tweak_;
  std::map<uint64_t, TestNode> nodes_;
  std::set<std::pair<uint64_t, uint64_t>> cut_;
  std::set<raftpb::MessageType> dropped_types_;
  std::vector<raftpb::Message> pending_;
  std::vector<raftpb::Message> delivered_;
  bool hold_ = false;
};

}  // namespace tessera::raft::testing

namespace tessera::raft::testing {

// One node driven directly (no network), for white-box tests.
struct TestRaft {
  MemoryStorage storage;
  std::unique_ptr<RawNode> node;
  Raft& r() { return node->raft_for_testing(); }
  std::vector<raftpb::Message> Take() { return TakeMessages(r()); }
  // Persists the unstable log and applies commits, as the Ready loop would
  // (messages are left in place for the test to inspect).
  void Persist() {
    RaftLog& log = r().log();
    if (log.UnstableSnapshot().has_value()) {
      const raftpb::Snapshot s = *log.UnstableSnapshot();
      EXPECT_TRUE(storage.ApplySnapshot(s).ok());
      log.StableSnapTo(s.metadata().index());
    }
    std::vector<raftpb::Entry> ents = log.UnstableEntries();
    EXPECT_TRUE(storage.Append(ents).ok());
    if (!ents.empty()) log.StableTo(ents.back().index(), ents.back().term());
  }
};

struct TestRaftOptions {
  int election = 10;
  int heartbeat = 1;
  bool pre_vote = false;
  bool check_quorum = false;
  std::vector<raftpb::Entry> entries;  // pre-existing log (after index 0)
  raftpb::HardState hs;
  std::function<void(Config&)> tweak;
};

inline std::unique_ptr<TestRaft> NewTestRaft(uint64_t id, std::initializer_list<uint64_t> peers,
                                             TestRaftOptions o = {}) {
  auto t = std::make_unique<TestRaft>();
  raftpb::ConfState cs;
  for (uint64_t p : peers) cs.add_voters(p);
  Bootstrap(&t->storage, cs, /*index=*/0);
  EXPECT_TRUE(t->storage.Append(o.entries).ok());
  t->storage.SetHardState(o.hs);
  Config c = TestConfig(id, &t->storage, o.election, o.heartbeat);
  c.pre_vote = o.pre_vote;
  c.check_quorum = o.check_quorum;
  if (o.tweak) o.tweak(c);
  auto node = RawNode::Create(c);
  EXPECT_TRUE(node.ok()) << node.status();
  t->node = *std::move(node);
  return t;
}

}  // namespace tessera::raft::testing
#endif  // TESSERA_TESTS_RAFT_RAFT_TEST_UTIL_H_
