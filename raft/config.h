// Configuration and small value types of the Raft state machine.
//
// raft/ is a pure, deterministic state machine: it never reads a clock, starts
// a thread or touches a file. Time is counted in ticks (RawNode::Tick), lease
// reads are also judged against the application's monotonic clock readings
// (RawNode::SetNow), and randomness comes from a PRNG seeded from
// Config::seed, so a run is fully reproducible from its inputs.
#ifndef TESSERA_RAFT_CONFIG_H_
#define TESSERA_RAFT_CONFIG_H_

#include <chrono>
#include <cstdint>
#include <string>

namespace tessera::raft {

class Storage;

// The clock lease reads are measured against: monotonic, so that neither a
// wall-clock step nor a stalled process can stretch a lease.
using Clock = std::chrono::steady_clock;

// The role a node plays in its current term.
enum class Role { kFollower, kPreCandidate, kCandidate, kLeader };

// Returns "follower", "pre-candidate", "candidate" or "leader".
const char* RoleName(Role role);

// How the leader serves ReadIndex requests.
enum class ReadOnlyOption {
  // The leader confirms it still leads with a heartbeat round to a quorum
  // before answering (no assumption about clocks).
  kSafe,
  // The leader answers from its lease when it holds one (a quorum acked a
  // heartbeat recently enough, in ticks and in Clock time; see README.md for
  // the clock-drift bound) and falls back to kSafe otherwise. Requires
  // check_quorum and tick_interval.
  kLeaseBased,
};

// Mutation switches for the simulator's self-check: each one breaks a safety
// rule of the Raft paper on purpose, so that the simulator can prove it
// detects the violation. All off in production.
struct TestingKnobs {
  bool grant_vote_without_log_check = false;     // break §5.4.1 election restriction
  bool commit_earlier_term_by_counting = false;  // break §5.4.2 (Figure 8) commitment rule
  bool lease_in_ticks_only = false;  // the old lease rule: a stalled leader keeps its lease
};

struct Config {
  // This node's id; must be non-zero.
  uint64_t id = 0;
  // A follower that hears nothing from a leader for a randomized timeout in
  // [election_ticks, 2 * election_ticks) starts an election. Must be greater
  // than heartbeat_ticks.
  int election_ticks = 10;
  // A leader sends heartbeats every heartbeat_ticks ticks.
  int heartbeat_ticks = 1;
  // The persisted log. Not owned; must outlive the node. The application
  // writes it (entries and hard state from Ready) and raft only reads it.
  const Storage* storage = nullptr;
  // Last applied index at restart; entries after it are returned again as
  // committed entries. 0 means "the storage's snapshot index".
  uint64_t applied = 0;
  // Upper bound on the byte size of the entries in one MsgApp (at least one
  // entry is always sent).
  uint64_t max_size_per_msg = 1 << 20;
  // Upper bound on the byte size of Ready::committed_entries.
  uint64_t max_committed_size_per_ready = 64 << 20;
  // Upper bound on the payload bytes of proposed but uncommitted entries on a
  // leader; 0 = unlimited. Beyond it Propose returns kResourceExhausted.
  uint64_t max_uncommitted_entries_size = 0;
  // At most this many MsgApp in flight (sent, not yet acked) per follower in
  // the replicate state.
  int max_inflight_msgs = 256;
  // Also at most this many entry bytes in flight per follower; 0 = unlimited.
  uint64_t max_inflight_bytes = 0;
  // The leader steps down when it has not heard from a quorum within an
  // election timeout; followers ignore votes while they hear from a leader.
  bool check_quorum = true;
  // Run a PreVote round before incrementing the term (§9.6 of the thesis).
  bool pre_vote = true;
  ReadOnlyOption read_only_option = ReadOnlyOption::kSafe;
  // For kLeaseBased: the number of ticks by which the clocks of two nodes may
  // drift apart during one election timeout. The lease lasts
  // election_ticks - 2 - max_clock_drift_ticks ticks, which must be > 0, and
  // as many tick_intervals of Clock time (RawNode::SetNow).
  int max_clock_drift_ticks = 1;
  // For kLeaseBased: the nominal time between two Ticks; must be > 0. The
  // application must never tick faster than this by its clock (a follower's
  // promise not to vote is counted in its ticks).
  Clock::duration tick_interval = Clock::duration::zero();
  // When true a follower's Propose returns kUnavailable (naming the leader)
  // instead of forwarding the proposal to the leader.
  bool disable_proposal_forwarding = false;
  // Seeds the PRNG of randomized election timeouts (mixed with `id`, so all
  // nodes may share one seed).
  uint64_t seed = 0;
  TestingKnobs testing;
};

// Volatile state that the application may want to observe (not persisted).
struct SoftState {
  uint64_t leader_id = 0;  // 0 = unknown
  Role role = Role::kFollower;
  friend bool operator==(const SoftState&, const SoftState&) = default;
};

// The answer to a ReadIndex request: once the application has applied up to
// `index`, a read of its state machine is linearizable.
struct ReadState {
  uint64_t index = 0;
  std::string request_ctx;
};

}  // namespace tessera::raft

#endif  // TESSERA_RAFT_CONFIG_H_
