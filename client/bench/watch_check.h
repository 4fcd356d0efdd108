// tessera-bench --watch: a prefix watcher over the bench's keys, alongside
// the run, checks that it sees every write that applied exactly once and in
// order. The bench is the only writer of its keys and never deletes, so
// each key's put events must carry the versions before+1, before+2, ... up
// to the version read after the run: a gap is a lost event, a repeat a
// duplicated one, either a mismatch. Thread-safe.
#ifndef TESSERA_CLIENT_BENCH_WATCH_CHECK_H_
#define TESSERA_CLIENT_BENCH_WATCH_CHECK_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/bench/driver.h"
#include "client/client.h"

namespace tessera::bench {

struct WatchVerdict {
  uint64_t events = 0;      // put events of the bench's keys received
  uint64_t mismatches = 0;  // keys with a gap, a repeat, or short of `after`
  uint64_t restarts = 0;    // Watcher::restarts()
  std::vector<std::string> examples;
};

class WatchCheck {
 public:
  // Watches every key of `keys` (prefix "k") from now, from a client of its
  // own at `endpoints`; `before` are the versions read before the run (a
  // key without one is not checked). Blocks until the watch is registered.
  static absl::StatusOr<std::unique_ptr<WatchCheck>> Start(
      const std::vector<std::string>& endpoints, const KeyFormat& keys, const KeyVersions& before);
  ~WatchCheck();

  // Waits until each checked key's last event reached its version in
  // `after` (or `timeout`), stops watching and gives the verdict.
  WatchVerdict Finish(const KeyVersions& after, absl::Duration timeout);

 private:
  WatchCheck(const KeyFormat& keys, const KeyVersions& before);
  void Loop();
  // The bench key index of `key`, or -1.
  int64_t Index(const std::string& key) const;

  const KeyFormat keys_;
  std::unique_ptr<client::Client> client_;
  std::unique_ptr<client::Watcher> watcher_;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  mutable absl::Mutex mu_;
  std::vector<uint64_t> last_ ABSL_GUARDED_BY(mu_);  // per key: the last version seen
  std::vector<bool> checked_ ABSL_GUARDED_BY(mu_);
  WatchVerdict verdict_ ABSL_GUARDED_BY(mu_);
  absl::Status failed_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tessera::bench

#endif  // TESSERA_CLIENT_BENCH_WATCH_CHECK_H_
