// Internal: the KV.Batch stream of one cluster member (issue 14). Calls hand
// their attempts to it instead of making one unary RPC each; a sender packs
// whatever is queued into one BatchRequest (no timer: a message goes out as
// soon as the previous write completed, carrying everything that queued up
// meanwhile, as TiKV client-go's batch client does), and each BatchResult
// completes the attempt with its id. While a stream delivers a response's
// results, the operations their callbacks submit (a closed-loop caller's
// next ones) are corked: each stream they go to is written once, after the
// last callback, so a response of N results brings back one message of N
// operations instead of a message of one and another of N-1 (the server
// pays per message; issue 14). A callback that then blocks on an operation
// it submitted would wait for its own cork: ToFuture flushes it
// (FlushCorkedBatchWrites, client.h), other waits in callbacks must not.
//
// Threads: none of its own. Submit() runs on the caller's thread (which
// starts a write when none is outstanding); OnWriteDone / OnReadDone /
// OnDone run on gRPC's callback threads, and so do the attempts' callbacks;
// Sweep() runs on the client's timer thread.
//
// Ownership: BatchChannel (one per Core::Node) owns the current Stream by a
// shared_ptr; a Stream also holds itself until gRPC calls OnDone, and the
// timer's sweep holds it while it runs. A Stream serves one gRPC call: when
// it ends (the node died, the connection broke, the client shut down) every
// attempt in flight on it fails with kUnavailable ("outcome unknown": a
// write is retried with the same session seq), and the next Submit opens a
// new one. A node that answers UNIMPLEMENTED (a server without KV.Batch) is
// remembered: its attempts fail with kUnimplemented (nothing was applied;
// the call makes them again at once), and Submit then returns false, so the
// call uses the unary RPC.
#ifndef TESSERA_CLIENT_BATCH_STREAM_H_
#define TESSERA_CLIENT_BATCH_STREAM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "client/timer.h"
#include "grpcpp/client_context.h"
#include "tessera/kv.grpc.pb.h"

namespace tessera::client {

// The outcome of one attempt: OK with the result (which may carry the
// operation's error), or the stream's failure with `result` null.
using BatchCallback = std::function<void(absl::Status stream, v1::BatchResult* result)>;

class BatchChannel {
 public:
  // `new_context` makes the stream's context (Core::NewContext, so that
  // ~Core waits for it); `stub` and `timer` must outlive the channel. A
  // message carries at most `max_ops` operations and about `max_bytes`
  // (one operation always goes): keep them within the server's
  // --max-batch-ops / --max-batch-bytes, which refuse a larger message.
  // `token` (optional) returns the sign-in token new contexts carry: when it
  // changes, the next Submit opens a new stream (cancelling the old one),
  // since the server identifies a stream's caller when it opens.
  BatchChannel(std::string address, v1::KV::Stub* stub, TimerQueue* timer,
               std::function<std::shared_ptr<grpc::ClientContext>()> new_context, size_t max_ops,
               size_t max_bytes, std::function<std::string()> token = nullptr);
  ~BatchChannel();

  // Queues `op` (its id is set here) with `deadline` (the attempt's: past
  // it, plus a grace for the server's own answer, the attempt fails with
  // kDeadlineExceeded even if the node never answers); `done` runs exactly
  // once. False (nothing queued, `done` dropped) when the node has no
  // KV.Batch or the channel shut down: use the unary RPC.
  bool Submit(v1::BatchOp op, absl::Time deadline, BatchCallback done) ABSL_LOCKS_EXCLUDED(mu_);
  // Cancels the current stream (its attempts fail) and refuses new ones.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // For tests: streams opened so far, and attempts failed because their
  // stream ended under them.
  uint64_t streams_opened() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t ops_failed_by_breaks() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class Stream;
  friend class WriteCork;

  // A stream ended with UNIMPLEMENTED: the node serves no KV.Batch.
  void MarkUnsupported() ABSL_LOCKS_EXCLUDED(mu_);
  void CountBroken(size_t ops) ABSL_LOCKS_EXCLUDED(mu_);

  const size_t max_ops_;
  const size_t max_bytes_;
  const std::string address_;
  v1::KV::Stub* const stub_;
  TimerQueue* const timer_;
  const std::function<std::shared_ptr<grpc::ClientContext>()> new_context_;
  const std::function<std::string()> token_;

  mutable absl::Mutex mu_;
  std::shared_ptr<Stream> current_ ABSL_GUARDED_BY(mu_);
  bool unsupported_ ABSL_GUARDED_BY(mu_) = false;  // the node answered UNIMPLEMENTED
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t streams_opened_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ops_failed_by_breaks_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_BATCH_STREAM_H_
