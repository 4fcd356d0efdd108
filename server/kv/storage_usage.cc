#include "server/kv/storage_usage.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera::server {

StorageUsage::StorageUsage(StorageUsageOptions options, storage::Engine* engine,
                           std::function<uint64_t()> quota, KvBackend* backend)
    : options_(std::move(options)), engine_(engine), quota_(std::move(quota)), backend_(backend) {
  Sample();
  thread_ = std::thread([this] { Run(); });
}

StorageUsage::~StorageUsage() { Stop(); }

void StorageUsage::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

uint64_t StorageUsage::Sample() {
  absl::StatusOr<storage::Engine::Stats> stats = engine_->GetStats();
  if (stats.ok()) {
    used_.store(stats->sst_files_bytes + stats->memtable_bytes, std::memory_order_relaxed);
  }
  return used();
}

void StorageUsage::DropHistory() {
  if (backend_ == nullptr) return;
  for (const ShardStatus& status : backend_->Status()) {
    if (status.role != "leader") continue;
    serverpb::Command command;
    command.mutable_compact_history()->set_below_revision(status.applied_index + 1);
    // Not applied (leadership lost, deadline): the next round proposes again.
    backend_->Propose(status.shard, std::move(command), absl::Now() + absl::Seconds(5),
                      [](absl::StatusOr<serverpb::CommandResult>) {});
  }
}

void StorageUsage::Run() {
  absl::Time last_compaction = absl::InfinitePast();
  while (!stop_.WaitForNotificationWithTimeout(options_.interval)) {
    const uint64_t used = Sample();
    const uint64_t quota = quota_();
    if (quota == 0 || used <= quota || absl::Now() - last_compaction < options_.compact_every) {
      continue;
    }
    last_compaction = absl::Now();
    DropHistory();
    const absl::Status compacted = engine_->CompactAll();
    const uint64_t after = Sample();
    if (options_.log) {
      options_.log(absl::StrCat(
          "the store holds ", used, " bytes, over its quota of ", quota, ": compacted it to ",
          after, " bytes", compacted.ok() ? "" : absl::StrCat(" (", compacted.ToString(), ")")));
    }
  }
}

}  // namespace tessera::server
