// Randomized safety check of raft/ in-process (a small cousin of the
// simulator in tests/sim/): random delivery order, drops, duplicates,
// partitions, restarts, snapshots, transfers, proposals, reads and (with
// lease reads) process stalls; after every step it checks Election Safety,
// State Machine Safety and that reads are not stale, and at the end that the
// healed group makes progress. Deterministic: fixed seeds.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "tests/raft/raft_test_util.h"

namespace tessera::raft {
namespace {

using namespace ::tessera::raft::testing;  // NOLINT

struct Options {
  bool pre_vote = true;
  bool check_quorum = true;
  bool lease = false;
  // With lease: the mutation switch of the old rule (lease counted in ticks
  // only). Stale reads are then counted instead of failing the test.
  bool lease_in_ticks_only = false;
};

// Runs one seed; returns the number of stale reads seen (only non-zero
// without a test failure when o.lease_in_ticks_only).
int RunOnce(uint64_t seed, const Options& o, int steps) {
  std::mt19937_64 rng(seed);
  auto pick = [&](uint64_t n) { return rng() % n; };
  Network net({1, 2, 3, 4, 5}, [&](Config& c) {
    c.pre_vote = o.pre_vote;
    c.check_quorum = o.check_quorum;
    if (o.lease) c.read_only_option = ReadOnlyOption::kLeaseBased;
    c.testing.lease_in_ticks_only = o.lease_in_ticks_only;
    c.seed = seed * 31 + c.id;
    c.max_size_per_msg = 300;
    c.max_inflight_msgs = 4;
    if (getenv("RAFT_RANDOM_KNOB_VOTE") != nullptr) c.testing.grant_vote_without_log_check = true;
    if (getenv("RAFT_RANDOM_KNOB_COMMIT") != nullptr) {
      c.testing.commit_earlier_term_by_counting = true;
    }
  });
  net.set_hold(true);
  std::map<uint64_t, uint64_t> leader_of_term;
  std::map<uint64_t, std::pair<uint64_t, std::string>> applied_at;  // index -> (term, data)
  int proposals = 0;
  std::map<std::string, uint64_t> read_floor;  // ctx -> commit index at issue
  std::map<uint64_t, size_t> reads_seen;
  int reads_answered = 0;
  int stale_reads = 0;
  // Stalled nodes (lease mode): tick rounds left, and the time they missed.
  std::map<uint64_t, int> stall_rounds;
  std::map<uint64_t, Clock::duration> stalled_for;
  auto stalled = [&](uint64_t n) { return stall_rounds.contains(n); };

  auto check = [&](int step) {
    for (uint64_t id : net.ids()) {
      if (net.node(id)->role() == Role::kLeader) {
        auto [it, inserted] = leader_of_term.emplace(net.node(id)->term(), id);
        ASSERT_EQ(it->second, id) << "two leaders in term " << it->first << " seed " << seed
                                  << " step " << step;
      }
      auto& rs = net.read_states(id);
      for (size_t i = reads_seen[id]; i < rs.size(); ++i) {
        ++reads_answered;
        if (rs[i].index < read_floor.at(rs[i].request_ctx)) {
          ++stale_reads;
          if (!o.lease_in_ticks_only) {
            FAIL() << "stale read " << rs[i].request_ctx << " seed " << seed << " step " << step;
          }
        }
      }
      reads_seen[id] = rs.size();
      for (const raftpb::Entry& e : net.applied(id)) {
        auto [it, inserted] = applied_at.emplace(e.index(), std::make_pair(e.term(), e.data()));
        ASSERT_EQ(it->second.first, e.term())
            << "nodes applied different entries at " << e.index() << " seed " << seed;
        ASSERT_EQ(it->second.second, e.data()) << "seed " << seed;
      }
    }
  };

  for (int step = 0; step < steps; ++step) {
    const uint64_t id = 1 + pick(5);
    const uint64_t r = pick(100);
    auto& q = net.pending();
    if (r < 25) {
      if (o.lease) {
        // Lease reads assume equal tick rates: tick everybody together,
        // except stalled processes, which miss ticks and resume with a
        // clock reading that jumped.
        if (pick(5) == 0) {
          for (uint64_t n : net.ids()) {
            if (!stalled(n)) {
              net.Tick(n);
              continue;
            }
            stalled_for[n] += kTestTickInterval;
            if (--stall_rounds[n] == 0) {
              stall_rounds.erase(n);
              net.Stall(n, stalled_for[n]);
              stalled_for.erase(n);
            }
          }
        }
      } else {
        net.Tick(id);
      }
    } else if (stalled(id)) {
      // A stalled process does nothing else either.
    } else if (r < 75) {
      // A message to a stalled process waits in its socket.
      std::vector<size_t> deliverable;
      for (size_t k = 0; k < q.size(); ++k) {
        if (!stalled(q[k].to())) deliverable.push_back(k);
      }
      if (!deliverable.empty()) {
        const size_t i = deliverable[pick(deliverable.size())];
        raftpb::Message m = q[i];
        const uint64_t fate = pick(100);
        if (fate >= 5) {  // else: dropped
          if (fate < 10) {
            q.push_back(m);  // duplicated
          }
          q.erase(q.begin() + static_cast<ptrdiff_t>(i));
          net.Deliver(m);
        } else {
          q.erase(q.begin() + static_cast<ptrdiff_t>(i));
        }
      }
    } else if (r < 85) {
      (void)net.node(id)->Propose("s" + std::to_string(seed) + "-" + std::to_string(proposals++));
    } else if (r < 87) {
      net.Restart(id);
    } else if (r < 91) {
      if (pick(2) == 0) {
        net.Recover();
      } else {
        net.Isolate(id);
      }
    } else if (r < 93) {
      net.node(id)->TransferLeader(1 + pick(5));
    } else if (r < 96) {
      // Linearizability of reads: the answer must cover every entry known
      // committed (anywhere) when the read was issued.
      uint64_t committed = 0;
      for (uint64_t n : net.ids()) committed = std::max(committed, net.node(n)->commit_index());
      const std::string ctx = "r" + std::to_string(step);
      read_floor[ctx] = committed;
      net.node(id)->ReadIndex(ctx);
    } else if (r < 97 && o.lease && pick(4) == 0 && stall_rounds.empty()) {
      // A stall (SIGSTOP, a long fsync, a VM pause) of 3 to 12 election
      // timeouts, of the leader: the case leases must survive.
      for (uint64_t n : net.ids()) {
        if (net.node(n)->role() == Role::kLeader) {
          stall_rounds[n] = 30 + static_cast<int>(pick(90));
        }
      }
    } else if (r < 97) {
      const uint64_t applied = net.node(id)->applied_index();
      MemoryStorage* s = net.storage(id);
      if (applied > s->FirstIndex() + 5) {
        raftpb::ConfState cs = net.node(id)->conf_state();
        if (!s->CreateSnapshot(applied, &cs, "").ok() || !s->Compact(applied - 2).ok()) {
          ADD_FAILURE() << "snapshot or compaction failed, seed " << seed;
          return stale_reads;
        }
      }
    }
    net.Stabilize();  // handles Readies only (hold mode)
    check(step);
    if (::testing::Test::HasFatalFailure()) return stale_reads;
  }
  for (auto& [n, missed] : stalled_for) net.Stall(n, missed);

  // Heal: deliver everything, tick until a leader commits a new entry.
  net.Recover();
  net.set_hold(false);
  net.pending().clear();
  bool committed = false;
  for (int t = 0; t < 300 && !committed; ++t) {
    net.TickAll(1);
    for (uint64_t id : net.ids()) {
      if (net.node(id)->role() == Role::kLeader && t % 10 == 0) {
        (void)net.node(id)->Propose("final");
      }
    }
    net.Stabilize();
    check(steps + t);
    if (::testing::Test::HasFatalFailure()) return stale_reads;
    int have = 0;
    for (uint64_t id : net.ids()) {
      for (const auto& e : net.applied(id)) have += e.data() == "final" ? 1 : 0;
    }
    committed = have >= 5;
  }
  EXPECT_TRUE(committed) << "no progress after healing, seed " << seed;
  if (getenv("RAFT_RANDOM_VERBOSE") != nullptr) {
    size_t max_applied = 0;
    for (uint64_t id : net.ids()) max_applied = std::max(max_applied, net.applied(id).size());
    printf("seed %llu: terms with leader %zu, applied indexes %zu, reads %d, max term %llu\n",
           (unsigned long long)seed, leader_of_term.size(), applied_at.size(), reads_answered,
           (unsigned long long)net.node(1)->term());
  }
  return stale_reads;
}

TEST(RandomizedSafety, DefaultConfig) {
  for (uint64_t seed = 1; seed <= 150; ++seed) {
    RunOnce(seed, {}, 5000);
    if (HasFatalFailure()) return;
  }
}

TEST(RandomizedSafety, NoPreVoteNoCheckQuorum) {
  for (uint64_t seed = 1000; seed < 1100; ++seed) {
    RunOnce(seed, {.pre_vote = false, .check_quorum = false}, 5000);
    if (HasFatalFailure()) return;
  }
}

TEST(RandomizedSafety, LeaseReads) {
  for (uint64_t seed = 2000; seed < 2100; ++seed) {
    RunOnce(seed, {.lease = true}, 5000);
    if (HasFatalFailure()) return;
  }
}

// The check above must be able to fail: with the old rule (a lease counted in
// ticks only, so a leader whose process stalled keeps it) the stalls must
// produce a stale read within these seeds (issue 18; the first is seed 2052).
TEST(RandomizedSafety, LeaseInTicksOnlyIsCaught) {
  int stale = 0;
  uint64_t seed = 2000;
  for (; seed < 2300 && stale == 0; ++seed) {
    stale = RunOnce(seed, {.lease = true, .lease_in_ticks_only = true}, 5000);
  }
  EXPECT_GT(stale, 0) << "no stale read with the tick-only lease rule in seeds 2000-2299";
  RecordProperty("seeds_until_stale_read", static_cast<int>(seed - 2000));
}

}  // namespace
}  // namespace tessera::raft
