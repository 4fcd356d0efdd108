#include "server/api/watch_hub.h"

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proto/grpc_status.h"
#include "proto/key_hash.h"
#include "proto/status_macros.h"
#include "storage/kv_store.h"

namespace tessera::server {

// A position in a shard's event order.
struct Position {
  uint64_t revision = 0;
  uint32_t n = 0;
  bool operator<(const Position& o) const {
    return std::tie(revision, n) < std::tie(o.revision, o.n);
  }
};

struct WatchHub::Watcher {
  WatchStreamSink* sink = nullptr;
  uint64_t id = 0;
  ShardId shard = 0;
  uint64_t range_version = 0;
  sm::ShardRange hashes;  // the shard's range at creation (history filter)
  // Keys: exactly `start` if exact; else [start, end), end empty = no end.
  bool exact = true;
  std::string start;
  std::string end;
  bool prev_kv = false;
  bool progress_notify = false;

  Position next;      // the first event position it still needs
  bool live = false;  // takes live events (else catching up from history)
  bool catch_up_scheduled = false;
  bool registered = false;  // in the shard's index
  bool ended = false;

  std::deque<EventPtr> queue;
  uint64_t queued_bytes = 0;
  std::optional<v1::WatchResponse> created;  // first to send
  std::optional<v1::WatchResponse> last;     // the ending response, sent last
  std::optional<uint64_t> progress;          // a progress response due
  uint64_t sent_revision = 0;                // the resume point handed out
  bool sent_since_tick = false;
  bool in_ready = false;

  bool Holds(const std::string& key) const {
    if (exact) return key == start;
    return key >= start && (end.empty() || key < end);
  }
};

struct WatchHub::Stream {
  std::shared_ptr<WatchStreamSink> handle;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Watcher>> watchers;
  std::deque<std::shared_ptr<Watcher>> ready;  // watchers with something to send
};

struct WatchHub::ShardWatchers {
  uint64_t applied = 0;  // from the last OnApplied
  absl::flat_hash_map<std::string, std::vector<std::shared_ptr<Watcher>>> exact;
  std::vector<std::shared_ptr<Watcher>> ranges;
  bool empty() const { return exact.empty() && ranges.empty(); }
};

namespace {

uint64_t EventBytes(const sm::HistoryEvent& e) {
  return 32 + e.key.size() + e.stored.size() + e.prev_stored.size();
}

absl::Status ToEvent(const sm::HistoryEvent& e, bool prev_kv, v1::Event* out) {
  out->set_type(e.deleted ? v1::Event::DELETE : v1::Event::PUT);
  v1::KeyValue* kv = out->mutable_kv();
  if (e.deleted) {
    kv->set_key(e.key);
    kv->set_mod_revision(e.revision);
  } else {
    TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(e.stored));
    kv->set_key(e.key);
    kv->set_value(std::move(value.value));
    kv->set_version(value.version);
    kv->set_create_revision(value.create_revision);
    kv->set_mod_revision(value.mod_revision);
    kv->set_lease(value.lease);
  }
  if (prev_kv && !e.prev_stored.empty()) {
    TESSERA_ASSIGN_OR_RETURN(sm::VersionedValue value, sm::DecodeValue(e.prev_stored));
    v1::KeyValue* prev = out->mutable_prev_kv();
    prev->set_key(e.key);
    prev->set_value(std::move(value.value));
    prev->set_version(value.version);
    prev->set_create_revision(value.create_revision);
    prev->set_mod_revision(value.mod_revision);
    prev->set_lease(value.lease);
  }
  return absl::OkStatus();
}

}  // namespace

WatchHub::WatchHub(const WatchHubOptions& options, const WatchSource* source)
    : options_(options), source_(source) {
  catch_up_thread_ = std::thread([this] { CatchUpLoop(); });
  tick_thread_ = std::thread([this] { TickLoop(); });
}

WatchHub::~WatchHub() { Stop(); }

