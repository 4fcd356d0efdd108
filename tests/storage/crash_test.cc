// Crash tests. 1: a child process appends to the raft log and applies to the
// KvStore in a loop, acknowledging each Save through a pipe (every other Save
// is Durability::kBuffered, which must survive kill -9 too), and compacts
// every 64 entries over small log segments (so roll-overs and purges happen
// all the time); the parent kill -9s it at a random point, then checks in a
// fresh process that every acknowledged entry and hard state is present and
// intact and that each shard's applied index is consistent with its data. 2: a child stages and
// commits snapshots in a loop and is killed mid-install: the shard is the old state or the new,
// never a mix (below).
//
// Every RocksDB access happens in forked children: the test process itself
// stays single-threaded, so fork() never copies a process with RocksDB's
// background threads (which the child would not have).
//
// The kill point is random: seeded from TESSERA_SEED if set, else from
// std::random_device; a failure prints the seed.
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "storage/engine.h"
#include "tests/storage/test_util.h"

namespace tessera::storage {
namespace {

constexpr ShardId kShards[] = {1, 7, std::numeric_limits<ShardId>::max()};
constexpr int kIterations = 8;

// Small raft log segments (about 30 Saves each), so that the kills also land
// in segment roll-overs and in purges (compaction every 64 entries frees the
// old segments).
EngineOptions CrashOptions() {
  EngineOptions o;
  o.raft_log_segment_bytes = 32 << 10;
  return o;
}

std::string EntryData(ShardId shard, uint64_t index) {
  std::string data = absl::StrCat("shard=", shard, " index=", index, " ");
  data.resize(300, static_cast<char>('a' + index % 26));
  return data;
}
std::string Key(uint64_t index) {
  char key[32];
  snprintf(key, sizeof(key), "k%010llu", static_cast<unsigned long long>(index));
  return key;
}
std::string Value(ShardId shard, uint64_t index) {
  return absl::StrCat("value of ", index, " in ", shard, std::string(index % 50, '\0'));
}

bool WriteAll(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// Reads exactly n bytes; false on EOF or error.
bool ReadAll(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The child's write loop; never returns. Exit codes: 2 open failed, 3 write
// failed, 4 inconsistent state found at start.
[[noreturn]] void WriterLoop(const std::string& dir, int ack_fd) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir, CrashOptions());
  if (!engine.ok()) _exit(2);
  RaftLog& log = (*engine)->raft_log();
  KvStore& kv = (*engine)->kv_store();
  // Every Save covers all shards, so they all end at the same index.
  absl::StatusOr<LogState> first = log.State(kShards[0]);
  if (!first.ok()) _exit(4);
  uint64_t next = first->last_index + 1;
  std::vector<uint64_t> applied;
  for (ShardId s : kShards) {
    absl::StatusOr<LogState> state = log.State(s);
    absl::StatusOr<uint64_t> a = kv.AppliedIndex(s);
    if (!state.ok() || state->last_index + 1 != next || !a.ok()) _exit(4);
    applied.push_back(*a);
  }
  while (true) {
    std::vector<LogUpdate> updates;
    for (ShardId s : kShards) {
      LogUpdate u;
      u.shard = s;
      raftpb::Entry e;
      e.set_index(next);
      e.set_term(1 + next / 100);
      e.set_data(EntryData(s, next));
      u.entries.push_back(std::move(e));
      raftpb::HardState hs;
      hs.set_term(1 + next / 100);
      hs.set_commit(next);
      u.hard_state = hs;
      updates.push_back(std::move(u));
    }
    const RaftLog::Durability durability =
        next % 2 == 0 ? RaftLog::Durability::kSynced : RaftLog::Durability::kBuffered;
    if (!log.Save(updates, durability).ok()) _exit(3);
    if (!WriteAll(ack_fd, &next, sizeof(next))) _exit(3);
    // Apply everything committed so far (after a restart: catch up).
    std::vector<ShardWrite> writes;
    for (size_t i = 0; i < std::size(kShards); ++i) {
      for (uint64_t j = applied[i] + 1; j <= next; ++j) {
        writes.push_back(ShardWrite{kShards[i],
                                    j,
                                    {{Mutation::Kind::kPut, Key(j), Value(kShards[i], j)},
                                     {Mutation::Kind::kPutMeta, "applied", std::to_string(j)}}});
      }
      applied[i] = next;
    }
    if (!kv.Apply(writes).ok()) _exit(3);
    if (next % 64 == 0) {
      // As RaftStorage::Compact: the store first (the log is another engine).
      if (!kv.Sync().ok()) _exit(3);
      for (ShardId s : kShards) {
        if (!log.Compact(s, next - 32).ok()) _exit(3);
      }
    }
    ++next;
  }
}

// Opens the DB and checks it; returns "" or a description of the problems.
// `*applied` (per shard) holds what earlier iterations saw, since applied
// indexes never go backwards; it is updated to what this one sees.
std::string Verify(const std::string& dir, uint64_t max_acked, std::vector<uint64_t>* applied) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir, CrashOptions());
  if (!engine.ok()) return absl::StrCat("reopen failed: ", engine.status().ToString());
  RaftLog& log = (*engine)->raft_log();
  KvStore& kv = (*engine)->kv_store();
  std::string errors;
  for (size_t i = 0; i < std::size(kShards); ++i) {
    const ShardId s = kShards[i];
    absl::StatusOr<LogState> state = log.State(s);
    if (!state.ok()) return state.status().ToString();
    if (state->last_index < max_acked) {
      absl::StrAppend(&errors, "shard ", s, ": last index ", state->last_index, " < acknowledged ",
                      max_acked, "\n");
    }
    if (state->hard_state.commit() != state->last_index) {
      absl::StrAppend(&errors, "shard ", s, ": hard state commit ", state->hard_state.commit(),
                      " not saved with entry ", state->last_index, "\n");
    }
    absl::StatusOr<std::vector<raftpb::Entry>> entries = log.Entries(
        s, state->first_index, state->last_index + 1, std::numeric_limits<uint64_t>::max());
    if (!entries.ok()) return entries.status().ToString();
    uint64_t expect = state->first_index;
    for (const raftpb::Entry& e : *entries) {
      if (e.index() != expect || e.data() != EntryData(s, e.index()) ||
          e.term() != 1 + e.index() / 100) {
        absl::StrAppend(&errors, "shard ", s, ": entry ", expect, " corrupt\n");
      }
      ++expect;
    }
    if (expect != state->last_index + 1) {
      absl::StrAppend(&errors, "shard ", s, ": entries end at ", expect, "\n");
    }
    absl::StatusOr<uint64_t> a = kv.AppliedIndex(s);
    if (!a.ok()) return a.status().ToString();
    if (*a > state->last_index) {
      absl::StrAppend(&errors, "shard ", s, ": applied ", *a, " beyond the log\n");
    }
    if (*a < (*applied)[i]) {
      absl::StrAppend(&errors, "shard ", s, ": applied went back from ", (*applied)[i], " to ", *a,
                      "\n");
    }
    (*applied)[i] = *a;
    absl::StatusOr<std::string> meta = kv.GetMeta(s, "applied");
    if (*a == 0 ? meta.ok() : (!meta.ok() || *meta != std::to_string(*a))) {
      absl::StrAppend(&errors, "shard ", s, ": meta 'applied' disagrees with ", *a, "\n");
    }
    // Exactly the keys of indexes 1..applied, with their values.
    absl::StatusOr<ScanResult> scan = kv.Scan(s, {});
    if (!scan.ok()) return scan.status().ToString();
    if (scan->items.size() != *a) {
      absl::StrAppend(&errors, "shard ", s, ": ", scan->items.size(), " keys for applied ", *a,
                      "\n");
    }
    for (size_t j = 0; j < scan->items.size(); ++j) {
      if (scan->items[j].first != Key(j + 1) || scan->items[j].second != Value(s, j + 1)) {
        absl::StrAppend(&errors, "shard ", s, ": bad key/value at ", j + 1, "\n");
        break;
      }
    }
  }
  return errors;
}

