// See layer_norm_kernels.hpp. One thread block per row; each thread keeps its share of the row (at most 8
// values, strided by the block size so that a warp's loads are contiguous) in registers, so the
// row is read from memory once and the statistics take two block-wide sums. Every load of a row
// is issued before its first store: a store may alias a later load for all the compiler knows,
// so loads interleaved with stores would go one at a time (latency-bound, about half the
// bandwidth by a review's estimate).
#include "layer_norm_kernels.hpp"

#include <algorithm>

#include "device.cuh"

namespace plexus::host::kernels {

namespace {

using namespace device;

constexpr int kPerThread = 8;
static_assert(kLayerNormMaxWidth == kPerThread * 1024, "the widest row fills a 1024-thread block");

// The sum of v over the block, in every thread (blockDim.x a multiple of 32).
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    __shared__ float total;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    v = warp_sum(v);
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    const float result = total;
    __syncthreads();  // the next call writes warp_sums and total again
    return result;
}

template <typename Residual, typename Normed>
__global__ void __launch_bounds__(1024) layer_norm_forward_kernel(LayerNormForward a) {
    const auto* residual = static_cast<const Residual*>(a.residual);
    auto* normed = static_cast<Normed*>(a.normed);
    const float inv_width = 1.0f / static_cast<float>(a.width);
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const int64_t base = row * a.width;
        float v[kPerThread], r[kPerThread], w[kPerThread], b[kPerThread];
        // The row's loads before its first store (a store to sum might alias x or the residual
        // for all the compiler knows, so no later load may pass it): all 16 in flight together.
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            v[k] = r[k] = w[k] = b[k] = 0.0f;
            if (j < a.width) {
                v[k] = a.x[base + j];
                if (residual) r[k] = to_float(residual[base + j]);
                w[k] = a.weight[j];
                b[k] = a.bias[j];
            }
        }
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            if (j < a.width) {
                if (residual) {
                    v[k] += r[k];
                    a.sum[base + j] = v[k];
                }
                s += v[k];
            }
        }
        const float mean = block_sum(s) * inv_width;
        float squares = 0.0f;
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            if (j < a.width) squares += (v[k] - mean) * (v[k] - mean);
        }
        const float rstd = rsqrtf(block_sum(squares) * inv_width + a.eps);
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            if (j < a.width) normed[base + j] = from_float<Normed>((v[k] - mean) * rstd * w[k] + b[k]);
        }
        if (threadIdx.x == 0) {
            a.mean[row] = mean;
            a.rstd[row] = rstd;
        }
    }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = grad_normed * weight, plus the
// residual stream's gradient; the weight's and bias's gradients summed over this block's rows.
template <typename Residual, typename Grad>
__global__ void __launch_bounds__(1024) layer_norm_backward_kernel(LayerNormBackward a) {
    const auto* grad_normed = static_cast<const Grad*>(a.grad_normed);
    auto* grad_residual = static_cast<Residual*>(a.grad_residual);
    const float inv_width = 1.0f / static_cast<float>(a.width);
    // The weight in shared memory (each thread reads back only its own columns: no barrier),
    // which leaves the registers to the row's values.
    extern __shared__ float weight[];
    float grad_weight[kPerThread], grad_bias[kPerThread];
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (j < a.width) weight[j] = a.weight[j];
        grad_weight[k] = 0.0f;
        grad_bias[k] = 0.0f;
    }
    for (int64_t row = blockIdx.x; row < a.rows; row += gridDim.x) {
        const int64_t base = row * a.width;
        const float mean = a.mean[row], rstd = a.rstd[row];
        float xhat[kPerThread], g[kPerThread];
        // The row's loads first, all in flight together: g holds the incoming gradient and xhat
        // the sum until they are computed.
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            xhat[k] = g[k] = 0.0f;
            if (j < a.width) {
                g[k] = to_float(grad_normed[base + j]);
                xhat[k] = a.sum[base + j];
            }
        }
        float sum_g = 0.0f, sum_g_xhat = 0.0f;
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            if (j < a.width) {
                const float dy = g[k];
                xhat[k] = (xhat[k] - mean) * rstd;
                g[k] = dy * weight[j];
                sum_g += g[k];
                sum_g_xhat += g[k] * xhat[k];
                grad_weight[k] += dy * xhat[k];
                grad_bias[k] += dy;
            }
        }
        const float mean_g = block_sum(sum_g) * inv_width;
        const float mean_g_xhat = block_sum(sum_g_xhat) * inv_width;
        // g becomes dx / rstd, and xhat, no longer needed, takes the residual stream's gradient:
        // its eight loads issued before the first store (which might alias grad_sum).
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) g[k] = g[k] - mean_g - xhat[k] * mean_g_xhat;
        if (a.grad_sum) {
#pragma unroll
            for (int k = 0; k < kPerThread; ++k) {
                const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
                if (j < a.width) xhat[k] = a.grad_sum[base + j];
            }
        }
#pragma unroll
        for (int k = 0; k < kPerThread; ++k) {
            const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
            if (j < a.width) {
                float dx = rstd * g[k];
                if (a.grad_sum) dx += xhat[k];
                a.grad_x[base + j] = dx;
                if (grad_residual) grad_residual[base + j] = from_float<Residual>(dx);
            }
        }
    }
#pragma unroll
    for (int k = 0; k < kPerThread; ++k) {
        const int64_t j = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (j < a.width) {
            a.partial_weight[blockIdx.x * a.width + j] = grad_weight[k];
            a.partial_bias[blockIdx.x * a.width + j] = grad_bias[k];
        }
    }
}

// Enough warps that 8 values a thread cover the row.
int threads_for(int64_t width) {
    const int64_t warps = (width + 32 * kPerThread - 1) / (32 * kPerThread);
    return static_cast<int>(std::max<int64_t>(1, warps) * 32);
}

}  // namespace

cudaError_t layer_norm_forward(const LayerNormForward& args, cudaStream_t stream) {
    if (args.width <= 0 || args.width > kLayerNormMaxWidth) return cudaErrorInvalidValue;
    if (args.rows == 0) return cudaSuccess;
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(args.rows, 1 << 30));
    with_type(args.residual_dtype, [&](auto residual) {
        with_type(args.normed_dtype, [&](auto normed) {
            using Residual = typename decltype(residual)::type;
            using Normed = typename decltype(normed)::type;
            layer_norm_forward_kernel<Residual, Normed><<<blocks, threads_for(args.width), 0, stream>>>(args);
        });
    });
    return cudaGetLastError();
}

cudaError_t layer_norm_backward(const LayerNormBackward& args, cudaStream_t stream) {
    if (args.width <= 0 || args.width > kLayerNormMaxWidth || args.blocks < 1) return cudaErrorInvalidValue;
    // No early return for zero rows: the blocks still write their (zero) partial sums.
    with_type(args.residual_dtype, [&](auto residual) {
        with_type(args.grad_normed_dtype, [&](auto grad) {
            using Residual = typename decltype(residual)::type;
            using Grad = typename decltype(grad)::type;
            layer_norm_backward_kernel<Residual, Grad>
                <<<static_cast<unsigned>(args.blocks), threads_for(args.width), args.width * sizeof(float), stream>>>(
                    args);
        });
    });
    return cudaGetLastError();
}

}  // namespace plexus::host::kernels
