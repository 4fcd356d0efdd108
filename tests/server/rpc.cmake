# Tests of the gRPC layer (server/rpc.cmake).
tessera_test(server_cluster_map_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/cluster_map_test.cc LIBS tessera_rpc_server)
tessera_test(server_grpc_transport_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/grpc_transport_test.cc LIBS tessera_rpc_server)
set_tests_properties(server_grpc_transport_test PROPERTIES RESOURCE_LOCK ports)
tessera_test(server_grpc_server_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/grpc_server_test.cc LIBS tessera_rpc_server)
set_tests_properties(server_grpc_server_test PROPERTIES RESOURCE_LOCK ports)
tessera_test(server_kv_service_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/kv_service_test.cc LIBS tessera_rpc_server)
set_tests_properties(server_kv_service_test PROPERTIES RESOURCE_LOCK ports)
tessera_test(server_meta_group_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/meta_group_test.cc
  LIBS tessera_rpc_server tessera_node tessera_state_machine)
# Real tessera-server processes on 127.0.0.1 (reserved ports; see the test).
tessera_test(server_integration_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/integration_test.cc LIBS tessera_api TIMEOUT 180)
target_compile_definitions(server_integration_test PRIVATE
  TESSERA_SERVER_BINARY="$<TARGET_FILE:tessera-server>")
add_dependencies(server_integration_test tessera-server)
set_tests_properties(server_integration_test PROPERTIES RESOURCE_LOCK ports RUN_SERIAL TRUE)
# Peer TLS, data directory identity, known incarnations, snapshot bounds.
tessera_test(server_peer_security_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/peer_security_test.cc LIBS tessera_rpc_server)
# Connection flood and duplicate server against real tessera-server processes.
tessera_test(server_resource_bounds_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/resource_bounds_test.cc LIBS tessera_client TIMEOUT 180)
target_compile_definitions(server_resource_bounds_test PRIVATE
  TESSERA_SERVER_BINARY="$<TARGET_FILE:tessera-server>")
add_dependencies(server_resource_bounds_test tessera-server)
set_tests_properties(server_resource_bounds_test PROPERTIES RESOURCE_LOCK ports RUN_SERIAL TRUE)
