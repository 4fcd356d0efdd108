// LogEngine (log_engine.h). File format, recovery and purge: README.md
// "Raft log engine". In short:
//
//   <dir>/NNNNNN.log   segments, numbered from 1, contiguous from the floor
//   <dir>/PURGED       the floor: first segment still needed (absent: 1)
//
// A segment is a sequence of frames, then zeros (preallocation). A frame is
// one write (a whole Save, Compact, ...), so a crash keeps all of it or none:
//   crc32 (4, LE) | length (4, LE) | format (1) = 1 | records (length bytes)
// where crc32 is zlib's CRC-32 of length | format | records. An all-zero
// header ends the segment's data. A record is
//   type (1) | length (4, LE) | payload
// and every payload starts with the shard (8, LE).
#include "storage/log_engine.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/status_macros.h"
#include "storage/log_meta.h"

namespace tessera::storage {
namespace {

using internal::ShardLogMeta;

enum RecordType : uint8_t {
  kEntries = 1,      // shard | count (4) | per entry: length (4) | raftpb::Entry
  kHardState = 2,    // shard | raftpb::HardState
  kSnapshot = 3,     // shard | raftpb::SnapshotMetadata (discards the shard's entries)
  kCompact = 4,      // shard | index (8) | term (8)
  kDeleteShard = 5,  // shard
  // shard | truncated index (8) | term (8) | hard state length (4) | HardState
  // | SnapshotMetadata: the shard's state records re-written before a purge.
  kCheckpoint = 6,
};

constexpr size_t kHeaderBytes = 9;  // frame header
constexpr size_t kRecordHeaderBytes = 5;
constexpr uint8_t kFrameFormat = 1;
// Bounds a record's claimed length at recovery (a corrupt length must not
// make us allocate or skip gigabytes).
constexpr uint64_t kMaxRecordBytes = 1ull << 31;
// The writer keeps this much of the segment ahead of it written with zeros
// (one write per half chunk). A sync after a write that grows the file, or
// lands in an unwritten (fallocated) extent, also writes the inode (new
// size, converted extent): a second device write per fdatasync. Over
// blocks already written, fdatasync writes the data alone (ext4 on this
// VM: a 3 KB write + fdatasync 285 -> 165 us).
constexpr uint64_t kZeroAheadBytes = 1ull << 20;

void PutFixed32(uint32_t v, std::string* out) {
  char b[4];
  for (int i = 0; i < 4; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 4);
}
void PutFixed64(uint64_t v, std::string* out) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out->append(b, 8);
}
uint32_t GetFixed32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}
uint64_t GetFixed64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

uint32_t Crc(const char* p, size_t n) {
  uLong crc = crc32(0L, Z_NULL, 0);
  // zlib takes uInt lengths; records are < 4 GiB but be exact anyway.
  while (n > 0) {
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(p), chunk);
    p += chunk;
    n -= chunk;
  }
  return static_cast<uint32_t>(crc);
}

// Appends a record to the frame being built in `out` (starting the frame if
// `out` is empty); its payload is built in place by `fill`.
template <typename Fill>
void AppendRecord(RecordType type, std::string* out, Fill fill) {
  if (out->empty()) out->append(kHeaderBytes, '\0');  // filled by SealFrame
  out->push_back(static_cast<char>(type));
  const size_t length_at = out->size();
  out->append(4, '\0');
  fill(out);
  const uint32_t length = static_cast<uint32_t>(out->size() - length_at - 4);
  for (int i = 0; i < 4; ++i) (*out)[length_at + i] = static_cast<char>(length >> (8 * i));
}

// Writes the frame header of `out` (built by AppendRecord).
void SealFrame(std::string* out) {
  const uint32_t length = static_cast<uint32_t>(out->size() - kHeaderBytes);
  char* h = out->data();
  for (int i = 0; i < 4; ++i) h[4 + i] = static_cast<char>(length >> (8 * i));
  h[8] = static_cast<char>(kFrameFormat);
  const uint32_t crc = Crc(h + 4, out->size() - 4);
  for (int i = 0; i < 4; ++i) h[i] = static_cast<char>(crc >> (8 * i));
}

void AppendCheckpoint(ShardId shard, uint64_t truncated_index, uint64_t truncated_term,
                      const raftpb::HardState& hs, const raftpb::SnapshotMetadata& snapshot,
                      std::string* out) {
  AppendRecord(kCheckpoint, out, [&](std::string* o) {
    PutFixed64(shard, o);
    PutFixed64(truncated_index, o);
    PutFixed64(truncated_term, o);
    const std::string h = hs.SerializeAsString();
    PutFixed32(static_cast<uint32_t>(h.size()), o);
    o->append(h);
    snapshot.AppendToString(o);
  });
}

std::string ErrnoMessage(int err) { return std::strerror(err); }

absl::Status IoError(absl::string_view what, const std::string& path, int err) {
  std::string message = absl::StrCat("raft log: ", what, " ", path, ": ", ErrnoMessage(err));
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

std::string SegmentName(uint64_t id) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06llu.log", static_cast<unsigned long long>(id));
  return name;
}

// Parses "NNNNNN.log"; 0 if `name` is not a segment.
uint64_t ParseSegmentName(const std::string& name) {
  if (name.size() < 5 || name.substr(name.size() - 4) != ".log") return 0;
  uint64_t id = 0;
  for (size_t i = 0; i + 4 < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return 0;
    id = id * 10 + static_cast<uint64_t>(name[i] - '0');
  }
  return id;
}

absl::Status WriteAllAt(int fd, const std::string& path, const char* p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return IoError("write", path, errno);
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return absl::OkStatus();
}

