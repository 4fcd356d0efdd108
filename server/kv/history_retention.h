// HistoryRetention: the watch history's time bound (--watch-history-seconds).
//
// The state machine bounds the history by revisions on its own (the log
// decides, StateMachineOptions::history_revisions). A bound in time needs a
// clock, which replicas do not share, so it goes through the log: every
// `sample_every` this node notes each hosted shard's applied index (on its
// monotonic clock), and for each shard it leads, proposes a CompactHistory
// below the last index it saw applied at least `keep` ago. Every replica
// then drops the same revisions at the same entry. The samples of a replica
// serve it when it becomes leader; a shard whose applied index has not moved
// since the last compaction gets no proposal (idle shards stay asleep).
//
// Memory: at most keep / sample_every + 1 samples per hosted shard.
// Thread-safety: thread-safe; one thread runs the ticks. `backend` is not
// owned and must outlive it. Stop() it before the Node stops, and destroy
// it after (the Node completes the proposals it made).
#ifndef TESSERA_SERVER_KV_HISTORY_RETENTION_H_
#define TESSERA_SERVER_KV_HISTORY_RETENTION_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "server/kv/backend.h"

namespace tessera::server {

struct HistoryRetentionOptions {
  absl::Duration keep = absl::Hours(1);
  // Also how often compactions are proposed. Zero: no thread (tests call Tick()).
  absl::Duration sample_every = absl::Seconds(10);
};

class HistoryRetention {
 public:
  // `clock`: a monotonic clock (time since a fixed point).
  HistoryRetention(const HistoryRetentionOptions& options, KvBackend* backend,
                   std::function<absl::Duration()> clock);
  ~HistoryRetention();  // Stop()s
  HistoryRetention(const HistoryRetention&) = delete;
  HistoryRetention& operator=(const HistoryRetention&) = delete;

  void Stop();
  // One round: sample every hosted shard, propose where due.
  void Tick() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Shard {
    std::deque<std::pair<absl::Duration, uint64_t>> samples;  // (when, applied index)
    uint64_t proposed = 0;                                    // the last below_revision proposed
  };

  const HistoryRetentionOptions options_;
  KvBackend* const backend_;
  const std::function<absl::Duration()> clock_;
  absl::Mutex mu_;
  std::map<ShardId, Shard> shards_ ABSL_GUARDED_BY(mu_);
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_HISTORY_RETENTION_H_
