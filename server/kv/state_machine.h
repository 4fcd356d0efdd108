// StateMachine: the replicated key-value state of every shard on a node.
//
// Where it sits: the Node's raft loop applies committed serverpb::Commands
// through Apply() (the Applier interface), in one KvStore write per ready
// cycle together with each shard's applied index; the KV service reads
// through Get()/Scan() after the Node's read barrier.
//
// What it stores in a shard's KvStore namespace (the format is on disk, and
// every replica must produce the same bytes from the same log):
//  - user key -> (version, value): the key's version (1 on creation, +1 per
//    put; a delete removes the key, a later put starts again at 1);
//  - meta records for exactly-once sessions: per client_id the results of
//    writes the client may still retry (seq >= first_incomplete_seq), plus a
//    least-recently-used order of sessions by the log index that last used
//    them. At most max_sessions_per_shard sessions are kept; the least
//    recently used one is evicted (deterministically, as part of applying a
//    command), after which a retry on it fails with kFailedPrecondition.
// Exact encodings: sm_format.h. The full session rules (and the client's side
// of the contract: a first write to a shard carries first_incomplete_seq <= 1;
// an unknown session with first_incomplete_seq > 1 was evicted and is
// refused): state_machine.cc and server/README.md "State machine".
//
// Thread-safety: Apply() is called by the raft loop thread only. Get()/Scan()
// are thread-safe and read the last applied state.
#ifndef TESSERA_SERVER_KV_STATE_MACHINE_H_
#define TESSERA_SERVER_KV_STATE_MACHINE_H_

#include <cstddef>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/raftstore/applier.h"
#include "storage/kv_store.h"
#include "tessera/command.pb.h"
#include "tessera/kv.pb.h"

namespace tessera::server {

struct StateMachineOptions {
  // Sessions remembered per shard; the least recently used is evicted.
  size_t max_sessions_per_shard = 10000;
  // Results remembered per session (writes still in flight at the client).
  size_t max_results_per_session = 1024;
  // Default and maximum number of items of one Scan response.
  uint32_t default_scan_limit = 1000;
  uint32_t max_scan_limit = 10000;
};

class StateMachine : public Applier {
 public:
  // `kv` is not owned and must outlive the StateMachine.
  StateMachine(storage::KvStore* kv, const StateMachineOptions& options);

  // See Applier. Per command:
  //  - a session write whose seq was already applied returns the remembered
  //    result and changes nothing;
  //  - seq < the session's first_incomplete_seq (or on an evicted session):
  //    code kFailedPrecondition, nothing changes;
  //  - Put/Delete/Txn execute against the state including earlier entries of
  //    the same batch; a Txn's compares and ops see one consistent state;
  //  - a bad command (empty key, no operation, bad compare, session seq 0)
  //    or undecodable entry data: code kInvalidArgument, nothing changes.
  // Skipped entries (at or below the applied index) and empty entries get an
  // empty CommandResult (code 0, no response). On error `results` is cleared
  // and nothing of the batch is written: storage errors, or kDataLoss for a
  // corrupt stored value or session record.
  absl::Status Apply(absl::Span<const CommittedEntry> entries,
                     std::vector<serverpb::CommandResult>* results) override;

  // The key's value and version; found=false if absent. Errors: storage
  // errors; kDataLoss if the stored value is corrupt.
  absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const;

  // One page of keys of one shard in key order (request.start/end/prefix/
  // limit/continuation as documented in kv.proto). The continuation is opaque
  // to clients. Errors: kInvalidArgument for prefix combined with start/end,
  // start > end, or a continuation this shard did not produce (malformed,
  // another shard's, or outside the requested range); kDataLoss for a corrupt
  // stored value. limit 0 means default_scan_limit; it is capped at
  // max_scan_limit, and a page also stops after about 2 MiB.
  absl::StatusOr<v1::ScanResponse> Scan(ShardId shard, const v1::ScanRequest& request) const;

 private:
  storage::KvStore* const kv_;
  const StateMachineOptions options_;
};

// The fingerprint a session remembers with a result (CommandResult.
// request_fingerprint): XXH3_64bits of the command's operation (its kind and
// its serialized message, session excluded), never 0. A retry with the same
// seq must carry the same operation; another one is refused.
uint64_t RequestFingerprint(const serverpb::Command& command);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_STATE_MACHINE_H_
