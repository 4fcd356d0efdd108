// StateMachine implementation. The on-disk encodings live in sm_format.h.
//
// Apply, step by step (one call = one ready cycle of the Node):
//  1. For each entry, in order: look up the shard's applied index (once per
//     shard and batch) and (re)load the shard's session table if it does
//     not reflect that index; skip entries at or below it or at or below an
//     index already seen in this batch (empty result); decode the Command (empty
//     data: advance only; undecodable: kInvalidArgument result); run it.
//  2. A command runs against a per-command Overlay stacked on the shard's
//     batch Overlay, itself over the KvStore, so it sees the earlier commands
//     of the batch. Only a command that succeeds merges its overlay into the
//     shard's; a failed command changes no data (its result is still
//     remembered in the session table).
//  3. One KvStore::Apply with one ShardWrite per shard that advanced, in shard
//     order, carrying the final state of every key the batch touched (in key
//     order, from std::map), the session records the batch wrote (the open
//     delta window, plus any window that filled up or a checkpoint) and the
//     shard's last entry index.
// No clock, randomness or hash-map iteration order reaches the writes, so
// every replica writes identical bytes for the same log.
//
// Sessions (exactly-once writes, Raft thesis §6.3), per shard:
//  - A command with session.client_id == 0 (or no session) just executes.
//  - seq == 0 with a client id: kInvalidArgument, nothing changes.
//  - Known session, seq's result stored: return the stored result, nothing
//    changes (not even the LRU order).
//  - Known session, seq < max(stored first_incomplete_seq, the request's
//    first_incomplete_seq): kFailedPrecondition, nothing changes.
//  - Unknown session and request.first_incomplete_seq > 1: the client has
//    completed writes on this shard before, so the session existed and was
//    evicted: kFailedPrecondition, nothing changes (applying could apply a
//    retried write twice). Unknown with first_incomplete_seq <= 1: created.
//  - Otherwise the command executes; its result (error codes included) is
//    stored under (client_id, seq); first_incomplete_seq rises to the
//    request's (never falls) and results below it are dropped; beyond
//    max_results_per_session results the smallest seqs are dropped and
//    first_incomplete_seq rises past them (so their retries are rejected
//    rather than re-applied); the session becomes the most recently used
//    (last_used_index = the entry's index); while more than
//    max_sessions_per_shard sessions exist the least recently used (smallest
//    last_used_index) is evicted with all its results.
//  Sessions live in memory (ShardSessions: a map by client id and the LRU
//  order as a map by last_used_index). Each command that changes a session
//  appends one SessionOp (sm_format.h) to the shard's open delta window;
//  the batch writes that window once, so a put costs one point read (the
//  key's version) and one write (its value) plus its share of the window.
//  After session_checkpoint_ops ops (or bytes) a checkpoint of the whole
//  table replaces the windows. A restart or a snapshot install rebuilds the
//  table from the checkpoint and the windows (LoadSessions), exactly.
//  The only window left: a session evicted while its client's first write on
//  this shard (first_incomplete_seq <= 1) is still unacknowledged applies
//  that write again if retried. With the LRU bound this needs
//  max_sessions_per_shard other clients to write to the shard in between.
#include "server/kv/state_machine.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "proto/key_hash.h"
#include "proto/status_macros.h"
#include "server/kv/sm_format.h"
#include "xxhash.h"

namespace tessera::server {
namespace {

using storage::KvStore;
using storage::Mutation;
using storage::ShardWrite;

// Upper bound on the keys+values of one Scan page (at least one item is
// always returned): keeps responses under gRPC's default 4 MiB message limit
// whatever the item limit.
constexpr uint64_t kScanMaxBytes = 2ull << 20;

constexpr char kStaleSessionMessage[] = "session expired or stale seq";

// Writes pending over a shard's stored state: user data and meta records,
// each key mapped to its new value or nullopt (deleted). A child overlay
// (one command) reads through its parent (the batch) and then the KvStore,
// and is merged into the parent only if the command succeeds.
class Overlay {
 public:
  Overlay(const KvStore* kv, ShardId shard) : kv_(kv), shard_(shard), parent_(nullptr) {}
  explicit Overlay(Overlay* parent) : kv_(parent->kv_), shard_(parent->shard_), parent_(parent) {}

  // The current value, nullopt if absent. Errors: storage errors.
  absl::StatusOr<std::optional<std::string>> Get(bool meta, const std::string& key) const {
    const Map& map = meta ? meta_ : data_;
    auto it = map.find(key);
    if (it != map.end()) return it->second;
    if (parent_ != nullptr) return parent_->Get(meta, key);
    absl::StatusOr<std::string> stored = meta ? kv_->GetMeta(shard_, key) : kv_->Get(shard_, key);
    if (absl::IsNotFound(stored.status())) return std::optional<std::string>();
    if (!stored.ok()) return stored.status();
    return std::optional<std::string>(*std::move(stored));
  }

  // The meta records whose key starts with `prefix`, as this overlay sees
  // them (stored, then each overlay's writes from the batch's down).
  absl::StatusOr<std::map<std::string, std::string>> ScanMeta(const std::string& prefix) const {
    std::map<std::string, std::string> out;
    if (parent_ != nullptr) {
      TESSERA_ASSIGN_OR_RETURN(out, parent_->ScanMeta(prefix));
    } else {
      storage::ScanOptions options;
      options.meta = true;
      options.start = prefix;
      options.end = storage::PrefixEnd(prefix);
      options.limit = 4096;
      while (true) {
        TESSERA_ASSIGN_OR_RETURN(storage::ScanResult page, kv_->Scan(shard_, options));
        for (auto& [key, value] : page.items) out.emplace(std::move(key), std::move(value));
        if (!page.more) break;
        options.start = std::move(page.resume_key);
      }
    }
    for (auto it = meta_.lower_bound(prefix);
         it != meta_.end() && absl::string_view(it->first).substr(0, prefix.size()) == prefix;
         ++it) {
      if (it->second.has_value()) {
        out[it->first] = *it->second;
      } else {
        out.erase(it->first);
      }
    }
    return out;
  }

  void Put(bool meta, const std::string& key, std::string value) {
    (meta ? meta_ : data_)[key] = std::move(value);
  }
  void Delete(bool meta, const std::string& key) { (meta ? meta_ : data_)[key] = std::nullopt; }

  bool empty() const { return data_.empty() && meta_.empty(); }

  // Merges this overlay's writes into its parent.
  void CommitToParent() {
    for (auto& [key, value] : data_) parent_->data_[key] = std::move(value);
    for (auto& [key, value] : meta_) parent_->meta_[key] = std::move(value);
    data_.clear();
    meta_.clear();
  }

  // The writes as KvStore mutations: meta first, then data, each in key order.
  std::vector<Mutation> Mutations() const {
    std::vector<Mutation> out;
    out.reserve(meta_.size() + data_.size());
    for (const auto& [key, value] : meta_) {
      out.push_back(value.has_value() ? Mutation{Mutation::Kind::kPutMeta, key, *value}
                                      : Mutation{Mutation::Kind::kDeleteMeta, key, ""});
    }
    for (const auto& [key, value] : data_) {
      out.push_back(value.has_value() ? Mutation{Mutation::Kind::kPut, key, *value}
                                      : Mutation{Mutation::Kind::kDelete, key, ""});
    }
    return out;
  }

 private:
  using Map = std::map<std::string, std::optional<std::string>>;

