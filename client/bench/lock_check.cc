#include "client/bench/lock_check.h"

#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/concurrency.h"

namespace tessera::bench {
namespace {

constexpr char kFence[] = "lock-check/{resource}/token";
constexpr char kData[] = "lock-check/{resource}/data";
constexpr int kLeaseKeys = 32;  // spread over the shards by their hashes
constexpr size_t kMaxExamples = 10;

std::string TokenText(uint64_t token) { return absl::StrFormat("%020d", token); }

client::CallOptions Within(absl::Duration timeout) {
  client::CallOptions options;
  options.timeout = timeout;
  return options;
}

}  // namespace

absl::StatusOr<std::unique_ptr<LockCheck>> LockCheck::Start(
    const std::vector<std::string>& endpoints, int workers, bool testing_unlocked) {
  client::ClientOptions options;
  options.tls = client::TlsOptionsFromEnv();  // TESSERA_TLS_CA, _CERT, _KEY
  options.endpoints = endpoints;
  options.attempt_timeout = absl::Seconds(1);
  absl::StatusOr<std::unique_ptr<client::Client>> created = client::Client::Create(options);
  if (!created.ok()) return created.status();
  std::unique_ptr<LockCheck> check(new LockCheck());
  check->testing_unlocked_ = testing_unlocked;
  check->client_ = *std::move(created);
  client::Client& c = *check->client_;
  // The resource starts below every token (a run may follow another: the
  // token then only grows).
  client::TxnRequest init;
  client::Compare absent;
  absent.key = kFence;
  absent.target = client::Compare::Target::kExists;
  absent.op = client::Compare::Op::kNotEqual;
  init.compares.push_back(absent);
  init.success.push_back({client::TxnOp::Type::kPut, kFence, TokenText(0)});
  if (absl::StatusOr<client::TxnResult> r = c.Txn(init, Within(absl::Seconds(30))); !r.ok()) {
    return r.status();
  }
  const absl::Time asked = absl::Now();
  absl::StatusOr<client::LeaseGrant> lease =
      c.GrantLease(absl::Seconds(10), Within(absl::Seconds(30)));
  if (!lease.ok()) return lease.status();
  check->lease_ = lease->id;
  check->keep_ = std::make_unique<client::KeepAlive>(&c, lease->id, lease->ttl, asked + lease->ttl);
  client::CallOptions with_lease = Within(absl::Seconds(30));
  with_lease.lease = lease->id;
  for (int i = 0; i < kLeaseKeys; ++i) {
    check->lease_keys_.push_back(absl::StrCat("lease-check/", i));
    if (absl::StatusOr<client::PutResult> put =
            c.Put(check->lease_keys_.back(), "live", with_lease);
        !put.ok()) {
      return put.status();
    }
  }
  for (int i = 0; i < workers; ++i) {
    check->threads_.emplace_back([raw = check.get(), i] { raw->Work(i); });
  }
  return check;
}

LockCheck::~LockCheck() {
  stop_ = true;
  for (std::thread& t : threads_) t.join();
}

void LockCheck::Violation(std::string what) {
  absl::MutexLock lock(&mu_);
  ++verdict_.violations;
  if (verdict_.examples.size() < kMaxExamples) verdict_.examples.push_back(std::move(what));
}

void LockCheck::Work(int worker) {
  client::Client& c = *client_;
  std::unique_ptr<client::Session> session;
  while (!stop_) {
    if (session != nullptr && session->lost()) {
      session->Abandon();
      session.reset();
      absl::MutexLock lock(&mu_);
      ++verdict_.sessions_lost;
    }
    if (session == nullptr) {
      absl::StatusOr<std::unique_ptr<client::Session>> created =
          client::Session::Create(&c, absl::Seconds(5));
      if (!created.ok()) {
        absl::SleepFor(absl::Milliseconds(200));
        continue;
      }
      session = *std::move(created);
    }
    client::Mutex mutex(&c, session.get(), "lock-check");
    client::Contender unlocked(&c, session.get(), "__lock/{lock-check}/");
    absl::StatusOr<uint64_t> token = testing_unlocked_
                                         ? unlocked.Enter("", absl::Now() + absl::Seconds(5))
                                         : mutex.Lock(absl::Now() + absl::Seconds(5));
    if (!token.ok()) {
      mutex.Unlock(absl::Now() + absl::Seconds(5)).IgnoreError();
      unlocked.Leave(absl::Now() + absl::Seconds(5)).IgnoreError();
      continue;
    }
    {
      absl::MutexLock lock(&mu_);
      ++verdict_.acquisitions;
    }
    client::TxnRequest write;
    client::Compare lower;
    lower.key = kFence;
    lower.target = client::Compare::Target::kValue;
    lower.op = client::Compare::Op::kLess;
    lower.value = TokenText(*token);
    write.compares.push_back(lower);
    write.success.push_back({client::TxnOp::Type::kPut, kFence, TokenText(*token)});
    write.success.push_back(
        {client::TxnOp::Type::kPut, kData, absl::StrCat("worker ", worker, " token ", *token)});
    write.failure.push_back({client::TxnOp::Type::kGet, kFence});
    absl::StatusOr<client::TxnResult> r = c.Txn(write, Within(absl::Seconds(5)));
    const absl::Time answered = absl::Now();
    // Refused by our own earlier write: a lock taken again with the same key
    // (an Unlock that failed) has the same token.
    const bool ours =
        r.ok() && !r->succeeded && !r->results.empty() && r->results[0].value == TokenText(*token);
    if (r.ok() && (r->succeeded || ours)) {
      absl::MutexLock lock(&mu_);
      ++verdict_.fenced_writes;
    } else if (r.ok()) {
      if (answered < session->valid_until()) {
        Violation(absl::StrCat("worker ", worker, ": its write with token ", *token,
                               " was refused while its lease was live (until ",
                               absl::FormatTime(session->valid_until()), ", answered ",
                               absl::FormatTime(answered), "): another holder wrote first"));
      } else {
        absl::MutexLock lock(&mu_);
        ++verdict_.fenced_refused;
      }
    }
    mutex.Unlock(absl::Now() + absl::Seconds(5)).IgnoreError();
    unlocked.Leave(absl::Now() + absl::Seconds(5)).IgnoreError();
  }
  session.reset();  // revokes the lease
}

std::optional<bool> LockCheck::LeaseKeysAre(bool present, std::string* odd) {
  for (const std::string& key : lease_keys_) {
    absl::StatusOr<client::KeyValue> got = client_->Get(key, Within(absl::Seconds(30)));
    if (!got.ok() && !absl::IsNotFound(got.status())) {
      *odd = absl::StrCat(key, ": ", got.status().ToString());
      return std::nullopt;  // could not tell
    }
    if (got.ok() != present) {
      *odd = absl::StrCat(key, got.ok() ? " is there" : " is missing");
      return false;
    }
  }
  return true;
}

bool LockCheck::WaitForAcquisitions(uint64_t n, absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]()
                    ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return verdict_.acquisitions >= n; };
  return mu_.AwaitWithDeadline(absl::Condition(&enough), deadline);
}

LockVerdict LockCheck::Finish() {
  stop_ = true;
  for (std::thread& t : threads_) t.join();
  threads_.clear();
  std::string odd;
  if (!keep_->lost() && LeaseKeysAre(/*present=*/true, &odd) == false &&
      keep_->valid_until() > absl::Now()) {
    Violation(absl::StrCat("a key of a live lease is missing: ", odd));
  }
  keep_->Stop();
  absl::Status revoked = client_->RevokeLease(lease_, Within(absl::Seconds(60)));
  if (!revoked.ok() && !absl::IsNotFound(revoked)) {
    Violation(absl::StrCat("revoking the kept lease failed: ", revoked.ToString()));
  }
  // Gone once revoked (or ended); a lost lease's keys go within a TTL or so.
  bool gone = false;
  const absl::Time by = absl::Now() + absl::Seconds(60);
  while (!(gone = LeaseKeysAre(/*present=*/false, &odd) == true) && absl::Now() < by) {
    absl::SleepFor(absl::Milliseconds(200));
  }
  if (!gone) Violation(absl::StrCat("a key of an ended lease is still there: ", odd));
  absl::MutexLock lock(&mu_);
  return verdict_;
}

}  // namespace tessera::bench
