// optimizers/lopt: a learned optimizer, small_fc_lopt (the per-parameter MLP of
// learned_optimization's AdafacMLPLOpt) with μLO's optional 1/fan_in scaling
// (docs/algorithms/lopt.md).
//
// Per parameter tensor it keeps momenta at 3 decays, an RMS accumulator, and Adafactor row and
// column accumulators at 3 decays (full second moments for 1-D tensors). Per element it builds
// 28 features from them, divides each by its root mean square over the tensor, appends 11
// training-progress features tanh(t / τ - 1), and runs an MLP 39 -> 32 -> 32 -> 2 (ReLU) to a
// direction d and a magnitude m: p <- p - step_mult · d · exp(exp_mult · m) · s, with s = 1 /
// fan_in for the hidden matrices of a μP model (μLO; the roles its blocks declare,
// plexus/width.hpp) and 1 for the others and for any tensor of a model in SP.
//
// Weights: lopt_weights.hpp (their file; `plexus meta-train` trains them through keys weights and export).
// The decays are 1 - (1 - d0) · exp(10 · offset) around d0 = (0.9, 0.99, 0.999), (0.999),
// (0.9, 0.99, 0.999). `weights = "init"` starts from the standard initialization (seeded), the
// starting point of meta-training.
//
// Sharded (ZeRO, ACCO: the slots are pieces of flattened tensors, ParamSlot::is_piece): the
// element-wise accumulators are kept for the piece only; the row and column accumulators are
// whole (small) and the same on every rank holding a piece of the tensor; two all-reduces over
// the slots' shard group per step give what needs the whole tensor: the sums of g² along each
// row and column, then each feature's sum of squares (the normalization). The ranks agree once,
// at construction, on one order of the tensors for those sums. The result is the unsharded
// update up to the order of floating-point sums.
//
// 1-D tensors keep full second moments v: the preconditioned gradient is g · rsqrt(v + 1e-9)
// (learned_optimization's common.factored_rolling) and the momentum feature m_b · rsqrt(v + 1e-6)
// (adafac_mlp_lopt.py, google/learned_optimization @08d79a5): two epsilons, as there. Where the
// reference is silent (docs/algorithms/lopt.md): the progress features use the number of steps
// taken before this one.
#include "lopt_weights.hpp"
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include <fstream>
#include <map>
#include <sstream>

namespace {

using plexus::LoptWeights;
using plexus::lopt::kFeatures;
using plexus::lopt::kHidden;
using plexus::lopt::kInputs;
using plexus::lopt::kTimeFeatures;
const double kBaseDecays[7] = {0.9, 0.99, 0.999, 0.999, 0.9, 0.99, 0.999};
const double kTimescales[kTimeFeatures] = {1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000};

// One parameter tensor's accumulators (for a piece: element-wise ones of the piece, row and
// column ones of the whole tensor).
struct TensorState {
    torch::Tensor m[3], r, row[3], col[3], full[3];  // full: 1-D tensors' second moments
    int64_t d0 = -1, d1 = -1;                        // factored dims: the largest, the second largest
    double scale = 1.0;                              // s: 1 / fan_in for μP-hidden matrices
    // Pieces only: each element's position in the row and column accumulators (flattened), the
    // whole tensor's element count, and where the tensor's sums sit in the all-reduced buffers.
    torch::Tensor row_index, col_index;
    int64_t numel = 0, sums_at = 0, squares_at = 0;
};

// A tensor's name as a non-negative number the ranks can exchange (FNV-1a, 63 bits).
int64_t name_key(const std::string& name) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    return static_cast<int64_t>(h >> 1);
}

// The two largest dimensions of `shape` (the later one on ties, as a stable argsort gives).
std::pair<int64_t, int64_t> factored_dims(const std::vector<int64_t>& shape) {
    std::vector<int64_t> order(shape.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return shape[a] < shape[b]; });
    return {order.back(), order[order.size() - 2]};
}

