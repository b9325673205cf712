// plexus/kit/util.hpp: small helpers that many plugins need, written once.
#pragma once

#include <algorithm>
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

// Multi-tensor kernels (on a GPU: a launch or two for all the tensors, not one each), except on
// the "meta" device of the simulated cluster's shapes-only numerics, which has none of them.
inline bool any_meta(const std::vector<torch::Tensor>& ts) { return !ts.empty() && ts[0].is_meta(); }

inline void zero_all(const std::vector<torch::Tensor>& ts) {
    if (ts.empty() || any_meta(ts)) return;  // nothing to zero (the kernel refuses an empty list)
    at::_foreach_zero_(ts);
}

inline void scale_all(const std::vector<torch::Tensor>& ts, double factor) {
    if (ts.empty() || any_meta(ts)) return;
    at::_foreach_mul_(ts, factor);
}

// Global L2 norm of `grads`: per-tensor norms in one multi-tensor kernel, one reduction, one
// read back (NaN on the meta device).
inline double global_norm(const std::vector<torch::Tensor>& grads) {
    if (grads.empty()) return 0.0;
    if (any_meta(grads)) return NAN;
    return value_of(torch::stack(at::_foreach_norm(grads, 2)).square().sum().sqrt());
}

// Sum of the squares of every element of `grads`, in float64: this rank's part of a global
// norm when the gradients are spread over ranks (shards, tensor-parallel splits, stages).
inline double sum_of_squares(const std::vector<torch::Tensor>& grads) {
    double sq = 0;
    for (const auto& g : grads) sq += value_of(g.to(torch::kFloat64).pow(2).sum());
    return sq;
}

// Gradient clipping's factor: what brings a global norm `norm` to at most max_norm (if
// max_norm > 0), exactly 1 when it is within. Pass it to Optimizer::step_scaled, which folds it
// into the update where it can.
inline double clip_factor(double norm, double max_norm) {
    return max_norm > 0 && norm > max_norm ? max_norm / (norm + 1e-6) : 1.0;
}

// Scales `grads` in place so that `norm`, their global norm, becomes at most max_norm (if
// max_norm > 0): for gradients used more than once (ACCO's look-ahead step).
inline void clip_to_norm(const std::vector<torch::Tensor>& grads, double norm, double max_norm) {
    const double factor = clip_factor(norm, max_norm);
    if (factor != 1.0) scale_all(grads, factor);
}

// Scales `grads` in place so that their global norm is at most max_norm (if max_norm > 0).
// Returns the norm before clipping, which the harness logs as grad_norm. Before an optimizer
// step, prefer global_norm + clip_factor + Optimizer::step_scaled: no pass of its own.
inline double clip_grad_norm(const std::vector<torch::Tensor>& grads, double max_norm) {
    const double norm = global_norm(grads);
    clip_to_norm(grads, norm, max_norm);
    return norm;
}

// Training FLOPs per token in the PaLM / nanoGPT convention: 6 per parameter (forward 2,
// backward 4) plus attention's score and value matmuls, 12 * layers * heads * head_dim * seq_len,
// without a causal discount. `params` is the N of that formula: say which parameters you count.
inline double palm_flops_per_token(double params, int64_t n_layer, int64_t n_head, int64_t head_dim, int64_t seq_len) {
    return 6.0 * params + 12.0 * static_cast<double>(n_layer * n_head * head_dim * seq_len);
}

// 64-bit mix (splitmix64): derive independent seeds from one, e.g. per rank or per stream.
inline uint64_t mix_seed(uint64_t seed, uint64_t salt) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (salt + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// What a rank holds for these parameters: the parameters, a gradient each (from backward to the
// optimizer step), and the optimizer's state (call after the optimizer's first step, which
// creates it). Strategies record it as "state_bytes", so memory per rank compares across
// strategies.
inline int64_t training_state_bytes(const std::vector<torch::Tensor>& params, const Optimizer& optimizer) {
    int64_t bytes = 0;
    for (const auto& p : params) bytes += 2 * p.numel() * static_cast<int64_t>(p.element_size());
    for (const auto& [name, t] : optimizer.state()) bytes += t.numel() * static_cast<int64_t>(t.element_size());
    return bytes;
}

// Flat buffers, for strategies that treat all parameters as one vector (ACCO, ZeRO units,
// gossip, DADAO, a parameter server). The parameters are laid out in order, without gaps.
inline int64_t total_numel(const std::vector<torch::Tensor>& tensors) {
    int64_t n = 0;
    for (const auto& t : tensors) n += t.numel();
    return n;
}
// A new buffer of max(numel, their total) elements holding `params` in order (zeros after them:
// the padding of a buffer split into equal shards).
inline torch::Tensor flat_copy(const std::vector<torch::Tensor>& params, int64_t numel = 0) {
    auto flat = torch::zeros({std::max(numel, total_numel(params))}, params.at(0).options());
    torch::NoGradGuard no_grad;
    int64_t offset = 0;
    for (const auto& p : params) {
        flat.narrow(0, offset, p.numel()).copy_(p.reshape(-1));
        offset += p.numel();
    }
    return flat;
}
// Makes every parameter a view of its range of `flat` (set_data: autograd's bookkeeping of the
// parameter is kept), or, view_gradients, its .grad (autograd then adds into `flat` in place).
inline void view_parameters(const std::vector<torch::Tensor>& params, const torch::Tensor& flat) {
    int64_t offset = 0;
    for (auto p : params) {
        p.set_data(flat.narrow(0, offset, p.numel()).view(p.sizes()));
        offset += p.numel();
    }
}
inline void view_gradients(const std::vector<torch::Tensor>& params, const torch::Tensor& flat) {
    int64_t offset = 0;
    for (auto p : params) {
        p.mutable_grad() = flat.narrow(0, offset, p.numel()).view(p.sizes());
        offset += p.numel();
    }
}

// The part of one tensor of a flat layout that falls in a shard [lo, hi) of it.
struct FlatPiece {
    size_t index = 0;           // which tensor
    int64_t shard_offset = 0;   // where the part starts in the shard
    int64_t tensor_offset = 0;  // where it starts in the tensor (flattened)
    int64_t length = 0;
};
// The pieces of tensors starting at `offsets` with `numels` elements that lie in [lo, hi).
inline std::vector<FlatPiece> pieces_in(const std::vector<int64_t>& offsets, const std::vector<int64_t>& numels,
                                        int64_t lo, int64_t hi) {
    std::vector<FlatPiece> out;
    for (size_t k = 0; k < offsets.size(); ++k) {
        const int64_t a = std::max(lo, offsets[k]), b = std::min(hi, offsets[k] + numels[k]);
        if (a < b) out.push_back({k, a - lo, a - offsets[k], b - a});
    }
    return out;
}
// An optimizer slot over a piece: named "<name>[from:to]", its tensor the piece's range of
// `shard`; `group` holds the other pieces (the ranks the buffer is sharded over).
inline ParamSlot piece_slot(const FlatPiece& piece, const std::string& name, std::vector<int64_t> full_shape,
                            const torch::Tensor& shard, Transport& group) {
    ParamSlot slot;
    slot.name = name + "[" + std::to_string(piece.tensor_offset) + ":" +
                std::to_string(piece.tensor_offset + piece.length) + "]";
    slot.param = shard.narrow(0, piece.shard_offset, piece.length);
    slot.full_shape = std::move(full_shape);
    slot.offset = piece.tensor_offset;
    slot.tensor = name;
    slot.shard_group = &group;
    return slot;
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
