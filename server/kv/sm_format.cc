#include "server/kv/sm_format.h"

#include <cstddef>
#include <cstdint>
#include <string>

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "proto/status_macros.h"

namespace tessera::server::sm {
namespace {

constexpr char kFormatV1 = 0x01;
constexpr size_t kSessionListBytes = 1 + 3 * 8;
constexpr size_t kSessionFixedBytes = 1 + 4 * 8 + 4;

void AppendU64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

void AppendU32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

// Reads big-endian integers from a byte string; the caller checks the length.
uint64_t ReadU64(absl::string_view in, size_t pos) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[pos + i]);
  return v;
}

uint32_t ReadU32(absl::string_view in, size_t pos) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(in[pos + i]);
  return v;
}

// Reads fixed-width fields from a record, failing with kDataLoss (naming
// `what`) when the record is too short.
class Reader {
 public:
  Reader(absl::string_view in, const char* what) : in_(in), what_(what) {}
  size_t remaining() const { return in_.size() - pos_; }
  bool done() const { return pos_ == in_.size(); }
  absl::Status Need(size_t n) const {
    if (remaining() < n) {
      return absl::DataLossError(absl::StrCat("malformed ", what_, ": truncated at byte ", pos_));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<uint64_t> U64() {
    TESSERA_RETURN_IF_ERROR(Need(8));
    pos_ += 8;
    return ReadU64(in_, pos_ - 8);
  }
  absl::StatusOr<uint32_t> U32() {
    TESSERA_RETURN_IF_ERROR(Need(4));
    pos_ += 4;
    return ReadU32(in_, pos_ - 4);
  }
  absl::StatusOr<uint8_t> U8() {
    TESSERA_RETURN_IF_ERROR(Need(1));
    return static_cast<uint8_t>(in_[pos_++]);
  }
  absl::StatusOr<absl::string_view> Bytes(size_t n) {
    TESSERA_RETURN_IF_ERROR(Need(n));
    pos_ += n;
    return in_.substr(pos_ - n, n);
  }
  absl::Status Error(absl::string_view why) const {
    return absl::DataLossError(absl::StrCat("malformed ", what_, ": ", why));
  }

 private:
  absl::string_view in_;
  const char* what_;
  size_t pos_ = 0;
};

}  // namespace

constexpr char kValueFormat1 = 0x01;
constexpr size_t kValueFormat1Header = 1 + 4 * 8;

std::string EncodeValue(const VersionedValue& value) {
  std::string out;
  out.reserve(kValueFormat1Header + value.value.size());
  out.push_back(kValueFormat1);
  AppendU64(&out, value.version);
  AppendU64(&out, value.create_revision);
  AppendU64(&out, value.mod_revision);
  AppendU64(&out, value.lease);
  out.append(value.value);
  return out;
}

std::string EncodeValueFormat0(uint64_t version, absl::string_view value) {
  std::string out;
  AppendU64(&out, version);
  out.append(value.data(), value.size());
  return out;
}

absl::StatusOr<VersionedValue> DecodeValue(absl::string_view stored) {
  VersionedValue out;
  if (!stored.empty() && stored[0] == 0x00) {  // format 0: version | value
    if (stored.size() < 8) {
      return absl::DataLossError(
          absl::StrCat("stored value has ", stored.size(), " bytes, shorter than its version"));
    }
    out.version = ReadU64(stored, 0);
    out.value = std::string(stored.substr(8));
    return out;
  }
  if (stored.empty() || stored[0] != kValueFormat1) {
    return absl::DataLossError("stored value of an unknown format");
  }
  if (stored.size() < kValueFormat1Header) {
    return absl::DataLossError(
        absl::StrCat("stored value has ", stored.size(), " bytes, shorter than its header"));
  }
  out.version = ReadU64(stored, 1);
  out.create_revision = ReadU64(stored, 9);
  out.mod_revision = ReadU64(stored, 17);
  out.lease = ReadU64(stored, 25);
  out.value = std::string(stored.substr(kValueFormat1Header));
  return out;
}

std::string LeaseKeyPrefix(uint64_t lease) {
  std::string key = kLeaseKeyPrefix;
  AppendU64(&key, lease);
  return key;
}

std::string LeaseKey(uint64_t lease, absl::string_view user_key) {
  std::string key = LeaseKeyPrefix(lease);
  key.append(user_key.data(), user_key.size());
  return key;
}

std::string LeaseTombstoneKey(uint64_t lease) {
  std::string key = kLeaseTombstonePrefix;
  AppendU64(&key, lease);
  return key;
}

std::string LeaseTombstoneOrderKey(uint64_t revision, uint64_t lease) {
  std::string key = kLeaseTombstoneOrderPrefix;
  AppendU64(&key, revision);
  AppendU64(&key, lease);
  return key;
}

bool ParseLeaseTombstoneOrderKey(absl::string_view meta_key, uint64_t* revision, uint64_t* lease) {
  if (meta_key.size() != 17 || meta_key[0] != kLeaseTombstoneOrderPrefix[0]) return false;
  *revision = ReadU64(meta_key, 1);
  *lease = ReadU64(meta_key, 9);
  return true;
}

std::string HistoryKey(uint64_t revision, uint32_t n) {
  std::string key = kHistoryPrefix;
  AppendU64(&key, revision);
  AppendU32(&key, n);
  return key;
}

bool ParseHistoryKey(absl::string_view meta_key, uint64_t* revision, uint32_t* n) {
  if (meta_key.size() != 13 || meta_key[0] != kHistoryPrefix[0]) return false;
  *revision = ReadU64(meta_key, 1);
  *n = ReadU32(meta_key, 9);
  return true;
}

std::string EncodeHistoryEvent(const HistoryEvent& event) {
  std::string out;
  out.reserve(2 + 12 + event.key.size() + event.stored.size() + event.prev_stored.size());
  out.push_back(kFormatV1);
  out.push_back(event.deleted ? 0x01 : 0x00);
  AppendU32(&out, static_cast<uint32_t>(event.key.size()));
  out.append(event.key);
  AppendU32(&out, static_cast<uint32_t>(event.stored.size()));
  out.append(event.stored);
  AppendU32(&out, static_cast<uint32_t>(event.prev_stored.size()));
  out.append(event.prev_stored);
  return out;
}

absl::StatusOr<HistoryEvent> DecodeHistoryEvent(uint64_t revision, uint32_t n,
                                                absl::string_view stored) {
  Reader in(stored, "history event");
  HistoryEvent event;
  event.revision = revision;
  event.n = n;
  TESSERA_ASSIGN_OR_RETURN(uint8_t version, in.U8());
  if (version != kFormatV1) return in.Error("unknown version");
  TESSERA_ASSIGN_OR_RETURN(uint8_t kind, in.U8());
  if (kind > 1) return in.Error("unknown kind");
  event.deleted = kind == 1;
  for (std::string* field : {&event.key, &event.stored, &event.prev_stored}) {
    TESSERA_ASSIGN_OR_RETURN(uint32_t size, in.U32());
    TESSERA_ASSIGN_OR_RETURN(absl::string_view bytes, in.Bytes(size));
    field->assign(bytes.data(), bytes.size());
  }
  if (!in.done()) return in.Error("trailing bytes");
  if (event.key.empty()) return in.Error("empty key");
  if (event.deleted != event.stored.empty()) return in.Error("value does not fit the kind");
  return event;
}

std::string EncodeU64(uint64_t v) {
  std::string out;
  AppendU64(&out, v);
  return out;
}

absl::StatusOr<uint64_t> DecodeU64(absl::string_view stored) {
  if (stored.size() != 8) return absl::DataLossError("malformed 8-byte record");
  return ReadU64(stored, 0);
}

std::string SessionListKey() { return "L"; }

std::string SessionKey(uint64_t client_id) {
  std::string key = "S";
  AppendU64(&key, client_id);
  return key;
}

std::string ResultKey(uint64_t client_id, uint64_t seq) {
  std::string key = "R";
  AppendU64(&key, client_id);
  AppendU64(&key, seq);
  return key;
}

std::string EncodeSessionList(const SessionList& list) {
  std::string out(1, kFormatV1);
  AppendU64(&out, list.count);
  AppendU64(&out, list.head);
  AppendU64(&out, list.tail);
  return out;
}

absl::StatusOr<SessionList> DecodeSessionList(absl::string_view stored) {
  if (stored.size() != kSessionListBytes || stored[0] != kFormatV1) {
    return absl::DataLossError("malformed session list record");
  }
  return SessionList{ReadU64(stored, 1), ReadU64(stored, 9), ReadU64(stored, 17)};
}

std::string EncodeSessionRecord(const SessionRecord& record) {
  std::string out(1, kFormatV1);
  out.reserve(kSessionFixedBytes + 8 * record.seqs.size());
  AppendU64(&out, record.first_incomplete_seq);
  AppendU64(&out, record.last_used_index);
  AppendU64(&out, record.prev);
  AppendU64(&out, record.next);
  AppendU32(&out, static_cast<uint32_t>(record.seqs.size()));
  for (uint64_t seq : record.seqs) AppendU64(&out, seq);
  return out;
}

absl::StatusOr<SessionRecord> DecodeSessionRecord(absl::string_view stored) {
  if (stored.size() < kSessionFixedBytes || stored[0] != kFormatV1) {
    return absl::DataLossError("malformed session record");
  }
  SessionRecord record;
  record.first_incomplete_seq = ReadU64(stored, 1);
  record.last_used_index = ReadU64(stored, 9);
  record.prev = ReadU64(stored, 17);
  record.next = ReadU64(stored, 25);
  const uint64_t n = ReadU32(stored, 33);
  if (stored.size() != kSessionFixedBytes + 8 * n) {
    return absl::DataLossError("malformed session record: bad length");
  }
  record.seqs.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    uint64_t seq = ReadU64(stored, kSessionFixedBytes + 8 * i);
    if (!record.seqs.empty() && seq <= record.seqs.back()) {
      return absl::DataLossError("malformed session record: seqs not ascending");
    }
    record.seqs.push_back(seq);
  }
  return record;
}

