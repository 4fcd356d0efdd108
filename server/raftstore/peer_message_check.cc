#include "server/raftstore/peer_message_check.h"

#include <algorithm>
#include <limits>

#include "raft/confchange.h"

namespace tessera::server {
namespace {

// Far beyond any real log or term, far below overflow of index + count.
constexpr uint64_t kMaxIndexOrTerm = uint64_t{1} << 62;
// Read contexts are 8 bytes; campaign kinds a few.
constexpr size_t kMaxContextBytes = 256;

bool Contains(const google::protobuf::RepeatedField<uint64_t>& ids, uint64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

bool IsUnconfigured(const raftpb::ConfState& conf) {
  return conf.voters().empty() && conf.learners().empty() && conf.voters_outgoing().empty() &&
         conf.learners_next().empty();
}

bool IsMember(const raftpb::ConfState& conf, uint64_t id) {
  return Contains(conf.voters(), id) || Contains(conf.learners(), id) ||
         Contains(conf.voters_outgoing(), id) || Contains(conf.learners_next(), id);
}

// A snapshot's configuration must be restorable and made of known members.
const char* CheckSnapshot(const raftpb::Message& m, const ReplicaView& view) {
  const raftpb::SnapshotMetadata& md = m.snapshot().metadata();
  if (md.index() == 0 || md.term() == 0 || md.term() > m.term() || md.index() >= kMaxIndexOrTerm) {
    return "bad_snapshot";
  }
  const raftpb::ConfState& cs = md.conf_state();
  if (cs.voters().empty()) return "bad_snapshot";
  // What raft would abort on when installing it.
  if (!raft::RestoreConfig(cs, /*max_inflight=*/1, /*max_inflight_bytes=*/0, md.index()).ok()) {
    return "bad_snapshot";
  }
  // Members may have changed since our configuration (a replica catching
  // up, or a new one that has none yet), but the snapshot must name us: a
  // replica left out of the group has no use for its state.
  for (const auto* ids :
       {&cs.voters(), &cs.learners(), &cs.voters_outgoing(), &cs.learners_next()}) {
    for (uint64_t id : *ids) {
      if (id == 0) return "bad_snapshot";
    }
  }
  if (!IsMember(cs, view.self)) return "bad_snapshot";
  for (uint64_t id : cs.learners()) {
    if (Contains(cs.voters(), id)) return "bad_snapshot";
  }
  return nullptr;
}

// Entries must follow m.index() one by one, with terms between m.log_term()
// and m.term() that never decrease, and a known type.
const char* CheckEntries(const raftpb::Message& m) {
  uint64_t prev_term = m.log_term();
  for (int i = 0; i < m.entries_size(); ++i) {
    const raftpb::Entry& e = m.entries(i);
    if (e.index() != m.index() + 1 + static_cast<uint64_t>(i)) return "bad_entries";
    if (e.term() < prev_term || e.term() > m.term()) return "bad_entries";
    // A conf change must at least parse (one raft refuses at apply changes
    // nothing: raw_node.h).
    if (e.type() == raftpb::ENTRY_CONF_CHANGE) {
      raftpb::ConfChange cc;
      if (!cc.ParseFromString(e.data())) return "bad_entries";
      for (const raftpb::ConfChangeSingle& c : cc.changes()) {
        if (c.node_id() == 0) return "bad_entries";
      }
    } else if (e.type() != raftpb::ENTRY_NORMAL) {
      return "bad_entries";
    }
    prev_term = e.term();
  }
  return nullptr;
}

}  // namespace

const char* CheckPeerMessage(const raftpb::Message& m, NodeId sender, const ReplicaView& view) {
  if (m.from() != sender) return "sender_mismatch";
  if (m.to() != view.self) return "misaddressed";
  if (IsUnconfigured(*view.conf)) {
    // A new replica waiting for its first snapshot knows no members yet: it
    // takes what a leader sends (peer TLS decides who may), nothing else.
    if (m.type() != raftpb::MSG_APP && m.type() != raftpb::MSG_SNAP &&
        m.type() != raftpb::MSG_HEARTBEAT) {
      return "not_a_replica";
    }
    // Its log is empty: an append from the very start of a log (which only
    // a bootstrap writes) would give it entries, and maybe conf changes,
    // without the configuration they apply to.
    if (m.type() == raftpb::MSG_APP && m.index() == 0) return "bad_term_or_index";
  } else if (!IsMember(*view.conf, m.from())) {
    return "not_a_replica";
  }
  if (m.term() >= kMaxIndexOrTerm || m.log_term() > m.term() || m.index() >= kMaxIndexOrTerm ||
      m.commit() >= kMaxIndexOrTerm || m.context().size() > kMaxContextBytes) {
    return "bad_term_or_index";
  }
  // Raft stamps every message it sends with its term, except forwarded
  // reads (and proposals, refused below as a type); a term where none
  // belongs, or none where one does, makes raft abort when it answers.
  if (m.type() != raftpb::MSG_PROP && (m.term() == 0) != (m.type() == raftpb::MSG_READ_INDEX)) {
    return "bad_term_or_index";
  }
  switch (m.type()) {
    case raftpb::MSG_APP:
      // Appends carry their own commit bound (min(commit, last new entry)).
      return CheckEntries(m);
    case raftpb::MSG_HEARTBEAT:
      // An honest leader sends min(our match, its commit): never beyond our log.
      if (m.commit() > view.last_index) return "commit_out_of_range";
      return m.entries_size() == 0 ? nullptr : "bad_entries";
    case raftpb::MSG_APP_RESP:
      // Acknowledging entries we do not have would let us commit them.
      if (!m.reject() && m.index() > view.last_index) return "ack_out_of_range";
      return m.entries_size() == 0 ? nullptr : "bad_entries";
    case raftpb::MSG_SNAP:
      return CheckSnapshot(m, view);
    case raftpb::MSG_VOTE:
    case raftpb::MSG_PRE_VOTE:
      // Every replica's log starts at the bootstrap point (index 1, term 1);
      // a candidate claiming less is not one of ours (and rejecting it at
      // term 0 would make raft abort).
      if (m.index() == 0 || m.log_term() == 0) return "bad_term_or_index";
      return m.entries_size() == 0 ? nullptr : "bad_entries";
    case raftpb::MSG_VOTE_RESP:
    case raftpb::MSG_PRE_VOTE_RESP:
    case raftpb::MSG_HEARTBEAT_RESP:
    case raftpb::MSG_TIMEOUT_NOW:
    case raftpb::MSG_TRANSFER_LEADER:
      return m.entries_size() == 0 ? nullptr : "bad_entries";
    case raftpb::MSG_READ_INDEX:
    case raftpb::MSG_READ_INDEX_RESP:
      return m.entries_size() <= 1 ? nullptr : "bad_entries";
    default:
      // Local types (MSG_HUP, MSG_BEAT, MSG_UNREACHABLE, ...) and forwarded
      // proposals (forwarding is off: clients write at the leader).
      return "bad_type";
  }
}

}  // namespace tessera::server
