#include "server/cluster/lease_keeper.h"

#include <algorithm>
#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "proto/status_macros.h"
#include "server/cluster/meta_group.h"

namespace tessera::server {

namespace {

// RevokeLeases calls in flight at once (one thread each) in a fan-out.
constexpr size_t kMaxParallelRevokes = 16;

}  // namespace

MonotonicClock SteadyClock() {
  return [] { return absl::FromChrono(std::chrono::steady_clock::now().time_since_epoch()); };
}

std::string LeaseRecordKey(uint64_t id) {
  return absl::StrFormat("%s%016x", kLeaseRecordPrefix, id);
}

LeaseKeeper::LeaseKeeper(const LeaseKeeperOptions& options, KvBackend* backend,
                         LeaseRevoker* revoker, MonotonicClock clock)
    : options_(options), backend_(backend), revoker_(revoker), clock_(std::move(clock)) {
  if (options_.tick > absl::ZeroDuration()) thread_ = std::thread([this] { Run(); });
}

LeaseKeeper::~LeaseKeeper() { Stop(); }

void LeaseKeeper::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  stop_.Notify();
  Wake();
  if (thread_.joinable()) thread_.join();
  FailWaiters(absl::UnavailableError("the node is stopping"));
}

void LeaseKeeper::Run() {
  while (!stop_.HasBeenNotified()) {
    {
      // Until the next tick, or at once when a Revoke waits.
      absl::MutexLock lock(&wake_mu_);
      wake_mu_.AwaitWithTimeout(absl::Condition(&wake_), options_.tick);
      wake_ = false;
    }
    if (!stop_.HasBeenNotified()) Tick();
  }
}

void LeaseKeeper::Wake() {
  absl::MutexLock lock(&wake_mu_);
  wake_ = true;
}

absl::Status LeaseKeeper::Ready() const {
  if (stopped_) return absl::UnavailableError("the node is stopping; ask another member");
  if (term_ == 0) {
    return absl::UnavailableError(
        "this node does not lead the metadata group, which keeps the leases");
  }
  if (!loaded_) return absl::UnavailableError("the lease table is loading; try again");
  return absl::OkStatus();
}

void LeaseKeeper::Tick() {
  const std::optional<ShardStatus> meta = backend_->StatusOf(kMetaShard);
  const bool leading = meta.has_value() && meta->role == "leader";
  bool lost = false;
  uint64_t load = 0;
  {
    absl::MutexLock lock(&mu_);
    const uint64_t term = leading ? meta->term : 0;
    if (term != term_) {
      lost = term_ != 0;
      term_ = term;
      loaded_ = false;
      leases_.clear();
    }
    if (leading && !loaded_) load = term_;
  }
  if (lost) FailWaiters(absl::UnavailableError("this node lost the lead of the metadata group"));
  if (!leading) return;
  if (load != 0) return Load(load);
  EndExpired();
  FinishRevoking();
  ExpireWaiters();
}

void LeaseKeeper::Load(uint64_t term) {
  // After the barrier every entry of earlier terms is applied here (the
  // leader commits them with its first entry), so the scan sees every
  // record any earlier leader wrote.
  if (!ReadBarrierAndWait(*backend_, kMetaShard, absl::Now() + options_.propose_timeout, stop_)
           .ok()) {
    return;  // next tick
  }
  std::map<uint64_t, Lease> loaded;
  v1::ScanRequest scan;
  scan.set_prefix(kLeaseRecordPrefix);
  scan.set_limit(10000);
  const absl::Duration now = clock_();
  for (int pages = 0; pages < 1000; ++pages) {
    absl::StatusOr<v1::ScanResponse> page = backend_->Scan(kMetaShard, scan);
    if (!page.ok()) return;
    for (const v1::KeyValue& kv : page->kvs()) {
      uint64_t id = 0;
      if (!absl::SimpleHexAtoi(absl::string_view(kv.key()).substr(sizeof(kLeaseRecordPrefix) - 1),
                               &id)) {
        continue;  // not a lease record
      }
      serverpb::LeaseRecord record;
      Lease& lease = loaded[id];
      if (!record.ParseFromString(kv.value()) || record.id() != id) {
        lease.revoking = true;  // unreadable: ended, so that its keys go
        continue;
      }
      lease.ttl_seconds = record.ttl_seconds();
      lease.ends = now + absl::Seconds(record.ttl_seconds());  // the full TTL
      lease.revoking = record.revoking();
      lease.owner = record.owner();
    }
    if (page->continuation().empty()) break;
    scan.set_continuation(page->continuation());
  }
  absl::MutexLock lock(&mu_);
  if (term_ != term) return;
  leases_ = std::move(loaded);
  loaded_ = true;
}

