// models/llama's operations, as functions the tests call directly: RMSNorm, rotary position
// embeddings, grouped-query causal attention, the SwiGLU MLP and its hidden-size rule.
//
// Conventions follow Meta's reference implementation (github.com/meta-llama/llama, llama/model.py
// at commit 689c7f261b9c5514636ecc3c5fefefcbb3e6eed7): RMSNorm with eps inside the root, rotary
// embeddings on adjacent pairs (x[2i], x[2i+1]) rotated by
// position * base^(-2i/head_dim), key/value heads repeated for the query heads that share them
// (query head h reads key/value head h / (n_head / n_kv_head)), and the MLP's hidden width
// int(2/3 * 4d) rounded up to a multiple of `multiple_of`.
#pragma once

#include <cmath>
#include <functional>

#include <plexus/kit/compat.hpp>
#include <torch/torch.h>

namespace plexus::llama {

// x / sqrt(mean(x^2) + eps) * weight, over the last dimension.
inline torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    return x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
}

// The MLP's hidden width: 2/3 of 4d, rounded up to a multiple of `multiple_of`.
inline int64_t swiglu_hidden(int64_t d_model, int64_t multiple_of) {
    const int64_t h = 2 * (4 * d_model) / 3;
    return multiple_of * ((h + multiple_of - 1) / multiple_of);
}

// The rotation angles of positions 0..T-1: cos and sin, each [T, head_dim / 2].
inline std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t seq_len, int64_t head_dim, double base,
                                                           const torch::TensorOptions& options) {
    auto cpu = torch::TensorOptions().dtype(torch::kFloat64);
    auto inv_freq = torch::pow(base, -torch::arange(0, head_dim, 2, cpu) / static_cast<double>(head_dim));
    auto angles = torch::outer(torch::arange(seq_len, cpu), inv_freq);
    return {torch::cos(angles).to(options), torch::sin(angles).to(options)};
}

// Rotates each adjacent pair of x [B, H, T, head_dim] by its position's angle.
inline torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
    const auto T = x.size(2);
    auto pairs = x.unflatten(-1, {x.size(-1) / 2, 2});
    auto a = pairs.select(-1, 0), b = pairs.select(-1, 1);
    auto c = cos.narrow(0, 0, T), s = sin.narrow(0, 0, T);
    return torch::stack({a * c - b * s, a * s + b * c}, -1).flatten(-2);
}

// Causal attention of q [B, H, T, hd] over k, v [B, KV, T, hd]: each key/value head serves
// H / KV query heads, as if repeated. [B, H, T, hd].
inline torch::Tensor grouped_attention(const torch::Tensor& q, torch::Tensor k, torch::Tensor v,
                                       const torch::Tensor& mask) {
    const int64_t groups = q.size(1) / k.size(1);
    if (groups > 1) {
        k = k.repeat_interleave(groups, 1);
        v = v.repeat_interleave(groups, 1);
    }
    return compat::causal_attention(q, k, v, mask);
}

// silu(gate) * up, from the two projections x W1ᵀ and x W3ᵀ: the gated hidden activations,
// before the output projection W2.
inline torch::Tensor swiglu(const torch::Tensor& gate, const torch::Tensor& up) { return torch::silu(gate) * up; }

}  // namespace plexus::llama
