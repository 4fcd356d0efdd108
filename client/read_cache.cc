#include "client/read_cache.h"

#include <utility>

namespace tessera::client {

std::optional<CachedValue> ReadCache::Lookup(absl::string_view key, absl::Time now,
                                             absl::Duration max_age) {
  if (!enabled()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second->value.fetched_at < now - max_age) {
    ++misses_;
    return std::nullopt;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  ++hits_;
  return it->second->value;
}

uint64_t ReadCache::ReadToken() const {
  absl::MutexLock lock(&mu_);
  return write_events_;
}

void ReadCache::Fill(const std::string& key, CachedValue value, uint64_t token) {
  if (!enabled()) return;
  absl::MutexLock lock(&mu_);
  if (token != write_events_ || writes_in_flight_.contains(key)) return;
  Insert(key, std::move(value));
}

void ReadCache::BeginWrite(const std::string& key) {
  if (!enabled()) return;
  absl::MutexLock lock(&mu_);
  ++write_events_;
  ++writes_in_flight_[key];
  Erase(key);
}

void ReadCache::EndWrite(const std::string& key, std::optional<CachedValue> result) {
  if (!enabled()) return;
  absl::MutexLock lock(&mu_);
  ++write_events_;
  auto it = writes_in_flight_.find(key);
  if (it != writes_in_flight_.end() && --it->second == 0) writes_in_flight_.erase(it);
  Erase(key);
  if (result.has_value() && !writes_in_flight_.contains(key)) Insert(key, std::move(*result));
}

ReadCacheStats ReadCache::stats() const {
  absl::MutexLock lock(&mu_);
  return {.hits = hits_, .misses = misses_, .bytes = bytes_, .entries = index_.size()};
}

void ReadCache::Insert(const std::string& key, CachedValue value) {
  Erase(key);
  const size_t bytes = key.size() + value.value.size() + kEntryOverheadBytes;
  if (bytes > capacity_bytes_) return;
  lru_.push_front(Entry{key, std::move(value), bytes});
  index_[key] = lru_.begin();
  bytes_ += bytes;
  while (bytes_ > capacity_bytes_) {
    Entry& victim = lru_.back();
    bytes_ -= victim.bytes;
    index_.erase(victim.key);
    lru_.pop_back();
  }
}

void ReadCache::Erase(const std::string& key) {
  auto it = index_.find(key);
  if (it == index_.end()) return;
  bytes_ -= it->second->bytes;
  lru_.erase(it->second);
  index_.erase(it);
}

}  // namespace tessera::client
