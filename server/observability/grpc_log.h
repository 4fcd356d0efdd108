// gRPC core's own log lines (gpr_log: failed TLS handshakes, broken
// connections), routed into this process's log with a bound.
//
// Without it gRPC writes one stderr line per failed handshake: anyone who
// can reach a TLS port could fill the disk with them. RouteGrpcCoreLogs()
// installs a gpr log function that drops gRPC's debug and info lines and
// logs its error lines through spdlog as warnings, at most one line per
// source location per kGrpcLogInterval (the line says how many it stood
// for). It counts failed TLS handshakes (tessera_tls_handshake_failures_total).
//
// Process-wide (gRPC's log function is global); thread-safe.
#ifndef TESSERA_SERVER_OBSERVABILITY_GRPC_LOG_H_
#define TESSERA_SERVER_OBSERVABILITY_GRPC_LOG_H_

#include <cstdint>

#include "absl/time/time.h"

namespace tessera::server {

inline constexpr absl::Duration kGrpcLogInterval = absl::Seconds(10);

// Installs the log function; call once, before gRPC starts.
void RouteGrpcCoreLogs();

// TLS handshakes gRPC reported failed since the start (either port, either
// side: a peer that presents no or a wrong certificate, plaintext sent to a
// TLS port, a certificate this node does not trust).
uint64_t TlsHandshakeFailures();

}  // namespace tessera::server

#endif  // TESSERA_SERVER_OBSERVABILITY_GRPC_LOG_H_
