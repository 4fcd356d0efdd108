// Storage faults on command, for tests only: a RaftLog and a KvStore that
// forward every call to real ones (an Engine's, or the Mem* ones) but fail
// chosen operations with an injected I/O error while a switch is on, as
// google/leveldb's db/fault_injection_test.cc does with its Env. They prove
// the fail-stop path (server/README.md "Fail-stop") end to end:
// tessera-server runs on them with --testing-storage-faults=FILE
// (server/cmd/flags.cc), and tests/server/cmd/storage_faults_test.cc switches
// a fault on for one node of a real cluster.
//
// A failed operation writes nothing (it is refused before it reaches the
// wrapped store), as a real storage error leaves the stores: an error means
// "nothing of this call was written". Reads (State, Entries, Term, Get,
// Scan, ExportSnapshot, AppliedIndex...) never fail.
//
// Where the switches come from: FaultInjector::Fail()/Heal() (unit tests),
// and optionally a control file read on each checked operation:
//   - absent: no operation fails because of the file;
//   - present: the operations it names fail (words separated by whitespace
//     or commas: save, sync, apply, install, compact, or all); an empty file
//     means all; a word that names no operation makes every operation fail
//     with a message naming the word (so a typo shows in the node's fatal
//     line instead of being ignored).
// Write it atomically (a temporary file renamed over it) so that a reader
// never sees it half written. Each checked operation costs one stat() of the
// file (the file is re-read only when its inode, size or mtime changed).
//
// Not for production: the library (tessera_storage_faults) is linked only by
// what asks for it, and tessera-server builds the wrappers only when the
// testing flag is given. Thread-safe, like the stores they wrap; the wrapped
// stores and the FaultInjector must outlive the wrappers.
#ifndef TESSERA_STORAGE_FAULT_INJECTION_H_
#define TESSERA_STORAGE_FAULT_INJECTION_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "storage/engine.h"
#include "storage/kv_store.h"
#include "storage/raft_log.h"

namespace tessera::storage {

// The operations a fault can hit, with their control-file names.
enum class FaultOp : int {
  kSave = 0,  // "save": RaftLog::Save (any durability)
  // "sync": every synced write: RaftLog::Save with Durability::kSynced,
  // KvStore::InstallSnapshot, KvStore::Sync, RaftLog/KvStore::DeleteShard. A buffered Save
  // (a commit-index-only hard state) still succeeds, as a WAL write does
  // when only fsync fails.
  kSync,
  kApply,            // "apply": KvStore::Apply
  kInstallSnapshot,  // "install": KvStore::InstallSnapshot
  kCompact,          // "compact": RaftLog::Compact
};
inline constexpr int kNumFaultOps = 5;

// "save", "sync", "apply", "install", "compact".
absl::string_view FaultOpName(FaultOp op);
// The op named `name` (one of the above); nullopt for any other word.
std::optional<FaultOp> ParseFaultOp(absl::string_view name);

// The switches: which operations fail now. Thread-safe.
class FaultInjector {
 public:
  // `control_file` empty: only Fail()/Heal() switch faults.
  explicit FaultInjector(std::string control_file = "");
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // Switches `op` on (it fails until healed) or off. The control file's
  // switches are separate: an op fails while either has it on.
  void Fail(FaultOp op);
  void Heal(FaultOp op);
  void HealAll();

  // OK if `op` may go ahead; otherwise the error it returns instead:
  // kInternal (what storage returns for a RocksDB I/O error) "injected I/O
  // error: storage fault \"<op>\" is on (<where>)", and the op's failure
  // count goes up.
  absl::Status Check(FaultOp op) ABSL_LOCKS_EXCLUDED(mu_);

  // Operations refused so far because of `op`'s switch.
  uint64_t failures(FaultOp op) const;
  const std::string& control_file() const { return control_file_; }

 private:
  // The file's switches as a bit mask (bit i = FaultOp i), re-read when the
  // file changed; `error` says why a malformed file fails everything.
  uint32_t FileMask(std::string* error) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string control_file_;
  std::atomic<uint32_t> manual_{0};
  std::array<std::atomic<uint64_t>, kNumFaultOps> failures_{};

