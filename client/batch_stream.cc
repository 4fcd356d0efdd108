#include "client/batch_stream.h"

#include <algorithm>
#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "grpcpp/support/client_callback.h"
#include "proto/grpc_status.h"

namespace tessera::client {
namespace {

// How often a stream looks for attempts past their deadline, and how long
// after its deadline an attempt waits for the server's own answer.
constexpr absl::Duration kSweepInterval = absl::Milliseconds(100);
constexpr absl::Duration kAnswerGrace = absl::Milliseconds(100);

}  // namespace

// The streams a delivery of results (Stream::OnReadDone) wrote to while it
// ran: each is written once when the delivery ends (see batch_stream.h).
// One per thread at a time; the innermost one collects.
class WriteCork {
 public:
  WriteCork() : outer_(current_) { current_ = this; }
  ~WriteCork() {
    current_ = outer_;
    Flush();
  }
  WriteCork(const WriteCork&) = delete;
  WriteCork& operator=(const WriteCork&) = delete;

  static WriteCork* Current() { return current_; }
  void Add(std::shared_ptr<BatchChannel::Stream> stream) { corked_.push_back(std::move(stream)); }
  void Flush();

 private:
  static thread_local WriteCork* current_;
  WriteCork* const outer_;
  std::vector<std::shared_ptr<BatchChannel::Stream>> corked_;
};

thread_local WriteCork* WriteCork::current_ = nullptr;

// One KV.Batch call. Thread-safe.
class BatchChannel::Stream final
    : public grpc::ClientBidiReactor<v1::BatchRequest, v1::BatchResponse>,
      public std::enable_shared_from_this<Stream> {
 public:
  Stream(BatchChannel* owner, std::shared_ptr<grpc::ClientContext> context, std::string token)
      : owner_(owner), token_(std::move(token)), context_(std::move(context)) {}

  // The sign-in token the stream was opened with (the server identifies the
  // caller of a stream once, when it opens).
  const std::string& token() const { return token_; }

  // Binds the call; under the owner's lock (cheap, no I/O), so that any
  // Enqueue after it may StartWrite (held by gRPC until StartCall).
  void Bind() ABSL_LOCKS_EXCLUDED(mu_) {
    self_ = shared_from_this();
    grpc::ClientContext* context;
    {
      absl::MutexLock lock(&mu_);
      context = context_.get();
    }
    owner_->stub_->async()->Batch(context, this);
  }
  // Starts the call and the sweep; once, after Bind, with no lock held.
  // The hold keeps gRPC from finishing the call (OnDone) while a write may
  // still be started from outside a reaction (Enqueue): it is released once
  // the stream has ended and no write is outstanding (ReleaseHoldLocked).
  // Without it, a StartWrite racing the end of the call used a finished call.
  void Start() {
    AddHold();
    StartRead(&in_);
    StartCall();
    ScheduleSweep();
  }

  // Queues `op` (moved from only when accepted); false if the stream has
  // ended (use another).
  bool Enqueue(v1::BatchOp& op, absl::Time deadline, BatchCallback& done) ABSL_LOCKS_EXCLUDED(mu_) {
    WriteCork* cork = WriteCork::Current();
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return false;
      pending_.emplace(op.id(), Pending{deadline, std::move(done)});
      queue_.push_back(std::move(op));
      // Outstanding or corked: that write sends it with the others queued.
      if (writing_) return true;
      writing_ = true;
      if (cork == nullptr) TakeMessageLocked();
    }
    if (cork != nullptr) {
      cork->Add(shared_from_this());
    } else {
      StartWrite(&out_);
    }
    return true;
  }

