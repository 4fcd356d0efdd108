// The StateMachine's on-disk format inside a shard's KvStore namespace:
// encoders and decoders for user values, session meta records and the Scan
// continuation token. Every replica must produce identical bytes from the same
// log, so everything here is fixed-width big-endian with an explicit format
// version byte where a record may evolve. Pure functions; thread-safe.
//
// User data (KvStore user keys):
//   key -> version (8 bytes BE) | value bytes
//
// Meta records (KvStore meta keys; see state_machine.cc "Sessions"):
//   "L"                      -> SessionList: 0x01 | count | head | tail
//   "S" | client_id (8 BE)   -> SessionRecord: 0x01 | first_incomplete_seq |
//                               last_used_index | prev | next |
//                               n (4 BE) | n x seq (ascending)
//   "R" | client_id | seq    -> serialized serverpb::CommandResult
// All integers are 8 bytes big-endian unless noted.
//
// Scan continuation token (opaque to clients):
//   0x01 | shard (8 BE) | resume key (the first key of the next page)
#ifndef TESSERA_SERVER_KV_SM_FORMAT_H_
#define TESSERA_SERVER_KV_SM_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace tessera::server::sm {

// ---- User values ----

struct VersionedValue {
  uint64_t version = 0;
  std::string value;
};

constexpr size_t kVersionBytes = 8;

std::string EncodeValue(uint64_t version, absl::string_view value);
// kDataLoss if `stored` is shorter than the 8-byte version.
absl::StatusOr<VersionedValue> DecodeValue(absl::string_view stored);

// ---- Session meta records ----

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
