#include "tests/client/fake_cluster.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"

namespace tessera::client::testing {

absl::Status NotLeaderError(uint64_t leader_node, const std::string& leader_address) {
  absl::Status s = absl::UnavailableError("not the leader");
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(leader_node);
  detail.mutable_not_leader()->set_leader_address(leader_address);
  SetErrorDetail(s, detail);
  return s;
}

class FakeCluster::KvImpl final : public v1::KV::Service {
 public:
  KvImpl(FakeCluster* cluster, int node) : c_(cluster), node_(node) {}

  grpc::Status Put(grpc::ServerContext* ctx, const v1::PutRequest* req,
                   v1::PutResponse* resp) override {
    return Serve(ctx, "Put", req->header(), {req->key()}, true, resp,
                 [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c_->mu_) {
                   Value& v = c_->data_[req->key()];
                   resp->set_had_previous(v.version > 0);
                   v.value = req->value();
                   v.version += 1;
                   resp->set_version(v.version);
                   c_->applies_[req->key()]++;
                 });
  }

  grpc::Status Batch(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<v1::BatchResponse, v1::BatchRequest>* stream) override {
    if (!c_->options_.serve_batch) {
      return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this fake serves no KV.Batch");
    }
    v1::BatchRequest request;
    while (stream->Read(&request)) {
      {
        absl::MutexLock lock(&c_->mu_);
        ++c_->batch_messages_;
      }
      v1::BatchResponse response;
      for (const v1::BatchOp& op : request.ops()) {
        v1::BatchResult* r = response.add_results();
        r->set_id(op.id());
        grpc::Status status;
        switch (op.op_case()) {
          case v1::BatchOp::kPut:
            status = Put(ctx, &op.put(), r->mutable_put());
            break;
          case v1::BatchOp::kGet:
            status = Get(ctx, &op.get(), r->mutable_get());
            break;
          case v1::BatchOp::kDelete:
            status = Delete(ctx, &op.delete_(), r->mutable_delete_());
            break;
          case v1::BatchOp::kTxn:
            status = Txn(ctx, &op.txn(), r->mutable_txn());
            break;
          case v1::BatchOp::kScan:
            status = Scan(ctx, &op.scan(), r->mutable_scan());
            break;
          case v1::BatchOp::OP_NOT_SET:
            status = grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no op");
            break;
        }
        if (!status.ok()) *r->mutable_error() = ToRpcStatus(FromGrpcStatus(status));
      }
      if (!stream->Write(response)) break;
    }
    return grpc::Status::OK;
  }

  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest* req,
                      v1::DeleteResponse* resp) override {
    return Serve(ctx, "Delete", req->header(), {req->key()}, true, resp,
                 [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c_->mu_) {
                   resp->set_deleted(c_->data_.erase(req->key()) > 0);
                   c_->applies_[req->key()]++;
                 });
  }

  grpc::Status Get(grpc::ServerContext* ctx, const v1::GetRequest* req,
                   v1::GetResponse* resp) override {
    return Serve(ctx, "Get", req->header(), {req->key()}, false, resp,
                 [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c_->mu_) {
                   auto it = c_->data_.find(req->key());
                   if (it == c_->data_.end()) return;
                   resp->set_found(true);
                   resp->mutable_kv()->set_key(req->key());
                   resp->mutable_kv()->set_value(it->second.value);
                   resp->mutable_kv()->set_version(it->second.version);
                 });
  }

  grpc::Status Scan(grpc::ServerContext* ctx, const v1::ScanRequest* req,
                    v1::ScanResponse* resp) override {
    return Serve(
        ctx, "Scan", req->header(), {}, false, resp,
        [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c_->mu_) {
          const uint32_t limit = req->limit() == 0 ? 1000 : req->limit();
          auto it = req->continuation().empty() ? c_->data_.lower_bound(req->start())
                                                : c_->data_.upper_bound(req->continuation());
          for (; it != c_->data_.end(); ++it) {
            if (!req->end().empty() && it->first >= req->end()) break;
            if (ShardForKey(it->first, c_->options_.shards) != req->header().shard()) {
              continue;
            }
            if (static_cast<uint32_t>(resp->kvs_size()) == limit) {
              resp->set_continuation(resp->kvs(resp->kvs_size() - 1).key());
              break;
            }
            v1::KeyValue* kv = resp->add_kvs();
            kv->set_key(it->first);
            kv->set_value(it->second.value);
            kv->set_version(it->second.version);
          }
        },
        req->continuation());
  }

