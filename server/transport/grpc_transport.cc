#include "server/transport/grpc_transport.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/internal/raw_logging.h"
#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tessera::server {

namespace {
// SnapshotChunk.format: chunks of whole records (raftstore/snapshot_stream.h).
constexpr uint32_t kSnapshotChunkFormat = 2;
}  // namespace

// ---- Sending side ----

namespace {
// The largest messages of a batch, for a log line: shard, type, entries,
// index, term and bytes of each.
std::string DescribeLargest(const peerpb::MessageBatch& batch) {
  std::vector<std::pair<size_t, int>> sizes;
  for (int i = 0; i < batch.messages_size(); ++i) {
    sizes.emplace_back(batch.messages(i).ByteSizeLong(), i);
  }
  std::sort(sizes.rbegin(), sizes.rend());
  std::string out = absl::StrCat(batch.messages_size(), " messages; largest:");
  for (size_t k = 0; k < sizes.size() && k < 3; ++k) {
    const peerpb::ShardMessage& m = batch.messages(sizes[k].second);
    absl::StrAppend(&out, " [shard ", m.shard(), " ", raftpb::MessageType_Name(m.message().type()),
                    " entries ", m.message().entries_size(), " index ", m.message().index(),
                    " term ", m.message().term(), " context ", m.message().context().size(),
                    " bytes ", sizes[k].first, "]");
  }
  return out;
}
}  // namespace

// The queues, threads and stub for one destination node. Thread-safe.
class GrpcTransport::PeerSender {
  // One Send's messages; the sender takes them from `next` on (a batch
  // may end inside one Send's messages, which can add up past any bound).
  struct Queued {
    std::vector<ShardMessage> messages;
    std::vector<uint64_t> sizes;  // each message's, as measured when queued
    size_t next = 0;
    uint64_t bytes = 0;  // of messages[next..]
  };

