// KV.Batch: one BatchStream reactor per stream (kv_service.h has the flow).
//
// Ownership: gRPC holds the reactor from Batch() until OnDone(); every
// operation in flight and every deferred flush holds a reference too
// (refs_), so the reactor is deleted by whichever drops the last one. An
// operation's request and response live in its BatchOpState (owned by the
// operation's OpDone) until its result is handed to the stream.
//
// Threads: OnReadDone / OnWriteDone / OnCancel / OnDone run on gRPC's
// callback threads; Deliver runs on the thread that completed the operation
// (the raft loop's completion run, a worker for scans, the reading thread
// for errors found before anything was proposed). mu_ guards the stream's
// state; no gRPC Start*/Finish call is made with it held.
#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "proto/grpc_status.h"
#include "server/api/kv_service.h"
#include "server/raftstore/completion_scope.h"

namespace tessera::server {

class KvService::BatchStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  BatchStream(KvService* service, Caller caller) : service_(service), caller_(std::move(caller)) {
    {
      absl::MutexLock lock(&service_->stats_mu_);
      ++service_->batch_stats_.streams_open;
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    if (!ok) {
      // The client half-closed (or the stream broke): finish once every
      // result read so far is written.
      {
        absl::MutexLock lock(&mu_);
        read_closed_ = true;
      }
      MaybeFinish(grpc::Status::OK);
      return;
    }
    v1::BatchRequest request;
    const size_t message_bytes = in_.Length();
    if (!grpc::SerializationTraits<v1::BatchRequest>::Deserialize(&in_, &request).ok()) {
      // Without ids no operation can be answered: end the stream.
      {
        absl::MutexLock lock(&service_->stats_mu_);
        ++service_->batch_stats_.invalid_messages_total;
      }
      FinishNow(ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("a Batch message (", message_bytes,
                       " bytes) is not a valid tessera.v1.BatchRequest; the stream ends"))));
      return;
    }
    Dispatch(request, message_bytes);
    bool read_more;
    {
      absl::MutexLock lock(&mu_);
      read_more = CanReadLocked();
      reading_ = read_more;
    }
    if (read_more) StartRead(&in_);
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    bool resume_read = false;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      in_flight_ops_ -= written_ops_;
      written_ops_ = 0;
      finish.swap(deferred_finish_);
      if (!ok) {
        broken_ = true;  // OnCancel / OnDone follow; results are dropped
      } else if (!reading_ && !read_closed_ && !finished_ && CanReadLocked()) {
        reading_ = resume_read = true;
      }
    }
    if (finish.has_value()) {
      Finish(*finish);
      return;
    }
    if (resume_read) StartRead(&in_);
    Flush();
    MaybeFinish(grpc::Status::OK);
  }

  void OnCancel() override ABSL_LOCKS_EXCLUDED(mu_) {
    FinishNow(grpc::Status(grpc::StatusCode::CANCELLED, "the Batch stream was cancelled"));
  }

  void OnDone() override ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&service_->stats_mu_);
      --service_->batch_stats_.streams_open;
    }
    Unref();
  }

 private:
  // One operation in flight: its request and response until it completes.
  struct OpState {
    v1::BatchOp op;
    v1::BatchResult result;
    absl::Time start;
    bool counted_id = false;  // its id is in ids_ (guarded by the stream's mu_)
  };

  // Runs the operations of one message. Results found at once (bad input,
  // refusals) are written together in one message at the end of the
  // dispatch (CompletionScope), as the results of a raft cycle are.
  void Dispatch(v1::BatchRequest& request, size_t message_bytes) ABSL_LOCKS_EXCLUDED(mu_) {
    const KvServiceOptions& options = service_->options_;
    const size_t n = static_cast<size_t>(request.ops_size());
    {
      absl::MutexLock lock(&service_->stats_mu_);
      BatchStats& stats = service_->batch_stats_;
      ++stats.messages_total;
      stats.ops_total += n;
      for (size_t i = 0; i < std::size(BatchStats::kOpsBuckets); ++i) {
        if (n <= BatchStats::kOpsBuckets[i]) ++stats.ops_per_message_le[i];
      }
    }
    absl::Status message_error;
    if (n > MaxOps()) {
      message_error = absl::InvalidArgumentError(
          absl::StrCat("a Batch message carries ", n, " operations; the limit is ", MaxOps()));
    } else if (message_bytes > options.max_batch_bytes) {
      message_error = absl::InvalidArgumentError(absl::StrCat(
          "a Batch message of ", message_bytes, " bytes exceeds ", options.max_batch_bytes));
    }
    const absl::Time now = absl::Now();
    {
      absl::MutexLock lock(&mu_);
      in_flight_ops_ += n;
      refs_ += n;
    }
    CompletionScope scope;
    for (v1::BatchOp& op : *request.mutable_ops()) {
      auto state = std::make_shared<OpState>();
      state->op = std::move(op);
      state->start = now;
      state->result.set_id(state->op.id());
      absl::Status invalid = message_error;
      if (invalid.ok() && state->op.op_case() == v1::BatchOp::OP_NOT_SET) {
        invalid = InvalidFieldError("op", "a Batch operation has no op set");
      }
      if (invalid.ok()) {
        absl::MutexLock lock(&mu_);
        if (!ids_.insert(state->op.id()).second) {
          invalid = InvalidFieldError(
              "id", absl::StrCat("Batch operation id ", state->op.id(), " is already in flight"));
          state->result.set_id(state->op.id());
        } else {
          state->counted_id = true;
        }
      }
      if (!invalid.ok()) {
        {
          absl::MutexLock lock(&service_->stats_mu_);
          ++service_->batch_stats_.invalid_ops_total;
        }
        Deliver(*state, invalid, nullptr);
        continue;
      }
      const absl::Time deadline = service_->BatchDeadline(now, state->op.timeout_ms());
      Start(std::move(state), deadline);
    }
  }

  // Runs one valid operation through the unary path.
  void Start(std::shared_ptr<OpState> state, absl::Time deadline) {
    KvService* s = service_;
    v1::BatchOp& op = state->op;
    v1::BatchResult& r = state->result;
    const char* method = nullptr;
    OpDone done;
    auto make_done = [this, &state, &method]() {
      return [this, state, method](absl::Status status) { Deliver(*state, status, method); };
    };
    switch (op.op_case()) {
      case v1::BatchOp::kPut:
        method = "/tessera.v1.KV/Put";
        s->HandlePut(caller_, op.put(), r.mutable_put(), deadline, Hop::kInline, make_done());
        break;
      case v1::BatchOp::kGet:
        method = "/tessera.v1.KV/Get";
        s->HandleGet(caller_, op.get(), r.mutable_get(), deadline, Hop::kInline, make_done());
        break;
      case v1::BatchOp::kDelete:
        method = "/tessera.v1.KV/Delete";
        s->HandleDelete(caller_, op.delete_(), r.mutable_delete_(), deadline, Hop::kInline,
                        make_done());
        break;
      case v1::BatchOp::kTxn:
        method = "/tessera.v1.KV/Txn";
        s->HandleTxn(caller_, op.txn(), r.mutable_txn(), deadline, Hop::kInline, make_done());
        break;
      case v1::BatchOp::kScan:
        method = "/tessera.v1.KV/Scan";
        s->HandleScan(caller_, op.scan(), r.mutable_scan(), deadline, Hop::kInline, make_done());
        break;
      case v1::BatchOp::OP_NOT_SET:
        break;  // refused in Dispatch
    }
  }

  // An operation's outcome (any thread): buffers its result and, at the end
  // of the completion run it is part of (or now, outside one), writes it.
  void Deliver(OpState& state, const absl::Status& status, const char* method)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (method != nullptr && service_->options_.on_batch_op) {
      service_->options_.on_batch_op(method, status.code(), absl::Now() - state.start);
    }
    v1::BatchResult result;
    result.set_id(state.result.id());
    if (status.ok()) {
      result = std::move(state.result);
    } else {
      *result.mutable_error() = ToRpcStatus(status);
    }
    bool flush_now = false;
    bool dropped = false;
    {
      absl::MutexLock lock(&mu_);
      if (state.counted_id) ids_.erase(state.op.id());
      if (finished_ || broken_) {
        --in_flight_ops_;
        dropped = true;
      } else {
        *pending_.add_results() = std::move(result);
        if (!writing_ && !flush_deferred_) {
          ++refs_;  // held by the flush
          flush_deferred_ = true;
          flush_now = true;
        }
      }
    }
    if (dropped) {
      absl::MutexLock lock(&service_->stats_mu_);
      ++service_->batch_stats_.results_dropped_total;
    }
    if (flush_now && !CompletionScope::Defer([this] { DeferredFlush(); })) DeferredFlush();
    MaybeFinish(grpc::Status::OK);
    Unref();  // the operation's
  }

  void DeferredFlush() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      flush_deferred_ = false;
    }
    Flush();
    Unref();
  }

  // Writes what is buffered unless a write is outstanding (OnWriteDone
  // flushes again).
  void Flush() ABSL_LOCKS_EXCLUDED(mu_) {
    v1::BatchResponse response;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_ || broken_ || pending_.results_size() == 0) return;
      writing_ = true;
      written_ops_ = static_cast<size_t>(pending_.results_size());
      response.Swap(&pending_);
    }
    bool own_buffer = false;
    // out_ is touched only by the one writer (writing_); the last write's
    // message is done with.
    out_.Clear();
    grpc::Status serialized =
        grpc::SerializationTraits<v1::BatchResponse>::Serialize(response, &out_, &own_buffer);
    if (!serialized.ok()) {
      {
        absl::MutexLock lock(&mu_);
        writing_ = false;
        in_flight_ops_ -= written_ops_;
        written_ops_ = 0;
      }
      FinishNow(grpc::Status(grpc::StatusCode::INTERNAL,
                             "cannot serialize a BatchResponse: " + serialized.error_message()));
      return;
    }
    {
      absl::MutexLock lock(&service_->stats_mu_);
      ++service_->batch_stats_.responses_total;
    }
    StartWrite(&out_);
  }

  // Finishes with `status` once the client half-closed and every result
  // read so far is written.
  void MaybeFinish(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (!read_closed_ || finished_ || writing_ || in_flight_ops_ != 0 ||
          pending_.results_size() != 0) {
        return;
      }
      finished_ = true;
    }
    Finish(status);
  }

  // Finishes now (once), or when the write outstanding is done; results
  // still to come are dropped. Never while a write is being started: a
  // StartWrite from outside a reaction (Deliver on the raft loop) racing a
  // Finish (OnCancel, as a server shutting down does) could reach a call
  // gRPC has already finished and freed.
  void FinishNow(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      in_flight_ops_ -= static_cast<size_t>(pending_.results_size());
      pending_.Clear();
      if (writing_) {
        deferred_finish_ = status;  // OnWriteDone finishes
        return;
      }
    }
    Finish(status);
  }

  bool CanReadLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !finished_ && !broken_ && in_flight_ops_ + MaxOps() <= MaxInFlight();
  }
  size_t MaxInFlight() const {
    return std::max<size_t>(1, service_->options_.max_batch_inflight_ops);
  }
  size_t MaxOps() const {
    return std::max<size_t>(1, std::min(service_->options_.max_batch_ops, MaxInFlight()));
  }

  void Unref() ABSL_LOCKS_EXCLUDED(mu_) {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  KvService* const service_;
  const Caller caller_;   // identified when the stream opened
  grpc::ByteBuffer in_;   // the message being read (one read at a time)
  grpc::ByteBuffer out_;  // the message being written (one write at a time)

  absl::Mutex mu_;
  size_t refs_ ABSL_GUARDED_BY(mu_) = 1;  // gRPC's, until OnDone
  // Operations read whose results are not written yet (buffered results
  // and the write outstanding included).
  size_t in_flight_ops_ ABSL_GUARDED_BY(mu_) = 0;
  size_t written_ops_ ABSL_GUARDED_BY(mu_) = 0;             // results in the write outstanding
  absl::flat_hash_set<uint64_t> ids_ ABSL_GUARDED_BY(mu_);  // of the operations in flight
  v1::BatchResponse pending_ ABSL_GUARDED_BY(mu_);          // results not yet written
  bool reading_ ABSL_GUARDED_BY(mu_) = true;                // a read is outstanding
  bool writing_ ABSL_GUARDED_BY(mu_) = false;               // a write is outstanding
  bool flush_deferred_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;  // the client half-closed
  bool broken_ ABSL_GUARDED_BY(mu_) = false;       // a write failed
  bool finished_ ABSL_GUARDED_BY(mu_) = false;     // Finish was called (or deferred)
  // FinishNow's status while a write was outstanding: OnWriteDone finishes.
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mu_);
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KvService::Batch(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Caller::Identify(options_.auth, *context);
  if (!caller.ok()) return new RefusedStream(ToGrpcStatus(caller.status()));
  return new BatchStream(this, *std::move(caller));
}

BatchStats KvService::batch_stats() const {
  absl::MutexLock lock(&stats_mu_);
  return batch_stats_;
}

}  // namespace tessera::server
