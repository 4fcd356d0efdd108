#include "server/cluster/meta_group.h"

#include <algorithm>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera::server {
namespace {

std::string Describe(const v1::ClusterMap& map) {
  return absl::StrCat("version ", std::max<uint64_t>(map.version(), 1), ", epoch ", map.epoch(),
                      ": ", map.members_size(), " members, ", map.num_shards(),
                      " shards, replication ", map.replication());
}

}  // namespace

MetaGroup::MetaGroup(const MetaGroupOptions& options, ClusterMap expected, KvBackend* backend,
                     RemoteReader remote, ClusterMapCache* cache, ConflictHandler on_conflict,
                     Logger log)
    : options_(options),
      expected_(std::move(expected)),
      backend_(backend),
      remote_(std::move(remote)),
      cache_(cache),
      on_conflict_(std::move(on_conflict)),
      log_(std::move(log)) {
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
  if (backend_ == nullptr) {
    if (remote_ == nullptr) return absl::FailedPreconditionError("no way to read the map");
    return remote_();
  }
  absl::StatusOr<v1::GetResponse> got = backend_->Get(kMetaShard, kMetaMapKey);
  if (!got.ok()) return got.status();
  if (!got->found()) return std::optional<std::string>();
  return std::optional<std::string>(got->kv().value());
}

bool MetaGroup::LeadsMetaGroup() const {
  for (const ShardStatus& s : backend_->Status()) {
    if (s.shard == kMetaShard) return s.role == "leader";
  }
  return false;
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

  struct Outcome {
    absl::Notification done;
    absl::StatusOr<serverpb::CommandResult> result;
  };
  auto outcome = std::make_shared<Outcome>();
  backend_->Propose(kMetaShard, std::move(command), absl::Now() + options_.propose_timeout,
                    [outcome](absl::StatusOr<serverpb::CommandResult> result) {
                      outcome->result = std::move(result);
                      outcome->done.Notify();
                    });
  while (!outcome->done.WaitForNotificationWithTimeout(options_.poll_interval)) {
    if (stop_.HasBeenNotified()) return;  // `outcome` outlives us in the callback
  }
  if (!outcome->result.ok()) return;  // not leader any more, deadline: retried next poll
  if (outcome->result->code() == 0 && outcome->result->txn().succeeded()) {
    log_(absl::StrCat("stored the cluster map (", Describe(expected_.ToProto()),
                      ") in the metadata group"));
  }
}

absl::StatusOr<ClusterMap> MetaGroup::Check(const ClusterMap& expected_map,
                                            const std::string& bytes) {
  v1::ClusterMap stored;
  if (!stored.ParseFromString(bytes)) {
    return absl::DataLossError("the cluster map stored in the metadata group is corrupt");
  }
  const v1::ClusterMap expected = expected_map.ToProto();
  // Compared as this build reads it: a map written before versions existed
  // (version 0) is the same map as its version 1.
  absl::StatusOr<ClusterMap> map = ClusterMap::FromProto(stored);
  if (!map.ok() || map->ToProto().SerializeAsString() != expected.SerializeAsString()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the cluster map stored in the metadata group (", Describe(stored),
        ") differs from the one computed from this node's flags (", Describe(expected),
        "); start it with the cluster's --initial-cluster, --shards and --replication"));
  }
  return map;
}

bool MetaGroup::Accept(const std::string& bytes) {
  absl::StatusOr<ClusterMap> map = Check(expected_, bytes);
  if (!map.ok()) {
    on_conflict_(map.status());
    return false;
  }
  log_(absl::StrCat("serving by the cluster map of the metadata group (", Describe(map->ToProto()),
                    ")"));
  cache_->Set(std::make_shared<const ClusterMap>(*std::move(map)));
  return true;
}

void MetaGroup::Run() {
  do {
    absl::StatusOr<std::optional<std::string>> stored = ReadStored();
    if (stored.ok() && !stored->has_value() && backend_ != nullptr && LeadsMetaGroup()) {
      ProposeBootstrap();
    } else if (stored.ok() && stored->has_value() && **stored != last_seen_) {
      last_seen_ = **stored;
      if (!Accept(last_seen_)) return;
    }
  } while (!stop_.WaitForNotificationWithTimeout(options_.poll_interval));
}

}  // namespace tessera::server
