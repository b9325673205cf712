// models/llama: a Llama-style decoder (Touvron et al., 2023): RMSNorm before attention and MLP,
// rotary position embeddings, a SwiGLU MLP, grouped-query attention, no biases. Blocks:
// [embed, layer 0 .. layer L-1, head]. The operations are in llama_ops.hpp.
#include <plexus/kit/loss.hpp>
#include <plexus/kit/mup.hpp>
#include <plexus/kit/recompute.hpp>
#include <plexus/kit/transformer.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "models/llama/llama_ops.hpp"

namespace {

using plexus::Config;
using plexus::transformer::Params;

struct LlamaShape {
    int64_t vocab = 0, n_layer = 0, d_model = 0, n_head = 0, n_kv_head = 0, hidden = 0, seq_len = 0;
    double rope_base = 10000.0, norm_eps = 1e-5;
    int64_t checkpoint_every = 0;  // recompute every k-th layer's activations in backward; 0: none
    bool tie_embeddings = false;
    plexus::mup::Parametrization param;  // SP or μP (plexus/kit/mup.hpp)
    torch::TensorOptions options;
    int64_t head_dim() const { return d_model / n_head; }
};

std::shared_ptr<Params> weight(std::vector<int64_t> shape, const torch::TensorOptions& o, double std) {
    auto p = std::make_shared<Params>(std::move(shape), 0, o);
    torch::NoGradGuard no_grad;
    p->weight.normal_(0.0, std);
    return p;
}

std::shared_ptr<Params> rms_weight(int64_t width, const torch::TensorOptions& o) {
    auto p = std::make_shared<Params>(std::vector<int64_t>{width}, 0, o);
    torch::NoGradGuard no_grad;
    p->weight.fill_(1.0);
    return p;
}

class Embed : public plexus::Block {
public:
    explicit Embed(const LlamaShape& s) : param_(s.param) {
        tokens = register_module("tokens", weight({s.vocab, s.d_model}, s.options, 0.02));
    }
    std::vector<plexus::WidthRule> width_plan() const override { return param_.plan({param_.vector("tokens.weight")}); }
    torch::Tensor forward(const torch::Tensor& ids) override {
        if (tokens->weight.is_meta())  // LibTorch 1.13 has no meta kernel for the lookup
            return torch::matmul(
                torch::zeros({ids.size(0), ids.size(1), tokens->weight.size(0)}, tokens->weight.options()),
                tokens->weight);
        return torch::embedding(tokens->weight, ids);
    }
    double flops_per_token(int64_t) const override { return 0.0; }  // a lookup
    std::shared_ptr<Params> tokens;

private:
    plexus::mup::Parametrization param_;
};

class Layer : public plexus::Block {
public:
    Layer(const LlamaShape& s, bool recompute) : shape_(s), recompute_(recompute) {
        const int64_t d = s.d_model, hd = s.head_dim();
        // GPT-2-style initialization (N(0, 0.02), the residual projections by 1/sqrt(2L)), as models/gpt;
        // in μP the standard deviations shrink as 1/sqrt(width_mult).
        const double std = s.param.hidden_std(0.02),
                     resid_std = s.param.hidden_std(0.02 / std::sqrt(2.0 * std::max<int64_t>(1, s.n_layer)));
        attn_norm = register_module("attn_norm", rms_weight(d, s.options));
        wq = register_module("wq", weight({s.n_head * hd, d}, s.options, std));
        wk = register_module("wk", weight({s.n_kv_head * hd, d}, s.options, std));
        wv = register_module("wv", weight({s.n_kv_head * hd, d}, s.options, std));
        wo = register_module("wo", weight({d, s.n_head * hd}, s.options, resid_std));
        mlp_norm = register_module("mlp_norm", rms_weight(d, s.options));
        w1 = register_module("w1", weight({s.hidden, d}, s.options, std));
        w3 = register_module("w3", weight({s.hidden, d}, s.options, std));
        w2 = register_module("w2", weight({d, s.hidden}, s.options, resid_std));
        mask = register_buffer("mask", plexus::compat::causal_mask(s.seq_len, s.options));
        auto [c, sn] = plexus::llama::rope_tables(s.seq_len, hd, s.rope_base, s.options);
        cos = register_buffer("rope_cos", c);
        sin = register_buffer("rope_sin", sn);
    }

    torch::Tensor forward(const torch::Tensor& x) override {
        return recompute_ ? plexus::recompute::checkpointed(body_, x) : compute(x);
    }

