// fuzz_seed_gen: writes the seed corpora of the fuzz targets (README.md):
// well-formed inputs, so that the fuzzer starts past parsing and deep in
// raft, the state machine and the KV service.
//
//   fuzz_seed_gen <dir>   writes <dir>/<target>/seed-<name> (overwriting)
//
// Deterministic: the same build writes the same bytes. The generated files
// are committed (tests/fuzz/corpus/); re-run after changing a format.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "fuzz_input.pb.h"
#include "proto/key_hash.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/raft_storage.h"
#include "storage/mem_kv_store.h"
#include "tessera/command.pb.h"
#include "tessera/kv.pb.h"
#include "tessera/peer.pb.h"
#include "tessera/raft.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

std::string g_out;

void Write(const std::string& target, const std::string& name, const std::string& bytes) {
  const std::filesystem::path dir = std::filesystem::path(g_out) / target;
  std::filesystem::create_directories(dir);
  std::ofstream f(dir / ("seed-" + name), std::ios::binary | std::ios::trunc);
  f << bytes;
  if (!f) Die("cannot write " + (dir / name).string());
}

// ---- commands ----

v1::Session Session(uint64_t client, uint64_t seq, uint64_t first_incomplete) {
  v1::Session s;
  s.set_client_id(client);
  s.set_seq(seq);
  s.set_first_incomplete_seq(first_incomplete);
  return s;
}

serverpb::Command Put(const std::string& key, const std::string& value, uint64_t client = 0,
                      uint64_t seq = 0) {
  serverpb::Command c;
  c.mutable_put()->set_key(key);
  c.mutable_put()->set_value(value);
  c.mutable_put()->set_return_previous(true);
  if (client != 0) *c.mutable_session() = Session(client, seq, seq);
  return c;
}

serverpb::Command Delete(const std::string& key) {
  serverpb::Command c;
  c.mutable_delete_()->set_key(key);
  return c;
}

v1::TxnRequest Txn(const std::string& key) {
  v1::TxnRequest t;
  v1::Compare* c = t.add_compares();
  c->set_key(key);
  c->set_target(v1::Compare::TARGET_VERSION);
  c->set_op(v1::Compare::OP_LESS);
  c->set_version(5);
  v1::Compare* e = t.add_compares();
  e->set_key(key);
  e->set_target(v1::Compare::TARGET_VALUE);
  e->set_op(v1::Compare::OP_NOT_EQUAL);
  e->set_value("zz");
  v1::TxnOp* put = t.add_success();
  put->mutable_put()->set_key(key);
  put->mutable_put()->set_value("txn");
  t.add_success()->mutable_get()->set_key(key);
  t.add_failure()->mutable_delete_()->set_key(key);
  return t;
}

serverpb::Command TxnCommand(const std::string& key) {
  serverpb::Command c;
  *c.mutable_txn() = Txn(key);
  *c.mutable_session() = Session(9, 1, 1);
  return c;
}

// A mix of every kind of command, sessions and a retry among them.
std::vector<std::string> CommandMix() {
  return {Put("a", "1").SerializeAsString(),
          Put("b", "2", 7, 1).SerializeAsString(),
          Put("b", "3", 7, 2).SerializeAsString(),
          Put("b", "3", 7, 2).SerializeAsString(),  // retry: the first result
          TxnCommand("a").SerializeAsString(),
          Delete("a").SerializeAsString(),
          std::string(),  // empty entry (a new leader's)
          "\xff\x01garbage"};
}

// ---- snapshots ----

// A real snapshot payload: the export of a store that applied CommandMix.
std::string SnapshotPayload() {
  storage::MemKvStore kv;
  server::StateMachine sm(&kv, {});
  std::vector<server::CommittedEntry> entries;
  uint64_t index = 2;
  for (std::string& data : CommandMix()) {
    entries.push_back({.shard = 1, .index = index++, .data = std::move(data)});
  }
  std::vector<serverpb::CommandResult> results;
  if (absl::Status s = sm.Apply(entries, &results); !s.ok()) Die("Apply failed", s);
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snap = kv.ExportSnapshot(1);
  if (!snap.ok()) Die("ExportSnapshot failed", snap.status());
  absl::StatusOr<std::string> data = server::EncodeSnapshotData(**snap);
  if (!data.ok()) Die("EncodeSnapshotData failed", data.status());
  return *data;
}

// ---- raft messages (from node `from`, to node 1) ----

