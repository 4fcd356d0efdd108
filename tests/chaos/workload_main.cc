// tessera-chaos-workload: the client half of a chaos run (run.sh drives it).
//
//   tessera-chaos-workload --endpoints=10.77.3.1:7001,... --history=FILE
//       [--duration-s=60] [--threads=8] [--keys=10] [--bank-threads=2]
//       [--accounts=5] [--op-timeout-ms=2000] [--final-gate=FILE]
//       [--final-wait-s=300] [--think-ms=20] [--consistency=linearizable|lease]
//       [--clients-per-thread=1] [--testing-stale-gets]
//
// Register clients (--threads) do put / get / cas / delete with unique
// values ("p<process>-<n>") over --keys keys "reg:{<i>}" (one hash tag each,
// so they spread over the shards). Bank clients (--bank-threads) move money
// between --accounts accounts "bank:{1}:acct:<i>" (one shard) with a Txn that
// compares both accounts' versions, and read all accounts in one Txn.
//
// --consistency=lease makes the register clients' gets LEASE reads (served
// by the leader from its lease, without a quorum round). They are recorded
// as ordinary gets: a lease read must be linearizable too, so the checker
// judges them like the others. The final reads stay linearizable.
//
// --clients-per-thread=N gives each register worker N independent Clients
// (each its own session and leader cache) and has it use a random one per
// call, so many clients are idle for seconds at a time, as most
// applications' clients are. An idle client still caches the leader it
// last saw: after a leader stalls and resumes, those are the clients whose
// next call goes to the old leader (chaos.py's pause-isolated nemesis).
//
// Every call is recorded in the history (history.h) with the outcome the
// caller saw, mapped conservatively (tests/chaos/README.md, "notes for the
// workload writer"):
//   ok     the call returned OK (a get of a missing key is ok with v=~);
//   fail   definitely not applied: INVALID_ARGUMENT, or a cas/transfer Txn
//          whose compares did not hold (succeeded=false);
//   info   anything else (DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED,
//          FAILED_PRECONDITION of an evicted session, ...).
// The SDK's own retries keep exactly-once; we record what the caller sees.
//
// After --duration-s the clients stop. With --final-gate, the workload then
// waits (at most --final-wait-s) until that file exists -- the harness creates
// it once it has healed the network and restarted every node -- and reads
// every register key (`final` lines) and the bank accounts (one recorded
// txn_read), then writes the `bank` line. Exit status: 0 done, 1 the final
// reads could not complete, 2 bad usage or setup error.
//
// --testing-stale-gets (negative control only): gets use STALE consistency
// (any replica, up to 30 s behind) but are still recorded as ordinary gets,
// so the linearizability checker must find stale reads under partitions.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "tests/chaos/history.h"

ABSL_FLAG(std::string, endpoints, "", "client API addresses of the nodes, comma-separated");
ABSL_FLAG(std::string, history, "", "history file to write (required)");
ABSL_FLAG(int32_t, duration_s, 60, "how long the clients run");
ABSL_FLAG(int32_t, threads, 8, "register clients");
ABSL_FLAG(int32_t, keys, 10, "register keys");
ABSL_FLAG(int32_t, bank_threads, 2, "bank clients (0: no bank workload)");
ABSL_FLAG(int32_t, accounts, 5, "bank accounts");
ABSL_FLAG(int64_t, initial_balance, 100, "each account's starting balance");
ABSL_FLAG(int32_t, op_timeout_ms, 2000, "deadline of one call, SDK retries included");
ABSL_FLAG(std::string, final_gate, "", "wait for this file, then read the final state");
ABSL_FLAG(int32_t, final_wait_s, 300, "longest wait for --final-gate");
ABSL_FLAG(int32_t, think_ms, 20,
          "each client pauses a random 0..think_ms between calls (bounds the history size)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the clients' choices");
ABSL_FLAG(std::string, consistency, "linearizable",
          "consistency of the register gets: linearizable or lease (both recorded as gets)");
ABSL_FLAG(int32_t, clients_per_thread, 1,
          "independent Clients per register worker, one picked at random per call");
ABSL_FLAG(bool, testing_stale_gets, false,
          "NEGATIVE CONTROL: read with STALE consistency but record ordinary gets");

