#include "server/observability/grpc_log.h"

#include <atomic>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpc/support/log.h"
#include "spdlog/spdlog.h"

namespace tessera::server {
namespace {

std::atomic<uint64_t> handshake_failures{0};

struct Source {
  absl::Time last_logged = absl::InfinitePast();
  uint64_t suppressed = 0;
};

absl::Mutex sources_mu;
// Keyed by gRPC's source location: a bounded set (gRPC's own log calls).
absl::flat_hash_map<std::string, Source>* sources ABSL_GUARDED_BY(sources_mu) =
    new absl::flat_hash_map<std::string, Source>();

void Log(gpr_log_func_args* args) {
  if (args->severity != GPR_LOG_SEVERITY_ERROR) return;
  const absl::string_view message = args->message != nullptr ? args->message : "";
  if (absl::StrContains(message, "Handshake failed")) {
    handshake_failures.fetch_add(1, std::memory_order_relaxed);
  }
  uint64_t suppressed = 0;
  {
    const absl::Time now = absl::Now();
    absl::MutexLock lock(&sources_mu);
    Source& source =
        (*sources)[absl::StrCat(args->file != nullptr ? args->file : "?", ":", args->line)];
    if (now - source.last_logged < kGrpcLogInterval) {
      ++source.suppressed;
      return;
    }
    source.last_logged = now;
    suppressed = source.suppressed;
    source.suppressed = 0;
  }
  if (suppressed == 0) {
    spdlog::warn("grpc: {}", std::string(message));
  } else {
    spdlog::warn("grpc: {} (and {} more like it in the last {} s)", std::string(message),
                 suppressed, absl::ToInt64Seconds(kGrpcLogInterval));
  }
}

}  // namespace

void RouteGrpcCoreLogs() { gpr_set_log_function(Log); }

uint64_t TlsHandshakeFailures() { return handshake_failures.load(std::memory_order_relaxed); }

}  // namespace tessera::server