// Flat positions [from, from + n) of a tensor of `shape`, mapped to the flat position in the
// tensor reduced over dimension `dim` (kept as size 1).
torch::Tensor reduced_index(const std::vector<int64_t>& shape, int64_t dim, int64_t from, int64_t n) {
    const auto flat = torch::arange(from, from + n, torch::kInt64);
    auto out = torch::zeros({n}, torch::kInt64);
    int64_t stride = 1, reduced_stride = 1;
    for (auto k = static_cast<int64_t>(shape.size()) - 1; k >= 0; --k) {
        const auto coord = torch::remainder(torch::div(flat, stride, "floor"), shape[static_cast<size_t>(k)]);
        if (k != dim) {
            out += coord * reduced_stride;
            reduced_stride *= shape[static_cast<size_t>(k)];
        }
        stride *= shape[static_cast<size_t>(k)];
    }
    return out;
}

class Lopt : public plexus::Optimizer {
public:
    Lopt(const plexus::Config& cfg, plexus::RunContext& ctx, std::vector<plexus::ParamSlot> slots)
        : slots_(std::move(slots)) {
        const std::string weights = cfg.get_string("weights");
        cfg.require(!weights.empty(), "weights", "must name a weights file, or be \"init\"");
        w_ = weights == "init" ? LoptWeights::initial(ctx.seed("lopt")) : LoptWeights::load(weights);
        if (const std::string out = cfg.get_string("export"); !out.empty() && ctx.rank() == 0)
            w_.save(out, "the weights of optimizer lopt, exported");
        step_mult_ = cfg.get_double("step_mult");
        exp_mult_ = cfg.get_double("exp_mult");
        use_schedule_ = cfg.get_bool("use_schedule");
        const bool width_scaling = cfg.get_bool("width_scaling");
        for (size_t k = 0; k < 7; ++k)
            decays_[k] = 1.0 - (1.0 - kBaseDecays[k]) *
                                   std::exp(10.0 * w_.decay_offsets[static_cast<int64_t>(k)].item<double>());
        for (const auto& slot : slots_) {
            if (slot.is_split())
                throw plexus::Error("lopt: parameter '" + slot.name +
                                        "' is split over the tensor-parallel group, and its row, column and feature "
                                        "statistics span the whole tensor (not reduced over that group)",
                                    "use data parallelism, ZeRO or a pipeline with lopt, not tensor parallelism");
            if (slot.is_piece()) group_ = slot.shard_group;
            int64_t whole = 1;
            for (auto d : slot.full_shape) whole *= d;
            if (!slot.is_piece() && slot.param.numel() != whole)
                throw plexus::Error(
                    "lopt: slot '" + slot.name + "' is a piece of a tensor with no shard group to complete it",
                    "its features are per whole tensor: the strategy must describe its pieces (plexus::piece_slot)");
            states_.push_back(make_state(slot, width_scaling));
        }
        if (group_) agree_on_tensors();
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        // The progress features, the same for every tensor: tanh(t / τ - 1), t the steps taken.
        auto progress = torch::empty({kTimeFeatures}, torch::kFloat64);
        for (int k = 0; k < kTimeFeatures; ++k) progress[k] = std::tanh(static_cast<double>(t_) / kTimescales[k] - 1.0);
        if (group_) {
            sharded_step(grads, lr_scale, progress);
        } else {
            for (size_t i = 0; i < slots_.size(); ++i) {
                auto p = param_of(i);
                auto g = gradient_of(grads, i);
                auto stacked = features(states_[i], g, p.to(torch::kFloat64));
                apply(i, normalized(stacked, (stacked * stacked).mean(0, true), progress), lr_scale);
            }
        }
        ++t_;
    }

    // The features of one whole tensor, before normalization: [elements, 28]. Updates the
    // tensor's accumulators with g first.
    torch::Tensor features(TensorState& s, const torch::Tensor& g, const torch::Tensor& p) {
        const auto g2 = g * g;
        update_elementwise(s, g, g2);
        torch::Tensor row_feat[3], col_feat[3], row_col[3];
        for (int c = 0; c < 3; ++c) {
            const double d = decays_[4 + c];
            if (s.d0 >= 0) {
                s.row[c].mul_(d).add_((g2 + 1e-30).mean(s.d0, true), 1.0 - d);
                s.col[c].mul_(d).add_((g2 + 1e-30).mean(s.d1, true), 1.0 - d);
                const auto [row_f, col_f] = row_col_factors(s, c);
                row_col[c] = row_f * col_f;
                row_feat[c] = s.row[c].expand_as(g);
                col_feat[c] = s.col[c].expand_as(g);
            } else {
                s.full[c].mul_(d).add_(g2 + 1e-30, 1.0 - d);
                row_col[c] = torch::rsqrt(s.full[c] + 1e-9);
                row_feat[c] = col_feat[c] = s.full[c];
            }
        }
        return stack_features(s, g, p, row_col, row_feat, col_feat);
    }

