// The one conversion between absl::Status (inside Tessera) and grpc::Status
// (on the wire). Both use the same canonical codes.
//
// Error details follow gRPC's richer error model: on the wire, the
// `grpc-status-details-bin` trailer (grpc::Status::error_details()) holds a
// serialized google.rpc.Status {code, message, details}, `details` being
// google.protobuf.Any messages, which every language's standard helper
// decodes (Go status.FromError(err).Details(), Python
// grpc_status.rpc_status.from_call, Java StatusProto.fromThrowable). Inside
// a process each detail is an absl::Status payload keyed by its Any type URL
// ("type.googleapis.com/<full message name>") holding the serialized
// message, as absl's payloads are designed to be; ToGrpcStatus packs every
// payload into one Any, FromGrpcStatus unpacks every Any into a payload.
//
// The details Tessera sends: tessera.v1.ErrorDetail (kv.proto), and
// google.rpc.RetryInfo and google.rpc.BadRequest (google/rpc/
// error_details.proto) where they fit.
#ifndef TESSERA_PROTO_GRPC_STATUS_H_
#define TESSERA_PROTO_GRPC_STATUS_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpcpp/support/status.h"
#include "tessera/kv.pb.h"

namespace tessera {

// Type URLs of the details (google.protobuf.Any.type_url).
inline constexpr char kErrorDetailUrl[] = "type.googleapis.com/tessera.v1.ErrorDetail";
inline constexpr char kRetryInfoUrl[] = "type.googleapis.com/google.rpc.RetryInfo";
inline constexpr char kBadRequestUrl[] = "type.googleapis.com/google.rpc.BadRequest";

// Server side: absl -> gRPC. A status with payloads gets a serialized
// google.rpc.Status{code, message, details: one Any per payload} as its
// error details; one without gets none.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Client side: gRPC -> absl, each Any of the google.rpc.Status in the error
// details restored as a payload. Details that do not parse as a
// google.rpc.Status, or whose code differs from the call's (as Python's
// from_call rejects them), are dropped: the status keeps code and message.
absl::Status FromGrpcStatus(const grpc::Status& status);

// The same as a google.rpc.Status message (a KV.Batch operation's error,
// BatchResult.error): code, message and one Any per payload, always (also
// without payloads). ToRpcStatus of OK is code 0.
google::rpc::Status ToRpcStatus(const absl::Status& status);
// Back: the payloads restored from the Any details; a code outside the
// canonical range becomes kUnknown.
absl::Status FromRpcStatus(const google::rpc::Status& status);
// Attach details to `status` (which must not be OK), replacing one of the
// same type.
void SetErrorDetail(absl::Status& status, const v1::ErrorDetail& detail);
// google.rpc.RetryInfo{retry_delay}.
void SetRetryInfo(absl::Status& status, absl::Duration retry_delay);
// RESOURCE_EXHAUSTED with `message` and the hint to come back in
// `retry_after` (at least 1 ms) as ErrorDetail.retry_after and
// google.rpc.RetryInfo.
absl::Status RetryLaterError(absl::string_view message, absl::Duration retry_after);
// Adds a google.rpc.BadRequest field violation (`field` a path in the
// request such as "key" or "success[2].put.value"; `description` why).
void AddFieldViolation(absl::Status& status, absl::string_view field,
                       absl::string_view description);

// The detail of that type carried by `status`, if it has one that parses.
// GetErrorDetail is the one reader of tessera.v1.ErrorDetail (SDK, CLI,
// bench tool and chaos workload all read errors through it).
std::optional<v1::ErrorDetail> GetErrorDetail(const absl::Status& status);
std::optional<google::rpc::RetryInfo> GetRetryInfo(const absl::Status& status);
std::optional<google::rpc::BadRequest> GetBadRequest(const absl::Status& status);

// An INVALID_ARGUMENT with `message` and a BadRequest violation naming
// `field` (its description is `message`).
absl::Status InvalidFieldError(absl::string_view field, absl::string_view message);

}  // namespace tessera

#endif  // TESSERA_PROTO_GRPC_STATUS_H_