// Runs `fn` in a forked child and returns what it wrote (its result string).
std::string RunInChild(const std::function<std::string()>& fn) {
  int fds[2];
  if (pipe(fds) != 0) return "pipe failed";
  pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    close(fds[0]);
    std::string out = fn();
    _exit(WriteAll(fds[1], out.data(), out.size()) ? 0 : 1);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    absl::StrAppend(&out, "verifier child failed, status ", status);
  }
  return out;
}

uint64_t Seed() {
  const char* env = std::getenv("TESSERA_SEED");
  if (env != nullptr && *env != '\0') return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

TEST(StorageCrash, AcknowledgedAppendsSurviveKill9) {
  const uint64_t seed = Seed();
  SCOPED_TRACE(absl::StrCat("seed=", seed, " (replay: TESSERA_SEED=", seed, ")"));
  std::mt19937_64 rng(seed);
  testing::TempDir tmp;
  const std::string dir = tmp.path() + "/db";
  uint64_t max_acked = 0;
  std::vector<uint64_t> applied(std::size(kShards), 0);
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    SCOPED_TRACE(absl::StrCat("iteration ", iteration));
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      WriterLoop(dir, fds[1]);
    }
    close(fds[1]);
    // Let the child acknowledge 1..60 appends, then run a random small busy
    // period (0..~3 ms) so the kill lands anywhere in the loop.
    const uint64_t target_acks = 1 + rng() % 60;
    uint64_t acks = 0;
    uint64_t ack = 0;
    bool child_alive = true;
    while (acks < target_acks) {
      if (!ReadAll(fds[0], &ack, sizeof(ack))) {
        child_alive = false;
        break;
      }
      ++acks;
      max_acked = std::max(max_acked, ack);
    }
    volatile uint64_t spin = 0;
    const uint64_t spins = rng() % 3'000'000;
    for (uint64_t i = 0; i < spins; ++i) spin = spin + 1;
    kill(pid, SIGKILL);
    // Everything acknowledged before the kill is in the pipe.
    while (ReadAll(fds[0], &ack, sizeof(ack))) max_acked = std::max(max_acked, ack);
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(child_alive && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer died on its own, status " << status;

    std::string errors = RunInChild([&] { return Verify(dir, max_acked, &applied); });
    ASSERT_EQ(errors, "") << "after " << acks << " acks, max acknowledged index " << max_acked;
  }
  std::cout << "seed " << seed << ": " << kIterations << " kills, last acknowledged index "
            << max_acked << "\n";
  // The kills covered roll-overs and purges: the oldest segments are gone.
  ASSERT_FALSE(std::filesystem::exists(dir + "/raftlog/000001.log"));
}

