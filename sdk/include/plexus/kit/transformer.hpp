// plexus/kit/transformer.hpp: the pieces GPT-style model plugins share (models/gpt, models/revgpt):
// parameters created on the run's device, layer norm (alone, or with the residual add fused in:
// plexus/kit/layer_norm.hpp), the token and position lookup, causal
// self-attention and the GELU MLP. Include where needed.
//
// Every function works on the "meta" device too (shapes only, for simulating large models),
// where LibTorch 1.13 lacks kernels for layer_norm and embedding.
#pragma once

#include <cmath>
#include <vector>

#include <torch/torch.h>

#include "plexus/kit/compat.hpp"
#include "plexus/config.hpp"
#include "plexus/context.hpp"
#include "plexus/kit/layer_norm.hpp"

namespace plexus::transformer {

// The sizes a GPT-style model reads from its [model] section, checked against the run.
struct Dims {
    int64_t vocab = 0, n_layer = 0, d_model = 0, n_head = 0, d_ff = 0, seq_len = 0;
    torch::TensorOptions options;  // where the parameters live: the run's device (meta: shapes only)
};

// The schema keys read_dims() reads, with the plugin's defaults and its words for the layers and
// the width.
inline ConfigSchema dims_schema(int64_t n_layer, const std::string& n_layer_doc, int64_t d_model,
                                const std::string& d_model_doc) {
    return {
        {"n_layer", n_layer, n_layer_doc},
        {"d_model", d_model, d_model_doc},
        {"n_head", 4, "attention heads (H); must divide d_model"},
        {"d_ff", 0, "MLP hidden width; 0 means 4 * d_model"},
        {"vocab_size", 0, "vocabulary size; 0 takes the dataset's"},
        {"max_seq_len", 0, "longest sequence (position table size); 0 takes train.seq_len"},
    };
}

inline Dims read_dims(const Config& cfg, RunContext& ctx) {
    Dims s;
    s.n_layer = cfg.get_int("n_layer");
    s.d_model = cfg.get_int("d_model");
    s.n_head = cfg.get_int("n_head");
    s.d_ff = cfg.get_int("d_ff") > 0 ? cfg.get_int("d_ff") : 4 * s.d_model;
    s.vocab = cfg.get_int("vocab_size") > 0 ? cfg.get_int("vocab_size") : ctx.vocab_size();
    s.seq_len = cfg.get_int("max_seq_len") > 0 ? cfg.get_int("max_seq_len") : ctx.seq_len();
    s.options = torch::TensorOptions().dtype(torch::kFloat32).device(ctx.device());
    cfg.require(s.n_layer >= 0, "n_layer", "must be >= 0");
    cfg.require(s.d_model > 0, "d_model", "must be > 0");
    cfg.require(s.n_head > 0 && s.d_model % s.n_head == 0, "n_head",
                "must be > 0 and divide d_model (" + std::to_string(s.d_model) + ")");
    cfg.require(s.vocab > 0, "vocab_size", "must be > 0 (the dataset reported none)");
    cfg.require(s.vocab >= ctx.vocab_size(), "vocab_size",
                "is smaller than the dataset's vocabulary (" + std::to_string(ctx.vocab_size()) + ")");
    cfg.require(s.seq_len >= ctx.seq_len(), "max_seq_len",
                "is shorter than train.seq_len (" + std::to_string(ctx.seq_len()) + ")");
    return s;
}

// A weight and an optional bias, created directly on the run's device (no CPU copy first: a
// simulated 1.3B-parameter model on "meta" costs no memory).
struct Params : torch::nn::Module {
    Params(std::vector<int64_t> weight_shape, int64_t bias_size, const torch::TensorOptions& o) {
        weight = register_parameter("weight", torch::empty(weight_shape, o));
        if (bias_size > 0) bias = register_parameter("bias", torch::zeros({bias_size}, o));
    }
    torch::Tensor weight, bias;
};

// A linear layer's parameters [out, in] + [out]: the weight uninitialized (the model draws its
// weights in an order of its choosing), the bias zero.
inline std::shared_ptr<Params> linear(int64_t in, int64_t out, const torch::TensorOptions& o) {
    return std::make_shared<Params>(std::vector<int64_t>{out, in}, out, o);
}

// A layer norm's scale (ones) and shift (zeros).
inline std::shared_ptr<Params> norm(int64_t width, const torch::TensorOptions& o) {
    auto p = std::make_shared<Params>(std::vector<int64_t>{width}, width, o);
    torch::NoGradGuard no_grad;
    p->weight.fill_(1.0);
    return p;
}

// (On "meta" a scale and shift stands in: LibTorch 1.13 has no meta kernel for layer_norm.)
inline torch::Tensor layer_norm(const Params& p, const torch::Tensor& x) {
    if (x.is_meta()) return x * p.weight + p.bias;
    return torch::layer_norm(x, {p.weight.size(0)}, p.weight, p.bias, 1e-5);
}

// x + residual and its layer norm with p's scale and shift, fused on a GPU: see
// plexus/kit/layer_norm.hpp.
inline NormedSum residual_layer_norm(const Params& p, const torch::Tensor& x, const torch::Tensor& residual = {},
                                     bool fused = true) {
    return plexus::residual_layer_norm(p.weight, p.bias, x, residual, fused);
}

// Token embeddings plus learned positions: ids [B, T] -> [B, T, D].
inline torch::Tensor embed(const torch::Tensor& tokens, const torch::Tensor& positions, const torch::Tensor& ids) {
    const auto T = ids.size(1);
    // LibTorch 1.13 has no meta kernel for the lookup: on "meta" an all-zero one-hot product
    // stands in, with the same shape and the same gradient connectivity.
    auto looked_up = tokens.is_meta()
                         ? torch::matmul(torch::zeros({ids.size(0), T, tokens.size(0)}, tokens.options()), tokens)
                         : torch::embedding(tokens, ids);
    return looked_up + positions.narrow(0, 0, T);
}

// Causal self-attention from the fused q, k, v projection's output [B, T, 3 * heads * head_dim]:
// the heads' outputs concatenated, [B, T, heads * head_dim], before the output projection. The
// number of heads comes from the projection's width (a tensor-parallel rank holds some of them). `score_factor`
// multiplies the scores beyond 1/sqrt(head_dim) (μP: plexus/kit/mup.hpp).
inline torch::Tensor attention_of(const torch::Tensor& qkv_out, int64_t head_dim, const torch::Tensor& mask,
                                  double score_factor = 1.0) {
    const auto B = qkv_out.size(0), T = qkv_out.size(1), heads = qkv_out.size(2) / (3 * head_dim);
    // unbind, not h[0..2]: its backward stacks the three gradients once, where three selects
    // would each build a zero tensor of the whole projection and add them up. Unbound along the
    // q/k/v axis and then transposed (not permuted first), so that the stack lands in the
    // projection's own layout: permuting first left it in another, and the view back to
    // [B, T, 3D] copied all of it a second time.
    const auto h = qkv_out.view({B, T, 3, heads, head_dim}).unbind(2);
    auto q = score_factor == 1.0 ? h[0] : h[0] * score_factor;
    auto y = compat::causal_attention(q.transpose(1, 2), h[1].transpose(1, 2), h[2].transpose(1, 2), mask);
    return y.transpose(1, 2).reshape({B, T, heads * head_dim});
}

// Attention from the block's input: the fused q, k, v projection, then attention_of.
inline torch::Tensor attention_heads(const torch::Tensor& in, const Params& qkv, int64_t head_dim,
                                     const torch::Tensor& mask, double score_factor = 1.0) {
    return attention_of(torch::linear(in, qkv.weight, qkv.bias), head_dim, mask, score_factor);
}

// The MLP's activation on its first projection: gelu, tanh approximation (GPT-2).
inline torch::Tensor mlp_activation(const torch::Tensor& pre) { return torch::gelu(pre, "tanh"); }

// The MLP's hidden activations, gelu(in Wᵀ + b), before the output projection.
inline torch::Tensor mlp_hidden(const torch::Tensor& in, const Params& fc) {
    return mlp_activation(torch::linear(in, fc.weight, fc.bias));
}

}  // namespace plexus::transformer
