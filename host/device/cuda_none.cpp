// CPU builds: see cuda.hpp. There is no GPU.
#include "device/cuda.hpp"

#include <plexus/error.hpp>

namespace plexus::host {

namespace gpu {
bool built_with_cuda() { return false; }
std::string device_name(const torch::Device&) { return ""; }
int64_t allocated_bytes(const torch::Device&) { return -1; }
int64_t peak_allocated_bytes(const torch::Device&) { return -1; }
void set_current(const torch::Device&) {}
void synchronize(const torch::Device&) {}
torch::Tensor rng_state(const torch::Device&) { return {}; }
void register_operators() {}
void set_rng_state(const torch::Device&, const torch::Tensor&) {
    throw Error("this checkpoint holds a GPU's random state, and this build of plexus is CPU-only",
                "resume it with a CUDA build, on a GPU");
}
}  // namespace gpu

}  // namespace plexus::host
