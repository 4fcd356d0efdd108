// tessera: command-line client of a Tessera cluster (client/README.md).
//
// Parses its arguments by hand (flags may come before or after the
// command), runs one SDK call and maps the outcome to an exit code:
//   0 ok, 1 key not found / compare failed, 2 usage error,
//   3 cluster unavailable or timed out, 4 any other error.
// Errors are one line on stderr: "tessera: <command>: <what went wrong>".
// `scan` streams: it prints each batch of keys as the SDK's ScanPages hands
// it over, so its memory does not grow with the number of keys.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "client/cli/cli.h"
#include "client/client.h"
#include "grpc/support/log.h"

namespace tessera::client::cli {
namespace {

constexpr char kHelp[] =
    R"(usage: tessera [flags] COMMAND [ARGS]

commands:
  put KEY [VALUE] [--lease ID]
                           set KEY (VALUE read from stdin when omitted; binary-safe);
                           --lease: KEY is deleted when lease ID ends
  get KEY                  print KEY's value (a newline is added only on a terminal)
  del KEY                  delete KEY
  scan [--prefix P | --start S --end E] [--limit N]
                           keys in byte-wise key order, printed as the pages arrive
                           (text: KEY<TAB>VALUE per line; json: JSON Lines, one
                           {"key","value","version"} object per line). An error
                           midway keeps what was printed, then one line on stderr.
  watch KEY | watch --prefix P [--rev R] [--resume TOKEN] [--count N]
                           stream changes, one line per event as they happen (text:
                           PUT|DELETE<TAB>KEY<TAB>VALUE<TAB>REVISION; json: JSON Lines);
                           --rev R: from revision R of KEY's shard (e.g. a put's
                           revision); --resume: from a token a previous watch printed;
                           --count N: exit once N events were printed (events
                           that arrived together are printed together). On exit, prints
                           "resume: TOKEN" on stderr (no event is lost or repeated
                           when resuming from it)
  lease grant TTL          a lease of TTL (seconds, or e.g. 30s); prints its ID (16 hex
                           digits). Keys put with it are deleted when it ends
  lease keepalive ID [--count N]
                           renew lease ID about every TTL/3 until interrupted (or N times);
                           exits 1 once it ended or went a TTL without a renewal
  lease revoke ID          end lease ID now: its keys are deleted on every shard
  lease ttl ID             its granted TTL and the time left
  lease list               the live leases
  lock NAME [--ttl 10s] -- COMMAND [ARGS...]
                           wait for lock NAME (first come, first served), run COMMAND
                           holding it, release it. COMMAND gets TESSERA_LOCK_TOKEN (the
                           fencing token: a resource should refuse tokens lower than
                           the highest it saw), TESSERA_LOCK_KEY and TESSERA_LEASE. If
                           the lock's lease is lost, COMMAND gets SIGTERM and tessera
                           exits 4; else it exits with COMMAND's code
  elect NAME VALUE [--ttl 10s]
                           campaign in election NAME; once leader, print "elected: ..."
                           and lead until interrupted (then resign)
  elect NAME [--count N]   print the leader's value now and at each change
  cas KEY EXPECTED NEW     set KEY to NEW if its value is EXPECTED
  cas --version V KEY NEW  set KEY to NEW if its version is V (0 = KEY must not exist)
  txn [STATEMENTS]         a transaction (statements from the arguments, else stdin)
  cluster status           members, shards, leaders, epochs, per-replica lag
  cluster drain NODE       node NODE hands its leaderships away, drains and exits
                           (as on SIGTERM; e.g. before maintenance)
  cluster add-node ID CLIENT_HOST:PORT PEER_HOST:PORT
                           add member ID to the cluster map; then start it with
                           tessera-server --node-id=ID --join=<a member's client address>;
                           replicas move to it until the members are even
  cluster remove-node ID    decommission member ID: its replicas move to the others,
                           then it leaves the map and exits
  cluster move-replica SHARD FROM TO
                           move SHARD's replica from node FROM to node TO through raft
                           (recorded at once; `cluster status` shows it until done)
  cluster split-shard SHARD split SHARD's hash range in two: the upper half becomes a
                           new shard on the same nodes (clients follow by themselves)
  auth enable|disable|status
                           turn users and permissions on (user root must exist and hold
                           role root) or off; status: on or off, and who you are
  user add NAME [--no-password] | user passwd NAME
                           a user (password from the first line of stdin; --no-password:
                           signs in with a client certificate only) | a new password
  user delete NAME | user grant-role USER ROLE | user revoke-role USER ROLE | user list
  role add NAME | role delete NAME | role list
  role grant ROLE read|write|readwrite (KEY [RANGE_END] | --prefix P)
  role revoke ROLE (KEY [RANGE_END] | --prefix P)
                           permissions on one key, on [KEY, RANGE_END), or on every key
                           starting with P; role root (built in) may do everything
  limits show | limits set [--storage-quota-bytes N] [--ops-per-sec N] [--bytes-per-sec N]
                           [--for-user USER]
                           per node: a store over the quota refuses writes that add data
                           (until deletes bring it under); each user's KV operations and
                           request bytes per second (0: no limit); --for-user: that user's
                           own limits

transaction syntax: statements separated by newlines or ';', tokens by spaces;
"double quotes" allow spaces, ';' and \" \\ \n \t \xHH escapes. All keys must map to
one shard (use a hash tag: "acct:{42}:balance").
  if value KEY OP VALUE    OP is = != < >   (byte-wise; false if KEY is missing)
  if version KEY OP N      (version 0 = missing)
  if exists KEY | if missing KEY
  then put KEY VALUE | then del KEY | then get KEY       run if every "if" holds
  else put KEY VALUE | else del KEY | else get KEY       run otherwise
  e.g.  tessera txn 'if value a = 1; then put a 2; then get b; else get a'
  prints "succeeded" or "failed" then one line per operation; exits 1 when failed.

flags:
  --endpoints=HOST:PORT,...  members to contact (default $TESSERA_ENDPOINTS, else
                             127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003)
  --tls-ca=FILE              speak TLS, verifying the servers against this CA (default $TESSERA_TLS_CA)
  --tls-cert=FILE --tls-key=FILE
                             present this client certificate (default $TESSERA_TLS_CERT, $TESSERA_TLS_KEY)
  --user=NAME --password=PW  sign in with a password (default $TESSERA_USER, $TESSERA_PASSWORD)
  --timeout=DURATION         overall deadline of the command, retries included (default 5s);
                             for scan, the deadline of each page
  --consistency=MODE         reads: linearizable (default) | lease | stale
  --max-staleness=DURATION   stale reads: how far behind the leader (default 5s)
  -o text|json               output format (default text; json escapes bytes as \u00XX)
  -h, --help                 this help

exit codes:
  0  success
  1  key not found (get), compare failed (cas, txn)
  2  usage error
  3  cluster unavailable or timed out (a write's outcome is then unknown)
  4  any other error
)";

// Parses flags (--name=value or --name value) and positional arguments.
std::optional<std::string> ParseArgs(int argc, char** argv, Args* args, bool* help) {
  std::vector<std::string> in(argv + 1, argv + argc);
  for (size_t i = 0; i < in.size(); ++i) {
    std::string arg = in[i];
    if (arg == "-h" || arg == "--help") {
      *help = true;
      return std::nullopt;
    }
    if (arg == "--") {
      args->positional.insert(args->positional.end(), in.begin() + i + 1, in.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-' || (arg[1] != '-' && arg != "-o")) {
      args->positional.push_back(arg);
      continue;
    }
    if (arg == "--no-password") {
      args->no_password = true;
      continue;
    }
    std::string name = arg, value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    if (!has_value) {
      if (i + 1 >= in.size()) return absl::StrCat("flag ", name, " needs a value");
      value = in[++i];
    }
    if (name == "--endpoints") {
      args->endpoints = absl::StrSplit(value, ',', absl::SkipWhitespace());
      if (args->endpoints.empty()) return std::string("--endpoints is empty");
    } else if (name == "--storage-quota-bytes" || name == "--ops-per-sec" ||
               name == "--bytes-per-sec") {
      uint64_t n;
      if (!absl::SimpleAtoi(value, &n)) return absl::StrCat("bad ", name, " '", value, "'");
      (name == "--storage-quota-bytes" ? args->storage_quota_bytes
       : name == "--ops-per-sec"       ? args->ops_per_sec
                                       : args->bytes_per_sec) = n;
    } else if (name == "--for-user") {
      args->for_user = value;
    } else if (name == "--user") {
      args->user = value;
    } else if (name == "--password") {
      args->password = value;
    } else if (name == "--tls-ca") {
      args->tls.ca_file = value;
    } else if (name == "--tls-cert") {
      args->tls.cert_file = value;
    } else if (name == "--tls-key") {
      args->tls.key_file = value;
    } else if (name == "--timeout" || name == "--max-staleness") {
      absl::Duration d;
      if (!absl::ParseDuration(value, &d) || d <= absl::ZeroDuration()) {
        return absl::StrCat("bad duration '", value, "' for ", name, " (e.g. 5s, 500ms)");
      }
      (name == "--timeout" ? args->timeout : args->max_staleness) = d;
    } else if (name == "--consistency") {
      if (value == "linearizable") {
        args->consistency = Consistency::kLinearizable;
      } else if (value == "lease") {
        args->consistency = Consistency::kLease;
      } else if (value == "stale") {
        args->consistency = Consistency::kStale;
      } else {
        return absl::StrCat("bad --consistency '", value, "' (linearizable, lease or stale)");
      }
    } else if (name == "-o" || name == "--output") {
      if (value != "text" && value != "json") return absl::StrCat("bad -o '", value, "'");
      args->json = value == "json";
    } else if (name == "--prefix") {
      args->prefix = value;
    } else if (name == "--start") {
      args->start = value;
    } else if (name == "--end") {
      args->end = value;
    } else if (name == "--limit") {
      uint32_t n;
      if (!absl::SimpleAtoi(value, &n)) return absl::StrCat("bad --limit '", value, "'");
      args->limit = n;
    } else if (name == "--rev" || name == "--count") {
      uint64_t n;
      if (!absl::SimpleAtoi(value, &n) || n == 0) {
        return absl::StrCat("bad ", name, " '", value, "'");
      }
      (name == "--rev" ? args->rev : args->count) = n;
    } else if (name == "--resume") {
      std::string token;
      if (!absl::WebSafeBase64Unescape(value, &token)) {
        return absl::StrCat("bad --resume token '", value, "'");
      }
      args->resume = token;
    } else if (name == "--version") {
      args->version = value;
    } else if (name == "--lease") {
      args->lease = ParseLeaseId(value);
      if (!args->lease) return absl::StrCat("bad --lease '", value, "' (16 hex digits)");
    } else if (name == "--ttl") {
      absl::Duration d;
      if (!absl::ParseDuration(value, &d) || d < absl::Seconds(1)) {
        return absl::StrCat("bad --ttl '", value, "' (at least 1s)");
      }
      args->ttl = d;
    } else {
      return absl::StrCat("unknown flag ", name);
    }
  }
  return std::nullopt;
}

std::string JsonKv(const KeyValue& kv) {
  return absl::StrCat("{\"key\":", JsonString(kv.key), ",\"value\":", JsonString(kv.value),
                      ",\"version\":", kv.version, "}");
}

// Prints the version a put or cas gave `key` and returns kExitOk.
int PrintWritten(bool json, const std::string& key, uint64_t version) {
  if (json) {
    WriteRaw(absl::StrCat("{\"key\":", JsonString(key), ",\"version\":", version, "}\n"));
  } else {
    std::printf("OK version %llu\n", static_cast<unsigned long long>(version));
  }
  return kExitOk;
}

// Splits txn text into statements of tokens.
std::optional<std::string> Tokenize(const std::string& text,
                                    std::vector<std::vector<std::string>>* statements) {
  std::vector<std::string> current;
  std::string token;
  bool in_token = false;
  auto end_token = [&] {
    if (in_token) current.push_back(token);
    token.clear();
    in_token = false;
  };
  auto end_statement = [&] {
    end_token();
    if (!current.empty()) statements->push_back(current);
    current.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"') {
      in_token = true;
      for (++i;; ++i) {
        if (i >= text.size()) return std::string("unterminated quote");
        if (text[i] == '"') break;
        if (text[i] != '\\') {
          token += text[i];
          continue;
        }
        if (++i >= text.size()) return std::string("dangling backslash");
        switch (text[i]) {
          case 'n':
            token += '\n';
            break;
          case 't':
            token += '\t';
            break;
          case 'x': {
            int v = 0;
            if (i + 2 >= text.size() || !absl::SimpleHexAtoi(text.substr(i + 1, 2), &v)) {
              return std::string("bad \\x escape");
            }
            token += static_cast<char>(v);
            i += 2;
            break;
          }
          default:
            token += text[i];
        }
      }
    } else if (c == ';' || c == '\n') {
      end_statement();
    } else if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      end_token();
    } else {
      token += c;
      in_token = true;
    }
  }
  end_statement();
  return std::nullopt;
}

