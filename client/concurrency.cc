#include "client/concurrency.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace tessera::client {
namespace {

absl::Status CheckName(const std::string& name) {
  if (name.empty() || name.find('}') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("lock or election name \"", name, "\": must be non-empty, without '}'"));
  }
  return absl::OkStatus();
}

CallOptions Until(absl::Time deadline) {
  CallOptions options;
  options.deadline = deadline;
  // Each call gets at most the client's default timeout, however far the
  // overall deadline is.
  options.timeout = absl::Seconds(5);
  return options;
}

absl::StatusOr<std::vector<KeyValue>> KeysUnder(Client* client, const std::string& prefix,
                                                absl::Time deadline) {
  ScanOptions scan;
  scan.prefix = prefix;
  absl::StatusOr<ScanResult> keys = client->Scan(scan, Until(deadline));
  if (!keys.ok()) return keys.status();
  return std::move(keys->kvs);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Session>> Session::Create(Client* client, absl::Duration ttl) {
  const absl::Time asked = absl::Now();
  absl::StatusOr<LeaseGrant> grant = client->GrantLease(ttl);
  if (!grant.ok()) return grant.status();
  auto keep = std::make_unique<KeepAlive>(client, grant->id, grant->ttl, asked + grant->ttl);
  return std::unique_ptr<Session>(new Session(client, std::move(keep)));
}

Session::~Session() {
  keep_->Stop();
  if (!abandoned_) client_->RevokeLease(keep_->id()).IgnoreError();  // else it expires
}

Contender::Contender(Client* client, const Session* session, std::string prefix)
    : client_(client),
      session_(session),
      prefix_(std::move(prefix)),
      key_(session != nullptr ? absl::StrFormat("%s%016x", prefix_, session->lease()) : "") {}

absl::StatusOr<uint64_t> Contender::Enter(const std::string& value, absl::Time deadline) {
  if (session_ == nullptr) return absl::FailedPreconditionError("no session");
  TxnRequest txn;
  Compare absent;
  absent.key = key_;
  absent.target = Compare::Target::kCreateRevision;
  absent.revision = 0;
  txn.compares.push_back(absent);
  txn.success.push_back(TxnOp{TxnOp::Type::kPut, key_, value, session_->lease()});
  txn.failure.push_back(TxnOp{TxnOp::Type::kGet, key_});
  absl::StatusOr<TxnResult> r = client_->Txn(txn, Until(deadline));
  if (!r.ok()) return r.status();
  revision_ = r->succeeded ? r->revision : r->results.at(0).create_revision;
  if (!r->succeeded && r->results.at(0).value != value) {
    absl::Status updated = Update(value, deadline);
    if (!updated.ok()) return updated;
  }
  return revision_;
}

absl::Status Contender::WaitTurn(absl::Time deadline) {
  while (true) {
    if (session_->lost()) {
      return absl::AbortedError("the session's lease was lost (not renewed in time)");
    }
    absl::StatusOr<std::vector<KeyValue>> keys = KeysUnder(client_, prefix_, deadline);
    if (!keys.ok()) return keys.status();
    const KeyValue* before = nullptr;  // the last key created before ours
    bool mine = false;
    for (const KeyValue& kv : *keys) {
      if (kv.key == key_ && kv.create_revision == revision_) mine = true;
      if (kv.create_revision < revision_ &&
          (before == nullptr || kv.create_revision > before->create_revision)) {
        before = &kv;
      }
    }
    if (!mine) return absl::AbortedError("our key is gone: the session's lease ended");
    if (before == nullptr) return absl::OkStatus();
    // Wait for that key to go (its events from its last change on).
    WatchOptions w;
    w.key = before->key;
    w.start_revision = before->mod_revision + 1;
    w.timeout = std::max(absl::Seconds(1), std::min(absl::Seconds(10), deadline - absl::Now()));
    absl::StatusOr<std::unique_ptr<Watcher>> watcher = client_->Watch(w);
    if (!watcher.ok()) {
      if (absl::Now() >= deadline) return absl::DeadlineExceededError("still waiting for the lock");
      if (absl::IsOutOfRange(watcher.status())) continue;  // history gone: look again
      return watcher.status();
    }
    bool gone = false;
    while (!gone) {
      if (absl::Now() >= deadline) return absl::DeadlineExceededError("still waiting for the lock");
      if (session_->lost()) break;  // reported at the top
      absl::StatusOr<std::vector<WatchEvent>> events =
          (*watcher)->Next(std::min(deadline, absl::Now() + absl::Milliseconds(500)));
      if (!events.ok()) break;  // look again
      for (const WatchEvent& e : *events) gone = gone || e.type == WatchEvent::Type::kDelete;
    }
  }
}

TxnRequest Contender::IfOurs() const {
  TxnRequest txn;
  Compare ours;
  ours.key = key_;
  ours.target = Compare::Target::kCreateRevision;
  ours.revision = revision_;
  txn.compares.push_back(ours);
  return txn;
}

absl::Status Contender::Leave(absl::Time deadline) {
  if (revision_ == 0) return absl::OkStatus();
  TxnRequest txn = IfOurs();
  txn.success.push_back(TxnOp{TxnOp::Type::kDelete, key_});
  absl::StatusOr<TxnResult> r = client_->Txn(txn, Until(deadline));
  if (!r.ok()) return r.status();
  revision_ = 0;
  return absl::OkStatus();
}

absl::Status Contender::Update(const std::string& value, absl::Time deadline) {
  TxnRequest txn = IfOurs();
  txn.success.push_back(TxnOp{TxnOp::Type::kPut, key_, value, session_->lease()});
  absl::StatusOr<TxnResult> r = client_->Txn(txn, Until(deadline));
  if (!r.ok()) return r.status();
  if (!r->succeeded) {
    return absl::FailedPreconditionError("our key is gone: the session's lease ended");
  }
  return absl::OkStatus();
}

Mutex::Mutex(Client* client, const Session* session, const std::string& name)
    : name_(name), contender_(client, session, absl::StrCat("__lock/{", name, "}/")) {}

absl::StatusOr<uint64_t> Mutex::Lock(absl::Time deadline) {
  if (absl::Status valid = CheckName(name_); !valid.ok()) return valid;
  if (contender_.revision() == 0) {
    absl::StatusOr<uint64_t> entered = contender_.Enter("", deadline);
    if (!entered.ok()) return entered.status();
  }
  absl::Status turn = contender_.WaitTurn(deadline);
  if (!turn.ok()) return turn;
  token_ = contender_.revision();
  return token_;
}

absl::Status Mutex::Unlock(absl::Time deadline) {
  token_ = 0;
  return contender_.Leave(deadline);
}

Election::Election(Client* client, const Session* session, const std::string& name)
    : client_(client), name_(name), prefix_(absl::StrCat("__election/{", name, "}/")) {
  if (session != nullptr) contender_.emplace(client, session, prefix_);
}

absl::StatusOr<uint64_t> Election::Campaign(const std::string& value, absl::Time deadline) {
  if (absl::Status valid = CheckName(name_); !valid.ok()) return valid;
  if (!contender_.has_value()) return absl::FailedPreconditionError("an observer cannot campaign");
  absl::StatusOr<uint64_t> entered = contender_->Enter(value, deadline);
  if (!entered.ok()) return entered.status();
  absl::Status turn = contender_->WaitTurn(deadline);
  if (!turn.ok()) return turn;
  return contender_->revision();
}

absl::Status Election::Proclaim(const std::string& value, absl::Time deadline) {
  if (!contender_.has_value() || contender_->revision() == 0) {
    return absl::FailedPreconditionError("not campaigning");
  }
  absl::StatusOr<std::optional<KeyValue>> leader = Leader(deadline);
  if (!leader.ok()) return leader.status();
  if (!leader->has_value() || (*leader)->key != contender_->key() ||
      (*leader)->create_revision != contender_->revision()) {
    return absl::FailedPreconditionError("not the leader");
  }
  return contender_->Update(value, deadline);
}

absl::Status Election::Resign(absl::Time deadline) {
  if (!contender_.has_value()) return absl::OkStatus();
  return contender_->Leave(deadline);
}

absl::StatusOr<std::optional<KeyValue>> Election::Leader(absl::Time deadline) {
  if (absl::Status valid = CheckName(name_); !valid.ok()) return valid;
  absl::StatusOr<std::vector<KeyValue>> keys = KeysUnder(client_, prefix_, deadline);
  if (!keys.ok()) return keys.status();
  auto first = std::min_element(
      keys->begin(), keys->end(),
      [](const KeyValue& a, const KeyValue& b) { return a.create_revision < b.create_revision; });
  if (first == keys->end()) return std::optional<KeyValue>();
  return std::optional<KeyValue>(*first);
}

absl::Status Election::Observe(const std::function<bool(const std::optional<KeyValue>&)>& on_change,
                               absl::Time deadline) {
  if (absl::Status valid = CheckName(name_); !valid.ok()) return valid;
  // Watch first, then read: a change after the read shows up as an event.
  WatchOptions w;
  w.key = prefix_;
  w.prefix = true;
  absl::StatusOr<std::unique_ptr<Watcher>> watcher = client_->Watch(w);
  if (!watcher.ok()) return watcher.status();
  std::optional<std::pair<std::string, uint64_t>> shown;  // key, mod_revision
  bool first = true;
  while (absl::Now() < deadline) {
    absl::StatusOr<std::optional<KeyValue>> leader = Leader(deadline);
    if (!leader.ok()) return leader.status();
    std::optional<std::pair<std::string, uint64_t>> now;
    if (leader->has_value()) now.emplace((*leader)->key, (*leader)->mod_revision);
    if (first || now != shown) {
      first = false;
      shown = now;
      if (!on_change(*leader)) return absl::OkStatus();
    }
    // Until something under the prefix changes.
    while (absl::Now() < deadline) {
      absl::StatusOr<std::vector<WatchEvent>> events = (*watcher)->Next(deadline);
      if (!events.ok()) return events.status();
      if (!events->empty()) break;
    }
  }
  return absl::OkStatus();
}

}  // namespace tessera::client
