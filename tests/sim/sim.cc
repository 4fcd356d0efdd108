#include "tests/sim/sim.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::sim {
namespace {

using raft::Role;

constexpr uint64_t kAutoSnapshotEntries = 32;

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Chain hash of a log prefix: Chain(hash through i-1, entry i). The state
// machine keeps the same chain over what it applied, so a log's hash at i
// equals the state-machine hash after applying i.
uint64_t Chain(uint64_t prev, const raftpb::Entry& e) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the data
  for (unsigned char c : e.data()) h = (h ^ c) * 0x100000001b3ULL;
  return Mix(prev ^ Mix(e.term() ^ Mix(h ^ static_cast<uint64_t>(e.type()))));
}

std::string EncodeSnapshotData(uint64_t applied, uint64_t hash) {
  return absl::StrCat(applied, ":", hash);
}

bool DecodeSnapshotData(const std::string& data, uint64_t* applied, uint64_t* hash) {
  if (data.empty()) {  // bootstrap snapshot
    *applied = 0;
    *hash = 0;
    return true;
  }
  size_t colon = data.find(':');
  return colon != std::string::npos && absl::SimpleAtoi(data.substr(0, colon), applied) &&
         absl::SimpleAtoi(data.substr(colon + 1), hash);
}

const char* TypeName(raftpb::MessageType t) { return raftpb::MessageType_Name(t).c_str(); }

}  // namespace

struct Sim::Node {
  uint64_t id = 0;
  raft::MemoryStorage storage;         // what survives a crash
  std::unique_ptr<raft::RawNode> raw;  // null while crashed
  uint64_t incarnation = 0;
  // Chain hashes of the persisted log: hashes[i - base_index] is the hash of
  // the prefix through index i; base_index is the last compacted index.
  uint64_t base_index = 0;
  std::vector<uint64_t> hashes{0};
  uint64_t persisted_commit = 0;
  // State machine; rebuilt from the snapshot on restart.
  uint64_t applied = 0;
  uint64_t sm_hash = 0;
  raftpb::ConfState conf_state;
  // Leader bookkeeping for Leader Append-Only / Completeness.
  uint64_t lead_term = 0;
  uint64_t lead_last_index = 0;
  uint64_t completeness_index = 0;  // 0 = nothing pending
  uint64_t completeness_hash = 0;
  bool up() const { return raw != nullptr; }
};

std::vector<uint64_t> SimSeeds(uint64_t first, uint64_t count) {
  if (const char* env = std::getenv("TESSERA_SIM_SEED")) {
    uint64_t seed = 0;
    if (absl::SimpleAtoi(env, &seed)) return {seed};
  }
  std::vector<uint64_t> seeds;
  for (uint64_t i = 0; i < count; ++i) seeds.push_back(first + i);
  return seeds;
}

Sim::Sim(const SimOptions& options) : options_(options), rng_(options.seed) {
  // Founding members start from a snapshot at index 1, term 1 that holds the
  // initial voters. A node added later starts empty and receives that (or a
  // later) snapshot from the leader, so it learns the membership it joins.
  raftpb::Snapshot boot;
  boot.mutable_metadata()->set_index(1);
  boot.mutable_metadata()->set_term(1);
  for (int i = 1; i <= options_.nodes; ++i)
    boot.mutable_metadata()->mutable_conf_state()->add_voters(i);
  for (int i = 1; i <= options_.nodes + options_.spare_nodes; ++i) {
    auto n = std::make_unique<Node>();
    n->id = i;
    if (i <= options_.nodes) {
      absl::Status s = n->storage.ApplySnapshot(boot);
      if (!s.ok()) Fail(absl::StrCat("bootstrap snapshot: ", s.ToString()));
      n->base_index = boot.metadata().index();
    }
    nodes_.push_back(std::move(n));
  }
  for (auto& n : nodes_) StartNode(*n);
}

Sim::~Sim() = default;

void Sim::Record(std::string event) {
  trace_.push_back(absl::StrCat("#", step_, " ", event));
  if (trace_.size() > 400) trace_.pop_front();
}