void WatchHub::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (catch_up_thread_.joinable()) catch_up_thread_.join();
  if (tick_thread_.joinable()) tick_thread_.join();
}

void WatchHub::WakeAll(WakeList wake) {
  std::sort(wake.begin(), wake.end());
  wake.erase(std::unique(wake.begin(), wake.end()), wake.end());
  for (const auto& sink : wake) sink->Wake();
}

void WatchHub::Create(const std::shared_ptr<WatchStreamSink>& handle, const v1::WatchCreate& create,
                      ShardId shard, uint64_t range_version, const absl::Status& refused) {
  WatchStreamSink* const sink = handle.get();
  absl::StatusOr<sm::ShardRange> hashes = source_->Range(shard);
  const std::optional<uint64_t> applied = source_->AppliedIndex(shard);
  WakeList wake;
  {
    absl::MutexLock lock(&mu_);
    auto& stream = streams_[sink];
    if (stream == nullptr) {
      stream = std::make_unique<Stream>();
      stream->handle = handle;
    }
    auto w = std::make_shared<Watcher>();
    w->sink = sink;
    w->id = create.watch_id();
    w->shard = shard;
    w->range_version = range_version;
    w->prev_kv = create.prev_kv();
    w->progress_notify = create.progress_notify();
    w->start = create.key();
    if (create.prefix()) {
      w->exact = false;
      w->end = storage::PrefixEnd(create.key());
    } else if (!create.range_end().empty()) {
      w->exact = false;
      w->end = create.range_end() == std::string(1, '\0') ? "" : create.range_end();
    }
    auto refuse = [&](const absl::Status& status) {
      w->last.emplace();
      w->last->set_watch_id(w->id);
      w->last->set_shard(static_cast<uint32_t>(shard));
      w->last->set_canceled(true);
      *w->last->mutable_error() = ToRpcStatus(status);
      w->ended = true;
      if (!stream->watchers.contains(w->id)) stream->watchers[w->id] = w;
      w->in_ready = true;
      stream->ready.push_back(w);
      wake.push_back(stream->handle);
    };
    if (stream->watchers.contains(w->id)) {
      // Refused without touching the live watch of that id.
      w->last.emplace();
      w->last->set_watch_id(w->id);
      w->last->set_shard(static_cast<uint32_t>(shard));
      w->last->set_canceled(true);
      *w->last->mutable_error() = ToRpcStatus(absl::InvalidArgumentError(
          absl::StrCat("watch id ", w->id, " is already in use on this stream")));
      w->ended = true;
      w->in_ready = true;
      stream->ready.push_back(w);
      wake.push_back(stream->handle);
    } else if (!refused.ok()) {
      refuse(refused);
    } else if (!hashes.ok() || !applied.has_value()) {
      refuse(!hashes.ok() ? hashes.status()
                          : absl::UnavailableError(absl::StrCat(
                                "shard ", shard, " has no replica on this node any more")));
    } else if (hashes->version != std::max<uint64_t>(range_version, 1)) {
      // The replica applied a split the map does not show yet, or the map
      // shows one the replica has not applied: events would not match
      // the watcher's idea of the shard.
      refuse(absl::UnavailableError(
          absl::StrCat("shard ", shard, " is at range version ", hashes->version,
                       " on this replica, ", std::max<uint64_t>(range_version, 1),
                       " in the cluster map (a split is under way); retry shortly")));
    } else if (watchers_ >= options_.max_watchers) {
      refuse(absl::ResourceExhaustedError(
          absl::StrCat("this node has ", watchers_, " watchers, its limit; watch elsewhere")));
    } else {
      w->hashes = *hashes;
      auto& sw = shards_[shard];
      if (sw == nullptr) sw = std::make_unique<ShardWatchers>();
      const uint64_t now = std::max(sw->applied, *applied);
      w->next = Position{create.start_revision() == 0 ? now + 1 : create.start_revision(), 0};
      w->created.emplace();
      w->created->set_watch_id(w->id);
      w->created->set_shard(static_cast<uint32_t>(shard));
      w->created->set_created(true);
      w->created->set_revision(w->next.revision - 1);
      w->sent_revision = w->next.revision - 1;
      if (w->exact) {
        sw->exact[w->start].push_back(w);
      } else {
        sw->ranges.push_back(w);
      }
      w->registered = true;
      ++watchers_;
      stream->watchers[w->id] = w;
      w->in_ready = true;
      stream->ready.push_back(w);
      wake.push_back(stream->handle);
      // Events already applied come from the history first; a watcher from
      // now has none to read, but goes the same way (it turns live once
      // the history shows nothing newer than the hub has seen).
      ScheduleCatchUp(*w);
    }
  }
  WakeAll(std::move(wake));
}

