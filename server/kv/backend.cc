#include "server/kv/backend.h"

#include <memory>
#include <utility>

namespace tessera::server {
namespace {

// Waits for `outcome` (which the callback keeps alive) or `stop`.
template <typename Outcome>
bool Wait(const Outcome& outcome, const absl::Notification& stop) {
  while (!outcome->done.WaitForNotificationWithTimeout(absl::Milliseconds(50))) {
    if (stop.HasBeenNotified()) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<serverpb::CommandResult> ProposeAndWait(KvBackend& backend, ShardId shard,
                                                       serverpb::Command command,
                                                       absl::Time deadline,
                                                       const absl::Notification& stop) {
  struct Outcome {
    absl::Notification done;
    absl::StatusOr<serverpb::CommandResult> result;
  };
  auto outcome = std::make_shared<Outcome>();
  backend.Propose(shard, std::move(command), deadline,
                  [outcome](absl::StatusOr<serverpb::CommandResult> result) {
                    outcome->result = std::move(result);
                    outcome->done.Notify();
                  });
  if (!Wait(outcome, stop)) return absl::CancelledError("stopping");
  return outcome->result;
}

absl::Status ReadBarrierAndWait(KvBackend& backend, ShardId shard, absl::Time deadline,
                                const absl::Notification& stop) {
  struct Outcome {
    absl::Notification done;
    absl::Status result;
  };
  auto outcome = std::make_shared<Outcome>();
  backend.ReadBarrier(shard, /*lease=*/false, deadline, [outcome](absl::Status result) {
    outcome->result = std::move(result);
    outcome->done.Notify();
  });
  if (!Wait(outcome, stop)) return absl::CancelledError("stopping");
  return outcome->result;
}

}  // namespace tessera::server