serverpb::Command LeaseKeeper::RecordsCommand(const std::vector<uint64_t>& ids,
                                              const std::map<uint64_t, Lease>& table, bool erase) {
  serverpb::Command command;
  v1::TxnRequest* txn = command.mutable_txn();
  for (uint64_t id : ids) {
    v1::TxnOp* op = txn->add_success();
    if (erase) {
      op->mutable_delete_()->set_key(LeaseRecordKey(id));
      continue;
    }
    serverpb::LeaseRecord record;
    record.set_id(id);
    auto it = table.find(id);
    record.set_ttl_seconds(it != table.end() ? it->second.ttl_seconds : 0);
    if (it != table.end()) record.set_owner(it->second.owner);
    record.set_revoking(true);
    op->mutable_put()->set_key(LeaseRecordKey(id));
    op->mutable_put()->set_value(record.SerializeAsString());
  }
  return command;
}

void LeaseKeeper::EndExpired() {
  std::vector<uint64_t> ids;
  serverpb::Command command;
  uint64_t term = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!Ready().ok()) return;
    const absl::Duration now = clock_();
    for (const auto& [id, lease] : leases_) {
      if (lease.revoking || lease.ends > now) continue;
      ids.push_back(id);
      if (ids.size() >= options_.max_revoke_batch) break;
    }
    if (ids.empty()) return;
    term = term_;
    command = RecordsCommand(ids, leases_, /*erase=*/false);
  }
  absl::StatusOr<serverpb::CommandResult> result = ProposeAndWait(
      *backend_, kMetaShard, std::move(command), absl::Now() + options_.propose_timeout, stop_);
  if (!result.ok() || result->code() != 0) return;  // next tick
  absl::MutexLock lock(&mu_);
  if (term_ != term) return;
  for (uint64_t id : ids) {
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.revoking) continue;
    it->second.revoking = true;
    ++stats_.expired_total;
  }
}

void LeaseKeeper::FinishRevoking() {
  std::vector<uint64_t> ids;
  uint64_t term = 0;
  {
    absl::MutexLock lock(&mu_);
    if (!Ready().ok()) return;
    for (const auto& [id, lease] : leases_) {
      if (!lease.revoking) continue;
      ids.push_back(id);
      if (ids.size() >= options_.max_revoke_batch) break;
    }
    if (ids.empty()) return;
    term = term_;
  }
  // The map as stored, after a barrier: a split is recorded there before
  // any shard applies it, so with none in progress at the start and the
  // same map at the end, no shard appeared in between that could hold keys
  // of these leases.
  auto stored_map = [&]() -> std::optional<ClusterMap> {
    if (!ReadBarrierAndWait(*backend_, kMetaShard, absl::Now() + options_.propose_timeout, stop_)
             .ok()) {
      return std::nullopt;
    }
    std::optional<v1::ClusterMap> proto = MetaGroup::ReadLocal(*backend_);
    if (!proto.has_value()) return std::nullopt;
    absl::StatusOr<ClusterMap> map = ClusterMap::FromProto(*proto);
    if (!map.ok()) return std::nullopt;
    return *std::move(map);
  };
  std::optional<ClusterMap> before = stored_map();
  if (!before.has_value() || before->Splitting() != nullptr) return;
  // The shards in parallel, kMaxParallelRevokes at a time.
  const std::vector<ShardLayout>& shards = before->shards();
  for (size_t first = 0; first < shards.size(); first += kMaxParallelRevokes) {
    if (stop_.HasBeenNotified()) return;
    std::vector<std::future<absl::Status>> revoked;
    for (size_t i = first; i < std::min(shards.size(), first + kMaxParallelRevokes); ++i) {
      revoked.push_back(std::async(std::launch::async, [this, &shards, &ids, i] {
        return revoker_->Revoke(shards[i], ids);
      }));
    }
    bool all = true;
    for (std::future<absl::Status>& r : revoked) all = r.get().ok() && all;
    if (!all) return;  // next tick
  }
  std::optional<ClusterMap> after = stored_map();
  if (!after.has_value() || after->version() != before->version()) return;
  absl::StatusOr<serverpb::CommandResult> result =
      ProposeAndWait(*backend_, kMetaShard, RecordsCommand(ids, {}, /*erase=*/true),
                     absl::Now() + options_.propose_timeout, stop_);
  if (!result.ok() || result->code() != 0) return;
  std::vector<RevokeWaiter> finished;
  {
    absl::MutexLock lock(&mu_);
    if (term_ != term) return;
    for (uint64_t id : ids) {
      leases_.erase(id);
      auto it = waiters_.find(id);
      if (it == waiters_.end()) continue;
      for (RevokeWaiter& waiter : it->second) finished.push_back(std::move(waiter));
      waiters_.erase(it);
    }
  }
  for (RevokeWaiter& waiter : finished) waiter.done(absl::OkStatus());
}

