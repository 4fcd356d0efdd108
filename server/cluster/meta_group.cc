#include "server/cluster/meta_group.h"

#include <algorithm>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera::server {
namespace {

// Polls between two calls of on_map with an unchanged map.
constexpr int kRetellEvery = 10;

std::string Describe(const v1::ClusterMap& map) {
  return absl::StrCat("version ", std::max<uint64_t>(map.version(), 1), ", epoch ", map.epoch(),
                      ": ", map.members_size(), " members, ", map.num_shards(),
                      " shards, replication ", map.replication());
}

}  // namespace

MetaGroup::MetaGroup(const MetaGroupOptions& options, ClusterMap expected, KvBackend* backend,
                     RemoteReader remote, ClusterMapCache* cache, ConflictHandler on_conflict,
                     Logger log, MapHandler on_map)
    : options_(options),
      expected_(std::move(expected)),
      backend_(backend),
      remote_(std::move(remote)),
      cache_(cache),
      on_conflict_(std::move(on_conflict)),
      log_(std::move(log)),
      on_map_(std::move(on_map)) {
  thread_ = std::thread([this] { Run(); });
}

MetaGroup::~MetaGroup() { Stop(); }

void MetaGroup::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  if (thread_.joinable()) thread_.join();
}

std::optional<v1::ClusterMap> MetaGroup::ReadLocal(const KvBackend& backend) {
  absl::StatusOr<v1::GetResponse> got = backend.Get(kMetaShard, kMetaMapKey);
  if (!got.ok() || !got->found()) return std::nullopt;
  v1::ClusterMap map;
  if (!map.ParseFromString(got->kv().value())) return std::nullopt;
  return map;
}

absl::StatusOr<std::optional<std::string>> MetaGroup::ReadStored() const {
  if (const std::optional<ShardStatus> local = LocalReplica()) {
    absl::StatusOr<v1::GetResponse> got = backend_->Get(kMetaShard, kMetaMapKey);
    if (got.ok() && got->found()) return std::optional<std::string>(got->kv().value());
    // Nothing here yet: a founder's new group (its leader bootstraps it),
    // or a replica still waiting for its first snapshot (other members
    // have the map).
    if (remote_ == nullptr || local->role == "leader") {
      if (!got.ok()) return got.status();
      return std::optional<std::string>();
    }
  }
  if (remote_ == nullptr) return absl::FailedPreconditionError("no way to read the map");
  return remote_();
}

std::optional<ShardStatus> MetaGroup::LocalReplica() const {
  if (backend_ == nullptr) return std::nullopt;
  return backend_->StatusOf(kMetaShard);
}

bool MetaGroup::LeadsMetaGroup() const {
  const std::optional<ShardStatus> local = LocalReplica();
  return local.has_value() && local->role == "leader";
}

void MetaGroup::ProposeBootstrap() {
  serverpb::Command command;
  v1::TxnRequest* txn = command.mutable_txn();
  v1::Compare* absent = txn->add_compares();
  absent->set_key(kMetaMapKey);
  absent->set_target(v1::Compare::TARGET_EXISTS);
  absent->set_op(v1::Compare::OP_NOT_EQUAL);
  v1::PutRequest* put = txn->add_success()->mutable_put();
  put->set_key(kMetaMapKey);
  put->set_value(expected_.ToProto().SerializeAsString());

  absl::StatusOr<serverpb::CommandResult> result = ProposeAndWait(std::move(command));
  if (!result.ok()) return;  // not leader any more, deadline: retried next poll
  if (result->code() == 0 && result->txn().succeeded()) {
    log_(absl::StrCat("stored the cluster map (", Describe(expected_.ToProto()),
                      ") in the metadata group"));
  }
}

absl::StatusOr<ClusterMap> MetaGroup::Check(const ClusterMap& expected_map, NodeId self,
                                            const std::string& bytes) {
  v1::ClusterMap stored;
  if (!stored.ParseFromString(bytes)) {
    return absl::DataLossError("the cluster map stored in the metadata group is corrupt");
  }
  absl::StatusOr<ClusterMap> map = ClusterMap::FromProto(stored);
  if (map.ok() && map->version() > 1) {
    // A changed map rules; the flags only bootstrapped it.
    if (map->FindMember(self) == nullptr) {
      return absl::NotFoundError(
          absl::StrCat("node ", self,
                       " is not a member of the cluster map stored in the metadata "
                       "group (",
                       Describe(stored), "): it was removed from the cluster"));
    }
    return map;
  }
  const v1::ClusterMap expected = expected_map.ToProto();
  // Compared as this build reads it: a map written before versions existed
  // (version 0) is the same map as its version 1.
  if (!map.ok() || map->ToProto().SerializeAsString() != expected.SerializeAsString()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the cluster map stored in the metadata group (", Describe(stored),
        ") differs from the one computed from this node's flags (", Describe(expected),
        "); start it with the cluster's --initial-cluster, --shards and --replication"));
  }
  return map;
}

