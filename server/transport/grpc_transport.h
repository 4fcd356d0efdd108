// GrpcTransport: the Transport between tessera-server processes, over the
// Peer gRPC service (proto/tessera/peer.proto), and PeerService, the
// receiving end of it.
//
// Where it sits: the Node's raft loop calls Send() with the messages of a
// ready cycle for one destination; Send() only queues them. Per destination
// node, one sender thread drains the queue into one long-lived client stream
// (Peer.Stream), coalescing queued batches up to max_batch_bytes, and one
// snapshot thread streams each MSG_SNAP through Peer.Snapshot: its metadata,
// then the records of the export its token names in the SnapshotExchange
// (server/raftstore/snapshot_stream.h), in chunks of about
// snapshot_chunk_bytes, one blocking write at a time (so a large snapshot
// neither blocks heartbeats, nor is held in memory, nor exceeds message size
// limits). On the receiving node, PeerService hands each arriving batch to
// the MessageHandler; a snapshot's chunks are checked and staged on disk by
// its snapshot worker thread, and the MSG_SNAP is handed over with a staged
// token once the staging is durable.
//
// Loss: raft tolerates loss, so queues are bounded and never block the
// caller. When a destination's queue holds max_queued_batches or
// max_queued_bytes, the OLDEST batches are dropped (newer messages carry
// newer terms and commit indexes). While a peer is unreachable the sender
// reconnects with exponential backoff (min_backoff doubling to max_backoff);
// the batch whose write failed is dropped. Snapshots beyond
// max_queued_snapshots are dropped likewise, and a failed snapshot is
// reported through on_snapshot_sent (so the leader can retry).
//
// Thread-safety: GrpcTransport and PeerService are thread-safe. The handler
// and on_snapshot_sent run on transport threads and must not block for long.
// No lock is held while calling them or while doing RPCs.
#ifndef TESSERA_SERVER_TRANSPORT_GRPC_TRANSPORT_H_
#define TESSERA_SERVER_TRANSPORT_GRPC_TRANSPORT_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/raftstore/snapshot_stream.h"
#include "server/raftstore/transport.h"
#include "server/security/peer_registry.h"
#include "server/security/tls.h"
#include "tessera/peer.grpc.pb.h"

namespace tessera::server {

struct GrpcTransportOptions {
  NodeId self = 0;
  // This node's data directory incarnation (security/data_dir_identity.h),
  // sent with every batch and snapshot.
  uint64_t incarnation = 1;
  // Peer TLS (not owned; must outlive the transport). nullptr: plaintext.
  const security::TlsCredentials* credentials = nullptr;
  // Peer-service address ("host:port") of every other node. An entry for
  // `self` is ignored.
  absl::flat_hash_map<NodeId, std::string> peers;
  // Per destination: queued batches beyond either bound drop the oldest.
  size_t max_queued_batches = 4096;
  uint64_t max_queued_bytes = 64ull << 20;
  // One MessageBatch on the wire carries at most about this many bytes
  // (always at least one queued batch).
  uint64_t max_batch_bytes = 4ull << 20;
  // A message or batch larger than this (the peers' receive limit) is
  // never written: it is dropped, logged and counted (gRPC aborts the
  // process on a message it cannot serialize, over 2 GiB, and a peer
  // refuses one over its limit by breaking the stream).
  uint64_t max_message_bytes = 64ull << 20;
  // Where the exports named by MSG_SNAP tokens are pinned (the node's
  // exchange, shared with its Node). Not owned; must outlive the transport.
  // nullptr: only MSG_SNAPs with inline data can be sent.
  SnapshotExchange* snapshots = nullptr;
  // Snapshot records are sent in chunks of about this size.
  uint64_t snapshot_chunk_bytes = 1ull << 20;
  // Snapshots waiting per destination; more drop the oldest.
  size_t max_queued_snapshots = 2;
  // A snapshot transfer that takes longer fails. Generous: a 1 GiB shard on
  // a busy disk takes minutes; a transfer that stalls is cut much sooner by
  // the receiver's idle timeout (--snapshot-idle-timeout-ms).
  absl::Duration snapshot_timeout = absl::Minutes(10);
  absl::Duration min_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Called after each snapshot transfer with its outcome (optional).
  std::function<void(NodeId to, ShardId shard, bool ok)> on_snapshot_sent;
  // Called when the stream to a peer broke or could not be opened: the
  // batch written was lost (optional; raft then probes the peer instead of
  // streaming appends to it blindly).
  std::function<void(NodeId to)> on_unreachable;
  // Called when a peer refuses this node: kFailedPrecondition when it knows
  // this node under another data directory incarnation (this node's data is
  // gone: it must stop), kPermissionDenied / kUnauthenticated for an identity
  // the peer does not accept (optional; runs on a transport thread).
  std::function<void(NodeId to, const absl::Status& why)> on_refused;
};

class GrpcTransport : public Transport {
 public:
  // Starts the sender threads; connections are made lazily.
  explicit GrpcTransport(GrpcTransportOptions options);
  ~GrpcTransport() override;  // Stop()s.
  GrpcTransport(const GrpcTransport&) = delete;
  GrpcTransport& operator=(const GrpcTransport&) = delete;

