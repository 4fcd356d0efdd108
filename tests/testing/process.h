// Helpers for tests that run real processes on 127.0.0.1: port reservations,
// child processes stopped by pid, temporary directories and log tails.
// Header-only; used by the server integration and client end-to-end tests.
#ifndef TESSERA_TESTS_TESTING_PROCESS_H_
#define TESSERA_TESTS_TESTING_PROCESS_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera::testing {

// Reserves a 127.0.0.1 port for a server that a test starts later (or
// restarts): a socket bound with SO_REUSEADDR (but never listening) holds the
// port, so the kernel hands it to nobody else (no ephemeral port, no bind
// without SO_REUSEADDR), while a server that sets SO_REUSEADDR (tessera's
// gRPC servers, server/transport/grpc_server.h; gRPC's own listener) can bind and
// listen on it: Linux lets SO_REUSEADDR sockets share a port as long as at
// most one of them listens. So a second server on the same port still fails
// with "address in use", as in production. Connections go only to listening
// sockets, so the reservation never steals one.
class PortReservation {
 public:
  // Aborts if no port can be reserved (the test cannot run then).
  PortReservation() {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd_ < 0 || setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) abort();
    sockaddr_in addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) abort();
    socklen_t len = sizeof(addr);
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) abort();
    port_ = ntohs(addr.sin_port);
  }
  ~PortReservation() { close(fd_); }
  PortReservation(const PortReservation&) = delete;
  PortReservation& operator=(const PortReservation&) = delete;

  int port() const { return port_; }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

// One child process (e.g. a tessera-server). Stopped by pid: SIGKILL and
// reaped in the destructor, also when a test fails.
class ChildProcess {
 public:
  ChildProcess() = default;
  ~ChildProcess() { Kill(); }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Starts `args` (args[0] is the binary) with stdout+stderr appended to
  // `log`. A `file_limit` > 0 becomes the child's RLIMIT_NOFILE (soft and
  // hard). Aborts if it is already running or fork fails.
  void Start(const std::vector<std::string>& args, const std::string& log, int file_limit = 0) {
    if (pid_ > 0) abort();
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {  // child: async-signal-safe calls only
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      // Inherit nothing else: not the port reservations, not the test's
      // gRPC sockets and event fds.
      for (int other = 3; other < 1024; ++other) {
        if (other != fd) close(other);
      }
      if (fd > 2) close(fd);
      if (file_limit > 0) {
        rlimit limit{static_cast<rlim_t>(file_limit), static_cast<rlim_t>(file_limit)};
        if (setrlimit(RLIMIT_NOFILE, &limit) != 0) _exit(126);
      }
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
    pid_ = pid;
  }

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }

  // Waits for the process to exit; returns its exit code, 128 + signal if a
  // signal ended it, or -1 on timeout (it keeps running).
  int Wait(absl::Duration timeout) {
    if (pid_ <= 0) return -1;
    absl::Time deadline = absl::Now() + timeout;
    while (true) {
      int status = 0;
      pid_t r = waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        if (WIFEXITED(status)) return WEXITSTATUS(status);
        if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
        return -1;
      }
      if (absl::Now() >= deadline) return -1;
      absl::SleepFor(absl::Milliseconds(10));
    }
  }

  // kill -9 and reap. Idempotent.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
};

// Creates a fresh directory under $TMPDIR (or /tmp) named `prefix`-XXXXXX.
inline std::string MakeTempDir(const std::string& prefix) {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/", prefix, "-XXXXXX");
  std::vector<char> buffer(pattern.begin(), pattern.end());
  buffer.push_back('\0');
  if (mkdtemp(buffer.data()) == nullptr) abort();
  return buffer.data();
}

// The last `lines` lines of the file at `path`.
inline std::string Tail(const std::string& path, int lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string line; std::getline(in, line);) all.push_back(line);
  size_t from = all.size() > static_cast<size_t>(lines) ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + from, all.end(), "\n");
}

// Ends a test's cluster of child processes: kills each one, prints the tail
// of each one's log (`log_of(i)`) to stderr if `print_logs` (the test
// failed), and removes `dir`.
template <size_t N>
void TearDownCluster(ChildProcess (&processes)[N], const std::function<std::string(int)>& log_of,
                     const std::string& dir, bool print_logs, int tail_lines = 40) {
  for (ChildProcess& p : processes) p.Kill();
  if (print_logs) {
    for (size_t i = 0; i < N; ++i) {
      std::cerr << "---- node " << i + 1 << " log (tail) ----\n"
                << Tail(log_of(static_cast<int>(i)), tail_lines) << "\n";
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
}

// Makes peer certificates for members 1..`members` in `dir` with
// deploy/gen-certs.sh (kept if already there) and returns member `id`'s
// tessera-server flags for them. Aborts if the script fails.
inline std::vector<std::string> PeerTlsFlags(const std::string& dir, int members, uint64_t id) {
  std::string command = absl::StrCat(TESSERA_SOURCE_DIR, "/deploy/gen-certs.sh '", dir, "'");
  for (int m = 1; m <= members; ++m) absl::StrAppend(&command, " ", m);
  if (std::system(command.c_str()) != 0) abort();
  return {absl::StrCat("--peer-cert=", dir, "/node-", id, ".crt"),
          absl::StrCat("--peer-key=", dir, "/node-", id, ".key"),
          absl::StrCat("--peer-ca=", dir, "/ca.crt")};
}

}  // namespace tessera::testing

#endif  // TESSERA_TESTS_TESTING_PROCESS_H_
