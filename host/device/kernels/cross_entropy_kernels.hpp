// plexus's fused cross-entropy kernels (CUDA builds). Forward: each row of logits read once (an
// online maximum and sum of exponentials, in float), keeping two floats per row and the loss.
// Backward: the logits' gradient, (softmax - one-hot) x the mean loss's gradient / rows, written in
// one more pass in the logits' dtype. operators_cuda.cpp wraps them as the plexus::cross_entropy_*
// operators (see plexus/kit/loss.hpp).
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "dtype.hpp"

namespace plexus::host::kernels {

struct CrossEntropyForward {
    const void* logits = nullptr;  // [rows, vocab] in logits_dtype
    Dtype logits_dtype = Dtype::Float32;
    const int64_t* targets = nullptr;  // [rows]; an id outside [0, vocab) makes its row's loss NaN
    float* stats = nullptr;            // [rows, 2]: the log-sum-exp of the row, and of its other logits
    float* row_loss = nullptr;         // [rows]
    int64_t rows = 0, vocab = 0;
};

struct CrossEntropyBackward {
    const void* logits = nullptr;
    Dtype logits_dtype = Dtype::Float32;
    const int64_t* targets = nullptr;
    const float* stats = nullptr;      // the forward's
    const float* grad_loss = nullptr;  // one float on the device: d(mean loss)
    void* grad_logits = nullptr;       // [rows, vocab] in logits_dtype
    int64_t rows = 0, vocab = 0;
};

cudaError_t cross_entropy_forward(const CrossEntropyForward& args, cudaStream_t stream);
cudaError_t cross_entropy_backward(const CrossEntropyBackward& args, cudaStream_t stream);

}  // namespace plexus::host::kernels
