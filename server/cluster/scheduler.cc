#include "server/cluster/scheduler.h"

#include <algorithm>
#include <map>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"

namespace tessera::server {
namespace {

bool Contains(const std::vector<NodeId>& ids, NodeId id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

raftpb::ConfChange Change(std::initializer_list<std::pair<raftpb::ConfChangeType, NodeId>> list) {
  raftpb::ConfChange cc;
  for (const auto& [type, node] : list) {
    raftpb::ConfChangeSingle* c = cc.add_changes();
    c->set_type(type);
    c->set_node_id(node);
  }
  return cc;
}

// Every layout whose replicas move: the shards, then the metadata group.
std::vector<const ShardLayout*> Layouts(const ClusterMap& map) {
  std::vector<const ShardLayout*> all;
  for (const ShardLayout& s : map.shards()) all.push_back(&s);
  all.push_back(&map.meta());
  return all;
}

std::string Name(ShardId shard) {
  return shard == kMetaShard ? std::string("the metadata group") : absl::StrCat("shard ", shard);
}

// One shard's replicas as their nodes report them.
struct ShardReports {
  std::map<NodeId, ShardStatus> by_node;
  // The report of the leader with the highest term, or nullptr.
  const ShardStatus* leader = nullptr;
  NodeId leader_node = 0;
};

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, MapChanger change_map, MapReader read_map,
                     std::function<bool()> leads_meta, ClusterControl* control, Logger log)
    : options_(options),
      change_map_(std::move(change_map)),
      read_map_(std::move(read_map)),
      leads_meta_(std::move(leads_meta)),
      control_(control),
      log_(std::move(log)) {
  thread_ = std::thread([this] { Run(); });
}

Scheduler::~Scheduler() { Stop(); }

void Scheduler::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

absl::StatusOr<ClusterMap> Scheduler::RecordMove(const ClusterMap& map, ShardId shard, NodeId from,
                                                 NodeId to) {
  const ShardLayout* found = map.Layout(shard);
  if (found == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("no shard ", shard, " (the cluster has ", map.shards().size(), ")"));
  }
  const ShardLayout& layout = *found;
  if (from != 0 && !Contains(layout.replicas, from)) {
    return absl::InvalidArgumentError(
        absl::StrCat("node ", from, " holds no voting replica of shard ", shard));
  }
  if (map.FindMember(to) == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("node ", to, " is not a member"));
  }
  if (map.ReplacedIncarnation(to) != 0) {
    // A replica given to it now would be taken for one it lost.
    return absl::FailedPreconditionError(
        absl::StrCat("node ", to,
                     " lost its data and its old replicas are being dropped; it takes new "
                     "ones after that"));
  }
  if (Contains(layout.replicas, to) || Contains(layout.learners, to)) {
    return absl::InvalidArgumentError(
        absl::StrCat("node ", to, " already holds a replica of shard ", shard));
  }
  if (layout.move_to != 0) {
    return absl::FailedPreconditionError(absl::StrCat(Name(shard), " is already moving from ",
                                                      layout.move_from, " to ", layout.move_to));
  }
  if (layout.split_hash != 0) {
    return absl::FailedPreconditionError(absl::StrCat(Name(shard), " is splitting"));
  }
  std::vector<NodeId> learners = layout.learners;
  learners.push_back(to);
  return map.WithShardReplicas(shard, layout.replicas, std::move(learners), from, to);
}

absl::StatusOr<ClusterMap> Scheduler::RecordAdd(const ClusterMap& map, ShardId shard, NodeId to) {
  return RecordMove(map, shard, 0, to);
}

namespace {

// Replicas (voters and learners) each of `members` holds, and the moves in
// progress.
std::map<NodeId, int> Held(const ClusterMap& map, const std::vector<NodeId>& members, int* moving) {
  std::map<NodeId, int> held;
  for (NodeId id : members) held[id] = 0;
  *moving = 0;
  for (const ShardLayout& s : map.shards()) {
    if (s.move_to != 0) ++*moving;
    for (const auto* ids : {&s.replicas, &s.learners}) {
      for (NodeId id : *ids) {
        if (held.contains(id)) ++held[id];
      }
    }
  }
  return held;
}

}  // namespace