namespace tessera::chaos {
namespace {

using client::CallOptions;
using client::Client;
using client::Compare;
using client::Consistency;
using client::TxnOp;
using client::TxnRequest;

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string RegKey(int i) { return absl::StrCat("reg:{", i, "}"); }
std::string AcctKey(int i) { return absl::StrCat("bank:{1}:acct:", i); }

struct Counters {
  std::atomic<int64_t> ok{0}, fail{0}, info{0};
};

class Workload {
 public:
  Workload(Client* client, HistoryWriter* history) : client_(client), history_(history) {
    num_keys_ = absl::GetFlag(FLAGS_keys);
    accounts_ = absl::GetFlag(FLAGS_accounts);
    timeout_ = absl::Milliseconds(absl::GetFlag(FLAGS_op_timeout_ms));
    stale_gets_ = absl::GetFlag(FLAGS_testing_stale_gets);
    lease_gets_ = absl::GetFlag(FLAGS_consistency) == "lease";
    think_ms_ = absl::GetFlag(FLAGS_think_ms);
    last_written_.resize(num_keys_);
  }

  CallOptions Opts() const {
    CallOptions o;
    o.timeout = timeout_;
    return o;
  }

  void Record(Op* op, Outcome outcome) {
    op->complete_ns = NowNs();
    op->outcome = outcome;
    (outcome == Outcome::kOk     ? counters_.ok
     : outcome == Outcome::kFail ? counters_.fail
                                 : counters_.info)
        .fetch_add(1);
    absl::Status s = history_->Complete(*op);
    if (!s.ok()) std::fprintf(stderr, "workload: history: %s\n", s.ToString().c_str());
  }

  bool Start(Op* op) {
    op->invoke_ns = NowNs();
    absl::Status s = history_->Invoke(op);
    if (!s.ok()) {
      std::fprintf(stderr, "workload: history: %s\n", s.ToString().c_str());
      return false;
    }
    return true;
  }

  // One register client. A process that saw an unknown outcome continues as
  // a new process (its op may still be pending), as Jepsen does.
  // `pool` (not empty) are its Clients; each call uses a random one.
  void RegisterClient(const std::vector<Client*>& pool, int thread, int threads, absl::Time stop,
                      uint64_t seed) {
    std::mt19937_64 rng(seed);
    int64_t process = thread;
    int64_t n = 0;
    while (absl::Now() < stop) {
      Think(rng);
      // (One client: no draw, so older seeds replay the same calls.)
      Client* cl = pool.size() == 1 ? pool[0] : pool[rng() % pool.size()];
      Op op;
      op.process = process;
      int k = static_cast<int>(rng() % num_keys_);
      op.key = RegKey(k);
      int dice = static_cast<int>(rng() % 100);
      Outcome outcome = Outcome::kUnknown;
      if (dice < 35) {
        op.kind = OpKind::kGet;
        if (!Start(&op)) return;
        CallOptions o = Opts();
        if (stale_gets_) {
          o.consistency = Consistency::kStale;
          o.max_staleness = absl::Seconds(30);
        } else if (lease_gets_) {
          o.consistency = Consistency::kLease;
        }
        absl::StatusOr<client::KeyValue> got = cl->Get(op.key, o);
        if (got.ok()) {
          op.value = got->value;
          outcome = Outcome::kOk;
        } else if (absl::IsNotFound(got.status())) {
          op.value = std::nullopt;
          outcome = Outcome::kOk;
        }
        if (outcome == Outcome::kOk) Remember(k, op.value);
      } else if (dice < 65) {
        op.kind = OpKind::kPut;
        op.value = absl::StrCat("p", process, "-", n++);
        if (!Start(&op)) return;
        absl::StatusOr<client::PutResult> put = cl->Put(op.key, *op.value, Opts());
        outcome = put.ok() ? Outcome::kOk : WriteErrorOutcome(put.status());
        if (outcome == Outcome::kOk) Remember(k, op.value);
      } else if (dice < 90) {
        op.kind = OpKind::kCas;
        op.expected = Recall(k);
        op.value = absl::StrCat("p", process, "-", n++);
        if (!Start(&op)) return;
        TxnRequest txn;
        Compare c;
        c.key = op.key;
        if (op.expected.has_value()) {
          c.target = Compare::Target::kValue;
          c.value = *op.expected;
        } else {
          c.target = Compare::Target::kVersion;
          c.version = 0;  // the key must not exist
        }
        txn.compares.push_back(c);
        txn.success.push_back(TxnOp{TxnOp::Type::kPut, op.key, *op.value});
        absl::StatusOr<client::TxnResult> r = cl->Txn(txn, Opts());
        if (r.ok()) {
          outcome = r->succeeded ? Outcome::kOk : Outcome::kFail;
          if (r->succeeded) Remember(k, op.value);
        } else {
          // Only a compare failure is a definite cas `fail` (README): every
          // other error, even INVALID_ARGUMENT, is recorded as unknown.
          outcome = Outcome::kUnknown;
        }
      } else {
        op.kind = OpKind::kDelete;
        if (!Start(&op)) return;
        absl::StatusOr<bool> del = cl->Delete(op.key, Opts());
        if (del.ok()) {
          op.existed = *del;
          outcome = Outcome::kOk;
          Remember(k, std::nullopt);
        } else {
          outcome = WriteErrorOutcome(del.status());
        }
      }
      Record(&op, outcome);
      if (outcome == Outcome::kUnknown && op.kind != OpKind::kGet) process += threads;
    }
  }

