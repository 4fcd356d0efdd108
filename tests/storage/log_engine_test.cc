// LogEngine-only tests: recovery of torn tails and corruption, segment
// roll-over and purge, the entry cache, and reopen against a MemRaftLog model.
// (The RaftLog conformance suite in raft_log_test.cc runs on it too.)
#include "storage/log_engine.h"

#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <iostream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"
#include "storage/mem_raft_log.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

using ::tessera::storage::testing::MakeEntry;
using ::tessera::storage::testing::TempDir;
using ::tessera::testing::IsOk;
using ::tessera::testing::StatusIs;

constexpr uint64_t kNoLimit = std::numeric_limits<uint64_t>::max();

LogEngineOptions Small(uint64_t segment_bytes = 16 << 10, uint64_t cache_bytes = 0) {
  LogEngineOptions o;
  o.segment_bytes = segment_bytes;
  o.cache_bytes = cache_bytes;
  return o;
}

std::unique_ptr<LogEngine> OpenOrDie(const std::string& dir, const LogEngineOptions& o) {
  absl::StatusOr<std::unique_ptr<LogEngine>> log = LogEngine::Open(dir, o);
  EXPECT_THAT(log, IsOk());
  return log.ok() ? *std::move(log) : nullptr;
}

LogUpdate Update(ShardId shard, uint64_t first, uint64_t last, uint64_t term,
                 size_t data_bytes = 40) {
  LogUpdate u;
  u.shard = shard;
  for (uint64_t i = first; i <= last; ++i) {
    u.entries.push_back(
        MakeEntry(i, term, std::string(data_bytes, static_cast<char>('a' + i % 26))));
  }
  raftpb::HardState hs;
  hs.set_term(term);
  hs.set_vote(shard % 3);
  hs.set_commit(last);
  u.hard_state = hs;
  return u;
}

// Everything State/Entries/Term say about `shards`, as one string.
std::string Fingerprint(const RaftLog& log, const std::vector<ShardId>& shards) {
  std::string out;
  for (ShardId s : shards) {
    absl::StatusOr<LogState> st = log.State(s);
    if (!st.ok()) return st.status().ToString();
    absl::StrAppend(&out, "shard ", s, " first ", st->first_index, " last ", st->last_index, " hs ",
                    st->hard_state.ShortDebugString(), " snap ", st->snapshot.ShortDebugString(),
                    "\n");
    absl::StatusOr<uint64_t> t = log.Term(s, st->first_index - 1);
    absl::StrAppend(&out, " truncated term ", t.ok() ? std::to_string(*t) : t.status().ToString(),
                    "\n");
    absl::StatusOr<std::vector<raftpb::Entry>> entries =
        log.Entries(s, st->first_index, st->last_index + 1, kNoLimit);
    if (!entries.ok()) return entries.status().ToString();
    for (const raftpb::Entry& e : *entries) {
      absl::StatusOr<uint64_t> term = log.Term(s, e.index());
      absl::StrAppend(&out, " ", e.index(), "/", e.term(), "/", e.data().size(), "/",
                      term.ok() ? *term : 999, "\n");
    }
  }
  return out;
}

std::string SegmentPath(const std::string& dir, uint64_t id) {
  char name[32];
  snprintf(name, sizeof(name), "/%06llu.log", static_cast<unsigned long long>(id));
  return dir + name;
}

void CopyDir(const std::string& from, const std::string& to) {
  std::filesystem::remove_all(to);
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
}

void Overwrite(const std::string& path, uint64_t offset, const std::string& bytes) {
  int fd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  close(fd);
}

