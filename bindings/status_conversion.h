#pragma once
// absl::Status -> Python exception of omnirelay.errors (the one mapping).
// Call ThrowIfError() with the GIL held.
#include <pybind11/pybind11.h>

#include "omnirelay/core/status.h"

namespace omnirelay::bindings {

// Raises omnirelay.errors.<CamelCaseCode>(message, error_code=...) for a non-OK status.
void ThrowIfError(const absl::Status& status);

// Returns the value or raises.
template <typename T>
T ValueOrThrow(absl::StatusOr<T> result) {
  if (!result.ok()) ThrowIfError(result.status());
  return *std::move(result);
}

}  // namespace omnirelay::bindings