 public:
  PeerSender(const GrpcTransportOptions& options, NodeId to, std::string address)
      : options_(options), to_(to), address_(std::move(address)) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
                static_cast<int>(absl::ToInt64Milliseconds(options.min_backoff)));
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS,
                static_cast<int>(absl::ToInt64Milliseconds(options.min_backoff)));
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
                static_cast<int>(absl::ToInt64Milliseconds(options.max_backoff)));
    // Detect a peer that vanished without closing the connection.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    // Our own connection, not one shared with other channels of the process.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetMaxSendMessageSize(-1);
    const security::TlsCredentials insecure = security::TlsCredentials::Insecure();
    const security::TlsCredentials& credentials =
        options.credentials != nullptr ? *options.credentials : insecure;
    credentials.ConfigureChannelTo(to, &args);
    channel_ = grpc::CreateCustomChannel(address_, credentials.channel(), args);
    stub_ = peerpb::Peer::NewStub(channel_);
    stream_thread_ = std::thread([this] { RunStream(); });
    snapshot_thread_ = std::thread([this] { RunSnapshots(); });
  }

  ~PeerSender() { Stop(); }

  void Enqueue(std::vector<ShardMessage> messages) ABSL_LOCKS_EXCLUDED(mu_) {
    Queued regular;
    std::vector<ShardMessage> snapshots;
    size_t oversized = 0;
    for (ShardMessage& m : messages) {
      if (m.message.type() == raftpb::MSG_SNAP) {
        snapshots.push_back(std::move(m));
        continue;
      }
      const size_t size = m.message.ByteSizeLong() + 16;
      if (size > options_.max_message_bytes) {
        // Lost like any message (raft sends it again, e.g. after the
        // follower rejects the next append for the gap).
        static std::atomic<int64_t> last_log_seconds{0};
        const int64_t now = absl::ToUnixSeconds(absl::Now());
        if (now - last_log_seconds.exchange(now) >= 10) {
          ABSL_RAW_LOG(ERROR,
                       "peer message for node %llu dropped: %zu bytes over the limit of %llu",
                       static_cast<unsigned long long>(to_), size,
                       static_cast<unsigned long long>(options_.max_message_bytes));
        }
        ++oversized;
        continue;
      }
      regular.bytes += size;
      regular.sizes.push_back(size);
      regular.messages.push_back(std::move(m));
    }
    std::vector<ShardMessage> dropped;  // snapshots that will not be sent
    {
      absl::MutexLock lock(&mu_);
      stats_.oversized_messages += oversized;
      stats_.dropped_messages += oversized;
      EnqueueLocked(regular, snapshots, &dropped);
    }
    for (ShardMessage& snap : dropped) {
      DropSnapshot(snap);
      if (options_.on_snapshot_sent) options_.on_snapshot_sent(to_, snap.shard, false);
    }
  }

  void EnqueueLocked(Queued& regular, std::vector<ShardMessage>& snapshots,
                     std::vector<ShardMessage>* dropped) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (stopping_) {
      stats_.dropped_messages += regular.messages.size() + snapshots.size();
      for (ShardMessage& snap : snapshots) DropSnapshot(snap);
      return;
    }
    if (!regular.messages.empty()) {
      queued_bytes_ += regular.bytes;
      queue_.push_back(std::move(regular));
      while (queue_.size() > 1 && (queue_.size() > options_.max_queued_batches ||
                                   queued_bytes_ > options_.max_queued_bytes)) {
        DropOldestLocked();
      }
    }
    for (ShardMessage& snap : snapshots) {
      snapshots_.push_back(std::move(snap));
      while (snapshots_.size() > std::max<size_t>(options_.max_queued_snapshots, 1)) {
        ++stats_.dropped_messages;
        ++stats_.snapshots_failed;
        dropped->push_back(std::move(snapshots_.front()));
        snapshots_.pop_front();
      }
    }
  }

  void Stop() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      absl::MutexLock lock(&mu_);
      if (!stopping_) {
        stopping_ = true;
        if (stream_context_ != nullptr) stream_context_->TryCancel();
        if (snapshot_context_ != nullptr) snapshot_context_->TryCancel();
        while (!queue_.empty()) DropOldestLocked();
        stats_.dropped_messages += snapshots_.size();
        for (ShardMessage& snap : snapshots_) DropSnapshot(snap);
        snapshots_.clear();
      }
    }
    if (stream_thread_.joinable()) stream_thread_.join();
    if (snapshot_thread_.joinable()) snapshot_thread_.join();
  }

  PeerStats Stats() const ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    return stats_;
  }

 private:
  // Releases the export a MSG_SNAP that will not be sent pins (no I/O: a
  // RocksDB snapshot released).
  void DropSnapshot(const ShardMessage& snap) {
    if (options_.snapshots != nullptr)
      options_.snapshots->DropExport(snap.message.snapshot().data());
  }

  void DropOldestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Queued& q = queue_.front();
    stats_.dropped_messages += q.messages.size() - q.next;
    queued_bytes_ -= q.bytes;
    queue_.pop_front();
  }

  bool HasStreamWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  bool HasSnapshotWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !snapshots_.empty();
  }
  bool Stopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; }

  // Tells on_refused when the peer refused us (as opposed to a broken or
  // unreachable connection, which backoff handles).
  void ReportRefusal(const grpc::Status& status) {
    const grpc::StatusCode code = status.error_code();
    if (!options_.on_refused || (code != grpc::StatusCode::FAILED_PRECONDITION &&
                                 code != grpc::StatusCode::PERMISSION_DENIED &&
                                 code != grpc::StatusCode::UNAUTHENTICATED)) {
      return;
    }
    options_.on_refused(to_,
                        absl::Status(static_cast<absl::StatusCode>(code), status.error_message()));
  }

  // Waits `d` unless stopping first; returns false when stopping.
  bool BackOff(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &PeerSender::Stopping), d);
    return !stopping_;
  }

  // The stream thread: drains queue_ into one Peer.Stream call, reopening it
  // (after a backoff) when it breaks.
  void RunStream() ABSL_LOCKS_EXCLUDED(mu_) {
    pthread_setname_np(pthread_self(), "peer-send");
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientWriter<peerpb::MessageBatch>> writer;
    peerpb::StreamAck ack;
    absl::Duration backoff = options_.min_backoff;
    while (true) {
      // Messages in order, up to max_batch_bytes (at least one).
      std::vector<ShardMessage> work;
      uint64_t accounted = 0;  // what Enqueue measured
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &PeerSender::HasStreamWork));
        if (stopping_) break;
        while (!queue_.empty()) {
          Queued& q = queue_.front();
          while (q.next < q.messages.size() &&
                 (work.empty() || accounted + q.sizes[q.next] <= options_.max_batch_bytes)) {
            accounted += q.sizes[q.next];
            q.bytes -= q.sizes[q.next];
            queued_bytes_ -= q.sizes[q.next];
            work.push_back(std::move(q.messages[q.next++]));
          }
          if (q.next < q.messages.size()) break;  // the batch is full
          queue_.pop_front();
        }
      }
      const size_t count = work.size();
      peerpb::MessageBatch batch;
      batch.set_from_node(options_.self);
      batch.set_to_node(to_);
      batch.set_incarnation(options_.incarnation);
      for (ShardMessage& m : work) {
        peerpb::ShardMessage* out = batch.add_messages();
        out->set_shard(m.shard);
        *out->mutable_message() = std::move(m.message);
      }
      // Each message was measured when queued, and a batch holds at most
      // max_batch_bytes of them or a single one under max_message_bytes:
      // this holds unless a message changed after it was queued. Checked
      // anyway, since gRPC would abort on it.
      if (const size_t size = batch.ByteSizeLong(); size > options_.max_message_bytes) {
        ABSL_RAW_LOG(
            ERROR, "peer batch for node %llu dropped: %zu bytes (%llu when queued) over %llu: %s",
            static_cast<unsigned long long>(to_), size, static_cast<unsigned long long>(accounted),
            static_cast<unsigned long long>(options_.max_message_bytes),
            DescribeLargest(batch).c_str());
        {
          absl::MutexLock lock(&mu_);
          stats_.oversized_messages += count;
          stats_.dropped_messages += count;
        }
        if (options_.on_unreachable) options_.on_unreachable(to_);  // raft probes again
        continue;
      }
      if (writer == nullptr) {
        context = std::make_unique<grpc::ClientContext>();
        {
          absl::MutexLock lock(&mu_);
          if (stopping_) {
            stats_.dropped_messages += count;
            context.reset();
            break;
          }
          stream_context_ = context.get();
        }
        writer = stub_->Stream(context.get(), &ack);
      }
      if (writer->Write(batch)) {
        absl::MutexLock lock(&mu_);
        ++stats_.sent_batches;
        backoff = options_.min_backoff;
        continue;
      }
      // The stream broke (or never opened): drop this batch, back off, reopen.
      ReportRefusal(writer->Finish());
      {
        absl::MutexLock lock(&mu_);
        stream_context_ = nullptr;
        ++stats_.stream_failures;
        stats_.dropped_messages += count;
      }
      if (options_.on_unreachable) options_.on_unreachable(to_);
      writer.reset();
      context.reset();
      if (!BackOff(backoff)) break;
      backoff = std::min(backoff * 2, options_.max_backoff);
    }
    if (writer != nullptr) {
      context->TryCancel();
      writer->Finish().IgnoreError();  // cancelled by us
      absl::MutexLock lock(&mu_);
      stream_context_ = nullptr;
    }
  }

  // The snapshot thread: one Peer.Snapshot call per MSG_SNAP.
  void RunSnapshots() ABSL_LOCKS_EXCLUDED(mu_) {
    pthread_setname_np(pthread_self(), "peer-snapshot");
    absl::Duration backoff = options_.min_backoff;
    while (true) {
      ShardMessage snap;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &PeerSender::HasSnapshotWork));
        if (stopping_) break;
        snap = std::move(snapshots_.front());
        snapshots_.pop_front();
      }
      const ShardId shard = snap.shard;
      bool ok = SendSnapshot(std::move(snap));
      {
        absl::MutexLock lock(&mu_);
        if (ok) {
          ++stats_.snapshots_sent;
        } else {
          ++stats_.snapshots_failed;
        }
      }
      if (options_.on_snapshot_sent) options_.on_snapshot_sent(to_, shard, ok);
      if (ok) {
        backoff = options_.min_backoff;
      } else {
        if (!BackOff(backoff)) break;
        backoff = std::min(backoff * 2, options_.max_backoff);
      }
    }
  }

  // Streams one snapshot: the MSG_SNAP's metadata first, then its records
  // read from the pinned export, one chunk of at most about
  // snapshot_chunk_bytes per Write (a blocking Write returns once gRPC's flow
  // control takes the chunk: one chunk in flight), then a last chunk with the
  // record count. True once the receiver acknowledged it.
  bool SendSnapshot(ShardMessage snap) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::StatusOr<std::unique_ptr<SnapshotChunker>> chunker =
        SnapshotChunker::Open(options_.snapshots, snap.message.mutable_snapshot());
    if (!chunker.ok()) {
      ABSL_RAW_LOG(WARNING, "snapshot of shard %llu for node %llu not sent: %s",
                   static_cast<unsigned long long>(snap.shard),
                   static_cast<unsigned long long>(to_), chunker.status().ToString().c_str());
      return false;
    }
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.snapshot_timeout));
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return false;
      snapshot_context_ = &context;
    }
    peerpb::SnapshotAck ack;
    std::unique_ptr<grpc::ClientWriter<peerpb::SnapshotChunk>> writer =
        stub_->Snapshot(&context, &ack);
    const uint64_t chunk_bytes = std::max<uint64_t>(options_.snapshot_chunk_bytes, 1);

    peerpb::SnapshotChunk chunk;
    chunk.set_from_node(options_.self);
    chunk.set_to_node(to_);
    chunk.set_shard(snap.shard);
    chunk.set_incarnation(options_.incarnation);
    chunk.set_format(kSnapshotChunkFormat);
    *chunk.mutable_message() = std::move(snap.message);
    bool ok = writer->Write(chunk);
    chunk.clear_message();
    chunk.clear_format();
    uint64_t seq = 1;
    std::string data;
    bool local_error = false;
    while (ok) {
      absl::StatusOr<bool> more = (*chunker)->Next(chunk_bytes, &data);
      if (!more.ok()) {
        ABSL_RAW_LOG(WARNING, "snapshot of shard %llu for node %llu: %s",
                     static_cast<unsigned long long>(snap.shard),
                     static_cast<unsigned long long>(to_), more.status().ToString().c_str());
        local_error = true;
        break;
      }
      if (!*more) break;
      chunk.set_seq(seq++);
      chunk.set_data(std::move(data));
      ok = writer->Write(chunk);
      data = std::move(*chunk.mutable_data());  // reuse the buffer
    }
    if (ok && !local_error) {
      chunk.clear_data();
      chunk.set_seq(seq);
      chunk.set_last(true);
      chunk.set_records((*chunker)->records());
      ok = writer->Write(chunk) && writer->WritesDone();
    }
    if (local_error) context.TryCancel();  // the receiver drops what it staged
    grpc::Status status = writer->Finish();
    ReportRefusal(status);
    {
      absl::MutexLock lock(&mu_);
      snapshot_context_ = nullptr;
    }
    return ok && !local_error && status.ok();
  }

  const GrpcTransportOptions& options_;
  const NodeId to_;
  const std::string address_;
  // Constant after construction.
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<peerpb::Peer::Stub> stub_;

  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<ShardMessage> snapshots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The contexts of the RPCs in flight, so Stop() can cancel them.
  grpc::ClientContext* stream_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  grpc::ClientContext* snapshot_context_ ABSL_GUARDED_BY(mu_) = nullptr;
  PeerStats stats_ ABSL_GUARDED_BY(mu_);

  std::thread stream_thread_;
  std::thread snapshot_thread_;
};

