# Tests of server/metrics.h and server/health.h: the /proc collector, metric
# naming, the rate-limited slow log, readiness, the HTTP endpoints and the
# RocksDB stats.
if(NOT TARGET tessera_metrics)
  include(${PROJECT_SOURCE_DIR}/server/metrics.cmake)
endif()
tessera_test(server_metrics_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/metrics_test.cc LIBS tessera_metrics gRPC::grpc++)
