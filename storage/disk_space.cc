#include "storage/disk_space.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace tessera::storage {

absl::StatusOr<uint64_t> FreeDiskBytes(const std::string& path) {
  struct statvfs st;
  if (statvfs(path.c_str(), &st) != 0) {
    return absl::InternalError(absl::StrCat("statvfs(", path, "): ", std::strerror(errno)));
  }
  return static_cast<uint64_t>(st.f_bavail) * static_cast<uint64_t>(st.f_frsize);
}

absl::Status DiskSpaceGuard::Check() const {
  if (min_free_bytes_ == 0) return absl::OkStatus();
  absl::StatusOr<uint64_t> free = FreeDiskBytes(dir_);
  if (!free.ok() || *free >= min_free_bytes_) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat("no space left on ", dir_, ": ", *free,
                                                   " bytes free, below the reserve of ",
                                                   min_free_bytes_, " bytes"));
}

absl::Status DiskSpaceGuard::Annotate(absl::Status s) const {
  if (s.code() != absl::StatusCode::kResourceExhausted ||
      absl::StartsWith(s.message(), "no space left on ")) {
    return s;
  }
  return absl::Status(s.code(), absl::StrCat("no space left on ", dir_, ": ", s.message()));
}

}  // namespace tessera::storage
