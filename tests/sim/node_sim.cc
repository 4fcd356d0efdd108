#include "tests/sim/node_sim.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <limits>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "server/kv/state_machine.h"
#include "storage/mem_kv_store.h"
#include "storage/mem_raft_log.h"
#include "storage/mem_wal.h"
#include "tests/chaos/linearizability.h"

namespace tessera::sim {
namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kTickNs = 10 * kMs;      // Node tick interval
constexpr int kElectionTicks = 10;         // 100 ms
constexpr int64_t kAttemptNs = 100 * kMs;  // one attempt's deadline
constexpr int64_t kGiveUpNs = 1000 * kMs;  // an op's deadline (then unknown)

// FNV-1a, stable across runs and builds.
class Hasher {
 public:
  void Add(absl::string_view s) {
    AddU64(s.size());
    for (char c : s) Byte(static_cast<uint8_t>(c));
  }
  void AddU64(uint64_t v) {
    for (int i = 0; i < 8; ++i) Byte(static_cast<uint8_t>(v >> (8 * i)));
  }
  uint64_t value() const { return h_; }

 private:
  void Byte(uint8_t b) {
    h_ ^= b;
    h_ *= 0x100000001b3ull;
  }
  uint64_t h_ = 0xcbf29ce484222325ull;
};

// The store's data and meta records of `shard` (and its applied index).
uint64_t StoreDigest(const storage::KvStore& kv, ShardId shard) {
  Hasher h;
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snap = kv.ExportSnapshot(shard);
  if (!snap.ok()) return 0;
  h.AddU64((*snap)->applied_index());
  storage::SnapshotRecord r;
  while (true) {
    absl::StatusOr<bool> more = (*snap)->Next(&r);
    if (!more.ok() || !*more) break;
    h.AddU64(r.meta ? 1 : 0);
    h.Add(r.key);
    h.Add(r.value);
  }
  return h.value();
}

uint64_t EntryHash(const raftpb::Entry& e) {
  Hasher h;
  h.AddU64(e.term());
  h.AddU64(static_cast<uint64_t>(e.type()));
  h.Add(e.data());
  return h.value();
}

std::string Ms(int64_t ns) { return absl::StrFormat("%.3fms", static_cast<double>(ns) / kMs); }

}  // namespace

class NodeSim::Clock final : public server::NodeClock {
 public:
  explicit Clock(const int64_t* now_ns) : now_ns_(now_ns) {}
  raft::Clock::time_point MonotonicNow() const override {
    return raft::Clock::time_point(std::chrono::nanoseconds(*now_ns_));
  }
  absl::Time Now() const override { return absl::FromUnixNanos(*now_ns_); }

 private:
  const int64_t* const now_ns_;
};

struct NodeSim::Host {
  NodeId id = 0;
  // One write-ahead model per engine (before the stores, which record into
  // them): the raft log and the KvStore are separate engines (storage/
  // README.md "Crash rule across the two engines"), so a power loss keeps a
  // prefix of each one's unsynced writes independently.
  storage::MemWal log_wal;
  storage::MemWal kv_wal;
  storage::MemRaftLog log{&log_wal};
  storage::MemKvStore kv{&kv_wal};
  std::unique_ptr<server::Transport> transport;
  std::unique_ptr<server::StateMachine> sm;
  std::unique_ptr<server::Node> node;  // null while down
  bool fatal = false;                  // on_fatal was called
  int incarnation = 0;
  int64_t restart_at_ns = 0;  // while down
  int64_t stalled_until_ns = 0;
  // Per shard: the highest commit index this incarnation reported, entries
  // verified up to, the store's applied index last digested.
  std::map<ShardId, uint64_t> commit_seen;
  std::map<ShardId, uint64_t> checked_commit;
  std::map<ShardId, bool> asleep_seen;  // at the last check (hibernation stats)
  std::map<ShardId, uint64_t> kv_applied_seen;
  bool up() const { return node != nullptr; }
};

struct NodeSim::Client {
  int index = 0;
  uint64_t client_id = 0;
  std::map<ShardId, uint64_t> next_seq;  // per shard: the session is per (client, shard)
  std::map<ShardId, NodeId> leader;      // leader cache
  std::map<std::string, chaos::Value> last_seen;
  int64_t next_op_ns = 0;
  uint64_t values = 0;

  // The op in progress.
  bool busy = false;
  size_t op_index = 0;  // in history_.ops
  bool is_read = false;
  bool lease = false;
  bool txn_put = false;
  std::string key;
  ShardId shard = 0;
  serverpb::Command command;
  int64_t give_up_ns = 0;
  uint64_t attempt = 0;  // callbacks of older attempts are ignored
  bool in_flight = false;
  NodeId target = 0;
  int64_t attempt_deadline_ns = 0;
  int64_t retry_at_ns = 0;
  // The answer of the current attempt, set by the Node's callback.
  std::optional<absl::StatusOr<serverpb::CommandResult>> write_reply;
  std::optional<absl::Status> read_reply;
  chaos::Value read_value;
};

