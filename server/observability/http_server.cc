#include "server/observability/http_server.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace tessera::server {

namespace {

// "host:port" -> a listening socket (SO_REUSEADDR, non-blocking), or an error.
absl::StatusOr<int> Listen(const std::string& address) {
  const size_t colon = address.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(absl::string_view(address).substr(colon + 1), &port) || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad address '", address, "': expected host:port"));
  }
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* results = nullptr;
  const std::string port_text = absl::StrCat(port);
  if (int rc = getaddrinfo(host.c_str(), port_text.c_str(), &hints, &results); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad address '", address, "': ", gai_strerror(rc)));
  }
  std::string error = "no address";
  int fd = -1;
  for (addrinfo* a = results; a != nullptr && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      error = strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 ||
        listen(fd, MetricsHttpServer::kHttpBacklog) != 0) {
      error = strerror(errno);
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(results);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("metrics HTTP server cannot listen on ", address, ": ", error));
  }
  return fd;
}

int PortOf(int fd) {
  sockaddr_storage addr{};
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return 0;
  if (addr.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
  if (addr.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  return 0;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // A PEM file is a few KiB; a huge one is a mistake, not a certificate.
  if (bytes.size() > (1 << 20))
    return absl::InvalidArgumentError(absl::StrCat(path, " is > 1 MiB"));
  return bytes;
}

}  // namespace

absl::StatusOr<MetricsHttpServer::Pem> MetricsHttpServer::ReadPem(const HttpTlsFiles& files) {
  Pem pem;
  absl::StatusOr<std::string> cert = ReadFile(files.cert);
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadFile(files.key);
  if (!key.ok()) return key.status();
  pem.cert = *std::move(cert);
  pem.key = *std::move(key);
  return pem;
}

MHD_Daemon* MetricsHttpServer::StartDaemon(int fd, const std::optional<Pem>& pem) {
  // A request has no body: the handler answers at its first call.
  auto access = +[](void* self, MHD_Connection* connection, const char* url, const char* method,
                    const char* /*version*/, const char* /*upload_data*/,
                    size_t* /*upload_data_size*/, void** /*state*/) -> MHD_Result {
    return static_cast<MHD_Result>(Dispatch(self, connection, url, method));
  };
  std::vector<MHD_OptionItem> options;
  unsigned int flags;
  if (fd >= 0) {
    flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ITC;
    options = {{MHD_OPTION_LISTEN_SOCKET, fd, nullptr},
               {MHD_OPTION_THREAD_POOL_SIZE, kHttpThreads, nullptr},
               {MHD_OPTION_CONNECTION_LIMIT, kHttpMaxConnections, nullptr},
               {MHD_OPTION_CONNECTION_TIMEOUT, absl::ToInt64Seconds(kHttpRequestTimeout), nullptr}};
  } else {
    flags = MHD_USE_NO_LISTEN_SOCKET;  // only parses `pem`
  }
  if (pem.has_value()) {
    flags |= MHD_USE_TLS;
    options.push_back({MHD_OPTION_HTTPS_MEM_CERT, 0, const_cast<char*>(pem->cert.c_str())});
    options.push_back({MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(pem->key.c_str())});
  }
  options.push_back({MHD_OPTION_END, 0, nullptr});
  return MHD_start_daemon(flags, 0, nullptr, nullptr, access, this, MHD_OPTION_ARRAY,
                          options.data(), MHD_OPTION_END);
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, std::map<std::string, Handler> handlers,
    std::optional<HttpTlsFiles> tls) {
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(std::move(handlers), std::move(tls)));
  std::optional<Pem> pem;
  if (server->tls_files_.has_value()) {
    absl::StatusOr<Pem> read = ReadPem(*server->tls_files_);
    if (!read.ok()) return read.status();
    pem = *std::move(read);
  }
  absl::StatusOr<int> fd = Listen(address);
  if (!fd.ok()) return fd.status();
  server->port_ = PortOf(*fd);
  bool started;
  {
    absl::MutexLock lock(&server->mu_);
    server->daemon_ = server->StartDaemon(*fd, pem);
    server->pem_ = pem;
    started = server->daemon_ != nullptr;
  }
  if (!started) {
    close(*fd);
    return pem.has_value() ? absl::InvalidArgumentError(absl::StrCat(
                                 "metrics HTTPS: ", server->tls_files_->cert, " and ",
                                 server->tls_files_->key, " are not a usable certificate and key"))
                           : absl::UnavailableError(absl::StrCat("metrics HTTP server on ", address,
                                                                 " failed to start"));
  }
  if (server->tls_files_.has_value()) {
    server->watcher_ = std::thread([s = server.get()] { s->WatchFiles(); });
  }
  return server;
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

void MetricsHttpServer::Stop() {
  if (!stopping_.HasBeenNotified()) stopping_.Notify();
  if (watcher_.joinable()) watcher_.join();
  MHD_Daemon* daemon;
  {
    absl::MutexLock lock(&mu_);
    daemon = std::exchange(daemon_, nullptr);
  }
  // Waits for running handlers; closes the listening socket.
  if (daemon != nullptr) MHD_stop_daemon(daemon);
}

void MetricsHttpServer::WatchFiles() {
  absl::Status last = absl::OkStatus();
  // Bounded by Stop(): one check a second until then.
  while (!stopping_.WaitForNotificationWithTimeout(absl::Seconds(1))) {
    absl::Status reloaded = ReloadTls();
    if (!reloaded.ok() && reloaded != last) {
      spdlog::error("metrics HTTPS keeps its certificate: {}", std::string(reloaded.message()));
    }
    last = reloaded;
  }
}

absl::Status MetricsHttpServer::ReloadTls() {
  if (!tls_files_.has_value()) return absl::OkStatus();
  absl::StatusOr<Pem> pem = ReadPem(*tls_files_);
  if (!pem.ok()) return pem.status();
  {
    absl::MutexLock lock(&mu_);
    if (daemon_ == nullptr || pem_ == *pem) return absl::OkStatus();
  }
  // Parse the pair before touching the serving daemon.
  if (MHD_Daemon* check = StartDaemon(-1, *pem); check != nullptr) {
    MHD_stop_daemon(check);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(tls_files_->cert, " and ", tls_files_->key,
                                                   " are not a usable certificate and key"));
  }
  MHD_Daemon* old;
  bool rotated;
  {
    absl::MutexLock lock(&mu_);
    if (daemon_ == nullptr || pem_ == *pem) return absl::OkStatus();  // stopped, or done
    // The old daemon stops accepting; connections arriving meanwhile wait
    // in the kernel's queue for the new one.
    const int fd = MHD_quiesce_daemon(daemon_);
    if (fd < 0) return absl::InternalError("cannot hand the metrics listening socket over");
    MHD_Daemon* fresh = StartDaemon(fd, *pem);
    rotated = fresh != nullptr;
    if (!rotated) fresh = StartDaemon(fd, pem_);  // keep serving with the old pair
    if (fresh == nullptr) {
      spdlog::critical("metrics HTTPS stopped: no daemon could take the listening socket over");
      close(fd);
    }
    old = std::exchange(daemon_, fresh);
    if (rotated) pem_ = *pem;
  }
  MHD_stop_daemon(old);  // finishes its connections (each within the request timeout)
  if (!rotated) {
    return absl::InternalError(absl::StrCat("the metrics server could not start with ",
                                            tls_files_->cert, "; it keeps the old certificate"));
  }
  spdlog::info("metrics HTTPS: new connections use the rotated certificate {}", tls_files_->cert);
  return absl::OkStatus();
}