// ---- Format 2 ----

std::string EncodeRange(const ShardRange& range) {
  std::string out(1, '\x01');
  AppendU64(&out, range.start);
  AppendU64(&out, range.end);
  AppendU64(&out, range.version);
  return out;
}

absl::StatusOr<ShardRange> DecodeRange(absl::string_view stored) {
  if (stored.size() != 25 || stored[0] != '\x01') {
    return absl::DataLossError("malformed shard range record");
  }
  ShardRange range{ReadU64(stored, 1), ReadU64(stored, 9), ReadU64(stored, 17)};
  if (range.end < range.start || range.version == 0) {
    return absl::DataLossError("inconsistent shard range record");
  }
  return range;
}

std::string CheckpointKey(uint32_t part) {
  std::string key = "C";
  AppendU32(&key, part);
  return key;
}

bool ParseCheckpointKey(absl::string_view meta_key, uint32_t* part) {
  if (meta_key.size() != 5 || meta_key[0] != 'C') return false;
  *part = ReadU32(meta_key, 1);
  return true;
}

std::string DeltaKey(uint64_t first_index) {
  std::string key = "D";
  AppendU64(&key, first_index);
  return key;
}

bool ParseDeltaKey(absl::string_view meta_key, uint64_t* first_index) {
  if (meta_key.size() != 9 || meta_key[0] != 'D') return false;
  *first_index = ReadU64(meta_key, 1);
  return true;
}

