// What the tessera-bench tests share: temporary directories, running the
// tessera-bench binary as a child process and reading its JSON line, and a
// 3-node Tessera cluster of real tessera-server processes on reserved
// 127.0.0.1 ports. Every process is started through tests/testing/process.h
// and stopped by pid, also when a test fails. Header-only; the including test
// defines TESSERA_SERVER_BINARY and TESSERA_BENCH_BINARY.
#ifndef TESSERA_TESTS_BENCH_KV_HARNESS_H_
#define TESSERA_TESTS_BENCH_KV_HARNESS_H_

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/testing/process.h"

namespace tessera::bench {

using ::tessera::testing::ChildProcess;
using ::tessera::testing::MakeTempDir;
using ::tessera::testing::PeerTlsFlags;
using ::tessera::testing::PortReservation;
using ::tessera::testing::Tail;

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A temporary directory, removed with everything in it unless the test
// failed (then its logs stay for a look; the path is printed).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix) : path_(MakeTempDir(prefix)) {}
  ~TempDir() {
    if (::testing::Test::HasFailure()) {
      std::cerr << "kept " << path_ << "\n";
      return;
    }
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct BenchRun {
  int exit_code = -1;
  std::string out;   // stdout
  std::string err;   // stderr
  std::string json;  // the last line of stdout

  // A number field of the JSON line; NaN if missing.
  double Number(const std::string& field) const {
    const std::string needle = absl::StrCat("\"", field, "\":");
    const size_t at = json.find(needle);
    if (at == std::string::npos) return std::nan("");
    return std::strtod(json.c_str() + at + needle.size(), nullptr);
  }
};

// A tessera-bench process started with `args` (through /bin/sh `exec`, so
// the pid is the bench's: stdout and stderr go to files of their own).
class BenchProcess {
 public:
  explicit BenchProcess(const std::vector<std::string>& args) {
    std::string command = absl::StrCat("exec '", TESSERA_BENCH_BINARY, "'");
    for (const std::string& a : args) absl::StrAppend(&command, " '", a, "'");
    absl::StrAppend(&command, " 2>'", dir_.path(), "/err'");
    bench_.Start({"/bin/sh", "-c", command}, dir_.path() + "/out");
  }
  ~BenchProcess() { bench_.Kill(); }

  // Waits (up to `timeout`, then kills it) and collects its output.
  BenchRun Finish(absl::Duration timeout) {
    BenchRun run;
    run.exit_code = bench_.Wait(timeout);
    bench_.Kill();  // if it ran over
    run.out = ReadFile(dir_.path() + "/out");
    run.err = ReadFile(dir_.path() + "/err");
    std::vector<std::string> lines = absl::StrSplit(run.out, '\n', absl::SkipEmpty());
    if (!lines.empty()) run.json = lines.back();
    return run;
  }

 private:
  TempDir dir_{"tessera-bench-run"};
  ChildProcess bench_;
};

// Runs tessera-bench with `args` and waits for it (up to 60 s).
inline BenchRun RunBench(const std::vector<std::string>& args) {
  return BenchProcess(args).Finish(absl::Seconds(60));
}

// Three tessera-server processes on reserved 127.0.0.1 ports.
class TesseraCluster {
 public:
  static constexpr int kNodes = 3;

  // `extra_flags` go to every node.
  explicit TesseraCluster(const std::vector<std::string>& extra_flags = {}) {
    std::vector<std::string> members;
    for (int i = 0; i < kNodes; ++i) {
      members.push_back(absl::StrCat(i + 1, "=", api_[i].address(), "/", peer_[i].address()));
    }
    for (int i = 0; i < kNodes; ++i) {
      const std::string node = absl::StrCat(dir_.path(), "/node", i + 1);
      std::vector<std::string> args = {
          TESSERA_SERVER_BINARY, absl::StrCat("--node-id=", i + 1),
          "--data-dir=" + node,  "--initial-cluster=" + absl::StrJoin(members, ","),
          "--shards=8",          "--tick-ms=20",
          "--election-ticks=10", "--port-file=" + node + ".ports"};
      for (std::string& flag : PeerTlsFlags(dir_.path() + "/certs", kNodes, i + 1)) {
        args.push_back(std::move(flag));
      }
      args.insert(args.end(), extra_flags.begin(), extra_flags.end());
      servers_[i].Start(args, node + ".log");
      args_[i] = std::move(args);
    }
  }

  // SIGTERM node `node` (0-based), wait for its drain and exit (its exit
  // code, or -1 if it did not exit within 30 s: then it is killed), and
  // start it again on the same data directory and ports.
  int Restart(int node) {
    servers_[node].Signal(SIGTERM);
    const int code = servers_[node].Wait(absl::Seconds(30));
    if (code == -1) {
      // Hung in the drain: say where before killing it.
      const std::string log = absl::StrCat(dir_.path(), "/node", node + 1, ".log");
      std::cerr << "---- node " << node + 1 << " still running 30 s after SIGTERM ----\n"
                << Tail(log, 40) << "\n";
      if (access("/usr/bin/gdb", X_OK) == 0) {
        // All threads to a file in the (kept) directory; the ones in our
        // code to stderr.
        const std::string file = absl::StrCat(dir_.path(), "/node", node + 1, ".threads");
        const std::string bt = absl::StrCat(
            "/usr/bin/gdb -p ", servers_[node].pid(), " -batch -ex 'thread apply all bt' > ", file,
            " 2>&1; grep -E '^Thread|tessera::' ", file, " | grep -B1 tessera:: | head -200");
        std::cerr << "---- its threads (all of them: " << file << ") ----\n" << std::flush;
        if (std::system(bt.c_str()) != 0) std::cerr << "(gdb failed)\n";
      }
    }
    servers_[node].Kill();
    servers_[node].Start(args_[node], absl::StrCat(dir_.path(), "/node", node + 1, ".log"));
    return code;
  }
  ~TesseraCluster() {
    for (ChildProcess& p : servers_) p.Kill();
    if (::testing::Test::HasFailure()) {
      for (int i = 0; i < kNodes; ++i) {
        std::cerr << "---- node " << i + 1 << " ----\n"
                  << Tail(absl::StrCat(dir_.path(), "/node", i + 1, ".log"), 20) << "\n";
      }
    }
  }

  pid_t pid(int node) const { return servers_[node].pid(); }
  // The metrics port node `node` (0-based) wrote to its port file; 0 if not yet.
  int metrics_port(int node) const {
    const std::string ports = ReadFile(absl::StrCat(dir_.path(), "/node", node + 1, ".ports"));
    const size_t at = ports.find("metrics_port=");
    return at == std::string::npos ? 0 : std::atoi(ports.c_str() + at + 13);
  }

  std::vector<std::string> endpoints() const {
    return {api_[0].address(), api_[1].address(), api_[2].address()};
  }

  // Waits until node `node` (0-based) answers and reports a leader for each
  // of its shards.
  bool WaitReady(client::Client& client, int node = 0) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (absl::Now() < deadline) {
      client::CallOptions call;
      call.timeout = absl::Seconds(1);
      absl::StatusOr<v1::NodeStatusResponse> status = client.NodeStatus(api_[node].address(), call);
      if (status.ok() && status->shards_size() > 0 &&
          std::all_of(status->shards().begin(), status->shards().end(),
                      [](const v1::ShardStatus& s) { return s.leader() != 0; })) {
        return true;
      }
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

 private:
  TempDir dir_{"tessera-bench-cluster"};
  PortReservation api_[kNodes];
  PortReservation peer_[kNodes];
  ChildProcess servers_[kNodes];
  std::vector<std::string> args_[kNodes];
};

}  // namespace tessera::bench

#endif  // TESSERA_TESTS_BENCH_KV_HARNESS_H_