std::optional<std::string> ParseTxn(const std::string& text, TxnRequest* txn) {
  std::vector<std::vector<std::string>> statements;
  if (auto err = Tokenize(text, &statements)) return err;
  if (statements.empty()) return std::string("empty transaction");
  for (const std::vector<std::string>& st : statements) {
    const std::string& head = st[0];
    if (head == "if") {
      if (st.size() < 3) return absl::StrCat("bad compare: ", absl::StrJoin(st, " "));
      Compare c;
      c.key = st[2];
      if (st[1] == "exists" || st[1] == "missing") {
        if (st.size() != 3) return absl::StrCat("bad compare: ", absl::StrJoin(st, " "));
        c.target = Compare::Target::kExists;
        c.op = st[1] == "exists" ? Compare::Op::kEqual : Compare::Op::kNotEqual;
      } else if (st[1] == "value" || st[1] == "version") {
        if (st.size() != 5) return absl::StrCat("bad compare: ", absl::StrJoin(st, " "));
        static const std::map<std::string, Compare::Op> kOps = {{"=", Compare::Op::kEqual},
                                                                {"==", Compare::Op::kEqual},
                                                                {"!=", Compare::Op::kNotEqual},
                                                                {"<", Compare::Op::kLess},
                                                                {">", Compare::Op::kGreater}};
        auto op = kOps.find(st[3]);
        if (op == kOps.end()) return absl::StrCat("bad compare operator '", st[3], "'");
        c.op = op->second;
        if (st[1] == "value") {
          c.target = Compare::Target::kValue;
          c.value = st[4];
        } else {
          c.target = Compare::Target::kVersion;
          if (!absl::SimpleAtoi(st[4], &c.version)) {
            return absl::StrCat("bad version '", st[4], "'");
          }
        }
      } else {
        return absl::StrCat("bad compare target '", st[1], "' (value, version, exists, missing)");
      }
      txn->compares.push_back(std::move(c));
    } else if (head == "then" || head == "else") {
      if (st.size() < 3) return absl::StrCat("bad operation: ", absl::StrJoin(st, " "));
      TxnOp op;
      op.key = st[2];
      if (st[1] == "put" && st.size() == 4) {
        op.type = TxnOp::Type::kPut;
        op.value = st[3];
      } else if (st[1] == "del" && st.size() == 3) {
        op.type = TxnOp::Type::kDelete;
      } else if (st[1] == "get" && st.size() == 3) {
        op.type = TxnOp::Type::kGet;
      } else {
        return absl::StrCat("bad operation: ", absl::StrJoin(st, " "));
      }
      (head == "then" ? txn->success : txn->failure).push_back(std::move(op));
    } else {
      return absl::StrCat("bad statement '", head, "' (if, then, else)");
    }
  }
  return std::nullopt;
}