std::vector<std::string> EncodeCheckpoint(uint64_t index, const SessionMap& sessions,
                                          size_t part_bytes) {
  constexpr size_t kPartsOffset = 1 + 8 + 4;  // where `parts` and `n` go
  std::vector<std::string> parts;
  std::vector<uint32_t> counts;
  auto begin_part = [&]() {
    std::string out(1, kSessionFormat);
    AppendU64(&out, index);
    AppendU32(&out, static_cast<uint32_t>(parts.size()));
    AppendU32(&out, 0);  // parts, set below
    AppendU32(&out, 0);  // n, set below
    parts.push_back(std::move(out));
    counts.push_back(0);
  };
  begin_part();
  for (const auto& [client_id, session] : sessions) {
    if (counts.back() > 0 && parts.back().size() >= part_bytes) begin_part();
    std::string& out = parts.back();
    ++counts.back();
    AppendU64(&out, client_id);
    AppendU64(&out, session.first_incomplete_seq);
    AppendU64(&out, session.last_used_index);
    AppendU32(&out, static_cast<uint32_t>(session.results.size()));
    for (const auto& [seq, result] : session.results) {
      AppendU64(&out, seq);
      AppendU32(&out, static_cast<uint32_t>(result.size()));
      out.append(result);
    }
  }
  for (size_t i = 0; i < parts.size(); ++i) {
    std::string fixed;
    AppendU32(&fixed, static_cast<uint32_t>(parts.size()));
    AppendU32(&fixed, counts[i]);
    parts[i].replace(kPartsOffset, fixed.size(), fixed);
  }
  return parts;
}

