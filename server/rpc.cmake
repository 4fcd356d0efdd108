# server/rpc.cmake: the gRPC layer (cluster map, peer transport, KV and
# Cluster services), the tessera-server binary and the tessera-admin tool.
find_package(spdlog CONFIG REQUIRED)

add_library(tessera_rpc_server STATIC
  ${CMAKE_CURRENT_LIST_DIR}/cluster_map.cc
  ${CMAKE_CURRENT_LIST_DIR}/grpc_transport.cc
  ${CMAKE_CURRENT_LIST_DIR}/kv_service.cc
)
target_include_directories(tessera_rpc_server PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_rpc_server
  PUBLIC tessera_api absl::status absl::statusor absl::strings absl::synchronization
         absl::flat_hash_map absl::flat_hash_set absl::time
  PRIVATE PkgConfig::XXHASH)
tessera_warnings(tessera_rpc_server)