absl::Status ReadAllAt(int fd, const std::string& path, char* p, size_t n, uint64_t off) {
  while (n > 0) {
    ssize_t r = pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return IoError("read", path, errno);
    if (r == 0) {
      return absl::DataLossError(absl::StrCat("raft log: ", path, " ends before offset ", off));
    }
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return absl::OkStatus();
}

absl::Status SyncDir(const std::string& dir) {
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return IoError("open directory", dir, errno);
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  if (rc != 0) return IoError("fsync directory", dir, err);
  return absl::OkStatus();
}

struct Segment {
  uint64_t id = 0;
  std::string path;
  int fd = -1;
  ~Segment() {
    if (fd >= 0) close(fd);
  }
};

// Where a stored entry is, and (when cached) the entry itself.
struct Loc {
  uint64_t segment = 0;
  uint64_t offset = 0;  // of the serialized raftpb::Entry in the segment
  uint32_t length = 0;  // == Entry::ByteSizeLong()
  uint64_t term = 0;
  uint64_t cache_seq = 0;  // 0: not cached
  std::shared_ptr<const raftpb::Entry> cached;
};

struct ShardState {
  ShardLogMeta meta;
  // locs[i] is the entry meta.truncated_index + 1 + i.
  std::deque<Loc> locs;
  // The segments of the records the current hard state / snapshot metadata /
  // truncated point come from (0: never written; the default).
  uint64_t hard_state_segment = 0;
  uint64_t snapshot_segment = 0;
  uint64_t truncated_segment = 0;
  // Recovery only: the records before this shard's first replayed one were
  // purged, so meta.truncated_index is only where the replayed entries start
  // and the entries between the real truncation point (if a record has told
  // it: `real_truncated`, its term `real_truncated_term`) and there are
  // unknown. Later records settle it (README.md "Raft log engine", purge);
  // a shard still provisional at the end of recovery is kDataLoss.
  //
  // Why a correct log always settles: a purge keeps every segment holding a
  // live entry, and re-writes (checkpoint) the record that set the shard's
  // truncation point T unless it survives anyway. Live entries (T, last] are
  // thus all replayed. An entry between T and a provisional start P was in a
  // purged segment, so it was dead by the purge: overwritten (a later entries
  // record starting at or below it restarts the log there) or compacted (a
  // later truncation record >= P). So the replay ends with a start set by a
  // truncation record, by an entries record starting right after one, or
  // at index 1 with nothing ever truncated.
  bool provisional = false;
  bool has_real_truncated = false;
  uint64_t real_truncated = 0;
  uint64_t real_truncated_term = 0;
};

// A record decoded at recovery or built by a writer, applied to the
// in-memory state by the same code.
struct EntryRef {
  uint64_t offset;
  uint32_t length;
  std::shared_ptr<const raftpb::Entry> entry;  // always set for writers
  uint64_t index;
  uint64_t term;
};

// Appends an entries record; with `refs`, also where each entry went (offset
// in `out`) and, if `cache`, a copy of it for the entry cache.
void AppendEntries(ShardId shard, absl::Span<const raftpb::Entry> entries, bool cache,
                   std::string* out, std::vector<EntryRef>* refs) {
  if (refs != nullptr) refs->reserve(entries.size());
  AppendRecord(kEntries, out, [&](std::string* o) {
    PutFixed64(shard, o);
    PutFixed32(static_cast<uint32_t>(entries.size()), o);
    for (const raftpb::Entry& e : entries) {
      const size_t len = e.ByteSizeLong();
      PutFixed32(static_cast<uint32_t>(len), o);
      const size_t at = o->size();
      e.AppendToString(o);
      if (refs != nullptr) {
        refs->push_back({at, static_cast<uint32_t>(len),
                         cache ? std::make_shared<const raftpb::Entry>(e) : nullptr, e.index(),
                         e.term()});
      }
    }
  });
}

}  // namespace

struct LogEngine::Impl {
  std::string dir;
  LogEngineOptions options;

  // Held by writers across their I/O; the order is write_mu, then mu.
  absl::Mutex write_mu;
  uint64_t write_offset ABSL_GUARDED_BY(write_mu) = 0;  // in the current segment
  uint64_t zeroed_until ABSL_GUARDED_BY(write_mu) = 0;  // ditto: zeros written up to here
  absl::Status failed ABSL_GUARDED_BY(write_mu);        // a write failed: refuse more

  mutable absl::Mutex mu;
  std::map<uint64_t, std::shared_ptr<Segment>> segments ABSL_GUARDED_BY(mu);
  uint64_t current ABSL_GUARDED_BY(mu) = 0;  // the segment being appended to
  absl::flat_hash_map<ShardId, ShardState> shards ABSL_GUARDED_BY(mu);
  // Cache eviction order: (shard, index, cache_seq) in insertion order.
  struct Cached {
    ShardId shard;
    uint64_t index;
    uint64_t seq;
  };
  std::deque<Cached> cache_order ABSL_GUARDED_BY(mu);
  uint64_t cache_seq ABSL_GUARDED_BY(mu) = 0;
  uint64_t cached_entries ABSL_GUARDED_BY(mu) = 0;
  mutable Stats stats ABSL_GUARDED_BY(mu);

  // ---- in-memory state changes (recovery and writers) ----