void WatchHub::Cancel(WatchStreamSink* sink, uint64_t watch_id) {
  WakeList wake;
  {
    absl::MutexLock lock(&mu_);
    auto s = streams_.find(sink);
    if (s == streams_.end()) return;
    auto it = s->second->watchers.find(watch_id);
    if (it == s->second->watchers.end() || it->second->ended) return;
    End(*it->second, absl::OkStatus(), 0, &wake);
  }
  WakeAll(std::move(wake));
}

void WatchHub::RemoveStream(WatchStreamSink* sink) {
  absl::MutexLock lock(&mu_);
  auto s = streams_.find(sink);
  if (s == streams_.end()) return;
  for (auto& [id, w] : s->second->watchers) {
    Unregister(*w);
    DropQueue(*w);
    w->ended = true;
  }
  streams_.erase(s);
}

void WatchHub::Unregister(Watcher& w) {
  if (!w.registered) return;
  w.registered = false;
  --watchers_;
  auto sw = shards_.find(w.shard);
  if (sw == shards_.end()) return;
  auto same = [&w](const std::shared_ptr<Watcher>& p) { return p.get() == &w; };
  if (w.exact) {
    auto it = sw->second->exact.find(w.start);
    if (it != sw->second->exact.end()) {
      std::erase_if(it->second, same);
      if (it->second.empty()) sw->second->exact.erase(it);
    }
  } else {
    std::erase_if(sw->second->ranges, same);
  }
}

void WatchHub::DropQueue(Watcher& w) {
  queued_bytes_ -= w.queued_bytes;
  w.queued_bytes = 0;
  w.queue.clear();
  w.progress.reset();
}

void WatchHub::End(Watcher& w, const absl::Status& status, uint64_t compact_revision,
                   WakeList* wake) {
  Unregister(w);
  DropQueue(w);
  w.ended = true;
  w.last.emplace();
  w.last->set_watch_id(w.id);
  w.last->set_shard(static_cast<uint32_t>(w.shard));
  w.last->set_canceled(true);
  if (!status.ok()) *w.last->mutable_error() = ToRpcStatus(status);
  w.last->set_compact_revision(compact_revision);
  auto s = streams_.find(w.sink);
  if (s == streams_.end()) return;
  if (!w.in_ready) {
    w.in_ready = true;
    s->second->ready.push_back(s->second->watchers.at(w.id));
  }
  wake->push_back(s->second->handle);
}

void WatchHub::Offer(Watcher& w, const EventPtr& event, bool paced, WakeList* wake) {
  const Position at{event->revision, event->n};
  if (w.ended || at < w.next) return;
  w.next = Position{at.revision, at.n + 1};
  const uint64_t bytes = EventBytes(*event);
  const bool alone = w.queue.empty();
  w.queue.push_back(event);
  w.queued_bytes += bytes;
  queued_bytes_ += bytes;
  // A catch-up paces itself (CatchUpOnce); a single event always fits.
  if (!paced && !alone &&
      (w.queued_bytes > options_.max_watcher_bytes || queued_bytes_ > options_.max_node_bytes)) {
    ++slow_cancelled_;
    End(w,
        absl::ResourceExhaustedError(absl::StrCat(
            "the watcher fell behind: ", w.queued_bytes, " bytes of events queued for it (",
            queued_bytes_, " on the node); resume from its last revision + 1")),
        0, wake);
    return;
  }
  if (!w.in_ready) {
    auto s = streams_.find(w.sink);
    if (s == streams_.end()) return;
    w.in_ready = true;
    s->second->ready.push_back(s->second->watchers.at(w.id));
    wake->push_back(s->second->handle);
  }
}

