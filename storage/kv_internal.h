// Internal to storage/: validation and scan bookkeeping shared by MemKvStore
// and the RocksDB KvStore so both behave identically. Not thread-safe.
#ifndef TESSERA_STORAGE_KV_INTERNAL_H_
#define TESSERA_STORAGE_KV_INTERNAL_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "storage/kv_store.h"

namespace tessera::storage::internal {

// kInvalidArgument for an empty key.
absl::Status CheckKey(absl::string_view key);
// kInvalidArgument for a mutation with an empty key.
absl::Status CheckMutations(const ShardWrite& write);
// kFailedPrecondition unless write.applied_index > current_applied.
absl::Status CheckAppliedIndex(const ShardWrite& write, uint64_t current_applied);
// kInvalidArgument if end is set and start > end.
absl::Status CheckScanOptions(const ScanOptions& options);

// Checks that the records of a staged snapshot come in ExportSnapshot()
// order: meta first, then data, each in strictly increasing key order, keys
// non-empty. Keeps only the previous key.
class SnapshotOrder {
 public:
  // kInvalidArgument for an empty key or a record out of order.
  absl::Status Check(const SnapshotRecord& record);

 private:
  bool any_ = false;
  bool last_meta_ = true;
  std::string last_key_;
};

// Collects the items of one Scan page, honouring limit and max_bytes.
//   for each (key, value) in range:
//     if (collector.Full()) { collector.SetResume(key); break; }
//     collector.Add(key, value);
class ScanCollector {
 public:
  explicit ScanCollector(const ScanOptions& options) : options_(options) {}
  bool Full() const;
  void Add(absl::string_view key, absl::string_view value);
  void SetResume(absl::string_view next_key);
  ScanResult Finish() { return std::move(result_); }

 private:
  const ScanOptions& options_;
  uint64_t bytes_ = 0;
  ScanResult result_;
};

}  // namespace tessera::storage::internal

#endif  // TESSERA_STORAGE_KV_INTERNAL_H_