    // Under tensor parallelism this rank holds whole query heads and the key/value heads they
    // read: local head counts come from the parameters' shapes.
    torch::Tensor compute(const torch::Tensor& x) {
        namespace ll = plexus::llama;
        const int64_t B = x.size(0), T = x.size(1), hd = shape_.head_dim();
        auto qkv = column_parallel_linear(ll::rms_norm(x, attn_norm->weight, shape_.norm_eps),
                                          {wq->weight, wk->weight, wv->weight});
        auto heads = [&](const torch::Tensor& p) { return p.view({B, T, -1, hd}).transpose(1, 2); };
        auto q = ll::apply_rope(heads(qkv[0]), cos, sin), k = ll::apply_rope(heads(qkv[1]), cos, sin);
        if (const double f = shape_.param.attention_factor(); f != 1.0) q = q * f;  // μP: scores ∝ 1/hd
        auto y = ll::grouped_attention(q, k, heads(qkv[2]), mask).transpose(1, 2).reshape({B, T, -1});
        auto a = x + tensor_parallel_exit(torch::linear(y, wo->weight));
        auto gate_up =
            column_parallel_linear(ll::rms_norm(a, mlp_norm->weight, shape_.norm_eps), {w1->weight, w3->weight});
        return a + tensor_parallel_exit(torch::linear(ll::swiglu(gate_up[0], gate_up[1]), w2->weight));
    }

    // 6 FLOPs per parameter per token for the matmuls (the norms' scales count too, as in
    // models/gpt), plus attention's 12·H·hd·T over this rank's query heads.
    double flops_per_token(int64_t seq_len) const override {
        return 6.0 * static_cast<double>(matmul_params()) + 12.0 * static_cast<double>(wq->weight.size(0)) * seq_len;
    }
    int64_t matmul_params() const {
        int64_t n = 0;
        for (const auto& p : parameters()) n += p.numel();
        return n;
    }

    std::vector<plexus::TensorParallelRule> tensor_parallel_plan() const override {
        using S = plexus::TensorParallelRule::Split;
        const int64_t hd = shape_.head_dim();
        return {{"wq.weight", S::Column, 1, hd}, {"wk.weight", S::Column, 1, hd},    {"wv.weight", S::Column, 1, hd},
                {"wo.weight", S::Row, 1, hd},    {"w1.weight", S::Column},           {"w3.weight", S::Column},
                {"w2.weight", S::Row},           {"attn_norm.weight", S::Replicate}, {"mlp_norm.weight", S::Replicate}};
    }

    // μP: the seven matrices are hidden (the MLP's w2 has fan-in `hidden`, which widens with
    // d_model), the norms' scales vectors.
    std::vector<plexus::WidthRule> width_plan() const override {
        const auto& p = shape_.param;
        std::vector<plexus::WidthRule> plan{p.vector("attn_norm.weight"), p.vector("mlp_norm.weight")};
        for (std::string m : {"wq", "wk", "wv", "wo", "w1", "w3", "w2"})
            plan.push_back(p.hidden(m + ".weight", p.width_mult));
        return p.plan(plan);
    }

    std::shared_ptr<Params> attn_norm, wq, wk, wv, wo, mlp_norm, w1, w3, w2;
    torch::Tensor mask, cos, sin;

private:
    LlamaShape shape_;
    bool recompute_;
    const plexus::recompute::BlockFunction body_ = [this](const torch::Tensor& x) { return compute(x); };
};

class Head : public plexus::Block {
public:
    Head(const LlamaShape& s, torch::Tensor tied) : eps_(s.norm_eps), param_(s.param) {
        norm = register_module("norm", rms_weight(s.d_model, s.options));
        if (tied.defined()) {
            out = tied, tied_ = true;  // the embedding's, registered there
        } else {
            out = register_parameter("out", torch::empty({s.vocab, s.d_model}, s.options));
            torch::NoGradGuard no_grad;
            out.normal_(0.0, 0.02);  // in μP too: a width-independent std (kit/mup.hpp)
        }
    }
    torch::Tensor forward(const torch::Tensor& x) override {
        auto normed = plexus::llama::rms_norm(x, norm->weight, eps_);
        const double mult = param_.output_multiplier();
        return torch::matmul(mult == 1.0 ? normed : normed * mult, out.t());
    }
    // A tied readout is the embedding's (a vector there).
    std::vector<plexus::WidthRule> width_plan() const override {
        std::vector<plexus::WidthRule> plan{param_.vector("norm.weight")};
        if (!tied_) plan.push_back(param_.output("out"));
        return param_.plan(plan);
    }
    double flops_per_token(int64_t) const override { return 6.0 * static_cast<double>(counted_params()); }
    std::vector<torch::Tensor> shared_parameters() const override {
        return tied_ ? std::vector<torch::Tensor>{out} : std::vector<torch::Tensor>{};
    }
    int64_t counted_params() const { return out.numel() + norm->weight.numel(); }
    std::shared_ptr<Params> norm;
    torch::Tensor out;

private:
    double eps_;
    bool tied_ = false;
    plexus::mup::Parametrization param_;
};

class Llama : public plexus::Model {
public:
    explicit Llama(const LlamaShape& s) {
        auto embed = add_block("embed", std::make_shared<Embed>(s));
        for (int64_t i = 0; i < s.n_layer; ++i) {
            // Every k-th layer recomputes its activations in backward (k = activation_checkpointing).
            const bool recompute = plexus::recompute::recomputes(i, s.checkpoint_every);
            layers_.push_back(add_block("layer" + std::to_string(i), std::make_shared<Layer>(s, recompute)));
        }
        head_ =
            add_block("head", std::make_shared<Head>(s, s.tie_embeddings ? embed->tokens->weight : torch::Tensor()));
    }
    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return plexus::cross_entropy(logits, targets);
    }
    plexus::FlopsPerToken flops_per_token(int64_t seq_len) const override {
        double flops = 0;
        for (const auto& b : blocks()) flops += b->flops_per_token(seq_len);
        int64_t n = head_->counted_params();
        for (const auto& l : layers_) n += l->matmul_params();
        return {flops,
                "6N+12LHQT (PaLM/nanoGPT): N counts every parameter except the input token embedding "
                "(a tied embedding counts, as the LM head uses it)",
                n};
    }

private:
    std::vector<std::shared_ptr<Layer>> layers_;
    std::shared_ptr<Head> head_;
};

