// Health: is this tessera-server alive, and is it ready to serve?
//
// Liveness (/healthz) says the process answers and its raft loop is alive:
// it fails (503 with the reason) once the loop stopped on an error (the
// process is about to exit) or has not completed a cycle for several
// election timeouts (wedged, e.g. on a hung disk). Readiness (/readyz and
// the standard grpc.health.v1.Health service on the client port) says the
// node can usefully take client traffic:
//   - it is a member of the cluster: the cluster map is loaded and names it;
//   - every local shard replica knows its leader and heard from it recently
//     (within `max_leader_silence`; the leader itself always has);
//   - every replica is caught up: commit_index - applied_index <= max_apply_lag;
//   - it is not draining (SIGTERM), and it is live.
// A node cut off from its peers loses its leaders within an election timeout
// and turns not ready; it turns ready again once it rejoins and catches up.
//
// HealthMonitor evaluates readiness on demand (/readyz) and on a poll thread
// that keeps the gRPC health service's status in step and logs transitions.
// Thread-safe. The sources must outlive the monitor's Stop() and every
// readiness call (stop the HTTP server first).
#ifndef TESSERA_SERVER_OBSERVABILITY_HEALTH_H_
#define TESSERA_SERVER_OBSERVABILITY_HEALTH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/health_check_service_interface.h"
#include "server/observability/metrics.h"
#include "server/raftstore/node.h"

namespace tessera::server {

struct ReadinessOptions {
  // Longest silence from a shard's leader a ready follower tolerates
  // (default: two election timeouts of the default tick).
  absl::Duration max_leader_silence = absl::Seconds(2);
  // Largest commit_index - applied_index of a ready replica.
  uint64_t max_apply_lag = 1000;
};

struct Readiness {
  bool ready = false;
  std::string reason;  // "ready", or the first reason it is not
};

// The readiness rule of the file comment, as a pure function.
Readiness EvaluateReadiness(bool member, bool draining, const std::vector<ShardStatus>& shards,
                            absl::Time now, const ReadinessOptions& options);

class HealthMonitor {
 public:
  struct Sources {
    std::function<bool()> member;                      // the map is loaded and names us
    std::function<std::vector<ShardStatus>()> shards;  // Node::Status
    std::function<absl::Status()> live;                // Node::Health; empty: live
  };

  explicit HealthMonitor(ReadinessOptions options) : options_(options) {}
  ~HealthMonitor() { Stop(); }
  HealthMonitor(const HealthMonitor&) = delete;
  HealthMonitor& operator=(const HealthMonitor&) = delete;

  // Until sources are set the node is "starting" (not ready).
  void SetSources(Sources sources) ABSL_LOCKS_EXCLUDED(mu_);
  // Kept in step with readiness for the service names "" (the whole server),
  // "tessera.v1.KV" and "tessera.v1.Cluster". Not owned; nullptr detaches.
  void SetGrpcHealth(grpc::HealthCheckServiceInterface* grpc_health) ABSL_LOCKS_EXCLUDED(mu_);
  // Not ready from now on (the node drains before exiting).
  void SetDraining() ABSL_LOCKS_EXCLUDED(mu_);

  Readiness Check() const ABSL_LOCKS_EXCLUDED(mu_);

  // Starts / stops the poll thread (every `interval`). Stop is idempotent.
  void Start(absl::Duration interval) ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

  // OK, or why the node is not live (Sources::live).
  absl::Status Liveness() const ABSL_LOCKS_EXCLUDED(mu_);

  // HTTP handlers: /healthz answers 200 "ok" or 503 with why it is not live;
  // /readyz 200 "ready" or 503 with the reason.
  MetricsHttpServer::Handler LivenessHandler() const;
  MetricsHttpServer::Handler ReadinessHandler() const;

 private:
  void Poll() ABSL_LOCKS_EXCLUDED(mu_);

  const ReadinessOptions options_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  Sources sources_ ABSL_GUARDED_BY(mu_);
  grpc::HealthCheckServiceInterface* grpc_health_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // Sets the gRPC health status (overall and per service), if any.
  void PublishLocked(bool serving) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int last_state_ ABSL_GUARDED_BY(mu_) = -1;  // -1 unknown, 0 not ready, 1 ready
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_OBSERVABILITY_HEALTH_H_
