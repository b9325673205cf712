// A strategy that breaks one promise on request (strategy.breaks), for the tests of `plexus check`:
// each check must catch its own breakage. "none": a correct one-rank strategy.
#include <random>

#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

class Broken : public plexus::ReplicaStrategy {
public:
    Broken(const plexus::Config& cfg, plexus::RunContext& ctx)
        : ReplicaStrategy(ctx), breaks_(cfg.get_string("breaks")) {}

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, 1, out);
        update(in, out, gradients());
        if (breaks_ == "nondeterministic") nudge(static_cast<double>(std::random_device{}()) * 1e-12);
        out.loss = plexus::value_of(loss);
        return out;
    }
    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        if (breaks_ == "evaluate_mutates") nudge(1e-3);
        // Evaluates something other than its model (a replica off by a constant, say).
        if (breaks_ == "evaluates_elsewhere") return ReplicaStrategy::evaluate(stream, batches) + 0.01;
        return ReplicaStrategy::evaluate(stream, batches);
    }
    plexus::StateDict state() const override {
        auto all = ReplicaStrategy::state();
        if (breaks_ == "state_incomplete") all.resize(all.size() - 1);  // the optimizer's last tensor left out
        return all;
    }
    void load_state(const plexus::StateDict& state) override {
        if (breaks_ == "load_ignored") return;
        if (breaks_ == "state_incomplete") {
            auto full = ReplicaStrategy::state();  // what it cannot know keeps its current value
            for (size_t i = 0; i < state.size(); ++i) full[i].second = state[i].second;
            ReplicaStrategy::load_state(full);
            return;
        }
        ReplicaStrategy::load_state(state);
    }
    bool exact_resume() const override { return true; }

private:
    void nudge(double by) {
        torch::NoGradGuard no_grad;
        params_.front().add_(by);
    }
    std::string breaks_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "broken_strategy";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "a strategy that breaks one promise on request (tests of plexus check)";
    d.schema = {plexus::ConfigKey("breaks", "none", "which promise to break")
                    .one_of({"none", "nondeterministic", "evaluate_mutates", "evaluates_elsewhere", "state_incomplete",
                             "load_ignored"})};
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Broken>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