  // See Transport. Messages to an unknown node or to self are dropped.
  void Send(NodeId to, std::vector<ShardMessage> messages) override ABSL_LOCKS_EXCLUDED(mu_);

  // Starts sending to a node that joined (a member added to the cluster
  // map). A known node keeps its address; self is ignored.
  void AddPeer(NodeId id, const std::string& address) ABSL_LOCKS_EXCLUDED(mu_);

  // Cancels in-flight RPCs, drops what is queued and joins the threads.
  // Send() afterwards drops. Idempotent.
  void Stop();

  struct PeerStats {
    uint64_t sent_batches = 0;      // MessageBatches written to a stream
    uint64_t dropped_messages = 0;  // queue overflow, failed writes, stop
    uint64_t stream_failures = 0;   // streams that broke (or failed to open)
    uint64_t snapshots_sent = 0;
    uint64_t snapshots_failed = 0;
    uint64_t oversized_messages = 0;  // over max_message_bytes (alone or batched)
  };
  PeerStats StatsForTesting(NodeId peer) const;

 private:
  class PeerSender;
  const GrpcTransportOptions options_;
  // Constant after construction.
  // Written by AddPeer (rare), read by every Send.
  mutable absl::Mutex mu_;
  absl::flat_hash_map<NodeId, std::unique_ptr<PeerSender>> senders_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stopped_{false};
};

struct PeerServiceOptions {
  NodeId self = 0;
  // With peer TLS, every call must carry a verified certificate and a batch
  // is accepted only when its from_node is the id the certificate names.
  // false: plaintext peers (--insecure-peers), from_node is taken on trust.
  bool require_certified_sender = true;
  // Known incarnations of the other members (not owned). nullptr: not checked.
  security::PeerRegistry* registry = nullptr;
  // Inbound snapshots: at most this many streams at once (more are refused
  // with RESOURCE_EXHAUSTED; the sender retries later), each at most
  // max_snapshot_bytes, and cut after snapshot_idle_timeout without a chunk.
  int max_inbound_snapshots = 2;
  uint64_t max_snapshot_bytes = 1ull << 30;
  absl::Duration snapshot_idle_timeout = absl::Seconds(30);
  // Where received snapshots are staged (the node's exchange, shared with
  // its Node: KvStore::StageSnapshot, committed by the raft loop). Not owned;
  // must outlive the service. nullptr: reassembled in memory as inline data
  // (tests of the transport alone).
  SnapshotExchange* snapshots = nullptr;
  // Counts refused input by reason (a short fixed string; optional, thread-safe).
  std::function<void(const char* reason)> on_refused;
  // Carries out a Peer.ChangeReplica request whose sender and addressee
  // were checked; calls `done` exactly once, from any thread. nullptr:
  // UNIMPLEMENTED.
  std::function<void(const peerpb::ReplicaChangeRequest& request,
                     std::function<void(absl::Status)> done)>
      on_replica_change;
  // The auth state stored in this node's metadata replica for
  // Peer.ReadAuthState: the bytes, nullopt if none is stored, kNotFound
  // without a replica. nullptr: UNIMPLEMENTED.
  std::function<absl::StatusOr<std::optional<std::string>>()> read_auth_state;
};

// The Peer service: checks who sends and hands what arrives to `handler`.
// Refusals end the call: PERMISSION_DENIED for a sender that is not the
// certified one, UNAUTHENTICATED without a certificate (TLS normally stops
// those earlier), FAILED_PRECONDITION for a member known under another
// incarnation (its data is gone), INVALID_ARGUMENT for a batch addressed to
// another node, RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED for snapshots beyond
// the bounds above. Each refusal is counted through on_refused.
class PeerService final : public peerpb::Peer::CallbackService {
 public:
  PeerService(PeerServiceOptions options, MessageHandler handler);
  // Plaintext, no registry, defaults (tests of the transport itself).
  PeerService(NodeId self, MessageHandler handler);
  ~PeerService() override;

