// An optimizer (SGD with momentum) that breaks one promise on request (optimizer.breaks), for the
// tests of `plexus check`. "none": correct.
#include <plexus/plexus.hpp>

namespace {

class Broken : public plexus::Optimizer {
public:
    Broken(const plexus::Config& cfg, std::vector<plexus::ParamSlot> slots)
        : breaks_(cfg.get_string("breaks")), lr_(cfg.get_double("lr")), slots_(std::move(slots)) {
        for (const auto& s : slots_) momentum_.push_back(torch::zeros_like(s.param));
    }
    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        const double lr = breaks_ == "lr0_moves" ? lr_ : lr_ * lr_scale;
        for (size_t i = 0; i < slots_.size(); ++i) {
            momentum_[i].mul_(0.9).add_(grads[i]);
            slots_[i].param.add_(momentum_[i], -lr);
        }
    }
    // "scale_ignored": a fold of the clipping factor that forgets to apply it.
    void step_scaled(const std::vector<torch::Tensor>& grads, double lr_scale, double grad_scale) override {
        if (breaks_ == "scale_ignored") return step(grads, lr_scale);
        Optimizer::step_scaled(grads, lr_scale, grad_scale);
    }
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (size_t i = 0; i < momentum_.size(); ++i)
            out.emplace_back("momentum." + std::to_string(i), momentum_[i].clone());
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        if (breaks_ == "state_lossy") return;
        for (size_t i = 0; i < momentum_.size(); ++i) momentum_[i].copy_(state[i].second);
    }

private:
    std::string breaks_;
    double lr_;
    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> momentum_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "broken_optimizer";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "an optimizer that breaks one promise on request (tests of plexus check)";
    d.schema = {{"lr", 0.1, "learning rate"},
                plexus::ConfigKey("breaks", "none", "which promise to break")
                    .one_of({"none", "lr0_moves", "state_lossy", "scale_ignored"})};
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<Broken>(cfg, std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
