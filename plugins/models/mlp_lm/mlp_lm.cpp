// models/mlp_lm: a token-wise MLP language model (no attention: each position predicts the next
// token from its own embedding through residual MLP blocks). A second model family beside the
// GPT: a task family for meta-training learned optimizers, and a model the tensor-parallel
// strategy splits through the same tensor_parallel_plan() and enter/exit operators as the GPT,
// knowing nothing else about it.
#include <plexus/kit/loss.hpp>
#include <plexus/kit/mup.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

using plexus::mup::Parametrization;

class Embed : public plexus::Block {
public:
    Embed(int64_t vocab, int64_t width, const torch::TensorOptions& o, Parametrization p) : param_(p) {
        table = register_parameter("table", torch::randn({vocab, width}, o) * 0.02);
    }
    torch::Tensor forward(const torch::Tensor& ids) override { return torch::embedding(table, ids); }
    double flops_per_token(int64_t) const override { return 0; }
    std::vector<plexus::WidthRule> width_plan() const override { return param_.plan({param_.vector("table")}); }
    torch::Tensor table;

private:
    Parametrization param_;
};

// x + W2 gelu(W1 x + b1) + b2, with W1 split by rows (column-parallel) and W2 by columns. In μP
// the hidden width grows with the width (W2's fan-in by the same factor as W1's).
class Mix : public plexus::Block {
public:
    Mix(int64_t width, int64_t hidden, const torch::TensorOptions& o, Parametrization p) : param_(p) {
        w1 = register_parameter("w1", torch::randn({hidden, width}, o) * p.hidden_std(0.02));
        b1 = register_parameter("b1", torch::zeros({hidden}, o));
        w2 = register_parameter("w2", torch::randn({width, hidden}, o) * p.hidden_std(0.02));
        b2 = register_parameter("b2", torch::zeros({width}, o));
    }
    torch::Tensor forward(const torch::Tensor& x) override {
        auto h = torch::gelu(torch::linear(tensor_parallel_enter(x), w1, b1));
        return x + row_parallel_linear(h, w2, b2);
    }
    double flops_per_token(int64_t) const override { return 6.0 * static_cast<double>(w1.numel() + w2.numel()); }
    std::vector<plexus::TensorParallelRule> tensor_parallel_plan() const override {
        using S = plexus::TensorParallelRule::Split;
        return {{"w1", S::Column}, {"b1", S::Column}, {"w2", S::Row}, {"b2", S::Replicate}};
    }
    std::vector<plexus::WidthRule> width_plan() const override {
        const auto& p = param_;
        return p.plan({p.hidden("w1", p.width_mult), p.vector("b1"), p.hidden("w2", p.width_mult), p.vector("b2")});
    }
    torch::Tensor w1, b1, w2, b2;

private:
    Parametrization param_;
};

class Head : public plexus::Block {
public:
    // μP: its logits are scaled by 1 / width_mult (its std, 0.02, does not depend on the width).
    Head(int64_t vocab, int64_t width, const torch::TensorOptions& o, Parametrization p) : param_(p) {
        w = register_parameter("w", torch::randn({vocab, width}, o) * 0.02);
    }
    torch::Tensor forward(const torch::Tensor& x) override {
        const double mult = param_.output_multiplier();
        return torch::linear(mult == 1.0 ? x : x * mult, w);
    }
    double flops_per_token(int64_t) const override { return 6.0 * static_cast<double>(w.numel()); }
    std::vector<plexus::WidthRule> width_plan() const override { return param_.plan({param_.output("w")}); }
    torch::Tensor w;

private:
    Parametrization param_;
};

class MlpLm : public plexus::Model {
public:
    MlpLm(int64_t vocab, int64_t width, int64_t hidden, int64_t depth, const torch::TensorOptions& o,
          Parametrization p) {
        add_block("embed", std::make_shared<Embed>(vocab, width, o, p));
        for (int64_t i = 0; i < depth; ++i)
            add_block("mix" + std::to_string(i), std::make_shared<Mix>(width, hidden, o, p));
        add_block("head", std::make_shared<Head>(vocab, width, o, p));
    }
    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return plexus::cross_entropy(logits, targets);
    }
    plexus::FlopsPerToken flops_per_token(int64_t seq_len) const override {
        double f = 0;
        for (const auto& b : blocks()) f += b->flops_per_token(seq_len);
        return {f, "6N (no attention); N excludes the embedding table", static_cast<int64_t>(f / 6)};
    }
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "mlp_lm";
    d.kind = plexus::PluginKind::Model;
    d.version = "1.0";
    d.summary = "a token-wise MLP language model (no attention), with a tensor-parallel plan";
    d.schema = {{"width", 32, "residual width"},
                {"hidden", 64, "MLP hidden width; 0 means 4 * width (what μP assumes: it widens with the width)"},
                {"depth", 2, "MLP blocks"}};
    for (auto& key : plexus::mup::schema()) d.schema.push_back(key);
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        const auto width = cfg.get_int("width"), hidden = cfg.get_int("hidden") > 0 ? cfg.get_int("hidden") : 4 * width;
        cfg.require(width > 0, "width", "must be > 0");
        return std::make_shared<MlpLm>(ctx.vocab_size(), width, hidden, cfg.get_int("depth"),
                                       torch::TensorOptions().device(ctx.device()), plexus::mup::read(cfg, width));
    };
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "parametrization;base_width";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