GrpcTransport::GrpcTransport(GrpcTransportOptions options) : options_(std::move(options)) {
  for (const auto& [id, address] : options_.peers) AddPeer(id, address);
}

void GrpcTransport::AddPeer(NodeId id, const std::string& address) {
  if (id == options_.self) return;
  absl::MutexLock lock(&mu_);
  // Checked under the lock: Stop() sets it before it collects the senders.
  if (stopped_.load(std::memory_order_acquire) || senders_.contains(id)) return;
  senders_[id] = std::make_unique<PeerSender>(options_, id, address);
}

GrpcTransport::~GrpcTransport() { Stop(); }

void GrpcTransport::Send(NodeId to, std::vector<ShardMessage> messages) {
  if (messages.empty() || stopped_.load(std::memory_order_acquire)) return;
  absl::ReaderMutexLock lock(&mu_);
  auto it = senders_.find(to);
  if (it == senders_.end()) return;
  it->second->Enqueue(std::move(messages));
}

void GrpcTransport::Stop() {
  stopped_.store(true, std::memory_order_release);
  // Senders are never removed: stopped outside the lock (Stop joins their
  // threads, which report through the callbacks).
  std::vector<PeerSender*> senders;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, sender] : senders_) senders.push_back(sender.get());
  }
  for (PeerSender* sender : senders) sender->Stop();
}