bool Scheduler::Evacuate(const ClusterMap& map, const std::vector<NodeId>& live, absl::Time now) {
  int moving = 0;
  std::map<NodeId, int> held = Held(map, live, &moving);
  bool recorded_any = false;
  for (const MemberInfo& m : map.members()) {
    const bool leaving = map.IsLeaving(m.id);
    auto seen = last_answer_.find(m.id);
    const bool dead = seen != last_answer_.end() && now - seen->second >= options_.dead_after;
    if (!leaving && !dead) continue;
    for (const ShardLayout* layout : Layouts(map)) {
      const ShardLayout& s = *layout;
      if (moving >= options_.max_moves) return recorded_any;
      if (s.move_to != 0 || s.split_hash != 0 || !Contains(s.replicas, m.id)) continue;
      NodeId to = 0;
      for (const auto& [id, n] : held) {
        if (id == m.id || Contains(s.replicas, id) || Contains(s.learners, id)) continue;
        if (to == 0 || n < held[to]) to = id;
      }
      if (to == 0) continue;  // nobody can take it
      const ShardId shard = s.id;
      const NodeId from = m.id;
      absl::StatusOr<ClusterMap> recorded = change_map_(
          [&](const ClusterMap& current) { return RecordMove(current, shard, from, to); });
      if (!recorded.ok()) return recorded_any;  // the map changed: next round
      ++moving;
      ++held[to];
      recorded_any = true;
      moves_started_.fetch_add(1, std::memory_order_relaxed);
      log_(absl::StrCat(leaving ? absl::StrCat("decommissioning node ", from)
                                : absl::StrCat("node ", from, " is dead (silent for ",
                                               absl::FormatDuration(now - seen->second), ")"),
                        ": moving ", Name(shard), " to node ", to, " (cluster map version ",
                        recorded->version(), ")"));
      return recorded_any;  // one per round: `map` is stale now
    }
  }
  return recorded_any;
}

void Scheduler::BalanceLeaders(
    const ClusterMap& map, const std::vector<NodeId>& live,
    const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders,
    const std::map<std::pair<ShardId, NodeId>, uint64_t>& applied) {
  if (!options_.balance || live.size() < 2) return;
  const absl::Time now = absl::Now();
  if (last_transfer_.has_value()) {
    // Still led by the giver a round later: the taker declined (draining,
    // not serving yet) or could not take it.
    const auto [shard, giver, taker] = *last_transfer_;
    last_transfer_.reset();
    auto it = leaders.find(shard);
    if (it != leaders.end() && it->second.first == giver) {
      declined_until_[taker] = now + 20 * options_.interval;
    }
  }
  std::map<NodeId, int> leads;
  for (NodeId id : live) leads[id] = 0;
  for (const auto& [shard, leader] : leaders) {
    if (leads.contains(leader.first)) ++leads[leader.first];
  }
  // Most-leading first as the giver, fewest-leading first as the taker.
  std::vector<std::pair<int, NodeId>> order;
  for (const auto& [id, n] : leads) order.emplace_back(n, id);
  std::sort(order.begin(), order.end());
  for (auto giver = order.rbegin(); giver != order.rend(); ++giver) {
    for (const auto& [taker_leads, taker] : order) {
      if (giver->first - taker_leads < 2) break;
      if (auto d = declined_until_.find(taker); d != declined_until_.end() && now < d->second) {
        continue;
      }
      for (const auto& [shard, leader] : leaders) {
        if (leader.first != giver->second || shard >= map.shards().size() ||
            map.shards()[shard].move_to != 0) {
          continue;
        }
        const ShardStatus& s = *leader.second;
        if (!s.voters_outgoing.empty() || !Contains(s.voters, taker)) continue;
        auto it = applied.find({shard, taker});
        if (it == applied.end() || it->second + options_.catch_up_entries < s.commit_index)
          continue;
        if (control_->TransferLeader(giver->second, shard, taker).ok()) {
          last_transfer_.emplace(shard, giver->second, taker);
          log_(absl::StrCat("balancing leaders: shard ", shard, " from node ", giver->second, " (",
                            giver->first, " led) to node ", taker, " (", taker_leads, " led)"));
        }
        return;  // one a round
      }
    }
  }
}

