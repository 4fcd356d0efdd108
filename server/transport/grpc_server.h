// GrpcServer: a started gRPC server on a listening socket of our own, with a
// cap on its open connections; and the file-descriptor budget that sizes the
// caps of a tessera-server's two ports.
//
// Why our own socket: gRPC 1.51 has no limit on incoming connections, and its
// listener sets SO_REUSEPORT, which let a second process listen on a running
// node's ports. Here one accept thread owns the listening socket(s) (bound
// with SO_REUSEADDR only, so a second listener on the same port fails with
// "address in use") and hands each accepted connection to gRPC through an
// external connection acceptor (the handshake, TLS included, happens in
// gRPC with the server's credentials). Beyond max_connections a connection is
// accepted and closed at once (reset) and counted as refused, so a flood of
// idle connections cannot use up the process's file descriptors (RocksDB
// needs them for its WAL and SST files).
//
// gRPC does not say when it closes a connection it was handed, so the accept
// thread records each connection's (fd, inode) and checks them with fstat()
// every sweep_interval (and before refusing one at the cap, at most every
// 50 ms): a closed fd (EBADF) or one reused for another file (another inode)
// was closed by gRPC.
//
// Thread-safety: GrpcServer is thread-safe. Shutdown() and the destructor
// stop the accept thread first, then the gRPC server.
#ifndef TESSERA_SERVER_TRANSPORT_GRPC_SERVER_H_
#define TESSERA_SERVER_TRANSPORT_GRPC_SERVER_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/server_interceptor.h"

namespace tessera::server {

struct GrpcServerOptions {
  // "host:port"; port 0 picks a free one. A host name binds every address it
  // resolves to (at least one must bind).
  std::string address;
  // Not owned; must outlive the server.
  std::vector<grpc::Service*> services;
  // Largest message accepted.
  int max_receive_bytes = 4 << 20;
  // E.g. the metrics interceptor of server/metrics.h; see every call.
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  // nullptr: insecure.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // Open connections beyond this are refused at accept.
  size_t max_connections = 1024;
  // "client" or "peer": names the port in logs and metrics.
  std::string name = "client";
  // A connection that has not completed its HTTP/2 (and TLS) handshake
  // within this is closed by gRPC.
  absl::Duration handshake_timeout = absl::Seconds(20);
  // How often closed connections are noticed (see the file comment).
  absl::Duration sweep_interval = absl::Seconds(1);
  // Called on the accept thread whenever the open or refused count changes
  // (optional; e.g. Metrics::ConnectionReporter). Must not block.
  std::function<void(uint64_t open, uint64_t refused_total)> on_connections;
};

class GrpcServer;

// Binds, listens, builds and starts the server and its accept thread.
// Errors: kInvalidArgument for a malformed address or options; kUnavailable
// when the address cannot be bound, with "address in use" in the message
// when another socket listens on it.
absl::StatusOr<std::unique_ptr<GrpcServer>> StartGrpcServer(GrpcServerOptions options);

class GrpcServer {
 public:
  ~GrpcServer();  // Shutdown(now)
  GrpcServer(const GrpcServer&) = delete;
  GrpcServer& operator=(const GrpcServer&) = delete;

  int port() const { return port_; }
  grpc::Server* server() const { return server_.get(); }

  // Stops accepting (closes the listening sockets), then shuts the gRPC
  // server down: calls still running after `deadline` are cancelled.
  // Idempotent.
  void Shutdown(absl::Time deadline = absl::Now()) ABSL_LOCKS_EXCLUDED(shutdown_mu_);

  struct Stats {
    uint64_t open = 0;     // connections handed to gRPC and not yet seen closed
    uint64_t refused = 0;  // closed at accept because `open` was at the cap
    uint64_t accepted = 0;
  };
  Stats stats() const;

 private:
  friend absl::StatusOr<std::unique_ptr<GrpcServer>> StartGrpcServer(GrpcServerOptions options);
  explicit GrpcServer(GrpcServerOptions options) : options_(std::move(options)) {}
  absl::Status Listen();
  void AcceptLoop();
  void AcceptReady(int listener);
  // Forgets connections gRPC has closed; returns how many.
  size_t Sweep();
  void Report();

  GrpcServerOptions options_;
  // Constant after Start().
  std::vector<int> listeners_;
  int wake_fd_ = -1;  // eventfd: wakes the accept thread to stop
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;

  // Accept thread only.
  struct Conn {
    dev_t dev;
    ino_t ino;
  };
  absl::flat_hash_map<int, Conn> open_;
  absl::Time last_sweep_ = absl::InfinitePast();

  std::atomic<uint64_t> open_count_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<uint64_t> accepted_{0};
  std::thread accept_thread_;

  absl::Mutex shutdown_mu_;
  bool shut_down_ ABSL_GUARDED_BY(shutdown_mu_) = false;
};

// ---------------------------------------------------------------- fd budget

// Raises the soft RLIMIT_NOFILE to the hard limit; returns the soft limit
// now in force. Errors: kInternal when the limit cannot be read.
absl::StatusOr<uint64_t> RaiseFileLimit();

// How a process with `file_limit` descriptors spends them: storage (RocksDB's
// table cache; its WAL, MANIFEST and LOG files come out of `reserved`), a
// fixed reserve for everything else (gRPC's own fds, peer channels, the
// metrics server, /proc reads), and the connection caps of the two ports.
struct FdBudget {
  uint64_t file_limit = 0;
  int storage_max_open_files = 0;  // EngineOptions::max_open_files
  uint64_t reserved = 0;           // neither storage's table cache nor connections
  uint64_t max_client_connections = 0;
  uint64_t max_peer_connections = 0;
};
// Derives the caps that are 0 in the request from `file_limit`: storage gets
// a quarter (16..4096 files), a reserve of 128 + 1/16 stays free, the peer
// port gets 1/8 of the rest (at least 8, at most 1024) and the client port
// what remains (at most 64 Ki). Caps given explicitly are kept. Errors:
// kInvalidArgument (with the numbers) when the limit leaves fewer than 8
// connections per port, or the caps do not fit in it.
absl::StatusOr<FdBudget> PlanFdBudget(uint64_t file_limit, uint64_t max_client_connections,
                                      uint64_t max_peer_connections);

}  // namespace tessera::server

#endif  // TESSERA_SERVER_TRANSPORT_GRPC_SERVER_H_