// The extents of `path` that overlap [0, length) and are still unwritten
// (fallocated, never written), after writing the file back; -1 if the
// filesystem cannot tell (no FIEMAP, as tmpfs).
int UnwrittenExtentsBelow(const std::string& path, uint64_t length) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) return -1;
  constexpr uint32_t kMaxExtents = 256;
  std::vector<char> buf(sizeof(fiemap) + kMaxExtents * sizeof(fiemap_extent), 0);
  auto* map = reinterpret_cast<fiemap*>(buf.data());
  map->fm_start = 0;
  map->fm_length = length;
  map->fm_flags = FIEMAP_FLAG_SYNC;
  map->fm_extent_count = kMaxExtents;
  const int rc = ioctl(fd, FS_IOC_FIEMAP, map);
  close(fd);
  if (rc != 0) return -1;
  int unwritten = 0;
  for (uint32_t i = 0; i < map->fm_mapped_extents; ++i) {
    const fiemap_extent& e = map->fm_extents[i];
    if (e.fe_logical < length && (e.fe_flags & FIEMAP_EXTENT_UNWRITTEN) != 0) ++unwritten;
  }
  return unwritten;
}

// A synced save writes no metadata: the writer keeps the blocks ahead of it
// written (zeros), so no fdatasync follows a write that grew the file or
// landed in an unwritten (fallocated) extent (either makes it write the
// inode too).
TEST(LogEngine, WithoutPreallocationSavesDoNotGrowTheFile) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  LogEngineOptions o = Small(8 << 20);
  o.preallocate = false;
  std::unique_ptr<LogEngine> log = OpenOrDie(dir, o);
  ASSERT_NE(log, nullptr);
  for (uint64_t i = 1; i <= 400; ++i) {
    const uint64_t before = std::filesystem::file_size(SegmentPath(dir, 1));
    ASSERT_THAT(log->Save({Update(1, i, i, 1, 3000)}, RaftLog::Durability::kSynced), IsOk());
    const uint64_t written = log->GetStats().bytes_written;
    const uint64_t after = std::filesystem::file_size(SegmentPath(dir, 1));
    ASSERT_GE(after, written + (256 << 10)) << "after save " << i;
    // The file grows only by a zero chunk, never by a save's own write.
    if (after != before) {
      ASSERT_GE(after - before, 256u << 10) << "after save " << i;
    }
  }
}

TEST(LogEngine, TheWriterStaysAheadOfUnwrittenExtents) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(8 << 20));
    ASSERT_NE(log, nullptr);
    for (uint64_t i = 1; i <= 200; ++i) {
      ASSERT_THAT(log->Save({Update(1, i, i, 1, 3000)}, RaftLog::Durability::kSynced), IsOk());
      const uint64_t written = log->GetStats().bytes_written;
      const int unwritten = UnwrittenExtentsBelow(SegmentPath(dir, 1), written + (256 << 10));
      if (unwritten < 0) GTEST_SKIP() << "the filesystem of " << dir << " has no FIEMAP";
      ASSERT_EQ(unwritten, 0) << "after save " << i << " (" << written << " bytes)";
    }
  }
  // So does a writer that reopened the log.
  std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(8 << 20));
  ASSERT_NE(log, nullptr);
  ASSERT_THAT(log->Save({Update(1, 201, 201, 1, 3000)}, RaftLog::Durability::kSynced), IsOk());
  const uint64_t size = std::filesystem::file_size(SegmentPath(dir, 1));
  EXPECT_EQ(size, 8u << 20);
  EXPECT_EQ(UnwrittenExtentsBelow(SegmentPath(dir, 1), 201 * 3100 + (256 << 10)), 0);
}

