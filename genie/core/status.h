// File: genie/core/status.h
// Control-plane error helpers over absl::Status (Abseil 20220623 has no RETURN_IF_ERROR).
//
//   absl::StatusOr<Plan> Load(Reader& r) {
//     GENIE_RETURN_IF_ERROR(r.Expect(kMagic));
//     GENIE_ASSIGN_OR_RETURN(uint32_t n, r.ReadU32());
//     ...
//   }
#ifndef GENIE_CORE_STATUS_H_
#define GENIE_CORE_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define GENIE_STATUS_CONCAT_INNER_(a, b) a##b
#define GENIE_STATUS_CONCAT_(a, b) GENIE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define GENIE_RETURN_IF_ERROR(expr)                  \
  do {                                               \
    ::absl::Status genie_status_ = (expr);           \
    if (!genie_status_.ok()) return genie_status_;   \
  } while (false)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its status.
#define GENIE_ASSIGN_OR_RETURN(lhs, rexpr) \
  GENIE_ASSIGN_OR_RETURN_IMPL_(GENIE_STATUS_CONCAT_(genie_statusor_, __LINE__), lhs, rexpr)

#define GENIE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // GENIE_CORE_STATUS_H_
