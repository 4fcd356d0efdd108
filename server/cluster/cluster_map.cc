#include "server/cluster/cluster_map.h"

#include <xxhash.h>

#include <algorithm>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "proto/key_hash.h"
#include "proto/status_macros.h"

namespace tessera::server {
namespace {

void AppendLittleEndian64(uint64_t v, unsigned char* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<unsigned char>(v >> (8 * i));
}

uint64_t ComputeEpoch(const std::vector<MemberInfo>& members, uint32_t num_shards,
                      uint32_t replication) {
  std::string text =
      absl::StrCat("tessera-map-v1;shards=", num_shards, ";replication=", replication, ";");
  for (const MemberInfo& m : members) {
    absl::StrAppend(&text, m.id, "=", m.client_address, "/", m.peer_address, ";");
  }
  uint64_t epoch = XXH3_64bits(text.data(), text.size()) & ~(uint64_t{1} << 63);
  return epoch == 0 ? 1 : epoch;
}

}  // namespace

uint64_t PlacementWeight(ShardId shard, NodeId member) {
  unsigned char bytes[16];
  AppendLittleEndian64(shard, bytes);
  AppendLittleEndian64(member, bytes + 8);
  return XXH3_64bits(bytes, sizeof(bytes));
}

namespace {

uint64_t ComputeClusterId(const std::vector<MemberInfo>& members) {
  std::string text = "tessera-cluster-v1;";
  for (const MemberInfo& m : members) absl::StrAppend(&text, m.id, "=", m.peer_address, ";");
  return XXH3_64bits(text.data(), text.size());
}

}  // namespace

absl::Status ValidateHostPort(absl::string_view address) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' is not host:port"));
  }
  absl::string_view port_text = address.substr(colon + 1);
  uint32_t port = 0;
  if (port_text.empty() ||
      !std::all_of(port_text.begin(), port_text.end(),
                   [](char c) { return c >= '0' && c <= '9'; }) ||
      !absl::SimpleAtoi(port_text, &port) || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("address '", address, "' has a bad port"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<MemberInfo>> ClusterMap::ParseMembers(
    absl::string_view initial_cluster) {
  std::vector<MemberInfo> members;
  absl::string_view text = absl::StripAsciiWhitespace(initial_cluster);
  if (text.empty()) return absl::InvalidArgumentError("--initial-cluster is empty");
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    item = absl::StripAsciiWhitespace(item);
    std::pair<absl::string_view, absl::string_view> id_addrs = absl::StrSplit(item, '=');
    absl::string_view id_text = absl::StripAsciiWhitespace(id_addrs.first);
    absl::string_view addrs = id_addrs.second;
    if (item.find('=') == absl::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("member '", item, "' is not <id>=<client host:port>/<peer host:port>"));
    }
    std::vector<absl::string_view> parts = absl::StrSplit(addrs, '/');
    if (parts.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "member '", item, "' needs two addresses: <id>=<client host:port>/<peer host:port>"));
    }
    MemberInfo member;
    if (id_text.empty() ||
        !std::all_of(id_text.begin(), id_text.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        !absl::SimpleAtoi(id_text, &member.id)) {
      return absl::InvalidArgumentError(absl::StrCat("member '", item, "' has a bad id"));
    }
    member.client_address = std::string(absl::StripAsciiWhitespace(parts[0]));
    member.peer_address = std::string(absl::StripAsciiWhitespace(parts[1]));
    members.push_back(std::move(member));
  }
  return members;
}

