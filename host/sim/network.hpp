// The simulated cluster's cost model: a network of links with latency and bandwidth (alpha-beta),
// topologies, routes, the time of each collective by algorithm, and device profiles that turn
// FLOPs into seconds. Pure functions of their inputs: the scheduler (sim/cluster.cpp) asks, this answers.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace plexus::host::sim {

// One direction of a link, or a route's totals: latency (s) and bandwidth (bytes/s).
struct Link {
    double latency = 0;
    double bandwidth = 0;
    // Seconds to move `bytes` over it: alpha + bytes / beta.
    double time(double bytes) const { return latency + bytes / bandwidth; }
};

struct NetworkSpec {
    std::string topology = "fully_connected";  // fully_connected, ring, torus2d, two_level, custom
    int ranks = 1;
    Link link{10e-6, 10e9};                         // every link (two_level: the links between nodes)
    int gpus_per_node = 8;                          // two_level
    Link intra{2e-6, 100e9};                        // two_level: links inside a node
    int torus_rows = 0;                             // torus2d: 0 picks the divisor of ranks nearest its square root
    std::vector<std::pair<int, int>> edges;         // custom: undirected edges
    std::vector<std::tuple<int, int, Link>> links;  // heterogeneous links: replace or add (a, b)
    std::vector<std::tuple<int, int, double>> link_failures;  // (a, b, simulated time it goes down)
};

// Allreduce algorithms the model can cost.
enum class Algorithm { Ring, Tree, Hierarchical, Auto };
Algorithm parse_algorithm(const std::string& name);  // throws plexus::Error
const char* to_string(Algorithm a);

// The bytes one of n ranks puts on the wire: an all-reduce of a `bytes` buffer (ring, tree and
// hierarchical alike), and a reduce-scatter or all-gather over a `bytes` buffer.
inline double all_reduce_bytes(int n, double bytes) { return n < 2 ? 0 : 2.0 * (n - 1) / n * bytes; }
inline double shard_bytes(int n, double bytes) { return n < 2 ? 0 : (n - 1.0) / n * bytes; }

// What a collective costs: its duration and the bytes each rank puts on the wire.
struct Cost {
    double seconds = 0;
    double bytes_per_rank = 0;  // the same for every all-reduce algorithm: 2(n-1)/n of the buffer
    Algorithm algorithm = Algorithm::Ring;
};

class Network {
public:
    explicit Network(NetworkSpec spec);  // throws plexus::Error on an invalid spec

    int size() const { return spec_.ranks; }
    const NetworkSpec& spec() const { return spec_; }
    // The node a rank sits on (two_level: rank / gpus_per_node; otherwise the rank itself).
    int node_of(int rank) const;
    bool two_level() const { return spec_.topology == "two_level"; }
    // A one-line description for the run's log and summaries.
    std::string describe() const;

    // The lowest-latency route from a to b with the links up at simulated time t: the summed
    // latency and the narrowest bandwidth on it (cut-through). Throws when there is none.
    Link route(int a, int b, double t) const;

    // Collectives over `members` (global ranks, in group order). `bytes`: the buffer of an
    // all-reduce, the input of a reduce-scatter, the output of an all-gather.
    Cost all_reduce(const std::vector<int>& members, double bytes, Algorithm algo, double t) const;
    Cost reduce_scatter(const std::vector<int>& members, double bytes, double t) const;
    Cost all_gather(const std::vector<int>& members, double bytes, double t) const;
    Cost broadcast(const std::vector<int>& members, double bytes, double t) const;
    Cost barrier(const std::vector<int>& members, double t) const;

    // Building blocks, public for tests: `steps` rounds in which every member sends `chunk`
    // bytes to the next around the ring at once (a round lasts as long as its slowest hop).
    double ring_rounds(const std::vector<int>& members, double chunk, int steps, double t) const;
    // Binomial tree: ceil(log2 n) levels, each as long as its slowest pair moving `bytes`.
    double tree_levels(const std::vector<int>& members, double bytes, double t) const;

private:
    std::optional<Link> direct(int a, int b, double t) const;
    bool complete_graph() const { return spec_.topology == "fully_connected" || two_level(); }
    int failures_before(double t) const;

    NetworkSpec spec_;
    std::vector<std::vector<int>> adjacency_;             // explicit topologies
    std::map<std::pair<int, int>, Link> overrides_;       // (min, max) -> link
    std::vector<std::tuple<int, int, double>> failures_;  // sorted by time
    // Routes computed with the first k failures applied, per k.
    mutable std::map<std::tuple<int, int, int>, Link> route_cache_;
};

// A device profile: what a rank's compute costs.
struct DeviceProfile {
    std::string name;
    double peak_flops = 0;  // FLOP/s (MFU divides by this)
    double efficiency = 1;  // fraction of the peak a training step reaches (assumed, recorded)
    std::string source;     // where the peak comes from
    double flops_per_second() const { return peak_flops * efficiency; }
};

// "h100", "h200", "a100" (datasheet dense bf16), "measured" (`measured_core_flops` times `cores`),
// "custom" (`custom_flops`). efficiency <= 0 picks the profile's default.
DeviceProfile device_profile(const std::string& name, double efficiency, double measured_core_flops, double cores,
                             double custom_flops);

}  // namespace plexus::host::sim
