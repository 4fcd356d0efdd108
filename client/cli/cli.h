// The `tessera` CLI's shared parts: parsed arguments, exit codes, output and
// error helpers (cli_util.cc), and the coordination commands (lease, lock,
// elect: coordination.cc). tessera_main.cc parses and dispatches.
#ifndef TESSERA_CLIENT_CLI_CLI_H_
#define TESSERA_CLIENT_CLI_CLI_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/tls.h"

namespace tessera::client::cli {

constexpr int kExitOk = 0;
constexpr int kExitNotFound = 1;
constexpr int kExitUsage = 2;
constexpr int kExitUnavailable = 3;
constexpr int kExitError = 4;

struct Args {
  std::vector<std::string> endpoints = {"127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"};
  absl::Duration timeout = absl::Seconds(5);
  Consistency consistency = Consistency::kLinearizable;
  absl::Duration max_staleness = absl::Seconds(5);
  bool json = false;
  std::optional<std::string> prefix, start, end, version;
  std::optional<uint32_t> limit;
  std::optional<uint64_t> rev, count;
  std::optional<std::string> resume;
  std::optional<uint64_t> lease;      // put --lease ID
  std::optional<absl::Duration> ttl;  // lock, elect: --ttl
  TlsOptions tls;                     // --tls-ca, --tls-cert, --tls-key (or TESSERA_TLS_*)
  std::string user, password;         // --user, --password (or TESSERA_USER, TESSERA_PASSWORD)
  bool no_password = false;           // user add --no-password
  // limits set: --storage-quota-bytes, --ops-per-sec, --bytes-per-sec (for
  // every user, or one with --for-user)
  std::optional<uint64_t> storage_quota_bytes, ops_per_sec, bytes_per_sec;
  std::optional<std::string> for_user;
  std::vector<std::string> positional;
};

// JSON string literal of arbitrary bytes (non-printable ones as \u00XX).
std::string JsonString(const std::string& s);
// One-line text of an error, without the status code dump.
std::string OneLine(const absl::Status& s);
// Whether the CLI speaks TLS (for the hint Fail() adds to connection errors).
void NoteTlsConfigured(bool tls);
// Prints "tessera: COMMAND: error" (with `note` after it) on stderr and
// returns the error's exit code.
int Fail(const std::string& command, const absl::Status& s, const std::string& note = "");
// Writes bytes to stdout as they are.
void WriteRaw(const std::string& bytes);

// A lease id as the CLI prints and reads it: 16 hex digits.
std::string LeaseIdText(uint64_t id);
std::optional<uint64_t> ParseLeaseId(const std::string& text);

// Coordination commands (coordination.cc). Check* validates the command
// line before the cluster is contacted (the usage error, or nullopt);
// Run* runs it and returns the exit code.
std::optional<std::string> CheckCoordination(const Args& args);
int RunLease(Client& client, const Args& args);
int RunLock(Client& client, const Args& args);
int RunElect(Client& client, const Args& args);
// `auth`, `user` and `role` (auth.cc), likewise.
std::optional<std::string> CheckAuthCommand(const Args& args);
int RunAuth(Client& client, const Args& args, const CallOptions& call);

}  // namespace tessera::client::cli

#endif  // TESSERA_CLIENT_CLI_CLI_H_