  grpc::Status Txn(grpc::ServerContext* ctx, const v1::TxnRequest* req,
                   v1::TxnResponse* resp) override {
    std::vector<std::string> keys;
    for (const auto& c : req->compares()) keys.push_back(c.key());
    return Serve(ctx, "Txn", req->header(), keys, true, resp,
                 [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(c_->mu_) {
                   bool ok = true;
                   for (const v1::Compare& cmp : req->compares()) {
                     auto it = c_->data_.find(cmp.key());
                     const bool exists = it != c_->data_.end();
                     bool holds = false;
                     if (cmp.target() == v1::Compare::TARGET_EXISTS) {
                       holds = (cmp.op() == v1::Compare::OP_EQUAL) == exists;
                     } else if (cmp.target() == v1::Compare::TARGET_VERSION) {
                       const uint64_t v = exists ? it->second.version : 0;
                       holds = cmp.op() == v1::Compare::OP_EQUAL       ? v == cmp.version()
                               : cmp.op() == v1::Compare::OP_NOT_EQUAL ? v != cmp.version()
                               : cmp.op() == v1::Compare::OP_LESS      ? v < cmp.version()
                                                                       : v > cmp.version();
                     } else if (exists) {
                       const std::string& v = it->second.value;
                       holds = cmp.op() == v1::Compare::OP_EQUAL       ? v == cmp.value()
                               : cmp.op() == v1::Compare::OP_NOT_EQUAL ? v != cmp.value()
                               : cmp.op() == v1::Compare::OP_LESS      ? v < cmp.value()
                                                                       : v > cmp.value();
                     }
                     ok = ok && holds;
                   }
                   resp->set_succeeded(ok);
                   for (const v1::TxnOp& op : ok ? req->success() : req->failure()) {
                     v1::TxnOpResult* r = resp->add_results();
                     if (op.has_put()) {
                       Value& v = c_->data_[op.put().key()];
                       r->mutable_put()->set_had_previous(v.version > 0);
                       v.value = op.put().value();
                       r->mutable_put()->set_version(++v.version);
                       c_->applies_[op.put().key()]++;
                     } else if (op.has_delete_()) {
                       r->mutable_delete_()->set_deleted(c_->data_.erase(op.delete_().key()) > 0);
                     } else {
                       auto it = c_->data_.find(op.get().key());
                       r->mutable_get()->set_found(it != c_->data_.end());
                       if (it != c_->data_.end()) {
                         r->mutable_get()->mutable_kv()->set_key(it->first);
                         r->mutable_get()->mutable_kv()->set_value(it->second.value);
                         r->mutable_get()->mutable_kv()->set_version(it->second.version);
                       }
                     }
                   }
                 });
  }

 private:
  template <typename Resp, typename Apply>
  grpc::Status Serve(grpc::ServerContext* ctx, const char* method, const v1::RequestHeader& header,
                     const std::vector<std::string>& keys, bool write, Resp* resp, Apply apply,
                     const std::string& continuation = "") {
    FakeCall call;
    call.continuation = continuation;
    call.node = node_;
    call.method = method;
    call.shard = header.shard();
    call.key = keys.empty() ? "" : keys[0];
    call.client_id = header.session().client_id();
    call.seq = header.session().seq();
    call.first_incomplete_seq = header.session().first_incomplete_seq();
    std::function<FakeAction(const FakeCall&)> hook;
    {
      absl::MutexLock lock(&c_->mu_);
      c_->calls_[node_]++;
      if (c_->down_[node_]) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
      if (write) call.attempt_of_seq = ++c_->seen_seqs_[{call.client_id, call.seq}];
      hook = c_->hook_;
    }
    FakeAction action;
    if (hook) action = hook(call);
    const absl::Time limit = absl::Now() + absl::Seconds(10);
    for (absl::Time until = absl::Now() + action.delay;
         absl::Now() < until && absl::Now() < limit;) {
      if (ctx->IsCancelled()) break;
      absl::SleepFor(absl::Milliseconds(2));
    }
    if (action.kind == FakeAction::Kind::kError) return ToGrpcStatus(action.error);

    absl::Status status = absl::OkStatus();
    {
      absl::MutexLock lock(&c_->mu_);
      const uint32_t n = c_->options_.shards;
      bool wrong_shard = header.shard() >= n;
      for (const std::string& k : keys)
        wrong_shard = wrong_shard || ShardForKey(k, n) != header.shard();
      if ((header.epoch() != 0 && header.epoch() != c_->epoch_) || wrong_shard) {
        status = absl::FailedPreconditionError("stale route");
        v1::ErrorDetail detail;
        *detail.mutable_stale_route()->mutable_current() = c_->MapLocked();
        SetErrorDetail(status, detail);
        return ToGrpcStatus(status);
      }
      const int leader = c_->leaders_[header.shard()];
      if ((write || header.consistency() != v1::READ_CONSISTENCY_STALE) && leader != node_) {
        return ToGrpcStatus(NotLeaderError(leader + 1, c_->addresses_[leader]));
      }
      if (write && call.client_id != 0) {
        Session* s = nullptr;
        auto key = std::make_pair(call.client_id, header.shard());
        auto it = c_->sessions_.find(key);
        if (it == c_->sessions_.end()) {
          if (call.first_incomplete_seq > 1) {
            return ToGrpcStatus(absl::FailedPreconditionError("session expired (evicted)"));
          }
          s = &c_->sessions_[key];
        } else {
          s = &it->second;
          auto r = s->results.find(call.seq);
          if (r != s->results.end()) {
            resp->ParseFromString(r->second);
            return grpc::Status::OK;
          }
          if (call.seq < std::max(s->first_incomplete_seq, call.first_incomplete_seq)) {
            return ToGrpcStatus(absl::FailedPreconditionError("session expired or stale seq"));
          }
        }
        apply();
        resp->mutable_header()->set_applied_index(++c_->applied_index_);
        s->results[call.seq] = resp->SerializeAsString();
        s->first_incomplete_seq = std::max(s->first_incomplete_seq, call.first_incomplete_seq);
        for (auto r = s->results.begin();
             r != s->results.end() && r->first < s->first_incomplete_seq;) {
          r = s->results.erase(r);
        }
      } else {
        apply();
        if (write) ++c_->applied_index_;
        resp->mutable_header()->set_applied_index(c_->applied_index_);
      }
      resp->mutable_header()->set_shard(header.shard());
      resp->mutable_header()->set_epoch(c_->epoch_);
    }
    if (action.kind == FakeAction::Kind::kDropAfterApply) {
      // Applied, but the reply is lost: the client's attempt times out.
      while (!ctx->IsCancelled() && absl::Now() < limit) absl::SleepFor(absl::Milliseconds(2));
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "reply dropped");
    }
    return grpc::Status::OK;
  }

