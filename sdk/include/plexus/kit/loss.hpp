// plexus/kit/loss.hpp: the next-token cross-entropy, with a backward that turns its saved
// log-probabilities into the gradient in place. Include where needed; every language model
// plugin uses it.
//
//   loss = cross_entropy(logits, targets);   // logits [..., V], targets [...] ids in [0, V)
//
// It equals torch::nn::functional::cross_entropy with mean reduction (no ignored index: every
// target must be a valid id; an out-of-range one is an error, as there). The difference is the
// work done on the logits, which at GPT vocabularies is the largest elementwise tensor of a step:
//
//   torch's composite: forward log_softmax (saved) and a gather; backward a zero-filled [N, V]
//     gradient, a scatter into it, log_softmax's backward (two reads, one write, one sum), and
//     under bf16 autocast a cast of the float gradient back to bf16.
//   this one: forward the same log_softmax (saved, in float) and gather; backward turns the
//     saved log p into p * g / N in place (bf16 logits: written straight in bf16), then
//     overwrites the N target entries with (p - 1) * g / N computed in float.
//   on a GPU (CUDA builds): plexus's kernels. Forward reads the logits once and keeps two
//     floats per row; backward writes (p - [j = target]) * g / N in the logits' dtype in one
//     pass. An id outside [0, V) makes the loss NaN there (no error: checking
//     would wait for the GPU), which the harness reports as a diverged run.
//
// Reduced-precision logits (bf16 under autocast) are normalized in float, as torch's autocast
// does for its cross-entropy, and the target entries keep float accuracy: p close to 1 does not
// cancel in bf16.
#pragma once

#include <limits>

#include <torch/torch.h>

#include "plexus/operators.hpp"

namespace plexus {

namespace detail {

struct CrossEntropyFunction : torch::autograd::Function<CrossEntropyFunction> {
    // logits [N, V], targets [N]
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                                 const torch::Tensor& targets) {
        // float at least: bf16 and fp16 logits are normalized in float, double stays double.
        auto log_probs = torch::log_softmax(logits, 1, at::promote_types(logits.scalar_type(), torch::kFloat));
        // The lowest int64 as the ignored index: no id matches it, so a negative target (torch's
        // default ignore index -100 among them) fails the bounds check instead of being skipped.
        auto loss = torch::nll_loss(log_probs, targets, {}, at::Reduction::Mean, std::numeric_limits<int64_t>::min());
        ctx->save_for_backward({log_probs, targets});
        ctx->saved_data["dtype"] = static_cast<int64_t>(logits.scalar_type());
        return loss;
    }

    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::tensor_list grad_outputs) {
        const auto saved = ctx->get_saved_variables();
        auto log_probs = saved[0];
        const auto targets = saved[1].unsqueeze(1);
        const auto dtype = static_cast<torch::ScalarType>(ctx->saved_data["dtype"].toInt());
        // A 0-dim tensor, not a number: reading it would wait for a GPU.
        const auto scale = grad_outputs[0].to(log_probs.scalar_type()) / static_cast<double>(log_probs.size(0));
        const auto at_targets = (log_probs.gather(1, targets).exp() - 1.0).mul_(scale);
        // The saved log-probabilities become the probabilities in place: no second [N, V] buffer.
        // (A second backward through this graph, retain_graph, then stops with torch's error about
        // a saved tensor modified in place, instead of computing from wrong values.)
        auto probs = log_probs.exp_();
        torch::Tensor grad;
        if (dtype == probs.scalar_type()) {
            grad = probs.mul_(scale);
        } else {
            grad = torch::empty(probs.sizes(), probs.options().dtype(dtype));
            torch::mul_out(grad, probs, scale);
        }
        grad.scatter_(1, targets, at_targets.to(dtype));
        return {grad, torch::Tensor()};
    }
};

// On a GPU: the host's operators (plexus/operators.hpp), plexus's fused kernels in CUDA builds:
//   plexus::cross_entropy_forward(logits [N, V], targets [N]) -> (mean loss, stats [N, 2])
//   plexus::cross_entropy_backward(grad_loss, logits, targets, stats) -> grad_logits
// stats holds each row's log-sum-exp and that of its logits other than the target's, from which
// p_target - 1 is computed without cancelling. Only the logits (as given, bf16 under autocast)
// and these two floats per row are kept for backward.
struct FusedCrossEntropyFunction : torch::autograd::Function<FusedCrossEntropyFunction> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& logits,
                                 const torch::Tensor& targets) {
        static const auto op =
            host_operator("plexus::cross_entropy_forward")
                ->typed<std::tuple<torch::Tensor, torch::Tensor>(const torch::Tensor&, const torch::Tensor&)>();
        auto [loss, stats] = op.call(logits, targets);
        ctx->save_for_backward({logits, targets, stats});
        return loss;
    }

    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::tensor_list grad_outputs) {
        static const auto op = host_operator("plexus::cross_entropy_backward")
                                   ->typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&,
                                                         const torch::Tensor&, const torch::Tensor&)>();
        const auto saved = ctx->get_saved_variables();
        return {op.call(grad_outputs[0], saved[0], saved[1], saved[2]), torch::Tensor()};
    }
};

}  // namespace detail

// Mean next-token cross-entropy of logits [..., V] against target ids [...].
inline torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
    const auto flat_logits = logits.reshape({-1, logits.size(-1)});
    const auto flat_targets = targets.reshape({-1});
    // "meta" tensors carry shapes only: torch's composite gives the same shapes and gradient flow.
    if (logits.is_meta()) return torch::nn::functional::cross_entropy(flat_logits, flat_targets);
    if (logits.is_cuda() && detail::host_kernel_on("plexus::cross_entropy_forward", c10::DispatchKey::CUDA))
        return detail::FusedCrossEntropyFunction::apply(flat_logits, flat_targets);
    return detail::CrossEntropyFunction::apply(flat_logits, flat_targets);
}

}  // namespace plexus