  const KvStore* const kv_;
  const ShardId shard_;
  Overlay* const parent_;
  Map data_;
  Map meta_;
};

serverpb::CommandResult ErrorResult(const absl::Status& status) {
  serverpb::CommandResult result;
  result.set_code(static_cast<int>(status.code()));
  result.set_message(std::string(status.message()));
  return result;
}

StateMachineOptions Sanitized(StateMachineOptions options) {
  options.max_sessions_per_shard = std::max<size_t>(options.max_sessions_per_shard, 1);
  options.max_results_per_session = std::max<size_t>(options.max_results_per_session, 1);
  options.session_checkpoint_ops = std::max<uint64_t>(options.session_checkpoint_ops, 1);
  options.session_checkpoint_part_bytes =
      std::max<size_t>(options.session_checkpoint_part_bytes, 1);
  options.max_scan_limit = std::max<uint32_t>(options.max_scan_limit, 1);
  options.default_scan_limit =
      std::clamp<uint32_t>(options.default_scan_limit, 1, options.max_scan_limit);
  options.history_compact_step = std::max<uint64_t>(options.history_compact_step, 1);
  options.lease_tombstone_revisions =
      std::max<uint64_t>(options.lease_tombstone_revisions, options.history_compact_step);
  if (options.history_revisions != 0) {  // 0: no history
    options.history_revisions =
        std::max<uint64_t>(options.history_revisions, options.history_compact_step);
  }
  return options;
}

// ---- Validation (before anything executes, so bad input changes nothing) ----

// Leases one RevokeLeases may name (its work is bounded by their keys).
constexpr int kMaxRevokeLeases = 10000;

absl::Status CheckKey(const std::string& key, absl::string_view what) {
  if (key.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": empty key"));
  return absl::OkStatus();
}

absl::Status CheckCompare(const v1::Compare& compare) {
  TESSERA_RETURN_IF_ERROR(CheckKey(compare.key(), "txn compare"));
  if (!v1::Compare::Op_IsValid(compare.op())) {
    return absl::InvalidArgumentError(absl::StrCat("txn compare: unknown op ", compare.op()));
  }
  switch (compare.target()) {
    case v1::Compare::TARGET_VALUE:
    case v1::Compare::TARGET_VERSION:
    case v1::Compare::TARGET_CREATE_REVISION:
    case v1::Compare::TARGET_MOD_REVISION:
      return absl::OkStatus();
    case v1::Compare::TARGET_EXISTS:
      if (compare.op() == v1::Compare::OP_EQUAL || compare.op() == v1::Compare::OP_NOT_EQUAL) {
        return absl::OkStatus();
      }
      return absl::InvalidArgumentError(
          "txn compare: TARGET_EXISTS takes OP_EQUAL or OP_NOT_EQUAL");
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("txn compare: unknown target ", compare.target()));
  }
}

absl::Status CheckTxnOp(const v1::TxnOp& op) {
  switch (op.op_case()) {
    case v1::TxnOp::kPut:
      return CheckKey(op.put().key(), "txn put");
    case v1::TxnOp::kDelete:
      return CheckKey(op.delete_().key(), "txn delete");
    case v1::TxnOp::kGet:
      return CheckKey(op.get().key(), "txn get");
    case v1::TxnOp::OP_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("txn op without an operation");
}

absl::Status CheckCommand(const serverpb::Command& command) {
  switch (command.op_case()) {
    case serverpb::Command::kPut:
      return CheckKey(command.put().key(), "put");
    case serverpb::Command::kDelete:
      return CheckKey(command.delete_().key(), "delete");
    case serverpb::Command::kTxn:
      for (const v1::Compare& compare : command.txn().compares()) {
        TESSERA_RETURN_IF_ERROR(CheckCompare(compare));
      }
      for (const v1::TxnOp& op : command.txn().success()) TESSERA_RETURN_IF_ERROR(CheckTxnOp(op));
      for (const v1::TxnOp& op : command.txn().failure()) TESSERA_RETURN_IF_ERROR(CheckTxnOp(op));
      return absl::OkStatus();
    case serverpb::Command::kSplit:
      // Apply() runs splits itself; one with a session gets here.
      return absl::InvalidArgumentError("a split carries no session");
    case serverpb::Command::kCompactHistory:
      // Apply() runs them itself; one with a session gets here.
      return absl::InvalidArgumentError("a history compaction carries no session");
    case serverpb::Command::kRevokeLeases:
      if (command.revoke_leases().leases().empty() ||
          command.revoke_leases().leases_size() > kMaxRevokeLeases) {
        return absl::InvalidArgumentError(
            absl::StrCat("a RevokeLeases names 1 to ", kMaxRevokeLeases, " leases"));
      }
      return absl::OkStatus();
    case serverpb::Command::OP_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("command without an operation");
}

// ---- The shard's hash range ----

// The first key `command` reads or writes whose hash is outside `range`.
std::optional<std::string> KeyOutside(const serverpb::Command& command,
                                      const sm::ShardRange& range) {
  std::vector<const std::string*> keys;
  switch (command.op_case()) {
    case serverpb::Command::kPut:
      keys.push_back(&command.put().key());
      break;
    case serverpb::Command::kDelete:
      keys.push_back(&command.delete_().key());
      break;
    case serverpb::Command::kTxn:
      for (const v1::Compare& c : command.txn().compares()) keys.push_back(&c.key());
      for (const auto* ops : {&command.txn().success(), &command.txn().failure()}) {
        for (const v1::TxnOp& op : *ops) {
          if (op.has_put()) keys.push_back(&op.put().key());
          if (op.has_delete_()) keys.push_back(&op.delete_().key());
          if (op.has_get()) keys.push_back(&op.get().key());
        }
      }
      break;
    default:
      break;
  }
  for (const std::string* key : keys) {
    if (!range.Holds(KeyHash(*key))) return *key;
  }
  return std::nullopt;
}

absl::Status OutsideRangeError(ShardId shard, const sm::ShardRange& range) {
  return absl::OutOfRangeError(absl::StrCat(
      "the key is not in shard ", shard, "'s hash range [", range.start, ", ", range.end,
      "] (range version ", range.version, "): the shard was split; refresh the cluster map"));
}

// ---- Execution (errors returned here are storage errors: the batch aborts) ----

// Where a command's writes are stamped and recorded.
struct Exec {
  uint64_t revision = 0;                  // the entry's index
  std::vector<sm::HistoryEvent>* events;  // this command's, in order
  // Lease tombstones below this revision count as gone (LeaseTombstoneFloor).
  uint64_t lease_tombstone_floor = 0;
};

// The key's stored bytes, nullopt if absent.
absl::StatusOr<std::optional<std::string>> ReadStored(const Overlay& view, const std::string& key) {
  return view.Get(/*meta=*/false, key);
}

// The key's version and value, nullopt if absent. kDataLoss if corrupt.
absl::StatusOr<std::optional<sm::VersionedValue>> ReadKey(const Overlay& view,
                                                          const std::string& key) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored, ReadStored(view, key));
  if (!stored.has_value()) return std::optional<sm::VersionedValue>();
  TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(*stored));
  return std::optional<sm::VersionedValue>(std::move(value));
}

void FillKeyValue(const std::string& key, const sm::VersionedValue& value, v1::KeyValue* kv) {
  kv->set_key(key);
  kv->set_value(value.value);
  kv->set_version(value.version);
  kv->set_create_revision(value.create_revision);
  kv->set_mod_revision(value.mod_revision);
  kv->set_lease(value.lease);
}

void RecordEvent(const Exec& exec, const std::string& key, std::string stored,
                 std::optional<std::string> previous) {
  sm::HistoryEvent& event = exec.events->emplace_back();
  event.revision = exec.revision;
  event.n = static_cast<uint32_t>(exec.events->size() - 1);
  event.deleted = stored.empty();
  event.key = key;
  event.stored = std::move(stored);
  if (previous.has_value()) event.prev_stored = *std::move(previous);
}

