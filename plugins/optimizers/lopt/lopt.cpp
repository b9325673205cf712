// optimizers/lopt: a learned optimizer, small_fc_lopt (the per-parameter MLP of
// learned_optimization's AdafacMLPLOpt) with μLO's optional 1/fan_in scaling (algorithms.md
// section 5(c)).
//
// Per parameter tensor it keeps momenta at 3 decays, an RMS accumulator, and Adafactor row and
// column accumulators at 3 decays (full second moments for 1-D tensors). Per element it builds
// 28 features from them, divides each by its root mean square over the tensor, appends 11
// training-progress features tanh(t / τ - 1), and runs an MLP 39 -> 32 -> 32 -> 2 (ReLU) to a
// direction d and a magnitude m: p <- p - step_mult · d · exp(exp_mult · m) · s, with s = 1 /
// fan_in for the tensors `mup_hidden` names (μLO) and 1 for the others.
//
// Weights: plexus/lopt_weights.hpp (the file format, shared with `plexus meta-train`).
// The decays are 1 - (1 - d0) · exp(10 · offset) around d0 = (0.9, 0.99, 0.999), (0.999),
// (0.9, 0.99, 0.999). `weights = "init"` starts from the standard initialization (seeded), the
// starting point of meta-training.
//
// Decisions where the reference is silent (algorithms.md 5(c)): for 1-D tensors the row and
// column factors are both rsqrt(v + 1e-9), so m_b · row_f · col_f is m_b · rsqrt(v + 1e-9); the
// progress features use the number of steps taken before this one.
#include <plexus/lopt_weights.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <fstream>
#include <regex>
#include <sstream>

namespace {

using plexus::LoptWeights;
using plexus::lopt::kFeatures;
using plexus::lopt::kHidden;
using plexus::lopt::kInputs;
using plexus::lopt::kTimeFeatures;
const double kBaseDecays[7] = {0.9, 0.99, 0.999, 0.999, 0.9, 0.99, 0.999};
const double kTimescales[kTimeFeatures] = {1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000};

// One parameter tensor's accumulators.
struct TensorState {
    torch::Tensor m[3], r, row[3], col[3], full[3];  // full: 1-D tensors' second moments
    int64_t d0 = -1, d1 = -1;                         // factored dims: the largest, the second largest
    double scale = 1.0;                               // s: 1 / fan_in for μP-hidden matrices
};

class Lopt : public plexus::Optimizer {
public:
    Lopt(const plexus::Config& cfg, plexus::RunContext& ctx, std::vector<plexus::ParamSlot> slots)
        : slots_(std::move(slots)) {
        const std::string weights = cfg.get_string("weights");
        cfg.require(!weights.empty(), "weights", "must name a weights file, or be \"init\"");
        w_ = weights == "init" ? LoptWeights::initial(ctx.seed("lopt")) : LoptWeights::load(weights);
        step_mult_ = cfg.get_double("step_mult");
        exp_mult_ = cfg.get_double("exp_mult");
        use_schedule_ = cfg.get_bool("use_schedule");
        const std::regex hidden(cfg.get_string("mup_hidden"));
        for (size_t k = 0; k < 7; ++k)
            decays_[k] = 1.0 - (1.0 - kBaseDecays[k]) * std::exp(10.0 * w_.decay_offsets[static_cast<int64_t>(k)].item<double>());
        for (const auto& slot : slots_) {
            int64_t whole = 1;
            for (auto d : slot.full_shape) whole *= d;
            if (slot.param.numel() != whole)
                throw plexus::Error("lopt: slot '" + slot.name + "' is a piece of a tensor; its features are per whole tensor",
                                    "use lopt with strategies that give whole tensors (single, ddp, pipeline, petra)");
            states_.push_back(make_state(slot, hidden));
        }
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        // The progress features, the same for every tensor: tanh(t / τ - 1), t the steps taken.
        auto progress = torch::empty({kTimeFeatures}, torch::kFloat64);
        for (int k = 0; k < kTimeFeatures; ++k) progress[k] = std::tanh(static_cast<double>(t_) / kTimescales[k] - 1.0);
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto p = slots_[i].param.dim() == 0 ? slots_[i].param.view({1}) : slots_[i].param;
            auto g = torch::nan_to_num(grads[i].view(p.sizes()).to(torch::kFloat64), 0.0, 0.0, 0.0);
            auto update = direction(features(states_[i], g, p.to(torch::kFloat64), progress), p);
            p.sub_((update * (states_[i].scale * (use_schedule_ ? lr_scale : 1.0))).to(p.scalar_type()));
        }
        ++t_;
    }