void LeaseKeeper::ExpireWaiters() {
  std::vector<RevokeWaiter> late;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      auto& list = it->second;
      auto keep = std::partition(list.begin(), list.end(),
                                 [now](const RevokeWaiter& w) { return w.deadline > now; });
      for (auto w = keep; w != list.end(); ++w) late.push_back(std::move(*w));
      list.erase(keep, list.end());
      it = list.empty() ? waiters_.erase(it) : std::next(it);
    }
  }
  for (RevokeWaiter& waiter : late) {
    waiter.done(absl::DeadlineExceededError(
        "the lease ended; its keys are still being deleted from the shards"));
  }
}

void LeaseKeeper::FailWaiters(const absl::Status& status) {
  std::map<uint64_t, std::vector<RevokeWaiter>> all;
  {
    absl::MutexLock lock(&mu_);
    all.swap(waiters_);
  }
  for (auto& [id, list] : all) {
    for (RevokeWaiter& waiter : list) waiter.done(status);
  }
}

void LeaseKeeper::Grant(int64_t ttl_seconds, absl::Time deadline,
                        std::function<void(absl::StatusOr<v1::LeaseGrantResponse>)> done,
                        std::string owner) {
  if (ttl_seconds < 0) return done(absl::InvalidArgumentError("ttl_seconds must be >= 0"));
  const int64_t ttl = std::clamp(ttl_seconds, options_.min_ttl_seconds, options_.max_ttl_seconds);
  uint64_t id = 0;
  uint64_t term = 0;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status ready = Ready(); !ready.ok()) return done(ready);
    if (leases_.size() >= options_.max_leases) {
      return done(absl::ResourceExhaustedError(
          absl::StrCat("the cluster holds ", leases_.size(), " leases, its limit")));
    }
    // Random ids (1 .. 2^63-1, printable as int64): unguessable, and never
    // one in the table (nor, in practice, one that ended).
    do {
      id = absl::Uniform<uint64_t>(rng_, 1, uint64_t{1} << 63);
    } while (leases_.contains(id));
    // Reserved until committed (not expired meanwhile: it ends far away).
    leases_[id] = Lease{ttl, clock_() + absl::Hours(24 * 365), false, owner};
    term = term_;
  }
  serverpb::Command command;
  serverpb::LeaseRecord record;
  record.set_id(id);
  record.set_ttl_seconds(ttl);
  record.set_owner(std::move(owner));
  command.mutable_put()->set_key(LeaseRecordKey(id));
  command.mutable_put()->set_value(record.SerializeAsString());
  backend_->Propose(
      kMetaShard, std::move(command), deadline,
      [this, id, ttl, term, done = std::move(done)](absl::StatusOr<serverpb::CommandResult> r) {
        absl::Status status =
            r.ok() ? absl::Status(static_cast<absl::StatusCode>(r->code()), r->message())
                   : r.status();
        {
          absl::MutexLock lock(&mu_);
          auto it = leases_.find(id);
          if (term_ != term) {
            // The next leader loads it from the record if it was committed.
            if (status.ok()) status = absl::UnavailableError("the metadata group's leader changed");
          } else if (it != leases_.end()) {
            if (status.ok()) {
              it->second.ends = clock_() + absl::Seconds(ttl);
              ++stats_.granted_total;
            } else {
              // Not committed (or unknown): it ends at once, so that a
              // record committed after all is cleaned up.
              it->second.ends = clock_();
            }
          }
        }
        if (!status.ok()) return done(status);
        v1::LeaseGrantResponse response;
        response.set_id(id);
        response.set_ttl_seconds(ttl);
        done(std::move(response));
      });
}