  // Reads all accounts in one Txn (records a txn_read). Returns the values
  // and versions when ok.
  bool ReadAccounts(Client* cl, int64_t process, std::vector<Value>* values,
                    std::vector<uint64_t>* versions, const CallOptions& options) {
    Op op;
    op.process = process;
    op.kind = OpKind::kTxnRead;
    for (int i = 0; i < accounts_; ++i) op.keys.push_back(AcctKey(i));
    if (!Start(&op)) return false;
    TxnRequest txn;
    for (const std::string& key : op.keys) txn.success.push_back(TxnOp{TxnOp::Type::kGet, key, ""});
    absl::StatusOr<client::TxnResult> r = cl->Txn(txn, options);
    if (!r.ok() || r->results.size() != op.keys.size()) {
      Record(&op, Outcome::kUnknown);
      return false;
    }
    versions->clear();
    for (const client::TxnOpResult& res : r->results) {
      op.values.push_back(res.found ? Value(res.value) : std::nullopt);
      versions->push_back(res.found ? res.version : 0);
    }
    *values = op.values;
    Record(&op, Outcome::kOk);
    return true;
  }

  void BankClient(Client* cl, int64_t process, int bank_threads, absl::Time stop, uint64_t seed) {
    std::mt19937_64 rng(seed);
    while (absl::Now() < stop) {
      Think(rng);
      std::vector<Value> values;
      std::vector<uint64_t> versions;
      if (!ReadAccounts(cl, process, &values, &versions, Opts())) continue;
      if (rng() % 3 == 0) continue;  // some reads without a transfer
      int from = static_cast<int>(rng() % accounts_);
      int to = static_cast<int>(rng() % (accounts_ - 1));
      if (to >= from) ++to;
      int64_t a = 0, b = 0;
      if (!values[from] || !values[to] || !absl::SimpleAtoi(*values[from], &a) ||
          !absl::SimpleAtoi(*values[to], &b)) {
        continue;  // the checker reports such a read
      }
      int64_t amount = 1 + static_cast<int64_t>(rng() % 10);
      if (amount > a) continue;
      Op op;
      op.process = process;
      op.kind = OpKind::kTransfer;
      op.keys = {AcctKey(from), AcctKey(to)};
      op.amount = amount;
      if (!Start(&op)) return;
      TxnRequest txn;
      Compare cf;
      cf.key = op.keys[0];
      cf.target = Compare::Target::kVersion;
      cf.version = versions[from];
      Compare ct = cf;
      ct.key = op.keys[1];
      ct.version = versions[to];
      txn.compares = {cf, ct};
      txn.success.push_back(TxnOp{TxnOp::Type::kPut, op.keys[0], absl::StrCat(a - amount)});
      txn.success.push_back(TxnOp{TxnOp::Type::kPut, op.keys[1], absl::StrCat(b + amount)});
      absl::StatusOr<client::TxnResult> r = cl->Txn(txn, Opts());
      Outcome outcome = Outcome::kUnknown;
      if (r.ok()) outcome = r->succeeded ? Outcome::kOk : Outcome::kFail;
      Record(&op, outcome);
      if (outcome == Outcome::kUnknown) process += bank_threads;
    }
  }