Scheduler::DropStep Scheduler::DropVoter(const ShardLayout& s, NodeId node, const Leaders& leaders,
                                         const std::string& why) {
  auto it = leaders.find(s.id);
  const ShardStatus* leader = it != leaders.end() ? it->second.second : nullptr;
  const bool voter_in_raft = leader != nullptr && (Contains(leader->voters, node) ||
                                                   Contains(leader->voters_outgoing, node));
  if (!Contains(s.replicas, node) && !voter_in_raft) return DropStep::kNotListed;
  if (s.move_to != 0 || s.split_hash != 0 || leader == nullptr) return DropStep::kWaiting;
  const NodeId leader_node = it->second.first;
  if (!leader->voters_outgoing.empty()) return DropStep::kWaiting;  // raft leaves it by itself
  const ShardId shard = s.id;
  if (leader_node == node) {
    NodeId other = 0;
    for (NodeId v : leader->voters) {
      if (other == 0 && v != node) other = v;
    }
    if (other == 0 || !control_->TransferLeader(node, shard, other).ok()) return DropStep::kWaiting;
    log_(absl::StrCat(Name(shard), ": node ", node, " hands its leadership to node ", other,
                      " before leaving"));
    return DropStep::kAsked;
  }
  if (voter_in_raft) {
    if (!control_
             ->ProposeConfChange(leader_node, shard,
                                 Change({{raftpb::CONF_CHANGE_REMOVE_NODE, node}}))
             .ok()) {
      return DropStep::kWaiting;
    }
    log_(absl::StrCat(Name(shard), ": removing node ", node, " (", why, ")"));
    return DropStep::kAsked;
  }
  std::vector<NodeId> voters = s.replicas;
  voters.erase(std::remove(voters.begin(), voters.end(), node), voters.end());
  if (voters.empty()) return DropStep::kWaiting;  // its only replica: nothing to keep
  absl::StatusOr<ClusterMap> recorded = change_map_([&](const ClusterMap& current) {
    const ShardLayout* now = current.Layout(shard);
    if (now == nullptr || now->move_to != 0 || now->replicas != s.replicas) {
      return absl::StatusOr<ClusterMap>(absl::AbortedError("the shard changed meanwhile"));
    }
    return current.WithShardReplicas(shard, voters, now->learners, 0, 0);
  });
  if (!recorded.ok()) return DropStep::kWaiting;
  log_(absl::StrCat(Name(shard), ": node ", node, "'s replica dropped (", why,
                    "; cluster map version ", recorded->version(), ")"));
  return DropStep::kRecorded;
}

bool Scheduler::DropReplaced(const ClusterMap& map, const Leaders& leaders) {
  for (const auto& [node, incarnation] : map.replaced()) {
    bool listed = false;
    for (const ShardLayout* layout : Layouts(map)) {
      const DropStep step =
          DropVoter(*layout, node, leaders, "its data was lost; it gets a new replica later");
      listed = listed || step != DropStep::kNotListed;
      if (step == DropStep::kRecorded) return true;  // one map change per round
    }
    if (listed) continue;
    absl::StatusOr<ClusterMap> cleared =
        change_map_([id = node](const ClusterMap& current) { return current.WithoutReplaced(id); });
    if (cleared.ok()) {
      log_(absl::StrCat("node ", node,
                        " holds none of its lost replicas any more: it takes new ones (cluster map "
                        "version ",
                        cleared->version(), ")"));
    }
    return true;
  }
  return false;
}

bool Scheduler::ShrinkMeta(const ClusterMap& map, const std::vector<NodeId>& live,
                           const Leaders& leaders) {
  const ShardLayout& meta = map.meta();
  for (NodeId id : live) {
    if (!Contains(meta.replicas, id) && !Contains(meta.learners, id)) return false;  // a taker
  }
  auto leader = leaders.find(kMetaShard);
  for (NodeId id : map.leaving()) {
    // Raft is asked only while more than kMinMetaVoters remain; a replica
    // already out of raft is dropped from the map whatever the count.
    const bool in_raft =
        leader != leaders.end() && (Contains(leader->second.second->voters, id) ||
                                    Contains(leader->second.second->voters_outgoing, id));
    if (in_raft && meta.replicas.size() <= kMinMetaVoters) continue;
    const DropStep step =
        DropVoter(meta, id, leaders,
                  absl::StrCat("node ", id, " leaves and every staying member holds a replica"));
    if (step == DropStep::kRecorded) return true;
  }
  return false;
}