  FakeCluster* const c_;
  const int node_;
};

class FakeCluster::ClusterImpl final : public v1::Cluster::Service {
 public:
  ClusterImpl(FakeCluster* cluster, int node) : c_(cluster), node_(node) {}

  grpc::Status GetClusterMap(grpc::ServerContext*, const v1::GetClusterMapRequest*,
                             v1::GetClusterMapResponse* resp) override {
    absl::MutexLock lock(&c_->mu_);
    if (c_->down_[node_]) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
    *resp->mutable_map() = c_->MapLocked();
    return grpc::Status::OK;
  }

  grpc::Status NodeStatus(grpc::ServerContext*, const v1::NodeStatusRequest*,
                          v1::NodeStatusResponse* resp) override {
    absl::MutexLock lock(&c_->mu_);
    if (c_->down_[node_]) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection reset");
    resp->set_node_id(node_ + 1);
    resp->set_epoch(c_->epoch_);
    for (uint32_t s = 0; s < c_->options_.shards; ++s) {
      v1::ShardStatus* st = resp->add_shards();
      st->set_shard(s);
      st->set_role(c_->stopped_[node_]        ? "stopped"
                   : c_->leaders_[s] == node_ ? "leader"
                                              : "follower");
      st->set_term(3);
      st->set_leader(c_->leaders_[s] + 1);
      st->set_commit_index(c_->applied_index_);
      st->set_applied_index(c_->applied_index_ - (c_->leaders_[s] == node_ ? 0 : 1));
      st->set_last_index(c_->applied_index_);
    }
    return grpc::Status::OK;
  }

