// Client::Watch: one KV.Watch stream per node, one watch per shard the keys
// may live on (every shard for a prefix or a range: keys are spread by
// hash), merged into one Watcher.
//
// Each shard's part keeps its resume point (`revision`: every event of the
// part at or below it was returned by Next) and the shard's hash range; a
// resume token is the list of (hash range, revision). When a part's watch
// ends for any reason but a terminal one (its node died, it fell behind,
// the shard moved or split, the node drains), it is created again from
// revision + 1 on a replica of the shard in the current map, after a
// backoff. After a split, each shard of the new map takes the revision of
// the part whose range held its range (a split's shards continue their
// parent's revisions and history).
//
// Threads: a reader thread per stream moves responses into the inbox (at
// most kInboxBytes, then it waits: flow control pushes back to the server,
// which ends a watcher that falls too far behind); the caller's thread (in
// Next) does everything else.
#include "client/watch.h"

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/client.h"
#include "client/core.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/status_macros.h"

namespace tessera::client {
namespace {

// Bytes of responses read ahead of Next (beyond it, the reader waits and
// flow control pushes back to the server).
constexpr size_t kInboxBytes = 1 << 20;
constexpr char kTokenFormat = 0x01;

struct Position {
  uint64_t hash_start = 0;
  uint64_t hash_end = 0;
  uint64_t revision = 0;
};

void AppendU64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}
uint64_t ReadU64(const std::string& in, size_t pos) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[pos + i]);
  return v;
}

std::string EncodeToken(const std::vector<Position>& positions) {
  std::string out(1, kTokenFormat);
  for (const Position& p : positions) {
    AppendU64(&out, p.hash_start);
    AppendU64(&out, p.hash_end);
    AppendU64(&out, p.revision);
  }
  return out;
}

absl::StatusOr<std::vector<Position>> DecodeToken(const std::string& token) {
  if (token.empty() || token[0] != kTokenFormat || (token.size() - 1) % 24 != 0) {
    return absl::InvalidArgumentError("not a watch resume token");
  }
  std::vector<Position> out;
  for (size_t pos = 1; pos < token.size(); pos += 24) {
    out.push_back({ReadU64(token, pos), ReadU64(token, pos + 8), ReadU64(token, pos + 16)});
    if (out.back().hash_end < out.back().hash_start) {
      return absl::InvalidArgumentError("not a watch resume token");
    }
  }
  return out;
}

WatchedValue FromKeyValue(const v1::KeyValue& kv) {
  return WatchedValue{.value = kv.value(),
                      .version = kv.version(),
                      .create_revision = kv.create_revision(),
                      .mod_revision = kv.mod_revision(),
                      .lease = kv.lease()};
}

}  // namespace

class WatchImpl final : public Watcher {
 public:
  WatchImpl(Client::Core* core, std::function<absl::Status()> refresh_map, WatchOptions options)
      : core_(core), refresh_map_(std::move(refresh_map)), options_(std::move(options)) {}

  ~WatchImpl() override {
    {
      absl::MutexLock lock(&mu_);
      closing_ = true;
    }
    for (auto& [node, conn] : conns_) conn->context->TryCancel();
    for (auto& [node, conn] : conns_) conn->reader.join();
  }