GrpcTransport::PeerStats GrpcTransport::StatsForTesting(NodeId peer) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = senders_.find(peer);
  return it == senders_.end() ? PeerStats{} : it->second->Stats();
}

// ---- Receiving side ----

// Reads the batches of one Peer.Stream call and hands them to the handler.
class PeerService::StreamReactor final : public grpc::ServerReadReactor<peerpb::MessageBatch> {
 public:
  StreamReactor(const PeerService* service, NodeId certified)
      : service_(service), certified_(certified) {
    StartRead(&batch_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the sender closed the stream, or it broke
      Finish(grpc::Status::OK);
      return;
    }
    // One stream carries one sender: its first batch is checked in full,
    // later ones must name the same sender and incarnation.
    if (from_ == 0 || batch_.from_node() != from_ || batch_.incarnation() != incarnation_) {
      grpc::Status admitted =
          service_->Admit(certified_, batch_.from_node(), batch_.to_node(), batch_.incarnation());
      if (!admitted.ok()) {
        Finish(admitted);
        return;
      }
      from_ = batch_.from_node();
      incarnation_ = batch_.incarnation();
    } else if (batch_.to_node() != service_->options_.self) {
      Finish(
          service_->Admit(certified_, batch_.from_node(), batch_.to_node(), batch_.incarnation()));
      return;
    }
    std::vector<ShardMessage> messages;
    messages.reserve(batch_.messages_size());
    for (peerpb::ShardMessage& m : *batch_.mutable_messages()) {
      if (m.message().type() == raftpb::MSG_SNAP) {
        // Snapshots come only through Peer.Snapshot, which bounds them.
        service_->Refused("snapshot_in_batch");
        continue;
      }
      messages.push_back({.shard = m.shard(), .message = std::move(*m.mutable_message())});
    }
    if (!messages.empty()) service_->handler_(from_, std::move(messages));
    batch_.Clear();
    StartRead(&batch_);
  }