std::string Sim::Trace(int n) const {
  std::vector<std::string> lines;
  int skip = std::max(0, static_cast<int>(trace_.size()) - n);
  for (int i = skip; i < static_cast<int>(trace_.size()); ++i) lines.push_back(trace_[i]);
  return absl::StrJoin(lines, "\n");
}

void Sim::Fail(const std::string& what) {
  if (violation_.ok()) {
    violation_ = absl::InternalError(absl::StrCat("step ", step_, ": ", what));
    Record(absl::StrCat("VIOLATION ", what));
  }
}

void Sim::StartNode(Node& n) {
  raft::Config config;
  config.id = n.id;
  config.storage = &n.storage;
  config.election_ticks = 10;
  config.heartbeat_ticks = 1;
  config.seed = options_.seed * 1000003 + n.incarnation;
  config.max_inflight_msgs = 1 + static_cast<int>(options_.seed % 8);
  static constexpr uint64_t kMsgSizes[] = {1, 300, 4096, 1 << 20};
  config.max_size_per_msg = options_.max_size_per_msg != 0 ? options_.max_size_per_msg
                                                           : kMsgSizes[(options_.seed / 8) % 4];
  config.pre_vote = (options_.seed / 32) % 4 != 0;  // mostly on
  config.check_quorum = (options_.seed / 128) % 4 != 0;
  config.testing = options_.knobs;
  // The state machine restarts from the snapshot and re-applies the rest.
  auto snap = n.storage.Snapshot();
  if (!snap.ok()) return Fail(absl::StrCat("node ", n.id, " snapshot: ", snap.status().ToString()));
  uint64_t applied = 0, hash = 0;
  if (!DecodeSnapshotData(snap->data(), &applied, &hash)) return Fail("bad snapshot data");
  n.applied = snap->metadata().index();
  n.sm_hash = hash;
  n.conf_state = snap->metadata().conf_state();
  n.persisted_commit = n.storage.hard_state().commit();
  auto raw = raft::RawNode::Create(config);
  if (!raw.ok()) return Fail(absl::StrCat("node ", n.id, " create: ", raw.status().ToString()));
  n.raw = *std::move(raw);
  ++n.incarnation;
}

Sim::Node& Sim::RandomNode() { return *nodes_[Pick(nodes_.size())]; }

Sim::Node* Sim::Leader() {
  Node* best = nullptr;
  for (auto& n : nodes_) {
    if (n->up() && n->raw->role() == Role::kLeader &&
        (best == nullptr || n->raw->term() > best->raw->term())) {
      best = n.get();
    }
  }
  return best;
}

bool Sim::LinkUp(uint64_t from, uint64_t to) const { return !cut_.contains({from, to}); }

std::set<uint64_t> Sim::Members(const raftpb::ConfState& cs) const {
  std::set<uint64_t> m(cs.voters().begin(), cs.voters().end());
  m.insert(cs.voters_outgoing().begin(), cs.voters_outgoing().end());
  return m;
}

uint64_t Sim::LogHash(const Node& n, uint64_t index) const {
  if (index < n.base_index || index - n.base_index >= n.hashes.size()) {
    std::fprintf(stderr, "sim bug: node %llu has no hash for index %llu\n",
                 static_cast<unsigned long long>(n.id), static_cast<unsigned long long>(index));
    std::abort();
  }
  return n.hashes[index - n.base_index];
}

void Sim::Step() {
  ++step_;
  if (Chance(options_.crash_rate)) {
    Node& n = RandomNode();
    if (n.up()) Crash(n);
  } else if (Chance(options_.leader_crash_rate)) {
    if (Node* leader = Leader()) Crash(*leader);
  } else if (Chance(options_.partition_rate)) {
    Partition();
  } else {
    uint64_t r = Pick(1000);
    if (r < 300) {
      Node& n = RandomNode();
      if (n.up()) TickNode(n);
    } else if (r < 550) {
      Node& n = RandomNode();
      if (n.up() && n.raw->HasReady()) HandleReady(n);
    } else if (r < 800) {
      DeliverOne();
    } else if (r < 815) {
      DuplicateOne();
    } else if (r < 890) {
      Node* leader = Leader();
      Node& n = (leader != nullptr && Chance(0.8)) ? *leader : RandomNode();
      if (n.up()) ProposeCommand(n);
    } else if (r < 915) {
      Node& n = RandomNode();
      if (options_.reads && n.up()) RequestRead(n);
    } else if (r < 930) {
      Node& n = RandomNode();
      if (options_.snapshots && n.up()) MaybeSnapshot(n);
    } else if (r < 935) {
      Node* leader = Leader();
      if (options_.leader_transfers && leader != nullptr) Transfer(*leader);
    } else if (r < 950) {
      if (options_.membership_changes) ChangeMembership();
    } else if (r < 965) {
      if (!cut_.empty()) {
        cut_.clear();
        Record("heal links");
      }
    } else {
      Node& n = RandomNode();
      if (!n.up()) Restart(n);
    }
  }
  CheckInvariants();
}

