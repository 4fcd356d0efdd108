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
//    writes the client may still retry (seq >= first_incomplete_seq), and
//    the log index that last used the session (its least-recently-used
//    order). At most max_sessions_per_shard sessions are kept; the least
//    recently used one is evicted (deterministically, as part of applying a
//    command), after which a retry on it fails with kFailedPrecondition.
//    The sessions live in memory (per shard, loaded on the shard's first
//    Apply and again whenever the store's applied index moved without this
//    StateMachine, i.e. after a snapshot install); storage holds a
//    checkpoint of the table plus delta windows of the changes since,
//    written in the same KvStore::Apply as the batch's data.
// Exact encodings: sm_format.h. The full session rules (and the client's side
// of the contract: a first write to a shard carries first_incomplete_seq <= 1;
// an unknown session with first_incomplete_seq > 1 was evicted and is
// refused): state_machine.cc and server/README.md "State machine".
//
// Memory: at most max_sessions_per_shard x max_results_per_session
// remembered results per shard (plus one open delta window of up to 16 KiB).
//
// Thread-safety: Apply() is called by the raft loop thread only (it owns the
// session tables). Get()/Scan() are thread-safe and read the last applied
// state from the KvStore.
#ifndef TESSERA_SERVER_KV_STATE_MACHINE_H_
#define TESSERA_SERVER_KV_STATE_MACHINE_H_

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/kv/sm_format.h"
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
  // A shard's session table is checkpointed (the whole table, and
  // the delta windows it covers deleted) after this many session ops since
  // the last checkpoint, or once the delta windows hold
  // max(session_checkpoint_bytes, size of the last checkpoint) bytes: at
  // most that much is replayed at load, and storage holds at most about
  // twice the table. Like the two bounds above, these decide which bytes are
  // written: every replica of a shard must use the same values.
  uint64_t session_checkpoint_ops = 4096;
  uint64_t session_checkpoint_bytes = 1 << 20;
  // A checkpoint is written in records ("parts") of about this many bytes.
  size_t session_checkpoint_part_bytes = sm::kCheckpointPartBytes;
  // Watch history ("History" below): at every multiple m of
  // history_compact_step, the events of revisions below m -
  // history_revisions are deleted. The same on every replica. 0 keeps no
  // history (to measure its cost): a watch cannot resume, and one from now
  // may find its start gone (compacted) under writes.
  uint64_t history_revisions = 20000;
  uint64_t history_compact_step = 1024;
  // A lease's end is remembered this many revisions (a put naming it is
  // refused meanwhile; servers check a lease before proposing such a put,
  // so this only has to cover the time between that check and the put's
  // entry). Dropped at multiples of history_compact_step. The same on every
  // replica.
  uint64_t lease_tombstone_revisions = 1 << 16;
};

// Told of what each Apply stored (the watch hub). Called on the raft loop
// thread after the batch is in the KvStore; must not block.
class ApplyObserver {
 public:
  virtual ~ApplyObserver() = default;
  // `shard` has applied up to `applied_index`; `events` are the batch's, in
  // revision order. `reset`: the shard's state moved without this
  // StateMachine since its last call (a snapshot was installed, the node
  // restarted, the shard was created by a split): events between were not
  // reported; read them from the history. `split`: the batch was a split
  // of this shard (at applied_index): its range shrank there, and its
  // later revisions say nothing of the keys that moved.
  virtual void OnApplied(ShardId shard, uint64_t applied_index, bool reset, bool split,
                         std::vector<sm::HistoryEvent> events) = 0;
};

// One page of a shard's watch history (StateMachine::ReadHistory).
struct HistoryPage {
  std::vector<sm::HistoryEvent> events;  // in (revision, n) order; whole revisions
  // The history was read as of this applied index: when !more, every event
  // up to it was returned.
  uint64_t applied_index = 0;
  bool more = false;
  uint64_t next_revision = 0;  // when more: where the next page starts
  // The oldest revision kept. from_revision below it: compacted, no events.
  uint64_t floor = 0;
  bool compacted = false;
};

class StateMachine : public Applier {
 public:
  // `kv` is not owned and must outlive the StateMachine.
  StateMachine(storage::KvStore* kv, const StateMachineOptions& options);
  ~StateMachine() override;

  // See Applier. Per command:
  //  - a session write whose seq was already applied returns the remembered
  //    result and changes nothing;
  //  - seq < the session's first_incomplete_seq (or on an evicted session):
  //    code kFailedPrecondition, nothing changes;
  //  - Put/Delete/Txn execute against the state including earlier entries of
  //    the same batch; a Txn's compares and ops see one consistent state;
  //  - a bad command (empty key, no operation, bad compare, session seq 0)
  //    or undecodable entry data: code kInvalidArgument, nothing changes;
  //  - a key outside the shard's hash range (it was split after the request
  //    was routed): code kOutOfRange, nothing changes, the session neither;
  //  - a CompactHistory (no session) moves the history's floor up to its
  //    below_revision (at most its own index) and deletes what is under it;
  //    an empty result;
  //  - a RevokeLeases deletes the shard's keys attached to its leases (delete
  //    events at its revision) and records the leases as ended; a later put
  //    (or Txn put) naming one gets kNotFound, nothing changes;
  //  - a SplitShard (prepared by the Node: CommittedEntry::split) moves the
  //    keys at and above split_hash, and a copy of the session table, to
  //    the new shard at this entry's index, in the same KvStore::Apply;
  //    refused with kFailedPrecondition (nothing changes) unless the range
  //    version matches, the hash splits the range and membership is stable.
  // Skipped entries (at or below the applied index) and empty entries get an
  // empty CommandResult (code 0, no response). On error `results` is cleared
  // and nothing of the batch is written: storage errors, or kDataLoss for a
  // corrupt stored value or session record (checked when a shard's sessions
  // are loaded: its first Apply, or the first after a snapshot install).
  absl::Status Apply(absl::Span<const CommittedEntry> entries,
                     std::vector<serverpb::CommandResult>* results) override;

