// tessera-admin: a minimal operator tool over the Cluster service.
//
//   tessera-admin status --endpoints=127.0.0.1:7001,127.0.0.1:7002 [--wait-ms=30000]
//       Prints each node's shards (role, term, leader, applied index) and
//       which node leads each shard, or DOWN for a node that does not answer,
//       whose NodeStatus fails (raft loop stopped or wedged) or that reports
//       its replicas stopped. Exit 0 when every endpoint answered,
//       has loaded the cluster map (epoch != 0) and every shard has a leader;
//       with --wait-ms, polls until that holds or
//       the time is up. Exit 1 otherwise, 2 for bad usage.
//   tessera-admin map --endpoints=127.0.0.1:7001
//       Prints the cluster map (members, shard ranges, replicas, leaders) of
//       the first endpoint that answers.
//   Both take --tls-ca=FILE [--tls-cert=FILE --tls-key=FILE] for a client
//   port with TLS (defaults: $TESSERA_TLS_CA, $TESSERA_TLS_CERT, $TESSERA_TLS_KEY).
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/tls.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "tessera/kv.grpc.pb.h"

namespace {

constexpr char kUsage[] =
    "usage: tessera-admin status --endpoints=HOST:PORT,... [--wait-ms=N] [--quiet]\n"
    "       tessera-admin map --endpoints=HOST:PORT,...\n"
    "       either with [--tls-ca=FILE [--tls-cert=FILE --tls-key=FILE]]\n";

struct Args {
  std::string command;
  std::vector<std::string> endpoints;
  int64_t wait_ms = 0;
  bool quiet = false;
  tessera::client::TlsOptions tls = tessera::client::TlsOptionsFromEnv();
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // from `tls`
};

bool ParseArgs(int argc, char** argv, Args* args) {
  if (argc < 2) return false;
  args->command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    if (name == "--quiet") {
      args->quiet = true;
      continue;
    }
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return false;
    }
    if (name == "--endpoints") {
      args->endpoints = absl::StrSplit(value, ',', absl::SkipWhitespace());
    } else if (name == "--tls-ca") {
      args->tls.ca_file = value;
    } else if (name == "--tls-cert") {
      args->tls.cert_file = value;
    } else if (name == "--tls-key") {
      args->tls.key_file = value;
    } else if (name == "--wait-ms") {
      if (!absl::SimpleAtoi(value, &args->wait_ms) || args->wait_ms < 0) return false;
    } else {
      return false;
    }
  }
  return !args->endpoints.empty() && (args->command == "status" || args->command == "map");
}

std::unique_ptr<tessera::v1::Cluster::Stub> Stub(const Args& a, const std::string& endpoint) {
  // Reconnect quickly: `status --wait-ms` polls nodes that are still starting.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  return tessera::v1::Cluster::NewStub(grpc::CreateCustomChannel(endpoint, a.credentials, args));
}

// One poll of every endpoint; returns whether all answered and all shards
// have a leader. Prints the report unless quiet.
bool StatusOnce(const Args& args, bool print) {
  bool all_answered = true;
  uint32_t num_shards = 0;
  std::map<uint32_t, uint64_t> leaders;  // shard -> node that says it leads
  std::string report;
  for (const std::string& endpoint : args.endpoints) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    tessera::v1::NodeStatusResponse status;
    grpc::Status s = Stub(args, endpoint)->NodeStatus(&context, {}, &status);
    // Down: unreachable, NodeStatus failing (a node whose raft loop stopped
    // or is wedged answers UNAVAILABLE), or replicas reported "stopped".
    bool stopped = false;
    for (const auto& shard : status.shards()) stopped = stopped || shard.role() == "stopped";
    if (!s.ok() || stopped) {
      all_answered = false;
      absl::StrAppend(&report, endpoint, ": DOWN (",
                      s.ok() ? "its replicas are stopped: the raft loop failed" : s.error_message(),
                      ")\n");
      continue;
    }
    // Epoch 0: the node has not loaded the map from the metadata group yet.
    if (status.epoch() == 0) all_answered = false;
    int leading = 0;
    for (const auto& shard : status.shards()) {
      if (shard.role() == "leader") {
        leaders[shard.shard()] = status.node_id();
        ++leading;
      }
    }
    absl::StrAppend(&report, endpoint, ": node ", status.node_id(), ", epoch ", status.epoch(),
                    status.epoch() == 0 ? " (cluster map not loaded yet)" : "", ", ",
                    status.shards_size(), " shard replicas, leading ", leading, "\n");
    for (const auto& shard : status.shards()) {
      absl::StrAppend(&report, "  shard ", shard.shard(), ": ", shard.role(), " term ",
                      shard.term(), " leader ", shard.leader(), " commit ", shard.commit_index(),
                      " applied ", shard.applied_index(), "\n");
    }
    if (num_shards == 0) {
      grpc::ClientContext map_context;
      map_context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
      tessera::v1::GetClusterMapResponse map;
      if (Stub(args, endpoint)->GetClusterMap(&map_context, {}, &map).ok()) {
        num_shards = map.map().num_shards();
      }
    }
  }
  bool all_led = all_answered && num_shards > 0 && leaders.size() == num_shards;
  absl::StrAppend(&report, "shards with a leader: ", leaders.size(), "/", num_shards, "\n");
  if (print) std::fputs(report.c_str(), stdout);
  return all_led;
}

int Map(const Args& args) {
  for (const std::string& endpoint : args.endpoints) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(2)));
    tessera::v1::GetClusterMapResponse response;
    if (!Stub(args, endpoint)->GetClusterMap(&context, {}, &response).ok()) continue;
    const tessera::v1::ClusterMap& map = response.map();
    std::printf("epoch %llu, %u shards, replication %u\n",
                static_cast<unsigned long long>(map.epoch()), map.num_shards(), map.replication());
    for (const auto& m : map.members()) {
      std::printf("member %llu: client %s, peer %s\n", static_cast<unsigned long long>(m.id()),
                  m.client_address().c_str(), m.peer_address().c_str());
    }
    for (const auto& s : map.shards()) {
      std::string replicas;
      for (uint64_t r : s.replicas()) absl::StrAppend(&replicas, replicas.empty() ? "" : ",", r);
      std::printf("shard %u: hashes [%016llx, %016llx], replicas %s, leader %llu\n", s.id(),
                  static_cast<unsigned long long>(s.hash_start()),
                  static_cast<unsigned long long>(s.hash_end()), replicas.c_str(),
                  static_cast<unsigned long long>(s.leader()));
    }
    return 0;
  }
  std::fprintf(stderr, "tessera-admin: no endpoint answered\n");
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      tessera::client::ChannelCredentials(args.tls);
  if (!credentials.ok()) {
    std::fprintf(stderr, "tessera-admin: %s\n",
                 std::string(credentials.status().message()).c_str());
    return 2;
  }
  args.credentials = *std::move(credentials);
  if (args.command == "map") return Map(args);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(args.wait_ms);
  while (true) {
    const bool last = absl::Now() >= deadline;
    if (StatusOnce(args, /*print=*/last && !args.quiet)) {
      if (!last && !args.quiet) StatusOnce(args, /*print=*/true);
      return 0;
    }
    if (last) return 1;
    absl::SleepFor(absl::Milliseconds(200));
  }
}