void Sim::TickNode(Node& n) { n.raw->Tick(); }

void Sim::PersistEntries(Node& n, const std::vector<raftpb::Entry>& entries) {
  if (entries.empty()) return;
  uint64_t first = entries.front().index();
  uint64_t last_persisted = n.storage.LastIndex();
  // Leader Append-Only: a leader never replaces an entry of its own term.
  if (n.raw->role() == Role::kLeader && first <= last_persisted) {
    for (uint64_t i = std::max(first, n.storage.FirstIndex()); i <= last_persisted; ++i) {
      auto t = n.storage.Term(i);
      if (t.ok() && *t == n.raw->term()) {
        return Fail(absl::StrCat("Leader Append-Only: leader ", n.id, " of term ", n.raw->term(),
                                 " overwrites its entry at index ", i));
      }
    }
  }
  absl::Status s = n.storage.Append(entries);
  if (!s.ok()) return Fail(absl::StrCat("node ", n.id, " append: ", s.ToString()));
  // Recompute chain hashes from the first new entry on.
  for (const raftpb::Entry& e : entries) {
    if (e.index() <= n.base_index) continue;
    n.hashes.resize(e.index() - n.base_index);  // keep through e.index() - 1
    n.hashes.push_back(Chain(n.hashes.back(), e));
  }
  if (n.hashes.size() != n.storage.LastIndex() - n.base_index + 1) {
    Fail(absl::StrCat("sim bookkeeping: node ", n.id, " hashes out of step"));
  }
}

void Sim::HandleReady(Node& n) {
  raft::Ready rd = n.raw->GetReady();
  if (rd.snapshot.has_value()) {
    const raftpb::Snapshot& snap = *rd.snapshot;
    absl::Status s = n.storage.ApplySnapshot(snap);
    if (!s.ok()) return Fail(absl::StrCat("node ", n.id, " apply snapshot: ", s.ToString()));
    uint64_t applied = 0, hash = 0;
    if (!DecodeSnapshotData(snap.data(), &applied, &hash)) return Fail("bad snapshot data");
    n.base_index = snap.metadata().index();
    n.hashes.assign(1, hash);
    n.applied = snap.metadata().index();
    n.sm_hash = hash;
    n.conf_state = snap.metadata().conf_state();
    ++snapshots_installed_;
    Record(absl::StrCat("node ", n.id, " installs snapshot at ", n.applied));
  }
  PersistEntries(n, rd.entries);
  if (rd.hard_state.has_value()) {
    const raftpb::HardState& hs = *rd.hard_state;
    n.storage.SetHardState(hs);
    // Committed entries never change: remember the hash of every committed
    // index and compare later commits with it.
    uint64_t from = std::max(n.persisted_commit + 1, n.base_index);
    if (hs.commit() > n.storage.LastIndex()) {
      Fail(absl::StrCat("node ", n.id, " commit ", hs.commit(), " beyond its log ",
                        n.storage.LastIndex()));
    }
    for (uint64_t i = from; i <= hs.commit() && i <= n.storage.LastIndex(); ++i) {
      uint64_t h = LogHash(n, i);
      if (committed_hash_.size() <= i) committed_hash_.resize(i + 1, 0);
      if (committed_hash_[i] == 0) {
        committed_hash_[i] = h;
      } else if (committed_hash_[i] != h) {
        Fail(absl::StrCat("committed entry changed: node ", n.id,
                          " committed a different entry at ", i));
      }
    }
    n.persisted_commit = std::max(n.persisted_commit, hs.commit());
    max_commit_ = std::max(max_commit_, hs.commit());
  }
  // A crash after persisting but before sending.
  if (lossy_ && Chance(options_.crash_rate)) return Crash(n);
  for (raftpb::Message& m : rd.messages) {
    network_.push_back({std::move(m), n.incarnation});
  }
  if (network_.size() > 20000) network_.erase(network_.begin(), network_.begin() + 10000);
  for (const raftpb::Entry& e : rd.committed_entries) {
    ApplyEntry(n, e);
    if (!n.up()) return;
  }
  for (const raft::ReadState& rs : rd.read_states) {
    auto it = pending_reads_.find(rs.request_ctx);
    if (it == pending_reads_.end()) continue;
    if (rs.index < it->second) {
      Fail(absl::StrCat("ReadIndex: read ", rs.request_ctx, " served at index ", rs.index,
                        " but index ", it->second, " was committed before it was issued"));
    }
    pending_reads_.erase(it);
    ++reads_served_;
  }
  n.raw->Advance(rd);
  // Like a real server, snapshot every so many applied entries. (A node added
  // after the latest snapshot can only catch up from a newer one: it ignores
  // a snapshot whose membership does not include it.)
  if (options_.snapshots && n.applied >= n.base_index + kAutoSnapshotEntries) MaybeSnapshot(n);
}

