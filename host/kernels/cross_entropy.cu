// See cross_entropy.hpp. One thread block per row of logits (a GPT vocabulary is ~50k values,
// 100 KB in bf16: too many for registers, so each thread folds its strided share into a running
// maximum and sum of exponentials, and the block combines the pairs).
#include "cross_entropy.hpp"

#include <algorithm>
#include <cmath>

#include "device.cuh"

namespace plexus::host::kernels {

namespace {

using namespace device;

// (m, s) stands for s * exp(m): adds (m2, s2) to it without overflow. -inf is the empty sum; a
// NaN anywhere makes s NaN.
__device__ __forceinline__ void add_scaled(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * expf(m - m2) + s2;
        m = m2;
    } else if (m2 != -INFINITY) {
        s += s2 * expf(m2 - m);
    }
}

// The block's combined (m, s), in every thread (blockDim.x a multiple of 32).
__device__ void block_log_sum_exp(float& m, float& s) {
    __shared__ float warp_m[32], warp_s[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int offset = 16; offset > 0; offset /= 2) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        add_scaled(m, s, m2, s2);
    }
    if (lane == 0) warp_m[warp] = m, warp_s[warp] = s;
    __syncthreads();
    if (warp == 0) {
        m = lane < static_cast<int>(blockDim.x / 32) ? warp_m[lane] : -INFINITY;
        s = lane < static_cast<int>(blockDim.x / 32) ? warp_s[lane] : 0.0f;
        for (int offset = 16; offset > 0; offset /= 2) {
            const float m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
            add_scaled(m, s, m2, s2);
        }
        if (lane == 0) warp_m[0] = m, warp_s[0] = s;
    }
    __syncthreads();
    m = warp_m[0];
    s = warp_s[0];
    __syncthreads();  // the next row writes warp_m and warp_s again
}

// log(1 + e^d), without overflow; 0 at d = -inf.
__device__ __forceinline__ float softplus(float d) { return fmaxf(d, 0.0f) + log1pf(expf(-fabsf(d))); }

// Per row: the log-sum-exp of the logits other than the target's ("rest"), then the loss as
// softplus(rest - x_target) and the whole log-sum-exp as x_target + loss. Both stay accurate for
// a confident row, where 1 - p_target is tiny and log p_target would cancel.
template <typename T>
__global__ void __launch_bounds__(1024) cross_entropy_forward_kernel(CrossEntropyForward a) {
    const auto* logits = static_cast<const T*>(a.logits);
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const T* x = logits + row * a.vocab;
        const int64_t target = a.targets[row];
        float m = -INFINITY, s = 0.0f;
        for (int64_t j = threadIdx.x; j < a.vocab; j += blockDim.x)
            if (j != target) add_scaled(m, s, to_float(x[j]), 1.0f);
        block_log_sum_exp(m, s);
        if (threadIdx.x == 0) {
            const float rest = m + logf(s);  // -inf when the target is the only entry
            const float picked = target >= 0 && target < a.vocab ? to_float(x[target]) : NAN;
            const float loss = softplus(rest - picked);
            a.stats[2 * row] = picked + loss;
            a.stats[2 * row + 1] = rest;
            a.row_loss[row] = loss;
        }
    }
}

// p_j = exp(x_j - lse); at the target p - 1 = -exp(rest - lse), which keeps its precision where
// p is close to 1.
template <typename T>
__global__ void __launch_bounds__(1024) cross_entropy_backward_kernel(CrossEntropyBackward a) {
    const auto* logits = static_cast<const T*>(a.logits);
    auto* grad = static_cast<T*>(a.grad_logits);
    const float scale = *a.grad_loss / static_cast<float>(a.rows);
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const T* x = logits + row * a.vocab;
        T* g = grad + row * a.vocab;
        const float lse = a.stats[2 * row], rest = a.stats[2 * row + 1];
        const int64_t target = a.targets[row];
        for (int64_t j = threadIdx.x; j < a.vocab; j += blockDim.x)
            g[j] = from_float<T>((j == target ? -expf(rest - lse) : expf(to_float(x[j]) - lse)) * scale);
    }
}

int threads_for(int64_t vocab) {
    return static_cast<int>(std::min<int64_t>(1024, std::max<int64_t>(32, (vocab + 31) / 32 * 32)));
}

unsigned blocks_for(int64_t rows) { return static_cast<unsigned>(std::min<int64_t>(rows, 1 << 30)); }

}  // namespace

cudaError_t cross_entropy_forward(const CrossEntropyForward& args, cudaStream_t stream) {
    if (args.vocab <= 0) return cudaErrorInvalidValue;
    if (args.rows == 0) return cudaSuccess;
    with_type(args.logits_dtype, [&](auto type) {
        using T = typename decltype(type)::type;
        cross_entropy_forward_kernel<T><<<blocks_for(args.rows), threads_for(args.vocab), 0, stream>>>(args);
    });
    return cudaGetLastError();
}

cudaError_t cross_entropy_backward(const CrossEntropyBackward& args, cudaStream_t stream) {
    if (args.vocab <= 0) return cudaErrorInvalidValue;
    if (args.rows == 0) return cudaSuccess;
    with_type(args.logits_dtype, [&](auto type) {
        using T = typename decltype(type)::type;
        cross_entropy_backward_kernel<T><<<blocks_for(args.rows), threads_for(args.vocab), 0, stream>>>(args);
    });
    return cudaGetLastError();
}

}  // namespace plexus::host::kernels