  // Registers every part (blocks until each is created or `deadline`).
  absl::Status Start(absl::Time deadline) {
    std::optional<std::vector<Position>> from;
    if (!options_.resume_token.empty()) {
      TESSERA_ASSIGN_OR_RETURN(std::vector<Position> positions, DecodeToken(options_.resume_token));
      from = std::move(positions);
    }
    if (!core_->routes().has_map()) TESSERA_RETURN_IF_ERROR(refresh_map_());
    absl::Status parts = Repartition(from);
    if (!parts.ok()) return parts;
    while (true) {
      bool all_created =
          std::all_of(parts_.begin(), parts_.end(), [](const Part& p) { return p.created; });
      if (all_created) return absl::OkStatus();
      if (!failed_.ok()) return failed_;
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            "the watch was not registered on every shard before the timeout");
      }
      Pump(std::min(deadline, absl::Now() + absl::Milliseconds(100)));
    }
  }

  absl::StatusOr<std::vector<WatchEvent>> Next(absl::Time deadline) override {
    while (true) {
      if (!failed_.ok()) return failed_;
      if (!ready_.empty() || absl::Now() >= deadline) {
        std::vector<WatchEvent> out = std::move(ready_);
        ready_.clear();
        // The token covers what is handed out now.
        for (Part& p : parts_) p.returned = p.revision;
        return out;
      }
      Pump(deadline);
    }
  }

  uint64_t restarts() const override { return restarts_; }

  std::string ResumeToken() const override {
    std::vector<Position> positions;
    for (const Part& p : parts_) positions.push_back({p.hash_start, p.hash_end, p.returned});
    return EncodeToken(positions);
  }

 private:
  struct Part {
    uint32_t shard = 0;
    uint64_t range_version = 0;
    uint64_t hash_start = 0;
    uint64_t hash_end = 0;
    bool started = false;   // `revision` known
    uint64_t revision = 0;  // every event at or below it is in ready_ or returned
    uint64_t returned = 0;  // every event at or below it was returned by Next
    // The current watch of this part.
    bool active = false;
    bool created = false;
    bool created_once = false;  // a watch was sent for it before
    std::string node;
    uint64_t watch_id = 0;
    int failures = 0;
    absl::Time retry_at = absl::InfinitePast();
  };

  struct Conn {
    std::shared_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientReaderWriter<v1::WatchRequest, v1::WatchResponse>> stream;
    std::thread reader;
    // Writes (the caller's thread) and Finish (the reader, once reads
    // end) never overlap.
    absl::Mutex io_mu;
    bool finished ABSL_GUARDED_BY(io_mu) = false;

    bool Write(const v1::WatchRequest& request) {
      absl::MutexLock lock(&io_mu);
      return !finished && stream->Write(request);
    }
  };

  struct Item {
    std::string node;
    std::optional<v1::WatchResponse> response;  // none: the stream ended
    absl::Status ended;
  };

  // Builds the parts for the current map: the key's shard, or every shard;
  // each takes its revision from `from` (a token) or from the old part
  // whose hash range holds its own. Cancels watches of parts that changed.
  absl::Status Repartition(const std::optional<std::vector<Position>>& from) {
    std::optional<v1::ClusterMap> map = core_->routes().map();
    if (!map.has_value()) return absl::UnavailableError("no cluster map");
    const bool exact = !options_.prefix && options_.range_end.empty();
    std::vector<Part> next;
    for (const v1::ShardInfo& info : map->shards()) {
      if (exact && core_->routes().ShardForKey(options_.key) != info.id()) continue;
      Part part;
      part.shard = info.id();
      part.range_version = std::max<uint64_t>(info.range_version(), 1);
      part.hash_start = info.hash_start();
      part.hash_end = info.hash_end();
      auto holds = [&](uint64_t start, uint64_t end) {
        return start <= part.hash_start && part.hash_end <= end;
      };
      if (from.has_value()) {
        for (const Position& p : *from) {
          if (holds(p.hash_start, p.hash_end)) {
            part.started = true;
            part.revision = part.returned = p.revision;
          }
        }
        if (!part.started) {
          return absl::InvalidArgumentError(
              absl::StrCat("the resume token does not cover shard ", part.shard, "'s hash range"));
        }
      } else if (parts_.empty() && exact && options_.start_revision > 0) {
        part.started = true;
        part.revision = part.returned = options_.start_revision - 1;
      }
      for (Part& old : parts_) {
        if (!holds(old.hash_start, old.hash_end)) continue;
        part.started = old.started;
        part.revision = old.revision;
        part.returned = old.returned;
        if (old.shard == part.shard && old.range_version == part.range_version) {
          part.active = old.active;
          part.created = old.created;
          part.node = old.node;
          part.watch_id = old.watch_id;
          part.failures = old.failures;
          part.retry_at = old.retry_at;
          part.created_once = old.created_once;
          old.active = false;  // moved
        }
      }
      next.push_back(std::move(part));
    }
    for (Part& old : parts_) {
      if (old.active) CancelWatch(old);
    }
    parts_ = std::move(next);
    by_id_.clear();
    for (size_t i = 0; i < parts_.size(); ++i) {
      if (parts_[i].active) by_id_[parts_[i].watch_id] = i;
    }
    return absl::OkStatus();
  }

  void CancelWatch(Part& part) {
    auto conn = conns_.find(part.node);
    part.active = false;
    if (conn == conns_.end()) return;
    v1::WatchRequest request;
    request.mutable_cancel()->set_watch_id(part.watch_id);
    conn->second->Write(request);
  }

  Conn* GetConn(const std::string& node) {
    auto it = conns_.find(node);
    if (it != conns_.end()) return it->second.get();
    auto conn = std::make_unique<Conn>();
    conn->context = core_->NewContext(absl::InfiniteFuture());
    conn->stream = core_->GetNode(node)->kv.Next()->Watch(conn->context.get());
    Conn* raw = conn.get();
    conn->reader = std::thread([this, raw, node] { ReadLoop(raw, node); });
    conns_[node] = std::move(conn);
    return raw;
  }

  void ReadLoop(Conn* conn, std::string node) {
    v1::WatchResponse response;
    while (conn->stream->Read(&response)) {
      absl::MutexLock lock(&mu_);
      auto room = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return closing_ || inbox_bytes_ < kInboxBytes;
      };
      mu_.Await(absl::Condition(&room));
      if (closing_) break;
      inbox_bytes_ += response.ByteSizeLong();
      inbox_.push_back(Item{node, std::move(response), absl::OkStatus()});
    }
    conn->context->TryCancel();
    absl::Status ended;
    {
      absl::MutexLock lock(&conn->io_mu);
      conn->finished = true;
      ended = FromGrpcStatus(conn->stream->Finish());
    }
    absl::MutexLock lock(&mu_);
    inbox_.push_back(Item{node, std::nullopt, ended});
  }

  // Subscribes parts whose retry time came; waits for one inbox item (or
  // `deadline`) and handles what is there.
  void Pump(absl::Time deadline) {
    if (repartition_) {
      repartition_ = false;
      absl::Status refreshed = refresh_map_();
      (void)refreshed;  // on failure the old map is used; retried on the next failure
      if (absl::Status s = Repartition(std::nullopt); !s.ok()) failed_ = s;
    }
    absl::Time wake = deadline;
    for (Part& part : parts_) {
      if (part.active) continue;
      if (absl::Now() >= part.retry_at) {
        Subscribe(part);
      }
      if (!part.active) wake = std::min(wake, part.retry_at);
    }
    std::deque<Item> items;
    {
      absl::MutexLock lock(&mu_);
      auto any = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !inbox_.empty(); };
      mu_.AwaitWithDeadline(absl::Condition(&any), wake);
      items.swap(inbox_);
      inbox_bytes_ = 0;
    }
    for (Item& item : items) Handle(item);
  }

  void Subscribe(Part& part) {
    std::optional<ShardRoute> route = core_->routes().Route(part.shard);
    if (!route.has_value() || route->replicas.empty() ||
        std::max<uint64_t>(route->range_version, 1) != part.range_version) {
      repartition_ = true;
      Retry(part);
      return;
    }
    // The leader first (the most up to date); after failures, the others.
    std::string node = route->leader.value_or(route->replicas[0]);
    if (part.failures > 0) node = route->replicas[part.failures % route->replicas.size()];
    Conn* conn = GetConn(node);
    v1::WatchRequest request;
    v1::WatchCreate* create = request.mutable_create();
    create->set_watch_id(next_id_++);
    create->mutable_header()->set_shard(part.shard);
    create->mutable_header()->set_epoch(route->epoch);
    create->mutable_header()->set_range_version(part.range_version);
    create->set_key(options_.key);
    create->set_prefix(options_.prefix);
    create->set_range_end(options_.range_end);
    create->set_start_revision(part.started ? part.revision + 1 : 0);
    if (part.created_once) ++restarts_;
    part.created_once = true;
    create->set_prev_kv(options_.prev_kv);
    create->set_progress_notify(true);
    if (!conn->Write(request)) {
      Retry(part);  // the reader reports the end
      return;
    }
    part.active = true;
    part.created = false;
    part.node = node;
    part.watch_id = create->watch_id();
    by_id_[part.watch_id] = static_cast<size_t>(&part - parts_.data());
  }

  void Retry(Part& part) {
    part.active = false;
    part.retry_at = absl::Now() + core_->Backoff(part.failures);
    ++part.failures;
  }

  void Handle(Item& item) {
    if (!item.response.has_value()) {
      // The stream ended: its parts watch again (elsewhere after a failure).
      auto conn = conns_.find(item.node);
      if (conn != conns_.end()) {
        conn->second->reader.join();
        conns_.erase(conn);
      }
      for (Part& part : parts_) {
        if (part.active && part.node == item.node) {
          by_id_.erase(part.watch_id);
          Retry(part);
        }
      }
      return;
    }
    const v1::WatchResponse& r = *item.response;
    auto id = by_id_.find(r.watch_id());
    if (id == by_id_.end()) return;  // a watch given up on
    Part& part = parts_[id->second];
    if (part.node != item.node) return;
    if (r.created()) {
      part.created = true;
      if (!part.started) {
        part.started = true;
        part.revision = part.returned = r.revision();
      }
    }
    for (const v1::Event& e : r.events()) {
      // Never again what was handed out (the server sends none twice; a
      // resumed watch starts after it).
      if (e.kv().mod_revision() <= part.revision) continue;
      WatchEvent& out = ready_.emplace_back();
      out.type = e.type() == v1::Event::DELETE ? WatchEvent::Type::kDelete : WatchEvent::Type::kPut;
      out.key = e.kv().key();
      out.kv = FromKeyValue(e.kv());
      if (e.has_prev_kv()) out.prev = FromKeyValue(e.prev_kv());
      out.shard = part.shard;
      out.revision = e.kv().mod_revision();
    }
    if (!r.events().empty() || !r.created()) {
      part.revision = std::max(part.revision, r.revision());
      if (!r.canceled()) part.failures = 0;
    }
    if (!r.canceled()) return;
    by_id_.erase(id);
    part.active = false;
    absl::Status status = FromRpcStatus(r.error());
    switch (status.code()) {
      case absl::StatusCode::kOk:
        return;  // ours
      case absl::StatusCode::kOutOfRange:
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kUnauthenticated:
        failed_ = status;
        return;
      default:
        break;
    }
    if (std::optional<v1::ErrorDetail> detail = GetErrorDetail(status);
        detail.has_value() && detail->has_stale_route()) {
      (void)core_->UpdateMap(detail->stale_route().current());
      repartition_ = true;
      part.retry_at = absl::Now();
      return;
    }
    // The shard may have split or moved: the map is fetched again too.
    if (status.code() == absl::StatusCode::kFailedPrecondition ||
        status.code() == absl::StatusCode::kUnavailable) {
      repartition_ = true;
    }
    Retry(part);
  }

  Client::Core* const core_;
  const std::function<absl::Status()> refresh_map_;
  const WatchOptions options_;

  std::vector<Part> parts_;
  std::map<uint64_t, size_t> by_id_;  // active watch id -> part
  std::map<std::string, std::unique_ptr<Conn>> conns_;
  std::vector<WatchEvent> ready_;
  uint64_t next_id_ = 1;
  uint64_t restarts_ = 0;
  bool repartition_ = false;
  absl::Status failed_;

  absl::Mutex mu_;
  std::deque<Item> inbox_ ABSL_GUARDED_BY(mu_);
  size_t inbox_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
};

absl::StatusOr<std::unique_ptr<Watcher>> StartWatch(Client::Core* core,
                                                    std::function<absl::Status()> refresh_map,
                                                    const WatchOptions& options) {
  if (!options.prefix && options.range_end.empty() && options.key.empty()) {
    return absl::InvalidArgumentError("watch: empty key (watch a prefix or a range instead)");
  }
  if (options.prefix && !options.range_end.empty()) {
    return absl::InvalidArgumentError("watch: prefix cannot be combined with range_end");
  }
  auto watch = std::make_unique<WatchImpl>(core, std::move(refresh_map), options);
  TESSERA_RETURN_IF_ERROR(watch->Start(absl::Now() + options.timeout));
  return std::unique_ptr<Watcher>(std::move(watch));
}

}  // namespace tessera::client
