// optimizers/muon: Muon, momentum orthogonalized by Newton-Schulz (Jordan et al. 2024,
// kellerjordan.github.io/posts/muon), for the hidden matrices, and AdamW for everything else
// (the embedding and the head, which muon_adam_blocks names, and every vector), as the authors
// prescribe. A hidden matrix W [n, m] with gradient g:
//     M <- beta M + (1 - beta) g;   U = (1 - beta) g + beta M        (Nesterov)
//     W <- W (1 - lr wd) - lr sqrt(max(1, n / m)) NS5(U)
// NS5 (muon.hpp) replaces U by (nearly) its orthogonal factor, so every direction of the update
// moves by about the same amount. Defaults and order as in the authors' code
// (github.com/KellerJordan/Muon, muon.py @00ba60d, MuonWithAuxAdam): lr 0.02, momentum 0.95,
// 5 steps, no decay; AdamW at 3e-4, betas 0.9 and 0.95, eps 1e-10. The iteration runs in
// bfloat16 on a GPU, as theirs, and in float32 on a CPU (where bfloat16 matmuls are slow). Both
// rates follow the run's schedule.
//
// NS5 needs whole matrices. Under ZeRO and ACCO, which hand an optimizer pieces of flattened
// parameters, each rank keeps the momentum of its pieces; the look-ahead U of a matrix split
// between ranks is gathered whole (plexus::PieceGather: one all-gather a step of the split
// matrices' pieces), orthogonalized by every rank holding a piece, and each applies its piece.
// Tensor parallelism's splits are refused when the optimizer is built.
#include <plexus/kit/whole_tensors.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>
#include <c10/util/accumulate.h>

#include <cmath>
#include <memory>

#include "optimizers/muon/muon.hpp"

namespace {

struct Settings {
    double lr, momentum, weight_decay, adam_lr, beta1, beta2, eps;
    int64_t ns_steps;
    bool nesterov;
    std::vector<std::string> adam_blocks;
};

class Muon : public plexus::Optimizer {
public:
    Muon(Settings s, std::vector<plexus::ParamSlot> slots) : s_(std::move(s)), slots_(std::move(slots)) {
        plexus::require_unsplit_tensors(slots_, "muon", "Newton-Schulz orthogonalizes whole matrices");
        bool pieces = false;
        for (const auto& slot : slots_) {
            const bool hidden = slot.full_shape.size() >= 2 && !in_adam_block(slot.tensor_name());
            pieces = pieces || slot.is_piece();
            hidden_.push_back(hidden);
            momentum_.push_back(torch::zeros_like(slot.param));
            second_.push_back(hidden ? torch::Tensor() : torch::zeros_like(slot.param));
            if (hidden) {
                const auto rows = slot.full_shape[0], cols = c10::multiply_integers(slot.full_shape) / rows;
                const auto small = std::min(rows, cols), large = std::max(rows, cols);
                // 5 steps of two Gram products and one update product on the wide orientation.
                ns_flops_ += static_cast<double>(s_.ns_steps) * 2.0 *
                             (2.0 * small * small * large + static_cast<double>(small) * small * small);
            }
            numel_ += slot.param.numel();
        }
        if (pieces) gather_ = std::make_unique<plexus::PieceGather>(slots_, hidden_);
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        ++step_;
        std::vector<torch::Tensor> lookahead(slots_.size());
        for (size_t i = 0; i < slots_.size(); ++i) {
            if (!hidden_[i]) {
                adam_step(i, grads[i], s_.adam_lr * lr_scale);
                continue;
            }
            auto& m = momentum_[i];
            m.lerp_(grads[i], 1.0 - s_.momentum);
            lookahead[i] = s_.nesterov ? torch::lerp(grads[i], m, s_.momentum) : m.clone();
        }
        auto whole = gather_ ? gather_->whole(lookahead) : lookahead;
        for (size_t i = 0; i < slots_.size(); ++i)
            if (hidden_[i]) muon_step(i, whole[i], s_.lr * lr_scale);
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(step_, torch::kInt64));
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto prefix = std::to_string(i) + "." + slots_[i].name;
            out.emplace_back(prefix + ".momentum", momentum_[i].clone());
            if (!hidden_[i]) out.emplace_back(prefix + ".exp_avg_sq", second_[i].clone());
        }
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        size_t expected = 1;
        for (bool hidden : hidden_) expected += hidden ? 1 : 2;
        if (state.size() != expected)
            throw plexus::Error("muon: optimizer state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(expected),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        step_ = state[0].second.item<int64_t>();
        size_t at = 1;
        for (size_t i = 0; i < slots_.size(); ++i) {
            momentum_[i].copy_(state[at++].second);
            if (!hidden_[i]) second_[i].copy_(state[at++].second);
        }
    }

