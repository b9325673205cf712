// plexus's own operators, registered with LibTorch's dispatcher so that plugins reach them
// without linking against the host: plexus/layer_norm.hpp's residual_layer_norm calls
// plexus::layer_norm_forward and plexus::layer_norm_backward (their contract is written there).
#pragma once

#include <tuple>

#include <torch/types.h>

namespace plexus::host {

using Tensors4 = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;

// The layer norm operators with LibTorch's kernels, on any device: the CPU's implementation, the
// GPU's for shapes the fused kernels do not take, and the reference the [gpu] tests hold them to.
Tensors4 layer_norm_forward_reference(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                      const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                      c10::ScalarType out_dtype);
Tensors4 layer_norm_backward_reference(const c10::optional<torch::Tensor>& grad_normed,
                                       const c10::optional<torch::Tensor>& grad_sum, const torch::Tensor& sum,
                                       const torch::Tensor& mean, const torch::Tensor& rstd,
                                       const torch::Tensor& weight, c10::optional<c10::ScalarType> residual_dtype);

// Registers them once per process (later calls do nothing): LibTorch's own kernels behind them
// on every device (the CPU's), and in CUDA builds plexus's fused GPU kernels (host/kernels/).
// The plugin registry calls it before it loads a plugin.
void register_operators();

}  // namespace plexus::host