std::string ReadStdin() {
  std::string data;
  char buffer[65536];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), stdin)) > 0) data.append(buffer, n);
  return data;
}

// `cluster drain NODE`: NODE's client address from the map, then Drain.
int ClusterDrain(Client& client, uint64_t node_id, const CallOptions& call) {
  absl::StatusOr<v1::ClusterMap> map = client.GetClusterMap(call);
  if (!map.ok()) return Fail("cluster drain", map.status());
  for (const v1::Member& m : map->members()) {
    if (m.id() != node_id) continue;
    if (absl::Status s = client.Drain(m.client_address(), node_id, call); !s.ok()) {
      return Fail("cluster drain", s);
    }
    std::printf("node %llu (%s) is draining: it hands its leaderships away and exits\n",
                static_cast<unsigned long long>(node_id), m.client_address().c_str());
    return kExitOk;
  }
  return Fail("cluster drain",
              absl::NotFoundError(absl::StrCat("node ", node_id, " is not a member")));
}

// Asks each member in turn until the metadata group's leader records the
// change (the others answer UNAVAILABLE); `ask` makes one attempt at a
// member's client address and returns the map version that records it.
int AskMetaLeader(Client& client, const char* what, const CallOptions& call,
                  const std::function<absl::StatusOr<uint64_t>(const std::string&)>& ask,
                  const std::function<void(uint64_t)>& report) {
  absl::StatusOr<v1::ClusterMap> map = client.GetClusterMap(call);
  if (!map.ok()) return Fail(what, map.status());
  absl::Status last = absl::UnavailableError("no member answered");
  for (const v1::Member& m : map->members()) {
    absl::StatusOr<uint64_t> version = ask(m.client_address());
    if (version.ok()) {
      report(*version);
      return kExitOk;
    }
    last = version.status();
    if (last.code() != absl::StatusCode::kUnavailable) break;
  }
  return Fail(what, last);
}