absl::Status DecodeCheckpoint(const std::vector<std::string>& parts, uint64_t* index,
                              SessionMap* sessions) {
  if (parts.empty()) return absl::DataLossError("malformed session checkpoint: no parts");
  SessionMap decoded;
  std::map<uint64_t, uint64_t> last_used;  // uniqueness check
  for (size_t p = 0; p < parts.size(); ++p) {
    Reader in(parts[p], "session checkpoint");
    TESSERA_ASSIGN_OR_RETURN(uint8_t version, in.U8());
    if (version != kSessionFormat) {
      return in.Error(absl::StrCat("unknown format version ", static_cast<int>(version)));
    }
    TESSERA_ASSIGN_OR_RETURN(uint64_t part_index, in.U64());
    TESSERA_ASSIGN_OR_RETURN(uint32_t part, in.U32());
    TESSERA_ASSIGN_OR_RETURN(uint32_t count, in.U32());
    if (p == 0) *index = part_index;
    if (part_index != *index || part != p || count != parts.size()) {
      return in.Error(absl::StrCat("part ", part, " of ", count, " at index ", part_index,
                                   " found as part ", p, " of ", parts.size(), " at index ",
                                   *index));
    }
    TESSERA_ASSIGN_OR_RETURN(uint32_t n, in.U32());
    for (uint32_t i = 0; i < n; ++i) {
      TESSERA_ASSIGN_OR_RETURN(uint64_t client_id, in.U64());
      if (client_id == 0 || (!decoded.empty() && client_id <= decoded.rbegin()->first)) {
        return in.Error("client ids not ascending");
      }
      Session session;
      TESSERA_ASSIGN_OR_RETURN(session.first_incomplete_seq, in.U64());
      TESSERA_ASSIGN_OR_RETURN(session.last_used_index, in.U64());
      if (session.last_used_index > *index ||
          !last_used.emplace(session.last_used_index, 0).second) {
        return in.Error(absl::StrCat("bad last_used_index of client ", client_id));
      }
      TESSERA_ASSIGN_OR_RETURN(uint32_t m, in.U32());
      for (uint32_t j = 0; j < m; ++j) {
        TESSERA_ASSIGN_OR_RETURN(uint64_t seq, in.U64());
        if (seq < session.first_incomplete_seq ||
            (!session.results.empty() && seq <= session.results.rbegin()->first)) {
          return in.Error(absl::StrCat("bad result seq of client ", client_id));
        }
        TESSERA_ASSIGN_OR_RETURN(uint32_t len, in.U32());
        TESSERA_ASSIGN_OR_RETURN(absl::string_view result, in.Bytes(len));
        session.results.emplace_hint(session.results.end(), seq, std::string(result));
      }
      decoded.emplace_hint(decoded.end(), client_id, std::move(session));
    }
    if (!in.done()) return in.Error("trailing bytes");
  }
  *sessions = std::move(decoded);
  return absl::OkStatus();
}

std::string NewDeltaWindow() { return std::string(1, kSessionFormat); }

void AppendSessionOp(const SessionOp& op, std::string* window) {
  AppendU64(window, op.index);
  AppendU64(window, op.client_id);
  window->push_back(op.create ? 0x01 : 0x00);
  AppendU64(window, op.first_incomplete_seq);
  AppendU64(window, op.seq);
  AppendU32(window, static_cast<uint32_t>(op.result.size()));
  window->append(op.result);
  AppendU32(window, static_cast<uint32_t>(op.evicted.size()));
  for (uint64_t client_id : op.evicted) AppendU64(window, client_id);
}

