// optimizers/adafactor: Adafactor (Shazeer & Stern 2018). The second moment of a matrix's
// gradient is kept factored, as a row and a column average (O(n + m) memory instead of O(nm)),
// and rebuilt as their outer product over their mean; vectors keep a full one. Per step t:
//     beta2_t = 1 - t^decay_rate                      (decay_rate -0.8: beta2 grows towards 1)
//     R <- beta2_t R + (1 - beta2_t) row_mean(g^2 + eps1);  C likewise with column means
//     u = g / sqrt(R C^T / mean(R))                    (vectors: g / sqrt(V))
//     u <- u / max(1, RMS(u) / clip_threshold)         (update clipping)
//     p <- p - rho_t * max(eps2, RMS(p)) * u           (relative step: scaled by the weights' RMS)
// with rho_t = min(lr, 1/sqrt(t)) (relative_step, the paper's schedule) or lr, times the run's
// schedule factor; optional first moment beta1 on u; weight decay p <- p - wd * step * p (on
// matrices only unless decay_vectors, as plexus's AdamW; the port decays whatever it is given).
// Defaults and operation order as in the PyTorch port the field uses (github.com/huggingface/
// transformers, src/transformers/optimization.py @8395f14, after fairseq's): eps1 1e-30, eps2
// 1e-3, clip 1.0, decay_rate -0.8, no first moment, no decay. To run the paper's schedule alone,
// set [train] lr_schedule = "constant" with no warm-up.
//
// The factored statistics and both RMS span whole tensors. Under ZeRO and ACCO, which hand an
// optimizer pieces of flattened parameters, a tensor split between ranks has its gradient and
// weights gathered whole each step (plexus::PieceGather: two all-gathers of the split tensors'
// pieces); every rank holding a piece keeps that tensor's (small) moments whole, computes the
// whole update, and applies its piece. Tensor parallelism's splits are refused.
#include <plexus/kit/whole_tensors.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>

namespace {

struct Settings {
    double lr, eps1, eps2, clip, decay_rate, beta1, weight_decay;
    bool relative_step, scale_parameter, decay_vectors;
};

double rms(const torch::Tensor& t) { return t.norm().item<double>() / std::sqrt(static_cast<double>(t.numel())); }

std::vector<int64_t> without_dim(std::vector<int64_t> shape, int64_t dim) {
    shape.erase(shape.begin() + (dim < 0 ? static_cast<int64_t>(shape.size()) + dim : dim));
    return shape;
}

class Adafactor : public plexus::Optimizer {
public:
    Adafactor(const Settings& s, std::vector<plexus::ParamSlot> slots) : s_(s), slots_(std::move(slots)) {
        plexus::require_unsplit_tensors(slots_, "adafactor",
                                        "Adafactor's factored moments and update RMS need whole tensors");
        bool pieces = false;
        for (const auto& slot : slots_) {
            const auto& shape = slot.full_shape;  // the whole tensor's, piece or not
            const auto o = slot.param.options();
            const bool factored = shape.size() >= 2;
            // A matrix [..., n, m] keeps row averages [..., n] and column averages [..., m].
            row_.push_back(factored ? torch::zeros(without_dim(shape, -1), o) : torch::Tensor());
            col_.push_back(factored ? torch::zeros(without_dim(shape, -2), o) : torch::Tensor());
            full_.push_back(factored ? torch::Tensor() : torch::zeros(shape, o));
            exp_avg_.push_back(s_.beta1 > 0 ? torch::zeros(shape, o) : torch::Tensor());
            decays_.push_back(s_.decay_vectors || shape.size() >= 2);
            numel_ += slot.param.numel();
            pieces = pieces || slot.is_piece();
        }
        if (pieces) gather_ = std::make_unique<plexus::PieceGather>(slots_, std::vector<bool>(slots_.size(), true));
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        ++step_;
        const double t = static_cast<double>(step_);
        const double beta2 = 1.0 - std::pow(t, s_.decay_rate);  // 0 at the first step: V = g^2
        const double rho = (s_.relative_step ? std::min(s_.lr, 1.0 / std::sqrt(t)) : s_.lr) * lr_scale;
        std::vector<torch::Tensor> params;
        for (const auto& slot : slots_) params.push_back(slot.param);
        // Whole tensors (the pieces' tensors rebuilt when sharded).
        const auto whole_grads = gather_ ? gather_->whole(grads) : grads;
        const auto whole_params = gather_ && s_.scale_parameter ? gather_->whole(params) : params;
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& p = slots_[i].param;
            const auto& g = whole_grads[i];
            const double step_size = rho * (s_.scale_parameter ? std::max(s_.eps2, rms(whole_params[i])) : 1.0);
            auto g2 = g * g + s_.eps1;
            torch::Tensor u;
            if (row_[i].defined()) {
                row_[i].mul_(beta2).add_(g2.mean(-1), 1.0 - beta2);
                col_[i].mul_(beta2).add_(g2.mean(-2), 1.0 - beta2);
                auto r = (row_[i] / row_[i].mean(-1, /*keepdim=*/true)).rsqrt_().unsqueeze(-1);
                u = r * col_[i].unsqueeze(-2).rsqrt() * g;
            } else {
                full_[i].mul_(beta2).add_(g2, 1.0 - beta2);
                u = full_[i].rsqrt() * g;
            }
            u.div_(std::max(1.0, rms(u) / s_.clip)).mul_(step_size);
            if (exp_avg_[i].defined()) u = exp_avg_[i].mul_(s_.beta1).add_(u, 1.0 - s_.beta1);
            if (decays_[i] && s_.weight_decay != 0) p.add_(p, -s_.weight_decay * step_size);
            p.sub_(u.reshape(-1).narrow(0, slots_[i].offset, p.numel()).view(p.sizes()));
        }
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(step_, torch::kInt64));
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto prefix = std::to_string(i) + "." + slots_[i].name;
            for (const auto& [key, t] : moments(i)) out.emplace_back(prefix + "." + key, t.clone());
        }
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        size_t expected = 1;
        for (size_t i = 0; i < slots_.size(); ++i) expected += moments(i).size();
        if (state.size() != expected)
            throw plexus::Error("adafactor: optimizer state has " + std::to_string(state.size()) +
                                    " tensors, expected " + std::to_string(expected),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        step_ = state[0].second.item<int64_t>();
        size_t at = 1;
        for (size_t i = 0; i < slots_.size(); ++i)
            for (auto& [key, t] : moments(i)) t.copy_(state[at++].second);  // the moments share storage
    }

    // Per element: g^2 + eps 2, statistics 2, rebuilt denominator and product 3, RMS and scaling
    // 3, update 1 (the factored statistics' own updates are O(n + m)).
    double flops_per_step() const override { return 11.0 * static_cast<double>(numel_); }

