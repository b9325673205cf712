// plexus/kit/recompute.hpp: activation checkpointing for model plugins.
//
// A block wrapped by checkpointed(f, x) keeps only its input during the forward pass; the
// backward pass runs f again from that input, with a graph, and backpropagates through it. The
// parameters' gradients land in their .grad as in an ordinary backward (so strategies that hook
// gradient accumulation see them), bit for bit the same: the recomputation is the same
// arithmetic on the same values. The memory of a block's activations is traded for one more
// forward of it.
//
// Models offer it with activation_checkpointing_key() (`model.activation_checkpointing = k`:
// every k-th block recomputes; 0, the default, none) and recomputes(index, k).
#pragma once

#include <cstdint>
#include <functional>

#include <torch/torch.h>

#include "plexus/config.hpp"

namespace plexus::recompute {

// A block's computation, input to output. It must compute the same values when run twice (no
// dropout drawn inside) and outlive the backward pass (hold it in the block).
using BlockFunction = std::function<torch::Tensor(const torch::Tensor&)>;

// The autograd node: forward without a graph, keeping x; backward recomputes, then backpropagates.
struct Recompute : torch::autograd::Function<Recompute> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, const BlockFunction* f) {
        ctx->save_for_backward({x});
        ctx->saved_data["f"] = reinterpret_cast<int64_t>(f);
        torch::NoGradGuard no_grad;
        return (*f)(x);
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad) {
        const auto* f = reinterpret_cast<const BlockFunction*>(ctx->saved_data["f"].toInt());
        auto x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
        torch::Tensor y;
        {
            torch::AutoGradMode with_graph(true);
            y = (*f)(x);
        }
        torch::autograd::backward({y}, {grad[0]});
        return {x.grad(), torch::Tensor()};
    }
};

// f(x), its activations recomputed in backward; plainly f(x) where no graph is being built.
inline torch::Tensor checkpointed(const BlockFunction& f, const torch::Tensor& x) {
    if (!torch::GradMode::is_enabled() || !x.requires_grad()) return f(x);
    return Recompute::apply(x, &f);
}

// The model setting, and which blocks it selects (block index 0, k, 2k, ...).
inline ConfigKey activation_checkpointing_key() {
    return ConfigKey("activation_checkpointing", 0,
                     "recompute the activations of every k-th layer in backward instead of keeping them "
                     "(1: every layer); 0: keep all")
        .at_least(0);
}
inline bool recomputes(int64_t index, int64_t every) { return every > 0 && index % every == 0; }

}  // namespace plexus::recompute
