// The one conversion between absl::Status (inside Tessera) and grpc::Status
// (on the wire). Both use the same canonical codes. A tessera.v1.ErrorDetail
// travels as an absl::Status payload under kErrorDetailUrl inside a process
// and as grpc::Status::error_details() on the wire.
#ifndef TESSERA_PROTO_GRPC_STATUS_H_
#define TESSERA_PROTO_GRPC_STATUS_H_

#include <optional>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"
#include "tessera/kv.pb.h"

namespace tessera {

inline constexpr char kErrorDetailUrl[] = "type.googleapis.com/tessera.v1.ErrorDetail";

// Server side: absl -> gRPC, carrying the ErrorDetail payload if any.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Client side: gRPC -> absl, restoring the ErrorDetail payload if any.
absl::Status FromGrpcStatus(const grpc::Status& status);

// Attaches `detail` to `status` (which must not be OK).
void SetErrorDetail(absl::Status& status, const v1::ErrorDetail& detail);

// The ErrorDetail of `status`, if it has one that parses.
std::optional<v1::ErrorDetail> GetErrorDetail(const absl::Status& status);

}  // namespace tessera

#endif  // TESSERA_PROTO_GRPC_STATUS_H_
