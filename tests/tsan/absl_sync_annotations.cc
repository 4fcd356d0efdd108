// Makes Debian's (uninstrumented) absl::Mutex, absl::CondVar and
// absl::Notification visible to ThreadSanitizer. Linked into every binary of
// the `tsan` preset only (see the top-level CMakeLists.txt).
//
// Why: libabsl_synchronization.so is not built with -fsanitize=thread, so TSan
// never sees its lock hand-offs and reports every access to absl::Mutex-
// guarded data from two threads as a race. We interpose the exported entry
// points (the executable's definitions take precedence over the shared
// library's; tests/tsan/interpose.h), call the real function through
// dlsym(RTLD_NEXT) and tell TSan what happened with its mutex annotations.
// Memory accesses inside the real calls (e.g. absl evaluating an Await
// condition in the unlocking thread) run between __tsan_mutex_pre_* and
// __tsan_mutex_post_*, where TSan ignores them.
#include <sanitizer/tsan_interface.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "tests/tsan/interpose.h"

namespace {

void AnnotateLock(void* m, unsigned flags) { __tsan_mutex_pre_lock(m, flags); }

// Await / CondVar::Wait release the mutex while waiting and hold it again on
// return: a release followed by an acquire.
void AnnotateWaitBegin(void* m) { __tsan_mutex_pre_unlock(m, 0); }
void AnnotateWaitEnd(void* m) {
  __tsan_mutex_post_unlock(m, 0);
  __tsan_mutex_pre_lock(m, 0);
  __tsan_mutex_post_lock(m, 0, 0);
}

// A sync address for Notification distinct from its mutex (its first member).
const void* NotificationSync(const absl::Notification* n) {
  return reinterpret_cast<const char*>(n) + sizeof(absl::Mutex);
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex4LockEv");
  AnnotateLock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

void Mutex::ReaderLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex10ReaderLockEv");
  AnnotateLock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

bool Mutex::TryLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex7TryLockEv");
  AnnotateLock(this, __tsan_mutex_try_lock);
  bool ok = real(this);
  __tsan_mutex_post_lock(this, __tsan_mutex_try_lock | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  return ok;
}

bool Mutex::ReaderTryLock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(bool (*)(Mutex*), "_ZN4absl7debian35Mutex13ReaderTryLockEv");
  unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  AnnotateLock(this, flags);
  bool ok = real(this);
  __tsan_mutex_post_lock(this, flags | (ok ? 0 : __tsan_mutex_try_lock_failed), 0);
  return ok;
}

void Mutex::Unlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex6UnlockEv");
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

void Mutex::ReaderUnlock() ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*), "_ZN4absl7debian35Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

void Mutex::LockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*, const Condition&),
               "_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  AnnotateLock(this, 0);
  real(this, cond);
  __tsan_mutex_post_lock(this, 0, 0);
}

// The *WithTimeout forms go through the annotated *WithDeadline ones (as
// Debian's absl itself does for some of them, through the PLT: annotating
// both would count one wait twice).
bool Mutex::LockWhenWithTimeout(const Condition& cond,
                                Duration timeout) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  return LockWhenWithDeadline(cond, Now() + timeout);
}

bool Mutex::LockWhenWithDeadline(const Condition& cond,
                                 Time deadline) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(bool (*)(Mutex*, const Condition&, Time),
               "_ZN4absl7debian35Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotateLock(this, 0);
  bool ok = real(this, cond, deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return ok;
}

void Mutex::ReaderLockWhen(const Condition& cond) ABSL_NO_THREAD_SAFETY_ANALYSIS {
  TESSERA_REAL(void (*)(Mutex*, const Condition&),
               "_ZN4absl7debian35Mutex14ReaderLockWhenERKNS0_9ConditionE");
  AnnotateLock(this, __tsan_mutex_read_lock);
  real(this, cond);
  __tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0);
}

void Mutex::Await(const Condition& cond) {
  TESSERA_REAL(void (*)(Mutex*, const Condition&),
               "_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  AnnotateWaitBegin(this);
  real(this, cond);
  AnnotateWaitEnd(this);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, Duration timeout) {
  return AwaitWithDeadline(cond, Now() + timeout);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, Time deadline) {
  TESSERA_REAL(bool (*)(Mutex*, const Condition&, Time),
               "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  AnnotateWaitBegin(this);
  bool ok = real(this, cond, deadline);
  AnnotateWaitEnd(this);
  return ok;
}

void CondVar::Wait(Mutex* mu) {
  TESSERA_REAL(void (*)(CondVar*, Mutex*), "_ZN4absl7debian37CondVar4WaitEPNS0_5MutexE");
  AnnotateWaitBegin(mu);
  real(this, mu);
  AnnotateWaitEnd(mu);
}

bool CondVar::WaitWithTimeout(Mutex* mu, Duration timeout) {
  return WaitWithDeadline(mu, Now() + timeout);
}

bool CondVar::WaitWithDeadline(Mutex* mu, Time deadline) {
  TESSERA_REAL(bool (*)(CondVar*, Mutex*, Time),
               "_ZN4absl7debian37CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  AnnotateWaitBegin(mu);
  bool timed_out = real(this, mu, deadline);
  AnnotateWaitEnd(mu);
  return timed_out;
}

void Notification::Notify() {
  TESSERA_REAL(void (*)(Notification*), "_ZN4absl7debian312Notification6NotifyEv");
  __tsan_release(const_cast<void*>(NotificationSync(this)));
  real(this);
}

void Notification::WaitForNotification() const {
  TESSERA_REAL(void (*)(const Notification*),
               "_ZNK4absl7debian312Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<void*>(NotificationSync(this)));
}

bool Notification::WaitForNotificationWithTimeout(Duration timeout) const {
  return WaitForNotificationWithDeadline(Now() + timeout);
}

bool Notification::WaitForNotificationWithDeadline(Time deadline) const {
  TESSERA_REAL(bool (*)(const Notification*, Time),
               "_ZNK4absl7debian312Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  bool ok = real(this, deadline);
  if (ok) __tsan_acquire(const_cast<void*>(NotificationSync(this)));
  return ok;
}

ABSL_NAMESPACE_END
}  // namespace absl