  absl::Mutex mu_;
  // Identity of the control file last read (inode, size, mtime); valid_
  // false: never read or absent.
  bool valid_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t inode_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t size_ ABSL_GUARDED_BY(mu_) = -1;
  int64_t mtime_ns_ ABSL_GUARDED_BY(mu_) = 0;
  uint32_t file_mask_ ABSL_GUARDED_BY(mu_) = 0;
  std::string file_error_ ABSL_GUARDED_BY(mu_);
};

// A RaftLog that forwards to `base` and consults `faults` first: Save (save,
// and sync when synced), Compact (compact), DeleteShard (sync).
class FaultInjectingRaftLog final : public RaftLog {
 public:
  FaultInjectingRaftLog(RaftLog* base, FaultInjector* faults) : base_(base), faults_(faults) {}

  absl::StatusOr<LogState> State(ShardId shard) const override;
  absl::StatusOr<std::vector<ShardId>> Shards() const override;
  absl::StatusOr<std::vector<raftpb::Entry>> Entries(ShardId shard, uint64_t lo, uint64_t hi,
                                                     uint64_t max_bytes) const override;
  absl::StatusOr<uint64_t> Term(ShardId shard, uint64_t index) const override;
  absl::Status Compact(ShardId shard, uint64_t index) override;
  absl::Status DeleteShard(ShardId shard) override;

 protected:
  absl::Status DoSave(absl::Span<const LogUpdate> updates, Durability durability) override;

 private:
  RaftLog* const base_;
  FaultInjector* const faults_;
};

// A KvStore that forwards to `base` and consults `faults` first: Apply
// (apply), InstallSnapshot and a staged snapshot's Commit (install, sync),
// DeleteShard (sync). StageSnapshot stages on `base` (RocksDB: its SST
// staging), so a test installs snapshots the way production does.
class FaultInjectingKvStore final : public KvStore {
 public:
  FaultInjectingKvStore(KvStore* base, FaultInjector* faults) : base_(base), faults_(faults) {}

  absl::Status Apply(absl::Span<const ShardWrite> writes) override;
  absl::Status Sync() override;  // "sync" faults apply
  absl::StatusOr<std::string> Get(ShardId shard, absl::string_view key) const override;
  absl::StatusOr<std::string> GetMeta(ShardId shard, absl::string_view key) const override;
  absl::StatusOr<uint64_t> AppliedIndex(ShardId shard) const override;
  absl::StatusOr<ScanResult> Scan(ShardId shard, const ScanOptions& options) const override;
  absl::StatusOr<std::unique_ptr<ShardSnapshot>> ExportSnapshot(ShardId shard) const override;
  absl::Status InstallSnapshot(ShardId shard, uint64_t applied_index,
                               SnapshotReader& reader) override;
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> StageSnapshot(ShardId shard,
                                                                 uint64_t applied_index) override;
  absl::Status DeleteShard(ShardId shard) override;
  uint64_t ApproximateBytes(ShardId shard) const override { return base_->ApproximateBytes(shard); }

 private:
  KvStore* const base_;
  FaultInjector* const faults_;
};

// The two wrappers over one node's storage (an Engine's RaftLog and KvStore,
// or any pair), with their FaultInjector. Hand raft_log()/kv_store() to the
// Node and the StateMachine instead of the engine's. The wrapped stores must
// outlive it.
class FaultInjectionEngine {
 public:
  FaultInjectionEngine(RaftLog* log, KvStore* kv, std::string control_file = "")
      : faults_(std::move(control_file)), log_(log, &faults_), kv_(kv, &faults_) {}
  explicit FaultInjectionEngine(Engine* engine, std::string control_file = "")
      : FaultInjectionEngine(&engine->raft_log(), &engine->kv_store(), std::move(control_file)) {}
  FaultInjectionEngine(const FaultInjectionEngine&) = delete;
  FaultInjectionEngine& operator=(const FaultInjectionEngine&) = delete;

  RaftLog& raft_log() { return log_; }
  KvStore& kv_store() { return kv_; }
  FaultInjector& faults() { return faults_; }

 private:
  FaultInjector faults_;
  FaultInjectingRaftLog log_;
  FaultInjectingKvStore kv_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_FAULT_INJECTION_H_