 private:
  FakeCluster* const c_;
  const int node_;
};

FakeCluster::FakeCluster(Options options)
    : options_(options),
      leaders_(options.shards, 0),
      down_(options.nodes, false),
      stopped_(options.nodes, false),
      calls_(options.nodes, 0),
      epoch_(options.epoch) {
  for (int i = 0; i < options_.nodes; ++i) {
    kv_.push_back(std::make_unique<KvImpl>(this, i));
    cluster_.push_back(std::make_unique<ClusterImpl>(this, i));
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(kv_.back().get());
    builder.RegisterService(cluster_.back().get());
    servers_.push_back(builder.BuildAndStart());
    if (servers_.back() == nullptr || port == 0) abort();
    addresses_.push_back(absl::StrCat("127.0.0.1:", port));
  }
}

FakeCluster::~FakeCluster() {
  for (auto& server : servers_) server->Shutdown(absl::ToChronoTime(absl::Now()));
  for (auto& server : servers_) server->Wait();
}

v1::ClusterMap FakeCluster::MapLocked() const {
  v1::ClusterMap map;
  map.set_epoch(epoch_);
  map.set_num_shards(options_.shards);
  map.set_replication(std::min(options_.nodes, 3));
  for (int i = 0; i < options_.nodes; ++i) {
    v1::Member* m = map.add_members();
    m->set_id(i + 1);
    m->set_client_address(addresses_[i]);
  }
  for (uint32_t s = 0; s < options_.shards; ++s) {
    v1::ShardInfo* info = map.add_shards();
    info->set_id(s);
    info->set_hash_start(HashRangeStart(s, options_.shards));
    info->set_hash_end(s + 1 < options_.shards ? HashRangeStart(s + 1, options_.shards) - 1
                                               : UINT64_MAX);
    for (int i = 0; i < std::min(options_.nodes, 3); ++i) info->add_replicas(i + 1);
  }
  return map;
}

void FakeCluster::SetLeader(uint32_t shard, int node) {
  absl::MutexLock lock(&mu_);
  leaders_[shard] = node;
}

int FakeCluster::leader(uint32_t shard) const {
  absl::MutexLock lock(&mu_);
  return leaders_[shard];
}

void FakeCluster::SetDown(int node, bool down) {
  absl::MutexLock lock(&mu_);
  down_[node] = down;
}

void FakeCluster::SetStopped(int node, bool stopped) {
  absl::MutexLock lock(&mu_);
  stopped_[node] = stopped;
}

void FakeCluster::SetEpoch(uint64_t epoch) {
  absl::MutexLock lock(&mu_);
  epoch_ = epoch;
}

void FakeCluster::EvictSessions() {
  absl::MutexLock lock(&mu_);
  sessions_.clear();
}

void FakeCluster::SetHook(std::function<FakeAction(const FakeCall&)> hook) {
  absl::MutexLock lock(&mu_);
  hook_ = std::move(hook);
}

int FakeCluster::calls(int node) const {
  absl::MutexLock lock(&mu_);
  return calls_[node];
}

int FakeCluster::batch_messages() const {
  absl::MutexLock lock(&mu_);
  return batch_messages_;
}

int FakeCluster::applies(const std::string& key) const {
  absl::MutexLock lock(&mu_);
  auto it = applies_.find(key);
  return it == applies_.end() ? 0 : it->second;
}

v1::ClusterMap FakeCluster::Map() const {
  absl::MutexLock lock(&mu_);
  return MapLocked();
}

void FakeCluster::Seed(const std::string& key, const std::string& value) {
  absl::MutexLock lock(&mu_);
  Value& v = data_[key];
  v.value = value;
  v.version += 1;
}

}  // namespace tessera::client::testing
