# server/metrics.cmake: Prometheus metrics, the /metrics /healthz /readyz HTTP
# server (civetweb) and readiness (server/metrics.h, server/health.h).
# Included by server/rpc.cmake.
find_package(prometheus-cpp CONFIG REQUIRED)
find_package(civetweb CONFIG REQUIRED)
find_package(spdlog CONFIG REQUIRED)

add_library(tessera_metrics STATIC
  ${CMAKE_CURRENT_LIST_DIR}/metrics.cc
  ${CMAKE_CURRENT_LIST_DIR}/health.cc
)
target_include_directories(tessera_metrics PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_metrics
  PUBLIC tessera_node tessera_storage tessera_api prometheus-cpp::core gRPC::grpc++
         absl::status absl::statusor absl::strings absl::str_format absl::synchronization
         absl::time absl::flat_hash_map absl::flat_hash_set
  PRIVATE civetweb::civetweb spdlog::spdlog)
tessera_warnings(tessera_metrics)