void LeaseKeeper::Revoke(uint64_t id, absl::Time deadline, std::function<void(absl::Status)> done) {
  uint64_t term = 0;
  serverpb::Command command;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status ready = Ready(); !ready.ok()) return done(ready);
    auto it = leases_.find(id);
    if (it == leases_.end())
      return done(absl::NotFoundError(absl::StrCat("lease ", id, " not found")));
    if (it->second.revoking) {
      waiters_[id].push_back(RevokeWaiter{deadline, std::move(done)});
      return;
    }
    term = term_;
    command = RecordsCommand({id}, leases_, /*erase=*/false);
  }
  backend_->Propose(kMetaShard, std::move(command), deadline,
                    [this, id, term, deadline,
                     done = std::move(done)](absl::StatusOr<serverpb::CommandResult> r) {
                      absl::Status status =
                          r.ok()
                              ? absl::Status(static_cast<absl::StatusCode>(r->code()), r->message())
                              : r.status();
                      if (!status.ok()) return done(status);
                      bool waiting = false;
                      bool stopping = false;
                      {
                        absl::MutexLock lock(&mu_);
                        // Stopped: no thread would finish or expire a waiter.
                        stopping = stopped_;
                        auto it = leases_.find(id);
                        if (!stopping && term_ == term && it != leases_.end()) {
                          if (!it->second.revoking) ++stats_.revoked_total;
                          it->second.revoking = true;
                          waiters_[id].push_back(RevokeWaiter{deadline, done});
                          waiting = true;
                        }
                      }
                      if (waiting) return Wake();  // its keys go now, not at the next tick
                      if (stopping) {
                        return done(absl::UnavailableError(
                            "the node is stopping; the lease has ended and the next leader of "
                            "the metadata group deletes its keys"));
                      }
                      // Ended meanwhile (its record is gone) or the leader changed (the
                      // next one ends it from the record).
                      done(absl::OkStatus());
                    });
}

void LeaseKeeper::KeepAlive(uint64_t id, absl::Time deadline,
                            std::function<void(absl::StatusOr<int64_t>)> done) {
  uint64_t term = 0;
  absl::Duration received;
  {
    absl::MutexLock lock(&mu_);
    if (absl::Status ready = Ready(); !ready.ok()) return done(ready);
    received = clock_();
    auto it = leases_.find(id);
    if (it == leases_.end() || it->second.revoking || it->second.ends <= received) {
      return done(absl::NotFoundError(absl::StrCat("lease ", id, " not found")));
    }
    term = term_;
  }
  backend_->ReadBarrier(
      kMetaShard, /*lease=*/false, deadline,
      [this, id, term, received, done = std::move(done)](absl::Status barrier) {
        if (!barrier.ok()) return done(barrier);
        absl::StatusOr<int64_t> ttl;
        {
          absl::MutexLock lock(&mu_);
          auto it = leases_.find(id);
          if (term_ != term) {
            ttl = absl::UnavailableError("the metadata group's leader changed");
          } else if (it == leases_.end() || it->second.revoking || it->second.ends <= received) {
            ttl = absl::NotFoundError(absl::StrCat("lease ", id, " not found"));
          } else {
            it->second.ends =
                std::max(it->second.ends, received + absl::Seconds(it->second.ttl_seconds));
            ++stats_.keepalives_total;
            ttl = it->second.ttl_seconds;
          }
        }
        done(std::move(ttl));
      });
}

absl::StatusOr<v1::LeaseTimeToLiveResponse> LeaseKeeper::TimeToLive(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(Ready());
  const absl::Duration now = clock_();
  auto it = leases_.find(id);
  if (it == leases_.end() || it->second.revoking || it->second.ends <= now) {
    return absl::NotFoundError(absl::StrCat("lease ", id, " not found"));
  }
  v1::LeaseTimeToLiveResponse response;
  response.set_id(id);
  response.set_granted_ttl_seconds(it->second.ttl_seconds);
  response.set_remaining_ms(absl::ToInt64Milliseconds(it->second.ends - now));
  return response;
}

absl::StatusOr<std::vector<uint64_t>> LeaseKeeper::List(
    const std::optional<std::string>& owner) const {
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(Ready());
  const absl::Duration now = clock_();
  std::vector<uint64_t> ids;
  for (const auto& [id, lease] : leases_) {
    if (owner.has_value() && lease.owner != *owner) continue;
    if (!lease.revoking && lease.ends > now) ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::string> LeaseKeeper::Owner(uint64_t id) const {
  absl::MutexLock lock(&mu_);
  TESSERA_RETURN_IF_ERROR(Ready());
  auto it = leases_.find(id);
  if (it == leases_.end() || it->second.revoking || it->second.ends <= clock_()) {
    return absl::NotFoundError(absl::StrCat("lease ", id, " not found"));
  }
  return it->second.owner;
}

LeaseKeeper::Stats LeaseKeeper::stats() const {
  absl::MutexLock lock(&mu_);
  Stats stats = stats_;
  stats.live = 0;
  for (const auto& [id, lease] : leases_) stats.live += lease.revoking ? 0 : 1;
  return stats;
}

}  // namespace tessera::server