// `cluster move-replica SHARD FROM TO`.
int ClusterMoveReplica(Client& client, uint32_t shard, uint64_t from, uint64_t to,
                       const CallOptions& call) {
  return AskMetaLeader(
      client, "cluster move-replica", call,
      [&](const std::string& address) {
        return client.MoveReplica(address, shard, from, to, call);
      },
      [&](uint64_t version) {
        std::printf(
            "move of shard %u from node %llu to node %llu recorded (cluster map version %llu); "
            "`tessera cluster status` shows it until done\n",
            shard, static_cast<unsigned long long>(from), static_cast<unsigned long long>(to),
            static_cast<unsigned long long>(version));
      });
}

// `cluster split-shard SHARD`.
int ClusterSplitShard(Client& client, uint32_t shard, const CallOptions& call) {
  return AskMetaLeader(
      client, "cluster split-shard", call,
      [&](const std::string& address) { return client.SplitShard(address, shard, call); },
      [&](uint64_t version) {
        std::printf(
            "split of shard %u recorded (cluster map version %llu); `tessera cluster status` "
            "shows the new shard once it is done\n",
            shard, static_cast<unsigned long long>(version));
      });
}

// `cluster add-node ID CLIENT PEER`.
int ClusterAddNode(Client& client, const v1::Member& member, const CallOptions& call) {
  return AskMetaLeader(
      client, "cluster add-node", call,
      [&](const std::string& address) { return client.AddMember(address, member, call); },
      [&](uint64_t version) {
        std::printf(
            "node %llu added (cluster map version %llu); start it with tessera-server "
            "--node-id=%llu --join=<a member's client address>\n",
            static_cast<unsigned long long>(member.id()), static_cast<unsigned long long>(version),
            static_cast<unsigned long long>(member.id()));
      });
}

// `cluster remove-node ID`.
int ClusterRemoveNode(Client& client, uint64_t id, const CallOptions& call) {
  return AskMetaLeader(
      client, "cluster remove-node", call,
      [&](const std::string& address) { return client.RemoveMember(address, id, call); },
      [&](uint64_t version) {
        std::printf(
            "node %llu is leaving (cluster map version %llu): its replicas move to the other "
            "members, then it is removed and exits; `tessera cluster status` shows the moves\n",
            static_cast<unsigned long long>(id), static_cast<unsigned long long>(version));
      });
}

