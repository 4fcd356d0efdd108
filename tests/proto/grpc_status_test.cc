#include "proto/grpc_status.h"

#include "gmock/gmock.h"
#include "google/protobuf/any.pb.h"
#include "google/rpc/status.pb.h"
#include "gtest/gtest.h"
#include "proto/testing/status_matchers.h"

namespace tessera {
namespace {

using ::tessera::testing::StatusIs;

TEST(GrpcStatus, OkRoundTrips) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatus, EveryCanonicalCodeKeepsItsNumberAndMessage) {
  for (int code = 1; code <= 16; ++code) {
    absl::Status s(static_cast<absl::StatusCode>(code), "boom");
    grpc::Status g = ToGrpcStatus(s);
    EXPECT_EQ(static_cast<int>(g.error_code()), code);
    EXPECT_EQ(g.error_message(), "boom");
    EXPECT_THAT(FromGrpcStatus(g), StatusIs(static_cast<absl::StatusCode>(code)));
  }
}

TEST(GrpcStatus, ErrorDetailTravelsBothWays) {
  absl::Status s = absl::UnavailableError("not leader");
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(3);
  detail.mutable_not_leader()->set_leader_address("127.0.0.1:7003");
  SetErrorDetail(s, detail);
  absl::Status back = FromGrpcStatus(ToGrpcStatus(s));
  EXPECT_THAT(back, StatusIs(absl::StatusCode::kUnavailable));
  std::optional<v1::ErrorDetail> got = GetErrorDetail(back);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->not_leader().leader_node(), 3u);
  EXPECT_EQ(got->not_leader().leader_address(), "127.0.0.1:7003");
}

// What any language's standard helper sees in grpc-status-details-bin: a
// google.rpc.Status with the call's code and message, the ErrorDetail
// packed as an Any under its type URL.
TEST(GrpcStatus, DetailsTravelAsGoogleRpcStatusWithAnys) {
  absl::Status s = absl::UnavailableError("not leader");
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(2);
  SetErrorDetail(s, detail);
  grpc::Status g = ToGrpcStatus(s);
  google::rpc::Status wire;
  ASSERT_TRUE(wire.ParseFromString(g.error_details()));
  EXPECT_EQ(wire.code(), static_cast<int>(grpc::StatusCode::UNAVAILABLE));
  EXPECT_EQ(wire.message(), "not leader");
  ASSERT_EQ(wire.details_size(), 1);
  EXPECT_EQ(wire.details(0).type_url(), "type.googleapis.com/tessera.v1.ErrorDetail");
  v1::ErrorDetail unpacked;
  ASSERT_TRUE(wire.details(0).UnpackTo(&unpacked));  // the protobuf runtime's own Any unpacking
  EXPECT_EQ(unpacked.not_leader().leader_node(), 2u);
}

TEST(GrpcStatus, NoDetailsNoTrailer) {
  EXPECT_TRUE(ToGrpcStatus(absl::InternalError("boom")).error_details().empty());
}

TEST(GrpcStatus, RetryInfoAndBadRequestTravelBothWays) {
  absl::Status s = absl::ResourceExhaustedError("full");
  v1::ErrorDetail detail;
  detail.mutable_retry_after()->set_retry_after_ms(1500);
  SetErrorDetail(s, detail);
  SetRetryInfo(s, absl::Milliseconds(1500));
  absl::Status back = FromGrpcStatus(ToGrpcStatus(s));
  ASSERT_TRUE(GetErrorDetail(back).has_value());
  EXPECT_EQ(GetErrorDetail(back)->retry_after().retry_after_ms(), 1500u);
  std::optional<google::rpc::RetryInfo> info = GetRetryInfo(back);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->retry_delay().seconds(), 1);
  EXPECT_EQ(info->retry_delay().nanos(), 500000000);

  absl::Status bad = InvalidFieldError("success[1].put.key", "success[1].put.key is empty");
  AddFieldViolation(bad, "value", "too long");
  EXPECT_THAT(bad, StatusIs(absl::StatusCode::kInvalidArgument, "success[1].put.key is empty"));
  google::rpc::Status wire;
  ASSERT_TRUE(wire.ParseFromString(ToGrpcStatus(bad).error_details()));
  ASSERT_EQ(wire.details_size(), 1);
  EXPECT_EQ(wire.details(0).type_url(), "type.googleapis.com/google.rpc.BadRequest");
  std::optional<google::rpc::BadRequest> request = GetBadRequest(FromGrpcStatus(ToGrpcStatus(bad)));
  ASSERT_TRUE(request.has_value());
  ASSERT_EQ(request->field_violations_size(), 2);
  EXPECT_EQ(request->field_violations(0).field(), "success[1].put.key");
  EXPECT_EQ(request->field_violations(0).description(), "success[1].put.key is empty");
  EXPECT_EQ(request->field_violations(1).field(), "value");
}

// Details a client does not know are kept (and skipped by the readers).
TEST(GrpcStatus, UnknownDetailIsKeptAsPayload) {
  google::rpc::Status wire;
  wire.set_code(static_cast<int>(grpc::StatusCode::ABORTED));
  wire.set_message("x");
  google::protobuf::Any* any = wire.add_details();
  any->set_type_url("type.googleapis.com/example.Other");
  any->set_value("abc");
  absl::Status back =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::ABORTED, "x", wire.SerializeAsString()));
  EXPECT_EQ(back.GetPayload("type.googleapis.com/example.Other"), absl::Cord("abc"));
  EXPECT_FALSE(GetErrorDetail(back).has_value());
}

// As Python's from_call: a google.rpc.Status whose code is not the call's is
// not believed; so is a trailer that is not a google.rpc.Status at all (the
// bare ErrorDetail of earlier servers is not read).
TEST(GrpcStatus, MismatchedOrMalformedDetailsAreDropped) {
  absl::Status s = absl::UnavailableError("not leader");
  v1::ErrorDetail detail;
  detail.mutable_not_leader()->set_leader_node(2);
  SetErrorDetail(s, detail);
  const std::string details = ToGrpcStatus(s).error_details();
  absl::Status mismatched = FromGrpcStatus(grpc::Status(grpc::StatusCode::ABORTED, "x", details));
  EXPECT_THAT(mismatched, StatusIs(absl::StatusCode::kAborted, "x"));
  EXPECT_FALSE(GetErrorDetail(mismatched).has_value());

  absl::Status bare = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "not leader", detail.SerializeAsString()));
  EXPECT_THAT(bare, StatusIs(absl::StatusCode::kUnavailable, "not leader"));
  EXPECT_FALSE(GetErrorDetail(bare).has_value());

  absl::Status garbage =
      FromGrpcStatus(grpc::Status(grpc::StatusCode::UNAVAILABLE, "x", "\xff\xff"));
  EXPECT_THAT(garbage, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(GetErrorDetail(garbage).has_value());
}

TEST(GrpcStatus, UnknownWireCodeBecomesUnknown) {
  grpc::Status g(static_cast<grpc::StatusCode>(20),
                 "odd");  // within the enum's range, not canonical
  EXPECT_THAT(FromGrpcStatus(g), StatusIs(absl::StatusCode::kUnknown));
  EXPECT_FALSE(GetErrorDetail(FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "x"))));
}

}  // namespace
}  // namespace tessera
