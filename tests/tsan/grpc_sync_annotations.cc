// Makes the hand-offs of Debian's (uninstrumented) gRPC callback API visible
// to ThreadSanitizer. Linked into every binary of the `tsan` preset only (see
// the top-level CMakeLists.txt), next to absl_sync_annotations.cc.
//
// Why: the callback API's objects (the tags, the CallOpSets, the
// ServerCallback*Impl of each call) are header code, so they are compiled
// into our instrumented binaries, but the code that passes them between
// threads is in libgrpc and libgrpc++, which TSan cannot see. Without this,
// TSan reports a race on nearly every call: between the thread that fills a
// tag and starts a batch and the thread that runs the tag when the batch
// completes, and between a call's last callback and the OnDone that destroys
// it. These are the guarantees gRPC documents; we state them to TSan at the
// exported functions the header code calls (tests/tsan/interpose.h):
// - everything before grpc_call_start_batch(..., tag, ...) happens before
//   the completion queue returns `tag`;
// - every reference dropped on a server call (ServerCallbackCall's
//   callbacks_outstanding_, some dropped inside libgrpc++) happens before
//   its OnDone is scheduled, and likewise for on_cancel_conditions_remaining_
//   and OnCancel.
// Races between our code and anything else are still reported.
#include <grpc/grpc.h>
#include <grpcpp/support/server_callback.h>
#include <sanitizer/tsan_interface.h>

#include "tests/tsan/interpose.h"

grpc_call_error grpc_call_start_batch(grpc_call* call, const grpc_op* ops, size_t nops, void* tag,
                                      void* reserved) {
  TESSERA_REAL(grpc_call_error(*)(grpc_call*, const grpc_op*, size_t, void*, void*),
               "grpc_call_start_batch");
  __tsan_release(tag);
  return real(call, ops, nops, tag, reserved);
}

grpc_event grpc_completion_queue_next(grpc_completion_queue* cq, gpr_timespec deadline,
                                      void* reserved) {
  TESSERA_REAL(grpc_event(*)(grpc_completion_queue*, gpr_timespec, void*),
               "grpc_completion_queue_next");
  grpc_event event = real(cq, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE && event.tag != nullptr) __tsan_acquire(event.tag);
  return event;
}

grpc_event grpc_completion_queue_pluck(grpc_completion_queue* cq, void* tag, gpr_timespec deadline,
                                       void* reserved) {
  TESSERA_REAL(grpc_event(*)(grpc_completion_queue*, void*, gpr_timespec, void*),
               "grpc_completion_queue_pluck");
  grpc_event event = real(cq, tag, deadline, reserved);
  if (event.type == GRPC_OP_COMPLETE && event.tag != nullptr) __tsan_acquire(event.tag);
  return event;
}

namespace grpc::internal {

// Called by whoever dropped the last reference, which may be libgrpc++'s
// ServerContext CompletionOp: acquire what the (instrumented) header code
// released when it dropped the others.
void ServerCallbackCall::ScheduleOnDone(bool inline_ondone) {
  TESSERA_REAL(void (*)(ServerCallbackCall*, bool),
               "_ZN4grpc8internal18ServerCallbackCall14ScheduleOnDoneEb");
  __tsan_acquire(&callbacks_outstanding_);
  real(this, inline_ondone);
}

void ServerCallbackCall::CallOnCancel(ServerReactor* reactor) {
  TESSERA_REAL(void (*)(ServerCallbackCall*, ServerReactor*),
               "_ZN4grpc8internal18ServerCallbackCall12CallOnCancelEPNS0_13ServerReactorE");
  __tsan_acquire(&on_cancel_conditions_remaining_);
  real(this, reactor);
}

}  // namespace grpc::internal
