// DiskSpaceGuard: keeps the engine from filling its disk.
//
// RocksDB does not survive a full disk well: once a WAL write fails with
// ENOSPC, the next use of that file aborts on an assertion in Debian's build
// (`sync_without_flush_called_`), with no word about the disk, and a restart
// on the still-full disk aborts the same way. So the RocksDB RaftLog and
// KvStore ask the guard before each write that adds data: below
// `min_free_bytes` free on the filesystem of `dir` (statvfs, the space an
// unprivileged writer may use) the write is refused with kResourceExhausted
// "no space left on <dir>: ..." and nothing is written. The reserve must
// cover what RocksDB writes on its own between two checks (a memtable flush,
// a compaction, WAL preallocation). A RocksDB ENOSPC that happens anyway gets
// the same "no space left on <dir>" message through Annotate().
//
// Immutable; thread-safe.
#ifndef TESSERA_STORAGE_DISK_SPACE_H_
#define TESSERA_STORAGE_DISK_SPACE_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tessera::storage {

// Bytes available to an unprivileged writer on the filesystem of `path`.
// Errors: kInternal (statvfs failed; the message has strerror).
absl::StatusOr<uint64_t> FreeDiskBytes(const std::string& path);

class DiskSpaceGuard {
 public:
  // `min_free_bytes` 0: no check (Check() is always OK, no system call).
  DiskSpaceGuard(std::string dir, uint64_t min_free_bytes)
      : dir_(std::move(dir)), min_free_bytes_(min_free_bytes) {}

  // OK if at least min_free_bytes are free (or statvfs fails: the write
  // itself will tell). kResourceExhausted "no space left on <dir>: N bytes
  // free, below the reserve of M bytes" otherwise.
  absl::Status Check() const;

  // `s`, with "no space left on <dir>: " in front if it is a disk-full error
  // of the storage engine (kResourceExhausted).
  absl::Status Annotate(absl::Status s) const;

  const std::string& dir() const { return dir_; }

 private:
  const std::string dir_;
  const uint64_t min_free_bytes_;
};

}  // namespace tessera::storage

#endif  // TESSERA_STORAGE_DISK_SPACE_H_
