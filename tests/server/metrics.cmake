# Tests of server/metrics.h and server/health.h (library tessera_metrics,
# server/metrics.cmake): the /proc collector, metric naming, the rate-limited
# slow log, readiness, the HTTP endpoints, gRPC health and the interceptor,
# and the RocksDB stats.
tessera_test(server_metrics_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/metrics_test.cc LIBS tessera_metrics gRPC::grpc++)
