// The StateMachine's on-disk format inside a shard's KvStore namespace:
// encoders and decoders for user values, session meta records and the Scan
// continuation token. Every replica must produce identical bytes from the same
// log, so everything here is fixed-width big-endian with an explicit format
// version byte where a record may evolve. Pure functions; thread-safe.
//
// User data (KvStore user keys), format 1:
//   key -> 0x01 | version | create_revision | mod_revision | lease | value
// (8 bytes BE each; revisions as kv.proto "Revisions"). Format 0, written
// before revisions existed, is read too (its revisions and lease read 0):
//   key -> version (8 bytes BE, so its first byte is 0x00) | value
//
// Watch history (meta keys; see state_machine.h "History"): one record per
// event, in revision order:
//   "W" | revision (8 BE) | n (4 BE) -> 0x01 | kind (0x00 put, 0x01 delete)
//        | key length (4 BE) | key | value length (4 BE) | stored value
//        (put: format 1 as above; delete: empty) | prev length (4 BE) |
//        the key's stored value before the event (empty: none)
// n numbers the events of one revision (a Txn's) from 0. Every revision at
// or above the floor is complete; those below it are compacted away:
//   "F" -> the floor (8 BE)
//
// Session meta records, format 2 (KvStore meta keys; see state_machine.cc
// "Sessions"). The sessions live in memory; storage holds a checkpoint of the
// whole table plus the changes made since, as a log of session ops grouped in
// delta windows:
//   "C" | part (4 BE)        -> Checkpoint part: 0x02 | index | part (4 BE) |
//                               parts (4 BE) | n (4 BE) | n x session,
//                               ascending client_id within and across parts
//       session: client_id | first_incomplete_seq | last_used_index |
//                m (4 BE) | m x (seq | len (4 BE) | result), ascending seq
//   "D" | first index (8 BE) -> DeltaWindow: 0x02 | ops, ascending index
//       op: index | client_id | kind (1: 0x00 update, 0x01 create) |
//           first_incomplete_seq | seq | len (4 BE) | result |
//           e (4 BE) | e x evicted client_id
// `result` is a serialized serverpb::CommandResult with request_fingerprint
// set (0 in results converted from format 1, written before fingerprints).
// All integers are 8 bytes big-endian unless noted. The checkpoint's index is
// the log index whose state it holds; every op in the windows is newer. A
// checkpoint is split into parts of about kCheckpointPartBytes (at session
// boundaries; at least one part, even for an empty table), so that no record
// outgrows a snapshot chunk or a peer message; all parts carry the same
// index and part count. A
// window's key is the index of its first op, so windows sort by log index.
// A window closes after kDeltaWindowMaxOps ops or once it holds
// kDeltaWindowMaxBytes; the next op opens a new one. Which ops share a window
// and when a checkpoint is taken depend only on the log (and the
// StateMachineOptions), never on how entries were batched, so replicas write
// identical bytes.
//
// Rebuilding the table (load): the checkpoint (none: empty), then every op of
// every window in key order. An op sets the session's first_incomplete_seq
// and last_used_index (= the op's index), stores the result if seq >=
// first_incomplete_seq, drops the results below first_incomplete_seq, then
// removes the evicted sessions; "create" starts from an empty session.
// Anything that does not fit (bad version, length, order, an op at or below
// the checkpoint, an update of an unknown session, ...) is kDataLoss.
//
// Crash safety: the checkpoint, the window(s) a batch wrote and the deletion
// of the windows a checkpoint covers go in the same KvStore::Apply as the
// batch's data and applied index, so a crash leaves all or none of them.
//
// Format 1 (read once, converted on the first write; state_machine.cc):
//   "L"                      -> SessionList: 0x01 | count | head | tail
//   "S" | client_id (8 BE)   -> SessionRecord: 0x01 | first_incomplete_seq |
//                               last_used_index | prev | next |
//                               n (4 BE) | n x seq (ascending)
//   "R" | client_id | seq    -> serialized serverpb::CommandResult
//
// The shard's hash range (meta key, written by a split; absent: a shard
// that never split, which owns what the cluster map says):
//   "H"                      -> 0x01 | hash_start | hash_end | range_version
//
// Scan continuation token (opaque to clients):
//   0x01 | shard (8 BE) | resume key (the first key of the next page)
#ifndef TESSERA_SERVER_KV_SM_FORMAT_H_
#define TESSERA_SERVER_KV_SM_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::server::sm {

