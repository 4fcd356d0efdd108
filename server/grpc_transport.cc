#include "server/grpc_transport.h"

#include <algorithm>
#include <deque>
#include <thread>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"
#include "server/cluster_map.h"

namespace tessera::server {

// ---- Sending side ----

// The queues, threads and stub for one destination node. Thread-safe.
class GrpcTransport::PeerSender {
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
    channel_ = grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args);
    stub_ = peerpb::Peer::NewStub(channel_);
    stream_thread_ = std::thread([this] { RunStream(); });
    snapshot_thread_ = std::thread([this] { RunSnapshots(); });
  }

  ~PeerSender() { Stop(); }

  void Enqueue(std::vector<ShardMessage> messages) ABSL_LOCKS_EXCLUDED(mu_) {
    std::vector<ShardMessage> regular;
    std::vector<ShardMessage> snapshots;
    uint64_t bytes = 0;
    for (ShardMessage& m : messages) {
      if (m.message.type() == raftpb::MSG_SNAP) {
        snapshots.push_back(std::move(m));
      } else {
        bytes += m.message.ByteSizeLong() + 16;
        regular.push_back(std::move(m));
      }
    }
    absl::MutexLock lock(&mu_);
    if (stopping_) {
      stats_.dropped_messages += messages.size();
      return;
    }
    if (!regular.empty()) {
      queued_bytes_ += bytes;
      queue_.push_back({std::move(regular), bytes});
      while (queue_.size() > 1 && (queue_.size() > options_.max_queued_batches ||
                                   queued_bytes_ > options_.max_queued_bytes)) {
        DropOldestLocked();
      }
    }
    for (ShardMessage& snap : snapshots) {
      snapshots_.push_back(std::move(snap));
      while (snapshots_.size() > std::max<size_t>(options_.max_queued_snapshots, 1)) {
        ++stats_.dropped_messages;
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
  struct Queued {
    std::vector<ShardMessage> messages;
    uint64_t bytes = 0;
  };

  void DropOldestLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    stats_.dropped_messages += queue_.front().messages.size();
    queued_bytes_ -= queue_.front().bytes;
    queue_.pop_front();
  }

  bool HasStreamWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !queue_.empty();
  }
  bool HasSnapshotWork() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || !snapshots_.empty();
  }
  bool Stopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; }

  // Waits `d` unless stopping first; returns false when stopping.
  bool BackOff(absl::Duration d) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(this, &PeerSender::Stopping), d);
    return !stopping_;
  }

  // The stream thread: drains queue_ into one Peer.Stream call, reopening it
  // (after a backoff) when it breaks.
  void RunStream() ABSL_LOCKS_EXCLUDED(mu_) {
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientWriter<peerpb::MessageBatch>> writer;
    peerpb::StreamAck ack;
    absl::Duration backoff = options_.min_backoff;
    while (true) {
      std::vector<Queued> work;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(this, &PeerSender::HasStreamWork));
        if (stopping_) break;
        uint64_t bytes = 0;
        while (!queue_.empty() &&
               (work.empty() || bytes + queue_.front().bytes <= options_.max_batch_bytes)) {
          bytes += queue_.front().bytes;
          queued_bytes_ -= queue_.front().bytes;
          work.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      size_t count = 0;
      peerpb::MessageBatch batch;
      batch.set_from_node(options_.self);
      batch.set_to_node(to_);
      for (Queued& q : work) {
        for (ShardMessage& m : q.messages) {
          peerpb::ShardMessage* out = batch.add_messages();
          out->set_shard(m.shard);
          *out->mutable_message() = std::move(m.message);
          ++count;
        }
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
      writer->Finish().IgnoreError();  // why it failed does not change what we do
      {
        absl::MutexLock lock(&mu_);
        stream_context_ = nullptr;
        ++stats_.stream_failures;
        stats_.dropped_messages += count;
      }
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

  bool SendSnapshot(ShardMessage snap) ABSL_LOCKS_EXCLUDED(mu_) {
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
    std::string data = std::move(*snap.message.mutable_snapshot()->mutable_data());
    snap.message.mutable_snapshot()->clear_data();
    const uint64_t chunk_bytes = std::max<uint64_t>(options_.snapshot_chunk_bytes, 1);

    peerpb::SnapshotChunk chunk;
    chunk.set_from_node(options_.self);
    chunk.set_to_node(to_);
    chunk.set_shard(snap.shard);
    *chunk.mutable_message() = std::move(snap.message);
    chunk.set_last(data.empty());
    bool ok = writer->Write(chunk);
    chunk.clear_message();
    for (uint64_t offset = 0; ok && offset < data.size(); offset += chunk_bytes) {
      uint64_t n = std::min<uint64_t>(chunk_bytes, data.size() - offset);
      chunk.set_data(data.data() + offset, n);
      chunk.set_last(offset + n == data.size());
      ok = writer->Write(chunk);
    }
    if (ok) ok = writer->WritesDone();
    grpc::Status status = writer->Finish();
    {
      absl::MutexLock lock(&mu_);
      snapshot_context_ = nullptr;
    }
    return ok && status.ok();
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
  for (const auto& [id, address] : options_.peers) {
    if (id == options_.self) continue;
    senders_[id] = std::make_unique<PeerSender>(options_, id, address);
  }
}

GrpcTransport::~GrpcTransport() { Stop(); }

void GrpcTransport::Send(NodeId to, std::vector<ShardMessage> messages) {
  if (messages.empty() || stopped_.load(std::memory_order_acquire)) return;
  auto it = senders_.find(to);
  if (it == senders_.end()) return;
  it->second->Enqueue(std::move(messages));
}

void GrpcTransport::Stop() {
  stopped_.store(true, std::memory_order_release);
  for (auto& [id, sender] : senders_) sender->Stop();
}

GrpcTransport::PeerStats GrpcTransport::StatsForTesting(NodeId peer) const {
  auto it = senders_.find(peer);
  return it == senders_.end() ? PeerStats{} : it->second->Stats();
}

// ---- Receiving side ----

// Reads the batches of one Peer.Stream call and hands them to the handler.
class PeerService::StreamReactor final : public grpc::ServerReadReactor<peerpb::MessageBatch> {
 public:
  explicit StreamReactor(const PeerService* service) : service_(service) { StartRead(&batch_); }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the sender closed the stream, or it broke
      Finish(grpc::Status::OK);
      return;
    }
    if (batch_.to_node() != service_->self_ || batch_.from_node() == 0) {
      Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          absl::StrCat("batch from node ", batch_.from_node(), " for node ",
                                       batch_.to_node(), " reached node ", service_->self_)));
      return;
    }
    std::vector<ShardMessage> messages;
    messages.reserve(batch_.messages_size());
    for (peerpb::ShardMessage& m : *batch_.mutable_messages()) {
      messages.push_back({.shard = m.shard(), .message = std::move(*m.mutable_message())});
    }
    if (!messages.empty()) service_->handler_(batch_.from_node(), std::move(messages));
    batch_.Clear();
    StartRead(&batch_);
  }

  void OnDone() override { delete this; }

 private:
  const PeerService* const service_;
  peerpb::MessageBatch batch_;
};