void Sim::ApplyEntry(Node& n, const raftpb::Entry& e) {
  if (e.index() <= n.applied) return;  // covered by a snapshot installed in this Ready
  if (e.index() != n.applied + 1) {
    return Fail(absl::StrCat("node ", n.id, " applies index ", e.index(), " after ", n.applied));
  }
  n.sm_hash = Chain(n.sm_hash, e);
  n.applied = e.index();
  if (applied_hash_.size() <= e.index()) applied_hash_.resize(e.index() + 1, 0);
  if (applied_hash_[e.index()] == 0) {
    applied_hash_[e.index()] = n.sm_hash;
  } else if (applied_hash_[e.index()] != n.sm_hash) {
    return Fail(absl::StrCat("State Machine Safety: node ", n.id, " applied a different entry at ",
                             e.index()));
  }
  if (!watch_command_.empty() && e.data() == watch_command_) watched_.insert(n.id);
  if (e.type() == raftpb::ENTRY_CONF_CHANGE) {
    raftpb::ConfChange cc;
    if (!cc.ParseFromString(e.data())) cc.Clear();
    absl::StatusOr<raftpb::ConfState> cs = n.raw->ApplyConfChange(cc);
    if (!cs.ok()) {
      return Fail(absl::StrCat("node ", n.id, " refuses the conf change committed at ", e.index(),
                               ": ", cs.status().ToString()));
    }
    n.conf_state = *std::move(cs);
    Record(absl::StrCat("node ", n.id, " applies conf change at ", e.index(), ": voters ",
                        absl::StrJoin(n.conf_state.voters(), ","), " outgoing ",
                        absl::StrJoin(n.conf_state.voters_outgoing(), ","), " learners ",
                        absl::StrJoin(n.conf_state.learners(), ",")));
  }
}

void Sim::DeliverOne() {
  if (network_.empty()) return;
  size_t i = Pick(network_.size());
  Envelope env = std::move(network_[i]);
  network_[i] = std::move(network_.back());
  network_.pop_back();
  const raftpb::Message& m = env.msg;
  Node& to = *nodes_[m.to() - 1];
  bool delivered = to.up() && LinkUp(m.from(), m.to()) && !(lossy_ && Chance(options_.drop_rate));
  if (delivered) {
    absl::Status s = to.raw->Step(m);
    if (!s.ok()) {
      Fail(absl::StrCat("node ", m.to(), " rejected ", TypeName(m.type()), ": ", s.ToString()));
    }
  }
  if (m.type() == raftpb::MSG_SNAP) {
    Node& from = *nodes_[m.from() - 1];
    if (from.up() && from.incarnation == env.incarnation_from) {
      from.raw->ReportSnapshot(m.to(), delivered);
      // A real server builds snapshots on demand; here the sender refreshes
      // its snapshot when the one it sent predates the receiver's membership
      // (the receiver ignores such a snapshot).
      const raftpb::ConfState& cs = m.snapshot().metadata().conf_state();
      std::set<uint64_t> in_snapshot = Members(cs);
      in_snapshot.insert(cs.learners().begin(), cs.learners().end());
      if (!in_snapshot.contains(m.to())) MaybeSnapshot(from);
    }
    Record(absl::StrCat("snapshot ", m.from(), "->", m.to(), delivered ? " delivered" : " lost"));
  }
}