absl::StatusOr<ClusterMap> ClusterMap::Create(std::vector<MemberInfo> members, uint32_t num_shards,
                                              uint32_t replication) {
  if (members.empty()) return absl::InvalidArgumentError("the cluster has no members");
  if (members.size() > kMaxMembers) {
    return absl::InvalidArgumentError(
        absl::StrCat("the cluster would have ", members.size(), " members; at most ", kMaxMembers));
  }
  if (num_shards < 1 || num_shards > kMaxNumShards) {
    return absl::InvalidArgumentError(
        absl::StrCat("number of shards ", num_shards, " is outside [1, ", kMaxNumShards, "]"));
  }
  if (replication < 1) return absl::InvalidArgumentError("replication must be at least 1");
  absl::flat_hash_set<NodeId> ids;
  absl::flat_hash_set<std::string> addresses;
  for (const MemberInfo& m : members) {
    if (m.id == 0) return absl::InvalidArgumentError("member id 0 is reserved");
    if (!ids.insert(m.id).second) {
      return absl::InvalidArgumentError(absl::StrCat("member id ", m.id, " appears twice"));
    }
    for (const std::string* address : {&m.client_address, &m.peer_address}) {
      absl::Status s = ValidateHostPort(*address);
      if (!s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("member ", m.id, ": ", s.message()));
      }
      // Port 0 ("any port") may repeat: tests bind them and report the result.
      bool any_port = absl::EndsWith(*address, ":0");
      if (!any_port && !addresses.insert(*address).second) {
        return absl::InvalidArgumentError(
            absl::StrCat("address '", *address, "' is used twice (member ", m.id, ")"));
      }
    }
  }
  std::sort(members.begin(), members.end(),
            [](const MemberInfo& a, const MemberInfo& b) { return a.id < b.id; });

  ClusterMap map;
  map.num_shards_ = num_shards;
  map.replication_ = std::min<uint32_t>(replication, members.size());
  map.epoch_ = ComputeEpoch(members, num_shards, map.replication_);
  map.shards_.reserve(num_shards);
  std::vector<std::pair<uint64_t, NodeId>> weights(members.size());
  for (uint32_t s = 0; s < num_shards; ++s) {
    ShardLayout layout;
    layout.id = s;
    layout.hash_start = HashRangeStart(s, num_shards);
    layout.hash_end = s + 1 == num_shards ? ~uint64_t{0} : HashRangeStart(s + 1, num_shards) - 1;
    for (size_t i = 0; i < members.size(); ++i) {
      weights[i] = {PlacementWeight(s, members[i].id), members[i].id};
    }
    // Highest weight first; on a tie the lower id first.
    std::sort(weights.begin(), weights.end(), [](const auto& a, const auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (uint32_t r = 0; r < map.replication_; ++r) layout.replicas.push_back(weights[r].second);
    map.shards_.push_back(std::move(layout));
  }
  // The metadata group: the same rule on kMetaShard, up to kMetaReplication.
  for (size_t i = 0; i < members.size(); ++i) {
    weights[i] = {PlacementWeight(kMetaShard, members[i].id), members[i].id};
  }
  std::sort(weights.begin(), weights.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  for (size_t r = 0; r < std::min<size_t>(kMetaReplication, weights.size()); ++r) {
    map.meta_.replicas.push_back(weights[r].second);
  }
  map.cluster_id_ = ComputeClusterId(members);
  map.members_ = std::move(members);
  TESSERA_RETURN_IF_ERROR(map.IndexRanges());
  return map;
}

absl::Status ClusterMap::IndexRanges() {
  std::vector<HashRange> ranges;
  ranges.reserve(shards_.size());
  for (const ShardLayout& s : shards_) ranges.push_back(HashRange{s.hash_start, s.hash_end});
  absl::StatusOr<std::vector<uint32_t>> order = CheckHashRanges(ranges);
  if (!order.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster map: ", order.status().message()));
  }
  range_starts_.clear();
  for (uint32_t shard : *order) range_starts_.push_back(ranges[shard].start);
  range_order_ = *std::move(order);
  return absl::OkStatus();
}

ShardId ClusterMap::ShardForHash(uint64_t hash) const {
  auto it = std::upper_bound(range_starts_.begin(), range_starts_.end(), hash);
  return range_order_[it - range_starts_.begin() - 1];
}

ShardId ClusterMap::ShardForKey(absl::string_view key) const { return ShardForHash(KeyHash(key)); }

namespace {

// Checks a list of member ids of a map: each a member, none twice (also
// across `others`). `what` names the list in the error.
absl::Status CheckIds(const ClusterMap& map, const std::vector<NodeId>& ids,
                      const std::vector<NodeId>& others, absl::string_view what) {
  absl::flat_hash_set<NodeId> seen(others.begin(), others.end());
  for (NodeId id : ids) {
    if (map.FindMember(id) == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(what, " names ", id, ", not a member"));
    }
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(absl::StrCat(what, " lists member ", id, " twice"));
    }
  }
  return absl::OkStatus();
}

std::vector<NodeId> Ids(const google::protobuf::RepeatedField<uint64_t>& ids) {
  return std::vector<NodeId>(ids.begin(), ids.end());
}

}  // namespace

