// Helpers shared by the storage tests: temporary directories and one
// "environment" per implementation, so that each conformance suite runs
// unchanged against MemRaftLog/MemKvStore and the RocksDB engine.
#ifndef TESSERA_TESTS_STORAGE_TEST_UTIL_H_
#define TESSERA_TESTS_STORAGE_TEST_UTIL_H_

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "storage/engine.h"
#include "storage/log_engine.h"
#include "storage/mem_kv_store.h"
#include "storage/mem_raft_log.h"
#include "tessera/raft.pb.h"

namespace tessera::storage::testing {

// A fresh directory under $TMPDIR (or /tmp), removed when destroyed.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/tessera-storage-XXXXXX";
    char* made = mkdtemp(pattern.data());
    if (made == nullptr) {
      ADD_FAILURE() << "mkdtemp failed for " << pattern;
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class MemEnv {
 public:
  static constexpr const char* kName = "Mem";
  RaftLog& raft_log() { return log_; }
  KvStore& kv_store() { return kv_; }

 private:
  MemRaftLog log_;
  MemKvStore kv_;
};

// The in-memory stores sharing a MemWal (crash simulation on): the same
// contract must hold.
class MemWalEnv {
 public:
  static constexpr const char* kName = "MemWal";
  RaftLog& raft_log() { return log_; }
  KvStore& kv_store() { return kv_; }

 private:
  MemWal wal_;  // outlives the stores
  MemRaftLog log_{&wal_};
  MemKvStore kv_{&wal_};
};

class RocksEnv {
 public:
  static constexpr const char* kName = "Rocks";
  RocksEnv() { Reopen(); }
  // Closes and reopens the engine on the same directory.
  void Reopen() {
    engine_.reset();
    absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir_.path() + "/db", {});
    if (!engine.ok()) {
      ADD_FAILURE() << engine.status();
      return;
    }
    engine_ = *std::move(engine);
  }
  RaftLog& raft_log() { return engine_->raft_log(); }
  KvStore& kv_store() { return engine_->kv_store(); }
  Engine& engine() { return *engine_; }
  const std::string& dir() const { return dir_.path(); }

 private:
  TempDir dir_;  // outlives engine_
  std::unique_ptr<Engine> engine_;
};

// The raft log engine on its own (no KvStore): `Options` picks segment and
// cache sizes, so that one variant reads everything from disk and rolls over
// and purges segments often.
template <uint64_t kSegmentBytes, uint64_t kCacheBytes>
class LogEngineEnvT {
 public:
  LogEngineEnvT() { Reopen(); }
  // Closes and reopens the log on the same directory (recovery).
  void Reopen() {
    log_.reset();
    absl::StatusOr<std::unique_ptr<LogEngine>> log = LogEngine::Open(dir(), options());
    if (!log.ok()) {
      ADD_FAILURE() << log.status();
      return;
    }
    log_ = *std::move(log);
  }
  static LogEngineOptions options() {
    LogEngineOptions o;
    o.segment_bytes = kSegmentBytes;
    o.cache_bytes = kCacheBytes;
    return o;
  }
  RaftLog& raft_log() { return *log_; }
  LogEngine& log_engine() { return *log_; }
  KvStore& kv_store() { return kv_; }
  std::string dir() const { return dir_.path() + "/raftlog"; }

 private:
  TempDir dir_;  // outlives log_
  std::unique_ptr<LogEngine> log_;
  MemKvStore kv_;
};
struct LogEngineEnv : LogEngineEnvT<1 << 20, 4 << 20> {
  static constexpr const char* kName = "LogEngine";
};
// Every read goes to disk; 16 KiB segments roll over and get purged.
struct LogEngineSmallEnv : LogEngineEnvT<16 << 10, 0> {
  static constexpr const char* kName = "LogEngineNoCacheSmallSegments";
};

struct EnvNames {
  template <typename T>
  static std::string GetName(int) {
    return T::kName;
  }
};

inline raftpb::Entry MakeEntry(uint64_t index, uint64_t term, std::string data = "") {
  raftpb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_data(data.empty() ? "entry-" + std::to_string(index) : std::move(data));
  return e;
}

}  // namespace tessera::storage::testing

#endif  // TESSERA_TESTS_STORAGE_TEST_UTIL_H_
