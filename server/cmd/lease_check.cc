#include "server/cmd/lease_check.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera::server {
namespace {

// Entries the cache holds at most (it is emptied when full).
constexpr size_t kMaxCached = 1 << 16;

}  // namespace

LeaseCheck::LeaseCheck(NodeId self, LeaseKeeper* keeper, const ClusterMapCache* maps,
                       KvBackend* backend, GrpcClusterControl* control, absl::Duration cache_for)
    : self_(self),
      keeper_(keeper),
      maps_(maps),
      backend_(backend),
      control_(control),
      cache_for_(cache_for) {}

bool LeaseCheck::Fresh(uint64_t id) {
  absl::MutexLock lock(&mu_);
  auto it = live_.find(id);
  return it != live_.end() && absl::Now() - it->second < cache_for_;
}

void LeaseCheck::Remember(uint64_t id) {
  absl::MutexLock lock(&mu_);
  if (live_.size() >= kMaxCached) live_.clear();
  live_[id] = absl::Now();
}

void LeaseCheck::Check(std::vector<uint64_t> leases, absl::Time deadline,
                       std::function<void(absl::Status)> done) {
  leases.erase(
      std::remove_if(leases.begin(), leases.end(), [this](uint64_t id) { return Fresh(id); }),
      leases.end());
  CheckFrom(std::make_shared<std::vector<uint64_t>>(std::move(leases)), 0, deadline,
            std::move(done));
}

void LeaseCheck::CheckFrom(std::shared_ptr<std::vector<uint64_t>> leases, size_t next,
                           absl::Time deadline, std::function<void(absl::Status)> done) {
  if (next == leases->size()) return done(absl::OkStatus());
  const uint64_t id = (*leases)[next];
  auto then = [this, leases, next, deadline, id,
               done = std::move(done)](absl::Status live) mutable {
    if (!live.ok()) return done(std::move(live));
    Remember(id);
    CheckFrom(std::move(leases), next + 1, deadline, std::move(done));
  };
  // This node leads the metadata group: its keeper knows.
  absl::StatusOr<v1::LeaseTimeToLiveResponse> local = keeper_->TimeToLive(id);
  if (local.status().code() != absl::StatusCode::kUnavailable) return then(local.status());
  auto candidates = std::make_shared<std::vector<NodeId>>();
  if (std::optional<ShardStatus> meta = backend_->StatusOf(kMetaShard);
      meta.has_value() && meta->leader != 0 && meta->leader != self_) {
    candidates->push_back(meta->leader);
  }
  if (std::shared_ptr<const ClusterMap> map = maps_->Current()) {
    for (NodeId node : map->meta_replicas()) {
      if (node != self_ &&
          std::find(candidates->begin(), candidates->end(), node) == candidates->end()) {
        candidates->push_back(node);
      }
    }
  }
  AskFrom(std::move(candidates), 0, id, deadline, std::move(then));
}

void LeaseCheck::AskFrom(std::shared_ptr<std::vector<NodeId>> candidates, size_t i, uint64_t id,
                         absl::Time deadline, std::function<void(absl::Status)> done) {
  if (i == candidates->size()) {
    return done(absl::UnavailableError(absl::StrCat(
        "cannot reach the metadata group's leader to check lease ", id, "; retry later")));
  }
  control_->CheckLease(
      (*candidates)[i], id, deadline,
      [this, candidates, i, id, deadline, done = std::move(done)](absl::Status status) mutable {
        if (status.code() == absl::StatusCode::kUnavailable && absl::Now() < deadline) {
          return AskFrom(std::move(candidates), i + 1, id, deadline, std::move(done));
        }
        done(std::move(status));
      });
}

}  // namespace tessera::server
