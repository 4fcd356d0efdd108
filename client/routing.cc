#include "client/routing.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/key_hash.h"

namespace tessera::client {

namespace {
// 0 (a map from before versions existed) reads as 1 (proto/tessera/kv.proto).
uint64_t MapVersion(const v1::ClusterMap& map) { return std::max<uint64_t>(map.version(), 1); }

}  // namespace

absl::Status RouteTable::Update(const v1::ClusterMap& map, int* dropped_leaders,
                                std::vector<std::pair<uint32_t, uint32_t>>* splits) {
  if (dropped_leaders != nullptr) *dropped_leaders = 0;
  if (splits != nullptr) splits->clear();
  const uint32_t n = map.num_shards();
  if (n == 0 || static_cast<uint32_t>(map.shards_size()) != n) {
    return absl::InvalidArgumentError(
        absl::StrCat("cluster map has ", map.shards_size(), " shards, num_shards=", n));
  }
  absl::flat_hash_map<uint64_t, std::string> addresses;
  for (const v1::Member& m : map.members()) addresses[m.id()] = m.client_address();
  std::vector<std::vector<std::string>> replicas(n);
  std::vector<HashRange> ranges(n);
  std::vector<uint64_t> range_versions(n);
  std::vector<bool> seen(n, false);
  for (const v1::ShardInfo& s : map.shards()) {
    if (s.id() >= n || seen[s.id()]) {
      return absl::InvalidArgumentError(absl::StrCat("cluster map: bad shard id ", s.id()));
    }
    seen[s.id()] = true;
    ranges[s.id()] = HashRange{s.hash_start(), s.hash_end()};
    range_versions[s.id()] = std::max<uint64_t>(s.range_version(), 1);
    for (uint64_t r : s.replicas()) {
      auto it = addresses.find(r);
      if (it != addresses.end() && !it->second.empty()) replicas[s.id()].push_back(it->second);
    }
  }
  absl::StatusOr<std::vector<uint32_t>> order = CheckHashRanges(ranges);
  if (!order.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("cluster map: ", order.status().message()));
  }
  std::vector<uint64_t> starts;
  for (uint32_t shard : *order) starts.push_back(ranges[shard].start);

  absl::MutexLock lock(&mu_);
  if (map_.has_value() && MapVersion(map) < MapVersion(*map_)) return absl::OkStatus();
  if (map_.has_value() && map_->epoch() == map.epoch() && map.epoch() != 0 &&
      MapVersion(map) == MapVersion(*map_)) {
    // Same configuration: only take fresher leader hints for shards we know
    // no leader of.
    for (const v1::ShardInfo& s : map.shards()) {
      auto it = addresses.find(s.leader());
      if (s.leader() != 0 && it != addresses.end() && !leaders_.contains(s.id())) {
        leaders_[s.id()] = it->second;
      }
    }
    return absl::OkStatus();
  }
  absl::flat_hash_map<uint32_t, std::string> leaders;
  int dropped = 0;
  absl::flat_hash_map<uint32_t, uint64_t> old_starts;
  for (size_t k = 0; k < range_shards_.size(); ++k) old_starts[range_shards_[k]] = range_starts_[k];
  for (auto& [shard, address] : leaders_) {
    // A shard keeps its id and its first hash across a split (the upper
    // half gets a new id): its leader stays while it is still a replica.
    const bool keep =
        shard < n && old_starts.contains(shard) && ranges[shard].start == old_starts[shard] &&
        std::find(replicas[shard].begin(), replicas[shard].end(), address) != replicas[shard].end();
    if (keep) {
      leaders.emplace(shard, address);
    } else {
      ++dropped;
    }
  }
  for (const v1::ShardInfo& s : map.shards()) {
    auto it = addresses.find(s.leader());
    if (s.leader() != 0 && it != addresses.end() && !leaders.contains(s.id())) {
      leaders[s.id()] = it->second;
    }
  }
  if (splits != nullptr && map_.has_value()) {
    for (uint32_t shard = static_cast<uint32_t>(map_->num_shards()); shard < n; ++shard) {
      auto it = std::upper_bound(range_starts_.begin(), range_starts_.end(), ranges[shard].start);
      splits->emplace_back(shard, range_shards_[it - range_starts_.begin() - 1]);
    }
  }
  map_ = map;
  replicas_ = std::move(replicas);
  range_starts_ = std::move(starts);
  range_shards_ = *std::move(order);
  range_versions_ = std::move(range_versions);
  leaders_ = std::move(leaders);
  if (dropped_leaders != nullptr) *dropped_leaders = dropped;
  return absl::OkStatus();
}

bool RouteTable::has_map() const {
  absl::MutexLock lock(&mu_);
  return map_.has_value();
}

uint64_t RouteTable::epoch() const {
  absl::MutexLock lock(&mu_);
  return map_.has_value() ? map_->epoch() : 0;
}

uint64_t RouteTable::version() const {
  absl::MutexLock lock(&mu_);
  return map_.has_value() ? MapVersion(*map_) : 0;
}

uint32_t RouteTable::num_shards() const {
  absl::MutexLock lock(&mu_);
  return map_.has_value() ? map_->num_shards() : 0;
}

std::optional<v1::ClusterMap> RouteTable::map() const {
  absl::MutexLock lock(&mu_);
  return map_;
}

std::optional<uint32_t> RouteTable::ShardForKey(absl::string_view key) const {
  return ShardForHashInMap(KeyHash(key));
}

std::optional<uint32_t> RouteTable::ShardForHashInMap(uint64_t hash) const {
  absl::MutexLock lock(&mu_);
  if (!map_.has_value()) return std::nullopt;
  auto it = std::upper_bound(range_starts_.begin(), range_starts_.end(), hash);
  return range_shards_[it - range_starts_.begin() - 1];
}

std::optional<ShardRoute> RouteTable::Route(uint32_t shard) const {
  absl::MutexLock lock(&mu_);
  if (!map_.has_value() || shard >= replicas_.size()) return std::nullopt;
  ShardRoute route;
  route.shard = shard;
  route.epoch = map_->epoch();
  route.range_version = range_versions_[shard];
  route.replicas = replicas_[shard];
  auto it = leaders_.find(shard);
  if (it != leaders_.end()) route.leader = it->second;
  return route;
}

void RouteTable::SetLeader(uint32_t shard, const std::string& address) {
  absl::MutexLock lock(&mu_);
  leaders_[shard] = address;
}

void RouteTable::ForgetLeader(uint32_t shard, const std::string& address) {
  absl::MutexLock lock(&mu_);
  auto it = leaders_.find(shard);
  if (it != leaders_.end() && it->second == address) leaders_.erase(it);
}

absl::flat_hash_map<uint32_t, std::string> RouteTable::Leaders() const {
  absl::MutexLock lock(&mu_);
  return leaders_;
}

std::vector<std::string> RouteTable::MemberAddresses() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  if (!map_.has_value()) return out;
  for (const v1::Member& m : map_->members()) out.push_back(m.client_address());
  return out;
}

}  // namespace tessera::client