  // Writes what queued while this stream was corked (writing_ is set).
  void WriteCorked() ABSL_LOCKS_EXCLUDED(mu_) {
    bool release = false;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) {
        // OnDone fails what is pending; the hold stayed for this write.
        writing_ = false;
        release = TakeHoldLocked();
      } else {
        TakeMessageLocked();
      }
    }
    if (release) {
      RemoveHold();
    } else {
      StartWrite(&out_);
    }
  }

  // Moves the next message's operations from queue_ into out_: as many as
  // are queued, within the server's per-message limits (ClientOptions
  // batch_max_ops / batch_max_bytes; one operation always goes).
  void TakeMessageLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    out_.Clear();
    size_t bytes = 0;
    while (!queue_.empty() && static_cast<size_t>(out_.ops_size()) < owner_->max_ops_) {
      const size_t op_bytes = queue_.front().ByteSizeLong() + 8;  // + tag and length
      if (out_.ops_size() > 0 && bytes + op_bytes > owner_->max_bytes_) break;
      bytes += op_bytes;
      *out_.add_ops() = std::move(queue_.front());
      queue_.pop_front();
    }
  }

  void Cancel() ABSL_LOCKS_EXCLUDED(mu_) {
    std::shared_ptr<grpc::ClientContext> context;
    {
      absl::MutexLock lock(&mu_);
      context = context_;  // null once ended
    }
    if (context != nullptr) context->TryCancel();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    bool release = false;
    bool write = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      // !ok: the stream is broken; the read fails too (OnReadDone ends it)
      // and OnDone fails what is pending.
      if (!ok || ended_ || queue_.empty()) {
        release = ended_ && TakeHoldLocked();
      } else {
        writing_ = write = true;
        TakeMessageLocked();  // what queued while the last write was out
      }
    }
    if (release) RemoveHold();
    if (write) StartWrite(&out_);
  }

  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    if (!ok) {
      // The stream ended (broken, finished by the server, or cancelled): no
      // new operation goes on it, and OnDone follows once the hold is gone.
      bool release;
      {
        absl::MutexLock lock(&mu_);
        ended_ = true;
        release = !writing_ && TakeHoldLocked();
      }
      if (release) RemoveHold();
      return;
    }
    {
      WriteCork cork;
      for (v1::BatchResult& result : *in_.mutable_results()) {
        BatchCallback done;
        {
          absl::MutexLock lock(&mu_);
          auto it = pending_.find(result.id());
          if (it == pending_.end()) continue;  // expired by the sweep
          done = std::move(it->second.done);
          pending_.erase(it);
        }
        done(absl::OkStatus(), &result);
      }
    }
    in_.Clear();
    StartRead(&in_);
  }

  void OnDone(const grpc::Status& status) override ABSL_LOCKS_EXCLUDED(mu_) {
    absl::flat_hash_map<uint64_t, Pending> pending;
    {
      absl::MutexLock lock(&mu_);
      ended_ = true;
      pending.swap(pending_);
    }
    absl::Status failed;
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      // The node has no KV.Batch: nothing was applied; the attempts go unary.
      owner_->MarkUnsupported();
      failed = absl::UnimplementedError(
          absl::StrCat(owner_->address_, " serves no KV.Batch: ", status.error_message()));
    } else {
      // Sent or not, an operation may have been applied: retried with the
      // same session (kUnavailable without a detail, as a broken connection).
      failed = absl::UnavailableError(absl::StrCat("the KV.Batch stream to ", owner_->address_,
                                                   " ended (", FromGrpcStatus(status).ToString(),
                                                   "); the operation's outcome is unknown"));
      if (!pending.empty()) owner_->CountBroken(pending.size());
    }
    for (auto& [id, p] : pending) p.done(failed, nullptr);
    // gRPC is done with the context; ~Core waits for it to go.
    std::shared_ptr<grpc::ClientContext> context;
    {
      absl::MutexLock lock(&mu_);
      context.swap(context_);
    }
    context.reset();
    std::shared_ptr<Stream> self = std::move(self_);  // may delete this on return
  }

  bool ended() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return ended_;
  }

 private:
  struct Pending {
    absl::Time deadline;
    BatchCallback done;
  };

  // True once (the caller then calls RemoveHold with mu_ released): when
  // ended_ and no write is outstanding, so that none will start.
  bool TakeHoldLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (hold_released_) return false;
    hold_released_ = true;
    return true;
  }

  void ScheduleSweep() {
    std::weak_ptr<Stream> weak = weak_from_this();
    owner_->timer_->Schedule(absl::Now() + kSweepInterval, [weak](bool ok) {
      if (!ok) return;  // the client shuts down: it cancels the stream
      if (std::shared_ptr<Stream> s = weak.lock()) s->Sweep();
    });
  }

  // Fails attempts the node has not answered by their deadline (plus a
  // grace for the server's own DEADLINE_EXCEEDED): a hung node must not
  // hold them forever. Their late results are ignored.
  void Sweep() ABSL_LOCKS_EXCLUDED(mu_) {
    const absl::Time now = absl::Now();
    std::vector<BatchCallback> expired;
    {
      absl::MutexLock lock(&mu_);
      if (ended_) return;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->second.deadline + kAnswerGrace <= now) {
          expired.push_back(std::move(it->second.done));
          pending_.erase(it++);
        } else {
          ++it;
        }
      }
    }
    for (BatchCallback& done : expired) {
      done(absl::DeadlineExceededError(absl::StrCat("no answer from ", owner_->address_,
                                                    " on the KV.Batch stream in time")),
           nullptr);
    }
    ScheduleSweep();
  }

  BatchChannel* const owner_;
  const std::string token_;
  std::shared_ptr<grpc::ClientContext> context_ ABSL_GUARDED_BY(mu_);  // until OnDone
  std::shared_ptr<Stream> self_;  // gRPC's reference, until OnDone
  v1::BatchResponse in_;          // one read at a time

  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Pending> pending_ ABSL_GUARDED_BY(mu_);
  std::deque<v1::BatchOp> queue_ ABSL_GUARDED_BY(mu_);  // queued, not yet written
  // The message being written: touched only by the one writer (writing_).
  v1::BatchRequest out_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_released_ ABSL_GUARDED_BY(mu_) = false;
};