int ClusterStatus(Client& client, const Args& args, const CallOptions& call) {
  absl::StatusOr<v1::ClusterMap> map = client.GetClusterMap(call);
  if (!map.ok()) return Fail("cluster status", map.status());
  std::map<uint64_t, std::string> address;
  std::map<uint64_t, absl::StatusOr<v1::NodeStatusResponse>> status;
  for (const v1::Member& m : map->members()) {
    address[m.id()] = m.client_address();
    status.emplace(m.id(), client.NodeStatus(m.client_address(), call));
  }
  // A node that reports its replicas stopped (its raft loop failed; it is
  // about to exit) is down like one that does not answer, whose NodeStatus
  // fails (a node with a wedged raft loop answers UNAVAILABLE).
  for (auto& [id, s] : status) {
    if (!s.ok()) continue;
    for (const v1::ShardStatus& st : s->shards()) {
      if (st.role() == "stopped") {
        s = absl::UnavailableError(
            absl::StrCat("node ", id, " reports its replicas stopped (its raft loop failed)"));
        break;
      }
    }
  }
  // shard -> node -> its status of that shard
  std::map<uint32_t, std::map<uint64_t, v1::ShardStatus>> shards;
  for (const auto& [id, s] : status) {
    if (!s.ok()) continue;
    for (const v1::ShardStatus& st : s->shards()) shards[st.shard()][id] = st;
  }
  auto leader_of = [&](const v1::ShardInfo& info) -> uint64_t {
    for (const auto& [id, st] : shards[info.id()]) {
      if (st.role() == "leader") return id;
    }
    return 0;
  };
  bool all_up = true;
  if (args.json) {
    std::string out =
        absl::StrCat("{\"version\":", std::max<uint64_t>(map->version(), 1),
                     ",\"epoch\":", map->epoch(), ",\"num_shards\":", map->num_shards(),
                     ",\"replication\":", map->replication(), ",\"members\":[");
    bool first = true;
    for (const auto& [id, s] : status) {
      absl::StrAppend(&out, first ? "" : ",", "{\"id\":", id,
                      ",\"address\":", JsonString(address[id]),
                      ",\"up\":", s.ok() ? "true" : "false");
      if (s.ok()) {
        absl::StrAppend(&out, ",\"epoch\":", s->epoch(), ",\"map_version\":", s->map_version());
      }
      if (!s.ok()) absl::StrAppend(&out, ",\"error\":", JsonString(OneLine(s.status())));
      absl::StrAppend(&out, "}");
      all_up = all_up && s.ok();
      first = false;
    }
    absl::StrAppend(&out, "],\"shards\":[");
    first = true;
    for (const v1::ShardInfo& info : map->shards()) {
      const uint64_t leader = leader_of(info);
      const auto& per = shards[info.id()];
      const uint64_t commit = leader != 0 ? per.at(leader).commit_index() : 0;
      absl::StrAppend(&out, first ? "" : ",", "{\"id\":", info.id(), ",\"leader\":", leader,
                      ",\"term\":", leader != 0 ? per.at(leader).term() : 0, ",\"replicas\":[");
      bool first_replica = true;
      for (uint64_t r : info.replicas()) {
        absl::StrAppend(&out, first_replica ? "" : ",", "{\"node\":", r);
        auto it = per.find(r);
        if (it != per.end()) {
          const v1::ShardStatus& st = it->second;
          absl::StrAppend(
              &out, ",\"role\":", JsonString(st.role()), ",\"commit_index\":", st.commit_index(),
              ",\"applied_index\":", st.applied_index(),
              ",\"commit_lag\":", commit > st.commit_index() ? commit - st.commit_index() : 0,
              ",\"applied_lag\":", commit > st.applied_index() ? commit - st.applied_index() : 0);
        } else {
          absl::StrAppend(&out, ",\"role\":\"down\"");
        }
        absl::StrAppend(&out, "}");
        first_replica = false;
      }
      absl::StrAppend(&out, "]");
      if (info.move_to() != 0) {
        absl::StrAppend(&out, ",\"moving\":{\"from\":", info.move_from(),
                        ",\"to\":", info.move_to(), "}");
      }
      if (info.split_hash() != 0) {
        absl::StrAppend(&out, ",\"splitting_at\":", info.split_hash());
      }
      absl::StrAppend(&out, "}");
      first = false;
    }
    // The metadata group's replicas (its move, if any) and the members
    // being replaced after losing their data.
    absl::StrAppend(&out, "],\"meta\":{\"replicas\":[", absl::StrJoin(map->meta_replicas(), ","),
                    "],\"learners\":[", absl::StrJoin(map->meta().learners(), ","), "]");
    if (map->meta().move_to() != 0) {
      absl::StrAppend(&out, ",\"moving\":{\"from\":", map->meta().move_from(),
                      ",\"to\":", map->meta().move_to(), "}");
    }
    absl::StrAppend(&out, "},\"replaced\":[");
    first = true;
    for (const v1::Replacement& r : map->replaced()) {
      absl::StrAppend(&out, first ? "" : ",", r.node());
      first = false;
    }
    absl::StrAppend(&out, "]}\n");
    WriteRaw(out);
  } else {
    std::printf("map version %llu  epoch %llu  shards %u  replication %u\n",
                static_cast<unsigned long long>(std::max<uint64_t>(map->version(), 1)),
                static_cast<unsigned long long>(map->epoch()), map->num_shards(),
                map->replication());
    std::printf("members:\n");
    for (const auto& [id, s] : status) {
      all_up = all_up && s.ok();
      if (s.ok()) {
        std::printf("  %-3llu %-21s up    epoch %llu%s\n", static_cast<unsigned long long>(id),
                    address[id].c_str(), static_cast<unsigned long long>(s->epoch()),
                    s->epoch() != map->epoch() ? "  (differs from the map!)" : "");
      } else {
        std::printf("  %-3llu %-21s DOWN  %s\n", static_cast<unsigned long long>(id),
                    address[id].c_str(), OneLine(s.status()).c_str());
      }
    }
    std::printf("shards (replica: role commit/applied, lag behind the leader's commit):\n");
    for (const v1::ShardInfo& info : map->shards()) {
      const uint64_t leader = leader_of(info);
      const auto& per = shards[info.id()];
      const uint64_t commit = leader != 0 ? per.at(leader).commit_index() : 0;
      std::string line =
          absl::StrFormat("  %-4u leader %-4s term %-4s", info.id(),
                          leader != 0 ? absl::StrCat(leader) : std::string("none"),
                          leader != 0 ? absl::StrCat(per.at(leader).term()) : std::string("-"));
      for (uint64_t r : info.replicas()) {
        auto it = per.find(r);
        if (it == per.end()) {
          absl::StrAppend(&line, "  ", r, ":down");
          continue;
        }
        const v1::ShardStatus& st = it->second;
        absl::StrAppend(&line, "  ", r, ":", st.role(), " ", st.commit_index(), "/",
                        st.applied_index());
        const uint64_t lag = commit > st.applied_index() ? commit - st.applied_index() : 0;
        if (lag > 0) absl::StrAppend(&line, " (lag ", lag, ")");
      }
      if (info.move_to() != 0) {
        absl::StrAppend(&line, "  moving ", info.move_from(), " -> ", info.move_to());
        auto it = per.find(info.move_to());
        if (it != per.end()) {
          absl::StrAppend(&line, " (", info.move_to(), ": ", it->second.applied_index(), "/",
                          commit, " applied)");
        }
      }
      if (info.split_hash() != 0) {
        absl::StrAppend(&line, "  splitting at hash ", info.split_hash(), " into shard ",
                        map->num_shards());
      }
      std::printf("%s\n", line.c_str());
    }
    std::string meta = absl::StrCat("metadata group: ", absl::StrJoin(map->meta_replicas(), " "));
    if (map->meta().move_to() != 0) {
      absl::StrAppend(&meta, "  moving ", map->meta().move_from(), " -> ", map->meta().move_to());
    }
    std::printf("%s\n", meta.c_str());
    for (const v1::Replacement& r : map->replaced()) {
      std::printf("node %llu lost its data: its old replicas are being replaced\n",
                  static_cast<unsigned long long>(r.node()));
    }
  }
  return all_up ? kExitOk : kExitUnavailable;
}