LlamaShape read_shape(const Config& cfg, plexus::RunContext& ctx) {
    LlamaShape s;
    const auto dims = plexus::transformer::read_dims(cfg, ctx);  // n_layer, d_model, n_head, vocab, seq_len, checked
    s.vocab = dims.vocab, s.n_layer = dims.n_layer, s.d_model = dims.d_model, s.n_head = dims.n_head;
    s.seq_len = dims.seq_len, s.options = dims.options;
    s.n_kv_head = cfg.get_int("n_kv_head") > 0 ? cfg.get_int("n_kv_head") : s.n_head;
    s.hidden = cfg.get_int("d_ff") > 0 ? cfg.get_int("d_ff")
                                       : plexus::llama::swiglu_hidden(s.d_model, cfg.get_int("multiple_of"));
    s.rope_base = cfg.get_double("rope_base");
    s.norm_eps = cfg.get_double("norm_eps");
    s.tie_embeddings = cfg.get_bool("tie_embeddings");
    s.checkpoint_every = cfg.get_int("activation_checkpointing");
    s.param = plexus::mup::read(cfg, s.d_model);
    cfg.require(s.n_head % s.n_kv_head == 0, "n_kv_head",
                "must divide n_head (" + std::to_string(s.n_head) + "): each key/value head serves whole query heads");
    cfg.require(s.head_dim() % 2 == 0, "n_head",
                "must leave an even head size (d_model / n_head = " + std::to_string(s.head_dim()) +
                    "): rotary embeddings rotate pairs");
    return s;
}

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "llama";
    d.kind = plexus::PluginKind::Model;
    d.version = "1.0";
    d.summary = "Llama decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention, no biases";
    d.schema = plexus::transformer::dims_schema(4, "number of transformer layers (L)", 256, "residual width (D)");
    for (auto& key : d.schema)
        if (key.name == "d_ff")
            key.doc = "MLP hidden width; 0 means 2/3 * 4 * d_model rounded up to multiple_of";
        else if (key.name == "max_seq_len")
            key.doc = "longest sequence (rotary table size); 0 takes train.seq_len";
    d.schema.push_back(
        plexus::ConfigKey("n_kv_head", 0, "key/value heads (grouped-query attention); 0 means n_head").at_least(0));
    d.schema.push_back(
        plexus::ConfigKey("multiple_of", 32, "the MLP hidden width is rounded up to a multiple of this").at_least(1));
    d.schema.push_back(plexus::ConfigKey("rope_base", 10000.0, "rotary embedding base (theta)").at_least(1.0));
    d.schema.push_back(plexus::ConfigKey("norm_eps", 1e-5, "RMSNorm epsilon").at_least(0.0));
    d.schema.push_back({"tie_embeddings", false, "share the token embedding with the LM head"});
    d.schema.push_back(plexus::recompute::activation_checkpointing_key());
    for (auto& key : plexus::mup::schema()) d.schema.push_back(key);
    d.make_model = [](const Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        return std::make_shared<Llama>(read_shape(cfg, ctx));
    };
    d.extras["check.settings"] = "model.n_layer=1;model.d_model=16;model.n_head=2;model.n_kv_head=1";
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "parametrization;base_width";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
