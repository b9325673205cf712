// strategies/single: one rank, no communication. The reference every distributed strategy is
// tested against (same global batch, same parameters after k steps).
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/kit/replica.hpp>

namespace {

class Single : public plexus::ReplicaStrategy {
public:
    Single(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx) {
        accumulate_ = cfg.get_int("accumulate");
        cfg.require(accumulate_ >= 1, "accumulate", "must be >= 1");
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, accumulate_, out);
        update(in, out, gradients());
        out.loss = plexus::value_of(loss);
        return out;
    }

    // The parameters and the optimizer's state are all there is (checked by tests).
    bool exact_resume() const override { return true; }

private:
    int64_t accumulate_ = 1;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "single";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "one rank, no communication; gradient accumulation over micro-batches";
    d.schema = {{"accumulate", 1, "micro-batches of train.batch_size per optimizer step"}};
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Single>(cfg, ctx);
    };
    d.extras["default"] = "true";  // the strategy of an experiment whose [strategy] names none
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
