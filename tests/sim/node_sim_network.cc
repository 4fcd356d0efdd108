#include "tests/sim/node_sim_network.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tessera::sim {
namespace {

class Drop final : public NetFilter {
 public:
  explicit Drop(double rate) : rate_(rate) {}
  void Apply(SimRng& rng, std::vector<Envelope>& copies) override {
    std::erase_if(copies, [&](const Envelope&) { return rng.Chance(rate_); });
  }
  std::string Describe() const override { return absl::StrCat("drop(", rate_, ")"); }

 private:
  const double rate_;
};

class Duplicate final : public NetFilter {
 public:
  Duplicate(double rate, int64_t max_extra_ns) : rate_(rate), max_extra_ns_(max_extra_ns) {}
  void Apply(SimRng& rng, std::vector<Envelope>& copies) override {
    const size_t n = copies.size();
    for (size_t i = 0; i < n; ++i) {
      if (!rng.Chance(rate_)) continue;
      Envelope again = copies[i];
      again.deliver_at_ns += rng.Range(0, max_extra_ns_);
      copies.push_back(std::move(again));
    }
  }
  std::string Describe() const override { return absl::StrCat("duplicate(", rate_, ")"); }

 private:
  const double rate_;
  const int64_t max_extra_ns_;
};

class Delay final : public NetFilter {
 public:
  Delay(int64_t min_ns, int64_t max_ns) : min_ns_(min_ns), max_ns_(max_ns) {}
  void Apply(SimRng& rng, std::vector<Envelope>& copies) override {
    for (Envelope& e : copies) e.deliver_at_ns += rng.Range(min_ns_, max_ns_);
  }
  std::string Describe() const override {
    return absl::StrCat("delay(", min_ns_ / 1000, "-", max_ns_ / 1000, "us)");
  }

 private:
  const int64_t min_ns_;
  const int64_t max_ns_;
};

class Reorder final : public NetFilter {
 public:
  Reorder(double rate, int64_t max_extra_ns) : rate_(rate), max_extra_ns_(max_extra_ns) {}
  void Apply(SimRng& rng, std::vector<Envelope>& copies) override {
    for (Envelope& e : copies) {
      if (rng.Chance(rate_)) e.deliver_at_ns += rng.Range(0, max_extra_ns_);
    }
  }
  std::string Describe() const override { return absl::StrCat("reorder(", rate_, ")"); }

 private:
  const double rate_;
  const int64_t max_extra_ns_;
};

class Partition final : public NetFilter {
 public:
  explicit Partition(std::set<NodeId> side) : side_(std::move(side)) {}
  void Apply(SimRng&, std::vector<Envelope>& copies) override {
    std::erase_if(copies,
                  [&](const Envelope& e) { return side_.count(e.from) != side_.count(e.to); });
  }
  std::string Describe() const override {
    return absl::StrCat("partition({", absl::StrJoin(side_, ","), "} | rest)");
  }

 private:
  const std::set<NodeId> side_;
};

class OneWay final : public NetFilter {
 public:
  OneWay(NodeId from, NodeId to) : from_(from), to_(to) {}
  void Apply(SimRng&, std::vector<Envelope>& copies) override {
    std::erase_if(copies, [&](const Envelope& e) { return e.from == from_ && e.to == to_; });
  }
  std::string Describe() const override { return absl::StrCat("one-way(", from_, "->", to_, ")"); }

 private:
  const NodeId from_;
  const NodeId to_;
};

}  // namespace

std::unique_ptr<NetFilter> DropFilter(double rate) { return std::make_unique<Drop>(rate); }
std::unique_ptr<NetFilter> DuplicateFilter(double rate, int64_t max_extra_ns) {
  return std::make_unique<Duplicate>(rate, max_extra_ns);
}
std::unique_ptr<NetFilter> DelayFilter(int64_t min_ns, int64_t max_ns) {
  return std::make_unique<Delay>(min_ns, max_ns);
}
std::unique_ptr<NetFilter> ReorderFilter(double rate, int64_t max_extra_ns) {
  return std::make_unique<Reorder>(rate, max_extra_ns);
}
std::unique_ptr<NetFilter> PartitionFilter(std::set<NodeId> side) {
  return std::make_unique<Partition>(std::move(side));
}
std::unique_ptr<NetFilter> OneWayFilter(NodeId from, NodeId to) {
  return std::make_unique<OneWay>(from, to);
}

class SimNetwork::Endpoint final : public server::Transport {
 public:
  Endpoint(SimNetwork* net, NodeId self) : net_(net), self_(self) {}
  void Send(NodeId to, std::vector<server::ShardMessage> messages) override {
    for (server::ShardMessage& m : messages) {
      net_->outbox_.push_back(Envelope{self_, to, std::move(m), 0, 0});
    }
  }

 private:
  SimNetwork* const net_;
  const NodeId self_;
};

int SimNetwork::AddFilter(std::unique_ptr<NetFilter> filter) {
  const int id = next_filter_id_++;
  filters_.emplace(id, std::move(filter));
  return id;
}

void SimNetwork::RemoveFilter(int id) { filters_.erase(id); }

std::string SimNetwork::DescribeFilters() const {
  std::vector<std::string> parts;
  for (const auto& [id, f] : filters_) parts.push_back(f->Describe());
  return absl::StrJoin(parts, " ");
}

std::unique_ptr<server::Transport> SimNetwork::TransportFor(NodeId self) {
  return std::make_unique<Endpoint>(this, self);
}

void SimNetwork::Flush(int64_t now_ns) {
  std::stable_sort(outbox_.begin(), outbox_.end(), [](const Envelope& a, const Envelope& b) {
    if (a.to != b.to) return a.to < b.to;
    return a.message.shard < b.message.shard;
  });
  for (Envelope& e : outbox_) {
    e.deliver_at_ns = now_ns;
    std::vector<Envelope> copies;
    copies.push_back(std::move(e));
    for (auto& [id, f] : filters_) {
      if (copies.empty()) break;
      f->Apply(*rng_, copies);
    }
    for (Envelope& c : copies) {
      c.seq = next_seq_++;
      queue_.push_back(std::move(c));
    }
  }
  outbox_.clear();
}

std::vector<Envelope> SimNetwork::TakeDue(int64_t now_ns) {
  std::vector<Envelope> due;
  std::vector<Envelope> later;
  for (Envelope& e : queue_) {
    (e.deliver_at_ns <= now_ns ? due : later).push_back(std::move(e));
  }
  queue_ = std::move(later);
  std::sort(due.begin(), due.end(), [](const Envelope& a, const Envelope& b) {
    if (a.deliver_at_ns != b.deliver_at_ns) return a.deliver_at_ns < b.deliver_at_ns;
    return a.seq < b.seq;
  });
  return due;
}

}  // namespace tessera::sim
