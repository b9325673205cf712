// plexus/operators.hpp: how the SDK reaches the operators the host registers with LibTorch's
// dispatcher (host/operators.cpp; plexus's own GPU kernels in CUDA builds) without linking
// against the host. Plugins use them through plexus/kit/layer_norm.hpp and plexus/kit/loss.hpp.
//
//   plexus::layer_norm_forward / plexus::layer_norm_backward      (see layer_norm.hpp)
//   plexus::cross_entropy_forward / plexus::cross_entropy_backward (see loss.hpp)
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace plexus::detail {

// The operator `name` ("plexus::layer_norm_forward"), if the host has registered it.
inline c10::optional<c10::OperatorHandle> host_operator(const char* name) {
    return c10::Dispatcher::singleton().findSchema({name, ""});
}

// True when `name` is registered with a kernel for `key` (c10::DispatchKey::CUDA: plexus's own
// GPU kernel; CPU builds register none).
inline bool host_kernel_on(const char* name, c10::DispatchKey key) {
    auto op = host_operator(name);
    return op && op->hasKernelForDispatchKey(key);
}

}  // namespace plexus::detail
