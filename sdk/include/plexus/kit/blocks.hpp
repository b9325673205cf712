// plexus/kit/blocks.hpp: running a model block by block, with the clock charged as it goes.
//
// Strategies that communicate between blocks (ZeRO-3 gathers, tensor-parallel all-reduces,
// pipelines) must charge compute where it happens, or the simulated cluster would issue their
// communication at the wrong time. run_blocks() charges each block's forward FLOPs after it runs
// and its backward FLOPs when backward reaches it (a hook on the block's output), and calls the
// strategy's hooks around each block.
#pragma once

#include <algorithm>
#include <functional>
#include <vector>

#include "plexus/context.hpp"
#include "plexus/error.hpp"
#include "plexus/optimizer.hpp"
#include "plexus/transport.hpp"
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

// Cuts blocks into contiguous stages so that the slowest stage is as fast as possible (exact,
// by dynamic programming). cost[s][b]: block b's cost when stage s runs it (rows differ when the
// stages' ranks differ in speed; equal rows for alike ranks). Returns stages + 1 bounds: stage s
// runs blocks [bounds[s], bounds[s + 1]), at least one each.
inline std::vector<int> balance_stages(const std::vector<std::vector<double>>& cost) {
    const int stages = static_cast<int>(cost.size());
    const int n = stages ? static_cast<int>(cost[0].size()) : 0;
    if (stages < 1 || stages > n)
        throw Error(std::to_string(stages) + " stages for " + std::to_string(n) + " blocks",
                    "use at least one stage and at most as many stages as the model has blocks");
    // prefix[s][i]: the cost of blocks [0, i) on stage s.
    std::vector<std::vector<double>> prefix(static_cast<size_t>(stages),
                                            std::vector<double>(static_cast<size_t>(n) + 1, 0));
    for (int s = 0; s < stages; ++s)
        for (int i = 0; i < n; ++i) prefix[s][i + 1] = prefix[s][i] + cost[s][i];
    const double inf = 1e300;
    // best[s][i]: the smallest possible maximum over stages [0, s) covering blocks [0, i).
    std::vector<std::vector<double>> best(static_cast<size_t>(stages) + 1,
                                          std::vector<double>(static_cast<size_t>(n) + 1, inf));
    std::vector<std::vector<int>> cut(best.size(), std::vector<int>(static_cast<size_t>(n) + 1, 0));
    best[0][0] = 0;
    for (int s = 1; s <= stages; ++s)
        for (int i = s; i <= n; ++i)
            for (int k = s - 1; k < i; ++k) {
                const double v = std::max(best[s - 1][k], prefix[s - 1][i] - prefix[s - 1][k]);
                if (v < best[s][i]) best[s][i] = v, cut[s][i] = k;
            }
    std::vector<int> bounds(static_cast<size_t>(stages) + 1, n);
    for (int s = stages, i = n; s > 0; --s) {
        bounds[s] = i;
        i = cut[s][i];
    }
    bounds[0] = 0;
    return bounds;
}

// Each block's forward and backward time on this rank (the best of `repeats`), on a micro-batch
// of `rows` sequences, by ctx.now(): measured on real hardware, charged on the simulated
// cluster (so a slower simulated rank measures slower). Gradients it leaves are zeroed.
inline std::vector<double> time_blocks(Model& model, RunContext& ctx, int64_t rows = 1, int repeats = 3) {
    const auto& blocks = model.blocks();
    const int64_t T = ctx.seq_len();
    std::vector<double> times(blocks.size(), 0.0);
    torch::Tensor x = torch::zeros({rows, T}, torch::TensorOptions().device(ctx.device()).dtype(torch::kLong));
    for (size_t b = 0; b < blocks.size(); ++b) {
        double best = 1e300;
        torch::Tensor y;
        for (int r = 0; r < repeats; ++r) {
            auto in = x.is_floating_point() ? x.detach().requires_grad_(true) : x;
            const double t0 = ctx.now();
            y = run_blocks(model, in, ctx, static_cast<double>(rows * T), true, {}, b, b + 1);
            y.backward(torch::ones_like(y));
            best = std::min(best, ctx.now() - t0);
        }
        times[b] = best;
        x = y.detach();
    }
    model.zero_grad();
    return times;
}

