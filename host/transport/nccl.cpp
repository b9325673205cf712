// CUDA builds: the c10d transport over ProcessGroupNCCL (see c10d_impl.hpp). NCCL runs
// its kernels on its own CUDA streams; a work's wait() makes the caller's current stream wait
// for them, so that computation queued behind a collective sees its result without the host
// blocking.
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "device/cuda.hpp"
#include "transport/c10d.hpp"
#include "transport/c10d_impl.hpp"

namespace plexus::host {

namespace {

struct NcclFlavor {
    using Group = c10d::ProcessGroupNCCL;
    static constexpr const char* kName = "nccl";
    static constexpr bool kNativeShards = true;
    static constexpr bool kPollableRecv = true;  // its works query their CUDA events
    torch::Device device;

    c10::intrusive_ptr<Group> make_group(const c10::intrusive_ptr<c10d::Store>& store, int rank, int world,
                                         std::chrono::milliseconds timeout) const {
        auto options = Group::Options::create();
        options->timeout = timeout;
        auto group = c10::make_intrusive<Group>(store, rank, world, options);
        group->setBoundDeviceId(device);  // barriers and communicators use this rank's GPU
        return group;
    }
    c10d::BarrierOptions barrier_options() const {
        c10d::BarrierOptions o;
        o.device_ids = {device.index()};
        return o;
    }
    // Ends the communicators and the watchdog thread in order (a group destroyed without this
    // warns, and can hang at exit while a collective is pending).
    void close(Group& group) const { group.shutdown(); }
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport_on(const Rendezvous& rv, c10::intrusive_ptr<c10d::Store> store,
                                                  const torch::Device& device) {
    if (!device.is_cuda())
        throw Error("launch.backend = \"nccl\" needs train.device = \"cuda\" (it is \"" + device.str() + "\")",
                    "use launch.backend = \"gloo\" for CPU training");
    const torch::Device gpu(torch::kCUDA, device.has_index() ? device.index() : 0);
    gpu::set_current(gpu);
    return std::make_unique<c10d_impl::C10dTransport<NcclFlavor>>(NcclFlavor{gpu}, std::move(store), rv.rank,
                                                                  rv.world_size, rv.timeout());
}

}  // namespace plexus::host
