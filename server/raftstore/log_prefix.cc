#include "server/raftstore/log_prefix.h"

#include <time.h>

#include <atomic>
#include <cstdio>

#include "absl/base/internal/raw_logging.h"
#include "absl/base/log_severity.h"

namespace tessera::server {
namespace {

std::atomic<uint64_t> g_node_id{0};
thread_local bool t_has_shard = false;
thread_local uint64_t t_shard = 0;

// Days since 1970-01-01 -> civil date (H. Hinnant's days_from_civil
// inverse); gmtime_r may take glibc's timezone lock.
void CivilFromDays(int64_t z, int* year, unsigned* month, unsigned* day) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *day = doy - (153 * mp + 2) / 5 + 1;
  *month = mp < 10 ? mp + 3 : mp - 9;
  *year = static_cast<int>(yoe + era * 400 + (*month <= 2));
}

char LevelLetter(absl::LogSeverity severity) {
  switch (severity) {
    case absl::LogSeverity::kInfo:
      return 'I';
    case absl::LogSeverity::kWarning:
      return 'W';
    case absl::LogSeverity::kError:
      return 'E';
    case absl::LogSeverity::kFatal:
      return 'F';
  }
  return 'E';
}

bool Prefix(absl::LogSeverity severity, const char* file, int line, char** buf, int* size) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t seconds = now.tv_sec;
  const int64_t days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400;
  const int64_t of_day = seconds - days * 86400;
  int year = 0;
  unsigned month = 0, day = 0;
  CivilFromDays(days, &year, &month, &day);
  char shard[32] = "";
  if (t_has_shard) std::snprintf(shard, sizeof(shard), "shard=%llu ", (unsigned long long)t_shard);
  const int n = std::snprintf(
      *buf, static_cast<size_t>(*size),
      "%04d-%02u-%02uT%02d:%02d:%02d.%03ld %c node%llu %s[%s:%d] ", year, month, day,
      static_cast<int>(of_day / 3600), static_cast<int>(of_day / 60 % 60),
      static_cast<int>(of_day % 60), now.tv_nsec / 1000000, LevelLetter(severity),
      (unsigned long long)g_node_id.load(std::memory_order_relaxed), shard, file, line);
  if (n > 0) {
    const int used = n < *size ? n : *size;
    *buf += used;
    *size -= used;
  }
  return true;
}

}  // namespace

void InstallRawLogPrefix(uint64_t node_id) {
  g_node_id.store(node_id, std::memory_order_relaxed);
  absl::raw_logging_internal::RegisterLogFilterAndPrefixHook(&Prefix);
}

LogShardScope::LogShardScope(uint64_t shard) : had_(t_has_shard), previous_(t_shard) {
  t_has_shard = true;
  t_shard = shard;
}

LogShardScope::~LogShardScope() {
  t_has_shard = had_;
  t_shard = previous_;
}

}  // namespace tessera::server
