// plexus/compat.hpp: the few places where LibTorch 1.13 (Debian, CPU) and 2.x (GPU machines)
// differ, kept in one header instead of version checks scattered through plugins.
#pragma once

#include <cmath>

#include <torch/types.h>
#include <torch/version.h>

#include <ATen/native/Resize.h>

#include "plexus/error.hpp"

#if TORCH_VERSION_MAJOR >= 2
#include <ATen/ops/scaled_dot_product_attention.h>
#endif

namespace plexus::compat {

// Causal self-attention softmax(q kᵀ / sqrt(d) + mask) v over [batch, heads, seq, head_dim].
// LibTorch 2.x: the fused kernel (flash or memory-efficient where available).
// LibTorch 1.13: scale and mask fused into one baddbmm, then an in-place softmax.
// `mask` is an additive [seq, seq] tensor (0 on and below the diagonal, -inf above), used by
// the 1.13 path only; causal_mask() makes one.
inline torch::Tensor causal_attention(const torch::Tensor& q, const torch::Tensor& k,
                                      const torch::Tensor& v, const torch::Tensor& mask) {
#if TORCH_VERSION_MAJOR >= 2
    (void)mask;
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true);
#else
    const auto B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
    auto q3 = q.reshape({B * H, T, D});
    auto k3 = k.reshape({B * H, T, D});
    auto v3 = v.reshape({B * H, T, D});
    auto scores = torch::baddbmm(mask.narrow(0, 0, T).narrow(1, 0, T), q3, k3.transpose(1, 2),
                                 /*beta=*/1.0, /*alpha=*/1.0 / std::sqrt(static_cast<double>(D)));
    auto probs = torch::softmax(scores, -1);
    return torch::bmm(probs, v3).view({B, H, T, D});
#endif
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

}  // namespace plexus::compat
