// The KV service's counters of KV.Batch streams (KvService::batch_stats),
// read by /metrics (server/observability) at scrape time. A plain struct so
// that metrics need not include the service.
#ifndef TESSERA_SERVER_API_BATCH_STATS_H_
#define TESSERA_SERVER_API_BATCH_STATS_H_

#include <cstdint>

namespace tessera::server {

// KV.Batch counters for /metrics. Monotonic except streams_open.
struct BatchStats {
  uint64_t streams_open = 0;
  uint64_t messages_total = 0;          // BatchRequests read
  uint64_t ops_total = 0;               // operations in them
  uint64_t invalid_messages_total = 0;  // undecodable (the stream ended INVALID_ARGUMENT)
  uint64_t invalid_ops_total = 0;       // refused per op by the batch limits or an empty op
  uint64_t responses_total = 0;         // BatchResponses written
  uint64_t results_dropped_total = 0;   // results of operations whose stream had ended
  // Operations per BatchRequest: counts of messages with <= kOpsBuckets[i]
  // operations (cumulative, as Prometheus histograms are), and the sum.
  static constexpr uint64_t kOpsBuckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  uint64_t ops_per_message_le[sizeof(kOpsBuckets) / sizeof(kOpsBuckets[0])] = {};
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_API_BATCH_STATS_H_