    // The 28 features of one tensor (or piece) from its accumulators and the second-moment
    // factors, one row per element.
    torch::Tensor stack_features(const TensorState& s, const torch::Tensor& g, const torch::Tensor& p,
                                 const torch::Tensor* row_col, const torch::Tensor* row_feat,
                                 const torch::Tensor* col_feat) const {
        const auto rs = torch::rsqrt(s.r + 1e-6);
        std::vector<torch::Tensor> f{g, p, s.m[0], s.m[1], s.m[2], s.r, s.m[0] * rs, s.m[1] * rs, s.m[2] * rs, rs};
        for (int c = 0; c < 3; ++c) f.push_back(g * row_col[c]);
        for (int c = 0; c < 3; ++c) f.push_back(row_feat[c]);
        for (int c = 0; c < 3; ++c) f.push_back(col_feat[c]);
        for (int c = 0; c < 3; ++c) f.push_back(torch::rsqrt(row_feat[c] + 1e-8));
        for (int c = 0; c < 3; ++c) f.push_back(torch::rsqrt(col_feat[c] + 1e-8));
        for (int c = 0; c < 3; ++c)  // 1-D: the reference's 1e-6 here, not row_col's 1e-9 (above)
            f.push_back(s.m[c] * (s.d0 >= 0 ? row_col[c] : torch::rsqrt(s.full[c] + 1e-6)));
        return torch::stack(f, -1).reshape({-1, kFeatures});
    }

    // Each feature divided by its root mean square over the whole tensor, with the progress
    // features appended: [elements, 39].
    static torch::Tensor normalized(const torch::Tensor& stacked, const torch::Tensor& mean_square,
                                    const torch::Tensor& progress) {
        return torch::cat(
            {stacked / torch::sqrt(1e-5 + mean_square), progress.expand({stacked.size(0), kTimeFeatures})}, 1);
    }

    void update_elementwise(TensorState& s, const torch::Tensor& g, const torch::Tensor& g2) {
        for (int b = 0; b < 3; ++b) s.m[b].mul_(decays_[b]).add_(g, 1.0 - decays_[b]);
        s.r.mul_(decays_[3]).add_(g2, 1.0 - decays_[3]);
    }

    // Adafactor's factors rsqrt(row / mean(row)) and rsqrt(col), in the accumulators' shapes
    // (their product broadcasts to the tensor's).
    static std::pair<torch::Tensor, torch::Tensor> row_col_factors(const TensorState& s, int c) {
        return {torch::rsqrt(torch::clamp_min(s.row[c] / (s.row[c].mean() + 1e-9), 1e-9)),
                torch::rsqrt(torch::clamp_min(s.col[c], 1e-9))};
    }

