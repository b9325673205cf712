// models/gpt: a GPT-style decoder (pre-norm, learned positions, GELU MLP), as blocks:
// [embed, layer 0 .. layer L-1, head].
#include <plexus/kit/loss.hpp>
#include <plexus/kit/mup.hpp>
#include <plexus/kit/recompute.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/transformer.hpp>
#include <torch/torch.h>

namespace {

using plexus::Config;

struct GptShape : plexus::transformer::Dims {
    bool tie_embeddings = false;
    bool fused_norm = true;              // plexus's fused residual add + layer norm kernels on GPUs
    int64_t checkpoint_every = 0;        // recompute every k-th layer's activations in backward; 0: none
    plexus::mup::Parametrization param;  // SP or μP (plexus/kit/mup.hpp)
};

using plexus::transformer::Params;
using plexus::transformer::residual_layer_norm;

class Embed : public plexus::Block {
public:
    explicit Embed(const GptShape& s) : param_(s.param) {
        tokens =
            register_module("tokens", std::make_shared<Params>(std::vector<int64_t>{s.vocab, s.d_model}, 0, s.options));
        positions = register_module("positions",
                                    std::make_shared<Params>(std::vector<int64_t>{s.seq_len, s.d_model}, 0, s.options));
        torch::NoGradGuard no_grad;
        tokens->weight.normal_(0.0, 0.02);
        positions->weight.normal_(0.0, 0.02);
    }
    torch::Tensor forward(const torch::Tensor& ids) override {
        return plexus::transformer::embed(tokens->weight, positions->weight, ids);
    }
    double flops_per_token(int64_t) const override { return 0.0; }  // lookups, no matmul
    std::vector<plexus::WidthRule> width_plan() const override {
        return param_.plan({param_.vector("tokens.weight"), param_.vector("positions.weight")});
    }
    std::shared_ptr<Params> tokens, positions;

private:
    plexus::mup::Parametrization param_;
};

class Layer : public plexus::Block {
public:
    Layer(const GptShape& s, int64_t index)
        : shape_(s), recompute_(plexus::recompute::recomputes(index, s.checkpoint_every)) {
        using plexus::transformer::linear;
        using plexus::transformer::norm;
        ln1 = register_module("ln1", norm(s.d_model, s.options));
        qkv = register_module("qkv", linear(s.d_model, 3 * s.d_model, s.options));
        proj = register_module("proj", linear(s.d_model, s.d_model, s.options));
        ln2 = register_module("ln2", norm(s.d_model, s.options));
        fc = register_module("fc", linear(s.d_model, s.d_ff, s.options));
        out = register_module("out", linear(s.d_ff, s.d_model, s.options));
        // GPT-2 initialization: N(0, 0.02), residual projections scaled by 1/sqrt(2L), zero biases;
        // in μP the standard deviations shrink as 1/sqrt(width_mult) (variance ∝ 1/fan_in).
        torch::NoGradGuard no_grad;
        const double std = s.param.hidden_std(0.02), resid_std = s.param.hidden_std(0.02 / std::sqrt(2.0 * s.n_layer));
        qkv->weight.normal_(0.0, std);
        fc->weight.normal_(0.0, std);
        proj->weight.normal_(0.0, resid_std);
        out->weight.normal_(0.0, resid_std);
        mask = register_buffer("mask", plexus::compat::causal_mask(s.seq_len, s.options));
    }

    torch::Tensor forward(const torch::Tensor& x) override {
        return recompute_ ? plexus::recompute::checkpointed(body_, x) : compute(x);
    }

    // Under tensor parallelism this rank holds some heads and some MLP units: local sizes come
    // from the parameters' shapes; the row-parallel biases are added after the partial sums meet.
    // The residual stream goes through each norm (x1 is x) so that, on a GPU, the norm's backward
    // adds the stream's gradient in the same pass (plexus/kit/layer_norm.hpp).
    torch::Tensor compute(const torch::Tensor& x) {
        const auto head_dim = shape_.d_model / shape_.n_head;
        const bool fused = shape_.fused_norm;
        auto [x1, h1] = residual_layer_norm(*ln1, x, {}, fused);
        namespace tf = plexus::transformer;
        auto heads = tf::attention_of(column_parallel_linear(h1, {qkv->weight}, {qkv->bias})[0], head_dim, mask,
                                      shape_.param.attention_factor());
        auto [a, h2] = residual_layer_norm(*ln2, x1, row_parallel_linear(heads, proj->weight, proj->bias), fused);
        auto hidden = tf::mlp_activation(column_parallel_linear(h2, {fc->weight}, {fc->bias})[0]);
        return a + row_parallel_linear(hidden, out->weight, out->bias);
    }

    // 6 FLOPs per parameter per token for the matmuls, plus attention's 12·H·Q·T (this rank's heads).
    double flops_per_token(int64_t seq_len) const override {
        return 6.0 * matmul_params() + 12.0 * static_cast<double>(qkv->weight.size(0) / 3) * seq_len;
    }
    int64_t matmul_params() const {
        int64_t n = 0;
        for (const auto& p : parameters()) n += p.numel();
        return n;
    }

    std::vector<plexus::TensorParallelRule> tensor_parallel_plan() const override {
        using S = plexus::TensorParallelRule::Split;
        const int64_t head = shape_.d_model / shape_.n_head;  // whole heads per rank
        return {{"qkv.weight", S::Column, 3, head},
                {"qkv.bias", S::Column, 3, head},
                {"proj.weight", S::Row, 1, head},
                {"proj.bias", S::Replicate},
                {"fc.weight", S::Column},
                {"fc.bias", S::Column},
                {"out.weight", S::Row},
                {"out.bias", S::Replicate},
                {"ln1.weight", S::Replicate},
                {"ln1.bias", S::Replicate},
                {"ln2.weight", S::Replicate},
                {"ln2.bias", S::Replicate}};
    }

