// plexus/kit/compat.hpp: the few places where LibTorch 1.13 (Debian, CPU) and 2.x (GPU machines)
// differ, kept in one header instead of version checks scattered through plugins.
#pragma once

#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <torch/types.h>
#include <torch/version.h>

#include <ATen/autocast_mode.h>
#include <ATen/native/Resize.h>

#include "plexus/error.hpp"

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#else
#include <torch/csrc/autograd/profiler_legacy.h>
#endif

namespace plexus::compat {

// Causal self-attention softmax(q kᵀ / sqrt(d) + mask) v over [batch, heads, seq, head_dim].
// LibTorch 2.x: the fused kernel (flash or memory-efficient where available).
// LibTorch 1.13, and "meta" tensors (2.x's attention has no meta kernel on the CPU): scale and
// mask fused into one baddbmm, then a softmax. `mask` is an additive [seq, seq] tensor (0 on
// and below the diagonal, -inf above), used by that path only; causal_mask() makes one.
inline torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                      const torch::Tensor& mask) {
#if TORCH_VERSION_MAJOR >= 2
    if (!q.is_meta()) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#endif
    const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    auto q3 = q.reshape({B * H, T, D});
    auto k3 = k.reshape({B * H, T, D});
    auto v3 = v.reshape({B * H, T, D});
    auto scores = torch::baddbmm(mask.narrow(0, 0, T).narrow(1, 0, T), q3, k3.transpose(1, 2),
                                 /*beta=*/1.0, /*alpha=*/1.0 / std::sqrt(static_cast<double>(D)));
    auto probs = torch::softmax(scores, -1);
    return torch::bmm(probs, v3).view({B, H, T, D});
}

inline torch::Tensor causal_mask(int64_t seq_len, const torch::TensorOptions& options) {
    return torch::full({seq_len, seq_len}, -INFINITY, options).triu(1);
}

// Frees (bytes = 0) or re-allocates a tensor's storage in place. Every tensor viewing that
// storage, including the ones autograd saved for backward, stays valid and sees what is written
// after the re-allocation: how sharded strategies (ZeRO-3) drop gathered parameters between a
// block's forward and its backward without breaking the graph.
inline void resize_storage_bytes(const torch::Tensor& t, size_t bytes) {
    if (t.is_meta()) {  // no data: only the size changes (the simulated cluster's "meta" numerics)
        t.storage().unsafeGetStorageImpl()->set_nbytes(bytes);
        return;
    }
    if (!t.device().is_cpu())
        throw Error("resize_storage_bytes: only CPU tensors in this build (" + t.device().str() + ")",
                    "the CUDA path comes with the CUDA build of plexus");
    at::native::resize_bytes_cpu(t.storage().unsafeGetStorageImpl(), bytes);
}

namespace detail {
// Autocast's per-device switches: LibTorch 2.x takes the device, 1.13 has a pair per device.
#if TORCH_VERSION_MAJOR >= 2
inline bool autocast_enabled(c10::DeviceType d) { return at::autocast::is_autocast_enabled(d); }
inline c10::ScalarType autocast_get_dtype(c10::DeviceType d) { return at::autocast::get_autocast_dtype(d); }
inline void autocast_set(c10::DeviceType d, bool on, c10::ScalarType dtype) {
    at::autocast::set_autocast_dtype(d, dtype);
    at::autocast::set_autocast_enabled(d, on);
}
#else
inline bool autocast_enabled(c10::DeviceType d) {
    return d == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
}
inline c10::ScalarType autocast_get_dtype(c10::DeviceType d) {
    return d == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
}
inline void autocast_set(c10::DeviceType d, bool on, c10::ScalarType dtype) {
    if (d == c10::DeviceType::CUDA) {
        at::autocast::set_autocast_gpu_dtype(dtype);
        at::autocast::set_enabled(on);
    } else {
        at::autocast::set_autocast_cpu_dtype(dtype);
        at::autocast::set_cpu_enabled(on);
    }
}
#endif
}  // namespace detail

// The dtype autocast gives matrix products on `device_type` now: bfloat16 inside an
// AutocastGuard for bf16, float32 where autocast is off.
inline c10::ScalarType autocast_dtype(c10::DeviceType device_type) {
    return detail::autocast_enabled(device_type) ? detail::autocast_get_dtype(device_type) : c10::kFloat;
}