void Sim::DuplicateOne() {
  if (network_.empty() || !lossy_) return;
  Envelope copy = network_[Pick(network_.size())];
  network_.push_back(std::move(copy));
}

void Sim::Partition() {
  uint64_t n = nodes_.size();
  switch (Pick(3)) {
    case 0: {  // one directed link
      uint64_t from = 1 + Pick(n), to = 1 + Pick(n);
      if (from == to) return;
      cut_.insert({from, to});
      Record(absl::StrCat("cut link ", from, "->", to));
      return;
    }
    case 1: {  // isolate the leader
      Node* leader = Leader();
      if (leader == nullptr) return;
      for (uint64_t other = 1; other <= n; ++other) {
        if (other == leader->id) continue;
        cut_.insert({leader->id, other});
        cut_.insert({other, leader->id});
      }
      Record(absl::StrCat("isolate leader ", leader->id));
      return;
    }
    default: {  // random split into two sides
      std::vector<bool> side(n + 1);
      for (uint64_t id = 1; id <= n; ++id) side[id] = Chance(0.5);
      for (uint64_t a = 1; a <= n; ++a) {
        for (uint64_t b = 1; b <= n; ++b) {
          if (side[a] != side[b]) cut_.insert({a, b});
        }
      }
      std::vector<uint64_t> left;
      for (uint64_t id = 1; id <= n; ++id) {
        if (side[id]) left.push_back(id);
      }
      Record(absl::StrCat("split {", absl::StrJoin(left, ","), "} from the rest"));
      return;
    }
  }
}

void Sim::Crash(Node& n) {
  Record(absl::StrCat("crash node ", n.id));
  n.raw.reset();
  // Everything not persisted is gone: the storage holds only what HandleReady wrote.
  n.hashes.resize(n.storage.LastIndex() - n.base_index + 1);
  n.lead_term = 0;
  n.completeness_index = 0;
}

void Sim::Restart(Node& n) {
  Record(absl::StrCat("restart node ", n.id));
  StartNode(n);
}

void Sim::ProposeCommand(Node& n) {
  std::string cmd = absl::StrCat("c", next_command_++);
  absl::Status s = n.raw->Propose(cmd);
  Record(absl::StrCat("propose ", cmd, " at node ", n.id, s.ok() ? "" : " (rejected)"));
}

void Sim::RequestRead(Node& n) {
  std::string ctx = absl::StrCat("r", next_read_++);
  // Every index committed anywhere now must be visible to this read.
  uint64_t committed = max_commit_;
  for (auto& other : nodes_) {
    if (other->up()) committed = std::max(committed, other->raw->commit_index());
  }
  if (pending_reads_.size() > 1000) pending_reads_.erase(pending_reads_.begin());
  pending_reads_[ctx] = committed;
  n.raw->ReadIndex(ctx);
}

