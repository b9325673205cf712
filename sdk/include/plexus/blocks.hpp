// plexus/blocks.hpp: running a model block by block, with the clock charged as it goes.
//
// Strategies that communicate between blocks (ZeRO-3 gathers, tensor-parallel all-reduces,
// pipelines) must charge compute where it happens, or the simulated cluster would issue their
// communication at the wrong time. run_blocks() charges each block's forward FLOPs after it runs
// and its backward FLOPs when backward reaches it (a hook on the block's output), and calls the
// strategy's hooks around each block.
#pragma once

#include <functional>

#include "plexus/context.hpp"
#include "plexus/model.hpp"

namespace plexus {

struct BlockHooks {
    std::function<void(size_t)> before_forward;   // before block i runs forward
    std::function<void(size_t)> after_forward;    // after block i ran forward
    std::function<void(size_t)> before_backward;  // when backward reaches block i's output
    // Replaces block i's output before the next block gets it (sequence parallelism scatters
    // and gathers the sequence dimension at the edges of the parallel blocks).
    std::function<torch::Tensor(size_t, const torch::Tensor&)> between;
};

// Blocks [first, last) of `model` on `x`. `tokens`: tokens in the batch (for the FLOPs). With
// `train` false (evaluation) nothing is charged and no backward hook is set.
inline torch::Tensor run_blocks(Model& model, torch::Tensor x, RunContext& ctx, double tokens, bool train,
                                const BlockHooks& hooks = {}, size_t first = 0, size_t last = SIZE_MAX) {
    const auto& blocks = model.blocks();
    last = std::min(last, blocks.size());
    const int64_t seq_len = ctx.seq_len();
    for (size_t i = first; i < last; ++i) {
        if (hooks.before_forward) hooks.before_forward(i);
        x = blocks[i]->forward(x);
        if (train) {
            const double flops = blocks[i]->flops_per_token(seq_len) * tokens;  // forward 1/3, backward 2/3
            ctx.charge_compute(flops / 3);
            if (x.requires_grad())
                x.register_hook([&ctx, i, flops, before = hooks.before_backward](const torch::Tensor&) {
                    if (before) before(i);
                    ctx.charge_compute(flops * 2 / 3);
                });
        }
        if (hooks.after_forward) hooks.after_forward(i);
        if (hooks.between) x = hooks.between(i, x);
    }
    return x;
}

}  // namespace plexus
