// CPU builds: see cuda.hpp. There is no GPU, and asking for NCCL is a clear error.
#include "cuda.hpp"

#include <plexus/error.hpp>

#include "transport_c10d.hpp"

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

std::unique_ptr<Transport> make_nccl_transport(const Rendezvous&, const torch::Device&) {
    throw Error("launch.backend = \"nccl\" needs a CUDA build of plexus, and this one is CPU-only",
                "use launch.backend = \"gloo\" (or \"auto\"), or build against a CUDA LibTorch (scripts/device-run.sh)");
}

}  // namespace plexus::host
