#include "tests/testing/local_transport.h"

#include <algorithm>
#include <limits>
#include <memory>
#include <string>

namespace tessera::server {

class LocalNetwork::LocalTransport : public Transport {
 public:
  LocalTransport(LocalNetwork* net, NodeId from) : net_(net), from_(from) {}
  void Send(NodeId to, std::vector<ShardMessage> messages) override {
    net_->Send(from_, to, std::move(messages));
  }

 private:
  LocalNetwork* const net_;
  const NodeId from_;
};

LocalNetwork::LocalNetwork() : thread_([this] { Run(); }) {}

LocalNetwork::~LocalNetwork() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

void LocalNetwork::Register(NodeId id, MessageHandler handler) {
  absl::MutexLock lock(&mu_);
  handlers_[id] = std::move(handler);
}

void LocalNetwork::Unregister(NodeId id) {
  absl::MutexLock lock(&mu_);
  handlers_.erase(id);
  auto idle = [this, id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return delivering_to_ != id; };
  mu_.Await(absl::Condition(&idle));
}

std::unique_ptr<Transport> LocalNetwork::TransportFor(NodeId from) {
  return std::make_unique<LocalTransport>(this, from);
}

void LocalNetwork::SetSnapshotExchange(NodeId id, SnapshotExchange* exchange) {
  absl::MutexLock lock(&mu_);
  if (exchange == nullptr) {
    exchanges_.erase(id);
  } else {
    exchanges_[id] = exchange;
  }
}

void LocalNetwork::set_snapshot_chunk_bytes(uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  snapshot_chunk_bytes_ = bytes;
}

uint64_t LocalNetwork::snapshot_chunks() const {
  absl::MutexLock lock(&mu_);
  return snapshot_chunks_;
}

uint64_t LocalNetwork::failed_snapshots() const {
  absl::MutexLock lock(&mu_);
  return failed_snapshots_;
}

bool LocalNetwork::StreamSnapshot(SnapshotExchange* from, SnapshotExchange* to,
                                  uint64_t chunk_bytes, ShardMessage& m) {
  absl::StatusOr<std::unique_ptr<SnapshotChunker>> chunker =
      SnapshotChunker::Open(from, m.message.mutable_snapshot());
  if (!chunker.ok()) return false;
  SnapshotAssembler assembler(to, std::numeric_limits<uint64_t>::max());
  if (!assembler.Begin(m.shard, m.message).ok()) return false;
  std::string chunk;
  uint64_t chunks = 0;
  while (true) {
    absl::StatusOr<bool> more = (*chunker)->Next(chunk_bytes, &chunk);
    if (!more.ok()) return false;
    if (!*more) break;
    if (!assembler.Add(chunk).ok()) return false;
    ++chunks;
  }
  absl::StatusOr<raftpb::Message> done = assembler.Finish((*chunker)->records());
  if (!done.ok()) return false;
  m.message = *std::move(done);
  absl::MutexLock lock(&mu_);
  snapshot_chunks_ += chunks;
  return true;
}

void LocalNetwork::Partition(NodeId a, NodeId b) {
  absl::MutexLock lock(&mu_);
  cut_.emplace(std::min(a, b), std::max(a, b));
}

void LocalNetwork::Isolate(NodeId id) {
  absl::MutexLock lock(&mu_);
  isolated_.insert(id);
}

void LocalNetwork::Heal() {
  absl::MutexLock lock(&mu_);
  cut_.clear();
  isolated_.clear();
}

uint64_t LocalNetwork::sent_batches() const {
  absl::MutexLock lock(&mu_);
  return sent_;
}

uint64_t LocalNetwork::delivered_batches() const {
  absl::MutexLock lock(&mu_);
  return delivered_;
}

uint64_t LocalNetwork::dropped_batches() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

void LocalNetwork::Send(NodeId from, NodeId to, std::vector<ShardMessage> messages) {
  absl::MutexLock lock(&mu_);
  if (stop_) return;
  ++sent_;
  queue_.push_back(Envelope{from, to, std::move(messages)});
}

bool LocalNetwork::Blocked(NodeId from, NodeId to) const {
  return isolated_.contains(from) || isolated_.contains(to) ||
         cut_.contains({std::min(from, to), std::max(from, to)});
}

void LocalNetwork::Run() {
  while (true) {
    Envelope env;
    MessageHandler handler;
    SnapshotExchange* from_exchange = nullptr;
    SnapshotExchange* to_exchange = nullptr;
    uint64_t chunk_bytes = 0;
    {
      absl::MutexLock lock(&mu_);
      delivering_to_ = 0;
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      env = std::move(queue_.front());
      queue_.pop_front();
      auto it = handlers_.find(env.to);
      if (it == handlers_.end() || Blocked(env.from, env.to)) {
        ++dropped_;
        continue;
      }
      ++delivered_;
      handler = it->second;  // a copy: Unregister may erase the original
      delivering_to_ = env.to;
      auto from = exchanges_.find(env.from);
      auto to = exchanges_.find(env.to);
      from_exchange = from == exchanges_.end() ? nullptr : from->second;
      to_exchange = to == exchanges_.end() ? nullptr : to->second;
      chunk_bytes = snapshot_chunk_bytes_;
    }
    if (from_exchange != nullptr) {
      std::erase_if(env.messages, [&](ShardMessage& m) {
        if (m.message.type() != raftpb::MSG_SNAP) return false;
        if (StreamSnapshot(from_exchange, to_exchange, chunk_bytes, m)) return false;
        absl::MutexLock lock(&mu_);
        ++failed_snapshots_;
        return true;
      });
    }
    handler(env.from, std::move(env.messages));
  }
}

}  // namespace tessera::server
