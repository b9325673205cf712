// The real distributed transport: LibTorch's c10d (TCPStore rendezvous, ProcessGroupGloo for CPU
// tensors, ProcessGroupNCCL for CUDA tensors in CUDA builds), and the rendezvous read from the
// environment of torchrun, srun or mpirun.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <plexus/transport.hpp>
#include <torch/types.h>

namespace plexus::host {

struct Rendezvous {
    std::string master_addr = "127.0.0.1";
    int master_port = 29500;
    int rank = 0;
    int world_size = 1;
    int local_rank = 0;
    int local_world_size = 1;  // ranks on this machine: they share its cores
    double timeout_s = 300;    // rendezvous and every collective
    std::string source;        // which environment it came from, for messages

    std::chrono::milliseconds timeout() const {
        return std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    }
};

// RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT (torchrun),
// OMPI_COMM_WORLD_* (mpirun) or an srun task's SLURM_* variables (transport/slurm.hpp: the
// address of the step's first node, a port from the job id, the tasks on this node); nullopt when
// none is set. MASTER_ADDR and MASTER_PORT, where set, override what the launcher implies.
std::optional<Rendezvous> rendezvous_from_env();

// Joins the group (blocks until every rank arrived, or throws after timeout_s).
std::unique_ptr<Transport> make_gloo_transport(const Rendezvous& rv);

// The same over NCCL, for tensors on `device` (this rank's GPU; tensors elsewhere are staged
// there). Only CUDA builds have it (transport/nccl.cpp); elsewhere it throws a clear error.
std::unique_ptr<Transport> make_nccl_transport(const Rendezvous& rv, const torch::Device& device);

// "auto" picks NCCL for a CUDA device in a CUDA build, else Gloo; "gloo" and "nccl" insist.
std::unique_ptr<Transport> make_c10d_transport(const Rendezvous& rv, const std::string& backend,
                                               const torch::Device& device);

// A key-value store every rank of a job reaches without any collective (the rendezvous's
// TCPStore, served by rank 0): ranks post and read through it without waiting for each other.
class KeyValueStore {
public:
    virtual ~KeyValueStore() = default;
    virtual void set(const std::string& key, const std::string& value) = 0;
    // The value, or nullopt at once when the key is absent (never waits for it).
    virtual std::optional<std::string> peek(const std::string& key) = 0;
    // Sets `key` to `value` unless it holds one already; returns what it holds afterwards (the
    // first writer's value, for every rank alike).
    virtual std::string set_once(const std::string& key, const std::string& value) = 0;
    virtual void erase(const std::string& key) = 0;
};

// One rank's membership of a c10d job: the strategy's transport ("auto", "gloo", "nccl" as for
// make_c10d_transport), the harness's own Gloo group over CPU tensors (its collectives never
// share the strategy's groups or its traffic figures), and the rendezvous store under a prefix
// of the harness's. One rendezvous for all three.
struct C10dJob {
    std::shared_ptr<Transport> transport;
    std::shared_ptr<Transport> control;
    std::shared_ptr<KeyValueStore> store;
};
C10dJob join_c10d_job(const Rendezvous& rv, const std::string& backend, const torch::Device& device);

}  // namespace plexus::host
