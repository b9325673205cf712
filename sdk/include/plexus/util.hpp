// plexus/util.hpp: small helpers that many plugins need, written once.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/types.h>

#include "plexus/optimizer.hpp"
#include "plexus/transport.hpp"

namespace plexus {

// A scalar tensor's value, or NaN for a tensor without data (the simulated cluster's "meta"
// numerics computes shapes and time only). Use it wherever a strategy reads a loss or a norm.
inline double value_of(const torch::Tensor& t) { return t.is_meta() ? NAN : t.item<double>(); }


// One slot per parameter of `module`, named as named_parameters() names them.
inline std::vector<ParamSlot> slots_of(torch::nn::Module& module) {
    std::vector<ParamSlot> slots;
    for (auto& item : module.named_parameters(/*recurse=*/true)) {
        auto shape = item.value().sizes().vec();
        slots.push_back({item.key(), item.value(), shape});
    }
    return slots;
}

// Global L2 norm of `grads`, computed in one reduction.
inline double global_norm(const std::vector<torch::Tensor>& grads) {
    if (grads.empty()) return 0.0;
    std::vector<torch::Tensor> squares;
    squares.reserve(grads.size());
    for (const auto& g : grads) squares.push_back(g.pow(2).sum());
    return std::sqrt(value_of(torch::stack(squares).sum()));
}

// Sum of the squares of every element of `grads`, in float64: this rank's part of a global
// norm when the gradients are spread over ranks (shards, tensor-parallel splits, stages).
inline double sum_of_squares(const std::vector<torch::Tensor>& grads) {
    double sq = 0;
    for (const auto& g : grads) sq += value_of(g.to(torch::kFloat64).pow(2).sum());
    return sq;
}

// Scales `grads` in place so that `norm`, their global norm, becomes at most max_norm (if
// max_norm > 0).
inline void clip_to_norm(const std::vector<torch::Tensor>& grads, double norm, double max_norm) {
    if (max_norm > 0 && norm > max_norm) {
        const double scale = max_norm / (norm + 1e-6);
        for (const auto& g : grads) g.mul_(scale);
    }
}

// Scales `grads` in place so that their global norm is at most max_norm (if max_norm > 0).
// Returns the norm before clipping, which the harness logs as grad_norm.
inline double clip_grad_norm(const std::vector<torch::Tensor>& grads, double max_norm) {
    const double norm = global_norm(grads);
    clip_to_norm(grads, norm, max_norm);
    return norm;
}

// Training FLOPs per token in the PaLM / nanoGPT convention: 6 per parameter (forward 2,
// backward 4) plus attention's score and value matmuls, 12 * layers * heads * head_dim * seq_len,
// without a causal discount. `params` is the N of that formula: say which parameters you count.
inline double palm_flops_per_token(double params, int64_t n_layer, int64_t n_head, int64_t head_dim,
                                   int64_t seq_len) {
    return 6.0 * params + 12.0 * static_cast<double>(n_layer * n_head * head_dim * seq_len);
}

// 64-bit mix (splitmix64): derive independent seeds from one, e.g. per rank or per stream.
inline uint64_t mix_seed(uint64_t seed, uint64_t salt) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (salt + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// What a rank holds between steps for these parameters: the parameters, a gradient each, and
// the optimizer's state (call after the optimizer's first step, which creates it). Strategies
// record it as "state_bytes", so memory per rank compares across strategies.
inline int64_t training_state_bytes(const std::vector<torch::Tensor>& params, const Optimizer& optimizer) {
    int64_t bytes = 0;
    for (const auto& p : params) bytes += 2 * p.numel() * static_cast<int64_t>(p.element_size());
    for (const auto& [name, t] : optimizer.state()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    return bytes;
}

// Reduces several tensors over `transport` as one flat buffer (one collective instead of one
// per tensor), in place. For gradient averaging outside of backward.
inline void all_reduce_flat(const std::vector<torch::Tensor>& tensors, Transport& transport, ReduceOp op) {
    if (tensors.empty()) return;
    std::vector<torch::Tensor> parts;
    for (const auto& t : tensors) parts.push_back(t.reshape(-1));
    auto flat = torch::cat(parts);
    transport.all_reduce(flat, op)->wait();
    int64_t offset = 0;
    for (const auto& t : tensors) {
        t.view(-1).copy_(flat.narrow(0, offset, t.numel()));
        offset += t.numel();
    }
}

}  // namespace plexus
