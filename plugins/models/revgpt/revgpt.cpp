// models/revgpt: a reversible GPT (the RevViT / Reformer coupling), as blocks
// [embed, rev0 .. rev(L-1), head].
//
// The residual stream is two halves of width D, side by side in one [B, T, 2D] tensor. embed
// puts the token and position embedding in both halves; block i maps (x1, x2) to
//     y1 = x1 + F(x2),   y2 = x2 + G(y1),   F = attention(LN(.)), G = MLP(LN(.)),
// whose exact inverse is x2 = y2 - G(y1), x1 = y1 - F(x2); head averages the halves, then final
// LN and the LM head. embed and head are not reversible (PETRA buffers token ids for the first
// and runs the last forward and backward at once).
//
// reversible_backprop = true: training keeps no activation inside the stack of reversible
// blocks; backward reconstructs each block's input from its output on the way down (one more
// forward per block, the memory of one block instead of all of them). activation_checkpointing
// = k, the non-reversible way to the same end: every k-th block keeps only its input and
// recomputes its activations in backward (the memory baseline reversible methods answer to).
#include <plexus/kit/loss.hpp>
#include <plexus/kit/recompute.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/transformer.hpp>
#include <torch/torch.h>

namespace {

using plexus::Config;
using plexus::transformer::layer_norm;
using plexus::transformer::Params;

struct RevShape : plexus::transformer::Dims {
    double embed_std = 0.02;
    int64_t checkpoint_every = 0;  // recompute every k-th block's activations in backward; 0: none
};

// F: causal self-attention on a pre-normed half.
struct Attention : torch::nn::Module {
    Attention(const RevShape& s, double resid_std) : head_dim(s.d_model / s.n_head) {
        ln = register_module("ln", plexus::transformer::norm(s.d_model, s.options));
        qkv = register_module("qkv", plexus::transformer::linear(s.d_model, 3 * s.d_model, s.options));
        proj = register_module("proj", plexus::transformer::linear(s.d_model, s.d_model, s.options));
        mask = register_buffer("mask", plexus::compat::causal_mask(s.seq_len, s.options));
        torch::NoGradGuard no_grad;
        qkv->weight.normal_(0.0, 0.02);
        proj->weight.normal_(0.0, resid_std);
    }
    torch::Tensor forward(const torch::Tensor& u) {
        auto heads = plexus::transformer::attention_heads(layer_norm(*ln, u), *qkv, head_dim, mask);
        return torch::linear(heads, proj->weight, proj->bias);
    }
    int64_t head_dim;
    std::shared_ptr<Params> ln, qkv, proj;
    torch::Tensor mask;
};

// G: the GELU MLP on a pre-normed half.
struct Mlp : torch::nn::Module {
    Mlp(const RevShape& s, double resid_std) {
        ln = register_module("ln", plexus::transformer::norm(s.d_model, s.options));
        fc = register_module("fc", plexus::transformer::linear(s.d_model, s.d_ff, s.options));
        out = register_module("out", plexus::transformer::linear(s.d_ff, s.d_model, s.options));
        torch::NoGradGuard no_grad;
        fc->weight.normal_(0.0, 0.02);
        out->weight.normal_(0.0, resid_std);
    }
    torch::Tensor forward(const torch::Tensor& u) {
        return torch::linear(plexus::transformer::mlp_hidden(layer_norm(*ln, u), *fc), out->weight, out->bias);
    }
    std::shared_ptr<Params> ln, fc, out;
};

class Embed : public plexus::Block {
public:
    explicit Embed(const RevShape& s) {
        tokens =
            register_module("tokens", std::make_shared<Params>(std::vector<int64_t>{s.vocab, s.d_model}, 0, s.options));
        positions = register_module("positions",
                                    std::make_shared<Params>(std::vector<int64_t>{s.seq_len, s.d_model}, 0, s.options));
        torch::NoGradGuard no_grad;
        tokens->weight.normal_(0.0, s.embed_std);
        positions->weight.normal_(0.0, s.embed_std);
    }
    torch::Tensor forward(const torch::Tensor& ids) override {
        auto h = plexus::transformer::embed(tokens->weight, positions->weight, ids);
        return torch::cat({h, h}, -1);
    }
    double flops_per_token(int64_t) const override { return 0.0; }  // lookups, no matmul
    std::shared_ptr<Params> tokens, positions;
};

class RevBlock : public plexus::Block {
public:
    RevBlock(const RevShape& s, int64_t index)
        : d_model_(s.d_model), recompute_(plexus::recompute::recomputes(index, s.checkpoint_every)) {
        const double resid_std = 0.02 / std::sqrt(2.0 * s.n_layer);
        attn = register_module("attn", std::make_shared<Attention>(s, resid_std));
        mlp = register_module("mlp", std::make_shared<Mlp>(s, resid_std));
    }

