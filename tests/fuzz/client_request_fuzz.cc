// client_request_fuzz: what a client can send to the KV service, fed to a
// real KvService in front of a real Node and StateMachine.
//
// Input: byte 0 picks the method ((byte & 7) % 5: Put, Get, Delete, Scan, Txn);
// the rest is the request as it comes off the wire. With bit 3 of byte 0
// set and the rest parsing as that request, the harness sets header.shard to
// the shard of its (first) key and header.epoch to 0, so that the request
// gets past routing to validation, raft and the state machine; otherwise
// the bytes go as they are (gRPC's decode, routing). The call goes through
// gRPC's generic stub over an in-process channel (no socket) with a
// deadline of 10 s and is waited for.
//
// The node: node 1, alone in its cluster, hosting 4 shards (one replica
// each) over a RocksDB engine on tmpfs; it ticks in real time (it must
// elect itself). Started once per process: data accumulates across inputs,
// as it would on a server.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "proto/key_hash.h"
#include "server/api/kv_service.h"
#include "server/cluster/cluster_map.h"
#include "server/kv/node_backend.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/node.h"
#include "storage/engine.h"
#include "tessera/kv.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

using tessera::ShardId;

// Points the header at the shard of `key` (any epoch accepted).
void FixRoute(v1::RequestHeader* header, const std::string& key) {
  header->set_shard(ShardForKey(key, kClientShards));
  header->set_epoch(0);
}

// The request bytes with the route fixed, or nullopt if they do not parse.
template <typename Request, typename KeyOf>
std::optional<std::string> Routed(const std::string& bytes, KeyOf key_of) {
  Request request;
  if (!request.ParseFromString(bytes)) return std::nullopt;
  FixRoute(request.mutable_header(), key_of(request));
  return request.SerializeAsString();
}

std::optional<std::string> RouteFixed(ClientMethod method, const std::string& bytes) {
  switch (method) {
    case ClientMethod::kPut:
      return Routed<v1::PutRequest>(bytes, [](const v1::PutRequest& r) { return r.key(); });
    case ClientMethod::kGet:
      return Routed<v1::GetRequest>(bytes, [](const v1::GetRequest& r) { return r.key(); });
    case ClientMethod::kDelete:
      return Routed<v1::DeleteRequest>(bytes, [](const v1::DeleteRequest& r) { return r.key(); });
    case ClientMethod::kScan:  // no key: the shard of its start
      return Routed<v1::ScanRequest>(bytes, [](const v1::ScanRequest& r) { return r.start(); });
    case ClientMethod::kTxn:
      return Routed<v1::TxnRequest>(bytes, [](const v1::TxnRequest& r) -> std::string {
        if (r.compares_size() > 0) return r.compares(0).key();
        for (const auto* branch : {&r.success(), &r.failure()}) {
          for (const v1::TxnOp& op : *branch) {
            if (op.has_put()) return op.put().key();
            if (op.has_delete_()) return op.delete_().key();
            if (op.has_get()) return op.get().key();
          }
        }
        return "";
      });
  }
  return std::nullopt;
}

