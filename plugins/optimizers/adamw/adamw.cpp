// optimizers/adamw: Adam with decoupled weight decay (Loshchilov & Hutter), bias-corrected.
// On CUDA with LibTorch 2.x, one fused kernel per step (compat::fused_adamw_); on the CPU one
// pass over each contiguous float32 tensor (adamw_pass); elsewhere a loop of in-place tensor
// operations. All compute the same update (the one-pass loop in the tensor loop's order).
// On a μP model it is μAdam: a hidden matrix's rate is divided by its width multiplier
// (plexus/width.hpp), its decay per step unchanged.
#include <plexus/kit/compat.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>
#include <set>
#include <utility>

namespace {

// The whole update of one float32 tensor in one pass: 4 streams read, 3 written, instead of the
// ~20 passes of the tensor-operation loop below (the optimizer is memory-bound on a CPU).
// Operation order as in that loop: decay, lerp, v*b2 + (1-b2)*g*g, sqrt(v)*inv + eps, addcdiv.
// grad_scale (gradient clipping's factor) is applied as each gradient is read.
void adamw_pass(float* p, const float* g, float* m, float* v, int64_t n, float grad_scale, float decay,
                float one_minus_b1, float b2, float one_minus_b2, float inv_sqrt_bc2, float eps, float step_size) {
    for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * grad_scale;
        const float mi = m[i] + one_minus_b1 * (gi - m[i]);
        const float vi = v[i] * b2 + one_minus_b2 * (gi * gi);
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay + (-step_size) * (mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps));
    }
}

// Large tensors are updated by the compute threads in pieces of this many elements.
constexpr int64_t kElementsPerTask = 1 << 16;

bool fits_pass(const torch::Tensor& p, const torch::Tensor& g) {
    return p.device().is_cpu() && p.scalar_type() == torch::kFloat && g.scalar_type() == torch::kFloat &&
           p.is_contiguous() && g.is_contiguous() && g.numel() == p.numel();
}

class AdamW : public plexus::Optimizer {
public:
    AdamW(const plexus::Config& cfg, std::vector<plexus::ParamSlot> slots) : slots_(std::move(slots)) {
        lr_ = cfg.get_double("lr");
        cfg.require(std::isfinite(lr_) && lr_ >= 0, "lr", "must be a finite number >= 0 (0 freezes the parameters)");
        auto betas = cfg.get_doubles("betas");
        cfg.require(betas.size() == 2, "betas", "must hold two numbers [beta1, beta2]");
        beta1_ = betas[0];
        beta2_ = betas[1];
        cfg.require(beta1_ >= 0 && beta1_ < 1 && beta2_ >= 0 && beta2_ < 1, "betas", "must lie in [0, 1)");
        eps_ = cfg.get_double("eps");
        weight_decay_ = cfg.get_double("weight_decay");
        const bool decay_vectors = cfg.get_bool("decay_vectors");
        const bool width_scaling = cfg.get_bool("width_scaling");
        for (const auto& s : slots_) {
            rate_factors_.push_back(width_scaling ? plexus::adam_rate_factor(s.width_role, s.width_mult) : 1.0);
            exp_avg_.push_back(torch::zeros_like(s.param));
            exp_avg_sq_.push_back(torch::zeros_like(s.param));
            scratch_.emplace_back();  // allocated where the one-pass update does not apply
            decays_.push_back(decay_vectors || s.full_shape.size() >= 2);
            numel_ += s.param.numel();
        }
        try_fused_ = !slots_.empty() && slots_[0].param.is_cuda();
        if (try_fused_) {
            step_tensor_ = torch::zeros({}, slots_[0].param.options().dtype(torch::kFloat));
            grad_divisor_ = torch::ones({}, slots_[0].param.options().dtype(torch::kFloat));
        }
    }

    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override { step_scaled(grads, lr_scale, 1.0); }

    // The clipping factor folded in: no pass of its own over the gradients.
    void step_scaled(const std::vector<torch::Tensor>& grads, double lr_scale, double grad_scale) override {
        torch::NoGradGuard no_grad;
        ++step_;
        const double lr = lr_ * lr_scale;
        const double bc1 = 1.0 - std::pow(beta1_, static_cast<double>(step_));
        const double bc2 = 1.0 - std::pow(beta2_, static_cast<double>(step_));
        const double step_size = lr / bc1;
        const double inv_sqrt_bc2 = 1.0 / std::sqrt(bc2);
        if (try_fused_ && fused_step(grads, lr, grad_scale)) return;
        for (size_t i = 0; i < slots_.size(); ++i) {
            auto& p = slots_[i].param;
            const auto& g = grads[i];
            const double decay = decays_[i] && weight_decay_ != 0 ? 1.0 - lr * weight_decay_ : 1.0;
            const double slot_step = step_size * rate_factors_[i];
            if (fits_pass(p, g)) {
                float *pp = p.data_ptr<float>(), *mp = exp_avg_[i].data_ptr<float>(),
                      *vp = exp_avg_sq_[i].data_ptr<float>();
                const float* gp = g.data_ptr<float>();
                // Element-wise, so the compute threads share a tensor without changing a bit of it.
                at::parallel_for(0, p.numel(), kElementsPerTask, [&](int64_t begin, int64_t end) {
                    adamw_pass(pp + begin, gp + begin, mp + begin, vp + begin, end - begin,
                               static_cast<float>(grad_scale), static_cast<float>(decay),
                               static_cast<float>(1.0 - beta1_), static_cast<float>(beta2_),
                               static_cast<float>(1.0 - beta2_), static_cast<float>(inv_sqrt_bc2),
                               static_cast<float>(eps_), static_cast<float>(slot_step));
                });
                continue;
            }
            if (grad_scale != 1.0) g.mul_(grad_scale);
            if (decay != 1.0) p.mul_(decay);
            exp_avg_[i].lerp_(g, 1.0 - beta1_);
            exp_avg_sq_[i].mul_(beta2_).addcmul_(g, g, 1.0 - beta2_);
            // denominator sqrt(v / bc2) + eps, built in a reused buffer: no allocation per step
            if (!scratch_[i].defined()) scratch_[i] = torch::empty_like(p);
            torch::sqrt_out(scratch_[i], exp_avg_sq_[i]).mul_(inv_sqrt_bc2).add_(eps_);
            p.addcdiv_(exp_avg_[i], scratch_[i], -slot_step);
        }
    }