void Sim::ChangeMembership() {
  Node* leader = Leader();
  if (leader == nullptr) return;
  raftpb::ConfState cs = leader->raw->conf_state();
  raftpb::ConfChange cc;
  std::set<uint64_t> voters(cs.voters().begin(), cs.voters().end());
  std::set<uint64_t> learners(cs.learners().begin(), cs.learners().end());
  std::vector<uint64_t> outsiders;
  for (auto& n : nodes_) {
    if (!voters.contains(n->id) && !learners.contains(n->id) && !retired_.contains(n->id) &&
        !Members(cs).contains(n->id)) {
      outsiders.push_back(n->id);
    }
  }
  auto add = [&](raftpb::ConfChangeType type, uint64_t id) {
    raftpb::ConfChangeSingle* c = cc.add_changes();
    c->set_type(type);
    c->set_node_id(id);
  };
  if (!cs.voters_outgoing().empty()) {
    // Leave the joint config (an empty change).
  } else {
    switch (Pick(4)) {
      case 0:  // add a learner
        if (outsiders.empty()) return;
        add(raftpb::CONF_CHANGE_ADD_LEARNER, outsiders[Pick(outsiders.size())]);
        break;
      case 1:  // promote a learner
        if (learners.empty()) return;
        add(raftpb::CONF_CHANGE_ADD_NODE, *std::next(learners.begin(), Pick(learners.size())));
        break;
      case 2: {  // remove a voter (keep at least 3)
        if (voters.size() <= 3) return;
        uint64_t id = *std::next(voters.begin(), Pick(voters.size()));
        add(raftpb::CONF_CHANGE_REMOVE_NODE, id);
        break;
      }
      default: {  // joint: replace a voter by an outsider
        if (outsiders.empty()) return;
        uint64_t out = *std::next(voters.begin(), Pick(voters.size()));
        add(raftpb::CONF_CHANGE_ADD_NODE, outsiders[Pick(outsiders.size())]);
        add(raftpb::CONF_CHANGE_REMOVE_NODE, out);
        cc.set_transition(Chance(0.5) ? raftpb::CONF_CHANGE_TRANSITION_JOINT_EXPLICIT
                                      : raftpb::CONF_CHANGE_TRANSITION_AUTO);
        break;
      }
    }
  }
  absl::Status s = leader->raw->ProposeConfChange(cc);
  if (s.ok()) {
    for (const auto& c : cc.changes()) {
      if (c.type() == raftpb::CONF_CHANGE_REMOVE_NODE) retired_.insert(c.node_id());
    }
  }
  Record(absl::StrCat("propose conf change at leader ", leader->id, ": ", cc.ShortDebugString(),
                      s.ok() ? "" : absl::StrCat(" (rejected: ", s.message(), ")")));
}

void Sim::Transfer(Node& leader) {
  raftpb::ConfState cs = leader.raw->conf_state();
  if (cs.voters().empty()) return;
  uint64_t to = cs.voters(Pick(cs.voters().size()));
  Record(absl::StrCat("transfer leadership ", leader.id, " -> ", to));
  leader.raw->TransferLeader(to);
}

void Sim::MaybeSnapshot(Node& n) {
  uint64_t snap_index = 0, ignored = 0;
  auto current = n.storage.Snapshot();
  if (!current.ok()) return Fail(current.status().ToString());
  snap_index = current->metadata().index();
  (void)ignored;
  if (n.applied <= snap_index || n.applied > n.storage.LastIndex()) return;
  auto snap =
      n.storage.CreateSnapshot(n.applied, &n.conf_state, EncodeSnapshotData(n.applied, n.sm_hash));
  if (!snap.ok()) return Fail(absl::StrCat("node ", n.id, " snapshot: ", snap.status().ToString()));
  // Keep a few entries behind the snapshot, as a real server would.
  uint64_t first = n.storage.FirstIndex();
  uint64_t compact = n.applied - std::min<uint64_t>(Pick(4), n.applied - first);
  if (compact < first) return;
  absl::Status s = n.storage.Compact(compact);
  if (!s.ok()) return Fail(absl::StrCat("node ", n.id, " compact: ", s.ToString()));
  n.hashes.erase(n.hashes.begin(), n.hashes.begin() + (compact - n.base_index));
  n.base_index = compact;
  Record(absl::StrCat("node ", n.id, " snapshot at ", n.applied, ", compact through ", compact));
}

