#include "raft/confchange.h"

#include <algorithm>
#include <iterator>
#include <set>

#include "absl/strings/str_cat.h"

namespace tessera::raft {
namespace {

struct Work {
  TrackerConfig cfg;
  ProgressMap prs;
  size_t max_inflight;
  uint64_t max_inflight_bytes;
  uint64_t last_index;

  void InitProgress(uint64_t id, bool learner) {
    if (learner) {
      cfg.learners.insert(id);
    } else {
      cfg.voters.incoming.mutable_ids().insert(id);
    }
    // A new node starts probing from the leader's last index. It counts as
    // recently active so that CheckQuorum does not fire right away.
    Progress pr(std::max<uint64_t>(last_index, 1), max_inflight, max_inflight_bytes, learner);
    pr.recent_active = true;
    prs.erase(id);
    prs.emplace(id, std::move(pr));
  }

  void Remove(uint64_t id) {
    if (!prs.contains(id)) return;
    cfg.voters.incoming.mutable_ids().erase(id);
    cfg.learners.erase(id);
    cfg.learners_next.erase(id);
    // Still needed while it is a voter of the outgoing config.
    if (!cfg.voters.outgoing.contains(id)) prs.erase(id);
  }

  void MakeVoter(uint64_t id) {
    auto it = prs.find(id);
    if (it == prs.end()) {
      InitProgress(id, /*learner=*/false);
      return;
    }
    it->second.is_learner = false;
    cfg.learners.erase(id);
    cfg.learners_next.erase(id);
    cfg.voters.incoming.mutable_ids().insert(id);
  }

  void MakeLearner(uint64_t id) {
    auto it = prs.find(id);
    if (it == prs.end()) {
      InitProgress(id, /*learner=*/true);
      return;
    }
    if (it->second.is_learner) return;
    // Remove any voter role but keep the progress.
    cfg.voters.incoming.mutable_ids().erase(id);
    cfg.learners.erase(id);
    cfg.learners_next.erase(id);
    if (cfg.voters.outgoing.contains(id)) {
      // Still a voter of the outgoing config: becomes a learner on leaving.
      cfg.learners_next.insert(id);
    } else {
      it->second.is_learner = true;
      cfg.learners.insert(id);
    }
  }

  absl::Status Apply(const raftpb::ConfChange& cc) {
    for (const raftpb::ConfChangeSingle& c : cc.changes()) {
      if (c.node_id() == 0) continue;  // ignored, as in etcd
      switch (c.type()) {
        case raftpb::CONF_CHANGE_ADD_NODE:
          MakeVoter(c.node_id());
          break;
        case raftpb::CONF_CHANGE_ADD_LEARNER:
          MakeLearner(c.node_id());
          break;
        case raftpb::CONF_CHANGE_REMOVE_NODE:
          Remove(c.node_id());
          break;
        default:
          return absl::InvalidArgumentError(absl::StrCat("unknown conf change type ", c.type()));
      }
    }
    if (cfg.voters.incoming.empty()) return absl::InvalidArgumentError("removed all voters");
    return absl::OkStatus();
  }

  absl::Status CheckInvariants() const {
    for (uint64_t id : cfg.voters.Ids()) {
      if (!prs.contains(id)) return absl::InternalError(absl::StrCat("no progress for voter ", id));
    }
    for (uint64_t id : cfg.learners) {
      auto it = prs.find(id);
      if (it == prs.end() || !it->second.is_learner) {
        return absl::InternalError(absl::StrCat("learner ", id, " not marked as learner"));
      }
      if (cfg.voters.contains(id)) {
        return absl::InternalError(absl::StrCat("learner ", id, " is also a voter"));
      }
    }
    for (uint64_t id : cfg.learners_next) {
      auto it = prs.find(id);
      if (it == prs.end() || it->second.is_learner || !cfg.voters.outgoing.contains(id)) {
        return absl::InternalError(absl::StrCat("bad learners_next entry ", id));
      }
    }
    if (!cfg.voters.joint()) {
      if (!cfg.learners_next.empty() || cfg.auto_leave) {
        return absl::InternalError("non-joint config with learners_next or auto_leave");
      }
    }
    return absl::OkStatus();
  }
};

Work Start(const ProgressTracker& t, uint64_t last_index) {
  return Work{t.config, t.progress, t.max_inflight(), t.max_inflight_bytes(), last_index};
}

size_t SymDiff(const std::set<uint64_t>& a, const std::set<uint64_t>& b) {
  std::set<uint64_t> d;
  std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(),
                                std::inserter(d, d.begin()));
  return d.size();
}

}  // namespace

bool LeavesJoint(const raftpb::ConfChange& cc) {
  return cc.changes_size() == 0 && cc.transition() == raftpb::CONF_CHANGE_TRANSITION_AUTO;
}

bool EntersJoint(const raftpb::ConfChange& cc, bool* auto_leave) {
  if (cc.transition() != raftpb::CONF_CHANGE_TRANSITION_AUTO || cc.changes_size() > 1) {
    *auto_leave = cc.transition() != raftpb::CONF_CHANGE_TRANSITION_JOINT_EXPLICIT;
    return true;
  }
  return false;
}

