// Shared pieces of the fuzz targets (tests/fuzz/README.md): the node layout
// they host, a scratch directory, a transport that drops everything, and a
// way to wait for the raft loop to finish a cycle.
#ifndef TESSERA_TESTS_FUZZ_FUZZ_UTIL_H_
#define TESSERA_TESTS_FUZZ_FUZZ_UTIL_H_

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "server/raftstore/node.h"
#include "server/raftstore/transport.h"

namespace tessera::fuzz {

// peer_batch_fuzz's node: node 1, hosting shards 1-3 (replicas 1, 2, 3);
// shard 4 exists in no placement (messages naming it are ignored).
inline constexpr NodeId kSelf = 1;
inline constexpr ShardId kPeerShards[] = {1, 2, 3};
inline constexpr NodeId kPeers[] = {1, 2, 3};

// client_request_fuzz's cluster: node 1 alone, holding every shard.
inline constexpr char kClientCluster[] = "1=127.0.0.1:1/127.0.0.1:2";
inline constexpr uint32_t kClientShards = 4;

// The first byte of a client_request_fuzz input: method = (byte & 7) % 5 (in this
// order); bit 3 set: the harness fixes header.shard/epoch so that the
// request gets past routing.
enum class ClientMethod { kPut = 0, kGet, kDelete, kScan, kTxn };
inline constexpr const char* kClientMethodNames[] = {"Put", "Get", "Delete", "Scan", "Txn"};
inline constexpr uint8_t kFixRouteBit = 0x08;

// Crashes with a message: for failures of the harness itself (not findings).
[[noreturn]] inline void Die(const std::string& what, const absl::Status& s = absl::OkStatus()) {
  std::fprintf(stderr, "fuzz harness: %s %s\n", what.c_str(), s.ToString().c_str());
  std::abort();
}

// A fresh directory, removed when destroyed (not after a crash: run_fuzz.sh
// points TESSERA_FUZZ_TMPDIR at a directory it removes); under
// $TESSERA_FUZZ_TMPDIR, else on tmpfs (/dev/shm) when there is one, so that
// RocksDB's fsyncs cost nothing, else under $TMPDIR or /tmp.
class ScratchDir {
 public:
  ScratchDir() {
    const char* mine = std::getenv("TESSERA_FUZZ_TMPDIR");
    const char* tmp = std::getenv("TMPDIR");
    std::string base = mine != nullptr && *mine != '\0'            ? mine
                       : std::filesystem::is_directory("/dev/shm") ? "/dev/shm"
                       : tmp != nullptr && *tmp != '\0'            ? tmp
                                                                   : "/tmp";
    std::string pattern = base + "/tessera-fuzz-XXXXXX";
    if (mkdtemp(pattern.data()) == nullptr) Die("mkdtemp failed for " + pattern);
    path_ = pattern;
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Drops every message (the peers are the fuzzer).
class NullTransport : public server::Transport {
 public:
  void Send(NodeId, std::vector<server::ShardMessage>) override {}
};

// Returns once the raft loop of `node` has run a cycle that started after
// this call (so everything Receive()d before it was stepped, persisted and
// applied), or the loop has stopped. A read barrier with a past deadline is
// answered in the cycle that takes it; a stopped loop answers new ones at
// once (kCancelled) but leaves queued ones unanswered, hence the re-issue.
inline void AwaitCycle(server::Node& node, ShardId shard) {
  struct Answer {
    std::atomic<bool> fired{false};
    absl::Notification done;
  };
  auto answer = std::make_shared<Answer>();  // outlives late answers
  auto issue = [&] {
    node.ReadBarrier(shard, /*lease=*/false, absl::InfinitePast(), [answer](absl::Status) {
      if (!answer->fired.exchange(true)) answer->done.Notify();
    });
  };
  issue();
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while (!answer->done.WaitForNotificationWithTimeout(absl::Milliseconds(20))) {
    if (absl::Now() > give_up) Die("the raft loop ran no cycle for 60 s");
    issue();
  }
}

}  // namespace tessera::fuzz

#endif  // TESSERA_TESTS_FUZZ_FUZZ_UTIL_H_
