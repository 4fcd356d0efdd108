// An in-process fake Tessera cluster for the client tests: N gRPC servers on
// 127.0.0.1 (port 0) serving tessera.v1.KV and tessera.v1.Cluster over one
// shared in-memory store with exactly-once sessions (the rules of
// server/README.md), a static cluster map, a scripted leader per shard, and
// fault hooks: a node that is down, a stale epoch, delays, and replies that
// are dropped after the write was applied.
//
// Thread-safe. Handlers run on gRPC's sync-server threads.
#ifndef TESSERA_TESTS_CLIENT_FAKE_CLUSTER_H_
#define TESSERA_TESTS_CLIENT_FAKE_CLUSTER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::client::testing {

// What a hook sees of one call.
struct FakeCall {
  int node = 0;        // 0-based
  std::string method;  // "Put", "Get", "Delete", "Scan", "Txn", "GetClusterMap", "NodeStatus"
  uint32_t shard = 0;
  std::string key;
  uint64_t client_id = 0;
  uint64_t seq = 0;
  uint64_t first_incomplete_seq = 0;
  int attempt_of_seq = 0;    // 1 for the first time this (client_id, seq) arrives
  std::string continuation;  // Scan: where the page starts (empty: the shard's first page)
};

// What a hook wants done with it.
struct FakeAction {
  enum class Kind {
    kProceed,        // serve normally
    kError,          // answer `error` (with its ErrorDetail payload, if any)
    kDropAfterApply  // serve, then never answer (the client's attempt times out)
  };
  Kind kind = Kind::kProceed;
  absl::Status error;
  absl::Duration delay = absl::ZeroDuration();  // before serving
};

class FakeCluster {
 public:
  struct Options {
    int nodes = 3;
    uint32_t shards = 4;
    uint64_t epoch = 7;
    // Serve KV.Batch (each request message answered by one response
    // message, its operations served as the unary calls); false: answer it
    // UNIMPLEMENTED, so the SDK uses the unary calls.
    bool serve_batch = false;
  };
  explicit FakeCluster(Options options);
  ~FakeCluster();

  std::string address(int node) const { return addresses_[node]; }
  std::vector<std::string> addresses() const { return addresses_; }
  uint32_t shards() const { return options_.shards; }

  void SetLeader(uint32_t shard, int node) ABSL_LOCKS_EXCLUDED(mu_);
  int leader(uint32_t shard) const ABSL_LOCKS_EXCLUDED(mu_);
  // A down node answers UNAVAILABLE without detail, as a broken connection.
  void SetDown(int node, bool down) ABSL_LOCKS_EXCLUDED(mu_);
  // NodeStatus of `node` reports every replica "stopped" (a node whose raft
  // loop failed).
  void SetStopped(int node, bool stopped) ABSL_LOCKS_EXCLUDED(mu_);
  // Changes the epoch: calls routed by the old one get stale_route.
  void SetEpoch(uint64_t epoch) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops every session (as if evicted).
  void EvictSessions() ABSL_LOCKS_EXCLUDED(mu_);
  void SetHook(std::function<FakeAction(const FakeCall&)> hook) ABSL_LOCKS_EXCLUDED(mu_);

  // KV calls (all methods) that reached `node`, and writes applied per key.
  int calls(int node) const ABSL_LOCKS_EXCLUDED(mu_);
  // KV.Batch request messages that reached any node.
  int batch_messages() const ABSL_LOCKS_EXCLUDED(mu_);
  int applies(const std::string& key) const ABSL_LOCKS_EXCLUDED(mu_);
  v1::ClusterMap Map() const ABSL_LOCKS_EXCLUDED(mu_);
  // Writes a key directly (versions as the server: +1 per put).
  void Seed(const std::string& key, const std::string& value) ABSL_LOCKS_EXCLUDED(mu_);

  class KvImpl;
  class ClusterImpl;

 private:
  friend class KvImpl;
  friend class ClusterImpl;
  struct Value {
    std::string value;
    uint64_t version = 0;
  };
  struct Session {
    uint64_t first_incomplete_seq = 0;
    std::map<uint64_t, std::string> results;  // seq -> serialized response
  };

  v1::ClusterMap MapLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<KvImpl>> kv_;
  std::vector<std::unique_ptr<ClusterImpl>> cluster_;
  std::vector<std::unique_ptr<grpc::Server>> servers_;

  mutable absl::Mutex mu_;
  std::vector<int> leaders_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> down_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> stopped_ ABSL_GUARDED_BY(mu_);
  std::vector<int> calls_ ABSL_GUARDED_BY(mu_);
  int batch_messages_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t epoch_ ABSL_GUARDED_BY(mu_);
  uint64_t applied_index_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<std::string, Value> data_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> applies_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<uint64_t, uint32_t>, Session> sessions_ ABSL_GUARDED_BY(mu_);
  std::map<std::pair<uint64_t, uint64_t>, int> seen_seqs_ ABSL_GUARDED_BY(mu_);
  std::function<FakeAction(const FakeCall&)> hook_ ABSL_GUARDED_BY(mu_);
};

// A not-leader error as the server sends it.
absl::Status NotLeaderError(uint64_t leader_node, const std::string& leader_address);

}  // namespace tessera::client::testing

#endif  // TESSERA_TESTS_CLIENT_FAKE_CLUSTER_H_
