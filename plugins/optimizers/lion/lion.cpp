// optimizers/lion: Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the
// step is the sign of an interpolation between the momentum and the gradient, so every
// coordinate moves by exactly the learning rate; the momentum itself is a slower average:
//     p <- p * (1 - lr * wd) - lr * sign(beta1 * m + (1 - beta1) * g)
//     m <- beta2 * m + (1 - beta2) * g
// Update order and defaults (lr 1e-4, betas 0.9 and 0.99, no decay) as in the authors' code
// (github.com/google/automl, lion/lion_pytorch.py @87461ee). As plexus's AdamW, decay applies to
// matrices only unless decay_vectors is set (the authors' class decays whatever it is given).
// Element-wise: a piece of a sharded parameter updates as the whole would. Its update is normalized
// entry-wise, so on a μP model it takes μAdam's per-layer rates (plexus/width.hpp).
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>

namespace {

class Lion : public plexus::Optimizer {
public:
    Lion(const plexus::Config& cfg, std::vector<plexus::ParamSlot> slots) : slots_(std::move(slots)) {
        lr_ = cfg.get_double("lr");
        cfg.require(std::isfinite(lr_) && lr_ >= 0, "lr", "must be a finite number >= 0 (0 freezes the parameters)");
        const auto betas = cfg.get_doubles("betas");
        cfg.require(betas.size() == 2, "betas", "must hold two numbers [beta1, beta2]");
        beta1_ = betas[0];
        beta2_ = betas[1];
        cfg.require(beta1_ >= 0 && beta1_ < 1 && beta2_ >= 0 && beta2_ < 1, "betas", "must lie in [0, 1)");
        weight_decay_ = cfg.get_double("weight_decay");
        const bool decay_vectors = cfg.get_bool("decay_vectors");
        const bool width_scaling = cfg.get_bool("width_scaling");
        for (const auto& s : slots_) {
            rate_factors_.push_back(width_scaling ? plexus::adam_rate_factor(s.width_role, s.width_mult) : 1.0);
            exp_avg_.push_back(torch::zeros_like(s.param));
            decays_.push_back(decay_vectors || s.full_shape.size() >= 2);
            numel_ += s.param.numel();
        }
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        ++step_;
        const double lr = lr_ * lr_scale;
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& p = slots_[i].param;
            auto& m = exp_avg_[i];
            if (decays_[i] && weight_decay_ != 0) p.mul_(1.0 - lr * weight_decay_);
            p.add_(torch::lerp(m, grads[i], 1.0 - beta1_).sign_(), -lr * rate_factors_[i]);
            m.lerp_(grads[i], 1.0 - beta2_);
        }
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(step_, torch::kInt64));
        for (size_t i = 0; i < slots_.size(); ++i)
            out.emplace_back(std::to_string(i) + "." + slots_[i].name + ".exp_avg", exp_avg_[i].clone());
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        if (state.size() != 1 + slots_.size())
            throw plexus::Error("lion: optimizer state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(1 + slots_.size()),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        step_ = state[0].second.item<int64_t>();
        for (size_t i = 0; i < slots_.size(); ++i) exp_avg_[i].copy_(state[1 + i].second);
    }

    // Per element: decay 1, interpolation 3, sign 1, update 1, momentum 3.
    double flops_per_step() const override { return 9.0 * static_cast<double>(numel_); }

private:
    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> exp_avg_;
    std::vector<bool> decays_;
    std::vector<double> rate_factors_;  // μP's per-slot factor on the rate; 1 outside μP
    double lr_, beta1_, beta2_, weight_decay_;
    int64_t step_ = 0, numel_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "lion";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "Lion: the sign of interpolated momentum (Chen et al. 2023)";
    d.schema = {
        {"lr", 1e-4, "peak learning rate (scaled by the schedule in [train]); typically 3-10x below AdamW's"},
        {"betas", plexus::Value::list({0.9, 0.99}),
         "beta1 interpolates momentum and gradient for the step, beta2 averages the momentum"},
        plexus::ConfigKey("weight_decay", 0.0, "decoupled weight decay, multiplied by the current learning rate")
            .at_least(0),
        {"decay_vectors", false, "also decay 1-D parameters (biases, norms)"},
        {"width_scaling", true,
         "on a μP model, hidden matrices' rates / their width multiplier, as μAdam (false: one rate for all)"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<Lion>(cfg, std::move(slots));
    };
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "width_scaling";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