void WatchHub::OnApplied(ShardId shard, uint64_t applied_index, bool reset, bool split,
                         std::vector<sm::HistoryEvent> events) {
  WakeList wake;
  {
    absl::MutexLock lock(&mu_);
    auto& sw = shards_[shard];
    if (sw == nullptr) sw = std::make_unique<ShardWatchers>();
    sw->applied = applied_index;
    if (sw->empty()) return;
    if (split) {
      // A split is applied alone, without events: every event before it
      // is queued, and none after it concerns the keys that left.
      std::vector<std::shared_ptr<Watcher>> all = sw->ranges;
      for (auto& [key, ws] : sw->exact) all.insert(all.end(), ws.begin(), ws.end());
      for (auto& w : all) {
        End(*w,
            absl::FailedPreconditionError(absl::StrCat(
                "shard ", shard, " split at revision ", applied_index,
                "; watch its halves by the new cluster map, from the last revision + 1")),
            0, &wake);
      }
    } else if (reset) {
      // Events between the last call and this one were never reported.
      std::vector<std::shared_ptr<Watcher>> all = sw->ranges;
      for (auto& [key, ws] : sw->exact) all.insert(all.end(), ws.begin(), ws.end());
      for (auto& w : all) {
        if (w->live) {
          w->live = false;
          ScheduleCatchUp(*w);
        }
      }
      return;
    }
    for (sm::HistoryEvent& e : events) {
      auto exact = sw->exact.find(e.key);
      if (exact == sw->exact.end() && sw->ranges.empty()) continue;
      auto event = std::make_shared<const sm::HistoryEvent>(std::move(e));
      if (exact != sw->exact.end()) {
        // Offer may end a watcher, which edits this list: offer to a copy.
        std::vector<std::shared_ptr<Watcher>> ws = exact->second;
        for (auto& w : ws) {
          if (w->live) Offer(*w, event, /*paced=*/false, &wake);
        }
      }
      std::vector<std::shared_ptr<Watcher>> ranges = sw->ranges;
      for (auto& w : ranges) {
        if (w->live && w->Holds(event->key)) Offer(*w, event, /*paced=*/false, &wake);
      }
    }
  }
  WakeAll(std::move(wake));
}