    // μP: the four matrices are hidden (the MLP's output has fan-in d_ff, which widens with
    // d_model), the norms and biases vectors.
    std::vector<plexus::WidthRule> width_plan() const override {
        const auto& p = shape_.param;
        std::vector<plexus::WidthRule> plan;
        for (std::string m : {"qkv", "proj", "fc", "out"}) {
            plan.push_back(p.hidden(m + ".weight", p.width_mult));
            plan.push_back(p.vector(m + ".bias"));
        }
        for (std::string n : {"ln1", "ln2"}) {
            plan.push_back(p.vector(n + ".weight"));
            plan.push_back(p.vector(n + ".bias"));
        }
        return p.plan(plan);
    }

    std::shared_ptr<Params> ln1, qkv, proj, ln2, fc, out;
    torch::Tensor mask;

private:
    GptShape shape_;
    bool recompute_;
    const plexus::recompute::BlockFunction body_ = [this](const torch::Tensor& x) { return compute(x); };
};

class Head : public plexus::Block {
public:
    Head(const GptShape& s, torch::Tensor tied_weight) : fused_norm_(s.fused_norm), param_(s.param) {
        ln = register_module("ln", plexus::transformer::norm(s.d_model, s.options));
        if (tied_weight.defined()) {
            weight = tied_weight;  // shared with the embedding: not registered twice
            tied_ = true;
        } else {
            weight = register_parameter("weight", torch::empty({s.vocab, s.d_model}, s.options));
            torch::NoGradGuard no_grad;
            weight.normal_(0.0, 0.02);  // in μP too: a width-independent std (kit/mup.hpp)
        }
    }
    torch::Tensor forward(const torch::Tensor& x) override {
        auto normed = residual_layer_norm(*ln, x, {}, fused_norm_).normed;
        const double mult = param_.output_multiplier();
        return torch::matmul(mult == 1.0 ? normed : normed * mult, weight.t());
    }
    // A tied weight is the embedding's (a vector there, declared by Embed).
    std::vector<plexus::WidthRule> width_plan() const override {
        std::vector<plexus::WidthRule> plan{param_.vector("ln.weight"), param_.vector("ln.bias")};
        if (!tied_) plan.push_back(param_.output("weight"));
        return param_.plan(plan);
    }
    double flops_per_token(int64_t) const override { return 6.0 * counted_params(); }
    std::vector<torch::Tensor> shared_parameters() const override {
        return tied_ ? std::vector<torch::Tensor>{weight} : std::vector<torch::Tensor>{};
    }
    int64_t counted_params() const { return weight.numel() + ln->weight.numel() + ln->bias.numel(); }
    std::shared_ptr<Params> ln;
    torch::Tensor weight;
    bool tied_ = false;
    bool fused_norm_ = true;
    plexus::mup::Parametrization param_;
};

class Gpt : public plexus::Model {
public:
    explicit Gpt(const GptShape& s) : shape_(s) {
        embed_ = add_block("embed", std::make_shared<Embed>(s));
        for (int64_t i = 0; i < s.n_layer; ++i)
            layers_.push_back(add_block("layer" + std::to_string(i), std::make_shared<Layer>(s, i)));
        head_ =
            add_block("head", std::make_shared<Head>(s, s.tie_embeddings ? embed_->tokens->weight : torch::Tensor()));
    }

    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return plexus::cross_entropy(logits, targets);
    }

    plexus::FlopsPerToken flops_per_token(int64_t seq_len) const override {
        double flops = 0;
        for (const auto& b : blocks()) flops += b->flops_per_token(seq_len);
        int64_t n = 0;
        for (const auto& l : layers_) n += l->matmul_params();
        n += head_->counted_params();
        return {flops,
                "6N+12LHQT (PaLM/nanoGPT): N counts every parameter except the input token and "
                "position embedding tables (a tied embedding counts, as the LM head uses it)",
                n};
    }

private:
    GptShape shape_;
    std::shared_ptr<Embed> embed_;
    std::vector<std::shared_ptr<Layer>> layers_;
    std::shared_ptr<Head> head_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "gpt";
    d.kind = plexus::PluginKind::Model;
    d.version = "1.0";
    d.summary = "GPT decoder: pre-norm, learned positions, GELU MLP; blocks embed, layer0..N-1, head";
    d.schema = plexus::transformer::dims_schema(4, "number of transformer layers (L)", 256, "residual width (D)");
    d.schema.push_back({"tie_embeddings", false, "share the token embedding with the LM head"});
    d.schema.push_back({"fused_norm", true,
                        "on a GPU, plexus's kernels for residual add + layer norm (+ autocast's cast); "
                        "false: LibTorch's separate kernels (the same values, to rounding)"});
    d.schema.push_back(plexus::recompute::activation_checkpointing_key());
    for (auto& key : plexus::mup::schema()) d.schema.push_back(key);
    d.make_model = [](const Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        GptShape s;
        static_cast<plexus::transformer::Dims&>(s) = plexus::transformer::read_dims(cfg, ctx);
        s.tie_embeddings = cfg.get_bool("tie_embeddings");
        s.fused_norm = cfg.get_bool("fused_norm");
        s.checkpoint_every = cfg.get_int("activation_checkpointing");
        s.param = plexus::mup::read(cfg, s.d_model);
        return std::make_shared<Gpt>(s);
    };
    // `plexus check` runs plugins of other kinds with this model, this small.
    d.extras["check.partner"] = "true";
    d.extras["check.settings"] = "model.n_layer=1;model.d_model=16;model.n_head=2";
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "parametrization;base_width";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