  void OnDone() override { delete this; }

 private:
  const PeerService* const service_;
  const NodeId certified_;
  NodeId from_ = 0;
  uint64_t incarnation_ = 0;
  peerpb::MessageBatch batch_;
};

// Receives one snapshot: checks each chunk and has the service's snapshot
// worker write its records to a staging (SnapshotAssembler), then asks for
// the next chunk, so one chunk is in flight and no disk I/O happens on a gRPC
// thread. After the last chunk the staged snapshot is handed to the handler
// with a staged token as its data. Registered with the service while it runs
// (concurrency bound, idle cut).
class PeerService::SnapshotReactor final : public grpc::ServerReadReactor<peerpb::SnapshotChunk> {
 public:
  SnapshotReactor(PeerService* service, NodeId certified)
      : service_(service),
        certified_(certified),
        assembler_(service->options_.snapshots, service->options_.max_snapshot_bytes) {}

  // Called once registered.
  void Begin() { StartRead(&chunk_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(
          grpc::Status(grpc::StatusCode::ABORTED, "snapshot stream ended before its last chunk"));
      return;
    }
    Touch();
    service_->RunOnSnapshotWorker([this] { Process(); });
  }

  void OnDone() override {
    {
      absl::MutexLock lock(&service_->mu_);
      service_->snapshots_.erase(this);
    }
    delete this;  // an unfinished staging goes with the assembler
  }

  // The watchdog's view: when a chunk last arrived or was written.
  absl::Time last_activity() const { return absl::FromUnixNanos(last_activity_ns_.load()); }

