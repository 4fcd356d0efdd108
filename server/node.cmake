# The multi-Raft node (server/node.h): one raft loop for every shard replica
# of a tessera-server, its raft::Storage adapter, and the in-process
# transport used by tests.
add_library(tessera_node STATIC
  ${CMAKE_CURRENT_LIST_DIR}/log_prefix.cc
  ${CMAKE_CURRENT_LIST_DIR}/node.cc
  ${CMAKE_CURRENT_LIST_DIR}/peer_message_check.cc
  ${CMAKE_CURRENT_LIST_DIR}/raft_storage.cc
  ${CMAKE_CURRENT_LIST_DIR}/local_transport.cc
)
target_include_directories(tessera_node PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_node
  PUBLIC tessera_raft tessera_storage tessera_api absl::status absl::statusor absl::strings
         absl::synchronization absl::time absl::flat_hash_map absl::core_headers Threads::Threads
  PRIVATE absl::raw_logging_internal)
tessera_warnings(tessera_node)
