// DataDirIdentity: who a data directory belongs to, kept in the file
// TESSERA-IDENTITY next to the storage engine's files (RocksDB has its own
// IDENTITY file there).
//
// A node must never take part in raft with state that is not its own: a
// directory of another cluster holds logs and terms of other groups, a
// directory copied from another member would inherit that member's votes, and
// a wiped directory has forgotten what its member acknowledged (it could vote
// in a leader that lacks committed entries). So the directory records the
// member id it was created for and a random incarnation, fixed at creation.
// The incarnation travels with every peer message; peers remember it
// (PeerRegistry) and refuse the same member id under another incarnation.
//
// Format: text lines "tessera-data-dir 1", "cluster_id=<u64>", "node_id=<id>",
// "incarnation=<non-zero u64>". Written to a temp file, fsynced, renamed, and
// the directory fsynced: a crash leaves either no identity or a complete one.
#ifndef TESSERA_SERVER_SECURITY_DATA_DIR_IDENTITY_H_
#define TESSERA_SERVER_SECURITY_DATA_DIR_IDENTITY_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace tessera::server::security {

inline constexpr char kIdentityFileName[] = "TESSERA-IDENTITY";

struct DataDirIdentity {
  uint64_t cluster_id = 0;  // ClusterMap::cluster_id()
  uint64_t node_id = 0;
  uint64_t incarnation = 0;
  // True when this call created the identity: the directory held none
  // (a new member, or one whose data is gone).
  bool created = false;
};

// Reads `dir`'s identity, or creates one for `cluster_id` and `node_id`
// (with a random incarnation) when the directory has none. Errors:
// kFailedPrecondition when the directory belongs to another cluster or
// member (one line naming both);
// kDataLoss when the identity file is unreadable or malformed; kUnavailable when it
// cannot be written.
absl::StatusOr<DataDirIdentity> LoadOrCreateIdentity(const std::string& dir, uint64_t cluster_id,
                                                     uint64_t node_id);

// A data directory created for a member whose earlier one was lost (its
// peers knew it under another incarnation) records in
// TESSERA-REPLACEMENT, text "replaced_at_map_version=<V>", the cluster map
// version that records the replacement (0 while not known yet), written
// durably before the member asks to be replaced. Such a member founds no
// group and hosts no replica by a map older than V (server.cc).
inline constexpr char kReplacementFileName[] = "TESSERA-REPLACEMENT";
// nullopt: no such record (not a replacement). kDataLoss if malformed.
absl::StatusOr<std::optional<uint64_t>> LoadReplacement(const std::string& dir);
absl::Status SaveReplacement(const std::string& dir, uint64_t map_version);

// Writes `content` to `path` so that a crash leaves the old or the new
// content: temp file, fsync, rename, fsync of the directory.
absl::Status WriteFileDurably(const std::string& path, const std::string& content);

}  // namespace tessera::server::security

#endif  // TESSERA_SERVER_SECURITY_DATA_DIR_IDENTITY_H_
