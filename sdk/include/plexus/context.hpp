// plexus/context.hpp: the run as a plugin sees it.
//
// The host hands every plugin factory a RunContext. It says who this rank is, on which device,
// over which transport; it gives the run's shape (sequence length, batch, budget); it records metrics;
// it builds the other plugins of the run (a strategy asks it for the model, the optimizers and
// the communication scheme, so that one algorithm may nest several); it gives seeded random
// streams and the clock.
//
// Time: never read the wall clock in a plugin. Ask now(): on real processes it is the wall
// clock, on the simulated cluster it is this rank's virtual clock, which advances by what the
// rank computed (charge_compute) and communicated. The same strategy is then timed right on both.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "plexus/comm.hpp"
#include "plexus/config.hpp"
#include "plexus/model.hpp"
#include "plexus/optimizer.hpp"
#include "plexus/transport.hpp"

namespace plexus {

enum class LogLevel { Debug, Info, Warning };

// A task running beside the rank's compute: a communication thread (ACCO runs its rounds on
// one). See RunContext::start_background.
class BackgroundTask {
public:
    virtual ~BackgroundTask() = default;
    // Whether the task has returned (on the simulated cluster: by this rank's clock).
    virtual bool done() = 0;
    // Waits for the task (the time blocked is exposed) and rethrows what it threw.
    virtual void join() = 0;
};

class RunContext {
public:
    virtual ~RunContext() = default;

    virtual int rank() const = 0;
    virtual int world_size() const = 0;
    // How many consecutive ranks share this rank's node (rank / ranks_per_node() is its node):
    // from the launcher on real runs (LOCAL_WORLD_SIZE and its mpirun/srun equivalents), from
    // sim.gpus_per_node on a two_level simulated cluster, 1 on other simulated topologies.
    // Topology-aware schemes (hierarchical all-reduce) group ranks by it.
    virtual int ranks_per_node() const = 0;
    virtual torch::Device device() const = 0;
    virtual Transport& transport() = 0;
    // For measurements that are not part of the algorithm (the average of the workers' models
    // and their consensus distance, for evaluation): collectives that cost no simulated time
    // and are not counted in the run's communication on the simulated cluster; the world
    // transport on real back ends (where measuring takes real time anyway).
    virtual Transport& measurement_transport() = 0;

    // The run's shape: what a plugin may know of the host's settings (its own keys come in its
    // Config; another plugin's are none of its business).
    // The vocabulary size (from the dataset) and the training sequence length ([train] seq_len).
    virtual int64_t vocab_size() const = 0;
    virtual int64_t seq_len() const = 0;
    // Sequences per training step on this rank ([train] batch_size).
    virtual int64_t batch_size() const = 0;
    // The token budget of [train] tokens as set, or 0 when the run is bounded by steps.
    virtual int64_t token_budget() const = 0;

    // Records a metric of this rank at the current step (e.g. "comm/bucket_ms"): every rank's
    // rows reach the run's database with that rank (ranks that do not write it hand their rows
    // to rank 0 at log points, without waiting for each other).
    // Reserved names the harness records itself, for rank 0 (the run's curves): loss, lr,
    // grad_norm, eval_loss, tokens_per_s, step_time, mfu, memory.
    virtual void record(const std::string& key, double value) = 0;
    virtual void log(LogLevel level, const std::string& message) = 0;

    // A seed derived from the run's seed and a stream name ("data", "init", "gossip"):
    // the same on every rank for the same name, so ranks agree without talking.
    virtual uint64_t seed(const std::string& stream) const = 0;

    // Seconds since the run started: wall clock, or this rank's simulated clock.
    virtual double now() = 0;
    // Tells the clock this rank computed `flops` (no-op on real hardware).
    virtual void charge_compute(double flops) = 0;

    // Runs `task` concurrently with this rank's compute, e.g. a chain of collectives with work
    // between them (a sharded optimizer step) that should go on as soon as each lands rather
    // than when the compute next looks. On real back ends it is a thread; on the simulated
    // cluster it is a second activity of this rank with a clock of its own, started at the
    // rank's time and scheduled with the ranks, so its collectives are issued at the simulated
    // time the previous one ended and its waits are not exposed. Rules: only the task uses the
    // transport while it runs (the compute thread waits for done() or join() first); it does
    // not call record() or log(); it may call charge_compute() for its own work (the sharded
    // optimizer step on the simulated clock; on real hardware time is measured). Destroying the
    // handle joins the task.
    virtual std::unique_ptr<BackgroundTask> start_background(std::function<void()> task) = 0;

    // Bytes of tensors this rank allocated and still holds (parameters, optimizer state,
    // activations, buffers), as the allocator counts them: the difference around a piece of
    // work is what it kept (PETRA's stored activations). On a GPU: the caching allocator's
    // count for this rank's device (one rank per GPU). -1 where not measured.
    virtual int64_t tensor_bytes() { return -1; }

    // Builds the model of the [model] section, its parameters initialized from seed("init")
    // (identically on every rank), on device().
    virtual std::shared_ptr<Model> make_model() = 0;
    // Builds the optimizer of a section ("optimizer"; DiLoCo's outer one could be
    // "outer_optimizer") over the given slots.
    virtual std::unique_ptr<Optimizer> make_optimizer(std::vector<ParamSlot> slots,
                                                      const std::string& section = "optimizer") = 0;
    // Builds the communication scheme of a section ("comm").
    virtual std::unique_ptr<CommScheme> make_comm(const std::string& section = "comm") = 0;
};

}  // namespace plexus
