// CPU builds: asking for NCCL is a clear error (CUDA builds compile nccl.cpp instead).
#include "transport/c10d.hpp"
#include "transport/c10d_impl.hpp"

#include <plexus/error.hpp>

namespace plexus::host {

std::unique_ptr<Transport> make_nccl_transport_on(const Rendezvous&, c10::intrusive_ptr<c10d::Store>,
                                                  const torch::Device&) {
    throw Error(
        "launch.backend = \"nccl\" needs a CUDA build of plexus, and this one is CPU-only",
        "use launch.backend = \"gloo\" (or \"auto\"), or build against a CUDA LibTorch (scripts/device-run.sh)");
}

}  // namespace plexus::host