    // Newton-Schulz's products, plus about 12 FLOPs an element for the element-wise updates.
    double flops_per_step() const override { return ns_flops_ + 12.0 * static_cast<double>(numel_); }

private:
    bool in_adam_block(const std::string& name) const {
        for (const auto& block : s_.adam_blocks)
            if (name.rfind(block + ".", 0) == 0) return true;
        return false;
    }

    // `u`: the whole matrix's Nesterov look-ahead; the slot (whole, or a piece) moves by its part.
    void muon_step(size_t i, const torch::Tensor& u, double lr) {
        const auto& slot = slots_[i];
        auto& p = slots_[i].param;
        const auto rows = slot.full_shape[0];
        auto matrix = u.reshape({rows, -1});  // a 3-D or 4-D weight as [out, in]
        if (p.is_cuda()) matrix = matrix.to(torch::kBFloat16);
        auto ortho = plexus::muon::newton_schulz(matrix, static_cast<int>(s_.ns_steps)).to(p.scalar_type());
        const double scale = std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(matrix.size(1))));
        if (s_.weight_decay != 0) p.mul_(1.0 - lr * s_.weight_decay);
        p.add_(ortho.reshape(-1).narrow(0, slot.offset, p.numel()).view(p.sizes()), -lr * scale);
    }

    // Adam with bias correction and decoupled decay, as the authors' auxiliary AdamW.
    void adam_step(size_t i, const torch::Tensor& g, double lr) {
        auto& p = slots_[i].param;
        momentum_[i].lerp_(g, 1.0 - s_.beta1);
        second_[i].lerp_(g * g, 1.0 - s_.beta2);
        const double t = static_cast<double>(step_);
        const double bc1 = 1.0 - std::pow(s_.beta1, t), bc2 = 1.0 - std::pow(s_.beta2, t);
        if (s_.weight_decay != 0) p.mul_(1.0 - lr * s_.weight_decay);
        p.addcdiv_(momentum_[i] / bc1, (second_[i] / bc2).sqrt_().add_(s_.eps), -lr);
    }

    Settings s_;
    std::vector<plexus::ParamSlot> slots_;
    std::vector<bool> hidden_;
    std::vector<torch::Tensor> momentum_, second_;  // Muon's momentum or Adam's first moment; Adam's second
    std::unique_ptr<plexus::PieceGather> gather_;   // sharded: rebuilds the split matrices
    int64_t step_ = 0, numel_ = 0;
    double ns_flops_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "muon";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "Muon: Newton-Schulz-orthogonalized momentum on hidden matrices, AdamW on the rest";
    d.schema = {
        plexus::ConfigKey("lr", 0.02, "Muon's rate on hidden matrices (scaled by the schedule)").at_least(0),
        plexus::ConfigKey("momentum", 0.95, "Muon's momentum").at_least(0),
        {"nesterov", true, "step along the Nesterov look-ahead of the momentum"},
        plexus::ConfigKey("ns_steps", 5, "Newton-Schulz iterations").at_least(1),
        plexus::ConfigKey("weight_decay", 0.0, "decoupled weight decay for both parts, times the rate").at_least(0),
        plexus::ConfigKey("adam_lr", 3e-4, "AdamW's rate on the embedding, the head and every vector").at_least(0),
        {"adam_betas", plexus::Value::list({0.9, 0.95}), "AdamW's moment decays"},
        plexus::ConfigKey("adam_eps", 1e-10, "AdamW's epsilon").at_least(0),
        {"adam_blocks", plexus::Value::list({"embed", "head"}),
         "blocks whose matrices go to AdamW, not Muon (the models' input embedding and output head)"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        Settings s;
        s.lr = cfg.get_double("lr");
        s.momentum = cfg.get_double("momentum");
        cfg.require(s.momentum < 1, "momentum", "must lie in [0, 1)");
        s.nesterov = cfg.get_bool("nesterov");
        s.ns_steps = cfg.get_int("ns_steps");
        s.weight_decay = cfg.get_double("weight_decay");
        s.adam_lr = cfg.get_double("adam_lr");
        const auto betas = cfg.get_doubles("adam_betas");
        cfg.require(betas.size() == 2 && betas[0] >= 0 && betas[0] < 1 && betas[1] >= 0 && betas[1] < 1, "adam_betas",
                    "must hold two numbers in [0, 1)");
        s.beta1 = betas[0], s.beta2 = betas[1];
        s.eps = cfg.get_double("adam_eps");
        s.adam_blocks = cfg.get_strings("adam_blocks");
        return std::make_unique<Muon>(std::move(s), std::move(slots));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
