// CUDA builds: plexus's kernels behind the plexus::layer_norm_* and plexus::cross_entropy_*
// operators (see device/dispatch.hpp, plexus/kit/layer_norm.hpp and plexus/kit/loss.hpp). Shapes and dtypes the
// kernels do not take go to LibTorch's kernels.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <plexus/error.hpp>

#include "device/cuda.hpp"
#include "device/kernels/cross_entropy_kernels.hpp"
#include "device/kernels/layer_norm_kernels.hpp"
#include "device/dispatch.hpp"

namespace plexus::host {

namespace {

c10::optional<kernels::Dtype> kernel_dtype(c10::ScalarType t) {
    switch (t) {
        case c10::kFloat: return kernels::Dtype::Float32;
        case c10::kBFloat16: return kernels::Dtype::BFloat16;
        case c10::kHalf: return kernels::Dtype::Float16;
        default: return c10::nullopt;
    }
}

bool float_on(const torch::Tensor& t, const torch::Device& device) {
    return t.scalar_type() == c10::kFloat && t.device() == device;
}

// (cudaGetLastError also returns an error an earlier kernel left behind: the message says so.)
void check(cudaError_t status, const char* what, const char* hint) {
    if (status != cudaSuccess)
        throw Error(std::string(what) + " failed to launch, or an earlier kernel failed: " + cudaGetErrorString(status),
                    hint);
}
const char* kNormHint = "set model.fused_norm = false (models/gpt) to use LibTorch's kernels, and report it";
const char* kLossHint = "report it; a CPU run takes LibTorch's kernels";

Tensors4 layer_norm_forward_cuda(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                 const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                 c10::ScalarType out_dtype) {
    const auto width = weight.size(0);
    const bool fits =
        weight.dim() == 1 && width > 0 && width <= kernels::kLayerNormMaxWidth && bias.sizes() == weight.sizes() &&
        x.dim() >= 1 && x.size(-1) == width && float_on(x, x.device()) && float_on(weight, x.device()) &&
        float_on(bias, x.device()) && kernel_dtype(out_dtype) &&
        (!residual ||
         (kernel_dtype(residual->scalar_type()) && residual->device() == x.device() && residual->sizes() == x.sizes()));
    if (!fits) return layer_norm_forward_reference(x, residual, weight, bias, eps, out_dtype);
    const c10::cuda::CUDAGuard on_device(x.device());
    const auto x_c = x.contiguous(), weight_c = weight.contiguous(), bias_c = bias.contiguous();
    const auto residual_c = residual ? residual->contiguous() : torch::Tensor();
    const auto rows = x.numel() / width;
    auto sum = residual ? torch::empty(x.sizes(), x.options()) : torch::empty({0}, x.options());
    auto normed = torch::empty(x.sizes(), x.options().dtype(out_dtype));
    auto mean = torch::empty({rows}, x.options()), rstd = torch::empty({rows}, x.options());
    kernels::LayerNormForward args;
    args.x = x_c.data_ptr<float>();
    if (residual) {
        args.residual = residual_c.data_ptr();
        args.residual_dtype = *kernel_dtype(residual_c.scalar_type());
        args.sum = sum.data_ptr<float>();
    }
    args.weight = weight_c.data_ptr<float>();
    args.bias = bias_c.data_ptr<float>();
    args.normed = normed.data_ptr();
    args.normed_dtype = *kernel_dtype(out_dtype);
    args.mean = mean.data_ptr<float>();
    args.rstd = rstd.data_ptr<float>();
    args.rows = rows;
    args.width = width;
    args.eps = static_cast<float>(eps);
    check(kernels::layer_norm_forward(args, at::cuda::getCurrentCUDAStream()), "plexus's layer norm kernel", kNormHint);
    return {sum, normed, mean, rstd};
}

Tensors4 layer_norm_backward_cuda(const c10::optional<torch::Tensor>& grad_normed,
                                  const c10::optional<torch::Tensor>& grad_sum, const torch::Tensor& sum,
                                  const torch::Tensor& mean, const torch::Tensor& rstd, const torch::Tensor& weight,
                                  c10::optional<c10::ScalarType> residual_dtype) {
    const auto width = weight.size(0);
    const auto& device = sum.device();
    const bool fits = grad_normed && weight.dim() == 1 && width > 0 && width <= kernels::kLayerNormMaxWidth &&
                      sum.dim() >= 1 && sum.size(-1) == width && mean.numel() * width == sum.numel() &&
                      rstd.numel() == mean.numel() && float_on(sum, device) && float_on(mean, device) &&
                      float_on(rstd, device) && float_on(weight, device) && kernel_dtype(grad_normed->scalar_type()) &&
                      grad_normed->device() == device && grad_normed->sizes() == sum.sizes() &&
                      (!grad_sum || (float_on(*grad_sum, device) && grad_sum->sizes() == sum.sizes())) &&
                      (!residual_dtype || kernel_dtype(*residual_dtype));
    if (!fits) return layer_norm_backward_reference(grad_normed, grad_sum, sum, mean, rstd, weight, residual_dtype);
    const c10::cuda::CUDAGuard on_device(device);
    const auto rows = sum.numel() / width;
    const auto grad_c = grad_normed->contiguous(), sum_c = sum.contiguous(), weight_c = weight.contiguous();
    const auto grad_sum_c = grad_sum ? grad_sum->contiguous() : torch::Tensor();
    const auto mean_c = mean.contiguous(), rstd_c = rstd.contiguous();
    // Four blocks per multiprocessor share the rows; each writes its partial sums of the weight's
    // and bias's gradients, and one small reduction adds them.
    const int blocks = static_cast<int>(
        std::max<int64_t>(1, std::min<int64_t>(rows, 4 * at::cuda::getCurrentDeviceProperties()->multiProcessorCount)));
    auto grad_x = torch::empty(sum.sizes(), sum.options());
    auto grad_residual = residual_dtype ? torch::empty(sum.sizes(), sum.options().dtype(*residual_dtype))
                                        : torch::empty({0}, sum.options());
    auto partial_weight = torch::empty({blocks, width}, sum.options());
    auto partial_bias = torch::empty({blocks, width}, sum.options());
    kernels::LayerNormBackward args;
    args.grad_normed = grad_c.data_ptr();
    args.grad_normed_dtype = *kernel_dtype(grad_c.scalar_type());
    args.grad_sum = grad_sum ? grad_sum_c.data_ptr<float>() : nullptr;
    args.sum = sum_c.data_ptr<float>();
    args.mean = mean_c.data_ptr<float>();
    args.rstd = rstd_c.data_ptr<float>();
    args.weight = weight_c.data_ptr<float>();
    args.grad_x = grad_x.data_ptr<float>();
    if (residual_dtype) {
        args.grad_residual = grad_residual.data_ptr();
        args.residual_dtype = *kernel_dtype(*residual_dtype);
    }
    args.partial_weight = partial_weight.data_ptr<float>();
    args.partial_bias = partial_bias.data_ptr<float>();
    args.rows = rows;
    args.width = width;
    args.blocks = blocks;
    check(kernels::layer_norm_backward(args, at::cuda::getCurrentCUDAStream()), "plexus's layer norm backward kernel",
          kNormHint);
    return {grad_x, grad_residual, partial_weight.sum(0), partial_bias.sum(0)};
}

bool rows_of(const torch::Tensor& t, int64_t rows, c10::ScalarType dtype, const torch::Device& device) {
    return t.dim() == 1 && t.size(0) == rows && t.scalar_type() == dtype && t.device() == device;
}

std::tuple<torch::Tensor, torch::Tensor> cross_entropy_forward_cuda(const torch::Tensor& logits,
                                                                    const torch::Tensor& targets) {
    const bool fits = logits.dim() == 2 && logits.size(1) > 0 && kernel_dtype(logits.scalar_type()) &&
                      rows_of(targets, logits.size(0), c10::kLong, logits.device());
    if (!fits) return cross_entropy_forward_reference(logits, targets);
    const c10::cuda::CUDAGuard on_device(logits.device());
    const auto logits_c = logits.contiguous(), targets_c = targets.contiguous();
    const auto rows = logits.size(0);
    auto stats = torch::empty({rows, 2}, logits.options().dtype(c10::kFloat));
    auto row_loss = torch::empty({rows}, logits.options().dtype(c10::kFloat));
    kernels::CrossEntropyForward args;
    args.logits = logits_c.data_ptr();
    args.logits_dtype = *kernel_dtype(logits.scalar_type());
    args.targets = targets_c.data_ptr<int64_t>();
    args.stats = stats.data_ptr<float>();
    args.row_loss = row_loss.data_ptr<float>();
    args.rows = rows;
    args.vocab = logits.size(1);
    check(kernels::cross_entropy_forward(args, at::cuda::getCurrentCUDAStream()), "plexus's cross-entropy kernel",
          kLossHint);
    return {row_loss.mean(), stats};
}

torch::Tensor cross_entropy_backward_cuda(const torch::Tensor& grad_loss, const torch::Tensor& logits,
                                          const torch::Tensor& targets, const torch::Tensor& stats) {
    const auto& device = logits.device();
    const bool fits = logits.dim() == 2 && logits.size(1) > 0 && kernel_dtype(logits.scalar_type()) &&
                      rows_of(targets, logits.size(0), c10::kLong, device) && stats.dim() == 2 &&
                      stats.size(0) == logits.size(0) && stats.size(1) == 2 && stats.scalar_type() == c10::kFloat &&
                      stats.device() == device && grad_loss.numel() == 1;
    if (!fits) return cross_entropy_backward_reference(grad_loss, logits, targets, stats);
    const c10::cuda::CUDAGuard on_device(device);
    const auto logits_c = logits.contiguous(), targets_c = targets.contiguous(), stats_c = stats.contiguous();
    // The loss's gradient stays on the GPU: reading it here would wait for the GPU.
    const auto scale = grad_loss.to(device, c10::kFloat).reshape({1}).contiguous();
    auto grad = torch::empty(logits.sizes(), logits.options());
    kernels::CrossEntropyBackward args;
    args.logits = logits_c.data_ptr();
    args.logits_dtype = *kernel_dtype(logits.scalar_type());
    args.targets = targets_c.data_ptr<int64_t>();
    args.stats = stats_c.data_ptr<float>();
    args.grad_loss = scale.data_ptr<float>();
    args.grad_logits = grad.data_ptr();
    args.rows = logits.size(0);
    args.vocab = logits.size(1);
    check(kernels::cross_entropy_backward(args, at::cuda::getCurrentCUDAStream()),
          "plexus's cross-entropy backward kernel", kLossHint);
    return grad;
}

}  // namespace

void gpu::register_operators() {
    static auto cuda =
        std::make_unique<torch::Library>(torch::Library::IMPL, "plexus", c10::DispatchKey::CUDA, __FILE__, __LINE__);
    cuda->impl("layer_norm_forward", TORCH_FN(layer_norm_forward_cuda));
    cuda->impl("layer_norm_backward", TORCH_FN(layer_norm_backward_cuda));
    cuda->impl("cross_entropy_forward", TORCH_FN(cross_entropy_forward_cuda));
    cuda->impl("cross_entropy_backward", TORCH_FN(cross_entropy_backward_cuda));
}

}  // namespace plexus::host
