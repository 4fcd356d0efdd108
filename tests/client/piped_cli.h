// Runs the `tessera` CLI as a child process whose stdout is a pipe that the
// test reads line by line, as the next tool of a shell pipeline would, and
// samples the child's peak RSS while it runs. Header-only; used by
// cli_test.cc (a scan's first keys arrive before its last page is served) and
// the scan memory tests.
//
// Peak RSS is VmHWM of /proc/<pid>/status, sampled whenever output arrives
// and at least every 100 ms; VmHWM only grows, so the last sample covers the
// whole run up to the last pipe-full of output (the pipe is shrunk to one
// page so the child cannot run far ahead of the reader). wait4's ru_maxrss
// would not do: it keeps the peak across exec, so it includes the RSS of the
// test process that forked the child.
//
// The child is stopped by pid (SIGKILL and reaped) in the destructor, also
// when a test fails. Not thread-safe.
#ifndef TESSERA_TESTS_CLIENT_PIPED_CLI_H_
#define TESSERA_TESTS_CLIENT_PIPED_CLI_H_

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tessera::client::testing {

// VmHWM of process `pid` in KiB; nullopt once it has exited (a zombie has
// no memory) or if /proc cannot be read.
inline std::optional<int64_t> PeakRssKib(pid_t pid) {
  std::ifstream status(absl::StrCat("/proc/", pid, "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    std::string digits;
    for (char c : line) {
      if (c >= '0' && c <= '9') digits += c;
    }
    int64_t kib = 0;
    if (absl::SimpleAtoi(digits, &kib)) return kib;
  }
  return std::nullopt;
}

class PipedCli {
 public:
  // Starts `argv` (argv[0] is the binary) with stdin from /dev/null, stdout
  // on the pipe and stderr appended to `stderr_path`. Aborts if it cannot.
  PipedCli(const std::vector<std::string>& argv, const std::string& stderr_path) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) abort();
    // One page: the child blocks as soon as the reader falls behind.
    (void)fcntl(fds[0], F_SETPIPE_SZ, 4096);
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_t pid = fork();
    if (pid < 0) abort();
    if (pid == 0) {  // child: async-signal-safe calls only
      int in = open("/dev/null", O_RDONLY);
      int err = open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (in < 0 || err < 0 || dup2(in, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(err, 2) < 0) {
        _exit(126);
      }
      for (int other = 3; other < 1024; ++other) close(other);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      signal(SIGPIPE, SIG_DFL);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    pid_ = pid;
    out_ = fds[0];
    pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
    if (pidfd_ < 0) abort();
  }
  ~PipedCli() {
    Kill();
    close(out_);
    close(pidfd_);
  }
  PipedCli(const PipedCli&) = delete;
  PipedCli& operator=(const PipedCli&) = delete;

  pid_t pid() const { return pid_; }

  // The next line of stdout without its '\n' (a last line without one too);
  // nullopt at EOF, or when `deadline` passes first (then timed_out()).
  std::optional<std::string> ReadLine(absl::Time deadline) {
    while (true) {
      if (size_t nl = buffer_.find('\n', std::max(head_, scanned_)); nl != std::string::npos) {
        std::string line = buffer_.substr(head_, nl - head_);
        head_ = nl + 1;
        return line;
      }
      scanned_ = buffer_.size();
      if (eof_) {
        if (head_ == buffer_.size()) return std::nullopt;
        std::string line = buffer_.substr(head_);
        head_ = buffer_.size();
        return line;
      }
      buffer_.erase(0, head_);  // what is left is a partial line
      scanned_ -= head_;
      head_ = 0;
      if (!Fill(deadline)) {
        timed_out_ = true;
        return std::nullopt;
      }
    }
  }
  bool timed_out() const { return timed_out_; }

  // The highest VmHWM sampled so far, in KiB (0 before the first sample).
  int64_t peak_rss_kib() const { return peak_rss_kib_; }

  // Waits until the child exits; returns its exit code, 128 + the signal
  // that ended it, or -1 if `deadline` passed first (then it is killed).
  int Wait(absl::Time deadline) {
    if (pid_ <= 0) return -1;
    while (true) {
      Sample();
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) {
        Kill();
        return -1;
      }
      pollfd p{pidfd_, POLLIN, 0};
      const int timeout_ms =
          static_cast<int>(std::min<int64_t>(100, absl::ToInt64Milliseconds(left) + 1));
      if (poll(&p, 1, timeout_ms) <= 0) continue;
      int status = 0;
      if (waitpid(pid_, &status, 0) != pid_) return -1;
      pid_ = -1;
      if (WIFEXITED(status)) return WEXITSTATUS(status);
      if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
      return -1;
    }
  }

  // SIGKILL and reap. Idempotent.
  void Kill() {
    if (pid_ <= 0) return;
    kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
    pid_ = -1;
  }

 private:
  // Reads what the pipe holds into buffer_, waiting for it in slices of at
  // most 100 ms (sampling RSS after each); false if `deadline` passed.
  bool Fill(absl::Time deadline) {
    while (true) {
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      pollfd p{out_, POLLIN, 0};
      const int timeout_ms =
          static_cast<int>(std::min<int64_t>(100, absl::ToInt64Milliseconds(left) + 1));
      const int ready = poll(&p, 1, timeout_ms);
      Sample();
      if (ready <= 0) continue;
      char chunk[65536];
      const ssize_t n = read(out_, chunk, sizeof(chunk));
      Sample();
      if (n < 0) continue;  // EINTR
      if (n == 0) {
        eof_ = true;
      } else {
        buffer_.append(chunk, static_cast<size_t>(n));
      }
      return true;
    }
  }

  void Sample() {
    if (pid_ <= 0) return;
    if (std::optional<int64_t> kib = PeakRssKib(pid_)) {
      peak_rss_kib_ = std::max(peak_rss_kib_, *kib);
    }
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int pidfd_ = -1;
  std::string buffer_;
  size_t head_ = 0;     // buffer_[head_, end) is not returned yet
  size_t scanned_ = 0;  // buffer_[head_, scanned_) holds no '\n'
  bool eof_ = false;
  bool timed_out_ = false;
  int64_t peak_rss_kib_ = 0;
};

}  // namespace tessera::client::testing

#endif  // TESSERA_TESTS_CLIENT_PIPED_CLI_H_