absl::StatusOr<std::vector<SessionOp>> DecodeDeltaWindow(absl::string_view stored) {
  Reader in(stored, "session delta window");
  TESSERA_ASSIGN_OR_RETURN(uint8_t version, in.U8());
  if (version != kSessionFormat) {
    return in.Error(absl::StrCat("unknown format version ", static_cast<int>(version)));
  }
  std::vector<SessionOp> ops;
  while (!in.done()) {
    SessionOp op;
    TESSERA_ASSIGN_OR_RETURN(op.index, in.U64());
    if (!ops.empty() && op.index <= ops.back().index) return in.Error("ops not ascending");
    TESSERA_ASSIGN_OR_RETURN(op.client_id, in.U64());
    if (op.client_id == 0) return in.Error("client id 0");
    TESSERA_ASSIGN_OR_RETURN(uint8_t kind, in.U8());
    if (kind > 1) return in.Error(absl::StrCat("unknown op kind ", static_cast<int>(kind)));
    op.create = kind == 1;
    TESSERA_ASSIGN_OR_RETURN(op.first_incomplete_seq, in.U64());
    TESSERA_ASSIGN_OR_RETURN(op.seq, in.U64());
    if (op.seq == 0) return in.Error("seq 0");
    TESSERA_ASSIGN_OR_RETURN(uint32_t len, in.U32());
    TESSERA_ASSIGN_OR_RETURN(absl::string_view result, in.Bytes(len));
    op.result = std::string(result);
    TESSERA_ASSIGN_OR_RETURN(uint32_t e, in.U32());
    if (e > in.remaining() / 8) return in.Error("truncated evictions");
    op.evicted.reserve(e);
    for (uint32_t i = 0; i < e; ++i) {
      TESSERA_ASSIGN_OR_RETURN(uint64_t victim, in.U64());
      op.evicted.push_back(victim);
    }
    ops.push_back(std::move(op));
  }
  if (ops.empty()) return in.Error("no ops");
  return ops;
}

absl::Status ReplaySessionOp(const SessionOp& op, SessionMap* sessions,
                             std::map<uint64_t, uint64_t>* lru) {
  auto it = sessions->find(op.client_id);
  if (op.create) {
    if (it != sessions->end()) {
      return absl::DataLossError(absl::StrCat("session delta at index ", op.index,
                                              " creates the existing session of client ",
                                              op.client_id));
    }
    it = sessions->emplace(op.client_id, Session{}).first;
  } else {
    if (it == sessions->end()) {
      return absl::DataLossError(absl::StrCat("session delta at index ", op.index,
                                              " updates the missing session of client ",
                                              op.client_id));
    }
    lru->erase(it->second.last_used_index);
  }
  Session& session = it->second;
  session.first_incomplete_seq = op.first_incomplete_seq;
  session.last_used_index = op.index;
  if (op.seq >= op.first_incomplete_seq) session.results[op.seq] = op.result;
  session.results.erase(session.results.begin(),
                        session.results.lower_bound(op.first_incomplete_seq));
  (*lru)[op.index] = op.client_id;
  for (uint64_t victim : op.evicted) {
    auto v = sessions->find(victim);
    if (v == sessions->end() || victim == op.client_id) {
      return absl::DataLossError(absl::StrCat("session delta at index ", op.index,
                                              " evicts the missing session of client ", victim));
    }
    lru->erase(v->second.last_used_index);
    sessions->erase(v);
  }
  return absl::OkStatus();
}

// ---- Scan continuation ----

std::string EncodeContinuation(uint64_t shard, absl::string_view resume_key) {
  std::string out(1, kFormatV1);
  AppendU64(&out, shard);
  out.append(resume_key.data(), resume_key.size());
  return out;
}

absl::StatusOr<std::string> DecodeContinuation(uint64_t shard, absl::string_view token) {
  if (token.size() < 1 + 8 + 1 || token[0] != kFormatV1) {
    return absl::InvalidArgumentError("malformed scan continuation");
  }
  if (ReadU64(token, 1) != shard) {
    return absl::InvalidArgumentError("scan continuation was made for another shard");
  }
  return std::string(token.substr(9));
}

}  // namespace tessera::server::sm