// Mixed precision for the current thread, as torch.autocast: while the guard lives, matrix
// products and the other ops on autocast's lists run in `dtype` (bfloat16) on `device_type`,
// reductions and norms stay float32, and so do parameters, gradients and optimizer state.
// Float (or a device other than CPU and CUDA): the guard does nothing. The harness holds one
// around each rank's training loop (train.precision); tasks started with
// RunContext::start_background inherit it.
//
// Autocast's cast cache is off while the guard lives. That cache keeps the bfloat16 copy of each
// parameter until the outermost autocast region ends, and a region that spans many steps would
// keep multiplying by the first step's weights after the optimizer has changed them in place
// (or by a ZeRO-3 shard's last gathered values). Python scripts avoid this by opening a region
// per step; here every product casts its weights afresh, which is the same one cast per weight
// and forward.
class AutocastGuard {
public:
    AutocastGuard(c10::DeviceType device_type, c10::ScalarType dtype)
        : device_(device_type), active_(dtype != c10::kFloat &&
                                        (device_type == c10::DeviceType::CPU || device_type == c10::DeviceType::CUDA)) {
        if (!active_) return;
        prev_enabled_ = detail::autocast_enabled(device_);
        prev_dtype_ = detail::autocast_get_dtype(device_);
        prev_cache_ = at::autocast::is_autocast_cache_enabled();
        detail::autocast_set(device_, true, dtype);
        at::autocast::set_autocast_cache_enabled(false);
        at::autocast::increment_nesting();
    }
    ~AutocastGuard() {
        if (!active_) return;
        if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();  // casts cached for this region
        at::autocast::set_autocast_cache_enabled(prev_cache_);
        detail::autocast_set(device_, prev_enabled_, prev_dtype_);
    }
    AutocastGuard(const AutocastGuard&) = delete;
    AutocastGuard& operator=(const AutocastGuard&) = delete;

private:
    c10::DeviceType device_;
    bool active_;
    bool prev_enabled_ = false;
    bool prev_cache_ = true;
    c10::ScalarType prev_dtype_ = c10::kFloat;
};

// One fused AdamW step over many tensors (one kernel launch for all of them), where this
// LibTorch has one: 2.x, CUDA tensors of one dtype. Returns false, having done nothing, where it
// has none; the caller then runs its own loop. The update is AdamW's with bias correction,
// decoupled decay p *= 1 - lr * weight_decay, denominator sqrt(v / (1 - beta2^t)) + eps; `step`
// is t, as a float tensor on the parameters' device (the kernel reads it for every tensor).
// `grad_divisor`, if given (a float tensor there too), divides every gradient as it is read.
inline bool fused_adamw_(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& grads,
                         const std::vector<torch::Tensor>& exp_avg, const std::vector<torch::Tensor>& exp_avg_sq,
                         const torch::Tensor& step, double lr, double beta1, double beta2, double weight_decay,
                         double eps, const torch::Tensor& grad_divisor = {}) {
#if TORCH_VERSION_MAJOR >= 2
    if (params.empty() || !params[0].is_cuda()) return false;
    const std::vector<torch::Tensor> steps(params.size(), step);
    c10::optional<at::Tensor> divisor;
    if (grad_divisor.defined()) divisor = grad_divisor;
    at::_fused_adamw_(params, grads, exp_avg, exp_avg_sq, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay,
                      eps, /*amsgrad=*/false, /*maximize=*/false, divisor, /*found_inf=*/c10::nullopt);
    return true;
#else
    (void)params, (void)grads, (void)exp_avg, (void)exp_avg_sq, (void)step, (void)lr, (void)beta1, (void)beta2,
        (void)weight_decay, (void)eps, (void)grad_divisor;
    return false;
#endif
}

// A Chrome trace (chrome://tracing, Perfetto; bench/profile_summary.py sums it) of what this
// thread runs while the object lives, written to `path` when it ends. LibTorch 2.x: Kineto's
// profiler, with each GPU kernel and its device time when `gpu` is true (what matters on a GPU,
// where an operator's CPU time is only its launch). LibTorch 1.13 (built without Kineto): the
// legacy profiler, operators and their CPU time; `gpu` changes nothing.
class ProfileTrace {
public:
    ProfileTrace(std::string path, bool gpu) : path_(std::move(path)) {
#if TORCH_VERSION_MAJOR >= 2
        namespace impl = torch::profiler::impl;
        const impl::ProfilerConfig config(impl::ProfilerState::KINETO);
        std::set<impl::ActivityType> activities{impl::ActivityType::CPU};
        if (gpu) activities.insert(impl::ActivityType::CUDA);
        torch::autograd::profiler::prepareProfiler(config, activities);
        torch::autograd::profiler::enableProfiler(config, activities);
#else
        (void)gpu;
        legacy_ = std::make_unique<torch::autograd::profiler::RecordProfile>(path_);
#endif
    }
    ~ProfileTrace() {
#if TORCH_VERSION_MAJOR >= 2
        torch::autograd::profiler::disableProfiler()->save(path_);
#endif
    }
    ProfileTrace(const ProfileTrace&) = delete;
    ProfileTrace& operator=(const ProfileTrace&) = delete;

private:
    std::string path_;
#if TORCH_VERSION_MAJOR < 2
    std::unique_ptr<torch::autograd::profiler::RecordProfile> legacy_;
#endif
};

}  // namespace plexus::compat
