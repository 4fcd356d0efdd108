# StateMachine tests (Mem and RocksDB KvStore), including the randomized
# determinism test (TESSERA_SEED=<n> replays one seed).
tessera_test(server_state_machine_test
  SOURCES state_machine_test.cc state_machine_format_test.cc
  LIBS tessera_state_machine tessera_storage)
