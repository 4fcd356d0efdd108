// Watching keys: Client::Watch (client.h) returns a Watcher, which streams
// the changes of one key, a prefix or a range of keys, across every shard
// the keys may live on, and survives node failures, leader changes and
// splits by resuming each shard from where it stopped.
//
//   WatchOptions w;
//   w.key = "config/";
//   w.prefix = true;
//   absl::StatusOr<std::unique_ptr<Watcher>> watch = client->Watch(w);
//   while (true) {
//     absl::StatusOr<std::vector<WatchEvent>> events = (*watch)->Next(absl::Now() +
//     absl::Seconds(1)); if (!events.ok()) break;  // kOutOfRange: re-read the keys, watch again
//     for (const WatchEvent& e : *events) Handle(e);
//     SaveSomewhere((*watch)->ResumeToken());  // resume later with no gap
//   }
//
// Guarantees (client/README.md "Watch"; kv.proto "Watch" for the wire):
//  - for each key, events come in revision order, none missing and none
//    repeated, for as long as the Watch lives, whatever nodes fail;
//  - across keys on different shards there is no order;
//  - ResumeToken() resumes, in a new Watch (another process too), right
//    after the last event Next returned: no gap, no repeat, as long as the
//    shards still keep that history (else Next fails with kOutOfRange: read
//    the keys again and watch from now).
//
// Thread-safety (Watcher): Next and ResumeToken from one thread at a time.
#ifndef TESSERA_CLIENT_WATCH_H_
#define TESSERA_CLIENT_WATCH_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tessera::client {

struct WatchOptions {
  // One key; with `prefix`, every key starting with it (empty: every key);
  // with `range_end`, the keys in [key, range_end) ("\0": every key >= key).
  std::string key;
  bool prefix = false;
  std::string range_end;
  // Where to start: a token from Watch::ResumeToken(); else, for a single
  // key, `start_revision` (events at and above that revision of the key's
  // shard, e.g. a put's mod_revision + 1); else from now.
  std::string resume_token;
  uint64_t start_revision = 0;
  // Fill WatchEvent::prev (the key's state before the event).
  bool prev_kv = false;
  // Until the watch is registered on every shard (Client::Watch blocks).
  absl::Duration timeout = absl::Seconds(10);
};

struct WatchedValue {
  std::string value;
  uint64_t version = 0;
  uint64_t create_revision = 0;
  uint64_t mod_revision = 0;
  uint64_t lease = 0;
};

struct WatchEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  std::string key;
  WatchedValue kv;                   // kPut: the new state; kDelete: mod_revision only
  std::optional<WatchedValue> prev;  // with prev_kv, if the key existed
  uint32_t shard = 0;
  uint64_t revision = 0;  // the shard revision of the write
};

class Watcher {
 public:
  virtual ~Watcher() = default;  // ends the watch
  // Waits until events arrive or `deadline`; returns them (empty at the
  // deadline). An error ends the watch: kOutOfRange (a shard no longer
  // keeps the history to resume from; the message names its oldest
  // revision), kInvalidArgument (a bad request or token), kCancelled.
  virtual absl::StatusOr<std::vector<WatchEvent>> Next(absl::Time deadline) = 0;
  // Resumes right after the last event Next returned (opaque bytes).
  virtual std::string ResumeToken() const = 0;
  // How many times a shard's watch was created again after it ended (its
  // node failed or drained, the server cut a slow reader off, the shard
  // moved or split). For monitoring.
  virtual uint64_t restarts() const = 0;
};

}  // namespace tessera::client

#endif  // TESSERA_CLIENT_WATCH_H_