    // Pieces: the sums of g² along rows and columns, then the features' sums of squares, each
    // all-reduced over the shard group at once for every tensor (layout: agree_on_tensors).
    void sharded_step(const std::vector<torch::Tensor>& grads, double lr_scale, const torch::Tensor& progress) {
        auto sums = torch::zeros({sums_size_}, torch::kFloat64);
        std::vector<torch::Tensor> g(slots_.size());
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& s = states_[i];
            g[i] = gradient_of(grads, i);
            const auto g2 = g[i] * g[i];
            update_elementwise(s, g[i], g2);
            if (s.d0 < 0) continue;
            sums.narrow(0, s.sums_at, s.row[0].numel()).index_add_(0, s.row_index, g2);
            sums.narrow(0, s.sums_at + s.row[0].numel(), s.col[0].numel()).index_add_(0, s.col_index, g2);
        }
        if (sums_size_ > 0) group_->all_reduce(sums, plexus::ReduceOp::Sum)->wait();
        // The whole tensors' row and column accumulators, then each piece's share of every
        // feature's sum of squares.
        auto squares = torch::zeros({squares_size_}, torch::kFloat64);
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& s = states_[i];
            for (int c = 0; c < 3; ++c) {
                const double d = decays_[4 + c];
                if (s.d0 >= 0) {
                    const int64_t rows = s.row[c].numel(), cols = s.col[c].numel();
                    s.row[c].mul_(d).add_(
                        sums.narrow(0, s.sums_at, rows).view(s.row[c].sizes()) / static_cast<double>(s.numel / rows) +
                            1e-30,
                        1.0 - d);
                    s.col[c].mul_(d).add_(sums.narrow(0, s.sums_at + rows, cols).view(s.col[c].sizes()) /
                                                  static_cast<double>(s.numel / cols) +
                                              1e-30,
                                          1.0 - d);
                } else {
                    s.full[c].mul_(d).add_(g[i] * g[i] + 1e-30, 1.0 - d);
                }
            }
            const auto stacked = piece_features(s, g[i], param_of(i).to(torch::kFloat64));
            squares.narrow(0, s.squares_at, kFeatures).add_((stacked * stacked).sum(0));
        }
        if (squares_size_ > 0) group_->all_reduce(squares, plexus::ReduceOp::Sum)->wait();
        // The features again (cheaper than keeping them), normalized over the whole tensor.
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto& s = states_[i];
            const auto stacked = piece_features(s, g[i], param_of(i).to(torch::kFloat64));
            const auto mean_square =
                squares.narrow(0, s.squares_at, kFeatures).view({1, kFeatures}) / static_cast<double>(s.numel);
            apply(i, normalized(stacked, mean_square, progress), lr_scale);
        }
    }

    // A piece's 28 features from its accumulators (updated): the whole tensor's row and column
    // factors read at the piece's elements.
    torch::Tensor piece_features(const TensorState& s, const torch::Tensor& g, const torch::Tensor& p) const {
        torch::Tensor row_col[3], row_feat[3], col_feat[3];
        for (int c = 0; c < 3; ++c) {
            if (s.d0 >= 0) {
                const auto [row_f, col_f] = row_col_factors(s, c);
                row_col[c] = row_f.view(-1).index_select(0, s.row_index) * col_f.view(-1).index_select(0, s.col_index);
                row_feat[c] = s.row[c].view(-1).index_select(0, s.row_index);
                col_feat[c] = s.col[c].view(-1).index_select(0, s.col_index);
            } else {
                row_col[c] = torch::rsqrt(s.full[c] + 1e-9);
                row_feat[c] = col_feat[c] = s.full[c];
            }
        }
        return stack_features(s, g, p, row_col, row_feat, col_feat);
    }

    // The ranks agree on one order of the tensors whose pieces they hold (each rank's names,
    // hashed, all-gathered), which fixes where each tensor's sums sit in the all-reduced buffers.
    void agree_on_tensors() {
        std::map<std::string, size_t> mine;  // tensor name -> slot
        std::vector<int64_t> keys;           // (hash, sums size) per slot
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto& name = slots_[i].tensor_name();
            if (!mine.emplace(name, i).second)
                throw plexus::Error("lopt: two slots of this rank are pieces of '" + name + "'",
                                    "a sharding strategy gives each rank one contiguous piece of a tensor");
            const auto& s = states_[i];
            keys.push_back(name_key(name));
            keys.push_back(s.d0 >= 0 ? s.row[0].numel() + s.col[0].numel() : 0);
        }
        const int world = group_->world_size();
        auto count = torch::tensor({static_cast<int64_t>(keys.size())}, torch::kInt64);
        auto counts = torch::empty({world}, torch::kInt64);
        group_->all_gather(counts, count)->wait();
        const int64_t most = counts.max().item<int64_t>();
        auto padded = torch::full({most}, -1, torch::kInt64);
        if (!keys.empty())
            padded.narrow(0, 0, static_cast<int64_t>(keys.size())).copy_(torch::tensor(keys, torch::kInt64));
        auto all = torch::empty({world * most}, torch::kInt64);
        if (most > 0) group_->all_gather(all, padded)->wait();
        // Every tensor in the order of the ranks' lists, each once.
        std::map<int64_t, std::pair<int64_t, int64_t>> where;  // hash -> (sums_at, squares_at)
        sums_size_ = squares_size_ = 0;
        for (int64_t k = 0; k + 1 < world * most; k += 2) {
            const int64_t hash = all[k].item<int64_t>(), size = all[k + 1].item<int64_t>();
            if (hash < 0 || where.count(hash)) continue;
            where[hash] = {sums_size_, squares_size_};
            sums_size_ += size;
            squares_size_ += kFeatures;
        }
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto [sums_at, squares_at] = where.at(keys[2 * i]);
            states_[i].sums_at = sums_at;
            states_[i].squares_at = squares_at;
        }
    }

    torch::Tensor param_of(size_t i) const {
        return slots_[i].param.dim() == 0 ? slots_[i].param.view({1}) : slots_[i].param;
    }
    torch::Tensor gradient_of(const std::vector<torch::Tensor>& grads, size_t i) const {
        return torch::nan_to_num(grads[i].reshape(param_of(i).sizes()).to(torch::kFloat64), 0.0, 0.0, 0.0);
    }
    void apply(size_t i, const torch::Tensor& x, double lr_scale) {
        auto p = param_of(i);
        auto update = direction(x, p);
        p.sub_((update * (states_[i].scale * (use_schedule_ ? lr_scale : 1.0))).to(p.scalar_type()));
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
    TensorState make_state(const plexus::ParamSlot& slot, bool width_scaling) {
        TensorState s;
        auto shape = slot.param.dim() == 0 ? std::vector<int64_t>{1} : slot.param.sizes().vec();  // the slot's
        const auto& whole = slot.is_piece() ? slot.full_shape : shape;                            // its tensor's
        auto zeros = [&](std::vector<int64_t> sizes) { return torch::zeros(sizes, torch::kFloat64); };
        for (auto& m : s.m) m = zeros(shape);
        s.r = zeros(shape);
        s.numel = 1;
        for (auto d : whole) s.numel *= d;
        if (whole.size() >= 2) {
            std::tie(s.d0, s.d1) = factored_dims(whole);
            auto row_shape = whole, col_shape = whole;
            row_shape[static_cast<size_t>(s.d0)] = 1;
            col_shape[static_cast<size_t>(s.d1)] = 1;
            for (int c = 0; c < 3; ++c) s.row[c] = zeros(row_shape), s.col[c] = zeros(col_shape);
            if (slot.is_piece()) {
                s.row_index = reduced_index(whole, s.d0, slot.offset, slot.param.numel());
                s.col_index = reduced_index(whole, s.d1, slot.offset, slot.param.numel());
            }
        } else {
            for (auto& v : s.full) v = zeros(shape);
        }
        if (width_scaling && slot.width_role == plexus::WidthRole::Hidden && slot.full_shape.size() == 2)
            s.scale = 1.0 / static_cast<double>(slot.full_shape[1]);
        return s;
    }

    std::vector<plexus::ParamSlot> slots_;
    std::vector<TensorState> states_;
    plexus::Transport* group_ = nullptr;        // the ranks holding the other pieces (sharded)
    int64_t sums_size_ = 0, squares_size_ = 0;  // of the two all-reduced buffers (sharded)
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
    d.summary =
        "learned optimizer: small_fc_lopt (per-parameter MLP on Adafactor features), optional μLO 1/fan_in scaling";
    d.schema = {
        {"weights", "", "the meta-trained weights (a plexus-lopt 1 text file), or \"init\" for untrained ones"},
        {"export", "", "writes the weights in use to this file when the optimizer is built (\"\": none)"},
        {"step_mult", 0.001, "step = step_mult · d · exp(exp_mult · m); μLO uses 0.01"},
        {"exp_mult", 0.001, "see step_mult"},
        {"width_scaling", true,
         "on a μP model (parametrization = \"mup\"), μLO: hidden matrices' steps * 1 / fan_in; on an SP model "
         "nothing changes (false: ignore the roles, for ablation)"},
        {"use_schedule", false, "multiply the step by the [train] learning-rate schedule's factor"},
    };
    // `plexus check`: untrained weights, and the schedule applied (a learned optimizer follows its own
    // schedule by default, so lr_scale 0 would not stop it).
    // `plexus meta-train` may train this optimizer: the file of key `weights` holds its
    // meta-parameters, and key `export` writes the ones in use (the untrained start).
    d.extras["meta.weights"] = "weights";
    d.extras["meta.export"] = "export";
    d.extras["check.settings"] = "optimizer.weights=init;optimizer.use_schedule=true";
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext& ctx,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<Lopt>(cfg, ctx, std::move(slots));
    };
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "width_scaling";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