std::optional<v1::WatchResponse> WatchHub::Take(WatchStreamSink* sink, uint64_t max_bytes) {
  std::shared_ptr<Watcher> catch_up;
  std::optional<v1::WatchResponse> out;
  {
    absl::MutexLock lock(&mu_);
    auto s = streams_.find(sink);
    if (s == streams_.end()) return std::nullopt;
    Stream& stream = *s->second;
    while (!out.has_value() && !stream.ready.empty()) {
      std::shared_ptr<Watcher> w = std::move(stream.ready.front());
      stream.ready.pop_front();
      w->in_ready = false;
      if (w->created.has_value()) {
        out = std::move(w->created);
        w->created.reset();
      } else if (!w->queue.empty()) {
        out.emplace();
        out->set_watch_id(w->id);
        out->set_shard(static_cast<uint32_t>(w->shard));
        uint64_t bytes = 0;
        absl::Status bad;
        while (!w->queue.empty()) {
          const EventPtr& e = w->queue.front();
          // Whole revisions only.
          if (bytes >= max_bytes && e->revision != out->revision()) break;
          bad = ToEvent(*e, w->prev_kv, out->add_events());
          if (!bad.ok()) break;
          const uint64_t size = EventBytes(*e);
          bytes += size;
          w->queued_bytes -= size;
          queued_bytes_ -= size;
          out->set_revision(e->revision);
          w->queue.pop_front();
        }
        events_sent_ += out->events_size();
        w->sent_revision = std::max(w->sent_revision, out->revision());
        w->sent_since_tick = true;
        if (!bad.ok()) {
          out.reset();
          WakeList ignored;  // this stream is taking already
          End(*w, bad, 0, &ignored);
          continue;
        }
      } else if (w->progress.has_value()) {
        out.emplace();
        out->set_watch_id(w->id);
        out->set_shard(static_cast<uint32_t>(w->shard));
        out->set_revision(*w->progress);
        w->sent_revision = std::max(w->sent_revision, *w->progress);
        w->progress.reset();
      } else if (w->last.has_value()) {
        out = std::move(w->last);
        w->last.reset();
        // Its last response: the stream forgets it (unless the id was
        // taken again by a refused duplicate: then the live one stays).
        auto it = stream.watchers.find(w->id);
        if (it != stream.watchers.end() && it->second == w) stream.watchers.erase(it);
        if (out->revision() == 0) out->set_revision(w->sent_revision);
      }
      if (w->ended && !w->last.has_value()) continue;
      const bool more = w->created.has_value() || !w->queue.empty() || w->progress.has_value() ||
                        w->last.has_value();
      if (more && !w->in_ready) {
        w->in_ready = true;
        stream.ready.push_back(w);
      }
      if (!w->live && !w->ended && !w->catch_up_scheduled &&
          w->queued_bytes < options_.max_watcher_bytes / 2) {
        ScheduleCatchUp(*w);
      }
    }
  }
  return out;
}

void WatchHub::ScheduleCatchUp(Watcher& w) {
  if (w.catch_up_scheduled || w.ended) return;
  auto s = streams_.find(w.sink);
  if (s == streams_.end()) return;
  auto it = s->second->watchers.find(w.id);
  if (it == s->second->watchers.end() || it->second.get() != &w) return;
  w.catch_up_scheduled = true;
  catch_up_.push_back(it->second);
}

void WatchHub::CatchUpLoop() {
  while (true) {
    std::shared_ptr<Watcher> w;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || !catch_up_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      w = std::move(catch_up_.front());
      catch_up_.pop_front();
    }
    WakeAll(CatchUpOnce(std::move(w)));
  }
}

WatchHub::WakeList WatchHub::CatchUpOnce(std::shared_ptr<Watcher> w) {
  WakeList wake;
  uint64_t from = 0;
  {
    absl::MutexLock lock(&mu_);
    w->catch_up_scheduled = false;
    if (w->ended || w->live) return wake;
    // Its queue is full enough: Take() schedules it again once drained.
    if (w->queued_bytes >= options_.max_watcher_bytes / 2) return wake;
    from = w->next.revision;
  }
  absl::StatusOr<HistoryPage> page =
      source_->ReadHistory(w->shard, from, options_.catch_up_page_bytes);
  absl::MutexLock lock(&mu_);
  if (w->ended || w->live) return wake;
  if (!page.ok()) {
    End(*w, page.status(), 0, &wake);
    return wake;
  }
  if (page->compacted) {
    ++compacted_;
    End(*w,
        absl::OutOfRangeError(
            absl::StrCat("revision ", from, " of shard ", w->shard,
                         " is compacted: the oldest revision kept is ", page->floor,
                         "; read the keys again and watch from that read's revision + 1")),
        page->floor, &wake);
    return wake;
  }
  // Paced: a new revision is queued only while the queue is under half
  // its bound (Take() schedules the rest once the stream drained it).
  std::optional<uint64_t> stopped_at;
  for (sm::HistoryEvent& e : page->events) {
    if (w->ended) return wake;
    if (e.revision != w->next.revision && !w->queue.empty() &&
        w->queued_bytes >= options_.max_watcher_bytes / 2) {
      stopped_at = e.revision;
      break;
    }
    if (!w->Holds(e.key) || !w->hashes.Holds(KeyHash(e.key))) continue;
    Offer(*w, std::make_shared<const sm::HistoryEvent>(std::move(e)), /*paced=*/true, &wake);
  }
  if (w->ended) return wake;
  if (stopped_at.has_value()) {
    if (w->next < Position{*stopped_at, 0}) w->next = Position{*stopped_at, 0};
    return wake;  // Take() schedules the next page
  }
  const Position after =
      page->more ? Position{page->next_revision, 0} : Position{page->applied_index + 1, 0};
  if (w->next < after) w->next = after;
  if (!page->more) {
    auto sw = shards_.find(w->shard);
    const uint64_t seen = sw == shards_.end() ? 0 : sw->second->applied;
    // Nothing reported since the page's view: later events come live.
    if (seen <= page->applied_index) {
      w->live = true;
      return wake;
    }
  }
  ScheduleCatchUp(*w);
  return wake;
}

