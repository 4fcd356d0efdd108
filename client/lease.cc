#include "client/lease.h"

#include <algorithm>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "client/core.h"
#include "client/meta_leader.h"
#include "grpcpp/client_context.h"
#include "proto/grpc_status.h"

namespace tessera::client {
namespace {

using Core = Client::Core;

// One attempt of a Lease RPC on a stub with a context.
template <typename Response>
using LeaseAttempt = std::function<grpc::Status(v1::Lease::Stub*, grpc::ClientContext*, Response*)>;

// A Lease RPC on the metadata group's leader.
template <typename Response>
absl::StatusOr<Response> OnLeaseLeader(Client& client, Core& core, const CallOptions& options,
                                       const LeaseAttempt<Response>& attempt) {
  return OnMetaLeader<Response>(
      client, core, options,
      [&attempt](Core::Node* node, grpc::ClientContext* context, Response* response) {
        return attempt(node->lease.Next(), context, response);
      });
}

}  // namespace

absl::StatusOr<LeaseGrant> Client::GrantLease(absl::Duration ttl, const CallOptions& options) {
  v1::LeaseGrantRequest request;
  request.set_ttl_seconds(absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1))));
  absl::StatusOr<v1::LeaseGrantResponse> r = OnLeaseLeader<v1::LeaseGrantResponse>(
      *this, *core_, options,
      [&](v1::Lease::Stub* stub, grpc::ClientContext* context, v1::LeaseGrantResponse* response) {
        return stub->Grant(context, request, response);
      });
  if (!r.ok()) return r.status();
  return LeaseGrant{r->id(), absl::Seconds(r->ttl_seconds())};
}

absl::Status Client::RevokeLease(uint64_t id, const CallOptions& options) {
  v1::LeaseRevokeRequest request;
  request.set_id(id);
  return OnLeaseLeader<v1::LeaseRevokeResponse>(
             *this, *core_, options,
             [&](v1::Lease::Stub* stub, grpc::ClientContext* context,
                 v1::LeaseRevokeResponse* response) {
               return stub->Revoke(context, request, response);
             })
      .status();
}

absl::StatusOr<LeaseTimeToLive> Client::LeaseTtl(uint64_t id, const CallOptions& options) {
  v1::LeaseTimeToLiveRequest request;
  request.set_id(id);
  absl::StatusOr<v1::LeaseTimeToLiveResponse> r = OnLeaseLeader<v1::LeaseTimeToLiveResponse>(
      *this, *core_, options,
      [&](v1::Lease::Stub* stub, grpc::ClientContext* context,
          v1::LeaseTimeToLiveResponse* response) {
        return stub->TimeToLive(context, request, response);
      });
  if (!r.ok()) return r.status();
  return LeaseTimeToLive{r->id(), absl::Seconds(r->granted_ttl_seconds()),
                         absl::Milliseconds(r->remaining_ms())};
}

absl::StatusOr<std::vector<uint64_t>> Client::Leases(const CallOptions& options) {
  absl::StatusOr<v1::LeaseListResponse> r = OnLeaseLeader<v1::LeaseListResponse>(
      *this, *core_, options,
      [&](v1::Lease::Stub* stub, grpc::ClientContext* context, v1::LeaseListResponse* response) {
        return stub->List(context, {}, response);
      });
  if (!r.ok()) return r.status();
  return std::vector<uint64_t>(r->ids().begin(), r->ids().end());
}

absl::StatusOr<absl::Duration> Client::RenewLease(uint64_t id, const CallOptions& options) {
  absl::StatusOr<v1::LeaseKeepAliveResponse> r = OnLeaseLeader<v1::LeaseKeepAliveResponse>(
      *this, *core_, options,
      [&](v1::Lease::Stub* stub, grpc::ClientContext* context,
          v1::LeaseKeepAliveResponse* response) {
        // One renewal per stream: a stream of its own bounds it by the
        // attempt's deadline.
        auto stream = stub->KeepAlive(context);
        v1::LeaseKeepAliveRequest request;
        request.set_id(id);
        if (stream->Write(request)) stream->WritesDone();
        const bool read = stream->Read(response);
        grpc::Status status = stream->Finish();
        if (status.ok() && !read) {
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the renewal got no answer");
        }
        return status;
      });
  if (!r.ok()) return r.status();
  if (r->ttl_seconds() <= 0) {
    return absl::NotFoundError(absl::StrCat("lease ", id, " not found (it ended)"));
  }
  return absl::Seconds(r->ttl_seconds());
}

absl::StatusOr<std::unique_ptr<KeepAlive>> Client::KeepLeaseAlive(uint64_t id) {
  const absl::Time sent = absl::Now();
  absl::StatusOr<absl::Duration> ttl = RenewLease(id);
  if (!ttl.ok()) return ttl.status();
  return std::make_unique<KeepAlive>(this, id, *ttl, sent + *ttl);
}

KeepAlive::KeepAlive(Client* client, uint64_t id, absl::Duration ttl, absl::Time valid_until)
    : client_(client), id_(id), ttl_(ttl), valid_until_(valid_until) {
  thread_ = std::thread([this] { Run(); });
}

KeepAlive::~KeepAlive() { Stop(); }

void KeepAlive::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

absl::Time KeepAlive::valid_until() const {
  absl::MutexLock lock(&mu_);
  return valid_until_;
}

bool KeepAlive::lost() const {
  absl::MutexLock lock(&mu_);
  return lost_ || absl::Now() >= valid_until_;
}

bool KeepAlive::WaitLost(absl::Time deadline) const {
  absl::MutexLock lock(&mu_);
  while (!lost_) {
    const absl::Time until = std::min(deadline, valid_until_);
    if (absl::Now() >= until) break;
    mu_.AwaitWithDeadline(absl::Condition(&lost_), until);
  }
  return lost_ || absl::Now() >= valid_until_;
}

void KeepAlive::Run() {
  absl::Time next = absl::Now() + ttl_ / 3;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithDeadline(absl::Condition(&stopping), next);
      if (stop_ || lost_) return;
    }
    const absl::Time sent = absl::Now();
    CallOptions options;
    // Past valid_until a renewal is too late to matter.
    options.deadline =
        std::max(sent + absl::Milliseconds(200), std::min(valid_until(), sent + ttl_ / 3));
    absl::StatusOr<absl::Duration> ttl = client_->RenewLease(id_, options);
    absl::MutexLock lock(&mu_);
    if (ttl.ok()) {
      valid_until_ = std::max(valid_until_, sent + *ttl);
      next = sent + *ttl / 3;
    } else if (absl::IsNotFound(ttl.status()) || absl::Now() >= valid_until_) {
      lost_ = true;  // ended, or possibly ended: final
      return;
    } else {
      next = absl::Now() + absl::Milliseconds(200);
    }
  }
}

}  // namespace tessera::client