absl::StatusOr<ClusterMap> ClusterMap::FromProto(const v1::ClusterMap& proto) {
  std::vector<MemberInfo> members;
  for (const v1::Member& m : proto.members()) {
    members.push_back(MemberInfo{m.id(), m.client_address(), m.peer_address()});
  }
  absl::StatusOr<ClusterMap> map =
      Create(std::move(members), proto.num_shards(), proto.replication());
  if (!map.ok()) return map.status();
  map->version_ = std::max<uint64_t>(proto.version(), 1);
  if (map->version_ == 1) {
    // The bootstrap map: exactly what this build computes from the flags.
    for (const v1::ShardInfo& s : proto.shards()) {
      if (s.id() >= map->shards_.size()) break;  // the comparison below refuses it
      map->shards_[s.id()].conf_version = std::max<uint64_t>(s.conf_version(), 1);
      map->shards_[s.id()].range_version = std::max<uint64_t>(s.range_version(), 1);
    }
    v1::ClusterMap plain = proto;
    plain.DiscardUnknownFields();
    plain.set_version(map->version_);
    if (plain.meta_replicas().empty()) {
      for (NodeId id : map->meta_.replicas) plain.add_meta_replicas(id);
    }
    if (plain.cluster_id() == 0) plain.set_cluster_id(map->cluster_id_);
    for (v1::ShardInfo& s : *plain.mutable_shards()) {
      s.clear_leader();
      s.clear_term();
      s.set_conf_version(std::max<uint64_t>(s.conf_version(), 1));
      s.set_range_version(std::max<uint64_t>(s.range_version(), 1));
    }
    if (map->ToProto().SerializeAsString() != plain.SerializeAsString()) {
      return absl::FailedPreconditionError(
          absl::StrCat("cluster map of epoch ", proto.epoch(),
                       " does not match the placement this build computes for its members (epoch ",
                       map->epoch(), ")"));
    }
    return map;
  }
  // A later map is a record of changes: Create()'s ranges and epoch,
  // recorded replicas, the bootstrap members' cluster id.
  if (proto.cluster_id() != 0) map->cluster_id_ = proto.cluster_id();
  if (proto.epoch() != map->epoch_) {
    return absl::FailedPreconditionError(
        absl::StrCat("cluster map version ", map->version_, " has epoch ", proto.epoch(),
                     ", but this build computes epoch ", map->epoch_, " for its members"));
  }
  if (proto.shards_size() != static_cast<int>(map->shards_.size())) {
    return absl::InvalidArgumentError(absl::StrCat("cluster map has ", proto.shards_size(),
                                                   " shards, num_shards=", map->num_shards_));
  }
  for (int i = 0; i < proto.shards_size(); ++i) {
    const v1::ShardInfo& s = proto.shards(i);
    ShardLayout& layout = map->shards_[i];
    if (s.id() != static_cast<uint32_t>(i)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster map: shard ", s.id(), " is listed at position ", i));
    }
    // Splits change the ranges: any that cover the hash space exactly once
    // (checked below) will do.
    layout.hash_start = s.hash_start();
    layout.hash_end = s.hash_end();
    layout.replicas = Ids(s.replicas());
    layout.learners = Ids(s.learners());
    if (layout.replicas.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("cluster map: shard ", i, " has no voter"));
    }
    absl::Status ids = CheckIds(*map, layout.replicas, {}, absl::StrCat("shard ", i));
    if (ids.ok()) ids = CheckIds(*map, layout.learners, layout.replicas, absl::StrCat("shard ", i));
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("cluster map: ", ids.message()));
    layout.conf_version = std::max<uint64_t>(s.conf_version(), 1);
    layout.range_version = std::max<uint64_t>(s.range_version(), 1);
    layout.move_from = s.move_from();
    layout.move_to = s.move_to();
    layout.split_hash = s.split_hash();
    if (layout.split_hash != 0 &&
        (layout.split_hash <= layout.hash_start || layout.split_hash > layout.hash_end)) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster map: shard ", i, "'s split is outside its range"));
    }
  }
  TESSERA_RETURN_IF_ERROR(map->IndexRanges());
  map->leaving_ = Ids(proto.leaving());
  std::sort(map->leaving_.begin(), map->leaving_.end());
  if (absl::Status ids = CheckIds(*map, map->leaving_, {}, "the leaving members"); !ids.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster map: ", ids.message()));
  }
  if (!proto.meta_replicas().empty()) {
    std::vector<NodeId> meta = Ids(proto.meta_replicas());
    absl::Status ids = CheckIds(*map, meta, {}, "the metadata group");
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("cluster map: ", ids.message()));
    map->meta_.replicas = std::move(meta);
  }
  for (const v1::Replacement& r : proto.replaced()) {
    if (map->FindMember(r.node()) == nullptr || r.incarnation() == 0 ||
        map->ReplacedIncarnation(r.node()) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("cluster map: bad replacement record of member ", r.node()));
    }
    map->replaced_.emplace_back(r.node(), r.incarnation());
  }
  std::sort(map->replaced_.begin(), map->replaced_.end());
  if (proto.has_meta()) {
    ShardLayout& meta = map->meta_;
    meta.learners = Ids(proto.meta().learners());
    absl::Status ids = CheckIds(*map, meta.learners, meta.replicas, "the metadata group");
    if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("cluster map: ", ids.message()));
    meta.conf_version = std::max<uint64_t>(proto.meta().conf_version(), 1);
    meta.move_from = proto.meta().move_from();
    meta.move_to = proto.meta().move_to();
  }
  return map;
}