absl::StatusOr<v1::PutResponse> DoPut(Overlay& view, const v1::PutRequest& put, const Exec& exec) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored, ReadStored(view, put.key()));
  std::optional<sm::VersionedValue> previous;
  if (stored.has_value()) {
    TESSERA_ASSIGN_OR_RETURN(previous, sm::DecodeValue(*stored));
  }
  sm::VersionedValue next;
  next.version = previous.has_value() ? previous->version + 1 : 1;
  next.create_revision = previous.has_value() ? previous->create_revision : exec.revision;
  next.mod_revision = exec.revision;
  next.lease = put.lease();
  next.value = put.value();
  const uint64_t previous_lease = previous.has_value() ? previous->lease : 0;
  if (previous_lease != next.lease) {
    if (previous_lease != 0) view.Delete(/*meta=*/true, sm::LeaseKey(previous_lease, put.key()));
    if (next.lease != 0) view.Put(/*meta=*/true, sm::LeaseKey(next.lease, put.key()), "");
  }
  std::string encoded = sm::EncodeValue(next);
  view.Put(/*meta=*/false, put.key(), encoded);
  RecordEvent(exec, put.key(), std::move(encoded), std::move(stored));
  v1::PutResponse response;
  response.set_version(next.version);
  response.set_had_previous(previous.has_value());
  if (previous.has_value() && put.return_previous()) {
    FillKeyValue(put.key(), *previous, response.mutable_previous());
  }
  return response;
}

absl::StatusOr<v1::DeleteResponse> DoDelete(Overlay& view, const v1::DeleteRequest& del,
                                            const Exec& exec) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored, ReadStored(view, del.key()));
  v1::DeleteResponse response;
  if (stored.has_value()) {
    TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(*stored));
    if (value.lease != 0) view.Delete(/*meta=*/true, sm::LeaseKey(value.lease, del.key()));
    view.Delete(/*meta=*/false, del.key());
    RecordEvent(exec, del.key(), "", std::move(stored));
    response.set_deleted(true);
  }
  return response;
}

absl::StatusOr<v1::GetResponse> DoGet(const Overlay& view, const v1::GetRequest& get) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::VersionedValue> value, ReadKey(view, get.key()));
  v1::GetResponse response;
  if (value.has_value()) {
    response.set_found(true);
    FillKeyValue(get.key(), *value, response.mutable_kv());
  }
  return response;
}

bool Holds(int cmp, v1::Compare::Op op) {
  switch (op) {
    case v1::Compare::OP_EQUAL:
      return cmp == 0;
    case v1::Compare::OP_NOT_EQUAL:
      return cmp != 0;
    case v1::Compare::OP_LESS:
      return cmp < 0;
    case v1::Compare::OP_GREATER:
      return cmp > 0;
    default:
      return false;  // rejected by CheckCompare
  }
}

// Whether the stored state satisfies `compare` (validated by CheckCompare).
absl::StatusOr<bool> Evaluate(const Overlay& view, const v1::Compare& compare) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::VersionedValue> current, ReadKey(view, compare.key()));
  switch (compare.target()) {
    case v1::Compare::TARGET_VALUE: {
      if (!current.has_value()) return false;
      // std::string::compare orders bytes as unsigned char, like memcmp.
      const int cmp = current->value.compare(compare.value());
      return Holds(cmp, compare.op());
    }
    case v1::Compare::TARGET_VERSION: {
      const uint64_t version = current.has_value() ? current->version : 0;
      const int cmp = version < compare.version() ? -1 : (version > compare.version() ? 1 : 0);
      return Holds(cmp, compare.op());
    }
    case v1::Compare::TARGET_EXISTS:
      return compare.op() == v1::Compare::OP_EQUAL ? current.has_value() : !current.has_value();
    case v1::Compare::TARGET_CREATE_REVISION:
    case v1::Compare::TARGET_MOD_REVISION: {
      uint64_t revision = 0;
      if (current.has_value()) {
        revision = compare.target() == v1::Compare::TARGET_CREATE_REVISION
                       ? current->create_revision
                       : current->mod_revision;
      }
      const int cmp = revision < compare.revision() ? -1 : (revision > compare.revision() ? 1 : 0);
      return Holds(cmp, compare.op());
    }
    default:
      return false;  // rejected by CheckCompare
  }
}

// Whether the lease ended here, as of exec (tombstones below the floor are
// gone, whether or not their records were deleted yet).
absl::StatusOr<bool> LeaseEnded(const Overlay& view, uint64_t lease, const Exec& exec) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> ended,
                           view.Get(/*meta=*/true, sm::LeaseTombstoneKey(lease)));
  if (!ended.has_value()) return false;
  TESSERA_ASSIGN_OR_RETURN(uint64_t revision, sm::DecodeU64(*ended));
  return revision >= exec.lease_tombstone_floor;
}

// Deletes the keys attached to each lease and records the leases as ended.
absl::Status DoRevokeLeases(Overlay& view, const serverpb::RevokeLeases& revoke, const Exec& exec) {
  for (uint64_t lease : revoke.leases()) {
    TESSERA_ASSIGN_OR_RETURN(auto attached, view.ScanMeta(sm::LeaseKeyPrefix(lease)));
    for (const auto& [meta_key, unused] : attached) {
      const std::string key = meta_key.substr(1 + 8);
      view.Delete(/*meta=*/true, meta_key);
      TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored, ReadStored(view, key));
      if (!stored.has_value()) continue;
      TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(*stored));
      if (value.lease != lease) continue;
      view.Delete(/*meta=*/false, key);
      RecordEvent(exec, key, "", std::move(stored));
    }
    TESSERA_ASSIGN_OR_RETURN(bool ended, LeaseEnded(view, lease, exec));
    if (!ended) {
      view.Put(/*meta=*/true, sm::LeaseTombstoneKey(lease), sm::EncodeU64(exec.revision));
      view.Put(/*meta=*/true, sm::LeaseTombstoneOrderKey(exec.revision, lease), "");
    }
  }
  return absl::OkStatus();
}

// NOT_FOUND if a put of `command` names a lease this shard saw end.
absl::StatusOr<absl::Status> CheckLeases(const Overlay& view, const serverpb::Command& command,
                                         const Exec& exec) {
  std::vector<uint64_t> leases;
  if (command.has_put()) leases.push_back(command.put().lease());
  if (command.has_txn()) {
    for (const auto* ops : {&command.txn().success(), &command.txn().failure()}) {
      for (const v1::TxnOp& op : *ops) {
        if (op.has_put()) leases.push_back(op.put().lease());
      }
    }
  }
  for (uint64_t lease : leases) {
    if (lease == 0) continue;
    TESSERA_ASSIGN_OR_RETURN(bool ended, LeaseEnded(view, lease, exec));
    if (ended) {
      return absl::NotFoundError(absl::StrCat("lease ", lease, " not found (it ended)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::TxnResponse> DoTxn(Overlay& view, const v1::TxnRequest& txn, const Exec& exec) {
  bool succeeded = true;
  for (const v1::Compare& compare : txn.compares()) {
    TESSERA_ASSIGN_OR_RETURN(bool holds, Evaluate(view, compare));
    if (!holds) {
      succeeded = false;
      break;
    }
  }
  v1::TxnResponse response;
  response.set_succeeded(succeeded);
  for (const v1::TxnOp& op : succeeded ? txn.success() : txn.failure()) {
    v1::TxnOpResult* result = response.add_results();
    switch (op.op_case()) {
      case v1::TxnOp::kPut: {
        TESSERA_ASSIGN_OR_RETURN(*result->mutable_put(), DoPut(view, op.put(), exec));
        break;
      }
      case v1::TxnOp::kDelete: {
        TESSERA_ASSIGN_OR_RETURN(*result->mutable_delete_(), DoDelete(view, op.delete_(), exec));
        break;
      }
      case v1::TxnOp::kGet: {
        TESSERA_ASSIGN_OR_RETURN(*result->mutable_get(), DoGet(view, op.get()));
        break;
      }
      case v1::TxnOp::OP_NOT_SET:
        break;  // rejected by CheckTxnOp
    }
  }
  return response;
}

// Validates and executes one command's operation on `view` (no sessions).
// A bad command yields a result with its error code and writes nothing.
absl::StatusOr<serverpb::CommandResult> Execute(Overlay& view, const serverpb::Command& command,
                                                const Exec& exec) {
  absl::Status valid = CheckCommand(command);
  if (valid.ok()) {
    TESSERA_ASSIGN_OR_RETURN(valid, CheckLeases(view, command, exec));
  }
  if (!valid.ok()) return ErrorResult(valid);
  serverpb::CommandResult result;
  switch (command.op_case()) {
    case serverpb::Command::kPut: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_put(), DoPut(view, command.put(), exec));
      break;
    }
    case serverpb::Command::kDelete: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_delete_(), DoDelete(view, command.delete_(), exec));
      break;
    }
    case serverpb::Command::kTxn: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_txn(), DoTxn(view, command.txn(), exec));
      break;
    }
    case serverpb::Command::kRevokeLeases:
      TESSERA_RETURN_IF_ERROR(DoRevokeLeases(view, command.revoke_leases(), exec));
      break;
    case serverpb::Command::kSplit:
    case serverpb::Command::kCompactHistory:
    case serverpb::Command::OP_NOT_SET:
      break;  // rejected by CheckCommand
  }
  return result;
}

}  // namespace