// ---- User values ----

struct VersionedValue {
  uint64_t version = 0;
  uint64_t create_revision = 0;
  uint64_t mod_revision = 0;
  uint64_t lease = 0;
  std::string value;
};

// Format 1 (the only one written).
std::string EncodeValue(const VersionedValue& value);
// Format 0, for tests of the upgrade path.
std::string EncodeValueFormat0(uint64_t version, absl::string_view value);
// Either format. kDataLoss if malformed (unknown first byte, too short).
absl::StatusOr<VersionedValue> DecodeValue(absl::string_view stored);

// ---- Watch history ----

struct HistoryEvent {
  uint64_t revision = 0;
  uint32_t n = 0;  // its place among the events of its revision
  bool deleted = false;
  std::string key;
  std::string stored;       // put: the new stored value (format 1); delete: empty
  std::string prev_stored;  // the stored value before it; empty: the key was absent
};

constexpr char kHistoryPrefix[] = "W";
constexpr char kHistoryFloorKey[] = "F";
std::string HistoryKey(uint64_t revision, uint32_t n);
// True if `meta_key` is an event's key; sets `*revision` and `*n`.
bool ParseHistoryKey(absl::string_view meta_key, uint64_t* revision, uint32_t* n);
// The event's record value (revision and n are in its key).
std::string EncodeHistoryEvent(const HistoryEvent& event);
// kDataLoss if malformed; revision and n come from the key.
absl::StatusOr<HistoryEvent> DecodeHistoryEvent(uint64_t revision, uint32_t n,
                                                absl::string_view stored);
std::string EncodeU64(uint64_t v);
// kDataLoss unless exactly 8 bytes.
absl::StatusOr<uint64_t> DecodeU64(absl::string_view stored);

// ---- Leases (sorted after the history: LoadSessions never reads them) ----

// "a" | lease(8) | key -> "": the key is attached to the lease (its value
// says so too); a RevokeLeases finds the keys to delete here.
constexpr char kLeaseKeyPrefix[] = "a";
std::string LeaseKeyPrefix(uint64_t lease);
std::string LeaseKey(uint64_t lease, absl::string_view key);
// "t" | lease(8) -> revision(8): the lease ended at that revision; a put
// naming it is refused. "x" | revision(8) | lease(8) -> "": the same, in
// revision order, so that old ones are dropped (StateMachineOptions::
// lease_tombstone_revisions) without a full scan.
constexpr char kLeaseTombstonePrefix[] = "t";
constexpr char kLeaseTombstoneOrderPrefix[] = "x";
std::string LeaseTombstoneKey(uint64_t lease);
std::string LeaseTombstoneOrderKey(uint64_t revision, uint64_t lease);
// True if `meta_key` is a tombstone order key; sets both.
bool ParseLeaseTombstoneOrderKey(absl::string_view meta_key, uint64_t* revision, uint64_t* lease);

// ---- The shard's hash range ----

// The key hashes a shard owns, [start, end] inclusive, and how many times
// that range changed (1 at bootstrap; a split sets both halves to the
// parent's + 1), as v1::ShardInfo's range_version.
struct ShardRange {
  uint64_t start = 0;
  uint64_t end = UINT64_MAX;
  uint64_t version = 1;
  bool Holds(uint64_t hash) const { return hash >= start && hash <= end; }
};

constexpr char kRangeKey[] = "H";
std::string EncodeRange(const ShardRange& range);
// kDataLoss if malformed (version byte, length, end < start, version 0).
absl::StatusOr<ShardRange> DecodeRange(absl::string_view stored);

// ---- Session meta records, format 2 ----

// One client's session on one shard, as held in memory and in checkpoints.
// Invariant: every seq in `results` is >= first_incomplete_seq.
struct Session {
  uint64_t first_incomplete_seq = 0;
  uint64_t last_used_index = 0;  // log index of the command that last used it
  // seq -> serialized serverpb::CommandResult (request_fingerprint set)
  std::map<uint64_t, std::string> results;
};
// client_id -> session (client id 0 never has one). Ordered: checkpoints
// encode it in key order.
using SessionMap = std::map<uint64_t, Session>;