// A record cut at any byte (the file ending there), or at any sector
// boundary with zeros from there on (a crash leaves whole sectors of a
// preallocated segment unwritten), recovers the state before it, counts
// the torn tail, and later appends survive the next reopen.
TEST(LogEngine, TornLastRecordAtEveryByteRecoversThePrefix) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  const std::vector<ShardId> shards = {1, 2};
  std::string before;
  uint64_t start = 0;
  uint64_t end = 0;
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(1 << 20));
    ASSERT_THAT(log->Save({Update(1, 1, 3, 1), Update(2, 1, 2, 1)}), IsOk());
    before = Fingerprint(*log, shards);
    start = log->GetStats().bytes_written;
    // Large enough to span a few sectors.
    ASSERT_THAT(log->Save({Update(1, 4, 5, 2, 700), Update(2, 3, 3, 2, 700)}), IsOk());
    end = log->GetStats().bytes_written;
  }
  ASSERT_GT(end - start, 3 * 512u);
  for (int zeros = 0; zeros < 2; ++zeros) {
    for (uint64_t cut = start; cut < end; ++cut) {
      if (zeros && cut != start && cut % 512 != 0) continue;
      SCOPED_TRACE(absl::StrCat("cut at ", cut, zeros ? " (zeros after)" : " (file ends)"));
      const std::string copy = tmp.path() + "/copy";
      CopyDir(dir, copy);
      if (zeros) {
        Overwrite(SegmentPath(copy, 1), cut, std::string(end - cut, '\0'));
      } else {
        ASSERT_EQ(truncate(SegmentPath(copy, 1).c_str(), static_cast<off_t>(cut)), 0);
      }
      {
        std::unique_ptr<LogEngine> log = OpenOrDie(copy, Small(1 << 20));
        ASSERT_NE(log, nullptr);
        EXPECT_EQ(Fingerprint(*log, shards), before);
        // A cut exactly at the record boundary with zeros after is a clean end.
        EXPECT_EQ(log->GetStats().torn_tail_records, cut == start ? 0u : 1u);
        ASSERT_THAT(log->Save({Update(1, 4, 4, 3)}), IsOk());
      }
      std::unique_ptr<LogEngine> log = OpenOrDie(copy, Small(1 << 20));
      ASSERT_NE(log, nullptr);
      EXPECT_EQ(log->State(1)->last_index, 4u);
      EXPECT_EQ(*log->Term(1, 4), 3u);
      EXPECT_EQ(log->GetStats().torn_tail_records, 0u);
    }
  }
}

// The last record damaged after it was written whole (a changed byte, no
// unwritten sector) may have been acknowledged: data loss, never cut off as
// a torn tail. With one of its sectors unwritten (zeros), it is torn.
TEST(LogEngine, BadChecksumInLastRecordIsDataLossUnlessASectorIsUnwritten) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  uint64_t start = 0;
  uint64_t end = 0;
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(1 << 20));
    ASSERT_THAT(log->Save({Update(1, 1, 3, 1)}), IsOk());
    start = log->GetStats().bytes_written;
    ASSERT_THAT(log->Save({Update(1, 4, 5, 1, 1500)}), IsOk());
    end = log->GetStats().bytes_written;
  }
  const std::string copy = tmp.path() + "/copy";
  CopyDir(dir, copy);
  Overwrite(SegmentPath(copy, 1), start + 20, "X");  // inside the entries payload
  EXPECT_THAT(LogEngine::Open(copy, Small(1 << 20)), StatusIs(absl::StatusCode::kDataLoss));

  // A whole sector inside the record never written, the rest intact.
  const uint64_t sector = (start / 512 + 1) * 512;
  ASSERT_LE(sector + 512, end);
  Overwrite(SegmentPath(dir, 1), sector, std::string(512, '\0'));
  std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(1 << 20));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(log->State(1)->last_index, 3u);
  EXPECT_EQ(log->GetStats().torn_tail_records, 1u);
}

TEST(LogEngine, BadRecordInAnOlderSegmentIsDataLoss) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(4 << 10));
    for (uint64_t i = 1; i <= 100; ++i) ASSERT_THAT(log->Save({Update(1, i, i, 1)}), IsOk());
    ASSERT_GE(log->SegmentsForTesting().size(), 3u);
  }
  Overwrite(SegmentPath(dir, 1), 30, "X");
  EXPECT_THAT(LogEngine::Open(dir, Small(4 << 10)), StatusIs(absl::StatusCode::kDataLoss));
  // Zeroing a header in the middle of an older segment is not an end either.
  Overwrite(SegmentPath(dir, 1), 0, std::string(9, '\0'));
  EXPECT_THAT(LogEngine::Open(dir, Small(4 << 10)), StatusIs(absl::StatusCode::kDataLoss));
}

TEST(LogEngine, MissingSegmentIsDataLoss) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(4 << 10));
    for (uint64_t i = 1; i <= 100; ++i) ASSERT_THAT(log->Save({Update(1, i, i, 1)}), IsOk());
  }
  ASSERT_EQ(unlink(SegmentPath(dir, 2).c_str()), 0);
  EXPECT_THAT(LogEngine::Open(dir, Small(4 << 10)), StatusIs(absl::StatusCode::kDataLoss));
}

