// strategies/single: one rank, no communication. The reference every distributed strategy is
// tested against (same global batch, same parameters after k steps).
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Single : public plexus::Strategy {
public:
    Single(const plexus::Config& cfg, plexus::RunContext& ctx) : ctx_(ctx) {
        accumulate_ = cfg.get_int("accumulate");
        cfg.require(accumulate_ >= 1, "accumulate", "must be >= 1");
        model_ = ctx.make_model();
        auto slots = plexus::slots_of(*model_);
        for (const auto& s : slots) params_.push_back(s.param);
        optimizer_ = ctx.make_optimizer(std::move(slots));
        flops_per_token_ = model_->flops_per_token(ctx.seq_len()).flops;
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        model_->train();
        torch::Tensor loss_sum;
        for (int64_t i = 0; i < accumulate_; ++i) {
            auto batch = in.train->next();
            auto loss = model_->loss(model_->forward(batch.inputs), batch.targets);
            (accumulate_ > 1 ? loss / static_cast<double>(accumulate_) : loss).backward();
            loss_sum = i == 0 ? loss.detach() : loss_sum + loss.detach();
            out.tokens += batch.tokens();
            ++out.micro_batches;
        }
        std::vector<torch::Tensor> grads;
        grads.reserve(params_.size());
        for (auto& p : params_) grads.push_back(p.grad().defined() ? p.grad() : zero_grad_for(p));
        out.grad_norm = plexus::clip_grad_norm(grads, in.max_grad_norm);
        optimizer_->step(grads, in.lr_scale);
        for (auto& g : grads) g.zero_();
        ctx_.charge_compute(flops_per_token_ * static_cast<double>(out.tokens) + optimizer_->flops_per_step());
        out.loss = loss_sum.item<double>() / static_cast<double>(accumulate_);
        return out;
    }

    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        torch::NoGradGuard no_grad;
        model_->eval();
        double total = 0;
        for (int64_t i = 0; i < batches; ++i) {
            auto batch = stream.next();
            total += model_->loss(model_->forward(batch.inputs), batch.targets).item<double>();
        }
        model_->train();
        return batches > 0 ? total / static_cast<double>(batches) : 0.0;
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (const auto& item : model_->named_parameters())
            out.emplace_back("model." + item.key(), item.value().detach().clone());
        for (auto& item : optimizer_->state()) out.emplace_back("optimizer." + item.first, item.second);
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        torch::NoGradGuard no_grad;
        auto named = model_->named_parameters();
        if (state.size() < named.size())
            throw plexus::Error("single: state has fewer tensors than the model has parameters",
                                "the state comes from another model configuration");
        for (size_t i = 0; i < named.size(); ++i) named[i].value().copy_(state[i].second);
        optimizer_->load_state(plexus::StateDict(state.begin() + named.size(), state.end()));
    }

private:
    // A parameter the loss does not reach has no gradient; the optimizer still needs one.
    torch::Tensor zero_grad_for(torch::Tensor& p) {
        p.mutable_grad() = torch::zeros_like(p);
        return p.grad();
    }

    plexus::RunContext& ctx_;
    int64_t accumulate_ = 1;
    std::shared_ptr<plexus::Model> model_;
    std::vector<torch::Tensor> params_;
    std::unique_ptr<plexus::Optimizer> optimizer_;
    double flops_per_token_ = 0;
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
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
