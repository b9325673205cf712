// What plexus's kernels share (nvcc only): conversions between float and the stored types,
// warp sums, and the dispatch from a Dtype to a C++ type.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "dtype.hpp"

namespace plexus::host::kernels::device {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

// Round to nearest even, as LibTorch's casts do.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
struct Tag {
    using type = T;
};

// Calls f(Tag<T>{}) with the C++ type of `dtype`.
template <typename F>
void with_type(Dtype dtype, F&& f) {
    switch (dtype) {
        case Dtype::Float32: f(Tag<float>{}); break;
        case Dtype::BFloat16: f(Tag<__nv_bfloat16>{}); break;
        case Dtype::Float16: f(Tag<__half>{}); break;
    }
}

}  // namespace plexus::host::kernels::device
