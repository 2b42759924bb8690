// What every libvb layer does alike: raise a failed call the way LibTorch raises its own
// errors, and carry its router state through autograd.
#pragma once

#include <ATen/core/ivalue.h>
#include <c10/util/Exception.h>

#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/router.h"
#include "client/stats.h"

namespace vb::nn {

// What a layer built on a named op (RemoteAttention, LeftSpinResidual) carries from forward
// to backward.
struct OpLayerState {
  std::shared_ptr<Router> router;
  CallStats stats;
  std::map<std::string, double> attributes;
};

// c10::ValueError for INVALID_ARGUMENT (the caller's mistake), c10::Error otherwise.
inline void raise_if_error(const absl::Status& status, const char* what) {
  if (status.ok()) return;
  const std::string message = absl::StrCat(what, ": ", status.ToString());
  if (absl::IsInvalidArgument(status)) TORCH_CHECK_VALUE(false, message);
  TORCH_CHECK(false, message);
}

// Holds a shared_ptr in an IValue, so an autograd context can keep a layer's state.
template <typename T>
struct Capsule : torch::CustomClassHolder {
  explicit Capsule(std::shared_ptr<T> v) : value(std::move(v)) {}
  std::shared_ptr<T> value;
};

template <typename T>
c10::IValue capsule(std::shared_ptr<T> value) {
  return c10::IValue::make_capsule(c10::make_intrusive<Capsule<T>>(std::move(value)));
}

template <typename T>
std::shared_ptr<T> from_capsule(const c10::IValue& value) {
  auto held = value.toCapsule();
  return static_cast<Capsule<T>*>(held.get())->value;
}

}  // namespace vb::nn
