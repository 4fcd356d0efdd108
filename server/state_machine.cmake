# The replicated key-value state machine (StateMachine, the real Applier):
# executes committed serverpb::Commands against a shard's KvStore, with
# exactly-once sessions. See server/README.md "State machine".
add_library(tessera_state_machine STATIC
  ${CMAKE_CURRENT_LIST_DIR}/state_machine.cc
  ${CMAKE_CURRENT_LIST_DIR}/sm_format.cc
)
target_include_directories(tessera_state_machine PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(tessera_state_machine
  PUBLIC tessera_api tessera_storage absl::status absl::statusor absl::strings absl::span
  PRIVATE PkgConfig::XXHASH)
tessera_warnings(tessera_state_machine)