NodeSim::NodeSim(const NodeSimOptions& options)
    : options_(options),
      rng_(options.seed * 0x9E3779B97F4A7C15ull + 0x5851F42D4C957F2Dull),
      net_(&rng_),
      now_ns_(1000 * 1000 * kMs),  // 1000 s: any positive origin
      start_ns_(now_ns_),
      clock_(std::make_unique<Clock>(&now_ns_)) {
  // The network's character for this seed.
  base_filters_.push_back(net_.AddFilter(DelayFilter(100'000, rng_.Range(500'000, 5 * kMs))));
  base_filters_.push_back(net_.AddFilter(DropFilter(static_cast<double>(rng_.Pick(6)) / 100)));
  base_filters_.push_back(
      net_.AddFilter(DuplicateFilter(static_cast<double>(rng_.Pick(3)) / 100, 10 * kMs)));
  base_filters_.push_back(
      net_.AddFilter(ReorderFilter(static_cast<double>(rng_.Pick(11)) / 100, 20 * kMs)));
  Record(absl::StrCat("network: ", net_.DescribeFilters()));
  for (int i = 1; i <= options_.nodes; ++i) {
    auto h = std::make_unique<Host>();
    h->id = static_cast<NodeId>(i);
    h->transport = net_.TransportFor(h->id);
    hosts_.push_back(std::move(h));
  }
  for (auto& h : hosts_) Restart(*h);
  for (int i = 0; i < options_.clients; ++i) {
    auto c = std::make_unique<Client>();
    c->index = i;
    NewIdentity(*c);
    c->next_op_ns = now_ns_ + rng_.Range(0, 50 * kMs);
    clients_.push_back(std::move(c));
  }
}

NodeSim::~NodeSim() {
  // Stop the nodes before the clients their callbacks point at.
  for (auto& h : hosts_) h->node.reset();
}

std::vector<uint64_t> NodeSimSeeds(uint64_t first, uint64_t count) {
  if (const char* env = std::getenv("TESSERA_SIM_SEED"); env != nullptr && *env != '\0') {
    uint64_t seed = 0;
    if (absl::SimpleAtoi(env, &seed)) return {seed};
  }
  std::vector<uint64_t> seeds;
  for (uint64_t s = first; s < first + count; ++s) seeds.push_back(s);
  return seeds;
}

