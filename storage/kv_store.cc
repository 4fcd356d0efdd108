#include "storage/kv_store.h"

namespace tessera::storage {

absl::StatusOr<bool> VectorSnapshotReader::Next(SnapshotRecord* out) {
  if (next_ >= records_.size()) return false;
  *out = records_[next_++];
  return true;
}

std::string PrefixEnd(absl::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    if (static_cast<uint8_t>(end.back()) != 0xFF) {
      end.back() = static_cast<char>(static_cast<uint8_t>(end.back()) + 1);
      return end;
    }
    end.pop_back();
  }
  return end;  // empty or all 0xFF: no upper bound
}

}  // namespace tessera::storage
