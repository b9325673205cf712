// What the host needs of CUDA beyond LibTorch's device-independent API. CUDA builds compile
// cuda.cpp (and transport_nccl.cpp); CPU builds compile cuda_none.cpp, whose answers say that
// there is no GPU. CMake picks the file: no #ifdef in the host.
#pragma once

#include <cstdint>
#include <string>

#include <torch/types.h>

namespace plexus::host::gpu {

// True in a build against a CUDA LibTorch.
bool built_with_cuda();

// The GPU's marketing name ("NVIDIA H100 80GB HBM3"), which the datasheet peaks are keyed by.
std::string device_name(const torch::Device& device);

// Bytes of tensors the caching allocator holds now, and held at most since the process began
// (-1 when there is no CUDA).
int64_t allocated_bytes(const torch::Device& device);
int64_t peak_allocated_bytes(const torch::Device& device);

// Makes `device` the thread's current device (NCCL and the caching allocator use it).
void set_current(const torch::Device& device);

// Waits for every kernel queued on the device (for honest wall-clock timing).
void synchronize(const torch::Device& device);

// The state of LibTorch's default generator of this GPU (what torch::rand and dropout on it draw
// from), for checkpoints; set_rng_state puts a saved one back. An undefined tensor / an error in
// CPU builds.
torch::Tensor rng_state(const torch::Device& device);
void set_rng_state(const torch::Device& device, const torch::Tensor& state);

}  // namespace plexus::host::gpu

namespace plexus::host::gpu {

// Puts plexus's CUDA kernels behind its operators (dispatch.hpp) for the CUDA dispatch key;
// nothing in CPU builds.
void register_operators();

}  // namespace plexus::host::gpu