uint64_t RequestFingerprint(const serverpb::Command& command) {
  // The operation only: a retry carries the same op and seq but may carry
  // a higher first_incomplete_seq. Which op it is goes in first, so a Put
  // and a Delete with identical bytes differ. Replicas compute it from the
  // same entry bytes with the same code, so it is deterministic.
  std::string bytes(1, static_cast<char>(command.op_case()));
  switch (command.op_case()) {
    case serverpb::Command::kPut:
      command.put().AppendToString(&bytes);
      break;
    case serverpb::Command::kDelete:
      command.delete_().AppendToString(&bytes);
      break;
    case serverpb::Command::kTxn:
      command.txn().AppendToString(&bytes);
      break;
    case serverpb::Command::kRevokeLeases:
      command.revoke_leases().AppendToString(&bytes);
      break;
    default:
      break;
  }
  const uint64_t hash = XXH3_64bits(bytes.data(), bytes.size());
  return hash != 0 ? hash : 1;  // 0 means "no fingerprint"
}
// ---- Sessions (in memory; persisted as checkpoint + delta windows, see
// sm_format.h and the comment at the top) ----

// A shard's session table in memory, its LRU order, and where its persisted
// form stands (the checkpoint and the delta windows written since).
struct StateMachine::ShardSessions {
  uint64_t applied_index = 0;   // the store's applied index this table reflects
  sm::ShardRange range;         // the shard's hash range at that index
  bool range_recorded = false;  // by a split (else: every hash, as far as it knows)
  sm::SessionMap sessions;
  std::map<uint64_t, uint64_t> lru;  // last_used_index -> client_id; begin = LRU

  std::vector<uint64_t> delta_starts;  // keys of the stored windows, ascending
  std::string window;                  // the open (last) window's bytes
  bool window_open = false;
  bool window_dirty = false;  // the open window changed in this batch
  uint64_t window_start = 0;
  uint64_t window_ops = 0;
  uint64_t ops_since_checkpoint = 0;
  uint64_t delta_bytes_since_checkpoint = 0;
  uint64_t checkpoint_bytes = 0;  // size of the stored checkpoint (0: none)
  uint32_t checkpoint_parts = 0;  // its parts ("C" | part)

  // Format 1 records found at load: converted (a checkpoint written, these
  // deleted) with the shard's next write.
  std::vector<std::string> legacy_keys;

  // The oldest revision of the watch history (sm_format.h "F"); 0 while
  // the shard has none recorded (a shard from before the history existed).
  uint64_t history_floor = 0;
};

namespace {

using ShardSessions = StateMachine::ShardSessions;

// Lease tombstones of revisions below this are gone for the entry at
// `index`: only the log decides, like the history's compaction, so every
// replica refuses the same puts however its batches were cut.
uint64_t LeaseTombstoneFloor(uint64_t index, const StateMachineOptions& options) {
  const uint64_t m = index / options.history_compact_step * options.history_compact_step;
  return m > options.lease_tombstone_revisions ? m - options.lease_tombstone_revisions : 0;
}

// Ops and bytes of a delta window that closes it (sm_format.h).
bool WindowFull(uint64_t ops, size_t bytes) {
  return ops >= sm::kDeltaWindowMaxOps || bytes >= sm::kDeltaWindowMaxBytes;
}

// Reads format 1 records (S/L/R) into `table`. kDataLoss when corrupt.
absl::Status ConvertLegacy(const std::map<std::string, std::string>& legacy, ShardSessions* table) {
  for (const auto& [key, value] : legacy) {
    table->legacy_keys.push_back(key);
    if (key[0] != 'S') continue;
    if (key.size() != 9) return absl::DataLossError("malformed format 1 session key");
    uint64_t client_id = 0;
    for (size_t i = 1; i < 9; ++i) client_id = (client_id << 8) | static_cast<uint8_t>(key[i]);
    TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord record, sm::DecodeSessionRecord(value));
    sm::Session session;
    session.first_incomplete_seq = record.first_incomplete_seq;
    session.last_used_index = record.last_used_index;
    for (uint64_t seq : record.seqs) {
      auto r = legacy.find(sm::ResultKey(client_id, seq));
      if (r == legacy.end()) {
        return absl::DataLossError(absl::StrCat("format 1 session of client ", client_id,
                                                " lacks its result for seq ", seq));
      }
      // Format 1 kept results below first_incomplete_seq only transiently;
      // the invariant of format 2 drops them.
      if (seq >= session.first_incomplete_seq) session.results.emplace(seq, r->second);
    }
    if (!table->lru.emplace(session.last_used_index, client_id).second) {
      return absl::DataLossError(
          absl::StrCat("format 1 sessions share last_used_index ", session.last_used_index));
    }
    table->sessions.emplace(client_id, std::move(session));
  }
  return absl::OkStatus();
}

// Rebuilds a shard's table from its stored meta records (sm_format.h).
// kDataLoss on corrupt or inconsistent records; storage errors.
absl::StatusOr<std::unique_ptr<ShardSessions>> LoadSessions(const KvStore& kv, ShardId shard) {
  auto table = std::make_unique<ShardSessions>();
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<storage::ShardSnapshot> snapshot,
                           kv.ExportSnapshot(shard));
  table->applied_index = snapshot->applied_index();
  uint64_t checkpoint_index = 0;
  std::vector<std::string> checkpoint_parts;
  bool checkpoint_loaded = false;
  std::map<std::string, std::string> legacy;
  uint64_t last_op = 0;
  // "C" keys sort before "D" keys: the checkpoint is complete when the first
  // window (or the end of the meta records) is reached.
  auto load_checkpoint = [&]() -> absl::Status {
    if (checkpoint_loaded || checkpoint_parts.empty()) return absl::OkStatus();
    checkpoint_loaded = true;
    TESSERA_RETURN_IF_ERROR(
        sm::DecodeCheckpoint(checkpoint_parts, &checkpoint_index, &table->sessions));
    if (checkpoint_index > table->applied_index) {
      return absl::DataLossError(absl::StrCat("session checkpoint at index ", checkpoint_index,
                                              " is above the applied index ",
                                              table->applied_index));
    }
    for (const auto& [client_id, session] : table->sessions) {
      table->lru.emplace(session.last_used_index, client_id);
    }
    last_op = checkpoint_index;
    table->checkpoint_parts = static_cast<uint32_t>(checkpoint_parts.size());
    for (const std::string& part : checkpoint_parts) table->checkpoint_bytes += part.size();
    checkpoint_parts.clear();
    return absl::OkStatus();
  };
  storage::SnapshotRecord record;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(bool more, snapshot->Next(&record));
    if (!more || !record.meta) break;  // meta records come first
    const std::string& key = record.key;
    // The watch history sorts last among meta records, and is not loaded.
    if (key[0] == sm::kHistoryPrefix[0]) break;
    uint64_t start = 0;
    uint32_t part = 0;
    if (sm::ParseCheckpointKey(key, &part)) {
      checkpoint_parts.push_back(std::move(record.value));
    } else if (sm::ParseDeltaKey(key, &start)) {
      TESSERA_RETURN_IF_ERROR(load_checkpoint());
      TESSERA_ASSIGN_OR_RETURN(std::vector<sm::SessionOp> ops, sm::DecodeDeltaWindow(record.value));
      if (ops.front().index != start) {
        return absl::DataLossError(
            absl::StrCat("session delta window ", start, " starts at index ", ops.front().index));
      }
      for (const sm::SessionOp& op : ops) {
        if (op.index <= last_op || op.index > table->applied_index) {
          return absl::DataLossError(absl::StrCat(
              "session delta at index ", op.index, " is out of order (previous ", last_op,
              ", checkpoint ", checkpoint_index, ", applied ", table->applied_index, ")"));
        }
        TESSERA_RETURN_IF_ERROR(sm::ReplaySessionOp(op, &table->sessions, &table->lru));
        last_op = op.index;
      }
      table->delta_starts.push_back(start);
      table->ops_since_checkpoint += ops.size();
      table->delta_bytes_since_checkpoint += record.value.size();
      table->window_open = !WindowFull(ops.size(), record.value.size());
      table->window_start = start;
      table->window_ops = ops.size();
      table->window = table->window_open ? std::move(record.value) : std::string();
    } else if (key == sm::kHistoryFloorKey) {
      TESSERA_ASSIGN_OR_RETURN(table->history_floor, sm::DecodeU64(record.value));
    } else if (key == sm::kRangeKey) {
      TESSERA_ASSIGN_OR_RETURN(table->range, sm::DecodeRange(record.value));
      table->range_recorded = true;
    } else if (key.size() >= 1 && (key[0] == 'L' || key[0] == 'S' || key[0] == 'R')) {
      legacy.emplace(key, std::move(record.value));
    }
    // Other meta keys are not the StateMachine's.
  }
  TESSERA_RETURN_IF_ERROR(load_checkpoint());
  if (!legacy.empty()) {
    if (checkpoint_loaded || !table->delta_starts.empty()) {
      return absl::DataLossError("session records of format 1 and format 2 side by side");
    }
    TESSERA_RETURN_IF_ERROR(ConvertLegacy(legacy, table.get()));
  }
  return table;
}