  void Uncache(Loc& loc) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (loc.cached != nullptr) {
      stats.cached_bytes -= loc.length;
      --cached_entries;
      loc.cached.reset();
      loc.cache_seq = 0;
    }
  }
  void DropFront(ShardState& s, size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    n = std::min(n, s.locs.size());
    for (size_t i = 0; i < n; ++i) {
      Uncache(s.locs.front());
      s.locs.pop_front();
    }
  }
  void DropBack(ShardState& s, size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    n = std::min(n, s.locs.size());
    for (size_t i = 0; i < n; ++i) {
      Uncache(s.locs.back());
      s.locs.pop_back();
    }
  }
  void Cache(ShardId shard, uint64_t index, Loc& loc, std::shared_ptr<const raftpb::Entry> e)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (options.cache_bytes == 0 || e == nullptr) return;
    loc.cached = std::move(e);
    loc.cache_seq = ++cache_seq;
    stats.cached_bytes += loc.length;
    ++cached_entries;
    cache_order.push_back({shard, index, loc.cache_seq});
    if (cache_order.size() > 2 * cached_entries + 4096) {
      // Mostly stale items behind a live one: drop them (amortised O(1)).
      std::deque<Cached> live;
      for (const Cached& c : cache_order) {
        if (CachedLoc(c) != nullptr) live.push_back(c);
      }
      cache_order.swap(live);
    }
    // Oldest first; entries dropped meanwhile (compacted, overwritten,
    // deleted) left stale items, which are skipped.
    while (!cache_order.empty() && (stats.cached_bytes > options.cache_bytes ||
                                    CachedLoc(cache_order.front()) == nullptr)) {
      Loc* l = CachedLoc(cache_order.front());
      cache_order.pop_front();
      if (l != nullptr) Uncache(*l);
    }
  }
  // The entry `c` refers to if it is still cached by that insertion.
  Loc* CachedLoc(const Cached& c) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = shards.find(c.shard);
    if (it == shards.end()) return nullptr;
    ShardState& s = it->second;
    if (c.index <= s.meta.truncated_index || c.index > s.meta.last_index) return nullptr;
    Loc& l = s.locs[c.index - s.meta.truncated_index - 1];
    return l.cache_seq == c.seq ? &l : nullptr;
  }

  // Applies an entries record ("replace the log from the first entry on").
  // Writers pass validated input, for which this is exactly PlanLogUpdate's
  // result. At recovery after a purge, a record may not connect to what was
  // replayed so far (a gap, or below a start that was only guessed): the
  // entries before it were in purged segments, so the log restarts at it,
  // provisionally (see ShardState::provisional).
  void ApplyEntries(ShardId shard, uint64_t segment, const std::vector<EntryRef>& refs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ShardState& s = shards[shard];
    ShardLogMeta& m = s.meta;
    for (const EntryRef& r : refs) {
      if (r.index <= m.truncated_index && !s.provisional) continue;
      if (r.index > m.last_index + 1 || r.index <= m.truncated_index) {
        // Restart the (provisional) log at r.index; settled if it starts
        // right after a truncation point a record told.
        if (!s.provisional) {
          s.has_real_truncated = true;
          s.real_truncated = m.truncated_index;
          s.real_truncated_term = m.truncated_term;
        }
        DropFront(s, s.locs.size());
        m.truncated_index = r.index - 1;
        m.truncated_term = 0;
        s.provisional = true;
        if (s.has_real_truncated && s.real_truncated == m.truncated_index) {
          m.truncated_term = s.real_truncated_term;
          s.provisional = s.has_real_truncated = false;
        }
      } else if (r.index <= m.last_index) {
        DropBack(s, m.last_index - r.index + 1);
      }
      Loc loc;
      loc.segment = segment;
      loc.offset = r.offset;
      loc.length = r.length;
      loc.term = r.term;
      s.locs.push_back(std::move(loc));
      m.last_index = r.index;
      m.last_term = r.term;
      Cache(shard, r.index, s.locs.back(), r.entry);
    }
  }
  void ApplySnapshot(ShardId shard, uint64_t segment, const raftpb::SnapshotMetadata& snap)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ShardState& s = shards[shard];
    DropFront(s, s.locs.size());
    s.provisional = s.has_real_truncated = false;
    s.meta.snapshot = snap;
    s.meta.truncated_index = s.meta.last_index = snap.index();
    s.meta.truncated_term = s.meta.last_term = snap.term();
    s.snapshot_segment = s.truncated_segment = segment;
  }
  void ApplyTruncate(ShardId shard, uint64_t segment, uint64_t index, uint64_t term)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ShardState& s = shards[shard];
    ShardLogMeta& m = s.meta;
    s.truncated_segment = segment;
    if (s.provisional && index < m.truncated_index) {
      // The entries between it and the provisional start are unknown (they
      // must be overwritten or compacted by later records).
      s.has_real_truncated = true;
      s.real_truncated = index;
      s.real_truncated_term = term;
      return;
    }
    s.provisional = s.has_real_truncated = false;
    if (index >= m.last_index) {
      DropFront(s, s.locs.size());
      m.last_index = index;
      m.last_term = term;
    } else if (index > m.truncated_index) {
      DropFront(s, index - m.truncated_index);
    }
    m.truncated_index = index;
    m.truncated_term = term;
  }
  void ApplyHardState(ShardId shard, uint64_t segment, const raftpb::HardState& hs)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ShardState& s = shards[shard];
    s.meta.hard_state = hs;
    s.hard_state_segment = segment;
  }
  void ApplyDelete(ShardId shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = shards.find(shard);
    if (it == shards.end()) return;
    DropFront(it->second, it->second.locs.size());
    shards.erase(it);
  }

  // Decodes and applies one record found at recovery; kDataLoss if it does
  // not parse (its CRC matched: not a torn write).
  absl::Status Replay(uint64_t segment, uint64_t payload_offset, uint8_t type, const char* p,
                      size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto bad = [&](absl::string_view what) {
      return absl::DataLossError(absl::StrCat("raft log: ", SegmentName(segment), " offset ",
                                              payload_offset, ": bad ", what, " record"));
    };
    if (n < 8) return bad("short");
    const ShardId shard = GetFixed64(p);
    p += 8;
    n -= 8;
    // After a purge, a shard's first record does not tell where its log
    // starts.
    if (replaying_purged_history && type != kDeleteShard && !shards.contains(shard)) {
      shards[shard].provisional = true;
    }
    switch (type) {
      case kEntries: {
        if (n < 4) return bad("entries");
        const uint32_t count = GetFixed32(p);
        size_t pos = 4;
        std::vector<EntryRef> refs;
        refs.reserve(count);
        raftpb::Entry e;
        for (uint32_t i = 0; i < count; ++i) {
          if (n - pos < 4) return bad("entries");
          const uint32_t len = GetFixed32(p + pos);
          pos += 4;
          if (n - pos < len || !e.ParseFromArray(p + pos, static_cast<int>(len))) {
            return bad("entries");
          }
          if (!refs.empty() && e.index() != refs.back().index + 1) return bad("entries");
          refs.push_back({payload_offset + 8 + pos, len, nullptr, e.index(), e.term()});
          pos += len;
        }
        if (pos != n) return bad("entries");
        ApplyEntries(shard, segment, refs);
        return absl::OkStatus();
      }
      case kHardState: {
        raftpb::HardState hs;
        if (!hs.ParseFromArray(p, static_cast<int>(n))) return bad("hard state");
        ApplyHardState(shard, segment, hs);
        return absl::OkStatus();
      }
      case kSnapshot: {
        raftpb::SnapshotMetadata snap;
        if (!snap.ParseFromArray(p, static_cast<int>(n))) return bad("snapshot");
        ApplySnapshot(shard, segment, snap);
        return absl::OkStatus();
      }
      case kCompact:
        if (n != 16) return bad("compact");
        ApplyTruncate(shard, segment, GetFixed64(p), GetFixed64(p + 8));
        return absl::OkStatus();
      case kDeleteShard:
        if (n != 0) return bad("delete");
        ApplyDelete(shard);
        return absl::OkStatus();
      case kCheckpoint: {
        if (n < 20) return bad("checkpoint");
        const uint32_t hs_len = GetFixed32(p + 16);
        raftpb::HardState hs;
        raftpb::SnapshotMetadata snap;
        if (n - 20 < hs_len || !hs.ParseFromArray(p + 20, static_cast<int>(hs_len)) ||
            !snap.ParseFromArray(p + 20 + hs_len, static_cast<int>(n - 20 - hs_len))) {
          return bad("checkpoint");
        }
        ApplyTruncate(shard, segment, GetFixed64(p), GetFixed64(p + 8));
        ApplyHardState(shard, segment, hs);
        ShardState& s = shards[shard];
        s.meta.snapshot = snap;
        s.snapshot_segment = segment;
        return absl::OkStatus();
      }
      default:
        return bad(absl::StrCat("type ", type));
    }
  }

  // Replays the records of a frame whose CRC matched.
  absl::Status ReplayFrame(uint64_t segment, uint64_t records_offset, const char* p, size_t n)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    size_t pos = 0;
    while (pos < n) {
      if (n - pos < kRecordHeaderBytes || GetFixed32(p + pos + 1) > n - pos - kRecordHeaderBytes) {
        return absl::DataLossError(absl::StrCat("raft log: ", SegmentName(segment), " offset ",
                                                records_offset + pos, ": bad record length"));
      }
      const uint8_t type = static_cast<uint8_t>(p[pos]);
      const uint32_t length = GetFixed32(p + pos + 1);
      TESSERA_RETURN_IF_ERROR(Replay(segment, records_offset + pos + kRecordHeaderBytes, type,
                                     p + pos + kRecordHeaderBytes, length));
      pos += kRecordHeaderBytes + length;
    }
    return absl::OkStatus();
  }

  // ---- files ----

  absl::StatusOr<std::shared_ptr<Segment>> CreateSegment(uint64_t id) {
    auto seg = std::make_shared<Segment>();
    seg->id = id;
    seg->path = absl::StrCat(dir, "/", SegmentName(id));
    // Never an existing file: the newest segment at Open is the current one.
    seg->fd = open(seg->path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (seg->fd < 0) return IoError("create", seg->path, errno);
    if (options.preallocate && options.segment_bytes > 0) {
      // Best effort: a filesystem without fallocate grows the file as written.
      if (fallocate(seg->fd, 0, 0, static_cast<off_t>(options.segment_bytes)) != 0 &&
          errno == ENOSPC) {
        return IoError("preallocate", seg->path, errno);
      }
    }
    if (fdatasync(seg->fd) != 0) return IoError("sync", seg->path, errno);
    TESSERA_RETURN_IF_ERROR(SyncDir(dir));
    return seg;
  }

  absl::Status Sync(const Segment& seg) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    const auto start = std::chrono::steady_clock::now();
    if (fdatasync(seg.fd) != 0) return IoError("sync", seg.path, errno);
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(
                            std::chrono::steady_clock::now() - start)
                            .count();
    absl::MutexLock lock(&mu);
    ++stats.syncs;
    stats.sync_micros += static_cast<uint64_t>(micros);
    return absl::OkStatus();
  }

  std::shared_ptr<Segment> CurrentSegment() const ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return segments.at(current);
  }

  // Appends `buf` to the current segment (rolling over first if it does not
  // fit), syncing if asked. Sets *segment and *offset to where `buf` went.
  // A failure poisons the engine: the tail may hold part of the write.
  absl::Status Append(std::string& buf, bool sync, uint64_t* segment, uint64_t* offset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    TESSERA_RETURN_IF_ERROR(failed);
    SealFrame(&buf);
    absl::Status s = AppendUnchecked(buf, sync, segment, offset);
    if (!s.ok()) failed = s;
    return s;
  }
  absl::Status AppendUnchecked(const std::string& buf, bool sync, uint64_t* segment,
                               uint64_t* offset) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    std::shared_ptr<Segment> seg = CurrentSegment();
    if (write_offset > 0 && write_offset + buf.size() > options.segment_bytes) {
      // Everything in the old segment becomes durable before the new one
      // exists: recovery may then treat only the newest segment's tail as
      // torn.
      TESSERA_RETURN_IF_ERROR(Sync(*seg));
      TESSERA_ASSIGN_OR_RETURN(seg, CreateSegment(seg->id + 1));
      {
        absl::MutexLock lock(&mu);
        segments.emplace(seg->id, seg);
        current = seg->id;
        stats.segments = segments.size();
      }
      write_offset = 0;
      zeroed_until = 0;
    }
    ZeroAhead(*seg, write_offset + buf.size());
    TESSERA_RETURN_IF_ERROR(WriteAllAt(seg->fd, seg->path, buf.data(), buf.size(), write_offset));
    *segment = seg->id;
    *offset = write_offset;
    write_offset += buf.size();
    {
      absl::MutexLock lock(&mu);
      stats.bytes_written += buf.size();
    }
    if (sync) TESSERA_RETURN_IF_ERROR(Sync(*seg));
    return absl::OkStatus();
  }

  // Writes zeros over [max(zeroed_until, end), end + kZeroAheadBytes) of the
  // current segment (within segment_bytes) once the writer comes within half
  // a chunk of zeroed_until. Not synced: the next data sync takes them
  // along; after a crash, lost zeros are the zeros of fallocate or the end
  // of the file, both an end of the log to recovery. Best effort: a failed
  // zero write (a full disk) only costs the metadata writes it would have
  // saved; the data write after it reports what matters.
  void ZeroAhead(const Segment& seg, uint64_t end) ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    if (end + kZeroAheadBytes / 2 <= zeroed_until) return;
    const uint64_t from = std::max(zeroed_until, end);
    const uint64_t to = std::min(options.segment_bytes, end + kZeroAheadBytes);
    if (from < to) {
      static const std::string* const zeros = new std::string(kZeroAheadBytes, '\0');
      if (!WriteAllAt(seg.fd, seg.path, zeros->data(), to - from, from).ok()) return;
    }
    zeroed_until = std::max(zeroed_until, to);
  }

  // Unlinks the oldest segments once no live shard needs anything in them,
  // first re-writing (synced) the state records of shards that live only
  // there (kCheckpoint) and recording the new floor in PURGED.
  absl::Status MaybePurge() ABSL_EXCLUSIVE_LOCKS_REQUIRED(write_mu) {
    TESSERA_RETURN_IF_ERROR(failed);
    std::string buf;
    std::vector<ShardId> checkpointed;
    uint64_t last_purged = 0;
    uint64_t oldest = 0;
    {
      absl::MutexLock lock(&mu);
      oldest = segments.begin()->first;
      last_purged = current - 1;
      for (const auto& [shard, s] : shards) {
        if (!s.locs.empty()) last_purged = std::min(last_purged, s.locs.front().segment - 1);
      }
      if (last_purged < oldest) return absl::OkStatus();
      for (const auto& [shard, s] : shards) {
        auto old = [&](uint64_t seg) { return seg != 0 && seg <= last_purged; };
        if (!old(s.hard_state_segment) && !old(s.snapshot_segment) && !old(s.truncated_segment)) {
          continue;
        }
        checkpointed.push_back(shard);
        const ShardLogMeta& m = s.meta;
        AppendCheckpoint(shard, m.truncated_index, m.truncated_term, m.hard_state, m.snapshot,
                         &buf);
      }
    }
    // Everything the surviving segments hold becomes durable before any
    // older record disappears (an unsynced compact or hard state may be the
    // shard's only record of it once the older segments are gone).
    uint64_t segment = 0;
    uint64_t offset = 0;
    if (!buf.empty()) {
      TESSERA_RETURN_IF_ERROR(Append(buf, /*sync=*/true, &segment, &offset));
    } else {
      absl::Status s = Sync(*CurrentSegment());
      if (!s.ok()) {
        failed = s;
        return s;
      }
    }
    {
      absl::MutexLock lock(&mu);
      for (ShardId shard : checkpointed) {
        auto it = shards.find(shard);
        if (it == shards.end()) continue;
        it->second.hard_state_segment = it->second.snapshot_segment = it->second.truncated_segment =
            segment;
      }
    }
    // The floor first (a crash while unlinking must not leave an older
    // segment to be replayed after a newer one is gone), then the files.
    const std::string floor = absl::StrCat(dir, "/PURGED");
    const std::string tmp = floor + ".tmp";
    {
      int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return IoError("create", tmp, errno);
      const std::string text = absl::StrCat(last_purged + 1, "\n");
      absl::Status s = WriteAllAt(fd, tmp, text.data(), text.size(), 0);
      if (s.ok() && fdatasync(fd) != 0) s = IoError("sync", tmp, errno);
      close(fd);
      TESSERA_RETURN_IF_ERROR(s);
      if (rename(tmp.c_str(), floor.c_str()) != 0) return IoError("rename", tmp, errno);
      TESSERA_RETURN_IF_ERROR(SyncDir(dir));
    }
    std::vector<std::shared_ptr<Segment>> doomed;
    {
      absl::MutexLock lock(&mu);
      while (!segments.empty() && segments.begin()->first <= last_purged) {
        doomed.push_back(segments.begin()->second);
        segments.erase(segments.begin());
      }
      stats.purged_segments += doomed.size();
      stats.segments = segments.size();
    }
    // Readers holding a segment keep its descriptor open until they finish.
    for (const auto& seg : doomed) {
      if (unlink(seg->path.c_str()) != 0 && errno != ENOENT) {
        return IoError("unlink", seg->path, errno);
      }
    }
    return SyncDir(dir);
  }

  absl::Status Recover() ABSL_LOCKS_EXCLUDED(mu);
  // Recovery only: segments were purged (the floor is above 1).
  bool replaying_purged_history ABSL_GUARDED_BY(mu) = false;
};

