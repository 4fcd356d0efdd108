#include "server/security/peer_registry.h"

#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "server/security/data_dir_identity.h"

namespace tessera::server::security {

std::string ReplacedMemberMessage(uint64_t node, uint64_t known, uint64_t presented) {
  return absl::StrCat("node ", node, " presents data directory incarnation ", presented,
                      " but was known as incarnation ", known,
                      ": its data is gone (wiped or replaced), so it may have forgotten what it "
                      "acknowledged; do not restart it under its old identity: remove the member "
                      "and add a new one");
}

absl::StatusOr<std::unique_ptr<PeerRegistry>> PeerRegistry::Open(const std::string& dir) {
  auto registry = std::make_unique<PeerRegistry>();
  registry->path_ = absl::StrCat(dir, "/TESSERA-PEERS");
  std::ifstream in(registry->path_);
  if (!in) return registry;
  std::string line;
  absl::MutexLock lock(&registry->mu_);
  for (int number = 1; std::getline(in, line); ++number) {
    std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
    if (fields.empty()) continue;
    uint64_t node = 0, incarnation = 0;
    if (fields.size() != 2 || !absl::SimpleAtoi(fields[0], &node) ||
        !absl::SimpleAtoi(fields[1], &incarnation) || node == 0 || incarnation == 0) {
      return absl::DataLossError(
          absl::StrCat(registry->path_, ":", number, ": expected '<node id> <incarnation>'"));
    }
    registry->known_[node] = incarnation;
  }
  return registry;
}

absl::Status PeerRegistry::Admit(uint64_t node, uint64_t incarnation) {
  if (incarnation == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("node ", node, " sent no data directory incarnation"));
  }
  absl::MutexLock lock(&mu_);
  auto it = known_.find(node);
  if (it != known_.end()) {
    if (it->second == incarnation) return absl::OkStatus();
    return absl::FailedPreconditionError(ReplacedMemberMessage(node, it->second, incarnation));
  }
  // Durable before the first message of this incarnation is delivered. Rare
  // (once per member), so writing under the lock is fine.
  return Record(node, incarnation);
}

absl::Status PeerRegistry::Replace(uint64_t node, uint64_t incarnation) {
  if (incarnation == 0) return absl::InvalidArgumentError("incarnation 0");
  absl::MutexLock lock(&mu_);
  auto it = known_.find(node);
  if (it != known_.end() && it->second == incarnation) return absl::OkStatus();
  return Record(node, incarnation);
}

absl::Status PeerRegistry::Record(uint64_t node, uint64_t incarnation) {
  std::optional<uint64_t> before;
  if (auto it = known_.find(node); it != known_.end()) before = it->second;
  known_[node] = incarnation;
  if (path_.empty()) return absl::OkStatus();
  std::string content;
  for (const auto& [id, inc] : known_) absl::StrAppend(&content, id, " ", inc, "\n");
  absl::Status written = WriteFileDurably(path_, content);
  if (!written.ok()) {
    if (before.has_value()) {
      known_[node] = *before;
    } else {
      known_.erase(node);
    }
  }
  return written;
}

uint64_t PeerRegistry::Known(uint64_t node) const {
  absl::MutexLock lock(&mu_);
  auto it = known_.find(node);
  return it == known_.end() ? 0 : it->second;
}

}  // namespace tessera::server::security