void WriteCork::Flush() {
  std::vector<std::shared_ptr<BatchChannel::Stream>> corked;
  corked.swap(corked_);
  for (const std::shared_ptr<BatchChannel::Stream>& stream : corked) stream->WriteCorked();
}

void FlushCorkedBatchWrites() {
  if (WriteCork* cork = WriteCork::Current()) cork->Flush();
}

BatchChannel::BatchChannel(std::string address, v1::KV::Stub* stub, TimerQueue* timer,
                           std::function<std::shared_ptr<grpc::ClientContext>()> new_context,
                           size_t max_ops, size_t max_bytes, std::function<std::string()> token)
    : max_ops_(std::max<size_t>(1, max_ops)),
      max_bytes_(max_bytes),
      address_(std::move(address)),
      stub_(stub),
      timer_(timer),
      new_context_(std::move(new_context)),
      token_(std::move(token)) {}

BatchChannel::~BatchChannel() = default;

bool BatchChannel::Submit(v1::BatchOp op, absl::Time deadline, BatchCallback done) {
  for (;;) {
    std::shared_ptr<Stream> stream;
    std::shared_ptr<Stream> retired;
    bool start = false;
    const std::string token = token_ ? token_() : "";  // outside mu_: it may start a refresh
    {
      absl::MutexLock lock(&mu_);
      if (unsupported_ || shut_down_) return false;
      op.set_id(next_id_++);
      if (current_ != nullptr && !current_->ended() && current_->token() != token) {
        // A new token (renewed, or the first one): a new stream carries it.
        // The old one is cancelled; its attempts fail as broken and are
        // retried (writes with their session: applied at most once).
        retired = std::move(current_);
      }
      if (current_ == nullptr || current_->ended()) {
        current_ = std::make_shared<Stream>(this, new_context_(), token);
        current_->Bind();
        ++streams_opened_;
        start = true;
      }
      stream = current_;
    }
    if (retired != nullptr) retired->Cancel();
    if (start) stream->Start();
    if (stream->Enqueue(op, deadline, done)) return true;
    // It ended in between: open another.
  }
}

void BatchChannel::Shutdown() {
  std::shared_ptr<Stream> stream;
  {
    absl::MutexLock lock(&mu_);
    shut_down_ = true;
    stream = current_;
  }
  if (stream != nullptr) stream->Cancel();
}

void BatchChannel::MarkUnsupported() {
  absl::MutexLock lock(&mu_);
  unsupported_ = true;
}

void BatchChannel::CountBroken(size_t ops) {
  absl::MutexLock lock(&mu_);
  ops_failed_by_breaks_ += ops;
}

uint64_t BatchChannel::ops_failed_by_breaks() const {
  absl::MutexLock lock(&mu_);
  return ops_failed_by_breaks_;
}

uint64_t BatchChannel::streams_opened() const {
  absl::MutexLock lock(&mu_);
  return streams_opened_;
}

}  // namespace tessera::client
