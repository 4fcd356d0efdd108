// The prefix of Abseil's raw log lines (ABSL_RAW_LOG, raft/'s invariant
// checks via TESSERA_RAFT_FATAL, Abseil's own internal errors), so that they
// read like every other line of tessera-server (spdlog's pattern in main.cc):
//
//   2026-12-03T11:31:05.394 F node3 shard=5 [raft/log.cc:120] commit 10 is out of range
//
// time (UTC, milliseconds), level (I, W, E, F), node, and the shard the
// thread is working on when there is one (LogShardScope), then the source
// location. Without it a fatal line is a bare "[file : line] RAW: ...".
//
// raft/ stays free of loggers, threads and clocks: the Node's raft loop says
// which shard it is stepping through a LogShardScope, and the hook installed
// by main.cc reads it. The hook runs in the failing thread, possibly in a
// signal handler or with locks held: it takes no lock and allocates nothing.
#ifndef TESSERA_SERVER_RAFTSTORE_LOG_PREFIX_H_
#define TESSERA_SERVER_RAFTSTORE_LOG_PREFIX_H_

#include <cstdint>

namespace tessera::server {

// Installs the prefix hook for node `node_id`. Call once, early in main().
void InstallRawLogPrefix(uint64_t node_id);

// While alive, raw log lines of this thread name `shard`. Nests (restores the
// previous shard). Not copyable; stack only.
class LogShardScope {
 public:
  explicit LogShardScope(uint64_t shard);
  ~LogShardScope();
  LogShardScope(const LogShardScope&) = delete;
  LogShardScope& operator=(const LogShardScope&) = delete;

 private:
  const bool had_;
  const uint64_t previous_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_LOG_PREFIX_H_