bool Scheduler::Repair(const ClusterMap& map, const std::vector<NodeId>& live) {
  int moving = 0;
  std::map<NodeId, int> held = Held(map, live, &moving);
  for (const auto& [node, incarnation] : map.replaced()) held.erase(node);
  for (const ShardLayout* s : Layouts(map)) moving += s->id == kMetaShard && s->move_to != 0;
  if (moving >= options_.max_moves) return false;
  size_t staying = map.members().size() - map.leaving().size();
  size_t meta_target = std::min<size_t>(kMetaReplication, staying);
  if (meta_target % 2 == 0) --meta_target;
  for (const ShardLayout* layout : Layouts(map)) {
    const ShardLayout& s = *layout;
    const size_t target = s.id == kMetaShard ? meta_target : map.replication();
    if (s.replicas.size() >= target || s.move_to != 0 || s.split_hash != 0) continue;
    NodeId to = 0;
    for (const auto& [id, n] : held) {
      if (Contains(s.replicas, id) || Contains(s.learners, id)) continue;
      if (to == 0 || n < held[to]) to = id;
    }
    if (to == 0) continue;
    const ShardId shard = s.id;
    absl::StatusOr<ClusterMap> recorded =
        change_map_([&](const ClusterMap& current) { return RecordAdd(current, shard, to); });
    if (!recorded.ok()) return false;
    moves_started_.fetch_add(1, std::memory_order_relaxed);
    log_(absl::StrCat(Name(shard), " has ", s.replicas.size(), " of ", target,
                      " replicas: adding one on node ", to, " (cluster map version ",
                      recorded->version(), ")"));
    return true;
  }
  return false;
}

void Scheduler::RemoveLeft(const ClusterMap& map, const std::map<NodeId, int>& hosting) {
  for (NodeId id : map.leaving()) {
    if (!map.ReplicasOn(id).empty() || map.HostsMeta(id)) continue;
    // Its replicas are deleted first (garbage collection needs it listed).
    if (auto it = hosting.find(id); it != hosting.end() && it->second > 0) continue;
    bool target = false;  // still the destination of a move
    for (const ShardLayout* s : Layouts(map)) target = target || s->move_to == id;
    if (target) continue;
    absl::StatusOr<ClusterMap> removed =
        change_map_([id](const ClusterMap& current) { return current.WithoutMember(id); });
    if (removed.ok()) {
      log_(absl::StrCat("node ", id,
                        " holds no replica any more: removed from the cluster map "
                        "(version ",
                        removed->version(), ")"));
    }
    return;  // one change per round
  }
}

void Scheduler::Balance(const ClusterMap& map, const std::vector<NodeId>& live) {
  int moving = 0;
  std::map<NodeId, int> held = Held(map, live, &moving);
  if (!options_.balance || moving >= options_.max_moves || held.size() < 2) return;
  auto fewest = std::min_element(held.begin(), held.end(),
                                 [](const auto& a, const auto& b) { return a.second < b.second; });
  auto most = std::max_element(held.begin(), held.end(),
                               [](const auto& a, const auto& b) { return a.second < b.second; });
  if (most->second - fewest->second < 2) return;
  const NodeId from = most->first;
  const NodeId to = fewest->first;
  // The shard of `from` that the placement rule ranks `to` highest for.
  const ShardLayout* pick = nullptr;
  for (const ShardLayout& s : map.shards()) {
    if (s.move_to != 0 || s.split_hash != 0 || !Contains(s.replicas, from) ||
        Contains(s.replicas, to) || Contains(s.learners, to)) {
      continue;
    }
    if (pick == nullptr || s.conf_version < pick->conf_version ||
        (s.conf_version == pick->conf_version &&
         PlacementWeight(s.id, to) > PlacementWeight(pick->id, to))) {
      pick = &s;
    }
  }
  if (pick == nullptr) return;
  const ShardId shard = pick->id;
  absl::StatusOr<ClusterMap> recorded =
      change_map_([&](const ClusterMap& current) { return RecordMove(current, shard, from, to); });
  if (recorded.ok()) {
    moves_started_.fetch_add(1, std::memory_order_relaxed);
    log_(absl::StrCat("balancing: moving shard ", shard, " from node ", from, " (", most->second,
                      " replicas) to node ", to, " (", fewest->second,
                      " replicas; cluster map version ", recorded->version(), ")"));
  }
}

