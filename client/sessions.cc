#include "client/sessions.h"

#include <utility>

#include "absl/random/distributions.h"

namespace tessera::client {

std::shared_ptr<SessionTable::ShardSession> SessionTable::NewSession() {
  auto session = std::make_shared<ShardSession>();
  while (session->client_id == 0) session->client_id = absl::Uniform<uint64_t>(rng_);
  return session;
}

std::shared_ptr<SessionTable::ShardSession> SessionTable::Current(uint32_t shard) {
  std::shared_ptr<ShardSession>& session = sessions_[shard];
  if (session == nullptr ||
      (!session->in_flight.empty() &&
       session->begun - session->in_flight.begin()->second >= kMaxSessionLag)) {
    session = NewSession();
  }
  return session;
}

void SessionTable::BeginLocked(ShardSession& session, uint64_t seq) {
  session.in_flight.emplace(seq, session.begun++);
}

SessionTable::Ticket SessionTable::Begin(uint32_t shard) {
  const uint64_t seq = next_seq_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  Ticket ticket{Current(shard), shard, seq};
  BeginLocked(*ticket.session, seq);
  return ticket;
}

v1::Session SessionTable::Header(const Ticket& ticket) const {
  v1::Session header;
  header.set_client_id(ticket.session->client_id);
  header.set_seq(ticket.seq);
  absl::MutexLock lock(&mu_);
  const ShardSession& s = *ticket.session;
  header.set_first_incomplete_seq(s.known && !s.in_flight.empty() ? s.in_flight.begin()->first : 0);
  return header;
}

void SessionTable::Answered(const Ticket& ticket) {
  absl::MutexLock lock(&mu_);
  ticket.session->known = true;
}

void SessionTable::End(const Ticket& ticket) {
  absl::MutexLock lock(&mu_);
  ticket.session->in_flight.erase(ticket.seq);
}

SessionTable::Ticket SessionTable::Renew(const Ticket& ticket) {
  const uint64_t seq = next_seq_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  ticket.session->in_flight.erase(ticket.seq);
  std::shared_ptr<ShardSession>& current = sessions_[ticket.shard];
  if (current == nullptr || current == ticket.session) current = NewSession();
  Ticket renewed{current, ticket.shard, seq};
  BeginLocked(*current, seq);
  return renewed;
}

SessionTable::Ticket SessionTable::Move(const Ticket& ticket, uint32_t new_shard) {
  {
    absl::MutexLock lock(&mu_);
    auto it = sessions_.find(new_shard);
    if (it != sessions_.end() && it->second == ticket.session) {
      return Ticket{ticket.session, new_shard, ticket.seq};
    }
  }
  // A fresh seq: the new shard's session may already have moved its
  // first_incomplete_seq past the old one.
  const uint64_t seq = next_seq_.fetch_add(1);
  absl::MutexLock lock(&mu_);
  ticket.session->in_flight.erase(ticket.seq);
  Ticket moved{Current(new_shard), new_shard, seq};
  BeginLocked(*moved.session, seq);
  return moved;
}

void SessionTable::Split(uint32_t parent, uint32_t child) {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(parent);
  if (it == sessions_.end() || sessions_.contains(child)) return;
  std::shared_ptr<ShardSession> session = it->second;  // `it` dies with a rehash
  sessions_[child] = std::move(session);
}

uint64_t SessionTable::ClientIdForTesting(uint32_t shard) const {
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(shard);
  return it == sessions_.end() ? 0 : it->second->client_id;
}

}  // namespace tessera::client
