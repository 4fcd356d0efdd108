// StateMachine implementation. The on-disk encodings live in sm_format.h.
//
// Apply, step by step (one call = one ready cycle of the Node):
//  1. For each entry, in order: look up the shard's applied index (once per
//     shard and batch); skip entries at or below it or at or below an index
//     already seen in this batch (empty result); decode the Command (empty
//     data: advance only; undecodable: kInvalidArgument result); run it.
//  2. A command runs against a per-command Overlay stacked on the shard's
//     batch Overlay, itself over the KvStore, so it sees the earlier commands
//     of the batch. Only a command that succeeds merges its overlay into the
//     shard's; a failed command changes nothing (its session bookkeeping is
//     written straight to the shard overlay).
//  3. One KvStore::Apply with one ShardWrite per shard that advanced, in shard
//     order, carrying the final state of every key the batch touched (in key
//     order, from std::map) and the shard's last entry index.
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
//    rather than re-applied); the session moves to the tail of the shard's
//    LRU list (a doubly linked list kept in meta records, so no meta scan is
//    ever needed); while more than max_sessions_per_shard sessions exist the
//    head (least recently used) is evicted with all its results.
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

  void Put(bool meta, const std::string& key, std::string value) {
    (meta ? meta_ : data_)[key] = std::move(value);
  }
  void Delete(bool meta, const std::string& key) { (meta ? meta_ : data_)[key] = std::nullopt; }

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
  options.max_scan_limit = std::max<uint32_t>(options.max_scan_limit, 1);
  options.default_scan_limit =
      std::clamp<uint32_t>(options.default_scan_limit, 1, options.max_scan_limit);
  return options;
}

// ---- Validation (before anything executes, so bad input changes nothing) ----

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
    case serverpb::Command::OP_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("command without an operation");
}

// ---- Execution (errors returned here are storage errors: the batch aborts) ----

// The key's version and value, nullopt if absent. kDataLoss if corrupt.
absl::StatusOr<std::optional<sm::VersionedValue>> ReadKey(const Overlay& view,
                                                          const std::string& key) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored, view.Get(/*meta=*/false, key));
  if (!stored.has_value()) return std::optional<sm::VersionedValue>();
  TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(*stored));
  return std::optional<sm::VersionedValue>(std::move(value));
}

void FillKeyValue(const std::string& key, const sm::VersionedValue& value, v1::KeyValue* kv) {
  kv->set_key(key);
  kv->set_value(value.value);
  kv->set_version(value.version);
}

absl::StatusOr<v1::PutResponse> DoPut(Overlay& view, const v1::PutRequest& put) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::VersionedValue> previous, ReadKey(view, put.key()));
  const uint64_t version = previous.has_value() ? previous->version + 1 : 1;
  view.Put(/*meta=*/false, put.key(), sm::EncodeValue(version, put.value()));
  v1::PutResponse response;
  response.set_version(version);
  response.set_had_previous(previous.has_value());
  if (previous.has_value() && put.return_previous()) {
    FillKeyValue(put.key(), *previous, response.mutable_previous());
  }
  return response;
}

absl::StatusOr<v1::DeleteResponse> DoDelete(Overlay& view, const v1::DeleteRequest& del) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::VersionedValue> previous, ReadKey(view, del.key()));
  v1::DeleteResponse response;
  if (previous.has_value()) {
    view.Delete(/*meta=*/false, del.key());
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
    default:
      return false;  // rejected by CheckCompare
  }
}

absl::StatusOr<v1::TxnResponse> DoTxn(Overlay& view, const v1::TxnRequest& txn) {
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
        TESSERA_ASSIGN_OR_RETURN(*result->mutable_put(), DoPut(view, op.put()));
        break;
      }
      case v1::TxnOp::kDelete: {
        TESSERA_ASSIGN_OR_RETURN(*result->mutable_delete_(), DoDelete(view, op.delete_()));
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
absl::StatusOr<serverpb::CommandResult> Execute(Overlay& view, const serverpb::Command& command) {
  absl::Status valid = CheckCommand(command);
  if (!valid.ok()) return ErrorResult(valid);
  serverpb::CommandResult result;
  switch (command.op_case()) {
    case serverpb::Command::kPut: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_put(), DoPut(view, command.put()));
      break;
    }
    case serverpb::Command::kDelete: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_delete_(), DoDelete(view, command.delete_()));
      break;
    }
    case serverpb::Command::kTxn: {
      TESSERA_ASSIGN_OR_RETURN(*result.mutable_txn(), DoTxn(view, command.txn()));
      break;
    }
    case serverpb::Command::OP_NOT_SET:
      break;  // rejected by CheckCommand
  }
  return result;
}

// ---- Sessions (meta records, see sm_format.h and the comment at the top) ----

