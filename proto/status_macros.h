// Status propagation macros. Abseil 20220623 has no RETURN_IF_ERROR /
// ASSIGN_OR_RETURN, so this is the project's one copy; do not redefine them.
//
//   TESSERA_RETURN_IF_ERROR(storage.Write(batch));
//   TESSERA_ASSIGN_OR_RETURN(std::string v, store.Get(key));
#ifndef TESSERA_PROTO_STATUS_MACROS_H_
#define TESSERA_PROTO_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TESSERA_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status tessera_status_ = (expr);           \
    if (!tessera_status_.ok()) return tessera_status_; \
  } while (0)

#define TESSERA_STATUS_CONCAT_INNER_(a, b) a##b
#define TESSERA_STATUS_CONCAT_(a, b) TESSERA_STATUS_CONCAT_INNER_(a, b)

#define TESSERA_ASSIGN_OR_RETURN(lhs, expr) \
  TESSERA_ASSIGN_OR_RETURN_IMPL_(TESSERA_STATUS_CONCAT_(tessera_statusor_, __LINE__), lhs, expr)

#define TESSERA_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = *std::move(statusor)

#endif  // TESSERA_PROTO_STATUS_MACROS_H_