absl::StatusOr<ClusterMap> MetaGroup::Change(const Mutation& mutate) const {
  if (!LocalReplica().has_value()) {
    // Another member leads it (callers ask each member in turn).
    return absl::UnavailableError("this node holds no replica of the metadata group");
  }
  absl::StatusOr<v1::GetResponse> got = backend_->Get(kMetaShard, kMetaMapKey);
  if (!got.ok()) return got.status();
  if (!got->found()) return absl::UnavailableError("no cluster map stored yet");
  const std::string& current_bytes = got->kv().value();
  absl::StatusOr<ClusterMap> current = Check(expected_, options_.self, current_bytes);
  if (!current.ok()) return current.status();
  absl::StatusOr<ClusterMap> next = mutate(*current);
  if (!next.ok()) return next.status();
  if (next->version() != current->version() + 1) {
    return absl::InternalError(absl::StrCat("a change of cluster map version ", current->version(),
                                            " made version ", next->version()));
  }

  serverpb::Command command;
  v1::TxnRequest* txn = command.mutable_txn();
  v1::Compare* unchanged = txn->add_compares();
  unchanged->set_key(kMetaMapKey);
  unchanged->set_target(v1::Compare::TARGET_VALUE);
  unchanged->set_op(v1::Compare::OP_EQUAL);
  unchanged->set_value(current_bytes);
  v1::PutRequest* put = txn->add_success()->mutable_put();
  put->set_key(kMetaMapKey);
  put->set_value(next->ToProto().SerializeAsString());
  absl::StatusOr<serverpb::CommandResult> result = ProposeAndWait(std::move(command));
  if (!result.ok()) return result.status();
  if (result->code() != 0) {
    return absl::Status(static_cast<absl::StatusCode>(result->code()), result->message());
  }
  if (!result->txn().succeeded()) {
    return absl::AbortedError(
        absl::StrCat("the cluster map changed while version ", next->version(), " was proposed"));
  }
  return next;
}

absl::StatusOr<serverpb::CommandResult> MetaGroup::ProposeAndWait(serverpb::Command command) const {
  return server::ProposeAndWait(*backend_, kMetaShard, std::move(command),
                                absl::Now() + options_.propose_timeout, stop_);
}

bool MetaGroup::Accept(const std::string& bytes) {
  absl::StatusOr<ClusterMap> map = Check(expected_, options_.self, bytes);
  if (!map.ok()) {
    on_conflict_(map.status());
    return false;
  }
  std::shared_ptr<const ClusterMap> current = cache_->Current();
  if (current != nullptr && current->version() >= map->version()) return true;  // a lagging read
  auto next = std::make_shared<const ClusterMap>(*std::move(map));
  // Told before the services serve by it, so that the node hosts what the
  // map routes to it.
  if (on_map_ != nullptr) on_map_(next);
  cache_->Set(next);
  log_(absl::StrCat("serving by the cluster map of the metadata group (", Describe(next->ToProto()),
                    ")"));
  return true;
}

void MetaGroup::Run() {
  int polls = 0;
  do {
    absl::StatusOr<std::optional<std::string>> stored = ReadStored();
    if (stored.ok() && !stored->has_value() && LeadsMetaGroup()) {
      ProposeBootstrap();
    } else if (stored.ok() && stored->has_value() && **stored != last_seen_) {
      last_seen_ = **stored;
      if (!Accept(last_seen_)) return;
    } else if (++polls % kRetellEvery == 0) {
      if (remote_ != nullptr && LocalReplica().has_value() && !LeadsMetaGroup()) {
        // A local replica that follows may have been removed from the group
        // (its replica moved away, or the whole node was removed) and
        // stopped hearing of new maps: now and then ask the others too
        // (Accept keeps the newer).
        absl::StatusOr<std::optional<std::string>> remote = remote_();
        if (remote.ok() && remote->has_value() && **remote != last_seen_) {
          last_seen_ = **remote;
          if (!Accept(last_seen_)) return;
        }
      }
      // Told again now and then: what it could not do at first (or what
      // was undone since) gets done.
      if (on_map_ != nullptr) {
        if (std::shared_ptr<const ClusterMap> current = cache_->Current()) on_map_(current);
      }
    }
  } while (!stop_.WaitForNotificationWithTimeout(options_.poll_interval));
}

}  // namespace tessera::server