void WatchHub::TickLoop() {
  while (true) {
    std::vector<std::pair<ShardId, uint64_t>> checks;
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop), options_.progress_interval)) return;
      for (auto& [shard, sw] : shards_) {
        absl::flat_hash_set<uint64_t> versions;
        for (auto& [key, ws] : sw->exact) {
          for (auto& w : ws) versions.insert(w->range_version);
        }
        for (auto& w : sw->ranges) versions.insert(w->range_version);
        for (uint64_t v : versions) checks.emplace_back(shard, v);
      }
    }
    std::vector<std::pair<std::pair<ShardId, uint64_t>, absl::Status>> failed;
    for (const auto& check : checks) {
      absl::Status status = source_->CheckWatch(check.first, check.second);
      if (!status.ok()) failed.emplace_back(check, std::move(status));
    }
    WakeList wake;
    {
      absl::MutexLock lock(&mu_);
      for (auto& [id, sw] : shards_) {
        const ShardId shard = id;
        std::vector<std::shared_ptr<Watcher>> all = sw->ranges;
        for (auto& [key, ws] : sw->exact) all.insert(all.end(), ws.begin(), ws.end());
        for (auto& w : all) {
          auto bad = std::find_if(failed.begin(), failed.end(), [&](const auto& f) {
            return f.first.first == shard && f.first.second == w->range_version;
          });
          if (bad != failed.end()) {
            End(*w, bad->second, 0, &wake);
            continue;
          }
          if (w->progress_notify && w->live && w->queue.empty() && !w->sent_since_tick) {
            w->progress = std::max({sw->applied, w->next.revision - 1, w->sent_revision});
            if (!w->in_ready) {
              auto s = streams_.find(w->sink);
              if (s != streams_.end()) {
                w->in_ready = true;
                s->second->ready.push_back(w);
                wake.push_back(s->second->handle);
              }
            }
          }
          w->sent_since_tick = false;
        }
      }
    }
    WakeAll(std::move(wake));
  }
}

size_t WatchHub::Backlog(WatchStreamSink* sink) const {
  absl::MutexLock lock(&mu_);
  auto s = streams_.find(sink);
  return s == streams_.end() ? 0 : s->second->ready.size();
}

WatchHubStats WatchHub::Stats() const {
  absl::MutexLock lock(&mu_);
  uint64_t catching_up = 0;
  for (const auto& [shard, sw] : shards_) {
    for (const auto& [key, ws] : sw->exact) {
      for (const auto& w : ws) catching_up += !w->live;
    }
    for (const auto& w : sw->ranges) catching_up += !w->live;
  }
  return WatchHubStats{.watchers = watchers_,
                       .catching_up = catching_up,
                       .queued_bytes = queued_bytes_,
                       .events_sent_total = events_sent_,
                       .slow_cancelled_total = slow_cancelled_,
                       .compacted_total = compacted_};
}

}  // namespace tessera::server
