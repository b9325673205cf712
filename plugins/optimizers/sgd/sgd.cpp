// optimizers/sgd: SGD with optional momentum, Nesterov momentum and L2 weight decay,
// with PyTorch's update order (the first momentum buffer is the gradient itself).
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>

namespace {

class Sgd : public plexus::Optimizer {
public:
    Sgd(const plexus::Config& cfg, std::vector<plexus::ParamSlot> slots) : slots_(std::move(slots)) {
        lr_ = cfg.get_double("lr");
        momentum_ = cfg.get_double("momentum");
        nesterov_ = cfg.get_bool("nesterov");
        weight_decay_ = cfg.get_double("weight_decay");
        cfg.require(std::isfinite(lr_) && lr_ >= 0, "lr", "must be a finite number >= 0 (0 freezes the parameters)");
        cfg.require(momentum_ >= 0 && momentum_ < 1, "momentum", "must lie in [0, 1)");
        cfg.require(!nesterov_ || momentum_ > 0, "nesterov", "needs momentum > 0");
        for (const auto& s : slots_) {
            buffers_.push_back(torch::zeros_like(s.param));
            scratch_.push_back(torch::empty_like(s.param));
            numel_ += s.param.numel();
        }
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        const double lr = lr_ * lr_scale;
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& p = slots_[i].param;
            torch::Tensor d = grads[i];
            if (weight_decay_ != 0) d = scratch_[i].copy_(d).add_(p, weight_decay_);
            if (momentum_ > 0) {
                if (steps_ == 0)
                    buffers_[i].copy_(d);
                else
                    buffers_[i].mul_(momentum_).add_(d);
                d = nesterov_ ? scratch_[i].copy_(d).add_(buffers_[i], momentum_) : buffers_[i];
            }
            p.add_(d, -lr);
        }
        ++steps_;
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(steps_, torch::kInt64));
        for (size_t i = 0; i < slots_.size(); ++i)
            out.emplace_back(std::to_string(i) + "." + slots_[i].name + ".momentum", buffers_[i].clone());
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        if (state.size() != 1 + slots_.size())
            throw plexus::Error("sgd: optimizer state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(1 + slots_.size()),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        steps_ = state[0].second.item<int64_t>();
        for (size_t i = 0; i < slots_.size(); ++i) buffers_[i].copy_(state[1 + i].second);
    }

    double flops_per_step() const override { return 5.0 * static_cast<double>(numel_); }

private:
    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> buffers_, scratch_;
    double lr_, momentum_, weight_decay_;
    bool nesterov_;
    int64_t steps_ = 0;
    int64_t numel_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "sgd";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "SGD with momentum, Nesterov momentum and L2 weight decay (PyTorch's update rule)";
    d.schema = {
        {"lr", 0.1, "peak learning rate (scaled by the schedule in [train])"},
        {"momentum", 0.0, "momentum factor; 0 disables momentum"},
        {"nesterov", false, "Nesterov momentum (needs momentum > 0)"},
        {"weight_decay", 0.0, "L2 penalty added to the gradient"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<Sgd>(cfg, std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
