// tessera-server: one node of a Tessera cluster.
//
//   tessera-server --node-id=1 --data-dir=/var/lib/tessera
//     --initial-cluster=1=10.0.0.1:7001/10.0.0.1:7101,2=...,3=...
//   tessera-server --node-id=4 --data-dir=... --join=10.0.0.1:7001
//     (a member added with `tessera cluster add-node`)
//
// Startup, one log line per step: parse flags (and --config), build the
// cluster map, open the storage engine, create the state machine, start the
// peer transport and its service (--peer-listen), start the Node (every
// shard replica this node hosts), start the client API (--listen), write
// --port-file. Then it serves until SIGTERM or SIGINT (SIGHUP: checks the
// certificate files and logs the verdict), and drains: hands
// shard leadership to other replicas, refuses new calls (UNAVAILABLE) and
// finishes in-flight ones (each step bounded by --drain-timeout-ms), closes
// the client API, stops the Node, the peer
// service and the transport, closes the engine and exits 0.
//
// The parts and their order are server.h's (Server); flags are flags.h's.
// This file owns the process: signals, logging, exit codes.
//
// The client API answers UNAVAILABLE until the cluster map has been loaded
// from the metadata group (server/cluster/meta_group.h: bootstrapped by its first leader
// with the map computed from the flags). If the stored bootstrap map differs
// from the flags' map, the node logs one "refusing to serve" line and exits
// 2; once the stored map has changed, it rules over the flags.
//
// Exit codes: 0 after a clean drain, or once the stored map no longer names
// this node (decommissioned by `tessera cluster remove-node`); 1 when
// startup fails (storage, ports, no member answering --join); 2 for bad
// flags (one line on stderr), a map that conflicts with the metadata
// group's, or --join to a cluster that has not added this node; 3 when storage fails (the raft loop
// stopped on a storage error, or the disk is full, at start too), after one "fatal: ..." line. kill
// -9 is safe at any point: every acknowledged write is durable in the engine's WAL before it is
// acknowledged.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/cmd/flags.h"
#include "server/cmd/server.h"
#include "server/observability/grpc_log.h"
#include "server/raftstore/log_prefix.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"

namespace tessera::server {
namespace {

// Why this node stops, set by the Server's hooks on their threads; a signal
// then wakes the main thread's sigwait: SIGUSR1 for a refusal (exit 2),
// SIGUSR2 for a storage failure (exit 3).
absl::Mutex why_mu;
absl::Status refusal ABSL_GUARDED_BY(why_mu);
absl::Status fatal ABSL_GUARDED_BY(why_mu);

absl::Status Refusal() {
  absl::MutexLock lock(&why_mu);
  return refusal;
}

absl::Status Fatal() {
  absl::MutexLock lock(&why_mu);
  return fatal;
}

int Run(const ServerConfig& config, const sigset_t& signals) {
  ServerHooks hooks{.on_refusal =
                        [](const absl::Status& why) {
                          {
                            absl::MutexLock lock(&why_mu);
                            refusal = why;
                          }
                          kill(getpid(), SIGUSR1);
                        },
                    .on_fatal =
                        [](const absl::Status& why) {
                          {
                            absl::MutexLock lock(&why_mu);
                            fatal = why;
                          }
                          kill(getpid(), SIGUSR2);
                        },
                    .on_drain_requested = [] { kill(getpid(), SIGTERM); }};
  absl::StatusOr<std::unique_ptr<Server>> server = Server::Start(config, std::move(hooks));
  if (!server.ok()) {
    spdlog::error("{}", std::string(server.status().message()));
    return server.status().code() == absl::StatusCode::kFailedPrecondition ? kExitRefused
                                                                           : kExitStartFailure;
  }

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  // SIGHUP: the certificate files are checked now (gRPC reloads them by
  // itself, security/tls.h); bounded by the signals a user sends.
  while (signal_number == SIGHUP) {
    (*server)->RecheckCertificates();
    sigwait(&signals, &signal_number);
  }
  if (signal_number == SIGUSR2) ExitOnStorageFailure(Fatal());
  if (signal_number == SIGUSR1) {
    const absl::Status why = Refusal();
    if (why.code() == absl::StatusCode::kNotFound) {
      // Decommissioned: its replicas moved away before the map dropped it.
      spdlog::info("{}; exiting", std::string(why.message()));
      (*server)->Stop();
      return 0;
    }
    spdlog::error("refusing to serve: {}", std::string(why.message()));
    (*server)->Stop();
    return kExitRefused;
  }
  spdlog::info("received {}: draining (up to {} ms per step)", strsignal(signal_number),
               absl::ToInt64Milliseconds(config.drain_timeout));
  absl::Status drained = (*server)->Drain();
  if (!drained.ok()) ExitOnStorageFailure(drained);
  return 0;
}

}  // namespace
}  // namespace tessera::server

int main(int argc, char** argv) {
  // Signals are taken synchronously by sigwait() in Run(): block them before
  // any thread starts so every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGUSR1);  // the MetaGroup: the stored map conflicts with the flags
  sigaddset(&signals, SIGUSR2);  // NodeOptions::on_fatal: the raft loop stopped
  sigaddset(&signals, SIGHUP);   // check the certificate files now
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  // Debian builds Abseil with Mutex deadlock detection on: every lock (gRPC
  // takes many per request) then updates a global lock graph, a few % of the
  // server's CPU. Tests keep it on; the server runs without it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  absl::StatusOr<tessera::server::ServerConfig> config =
      tessera::server::ParseServerFlags(argc, argv);
  if (!config.ok()) {
    std::fprintf(stderr, "tessera-server: %s\n", std::string(config.status().message()).c_str());
    // A cluster to join that does not answer is a start failure, not bad flags.
    return config.status().code() == absl::StatusCode::kUnavailable ? 1 : 2;
  }
  auto logger = spdlog::stderr_logger_mt("tessera");
  // UTC, as the raw (Abseil, raft invariant) lines of InstallRawLogPrefix.
  logger->set_pattern(absl::StrCat("%Y-%m-%dT%H:%M:%S.%e %L node", config->node_id, " %v"),
                      spdlog::pattern_time_type::utc);
  tessera::server::InstallRawLogPrefix(config->node_id);
  tessera::server::RouteGrpcCoreLogs();
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
  spdlog::set_level(config->log_level);
  spdlog::info("tessera-server starting: node {}, data dir {}", config->node_id, config->data_dir);
  return tessera::server::Run(*config, signals);
}
