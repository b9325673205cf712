// See cross_entropy_kernels.hpp. One thread block per row of logits (a GPT vocabulary is ~50k values,
// 100 KB in bf16: too many for registers, so each thread folds its strided share, 8 values at a
// time, into a running maximum and sum of exponentials, and the block combines the pairs).
#include "cross_entropy_kernels.hpp"

#include <algorithm>
#include <climits>
#include <cmath>

#include "device.cuh"

namespace plexus::host::kernels {

namespace {

using namespace device;

constexpr int kThreads = 512;  // 4 blocks per multiprocessor: one block's reduction overlaps the others' loads
constexpr int kUnroll = 8;     // logits each thread loads before using any: 8 loads in flight, not 1

// (m, s) stands for s * exp(m): adds (m2, s2). Symmetric, so every lane of a warp's butterfly
// agrees; a NaN is never dropped (a thread that saw only a NaN holds (-inf, NaN)); two +inf
// give +inf.
__device__ __forceinline__ void add_scaled(float& m, float& s, float m2, float s2) {
    if (m2 > m) {
        s = s * expf(m - m2) + s2;  // m = -inf: s * 0 (a NaN s stays NaN)
        m = m2;
    } else {
        s += s2 * (m2 == m ? 1.0f : expf(m2 - m));  // m2 = -inf < m: s2 * 0; a NaN m2: NaN
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
// softplus(rest - x_target) and the whole log-sum-exp as max + log1p(exp(-|difference|)). Both
// stay accurate for a confident row, where 1 - p_target is tiny and log p_target would cancel.
template <typename T>
__global__ void __launch_bounds__(kThreads) cross_entropy_forward_kernel(CrossEntropyForward a) {
    const auto* __restrict__ logits = static_cast<const T*>(a.logits);
    const int vocab = static_cast<int>(a.vocab);  // the launcher refuses a vocabulary near INT_MAX
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const T* __restrict__ x = logits + row * a.vocab;
        const int64_t target = a.targets[row];
        const bool valid = target >= 0 && target < a.vocab;
        const float picked = threadIdx.x == 0 && valid ? to_float(x[target]) : NAN;  // loaded early
        float m = -INFINITY, s = 0.0f;
        for (int j0 = threadIdx.x; j0 < vocab; j0 += kUnroll * kThreads) {
            float v[kUnroll];
#pragma unroll
            for (int k = 0; k < kUnroll; ++k) {  // every load first
                const int j = j0 + k * kThreads;
                v[k] = j < vocab && j != target ? to_float(x[j]) : -INFINITY;
            }
            float top = v[0];
#pragma unroll
            for (int k = 1; k < kUnroll; ++k) top = fmaxf(top, v[k]);  // fmaxf skips a NaN; the sum keeps it
            const float m_new = fmaxf(m, top);
            const float base = isfinite(m_new) ? m_new : 0.0f;  // all -inf so far: the exps are 0; +inf: s is inf
            float t = 0.0f;
#pragma unroll
            for (int k = 0; k < kUnroll; ++k) t += __expf(v[k] - base);
            s = s * __expf(m - base) + t;
            m = m_new;
        }
        block_log_sum_exp(m, s);
        if (threadIdx.x == 0) {
            const float rest = m + logf(s);  // -inf when the target is the row's only entry
            const float d = rest - picked;
            a.stats[2 * row] = fmaxf(rest, picked) + log1pf(expf(-fabsf(d)));
            a.stats[2 * row + 1] = rest;
            a.row_loss[row] = softplus(d);
        }
    }
}

// p_j = exp(x_j - lse); at the target p - 1 = -exp(rest - lse), which keeps its precision where
// p is close to 1.
template <typename T>
__global__ void __launch_bounds__(kThreads) cross_entropy_backward_kernel(CrossEntropyBackward a) {
    const auto* __restrict__ logits = static_cast<const T*>(a.logits);
    auto* __restrict__ grad = static_cast<T*>(a.grad_logits);
    const int vocab = static_cast<int>(a.vocab);
    const float scale = *a.grad_loss / static_cast<float>(a.rows);
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const T* __restrict__ x = logits + row * a.vocab;
        T* __restrict__ g = grad + row * a.vocab;
        const float lse = a.stats[2 * row], rest = a.stats[2 * row + 1];
        const int64_t target = a.targets[row];
        const float at_target = -expf(rest - lse) * scale;
        for (int j0 = threadIdx.x; j0 < vocab; j0 += kUnroll * kThreads) {
            float v[kUnroll];
#pragma unroll
            for (int k = 0; k < kUnroll; ++k) {
                const int j = j0 + k * kThreads;
                v[k] = j < vocab ? to_float(x[j]) : 0.0f;
            }
#pragma unroll
            for (int k = 0; k < kUnroll; ++k) {
                const int j = j0 + k * kThreads;
                if (j < vocab) g[j] = from_float<T>(j == target ? at_target : __expf(v[k] - lse) * scale);
            }
        }
    }
}

// Column indices are 32-bit (cheaper in the inner loops); rows * vocab may exceed 2^31.
bool vocab_fits(int64_t vocab) { return vocab > 0 && vocab <= INT_MAX - kUnroll * kThreads; }

// Launches kernel_for(Tag<T>{}), the kernel for the logits' type: a block of kThreads per row.
template <typename Args, typename KernelFor>
cudaError_t launch_per_row(const Args& args, cudaStream_t stream, KernelFor kernel_for) {
    if (!vocab_fits(args.vocab)) return cudaErrorInvalidValue;
    if (args.rows == 0) return cudaSuccess;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(args.rows, 1 << 30));
    with_type(args.logits_dtype, [&](auto type) { kernel_for(type)<<<blocks, kThreads, 0, stream>>>(args); });
    return cudaGetLastError();
}

}  // namespace

cudaError_t cross_entropy_forward(const CrossEntropyForward& args, cudaStream_t stream) {
    return launch_per_row(args, stream,
                          [](auto type) { return cross_entropy_forward_kernel<typename decltype(type)::type>; });
}

cudaError_t cross_entropy_backward(const CrossEntropyBackward& args, cudaStream_t stream) {
    return launch_per_row(args, stream,
                          [](auto type) { return cross_entropy_backward_kernel<typename decltype(type)::type>; });
}

}  // namespace plexus::host::kernels
