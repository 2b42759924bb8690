// Early-return helpers for absl::Status / absl::StatusOr. Abseil 20220623 (Debian 12) has no
// RETURN_IF_ERROR of its own, so the project defines them once, here.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define VB_STATUS_CONCAT_INNER_(a, b) a##b
#define VB_STATUS_CONCAT_(a, b) VB_STATUS_CONCAT_INNER_(a, b)

// Returns the status of `expr` from the enclosing function when it is not OK.
#define VB_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status vb_status_ = (expr);      \
    if (!vb_status_.ok()) return vb_status_; \
  } while (false)

// `lhs` = value of the StatusOr `expr`, or returns its status from the enclosing function.
#define VB_ASSIGN_OR_RETURN(lhs, expr) \
  VB_ASSIGN_OR_RETURN_IMPL_(VB_STATUS_CONCAT_(vb_statusor_, __LINE__), lhs, expr)

#define VB_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                              \
  if (!statusor.ok()) return statusor.status();        \
  lhs = std::move(statusor).value()
