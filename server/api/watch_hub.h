// WatchHub: this node's watchers (KV.Watch) and the events they wait for.
//
// Where it sits: the StateMachine tells it what each apply stored
// (ApplyObserver, on the raft loop thread); it hands each event to the
// watchers whose key range holds it, as a queue per watcher; each stream
// (KvService::WatchStream) takes from the queues of its watchers and
// writes. A watcher that starts in the past, or whose shard's state moved
// without events (a snapshot installed), first reads the shard's history
// (StateMachine::ReadHistory) on the hub's catch-up thread, page by page,
// then switches to the live events, with none lost or repeated in between
// (each watcher keeps the next revision it needs).
//
// Bounds: at most max_watchers watchers on the node; a watcher whose queue
// holds more than max_watcher_bytes, or any watcher receiving an event
// while the node's queues hold more than max_node_bytes, is ended with
// RESOURCE_EXHAUSTED (the client resumes from its last revision): a slow
// reader never grows the server's memory without bound. A catch-up reads
// a page only while its watcher's queue is under half its bound.
//
// Thread-safety: thread-safe. OnApplied runs on the raft loop thread and
// only queues and signals (no storage reads, no gRPC calls); history reads
// run on the catch-up thread; streams call Take/Cancel from gRPC threads.
// A stream's Wake() is called with no hub lock held.
#ifndef TESSERA_SERVER_API_WATCH_HUB_H_
#define TESSERA_SERVER_API_WATCH_HUB_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/kv/sm_format.h"
#include "server/kv/state_machine.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

struct WatchHubOptions {
  size_t max_watchers = 100000;
  uint64_t max_watcher_bytes = 1 << 20;
  uint64_t max_node_bytes = 256 << 20;
  // How often idle watchers that asked for it get a progress response, and
  // how often each watcher's shard is checked (still hosted, same range).
  absl::Duration progress_interval = absl::Seconds(1);
  // Bytes of history read per catch-up page.
  uint64_t catch_up_page_bytes = 256 << 10;
};

// What the hub needs of the node: the history and range of a shard, and
// whether a watcher of it may go on. Thread-safe.
class WatchSource {
 public:
  virtual ~WatchSource() = default;
  virtual absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t from_revision,
                                                  uint64_t max_bytes) const = 0;
  virtual absl::StatusOr<sm::ShardRange> Range(ShardId shard) const = 0;
  // The shard's applied index on this node, nullopt if it is not hosted.
  virtual std::optional<uint64_t> AppliedIndex(ShardId shard) const = 0;
  // OK while watchers of `shard` whose range has `range_version` may go on;
  // else the error that ends them (e.g. FAILED_PRECONDITION stale route,
  // UNAVAILABLE: not hosted, draining).
  virtual absl::Status CheckWatch(ShardId shard, uint64_t range_version) const = 0;
};

// A stream's side: the hub calls Wake() (no hub lock held) when one of its
// watchers has something to send; possibly after RemoveStream (the hub
// holds it by shared_ptr), so a stream's sink outlives it and ignores
// late calls. Wake must be cheap: it may run on the raft loop thread.
class WatchStreamSink {
 public:
  virtual ~WatchStreamSink() = default;
  virtual void Wake() = 0;
};

struct WatchHubStats {
  uint64_t watchers = 0;
  uint64_t catching_up = 0;  // of them, reading history before going live
  uint64_t queued_bytes = 0;
  uint64_t events_sent_total = 0;
  uint64_t slow_cancelled_total = 0;
  uint64_t compacted_total = 0;
};

class WatchHub final : public ApplyObserver {
 public:
  WatchHub(const WatchHubOptions& options, const WatchSource* source);
  ~WatchHub() override;  // Stop()s; streams must be gone

  // Stops the catch-up and tick threads (no history read or source check
  // after it returns); Take/Cancel/RemoveStream still work. Idempotent.
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // Registers a watch of the stream `sink` (RemoveStream when the stream
  // ends). The created response is queued for it, or, when `refused` is an
  // error (the caller's validation or routing failed) or a bound is
  // reached, a canceled one with the error. `range_version` is the
  // shard's as the caller checked it.
  void Create(const std::shared_ptr<WatchStreamSink>& sink, const v1::WatchCreate& create,
              ShardId shard, uint64_t range_version, const absl::Status& refused)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Ends a watch of `sink` at the client's request (a canceled response
  // with code 0). Unknown ids: nothing.
  void Cancel(WatchStreamSink* sink, uint64_t watch_id) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops every watch of `sink` (the stream ended).
  void RemoveStream(WatchStreamSink* sink) ABSL_LOCKS_EXCLUDED(mu_);
  // The next response to write for `sink` (at most about `max_bytes` of
  // events, whole revisions), nullopt if nothing is queued.
  std::optional<v1::WatchResponse> Take(WatchStreamSink* sink, uint64_t max_bytes)
      ABSL_LOCKS_EXCLUDED(mu_);

  // ApplyObserver (raft loop thread).
  // A split ends every watcher of the shard (FAILED_PRECONDITION, resume
  // from the last revision sent: at most the split's), so that no resume
  // point moves past the split for keys that left.
  void OnApplied(ShardId shard, uint64_t applied_index, bool reset, bool split,
                 std::vector<sm::HistoryEvent> events) override ABSL_LOCKS_EXCLUDED(mu_);

  // Responses queued for `sink`'s watchers (the stream stops reading
  // requests while many are).
  size_t Backlog(WatchStreamSink* sink) const ABSL_LOCKS_EXCLUDED(mu_);
  WatchHubStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Watcher;
  struct Stream;
  struct ShardWatchers;
  using EventPtr = std::shared_ptr<const sm::HistoryEvent>;
  using WakeList = std::vector<std::shared_ptr<WatchStreamSink>>;

  // Queues `event` for `w` if it is past w's next position (the caller
  // checked its key); unless `paced` (a catch-up, which bounds itself),
  // ends w if that takes it over a bound, a lone event excepted.
  void Offer(Watcher& w, const EventPtr& event, bool paced, WakeList* wake)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends `w` with `status` (queued as its last response) and unregisters it.
  void End(Watcher& w, const absl::Status& status, uint64_t compact_revision, WakeList* wake)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets `w` entirely (no response).
  void Unregister(Watcher& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropQueue(Watcher& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleCatchUp(Watcher& w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CatchUpLoop() ABSL_LOCKS_EXCLUDED(mu_);
  // One page of history for the watcher; returns the streams to wake.
  WakeList CatchUpOnce(std::shared_ptr<Watcher> w) ABSL_LOCKS_EXCLUDED(mu_);
  void TickLoop() ABSL_LOCKS_EXCLUDED(mu_);
  static void WakeAll(WakeList wake);

  const WatchHubOptions options_;
  const WatchSource* const source_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<WatchStreamSink*, std::unique_ptr<Stream>> streams_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<ShardId, std::unique_ptr<ShardWatchers>> shards_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<Watcher>> catch_up_ ABSL_GUARDED_BY(mu_);
  size_t watchers_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t events_sent_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t slow_cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t compacted_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  std::thread catch_up_thread_;
  std::thread tick_thread_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_WATCH_HUB_H_
