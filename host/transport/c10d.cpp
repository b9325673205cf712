#include "transport/c10d.hpp"
#include "transport/c10d_impl.hpp"
#include "transport/slurm.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
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
        // Two workers, PyTorch's default: a bucket's all-reduce can start while the one before it
        // still runs (one worker queued DDP's last buckets behind each other: on 2 processes its
        // exposed communication halved with two).
        options->threads = std::max(1, env_int("PLEXUS_GLOO_THREADS", 2));
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
    } else if (const auto slurm = slurm_place(env)) {
        rv.rank = slurm->rank;
        rv.world_size = slurm->world_size;
        rv.local_rank = slurm->local_rank;
        rv.local_world_size = slurm->local_world_size;
        if (!slurm->first_host.empty() && !env("MASTER_ADDR"))
            rv.master_addr = node_address(slurm->first_host);  // where rank 0 runs
        rv.master_port = slurm->port;
        rv.source = "SLURM_PROCID/SLURM_NTASKS (srun)";
    } else {
        return std::nullopt;
    }
    if (const char* a = env("MASTER_ADDR")) rv.master_addr = a;  // exported by hand: it wins
    rv.master_port = env_int("MASTER_PORT", rv.master_port);
    rv.local_world_size = std::max(1, rv.local_world_size);
    if (rv.world_size < 1 || rv.rank < 0 || rv.rank >= rv.world_size)
        throw Error("rank " + std::to_string(rv.rank) + " of world size " + std::to_string(rv.world_size) + " from " +
                        rv.source + " is not a valid rank",
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

namespace {

std::unique_ptr<Transport> gloo_on(const Rendezvous& rv, c10::intrusive_ptr<c10d::Store> store) {
    GlooFlavor flavor;
    if (rv.master_addr == "127.0.0.1" || rv.master_addr == "localhost") flavor.addr = "127.0.0.1";
    return std::make_unique<c10d_impl::C10dTransport<GlooFlavor>>(flavor, std::move(store), rv.rank, rv.world_size,
                                                                  rv.timeout());
}

std::unique_ptr<Transport> transport_on(const Rendezvous& rv, const std::string& backend, const torch::Device& device,
                                        c10::intrusive_ptr<c10d::Store> store) {
    if (backend == "gloo") return gloo_on(rv, std::move(store));
    if (backend == "nccl") return make_nccl_transport_on(rv, std::move(store), device);
    if (backend == "auto")
        return device.is_cuda() && PLEXUS_WITH_CUDA ? make_nccl_transport_on(rv, std::move(store), device)
                                                    : gloo_on(rv, std::move(store));
    throw Error("launch.backend = \"" + backend + "\" is unknown", "use auto, gloo or nccl");
}

std::string text_of(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }
std::vector<uint8_t> bytes_of(const std::string& text) { return std::vector<uint8_t>(text.begin(), text.end()); }

class C10dKeyValueStore : public KeyValueStore {
public:
    explicit C10dKeyValueStore(c10::intrusive_ptr<c10d::Store> store) : store_(std::move(store)) {}
    void set(const std::string& key, const std::string& value) override { store_->set(key, bytes_of(value)); }
    std::optional<std::string> peek(const std::string& key) override {
        if (!store_->check({key})) return std::nullopt;
        return text_of(store_->get(key));
    }
    std::string set_once(const std::string& key, const std::string& value) override {
        // compareSet with an empty expected value creates the key only if it is absent.
        return text_of(store_->compareSet(key, {}, bytes_of(value)));
    }
    void erase(const std::string& key) override { store_->deleteKey(key); }

private:
    c10::intrusive_ptr<c10d::Store> store_;
};

}  // namespace

std::unique_ptr<Transport> make_gloo_transport(const Rendezvous& rv) { return gloo_on(rv, connect_store(rv)); }

std::unique_ptr<Transport> make_nccl_transport(const Rendezvous& rv, const torch::Device& device) {
    return make_nccl_transport_on(rv, connect_store(rv), device);
}

std::unique_ptr<Transport> make_c10d_transport(const Rendezvous& rv, const std::string& backend,
                                               const torch::Device& device) {
    return transport_on(rv, backend, device, connect_store(rv));
}

C10dJob join_c10d_job(const Rendezvous& rv, const std::string& backend, const torch::Device& device) {
    auto store = connect_store(rv);
    C10dJob job;
    job.transport = transport_on(rv, backend, device, store);
    job.control = gloo_on(rv, c10::make_intrusive<c10d::PrefixStore>("plexus.control", store));
    job.store = std::make_shared<C10dKeyValueStore>(c10::make_intrusive<c10d::PrefixStore>("plexus.harness", store));
    return job;
}

}  // namespace plexus::host
