// signSGD (Bernstein et al. 2018): p -= lr * sign(g). A whole optimizer plugin in one file.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class SignSgd : public plexus::Optimizer {
public:
    SignSgd(double lr, std::vector<plexus::ParamSlot> slots) : lr_(lr), slots_(std::move(slots)) {}
    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < slots_.size(); ++i) slots_[i].param.add_(grads[i].sign(), -lr_ * lr_scale);
    }
    plexus::StateDict state() const override { return {}; }
    void load_state(const plexus::StateDict&) override {}

private:
    double lr_;
    std::vector<plexus::ParamSlot> slots_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "signsgd";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "0.1";
    d.summary = "signSGD, built out of tree against the installed SDK";
    d.schema = {{"lr", 1e-3, "step size"}};
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<SignSgd>(cfg.get_double("lr"), std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