// Streams events until --count of them (or forever, or an error); the
// resume token goes to stderr on the way out.
int RunWatch(Client& client, const Args& args) {
  WatchOptions options;
  if (args.prefix) {
    options.key = *args.prefix;
    options.prefix = true;
  } else {
    options.key = args.positional[1];
  }
  options.start_revision = args.rev.value_or(0);
  options.resume_token = args.resume.value_or("");
  options.timeout = args.timeout;
  absl::StatusOr<std::unique_ptr<Watcher>> watch = client.Watch(options);
  if (!watch.ok()) return Fail("watch", watch.status());
  uint64_t printed = 0;
  absl::Status status;
  while (!args.count || printed < *args.count) {
    absl::StatusOr<std::vector<WatchEvent>> events = (*watch)->Next(absl::Now() + absl::Seconds(1));
    if (!events.ok()) {
      status = events.status();
      break;
    }
    std::string out;
    for (const WatchEvent& e : *events) {
      const bool put = e.type == WatchEvent::Type::kPut;
      if (args.json) {
        absl::StrAppend(&out, "{\"type\":\"", put ? "PUT" : "DELETE",
                        "\",\"key\":", JsonString(e.key));
        if (put) {
          absl::StrAppend(&out, ",\"value\":", JsonString(e.kv.value),
                          ",\"version\":", e.kv.version,
                          ",\"create_revision\":", e.kv.create_revision);
        }
        absl::StrAppend(&out, ",\"mod_revision\":", e.revision, ",\"shard\":", e.shard, "}\n");
      } else {
        absl::StrAppend(&out, put ? "PUT" : "DELETE", "\t", e.key, "\t", e.kv.value, "\t",
                        e.revision, "\n");
      }
      // --count cuts between events; the token below covers the batch,
      // so print the whole batch.
      ++printed;
    }
    WriteRaw(out);
    std::fflush(stdout);
  }
  std::fprintf(stderr, "resume: %s\n", absl::WebSafeBase64Escape((*watch)->ResumeToken()).c_str());
  if (!status.ok()) return Fail("watch", status);
  return kExitOk;
}

