#include "server/kv/sm_format.h"

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

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

}  // namespace

std::string EncodeValue(uint64_t version, absl::string_view value) {
  std::string out;
  out.reserve(kVersionBytes + value.size());
  AppendU64(&out, version);
  out.append(value.data(), value.size());
  return out;
}

absl::StatusOr<VersionedValue> DecodeValue(absl::string_view stored) {
  if (stored.size() < kVersionBytes) {
    return absl::DataLossError(
        absl::StrCat("stored value has ", stored.size(), " bytes, shorter than its version"));
  }
  return VersionedValue{ReadU64(stored, 0), std::string(stored.substr(kVersionBytes))};
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
