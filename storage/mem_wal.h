// MemWal: the write-ahead log shared by a MemRaftLog and a MemKvStore, so that
// the in-memory engine can crash the way the RocksDB engine does
// (README.md "What a crash leaves behind" and "Durability contract").
//
// The RocksDB engine writes every RaftLog and KvStore mutation to one WAL and
// recovers it as a prefix. A synced write (RaftLog::Save with kSynced,
// KvStore::InstallSnapshot, both DeleteShard) makes itself and every earlier
// write durable; the others (a kBuffered Save, KvStore::Apply,
// RaftLog::Compact) survive a process crash (kill -9) but may be lost on power
// loss, and then so is every write after them. MemWal models exactly that:
//
//   storage::MemWal wal;
//   storage::MemRaftLog log(&wal);
//   storage::MemKvStore kv(&wal);
//   ... writes ...
//   wal.SimulateCrash(/*keep_unsynced=*/0);  // power loss: back to the last sync
//   wal.SimulateCrash(wal.unsynced_writes()); // kill -9: nothing is lost
//
// A crash can also be scheduled inside a write (CrashAtWrite): that write and
// every later one fail with kUnavailable and write nothing, as if the process
// died during it, until SimulateCrash() restores the stores.
//
// Thread-safe for writes (the stores record each write under their own lock,
// then take the WAL's; never the other order). SimulateCrash() must not run
// concurrently with writes to the attached stores (nothing writes to a
// crashed node's storage). Not copyable; must outlive the attached stores.
#ifndef TESSERA_STORAGE_MEM_WAL_H_
#define TESSERA_STORAGE_MEM_WAL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"

namespace tessera::storage {

class MemWal {
 public:
  MemWal() = default;
  MemWal(const MemWal&) = delete;
  MemWal& operator=(const MemWal&) = delete;

  // Writes since the last synced one (what a power loss may lose).
  size_t unsynced_writes() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return pending_.size();
  }
  // Synced writes so far (each one also covered every write before it).
  uint64_t syncs() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return syncs_;
  }

  // The `n`-th write from now on (1 = the next one) and every write after it
  // fail with kUnavailable ("simulated crash during a write") without writing
  // anything, until SimulateCrash(). 0 cancels a scheduled crash.
  void CrashAtWrite(uint64_t n) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    crash_countdown_ = n;
  }
  // True once a write failed because of CrashAtWrite.
  bool crashed() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return crashed_;
  }

  // Crash and recovery: the attached stores go back to their state after the
  // last synced write plus the first `keep_unsynced` writes after it (capped
  // at unsynced_writes()): 0 is a power loss that lost every unsynced write,
  // unsynced_writes() a process crash that lost nothing, anything between a
  // power loss that kept a prefix. Clears a scheduled or happened crash.
  void SimulateCrash(size_t keep_unsynced) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      for (size_t i = 0; i < pending_.size() && i < keep_unsynced; ++i) pending_[i]();
      pending_.clear();
      crashed_ = false;
      crash_countdown_ = 0;
    }
    // No write runs concurrently (see the class comment), so the durable
    // images are stable here.
    for (const std::function<void()>& restore : restores_) restore();
  }

  // --- For MemRaftLog / MemKvStore ---

  // Registers a store: `restore` replaces its live state with its durable
  // image. Called from the store's constructor.
  void Attach(std::function<void()> restore) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    restores_.push_back(std::move(restore));
  }
  // Called (under the store's lock) before a write: kUnavailable when the
  // write must not happen because of CrashAtWrite.
  absl::Status BeginWrite() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (!crashed_ && crash_countdown_ > 0 && --crash_countdown_ == 0) crashed_ = true;
    if (crashed_) return absl::UnavailableError("simulated crash during a write");
    return absl::OkStatus();
  }
  // Called (under the store's lock) after a write that changed the live
  // state: `replay` does the same to the store's durable image. A synced
  // write replays every pending write, in order, then itself.
  void Record(std::function<void()> replay, bool synced) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    pending_.push_back(std::move(replay));
    if (!synced) return;
    for (std::function<void()>& f : pending_) f();
    pending_.clear();
    ++syncs_;
  }

 private:
  mutable absl::Mutex mu_;
  // Writes not yet covered by a sync, in order; each replays itself onto its
  // store's durable image (which only these closures touch, under mu_).
  std::vector<std::function<void()>> pending_ ABSL_GUARDED_BY(mu_);
  std::vector<std::function<void()>> restores_;  // written by Attach only, before any write
  uint64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t crash_countdown_ ABSL_GUARDED_BY(mu_) = 0;
  bool crashed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_MEM_WAL_H_