raftpb::Message Msg(raftpb::MessageType type, uint64_t from, uint64_t term) {
  raftpb::Message m;
  m.set_type(type);
  m.set_from(from);
  m.set_to(kSelf);
  m.set_term(term);
  return m;
}

raftpb::Entry Entry(uint64_t index, uint64_t term, std::string data,
                    raftpb::EntryType type = raftpb::ENTRY_NORMAL) {
  raftpb::Entry e;
  e.set_index(index);
  e.set_term(term);
  e.set_type(type);
  e.set_data(std::move(data));
  return e;
}

// MSG_APP after (prev_index, prev_term) with `entries`, committing `commit`.
raftpb::Message Append(uint64_t from, uint64_t term, uint64_t prev_index, uint64_t prev_term,
                       const std::vector<raftpb::Entry>& entries, uint64_t commit) {
  raftpb::Message m = Msg(raftpb::MSG_APP, from, term);
  m.set_index(prev_index);
  m.set_log_term(prev_term);
  for (const raftpb::Entry& e : entries) *m.add_entries() = e;
  m.set_commit(commit);
  return m;
}

raftpb::Message Heartbeat(uint64_t from, uint64_t term, uint64_t commit) {
  raftpb::Message m = Msg(raftpb::MSG_HEARTBEAT, from, term);
  m.set_commit(commit);
  return m;
}

raftpb::Message Vote(raftpb::MessageType type, uint64_t from, uint64_t term, uint64_t last_index,
                     uint64_t last_term) {
  raftpb::Message m = Msg(type, from, term);
  m.set_index(last_index);
  m.set_log_term(last_term);
  return m;
}

raftpb::Message Response(raftpb::MessageType type, uint64_t from, uint64_t term, uint64_t index,
                         bool reject = false) {
  raftpb::Message m = Msg(type, from, term);
  m.set_index(index);
  m.set_reject(reject);
  return m;
}

raftpb::Message Snap(uint64_t from, uint64_t term, uint64_t index, uint64_t snap_term) {
  raftpb::Message m = Msg(raftpb::MSG_SNAP, from, term);
  raftpb::SnapshotMetadata* meta = m.mutable_snapshot()->mutable_metadata();
  meta->set_index(index);
  meta->set_term(snap_term);
  for (NodeId n : kPeers) meta->mutable_conf_state()->add_voters(n);
  m.mutable_snapshot()->set_data(SnapshotPayload());
  return m;
}

std::vector<raftpb::Entry> CommandEntries(uint64_t first_index, uint64_t term) {
  std::vector<raftpb::Entry> out;
  for (std::string& data : CommandMix()) out.push_back(Entry(first_index++, term, std::move(data)));
  return out;
}

// One batch from `from` carrying `messages` of `shard`.
peerpb::MessageBatch Batch(uint64_t from, uint64_t shard,
                           std::initializer_list<raftpb::Message> ms) {
  peerpb::MessageBatch b;
  b.set_from_node(from);
  b.set_to_node(kSelf);
  for (const raftpb::Message& m : ms) {
    peerpb::ShardMessage* sm = b.add_messages();
    sm->set_shard(shard);
    *sm->mutable_message() = m;
  }
  return b;
}

void WritePeer(const std::string& name, std::initializer_list<peerpb::MessageBatch> batches) {
  fuzzpb::PeerFuzzInput in;
  for (const peerpb::MessageBatch& b : batches) *in.add_batches() = b;
  Write("peer_batch_fuzz", name, in.SerializeAsString());
}