    // The features of one tensor, normalized, with the progress features: [elements, 39].
    // Updates the tensor's accumulators with g first.
    torch::Tensor features(TensorState& s, const torch::Tensor& g, const torch::Tensor& p, const torch::Tensor& progress) {
        const auto g2 = g * g;
        for (int b = 0; b < 3; ++b) s.m[b].mul_(decays_[b]).add_(g, 1.0 - decays_[b]);
        s.r.mul_(decays_[3]).add_(g2, 1.0 - decays_[3]);
        const auto rs = torch::rsqrt(s.r + 1e-6);
        std::vector<torch::Tensor> f{g, p, s.m[0], s.m[1], s.m[2], s.r, s.m[0] * rs, s.m[1] * rs, s.m[2] * rs, rs};
        torch::Tensor fac[3], row_feat[3], col_feat[3], row_col[3];
        for (int c = 0; c < 3; ++c) {
            const double d = decays_[4 + c];
            if (s.d0 >= 0) {
                s.row[c].mul_(d).add_((g2 + 1e-30).mean(s.d0, true), 1.0 - d);
                s.col[c].mul_(d).add_((g2 + 1e-30).mean(s.d1, true), 1.0 - d);
                const auto row_f = torch::rsqrt(torch::clamp_min(s.row[c] / (s.row[c].mean() + 1e-9), 1e-9));
                const auto col_f = torch::rsqrt(torch::clamp_min(s.col[c], 1e-9));
                row_col[c] = row_f * col_f;
                row_feat[c] = s.row[c].expand_as(g);
                col_feat[c] = s.col[c].expand_as(g);
            } else {
                s.full[c].mul_(d).add_(g2 + 1e-30, 1.0 - d);
                row_col[c] = torch::rsqrt(s.full[c] + 1e-9);
                row_feat[c] = col_feat[c] = s.full[c];
            }
            fac[c] = g * row_col[c];
        }
        for (int c = 0; c < 3; ++c) f.push_back(fac[c]);
        for (int c = 0; c < 3; ++c) f.push_back(row_feat[c]);
        for (int c = 0; c < 3; ++c) f.push_back(col_feat[c]);
        for (int c = 0; c < 3; ++c) f.push_back(torch::rsqrt(row_feat[c] + 1e-8));
        for (int c = 0; c < 3; ++c) f.push_back(torch::rsqrt(col_feat[c] + 1e-8));
        for (int c = 0; c < 3; ++c) f.push_back(s.m[c] * row_col[c]);
        auto stacked = torch::stack(f, -1).reshape({-1, kFeatures});
        stacked = stacked / torch::sqrt(1e-5 + (stacked * stacked).mean(0, true));  // per feature, over the tensor
        return torch::cat({stacked, progress.expand({stacked.size(0), kTimeFeatures})}, 1);
    }

