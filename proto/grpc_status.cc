#include "proto/grpc_status.h"

#include <algorithm>
#include <cstdint>

#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "google/protobuf/any.pb.h"
#include "google/rpc/status.pb.h"

namespace tessera {
namespace {

template <typename Message>
std::optional<Message> GetDetail(const absl::Status& status, absl::string_view url) {
  auto payload = status.GetPayload(url);  // absl::optional in this Abseil
  if (!payload.has_value()) return std::nullopt;
  Message message;
  if (!message.ParseFromString(std::string(*payload))) return std::nullopt;
  return message;
}

}  // namespace

google::rpc::Status ToRpcStatus(const absl::Status& status) {
  google::rpc::Status proto;
  proto.set_code(static_cast<int32_t>(status.code()));
  proto.set_message(std::string(status.message()));
  status.ForEachPayload([&proto](absl::string_view url, const absl::Cord& payload) {
    google::protobuf::Any* any = proto.add_details();
    any->set_type_url(std::string(url));
    any->set_value(std::string(payload));
  });
  return proto;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  google::rpc::Status proto = ToRpcStatus(status);
  std::string details;
  if (proto.details_size() > 0) details = proto.SerializeAsString();
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()),
                      std::move(details));
}

absl::Status FromRpcStatus(const google::rpc::Status& status) {
  int code = status.code();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  absl::Status result(static_cast<absl::StatusCode>(code), status.message());
  if (result.ok()) return result;
  for (const google::protobuf::Any& any : status.details()) {
    result.SetPayload(any.type_url(), absl::Cord(any.value()));
  }
  return result;
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  int code = static_cast<int>(status.error_code());
  const int wire_code = code;
  // Codes outside the canonical range (never sent by a Tessera server) map to kUnknown.
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  absl::Status result(static_cast<absl::StatusCode>(code), status.error_message());
  if (status.error_details().empty()) return result;
  google::rpc::Status proto;
  if (!proto.ParseFromString(status.error_details()) || proto.code() != wire_code) return result;
  for (const google::protobuf::Any& any : proto.details()) {
    result.SetPayload(any.type_url(), absl::Cord(any.value()));
  }
  return result;
}

void SetErrorDetail(absl::Status& status, const v1::ErrorDetail& detail) {
  status.SetPayload(kErrorDetailUrl, absl::Cord(detail.SerializeAsString()));
}

void SetRetryInfo(absl::Status& status, absl::Duration retry_delay) {
  google::rpc::RetryInfo info;
  const int64_t nanos = absl::ToInt64Nanoseconds(retry_delay);
  info.mutable_retry_delay()->set_seconds(nanos / 1000000000);
  info.mutable_retry_delay()->set_nanos(static_cast<int32_t>(nanos % 1000000000));
  status.SetPayload(kRetryInfoUrl, absl::Cord(info.SerializeAsString()));
}

absl::Status RetryLaterError(absl::string_view message, absl::Duration retry_after) {
  const int64_t ms = std::max<int64_t>(1, absl::ToInt64Milliseconds(retry_after));
  absl::Status status = absl::ResourceExhaustedError(message);
  v1::ErrorDetail detail;
  detail.mutable_retry_after()->set_retry_after_ms(
      static_cast<uint32_t>(std::min<int64_t>(ms, UINT32_MAX)));
  SetErrorDetail(status, detail);
  SetRetryInfo(status, absl::Milliseconds(ms));  // the same hint, standard form
  return status;
}

void AddFieldViolation(absl::Status& status, absl::string_view field,
                       absl::string_view description) {
  google::rpc::BadRequest request = GetDetail<google::rpc::BadRequest>(status, kBadRequestUrl)
                                        .value_or(google::rpc::BadRequest());
  google::rpc::BadRequest::FieldViolation* violation = request.add_field_violations();
  violation->set_field(std::string(field));
  violation->set_description(std::string(description));
  status.SetPayload(kBadRequestUrl, absl::Cord(request.SerializeAsString()));
}

std::optional<v1::ErrorDetail> GetErrorDetail(const absl::Status& status) {
  return GetDetail<v1::ErrorDetail>(status, kErrorDetailUrl);
}

std::optional<google::rpc::RetryInfo> GetRetryInfo(const absl::Status& status) {
  return GetDetail<google::rpc::RetryInfo>(status, kRetryInfoUrl);
}

std::optional<google::rpc::BadRequest> GetBadRequest(const absl::Status& status) {
  return GetDetail<google::rpc::BadRequest>(status, kBadRequestUrl);
}

absl::Status InvalidFieldError(absl::string_view field, absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(message);
  AddFieldViolation(status, field, message);
  return status;
}

}  // namespace tessera
