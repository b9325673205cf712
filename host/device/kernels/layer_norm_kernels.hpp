// plexus's fused layer norm kernels (CUDA builds): the residual add, the norm and the cast to the
// next product's dtype in one pass forward, and one pass backward that also adds the gradient
// arriving along the residual stream. Raw pointers, so that only this folder is compiled by nvcc;
// cuda.cpp wraps them as the plexus::layer_norm_* operators (see plexus/kit/layer_norm.hpp).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "dtype.hpp"

namespace plexus::host::kernels {

// The widest row the kernels take: each of up to 1024 threads holds 8 of a row's values.
constexpr int64_t kLayerNormMaxWidth = 8 * 1024;

// Rows of `width` contiguous values; `rows * width` elements in each [rows, width] buffer.
struct LayerNormForward {
    const float* x = nullptr;
    const void* residual = nullptr;  // optional, in residual_dtype
    Dtype residual_dtype = Dtype::Float32;
    const float* weight = nullptr;  // [width]
    const float* bias = nullptr;    // [width]
    float* sum = nullptr;           // x + residual, written when there is a residual
    void* normed = nullptr;         // in normed_dtype
    Dtype normed_dtype = Dtype::Float32;
    float* mean = nullptr;  // [rows]
    float* rstd = nullptr;  // [rows], 1 / sqrt(variance + eps)
    int64_t rows = 0, width = 0;
    float eps = 1e-5f;
};

struct LayerNormBackward {
    const void* grad_normed = nullptr;  // in grad_normed_dtype
    Dtype grad_normed_dtype = Dtype::Float32;
    const float* grad_sum = nullptr;  // optional: the gradient along the residual stream
    const float* sum = nullptr;       // the forward's normalized input (x + residual)
    const float* mean = nullptr;
    const float* rstd = nullptr;
    const float* weight = nullptr;
    float* grad_x = nullptr;
    void* grad_residual = nullptr;  // optional, in residual_dtype (the same values as grad_x)
    Dtype residual_dtype = Dtype::Float32;
    float* partial_weight = nullptr;  // [blocks, width]: each block's share of the weight's gradient
    float* partial_bias = nullptr;    // [blocks, width]
    int64_t rows = 0, width = 0;
    int blocks = 1;  // rows are shared out among this many thread blocks
};

// Queue the kernels on `stream`; the launch's error, if any.
cudaError_t layer_norm_forward(const LayerNormForward& args, cudaStream_t stream);
cudaError_t layer_norm_backward(const LayerNormBackward& args, cudaStream_t stream);

}  // namespace plexus::host::kernels