namespace {

// Whether some 512-byte sector of data[begin, begin + size) (sectors at
// file offsets that are multiples of 512; the first and last may be
// partial) is all zeros: never written.
bool HasUnwrittenSector(const std::string& data, size_t begin, size_t size) {
  constexpr size_t kSector = 512;
  const size_t end = std::min(data.size(), begin + size);
  for (size_t from = begin; from < end;) {
    const size_t to = std::min(end, (from / kSector + 1) * kSector);
    if (std::all_of(data.begin() + from, data.begin() + to, [](char c) { return c == '\0'; })) {
      return true;
    }
    from = to;
  }
  return false;
}

}  // namespace

// Reads PURGED (the first segment still needed), lists the segments,
// replays them oldest first and cuts a torn tail off the newest.
absl::Status LogEngine::Impl::Recover() {
  uint64_t floor = 1;
  {
    const std::string path = absl::StrCat(dir, "/PURGED");
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      char buf[32] = {};
      ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
      close(fd);
      uint64_t v = 0;
      bool digits = n > 0;
      for (ssize_t i = 0; i < n && buf[i] != '\n'; ++i) {
        if (buf[i] < '0' || buf[i] > '9') digits = false;
        v = v * 10 + static_cast<uint64_t>(buf[i] - '0');
      }
      if (!digits || v == 0) return absl::DataLossError(absl::StrCat("raft log: bad ", path));
      floor = v;
    } else if (errno != ENOENT) {
      return IoError("open", path, errno);
    }
  }
  std::vector<uint64_t> ids;
  {
    DIR* d = opendir(dir.c_str());
    if (d == nullptr) return IoError("list", dir, errno);
    while (dirent* e = readdir(d)) {
      const uint64_t id = ParseSegmentName(e->d_name);
      if (id != 0) ids.push_back(id);
    }
    closedir(d);
  }
  std::sort(ids.begin(), ids.end());
  // Segments below the floor were being purged when the process stopped.
  while (!ids.empty() && ids.front() < floor) {
    const std::string path = absl::StrCat(dir, "/", SegmentName(ids.front()));
    if (unlink(path.c_str()) != 0 && errno != ENOENT) return IoError("unlink", path, errno);
    ids.erase(ids.begin());
  }
  if (!ids.empty() && ids.front() != floor) {
    return absl::DataLossError(
        absl::StrCat("raft log: segment ", SegmentName(floor), " is missing in ", dir));
  }
  for (size_t i = 1; i < ids.size(); ++i) {
    if (ids[i] != ids[i - 1] + 1) {
      return absl::DataLossError(
          absl::StrCat("raft log: segment ", SegmentName(ids[i - 1] + 1), " is missing in ", dir));
    }
  }
  if (ids.empty()) {
    TESSERA_ASSIGN_OR_RETURN(std::shared_ptr<Segment> seg, CreateSegment(floor));
    absl::MutexLock wlock(&write_mu);
    absl::MutexLock lock(&mu);
    segments.emplace(seg->id, seg);
    current = seg->id;
    stats.segments = 1;
    write_offset = 0;
    zeroed_until = 0;
    return absl::OkStatus();
  }
  absl::MutexLock wlock(&write_mu);
  absl::MutexLock lock(&mu);
  replaying_purged_history = floor > 1;
  for (size_t i = 0; i < ids.size(); ++i) {
    const bool newest = i + 1 == ids.size();
    auto seg = std::make_shared<Segment>();
    seg->id = ids[i];
    seg->path = absl::StrCat(dir, "/", SegmentName(ids[i]));
    seg->fd = open(seg->path.c_str(), O_RDWR | O_CLOEXEC);
    if (seg->fd < 0) return IoError("open", seg->path, errno);
    struct stat st;
    if (fstat(seg->fd, &st) != 0) return IoError("stat", seg->path, errno);
    std::string data(static_cast<size_t>(st.st_size), '\0');
    TESSERA_RETURN_IF_ERROR(ReadAllAt(seg->fd, seg->path, data.data(), data.size(), 0));
    size_t pos = 0;
    std::string torn;  // why the newest segment ends early, if it does
    while (true) {
      const size_t left = data.size() - pos;
      if (left == 0) break;
      if (left < kHeaderBytes) {
        if (data.find_first_not_of('\0', pos) != std::string::npos) torn = "short header";
        break;
      }
      const char* h = data.data() + pos;
      const uint32_t crc = GetFixed32(h);
      const uint32_t length = GetFixed32(h + 4);
      const uint8_t format = static_cast<uint8_t>(h[8]);
      if (crc == 0 && length == 0 && format == 0) {
        if (data.find_first_not_of('\0', pos) != std::string::npos) {
          torn = "data after the end marker";
        }
        break;
      }
      if (length > kMaxRecordBytes || length > left - kHeaderBytes) {
        torn = "short record";
        break;
      }
      if (Crc(h + 4, 5 + length) != crc) {
        // A write cut short by a crash leaves whole sectors unwritten, and
        // those read as zeros (a segment is zero-filled ahead of the
        // writes). Without such a sector the record was written whole and
        // then damaged: it may have been acknowledged, so it is not cut
        // off as a torn tail (etcd's WAL decides the same way).
        if (!HasUnwrittenSector(data, pos, kHeaderBytes + length)) {
          return absl::DataLossError(
              absl::StrCat("raft log: ", seg->path, " offset ", pos,
                           ": checksum mismatch in a record written whole (damaged, not torn)"));
        }
        torn = "checksum mismatch";
        break;
      }
      if (format != kFrameFormat) {
        return absl::DataLossError(absl::StrCat("raft log: ", seg->path, " offset ", pos,
                                                ": unknown frame format ", format));
      }
      TESSERA_RETURN_IF_ERROR(ReplayFrame(seg->id, pos + kHeaderBytes, h + kHeaderBytes, length));
      pos += kHeaderBytes + length;
    }
    if (!torn.empty()) {
      if (!newest) {
        return absl::DataLossError(absl::StrCat("raft log: ", seg->path, " offset ", pos, ": ",
                                                torn, " in a segment followed by newer ones"));
      }
      // The tail of the newest segment: a write the crash interrupted (or
      // never synced). Cut it off and zero the rest, so that later appends
      // are never followed by stale bytes.
      std::fprintf(stderr, "raft log: %s: cutting a torn tail at offset %zu (%s, %zu bytes)\n",
                   seg->path.c_str(), pos, torn.c_str(), data.size() - pos);
      ++stats.torn_tail_records;
      stats.torn_tail_bytes += data.size() - pos;
      if (ftruncate(seg->fd, static_cast<off_t>(pos)) != 0) {
        return IoError("truncate", seg->path, errno);
      }
      if (options.preallocate && options.segment_bytes > pos) {
        if (fallocate(seg->fd, 0, 0, static_cast<off_t>(options.segment_bytes)) != 0 &&
            errno == ENOSPC) {
          return IoError("preallocate", seg->path, errno);
        }
      }
      if (fdatasync(seg->fd) != 0) return IoError("sync", seg->path, errno);
    }
    if (newest) {
      write_offset = pos;
      zeroed_until = pos;
      current = seg->id;
    }
    segments.emplace(seg->id, std::move(seg));
  }
  stats.segments = segments.size();
  replaying_purged_history = false;
  for (auto& [shard, s] : shards) {
    // Entries from index 1 on (or none): nothing was ever truncated.
    if (s.provisional && s.meta.truncated_index == 0) s.provisional = false;
    if (s.provisional) {
      return absl::DataLossError(absl::StrCat(
          "raft log: shard ", shard, ": the start of its log is in a purged segment of ", dir));
    }
  }
  return absl::OkStatus();
}

