// The in-memory network of the node simulator (node_sim.h): every message a
// Node sends goes through a chain of composable filters (drop, delay,
// duplicate, reorder, partition, one-way cuts), as tikv's
// components/test_raftstore/src/transport_simulate.rs does, and waits in a
// queue until the simulator delivers it at its delivery time.
//
// Deterministic: every random choice comes from the simulator's generator,
// the messages of one node cycle are put in a canonical order before the
// filters see them (the Node sends them in the order of a hash map), and the
// queue is a vector delivered by (time, sequence number).
//
// Not thread-safe; owned by the simulator's thread.
#ifndef TESSERA_TESTS_SIM_NODE_SIM_NETWORK_H_
#define TESSERA_TESTS_SIM_NODE_SIM_NETWORK_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "server/raftstore/transport.h"

namespace tessera::sim {

// The simulator's one source of randomness (raw mt19937_64 output only, as
// STYLE.md §7 asks: std:: distributions differ between library versions).
class SimRng {
 public:
  explicit SimRng(uint64_t seed) : gen_(seed) {}
  uint64_t Next() { return gen_(); }
  // Uniform in [0, n); 0 when n == 0.
  uint64_t Pick(uint64_t n) { return n == 0 ? 0 : gen_() % n; }
  // Uniform in [lo, hi].
  int64_t Range(int64_t lo, int64_t hi) {
    return lo + static_cast<int64_t>(Pick(static_cast<uint64_t>(hi - lo + 1)));
  }
  bool Chance(double p) { return static_cast<double>(gen_() >> 11) * 0x1.0p-53 < p; }
  template <typename T>
  void Shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[Pick(i)]);
  }

 private:
  std::mt19937_64 gen_;
};

// One message on its way.
struct Envelope {
  NodeId from = 0;
  NodeId to = 0;
  server::ShardMessage message;
  int64_t deliver_at_ns = 0;
  uint64_t seq = 0;  // send order, breaks ties
};

// A filter sees each message about to be queued, as a list of copies (one at
// first): it may drop them (clear), add copies (duplicate) or move their
// delivery times (delay, reorder). Filters run in the order they were added.
class NetFilter {
 public:
  virtual ~NetFilter() = default;
  virtual void Apply(SimRng& rng, std::vector<Envelope>& copies) = 0;
  virtual std::string Describe() const = 0;
};

// Drops each message with probability `rate`.
std::unique_ptr<NetFilter> DropFilter(double rate);
// Delivers each message a second time, later, with probability `rate`.
std::unique_ptr<NetFilter> DuplicateFilter(double rate, int64_t max_extra_ns);
// Adds a uniform delay in [min_ns, max_ns] to each message.
std::unique_ptr<NetFilter> DelayFilter(int64_t min_ns, int64_t max_ns);
// Holds back a fraction `rate` of the messages by up to `max_extra_ns`, so
// that later messages overtake them.
std::unique_ptr<NetFilter> ReorderFilter(double rate, int64_t max_extra_ns);
// Drops every message between the two sides (nodes in `side` vs the rest).
std::unique_ptr<NetFilter> PartitionFilter(std::set<NodeId> side);
// Drops every message from `from` to `to` (one direction only).
std::unique_ptr<NetFilter> OneWayFilter(NodeId from, NodeId to);

class SimNetwork {
 public:
  explicit SimNetwork(SimRng* rng) : rng_(rng) {}

  // Adds a filter at the end of the chain; returns its id for RemoveFilter.
  int AddFilter(std::unique_ptr<NetFilter> filter);
  void RemoveFilter(int id);
  void RemoveAllFilters() { filters_.clear(); }
  std::string DescribeFilters() const;

  // The transport of node `self`: Send() collects into the outbox.
  std::unique_ptr<server::Transport> TransportFor(NodeId self);
  // Puts the outbox (one node cycle's messages) in canonical order (by
  // destination, then shard, keeping each shard's order), runs the filters
  // and queues the survivors, due `now_ns` + their delays.
  void Flush(int64_t now_ns);
  // Removes and returns the messages due at `now_ns`, in delivery order
  // (by time, then sequence number).
  std::vector<Envelope> TakeDue(int64_t now_ns);
  size_t in_flight() const { return queue_.size(); }
  uint64_t sent() const { return next_seq_; }

 private:
  class Endpoint;

  SimRng* const rng_;
  std::map<int, std::unique_ptr<NetFilter>> filters_;
  int next_filter_id_ = 1;
  std::vector<Envelope> outbox_;
  std::vector<Envelope> queue_;
  uint64_t next_seq_ = 0;
};

}  // namespace tessera::sim

#endif  // TESSERA_TESTS_SIM_NODE_SIM_NETWORK_H_