absl::StatusOr<ClusterMap> ClusterMap::WithShardReplicas(ShardId shard, std::vector<NodeId> voters,
                                                         std::vector<NodeId> learners,
                                                         NodeId move_from, NodeId move_to) const {
  if (Layout(shard) == nullptr) return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  if (voters.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", shard, " would have no voter"));
  }
  absl::Status ids = CheckIds(*this, voters, {}, absl::StrCat("shard ", shard));
  if (ids.ok()) ids = CheckIds(*this, learners, voters, absl::StrCat("shard ", shard));
  if (!ids.ok()) return ids;
  ClusterMap next = *this;
  ++next.version_;
  ShardLayout& layout = shard == kMetaShard ? next.meta_ : next.shards_[shard];
  layout.replicas = std::move(voters);
  layout.learners = std::move(learners);
  ++layout.conf_version;
  layout.move_from = move_from;
  layout.move_to = move_to;
  return next;
}

const ShardLayout* ClusterMap::Splitting() const {
  for (const ShardLayout& s : shards_) {
    if (s.split_hash != 0) return &s;
  }
  return nullptr;
}

absl::StatusOr<ClusterMap> ClusterMap::WithSplitStarted(ShardId shard) const {
  if (shard >= shards_.size()) return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  const ShardLayout& s = shards_[shard];
  if (s.hash_end == s.hash_start) {
    return absl::InvalidArgumentError(absl::StrCat("shard ", shard, " owns a single hash"));
  }
  if (const ShardLayout* other = Splitting()) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", other->id, " is splitting; one split at a time"));
  }
  if (s.move_to != 0 || !s.learners.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("shard ", shard, " is moving from node ", s.move_from, " to ", s.move_to));
  }
  if (num_shards_ >= kMaxNumShards) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster has the most shards allowed (", kMaxNumShards, ")"));
  }
  ClusterMap next = *this;
  ++next.version_;
  // The middle of [start, end], computed without overflow; above start.
  next.shards_[shard].split_hash = s.hash_start + (s.hash_end - s.hash_start) / 2 + 1;
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithSplit(ShardId shard, uint64_t split_hash) const {
  if (shard >= shards_.size()) return absl::InvalidArgumentError(absl::StrCat("no shard ", shard));
  const ShardLayout& parent = shards_[shard];
  if (split_hash <= parent.hash_start || split_hash > parent.hash_end) {
    return absl::InvalidArgumentError(absl::StrCat("hash ", split_hash, " does not split shard ",
                                                   shard, " [", parent.hash_start, ", ",
                                                   parent.hash_end, "]"));
  }
  if (num_shards_ >= kMaxNumShards) {
    return absl::FailedPreconditionError(
        absl::StrCat("the cluster has the most shards allowed (", kMaxNumShards, ")"));
  }
  ClusterMap next = *this;
  ++next.version_;
  ShardLayout child = parent;
  child.id = num_shards_;
  child.split_hash = 0;
  child.hash_start = split_hash;
  child.learners.clear();
  child.move_from = child.move_to = 0;
  ShardLayout& lower = next.shards_[shard];
  lower.hash_end = split_hash - 1;
  lower.split_hash = 0;
  ++lower.range_version;
  child.range_version = lower.range_version;
  next.shards_.push_back(std::move(child));
  ++next.num_shards_;
  next.epoch_ = ComputeEpoch(next.members_, next.num_shards_, replication_);
  TESSERA_RETURN_IF_ERROR(next.IndexRanges());
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithMember(MemberInfo member) const {
  std::vector<MemberInfo> members = members_;
  members.push_back(std::move(member));
  // Create() validates the member list as at bootstrap.
  absl::StatusOr<ClusterMap> checked = Create(members, num_shards_, replication_);
  if (!checked.ok()) return checked.status();
  ClusterMap next = *this;
  ++next.version_;
  next.members_ = checked->members_;
  next.epoch_ = checked->epoch_;
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithoutMember(NodeId id) const {
  if (FindMember(id) == nullptr) return absl::NotFoundError(absl::StrCat("no member ", id));
  if (!ReplicasOn(id).empty() || HostsMeta(id)) {
    return absl::FailedPreconditionError(
        absl::StrCat("member ", id, " still holds replicas; move them off first"));
  }
  ClusterMap next = *this;
  ++next.version_;
  next.members_.erase(std::find_if(next.members_.begin(), next.members_.end(),
                                   [id](const MemberInfo& m) { return m.id == id; }));
  next.leaving_.erase(std::remove(next.leaving_.begin(), next.leaving_.end(), id),
                      next.leaving_.end());
  next.replaced_.erase(std::remove_if(next.replaced_.begin(), next.replaced_.end(),
                                      [id](const auto& r) { return r.first == id; }),
                       next.replaced_.end());
  next.epoch_ = ComputeEpoch(next.members_, num_shards_, replication_);
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithLeaving(NodeId id) const {
  if (FindMember(id) == nullptr) return absl::NotFoundError(absl::StrCat("no member ", id));
  if (IsLeaving(id)) return absl::AlreadyExistsError(absl::StrCat("member ", id, " is leaving"));
  if (members_.size() - leaving_.size() < 2) {
    return absl::FailedPreconditionError(
        absl::StrCat("no other member could take the replicas of member ", id));
  }
  if (HostsMeta(id) && meta_.replicas.size() <= kMinMetaVoters) {
    // Its metadata replica needs a member that has none and stays (with
    // more voters, the scheduler may drop it instead).
    bool taker = false;
    for (const MemberInfo& m : members_) {
      taker = taker || (m.id != id && !IsLeaving(m.id) && !HostsMeta(m.id));
    }
    if (!taker) {
      return absl::FailedPreconditionError(
          absl::StrCat("member ", id,
                       " holds a replica of the metadata group and every other member already "
                       "holds one: add a member first"));
    }
  }
  ClusterMap next = *this;
  ++next.version_;
  next.leaving_.insert(std::lower_bound(next.leaving_.begin(), next.leaving_.end(), id), id);
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithReplaced(NodeId id, uint64_t incarnation) const {
  if (FindMember(id) == nullptr) return absl::NotFoundError(absl::StrCat("no member ", id));
  if (incarnation == 0) return absl::InvalidArgumentError("incarnation 0");
  ClusterMap next = *this;
  ++next.version_;
  // Moves to it are called off: their learner lost its data too (the
  // scheduler removes it from any group it reached).
  std::vector<ShardLayout*> layouts = {&next.meta_};
  for (ShardLayout& s : next.shards_) layouts.push_back(&s);
  for (ShardLayout* s : layouts) {
    auto learner = std::find(s->learners.begin(), s->learners.end(), id);
    if (learner == s->learners.end() && s->move_to != id) continue;
    if (learner != s->learners.end()) s->learners.erase(learner);
    if (s->move_to == id) s->move_from = s->move_to = 0;
    ++s->conf_version;
  }
  auto it = std::find_if(next.replaced_.begin(), next.replaced_.end(),
                         [id](const auto& r) { return r.first == id; });
  if (it != next.replaced_.end()) {
    it->second = incarnation;
  } else {
    next.replaced_.emplace_back(id, incarnation);
    std::sort(next.replaced_.begin(), next.replaced_.end());
  }
  return next;
}

absl::StatusOr<ClusterMap> ClusterMap::WithoutReplaced(NodeId id) const {
  if (ReplacedIncarnation(id) == 0) {
    return absl::NotFoundError(absl::StrCat("member ", id, " is not being replaced"));
  }
  ClusterMap next = *this;
  ++next.version_;
  next.replaced_.erase(std::find_if(next.replaced_.begin(), next.replaced_.end(),
                                    [id](const auto& r) { return r.first == id; }));
  return next;
}

uint64_t ClusterMap::ReplacedIncarnation(NodeId id) const {
  for (const auto& [node, incarnation] : replaced_) {
    if (node == id) return incarnation;
  }
  return 0;
}

bool ClusterMap::IsLeaving(NodeId node) const {
  return std::binary_search(leaving_.begin(), leaving_.end(), node);
}

bool ClusterMap::HostsMeta(NodeId node) const {
  return std::find(meta_.replicas.begin(), meta_.replicas.end(), node) != meta_.replicas.end() ||
         std::find(meta_.learners.begin(), meta_.learners.end(), node) != meta_.learners.end();
}

const ShardLayout* ClusterMap::Layout(ShardId shard) const {
  if (shard == kMetaShard) return &meta_;
  return shard < shards_.size() ? &shards_[shard] : nullptr;
}

absl::StatusOr<ClusterMap> ClusterMap::Parse(absl::string_view initial_cluster, uint32_t num_shards,
                                             uint32_t replication) {
  absl::StatusOr<std::vector<MemberInfo>> members = ParseMembers(initial_cluster);
  if (!members.ok()) return members.status();
  return Create(*std::move(members), num_shards, replication);
}

const MemberInfo* ClusterMap::FindMember(NodeId id) const {
  auto it = std::lower_bound(members_.begin(), members_.end(), id,
                             [](const MemberInfo& m, NodeId v) { return m.id < v; });
  return it != members_.end() && it->id == id ? &*it : nullptr;
}

bool ClusterMap::Hosts(NodeId node, ShardId shard) const {
  if (shard >= shards_.size()) return false;
  const std::vector<NodeId>& replicas = shards_[shard].replicas;
  return std::find(replicas.begin(), replicas.end(), node) != replicas.end();
}

std::vector<ShardId> ClusterMap::ShardsOf(NodeId node) const {
  std::vector<ShardId> result;
  for (const ShardLayout& shard : shards_) {
    if (Hosts(node, shard.id)) result.push_back(shard.id);
  }
  return result;
}

std::vector<ShardId> ClusterMap::ReplicasOn(NodeId node) const {
  std::vector<ShardId> result;
  for (const ShardLayout& shard : shards_) {
    if (Hosts(node, shard.id) ||
        std::find(shard.learners.begin(), shard.learners.end(), node) != shard.learners.end()) {
      result.push_back(shard.id);
    }
  }
  return result;
}

v1::ClusterMap ClusterMap::ToProto() const {
  v1::ClusterMap proto;
  proto.set_epoch(epoch_);
  proto.set_num_shards(num_shards_);
  proto.set_replication(replication_);
  proto.set_version(version_);
  for (const MemberInfo& m : members_) {
    v1::Member* member = proto.add_members();
    member->set_id(m.id);
    member->set_client_address(m.client_address);
    member->set_peer_address(m.peer_address);
  }
  for (const ShardLayout& s : shards_) {
    v1::ShardInfo* shard = proto.add_shards();
    shard->set_id(static_cast<uint32_t>(s.id));
    shard->set_hash_start(s.hash_start);
    shard->set_hash_end(s.hash_end);
    for (NodeId r : s.replicas) shard->add_replicas(r);
    shard->set_conf_version(s.conf_version);
    shard->set_range_version(s.range_version);
    for (NodeId l : s.learners) shard->add_learners(l);
    shard->set_move_from(s.move_from);
    shard->set_move_to(s.move_to);
    shard->set_split_hash(s.split_hash);
  }
  for (NodeId id : meta_.replicas) proto.add_meta_replicas(id);
  if (meta_.conf_version > 1 || !meta_.learners.empty() || meta_.move_to != 0) {
    v1::ShardInfo* meta = proto.mutable_meta();
    for (NodeId l : meta_.learners) meta->add_learners(l);
    meta->set_conf_version(meta_.conf_version);
    meta->set_move_from(meta_.move_from);
    meta->set_move_to(meta_.move_to);
  }
  proto.set_cluster_id(cluster_id_);
  for (NodeId id : leaving_) proto.add_leaving(id);
  for (const auto& [node, incarnation] : replaced_) {
    v1::Replacement* r = proto.add_replaced();
    r->set_node(node);
    r->set_incarnation(incarnation);
  }
  return proto;
}

}  // namespace tessera::server