// One stage of a model cut into contiguous runs of blocks (pipelines, PETRA): this rank keeps
// the parameters of blocks [bounds[stage], bounds[stage + 1]) and frees the others' (their
// shapes are remembered, to rebuild the whole model's state). Every rank builds the whole model
// first, identically (RunContext::make_model), so every stage starts from the same weights.
class StagePlacement {
public:
    StagePlacement(Model& model, std::vector<int> bounds, int stage)
        : model_(model), bounds_(std::move(bounds)), stage_(stage) {
        const auto& blocks = model.blocks();
        for (const auto& block : blocks)
            if (!block->shared_parameters().empty())
                throw Error("block '" + block->block_name() +
                                "' uses a parameter another block owns, so stages cannot split it",
                            "untie it (model.tie_embeddings = false)");
        for (size_t b = 0; b < blocks.size(); ++b)
            for (const auto& item : blocks[b]->named_parameters()) {
                shapes_.push_back(item.value().sizes().vec());
                if (!owns(b)) {
                    item.value().set_data(torch::empty({0}, item.value().options()));
                    continue;
                }
                params_.push_back(item.value());
                names_.push_back(blocks[b]->block_name() + "." + item.key());
            }
    }

    int stage() const { return stage_; }
    int stages() const { return static_cast<int>(bounds_.size()) - 1; }
    size_t first_block() const { return static_cast<size_t>(bounds_[stage_]); }
    size_t last_block() const { return static_cast<size_t>(bounds_[stage_ + 1]); }  // one past
    const std::vector<int>& bounds() const { return bounds_; }
    bool owns(size_t block) const { return block >= first_block() && block < last_block(); }

    // This stage's parameters, in model order, and optimizer slots over them.
    const std::vector<torch::Tensor>& parameters() const { return params_; }
    std::vector<ParamSlot> slots() const {
        std::vector<ParamSlot> out;
        for (size_t i = 0; i < params_.size(); ++i) out.push_back({names_[i], params_[i], params_[i].sizes().vec()});
        return out;
    }

    // Every stage's parameters in model order, as "model.<block>.<name>": each broadcast from
    // its stage over `pipe` (whose rank s is stage s). Every stage must call it.
    StateDict gather(Transport& pipe, torch::Device device) const {
        StateDict out;
        const auto& blocks = model_.blocks();
        size_t k = 0;
        for (int s = 0; s < stages(); ++s)
            for (int b = bounds_[s]; b < bounds_[s + 1]; ++b)
                for (const auto& item : blocks[static_cast<size_t>(b)]->named_parameters()) {
                    auto t = s == stage_ ? item.value().detach().clone()
                                         : torch::empty(shapes_[k], torch::TensorOptions().device(device));
                    pipe.broadcast(t, s)->wait();
                    out.emplace_back("model." + blocks[static_cast<size_t>(b)]->block_name() + "." + item.key(), t);
                    ++k;
                }
        return out;
    }

    // Loads this stage's parameters from a state in gather()'s order; returns how many entries
    // of `state` the model's parameters take (what follows is the caller's).
    size_t load(const StateDict& state) const {
        torch::NoGradGuard no_grad;
        const auto& blocks = model_.blocks();
        size_t i = 0;
        for (size_t b = 0; b < blocks.size(); ++b)
            for (const auto& item : blocks[b]->named_parameters()) {
                if (owns(b)) item.value().copy_(state.at(i).second);
                ++i;
            }
        return i;
    }

    // After the strategy moved blocks between stages (the new owner set_data()'d their
    // parameters, the old one freed them): this stage now runs [bounds[stage], bounds[stage + 1]).
    void repartition(std::vector<int> bounds) {
        bounds_ = std::move(bounds);
        params_.clear();
        names_.clear();
        const auto& blocks = model_.blocks();
        for (size_t b = first_block(); b < last_block(); ++b)
            for (const auto& item : blocks[b]->named_parameters()) {
                params_.push_back(item.value());
                names_.push_back(blocks[b]->block_name() + "." + item.key());
            }
    }

    // A stage's whole state: gather()'s parameters, then this stage's optimizer state.
    StateDict state(Transport& pipe, torch::Device device, const Optimizer& optimizer) const {
        StateDict out = gather(pipe, device);
        for (auto& item : optimizer.state()) out.emplace_back("optimizer." + item.first, item.second);
        return out;
    }
    void load_state(const StateDict& state, Optimizer& optimizer) const {
        const size_t i = load(state);
        optimizer.load_state(StateDict(state.begin() + static_cast<std::ptrdiff_t>(i), state.end()));
    }

private:
    Model& model_;
    std::vector<int> bounds_;
    int stage_;
    std::vector<torch::Tensor> params_;
    std::vector<std::string> names_;
    std::vector<std::vector<int64_t>> shapes_;  // every parameter of the model, in model order
};

}  // namespace plexus