absl::StatusOr<std::optional<sm::SessionRecord>> LoadSession(const Overlay& shard,
                                                             uint64_t client_id) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                           shard.Get(/*meta=*/true, sm::SessionKey(client_id)));
  if (!stored.has_value()) return std::optional<sm::SessionRecord>();
  TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord record, sm::DecodeSessionRecord(*stored));
  return std::optional<sm::SessionRecord>(std::move(record));
}

// A session the LRU list points at must exist.
absl::StatusOr<sm::SessionRecord> LoadLinkedSession(const Overlay& shard, uint64_t client_id) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::SessionRecord> record, LoadSession(shard, client_id));
  if (!record.has_value()) {
    return absl::DataLossError(
        absl::StrCat("session list links to missing session of client ", client_id));
  }
  return *std::move(record);
}

void StoreSession(Overlay& shard, uint64_t client_id, const sm::SessionRecord& record) {
  shard.Put(/*meta=*/true, sm::SessionKey(client_id), sm::EncodeSessionRecord(record));
}

absl::StatusOr<sm::SessionList> LoadSessionList(const Overlay& shard) {
  TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                           shard.Get(/*meta=*/true, sm::SessionListKey()));
  if (!stored.has_value()) return sm::SessionList{};
  return sm::DecodeSessionList(*stored);
}

void StoreSessionList(Overlay& shard, const sm::SessionList& list) {
  shard.Put(/*meta=*/true, sm::SessionListKey(), sm::EncodeSessionList(list));
}

// Moves `client_id` (whose up-to-date record is `*record`, not yet stored) to
// the tail (most recently used end) of the LRU list, inserting it if
// `is_new`, and stores it.
absl::Status MoveToTail(Overlay& shard, uint64_t client_id, sm::SessionRecord* record,
                        bool is_new) {
  if (!is_new && record->next == 0) {
    // Already the tail (the only linked record without a next): the common
    // case of a client writing repeatedly, decided without the list.
    StoreSession(shard, client_id, *record);
    return absl::OkStatus();
  }
  TESSERA_ASSIGN_OR_RETURN(sm::SessionList list, LoadSessionList(shard));
  if (is_new) {
    ++list.count;
  } else {
    // Unlink; not the tail, so it has a next.
    if (record->prev != 0) {
      TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord prev, LoadLinkedSession(shard, record->prev));
      prev.next = record->next;
      StoreSession(shard, record->prev, prev);
    } else {
      list.head = record->next;
    }
    TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord next, LoadLinkedSession(shard, record->next));
    next.prev = record->prev;
    StoreSession(shard, record->next, next);
  }
  record->prev = list.tail;
  record->next = 0;
  if (list.tail != 0) {
    TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord tail, LoadLinkedSession(shard, list.tail));
    tail.next = client_id;
    StoreSession(shard, list.tail, tail);
  } else {
    list.head = client_id;
  }
  list.tail = client_id;
  StoreSession(shard, client_id, *record);
  StoreSessionList(shard, list);
  return absl::OkStatus();
}

// Evicts least recently used sessions, with their results, down to the bound.
absl::Status EvictOverflow(Overlay& shard, size_t max_sessions) {
  TESSERA_ASSIGN_OR_RETURN(sm::SessionList list, LoadSessionList(shard));
  if (list.count <= max_sessions) return absl::OkStatus();
  while (list.count > max_sessions && list.head != 0) {
    const uint64_t victim = list.head;
    TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord record, LoadLinkedSession(shard, victim));
    for (uint64_t seq : record.seqs) shard.Delete(/*meta=*/true, sm::ResultKey(victim, seq));
    shard.Delete(/*meta=*/true, sm::SessionKey(victim));
    list.head = record.next;
    if (record.next != 0) {
      TESSERA_ASSIGN_OR_RETURN(sm::SessionRecord next, LoadLinkedSession(shard, record.next));
      next.prev = 0;
      StoreSession(shard, record.next, next);
    } else {
      list.tail = 0;
    }
    --list.count;
  }
  StoreSessionList(shard, list);
  return absl::OkStatus();
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
    default:
      break;
  }
  const uint64_t hash = XXH3_64bits(bytes.data(), bytes.size());
  return hash != 0 ? hash : 1;  // 0 means "no fingerprint"
}

