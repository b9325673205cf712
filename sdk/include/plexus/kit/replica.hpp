// plexus/kit/replica.hpp: a base for strategies in which each rank holds the whole model and one
// optimizer over all of its parameters (single, DDP; later the inner loop of DiLoCo, gossip).
// It builds the model and optimizer through the RunContext and writes once what such
// strategies share: the micro-batch forward/backward loop, the optimizer update with clipping,
// evaluation, and the state. A subclass writes step() from these pieces and adds its
// communication in between.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include <torch/torch.h>

#include "plexus/context.hpp"
#include "plexus/strategy.hpp"
#include "plexus/kit/util.hpp"

namespace plexus {

class ReplicaStrategy : public Strategy {
public:
    double evaluate(BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        model_->eval();
        double total = 0;
        for (int64_t i = 0; i < batches; ++i) {
            auto batch = stream.next();
            total += value_of(model_->loss(model_->forward(batch.inputs), batch.targets));
        }
        model_->train();
        return batches > 0 ? total / static_cast<double>(batches) : 0.0;
    }

    // "model.<name>" for every parameter, then "optimizer.<key>" for the optimizer's state.
    StateDict state() const override {
        StateDict out;
        for (const auto& item : model_->named_parameters())
            out.emplace_back("model." + item.key(), item.value().detach().clone());
        for (auto& item : optimizer_->state()) out.emplace_back("optimizer." + item.first, item.second);
        return out;
    }

    void load_state(const StateDict& state) override {
        torch::NoGradGuard no_grad;
        auto named = model_->named_parameters();
        if (state.size() < named.size())
            throw Error("the state has fewer tensors than the model has parameters",
                        "the state comes from another model configuration");
        for (size_t i = 0; i < named.size(); ++i) named[i].value().copy_(state[i].second);
        optimizer_->load_state(StateDict(state.begin() + static_cast<std::ptrdiff_t>(named.size()), state.end()));
    }

protected:
    // With make_optimizer = false the subclass builds optimizer_ itself (over shards: ACCO).
    explicit ReplicaStrategy(RunContext& ctx, bool make_optimizer = true) : ctx_(ctx) {
        model_ = ctx.make_model();
        auto slots = slots_of(*model_);
        for (const auto& s : slots) {
            params_.push_back(s.param);
            names_.push_back(s.name);
        }
        if (make_optimizer) optimizer_ = ctx.make_optimizer(std::move(slots));
        flops_per_token_ = model_->flops_per_token(ctx.seq_len()).flops;
        // The backward pass is charged to the clock as it goes: each parameter's gradient hook
        // charges its share (by size) of the backward FLOPs, so that a communication started
        // from a later hook (DDP) is issued at the right simulated time. Registered first, these
        // hooks run before any a subclass adds.
        double total = 0;
        for (const auto& p : params_) total += static_cast<double>(p.numel());
        for (const auto& p : params_) {
            const double share = static_cast<double>(p.numel()) / total;
            p.register_hook([this, share](const torch::Tensor&) {
                const double flops = share * backward_flops_pending_total_;
                backward_flops_charged_ += flops;
                ctx_.charge_compute(flops);
            });
        }
    }

    // Forward and backward over `micro_batches` batches of `data`, each loss scaled by
    // 1/micro_batches so that the gradients are the mean. `before_each(i)` runs before
    // micro-batch i (DDP marks the last one). Fills out.tokens and out.micro_batches; returns
    // the mean loss (a detached scalar tensor: no host sync here).
    torch::Tensor forward_backward(BatchStream& data, int64_t micro_batches, StepOutput& out,
                                   const std::function<void(int64_t)>& before_each = {}) {
        model_->train();
        torch::Tensor loss_sum;
        for (int64_t i = 0; i < micro_batches; ++i) {
            if (before_each) before_each(i);
            auto batch = data.next();
            auto loss = model_->loss(model_->forward(batch.inputs), batch.targets);
            // Forward is a third of the training FLOPs, backward two thirds (charged by the hooks;
            // what no hook charged, e.g. a parameter the loss does not reach, is charged after).
            const double tokens = static_cast<double>(batch.tokens());
            ctx_.charge_compute(flops_per_token_ * tokens / 3);
            backward_flops_pending_total_ = flops_per_token_ * tokens * 2 / 3;
            backward_flops_charged_ = 0;
            (micro_batches > 1 ? loss / static_cast<double>(micro_batches) : loss).backward();
            if (backward_flops_pending_total_ > backward_flops_charged_)
                ctx_.charge_compute(backward_flops_pending_total_ - backward_flops_charged_);
            backward_flops_pending_total_ = 0;
            loss_sum = i == 0 ? loss.detach() : loss_sum + loss.detach();
            out.tokens += batch.tokens();
            ++out.micro_batches;
        }
        return loss_sum / static_cast<double>(micro_batches);
    }

    // Each parameter's gradient (a zero one for a parameter the loss did not reach).
    std::vector<torch::Tensor> gradients() {
        std::vector<torch::Tensor> grads;
        grads.reserve(params_.size());
        for (auto& p : params_) {
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            grads.push_back(p.grad());
        }
        return grads;
    }

    // Clips, steps the optimizer, clears the gradients, charges the optimizer's compute.
    // (forward_backward charged the model's.) Gradients are dropped, not zeroed: the next
    // backward then hands each parameter its new gradient tensor as it is, where zeroed ones
    // would cost a pass to zero them and another to add the new gradient in (PyTorch's
    // zero_grad(set_to_none=True)). Gradients that view a flat buffer (view_gradients) are
    // zeroed instead, so that they stay bound to it.
    void update(const StepInput& in, StepOutput& out, const std::vector<torch::Tensor>& grads) {
        out.grad_norm = global_norm(grads);
        optimizer_->step_scaled(grads, in.lr_scale, clip_factor(out.grad_norm, in.max_grad_norm));
        std::vector<torch::Tensor> bound;
        for (auto& p : params_) {
            if (p.grad().defined() && p.grad().is_view())
                bound.push_back(p.grad());
            else
                p.mutable_grad() = torch::Tensor();
        }
        zero_all(bound);
        ctx_.charge_compute(optimizer_->flops_per_step());
        // What this rank holds between steps: parameters, gradients, optimizer state (the last
        // measured once, after the first step has created it). Sharded strategies report the same.
        if (state_bytes_ < 0) state_bytes_ = training_state_bytes(params_, *optimizer_);
        ctx_.record("state_bytes", static_cast<double>(state_bytes_));
    }

    RunContext& ctx_;
    std::shared_ptr<Model> model_;
    std::vector<torch::Tensor> params_;
    std::vector<std::string> names_;  // of params_, as named_parameters() names them
    std::unique_ptr<Optimizer> optimizer_;
    double flops_per_token_ = 0;

private:
    int64_t state_bytes_ = -1;
    double backward_flops_pending_total_ = 0;  // of the micro-batch in backward now
    double backward_flops_charged_ = 0;
};

}  // namespace plexus