void Scheduler::TrackWriteRates(
    const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders) {
  if (options_.split_writes_per_sec == 0) return;
  const double seconds = absl::ToDoubleSeconds(options_.interval);
  for (const auto& [shard, leader] : leaders) {
    if (shard == kMetaShard) continue;
    const uint64_t commit = leader.second->commit_index;
    auto [it, first] = write_rates_.try_emplace(shard, WriteRate{.commit = commit});
    WriteRate& rate = it->second;
    if (first || commit < rate.commit || seconds <= 0) {
      rate = WriteRate{.commit = commit};
      continue;
    }
    rate.per_sec = static_cast<double>(commit - rate.commit) / seconds;
    rate.commit = commit;
    rate.busy_rounds = rate.per_sec >= static_cast<double>(options_.split_writes_per_sec)
                           ? rate.busy_rounds + 1
                           : 0;
  }
}

void Scheduler::SplitLarge(
    const ClusterMap& map,
    const std::map<ShardId, std::pair<NodeId, const ShardStatus*>>& leaders) {
  const ShardStatus* largest = nullptr;
  const WriteRate* busiest = nullptr;
  ShardId busiest_shard = 0;
  for (const auto& [shard, leader] : leaders) {
    const ShardStatus* s = leader.second;
    if (shard >= map.shards().size() || map.shards()[shard].move_to != 0) continue;
    if (options_.split_bytes != 0 && s->approximate_bytes >= options_.split_bytes &&
        (largest == nullptr || s->approximate_bytes > largest->approximate_bytes)) {
      largest = s;
    }
    auto rate = write_rates_.find(shard);
    if (options_.split_writes_per_sec != 0 && rate != write_rates_.end() &&
        rate->second.busy_rounds >= options_.split_rate_rounds &&
        (busiest == nullptr || rate->second.per_sec > busiest->per_sec)) {
      busiest = &rate->second;
      busiest_shard = shard;
    }
  }
  if (largest == nullptr && busiest == nullptr) return;
  const ShardId shard = largest != nullptr ? largest->shard : busiest_shard;
  absl::StatusOr<ClusterMap> recorded =
      change_map_([shard](const ClusterMap& current) { return current.WithSplitStarted(shard); });
  if (!recorded.ok()) return;
  const std::string why =
      largest != nullptr
          ? absl::StrCat(
                largest->approximate_bytes,
                " bytes on its leader, at least --split-shard-bytes=", options_.split_bytes)
          : absl::StrCat(
                static_cast<uint64_t>(busiest->per_sec), " writes/s for ", busiest->busy_rounds,
                " rounds, at least --split-shard-writes-per-sec=", options_.split_writes_per_sec);
  log_(absl::StrCat("shard ", shard, ": ", why, ": splitting it at hash ",
                    recorded->shards()[shard].split_hash, " (cluster map version ",
                    recorded->version(), ")"));
  write_rates_.clear();  // both halves measured afresh
}

void Scheduler::CarryOutSplit(const ClusterMap& map, const ShardLayout& layout,
                              const ShardStatus* leader, NodeId leader_node) {
  const ShardId shard = layout.id;
  const uint64_t split_hash = layout.split_hash;
  auto record = [&] {
    absl::StatusOr<ClusterMap> recorded = change_map_([&](const ClusterMap& current) {
      if (shard >= current.shards().size() || current.shards()[shard].split_hash != split_hash) {
        return absl::StatusOr<ClusterMap>(absl::AbortedError("the split changed meanwhile"));
      }
      return current.WithSplit(shard, split_hash);
    });
    if (recorded.ok()) {
      splits_completed_.fetch_add(1, std::memory_order_relaxed);
      log_(absl::StrCat("shard ", shard, ": split; hashes from ", split_hash, " are shard ",
                        map.num_shards(), " (cluster map version ", recorded->version(), ")"));
    }
  };
  if (leader->range_version == layout.range_version + 1 && leader->hash_end == split_hash - 1) {
    return record();  // applied (asked in an earlier round)
  }
  if (std::max<uint64_t>(leader->range_version, 1) != layout.range_version ||
      !leader->learners.empty() || !leader->voters_outgoing.empty()) {
    return;  // not there yet (a replica change still settling)
  }
  serverpb::SplitShard split;
  split.set_new_shard(map.num_shards());
  split.set_split_hash(split_hash);
  split.set_range_version(layout.range_version);
  split.set_hash_start(layout.hash_start);
  split.set_hash_end(layout.hash_end);
  absl::Status asked = control_->Split(leader_node, shard, split);
  log_(absl::StrCat("shard ", shard, ": splitting at hash ", split_hash, " into shard ",
                    map.num_shards(), " (asked its leader, node ", leader_node,
                    asked.ok() ? ")" : absl::StrCat("; not yet: ", asked.message(), ")")));
  // The leader answers once it applied the split: recorded at once, so the
  // shard refuses the keys it gave away (clients retrying on stale routes)
  // for as short a time as possible.
  if (asked.ok()) record();
}

