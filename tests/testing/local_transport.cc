#include "tests/testing/local_transport.h"

#include <algorithm>

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
    }
    handler(env.from, std::move(env.messages));
  }
}

}  // namespace tessera::server
