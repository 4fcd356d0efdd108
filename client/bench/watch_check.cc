#include "client/bench/watch_check.h"

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace tessera::bench {

constexpr size_t kExamples = 10;

WatchCheck::WatchCheck(const KeyFormat& keys, const KeyVersions& before)
    : keys_(keys), last_(keys.key_space()), checked_(keys.key_space()) {
  for (uint64_t i = 0; i < keys.key_space(); ++i) {
    checked_[i] = i < before.size() && before[i].has_value();
    if (checked_[i]) last_[i] = *before[i];
  }
}

absl::StatusOr<std::unique_ptr<WatchCheck>> WatchCheck::Start(
    const std::vector<std::string>& endpoints, const KeyFormat& keys, const KeyVersions& before) {
  std::unique_ptr<WatchCheck> check(new WatchCheck(keys, before));
  client::ClientOptions options;
  options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  options.endpoints = endpoints;
  absl::StatusOr<std::unique_ptr<client::Client>> client = client::Client::Create(options);
  if (!client.ok()) return client.status();
  check->client_ = *std::move(client);
  client::WatchOptions watch;
  watch.key = "k";
  watch.prefix = true;
  watch.timeout = absl::Seconds(60);
  absl::StatusOr<std::unique_ptr<client::Watcher>> watcher = check->client_->Watch(watch);
  if (!watcher.ok()) return watcher.status();
  check->watcher_ = *std::move(watcher);
  check->thread_ = std::thread([c = check.get()] { c->Loop(); });
  return check;
}

WatchCheck::~WatchCheck() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

int64_t WatchCheck::Index(const std::string& key) const {
  uint64_t index = 0;
  if (key.size() < 2 || key[0] != 'k' || !absl::SimpleAtoi(key.substr(1), &index) ||
      index >= keys_.key_space() || keys_.Key(index) != key) {
    return -1;
  }
  return static_cast<int64_t>(index);
}

void WatchCheck::Loop() {
  while (!stop_.load()) {
    absl::StatusOr<std::vector<client::WatchEvent>> events =
        watcher_->Next(absl::Now() + absl::Milliseconds(200));
    absl::MutexLock lock(&mu_);
    if (!events.ok()) {
      failed_ = events.status();
      return;
    }
    for (const client::WatchEvent& e : *events) {
      const int64_t i = Index(e.key);
      if (i < 0) continue;  // not the bench's
      ++verdict_.events;
      if (!checked_[i]) continue;
      const uint64_t want = last_[i] + 1;
      const uint64_t got = e.type == client::WatchEvent::Type::kPut ? e.kv.version : 0;
      if (got != want) {
        ++verdict_.mismatches;
        if (verdict_.examples.size() < kExamples) {
          verdict_.examples.push_back(absl::StrCat(e.key, ": event of version ", got, " after ",
                                                   last_[i], " (revision ", e.revision, ")"));
        }
      }
      last_[i] = got;
    }
  }
}

WatchVerdict WatchCheck::Finish(const KeyVersions& after, absl::Duration timeout) {
  auto caught_up = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!failed_.ok()) return true;
    for (uint64_t i = 0; i < keys_.key_space(); ++i) {
      if (checked_[i] && i < after.size() && after[i].has_value() && last_[i] < *after[i]) {
        return false;
      }
    }
    return true;
  };
  {
    absl::MutexLock lock(&mu_);
    mu_.AwaitWithTimeout(absl::Condition(&caught_up), timeout);
  }
  stop_ = true;
  thread_.join();
  absl::MutexLock lock(&mu_);
  WatchVerdict verdict = verdict_;
  verdict.restarts = watcher_->restarts();
  if (!failed_.ok()) {
    ++verdict.mismatches;
    verdict.examples.push_back(absl::StrCat("the watch failed: ", failed_.ToString()));
  }
  for (uint64_t i = 0; i < keys_.key_space(); ++i) {
    if (!checked_[i] || i >= after.size() || !after[i].has_value() || last_[i] == *after[i]) {
      continue;
    }
    ++verdict.mismatches;
    if (verdict.examples.size() < kExamples) {
      verdict.examples.push_back(absl::StrCat(keys_.Key(i), ": last event of version ", last_[i],
                                              ", the key is at version ", *after[i]));
    }
  }
  return verdict;
}

}  // namespace tessera::bench