void Scheduler::Run() {
  while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
    if (leads_meta_()) RunOnce();
  }
}

void Scheduler::RunOnce() {
  std::shared_ptr<const ClusterMap> map = read_map_();
  if (map == nullptr) return;

  // What every member reports (one round trip each).
  absl::flat_hash_map<ShardId, ShardReports> shards;
  std::vector<NodeId> live;  // answered, not leaving
  const absl::Time now = absl::Now();
  for (const MemberInfo& m : map->members()) {
    absl::StatusOr<std::vector<ShardStatus>> status = control_->Status(m.id);
    if (!status.ok()) {
      last_answer_.try_emplace(m.id, now);
      continue;
    }
    last_answer_[m.id] = now;
    // A member being replaced takes nothing until its lost replicas are
    // dropped (a replica given earlier would be taken for a lost one).
    if (!map->IsLeaving(m.id) && map->ReplacedIncarnation(m.id) == 0) live.push_back(m.id);
    for (ShardStatus& s : *status) shards[s.shard].by_node[m.id] = std::move(s);
  }
  for (auto& [shard, reports] : shards) {
    for (const auto& [node, s] : reports.by_node) {
      if (s.role == "leader" && (reports.leader == nullptr || s.term > reports.leader->term)) {
        reports.leader = &s;
        reports.leader_node = node;
      }
    }
  }
  auto act = [&](const std::string& what, const absl::Status& done) {
    // Refusals (a change still pending, a leader that just moved) are
    // retried next round; only actions taken are logged.
    if (done.ok()) log_(what);
  };

  // Moves, one step per shard and round.
  for (const ShardLayout* moving : Layouts(*map)) {
    const ShardLayout& layout = *moving;
    if (layout.move_to == 0) continue;
    auto it = shards.find(layout.id);
    if (it == shards.end() || it->second.leader == nullptr) continue;
    const ShardReports& reports = it->second;
    const ShardStatus& leader = *reports.leader;
    const NodeId from = layout.move_from;
    const NodeId to = layout.move_to;
    const ShardId shard = layout.id;
    if (!leader.voters_outgoing.empty()) continue;  // joint: raft leaves it by itself
    const bool to_voter = Contains(leader.voters, to);
    const bool to_learner = Contains(leader.learners, to);
    const bool from_in = Contains(leader.voters, from) || Contains(leader.learners, from);
    auto learner = reports.by_node.find(to);
    const bool caught_up =
        learner != reports.by_node.end() &&
        learner->second.applied_index + options_.catch_up_entries >= leader.commit_index;
    if (!to_voter && !to_learner) {
      if (learner == reports.by_node.end()) continue;  // its node has not created the replica yet
      act(absl::StrCat(Name(shard), ": adding node ", to, " as a learner (",
                       from != 0 ? absl::StrCat("move from node ", from) : "a new replica", ")"),
          control_->ProposeConfChange(reports.leader_node, shard,
                                      Change({{raftpb::CONF_CHANGE_ADD_LEARNER, to}})));
    } else if (to_learner && !caught_up) {
      continue;  // still catching up
    } else if (from_in && reports.leader_node == from) {
      // The leaving replica leads: it hands over first (to the new one once
      // it votes, else to another voter).
      NodeId other = to_voter ? to : 0;
      for (NodeId v : leader.voters) {
        if (other == 0 && v != from) other = v;
      }
      if (other == 0) continue;
      act(absl::StrCat(Name(shard), ": node ", from, " hands its leadership to node ", other,
                       " before leaving"),
          control_->TransferLeader(from, shard, other));
    } else if (to_learner) {
      raftpb::ConfChange cc = from_in ? Change({{raftpb::CONF_CHANGE_ADD_NODE, to},
                                                {raftpb::CONF_CHANGE_REMOVE_NODE, from}})
                                      : Change({{raftpb::CONF_CHANGE_ADD_NODE, to}});
      act(absl::StrCat(Name(shard), ": node ", to, " caught up (applied ",
                       learner->second.applied_index, " of ", leader.commit_index,
                       "); promoting it", from_in ? absl::StrCat(", removing node ", from) : ""),
          control_->ProposeConfChange(reports.leader_node, shard, cc));
    } else if (from_in) {
      act(absl::StrCat(Name(shard), ": removing node ", from),
          control_->ProposeConfChange(reports.leader_node, shard,
                                      Change({{raftpb::CONF_CHANGE_REMOVE_NODE, from}})));
    } else {
      // Done in raft: record it. Voters in the map's order, the new one
      // where the old one was.
      std::vector<NodeId> voters;
      for (NodeId v : layout.replicas) {
        if (v == from) v = to;
        if (Contains(leader.voters, v)) voters.push_back(v);
      }
      for (NodeId v : leader.voters) {
        if (!Contains(voters, v)) voters.push_back(v);
      }
      absl::StatusOr<ClusterMap> recorded = change_map_([&](const ClusterMap& current) {
        const ShardLayout* now = current.Layout(shard);
        if (now == nullptr || now->move_from != from || now->move_to != to) {
          return absl::StatusOr<ClusterMap>(absl::AbortedError("the move changed meanwhile"));
        }
        return current.WithShardReplicas(shard, voters, leader.learners, 0, 0);
      });
      act(absl::StrCat(Name(shard), ": moved from node ", from, " to node ", to,
                       recorded.ok()
                           ? absl::StrCat(" (cluster map version ", recorded->version(), ")")
                           : ""),
          recorded.status());
      if (recorded.ok()) moves_completed_.fetch_add(1, std::memory_order_relaxed);
    }
  }

  if (const ShardLayout* splitting = map->Splitting()) {
    auto it = shards.find(splitting->id);
    if (it != shards.end() && it->second.leader != nullptr) {
      CarryOutSplit(*map, *splitting, it->second.leader, it->second.leader_node);
    }
  }
  std::map<NodeId, int> hosting;
  std::map<ShardId, std::pair<NodeId, const ShardStatus*>> leaders;
  std::map<std::pair<ShardId, NodeId>, uint64_t> applied;
  for (const auto& [shard, reports] : shards) {
    for (const auto& [node, s] : reports.by_node) {
      ++hosting[node];
      applied[{shard, node}] = s.applied_index;
    }
    if (reports.leader != nullptr) leaders[shard] = {reports.leader_node, reports.leader};
  }
  // Each changes the map at most once, and the next ones decide from the
  // map as it was: after a change, they wait for the next round.
  if (!DropReplaced(*map, leaders) && !ShrinkMeta(*map, live, leaders) &&
      !Evacuate(*map, live, now) && !Repair(*map, live)) {
    Balance(*map, live);
  }
  BalanceLeaders(*map, live, leaders, applied);
  TrackWriteRates(leaders);
  if (map->Splitting() == nullptr) SplitLarge(*map, leaders);
  RemoveLeft(*map, hosting);

  // Garbage: replicas neither the map nor their leader's configuration has.
  for (const auto& [shard, reports] : shards) {
    const ShardLayout* found = map->Layout(shard);
    if (reports.leader == nullptr || found == nullptr) continue;
    const ShardLayout& layout = *found;
    const ShardStatus& leader = *reports.leader;
    for (const auto& [node, s] : reports.by_node) {
      if (Contains(layout.replicas, node) || Contains(layout.learners, node) ||
          Contains(leader.voters, node) || Contains(leader.voters_outgoing, node) ||
          Contains(leader.learners, node)) {
        continue;
      }
      act(absl::StrCat(Name(shard), ": deleting the replica on node ", node,
                       " (not in the shard's configuration any more)"),
          control_->RemoveReplica(node, shard));
    }
  }
}

}  // namespace tessera::server
