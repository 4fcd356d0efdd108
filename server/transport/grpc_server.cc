#include "server/transport/grpc_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/security/server_credentials.h"
#include "server/cluster/cluster_map.h"
#include "spdlog/spdlog.h"

namespace tessera::server {

namespace {

std::string ErrnoText(int error) {
  return error == EADDRINUSE ? "address in use" : std::strerror(error);
}

int ToMillis(absl::Duration d) {
  return static_cast<int>(std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, 1 << 30));
}

}  // namespace

absl::StatusOr<std::unique_ptr<GrpcServer>> StartGrpcServer(GrpcServerOptions options) {
  if (options.max_connections < 1) {
    return absl::InvalidArgumentError("max_connections must be at least 1");
  }
  std::unique_ptr<GrpcServer> s(new GrpcServer(std::move(options)));
  if (absl::Status listening = s->Listen(); !listening.ok()) return listening;
  GrpcServerOptions& o = s->options_;

  grpc::ServerBuilder builder;
  for (grpc::Service* service : o.services) builder.RegisterService(service);
  builder.SetMaxReceiveMessageSize(o.max_receive_bytes);
  // Peers send keepalive pings on idle connections.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // What a connection may buffer ahead of the service reading it: a fixed
  // per-stream window instead of one grown by bandwidth probing (which on
  // loopback reached tens of MiB per stream).
  builder.AddChannelArgument(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  // A connection that never finishes its handshake frees its slot soon.
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, ToMillis(o.handshake_timeout));
  if (!o.interceptors.empty()) {
    builder.experimental().SetInterceptorCreators(std::move(o.interceptors));
  }
  s->acceptor_ = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD,
      o.credentials != nullptr ? o.credentials : grpc::InsecureServerCredentials());
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot start the gRPC server on ", o.address));
  }
  s->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s->wake_fd_ < 0) return absl::InternalError(absl::StrCat("eventfd: ", ErrnoText(errno)));
  s->Report();
  s->accept_thread_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

absl::Status GrpcServer::Listen() {
  const std::string& address = options_.address;
  if (absl::Status valid = ValidateHostPort(address); !valid.ok()) return valid;
  const size_t colon = address.rfind(':');
  std::string host = address.substr(0, colon);
  std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* results = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &results); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address, ": ", gai_strerror(rc)));
  }
  std::string error = "no address";
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    sockaddr_storage addr;
    std::memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    // Every address of a name listens on the same port.
    if (port_ != 0) {
      const uint16_t p = htons(static_cast<uint16_t>(port_));
      if (ai->ai_family == AF_INET) reinterpret_cast<sockaddr_in*>(&addr)->sin_port = p;
      if (ai->ai_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port = p;
    }
    const int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      error = ErrnoText(errno);
      continue;
    }
    // SO_REUSEADDR (rebinding over TIME_WAIT after a restart), never
    // SO_REUSEPORT: a second listener on this port must fail.
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), ai->ai_addrlen) != 0 ||
        listen(fd, SOMAXCONN) != 0) {
      const int e = errno;
      close(fd);
      if (e == EADDRINUSE) {
        freeaddrinfo(results);
        return absl::UnavailableError(
            absl::StrCat("cannot listen on ", address, ": address in use"));
      }
      error = ErrnoText(e);
      continue;
    }
    listeners_.push_back(fd);
    if (port_ == 0) {
      sockaddr_storage bound;
      socklen_t len = sizeof(bound);
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
        port_ =
            ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                             : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
      }
    }
  }
  freeaddrinfo(results);
  if (listeners_.empty() || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address, ": ", error));
  }
  return absl::OkStatus();
}

GrpcServer::~GrpcServer() {
  Shutdown(absl::Now());
  for (int fd : listeners_) close(fd);
  if (wake_fd_ >= 0) close(wake_fd_);
}

void GrpcServer::Shutdown(absl::Time deadline) {
  absl::MutexLock lock(&shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (accept_thread_.joinable()) {
    const uint64_t one = 1;
    if (write(wake_fd_, &one, sizeof(one)) < 0) {
      // An eventfd write fails only on overflow: the thread is awake anyway.
    }
    accept_thread_.join();
  }
  for (int fd : listeners_) close(fd);
  listeners_.clear();
  if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(deadline));
}

GrpcServer::Stats GrpcServer::stats() const {
  return {.open = open_count_.load(std::memory_order_relaxed),
          .refused = refused_.load(std::memory_order_relaxed),
          .accepted = accepted_.load(std::memory_order_relaxed)};
}

void GrpcServer::AcceptLoop() {
  std::vector<pollfd> fds;
  for (int fd : listeners_) fds.push_back({.fd = fd, .events = POLLIN, .revents = 0});
  fds.push_back({.fd = wake_fd_, .events = POLLIN, .revents = 0});
  const int timeout_ms = ToMillis(options_.sweep_interval);
  while (true) {
    const int n = poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      spdlog::error("{} port: poll: {}", options_.name, ErrnoText(errno));
      return;
    }
    if (fds.back().revents != 0) return;  // Shutdown()
    for (size_t i = 0; i + 1 < fds.size(); ++i) {
      if (fds[i].revents != 0) AcceptReady(fds[i].fd);
    }
    if (absl::Now() - last_sweep_ >= options_.sweep_interval && Sweep() > 0) Report();
  }
}