    torch::Tensor forward(const torch::Tensor& x) override {
        return recompute_ ? plexus::recompute::checkpointed(body_, x) : compute(x);
    }
    torch::Tensor compute(const torch::Tensor& x) {
        auto halves = x.chunk(2, -1);
        auto y1 = halves[0] + attn->forward(halves[1]);
        auto y2 = halves[1] + mlp->forward(y1);
        return torch::cat({y1, y2}, -1);
    }

    bool invertible() const override { return true; }
    torch::Tensor inverse(const torch::Tensor& y) override {
        auto halves = y.chunk(2, -1);
        auto x2 = halves[1] - mlp->forward(halves[0]);
        auto x1 = halves[0] - attn->forward(x2);
        return torch::cat({x1, x2}, -1);
    }

    // The coupling's backward: the inversion builds the graphs of G at y1 and F at x2, which
    // the gradients then run through (docs/algorithms/petra.md, "The reversible block"):
    //   z1 = ȳ1 + (∂G/∂y1)ᵀ ȳ2,  x̄2 = ȳ2 + (∂F/∂x2)ᵀ z1,  x̄1 = z1;  θ_G gets (∂G/∂θ)ᵀ ȳ2, θ_F (∂F/∂θ)ᵀ z1.
    std::pair<torch::Tensor, torch::Tensor> reverse(const torch::Tensor& y, const torch::Tensor& grad_y) override {
        torch::AutoGradMode grad_on(true);
        auto out = y.detach().chunk(2, -1);
        auto grad_out = grad_y.chunk(2, -1);
        auto y1 = out[0].detach().requires_grad_(true);
        auto g = mlp->forward(y1);
        auto x2 = (out[1] - g.detach()).requires_grad_(true);
        torch::autograd::backward({g}, {grad_out[1]});
        auto z1 = grad_out[0] + y1.grad();
        auto f = attn->forward(x2);
        auto x1 = out[0] - f.detach();
        torch::autograd::backward({f}, {z1});
        return {torch::cat({x1, x2.detach()}, -1), torch::cat({z1, grad_out[1] + x2.grad()}, -1)};
    }

    // 6 FLOPs per parameter per token for the matmuls, plus attention's 12·D·T.
    double flops_per_token(int64_t seq_len) const override {
        return 6.0 * static_cast<double>(parameter_count()) + 12.0 * static_cast<double>(d_model_) * seq_len;
    }
    int64_t parameter_count() const {
        int64_t n = 0;
        for (const auto& p : parameters()) n += p.numel();
        return n;
    }