  grpc::ServerReadReactor<peerpb::MessageBatch>* Stream(grpc::CallbackServerContext* context,
                                                        peerpb::StreamAck* ack) override;
  grpc::ServerReadReactor<peerpb::SnapshotChunk>* Snapshot(grpc::CallbackServerContext* context,
                                                           peerpb::SnapshotAck* ack) override;
  grpc::ServerUnaryReactor* Hello(grpc::CallbackServerContext* context,
                                  const peerpb::HelloRequest* request,
                                  peerpb::HelloResponse* response) override;
  grpc::ServerUnaryReactor* ChangeReplica(grpc::CallbackServerContext* context,
                                          const peerpb::ReplicaChangeRequest* request,
                                          peerpb::ReplicaChangeResponse* response) override;
  grpc::ServerUnaryReactor* ReadAuthState(grpc::CallbackServerContext* context,
                                          const peerpb::AuthStateRequest* request,
                                          peerpb::AuthStateResponse* response) override;

  int active_snapshots_for_testing() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  class StreamReactor;
  class SnapshotReactor;
  // The certified sender of a call, or 0 when not required; an error when
  // required and absent.
  absl::StatusOr<NodeId> Sender(grpc::CallbackServerContext* context) const;
  // Checks that a unary call's claimed sender is its certified one; counts
  // a refusal.
  grpc::Status CheckCaller(grpc::CallbackServerContext* context, NodeId from_node) const;
  // Checks a batch's or first chunk's header; counts a refusal.
  grpc::Status Admit(NodeId certified, NodeId from, NodeId to, uint64_t incarnation) const;
  void Refused(const char* reason) const;
  void RunWatchdog() ABSL_LOCKS_EXCLUDED(mu_);
  // Queues a snapshot reactor's job (writing a chunk) for the worker thread.
  void RunOnSnapshotWorker(std::function<void()> job) ABSL_LOCKS_EXCLUDED(work_mu_);
  void RunSnapshotWorker() ABSL_LOCKS_EXCLUDED(work_mu_);
  bool Stopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; }

  const PeerServiceOptions options_;
  const MessageHandler handler_;
  mutable absl::Mutex mu_;
  // Snapshot streams in progress, for the concurrency bound and the idle cut.
  struct SnapshotCall {
    grpc::CallbackServerContext* context = nullptr;
    bool cancelled = false;  // by the idle cut
  };
  absl::flat_hash_map<SnapshotReactor*, SnapshotCall> snapshots_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
  // The snapshot worker: writes received chunks to their stagings, one job
  // at a time (at most one per inbound snapshot is queued).
  absl::Mutex work_mu_;
  std::deque<std::function<void()>> jobs_ ABSL_GUARDED_BY(work_mu_);
  bool worker_stopping_ ABSL_GUARDED_BY(work_mu_) = false;
  std::thread worker_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_TRANSPORT_GRPC_TRANSPORT_H_