  // The key's value and version; found=false if absent; header.revision
  // is a revision the answer reflects at least. Errors: storage
  // errors; kDataLoss if the stored value is corrupt; kOutOfRange if the key
  // is not (or no longer) in the shard's hash range.
  absl::StatusOr<v1::GetResponse> Get(ShardId shard, absl::string_view key) const;

  // One page of keys of one shard in key order (request.start/end/prefix/
  // limit/continuation as documented in kv.proto). The continuation is opaque
  // to clients. Errors: kInvalidArgument for prefix combined with start/end,
  // start > end, or a continuation this shard did not produce (malformed,
  // another shard's, or outside the requested range); kDataLoss for a corrupt
  // stored value. limit 0 means default_scan_limit; it is capped at
  // max_scan_limit, and a page also stops after about 2 MiB. kOutOfRange if
  // the shard's range_version is not the request header's (1 when the
  // header has none): the page would miss keys a split moved away.
  absl::StatusOr<v1::ScanResponse> Scan(ShardId shard, const v1::ScanRequest& request) const;

  // History: every applied write's events (a put with the key's new stored
  // value, a delete; each with the key's value before it) are kept per
  // shard under their revision, in the same KvStore write as the data, and
  // compacted by revision (StateMachineOptions). Events of the shard's
  // revisions at or above `from_revision`, at most about `max_bytes` per
  // page but never part of a revision, unfiltered (the caller filters by
  // key and by the shard's current range: a split leaves its parent's
  // history of the moved keys in place, and copies it to the new shard).
  // A from_revision below the oldest revision kept gets `compacted`.
  // Errors: storage errors, kDataLoss.
  absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t from_revision,
                                          uint64_t max_bytes) const;

  // Receives what each Apply stored (nullptr: nothing). Not owned; it must
  // outlive the Applies that may call it (stop the Node first).
  // Thread-safe; takes effect from the next Apply.
  void SetObserver(ApplyObserver* observer) { observer_.store(observer); }

  // The shard's hash range as stored now: a shard that never split has no
  // record and owns every hash as far as it knows (the cluster map routes
  // its keys). Errors: storage errors, kDataLoss.
  absl::StatusOr<sm::ShardRange> Range(ShardId shard) const;
  // KvStore::ApproximateBytes of the shard.
  uint64_t ApproximateBytes(ShardId shard) const { return kv_->ApproximateBytes(shard); }

  // The shard's session table in memory if it is loaded and current (its
  // applied index is the store's), else nullptr. Raft loop thread only; the
  // pointer is valid until the next Apply.
  const sm::SessionMap* SessionsForTesting(ShardId shard) const;

  struct ShardSessions;  // state_machine.cc
  struct ShardBatch;     // state_machine.cc

 private:
  // Applies a SplitShard at `entry` (alone in its batch, see Apply): the
  // parent's deletes and range go to its batch, the new shard's writes to a
  // batch added to `shards`. A refusal is the returned result.
  absl::StatusOr<serverpb::CommandResult> ApplySplit(const CommittedEntry& entry,
                                                     const serverpb::SplitShard& split,
                                                     std::map<ShardId, ShardBatch>& shards) const;

  // Writes the batch's events and the history's compaction.
  void RecordHistory(ShardBatch& batch) const;
  // A CompactHistory at `index`: the floor moves up to min(below, index).
  void CompactHistory(ShardBatch& batch, uint64_t index, uint64_t below) const;
  // Deletes lease tombstones that fell below the floor in this batch.
  absl::Status CompactLeaseTombstones(ShardId shard, ShardBatch& batch) const;

  storage::KvStore* const kv_;
  const StateMachineOptions options_;
  std::atomic<ApplyObserver*> observer_{nullptr};
  // Per shard, loaded lazily by Apply (raft loop thread only).
  std::map<ShardId, std::unique_ptr<ShardSessions>> sessions_;
};

// The session table of `shard` rebuilt from its stored meta records, as a
// restart would (format 1 records converted). Errors: kDataLoss for corrupt
// or inconsistent records; storage errors.
absl::StatusOr<sm::SessionMap> LoadSessionsForTesting(const storage::KvStore& kv, ShardId shard);

// The fingerprint a session remembers with a result (CommandResult.
// request_fingerprint): XXH3_64bits of the command's operation (its kind and
// its serialized message, session excluded), never 0. A retry with the same
// seq must carry the same operation; another one is refused.
uint64_t RequestFingerprint(const serverpb::Command& command);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_KV_STATE_MACHINE_H_
