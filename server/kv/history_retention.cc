#include "server/kv/history_retention.h"

#include <vector>

#include "absl/time/clock.h"

namespace tessera::server {

HistoryRetention::HistoryRetention(const HistoryRetentionOptions& options, KvBackend* backend,
                                   std::function<absl::Duration()> clock)
    : options_(options), backend_(backend), clock_(std::move(clock)) {
  if (options_.sample_every > absl::ZeroDuration()) {
    thread_ = std::thread([this] {
      while (!stop_.WaitForNotificationWithTimeout(options_.sample_every)) Tick();
    });
  }
}

HistoryRetention::~HistoryRetention() { Stop(); }

void HistoryRetention::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

void HistoryRetention::Tick() {
  const absl::Duration now = clock_();
  const std::vector<ShardStatus> statuses = backend_->Status();
  std::vector<std::pair<ShardId, uint64_t>> proposals;
  {
    absl::MutexLock lock(&mu_);
    std::map<ShardId, Shard> hosted;
    for (const ShardStatus& status : statuses) {
      Shard& shard = hosted[status.shard];
      if (auto it = shards_.find(status.shard); it != shards_.end()) shard = std::move(it->second);
      if (shard.samples.empty() || shard.samples.back().second != status.applied_index) {
        shard.samples.emplace_back(now, status.applied_index);
      }
      // Keep the newest sample old enough to compact by, and those after it.
      while (shard.samples.size() >= 2 && shard.samples[1].first <= now - options_.keep) {
        shard.samples.pop_front();
      }
      if (status.role != "leader" || shard.samples.front().first > now - options_.keep) continue;
      // Revisions up to that index were applied at least `keep` ago.
      const uint64_t below = shard.samples.front().second + 1;
      if (below > shard.proposed) {
        shard.proposed = below;
        proposals.emplace_back(status.shard, below);
      }
    }
    shards_ = std::move(hosted);  // shards no longer hosted are forgotten
  }
  for (const auto& [shard, below] : proposals) {
    serverpb::Command command;
    command.mutable_compact_history()->set_below_revision(below);
    backend_->Propose(
        shard, std::move(command), absl::Now() + absl::Seconds(5),
        [this, shard = shard, below = below](absl::StatusOr<serverpb::CommandResult> result) {
          if (result.ok()) return;
          // Not applied (leadership lost, deadline): due again next round.
          absl::MutexLock lock(&mu_);
          auto it = shards_.find(shard);
          if (it != shards_.end() && it->second.proposed == below) {
            it->second.proposed = 0;
          }
        });
  }
}

}  // namespace tessera::server