// ---- Snapshot install ----
//
// A child stages and commits snapshots of shard 1 in a loop (generation g:
// kSnapshotKeys keys "g<g>-<i>" and applied index kBaseIndex + g), writing g to
// the pipe after each Commit; the parent kill -9s it at a random point (most
// often while it stages, sometimes during the ingestion). After every kill
// the shard must be exactly one generation, at least the last acknowledged
// one, with its applied index, and the staging directory must be empty after
// reopening.

constexpr uint64_t kBaseIndex = 100;
constexpr int kSnapshotKeys = 3000;

std::string GenKey(uint64_t g, int i) {
  char key[48];
  snprintf(key, sizeof(key), "g%llu-%06d", static_cast<unsigned long long>(g), i);
  return key;
}

[[noreturn]] void InstallLoop(const std::string& dir, uint64_t first_generation, int fd) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir, {});
  if (!engine.ok()) _exit(2);
  KvStore& kv = (*engine)->kv_store();
  for (uint64_t g = first_generation;; ++g) {
    absl::StatusOr<std::unique_ptr<SnapshotStaging>> staging = kv.StageSnapshot(1, kBaseIndex + g);
    if (!staging.ok()) _exit(3);
    if (!(*staging)->Add({true, "generation", std::to_string(g)}).ok()) _exit(3);
    for (int i = 0; i < kSnapshotKeys; ++i) {
      if (!(*staging)->Add({false, GenKey(g, i), std::string(200, 'a' + g % 26)}).ok()) _exit(3);
    }
    if (!(*staging)->Finish().ok() || !(*staging)->Commit().ok()) _exit(3);
    if (!WriteAll(fd, &g, sizeof(g))) _exit(3);
  }
}