class ClientHarness {
 public:
  ClientHarness() {
    absl::StatusOr<server::ClusterMap> map =
        server::ClusterMap::Parse(kClientCluster, kClientShards, /*replication=*/1);
    if (!map.ok()) Die("bad cluster map", map.status());
    map_ = std::make_unique<server::ClusterMap>(*std::move(map));
    storage::EngineOptions eo;
    eo.block_cache_bytes = 8 << 20;
    eo.max_total_wal_bytes = 16 << 20;  // on tmpfs: memory
    eo.raft_write_buffer_bytes = 4 << 20;
    eo.data_write_buffer_bytes = 8 << 20;
    absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
        storage::Engine::Open(dir_.path(), eo);
    if (!engine.ok()) Die("cannot open the engine", engine.status());
    engine_ = *std::move(engine);
    state_machine_ =
        std::make_unique<server::StateMachine>(&engine_->kv_store(), server::StateMachineOptions{});
    server::NodeOptions no;
    no.id = kSelf;
    for (ShardId s : map_->ShardsOf(kSelf)) {
      no.shards.push_back(server::ShardPlacement{.shard = s, .replicas = {kSelf}});
    }
    no.tick_interval = absl::Milliseconds(1);  // a lone voter commits at its next tick
    no.election_ticks = 20;
    no.heartbeat_ticks = 1;
    no.snapshot_interval_entries = 64;  // compaction runs too
    absl::StatusOr<std::unique_ptr<server::Node>> node =
        server::Node::Start(no, engine_.get(), state_machine_.get(), &transport_);
    if (!node.ok()) Die("Node::Start failed", node.status());
    node_ = *std::move(node);
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!AllLed()) {
      if (absl::Now() > deadline) Die("the node did not elect itself in 30 s");
      absl::SleepFor(absl::Milliseconds(5));
    }
    backend_ = std::make_unique<server::NodeKvBackend>(node_.get(), state_machine_.get());
    server::KvServiceOptions ko;
    ko.self = kSelf;
    ko.max_value_bytes = 64 << 10;  // inputs are small; bigger values cost memory only
    kv_ = std::make_unique<server::KvService>(ko, map_.get(), backend_.get());
    grpc::ServerBuilder builder;
    builder.RegisterService(kv_.get());
    server_ = builder.BuildAndStart();
    if (server_ == nullptr) Die("cannot start the in-process gRPC server");
    stub_ =
        std::make_unique<grpc::GenericStub>(server_->InProcessChannel(grpc::ChannelArguments()));
  }

  ~ClientHarness() {
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
    server_->Shutdown(std::chrono::system_clock::now());
    kv_.reset();
    node_.reset();
  }

  void Run(const uint8_t* data, size_t size) {
    const auto method = static_cast<ClientMethod>((data[0] & 7) % 5);
    std::string bytes(reinterpret_cast<const char*>(data + 1), size - 1);
    if ((data[0] & kFixRouteBit) != 0) {
      if (std::optional<std::string> routed = RouteFixed(method, bytes)) bytes = *routed;
    }
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    // A completion queue, not the callback API: its callbacks add
    // milliseconds of latency per call here.
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> call = stub_->PrepareUnaryCall(
        &context, absl::StrCat("/tessera.v1.KV/", kClientMethodNames[static_cast<int>(method)]),
        request, &cq_);
    call->StartCall();
    grpc::Status status;
    call->Finish(&response, &status, call.get());
    void* tag = nullptr;
    bool ok = false;
    if (!cq_.Next(&tag, &ok) || tag != call.get()) Die("completion queue broke");
    if (verbose_) {
      std::fprintf(stderr, "%s: %d %s\n", kClientMethodNames[static_cast<int>(method)],
                   static_cast<int>(status.error_code()), status.error_message().c_str());
    }
  }

 private:
  bool AllLed() const {
    for (const server::ShardStatus& s : node_->Status()) {
      if (s.role != "leader") return false;
    }
    return true;
  }

  ScratchDir dir_;
  std::unique_ptr<server::ClusterMap> map_;
  std::unique_ptr<storage::Engine> engine_;
  std::unique_ptr<server::StateMachine> state_machine_;
  NullTransport transport_;
  std::unique_ptr<server::Node> node_;
  std::unique_ptr<server::NodeKvBackend> backend_;
  std::unique_ptr<server::KvService> kv_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::GenericStub> stub_;
  grpc::CompletionQueue cq_;
  // TESSERA_FUZZ_VERBOSE=1: print each call's status (to check the seeds).
  const bool verbose_ = std::getenv("TESSERA_FUZZ_VERBOSE") != nullptr;
};

}  // namespace
}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return -1;
  static tessera::fuzz::ClientHarness harness;  // destroyed at exit()
  harness.Run(data, size);
  return 0;
}