 private:
  void Touch() { last_activity_ns_.store(absl::ToUnixNanos(absl::Now())); }

  // On the snapshot worker thread.
  void Process() {
    grpc::Status status = Handle();
    Touch();
    if (!status.ok() || done_) {
      Finish(status);
      return;
    }
    chunk_.Clear();
    StartRead(&chunk_);
  }

  // A refusal: counted, and the call ends with `code`.
  grpc::Status Refuse(const char* reason, grpc::StatusCode code, absl::string_view message) {
    service_->Refused(reason);
    return grpc::Status(code, std::string(message));
  }
  // A failure of this node (its storage) rather than of the input.
  static grpc::Status Local(const absl::Status& s) {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
  }

  grpc::Status Handle() {
    if (chunk_.seq() != next_seq_) {
      return Refuse(
          "snapshot_out_of_order", grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("snapshot chunk ", chunk_.seq(), " arrived, expected ", next_seq_));
    }
    ++next_seq_;
    if (next_seq_ == 1) {
      grpc::Status admitted =
          service_->Admit(certified_, chunk_.from_node(), chunk_.to_node(), chunk_.incarnation());
      if (!admitted.ok()) return admitted;
      if (chunk_.format() != kSnapshotChunkFormat) {
        return Refuse("bad_snapshot_header", grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("snapshot chunk format ", chunk_.format(), ", expected ",
                                   kSnapshotChunkFormat));
      }
      from_ = chunk_.from_node();
      shard_ = chunk_.shard();
      absl::Status begun = assembler_.Begin(shard_, std::move(*chunk_.mutable_message()));
      if (begun.code() == absl::StatusCode::kInvalidArgument) {
        return Refuse("bad_snapshot_header", grpc::StatusCode::INVALID_ARGUMENT, begun.message());
      }
      if (!begun.ok()) return Local(begun);
    } else if (chunk_.has_message()) {
      return Refuse("bad_snapshot_header", grpc::StatusCode::INVALID_ARGUMENT,
                    "only the first snapshot chunk carries the message");
    }
    if (!chunk_.data().empty()) {
      absl::Status added = assembler_.Add(chunk_.data());
      if (added.code() == absl::StatusCode::kResourceExhausted && !IsDiskFull(added)) {
        return Refuse("snapshot_too_large", grpc::StatusCode::RESOURCE_EXHAUSTED, added.message());
      }
      if (added.code() == absl::StatusCode::kInvalidArgument) {
        return Refuse("bad_snapshot_data", grpc::StatusCode::INVALID_ARGUMENT, added.message());
      }
      if (!added.ok()) return Local(added);
    }
    if (!chunk_.last()) return grpc::Status::OK;
    absl::StatusOr<raftpb::Message> message = assembler_.Finish(chunk_.records());
    if (message.status().code() == absl::StatusCode::kInvalidArgument) {
      return Refuse("bad_snapshot_data", grpc::StatusCode::INVALID_ARGUMENT,
                    message.status().message());
    }
    if (!message.ok()) return Local(message.status());
    std::vector<ShardMessage> messages;
    messages.push_back({.shard = shard_, .message = *std::move(message)});
    service_->handler_(from_, std::move(messages));
    done_ = true;
    return grpc::Status::OK;
  }

  // storage/disk_space.h names a full disk this way; it is this node's
  // problem, not the sender's input.
  static bool IsDiskFull(const absl::Status& s) {
    return absl::StrContains(s.message(), "no space left");
  }

  PeerService* const service_;
  const NodeId certified_;
  std::atomic<int64_t> last_activity_ns_{absl::ToUnixNanos(absl::Now())};
  peerpb::SnapshotChunk chunk_;
  uint64_t next_seq_ = 0;
  NodeId from_ = 0;
  ShardId shard_ = 0;
  SnapshotAssembler assembler_;
  bool done_ = false;
};

