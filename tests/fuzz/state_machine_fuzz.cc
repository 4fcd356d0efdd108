// state_machine_fuzz: the StateMachine's two inputs that come from peers,
// without a Node around them (fast: in memory, one thread).
//
// Input: a serialized raftpb::Message, read as a follower would:
//  - snapshot.data is installed into shard 1 at index snapshot.metadata.index
//    (SnapshotDataReader -> KvStore::InstallSnapshot, as Node does for
//    MSG_SNAP);
//  - entries are committed entries handed to StateMachine::Apply: shard
//    1 + term % 2; index: the entry's own if above the shard's previous one
//    in the batch, else the next; an ENTRY_CONF_CHANGE entry starts a new
//    Apply batch (and is applied like any other). A failing Apply stops the
//    input, as it stops a Node.
//  - then the state is read back: Get(context) and Scan (context parsed as
//    a ScanRequest, which carries client-made bounds and continuation) on
//    both shards, and each shard is exported, re-encoded and installed into
//    another store, which must export the same records (a broken round trip
//    aborts: replicas would diverge).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/kv/state_machine.h"
#include "server/raftstore/raft_storage.h"
#include "storage/mem_kv_store.h"
#include "tessera/raft.pb.h"
#include "tests/fuzz/fuzz_util.h"

namespace tessera::fuzz {
namespace {

using tessera::ShardId;

constexpr ShardId kShardA = 1;
constexpr ShardId kShardB = 2;

server::StateMachineOptions SmallOptions() {
  server::StateMachineOptions o;
  o.max_sessions_per_shard = 3;  // eviction paths within a few commands
  o.max_results_per_session = 3;
  o.default_scan_limit = 8;
  o.max_scan_limit = 16;
  return o;
}

// The shard's records, encoded as a snapshot (the wire form).
std::string Export(const storage::KvStore& kv, ShardId shard) {
  absl::StatusOr<std::unique_ptr<storage::ShardSnapshot>> snap = kv.ExportSnapshot(shard);
  if (!snap.ok()) Die("ExportSnapshot failed", snap.status());
  absl::StatusOr<std::string> data = server::EncodeSnapshotData(**snap);
  if (!data.ok()) Die("EncodeSnapshotData failed", data.status());
  return *data;
}

void Run(const raftpb::Message& msg) {
  storage::MemKvStore kv;
  server::StateMachine sm(&kv, SmallOptions());
  if (msg.has_snapshot()) {
    server::SnapshotDataReader reader(msg.snapshot().data());
    // Errors (kDataLoss, kInvalidArgument) leave the store as it was.
    kv.InstallSnapshot(kShardA, msg.snapshot().metadata().index(), reader).IgnoreError();
  }

  std::vector<server::CommittedEntry> batch;
  uint64_t last[2] = {0, 0};  // per shard, in the current batch
  bool failed = false;
  auto apply = [&] {
    if (batch.empty() || failed) return;
    std::vector<serverpb::CommandResult> results;
    failed = !sm.Apply(batch, &results).ok();  // a Node stops here
    batch.clear();
    last[0] = last[1] = 0;
  };
  for (const raftpb::Entry& e : msg.entries()) {
    if (e.type() == raftpb::ENTRY_CONF_CHANGE) apply();
    const int i = static_cast<int>(e.term() % 2);
    const uint64_t index = e.index() > last[i] ? e.index() : last[i] + 1;
    if (index == 0) break;  // wrapped around
    last[i] = index;
    batch.push_back({.shard = i == 0 ? kShardA : kShardB, .index = index, .data = e.data()});
  }
  apply();

  v1::ScanRequest scan;
  if (!scan.ParseFromString(msg.context())) scan.Clear();
  for (ShardId shard : {kShardA, kShardB}) {
    sm.Get(shard, msg.context()).IgnoreError();  // errors are answers here
    sm.Scan(shard, scan).IgnoreError();
    const std::string data = Export(kv, shard);
    storage::MemKvStore copy;
    server::SnapshotDataReader reader(data);
    absl::Status installed = copy.InstallSnapshot(shard, 7, reader);
    if (!installed.ok()) Die(absl::StrCat("re-installing an export failed"), installed);
    if (Export(copy, shard) != data) Die("an exported snapshot does not round-trip");
  }
}

}  // namespace
}  // namespace tessera::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tessera::raftpb::Message msg;
  if (!msg.ParseFromArray(data, static_cast<int>(size))) return -1;
  tessera::fuzz::Run(msg);
  return 0;
}