LogEngine::LogEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
LogEngine::~LogEngine() = default;

absl::StatusOr<std::unique_ptr<LogEngine>> LogEngine::Open(const std::string& dir,
                                                           const LogEngineOptions& options) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("raft log: cannot create ", dir, ": ", ec.message()));
  }
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  impl->options = options;
  TESSERA_RETURN_IF_ERROR(impl->Recover());
  return std::unique_ptr<LogEngine>(new LogEngine(std::move(impl)));
}

absl::Status LogEngine::DoSave(absl::Span<const LogUpdate> updates, Durability durability) {
  if (updates.empty()) return absl::OkStatus();
  bool any = false;
  for (const LogUpdate& u : updates) {
    any = any || u.snapshot.has_value() || !u.entries.empty() || u.hard_state.has_value();
  }
  if (!any) return absl::OkStatus();
  Impl& d = *impl_;
  if (d.options.space != nullptr) TESSERA_RETURN_IF_ERROR(d.options.space->Check());
  absl::MutexLock wlock(&d.write_mu);
  {
    // Validate everything before writing anything.
    absl::flat_hash_map<ShardId, ShardLogMeta> metas;
    absl::MutexLock lock(&d.mu);
    std::vector<internal::IndexRange> unused;
    for (const LogUpdate& u : updates) {
      auto it = metas.find(u.shard);
      if (it == metas.end()) {
        auto s = d.shards.find(u.shard);
        it = metas.emplace(u.shard, s == d.shards.end() ? ShardLogMeta{} : s->second.meta).first;
      }
      TESSERA_RETURN_IF_ERROR(internal::PlanLogUpdate(u, &it->second, &unused));
    }
  }
  // Records, in update order: snapshot, entries, hard state.
  std::string buf;
  struct Pending {
    const LogUpdate* update;
    std::vector<EntryRef> refs;  // offsets relative to buf
  };
  std::vector<Pending> pending;
  pending.reserve(updates.size());
  const bool cache = d.options.cache_bytes > 0;
  for (const LogUpdate& u : updates) {
    Pending p{&u, {}};
    if (u.snapshot.has_value()) {
      AppendRecord(kSnapshot, &buf, [&](std::string* out) {
        PutFixed64(u.shard, out);
        u.snapshot->AppendToString(out);
      });
    }
    if (!u.entries.empty()) {
      AppendEntries(u.shard, u.entries, cache, &buf, &p.refs);
    }
    if (u.hard_state.has_value()) {
      AppendRecord(kHardState, &buf, [&](std::string* out) {
        PutFixed64(u.shard, out);
        u.hard_state->AppendToString(out);
      });
    }
    pending.push_back(std::move(p));
  }
  uint64_t segment = 0;
  uint64_t offset = 0;
  absl::Status s = d.Append(buf, durability == Durability::kSynced, &segment, &offset);
  if (d.options.space != nullptr) s = d.options.space->Annotate(s);
  TESSERA_RETURN_IF_ERROR(s);
  const bool rolled = offset == 0;
  {
    absl::MutexLock lock(&d.mu);
    for (Pending& p : pending) {
      const LogUpdate& u = *p.update;
      if (u.snapshot.has_value()) d.ApplySnapshot(u.shard, segment, *u.snapshot);
      if (!p.refs.empty()) {
        for (EntryRef& r : p.refs) r.offset += offset;
        d.ApplyEntries(u.shard, segment, p.refs);
      }
      if (u.hard_state.has_value()) d.ApplyHardState(u.shard, segment, *u.hard_state);
    }
  }
  if (rolled) return d.MaybePurge();
  return absl::OkStatus();
}

