// See operators.hpp. The kernels registered here are LibTorch's (native_layer_norm and its
// backward) arranged to the contract in plexus/layer_norm.hpp: the CPU's, and the reference the
// GPU kernels are tested against.
#include "operators.hpp"

#include <memory>
#include <mutex>

#include <torch/library.h>
#include <torch/torch.h>

#include "cuda.hpp"

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
        cpu = std::make_unique<torch::Library>(torch::Library::IMPL, "plexus", c10::DispatchKey::CPU, __FILE__, __LINE__);
        cpu->impl("layer_norm_forward", TORCH_FN(layer_norm_forward_reference));
        cpu->impl("layer_norm_backward", TORCH_FN(layer_norm_backward_reference));
        gpu::register_operators();
    });
}

}  // namespace plexus::host