int MetricsHttpServer::Dispatch(void* self_ptr, MHD_Connection* connection, const char* url,
                                const char* method_text) {
  const auto* self = static_cast<const MetricsHttpServer*>(self_ptr);
  const std::string path = url != nullptr ? url : "";
  const std::string method = method_text != nullptr ? method_text : "";
  HttpResponse response;
  auto it = self->handlers_.find(path);
  if (it == self->handlers_.end()) {
    response = {404, "text/plain; charset=utf-8", "not found\n"};
  } else if (method != "GET" && method != "HEAD") {
    response = {405, "text/plain; charset=utf-8", "method not allowed\n"};
  } else {
    response = it->second();
  }
  // libmicrohttpd leaves the body out for HEAD itself.
  MHD_Response* out = MHD_create_response_from_buffer(response.body.size(), response.body.data(),
                                                      MHD_RESPMEM_MUST_COPY);
  if (out == nullptr) return MHD_NO;
  MHD_add_response_header(out, "Content-Type", response.content_type.c_str());
  MHD_add_response_header(out, "Cache-Control", "no-cache");
  MHD_add_response_header(out, "Connection", "close");
  const MHD_Result queued =
      MHD_queue_response(connection, static_cast<unsigned int>(response.status), out);
  MHD_destroy_response(out);
  return queued;
}

}  // namespace tessera::server