PeerService::PeerService(PeerServiceOptions options, MessageHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {
  watchdog_ = std::thread([this] { RunWatchdog(); });
  worker_ = std::thread([this] { RunSnapshotWorker(); });
}

void PeerService::RunOnSnapshotWorker(std::function<void()> job) {
  absl::MutexLock lock(&work_mu_);
  jobs_.push_back(std::move(job));
}

// Runs the reactors' chunk jobs in order; drains them before exiting.
void PeerService::RunSnapshotWorker() {
  while (true) {
    std::function<void()> job;
    {
      absl::MutexLock lock(&work_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(work_mu_) {
        return worker_stopping_ || !jobs_.empty();
      };
      work_mu_.Await(absl::Condition(&ready));
      if (jobs_.empty()) return;  // stopping
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    job();
  }
}

PeerService::PeerService(NodeId self, MessageHandler handler)
    : PeerService(PeerServiceOptions{.self = self, .require_certified_sender = false},
                  std::move(handler)) {}

PeerService::~PeerService() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  watchdog_.join();
  {
    absl::MutexLock lock(&work_mu_);
    worker_stopping_ = true;
  }
  worker_.join();
}

void PeerService::Refused(const char* reason) const {
  if (options_.on_refused) options_.on_refused(reason);
}

absl::StatusOr<NodeId> PeerService::Sender(grpc::CallbackServerContext* context) const {
  if (!options_.require_certified_sender) return 0;
  std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr) return absl::UnauthenticatedError("no peer certificate");
  return security::CertifiedPeerId(*auth);
}

grpc::Status PeerService::Admit(NodeId certified, NodeId from, NodeId to,
                                uint64_t incarnation) const {
  if (certified != 0 && from != certified) {
    Refused("sender_mismatch");
    return grpc::Status(
        grpc::StatusCode::PERMISSION_DENIED,
        absl::StrCat("node ", certified, " sent a batch claiming to be node ", from));
  }
  if (from == 0 || to != options_.self) {
    Refused("misaddressed");
    return grpc::Status(
        grpc::StatusCode::INVALID_ARGUMENT,
        absl::StrCat("batch from node ", from, " for node ", to, " reached node ", options_.self));
  }
  if (options_.registry != nullptr) {
    absl::Status admitted = options_.registry->Admit(from, incarnation);
    if (!admitted.ok()) {
      Refused("replaced_member");
      return grpc::Status(static_cast<grpc::StatusCode>(admitted.code()),
                          std::string(admitted.message()));
    }
  }
  return grpc::Status::OK;
}

grpc::ServerReadReactor<peerpb::MessageBatch>* PeerService::Stream(
    grpc::CallbackServerContext* context, peerpb::StreamAck* /*ack*/) {
  absl::StatusOr<NodeId> sender = Sender(context);
  if (!sender.ok()) {
    Refused("unauthenticated");
    class Refuse final : public grpc::ServerReadReactor<peerpb::MessageBatch> {
     public:
      explicit Refuse(const absl::Status& why) {
        Finish(grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(why.message())));
      }
      void OnDone() override { delete this; }
    };
    return new Refuse(sender.status());
  }
  return new StreamReactor(this, *sender);
}

grpc::ServerReadReactor<peerpb::SnapshotChunk>* PeerService::Snapshot(
    grpc::CallbackServerContext* context, peerpb::SnapshotAck* /*ack*/) {
  class Refuse final : public grpc::ServerReadReactor<peerpb::SnapshotChunk> {
   public:
    explicit Refuse(grpc::Status why) { Finish(why); }
    void OnDone() override { delete this; }
  };
  absl::StatusOr<NodeId> sender = Sender(context);
  if (!sender.ok()) {
    Refused("unauthenticated");
    return new Refuse(
        grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(sender.status().message())));
  }
  auto* reactor = new SnapshotReactor(this, *sender);
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(snapshots_.size()) >= std::max(options_.max_inbound_snapshots, 1)) {
      delete reactor;
      Refused("too_many_snapshots");
      return new Refuse(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat(options_.max_inbound_snapshots,
                       " snapshots are already arriving (--max-inbound-snapshots); retry later")));
    }
    snapshots_[reactor] = {.context = context};
  }
  reactor->Begin();
  return reactor;
}

grpc::Status PeerService::CheckCaller(grpc::CallbackServerContext* context,
                                      NodeId from_node) const {
  absl::StatusOr<NodeId> sender = Sender(context);
  if (!sender.ok()) {
    Refused("unauthenticated");
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, std::string(sender.status().message()));
  }
  if (*sender != 0 && from_node != *sender) {
    Refused("sender_mismatch");
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("node ", *sender, " asked as node ", from_node));
  }
  return grpc::Status::OK;
}

