// KV.Watch: one WatchStream reactor per stream, over the node's WatchHub
// (watch_hub.h has the flow; kv.proto "Watch" the guarantees).
//
// Ownership: gRPC holds the reactor from Watch() until OnDone(); a flush
// queued on the worker pool holds a reference too (refs_), so whichever
// drops the last one deletes it. The hub reaches the stream only through
// its Sink (a shared_ptr the hub may hold after the stream is gone), which
// forwards Wake() while the reactor lives.
//
// Threads: OnReadDone / OnWriteDone / OnCancel / OnDone on gRPC's callback
// threads; Wake() on whichever thread queued an event (the raft loop, the
// hub's threads): it only queues a flush on the worker pool, so that the
// raft loop never encodes responses. mu_ guards the stream's state; no
// gRPC Start*/Finish call is made with it held.
//
// A watch "from now" (no start_revision) starts after a read barrier on its
// shard (Node::FollowerReadBarrier: on a follower, through its leader):
// "now" is then at least every revision acknowledged before the create was
// sent, also on a follower that lags or on a leader that was deposed
// without knowing it (else it would replay writes its client has already
// seen). Requests reach the hub in the order they arrived: those
// behind a create that waits for its barrier wait in requests_ (order_mu_,
// taken before the hub's lock and never under mu_).
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "proto/grpc_status.h"
#include "proto/status_macros.h"
#include "server/api/kv_service.h"

namespace tessera::server {

namespace {

// Events per response (whole revisions; one larger revision goes whole).
constexpr uint64_t kResponseBytes = 256 << 10;
// A follower that has not heard from a leader for this long ends its
// watchers (they would wait for events that never come).
constexpr absl::Duration kMaxLeaderSilence = absl::Seconds(5);
// Responses queued for a stream beyond which it stops reading requests
// (each create answers with one): a client that creates without reading
// is pushed back by flow control.
constexpr size_t kMaxBacklog = 1024;
// How long a create from now waits for its shard's read barrier.
constexpr absl::Duration kStartBarrierTimeout = absl::Seconds(5);

}  // namespace

class KvService::WatchSourceImpl final : public WatchSource {
 public:
  explicit WatchSourceImpl(KvService* service) : service_(service) {}

  absl::StatusOr<HistoryPage> ReadHistory(ShardId shard, uint64_t from_revision,
                                          uint64_t max_bytes) const override {
    return service_->backend_->ReadHistory(shard, from_revision, max_bytes);
  }
  absl::StatusOr<sm::ShardRange> Range(ShardId shard) const override {
    return service_->backend_->Range(shard);
  }
  std::optional<uint64_t> AppliedIndex(ShardId shard) const override {
    std::optional<ShardStatus> s = service_->backend_->StatusOf(shard);
    if (!s.has_value() || s->role == "stopped") return std::nullopt;
    return s->applied_index;
  }
  absl::Status CheckWatch(ShardId shard, uint64_t range_version) const override {
    {
      absl::MutexLock lock(&service_->drain_mu_);
      if (service_->draining_) {
        return NodeUnavailableError(
            absl::StrCat("node ", service_->options_.self, " is draining; watch elsewhere"),
            v1::ErrorDetail::NotLeader::REASON_DRAINING);
      }
    }
    v1::RequestHeader header;
    header.set_shard(static_cast<uint32_t>(shard));
    header.set_range_version(range_version);
    TESSERA_RETURN_IF_ERROR(service_->CheckRoute(header, {}).status());
    std::optional<ShardStatus> s = service_->backend_->StatusOf(shard);
    if (!s.has_value() || s->role == "stopped") {
      return absl::UnavailableError(
          absl::StrCat("shard ", shard, " has no running replica on this node; watch elsewhere"));
    }
    // A replica cut off from its leader gets no new events, and could not
    // tell its watchers: they go where the writes are.
    if (s->role != "leader" &&
        (s->leader == 0 || absl::Now() - s->last_leader_contact > kMaxLeaderSilence)) {
      return absl::UnavailableError(absl::StrCat("the replica of shard ", shard, " on node ",
                                                 service_->options_.self,
                                                 " lost contact with its leader; watch elsewhere"));
    }
    return absl::OkStatus();
  }