// One change to the table made by applying one command (see the top).
struct SessionOp {
  uint64_t index = 0;
  uint64_t client_id = 0;
  bool create = false;
  uint64_t first_incomplete_seq = 0;  // the session's, after the command
  uint64_t seq = 0;
  std::string result;
  std::vector<uint64_t> evicted;  // in eviction order
};

constexpr char kSessionFormat = 0x02;
constexpr uint64_t kDeltaWindowMaxOps = 32;
constexpr size_t kDeltaWindowMaxBytes = 16 << 10;
constexpr size_t kCheckpointPartBytes = 1 << 20;

std::string CheckpointKey(uint32_t part);
// True if `meta_key` is a checkpoint part's key; sets `*part`.
bool ParseCheckpointKey(absl::string_view meta_key, uint32_t* part);
std::string DeltaKey(uint64_t first_index);
// True if `meta_key` is a delta window's key; sets `*first_index`.
bool ParseDeltaKey(absl::string_view meta_key, uint64_t* first_index);

// The checkpoint's parts, part 0 first; a part is closed once it holds
// `part_bytes` (and at least one session).
std::vector<std::string> EncodeCheckpoint(uint64_t index, const SessionMap& sessions,
                                          size_t part_bytes = kCheckpointPartBytes);
// `parts` in part order. kDataLoss on a malformed checkpoint (version,
// lengths, order, a part missing or of another checkpoint, a result below
// its session's first_incomplete_seq, a last_used_index above `index` or
// shared by two sessions).
absl::Status DecodeCheckpoint(const std::vector<std::string>& parts, uint64_t* index,
                              SessionMap* sessions);

// A new, empty delta window (the version byte); ops are appended to it.
std::string NewDeltaWindow();
void AppendSessionOp(const SessionOp& op, std::string* window);
// kDataLoss on a malformed window (version, lengths, ops not ascending).
absl::StatusOr<std::vector<SessionOp>> DecodeDeltaWindow(absl::string_view stored);

// Applies `op` to `sessions` (the load path; the live path in
// state_machine.cc makes the same change). `lru` maps last_used_index ->
// client_id. kDataLoss if the op does not fit the table (create of an
// existing session, update or eviction of a missing one).
absl::Status ReplaySessionOp(const SessionOp& op, SessionMap* sessions,
                             std::map<uint64_t, uint64_t>* lru);

// ---- Session meta records, format 1 (read only to convert them) ----

// The shard's doubly linked list of sessions in least-recently-used order:
// head is the least recently used, tail the most recently used. 0 = none
// (client id 0 never has a session).
struct SessionList {
  uint64_t count = 0;
  uint64_t head = 0;
  uint64_t tail = 0;
};

// One client's session on one shard.
struct SessionRecord {
  uint64_t first_incomplete_seq = 0;
  uint64_t last_used_index = 0;  // log index of the command that last used it
  uint64_t prev = 0;             // neighbour towards the head (older); 0 = none
  uint64_t next = 0;             // neighbour towards the tail (newer); 0 = none
  std::vector<uint64_t> seqs;    // ascending: seqs whose results are stored
};

std::string SessionListKey();
std::string SessionKey(uint64_t client_id);
std::string ResultKey(uint64_t client_id, uint64_t seq);

std::string EncodeSessionList(const SessionList& list);
// kDataLoss on a malformed record.
absl::StatusOr<SessionList> DecodeSessionList(absl::string_view stored);
std::string EncodeSessionRecord(const SessionRecord& record);
// kDataLoss on a malformed record (wrong version, length, unsorted seqs).
absl::StatusOr<SessionRecord> DecodeSessionRecord(absl::string_view stored);

// ---- Scan continuation ----

std::string EncodeContinuation(uint64_t shard, absl::string_view resume_key);
// The resume key. kInvalidArgument if `token` is malformed, was made for
// another shard, or carries an empty key.
absl::StatusOr<std::string> DecodeContinuation(uint64_t shard, absl::string_view token);

}  // namespace tessera::server::sm

#endif  // TESSERA_SERVER_KV_SM_FORMAT_H_
