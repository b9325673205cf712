// One rank's training: the same loop for every launch mode (one process, local or env workers,
// simulated ranks) and every strategy. trainer.cpp holds the loop; trainer_parts.hpp the pieces
// it is built from (assembly, metrics and progress, checkpoints, faults, the final record).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <plexus/dataset.hpp>
#include <plexus/transport.hpp>
#include <torch/types.h>

#include "base/clock.hpp"
#include "config/experiment.hpp"
#include "config/faults.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/control.hpp"
#include "runtime/exit_codes.hpp"
#include "runtime/weights.hpp"
#include "sim/network.hpp"
#include "store/results.hpp"

namespace plexus::host {

namespace sim {
class Cluster;
}

// What every rank of one run shares.
struct Job {
    const ResolvedConfig* cfg = nullptr;
    const RunInfo* info = nullptr;
    int64_t run_id = 0;
    torch::Device device = torch::kCPU;
    int threads = 1;
    ResultsStore* store = nullptr;  // the database where this process has it open; else null
    std::optional<sim::DeviceProfile> sim_device;
    std::string sim_network;
    // Simulated ranks share one dataset (read-only; only one rank thread runs at a time), so
    // that 64 ranks do not hold 64 copies of the corpus.
    std::shared_ptr<std::shared_ptr<Dataset>> shared_dataset;
    // Where this run's checkpoints go; null when [checkpoint] writes none.
    std::optional<RunCheckpoints> checkpoints;
    std::optional<int64_t> resume_step;  // the checkpoint every rank starts from (--resume)
    bool resumed = false;                // --resume: [[faults]] kills already happened
    std::vector<Fault> faults;
    std::shared_ptr<const NamedTensors> initial_weights;  // train.init_from's, read once; null: none
};

// One rank's ways to the others: the strategy's transport, the harness's control channel.
struct Connection {
    std::shared_ptr<Transport> transport;
    std::unique_ptr<ControlChannel> control;
};

// How one rank reaches the others.
struct RankEnv {
    int rank = 0, world = 1;
    std::function<Connection()> connect;  // called where a failure is recorded
    std::shared_ptr<RankClock> clock = make_wall_clock();
    int ranks_per_node = 1;
    bool print_errors = true;
};

struct RankResult {
    int code = kOk;
    std::string error;
};

// Rank `rank` of the simulated cluster: its transport, a control channel on the cluster's free
// control group, its clock, its node size; errors printed by rank 0 only.
RankEnv simulated_rank(sim::Cluster& cluster, int rank);

// Trains one rank to the end of the run and records what it owes the database.
RankResult train_rank(const Job& job, const RankEnv& env);

// SIGINT/SIGTERM received by this process (the harness's signal handler counts them).
std::atomic<int>& interrupt_requests();

}  // namespace plexus::host