namespace {

// Runs one decoded command at log index `index` with session handling.
absl::StatusOr<serverpb::CommandResult> ApplyCommand(Overlay& shard, uint64_t index,
                                                     const serverpb::Command& command,
                                                     const StateMachineOptions& options) {
  const v1::Session& session = command.session();
  const uint64_t client_id = session.client_id();
  if (client_id == 0) {
    Overlay view(&shard);
    TESSERA_ASSIGN_OR_RETURN(serverpb::CommandResult result, Execute(view, command));
    if (result.code() == 0) view.CommitToParent();
    return result;
  }

  const uint64_t seq = session.seq();
  if (seq == 0) return ErrorResult(absl::InvalidArgumentError("session seq must be >= 1"));
  TESSERA_ASSIGN_OR_RETURN(std::optional<sm::SessionRecord> record, LoadSession(shard, client_id));
  if (record.has_value()) {
    if (std::binary_search(record->seqs.begin(), record->seqs.end(), seq)) {
      // A retry of an applied write: the original answer, nothing changes.
      TESSERA_ASSIGN_OR_RETURN(std::optional<std::string> stored,
                               shard.Get(/*meta=*/true, sm::ResultKey(client_id, seq)));
      serverpb::CommandResult remembered;
      if (!stored.has_value() || !remembered.ParseFromString(*stored)) {
        return absl::DataLossError(
            absl::StrCat("missing or corrupt result of client ", client_id, " seq ", seq));
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
    if (seq < record->first_incomplete_seq || seq < session.first_incomplete_seq()) {
      return ErrorResult(absl::FailedPreconditionError(kStaleSessionMessage));
    }
  } else if (session.first_incomplete_seq() > 1) {
    // The client completed earlier writes on this shard: its session was
    // evicted, and this may be a retry of a write whose result is gone.
    return ErrorResult(absl::FailedPreconditionError(kStaleSessionMessage));
  }

  Overlay view(&shard);
  TESSERA_ASSIGN_OR_RETURN(serverpb::CommandResult result, Execute(view, command));
  if (result.code() == 0) view.CommitToParent();

  // Remember the result and update the session.
  const bool is_new = !record.has_value();
  sm::SessionRecord updated = is_new ? sm::SessionRecord{} : *std::move(record);
  updated.first_incomplete_seq =
      std::max(updated.first_incomplete_seq, session.first_incomplete_seq());
  updated.last_used_index = index;
  auto& seqs = updated.seqs;
  seqs.insert(std::upper_bound(seqs.begin(), seqs.end(), seq), seq);
  std::string serialized;
  {
    serverpb::CommandResult remembered = result;
    remembered.set_request_fingerprint(RequestFingerprint(command));
    remembered.SerializeToString(&serialized);
  }
  shard.Put(/*meta=*/true, sm::ResultKey(client_id, seq), std::move(serialized));
  size_t drop = 0;
  while (drop < seqs.size() && (seqs[drop] < updated.first_incomplete_seq ||
                                seqs.size() - drop > options.max_results_per_session)) {
    // Results beyond the bound: later retries of these seqs are rejected.
    updated.first_incomplete_seq = std::max(updated.first_incomplete_seq, seqs[drop] + 1);
    shard.Delete(/*meta=*/true, sm::ResultKey(client_id, seqs[drop]));
    ++drop;
  }
  seqs.erase(seqs.begin(), seqs.begin() + static_cast<std::ptrdiff_t>(drop));
  TESSERA_RETURN_IF_ERROR(MoveToTail(shard, client_id, &updated, is_new));
  // Only a new session can take the count over the bound.
  if (is_new) TESSERA_RETURN_IF_ERROR(EvictOverflow(shard, options.max_sessions_per_shard));
  return result;
}

}  // namespace

StateMachine::StateMachine(storage::KvStore* kv, const StateMachineOptions& options)
    : kv_(kv), options_(Sanitized(options)) {}

absl::Status StateMachine::Apply(absl::Span<const CommittedEntry> entries,
                                 std::vector<serverpb::CommandResult>* results) {
  results->clear();
  results->resize(entries.size());

  struct ShardBatch {
    uint64_t stored_applied = 0;  // applied index in the KvStore
    uint64_t last_index = 0;      // highest index applied in this batch
    std::unique_ptr<Overlay> overlay;
  };
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
      if (entry.data.empty()) continue;  // advances the applied index only
      serverpb::Command command;
      if (!command.ParseFromString(entry.data)) {
        (*results)[i] = ErrorResult(
            absl::InvalidArgumentError(absl::StrCat("undecodable command at index ", entry.index)));
        continue;
      }
      TESSERA_ASSIGN_OR_RETURN((*results)[i],
                               ApplyCommand(*batch.overlay, entry.index, command, options_));
    }

    std::vector<ShardWrite> writes;
    for (const auto& [shard, batch] : shards) {
      if (batch.last_index == batch.stored_applied) continue;
      writes.push_back(ShardWrite{.shard = shard,
                                  .applied_index = batch.last_index,
                                  .mutations = batch.overlay->Mutations()});
    }
    if (writes.empty()) return absl::OkStatus();
    return kv_->Apply(writes);
  }();
  if (!status.ok()) results->clear();
  return status;
}

absl::StatusOr<v1::GetResponse> StateMachine::Get(ShardId shard, absl::string_view key) const {
  v1::GetResponse response;
  absl::StatusOr<std::string> stored = kv_->Get(shard, key);
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
  v1::ScanResponse response;
  response.mutable_kvs()->Reserve(static_cast<int>(page.items.size()));
  for (const auto& [key, stored] : page.items) {
    TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(stored));
    FillKeyValue(key, value, response.add_kvs());
  }
  if (page.more) response.set_continuation(sm::EncodeContinuation(shard, page.resume_key));
  return response;
}

}  // namespace tessera::server
