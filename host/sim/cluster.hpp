// `[launch] mode = "sim"`: N ranks as threads of one process under a deterministic scheduler,
// each with a virtual clock.
//
// Only one rank thread runs at any moment. A rank runs until it must wait for another (a
// collective some peer has not joined yet, a receive with no message) or asks whether an
// operation is done; the scheduler then resumes the ready rank with the smallest clock (ties to
// the lowest rank). Every decision depends on clocks and program order only, never on the
// machine's load, so the same config and seed give bit-identical numbers and times. Running the
// smallest clock first also keeps causality: when a rank observes the network at time t, every
// rank behind t has already caught up.
//
// A rank may start background activities (RunContext::start_background: a communication
// thread). Each is scheduled like a rank, with a clock of its own that starts at its rank's
// time; its collectives count as its rank's, issued at its own clock, and its waits are not
// exposed. "Entities" below are the ranks (ids 0..N-1) and these activities (ids N and up).
//
// Numerics are real (the tensors are reduced, gathered, sent); time is charged: compute from the
// FLOPs a rank reports (RunContext::charge_compute) and its device profile, communication from
// the network model (sim_network.hpp).
#pragma once

#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <plexus/context.hpp>
#include <plexus/transport.hpp>

#include "base/clock.hpp"
#include "config/experiment.hpp"
#include "config/faults.hpp"
#include "sim/network.hpp"

namespace plexus::host {

namespace sim {

struct Settings {
    int ranks = 1;
    NetworkSpec network;
    Algorithm algorithm = Algorithm::Auto;
    DeviceProfile device;
    std::vector<double> slowdown;  // per rank: compute time factor (stragglers)
    double jitter = 0;             // sigma of a log-normal factor on every compute charge
    std::vector<double> fail_at;   // per rank: simulated time it fails (infinity: never)
    // [[faults]] corrupt: a bit flipped in a message between a and b, with this probability, from this time.
    struct Corruption {
        int a = 0, b = 0;
        double probability = 1.0, from_time = 0.0;
    };
    std::vector<Corruption> corruptions;
    uint64_t seed = 0;
};

// Reads [sim] and [launch] of a resolved experiment, and executes the part of the run's fault
// plan (config/faults.hpp fault_plan) that acts on the network or at a simulated time.
// `measured_core_flops` is this machine's per-core peak (only used by device = "measured").
// Throws plexus::Error naming the key.
Settings settings_from(const ResolvedConfig& cfg, double measured_core_flops, const std::vector<Fault>& plan);

class Cluster {
public:
    explicit Cluster(Settings settings);
    ~Cluster();

    int size() const;
    const Settings& settings() const;
    const Network& network() const;

    // Runs body(rank) for every rank, one thread each, under the scheduler; returns when all have
    // returned. An exception escaping body marks the rank failed: the operations its peers wait
    // for then fail with its message.
    void run(const std::function<void(int rank)>& body);

    // The world transport of a rank (collectives and point-to-point, charged and accounted).
    std::shared_ptr<Transport> transport(int rank);
    // A transport for the harness's own bookkeeping (agreeing to stop, gathering summaries):
    // it synchronizes the ranks' data but costs no simulated time and is not accounted.
    std::shared_ptr<Transport> control(int rank);
    std::shared_ptr<RankClock> clock(int rank);
    double clock_of(int rank) const;
    // Messages changed by each [[faults]] corruption so far (Settings::corruptions order).
    std::vector<int64_t> corrupted_messages() const;

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace sim
}  // namespace plexus::host