// Reassembles one snapshot from its chunks, then hands it to the handler.
class PeerService::SnapshotReactor final : public grpc::ServerReadReactor<peerpb::SnapshotChunk> {
 public:
  explicit SnapshotReactor(const PeerService* service) : service_(service) { StartRead(&chunk_); }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Finish(
          grpc::Status(grpc::StatusCode::ABORTED, "snapshot stream ended before its last chunk"));
      return;
    }
    if (first_) {
      first_ = false;
      if (chunk_.to_node() != service_->self_ || chunk_.from_node() == 0 || !chunk_.has_message() ||
          chunk_.message().type() != raftpb::MSG_SNAP) {
        Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            absl::StrCat("bad first snapshot chunk from node ", chunk_.from_node(),
                                         " for node ", chunk_.to_node())));
        return;
      }
      from_ = chunk_.from_node();
      shard_ = chunk_.shard();
      message_ = std::move(*chunk_.mutable_message());
    }
    if (data_.size() + chunk_.data().size() > service_->max_snapshot_bytes_) {
      Finish(
          grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                       absl::StrCat("snapshot exceeds ", service_->max_snapshot_bytes_, " bytes")));
      return;
    }
    data_.append(chunk_.data());
    if (chunk_.last()) {
      *message_.mutable_snapshot()->mutable_data() = std::move(data_);
      std::vector<ShardMessage> messages;
      messages.push_back({.shard = shard_, .message = std::move(message_)});
      service_->handler_(from_, std::move(messages));
      Finish(grpc::Status::OK);
      return;
    }
    chunk_.Clear();
    StartRead(&chunk_);
  }

  void OnDone() override { delete this; }

 private:
  const PeerService* const service_;
  peerpb::SnapshotChunk chunk_;
  bool first_ = true;
  NodeId from_ = 0;
  ShardId shard_ = 0;
  raftpb::Message message_;
  std::string data_;
};

PeerService::PeerService(NodeId self, MessageHandler handler, uint64_t max_snapshot_bytes)
    : self_(self), handler_(std::move(handler)), max_snapshot_bytes_(max_snapshot_bytes) {}

grpc::ServerReadReactor<peerpb::MessageBatch>* PeerService::Stream(
    grpc::CallbackServerContext* /*context*/, peerpb::StreamAck* /*ack*/) {
  return new StreamReactor(this);
}

grpc::ServerReadReactor<peerpb::SnapshotChunk>* PeerService::Snapshot(
    grpc::CallbackServerContext* /*context*/, peerpb::SnapshotAck* /*ack*/) {
  return new SnapshotReactor(this);
}

}  // namespace tessera::server