int Run(int argc, char** argv) {
  Args args;
  if (const char* endpoints = std::getenv("TESSERA_ENDPOINTS");
      endpoints != nullptr && *endpoints != '\0') {
    args.endpoints = absl::StrSplit(endpoints, ',', absl::SkipWhitespace());
  }
  args.tls = TlsOptionsFromEnv();
  if (const char* user = std::getenv("TESSERA_USER")) args.user = user;
  if (const char* password = std::getenv("TESSERA_PASSWORD")) args.password = password;
  bool help = false;
  if (std::optional<std::string> err = ParseArgs(argc, argv, &args, &help)) {
    std::fprintf(stderr, "tessera: %s (see tessera --help)\n", err->c_str());
    return kExitUsage;
  }
  if (help) {
    std::fputs(kHelp, stdout);
    return kExitOk;
  }
  const std::vector<std::string>& pos = args.positional;
  auto usage = [](const std::string& message) {
    std::fprintf(stderr, "tessera: %s (see tessera --help)\n", message.c_str());
    return kExitUsage;
  };
  if (pos.empty()) return usage("no command");
  const std::string& cmd = pos[0];
  const size_t n = pos.size() - 1;
  if ((args.start || args.end || args.limit) && cmd != "scan") {
    return usage(absl::StrCat("--start/--end/--limit are flags of scan, not ", cmd));
  }
  if (args.prefix && cmd != "scan" && cmd != "watch" && cmd != "role") {
    return usage(
        absl::StrCat("--prefix is a flag of scan, watch and role grant|revoke, not ", cmd));
  }
  if (args.no_password && cmd != "user") return usage("--no-password is a flag of user add");
  if ((args.storage_quota_bytes || args.ops_per_sec || args.bytes_per_sec || args.for_user) &&
      cmd != "limits") {
    return usage(
        "--storage-quota-bytes, --ops-per-sec, --bytes-per-sec and --for-user are flags "
        "of limits set");
  }
  if ((args.rev || args.resume) && cmd != "watch") {
    return usage(absl::StrCat("--rev/--resume are flags of watch, not ", cmd));
  }
  if (args.version && cmd != "cas") return usage("--version is a flag of cas");
  if (args.lease && cmd != "put") return usage("--lease is a flag of put");
  if (args.ttl && cmd != "lock" && cmd != "elect")
    return usage("--ttl is a flag of lock and elect");
  if (args.count && cmd != "watch" && cmd != "lease" && cmd != "elect") {
    return usage("--count is a flag of watch, lease keepalive and elect");
  }

  // Validate the command line fully before contacting the cluster.
  TxnRequest txn;
  if (cmd == "put") {
    if (n < 1 || n > 2) return usage("put KEY [VALUE]");
  } else if (cmd == "get" || cmd == "del") {
    if (n != 1) return usage(cmd + " KEY");
  } else if (cmd == "scan") {
    if (n != 0) return usage("scan takes flags only");
    if (args.prefix && (args.start || args.end))
      return usage("scan: --prefix excludes --start/--end");
  } else if (cmd == "watch") {
    if (args.prefix ? n != 0 : n != 1) return usage("watch KEY, or watch --prefix P");
    if (args.rev && (args.prefix || args.resume)) {
      return usage("watch: --rev is for one KEY, without --resume");
    }
  } else if (cmd == "cas") {
    if (args.version ? n != 2 : n != 3) {
      return usage("cas KEY EXPECTED NEW, or cas --version V KEY NEW");
    }
    uint64_t v;
    if (args.version && !absl::SimpleAtoi(*args.version, &v)) {
      return usage(absl::StrCat("bad --version '", *args.version, "'"));
    }
  } else if (cmd == "txn") {
    std::string text = n > 0 ? absl::StrJoin(pos.begin() + 1, pos.end(), " ") : ReadStdin();
    if (std::optional<std::string> err = ParseTxn(text, &txn)) return usage("txn: " + *err);
  } else if (cmd == "cluster") {
    uint64_t node_id = 0;
    const bool status = n == 1 && pos[1] == "status";
    const bool drain =
        n == 2 && pos[1] == "drain" && absl::SimpleAtoi(pos[2], &node_id) && node_id != 0;
    uint32_t shard = 0;
    uint64_t to = 0;
    const bool move = n == 4 && pos[1] == "move-replica" && absl::SimpleAtoi(pos[2], &shard) &&
                      absl::SimpleAtoi(pos[3], &node_id) && absl::SimpleAtoi(pos[4], &to) &&
                      node_id != 0 && to != 0;
    const bool add =
        n == 4 && pos[1] == "add-node" && absl::SimpleAtoi(pos[2], &node_id) && node_id != 0;
    const bool remove =
        n == 2 && pos[1] == "remove-node" && absl::SimpleAtoi(pos[2], &node_id) && node_id != 0;
    const bool split = n == 2 && pos[1] == "split-shard" && absl::SimpleAtoi(pos[2], &shard);
    if (!status && !drain && !move && !add && !remove && !split) {
      return usage(
          "cluster status | cluster drain NODE | cluster move-replica SHARD FROM TO | cluster "
          "add-node ID CLIENT_HOST:PORT PEER_HOST:PORT | cluster remove-node ID | cluster "
          "split-shard SHARD");
    }
  } else if (cmd == "lease" || cmd == "lock" || cmd == "elect") {
    if (std::optional<std::string> err = CheckCoordination(args)) return usage(*err);
  } else if (cmd == "auth" || cmd == "user" || cmd == "role" || cmd == "limits") {
    if (std::optional<std::string> err = CheckAuthCommand(args)) return usage(*err);
  } else {
    return usage(absl::StrCat("unknown command '", cmd, "'"));
  }

  ClientOptions options;
  options.endpoints = args.endpoints;
  options.default_timeout = args.timeout;
  options.attempt_timeout = std::min(args.timeout, absl::Seconds(2));
  options.tls = args.tls;
  options.user = args.user;
  options.password = args.password;
  NoteTlsConfigured(args.tls.enabled());
  absl::StatusOr<std::unique_ptr<Client>> created = Client::Create(options);
  if (!created.ok()) return usage(OneLine(created.status()));
  Client& client = **created;
  CallOptions call;
  call.timeout = args.timeout;
  call.consistency = args.consistency;
  call.max_staleness = args.max_staleness;

  if (cmd == "put") {
    const std::string value = n == 2 ? pos[2] : ReadStdin();
    call.lease = args.lease.value_or(0);
    absl::StatusOr<PutResult> r = client.Put(pos[1], value, call);
    if (!r.ok()) return Fail("put", r.status());
    return PrintWritten(args.json, pos[1], r->version);
  }
  if (cmd == "watch") return RunWatch(client, args);
  if (cmd == "auth" || cmd == "user" || cmd == "role" || cmd == "limits") {
    return RunAuth(client, args, call);
  }
  if (cmd == "lease") return RunLease(client, args);
  if (cmd == "lock") return RunLock(client, args);
  if (cmd == "elect") return RunElect(client, args);
  if (cmd == "get") {
    absl::StatusOr<KeyValue> r = client.Get(pos[1], call);
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kNotFound) {
        std::fprintf(stderr, "tessera: get: key not found\n");
        return kExitNotFound;
      }
      return Fail("get", r.status());
    }
    if (args.json) {
      WriteRaw(JsonKv(*r) + "\n");
    } else {
      WriteRaw(r->value);
      if (isatty(STDOUT_FILENO)) WriteRaw("\n");
    }
    return kExitOk;
  }
  if (cmd == "del") {
    absl::StatusOr<bool> r = client.Delete(pos[1], call);
    if (!r.ok()) return Fail("del", r.status());
    if (args.json) {
      WriteRaw(absl::StrCat("{\"key\":", JsonString(pos[1]), ",\"deleted\":", *r ? "true" : "false",
                            "}\n"));
    } else {
      std::printf("%s\n", *r ? "deleted" : "not found (nothing to delete)");
    }
    return kExitOk;
  }
  if (cmd == "scan") {
    ScanOptions scan;
    scan.prefix = args.prefix.value_or("");
    scan.start = args.start.value_or("");
    scan.end = args.end.value_or("");
    scan.limit = args.limit.value_or(0);
    // Streams: each batch is written and flushed as it arrives (memory stays
    // bounded however many keys there are); text is KEY<TAB>VALUE per line,
    // json is JSON Lines (one object per key).
    std::string out;
    int write_errno = 0;
    uint64_t printed = 0;
    absl::StatusOr<ScanResult> r = client.ScanPages(scan, call, [&](std::vector<KeyValue>& batch) {
      printed += batch.size();
      out.clear();
      for (const KeyValue& kv : batch) {
        if (args.json) {
          absl::StrAppend(&out, JsonKv(kv), "\n");
        } else {
          absl::StrAppend(&out, kv.key, "\t", kv.value, "\n");
        }
      }
      WriteRaw(out);
      if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        write_errno = errno != 0 ? errno : EIO;
        return false;
      }
      return true;
    });
    if (write_errno != 0) {
      std::fprintf(stderr, "tessera: scan: writing the output: %s\n", std::strerror(write_errno));
      return kExitError;
    }
    if (!r.ok()) {
      return Fail("scan", r.status(),
                  printed == 0 ? "" : absl::StrCat(" (after ", printed, " keys were printed)"));
    }
    if (r->more) std::fprintf(stderr, "tessera: scan: more keys after the limit\n");
    return kExitOk;
  }
  if (cmd == "cas") {
    absl::StatusOr<uint64_t> r;
    if (args.version) {
      uint64_t v = 0;
      (void)absl::SimpleAtoi(*args.version, &v);
      r = client.CompareAndSetVersion(pos[1], v, pos[2], call);
    } else {
      r = client.CompareAndSet(pos[1], pos[2], pos[3], call);
    }
    if (!r.ok()) {
      if (r.status().code() == absl::StatusCode::kAborted) {
        std::fprintf(stderr, "tessera: cas: compare failed\n");
        return kExitNotFound;
      }
      return Fail("cas", r.status());
    }
    return PrintWritten(args.json, pos[1], *r);
  }
  if (cmd == "txn") {
    absl::StatusOr<TxnResult> r = client.Txn(txn, call);
    if (!r.ok()) return Fail("txn", r.status());
    std::string out;
    if (args.json) {
      out = absl::StrCat("{\"succeeded\":", r->succeeded ? "true" : "false", ",\"results\":[");
    } else {
      out = r->succeeded ? "succeeded\n" : "failed\n";
    }
    for (size_t i = 0; i < r->results.size(); ++i) {
      const TxnOpResult& op = r->results[i];
      if (args.json) {
        const char* type = op.type == TxnOp::Type::kPut      ? "put"
                           : op.type == TxnOp::Type::kDelete ? "del"
                                                             : "get";
        absl::StrAppend(&out, i ? "," : "", "{\"op\":\"", type, "\",\"key\":", JsonString(op.key),
                        ",\"found\":", op.found ? "true" : "false", ",\"version\":", op.version);
        if (op.type == TxnOp::Type::kGet && op.found) {
          absl::StrAppend(&out, ",\"value\":", JsonString(op.value));
        }
        absl::StrAppend(&out, "}");
      } else if (op.type == TxnOp::Type::kPut) {
        absl::StrAppend(&out, "put ", op.key, " version ", op.version, "\n");
      } else if (op.type == TxnOp::Type::kDelete) {
        absl::StrAppend(&out, "del ", op.key, op.found ? " deleted" : " not found", "\n");
      } else if (op.found) {
        absl::StrAppend(&out, "get ", op.key, " = ", op.value, " (version ", op.version, ")\n");
      } else {
        absl::StrAppend(&out, "get ", op.key, " not found\n");
      }
    }
    if (args.json) absl::StrAppend(&out, "]}\n");
    WriteRaw(out);
    return r->succeeded ? kExitOk : kExitNotFound;
  }
  if (pos[1] == "drain") {
    uint64_t node_id = 0;
    (void)absl::SimpleAtoi(pos[2], &node_id);  // validated above
    return ClusterDrain(client, node_id, call);
  }
  if (pos[1] == "move-replica") {
    uint32_t shard = 0;
    uint64_t from = 0, to = 0;
    (void)absl::SimpleAtoi(pos[2], &shard);  // validated above
    (void)absl::SimpleAtoi(pos[3], &from);
    (void)absl::SimpleAtoi(pos[4], &to);
    return ClusterMoveReplica(client, shard, from, to, call);
  }
  if (pos[1] == "split-shard") {
    uint32_t shard = 0;
    (void)absl::SimpleAtoi(pos[2], &shard);  // validated above
    return ClusterSplitShard(client, shard, call);
  }
  if (pos[1] == "remove-node") {
    uint64_t id = 0;
    (void)absl::SimpleAtoi(pos[2], &id);  // validated above
    return ClusterRemoveNode(client, id, call);
  }
  if (pos[1] == "add-node") {
    v1::Member member;
    uint64_t id = 0;
    (void)absl::SimpleAtoi(pos[2], &id);  // validated above
    member.set_id(id);
    member.set_client_address(pos[3]);
    member.set_peer_address(pos[4]);
    return ClusterAddNode(client, member, call);
  }
  return ClusterStatus(client, args, call);
}

}  // namespace
}  // namespace tessera::client::cli

int main(int argc, char** argv) {
  // gRPC's own error lines (a failed handshake per attempt) would repeat
  // what the one line of Fail() says.
  gpr_set_log_function([](gpr_log_func_args*) {});
  return tessera::client::cli::Run(argc, argv);
}