private:
    // Slot i's moments, by name, in a fixed order.
    std::vector<std::pair<std::string, torch::Tensor>> moments(size_t i) const {
        std::vector<std::pair<std::string, torch::Tensor>> out;
        if (row_[i].defined()) {
            out.emplace_back("row", row_[i]);
            out.emplace_back("col", col_[i]);
        } else {
            out.emplace_back("second", full_[i]);
        }
        if (exp_avg_[i].defined()) out.emplace_back("exp_avg", exp_avg_[i]);
        return out;
    }

    Settings s_;
    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> row_, col_, full_, exp_avg_;
    std::vector<bool> decays_;
    std::unique_ptr<plexus::PieceGather> gather_;  // sharded: rebuilds the split tensors
    int64_t step_ = 0, numel_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "adafactor";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "Adafactor: factored second moments, update clipping, relative steps (Shazeer & Stern 2018)";
    d.schema = {
        plexus::ConfigKey("lr", 1e-2,
                          "step size rho; with relative_step, the cap of min(lr, 1/sqrt(t)); scaled by the schedule")
            .at_least(0),
        {"relative_step", true, "rho_t = min(lr, 1/sqrt(t)) (the paper's); false: rho = lr"},
        {"scale_parameter", true, "multiply the step by max(eps2, RMS(p)): steps relative to the weights' scale"},
        {"eps", plexus::Value::list({1e-30, 1e-3}), "[eps1 added to g^2, eps2 the least weight RMS]"},
        plexus::ConfigKey("clip_threshold", 1.0, "the update's RMS is clipped to this").at_least(0),
        {"decay_rate", -0.8, "beta2_t = 1 - t^decay_rate"},
        plexus::ConfigKey("beta1", 0.0, "first-moment decay on the update; 0: none (the paper's default)").at_least(0),
        plexus::ConfigKey("weight_decay", 0.0, "decoupled weight decay, times the step size").at_least(0),
        {"decay_vectors", false, "also decay 1-D parameters (biases, norms)"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        Settings s;
        s.lr = cfg.get_double("lr");
        s.relative_step = cfg.get_bool("relative_step");
        s.scale_parameter = cfg.get_bool("scale_parameter");
        const auto eps = cfg.get_doubles("eps");
        cfg.require(eps.size() == 2 && eps[0] >= 0 && eps[1] >= 0, "eps", "must hold two numbers >= 0 [eps1, eps2]");
        s.eps1 = eps[0], s.eps2 = eps[1];
        s.clip = cfg.get_double("clip_threshold");
        cfg.require(s.clip > 0, "clip_threshold", "must be > 0");
        s.decay_rate = cfg.get_double("decay_rate");
        cfg.require(s.decay_rate < 0, "decay_rate", "must be < 0 (beta2_t = 1 - t^decay_rate rises towards 1)");
        s.beta1 = cfg.get_double("beta1");
        cfg.require(s.beta1 < 1, "beta1", "must lie in [0, 1)");
        s.weight_decay = cfg.get_double("weight_decay");
        s.decay_vectors = cfg.get_bool("decay_vectors");
        return std::make_unique<Adafactor>(s, std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