bool SetMutation(const std::string& name, server::NodeTestingKnobs* knobs) {
  if (name == "ack_unsynced") {
    knobs->acknowledge_unsynced_writes = true;
  } else if (name == "apply_before_commit") {
    knobs->apply_before_commit = true;
  } else if (name == "ack_before_save") {
    knobs->ack_before_save = true;
  } else if (name == "lease_ticks_only") {
    knobs->lease_in_ticks_only = true;
  } else {
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- helpers

absl::Time NodeSim::Wall(int64_t ns) const { return absl::FromUnixNanos(ns); }

ShardId NodeSim::ShardOf(const std::string& key) const {
  return ShardForKey(key, static_cast<uint32_t>(options_.shards));
}

NodeSim::Host& NodeSim::RandomHost() { return *hosts_[rng_.Pick(hosts_.size())]; }

NodeSim::Host* NodeSim::LeaderOf(ShardId shard) {
  // The leader of the highest term among running nodes.
  Host* best = nullptr;
  uint64_t best_term = 0;
  for (auto& h : hosts_) {
    if (!h->up()) continue;
    std::optional<server::ShardStatus> st = h->node->StatusOf(shard);
    if (st.has_value() && st->role == "leader" && st->term >= best_term) {
      best = h.get();
      best_term = st->term;
    }
  }
  return best;
}

void NodeSim::Record(std::string event) {
  trace_.push_back(absl::StrCat("t=", Ms(now_ns_ - start_ns_), " ", std::move(event)));
  if (trace_.size() > 400) trace_.pop_front();
}

std::string NodeSim::Trace(size_t n) const {
  std::string out;
  const size_t from = trace_.size() > n ? trace_.size() - n : 0;
  for (size_t i = from; i < trace_.size(); ++i) absl::StrAppend(&out, "  ", trace_[i], "\n");
  return out;
}

void NodeSim::Fail(const std::string& what) {
  if (!violation_.ok()) return;
  violation_ = absl::InternalError(absl::StrCat("seed ", options_.seed, " step ", stats_.steps,
                                                " t=", Ms(now_ns_ - start_ns_), ": ", what));
  Record(absl::StrCat("VIOLATION: ", what.substr(0, what.find('\n'))));
}

uint64_t NodeSim::Fingerprint() const {
  Hasher h;
  h.Add(chaos::FormatHistory(history_));
  for (const auto& host : hosts_) {
    for (int s = 0; s < options_.shards; ++s) {
      h.AddU64(StoreDigest(host->kv, static_cast<ShardId>(s)));
    }
  }
  h.AddU64(stats_.cycles);
  h.AddU64(stats_.messages);
  return h.value();
}

// ---------------------------------------------------------------- run

absl::Status NodeSim::Run() {
  const int64_t end = start_ns_ + options_.duration_ms * kMs;
  while (now_ns_ < end && violation_.ok()) Step();
  if (!violation_.ok()) return violation_;
  HealAll();
  // Some healthy traffic, then let everything finish.
  const int64_t healthy_end = now_ns_ + 200 * kMs;
  while (now_ns_ < healthy_end && violation_.ok()) Step();
  workload_on_ = false;
  if (absl::Status s = Settle(4000); !s.ok()) {
    Fail(std::string(s.message()));
    return violation_;
  }
  // Every node loses power at once and restarts: what was acknowledged must
  // still be there for the final reads.
  Record("final power outage of every node");
  for (auto& h : hosts_) PowerLoss(*h, "final outage");
  for (auto& h : hosts_) h->restart_at_ns = now_ns_;
  if (absl::Status s = Settle(4000); !s.ok()) {
    Fail(absl::StrCat("after the final outage: ", s.message()));
    return violation_;
  }
  return FinalReadsAndCheck();
}

void NodeSim::Step() {
  ++stats_.steps;
  now_ns_ += rng_.Range(0, 2000) * 1000;
  // Heal the partitions whose time has come.
  for (auto it = timed_filters_.begin(); it != timed_filters_.end();) {
    if (it->second <= now_ns_) {
      net_.RemoveFilter(it->first);
      Record(absl::StrCat("heal filter ", it->first));
      it = timed_filters_.erase(it);
    } else {
      ++it;
    }
  }
  if (faults_on_) MaybeFault();
  for (auto& h : hosts_) {
    if (!h->up() && h->restart_at_ns <= now_ns_) Restart(*h);
  }
  Deliver();
  std::vector<Host*> order;
  for (auto& h : hosts_) {
    if (h->up() && h->stalled_until_ns <= now_ns_) order.push_back(h.get());
  }
  rng_.Shuffle(order);
  for (Host* h : order) {
    if (h->up()) RunCycle(*h);
  }
  ClientsAct();
  CheckInvariants();
}

void NodeSim::MaybeFault() {
  if (rng_.Chance(options_.partition_rate)) Partition();
  if (rng_.Chance(options_.crash_rate)) {
    Host& h = rng_.Chance(0.4) && LeaderOf(0) != nullptr ? *LeaderOf(0) : RandomHost();
    if (h.up()) {
      switch (rng_.Pick(3)) {
        case 0:
          Crash(h, "kill -9");
          break;
        case 1:
          PowerLoss(h, "power loss");
          break;
        default: {
          // Inside one of its next writes (a Save, an Apply...): the rest of
          // that cycle never happens, but what it sent before is on the wire.
          const uint64_t n = static_cast<uint64_t>(rng_.Range(1, 4));
          const bool in_log = rng_.Chance(0.5);
          (in_log ? h.log_wal : h.kv_wal).CrashAtWrite(n);
          Record(absl::StrCat("node ", h.id, ": will crash at its ", in_log ? "raft log" : "store",
                              " write #", n, " from now"));
          break;
        }
      }
    }
  }
  if (rng_.Chance(options_.outage_rate)) {
    ++stats_.outages;
    Record("power outage of every node");
    for (auto& h : hosts_) {
      if (h->up()) PowerLoss(*h, "outage");
    }
  }
  if (rng_.Chance(options_.stall_rate)) {
    Host* leader = LeaderOf(rng_.Pick(static_cast<uint64_t>(options_.shards)));
    Host& h = leader != nullptr && rng_.Chance(0.7) ? *leader : RandomHost();
    if (h.up() && h.stalled_until_ns <= now_ns_) Stall(h, rng_.Chance(0.5));
  }
  if (rng_.Chance(options_.transfer_rate)) Transfer();
  if (rng_.Chance(options_.quiet_rate) && quiet_until_ns_ <= now_ns_) {
    ++stats_.quiet_spells;
    quiet_until_ns_ = now_ns_ + rng_.Range(50, 300) * kMs;
    Record(absl::StrCat("clients quiet until ", Ms(quiet_until_ns_ - start_ns_)));
  }
}

void NodeSim::Partition() {
  ++stats_.partitions;
  std::unique_ptr<NetFilter> filter;
  const uint64_t kind = rng_.Pick(3);
  Host* leader = LeaderOf(0);
  if (kind == 0 && leader != nullptr) {
    filter = PartitionFilter({leader->id});
  } else if (kind == 1) {
    std::set<NodeId> side;
    for (auto& h : hosts_) {
      if (rng_.Chance(0.5)) side.insert(h->id);
    }
    if (side.empty() || side.size() == hosts_.size()) side = {RandomHost().id};
    filter = PartitionFilter(std::move(side));
  } else {
    const NodeId from = RandomHost().id;
    NodeId to = RandomHost().id;
    if (to == from) to = from % hosts_.size() + 1;
    filter = OneWayFilter(from, to);
  }
  const std::string what = filter->Describe();
  const int id = net_.AddFilter(std::move(filter));
  const int64_t until = now_ns_ + rng_.Range(50, 500) * kMs;
  timed_filters_[id] = until;
  Record(absl::StrCat("filter ", id, " ", what, " until ", Ms(until - start_ns_)));
}

void NodeSim::Crash(Host& h, const char* how) {
  ++stats_.crashes;
  Record(absl::StrCat("node ", h.id, ": crash (", how, ")"));
  h.node.reset();  // pending callbacks get kCancelled
  h.sm.reset();
  h.log_wal.SimulateCrash(h.log_wal.unsynced_writes());
  h.kv_wal.SimulateCrash(h.kv_wal.unsynced_writes());
  ScheduleRestart(h);
}

void NodeSim::PowerLoss(Host& h, const char* why) {
  ++stats_.power_losses;
  const size_t log_unsynced = h.log_wal.unsynced_writes();
  const size_t kv_unsynced = h.kv_wal.unsynced_writes();
  const size_t log_keep = rng_.Chance(0.5) ? 0 : rng_.Pick(log_unsynced + 1);
  const size_t kv_keep = rng_.Chance(0.5) ? 0 : rng_.Pick(kv_unsynced + 1);
  Record(absl::StrCat("node ", h.id, ": ", why, ", keeps ", log_keep, " of ", log_unsynced,
                      " unsynced raft log writes and ", kv_keep, " of ", kv_unsynced,
                      " unsynced store writes"));
  h.node.reset();
  h.sm.reset();
  h.log_wal.SimulateCrash(log_keep);
  h.kv_wal.SimulateCrash(kv_keep);
  ScheduleRestart(h);
}

void NodeSim::ScheduleRestart(Host& h) {
  h.restart_at_ns = now_ns_ + rng_.Range(10, 300) * kMs;
  h.stalled_until_ns = 0;
  h.fatal = false;
}

void NodeSim::Restart(Host& h) {
  ++h.incarnation;
  h.fatal = false;
  h.commit_seen.clear();
  h.checked_commit.clear();
  h.kv_applied_seen.clear();
  server::NodeOptions o;
  o.id = h.id;
  for (int s = 0; s < options_.shards; ++s) {
    server::ShardPlacement p;
    p.shard = static_cast<ShardId>(s);
    for (auto& other : hosts_) p.replicas.push_back(other->id);
    o.shards.push_back(std::move(p));
  }
  o.tick_interval = absl::Nanoseconds(kTickNs);
  o.election_ticks = kElectionTicks;
  o.heartbeat_ticks = 2;
  o.snapshot_interval_entries = options_.snapshot_interval_entries;
  o.seed = options_.seed * 1000003 + h.id * 7919 + static_cast<uint64_t>(h.incarnation);
  o.clock = clock_.get();
  o.step_mode = true;
  o.testing = options_.knobs;
  o.hibernate_idle_shards = options_.hibernate;
  o.hibernate_idle_ticks = options_.hibernate_idle_ticks;
  Host* host = &h;
  o.on_fatal = [host](const absl::Status&) { host->fatal = true; };
  h.sm = std::make_unique<server::StateMachine>(&h.kv, server::StateMachineOptions{});
  absl::StatusOr<std::unique_ptr<server::Node>> node =
      server::Node::Start(o, &h.log, &h.kv, h.sm.get(), h.transport.get());
  if (!node.ok()) {
    Fail(absl::StrCat("node ", h.id, " cannot restart: ", node.status().ToString()));
    h.sm.reset();
    h.restart_at_ns = std::numeric_limits<int64_t>::max();
    return;
  }
  h.node = *std::move(node);
  if (h.incarnation > 1) Record(absl::StrCat("node ", h.id, ": restarted"));
}

void NodeSim::Stall(Host& h, bool isolate) {
  ++stats_.stalls;
  h.stalled_until_ns = now_ns_ + rng_.Range(120, 400) * kMs;
  std::string what =
      absl::StrCat("node ", h.id, ": stalled until ", Ms(h.stalled_until_ns - start_ns_));
  if (isolate) {
    const int id = net_.AddFilter(PartitionFilter({h.id}));
    timed_filters_[id] = h.stalled_until_ns + rng_.Range(20, 150) * kMs;
    absl::StrAppend(&what, ", cut off (filter ", id, ") until ",
                    Ms(timed_filters_[id] - start_ns_));
  }
  Record(std::move(what));
}

void NodeSim::Transfer() {
  Host* leader = LeaderOf(rng_.Pick(static_cast<uint64_t>(options_.shards)));
  if (leader == nullptr || leader->stalled_until_ns > now_ns_) return;
  ++stats_.transfers;
  Record(absl::StrCat("node ", leader->id, ": transfer leadership away"));
  // Step mode: files the request and returns at once.
  leader->node->TransferLeadershipAway(absl::Milliseconds(300)).IgnoreError();
}

void NodeSim::Deliver() {
  for (Envelope& e : net_.TakeDue(now_ns_)) {
    ++stats_.messages;
    Host& to = *hosts_[e.to - 1];
    Host& from = *hosts_[e.from - 1];
    const bool snap = e.message.message.type() == raftpb::MSG_SNAP;
    const ShardId shard = e.message.shard;
    if (!to.up()) {
      if (snap && from.up()) from.node->ReportSnapshot(e.to, shard, false);
      continue;
    }
    std::vector<server::ShardMessage> batch;
    batch.push_back(std::move(e.message));
    to.node->Receive(e.from, std::move(batch));
    if (snap) {
      ++stats_.snapshots_delivered;
      if (from.up()) from.node->ReportSnapshot(e.to, shard, true);
    }
  }
}

void NodeSim::RunCycle(Host& h) {
  ++stats_.cycles;
  absl::Status s = h.node->RunCycleForTesting();
  net_.Flush(now_ns_);
  if (s.ok()) return;
  if (h.log_wal.crashed() || h.kv_wal.crashed()) {
    ++stats_.write_crashes;
    if (rng_.Chance(0.5)) {
      Crash(h, "inside a write");
    } else {
      PowerLoss(h, "power loss inside a write");
    }
    return;
  }
  Fail(absl::StrCat("node ", h.id, ": raft loop stopped: ", s.ToString()));
  h.node.reset();
  h.sm.reset();
  h.restart_at_ns = std::numeric_limits<int64_t>::max();
}

void NodeSim::HealAll() {
  faults_on_ = false;
  Record("heal everything");
  for (const auto& [id, until] : timed_filters_) net_.RemoveFilter(id);
  timed_filters_.clear();
  for (int id : base_filters_) net_.RemoveFilter(id);
  base_filters_.clear();
  base_filters_.push_back(net_.AddFilter(DelayFilter(100'000, 1 * kMs)));
  for (auto& h : hosts_) {
    h->stalled_until_ns = 0;
    if (!h->up()) {
      h->restart_at_ns = now_ns_;
    } else {
      h->log_wal.CrashAtWrite(0);
      h->kv_wal.CrashAtWrite(0);
    }
  }
}

absl::Status NodeSim::Settle(int64_t max_ms) {
  const int64_t deadline = now_ns_ + max_ms * kMs;
  while (now_ns_ < deadline && violation_.ok()) {
    Step();
    bool idle = true;
    for (auto& c : clients_) idle = idle && !c->busy;
    if (!idle) continue;
    bool converged = true;
    for (int s = 0; s < options_.shards && converged; ++s) {
      std::optional<uint64_t> applied;
      for (auto& h : hosts_) {
        std::optional<server::ShardStatus> st =
            h->up() ? h->node->StatusOf(static_cast<ShardId>(s)) : std::nullopt;
        if (!st.has_value() || (applied.has_value() && *applied != st->applied_index) ||
            st->applied_index < st->commit_index) {
          converged = false;
          break;
        }
        applied = st->applied_index;
      }
      converged = converged && LeaderOf(static_cast<ShardId>(s)) != nullptr;
    }
    if (converged) return absl::OkStatus();
  }
  if (!violation_.ok()) return violation_;
  return absl::DeadlineExceededError(absl::StrCat(
      "liveness: the healed cluster did not finish its operations and converge within ", max_ms,
      " ms"));
}

absl::Status NodeSim::FinalReadsAndCheck() {
  // One linearizable read of every key, by client 0.
  Client& c = *clients_[0];
  for (int k = 0; k < options_.keys && violation_.ok(); ++k) {
    c.busy = false;
    c.next_op_ns = now_ns_;
    c.key = absl::StrCat("k", k);
    c.is_read = true;
    c.lease = false;
    StartOp(c);
    const int64_t deadline = now_ns_ + 3000 * kMs;
    while (c.busy && now_ns_ < deadline && violation_.ok()) Step();
    if (c.busy) Fail(absl::StrCat("liveness: the final read of k", k, " did not complete"));
  }
  if (!violation_.ok()) return violation_;
  absl::StatusOr<chaos::LinearizabilityReport> report = chaos::CheckLinearizability(history_.ops);
  if (!report.ok()) {
    Fail(absl::StrCat("history rejected by the checker: ", report.status().ToString()));
  } else if (report->verdict != chaos::Verdict::kOk) {
    Fail(absl::StrCat("linearizability: ", chaos::VerdictName(report->verdict), "\n",
                      report->Summary()));
  }
  return violation_;
}

// ---------------------------------------------------------------- clients

void NodeSim::NewIdentity(Client& c) {
  // A fresh session: the old one may still have a write in flight.
  c.client_id = (options_.seed << 20) + static_cast<uint64_t>(next_process_) * 64 +
                static_cast<uint64_t>(c.index) + 1;
  ++next_process_;
  c.next_seq.clear();
}

void NodeSim::ClientsAct() {
  for (auto& c : clients_) {
    if (!violation_.ok()) return;
    ClientAct(*c);
  }
}

void NodeSim::StartOp(Client& c) {
  chaos::Op op;
  op.id = next_op_id_++;
  op.process = static_cast<int64_t>(c.client_id);
  op.invoke_ns = now_ns_ - start_ns_;
  c.busy = true;
  c.attempt++;
  c.in_flight = false;
  c.retry_at_ns = now_ns_;
  c.give_up_ns = now_ns_ + kGiveUpNs;
  c.write_reply.reset();
  c.read_reply.reset();
  c.txn_put = false;
  c.command.Clear();
  const bool forced_read = !workload_on_;  // FinalReadsAndCheck set key and kind
  uint64_t r = forced_read ? 0 : rng_.Pick(100);
  if (!forced_read) {
    c.key = absl::StrCat("k", rng_.Pick(static_cast<uint64_t>(options_.keys)));
    c.is_read = r < 35;
    c.lease = c.is_read && rng_.Chance(options_.lease_read_share);
  }
  c.shard = ShardOf(c.key);
  op.key = c.key;
  if (c.is_read) {
    op.kind = chaos::OpKind::kGet;
  } else {
    const std::string value = absl::StrCat("c", c.index, "-", ++c.values);
    if (r < 60) {
      op.kind = chaos::OpKind::kPut;
      op.value = value;
      c.command.mutable_put()->set_key(c.key);
      c.command.mutable_put()->set_value(value);
    } else if (r < 80) {
      // cas: a Txn comparing the value this client last saw (or absence).
      op.kind = chaos::OpKind::kCas;
      op.value = value;
      auto seen = c.last_seen.find(c.key);
      op.expected = seen == c.last_seen.end() ? std::nullopt : seen->second;
      v1::TxnRequest* txn = c.command.mutable_txn();
      v1::Compare* cmp = txn->add_compares();
      cmp->set_key(c.key);
      if (op.expected.has_value()) {
        cmp->set_target(v1::Compare::TARGET_VALUE);
        cmp->set_op(v1::Compare::OP_EQUAL);
        cmp->set_value(*op.expected);
      } else {
        cmp->set_target(v1::Compare::TARGET_EXISTS);
        cmp->set_op(v1::Compare::OP_NOT_EQUAL);
      }
      v1::PutRequest* put = txn->add_success()->mutable_put();
      put->set_key(c.key);
      put->set_value(value);
    } else if (r < 90) {
      op.kind = chaos::OpKind::kDelete;
      c.command.mutable_delete_()->set_key(c.key);
    } else {
      // An unconditional Txn put: recorded as a put.
      op.kind = chaos::OpKind::kPut;
      op.value = value;
      c.txn_put = true;
      v1::PutRequest* put = c.command.mutable_txn()->add_success()->mutable_put();
      put->set_key(c.key);
      put->set_value(value);
    }
    uint64_t& next = c.next_seq[c.shard];
    if (next == 0) next = 1;
    const uint64_t seq = next++;
    v1::Session* session = c.command.mutable_session();
    session->set_client_id(c.client_id);
    session->set_seq(seq);
    // One op at a time: every earlier seq of this shard got a definite answer.
    session->set_first_incomplete_seq(seq);
  }
  c.op_index = history_.ops.size();
  history_.ops.push_back(std::move(op));
}

void NodeSim::SendAttempt(Client& c) {
  const uint64_t attempt = ++c.attempt;
  auto cached = c.leader.find(c.shard);
  Host& h = cached != c.leader.end() ? *hosts_[cached->second - 1] : RandomHost();
  c.target = h.id;
  c.write_reply.reset();
  c.read_reply.reset();
  if (!h.up()) {
    // Connection refused.
    c.leader.erase(c.shard);
    c.retry_at_ns = now_ns_ + rng_.Range(1, 5) * kMs;
    return;
  }
  c.in_flight = true;
  c.attempt_deadline_ns = now_ns_ + kAttemptNs;
  Client* cp = &c;
  Host* hp = &h;
  if (c.is_read) {
    h.node->ReadBarrier(c.shard, c.lease, Wall(c.attempt_deadline_ns),
                        [cp, hp, attempt](absl::Status s) {
                          if (!cp->busy || cp->attempt != attempt) return;
                          if (s.ok()) {
                            // The service reads the applied state after the
                            // barrier; here at once (on the loop's thread).
                            absl::StatusOr<v1::GetResponse> got = hp->sm->Get(cp->shard, cp->key);
                            if (!got.ok()) {
                              s = got.status();
                            } else if (got->found()) {
                              cp->read_value = got->kv().value();
                            } else {
                              cp->read_value = std::nullopt;
                            }
                          }
                          cp->read_reply = std::move(s);
                        });
  } else {
    h.node->Propose(c.shard, c.command, Wall(c.attempt_deadline_ns),
                    [cp, attempt](absl::StatusOr<serverpb::CommandResult> r) {
                      if (!cp->busy || cp->attempt != attempt) return;
                      cp->write_reply = std::move(r);
                    });
  }
}

void NodeSim::Complete(Client& c, chaos::Outcome outcome) {
  chaos::Op& op = history_.ops[c.op_index];
  op.outcome = outcome;
  op.complete_ns = now_ns_ - start_ns_;
  if (outcome == chaos::Outcome::kOk) ++stats_.ops_ok;
  if (outcome == chaos::Outcome::kFail) ++stats_.ops_fail;
  if (outcome == chaos::Outcome::kUnknown) ++stats_.ops_unknown;
  c.busy = false;
  c.in_flight = false;
  ++c.attempt;
  // Mostly busy clients, some idle for a while (they keep routing to the
  // leader they knew: the readers a stalled leader can mislead).
  c.next_op_ns = now_ns_ + (rng_.Chance(0.7) ? rng_.Range(0, 20) : rng_.Range(20, 250)) * kMs;
  if (outcome == chaos::Outcome::kUnknown && op.IsWrite()) NewIdentity(c);
}

void NodeSim::ClientAct(Client& c) {
  if (!c.busy) {
    if (workload_on_ && now_ns_ >= c.next_op_ns && now_ns_ >= quiet_until_ns_) {
      StartOp(c);
      SendAttempt(c);
    }
    return;
  }
  chaos::Op& op = history_.ops[c.op_index];
  absl::Status error;
  bool answered = false;
  if (c.read_reply.has_value()) {
    answered = true;
    c.in_flight = false;
    error = *c.read_reply;
    c.read_reply.reset();
    if (error.ok()) {
      op.value = c.read_value;
      c.last_seen[c.key] = c.read_value;
      c.leader[c.shard] = c.target;
      Complete(c, chaos::Outcome::kOk);
      return;
    }
  } else if (c.write_reply.has_value()) {
    answered = true;
    c.in_flight = false;
    absl::StatusOr<serverpb::CommandResult> r = std::move(*c.write_reply);
    c.write_reply.reset();
    if (r.ok()) {
      c.leader[c.shard] = c.target;
      if (r->code() != 0) {
        // Applied with an error (e.g. a session refusal): the op's own
        // outcome is not known from this answer.
        Record(absl::StrCat("client ", c.index, ": ", op.key, " result code ", r->code(), " ",
                            r->message()));
        Complete(c, chaos::Outcome::kUnknown);
        return;
      }
      switch (op.kind) {
        case chaos::OpKind::kPut:
          c.last_seen[c.key] = op.value;
          break;
        case chaos::OpKind::kDelete:
          op.existed = r->delete_().deleted();
          c.last_seen[c.key] = std::nullopt;
          break;
        case chaos::OpKind::kCas:
          if (!r->txn().succeeded()) {
            Complete(c, chaos::Outcome::kFail);  // the compare failed: definite
            return;
          }
          c.last_seen[c.key] = op.value;
          break;
        default:
          break;
      }
      Complete(c, chaos::Outcome::kOk);
      return;
    }
    error = r.status();
  } else if (c.in_flight && now_ns_ >= c.attempt_deadline_ns + 5 * kMs) {
    // No answer in time (a stalled or cut-off node): try elsewhere.
    answered = true;
    c.in_flight = false;
    ++c.attempt;
    error = absl::DeadlineExceededError("client-side attempt timeout");
  }
  if (answered) {
    // Not leader / unavailable / deadline / cancelled: retry, same seq.
    std::optional<v1::ErrorDetail> detail = GetErrorDetail(error);
    if (detail.has_value() && detail->not_leader().leader_node() != 0 &&
        detail->not_leader().leader_node() <= hosts_.size()) {
      c.leader[c.shard] = detail->not_leader().leader_node();
    } else {
      c.leader.erase(c.shard);
    }
    c.retry_at_ns = now_ns_ + rng_.Range(1, 5) * kMs;
    return;
  }
  if (c.in_flight || now_ns_ < c.retry_at_ns) return;
  if (now_ns_ >= c.give_up_ns) {
    Complete(c, chaos::Outcome::kUnknown);
    return;
  }
  SendAttempt(c);
}

// ---------------------------------------------------------------- checks

void NodeSim::CheckInvariants() {
  sleepers_now_ = false;
  for (auto& h : hosts_) {
    if (!violation_.ok()) return;
    if (h->up()) CheckHost(*h);
  }
  if (sleepers_now_) ++stats_.steps_with_sleepers;
}

void NodeSim::CheckHost(Host& h) {
  for (const server::ShardStatus& st : h.node->Status()) {
    if (st.role == "stopped") continue;
    bool& was_asleep = h.asleep_seen[st.shard];
    if (st.asleep) {
      sleepers_now_ = true;
      if (!was_asleep) ++stats_.sleeps;
    }
    was_asleep = st.asleep;
    if (st.role == "leader") {
      auto [it, inserted] = leaders_.try_emplace({st.shard, st.term}, h.id);
      if (inserted) {
        ++stats_.leaders_elected;
        Record(absl::StrCat("shard ", st.shard, ": node ", h.id, " leads term ", st.term));
      } else if (it->second != h.id) {
        Fail(absl::StrCat("election safety: shard ", st.shard, " term ", st.term,
                          " has two leaders, nodes ", it->second, " and ", h.id));
        return;
      }
    }
    uint64_t& seen = h.commit_seen[st.shard];
    if (st.commit_index < seen) {
      Fail(absl::StrCat("node ", h.id, " shard ", st.shard, ": commit index went back from ", seen,
                        " to ", st.commit_index));
      return;
    }
    seen = st.commit_index;
    stats_.max_commit = std::max(stats_.max_commit, st.commit_index);
    uint64_t& checked = h.checked_commit[st.shard];
    if (st.commit_index > checked) {
      absl::StatusOr<storage::LogState> ls = h.log.State(st.shard);
      const uint64_t lo = std::max(checked + 1, ls.ok() ? ls->first_index : 1);
      if (lo <= st.commit_index) {
        absl::StatusOr<std::vector<raftpb::Entry>> entries =
            h.log.Entries(st.shard, lo, st.commit_index + 1, std::numeric_limits<uint64_t>::max());
        if (!entries.ok()) {
          Fail(absl::StrCat("node ", h.id, " shard ", st.shard, ": commit index ", st.commit_index,
                            " but entries [", lo, ", ", st.commit_index,
                            "] are not in its log: ", entries.status().ToString()));
          return;
        }
        for (const raftpb::Entry& e : *entries) {
          auto [it, inserted] = committed_.try_emplace({st.shard, e.index()}, EntryHash(e));
          if (!inserted && it->second != EntryHash(e)) {
            Fail(absl::StrCat("committed entries never change: node ", h.id, " shard ", st.shard,
                              " has a different entry at committed index ", e.index(), " (term ",
                              e.term(), ")"));
            return;
          }
        }
      }
      checked = st.commit_index;
    }
    absl::StatusOr<uint64_t> applied = h.kv.AppliedIndex(st.shard);
    if (applied.ok()) {
      auto seen_applied = h.kv_applied_seen.find(st.shard);
      if (seen_applied == h.kv_applied_seen.end() || seen_applied->second != *applied) {
        h.kv_applied_seen[st.shard] = *applied;
        const uint64_t digest = StoreDigest(h.kv, st.shard);
        auto [it, inserted] = applied_digest_.try_emplace({st.shard, *applied}, digest);
        if (!inserted && it->second != digest) {
          Fail(absl::StrCat("state machine safety: node ", h.id, " shard ", st.shard,
                            " holds different data than another replica at applied index ",
                            *applied));
          return;
        }
      }
    }
  }
}

}  // namespace tessera::sim