    plexus::StateDict state() const override {
        plexus::StateDict out;
        out.emplace_back("step", torch::tensor(step_, torch::kInt64));
        for (size_t i = 0; i < slots_.size(); ++i) {
            const auto prefix = std::to_string(i) + "." + slots_[i].name;
            out.emplace_back(prefix + ".exp_avg", exp_avg_[i].clone());
            out.emplace_back(prefix + ".exp_avg_sq", exp_avg_sq_[i].clone());
        }
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        if (state.size() != 1 + 2 * slots_.size())
            throw plexus::Error("adamw: optimizer state has " + std::to_string(state.size()) + " tensors, expected " +
                                    std::to_string(1 + 2 * slots_.size()),
                                "the state comes from another model or optimizer configuration");
        torch::NoGradGuard no_grad;
        step_ = state[0].second.item<int64_t>();
        for (size_t i = 0; i < slots_.size(); ++i) {
            exp_avg_[i].copy_(state[1 + 2 * i].second);
            exp_avg_sq_[i].copy_(state[2 + 2 * i].second);
        }
    }

    // Per element: decay 1, lerp 2, second moment 3, sqrt/scale/eps 3, addcdiv 3.
    double flops_per_step() const override { return 12.0 * static_cast<double>(numel_); }

private:
    // One fused call per group of tensors sharing decay and rate (two groups, more on a μP model).
    // False where this LibTorch has no fused kernel (then it is not tried again).
    bool fused_step(const std::vector<torch::Tensor>& grads, double lr, double grad_scale) {
        step_tensor_.fill_(static_cast<double>(step_));
        // The kernel divides each gradient by its grad_scale (made for loss scaling).
        torch::Tensor divide_by;
        if (grad_scale != 1.0) divide_by = grad_divisor_.fill_(1.0 / grad_scale);
        std::set<std::pair<bool, double>> groups;
        for (size_t i = 0; i < slots_.size(); ++i) groups.insert({decays_[i], rate_factors_[i]});
        for (const auto& [decay, factor] : groups) {
            std::vector<torch::Tensor> p, g, m, v;
            for (size_t i = 0; i < slots_.size(); ++i) {
                if (decays_[i] != decay || rate_factors_[i] != factor) continue;
                p.push_back(slots_[i].param);
                g.push_back(grads[i]);
                m.push_back(exp_avg_[i]);
                v.push_back(exp_avg_sq_[i]);
            }
            if (p.empty()) continue;
            if (!plexus::compat::fused_adamw_(p, g, m, v, step_tensor_, lr * factor, beta1_, beta2_,
                                              decay ? weight_decay_ / factor : 0.0, eps_, divide_by)) {
                try_fused_ = false;
                return false;
            }
        }
        return true;
    }

    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> exp_avg_, exp_avg_sq_, scratch_;
    std::vector<bool> decays_;
    std::vector<double> rate_factors_;  // μAdam's per-slot factor on the rate; 1 outside μP
    double lr_, beta1_, beta2_, eps_, weight_decay_;
    int64_t step_ = 0;
    int64_t numel_ = 0;
    bool try_fused_ = false;
    torch::Tensor step_tensor_;   // step_ on the parameters' device, for the fused kernel
    torch::Tensor grad_divisor_;  // 1 / the clipping factor, for the fused kernel
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "adamw";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "1.0";
    d.summary = "AdamW: Adam with decoupled weight decay and bias correction";
    d.schema = {
        {"lr", 1e-3, "peak learning rate (scaled by the schedule in [train])"},
        {"betas", plexus::Value::list({0.9, 0.95}), "decay rates of the first and second moments"},
        plexus::ConfigKey("eps", 1e-8, "added to the denominator").at_least(0),
        plexus::ConfigKey("weight_decay", 0.1, "decoupled weight decay, multiplied by the current learning rate")
            .at_least(0),
        {"decay_vectors", false, "also decay 1-D parameters (biases, norms)"},
        {"width_scaling", true,
         "on a μP model, μAdam: hidden matrices' rates / their width multiplier (false: one rate for all, "
         "for ablation)"},
    };
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&,
                          std::vector<plexus::ParamSlot> slots) -> std::unique_ptr<plexus::Optimizer> {
        return std::make_unique<AdamW>(cfg, std::move(slots));
    };
    d.extras["default"] = "true";  // the optimizer of an experiment whose [optimizer] names none
    // Keys added after runs were recorded: at their default they leave the run's config hash alone.
    d.extras["config.added_later"] = "width_scaling";
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