// The node bootstraps every shard at index 1, term 1 (voters 1, 2, 3).
void PeerSeeds() {
  WritePeer("heartbeat", {Batch(2, 1, {Heartbeat(2, 2, 1)})});
  WritePeer(
      "append-one",
      {Batch(2, 1, {Append(2, 2, 1, 1, {Entry(2, 2, Put("k", "v").SerializeAsString())}, 2)})});
  WritePeer("append-commands-then-heartbeat",
            {Batch(2, 2, {Append(2, 2, 1, 1, CommandEntries(2, 2), 4)}),
             Batch(2, 2, {Heartbeat(2, 2, 9)})});
  raftpb::ConfChange cc;
  cc.add_changes()->set_type(raftpb::CONF_CHANGE_ADD_LEARNER);
  cc.mutable_changes(0)->set_node_id(4);
  WritePeer(
      "append-conf-change",
      {Batch(
          3, 3,
          {Append(3, 2, 1, 1,
                  {Entry(2, 2, ""), Entry(3, 2, cc.SerializeAsString(), raftpb::ENTRY_CONF_CHANGE)},
                  3)})});
  WritePeer("append-conflict",
            {Batch(2, 1, {Append(2, 2, 1, 1, {Entry(2, 2, "x"), Entry(3, 2, "y")}, 1)}),
             Batch(3, 1, {Append(3, 3, 2, 2, {Entry(3, 3, "z")}, 3)})});
  WritePeer("append-rejected", {Batch(2, 1, {Append(2, 2, 5, 2, {Entry(6, 2, "x")}, 5)})});
  WritePeer("vote", {Batch(2, 1, {Vote(raftpb::MSG_VOTE, 2, 2, 1, 1)})});
  WritePeer("pre-vote", {Batch(3, 2, {Vote(raftpb::MSG_PRE_VOTE, 3, 2, 1, 1)})});
  WritePeer("snapshot", {Batch(2, 1, {Snap(2, 2, 10, 2)})});
  WritePeer(
      "snapshot-then-append",
      {Batch(2, 3, {Snap(2, 3, 10, 2)}),
       Batch(2, 3, {Append(2, 3, 10, 2, {Entry(11, 3, Put("s", "t").SerializeAsString())}, 11)}),
       Batch(2, 3, {Heartbeat(2, 3, 11)})});
  // Node 1 campaigns (MSG_TIMEOUT_NOW from the leader), wins with node 2's
  // vote, then hears its followers: appends acknowledged, a probe rejected
  // below its compacted log (it answers with a snapshot), a forwarded read,
  // a heartbeat response, a transfer request.
  raftpb::Message read = Msg(raftpb::MSG_READ_INDEX, 3, 0);
  *read.add_entries() = Entry(0, 0, "ctx");
  raftpb::Message transfer = Msg(raftpb::MSG_TRANSFER_LEADER, 3, 2);
  WritePeer("campaign-and-lead", {Batch(2, 1, {Msg(raftpb::MSG_TIMEOUT_NOW, 2, 1)}),
                                  Batch(2, 1, {Response(raftpb::MSG_VOTE_RESP, 2, 2, 0)}),
                                  Batch(2, 1, {Response(raftpb::MSG_APP_RESP, 2, 2, 2)}),
                                  Batch(3, 1,
                                        {Response(raftpb::MSG_APP_RESP, 3, 2, 0, /*reject=*/true),
                                         Response(raftpb::MSG_HEARTBEAT_RESP, 3, 2, 0), read}),
                                  Batch(3, 1, {transfer})});
  // As a follower, applies enough entries to compact its log; then leads
  // (term 3) and is asked for entries below its log's start: it sends a
  // snapshot exported from its store.
  WritePeer("compact-then-lead-and-send-snapshot",
            {Batch(2, 1, {Append(2, 2, 1, 1, CommandEntries(2, 2), 9)}),
             Batch(2, 1, {Msg(raftpb::MSG_TIMEOUT_NOW, 2, 2)}),
             Batch(3, 1, {Response(raftpb::MSG_VOTE_RESP, 3, 3, 0)}),
             Batch(3, 1, {Response(raftpb::MSG_APP_RESP, 3, 3, 10, /*reject=*/true)}),
             Batch(2, 1, {Response(raftpb::MSG_APP_RESP, 2, 3, 10)})});
  WritePeer("pre-vote-responses",
            {Batch(2, 2, {Msg(raftpb::MSG_TIMEOUT_NOW, 2, 1)}),
             Batch(3, 2,
                   {Response(raftpb::MSG_PRE_VOTE_RESP, 3, 2, 0),
                    Response(raftpb::MSG_VOTE_RESP, 3, 2, 0, /*reject=*/true)})});
  // Every shard at once, and one not hosted here.
  peerpb::MessageBatch all = Batch(2, 1, {Heartbeat(2, 2, 1)});
  for (uint64_t shard : {2, 3, 4}) {
    peerpb::ShardMessage* sm = all.add_messages();
    sm->set_shard(shard);
    *sm->mutable_message() =
        Append(2, 2, 1, 1, {Entry(2, 2, Put("m", "n").SerializeAsString())}, 2);
  }
  WritePeer("all-shards", {all});
}

// ---- client requests ----

void WriteClient(const std::string& name, ClientMethod method, bool fix_route,
                 const google::protobuf::Message& request) {
  std::string bytes(1,
                    static_cast<char>(static_cast<int>(method) | (fix_route ? kFixRouteBit : 0)));
  bytes += request.SerializeAsString();
  Write("client_request_fuzz", name, bytes);
}

