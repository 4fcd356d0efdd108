// Exactly-once sessions of the client SDK (kv.proto `Session`; server rules
// in server/README.md "Exactly-once sessions").
//
// Sessions are per (client instance, shard): each shard gets its own random
// non-zero client id. Seqs come from one atomic counter shared by all shards;
// a retried write reuses its seq. Per session the table keeps the seqs in
// flight, so first_incomplete_seq = the smallest seq sent to that shard
// without a final reply. Until the shard has answered one write of the
// session, first_incomplete_seq is 0 (the server creates the session; a
// larger value on a session it does not know means "evicted").
//
// A server keeps at most 1024 results per session (server/README.md,
// "Exactly-once sessions"): a write still unanswered while more than that
// many later writes of its session are applied would have its own result
// slot dropped, and its retry refused as stale. So once a shard's session
// has kMaxSessionLag writes begun after its oldest unanswered one, new writes
// to that shard start a fresh session; the old one keeps its writes in
// flight (and their retries) until they end.
//
// Thread-safe.
#ifndef TESSERA_CLIENT_SESSIONS_H_
#define TESSERA_CLIENT_SESSIONS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/random/random.h"
#include "absl/synchronization/mutex.h"
#include "tessera/kv.pb.h"

namespace tessera::client {

class SessionTable {
 public:
  // Writes a session may begin after its oldest unanswered one; well under
  // the server's 1024 results per session.
  static constexpr uint64_t kMaxSessionLag = 512;

  struct ShardSession;  // one (client id, shard) session; owned by the table and by tickets
  // One write: its session and seq. Pass it back to End() exactly once.
  struct Ticket {
    std::shared_ptr<ShardSession> session;
    uint32_t shard = 0;
    uint64_t seq = 0;
  };

  SessionTable() = default;

  // Starts a write to `shard`: a new seq in the shard's current session.
  Ticket Begin(uint32_t shard) ABSL_LOCKS_EXCLUDED(mu_);
  // The header session for (a retry of) the write.
  v1::Session Header(const Ticket& ticket) const ABSL_LOCKS_EXCLUDED(mu_);
  // The shard answered the write: from now on it knows the session.
  void Answered(const Ticket& ticket) ABSL_LOCKS_EXCLUDED(mu_);
  // The write is over (answered or given up): its seq leaves the in-flight set.
  void End(const Ticket& ticket) ABSL_LOCKS_EXCLUDED(mu_);
  // The shard rejected the ticket's session as expired/evicted (and the write
  // was never applied): ends the ticket, replaces the shard's session by a
  // fresh client id unless someone did already, and begins the write anew.
  Ticket Renew(const Ticket& ticket) ABSL_LOCKS_EXCLUDED(mu_);
  // The write belongs to another shard (a stale route: the old shard
  // rejected it). If `new_shard` continues the ticket's session (Split), the
  // same ticket on it, same seq: the new shard holds a copy of the old
  // one's sessions, so a write applied there before the split is answered,
  // not applied again. Otherwise the ticket ends and the write begins on
  // `new_shard` with a fresh seq (it cannot have been applied there).
  Ticket Move(const Ticket& ticket, uint32_t new_shard) ABSL_LOCKS_EXCLUDED(mu_);
  // A split gave part of `parent`'s range to the new shard `child`, with a
  // copy of its sessions (server/README.md "Shard splits"): the child's
  // writes continue the parent's current session (same client id; seqs
  // come from the one counter, so they keep rising on both).
  void Split(uint32_t parent, uint32_t child) ABSL_LOCKS_EXCLUDED(mu_);

  // The client id of `shard`'s current session (0 if none yet).
  uint64_t ClientIdForTesting(uint32_t shard) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The session for a new write to `shard`: a fresh one if the current lags
  // (kMaxSessionLag).
  std::shared_ptr<ShardSession> Current(uint32_t shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::shared_ptr<ShardSession> NewSession() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `seq` in flight on `session`.
  void BeginLocked(ShardSession& session, uint64_t seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::atomic<uint64_t> next_seq_{1};
  mutable absl::Mutex mu_;
  absl::BitGen rng_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint32_t, std::shared_ptr<ShardSession>> sessions_ ABSL_GUARDED_BY(mu_);
};

struct SessionTable::ShardSession {
  uint64_t client_id = 0;
  // Guarded by the table's mu_.
  std::map<uint64_t, uint64_t> in_flight;  // seq -> `begun` when it began
  uint64_t begun = 0;                      // writes begun on this session
  bool known = false;                      // the shard has answered a write of this session
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_SESSIONS_H_
