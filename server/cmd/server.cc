#include "server/cmd/server.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/grpc_status.h"
#include "server/cmd/join.h"
#include "spdlog/spdlog.h"
#include "tessera/peer.grpc.pb.h"

namespace tessera::server {
namespace {

// Writes `content` to `path` atomically (temp file + rename).
absl::Status WriteFileAtomically(const std::string& path, const std::string& content) {
  const std::string temp = path + ".tmp";
  {
    std::ofstream out(temp, std::ios::trunc);
    out << content;
    out.flush();
    if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", temp));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat("cannot rename ", temp, " to ", path));
  }
  return absl::OkStatus();
}

// Reads the map stored in the metadata group from other members (for a node
// without a metadata replica, or with one still waiting for its first
// snapshot): their Cluster.NodeStatus stored_map, asking the metadata
// group's voters of the newest map this node has first (`flags_map` until
// one is loaded), then the other members. nullopt if members answered but
// none had one; kUnavailable if none answered. Called from the MetaGroup's
// thread only.
MetaGroup::RemoteReader RemoteMapReader(const ClusterMap& flags_map, const ClusterMapCache* cache,
                                        NodeId self,
                                        std::shared_ptr<grpc::ChannelCredentials> credentials) {
  struct Stubs {
    absl::flat_hash_map<std::string, std::shared_ptr<v1::Cluster::Stub>> by_address;
  };
  auto stubs = std::make_shared<Stubs>();
  auto initial = std::make_shared<const ClusterMap>(flags_map);
  return
      [stubs, initial, cache, self, credentials]() -> absl::StatusOr<std::optional<std::string>> {
        std::shared_ptr<const ClusterMap> map = cache->Current();
        if (map == nullptr) map = initial;
        std::vector<NodeId> order = map->meta_replicas();
        for (const MemberInfo& m : map->members()) {
          if (std::find(order.begin(), order.end(), m.id) == order.end()) order.push_back(m.id);
        }
        bool answered = false;
        for (NodeId id : order) {
          const MemberInfo* member = map->FindMember(id);
          if (id == self || member == nullptr) continue;
          std::shared_ptr<v1::Cluster::Stub>& stub = stubs->by_address[member->client_address];
          if (stub == nullptr) {
            grpc::ChannelArguments args;
            args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
            args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
            stub = v1::Cluster::NewStub(
                grpc::CreateCustomChannel(member->client_address, credentials, args));
          }
          grpc::ClientContext context;
          context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
          v1::NodeStatusResponse status;
          if (!stub->NodeStatus(&context, {}, &status).ok()) continue;
          answered = true;
          if (status.has_stored_map())
            return std::optional<std::string>(status.stored_map().SerializeAsString());
        }
        if (answered) return std::optional<std::string>();
        return absl::UnavailableError("no member holding the cluster map answered");
      };
}

// Reads the auth state stored in the metadata group from the members that
// hold its replicas (Peer.ReadAuthState, members only): the first that
// answers. Called from the AuthStore's thread only.
AuthStore::RemoteReader RemoteAuthReader(const ClusterMapCache* cache, NodeId self,
                                         const security::TlsCredentials* credentials) {
  struct Stubs {
    absl::flat_hash_map<std::string, std::shared_ptr<peerpb::Peer::Stub>> by_address;
  };
  auto stubs = std::make_shared<Stubs>();
  return [stubs, cache, self, credentials]() -> absl::StatusOr<std::optional<std::string>> {
    std::shared_ptr<const ClusterMap> map = cache->Current();
    if (map == nullptr) return absl::UnavailableError("no cluster map yet");
    for (NodeId id : map->meta_replicas()) {
      const MemberInfo* member = map->FindMember(id);
      if (id == self || member == nullptr) continue;
      std::shared_ptr<peerpb::Peer::Stub>& stub = stubs->by_address[member->peer_address];
      if (stub == nullptr) {
        grpc::ChannelArguments args;
        args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
        args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
        credentials->ConfigureChannelTo(id, &args);
        stub = peerpb::Peer::NewStub(
            grpc::CreateCustomChannel(member->peer_address, credentials->channel(), args));
      }
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(1)));
      peerpb::AuthStateRequest request;
      request.set_from_node(self);
      peerpb::AuthStateResponse response;
      if (!stub->ReadAuthState(&context, request, &response).ok()) continue;
      if (!response.stored()) return std::optional<std::string>();
      return std::optional<std::string>(response.state());
    }
    return absl::UnavailableError("no metadata replica answered Peer.ReadAuthState");
  };
}