// Writes a checkpoint of `table` as of log index `index` and deletes the
// delta windows it covers.
void WriteCheckpoint(ShardSessions& table, Overlay& shard, uint64_t index,
                     const StateMachineOptions& options) {
  for (uint64_t start : table.delta_starts) shard.Delete(/*meta=*/true, sm::DeltaKey(start));
  table.delta_starts.clear();
  table.window.clear();
  table.window_open = false;
  table.window_dirty = false;
  table.window_ops = 0;
  std::vector<std::string> parts =
      sm::EncodeCheckpoint(index, table.sessions, options.session_checkpoint_part_bytes);
  table.checkpoint_bytes = 0;
  for (uint32_t part = 0; part < parts.size(); ++part) {
    table.checkpoint_bytes += parts[part].size();
    shard.Put(/*meta=*/true, sm::CheckpointKey(part), std::move(parts[part]));
  }
  // The previous checkpoint's extra parts.
  for (uint32_t part = static_cast<uint32_t>(parts.size()); part < table.checkpoint_parts; ++part) {
    shard.Delete(/*meta=*/true, sm::CheckpointKey(part));
  }
  table.checkpoint_parts = static_cast<uint32_t>(parts.size());
  table.ops_since_checkpoint = 0;
  table.delta_bytes_since_checkpoint = 0;
}

// Appends `op` to the shard's open delta window (opening one if needed);
// a window that fills up is written and closed; then a checkpoint if due.
void RecordOp(ShardSessions& table, Overlay& shard, const sm::SessionOp& op,
              const StateMachineOptions& options) {
  if (!table.window_open) {
    table.window = sm::NewDeltaWindow();
    table.window_open = true;
    table.window_start = op.index;
    table.window_ops = 0;
    table.delta_starts.push_back(op.index);
    table.delta_bytes_since_checkpoint += table.window.size();
  }
  const size_t before = table.window.size();
  sm::AppendSessionOp(op, &table.window);
  table.delta_bytes_since_checkpoint += table.window.size() - before;
  ++table.window_ops;
  ++table.ops_since_checkpoint;
  table.window_dirty = true;
  if (WindowFull(table.window_ops, table.window.size())) {
    shard.Put(/*meta=*/true, sm::DeltaKey(table.window_start), std::move(table.window));
    table.window.clear();
    table.window_open = false;
    table.window_dirty = false;
  }
  if (table.ops_since_checkpoint >= options.session_checkpoint_ops ||
      table.delta_bytes_since_checkpoint >=
          std::max<uint64_t>(options.session_checkpoint_bytes, table.checkpoint_bytes)) {
    WriteCheckpoint(table, shard, op.index, options);
  }
}

// Runs one decoded command at log index `index` with session handling.
// Runs `command` on a child overlay of `shard`: a command that succeeds
// gets its revision, and its writes and events join the batch's.
absl::StatusOr<serverpb::CommandResult> ExecuteAt(Overlay& shard, uint64_t index,
                                                  const serverpb::Command& command,
                                                  const StateMachineOptions& options,
                                                  std::vector<sm::HistoryEvent>* events) {
  Overlay view(&shard);
  std::vector<sm::HistoryEvent> mine;
  TESSERA_ASSIGN_OR_RETURN(
      serverpb::CommandResult result,
      Execute(view, command, Exec{index, &mine, LeaseTombstoneFloor(index, options)}));
  if (result.code() == 0) {
    view.CommitToParent();
    result.set_revision(index);
    for (sm::HistoryEvent& event : mine) events->push_back(std::move(event));
  }
  return result;
}

absl::StatusOr<serverpb::CommandResult> ApplyCommand(Overlay& shard, ShardSessions& table,
                                                     uint64_t index,
                                                     const serverpb::Command& command,
                                                     const StateMachineOptions& options,
                                                     std::vector<sm::HistoryEvent>* events) {
  const v1::Session& session = command.session();
  const uint64_t client_id = session.client_id();
  if (client_id == 0) return ExecuteAt(shard, index, command, options, events);

  const uint64_t seq = session.seq();
  if (seq == 0) return ErrorResult(absl::InvalidArgumentError("session seq must be >= 1"));
  auto it = table.sessions.find(client_id);
  if (it != table.sessions.end()) {
    auto stored = it->second.results.find(seq);
    if (stored != it->second.results.end()) {
      // A retry of an applied write: the original answer, nothing changes.
      serverpb::CommandResult remembered;
      if (!remembered.ParseFromString(stored->second)) {
        return absl::DataLossError(
            absl::StrCat("corrupt remembered result of client ", client_id, " seq ", seq));
      }
      // 0: remembered before fingerprints existed; trust the seq as before.
      if (remembered.request_fingerprint() != 0 &&
          remembered.request_fingerprint() != RequestFingerprint(command)) {
        return ErrorResult(absl::FailedPreconditionError(absl::StrCat(
            "session seq ", seq, " of client ", client_id,
            " was already used by a different request; use a new seq for a new request")));
      }
      remembered.clear_request_fingerprint();
      return remembered;
    }
    if (seq < it->second.first_incomplete_seq || seq < session.first_incomplete_seq()) {
      return ErrorResult(absl::FailedPreconditionError(kStaleSessionMessage));
    }
  } else if (session.first_incomplete_seq() > 1) {
    // The client completed earlier writes on this shard: its session was
    // evicted, and this may be a retry of a write whose result is gone.
    return ErrorResult(absl::FailedPreconditionError(kStaleSessionMessage));
  }

  TESSERA_ASSIGN_OR_RETURN(serverpb::CommandResult result,
                           ExecuteAt(shard, index, command, options, events));

  // Remember the result and update the session (ReplaySessionOp makes the
  // same change from the op at load).
  sm::SessionOp op;
  op.index = index;
  op.client_id = client_id;
  op.create = it == table.sessions.end();
  op.seq = seq;
  {
    serverpb::CommandResult remembered = result;
    remembered.set_request_fingerprint(RequestFingerprint(command));
    remembered.SerializeToString(&op.result);
  }
  if (op.create) {
    it = table.sessions.emplace(client_id, sm::Session{}).first;
  } else {
    table.lru.erase(it->second.last_used_index);
  }
  sm::Session& updated = it->second;
  updated.first_incomplete_seq =
      std::max(updated.first_incomplete_seq, session.first_incomplete_seq());
  updated.last_used_index = index;
  updated.results[seq] = op.result;
  auto& results = updated.results;
  while (!results.empty() && (results.begin()->first < updated.first_incomplete_seq ||
                              results.size() > options.max_results_per_session)) {
    // Results beyond the bound: later retries of these seqs are rejected.
    updated.first_incomplete_seq =
        std::max(updated.first_incomplete_seq, results.begin()->first + 1);
    results.erase(results.begin());
  }
  op.first_incomplete_seq = updated.first_incomplete_seq;
  table.lru.emplace(index, client_id);
  // Only a new session can take the count over the bound.
  while (op.create && table.sessions.size() > options.max_sessions_per_shard) {
    auto victim = table.lru.begin();
    op.evicted.push_back(victim->second);
    table.sessions.erase(victim->second);
    table.lru.erase(victim);
  }
  RecordOp(table, shard, op, options);
  return result;
}

}  // namespace