void Sim::CheckInvariants() {
  for (auto& np : nodes_) {
    Node& n = *np;
    if (!n.up()) continue;
    if (n.raw->role() != Role::kLeader) {
      n.completeness_index = 0;
      continue;
    }
    uint64_t term = n.raw->term();
    // Election Safety.
    auto [it, inserted] = leaders_by_term_.emplace(term, n.id);
    if (!inserted && it->second != n.id) {
      return Fail(absl::StrCat("Election Safety: nodes ", it->second, " and ", n.id,
                               " both lead term ", term));
    }
    if (n.lead_term != term) {
      Record(absl::StrCat("node ", n.id, " leads term ", term));
      n.lead_term = term;
      n.lead_last_index = n.raw->last_index();
      // Leader Completeness: it must hold every entry committed so far.
      if (n.raw->last_index() < max_commit_) {
        return Fail(absl::StrCat("Leader Completeness: leader ", n.id, " of term ", term,
                                 " has last index ", n.raw->last_index(), " < committed ",
                                 max_commit_));
      }
      n.completeness_index = max_commit_;
      n.completeness_hash = max_commit_ < committed_hash_.size() ? committed_hash_[max_commit_] : 0;
    }
    // Leader Append-Only (the in-memory log never shrinks while leading).
    if (n.raw->last_index() < n.lead_last_index) {
      return Fail(absl::StrCat("Leader Append-Only: leader ", n.id, " log shrank from ",
                               n.lead_last_index, " to ", n.raw->last_index()));
    }
    n.lead_last_index = n.raw->last_index();
    if (n.completeness_index != 0 && n.storage.LastIndex() >= n.completeness_index) {
      if (n.completeness_index >= n.base_index && n.completeness_hash != 0 &&
          LogHash(n, n.completeness_index) != n.completeness_hash) {
        return Fail(absl::StrCat("Leader Completeness: leader ", n.id, " of term ", term,
                                 " holds a different entry at committed index ",
                                 n.completeness_index));
      }
      n.completeness_index = 0;
    }
  }
  // Log Matching: for each pair, the highest index where both persisted logs
  // hold the same term must have identical prefixes.
  for (size_t a = 0; a < nodes_.size(); ++a) {
    for (size_t b = a + 1; b < nodes_.size(); ++b) {
      const Node& x = *nodes_[a];
      const Node& y = *nodes_[b];
      uint64_t lo = std::max(x.base_index, y.base_index);
      uint64_t hi = std::min(x.storage.LastIndex(), y.storage.LastIndex());
      for (uint64_t i = hi; i >= lo && i > 0; --i) {
        auto tx = x.storage.Term(i);
        auto ty = y.storage.Term(i);
        if (!tx.ok() || !ty.ok()) break;
        if (*tx != *ty) continue;
        if (LogHash(x, i) != LogHash(y, i)) {
          return Fail(absl::StrCat("Log Matching: nodes ", x.id, " and ", y.id,
                                   " agree on the term at index ", i, " but not on the prefix"));
        }
        break;
      }
    }
  }
}

void Sim::HealAll() {
  Record("heal all");
  cut_.clear();
  lossy_ = false;
  for (auto& n : nodes_) {
    if (!n->up()) Restart(*n);
  }
}

absl::Status Sim::ProposeAndWait(const std::string& command, int max_ticks) {
  watch_command_ = command;
  watched_.clear();
  int proposed_at = -1000;
  for (int tick = 0; tick < max_ticks; ++tick) {
    ++step_;
    for (auto& n : nodes_) {
      if (n->up()) n->raw->Tick();
    }
    // Deliver everything until the group is quiet (bounded).
    for (int round = 0; round < 1000; ++round) {
      bool busy = false;
      for (auto& n : nodes_) {
        if (n->up() && n->raw->HasReady()) {
          HandleReady(*n);
          busy = true;
        }
      }
      std::vector<Envelope> batch = std::move(network_);
      network_.clear();
      for (Envelope& env : batch) {
        network_.push_back(std::move(env));
        DeliverOne();  // network_ holds just this one
        busy = true;
      }
      CheckInvariants();
      if (!violation_.ok()) return violation_;
      if (!busy) break;
    }
    Node* leader = Leader();
    if (leader == nullptr) continue;
    std::set<uint64_t> voters = Members(leader->raw->conf_state());
    bool all = !voters.empty();
    for (uint64_t id : voters) all = all && watched_.contains(id);
    if (all) {
      watch_command_.clear();
      return absl::OkStatus();
    }
    if (tick - proposed_at >= 20) {  // (re)propose: an earlier proposal may have been dropped
      absl::Status s = leader->raw->Propose(command);
      if (s.ok()) proposed_at = tick;
    }
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "command ", command, " not applied by every voter within ", max_ticks, " ticks"));
}

}  // namespace tessera::sim