// Has the cluster record this node as replaced under `incarnation` (its
// data was lost): asks the members in turn (Peer.ChangeReplica replace_me;
// only the metadata group's leader records it, the others answer
// UNAVAILABLE), then waits until a member serves a map that records it.
// Returns that map's version. Bounded: about 90 s.
absl::StatusOr<uint64_t> RecordReplacement(const ServerConfig& config, uint64_t incarnation,
                                           const security::TlsCredentials& credentials,
                                           const security::TlsCredentials& client_credentials) {
  absl::Time deadline = absl::Now() + absl::Seconds(60);
  absl::Status last = absl::UnavailableError("no member answered");
  std::vector<std::string> endpoints;
  bool asked = false;
  while (!asked && absl::Now() < deadline) {
    for (const MemberInfo& m : config.map.members()) {
      if (m.id == config.node_id) continue;
      endpoints.push_back(m.client_address);
      grpc::ChannelArguments args;
      credentials.ConfigureChannelTo(m.id, &args);
      std::unique_ptr<peerpb::Peer::Stub> stub = peerpb::Peer::NewStub(
          grpc::CreateCustomChannel(m.peer_address, credentials.channel(), args));
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
      peerpb::ReplicaChangeRequest request;
      request.set_from_node(config.node_id);
      request.set_to_node(m.id);
      request.set_replace_me(incarnation);
      peerpb::ReplicaChangeResponse response;
      last = FromGrpcStatus(stub->ChangeReplica(&context, request, &response));
      if (last.ok()) {
        asked = true;
        break;
      }
    }
    if (!asked) absl::SleepFor(absl::Milliseconds(500));
  }
  if (!asked) return last;
  deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline) {
    absl::StatusOr<ClusterMap> map = FetchClusterMap(
        endpoints, config.node_id, nullptr, absl::Seconds(5), client_credentials.channel());
    if (map.ok() && map->ReplacedIncarnation(config.node_id) == incarnation) {
      return map->version();
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::UnavailableError("no member served a cluster map recording the replacement");
}

// For a data directory created just now (a new member, or one whose data is
// gone): asks every reachable peer whether it knows this member under
// another incarnation. kFailedPrecondition (the line to log) if one does;
// peers that do not answer are skipped (they refuse the member later if they
// know it, see PeerRegistry).
absl::Status CheckNotReplaced(const ServerConfig& config, uint64_t incarnation,
                              const security::TlsCredentials& credentials) {
  for (const MemberInfo& m : config.map.members()) {
    if (m.id == config.node_id) continue;
    grpc::ChannelArguments args;
    credentials.ConfigureChannelTo(m.id, &args);
    std::unique_ptr<peerpb::Peer::Stub> stub = peerpb::Peer::NewStub(
        grpc::CreateCustomChannel(m.peer_address, credentials.channel(), args));
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    peerpb::HelloRequest request;
    request.set_from_node(config.node_id);
    request.set_incarnation(incarnation);
    peerpb::HelloResponse response;
    if (!stub->Hello(&context, request, &response).ok()) continue;
    const uint64_t known = response.known_incarnation();
    if (known != 0 && known != incarnation) {
      return absl::FailedPreconditionError(
          absl::StrCat("the data directory ", config.data_dir, " is new, but node ", m.id,
                       " knows node ", config.node_id, " from an earlier one (incarnation ", known,
                       "): this node's data is gone (rejoining under its old identity could lose "
                       "acknowledged writes)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

void ExitOnStorageFailure(const absl::Status& why) {
  spdlog::critical("fatal: {}; exiting with code {}", why.ToString(), kExitStorageFailure);
  spdlog::default_logger()->flush();
  std::_Exit(kExitStorageFailure);
}

Server::Server(ServerConfig config, ServerHooks hooks)
    : config_(std::move(config)), hooks_(std::move(hooks)) {}

Server::~Server() { Stop(); }

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerConfig config, ServerHooks hooks) {
  std::unique_ptr<Server> server(new Server(std::move(config), std::move(hooks)));
  absl::Status started = server->StartParts();
  if (!started.ok()) return started;  // ~Server stops what started
  return server;
}

absl::Status Server::Fatal() const {
  absl::MutexLock lock(&fatal_mu_);
  return fatal_;
}

void Server::StopObservers() {
  if (http_ != nullptr) http_->Stop();
  if (health_ != nullptr) health_->Stop();
  if (metrics_ != nullptr) {
    metrics_->SetNodeStatusSource(nullptr);
    metrics_->SetEngine(nullptr);
    metrics_->SetAdmissionSource(nullptr);
    metrics_->SetClusterSource(nullptr);
  }
}

absl::Status Server::StartParts() {
  const ServerConfig& config = config_;
  const ClusterMap& map = config.map;
  const bool hosts_meta = map.HostsMeta(config.node_id);
  spdlog::info(
      "cluster map from flags: {} members, {} shards, replication {}, epoch {}; node {}{} (the "
      "flags only bootstrap: once the metadata group stores a map, its replicas follow that map)",
      map.members().size(), map.num_shards(), map.replication(), map.epoch(), config.node_id,
      hosts_meta ? " holds a replica of the metadata group" : "");

  // Metrics and health first: /healthz answers while the node starts.
  MetricsOptions metrics_options;
  metrics_options.node_id = config.node_id;
  metrics_options.slow_request = config.slow_request;
  metrics_options.slow_fsync = config.slow_fsync;
  metrics_ = std::make_unique<Metrics>(metrics_options);
  ReadinessOptions readiness;
  readiness.max_leader_silence = 2 * config.tick * static_cast<int64_t>(config.election_ticks);
  health_ = std::make_unique<HealthMonitor>(readiness);
  if (!config.metrics_listen.empty()) {
    std::optional<HttpTlsFiles> https;
    if (config.metrics_tls) https = HttpTlsFiles{config.client_tls.cert, config.client_tls.key};
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> started =
        MetricsHttpServer::Start(config.metrics_listen,
                                 {{"/metrics", MetricsHandler(metrics_.get())},
                                  {"/healthz", health_->LivenessHandler()},
                                  {"/readyz", health_->ReadinessHandler()}},
                                 https);
    if (!started.ok()) return absl::UnavailableError(started.status().ToString());
    http_ = *std::move(started);
    spdlog::info("metrics, /healthz and /readyz on {}://{} (port {})",
                 http_->tls() ? "https" : "http", config.metrics_listen, http_->port());
  }

  // Peer identity before any storage or raft: whose data directory this is,
  // with which credentials it talks to its peers.
  auto refuse = [](absl::string_view why) {
    return absl::FailedPreconditionError(absl::StrCat("refusing to start: ", why));
  };
  absl::StatusOr<security::TlsCredentials> peer_credentials =
      config.peer_tls.cert.empty()
          ? absl::StatusOr<security::TlsCredentials>(security::TlsCredentials::Insecure())
          : security::TlsCredentials::Load(config.peer_tls, config.node_id);
  if (!peer_credentials.ok()) return refuse(peer_credentials.status().message());
  peer_credentials_.emplace(*std::move(peer_credentials));
  if (!peer_credentials_->secure()) {
    spdlog::warn(
        "--insecure-peers: the peer port {} accepts plaintext raft traffic from anyone who can "
        "reach it, who can then rewrite or erase this cluster's data; use --peer-cert, --peer-key "
        "and --peer-ca outside closed test networks",
        config.peer_listen);
  }
  // The client port's TLS (off: plaintext); also what this node presents
  // when it calls another node's client port.
  absl::StatusOr<security::TlsCredentials> client_credentials =
      config.client_tls.cert.empty()
          ? absl::StatusOr<security::TlsCredentials>(security::TlsCredentials::Insecure())
          : security::TlsCredentials::Load(config.client_tls, config.node_id, "--tls");
  if (!client_credentials.ok()) return refuse(client_credentials.status().message());
  client_credentials_.emplace(*std::move(client_credentials));
  absl::StatusOr<security::DataDirIdentity> identity =
      security::LoadOrCreateIdentity(config.data_dir, config.map.cluster_id(), config.node_id);
  if (!identity.ok()) return refuse(identity.status().message());
  identity_ = *identity;
  if (identity_.created) {
    absl::Status fresh = CheckNotReplaced(config, identity_.incarnation, *peer_credentials_);
    if (!fresh.ok()) {
      // Its old replicas forgot what they acknowledged: they must leave
      // their groups before it takes part again, as a new replica.
      spdlog::warn(
          "{}; it comes back as an empty replacement: its old replicas leave their groups "
          "and it gets new ones from the others",
          std::string(fresh.message()));
      if (absl::Status saved = security::SaveReplacement(config.data_dir, 0); !saved.ok()) {
        std::filesystem::remove(absl::StrCat(config.data_dir, "/", security::kIdentityFileName));
        return refuse(saved.message());
      }
    }
    spdlog::info("new data directory {}: node {}, incarnation {}", config.data_dir, config.node_id,
                 identity_.incarnation);
  }
  absl::StatusOr<std::optional<uint64_t>> replacement = security::LoadReplacement(config.data_dir);
  if (!replacement.ok()) return refuse(replacement.status().message());
  replaced_at_version_ = *replacement;
  if (replaced_at_version_ == 0u) {
    absl::StatusOr<uint64_t> recorded =
        RecordReplacement(config, identity_.incarnation, *peer_credentials_, *client_credentials_);
    if (!recorded.ok()) {
      return absl::UnavailableError(absl::StrCat(
          "cannot have the cluster record this node as replaced: ", recorded.status().message()));
    }
    if (absl::Status saved = security::SaveReplacement(config.data_dir, *recorded); !saved.ok()) {
      return refuse(saved.message());
    }
    replaced_at_version_ = *recorded;
    spdlog::info("the cluster records node {} as replaced from map version {} on", config.node_id,
                 *recorded);
  }
  absl::StatusOr<std::unique_ptr<security::PeerRegistry>> registry =
      security::PeerRegistry::Open(config.data_dir);
  if (!registry.ok()) return refuse(registry.status().message());
  registry_ = *std::move(registry);

  spdlog::info(
      "file limit {}: storage keeps at most {} files open, {} are reserved, ports take at most "
      "{} client and {} peer connections",
      config.fds.file_limit, config.fds.storage_max_open_files, config.fds.reserved,
      config.fds.max_client_connections, config.fds.max_peer_connections);
  storage::EngineOptions engine_options;
  engine_options.max_open_files = config.fds.storage_max_open_files;
  engine_options.min_free_disk_bytes = config.min_free_disk_bytes;
  absl::StatusOr<std::unique_ptr<storage::Engine>> engine =
      storage::Engine::Open(config.data_dir, engine_options);
  if (engine.status().code() == absl::StatusCode::kResourceExhausted) {
    ExitOnStorageFailure(engine.status());  // no space left on the data dir
  }
  if (!engine.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot open storage at ", config.data_dir, ": ", engine.status().ToString()));
  }
  engine_ = *std::move(engine);
  spdlog::info("opened storage at {}", config.data_dir);
  metrics_->SetEngine(engine_.get());
  storage::RaftLog* raft_log = &engine_->raft_log();
  storage::KvStore* kv_store = &engine_->kv_store();
  if (!config.testing_storage_faults.empty()) {
    testing_faults_ = std::make_unique<storage::FaultInjectionEngine>(
        engine_.get(), config.testing_storage_faults);
    raft_log = &testing_faults_->raft_log();
    kv_store = &testing_faults_->kv_store();
    spdlog::warn(
        "--testing-storage-faults={}: TESTING ONLY: storage operations named in that file fail "
        "with an injected I/O error (the node then exits with code 3)",
        config.testing_storage_faults);
  }

  StateMachineOptions sm_options;
  sm_options.history_revisions = config.watch_history_revisions;
  state_machine_ = std::make_unique<StateMachine>(kv_store, sm_options);
  // Snapshots in flight: exports the transport streams to followers, and
  // received snapshots staged for the raft loop to commit (shared by the
  // Node, the transport and the peer service).
  snapshots_ = std::make_unique<SnapshotExchange>(kv_store);
  // A map already stored in this node's metadata replica is checked before
  // any shard replica is created or joins its group.
  {
    absl::StatusOr<v1::GetResponse> stored = state_machine_->Get(kMetaShard, kMetaMapKey);
    if (stored.ok() && stored->found()) {
      absl::StatusOr<ClusterMap> checked =
          MetaGroup::Check(map, config.node_id, stored->kv().value());
      if (!checked.ok()) {
        return absl::FailedPreconditionError(
            absl::StrCat("refusing to serve: ", checked.status().message()));
      }
    }
  }

  GrpcTransportOptions transport_options;
  transport_options.self = config.node_id;
  transport_options.incarnation = identity_.incarnation;
  transport_options.snapshots = snapshots_.get();
  transport_options.credentials = &*peer_credentials_;
  transport_options.on_refused = [this](NodeId to, const absl::Status& why) {
    // A replacement is refused by members that have not loaded the map
    // recording it yet: that passes.
    if (why.code() == absl::StatusCode::kFailedPrecondition && !replaced_at_version_) {
      // The peer knows this member under another incarnation: stop.
      hooks_.on_refusal(
          absl::FailedPreconditionError(absl::StrCat("node ", to, " refuses us: ", why.message())));
      return;
    }
    static std::atomic<int64_t> last_warning{0};
    const int64_t now = absl::ToUnixSeconds(absl::Now());
    if (now - last_warning.exchange(now) >= 10) {
      spdlog::warn("node {} refuses this node's peer identity: {}", to, why.ToString());
    }
  };
  for (const MemberInfo& m : map.members()) {
    if (m.id != config.node_id) transport_options.peers[m.id] = m.peer_address;
  }
  // The largest message either port accepts: a request, or a peer batch of
  // a few MiB of messages plus one entry, holds at most one value of up to
  // --max-value-bytes and its key.
  const int max_message_bytes =
      static_cast<int>(std::min<uint64_t>(2 * config.max_value_bytes + (64 << 20), 1 << 30));
  // Transport feedback goes to the node once it runs (node_for_peers_).
  transport_options.on_unreachable = [this](NodeId to) {
    if (Node* node = node_for_peers_.load(std::memory_order_acquire)) node->ReportUnreachable(to);
  };
  transport_options.on_snapshot_sent = [this](NodeId to, ShardId shard, bool ok) {
    if (Node* node = node_for_peers_.load(std::memory_order_acquire)) {
      node->ReportSnapshot(to, shard, ok);
    }
  };
  transport_options.max_message_bytes = static_cast<uint64_t>(max_message_bytes);
  transport_ = std::make_unique<GrpcTransport>(std::move(transport_options));

  PeerServiceOptions peer_options{
      .self = config.node_id,
      .require_certified_sender = peer_credentials_->secure(),
      .registry = registry_.get(),
      .max_inbound_snapshots = config.max_inbound_snapshots,
      .max_snapshot_bytes = config.max_snapshot_bytes,
      .snapshot_idle_timeout = config.snapshot_idle_timeout,
      .snapshots = snapshots_.get(),
      .on_refused = [hooks = metrics_->node_metrics()](
                        const char* reason) { hooks->OnPeerMessageRefused(reason); },
      .on_replica_change =
          [this](const peerpb::ReplicaChangeRequest& request,
                 std::function<void(absl::Status)> done) {
            ChangeReplica(request, std::move(done));
          },
      .read_auth_state = [this]() -> absl::StatusOr<std::optional<std::string>> {
        AuthStore* store = auth_store_for_peers_.load(std::memory_order_acquire);
        if (store == nullptr) return absl::UnavailableError("this node is starting");
        return store->ReadLocal();
      }};
  peer_service_ = std::make_unique<PeerService>(
      std::move(peer_options), [this](NodeId from, std::vector<ShardMessage> messages) {
        if (Node* node = node_for_peers_.load(std::memory_order_acquire)) {
          node->Receive(from, std::move(messages));
        }
      });
  GrpcServerOptions peer_server_options;
  peer_server_options.address = config.peer_listen;
  peer_server_options.services = {peer_service_.get()};
  peer_server_options.max_receive_bytes = max_message_bytes;
  peer_server_options.credentials = peer_credentials_->server();
  peer_server_options.max_connections = config.fds.max_peer_connections;
  peer_server_options.name = "peer";
  peer_server_options.on_connections =
      metrics_->ConnectionReporter("peer", config.fds.max_peer_connections);
  absl::StatusOr<std::unique_ptr<GrpcServer>> peer_server =
      StartGrpcServer(std::move(peer_server_options));
  if (!peer_server.ok()) {
    return absl::UnavailableError(absl::StrCat("peer service: ", peer_server.status().ToString()));
  }
  peer_server_ = *std::move(peer_server);
  spdlog::info("peer service listening on {} (port {}, {})", config.peer_listen,
               peer_server_->port(),
               peer_credentials_->secure() ? "mutual TLS" : "PLAINTEXT, --insecure-peers");

  // The metadata group's founders bootstrap it at their first start; every
  // replica on disk reopens (the metadata group's included), and the shards
  // follow the stored map once it is loaded (HostReplicas). Only a node
  // with no raft state at all bootstraps (its first start, or one cut short
  // by a crash before anything was saved): a founder whose metadata replica
  // moved away must not found the group again. A map fetched by --join is
  // a later version and founds nothing.
  NodeOptions node_options;
  node_options.id = config.node_id;
  {
    absl::StatusOr<std::vector<ShardId>> on_disk = raft_log->Shards();
    if (!on_disk.ok()) {
      return absl::UnavailableError(
          absl::StrCat("cannot read the raft log's shards: ", on_disk.status().ToString()));
    }
    if (hosts_meta && map.version() == 1 && on_disk->empty() && !replaced_at_version_) {
      node_options.shards.push_back({.shard = kMetaShard, .replicas = map.meta_replicas()});
    }
  }
  node_options.snapshot_interval_entries = config.snapshot_interval_entries;
  node_options.tick_interval = config.tick;
  node_options.election_ticks = config.election_ticks;
  node_options.hibernate_idle_shards = config.hibernate_idle_shards;
  // Leaders are balanced by the scheduler, which sees every member's count
  // (per-node balancing handed shards around in circles once members held
  // different shards).
  node_options.balance_leaders = false;
  node_options.seed = static_cast<uint64_t>(absl::ToUnixNanos(absl::Now()));
  node_options.metrics = metrics_->node_metrics();
  node_options.snapshots = snapshots_.get();
  // The transport reports every transfer (its deadline: 10 minutes).
  node_options.snapshot_report_timeout = absl::Minutes(11);
  // Raft holds no more uncommitted bytes per shard than the node admits.
  if (config.max_inflight_bytes != 0) {
    node_options.max_uncommitted_bytes_per_shard = config.max_inflight_bytes;
  }
  // The services serve by the map of the metadata group, once loaded; until
  // then (and if it does not name this node) a leadership offered to this
  // node by a balancing transfer is declined: it could not serve clients.
  maps_ = std::make_unique<ClusterMapCache>();
  node_options.accept_leadership = [maps = maps_.get(), id = config.node_id] {
    std::shared_ptr<const ClusterMap> current = maps->Current();
    return current != nullptr && current->FindMember(id) != nullptr;
  };
  node_options.on_fatal = [this](const absl::Status& status) {
    {
      absl::MutexLock lock(&fatal_mu_);
      fatal_ = status;
    }
    hooks_.on_fatal(status);
  };
  {
    std::vector<ShardId> shard_ids;
    for (const ShardPlacement& p : node_options.shards) shard_ids.push_back(p.shard);
    metrics_->RegisterShards(shard_ids);
  }
  absl::StatusOr<std::unique_ptr<Node>> node =
      Node::Start(node_options, raft_log, kv_store, state_machine_.get(), transport_.get());
  if (node.status().code() == absl::StatusCode::kResourceExhausted) {
    ExitOnStorageFailure(node.status());  // bootstrap writes on a full disk
  }
  if (!node.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot start the node: ", node.status().ToString()));
  }
  node_ = *std::move(node);
  node_for_peers_.store(node_.get(), std::memory_order_release);
  metrics_->SetNodeStatusSource([n = node_.get()] { return n->Status(); });
  spdlog::info("raft node started: {} shard replicas, tick {} ms, election timeout {} ticks",
               node_options.shards.size(), absl::ToInt64Milliseconds(config.tick),
               config.election_ticks);

  backend_ = std::make_unique<NodeKvBackend>(node_.get(), state_machine_.get());
  if (config.watch_history_seconds > absl::ZeroDuration() && config.watch_history_revisions != 0) {
    history_retention_ = std::make_unique<HistoryRetention>(
        HistoryRetentionOptions{.keep = config.watch_history_seconds,
                                .sample_every = std::clamp(config.watch_history_seconds / 60,
                                                           absl::Seconds(1), absl::Seconds(60))},
        backend_.get(), SteadyClock());
  }
  cluster_control_ = std::make_unique<GrpcClusterControl>(
      config.node_id, maps_.get(), &*peer_credentials_, &*client_credentials_);
  // Leases: kept while this node leads the metadata group; ended on the
  // shards through the peer port.
  lease_keeper_ = std::make_unique<LeaseKeeper>(LeaseKeeperOptions{.max_leases = config.max_leases},
                                                backend_.get(), cluster_control_.get());
  metrics_->SetLeaseSource([k = lease_keeper_.get()] { return k->stats(); });
  lease_check_ = std::make_unique<LeaseCheck>(config.node_id, lease_keeper_.get(), maps_.get(),
                                              backend_.get(), cluster_control_.get());
  // Users, roles and permissions: followed from the metadata group.
  auth_store_ = std::make_unique<AuthStore>(
      AuthStoreOptions{.log = [](const std::string& line) { spdlog::info("auth: {}", line); }},
      backend_.get(), &auth_cache_,
      RemoteAuthReader(maps_.get(), config.node_id, &*peer_credentials_));
  auth_store_for_peers_.store(auth_store_.get(), std::memory_order_release);
  cluster_control_->SetAuthCache(&auth_cache_);
  storage_usage_ = std::make_unique<StorageUsage>(
      StorageUsageOptions{
          .log = [](const std::string& line) { spdlog::warn("storage: {}", line); }},
      engine_.get(),
      [this]() -> uint64_t {
        std::shared_ptr<const security::AuthView> view = auth_cache_.Current();
        return view != nullptr ? view->state().limits().storage_quota_bytes() : 0;
      },
      backend_.get());
  KvServiceOptions kv_options;
  kv_options.self = config.node_id;
  kv_options.max_key_bytes = config.max_key_bytes;
  kv_options.max_value_bytes = config.max_value_bytes;
  kv_options.max_inflight_bytes = config.max_inflight_bytes;
  kv_options.max_batch_ops = config.max_batch_ops;
  kv_options.max_batch_bytes = config.max_batch_bytes;
  kv_options.max_batch_inflight_ops = config.max_batch_inflight_ops;
  kv_options.watch.max_watchers = config.max_watchers;
  kv_options.watch.max_watcher_bytes = config.max_watcher_bytes;
  kv_options.watch.max_node_bytes = config.max_watch_bytes;
  kv_options.auth = &auth_cache_;
  kv_options.storage_used = [u = storage_usage_.get()] { return u->used(); };
  kv_options.check_leases = [check = lease_check_.get()](std::vector<uint64_t> leases,
                                                         absl::Time deadline,
                                                         std::function<void(absl::Status)> done) {
    check->Check(std::move(leases), deadline, std::move(done));
  };
  // A batched operation is counted as the unary call it stands for.
  kv_options.on_batch_op = [m = metrics_.get()](absl::string_view method, absl::StatusCode code,
                                                absl::Duration duration) {
    m->ObserveRpc(method, static_cast<grpc::StatusCode>(code), duration);
  };
  kv_service_ = std::make_unique<KvService>(kv_options, maps_.get(), backend_.get());
  // Stop() stops the node before it destroys the service.
  state_machine_->SetObserver(kv_service_->watch_hub());
  metrics_->SetAdmissionSource([kv = kv_service_.get()] { return kv->admission_stats(); });
  metrics_->SetBatchSource([kv = kv_service_.get()] { return kv->batch_stats(); });
  metrics_->SetWatchSource([hub = kv_service_->watch_hub()] { return hub->Stats(); });
  // Nodes without a metadata replica answer without a stored map.
  ClusterService::StoredMapReader stored_map = [backend = backend_.get()] {
    return MetaGroup::ReadLocal(*backend);
  };
  cluster_service_ = std::make_unique<ClusterService>(config.node_id, maps_.get(), backend_.get(),
                                                      std::move(stored_map));
  // `tessera cluster drain N`: the same path as SIGTERM.
  cluster_service_->SetDrainHandler([this] { hooks_.on_drain_requested(); });
  // `tessera cluster add-node`: recorded by the metadata group's leader.
  cluster_service_->SetAddMemberHandler([this](const v1::Member& m) -> absl::StatusOr<uint64_t> {
    MetaGroup* meta = meta_group_.load(std::memory_order_acquire);
    if (meta == nullptr) return absl::UnavailableError("the node is starting");
    absl::StatusOr<ClusterMap> map = meta->Change([&](const ClusterMap& current) {
      return current.WithMember({m.id(), m.client_address(), m.peer_address()});
    });
    if (!map.ok()) return map.status();
    spdlog::info("added member {} ({} / {}) to the cluster map (version {})", m.id(),
                 m.client_address(), m.peer_address(), map->version());
    return map->version();
  });
  // `tessera cluster remove-node`: marked by the metadata group's leader.
  cluster_service_->SetRemoveMemberHandler([this](NodeId id) -> absl::StatusOr<uint64_t> {
    MetaGroup* meta = meta_group_.load(std::memory_order_acquire);
    if (meta == nullptr) return absl::UnavailableError("the node is starting");
    absl::StatusOr<ClusterMap> map =
        meta->Change([&](const ClusterMap& current) { return current.WithLeaving(id); });
    if (map.status().code() == absl::StatusCode::kAlreadyExists) {
      return maps_->Current()->version();  // asked again: already leaving
    }
    if (!map.ok()) return map.status();
    spdlog::info("member {} is leaving: its replicas move off (cluster map version {})", id,
                 map->version());
    return map->version();
  });
  // `tessera cluster move-replica`: recorded by the metadata group's leader.
  cluster_service_->SetMoveHandler(
      [this](ShardId shard, NodeId from, NodeId to) -> absl::StatusOr<uint64_t> {
        MetaGroup* meta = meta_group_.load(std::memory_order_acquire);
        if (meta == nullptr) return absl::UnavailableError("the node is starting");
        absl::StatusOr<ClusterMap> map = meta->Change([&](const ClusterMap& current) {
          return Scheduler::RecordMove(current, shard, from, to);
        });
        if (!map.ok()) return map.status();
        spdlog::info("recorded a move of shard {} from node {} to node {} (cluster map version {})",
                     shard, from, to, map->version());
        return map->version();
      });
  // `tessera cluster split-shard`: recorded in progress by the metadata
  // group's leader; its scheduler carries it out.
  cluster_service_->SetSplitHandler([this](ShardId shard) -> absl::StatusOr<uint64_t> {
    MetaGroup* meta = meta_group_.load(std::memory_order_acquire);
    if (meta == nullptr) return absl::UnavailableError("the node is starting");
    absl::StatusOr<ClusterMap> map =
        meta->Change([&](const ClusterMap& current) { return current.WithSplitStarted(shard); });
    if (!map.ok()) return map.status();
    spdlog::info("recorded a split of shard {} at hash {} (cluster map version {})", shard,
                 map->shards()[shard].split_hash, map->version());
    return map->version();
  });
  lease_service_ = std::make_unique<LeaseService>(config.node_id, lease_keeper_.get(), maps_.get(),
                                                  backend_.get());
  lease_service_->SetAuthCache(&auth_cache_);
  cluster_service_->SetAuthCache(&auth_cache_);
  auth_service_ = std::make_unique<AuthService>(
      AuthServiceOptions{.self = config.node_id,
                         .token_ttl = config.auth_token_ttl,
                         .log = [](const std::string& line) { spdlog::warn("auth: {}", line); }},
      auth_store_.get(), &auth_cache_, maps_.get(), backend_.get());
  // The standard grpc.health.v1.Health service on the client port, kept in
  // step with readiness by the HealthMonitor.
  grpc::EnableDefaultHealthCheckService(true);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(metrics_->NewGrpcInterceptorFactory());
  GrpcServerOptions client_server_options;
  client_server_options.address = config.listen;
  client_server_options.services = {kv_service_.get(), cluster_service_.get(), lease_service_.get(),
                                    auth_service_.get()};
  client_server_options.max_receive_bytes = max_message_bytes;
  client_server_options.interceptors = std::move(interceptors);
  client_server_options.max_connections = config.fds.max_client_connections;
  client_server_options.name = "client";
  client_server_options.credentials =
      client_credentials_->server(security::ClientCertificates::kOptional);
  client_server_options.on_connections =
      metrics_->ConnectionReporter("client", config.fds.max_client_connections);
  absl::StatusOr<std::unique_ptr<GrpcServer>> client_server =
      StartGrpcServer(std::move(client_server_options));
  if (!client_server.ok()) {
    return absl::UnavailableError(absl::StrCat("client API: ", client_server.status().ToString()));
  }
  client_server_ = *std::move(client_server);
  spdlog::info("client API (KV, Cluster, Lease, Auth) listening on {} (port {}, {})", config.listen,
               client_server_->port(),
               client_credentials_->secure() ? "TLS" : "PLAINTEXT, no --tls-cert");
  health_->SetSources({.member = node_options.accept_leadership,
                       .shards = [n = node_.get()] { return n->Status(); },
                       .live = [n = node_.get()] { return n->Health(); }});
  health_->SetGrpcHealth(client_server_->server()->GetHealthCheckService());
  health_->Start(absl::Milliseconds(500));

  if (!config.port_file.empty()) {
    absl::Status s = WriteFileAtomically(
        config.port_file,
        absl::StrCat("client_port=", client_server_->port(), "\npeer_port=", peer_server_->port(),
                     "\n",
                     http_ != nullptr ? absl::StrCat("metrics_port=", http_->port(), "\n") : ""));
    if (!s.ok()) spdlog::error("port file: {}", s.ToString());
    spdlog::info("wrote ports to {}", config.port_file);
  }
  MetaGroupOptions meta_options;
  meta_options.self = config.node_id;
  meta_group_owned_ = std::make_unique<MetaGroup>(
      meta_options, map, backend_.get(),
      RemoteMapReader(map, maps_.get(), config.node_id, client_credentials_->channel()),
      maps_.get(), [this](const absl::Status& status) { hooks_.on_refusal(status); },
      [](const std::string& line) { spdlog::info("metadata group: {}", line); },
      [this](std::shared_ptr<const ClusterMap> next) { FollowMap(*next); });
  meta_group_.store(meta_group_owned_.get(), std::memory_order_release);
  // The placement driver: acts while this node leads the metadata group
  // (any member may come to hold a replica of it).
  scheduler_ = std::make_unique<Scheduler>(
      SchedulerOptions{.max_moves = config.max_replica_moves,
                       .dead_after = config.dead_node_timeout,
                       .balance = config.balance_replicas,
                       .split_bytes = config.split_shard_bytes,
                       .split_writes_per_sec = config.split_shard_writes_per_sec},
      [meta = meta_group_owned_.get()](const MetaGroup::Mutation& mutate) {
        return meta->Change(mutate);
      },
      [this]() -> std::shared_ptr<const ClusterMap> {
        std::optional<v1::ClusterMap> stored = MetaGroup::ReadLocal(*backend_);
        absl::StatusOr<ClusterMap> map =
            stored ? ClusterMap::FromProto(*stored) : absl::NotFoundError("none");
        if (!map.ok()) return maps_->Current();
        return std::make_shared<const ClusterMap>(*std::move(map));
      },
      [n = node_.get()] {
        std::optional<ShardStatus> meta = n->StatusOf(kMetaShard);
        return meta.has_value() && meta->role == "leader";
      },
      cluster_control_.get(), [](const std::string& line) { spdlog::info("scheduler: {}", line); });
  metrics_->SetClusterSource([this] {
    ClusterStats stats;
    if (std::shared_ptr<const ClusterMap> map = maps_->Current()) {
      stats.map_version = map->version();
      stats.members = map->members().size();
      stats.shards = map->num_shards();
      stats.leaving_members = map->leaving().size();
      for (const ShardLayout& s : map->shards()) {
        if (s.move_to != 0) ++stats.moves_in_progress;
        bool on_leaving = false;
        for (NodeId r : s.replicas) on_leaving = on_leaving || map->IsLeaving(r);
        if (s.replicas.size() < map->replication() || on_leaving) ++stats.under_replicated_shards;
      }
    }
    if (scheduler_ != nullptr) {
      stats.moves_started = scheduler_->moves_started();
      stats.moves_completed = scheduler_->moves_completed();
      stats.splits_completed = scheduler_->splits_completed();
    }
    return stats;
  });
  spdlog::info("node {} started; serving once the cluster map is loaded from the metadata group",
               config.node_id);
  return absl::OkStatus();
}

void Server::FollowMap(const ClusterMap& map) {
  for (const MemberInfo& m : map.members()) transport_->AddPeer(m.id, m.peer_address);
  // Members that came back empty are admitted under their new incarnation
  // only (their old replicas are being dropped).
  for (const auto& [node, incarnation] : map.replaced()) {
    if (node == config_.node_id || registry_->Known(node) == incarnation) continue;
    absl::Status replaced = registry_->Replace(node, incarnation);
    if (replaced.ok()) {
      spdlog::warn("node {} lost its data: admitting only its new incarnation {} from now on", node,
                   incarnation);
    } else {
      spdlog::error("cannot record node {}'s new incarnation: {}", node, replaced.ToString());
    }
  }
  if (replaced_at_version_ && map.version() < *replaced_at_version_) return;  // from before it
  HostReplicas(map);
}

void Server::HostReplicas(const ClusterMap& map) {
  auto pending = std::make_shared<PendingReplicas>();
  absl::flat_hash_set<ShardId> hosted;
  for (const ShardStatus& s : node_->Status()) hosted.insert(s.shard);
  std::vector<ShardId> wanted = map.ReplicasOn(config_.node_id);
  const uint64_t replaced = map.ReplacedIncarnation(config_.node_id);
  // While the map still records this node as replaced, the shards that list
  // it as a voter are its lost replicas (being dropped): only replicas
  // moving here (learners) are hosted.
  auto learner_here = [&](const ShardLayout& layout) {
    return std::find(layout.learners.begin(), layout.learners.end(), config_.node_id) !=
           layout.learners.end();
  };
  if (replaced != 0) {
    wanted.erase(std::remove_if(wanted.begin(), wanted.end(),
                                [&](ShardId shard) { return !learner_here(map.shards()[shard]); }),
                 wanted.end());
  }
  // The metadata group: a replica moving here starts empty, for a
  // snapshot. A voter without one is only re-created while the group is on
  // its founders (a founder whose first start crashed before saving it): a
  // voter of a later configuration lacking it is one whose replica moved
  // away, seeing the map from before that move.
  const ShardLayout& meta = map.meta();
  if (!hosted.contains(kMetaShard) &&
      (learner_here(meta) ||
       (meta.conf_version == 1 && map.HostsMeta(config_.node_id) && replaced == 0))) {
    wanted.push_back(kMetaShard);
  }
  for (ShardId shard : wanted) {
    if (hosted.contains(shard)) continue;
    if (shard == kMetaShard) {
      AddReplicaHere(shard, {}, pending);
      continue;
    }
    // A shard still on its first replica set is a new group: its founders
    // bootstrap it. Any later replica starts empty and learns the shard
    // from its leader's snapshot.
    const ShardLayout& layout = map.shards()[shard];
    std::vector<NodeId> founders;
    if (layout.conf_version == 1 && layout.range_version == 1 && !replaced_at_version_) {
      founders = layout.replicas;
    } else if (layout.range_version > 1 && SplitPendingHere(map, hosted)) {
      // A shard a split made: the parent's replica here creates it with
      // its data when it applies the split. Only with every local replica
      // as split as the map says (e.g. the parent caught up by a snapshot
      // taken after the split) does it start empty, for a snapshot.
      continue;
    }
    metrics_->RegisterShards({shard});
    AddReplicaHere(shard, founders, pending);
  }
  // Bounded: the raft loop adds them in its next cycle.
  absl::MutexLock lock(&pending->mu);
  pending->mu.AwaitWithTimeout(absl::Condition(
                                   +[](int* left) { return *left == 0; }, &pending->left),
                               absl::Seconds(10));
}

void Server::AddReplicaHere(ShardId shard, const std::vector<NodeId>& founders,
                            const std::shared_ptr<PendingReplicas>& pending) {
  {
    absl::MutexLock lock(&pending->mu);
    ++pending->left;
  }
  const std::string name =
      shard == kMetaShard ? std::string("the metadata group") : absl::StrCat("shard ", shard);
  node_->AddReplica(shard, founders, [pending, name, founders](absl::Status added) {
    if (added.ok()) {
      spdlog::info("hosting a replica of {}{}", name,
                   founders.empty() ? " (empty until its leader's snapshot)" : "");
    } else if (added.code() != absl::StatusCode::kAlreadyExists) {
      spdlog::error("cannot host a replica of {}: {}", name, added.ToString());
    }
    absl::MutexLock lock(&pending->mu);
    --pending->left;
  });
}

bool Server::SplitPendingHere(const ClusterMap& map,
                              const absl::flat_hash_set<ShardId>& hosted) const {
  for (ShardId shard : hosted) {
    if (shard >= map.shards().size()) continue;
    absl::StatusOr<sm::ShardRange> local = state_machine_->Range(shard);
    if (local.ok() && local->version < map.shards()[shard].range_version) return true;
  }
  return false;
}

namespace {

// A proposal's callback that answers `done` with the command's outcome.
Node::ProposeCallback AnswerWhenApplied(std::function<void(absl::Status)> done) {
  return [done = std::move(done)](absl::StatusOr<serverpb::CommandResult> result) {
    if (!result.ok()) return done(result.status());
    done(result->code() == 0
             ? absl::OkStatus()
             : absl::Status(static_cast<absl::StatusCode>(result->code()), result->message()));
  };
}

}  // namespace

void Server::ChangeReplica(const peerpb::ReplicaChangeRequest& request,
                           std::function<void(absl::Status)> done) {
  Node* node = node_for_peers_.load(std::memory_order_acquire);
  if (node == nullptr) return done(absl::UnavailableError("the node is not running"));
  const ShardId shard = request.shard();
  if (!request.has_replace_me()) {
    spdlog::info("node {} asks: {} of shard {}", request.from_node(),
                 request.has_conf_change() ? "a membership change"
                 : request.has_transfer_leader_to()
                     ? absl::StrCat("leadership to node ", request.transfer_leader_to())
                 : request.has_split()
                     ? absl::StrCat("a split at hash ", request.split().split_hash())
                 : request.has_revoke_leases()
                     ? absl::StrCat("ending ", request.revoke_leases().leases_size(), " lease(s)")
                     : std::string("deleting the replica"),
                 shard);
  }
  switch (request.change_case()) {
    case peerpb::ReplicaChangeRequest::kConfChange:
      return node->ProposeConfChange(shard, request.conf_change(), std::move(done));
    case peerpb::ReplicaChangeRequest::kTransferLeaderTo:
      return node->TransferLeader(shard, request.transfer_leader_to(), std::move(done));
    case peerpb::ReplicaChangeRequest::kRemove:
      return node->RemoveReplica(shard, std::move(done));
    case peerpb::ReplicaChangeRequest::kSplit: {
      // Only the split this node's map has in progress (a peer cannot make
      // up a shard id or a range).
      const serverpb::SplitShard& split = request.split();
      std::shared_ptr<const ClusterMap> map = maps_->Current();
      const ShardLayout* splitting = map != nullptr ? map->Splitting() : nullptr;
      if (splitting == nullptr || splitting->id != shard ||
          splitting->split_hash != split.split_hash() || split.new_shard() != map->num_shards() ||
          split.hash_start() != splitting->hash_start || split.hash_end() != splitting->hash_end ||
          split.range_version() != splitting->range_version) {
        return done(absl::FailedPreconditionError(absl::StrCat(
            "shard ", shard, ": not the split in progress in this node's cluster map (version ",
            map != nullptr ? map->version() : 0, ")")));
      }
      serverpb::Command command;
      *command.mutable_split() = split;
      return node->Propose(shard, std::move(command), absl::Now() + absl::Seconds(10),
                           AnswerWhenApplied(std::move(done)));
    }
    case peerpb::ReplicaChangeRequest::kRevokeLeases: {
      if (shard >= kMetaShard) return done(absl::InvalidArgumentError("not a client shard"));
      serverpb::Command command;
      *command.mutable_revoke_leases() = request.revoke_leases();
      return node->Propose(shard, std::move(command), absl::Now() + absl::Seconds(10),
                           AnswerWhenApplied(std::move(done)));
    }
    case peerpb::ReplicaChangeRequest::kReplaceMe: {
      // The caller (its certificate checked by the peer service) lost its
      // data: recorded here if this node leads the metadata group.
      MetaGroup* meta = meta_group_.load(std::memory_order_acquire);
      if (meta == nullptr) return done(absl::UnavailableError("the node is starting"));
      const NodeId node = request.from_node();
      const uint64_t incarnation = request.replace_me();
      absl::StatusOr<ClusterMap> map = meta->Change([&](const ClusterMap& current) {
        if (current.ReplacedIncarnation(node) == incarnation) {
          return absl::StatusOr<ClusterMap>(absl::AlreadyExistsError("recorded already"));
        }
        return current.WithReplaced(node, incarnation);
      });
      if (map.status().code() == absl::StatusCode::kAlreadyExists) return done(absl::OkStatus());
      if (map.ok()) {
        spdlog::warn(
            "node {} lost its data and came back empty (incarnation {}): recorded as replaced "
            "(cluster map version {}); its old replicas leave their groups and it gets new ones",
            node, incarnation, map->version());
      }
      return done(map.status());
    }
    case peerpb::ReplicaChangeRequest::CHANGE_NOT_SET:
      break;
  }
  done(absl::InvalidArgumentError("no change"));
}

void Server::RecheckCertificates() const {
  for (const auto& [port, credentials] :
       {std::pair{"peer", &peer_credentials_}, std::pair{"client", &client_credentials_}}) {
    if (!credentials->has_value() || !(*credentials)->secure()) continue;
    if (absl::Status checked = (*credentials)->Recheck(); checked.ok()) {
      spdlog::info("SIGHUP: the {} port's certificate files are valid; new connections use them",
                   port);
    } else {
      spdlog::error("SIGHUP: the {} port's certificate files are not usable: {}", port,
                    std::string(checked.message()));
    }
  }
  if (http_ != nullptr && http_->tls()) {
    if (absl::Status reloaded = http_->ReloadTls(); reloaded.ok()) {
      spdlog::info("SIGHUP: the metrics endpoint uses the certificate files in place");
    } else {
      spdlog::error("SIGHUP: the metrics endpoint keeps its certificate: {}",
                    std::string(reloaded.message()));
    }
  }
}

absl::Status Server::Drain() {
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (lease_keeper_ != nullptr) lease_keeper_->Stop();
  if (history_retention_ != nullptr) history_retention_->Stop();
  if (meta_group_owned_ != nullptr) meta_group_owned_->Stop();
  if (auth_store_ != nullptr) auth_store_->Stop();  // the cache keeps the last state
  if (storage_usage_ != nullptr) storage_usage_->Stop();
  const absl::Duration drain = config_.drain_timeout;
  health_->SetDraining();

  // With one replica per shard there is nobody to hand leadership to.
  absl::Status transferred = config_.map.replication() > 1
                                 ? node_->TransferLeadershipAway(drain)
                                 : absl::FailedPreconditionError("no other replicas");
  if (transferred.ok()) {
    spdlog::info("handed off leadership of every shard");
  } else {
    spdlog::warn("leadership hand-off incomplete: {}", transferred.ToString());
  }

  // Stop accepting calls (new ones get UNAVAILABLE and go to another
  // replica) and let in-flight ones finish. Then shut the server down at
  // once: gRPC's own graceful Shutdown would also wait for clients to close
  // their idle connections. Shutdown waits for every call, and a call may
  // wait for the Node: if that takes too long, stopping the Node completes
  // them all.
  kv_service_->BeginDrain();
  if (kv_service_->WaitIdle(absl::Now() + drain)) {
    spdlog::info("in-flight client calls finished");
  } else {
    spdlog::warn("client calls still in flight after {} ms; cancelling them",
                 absl::ToInt64Milliseconds(drain));
  }
  absl::Notification shut_down;
  std::thread shutdown_thread([&] {
    client_server_->Shutdown();
    shut_down.Notify();
  });
  if (!shut_down.WaitForNotificationWithTimeout(absl::Seconds(2))) {
    spdlog::warn("client calls still pending; stopping the node to complete them");
    node_->Stop();
  }
  shutdown_thread.join();
  spdlog::info("client API stopped");
  node_->Stop();
  // A storage failure during the drain is still a storage failure.
  if (absl::Status why = Fatal(); !why.ok()) return why;
  spdlog::info("raft node stopped");
  Stop();
  return absl::OkStatus();
}

void Server::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (scheduler_ != nullptr) scheduler_->Stop();
  if (lease_keeper_ != nullptr) lease_keeper_->Stop();
  if (history_retention_ != nullptr) history_retention_->Stop();
  if (meta_group_owned_ != nullptr) meta_group_owned_->Stop();
  if (auth_store_ != nullptr) auth_store_->Stop();
  if (storage_usage_ != nullptr) storage_usage_->Stop();
  if (client_server_ != nullptr) client_server_->Shutdown();
  if (node_ != nullptr) node_->Stop();
  if (peer_server_ != nullptr) peer_server_->Shutdown();
  node_for_peers_.store(nullptr, std::memory_order_release);
  if (transport_ != nullptr) {
    transport_->Stop();
    spdlog::info("peer service and transport stopped");
  }
  if (metrics_ != nullptr) {
    metrics_->SetAdmissionSource(nullptr);
    metrics_->SetBatchSource(nullptr);
    metrics_->SetWatchSource(nullptr);
    metrics_->SetLeaseSource(nullptr);
  }
  meta_group_.store(nullptr, std::memory_order_release);
  kv_service_.reset();
  lease_service_.reset();
  auth_service_.reset();
  auth_store_for_peers_.store(nullptr, std::memory_order_release);
  auth_store_.reset();
  storage_usage_.reset();  // before the engine
  lease_check_.reset();
  lease_keeper_.reset();
  StopObservers();  // before what the scrapes read
  scheduler_.reset();
  cluster_control_.reset();
  meta_group_owned_.reset();
  node_.reset();
  history_retention_.reset();  // the node completed its proposals
  transport_.reset();
  snapshots_.reset();  // its views and stagings belong to the engine
  testing_faults_.reset();
  if (engine_ != nullptr) {
    engine_.reset();
    spdlog::info("storage closed; node {} exits", config_.node_id);
  }
}

}  // namespace tessera::server