// One shard's part of an Apply call.
struct StateMachine::ShardBatch {
  uint64_t stored_applied = 0;  // applied index in the KvStore
  uint64_t last_index = 0;      // highest index applied in this batch
  std::unique_ptr<Overlay> overlay;
  ShardSessions* table = nullptr;        // null for a split's new shard
  bool reloaded = false;                 // the table was (re)loaded from storage
  bool split = false;                    // a split of this shard was applied
  std::vector<sm::HistoryEvent> events;  // of this batch, in revision order
  std::vector<Mutation> range_deletes;   // written before the overlay's
};

StateMachine::StateMachine(storage::KvStore* kv, const StateMachineOptions& options)
    : kv_(kv), options_(Sanitized(options)) {}

StateMachine::~StateMachine() = default;

absl::Status StateMachine::Apply(absl::Span<const CommittedEntry> entries,
                                 std::vector<serverpb::CommandResult>* results) {
  results->clear();
  results->resize(entries.size());

  std::map<ShardId, ShardBatch> shards;  // ordered: deterministic write order

  absl::Status status = [&]() -> absl::Status {
    for (size_t i = 0; i < entries.size(); ++i) {
      const CommittedEntry& entry = entries[i];
      auto it = shards.find(entry.shard);
      if (it == shards.end()) {
        TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(entry.shard));
        it = shards
                 .emplace(entry.shard,
                          ShardBatch{applied, applied, std::make_unique<Overlay>(kv_, entry.shard)})
                 .first;
      }
      ShardBatch& batch = it->second;
      if (entry.index <= batch.last_index) continue;  // already applied: empty result
      batch.last_index = entry.index;
      if (batch.table == nullptr) {
        // The table is (re)loaded when this StateMachine has none for the
        // shard or the store moved without it: a snapshot was installed (or
        // the shard replaced) underneath. The state of a shard at a given
        // applied index is the same on every replica, so an equal index
        // means the table is current.
        std::unique_ptr<ShardSessions>& table = sessions_[entry.shard];
        if (table == nullptr || table->applied_index != batch.stored_applied) {
          batch.reloaded = true;
          table.reset();
          TESSERA_ASSIGN_OR_RETURN(table, LoadSessions(*kv_, entry.shard));
          if (table->applied_index != batch.stored_applied) {
            return absl::InternalError(absl::StrCat(
                "shard ", entry.shard, ": applied index moved while loading sessions"));
          }
        }
        batch.table = table.get();
      }
      if (entry.data.empty()) continue;  // advances the applied index only
      serverpb::Command command;
      if (!command.ParseFromString(entry.data)) {
        (*results)[i] = ErrorResult(
            absl::InvalidArgumentError(absl::StrCat("undecodable command at index ", entry.index)));
        continue;
      }
      if (command.op_case() == serverpb::Command::kSplit) {
        TESSERA_ASSIGN_OR_RETURN((*results)[i], ApplySplit(entry, command.split(), shards));
        continue;
      }
      if (command.op_case() == serverpb::Command::kCompactHistory &&
          command.session().client_id() == 0) {
        CompactHistory(batch, entry.index, command.compact_history().below_revision());
        continue;
      }
      if (std::optional<std::string> key = KeyOutside(command, batch.table->range)) {
        (*results)[i] = ErrorResult(OutsideRangeError(entry.shard, batch.table->range));
        continue;
      }
      TESSERA_ASSIGN_OR_RETURN(
          (*results)[i], ApplyCommand(*batch.overlay, *batch.table, entry.index, command, options_,
                                      &batch.events));
    }

    std::vector<ShardWrite> writes;
    for (auto& [shard, batch] : shards) {
      if (batch.last_index == batch.stored_applied) continue;
      if (batch.table == nullptr) {  // a split's new shard: written whole
        writes.push_back(ShardWrite{.shard = shard,
                                    .applied_index = batch.last_index,
                                    .mutations = batch.overlay->Mutations()});
        continue;
      }
      ShardSessions& table = *batch.table;
      if (!table.legacy_keys.empty()) {
        // Converts format 1: its records go, a checkpoint holds the table.
        for (const std::string& key : table.legacy_keys) batch.overlay->Delete(/*meta=*/true, key);
        table.legacy_keys.clear();
        WriteCheckpoint(table, *batch.overlay, batch.last_index, options_);
      }
      if (table.window_open && table.window_dirty) {
        batch.overlay->Put(/*meta=*/true, sm::DeltaKey(table.window_start), table.window);
        table.window_dirty = false;
      }
      RecordHistory(batch);
      TESSERA_RETURN_IF_ERROR(CompactLeaseTombstones(shard, batch));
      std::vector<Mutation> mutations = std::move(batch.range_deletes);
      for (Mutation& m : batch.overlay->Mutations()) mutations.push_back(std::move(m));
      writes.push_back(ShardWrite{
          .shard = shard, .applied_index = batch.last_index, .mutations = std::move(mutations)});
    }
    if (writes.empty()) return absl::OkStatus();
    TESSERA_RETURN_IF_ERROR(kv_->Apply(writes));
    for (auto& [shard, batch] : shards) {
      if (batch.table != nullptr) batch.table->applied_index = batch.last_index;
    }
    if (ApplyObserver* observer = observer_.load(); observer != nullptr) {
      for (auto& [shard, batch] : shards) {
        if (batch.last_index == batch.stored_applied) continue;
        observer->OnApplied(shard, batch.last_index, batch.reloaded || batch.table == nullptr,
                            batch.split, std::move(batch.events));
      }
    }
    return absl::OkStatus();
  }();
  if (!status.ok()) {
    results->clear();
    // The tables may hold changes the store does not: reload them.
    for (const auto& [shard, batch] : shards) sessions_.erase(shard);
  }
  return status;
}

void StateMachine::CompactHistory(ShardBatch& batch, uint64_t index, uint64_t below) const {
  ShardSessions& table = *batch.table;
  below = std::min(below, index);
  // No floor recorded yet: a new shard's history starts at 1 (RecordHistory).
  if (options_.history_revisions == 0 || below <= std::max<uint64_t>(table.history_floor, 1)) {
    return;
  }
  batch.range_deletes.push_back(
      Mutation{Mutation::Kind::kDeleteMetaRange, sm::kHistoryPrefix, sm::HistoryKey(below, 0)});
  table.history_floor = below;
  batch.overlay->Put(/*meta=*/true, sm::kHistoryFloorKey, sm::EncodeU64(below));
}

