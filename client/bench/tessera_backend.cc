#include "client/bench/tessera_backend.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/client.h"

namespace tessera::bench {
namespace {

using client::CallOptions;
using client::Consistency;

Consistency ToClient(ReadConsistency c) {
  switch (c) {
    case ReadConsistency::kLinearizable:
      return Consistency::kLinearizable;
    case ReadConsistency::kLease:
      return Consistency::kLease;
    case ReadConsistency::kStale:
      return Consistency::kStale;
  }
  return Consistency::kLinearizable;
}

class TesseraBackend : public Backend {
 public:
  TesseraBackend(std::unique_ptr<client::Client> client, BackendOptions options)
      : client_(std::move(client)), options_(std::move(options)) {
    write_.timeout = options_.timeout;
    read_ = write_;
    read_.consistency = ToClient(options_.consistency);
    // One transaction per virtual client, its keys rewritten per request:
    // the value is copied into it once, not per request.
    client::TxnRequest txn;
    txn.compares.push_back({.target = client::Compare::Target::kVersion,
                            .op = client::Compare::Op::kGreater,
                            .version = 0});
    txn.success.push_back({.type = client::TxnOp::Type::kPut, .value = options_.value});
    txn.failure = txn.success;
    txns_.assign(options_.clients, txn);
  }

  void Start(Op op, const std::string& key, size_t client, Completion* done) override {
    switch (op) {
      case Op::kPut:
        return client_->PutAsync(key, options_.value, write_,
                                 [done](absl::StatusOr<client::PutResult> r) {
                                   done->OnComplete(r.status().code(), false, 0);
                                 });
      case Op::kGet:
        return client_->GetAsync(key, read_, [done](absl::StatusOr<client::KeyValue> r) {
          const bool miss = r.status().code() == absl::StatusCode::kNotFound;
          done->OnComplete(miss ? absl::StatusCode::kOk : r.status().code(), miss,
                           r.ok() ? r->version : 0);
        });
      case Op::kTxn: {
        client::TxnRequest& txn = txns_[client];
        txn.compares[0].key = key;
        txn.success[0].key = key;
        txn.failure[0].key = key;
        return client_->TxnAsync(txn, write_, [done](absl::StatusOr<client::TxnResult> r) {
          done->OnComplete(r.status().code(), false, 0);
        });
      }
    }
  }

 private:
  const std::unique_ptr<client::Client> client_;
  const BackendOptions options_;
  CallOptions write_;
  CallOptions read_;
  std::vector<client::TxnRequest> txns_;  // one per virtual client
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> NewTesseraBackend(
    const std::vector<std::string>& endpoints, BackendOptions options) {
  client::ClientOptions client_options;
  client_options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  client_options.endpoints = endpoints;
  client_options.channels_per_node = options.conns;
  client_options.use_batch_stream = options.batch_stream;
  client_options.default_timeout = options.timeout;
  absl::StatusOr<std::unique_ptr<client::Client>> created =
      client::Client::Create(std::move(client_options));
  if (!created.ok()) return created.status();
  CallOptions probe;
  probe.timeout = options.timeout;
  absl::StatusOr<v1::ClusterMap> map = (*created)->GetClusterMap(probe);
  if (!map.ok()) {
    return absl::Status(map.status().code(),
                        absl::StrCat("no Tessera member at ", absl::StrJoin(endpoints, ","),
                                     " answered: ", map.status().message()));
  }
  return std::make_unique<TesseraBackend>(std::move(*created), std::move(options));
}

}  // namespace tessera::bench