void ClientSeeds() {
  auto header = [](const std::string& key) {
    v1::RequestHeader h;
    h.set_shard(ShardForKey(key, kClientShards));
    return h;
  };
  v1::PutRequest put;
  *put.mutable_header() = header("key");
  put.set_key("key");
  put.set_value("value");
  WriteClient("put", ClientMethod::kPut, true, put);
  v1::PutRequest stale = put;
  stale.mutable_header()->set_shard((put.header().shard() + 1) % kClientShards);
  stale.mutable_header()->set_epoch(12345);
  WriteClient("put-stale-route", ClientMethod::kPut, false, stale);
  put.set_return_previous(true);
  *put.mutable_header()->mutable_session() = Session(5, 1, 1);
  WriteClient("put-session", ClientMethod::kPut, true, put);
  put.clear_key();
  WriteClient("put-empty-key", ClientMethod::kPut, true, put);

  v1::GetRequest get;
  get.set_key("key");
  WriteClient("get", ClientMethod::kGet, true, get);
  get.mutable_header()->set_consistency(v1::READ_CONSISTENCY_LEASE);
  WriteClient("get-lease", ClientMethod::kGet, true, get);
  get.mutable_header()->set_consistency(v1::READ_CONSISTENCY_STALE);
  get.mutable_header()->set_max_staleness_ms(100);
  WriteClient("get-stale", ClientMethod::kGet, true, get);

  v1::DeleteRequest del;
  del.set_key("key");
  WriteClient("delete", ClientMethod::kDelete, true, del);

  v1::ScanRequest scan;
  scan.set_start("a");
  scan.set_end("z");
  scan.set_limit(2);
  WriteClient("scan-range", ClientMethod::kScan, true, scan);
  scan.Clear();
  scan.set_prefix("k");
  scan.set_continuation("\x01\x00\x00\x00\x03key");
  WriteClient("scan-prefix-continuation", ClientMethod::kScan, true, scan);

  v1::TxnRequest txn = Txn("acct:{1}:a");
  v1::TxnOp* other = txn.add_success();
  other->mutable_put()->set_key("acct:{1}:b");
  other->mutable_put()->set_value("x");
  WriteClient("txn", ClientMethod::kTxn, true, txn);
  std::string elsewhere = "x";  // a key of another shard
  while (ShardForKey(elsewhere, kClientShards) == ShardForKey("acct:{1}:a", kClientShards)) {
    elsewhere += "x";
  }
  txn.add_success()->mutable_put()->set_key(elsewhere);
  WriteClient("txn-cross-shard", ClientMethod::kTxn, true, txn);
}

// ---- state machine ----

void WriteStateMachine(const std::string& name, const raftpb::Message& m) {
  Write("state_machine_fuzz", name, m.SerializeAsString());
}

void StateMachineSeeds() {
  raftpb::Message m;
  for (const raftpb::Entry& e : CommandEntries(2, 2)) *m.add_entries() = e;
  WriteStateMachine("commands", m);
  raftpb::Message sessions;
  for (uint64_t seq = 1; seq <= 6; ++seq) {
    *sessions.add_entries() = Entry(
        seq + 1, 2, Put("s" + std::to_string(seq), "v", seq % 4 + 1, seq).SerializeAsString());
  }
  *sessions.add_entries() = Entry(9, 2, "", raftpb::ENTRY_CONF_CHANGE);
  *sessions.add_entries() = Entry(3, 2, Put("s1", "again", 2, 1).SerializeAsString());  // replay
  WriteStateMachine("sessions-evicted-and-replayed", sessions);
  raftpb::Message snap = Snap(2, 2, 10, 2);
  *snap.add_entries() = Entry(11, 2, TxnCommand("b").SerializeAsString());
  *snap.add_entries() = Entry(12, 3, Put("other-shard", "x").SerializeAsString());
  v1::ScanRequest scan;
  scan.set_limit(1);
  snap.set_context(scan.SerializeAsString());
  WriteStateMachine("snapshot-then-commands", snap);
}

}  // namespace
}  // namespace tessera::fuzz

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  tessera::fuzz::g_out = argv[1];
  tessera::fuzz::PeerSeeds();
  tessera::fuzz::ClientSeeds();
  tessera::fuzz::StateMachineSeeds();
  return 0;
}