void StateMachine::RecordHistory(ShardBatch& batch) const {
  if (options_.history_revisions == 0) return;
  ShardSessions& table = *batch.table;
  for (const sm::HistoryEvent& event : batch.events) {
    // Events below a floor a compaction of this batch set are not kept:
    // the same bytes as a replica that applied them in an earlier batch.
    if (event.revision < table.history_floor) continue;
    batch.overlay->Put(/*meta=*/true, sm::HistoryKey(event.revision, event.n),
                       sm::EncodeHistoryEvent(event));
  }
  if (table.history_floor == 0) {
    // The history starts with this batch (a new shard, or one from before
    // the history existed). Index 1 is at most a bootstrap point without
    // writes: a new shard's history starts at revision 1.
    table.history_floor = batch.stored_applied <= 1 ? 1 : batch.stored_applied + 1;
    batch.overlay->Put(/*meta=*/true, sm::kHistoryFloorKey, sm::EncodeU64(table.history_floor));
  }
  // Compaction at every multiple m of the step: revisions below
  // m - history_revisions go. Only the log decides, so every replica
  // compacts at the same entries, however its batches were cut.
  const uint64_t step = options_.history_compact_step;
  const uint64_t m = batch.last_index / step * step;
  if (m <= batch.stored_applied || m <= options_.history_revisions) return;
  const uint64_t floor = m - options_.history_revisions;
  if (floor <= table.history_floor) return;
  batch.range_deletes.push_back(
      Mutation{Mutation::Kind::kDeleteMetaRange, sm::kHistoryPrefix, sm::HistoryKey(floor, 0)});
  table.history_floor = floor;
  batch.overlay->Put(/*meta=*/true, sm::kHistoryFloorKey, sm::EncodeU64(floor));
}

absl::Status StateMachine::CompactLeaseTombstones(ShardId shard, ShardBatch& batch) const {
  const uint64_t floor = LeaseTombstoneFloor(batch.last_index, options_);
  if (floor <= LeaseTombstoneFloor(batch.stored_applied, options_)) return absl::OkStatus();
  storage::ScanOptions old;
  old.meta = true;
  old.start = sm::kLeaseTombstoneOrderPrefix;
  old.end = sm::LeaseTombstoneOrderKey(floor, 0);
  old.limit = 4096;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(storage::ScanResult records, kv_->Scan(shard, old));
    for (const auto& [key, unused] : records.items) {
      uint64_t revision = 0;
      uint64_t lease = 0;
      if (!sm::ParseLeaseTombstoneOrderKey(key, &revision, &lease)) {
        return absl::DataLossError(absl::StrCat("shard ", shard, ": bad lease tombstone key"));
      }
      batch.overlay->Delete(/*meta=*/true, key);
      // Unless the lease ended again later (a newer tombstone).
      const std::string tombstone = sm::LeaseTombstoneKey(lease);
      TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> current,
                               batch.overlay->Get(/*meta=*/true, tombstone));
      if (current.has_value() && *current == sm::EncodeU64(revision)) {
        batch.overlay->Delete(/*meta=*/true, tombstone);
      }
    }
    if (!records.more) break;
    old.start = std::move(records.resume_key);
  }
  return absl::OkStatus();
}

absl::StatusOr<serverpb::CommandResult> StateMachine::ApplySplit(
    const CommittedEntry& entry, const serverpb::SplitShard& split,
    std::map<ShardId, ShardBatch>& shards) const {
  ShardBatch& parent = shards.at(entry.shard);
  // A shard that never split owns what the map says: the command's range.
  const sm::ShardRange range =
      parent.table->range_recorded
          ? parent.table->range
          : sm::ShardRange{split.hash_start(), split.hash_end(), parent.table->range.version};
  const ShardId child = split.new_shard();
  auto refuse = [&](const std::string& why) {
    return ErrorResult(absl::FailedPreconditionError(
        absl::StrCat("split of shard ", entry.shard, " into ", child, " refused: ", why)));
  };
  if (!entry.split.has_value()) return refuse("not prepared by the node");
  if (!entry.split->membership_stable) return refuse("a membership change is in progress");
  if (split.range_version() != range.version) {
    return refuse(absl::StrCat("range version ", range.version, ", not ", split.range_version()));
  }
  if (range.start != split.hash_start() || range.end != split.hash_end()) {
    return refuse(absl::StrCat("its range is [", range.start, ", ", range.end, "], not [",
                               split.hash_start(), ", ", split.hash_end(), "]"));
  }
  if (split.split_hash() <= range.start || split.split_hash() > range.end) {
    return refuse(absl::StrCat("hash ", split.split_hash(), " is not inside [", range.start + 1,
                               ", ", range.end, "]"));
  }
  if (child == entry.shard || child > UINT32_MAX) return refuse("bad new shard id");
  // The Node applies a split alone: nothing of this batch is pending.
  if (!parent.overlay->empty() || shards.contains(child)) {
    return absl::InternalError(absl::StrCat("shard ", entry.shard, ": split at index ", entry.index,
                                            " not applied on its own"));
  }
  const sm::ShardRange lower{range.start, split.split_hash() - 1, range.version + 1};
  const sm::ShardRange upper{split.split_hash(), range.end, range.version + 1};
  std::unique_ptr<Overlay> moved;
  if (!entry.split->new_shard_hosted) moved = std::make_unique<Overlay>(kv_, child);
  // Every key of the upper half leaves the parent, in pages (the parent's
  // data is read as stored: nothing of this batch is pending).
  storage::ScanOptions page;
  page.limit = 4096;
  while (true) {
    TESSERA_ASSIGN_OR_RETURN(storage::ScanResult keys, kv_->Scan(entry.shard, page));
    for (auto& [key, stored] : keys.items) {
      if (!upper.Holds(KeyHash(key))) continue;
      parent.overlay->Delete(/*meta=*/false, key);
      if (moved != nullptr) moved->Put(/*meta=*/false, key, std::move(stored));
    }
    if (!keys.more) break;
    page.start = std::move(keys.resume_key);
  }
  // The moved keys' lease records go with them; the new shard knows every
  // lease that ended here.
  for (const char* prefix :
       {sm::kLeaseKeyPrefix, sm::kLeaseTombstonePrefix, sm::kLeaseTombstoneOrderPrefix}) {
    TESSERA_ASSIGN_OR_RETURN(auto records, parent.overlay->ScanMeta(prefix));
    for (auto& [key, record] : records) {
      const bool attachment = prefix == sm::kLeaseKeyPrefix;
      if (attachment) {
        if (key.size() < 1 + 8 || !upper.Holds(KeyHash(absl::string_view(key).substr(1 + 8)))) {
          continue;
        }
        parent.overlay->Delete(/*meta=*/true, key);
      }
      if (moved != nullptr) moved->Put(/*meta=*/true, key, std::move(record));
    }
  }
  parent.overlay->Put(/*meta=*/true, sm::kRangeKey, sm::EncodeRange(lower));
  parent.table->range = lower;
  parent.split = true;
  parent.table->range_recorded = true;
  if (moved != nullptr) {
    // The new shard starts at this index with the whole session table, so
    // a write retried there after being applied here is answered, not
    // applied again (its last_used_index values stay below its log).
    moved->Put(/*meta=*/true, sm::kRangeKey, sm::EncodeRange(upper));
    // The new shard continues the parent's revisions; it takes the history
    // of its keys, so a watcher resumes on it from a revision before the
    // split.
    const uint64_t floor =
        parent.table->history_floor != 0 ? parent.table->history_floor : parent.stored_applied + 1;
    moved->Put(/*meta=*/true, sm::kHistoryFloorKey, sm::EncodeU64(floor));
    storage::ScanOptions events;
    events.meta = true;
    events.start = sm::kHistoryPrefix;
    events.end = storage::PrefixEnd(sm::kHistoryPrefix);
    events.limit = 4096;
    while (true) {
      TESSERA_ASSIGN_OR_RETURN(storage::ScanResult records, kv_->Scan(entry.shard, events));
      for (auto& [key, record] : records.items) {
        uint64_t revision = 0;
        uint32_t n = 0;
        if (!sm::ParseHistoryKey(key, &revision, &n)) {
          return absl::DataLossError(absl::StrCat("shard ", entry.shard, ": bad history key"));
        }
        TESSERA_ASSIGN_OR_RETURN(sm::HistoryEvent event,
                                 sm::DecodeHistoryEvent(revision, n, record));
        if (upper.Holds(KeyHash(event.key))) moved->Put(/*meta=*/true, key, std::move(record));
      }
      if (!records.more) break;
      events.start = std::move(records.resume_key);
    }
    std::vector<std::string> parts = sm::EncodeCheckpoint(entry.index, parent.table->sessions,
                                                          options_.session_checkpoint_part_bytes);
    for (uint32_t part = 0; part < parts.size(); ++part) {
      moved->Put(/*meta=*/true, sm::CheckpointKey(part), std::move(parts[part]));
    }
    shards.emplace(child, ShardBatch{.stored_applied = 0,
                                     .last_index = entry.index,
                                     .overlay = std::move(moved),
                                     .table = nullptr});
  }
  return serverpb::CommandResult();
}

