// MetricsHttpServer: the small HTTP/1.1 server of --metrics-listen (/metrics,
// /healthz, /readyz), optionally HTTPS (--metrics-tls).
//
// It is GNU libmicrohttpd (Debian's libmicrohttpd-dev; TLS by GnuTLS), run
// with an internal pool of kHttpThreads event-driven threads: a connection
// holds a thread only while its handler runs, so half-sent requests
// (slowloris) cannot starve /healthz. (Debian's civetweb, used before,
// crashes on every TLS connection under OpenSSL 3.)
//
// Bounds: at most kHttpMaxConnections open connections (beyond, new ones are
// closed at once), each closed after kHttpRequestTimeout without progress
// and after its response (no keep-alive: an idle scraper holds nothing);
// requests have no body and their headers fit in libmicrohttpd's 32 KiB
// per-connection memory; the kernel queues at most kHttpBacklog not yet
// accepted.
//
// Certificate rotation: with TLS, the files are read again every second
// (and on ReloadTls()); when their contents changed and form a usable pair,
// a new daemon takes over the listening socket (the old one stops accepting
// and finishes its connections), so new connections use the new
// certificate without a restart and without a moment of refused
// connections. Unusable files leave the old pair in use and are reported.
//
// Thread-safety: handlers run on the pool's threads, concurrently, and must
// be thread-safe. All methods are thread-safe; Stop() (or the destructor)
// waits for running handlers.
#ifndef TESSERA_SERVER_OBSERVABILITY_HTTP_SERVER_H_
#define TESSERA_SERVER_OBSERVABILITY_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace tessera::server {

// A response of MetricsHttpServer.
struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

// HTTPS: PEM files of the server's certificate (chain) and private key.
struct HttpTlsFiles {
  std::string cert;
  std::string key;
};

class MetricsHttpServer {
 public:
  using Handler = std::function<HttpResponse()>;
  static constexpr int kHttpThreads = 4;
  static constexpr absl::Duration kHttpRequestTimeout = absl::Seconds(2);
  static constexpr int kHttpMaxConnections = 64;
  static constexpr int kHttpBacklog = 64;

  // Listens on `address` ("host:port"; port 0 picks one); GET and HEAD on
  // the paths of `handlers`, 404 elsewhere, 405 for other methods. With
  // `tls`, HTTPS only. Errors: kInvalidArgument (malformed address, or
  // unusable TLS files), kUnavailable (cannot bind).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& address, std::map<std::string, Handler> handlers,
      std::optional<HttpTlsFiles> tls = std::nullopt);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  int port() const { return port_; }
  bool tls() const { return tls_files_.has_value(); }
  // With TLS: reads the files again and, if they changed, serves new
  // connections with them. Errors (kInvalidArgument: unreadable or not a
  // usable certificate and key) leave the pair in use unchanged. Without
  // TLS: OK, nothing to do.
  absl::Status ReloadTls() ABSL_LOCKS_EXCLUDED(mu_);
  void Stop() ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Pem {
    std::string cert;
    std::string key;
    bool operator==(const Pem&) const = default;
  };

  MetricsHttpServer(std::map<std::string, Handler> handlers, std::optional<HttpTlsFiles> tls)
      : handlers_(std::move(handlers)), tls_files_(std::move(tls)) {}
  // A daemon serving the listening socket `fd` (with `pem` if TLS), or null.
  MHD_Daemon* StartDaemon(int fd, const std::optional<Pem>& pem);
  static absl::StatusOr<Pem> ReadPem(const HttpTlsFiles& files);
  static int Dispatch(void* self, MHD_Connection* connection, const char* url, const char* method);
  void WatchFiles();

  const std::map<std::string, Handler> handlers_;
  const std::optional<HttpTlsFiles> tls_files_;
  int port_ = 0;
  absl::Mutex mu_;
  MHD_Daemon* daemon_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::optional<Pem> pem_ ABSL_GUARDED_BY(mu_);  // in use, with TLS
  absl::Notification stopping_;
  std::thread watcher_;  // with TLS: WatchFiles()
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_OBSERVABILITY_HTTP_SERVER_H_