 private:
  KvService* const service_;
};

void KvService::StartWatchHub() {
  watch_source_ = std::make_unique<WatchSourceImpl>(this);
  watch_hub_ = std::make_unique<WatchHub>(options_.watch, watch_source_.get());
}

absl::StatusOr<std::pair<ShardId, uint64_t>> KvService::RouteWatch(const v1::WatchCreate& create) {
  if (create.key().size() > options_.max_key_bytes) {
    return InvalidFieldError("create.key", absl::StrCat("key of ", create.key().size(),
                                                        " bytes exceeds ", options_.max_key_bytes));
  }
  if (create.range_end().size() > options_.max_key_bytes) {
    return InvalidFieldError("create.range_end", "range_end is longer than the key limit");
  }
  if (create.prefix() && !create.range_end().empty()) {
    return InvalidFieldError("create.prefix", "prefix cannot be combined with range_end");
  }
  const bool exact = !create.prefix() && create.range_end().empty();
  if (exact && create.key().empty()) {
    return InvalidFieldError("create.key", "empty key (watch a prefix or a range instead)");
  }
  if (!create.range_end().empty() && create.range_end() != std::string(1, '\0') &&
      create.range_end() <= create.key()) {
    return InvalidFieldError("create.range_end", "range_end is not after key");
  }
  std::vector<absl::string_view> keys;
  if (exact) keys.push_back(create.key());
  TESSERA_ASSIGN_OR_RETURN(ShardId shard, CheckRoute(create.header(), keys));
  std::shared_ptr<const ClusterMap> map = Map();
  if (map == nullptr) return absl::UnavailableError("no cluster map");
  {
    absl::MutexLock lock(&drain_mu_);
    if (draining_) {
      return NodeUnavailableError(
          absl::StrCat("node ", options_.self, " is draining; watch elsewhere"),
          v1::ErrorDetail::NotLeader::REASON_DRAINING);
    }
  }
  return std::make_pair(shard, map->shards()[shard].range_version);
}

class KvService::WatchStream final
    : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  WatchStream(KvService* service, Caller caller)
      : service_(service), caller_(std::move(caller)), sink_(std::make_shared<Sink>(this)) {
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    if (!ok) {
      // The client half-closed or the stream broke: end it.
      FinishOnce(grpc::Status::OK);
      return;
    }
    v1::WatchRequest request;
    const size_t bytes = in_.Length();
    if (!grpc::SerializationTraits<v1::WatchRequest>::Deserialize(&in_, &request).ok()) {
      FinishOnce(ToGrpcStatus(absl::InvalidArgumentError(
          absl::StrCat("a Watch message (", bytes,
                       " bytes) is not a valid tessera.v1.WatchRequest; the stream ends"))));
      return;
    }
    auto queued = std::make_shared<Queued>();
    switch (request.request_case()) {
      case v1::WatchRequest::kCreate: {
        const v1::WatchCreate& create = request.create();
        queued->shard = create.header().shard();
        // Read permission on every key the watch can report, checked once
        // when it is created.
        absl::Status allowed =
            create.prefix()
                ? caller_.Check(security::Access::kRead, create.key(), PrefixEnd(create.key()))
                : caller_.Check(security::Access::kRead, create.key(), create.range_end());
        absl::StatusOr<std::pair<ShardId, uint64_t>> route =
            allowed.ok() ? service_->RouteWatch(create)
                         : absl::StatusOr<std::pair<ShardId, uint64_t>>(allowed);
        if (route.ok()) {
          queued->shard = route->first;
          queued->range_version = route->second;
          queued->ready = create.start_revision() != 0;
        } else {
          queued->refused = route.status();
          if (absl::IsUnavailable(queued->refused)) {
            service_->AddLeaderHint(queued->refused, queued->shard);
          }
        }
        break;
      }
      case v1::WatchRequest::kCancel:
        break;
      default:
        FinishOnce(ToGrpcStatus(absl::InvalidArgumentError(
            "a WatchRequest without create or cancel; the stream ends")));
        return;
    }
    queued->request = std::move(request);
    {
      absl::MutexLock lock(&order_mu_);
      requests_.push_back(queued);
    }
    if (queued->ready) {
      PassQueued();
    } else {
      StartBarrier(queued);
    }
    ReadMoreOrPause();
  }

