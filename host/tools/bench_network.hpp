// `plexus bench network`: measures this machine's c10d/Gloo all-reduce and fits the simulated
// cluster's alpha-beta link model to it, so that a simulation of this machine can be checked
// against a real run (docs/results/sim_cluster.md, "Validating the simulator").
#pragma once

#include <vector>

namespace plexus::host {

struct LinkFit {
    double latency = 0;    // seconds (alpha)
    double bandwidth = 0;  // bytes/s (B)
};

// Least-squares fit, in relative error (so small messages pin alpha and large ones B), of the
// ring all-reduce time 2(n-1)(alpha + S/(nB)) to measured (bytes, seconds) pairs.
LinkFit fit_ring_all_reduce(int ranks, const std::vector<double>& bytes, const std::vector<double>& seconds);

// Measures all-reduce times of `ranks` Gloo ranks (threads of this process over loopback TCP),
// prints them beside the fitted model and the [sim] settings to use. Returns an exit code.
int bench_network(int ranks);

}  // namespace plexus::host