  // Creates the accounts (all in one Txn, only if account 0 does not exist).
  // Not recorded: it completes before any recorded op starts.
  absl::Status InitBank(absl::Time give_up) {
    while (absl::Now() < give_up) {
      TxnRequest txn;
      Compare c;
      c.key = AcctKey(0);
      c.target = Compare::Target::kVersion;
      c.version = 0;
      txn.compares.push_back(c);
      for (int i = 0; i < accounts_; ++i) {
        txn.success.push_back(TxnOp{TxnOp::Type::kPut, AcctKey(i),
                                    absl::StrCat(absl::GetFlag(FLAGS_initial_balance))});
      }
      absl::StatusOr<client::TxnResult> r = client_->Txn(txn, Opts());
      if (r.ok()) return absl::OkStatus();  // created now, or earlier by a retry
      std::fprintf(stderr, "workload: bank init: %s (retrying)\n", r.status().ToString().c_str());
      absl::SleepFor(absl::Milliseconds(500));
    }
    return absl::UnavailableError("bank init did not complete");
  }

  // Final state: every register key, then one bank read. Retries each read
  // until it succeeds or `give_up`.
  bool FinalReads(absl::Time give_up, bool bank, int64_t process) {
    for (int k = 0; k < num_keys_; ++k) {
      for (;;) {
        absl::StatusOr<client::KeyValue> got = client_->Get(RegKey(k), Opts());
        if (got.ok() || absl::IsNotFound(got.status())) {
          Value v = got.ok() ? Value(got->value) : std::nullopt;
          if (!history_->Final(RegKey(k), v).ok()) return false;
          break;
        }
        if (absl::Now() > give_up) {
          std::fprintf(stderr, "workload: final read of %s: %s\n", RegKey(k).c_str(),
                       got.status().ToString().c_str());
          return false;
        }
        absl::SleepFor(absl::Milliseconds(200));
      }
    }
    if (bank) {
      std::vector<Value> values;
      std::vector<uint64_t> versions;
      while (!ReadAccounts(client_, process, &values, &versions, Opts())) {
        if (absl::Now() > give_up) return false;
        absl::SleepFor(absl::Milliseconds(200));
      }
      BankConfig config;
      for (int i = 0; i < accounts_; ++i) config.accounts.push_back(AcctKey(i));
      config.total = accounts_ * absl::GetFlag(FLAGS_initial_balance);
      if (!history_->Bank(config).ok()) return false;
    }
    return history_->Sync().ok();
  }

  const Counters& counters() const { return counters_; }

 private:
  void Think(std::mt19937_64& rng) {
    if (think_ms_ > 0) absl::SleepFor(absl::Microseconds(rng() % (think_ms_ * 1000)));
  }
  Outcome WriteErrorOutcome(const absl::Status& s) {
    if (absl::IsInvalidArgument(s)) return Outcome::kFail;
    return Outcome::kUnknown;
  }
  // The cas's expected value: the last value this workload saw for the key.
  void Remember(int k, const Value& v) {
    absl::MutexLock lock(&mu_);
    last_written_[k] = v;
  }
  Value Recall(int k) {
    absl::MutexLock lock(&mu_);
    return last_written_[k];
  }