absl::StatusOr<ConfigAndProgress> Changer::EnterJoint(bool auto_leave,
                                                      const raftpb::ConfChange& cc) const {
  Work w = Start(tracker_, last_index_);
  if (w.cfg.voters.joint()) return absl::FailedPreconditionError("config is already joint");
  if (w.cfg.voters.incoming.empty()) {
    return absl::InvalidArgumentError("can't make a zero-voter config joint");
  }
  w.cfg.voters.outgoing = w.cfg.voters.incoming;
  if (absl::Status s = w.Apply(cc); !s.ok()) return s;
  w.cfg.auto_leave = auto_leave;
  if (absl::Status s = w.CheckInvariants(); !s.ok()) return s;
  return ConfigAndProgress{std::move(w.cfg), std::move(w.prs)};
}

absl::StatusOr<ConfigAndProgress> Changer::LeaveJoint() const {
  Work w = Start(tracker_, last_index_);
  if (!w.cfg.voters.joint()) {
    return absl::FailedPreconditionError("can't leave a non-joint config");
  }
  for (uint64_t id : w.cfg.learners_next) {
    w.cfg.learners.insert(id);
    w.prs.at(id).is_learner = true;
  }
  w.cfg.learners_next.clear();
  for (uint64_t id : w.cfg.voters.outgoing.ids()) {
    if (!w.cfg.voters.incoming.contains(id) && !w.cfg.learners.contains(id)) w.prs.erase(id);
  }
  w.cfg.voters.outgoing = MajorityConfig();
  w.cfg.auto_leave = false;
  if (absl::Status s = w.CheckInvariants(); !s.ok()) return s;
  return ConfigAndProgress{std::move(w.cfg), std::move(w.prs)};
}

absl::StatusOr<ConfigAndProgress> Changer::Simple(const raftpb::ConfChange& cc) const {
  Work w = Start(tracker_, last_index_);
  if (w.cfg.voters.joint()) {
    return absl::FailedPreconditionError("can't apply a simple config change in a joint config");
  }
  if (absl::Status s = w.Apply(cc); !s.ok()) return s;
  if (SymDiff(tracker_.config.voters.incoming.ids(), w.cfg.voters.incoming.ids()) > 1) {
    return absl::InvalidArgumentError("more than one voter changed without entering joint config");
  }
  if (absl::Status s = w.CheckInvariants(); !s.ok()) return s;
  return ConfigAndProgress{std::move(w.cfg), std::move(w.prs)};
}

absl::StatusOr<ConfigAndProgress> Changer::Apply(const raftpb::ConfChange& cc) const {
  if (LeavesJoint(cc)) return LeaveJoint();
  bool auto_leave = false;
  if (EntersJoint(cc, &auto_leave)) return EnterJoint(auto_leave, cc);
  return Simple(cc);
}

absl::StatusOr<ConfigAndProgress> RestoreConfig(const raftpb::ConfState& cs, size_t max_inflight,
                                                uint64_t max_inflight_bytes, uint64_t last_index) {
  ProgressTracker t(max_inflight, max_inflight_bytes);
  auto step = [&](const raftpb::ConfChange& cc, bool joint, bool auto_leave) -> absl::Status {
    Changer changer(t, last_index);
    absl::StatusOr<ConfigAndProgress> r =
        joint ? changer.EnterJoint(auto_leave, cc) : changer.Simple(cc);
    if (!r.ok()) return r.status();
    t.config = std::move(r->first);
    t.progress = std::move(r->second);
    return absl::OkStatus();
  };
  auto single = [](raftpb::ConfChangeType type, uint64_t id) {
    raftpb::ConfChange cc;
    raftpb::ConfChangeSingle* c = cc.add_changes();
    c->set_type(type);
    c->set_node_id(id);
    return cc;
  };
  if (cs.voters_outgoing_size() == 0) {
    // Not joint: add voters, then learners, one at a time.
    for (uint64_t id : cs.voters()) {
      if (absl::Status s = step(single(raftpb::CONF_CHANGE_ADD_NODE, id), false, false); !s.ok()) {
        return s;
      }
    }
    for (uint64_t id : cs.learners()) {
      if (absl::Status s = step(single(raftpb::CONF_CHANGE_ADD_LEARNER, id), false, false);
          !s.ok()) {
        return s;
      }
    }
    if (!cs.learners_next().empty() || cs.auto_leave()) {
      return absl::InvalidArgumentError("non-joint ConfState with learners_next or auto_leave");
    }
  } else {
    // Joint: build the outgoing config first, then enter the joint config
    // that replaces its voters by the incoming ones.
    for (uint64_t id : cs.voters_outgoing()) {
      if (absl::Status s = step(single(raftpb::CONF_CHANGE_ADD_NODE, id), false, false); !s.ok()) {
        return s;
      }
    }
    raftpb::ConfChange in;
    for (uint64_t id : cs.voters_outgoing()) {
      auto* c = in.add_changes();
      c->set_type(raftpb::CONF_CHANGE_REMOVE_NODE);
      c->set_node_id(id);
    }
    for (uint64_t id : cs.voters()) {
      auto* c = in.add_changes();
      c->set_type(raftpb::CONF_CHANGE_ADD_NODE);
      c->set_node_id(id);
    }
    for (uint64_t id : cs.learners()) {
      auto* c = in.add_changes();
      c->set_type(raftpb::CONF_CHANGE_ADD_LEARNER);
      c->set_node_id(id);
    }
    // learners_next are voters of outgoing: adding them as learners puts them
    // into learners_next.
    for (uint64_t id : cs.learners_next()) {
      auto* c = in.add_changes();
      c->set_type(raftpb::CONF_CHANGE_ADD_LEARNER);
      c->set_node_id(id);
    }
    if (absl::Status s = step(in, true, cs.auto_leave()); !s.ok()) return s;
  }
  return ConfigAndProgress{std::move(t.config), std::move(t.progress)};
}

}  // namespace tessera::raft
