// A model plugin that misbehaves on purpose at a given training step: it crashes (SIGSEGV),
// throws, leaks memory without bound, or hangs. A sweep must contain each to its own run.
#include <csignal>
#include <cstring>
#include <thread>
#include <vector>

#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Weights : public plexus::Block {
public:
    Weights() { w = register_parameter("w", torch::zeros({4})); }
    torch::Tensor forward(const torch::Tensor& tokens) override { return tokens; }
    double flops_per_token(int64_t) const override { return 0; }
    torch::Tensor w;
};

class Misbehaving : public plexus::Model {
public:
    Misbehaving(std::string action, int64_t at_step) : action_(std::move(action)), at_step_(at_step) {
        weights_ = std::make_shared<Weights>();
        add_block("weights", weights_);
    }
    torch::Tensor forward(const torch::Tensor& tokens) override { return tokens; }
    torch::Tensor loss(const torch::Tensor&, const torch::Tensor&) override {
        if (is_training() && calls_++ >= at_step_) misbehave();
        return (weights_->w - 1).pow(2).sum();
    }
    plexus::FlopsPerToken flops_per_token(int64_t) const override { return {8.0, "8 (a test model)", 4}; }

private:
    void misbehave() {
        if (action_ == "segfault") std::raise(SIGSEGV);
        if (action_ == "throw") throw plexus::Error("misbehaving: thrown on purpose", "a test of failure handling");
        if (action_ == "leak") {
            // 64 MiB more, touched (resident), every step, never freed.
            static std::vector<char*> leaked;
            leaked.push_back(new char[64 << 20]);
            std::memset(leaked.back(), 1, 64 << 20);
        }
        if (action_ == "hang")  // deaf to SIGTERM's polite flag: only a kill ends it
            for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
    }
    std::string action_;
    int64_t at_step_, calls_ = 0;
    std::shared_ptr<Weights> weights_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "misbehaving";
    d.kind = plexus::PluginKind::Model;
    d.version = "0.1";
    d.summary = "test plugin: crashes, throws, leaks or hangs at a given step";
    d.schema = {{"action", "none", "none, segfault, throw, leak or hang"},
                {"at_step", 3, "the training step it starts at"}};
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext&) -> std::shared_ptr<plexus::Model> {
        return std::make_shared<Misbehaving>(cfg.get_string("action"), cfg.get_int("at_step"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