// Segments roll over at the size; once every shard compacted past them they
// are unlinked, the state records of a shard that only lives in them (an
// idle shard: hard state and compaction point) are re-written first, and a
// reopen rebuilds the same state.
TEST(LogEngine, RollsOverAndPurgesKeepingIdleShardsState) {
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  const std::vector<ShardId> shards = {1, 2, 3};
  std::string want;
  {
    std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(8 << 10));
    // Shard 3: a snapshot, a few entries, compacted to its end, then idle.
    LogUpdate snap;
    snap.shard = 3;
    snap.snapshot.emplace();
    snap.snapshot->set_index(10);
    snap.snapshot->set_term(2);
    snap.snapshot->mutable_conf_state()->add_voters(7);
    ASSERT_THAT(log->Save({snap, Update(3, 11, 13, 2)}), IsOk());
    ASSERT_THAT(log->Compact(3, 13), IsOk());
    for (uint64_t i = 1; i <= 400; ++i) {
      ASSERT_THAT(log->Save({Update(1, i, i, 1, 100), Update(2, i, i, 1, 100)}), IsOk());
      if (i % 50 == 0) {
        ASSERT_THAT(log->Compact(1, i - 10), IsOk());
        ASSERT_THAT(log->Compact(2, i - 10), IsOk());
      }
    }
    const std::vector<uint64_t> segments = log->SegmentsForTesting();
    ASSERT_FALSE(segments.empty());
    EXPECT_GT(segments.front(), 5u) << "old segments were not purged";
    EXPECT_GT(log->GetStats().purged_segments, 5u);
    EXPECT_FALSE(std::filesystem::exists(SegmentPath(dir, 1)));
    want = Fingerprint(*log, shards);
    EXPECT_THAT(want, ::testing::HasSubstr("shard 3 first 14 last 13"));
    EXPECT_THAT(want, ::testing::HasSubstr("voters: 7"));
  }
  std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(8 << 10));
  ASSERT_NE(log, nullptr);
  EXPECT_EQ(Fingerprint(*log, shards), want);
}

// Recent entries are served from memory (a leader reading its own appends);
// old ones from disk, with the same content.
TEST(LogEngine, RecentEntriesComeFromTheCache) {
  TempDir tmp;
  std::unique_ptr<LogEngine> log = OpenOrDie(tmp.path() + "/log", Small(1 << 20, 16 << 10));
  for (uint64_t i = 1; i <= 200; i += 4) {
    ASSERT_THAT(log->Save({Update(1, i, i + 3, 1, 300)}), IsOk());
    ASSERT_THAT(log->Entries(1, i, i + 4, kNoLimit), IsOk());
  }
  LogEngine::Stats stats = log->GetStats();
  EXPECT_EQ(stats.cache_misses, 0u);
  EXPECT_EQ(stats.cache_hits, 200u);
  EXPECT_LE(stats.cached_bytes, 16u << 10);
  absl::StatusOr<std::vector<raftpb::Entry>> all = log->Entries(1, 1, 201, kNoLimit);
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->size(), 200u);
  for (uint64_t i = 1; i <= 200; ++i) EXPECT_EQ((*all)[i - 1].index(), i);
  EXPECT_GT(log->GetStats().cache_misses, 0u);
  ASSERT_THAT(log->Compact(1, 200), IsOk());
  EXPECT_EQ(log->GetStats().cached_bytes, 0u);
}

