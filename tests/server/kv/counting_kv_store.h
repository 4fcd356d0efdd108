// CountingKvStore: a KvStore that forwards to another and counts the calls
// the StateMachine makes on its hot path (point reads of user and meta keys,
// applied-index reads, Apply calls and the mutations they carry). Used by
// state_machine_test.cc and tests/bench/kv/sm_apply_bench.cc to measure reads
// and writes per put. Not thread-safe (counters are plain integers): use it
// from one thread.
#ifndef TESSERA_TESTS_SERVER_KV_COUNTING_KV_STORE_H_
#define TESSERA_TESTS_SERVER_KV_COUNTING_KV_STORE_H_

#include <cstdint>
#include <memory>

#include "storage/kv_store.h"

namespace tessera::server::testing {

class CountingKvStore : public storage::KvStore {
 public:
  struct Counts {
    uint64_t gets = 0;            // Get (user keys)
    uint64_t get_metas = 0;       // GetMeta
    uint64_t applied_reads = 0;   // AppliedIndex
    uint64_t applies = 0;         // Apply calls
    uint64_t puts = 0;            // kPut mutations
    uint64_t deletes = 0;         // kDelete mutations
    uint64_t meta_puts = 0;       // kPutMeta mutations
    uint64_t meta_deletes = 0;    // kDeleteMeta mutations
    uint64_t meta_put_bytes = 0;  // key + value bytes of kPutMeta mutations
    uint64_t exports = 0;         // ExportSnapshot calls
    uint64_t reads() const { return gets + get_metas; }
    uint64_t writes() const { return puts + deletes + meta_puts + meta_deletes; }
  };

  // `base` is not owned and must outlive this store.
  explicit CountingKvStore(storage::KvStore* base) : base_(base) {}

  const Counts& counts() const { return counts_; }
  void Reset() { counts_ = Counts(); }

  absl::Status Apply(absl::Span<const storage::ShardWrite> writes) override {
    ++counts_.applies;
    for (const storage::ShardWrite& w : writes) {
      for (const storage::Mutation& m : w.mutations) {
        switch (m.kind) {
          case storage::Mutation::Kind::kPut:
            ++counts_.puts;
            break;
          case storage::Mutation::Kind::kDelete:
            ++counts_.deletes;
            break;
          case storage::Mutation::Kind::kPutMeta:
            ++counts_.meta_puts;
            counts_.meta_put_bytes += m.key.size() + m.value.size();
            break;
          case storage::Mutation::Kind::kDeleteMeta:
          case storage::Mutation::Kind::kDeleteMetaRange:
            ++counts_.meta_deletes;
            break;
        }
      }
    }
    return base_->Apply(writes);
  }
  absl::StatusOr<std::string> Get(ShardId shard, absl::string_view key) const override {
    ++counts_.gets;
    return base_->Get(shard, key);
  }
  absl::StatusOr<std::string> GetMeta(ShardId shard, absl::string_view key) const override {
    ++counts_.get_metas;
    return base_->GetMeta(shard, key);
  }
  absl::StatusOr<uint64_t> AppliedIndex(ShardId shard) const override {
    ++counts_.applied_reads;
    return base_->AppliedIndex(shard);
  }
  absl::Status Sync() override { return base_->Sync(); }
  absl::StatusOr<storage::ScanResult> Scan(ShardId shard,
                                           const storage::ScanOptions& options) const override {
    return base_->Scan(shard, options);
  }
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> ExportSnapshot(
      ShardId shard) const override {
    ++counts_.exports;
    return base_->ExportSnapshot(shard);
  }
  absl::Status InstallSnapshot(ShardId shard, uint64_t applied_index,
                               storage::SnapshotReader& reader) override {
    return base_->InstallSnapshot(shard, applied_index, reader);
  }
  absl::StatusOr<std::unique_ptr<storage::SnapshotStaging>> StageSnapshot(
      ShardId shard, uint64_t applied_index) override {
    return base_->StageSnapshot(shard, applied_index);
  }
  absl::Status DeleteShard(ShardId shard) override { return base_->DeleteShard(shard); }
  uint64_t ApproximateBytes(ShardId shard) const override { return base_->ApproximateBytes(shard); }

 private:
  storage::KvStore* const base_;
  mutable Counts counts_;
};

}  // namespace tessera::server::testing

#endif  // TESSERA_TESTS_SERVER_KV_COUNTING_KV_STORE_H_