  Client* client_;
  HistoryWriter* history_;
  int num_keys_ = 10;
  int accounts_ = 5;
  absl::Duration timeout_;
  bool stale_gets_ = false;
  bool lease_gets_ = false;
  int think_ms_ = 20;
  Counters counters_;
  absl::Mutex mu_;
  std::vector<Value> last_written_ ABSL_GUARDED_BY(mu_);
};

int Main() {
  const std::string history_path = absl::GetFlag(FLAGS_history);
  std::vector<std::string> endpoints =
      absl::StrSplit(absl::GetFlag(FLAGS_endpoints), ',', absl::SkipEmpty());
  const int threads = absl::GetFlag(FLAGS_threads);
  const int bank_threads = absl::GetFlag(FLAGS_bank_threads);
  const int per_thread = absl::GetFlag(FLAGS_clients_per_thread);
  const std::string consistency = absl::GetFlag(FLAGS_consistency);
  if (history_path.empty() || endpoints.empty() || threads < 0 || bank_threads < 0 ||
      absl::GetFlag(FLAGS_keys) < 1 || absl::GetFlag(FLAGS_accounts) < 2 || per_thread < 1 ||
      per_thread > 64 || (consistency != "linearizable" && consistency != "lease") ||
      (consistency == "lease" && absl::GetFlag(FLAGS_testing_stale_gets))) {
    std::fprintf(stderr,
                 "usage: tessera-chaos-workload --endpoints=H:P,... --history=FILE "
                 "[--duration-s=60] [--threads=8] [--keys=10] [--bank-threads=2] "
                 "[--accounts=5] [--op-timeout-ms=2000] [--final-gate=FILE] [--seed=N] "
                 "[--consistency=linearizable|lease] [--clients-per-thread=1..64] "
                 "(--testing-stale-gets excludes --consistency=lease)\n");
    return 2;
  }
  client::ClientOptions options;
  options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  options.endpoints = endpoints;
  options.default_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_op_timeout_ms));
  options.attempt_timeout = absl::Milliseconds(500);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "workload: %s\n", client.status().ToString().c_str());
    return 2;
  }
  absl::StatusOr<std::unique_ptr<HistoryWriter>> history = HistoryWriter::Open(history_path);
  if (!history.ok()) {
    std::fprintf(stderr, "workload: %s\n", history.status().ToString().c_str());
    return 2;
  }
  Workload w(client->get(), history->get());
  // One Client (one session, one read-your-writes floor) per worker, as
  // independent clients would be; `client` does the setup and final reads.
  // Register worker t uses clients [t * per_thread, (t + 1) * per_thread);
  // bank worker b uses clients[threads * per_thread + b].
  std::vector<std::unique_ptr<Client>> clients;
  for (int t = 0; t < threads * per_thread + bank_threads; ++t) {
    absl::StatusOr<std::unique_ptr<Client>> c = Client::Create(options);
    if (!c.ok()) {
      std::fprintf(stderr, "workload: %s\n", c.status().ToString().c_str());
      return 2;
    }
    clients.push_back(std::move(*c));
  }
  if (bank_threads > 0) {
    absl::Status s = w.InitBank(absl::Now() + absl::Seconds(60));
    if (!s.ok()) {
      std::fprintf(stderr, "workload: %s\n", s.ToString().c_str());
      return 2;
    }
  }
  std::printf("workload: started %d register (%d clients each, %s gets) + %d bank clients\n",
              threads, per_thread, consistency.c_str(), bank_threads);
  std::fflush(stdout);
  const absl::Time stop = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_duration_s));
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    std::vector<Client*> pool;
    for (int i = 0; i < per_thread; ++i) pool.push_back(clients[t * per_thread + i].get());
    workers.emplace_back(
        [&, t, pool] { w.RegisterClient(pool, t, threads, stop, seed * 1000003 + t); });
  }
  for (int t = 0; t < bank_threads; ++t) {
    // Bank processes are numbered after every possible register process.
    int64_t process = 1000000 + t;
    workers.emplace_back([&, t, process] {
      w.BankClient(clients[threads * per_thread + t].get(), process, bank_threads, stop,
                   seed * 1000003 + 500 + t);
    });
  }
  for (std::thread& t : workers) t.join();
  std::printf("workload: done: ok %lld, fail %lld, info %lld\n",
              static_cast<long long>(w.counters().ok.load()),
              static_cast<long long>(w.counters().fail.load()),
              static_cast<long long>(w.counters().info.load()));
  std::fflush(stdout);

  const std::string gate = absl::GetFlag(FLAGS_final_gate);
  if (gate.empty()) return 0;
  const absl::Time wait_until = absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_final_wait_s));
  while (access(gate.c_str(), F_OK) != 0) {
    if (absl::Now() > wait_until) {
      std::fprintf(stderr, "workload: no final gate %s\n", gate.c_str());
      return 1;
    }
    absl::SleepFor(absl::Milliseconds(100));
  }
  bool ok = w.FinalReads(absl::Now() + absl::Seconds(120), bank_threads > 0, 2000000);
  std::printf("workload: final reads %s\n", ok ? "done" : "FAILED");
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace tessera::chaos

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return tessera::chaos::Main();
}