    // The step before its scale s, from a tensor's features: step_mult · d · exp(exp_mult · m),
    // shaped like p.
    torch::Tensor direction(const torch::Tensor& x, const torch::Tensor& p) {
        auto h = torch::relu(torch::linear(x, w_.w0, w_.b0));
        h = torch::relu(torch::linear(h, w_.w1, w_.b1));
        auto out = torch::linear(h, w_.w2, w_.b2);
        auto d = out.select(1, 0), mag = out.select(1, 1);
        return (step_mult_ * d * torch::exp(exp_mult_ * mag)).view(p.sizes());
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(t_, torch::kInt64));
        for (size_t i = 0; i < states_.size(); ++i) {
            const auto& s = states_[i];
            const auto prefix = std::to_string(i) + "." + slots_[i].name + ".";
            for (int b = 0; b < 3; ++b) out.emplace_back(prefix + "m" + std::to_string(b), s.m[b].clone());
            out.emplace_back(prefix + "r", s.r.clone());
            for (int c = 0; c < 3; ++c) {
                if (s.d0 >= 0) {
                    out.emplace_back(prefix + "row" + std::to_string(c), s.row[c].clone());
                    out.emplace_back(prefix + "col" + std::to_string(c), s.col[c].clone());
                } else {
                    out.emplace_back(prefix + "v" + std::to_string(c), s.full[c].clone());
                }
            }
        }
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        const auto expected = this->state();
        if (state.size() != expected.size())
            throw plexus::Error("lopt: optimizer state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(expected.size()),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        t_ = state[0].second.item<int64_t>();
        size_t k = 1;
        for (auto& s : states_) {
            for (auto& m : s.m) m.copy_(state[k++].second);
            s.r.copy_(state[k++].second);
            for (int c = 0; c < 3; ++c) {
                if (s.d0 >= 0) {
                    s.row[c].copy_(state[k++].second);
                    s.col[c].copy_(state[k++].second);
                } else {
                    s.full[c].copy_(state[k++].second);
                }
            }
        }
    }

    // Per element: accumulators ~20, features ~40, normalization ~60, MLP 2 x (39·32 + 32·32 + 32·2).
    double flops_per_step() const override {
        double n = 0;
        for (const auto& slot : slots_) n += static_cast<double>(slot.param.numel());
        return n * (120.0 + 2.0 * (kInputs * kHidden + kHidden * kHidden + kHidden * 2));
    }

private:
    TensorState make_state(const plexus::ParamSlot& slot, const std::regex& hidden) {
        TensorState s;
        auto shape = slot.param.dim() == 0 ? std::vector<int64_t>{1} : slot.param.sizes().vec();
        auto zeros = [&](std::vector<int64_t> sizes) { return torch::zeros(sizes, torch::kFloat64); };
        for (auto& m : s.m) m = zeros(shape);
        s.r = zeros(shape);
        if (shape.size() >= 2) {
            // The two largest dimensions (the later one on ties, as a stable argsort gives).
            std::vector<int64_t> order(shape.size());
            for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
            std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return shape[a] < shape[b]; });
            s.d0 = order.back();
            s.d1 = order[order.size() - 2];
            auto row_shape = shape, col_shape = shape;
            row_shape[static_cast<size_t>(s.d0)] = 1;
            col_shape[static_cast<size_t>(s.d1)] = 1;
            for (int c = 0; c < 3; ++c) s.row[c] = zeros(row_shape), s.col[c] = zeros(col_shape);
        } else {
            for (auto& v : s.full) v = zeros(shape);
        }
        if (slot.full_shape.size() == 2 && std::regex_search(slot.name, hidden))
            s.scale = 1.0 / static_cast<double>(slot.full_shape[1]);
        return s;
    }

    std::vector<plexus::ParamSlot> slots_;
    std::vector<TensorState> states_;
    LoptWeights w_;
    double decays_[7] = {};
    double step_mult_ = 0.001, exp_mult_ = 0.001;
    bool use_schedule_ = false;
    int64_t t_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "lopt";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "learned optimizer: small_fc_lopt (per-parameter MLP on Adafactor features), optional μLO 1/fan_in scaling";
    d.schema = {
        {"weights", "", "the meta-trained weights (a plexus-lopt 1 text file), or \"init\" for untrained ones"},
        {"step_mult", 0.001, "step = step_mult · d · exp(exp_mult · m); μLO uses 0.01"},
        {"exp_mult", 0.001, "see step_mult"},
        {"mup_hidden", "$^",
         "regex over parameter names: matching 2-D tensors are hidden matrices, their steps scaled by 1 / fan_in "
         "(μLO); \"$^\" matches none (the SP optimizer). For models/gpt: \"(qkv|proj|fc|out)\\\\.weight$\""},
        {"use_schedule", false, "multiply the step by the [train] learning-rate schedule's factor"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext& ctx,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<Lopt>(cfg, ctx, std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
