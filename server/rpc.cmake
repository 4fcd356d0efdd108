# server/rpc.cmake: the gRPC layer (cluster map, peer transport, KV and
# Cluster services), the tessera-server binary and the tessera-admin tool.
find_package(spdlog CONFIG REQUIRED)

add_library(tessera_rpc_server STATIC
  ${CMAKE_CURRENT_LIST_DIR}/admission.cc
  ${CMAKE_CURRENT_LIST_DIR}/cluster_map.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_server.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_transport.cc
  ${CMAKE_CURRENT_LIST_DIR}/kv_service.cc
  ${CMAKE_CURRENT_LIST_DIR}/meta_group.cc
)
target_include_directories(tessera_rpc_server PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_rpc_server
  PUBLIC tessera_api tessera_security absl::status absl::statusor absl::strings absl::synchronization
         absl::flat_hash_map absl::flat_hash_set absl::time
  PRIVATE PkgConfig::XXHASH spdlog::spdlog)
tessera_warnings(tessera_rpc_server)

# Metrics, health and the metrics HTTP server (library tessera_metrics).
include(${CMAKE_CURRENT_LIST_DIR}/metrics.cmake)

# The server binary (build/<preset>/server/tessera-server).
add_executable(tessera-server ${CMAKE_CURRENT_LIST_DIR}/main.cc)
target_link_libraries(tessera-server PRIVATE
  tessera_metrics tessera_rpc_server tessera_node tessera_state_machine tessera_storage spdlog::spdlog
  absl::flags absl::flags_reflection absl::flags_marshalling absl::synchronization absl::time)
tessera_warnings(tessera-server)
set_target_properties(tessera-server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})

# tessera-admin: cluster status for scripts (build/<preset>/server/tessera-admin).
add_executable(tessera-admin ${CMAKE_CURRENT_LIST_DIR}/tools/admin.cc)
target_link_libraries(tessera-admin PRIVATE tessera_api absl::strings absl::time)
tessera_warnings(tessera-admin)
set_target_properties(tessera-admin PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_CURRENT_BINARY_DIR})
