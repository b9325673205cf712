#include "transport/c10d.hpp"
#include "transport/c10d_impl.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <plexus/build_config.hpp>
#include <plexus/error.hpp>

namespace plexus::host {

namespace {

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
    const char* v = env(name);
    return v ? std::atoi(v) : fallback;
}

// ProcessGroupGloo over CPU tensors. Loopback on one machine; GLOO_SOCKET_IFNAME or the host
// name's address across machines.
struct GlooFlavor {
    using Group = c10d::ProcessGroupGloo;
    static constexpr const char* kName = "gloo";
    static constexpr bool kNativeShards = false;  // LibTorch 1.13's Gloo has no reduce-scatter
    static constexpr bool kPollableRecv = false;  // its receives report completion only once waited for
    torch::Device device = torch::kCPU;
    std::string addr;  // the interface's address on one machine; empty: the default device

    c10::intrusive_ptr<Group> make_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                         std::chrono::milliseconds timeout) const {
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        if (const char* ifname = env("GLOO_SOCKET_IFNAME"))
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        else if (!addr.empty())
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr));
        else
            options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        options->threads = 1;
        return c10::make_intrusive<Group>(store, rank, world, options);
    }
    c10d::BarrierOptions barrier_options() const { return {}; }
    void close(Group&) const {}  // its threads end with it
};

}  // namespace

std::optional<Rendezvous> rendezvous_from_env() {
    Rendezvous rv;
    if (env("RANK") && env("WORLD_SIZE")) {
        rv.rank = env_int("RANK", 0);
        rv.world_size = env_int("WORLD_SIZE", 1);
        rv.local_rank = env_int("LOCAL_RANK", 0);
        rv.local_world_size = env_int("LOCAL_WORLD_SIZE", 1);
        rv.source = "RANK/WORLD_SIZE (torchrun-style)";
    } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
        rv.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
        rv.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
        rv.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
        rv.local_world_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
        rv.source = "OMPI_COMM_WORLD_* (mpirun)";
    } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
        rv.rank = env_int("SLURM_PROCID", 0);
        rv.world_size = env_int("SLURM_NTASKS", 1);
        rv.local_rank = env_int("SLURM_LOCALID", 0);
        rv.local_world_size = env_int("SLURM_NTASKS_PER_NODE", 1);
        rv.source = "SLURM_PROCID/SLURM_NTASKS (srun)";
    } else {
        return std::nullopt;
    }
    if (const char* a = env("MASTER_ADDR")) rv.master_addr = a;
    rv.master_port = env_int("MASTER_PORT", 29500);
    rv.local_world_size = std::max(1, rv.local_world_size);
    if (rv.world_size < 1 || rv.rank < 0 || rv.rank >= rv.world_size)
        throw Error("rank " + std::to_string(rv.rank) + " of world size " + std::to_string(rv.world_size) +
                        " from " + rv.source + " is not a valid rank",
                    "check the launcher's environment");
    return rv;
}

c10::intrusive_ptr<c10d::Store> connect_store(const Rendezvous& rv) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(rv.timeout_s * 1000));
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(rv.master_port);
    opts.isServer = rv.rank == 0;
    opts.numWorkers = rv.world_size;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    try {
        return c10::make_intrusive<c10d::TCPStore>(rv.master_addr, opts);
    } catch (const c10::Error& e) {
        throw Error("rank " + std::to_string(rv.rank) + ": rendezvous at " + rv.master_addr + ":" +
                        std::to_string(rv.master_port) + " failed within " + std::to_string(rv.timeout_s) +
                        " s: " + e.what_without_backtrace(),
                    "check MASTER_ADDR/MASTER_PORT and that every rank was started");
    }
}

std::unique_ptr<Transport> make_gloo_transport(const Rendezvous& rv) {
    auto store = connect_store(rv);
    GlooFlavor flavor;
    if (rv.master_addr == "127.0.0.1" || rv.master_addr == "localhost") flavor.addr = "127.0.0.1";
    return std::make_unique<c10d_impl::C10dTransport<GlooFlavor>>(flavor, store, rv.rank, rv.world_size,
                                                                  rv.timeout());
}

std::unique_ptr<Transport> make_c10d_transport(const Rendezvous& rv, const std::string& backend,
                                               const torch::Device& device) {
    if (backend == "gloo") return make_gloo_transport(rv);
    if (backend == "nccl") return make_nccl_transport(rv, device);
    if (backend == "auto")
        return device.is_cuda() && PLEXUS_WITH_CUDA ? make_nccl_transport(rv, device) : make_gloo_transport(rv);
    throw Error("launch.backend = \"" + backend + "\" is unknown", "use auto, gloo or nccl");
}

}  // namespace plexus::host
