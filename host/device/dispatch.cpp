// See dispatch.hpp. The kernels registered here are LibTorch's arranged to the contracts in
// plexus/kit/layer_norm.hpp and plexus/kit/loss.hpp: the CPU's, and the reference the GPU kernels are
// tested against.
#include "device/dispatch.hpp"

#include <limits>
#include <memory>
#include <mutex>

#include <torch/library.h>
#include <torch/torch.h>

#include "device/cuda.hpp"

namespace plexus::host {

Tensors4 layer_norm_forward_reference(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                      const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                      c10::ScalarType out_dtype) {
    const auto width = weight.size(0);
    auto sum = residual ? x + *residual : torch::Tensor();
    const auto& input = residual ? sum : x;
    auto [normed, mean, rstd] = at::native_layer_norm(input.reshape({-1, width}), {width}, weight, bias, eps);
    return {residual ? sum : torch::empty({0}, x.options()), normed.view(x.sizes()).to(out_dtype), mean.view({-1}),
            rstd.view({-1})};
}

Tensors4 layer_norm_backward_reference(const c10::optional<torch::Tensor>& grad_normed,
                                       const c10::optional<torch::Tensor>& grad_sum, const torch::Tensor& sum,
                                       const torch::Tensor& mean, const torch::Tensor& rstd,
                                       const torch::Tensor& weight, c10::optional<c10::ScalarType> residual_dtype) {
    const auto width = weight.size(0);
    torch::Tensor grad_x, grad_weight, grad_bias;
    if (grad_normed) {
        // The bias's values play no part in the gradients; LibTorch takes the bias's gradient's
        // shape and dtype from it, and the weight's are the same.
        auto grads = at::native_layer_norm_backward(grad_normed->to(sum.scalar_type()).reshape({-1, width}),
                                                    sum.reshape({-1, width}), {width}, mean.view({-1, 1}),
                                                    rstd.view({-1, 1}), weight, weight, {true, true, true});
        grad_x = std::get<0>(grads).view(sum.sizes());
        grad_weight = std::get<1>(grads);
        grad_bias = std::get<2>(grads);
        if (grad_sum) grad_x.add_(*grad_sum);
    } else {  // the norm was not used: only the residual stream's gradient flows
        grad_x = grad_sum ? grad_sum->clone() : torch::zeros_like(sum);
        grad_weight = torch::zeros_like(weight);
        grad_bias = torch::zeros_like(weight);
    }
    auto grad_residual = residual_dtype ? grad_x.to(*residual_dtype) : torch::empty({0}, sum.options());
    return {grad_x, grad_residual, grad_weight, grad_bias};
}

// The same formulas as the GPU kernels (kernels/cross_entropy.cu): the log-sum-exp of the
// logits other than the target's ("rest") keeps 1 - p_target accurate where it is tiny.
std::tuple<torch::Tensor, torch::Tensor> cross_entropy_forward_reference(const torch::Tensor& logits,
                                                                         const torch::Tensor& targets) {
    const auto wide = logits.to(at::promote_types(logits.scalar_type(), torch::kFloat));
    const auto index = targets.unsqueeze(1);
    const auto picked = wide.gather(1, index).squeeze(1);  // a target out of range: gather's error
    const auto rest = at::logsumexp(wide.scatter(1, index, -std::numeric_limits<double>::infinity()), {1});
    const auto d = rest - picked;
    const auto tail = (-d.abs()).exp().log1p();
    const auto row_loss = d.clamp_min(0) + tail;  // softplus(d)
    return {row_loss.mean(), torch::stack({torch::maximum(rest, picked) + tail, rest}, 1)};
}

torch::Tensor cross_entropy_backward_reference(const torch::Tensor& grad_loss, const torch::Tensor& logits,
                                               const torch::Tensor& targets, const torch::Tensor& stats) {
    const auto log_sum_exp = stats.select(1, 0).unsqueeze(1), rest = stats.select(1, 1).unsqueeze(1);
    auto grad = (logits.to(stats.scalar_type()) - log_sum_exp).exp_();
    grad.scatter_(1, targets.unsqueeze(1), -(rest - log_sum_exp).exp());
    return grad.mul_(grad_loss.to(grad.options()) / static_cast<double>(logits.size(0))).to(logits.scalar_type());
}

void register_operators() {
    static std::once_flag once;
    static std::unique_ptr<torch::Library> definitions, cpu;
    std::call_once(once, [] {
        definitions = std::make_unique<torch::Library>(torch::Library::DEF, "plexus", c10::nullopt, __FILE__, __LINE__);
        definitions->def(
            "layer_norm_forward(Tensor x, Tensor? residual, Tensor weight, Tensor bias, float eps, "
            "ScalarType out_dtype) -> (Tensor, Tensor, Tensor, Tensor)");
        definitions->def(
            "layer_norm_backward(Tensor? grad_normed, Tensor? grad_sum, Tensor sum, Tensor mean, Tensor rstd, "
            "Tensor weight, ScalarType? residual_dtype) -> (Tensor, Tensor, Tensor, Tensor)");
        definitions->def("cross_entropy_forward(Tensor logits, Tensor targets) -> (Tensor, Tensor)");
        definitions->def(
            "cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor targets, Tensor stats) -> Tensor");
        cpu =
            std::make_unique<torch::Library>(torch::Library::IMPL, "plexus", c10::DispatchKey::CPU, __FILE__, __LINE__);
        cpu->impl("layer_norm_forward", TORCH_FN(layer_norm_forward_reference));
        cpu->impl("layer_norm_backward", TORCH_FN(layer_norm_backward_reference));
        cpu->impl("cross_entropy_forward", TORCH_FN(cross_entropy_forward_reference));
        cpu->impl("cross_entropy_backward", TORCH_FN(cross_entropy_backward_reference));
        gpu::register_operators();
    });
}

}  // namespace plexus::host