absl::StatusOr<LogState> LogEngine::State(ShardId shard) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->shards.find(shard);
  if (it == impl_->shards.end()) return ShardLogMeta{}.ToState();
  return it->second.meta.ToState();
}

absl::StatusOr<std::vector<ShardId>> LogEngine::Shards() const {
  std::vector<ShardId> out;
  {
    absl::MutexLock lock(&impl_->mu);
    for (const auto& [id, state] : impl_->shards) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::StatusOr<std::vector<raftpb::Entry>> LogEngine::Entries(ShardId shard, uint64_t lo,
                                                              uint64_t hi,
                                                              uint64_t max_bytes) const {
  Impl& d = *impl_;
  std::vector<raftpb::Entry> out;
  // Entries to read from disk: position in `out`, location, segment.
  struct Miss {
    size_t slot;
    Loc loc;
    std::shared_ptr<Segment> segment;
  };
  std::vector<Miss> misses;
  {
    absl::MutexLock lock(&d.mu);
    auto it = d.shards.find(shard);
    const ShardLogMeta empty;
    const ShardLogMeta& m = it == d.shards.end() ? empty : it->second.meta;
    TESSERA_RETURN_IF_ERROR(internal::CheckEntriesRange(m, lo, hi));
    if (lo == hi) return out;
    const ShardState& s = it->second;
    uint64_t bytes = 0;
    for (uint64_t i = lo; i < hi; ++i) {
      const Loc& loc = s.locs[i - m.truncated_index - 1];
      bytes += loc.length;
      if (!out.empty() && bytes > max_bytes) break;
      if (loc.cached != nullptr) {
        out.push_back(*loc.cached);
        ++d.stats.cache_hits;
      } else {
        out.emplace_back();
        Loc copy = loc;
        misses.push_back({out.size() - 1, std::move(copy), d.segments.at(loc.segment)});
        ++d.stats.cache_misses;
      }
    }
  }
  // Contiguous misses in one segment are read with one pread.
  std::string buf;
  for (size_t i = 0; i < misses.size();) {
    size_t j = i + 1;
    while (j < misses.size() && misses[j].segment == misses[i].segment &&
           misses[j].loc.offset > misses[j - 1].loc.offset &&
           misses[j].loc.offset - misses[i].loc.offset < (1u << 20)) {
      ++j;
    }
    const uint64_t start = misses[i].loc.offset;
    const uint64_t end = misses[j - 1].loc.offset + misses[j - 1].loc.length;
    buf.resize(static_cast<size_t>(end - start));
    const Segment& seg = *misses[i].segment;
    TESSERA_RETURN_IF_ERROR(ReadAllAt(seg.fd, seg.path, buf.data(), buf.size(), start));
    for (size_t k = i; k < j; ++k) {
      const Loc& loc = misses[k].loc;
      raftpb::Entry& e = out[misses[k].slot];
      if (!e.ParseFromArray(buf.data() + (loc.offset - start), static_cast<int>(loc.length))) {
        return absl::DataLossError(absl::StrCat("raft log: ", seg.path, " offset ", loc.offset,
                                                ": corrupt entry of shard ", shard));
      }
    }
    i = j;
  }
  for (size_t k = 0; k < out.size(); ++k) {
    if (out[k].index() != lo + k) {
      return absl::DataLossError(absl::StrCat("raft log: shard ", shard, ": entry ", lo + k,
                                              " reads back as ", out[k].index()));
    }
  }
  return out;
}

absl::StatusOr<uint64_t> LogEngine::Term(ShardId shard, uint64_t index) const {
  absl::MutexLock lock(&impl_->mu);
  auto it = impl_->shards.find(shard);
  const ShardLogMeta empty;
  const ShardLogMeta& m = it == impl_->shards.end() ? empty : it->second.meta;
  bool answered = false;
  uint64_t term = 0;
  TESSERA_RETURN_IF_ERROR(internal::CheckTermIndex(m, index, &answered, &term));
  if (answered) return term;
  return it->second.locs[index - m.truncated_index - 1].term;
}

absl::Status LogEngine::Compact(ShardId shard, uint64_t index) {
  Impl& d = *impl_;
  absl::MutexLock wlock(&d.write_mu);
  uint64_t term = 0;
  {
    absl::MutexLock lock(&d.mu);
    auto it = d.shards.find(shard);
    const ShardLogMeta empty;
    const ShardLogMeta& m = it == d.shards.end() ? empty : it->second.meta;
    TESSERA_RETURN_IF_ERROR(internal::CheckCompactIndex(m, index));
    term = index == m.truncated_index ? m.truncated_term
                                      : it->second.locs[index - m.truncated_index - 1].term;
  }
  std::string buf;
  AppendRecord(kCompact, &buf, [&](std::string* out) {
    PutFixed64(shard, out);
    PutFixed64(index, out);
    PutFixed64(term, out);
  });
  uint64_t segment = 0;
  uint64_t offset = 0;
  // Not synced: see log_engine.h ("Crash rule across engines").
  TESSERA_RETURN_IF_ERROR(d.Append(buf, /*sync=*/false, &segment, &offset));
  {
    absl::MutexLock lock(&d.mu);
    d.ApplyTruncate(shard, segment, index, term);
  }
  return d.MaybePurge();
}

absl::Status LogEngine::DeleteShard(ShardId shard) {
  Impl& d = *impl_;
  absl::MutexLock wlock(&d.write_mu);
  {
    absl::MutexLock lock(&d.mu);
    if (!d.shards.contains(shard)) return absl::OkStatus();
  }
  std::string buf;
  AppendRecord(kDeleteShard, &buf, [&](std::string* out) { PutFixed64(shard, out); });
  uint64_t segment = 0;
  uint64_t offset = 0;
  TESSERA_RETURN_IF_ERROR(d.Append(buf, /*sync=*/true, &segment, &offset));
  {
    absl::MutexLock lock(&d.mu);
    d.ApplyDelete(shard);
  }
  return d.MaybePurge();
}

absl::Status LogEngine::Import(absl::Span<const ShardImport> imports) {
  Impl& d = *impl_;
  std::string buf;
  for (const ShardImport& im : imports) {
    for (size_t i = 0; i < im.entries.size(); ++i) {
      if (im.entries[i].index() != im.truncated_index + 1 + i) {
        return absl::InvalidArgumentError(
            absl::StrCat("raft log import: shard ", im.shard, ": entries not contiguous"));
      }
    }
    AppendRecord(kDeleteShard, &buf, [&](std::string* out) { PutFixed64(im.shard, out); });
    AppendCheckpoint(im.shard, im.truncated_index, im.truncated_term, im.hard_state, im.snapshot,
                     &buf);
    if (!im.entries.empty()) AppendEntries(im.shard, im.entries, /*cache=*/false, &buf, nullptr);
  }
  if (buf.empty()) return absl::OkStatus();
  absl::MutexLock wlock(&d.write_mu);
  uint64_t segment = 0;
  uint64_t offset = 0;
  TESSERA_RETURN_IF_ERROR(d.Append(buf, /*sync=*/true, &segment, &offset));
  // Apply through the recovery path: the same decoding as a restart.
  absl::MutexLock lock(&d.mu);
  return d.ReplayFrame(segment, offset + kHeaderBytes, buf.data() + kHeaderBytes,
                       buf.size() - kHeaderBytes);
}

LogEngine::Stats LogEngine::GetStats() const {
  absl::MutexLock lock(&impl_->mu);
  return impl_->stats;
}

std::vector<uint64_t> LogEngine::SegmentsForTesting() const {
  absl::MutexLock lock(&impl_->mu);
  std::vector<uint64_t> out;
  for (const auto& [id, seg] : impl_->segments) out.push_back(id);
  return out;
}

}  // namespace tessera::storage