    std::shared_ptr<Attention> attn;
    std::shared_ptr<Mlp> mlp;

private:
    int64_t d_model_;
    bool recompute_;
    const plexus::recompute::BlockFunction body_ = [this](const torch::Tensor& x) { return compute(x); };
};

class Head : public plexus::Block {
public:
    explicit Head(const RevShape& s) {
        ln = register_module("ln", plexus::transformer::norm(s.d_model, s.options));
        weight = register_parameter("weight", torch::empty({s.vocab, s.d_model}, s.options));
        torch::NoGradGuard no_grad;
        weight.normal_(0.0, 0.02);
    }
    torch::Tensor forward(const torch::Tensor& x) override {
        auto halves = x.chunk(2, -1);
        return torch::matmul(layer_norm(*ln, (halves[0] + halves[1]) * 0.5), weight.t());
    }
    double flops_per_token(int64_t) const override { return 6.0 * counted_params(); }
    int64_t counted_params() const { return weight.numel() + ln->weight.numel() + ln->bias.numel(); }
    std::shared_ptr<Params> ln;
    torch::Tensor weight;
};

class RevGpt;

// The reversible stack as one autograd node that saves only its output: its backward walks the
// blocks down with Block::reverse, reconstructing each input as it goes.
struct ReversibleStack : torch::autograd::Function<ReversibleStack> {
    static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x,
                                 const std::vector<std::shared_ptr<plexus::Block>>* blocks) {
        for (const auto& b : *blocks) x = b->forward(x);  // grad mode is off here: nothing kept
        ctx->saved_data["blocks"] = reinterpret_cast<int64_t>(blocks);
        ctx->saved_data["y"] = x.detach();  // detached: no cycle through this node
        return x;
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
        const auto* blocks =
            reinterpret_cast<const std::vector<std::shared_ptr<plexus::Block>>*>(ctx->saved_data["blocks"].toInt());
        torch::Tensor y = ctx->saved_data["y"].toTensor(), grad = grads[0];
        for (auto it = blocks->rbegin(); it != blocks->rend(); ++it) std::tie(y, grad) = (*it)->reverse(y, grad);
        return {grad, torch::Tensor()};
    }
};

class RevGpt : public plexus::Model {
public:
    RevGpt(const RevShape& s, bool reversible_backprop) : reversible_backprop_(reversible_backprop) {
        embed_ = add_block("embed", std::make_shared<Embed>(s));
        for (int64_t i = 0; i < s.n_layer; ++i)
            stack_.push_back(add_block("rev" + std::to_string(i), std::make_shared<RevBlock>(s, i)));
        head_ = add_block("head", std::make_shared<Head>(s));
    }

    torch::Tensor forward(const torch::Tensor& tokens) override {
        if (!reversible_backprop_ || !is_training() || !torch::GradMode::is_enabled() || tokens.is_meta())
            return Model::forward(tokens);
        return head_->forward(ReversibleStack::apply(embed_->forward(tokens), &stack_));
    }

    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return plexus::cross_entropy(logits, targets);
    }

    plexus::FlopsPerToken flops_per_token(int64_t seq_len) const override {
        double flops = 0;
        for (const auto& b : blocks()) flops += b->flops_per_token(seq_len);
        int64_t n = head_->counted_params();
        for (const auto& b : stack_) n += std::static_pointer_cast<RevBlock>(b)->parameter_count();
        return {
            flops,
            "6N+12LDT with D the width of one half (attention runs on one half); N counts every parameter "
            "except the embedding tables; the reconstruction of reversible backprop (one more forward) is not counted",
            n};
    }

private:
    bool reversible_backprop_;
    std::shared_ptr<Embed> embed_;
    std::vector<std::shared_ptr<plexus::Block>> stack_;
    std::shared_ptr<Head> head_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "revgpt";
    d.kind = plexus::PluginKind::Model;
    d.version = "1.0";
    d.summary =
        "reversible GPT: two residual halves, y1 = x1 + Attn(x2), y2 = x2 + MLP(y1); blocks embed, rev0..N-1, head";
    d.schema = plexus::transformer::dims_schema(4, "reversible blocks (L)", 128,
                                                "width of each of the two residual halves (D); the stream is 2D wide");
    d.schema.push_back({"embed_std", 0.02,
                        "initial scale of the token and position embeddings (GPT-2: 0.02); the stream's scale sets how "
                        "much the pre-LN sub-layers amplify a reconstruction error (about 1 / its RMS)"});
    d.schema.push_back({"reversible_backprop", false,
                        "train without storing the reversible blocks' activations: backward reconstructs them (one "
                        "more forward each)"});
    d.schema.push_back(plexus::recompute::activation_checkpointing_key());
    d.make_model = [](const Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        RevShape s;
        static_cast<plexus::transformer::Dims&>(s) = plexus::transformer::read_dims(cfg, ctx);
        s.embed_std = cfg.get_double("embed_std");
        s.checkpoint_every = cfg.get_int("activation_checkpointing");
        cfg.require(s.embed_std > 0, "embed_std", "must be > 0");
        return std::make_shared<RevGpt>(s, cfg.get_bool("reversible_backprop"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
