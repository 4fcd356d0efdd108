#include "proto/grpc_status.h"

#include "gmock/gmock.h"
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

TEST(GrpcStatus, UnknownWireCodeBecomesUnknown) {
  grpc::Status g(static_cast<grpc::StatusCode>(20),
                 "odd");  // within the enum's range, not canonical
  EXPECT_THAT(FromGrpcStatus(g), StatusIs(absl::StatusCode::kUnknown));
  EXPECT_FALSE(GetErrorDetail(FromGrpcStatus(grpc::Status(grpc::StatusCode::INTERNAL, "x"))));
}

}  // namespace
}  // namespace tessera
