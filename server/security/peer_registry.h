// PeerRegistry: the incarnation (DataDirIdentity) under which this node knows
// each other member, persisted in the data directory's file TESSERA-PEERS.
//
// Where it sits: PeerService calls Admit() before any message of a peer
// reaches the Node, and answers Peer.Hello from Known(). The first message of
// a member records its incarnation durably before the message is delivered;
// afterwards the same member id under another incarnation is refused: its
// data directory was replaced, so it may have forgotten votes and entries it
// acknowledged to us. (Replacing a member on purpose is a membership change:
// remove it, add a new member.)
//
// Format: text lines "<node id> <incarnation>", rewritten whole with
// WriteFileDurably (a new member is rare). Thread-safe.
#ifndef TESSERA_SERVER_SECURITY_PEER_REGISTRY_H_
#define TESSERA_SERVER_SECURITY_PEER_REGISTRY_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace tessera::server::security {

class PeerRegistry {
 public:
  // Reads `dir`/TESSERA-PEERS (absent: nobody known). kDataLoss if malformed.
  static absl::StatusOr<std::unique_ptr<PeerRegistry>> Open(const std::string& dir);
  // In memory only (tests, and nodes without a data directory).
  PeerRegistry() = default;

  // OK if `node` is known under `incarnation`, or unknown (then it is
  // recorded durably first). kFailedPrecondition (one line: what happened and
  // what to do) if it is known under another incarnation or `incarnation` is
  // 0; kUnavailable if the record cannot be written.
  absl::Status Admit(uint64_t node, uint64_t incarnation) ABSL_LOCKS_EXCLUDED(mu_);
  // Admits `node` under `incarnation` from now on (durably first), whatever
  // it was known under: the cluster map records it as replaced (its data
  // was lost and it came back empty). kInvalidArgument for incarnation 0;
  // kUnavailable if the record cannot be written.
  absl::Status Replace(uint64_t node, uint64_t incarnation) ABSL_LOCKS_EXCLUDED(mu_);
  // The incarnation `node` is known under; 0 if unknown.
  uint64_t Known(uint64_t node) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Sets known_[node] and rewrites the file; restores it if that fails.
  absl::Status Record(uint64_t node, uint64_t incarnation) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::string path_;  // empty: in memory only
  mutable absl::Mutex mu_;
  std::map<uint64_t, uint64_t> known_ ABSL_GUARDED_BY(mu_);
};

// The line for a member whose data directory was replaced.
std::string ReplacedMemberMessage(uint64_t node, uint64_t known, uint64_t presented);

}  // namespace tessera::server::security

#endif  // TESSERA_SERVER_SECURITY_PEER_REGISTRY_H_
