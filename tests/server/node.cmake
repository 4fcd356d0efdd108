# Tests of the multi-Raft node (server/node.cmake).
tessera_test(server_raft_storage_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/raft_storage_test.cc LIBS tessera_node)
tessera_test(server_node_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/node_test.cc LIBS tessera_node)
tessera_test(server_local_transport_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/local_transport_test.cc LIBS tessera_node)
tessera_test(server_log_prefix_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/log_prefix_test.cc LIBS tessera_node)
tessera_test(server_peer_message_check_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/peer_message_check_test.cc LIBS tessera_node)