// "" if shard 1 holds exactly one whole generation >= min_generation (0: the
// initial state "old-<i>" at kBaseIndex), else what is wrong. Sets *found.
std::string VerifyInstall(const std::string& dir, uint64_t min_generation, uint64_t* found) {
  absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir, {});
  if (!engine.ok()) return "open: " + engine.status().ToString();
  if (!std::filesystem::is_empty(dir + "/snapshot-staging")) return "staging left behind";
  KvStore& kv = (*engine)->kv_store();
  absl::StatusOr<uint64_t> applied = kv.AppliedIndex(1);
  if (!applied.ok() || *applied < kBaseIndex) return "bad applied index";
  const uint64_t g = *applied - kBaseIndex;
  if (g < min_generation) return absl::StrCat("generation ", g, " < acknowledged ", min_generation);
  absl::StatusOr<ScanResult> all = kv.Scan(1, {});
  if (!all.ok()) return "scan: " + all.status().ToString();
  const size_t want = g == 0 ? 10 : kSnapshotKeys;
  if (all->items.size() != want) {
    return absl::StrCat("generation ", g, ": ", all->items.size(), " keys, want ", want);
  }
  for (size_t i = 0; i < all->items.size(); ++i) {
    const std::string key = g == 0 ? absl::StrCat("old-", i) : GenKey(g, static_cast<int>(i));
    if (all->items[i].first != key) return absl::StrCat("unexpected key ", all->items[i].first);
  }
  if (g > 0) {
    absl::StatusOr<std::string> meta = kv.GetMeta(1, "generation");
    if (!meta.ok() || *meta != std::to_string(g)) return "meta of another generation";
  }
  *found = g;
  return "";
}

TEST(StorageCrash, SnapshotInstallIsOldOrNewAfterKill9) {
  const uint64_t seed = Seed();
  SCOPED_TRACE(absl::StrCat("seed=", seed, " (replay: TESSERA_SEED=", seed, ")"));
  std::mt19937_64 rng(seed);
  testing::TempDir tmp;
  const std::string dir = tmp.path() + "/db";
  ASSERT_EQ(RunInChild([&]() -> std::string {
              absl::StatusOr<std::unique_ptr<Engine>> engine = Engine::Open(dir, {});
              if (!engine.ok()) return engine.status().ToString();
              ShardWrite w{1, kBaseIndex, {}};
              for (int i = 0; i < 10; ++i) {
                w.mutations.push_back({Mutation::Kind::kPut, absl::StrCat("old-", i), "old"});
              }
              return (*engine)->kv_store().Apply({w}).ToString() == "OK"
                         ? ""
                         : "apply of the initial state failed";
            }),
            "");
  uint64_t acked = 0;
  uint64_t next_generation = 1;
  std::set<uint64_t> seen;
  for (int iteration = 0; iteration < kIterations; ++iteration) {
    SCOPED_TRACE(absl::StrCat("iteration ", iteration));
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      close(fds[0]);
      InstallLoop(dir, next_generation, fds[1]);
    }
    close(fds[1]);
    // 0..2 acknowledged installs, then a random part of the next one.
    const uint64_t target_acks = rng() % 3;
    uint64_t g = 0;
    for (uint64_t a = 0; a < target_acks && ReadAll(fds[0], &g, sizeof(g)); ++a) acked = g;
    usleep(static_cast<useconds_t>(rng() % 40'000));
    kill(pid, SIGKILL);
    while (ReadAll(fds[0], &g, sizeof(g))) acked = g;
    close(fds[0]);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "installer died on its own, status " << status;
    uint64_t found = 0;
    std::string errors = RunInChild([&] {
      uint64_t f = 0;
      std::string e = VerifyInstall(dir, acked, &f);
      return e.empty() ? absl::StrCat("ok ", f) : e;
    });
    ASSERT_EQ(errors.rfind("ok ", 0), 0u) << errors;
    found = std::strtoull(errors.c_str() + 3, nullptr, 10);
    seen.insert(found);
    next_generation = std::max(found, acked) + 1;
  }
  std::cout << "seed " << seed << ": " << kIterations << " kills, generations seen:";
  for (uint64_t g : seen) std::cout << " " << g;
  std::cout << "\n";
}

}  // namespace
}  // namespace tessera::storage