  void OnWriteDone(bool ok) override ABSL_LOCKS_EXCLUDED(mu_) {
    if (!ok) {
      absl::MutexLock lock(&mu_);
      broken_ = true;  // OnCancel / OnDone follow
    }
    if (EndWrite() || !ok) return;
    Flush();
    ResumeReading();
  }

  void OnCancel() override { FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled")); }

  void OnDone() override {
    {
      // After this, PassQueued() hands the hub nothing more of this stream.
      absl::MutexLock lock(&order_mu_);
      done_ = true;
      requests_.clear();
    }
    sink_->Detach();
    service_->watch_hub_->RemoveStream(sink_.get());
    Unref();
  }

 private:
  // A request on its way to the hub, in arrival order.
  struct Queued {
    v1::WatchRequest request;
    ShardId shard = 0;
    uint64_t range_version = 0;
    absl::Status refused;  // a create refused (then ready at once)
    bool ready = true;     // false while a create from now waits for its barrier
  };

  // Asks for the read barrier `create` starts after; the stream lives on
  // (refs_) until the answer is handed to the hub.
  void StartBarrier(const std::shared_ptr<Queued>& create) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      ++refs_;
    }
    // The callback runs on the raft loop: it only hops to a worker.
    service_->backend_->FollowerReadBarrier(
        create->shard, absl::Now() + kStartBarrierTimeout, [this, create](absl::Status barrier) {
          service_->Run(Hop::kWorker, [this, create, barrier = std::move(barrier)]() mutable {
            {
              absl::MutexLock lock(&order_mu_);
              if (!barrier.ok()) {
                create->refused =
                    absl::IsUnavailable(barrier)
                        ? std::move(barrier)
                        : absl::UnavailableError(absl::StrCat(
                              "cannot confirm the current revision of shard ", create->shard,
                              " to start the watch from: ", barrier.message(), "; retry"));
                service_->AddLeaderHint(create->refused, create->shard);
              }
              create->ready = true;
            }
            PassQueued();
            Unref();
          });
        });
  }

  // Hands the hub the requests at the front of requests_ that are ready.
  void PassQueued() ABSL_LOCKS_EXCLUDED(order_mu_) {
    WatchHub* hub = service_->watch_hub_.get();
    bool passed = false;
    {
      absl::MutexLock lock(&order_mu_);
      while (!done_ && !requests_.empty() && requests_.front()->ready) {
        const Queued& q = *requests_.front();
        if (q.request.has_create()) {
          hub->Create(sink_, q.request.create(), q.shard, q.range_version, q.refused);
        } else {
          hub->Cancel(sink_.get(), q.request.cancel().watch_id());
        }
        requests_.pop_front();
        passed = true;
      }
    }
    // Reading may have paused on a full queue.
    if (passed) ResumeReading();
  }

  // What the hub holds: forwards Wake() while the stream lives.
  class Sink final : public WatchStreamSink {
   public:
    explicit Sink(WatchStream* stream) : stream_(stream) {}
    void Wake() override ABSL_LOCKS_EXCLUDED(mu_) {
      absl::MutexLock lock(&mu_);
      if (stream_ != nullptr) stream_->ScheduleFlush();
    }
    void Detach() ABSL_LOCKS_EXCLUDED(mu_) {
      absl::MutexLock lock(&mu_);
      stream_ = nullptr;
    }

   private:
    absl::Mutex mu_;
    WatchStream* stream_ ABSL_GUARDED_BY(mu_);
  };

  void Unref() {
    bool last;
    {
      absl::MutexLock lock(&mu_);
      last = --refs_ == 0;
    }
    if (last) delete this;
  }

  // Queues a flush on the worker pool unless one is queued or a write is
  // in progress (its OnWriteDone flushes).
  void ScheduleFlush() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_ || broken_) return;
      if (writing_ || flush_queued_) {
        flush_wanted_ = true;
        return;
      }
      flush_queued_ = true;
      ++refs_;
    }
    service_->Run(Hop::kWorker, [this] {
      {
        absl::MutexLock lock(&mu_);
        flush_queued_ = false;
      }
      Flush();
      Unref();
    });
  }

  // Writes the next response if none is being written.
  void Flush() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_ || broken_) return;
      writing_ = true;  // reserved while the response is built
      flush_wanted_ = false;
    }
    std::optional<v1::WatchResponse> response =
        service_->watch_hub_->Take(sink_.get(), kResponseBytes);
    if (!response.has_value()) {
      bool again;
      {
        absl::MutexLock lock(&mu_);
        again = flush_wanted_;
      }
      if (!EndWrite() && again) ScheduleFlush();
      return;
    }
    grpc::ByteBuffer out;
    bool own = false;
    if (!grpc::SerializationTraits<v1::WatchResponse>::Serialize(*response, &out, &own).ok()) {
      FinishOnce(grpc::Status(grpc::StatusCode::INTERNAL, "cannot serialize a WatchResponse"));
      EndWrite();
      return;
    }
    out_ = std::move(out);
    StartWrite(&out_);
  }

  // Responses and requests queued for the stream (reading pauses at
  // kMaxBacklog).
  size_t Backlog() ABSL_LOCKS_EXCLUDED(order_mu_) {
    size_t queued;
    {
      absl::MutexLock lock(&order_mu_);
      queued = requests_.size();
    }
    return service_->watch_hub_->Backlog(sink_.get()) + queued;
  }

  // After a read is done: reads the next request, or pauses.
  void ReadMoreOrPause() ABSL_LOCKS_EXCLUDED(mu_, order_mu_) {
    const bool pause = Backlog() >= kMaxBacklog;
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      reading_ = !pause;
    }
    if (!pause) {
      StartRead(&in_);
    } else {
      ResumeReading();  // the backlog may have fallen meanwhile
    }
  }

  // Whoever lowers the backlog (a write done, requests handed to the hub)
  // calls this: reads again unless a read is out or the backlog is full.
  // The second round covers a backlog that fell while this one paused.
  void ResumeReading() ABSL_LOCKS_EXCLUDED(mu_, order_mu_) {
    for (int round = 0; round < 2; ++round) {
      {
        absl::MutexLock lock(&mu_);
        if (reading_ || finished_) return;
        reading_ = true;  // claimed: nobody else starts a read
      }
      if (Backlog() < kMaxBacklog) {
        StartRead(&in_);
        return;
      }
      {
        absl::MutexLock lock(&mu_);
        reading_ = false;
      }
      if (Backlog() >= kMaxBacklog) return;
    }
  }

  // Finishes the stream once; while a write is out, after it.
  void FinishOnce(const grpc::Status& status) ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;
      finished_ = true;
      if (writing_) {
        deferred_finish_ = status;
        return;
      }
    }
    Finish(status);
  }

  // Ends the write in progress (or its reservation); finishes the stream
  // if that waited for it, and then returns true.
  bool EndWrite() ABSL_LOCKS_EXCLUDED(mu_) {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      finish.swap(deferred_finish_);
    }
    if (finish.has_value()) Finish(*finish);
    return finish.has_value();
  }

  KvService* const service_;
  const Caller caller_;  // identified when the stream opened
  const std::shared_ptr<Sink> sink_;
  grpc::ByteBuffer in_;
  grpc::ByteBuffer out_;
  absl::Mutex mu_;
  int refs_ ABSL_GUARDED_BY(mu_) = 1;  // gRPC's, until OnDone
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_queued_ ABSL_GUARDED_BY(mu_) = false;
  bool flush_wanted_ ABSL_GUARDED_BY(mu_) = false;
  bool reading_ ABSL_GUARDED_BY(mu_) = true;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> deferred_finish_ ABSL_GUARDED_BY(mu_);
  absl::Mutex order_mu_;
  std::deque<std::shared_ptr<Queued>> requests_ ABSL_GUARDED_BY(order_mu_);
  bool done_ ABSL_GUARDED_BY(order_mu_) = false;  // OnDone ran
};

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* KvService::Watch(
    grpc::CallbackServerContext* context) {
  absl::StatusOr<Caller> caller = Caller::Identify(options_.auth, *context);
  if (!caller.ok()) return new RefusedStream(ToGrpcStatus(caller.status()));
  return new WatchStream(this, *std::move(caller));
}

}  // namespace tessera::server