// One Save of many shards is one fdatasync; kBuffered and Compact none.
TEST(LogEngine, GroupCommitSyncsOnce) {
  TempDir tmp;
  std::unique_ptr<LogEngine> log = OpenOrDie(tmp.path() + "/log", Small(1 << 20));
  std::vector<LogUpdate> updates;
  for (ShardId s = 0; s < 50; ++s) updates.push_back(Update(s, 1, 2, 1));
  const uint64_t before = log->GetStats().syncs;
  ASSERT_THAT(log->Save(updates), IsOk());
  EXPECT_EQ(log->GetStats().syncs, before + 1);
  ASSERT_THAT(log->Save({Update(1, 3, 3, 1)}, RaftLog::Durability::kBuffered), IsOk());
  ASSERT_THAT(log->Compact(1, 2), IsOk());
  EXPECT_EQ(log->GetStats().syncs, before + 1);
  ASSERT_THAT(log->DeleteShard(2), IsOk());
  EXPECT_EQ(log->GetStats().syncs, before + 2);
}

// Random histories (appends with conflicts, snapshots, compactions, shard
// deletions) over small segments: after every reopen State/Entries/Term are
// exactly a MemRaftLog's given the same calls. Seeded; prints the seed.
TEST(LogEngine, ReopenRebuildsExactlyTheSameState) {
  uint64_t seed = std::random_device{}();
  if (const char* env = std::getenv("TESSERA_SEED"); env != nullptr && *env != '\0') {
    seed = std::strtoull(env, nullptr, 10);
  }
  SCOPED_TRACE(absl::StrCat("seed=", seed, " (replay: TESSERA_SEED=", seed, ")"));
  std::cout << "seed " << seed << "\n";
  std::mt19937_64 rng(seed);
  TempDir tmp;
  const std::string dir = tmp.path() + "/log";
  const std::vector<ShardId> shards = {1, 2, 3, 4};
  MemRaftLog model;
  std::unique_ptr<LogEngine> log = OpenOrDie(dir, Small(6 << 10, 2 << 10));
  uint64_t term = 1;
  for (int step = 0; step < 1500; ++step) {
    const ShardId s = shards[rng() % shards.size()];
    const LogState st = *model.State(s);
    const int op = static_cast<int>(rng() % 20);
    if (std::getenv("LE_DEBUG"))
      std::cerr << "step " << step << " shard " << s << " op " << op << " first " << st.first_index
                << " last " << st.last_index << "\n";
    if (op < 12) {
      // Append, sometimes overwriting a suffix.
      uint64_t first = st.last_index + 1;
      if (op < 2 && st.last_index >= st.first_index) {
        first = st.first_index + rng() % (st.last_index - st.first_index + 1);
        ++term;
      }
      const uint64_t n = 1 + rng() % 5;
      std::vector<LogUpdate> u = {Update(s, first, first + n - 1, term, rng() % 200)};
      const RaftLog::Durability d =
          rng() % 2 ? RaftLog::Durability::kSynced : RaftLog::Durability::kBuffered;
      ASSERT_THAT(model.Save(u, d), IsOk());
      ASSERT_THAT(log->Save(u, d), IsOk());
    } else if (op < 16) {
      if (st.last_index < st.first_index) continue;
      const uint64_t i = st.first_index + rng() % (st.last_index - st.first_index + 1);
      ASSERT_THAT(model.Compact(s, i), IsOk());
      ASSERT_THAT(log->Compact(s, i), IsOk());
    } else if (op < 18) {
      LogUpdate u;
      u.shard = s;
      u.snapshot.emplace();
      u.snapshot->set_index(st.last_index + rng() % 10);
      u.snapshot->set_term(term);
      u.snapshot->mutable_conf_state()->add_voters(step);
      ASSERT_THAT(model.Save({u}), IsOk());
      ASSERT_THAT(log->Save({u}), IsOk());
    } else if (op == 18) {
      ASSERT_THAT(model.DeleteShard(s), IsOk());
      ASSERT_THAT(log->DeleteShard(s), IsOk());
    } else {
      log.reset();
      log = OpenOrDie(dir, Small(6 << 10, 2 << 10));
      ASSERT_NE(log, nullptr);
    }
    ASSERT_EQ(Fingerprint(*log, shards), Fingerprint(model, shards)) << "step " << step;
    ASSERT_EQ(*log->Shards(), *model.Shards()) << "step " << step;
  }
  EXPECT_GT(log->SegmentsForTesting().front(), 1u) << "nothing was ever purged";
}

}  // namespace
}  // namespace tessera::storage
