// CUDA builds: see cuda.hpp.
#include "device/cuda.hpp"

#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>

#include <plexus/error.hpp>

namespace plexus::host::gpu {

namespace {
c10::DeviceIndex index_of(const torch::Device& device) {
    return device.has_index() ? device.index() : c10::cuda::current_device();
}
}  // namespace

bool built_with_cuda() { return true; }

std::string device_name(const torch::Device& device) {
    if (!device.is_cuda()) return "";
    cudaDeviceProp props{};
    if (cudaGetDeviceProperties(&props, index_of(device)) != cudaSuccess) return "";
    return props.name;
}

namespace {
struct AllocatedBytes {
    int64_t current = 0, peak = 0;
};

AllocatedBytes allocated(const torch::Device& device) {
    try {
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index_of(device));
        // The statistic's type is c10::CachingDeviceAllocator::Stat in LibTorch 2.6 and
        // c10::CachingAllocator::Stat in 2.11; `auto` and the first entry (AGGREGATE, all pools
        // together, in both) keep this file free of version checks.
        const auto& all_pools = stats.allocated_bytes.front();
        return {all_pools.current, all_pools.peak};
    } catch (const c10::Error&) {
        // LibTorch 2.x sets the allocator up at the first CUDA allocation and refuses to be asked
        // before: nothing is allocated yet.
        return {};
    }
}
}  // namespace

int64_t allocated_bytes(const torch::Device& device) { return device.is_cuda() ? allocated(device).current : -1; }

int64_t peak_allocated_bytes(const torch::Device& device) { return device.is_cuda() ? allocated(device).peak : -1; }

void set_current(const torch::Device& device) {
    if (device.is_cuda()) c10::cuda::set_device(index_of(device));
}

void synchronize(const torch::Device& device) {
    if (device.is_cuda()) {
        set_current(device);
        c10::cuda::device_synchronize();
    }
}

torch::Tensor rng_state(const torch::Device& device) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator(index_of(device));
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
}

void set_rng_state(const torch::Device& device, const torch::Tensor& state) {
    auto gen = at::cuda::detail::getDefaultCUDAGenerator(index_of(device));
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
}

}  // namespace plexus::host::gpu
