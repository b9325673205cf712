// plexus/kit/layer_norm.hpp: a pre-norm transformer's residual add and layer norm as one operation,
// with plexus's own fused GPU kernels behind it. Include where needed (plexus/kit/transformer.hpp
// does); models/gpt uses it.
//
//   auto [x1, h1] = residual_layer_norm(ln1, x);          // x1 is x; h1 = LN(x)
//   auto [a, h2] = residual_layer_norm(ln2, x1, delta);   // a = x1 + delta; h2 = LN(a)
//
// It returns the sum as well as its norm because a pre-norm block uses both: the sum carries on
// down the residual stream, the norm feeds the next matrix product. The values are those of
//
//   sum = residual.defined() ? x + residual : x;  normed = layer_norm(sum)
//
// and so are the gradients. What differs is the memory traffic, which on a GPU is what these
// elementwise operations cost. On a GPU, with `fused` true and x in float32, one kernel reads x
// and the residual and writes the sum and the norm, the norm already in autocast's dtype
// (bfloat16 under train.precision = "bf16": the cast the next product would make); backward,
// one kernel writes the gradient of x with the gradient arriving along the residual stream
// already added (the sum that autograd would make as a separate pass) and the residual's
// gradient in its own dtype. LibTorch's separate kernels read and write the [tokens, width]
// activations about twice as often.
//
// Elsewhere (the CPU, "meta", `fused` false, another dtype) it is the composite above, with
// LibTorch's own kernels: the same values, so a model can call it unconditionally.
#pragma once

#include <vector>

#include <torch/torch.h>

#include "plexus/kit/compat.hpp"
#include "plexus/operators.hpp"

namespace plexus {

// The result of residual_layer_norm: the residual stream's new value and its layer norm.
struct NormedSum {
    torch::Tensor sum;     // x + residual (x itself, the same tensor's values, without a residual)
    torch::Tensor normed;  // layer_norm(sum) * weight + bias, in autocast's dtype on the fused path
};

namespace detail {

// The operators behind the fused path (registered by the host, see plexus/operators.hpp):
//   plexus::layer_norm_forward(x, residual?, weight, bias, eps, out_dtype)
//       -> (sum [empty without a residual], normed, mean [rows], rstd [rows])
//   plexus::layer_norm_backward(grad_normed?, grad_sum?, sum, mean, rstd, weight, residual_dtype?)
//       -> (grad_x, grad_residual [empty without a residual], grad_weight, grad_bias)
// with LibTorch's kernels on the CPU and plexus's fused ones in CUDA builds (host/kernels/).
inline bool host_layer_norm_on(c10::DispatchKey key) { return host_kernel_on("plexus::layer_norm_forward", key); }

// apply(x, residual, weight, bias, eps, out_dtype) or, without a residual,
// apply(x, weight, bias, eps, out_dtype) -> {sum, normed}. (Two forms because LibTorch 1.13's
// autograd takes no undefined tensor as an input.)
struct ResidualLayerNormFunction : torch::autograd::Function<ResidualLayerNormFunction> {
    using Tensors4 = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;

    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                  const torch::Tensor& residual, const torch::Tensor& weight,
                                                  const torch::Tensor& bias, double eps, c10::ScalarType out_dtype) {
        return run_forward(ctx, x, residual, weight, bias, eps, out_dtype);
    }
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                  const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                                  c10::ScalarType out_dtype) {
        return run_forward(ctx, x, torch::Tensor(), weight, bias, eps, out_dtype);
    }

    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        static const auto op =
            host_operator("plexus::layer_norm_backward")
                ->typed<Tensors4(const c10::optional<torch::Tensor>&, const c10::optional<torch::Tensor>&,
                                 const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                 c10::optional<c10::ScalarType>)>();
        const auto saved = ctx->get_saved_variables();
        const auto code = ctx->saved_data["residual_dtype"].toInt();
        const auto residual_dtype =
            code < 0 ? c10::nullopt : c10::optional<c10::ScalarType>(static_cast<c10::ScalarType>(code));
        auto given = [](const torch::Tensor& g) {
            return g.defined() ? c10::optional<torch::Tensor>(g) : c10::nullopt;
        };
        auto [grad_x, grad_residual, grad_weight, grad_bias] =
            op.call(given(grads[1]), given(grads[0]), saved[0], saved[1], saved[2], saved[3], residual_dtype);
        // One gradient per argument of the forward that ran, none for eps and out_dtype.
        if (residual_dtype) return {grad_x, grad_residual, grad_weight, grad_bias, torch::Tensor(), torch::Tensor()};
        return {grad_x, grad_weight, grad_bias, torch::Tensor(), torch::Tensor()};
    }

private:
    static torch::autograd::variable_list run_forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                                                      const torch::Tensor& residual, const torch::Tensor& weight,
                                                      const torch::Tensor& bias, double eps,
                                                      c10::ScalarType out_dtype) {
        static const auto op =
            host_operator("plexus::layer_norm_forward")
                ->typed<Tensors4(const torch::Tensor&, const c10::optional<torch::Tensor>&, const torch::Tensor&,
                                 const torch::Tensor&, double, c10::ScalarType)>();
        const auto maybe_residual = residual.defined() ? c10::optional<torch::Tensor>(residual) : c10::nullopt;
        auto [sum, normed, mean, rstd] = op.call(x, maybe_residual, weight, bias, eps, out_dtype);
        if (!residual.defined()) sum = x;  // returned as it came: autograd hands us its gradient
        ctx->save_for_backward({sum, mean, rstd, weight});
        // An output nobody used (the head's sum) arrives undefined, not as a tensor of zeros to read.
        ctx->set_materialize_grads(false);
        ctx->saved_data["residual_dtype"] =
            residual.defined() ? static_cast<int64_t>(residual.scalar_type()) : static_cast<int64_t>(-1);
        return {sum, normed};
    }
};

}  // namespace detail

// x + residual (or x alone: pass no residual) and its layer norm over the last dimension, with
// `weight` and `bias` of that width and LibTorch's eps (1e-5). `fused` picks plexus's kernels
// where there are some (see the top of this file); false always takes LibTorch's.
inline NormedSum residual_layer_norm(const torch::Tensor& weight, const torch::Tensor& bias, const torch::Tensor& x,
                                     const torch::Tensor& residual = {}, bool fused = true) {
    constexpr double eps = 1e-5;
    if (fused && x.is_cuda() && x.scalar_type() == torch::kFloat && weight.scalar_type() == torch::kFloat &&
        detail::host_layer_norm_on(c10::DispatchKey::CUDA)) {
        const auto out_dtype = compat::autocast_dtype(c10::DeviceType::CUDA);
        using detail::ResidualLayerNormFunction;
        auto outs = residual.defined() ? ResidualLayerNormFunction::apply(x, residual, weight, bias, eps, out_dtype)
                                       : ResidualLayerNormFunction::apply(x, weight, bias, eps, out_dtype);
        return {outs[0], outs[1]};
    }
    auto sum = residual.defined() ? x + residual : x;
    // LibTorch 1.13 has no meta kernel for layer_norm: on "meta" a scale and shift stands in.
    if (sum.is_meta()) return {sum, sum * weight + bias};
    return {sum, torch::layer_norm(sum, {weight.size(0)}, weight, bias, eps)};
}

}  // namespace plexus
