#include "client/bench/etcd_backend.h"

#include <chrono>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/tls.h"
#include "etcd_kv.grpc.pb.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"

namespace tessera::bench {
namespace {

// One request in flight: deleted by its gRPC callback, after which it
// reports the outcome.
template <typename Request, typename Response>
struct Call {
  grpc::ClientContext context;
  Request request;
  Response response;
};

class EtcdBackend : public Backend {
 public:
  EtcdBackend(std::vector<std::shared_ptr<grpc::Channel>> channels, BackendOptions options)
      : channels_(std::move(channels)), options_(std::move(options)) {
    for (const auto& channel : channels_) stubs_.push_back(etcdserverpb::KV::NewStub(channel));
    timeout_ = absl::ToChronoNanoseconds(options_.timeout);
  }

  void Start(Op op, const std::string& key, size_t client, Completion* done) override {
    etcdserverpb::KV::Stub::async_interface* kv = stubs_[client % stubs_.size()]->async();
    switch (op) {
      case Op::kPut: {
        auto* call = NewCall<etcdserverpb::PutRequest, etcdserverpb::PutResponse>();
        call->request.set_key(key);
        call->request.set_value(options_.value);
        return kv->Put(&call->context, &call->request, &call->response,
                       [call, done](grpc::Status s) {
                         delete call;
                         done->OnComplete(static_cast<absl::StatusCode>(s.error_code()), false, 0);
                       });
      }
      case Op::kGet: {
        auto* call = NewCall<etcdserverpb::RangeRequest, etcdserverpb::RangeResponse>();
        call->request.set_key(key);
        call->request.set_serializable(options_.consistency == ReadConsistency::kStale);
        return kv->Range(
            &call->context, &call->request, &call->response, [call, done](grpc::Status s) {
              const bool miss = s.ok() && call->response.kvs_size() == 0;
              const uint64_t version = s.ok() && !miss ? call->response.kvs(0).version() : 0;
              delete call;
              done->OnComplete(static_cast<absl::StatusCode>(s.error_code()), miss, version);
            });
      }
      case Op::kTxn: {
        auto* call = NewCall<etcdserverpb::TxnRequest, etcdserverpb::TxnResponse>();
        etcdserverpb::Compare* compare = call->request.add_compare();
        compare->set_key(key);
        compare->set_target(etcdserverpb::Compare::VERSION);
        compare->set_result(etcdserverpb::Compare::GREATER);
        compare->set_version(0);
        etcdserverpb::PutRequest* put = call->request.add_success()->mutable_request_put();
        put->set_key(key);
        put->set_value(options_.value);
        *call->request.add_failure()->mutable_request_put() = *put;
        return kv->Txn(&call->context, &call->request, &call->response,
                       [call, done](grpc::Status s) {
                         delete call;
                         done->OnComplete(static_cast<absl::StatusCode>(s.error_code()), false, 0);
                       });
      }
    }
  }

 private:
  template <typename Request, typename Response>
  Call<Request, Response>* NewCall() {
    auto* call = new Call<Request, Response>;
    call->context.set_deadline(std::chrono::system_clock::now() + timeout_);
    return call;
  }

  const std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> stubs_;
  const BackendOptions options_;
  std::chrono::nanoseconds timeout_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewEtcdBackend(const std::vector<std::string>& endpoints,
                                                        BackendOptions options) {
  if (endpoints.empty()) return absl::InvalidArgumentError("no etcd endpoints");
  if (options.consistency == ReadConsistency::kLease) {
    return absl::InvalidArgumentError("etcd has no lease reads (use linearizable or stale)");
  }
  // TLS as for Tessera: TESSERA_TLS_CA (and _CERT, _KEY for a client
  // certificate), for a like-for-like comparison with TLS on both.
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      client::ChannelCredentials(client::TlsOptionsFromEnv());
  if (!credentials.ok()) return credentials.status();
  const int conns = std::max(1, options.conns);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < conns; ++i) {
    const std::string& address = endpoints[i % endpoints.size()];
    grpc::ChannelArguments args;
    // Its own subchannel pool: a connection of its own (channels with equal
    // arguments would otherwise share one).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    const bool numeric = absl::ascii_isdigit(address[0]);
    channels.push_back(
        grpc::CreateCustomChannel(numeric ? "ipv4:" + address : address, *credentials, args));
  }
  const auto deadline =
      std::chrono::system_clock::now() + absl::ToChronoNanoseconds(options.timeout);
  for (int i = 0; i < conns; ++i) {
    if (!channels[i]->WaitForConnected(deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot connect to etcd at ",
                                                 endpoints[i % endpoints.size()], " within ",
                                                 absl::FormatDuration(options.timeout)));
    }
  }
  return std::make_unique<EtcdBackend>(std::move(channels), std::move(options));
}

}  // namespace tessera::bench
