// CompletionScope: lets the callbacks of one run of completions (Node's
// RunCompletions: the proposals and reads one raft cycle finished) defer work
// to the end of the run, on the same thread. The KV service's Batch stream
// uses it to send the results one cycle produced for a stream in ONE message
// instead of one per result.
//
// Thread-compatible: a scope belongs to the thread that created it (a
// thread-local stack); scopes nest (Defer goes to the innermost).
#ifndef TESSERA_SERVER_RAFTSTORE_COMPLETION_SCOPE_H_
#define TESSERA_SERVER_RAFTSTORE_COMPLETION_SCOPE_H_

#include <functional>
#include <utility>
#include <vector>

namespace tessera::server {

class CompletionScope {
 public:
  CompletionScope() : outer_(current_) { current_ = this; }
  // Runs the deferred work in the order it was deferred (work deferred by
  // deferred work runs too), then pops the scope.
  ~CompletionScope() {
    for (size_t i = 0; i < deferred_.size(); ++i) {
      std::function<void()> fn = std::move(deferred_[i]);
      fn();
    }
    current_ = outer_;
  }
  CompletionScope(const CompletionScope&) = delete;
  CompletionScope& operator=(const CompletionScope&) = delete;

  // Queues `fn` to run when the innermost scope of this thread ends; false
  // (nothing queued: run it yourself) when this thread is in no scope.
  static bool Defer(std::function<void()> fn) {
    if (current_ == nullptr) return false;
    current_->deferred_.push_back(std::move(fn));
    return true;
  }

 private:
  static inline thread_local CompletionScope* current_ = nullptr;
  CompletionScope* const outer_;
  std::vector<std::function<void()>> deferred_;
};

}  // namespace tessera::server

#endif  // TESSERA_SERVER_RAFTSTORE_COMPLETION_SCOPE_H_
