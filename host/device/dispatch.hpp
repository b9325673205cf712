// plexus's own operators, registered with LibTorch's dispatcher so that plugins reach them
// without linking against the host (sdk/include/plexus/operators.hpp): plexus/kit/layer_norm.hpp's
// residual_layer_norm calls plexus::layer_norm_forward / _backward, plexus/kit/loss.hpp's
// cross_entropy plexus::cross_entropy_forward / _backward (their contracts are written there).
#pragma once

#include <tuple>

#include <torch/types.h>

namespace plexus::host {

using Tensors4 = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;

// The operators with LibTorch's kernels, on any device: the CPU's implementation, the GPU's for
// shapes plexus's kernels do not take, and the reference the [gpu] tests hold those kernels to.
// Layer norm:
Tensors4 layer_norm_forward_reference(const torch::Tensor& x, const c10::optional<torch::Tensor>& residual,
                                      const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                      c10::ScalarType out_dtype);
Tensors4 layer_norm_backward_reference(const c10::optional<torch::Tensor>& grad_normed,
                                       const c10::optional<torch::Tensor>& grad_sum, const torch::Tensor& sum,
                                       const torch::Tensor& mean, const torch::Tensor& rstd,
                                       const torch::Tensor& weight, c10::optional<c10::ScalarType> residual_dtype);

// Cross-entropy, in float (double stays double): the mean loss and per row [N, 2] its
// log-sum-exp and that of the logits other than the target's; the logits' gradient in their
// dtype. A target outside [0, V) is gather's error.
std::tuple<torch::Tensor, torch::Tensor> cross_entropy_forward_reference(const torch::Tensor& logits,
                                                                         const torch::Tensor& targets);
torch::Tensor cross_entropy_backward_reference(const torch::Tensor& grad_loss, const torch::Tensor& logits,
                                               const torch::Tensor& targets, const torch::Tensor& stats);

// Registers them once per process (later calls do nothing): LibTorch's own kernels behind them
// on every device (the CPU's), and in CUDA builds plexus's fused GPU kernels (device/kernels/).
// The plugin registry calls it before it loads a plugin.
void register_operators();

}  // namespace plexus::host