void GrpcServer::AcceptReady(int listener) {
  // Bounded, so that one busy listener does not starve the others.
  for (int i = 0; i < 256; ++i) {
    const int fd = accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      const int e = errno;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      if (e == EINTR || e == ECONNABORTED || e == EPROTO) continue;
      // Out of descriptors or memory: the pending connection stays queued.
      // Back off instead of spinning on a listener that stays readable.
      static std::atomic<int64_t> last_log_seconds{0};
      const int64_t now = absl::ToUnixSeconds(absl::Now());
      if (now - last_log_seconds.exchange(now) >= 10) {
        spdlog::warn("{} port: accept: {} ({} connections open)", options_.name, ErrnoText(e),
                     open_.size());
      }
      pollfd wake{.fd = wake_fd_, .events = POLLIN, .revents = 0};
      poll(&wake, 1, 100);
      return;
    }
    accepted_.fetch_add(1, std::memory_order_relaxed);
    const absl::Time now = absl::Now();
    if (open_.size() >= options_.max_connections && now - last_sweep_ >= absl::Milliseconds(50)) {
      Sweep();
    }
    struct stat st;
    if (open_.size() >= options_.max_connections || fstat(fd, &st) != 0) {
      // Refused: reset rather than close, so no TIME_WAIT is left behind.
      const linger reset{.l_onoff = 1, .l_linger = 0};
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
      close(fd);
      refused_.fetch_add(1, std::memory_order_relaxed);
      Report();
      continue;
    }
    // An fd number already in the map was closed by gRPC and reused.
    open_[fd] = Conn{st.st_dev, st.st_ino};
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Report();
    grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
    p.listener_fd = listener;
    p.fd = fd;
    acceptor_->HandleNewConnection(&p);  // gRPC owns fd from here on
  }
}

size_t GrpcServer::Sweep() {
  last_sweep_ = absl::Now();
  size_t closed = 0;
  for (auto it = open_.begin(); it != open_.end();) {
    struct stat st;
    if (fstat(it->first, &st) != 0 || st.st_ino != it->second.ino || st.st_dev != it->second.dev) {
      open_.erase(it++);
      ++closed;
    } else {
      ++it;
    }
  }
  return closed;
}

void GrpcServer::Report() {
  open_count_.store(open_.size(), std::memory_order_relaxed);
  if (options_.on_connections) {
    options_.on_connections(open_.size(), refused_.load(std::memory_order_relaxed));
  }
}

// ---------------------------------------------------------------- fd budget

absl::StatusOr<uint64_t> RaiseFileLimit() {
  rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    return absl::InternalError(absl::StrCat("getrlimit(RLIMIT_NOFILE): ", ErrnoText(errno)));
  }
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  // "Unlimited" is not a number of fds: count it as 1M (Linux's usual
  // nr_open), which the derived caps then bound anyway.
  return limit.rlim_cur == RLIM_INFINITY ? uint64_t{1} << 20 : uint64_t{limit.rlim_cur};
}

absl::StatusOr<FdBudget> PlanFdBudget(uint64_t file_limit, uint64_t max_client_connections,
                                      uint64_t max_peer_connections) {
  FdBudget b;
  b.file_limit = file_limit;
  b.storage_max_open_files = static_cast<int>(std::clamp<uint64_t>(file_limit / 4, 16, 4096));
  b.reserved = 128 + file_limit / 16;
  const uint64_t fixed = b.reserved + static_cast<uint64_t>(b.storage_max_open_files);
  if (file_limit < fixed + 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "file limit ", file_limit, " is too small: storage and the process keep ", fixed,
        " descriptors and each port needs at least 8 connections; raise it (ulimit -n)"));
  }
  const uint64_t rest = file_limit - fixed;
  b.max_peer_connections =
      max_peer_connections != 0 ? max_peer_connections : std::clamp<uint64_t>(rest / 8, 8, 1024);
  const uint64_t after_peer = rest > b.max_peer_connections ? rest - b.max_peer_connections : 0;
  // Idle connections cost memory too: a derived cap stays at 64 Ki.
  b.max_client_connections =
      max_client_connections != 0 ? max_client_connections : std::min<uint64_t>(after_peer, 65536);
  if (b.max_client_connections + b.max_peer_connections > rest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "connection caps (client ", b.max_client_connections, " + peer ", b.max_peer_connections,
        ") exceed the file limit ", file_limit, " minus ", fixed,
        " descriptors kept for storage and the process; raise the limit (ulimit -n) or lower "
        "--max-client-connections / --max-peer-connections"));
  }
  if (b.max_client_connections < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("file limit ", file_limit, " leaves ", b.max_client_connections,
                     " client connections (need 8); raise it (ulimit -n)"));
  }
  return b;
}

}  // namespace tessera::server
