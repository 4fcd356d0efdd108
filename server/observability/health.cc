#include "server/observability/health.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace tessera::server {

Readiness EvaluateReadiness(bool member, bool draining, const std::vector<ShardStatus>& shards,
                            absl::Time now, const ReadinessOptions& options) {
  if (draining) return {false, "draining"};
  if (!member) return {false, "not a member of the cluster (map not loaded)"};
  if (shards.empty()) return {false, "no shard replicas"};
  for (const ShardStatus& s : shards) {
    if (s.leader == 0) return {false, absl::StrCat("shard ", s.shard, " has no known leader")};
    if (s.role != "leader" && (s.last_leader_contact == absl::InfinitePast() ||
                               now - s.last_leader_contact > options.max_leader_silence)) {
      return {false,
              absl::StrCat("shard ", s.shard, " has not heard from its leader (node ", s.leader,
                           ") within ", absl::FormatDuration(options.max_leader_silence))};
    }
    if (s.commit_index > s.applied_index + options.max_apply_lag) {
      return {false, absl::StrCat("shard ", s.shard, " is catching up: applied ", s.applied_index,
                                  " of ", s.commit_index)};
    }
  }
  return {true, "ready"};
}

void HealthMonitor::SetSources(Sources sources) {
  absl::MutexLock lock(&mu_);
  sources_ = std::move(sources);
}

void HealthMonitor::SetGrpcHealth(grpc::HealthCheckServiceInterface* grpc_health) {
  absl::MutexLock lock(&mu_);
  grpc_health_ = grpc_health;
  last_state_ = -1;  // push the current state at the next poll
}

void HealthMonitor::SetDraining() {
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    last_state_ = 0;
    PublishLocked(false);
  }
  spdlog::info("event=readiness ready=false reason=draining");
}

// Under mu_, so that a Poll() that read "ready" before SetDraining() cannot
// publish SERVING after it.
void HealthMonitor::PublishLocked(bool serving) {
  if (grpc_health_ == nullptr) return;
  grpc_health_->SetServingStatus(serving);
  for (const char* service : {"tessera.v1.KV", "tessera.v1.Cluster"}) {
    grpc_health_->SetServingStatus(service, serving);
  }
}

Readiness HealthMonitor::Check() const {
  Sources sources;
  bool draining;
  {
    absl::MutexLock lock(&mu_);
    sources = sources_;
    draining = draining_;
  }
  if (!draining && (!sources.member || !sources.shards)) return {false, "starting"};
  if (sources.live) {
    if (absl::Status live = sources.live(); !live.ok()) {
      return {false, absl::StrCat("not live: ", live.ToString())};
    }
  }
  const bool member = sources.member ? sources.member() : false;
  std::vector<ShardStatus> shards;
  if (sources.shards) shards = sources.shards();
  return EvaluateReadiness(member, draining, shards, absl::Now(), options_);
}

void HealthMonitor::Start(absl::Duration interval) {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable() || stopping_) return;
  thread_ = std::thread([this, interval] {
    while (true) {
      Poll();
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stopping), interval)) return;
    }
  });
}

void HealthMonitor::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void HealthMonitor::Poll() {
  const Readiness r = Check();
  {
    absl::MutexLock lock(&mu_);
    if (draining_ || last_state_ == (r.ready ? 1 : 0)) return;
    last_state_ = r.ready ? 1 : 0;
    PublishLocked(r.ready);
  }
  if (r.ready) {
    spdlog::info("event=readiness ready=true");
  } else {
    spdlog::warn("event=readiness ready=false reason=\"{}\"", r.reason);
  }
}

absl::Status HealthMonitor::Liveness() const {
  std::function<absl::Status()> live;
  {
    absl::MutexLock lock(&mu_);
    live = sources_.live;
  }
  return live ? live() : absl::OkStatus();
}

MetricsHttpServer::Handler HealthMonitor::LivenessHandler() const {
  return [this] {
    const absl::Status live = Liveness();
    if (live.ok()) return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
    return HttpResponse{503, "text/plain; charset=utf-8", live.ToString() + "\n"};
  };
}

MetricsHttpServer::Handler HealthMonitor::ReadinessHandler() const {
  return [this] {
    const Readiness r = Check();
    return HttpResponse{r.ready ? 200 : 503, "text/plain; charset=utf-8", r.reason + "\n"};
  };
}

}  // namespace tessera::server