grpc::ServerUnaryReactor* PeerService::Hello(grpc::CallbackServerContext* context,
                                             const peerpb::HelloRequest* request,
                                             peerpb::HelloResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status caller = CheckCaller(context, request->from_node()); !caller.ok()) {
    reactor->Finish(caller);
    return reactor;
  }
  if (options_.registry != nullptr) {
    response->set_known_incarnation(options_.registry->Known(request->from_node()));
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::ChangeReplica(grpc::CallbackServerContext* context,
                                                     const peerpb::ReplicaChangeRequest* request,
                                                     peerpb::ReplicaChangeResponse* /*response*/) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status caller = CheckCaller(context, request->from_node()); !caller.ok()) {
    reactor->Finish(caller);
    return reactor;
  }
  if (request->to_node() != options_.self) {
    Refused("wrong_destination");
    reactor->Finish(grpc::Status(
        grpc::StatusCode::FAILED_PRECONDITION,
        absl::StrCat("this is node ", options_.self, ", not node ", request->to_node())));
    return reactor;
  }
  // A conf change names a few nodes, none 0 (raft checks the rest).
  bool valid = request->change_case() != peerpb::ReplicaChangeRequest::CHANGE_NOT_SET;
  if (request->has_conf_change()) {
    const raftpb::ConfChange& cc = request->conf_change();
    valid = valid && cc.changes_size() <= 8 && cc.context().empty();
    for (const raftpb::ConfChangeSingle& c : cc.changes()) valid = valid && c.node_id() != 0;
  }
  if (request->change_case() == peerpb::ReplicaChangeRequest::kTransferLeaderTo) {
    valid = valid && request->transfer_leader_to() != 0;
  }
  if (request->change_case() == peerpb::ReplicaChangeRequest::kReplaceMe) {
    valid = valid && request->replace_me() != 0;
  }
  if (!valid) {
    Refused("bad_replica_change");
    reactor->Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "malformed replica change"));
    return reactor;
  }
  if (options_.on_replica_change == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no replica changes here"));
    return reactor;
  }
  options_.on_replica_change(*request, [reactor](absl::Status status) {
    reactor->Finish(
        grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message())));
  });
  return reactor;
}

grpc::ServerUnaryReactor* PeerService::ReadAuthState(grpc::CallbackServerContext* context,
                                                     const peerpb::AuthStateRequest* request,
                                                     peerpb::AuthStateResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (grpc::Status caller = CheckCaller(context, request->from_node()); !caller.ok()) {
    reactor->Finish(caller);
    return reactor;
  }
  if (options_.read_auth_state == nullptr) {
    reactor->Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no auth state here"));
    return reactor;
  }
  absl::StatusOr<std::optional<std::string>> stored = options_.read_auth_state();
  if (!stored.ok()) {
    reactor->Finish(grpc::Status(static_cast<grpc::StatusCode>(stored.status().code()),
                                 std::string(stored.status().message())));
    return reactor;
  }
  response->set_stored(stored->has_value());
  if (stored->has_value()) response->set_state(**std::move(stored));
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

int PeerService::active_snapshots_for_testing() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(snapshots_.size());
}

// Cuts snapshot streams that sent nothing for snapshot_idle_timeout.
void PeerService::RunWatchdog() {
  const absl::Duration period =
      std::clamp(options_.snapshot_idle_timeout / 4, absl::Milliseconds(10), absl::Seconds(1));
  absl::MutexLock lock(&mu_);
  while (!stopping_) {
    mu_.AwaitWithTimeout(absl::Condition(this, &PeerService::Stopping), period);
    const absl::Time now = absl::Now();
    for (auto& [reactor, call] : snapshots_) {
      if (!call.cancelled && now - reactor->last_activity() > options_.snapshot_idle_timeout) {
        Refused("snapshot_idle");
        call.cancelled = true;
        call.context->TryCancel();  // the reactor then ends and unregisters
      }
    }
  }
}

}  // namespace tessera::server