absl::StatusOr<HistoryPage> StateMachine::ReadHistory(ShardId shard, uint64_t from_revision,
                                                      uint64_t max_bytes) const {
  HistoryPage page;
  if (options_.history_revisions == 0) {  // none kept: only the future
    TESSERA_ASSIGN_OR_RETURN(page.applied_index, kv_->AppliedIndex(shard));
    page.floor = page.applied_index + 1;
    page.compacted = from_revision < page.floor;
    return page;
  }
  storage::ScanOptions options;
  options.meta = true;
  options.start = sm::HistoryKey(from_revision, 0);
  options.end = storage::PrefixEnd(sm::kHistoryPrefix);
  options.max_bytes = std::max<uint64_t>(max_bytes, 1);
  TESSERA_ASSIGN_OR_RETURN(storage::ScanResult records, kv_->Scan(shard, options));
  // The floor after the scan: if it is still at or below from_revision,
  // the scan's (older) view held every event from there on.
  absl::StatusOr<std::string> floor = kv_->GetMeta(shard, sm::kHistoryFloorKey);
  if (floor.ok()) {
    TESSERA_ASSIGN_OR_RETURN(page.floor, sm::DecodeU64(*floor));
  } else if (absl::IsNotFound(floor.status())) {
    page.floor = records.applied_index + 1;  // no history yet
  } else {
    return floor.status();
  }
  page.applied_index = records.applied_index;
  if (from_revision < page.floor) {
    page.compacted = true;
    return page;
  }
  if (records.more && !records.items.empty()) {
    // Whole revisions only: the last one may go on in the next page.
    uint64_t last = 0;
    uint32_t n = 0;
    sm::ParseHistoryKey(records.items.back().first, &last, &n);
    uint64_t first = 0;
    sm::ParseHistoryKey(records.items.front().first, &first, &n);
    if (first == last) {
      // One revision bigger than the budget: read it whole.
      options.end = sm::HistoryKey(last + 1, 0);
      options.max_bytes = 0;
      TESSERA_ASSIGN_OR_RETURN(storage::ScanResult whole, kv_->Scan(shard, options));
      records.items = std::move(whole.items);
    } else {
      while (true) {
        uint64_t revision = 0;
        sm::ParseHistoryKey(records.items.back().first, &revision, &n);
        if (revision != last) break;
        records.items.pop_back();
      }
    }
    page.more = true;
    page.next_revision = first == last ? last + 1 : last;
  }
  page.events.reserve(records.items.size());
  for (const auto& [key, record] : records.items) {
    uint64_t revision = 0;
    uint32_t n = 0;
    if (!sm::ParseHistoryKey(key, &revision, &n)) {
      return absl::DataLossError(absl::StrCat("shard ", shard, ": bad history key"));
    }
    TESSERA_ASSIGN_OR_RETURN(page.events.emplace_back(),
                             sm::DecodeHistoryEvent(revision, n, record));
  }
  return page;
}

absl::StatusOr<sm::ShardRange> StateMachine::Range(ShardId shard) const {
  absl::StatusOr<std::string> stored = kv_->GetMeta(shard, sm::kRangeKey);
  if (absl::IsNotFound(stored.status())) return sm::ShardRange{};
  if (!stored.ok()) return stored.status();
  return sm::DecodeRange(*stored);
}

const sm::SessionMap* StateMachine::SessionsForTesting(ShardId shard) const {
  auto it = sessions_.find(shard);
  if (it == sessions_.end()) return nullptr;
  absl::StatusOr<uint64_t> applied = kv_->AppliedIndex(shard);
  if (!applied.ok() || *applied != it->second->applied_index) return nullptr;
  return &it->second->sessions;
}

absl::StatusOr<sm::SessionMap> LoadSessionsForTesting(const storage::KvStore& kv, ShardId shard) {
  TESSERA_ASSIGN_OR_RETURN(std::unique_ptr<StateMachine::ShardSessions> table,
                           LoadSessions(kv, shard));
  return std::move(table->sessions);
}

absl::StatusOr<v1::GetResponse> StateMachine::Get(ShardId shard, absl::string_view key) const {
  v1::GetResponse response;
  // Before the data: the answer reflects at least this revision.
  TESSERA_ASSIGN_OR_RETURN(uint64_t applied, kv_->AppliedIndex(shard));
  response.mutable_header()->set_revision(applied);
  absl::StatusOr<std::string> stored = kv_->Get(shard, key);
  // The range after the data: a split moves keys and shrinks the range in
  // one atomic write, so a read that saw the moved key gone sees the new
  // range here.
  TESSERA_ASSIGN_OR_RETURN(sm::ShardRange range, Range(shard));
  if (!range.Holds(KeyHash(key))) return OutsideRangeError(shard, range);
  if (absl::IsNotFound(stored.status())) return response;
  if (!stored.ok()) return stored.status();
  TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(*stored));
  response.set_found(true);
  FillKeyValue(std::string(key), value, response.mutable_kv());
  return response;
}

absl::StatusOr<v1::ScanResponse> StateMachine::Scan(ShardId shard,
                                                    const v1::ScanRequest& request) const {
  storage::ScanOptions options;
  if (!request.prefix().empty()) {
    if (!request.start().empty() || !request.end().empty()) {
      return absl::InvalidArgumentError("scan: prefix cannot be combined with start/end");
    }
    options.start = request.prefix();
    options.end = storage::PrefixEnd(request.prefix());
  } else {
    options.start = request.start();
    options.end = request.end();
    if (!options.end.empty() && options.start > options.end) {
      return absl::InvalidArgumentError("scan: start > end");
    }
  }
  if (!request.continuation().empty()) {
    TESSERA_ASSIGN_OR_RETURN(std::string resume,
                             sm::DecodeContinuation(shard, request.continuation()));
    if (resume < options.start || (!options.end.empty() && resume >= options.end)) {
      return absl::InvalidArgumentError("scan: continuation outside the requested range");
    }
    options.start = std::move(resume);
  }
  const uint32_t limit = request.limit() == 0 ? options_.default_scan_limit : request.limit();
  options.limit = std::min(limit, options_.max_scan_limit);
  options.max_bytes = kScanMaxBytes;

  TESSERA_ASSIGN_OR_RETURN(storage::ScanResult page, kv_->Scan(shard, options));
  // As in Get: the range after the data.
  TESSERA_ASSIGN_OR_RETURN(sm::ShardRange range, Range(shard));
  if (range.version != std::max<uint64_t>(request.header().range_version(), 1)) {
    return absl::OutOfRangeError(absl::StrCat(
        "scan routed by range version ", request.header().range_version(), " of shard ", shard,
        "; it is ", range.version, " since a split: refresh the cluster map"));
  }
  v1::ScanResponse response;
  response.mutable_header()->set_revision(page.applied_index);
  response.mutable_kvs()->Reserve(static_cast<int>(page.items.size()));
  for (const auto& [key, stored] : page.items) {
    TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(stored));
    FillKeyValue(key, value, response.add_kvs());
  }
  if (page.more) response.set_continuation(sm::EncodeContinuation(shard, page.resume_key));
  return response;
}

}  // namespace tessera::server
