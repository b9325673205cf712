#include "sim/network.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <queue>
#include <set>

#include <plexus/error.hpp>

#include "base/text.hpp"

namespace plexus::host::sim {

namespace {

std::pair<int, int> key(int a, int b) { return {std::min(a, b), std::max(a, b)}; }

int ceil_log2(int n) {
    int levels = 0;
    while ((1 << levels) < n) ++levels;
    return levels;
}

std::string num(double v) { return short_number(v); }

std::string describe_link(const Link& l) { return num(l.latency * 1e6) + " us, " + num(l.bandwidth / 1e9) + " GB/s"; }

}  // namespace

Algorithm parse_algorithm(const std::string& name) {
    if (name == "ring") return Algorithm::Ring;
    if (name == "tree") return Algorithm::Tree;
    if (name == "hierarchical") return Algorithm::Hierarchical;
    if (name == "auto") return Algorithm::Auto;
    throw Error("sim.algorithm = \"" + name + "\" is unknown", "use ring, tree, hierarchical or auto");
}

const char* to_string(Algorithm a) {
    switch (a) {
        case Algorithm::Ring: return "ring";
        case Algorithm::Tree: return "tree";
        case Algorithm::Hierarchical: return "hierarchical";
        case Algorithm::Auto: return "auto";
    }
    return "?";
}

Network::Network(NetworkSpec spec) : spec_(std::move(spec)) {
    const int n = spec_.ranks;
    if (n < 1) throw Error("the simulated cluster needs at least one rank", "set [launch] ranks");
    auto check_link = [](const Link& l, const std::string& what) {
        if (!(l.latency >= 0) || !(l.bandwidth > 0))
            throw Error(what + ": latency must be >= 0 and bandwidth > 0",
                        "latency in microseconds, bandwidth in GB/s");
    };
    check_link(spec_.link, "sim.latency_us/bandwidth_gbs");
    check_link(spec_.intra, "sim.intra_latency_us/intra_bandwidth_gbs");
    auto check_rank = [n](int r, const std::string& what) {
        if (r < 0 || r >= n)
            throw Error(what + " names rank " + std::to_string(r) + ", outside 0.." + std::to_string(n - 1),
                        "ranks count from 0 to launch.ranks - 1");
    };
    const auto& t = spec_.topology;
    adjacency_.assign(static_cast<size_t>(n), {});
    auto connect = [&](int a, int b) {
        if (a == b) return;
        auto& la = adjacency_[static_cast<size_t>(a)];
        if (std::find(la.begin(), la.end(), b) == la.end()) {
            la.push_back(b);
            adjacency_[static_cast<size_t>(b)].push_back(a);
        }
    };
    if (t == "ring") {
        for (int r = 0; r < n; ++r) connect(r, (r + 1) % n);
    } else if (t == "torus2d") {
        int rows = spec_.torus_rows;
        if (rows <= 0) {
            rows = 1;
            for (int d = 1; d * d <= n; ++d)
                if (n % d == 0) rows = d;
        }
        if (n % rows != 0)
            throw Error("sim.torus_rows = " + std::to_string(rows) + " does not divide " + std::to_string(n) + " ranks",
                        "pick a divisor of launch.ranks, or 0 for the squarest torus");
        spec_.torus_rows = rows;
        const int cols = n / rows;
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) {
                connect(r * cols + c, r * cols + (c + 1) % cols);
                connect(r * cols + c, ((r + 1) % rows) * cols + c);
            }
    } else if (t == "two_level") {
        if (spec_.gpus_per_node < 1) throw Error("sim.gpus_per_node must be >= 1", "set sim.gpus_per_node = 8");
    } else if (t == "custom") {
        if (spec_.edges.empty() && spec_.links.empty())
            throw Error("sim.topology = \"custom\" but sim.edges and sim.links are empty",
                        "list the edges: edges = [[0, 1], [1, 2]], or links = [[0, 1, latency_us, bandwidth_gbs]]");
        for (const auto& [a, b] : spec_.edges) {
            check_rank(a, "sim.edges");
            check_rank(b, "sim.edges");
            connect(a, b);
        }
    } else if (t != "fully_connected") {
        throw Error("sim.topology = \"" + t + "\" is unknown",
                    "use fully_connected, ring, torus2d, two_level or custom");
    }
    for (const auto& [a, b, l] : spec_.links) {
        check_rank(a, "sim.links");
        check_rank(b, "sim.links");
        check_link(l, "sim.links entry (" + std::to_string(a) + ", " + std::to_string(b) + ")");
        overrides_[key(a, b)] = l;
        if (!complete_graph()) connect(a, b);
    }
    failures_ = spec_.link_failures;
    for (const auto& [a, b, when] : failures_) {
        check_rank(a, "sim.fail_links");
        check_rank(b, "sim.fail_links");
    }
    std::sort(failures_.begin(), failures_.end(),
              [](const auto& x, const auto& y) { return std::get<2>(x) < std::get<2>(y); });
}

int Network::node_of(int rank) const { return two_level() ? rank / spec_.gpus_per_node : rank; }

std::string Network::describe() const {
    std::string s = spec_.topology + " of " + std::to_string(spec_.ranks) + " ranks, ";
    if (two_level())
        s += std::to_string(spec_.gpus_per_node) + " per node (inside " + describe_link(spec_.intra) + ", between " +
             describe_link(spec_.link) + ")";
    else
        s += "links " + describe_link(spec_.link);
    if (spec_.topology == "torus2d") s += ", " + std::to_string(spec_.torus_rows) + " rows";
    if (!overrides_.empty()) s += ", " + std::to_string(overrides_.size()) + " custom link(s)";
    if (!failures_.empty()) s += ", " + std::to_string(failures_.size()) + " link failure(s)";
    return s;
}

int Network::failures_before(double t) const {
    int k = 0;
    while (k < static_cast<int>(failures_.size()) && std::get<2>(failures_[static_cast<size_t>(k)]) <= t) ++k;
    return k;
}

std::optional<Link> Network::direct(int a, int b, double t) const {
    const int k = failures_before(t);
    for (int i = 0; i < k; ++i) {
        const auto& [x, y, when] = failures_[static_cast<size_t>(i)];
        if (key(x, y) == key(a, b)) return std::nullopt;
    }
    if (auto it = overrides_.find(key(a, b)); it != overrides_.end()) return it->second;
    if (spec_.topology == "fully_connected") return spec_.link;
    if (two_level()) return node_of(a) == node_of(b) ? spec_.intra : spec_.link;
    const auto& la = adjacency_[static_cast<size_t>(a)];
    if (std::find(la.begin(), la.end(), b) != la.end()) return spec_.link;
    return std::nullopt;
}

Link Network::route(int a, int b, double t) const {
    if (a == b) return {0, std::numeric_limits<double>::infinity()};
    const int k = failures_before(t);
    const auto cache_key = std::make_tuple(a, b, k);
    if (auto it = route_cache_.find(cache_key); it != route_cache_.end()) return it->second;
    // On a complete graph the direct link is the route unless it failed or a custom link is slower
    // than going around; Dijkstra settles both (and every explicit topology).
    std::optional<Link> found;
    if (complete_graph() && overrides_.empty()) found = direct(a, b, t);
    if (!found) {
        const int n = spec_.ranks;
        const double inf = std::numeric_limits<double>::infinity();
        std::vector<double> dist(static_cast<size_t>(n), inf), narrow(static_cast<size_t>(n), 0);
        using Item = std::pair<double, int>;
        std::priority_queue<Item, std::vector<Item>, std::greater<Item>> queue;
        dist[static_cast<size_t>(a)] = 0;
        narrow[static_cast<size_t>(a)] = inf;
        queue.push({0, a});
        std::vector<int> all;
        if (complete_graph())
            for (int r = 0; r < n; ++r) all.push_back(r);
        while (!queue.empty()) {
            auto [d, v] = queue.top();
            queue.pop();
            if (d > dist[static_cast<size_t>(v)]) continue;
            if (v == b) break;
            const auto& next = complete_graph() ? all : adjacency_[static_cast<size_t>(v)];
            for (int w : next) {
                if (w == v) continue;
                auto l = direct(v, w, t);
                if (!l) continue;
                const double nd = d + l->latency;
                const double nb = std::min(narrow[static_cast<size_t>(v)], l->bandwidth);
                // Ties on latency go to the wider route (uniform tori have many equal ones).
                if (nd < dist[static_cast<size_t>(w)] ||
                    (nd == dist[static_cast<size_t>(w)] && nb > narrow[static_cast<size_t>(w)])) {
                    dist[static_cast<size_t>(w)] = nd;
                    narrow[static_cast<size_t>(w)] = nb;
                    queue.push({nd, w});
                }
            }
        }
        if (dist[static_cast<size_t>(b)] == inf)
            throw Error("the simulated network has no route from rank " + std::to_string(a) + " to rank " +
                            std::to_string(b) + " at simulated time " + num(t) + " s" +
                            (k > 0 ? " (after " + std::to_string(k) + " link failure(s))" : ""),
                        "check sim.topology, sim.edges and sim.fail_links");
        found = Link{dist[static_cast<size_t>(b)], narrow[static_cast<size_t>(b)]};
    }
    route_cache_[cache_key] = *found;
    return *found;
}

double Network::ring_rounds(const std::vector<int>& m, double chunk, int steps, double t) const {
    const size_t n = m.size();
    if (n < 2 || steps <= 0) return 0;
    double slowest = 0;
    for (size_t i = 0; i < n; ++i) slowest = std::max(slowest, route(m[i], m[(i + 1) % n], t).time(chunk));
    return steps * slowest;
}

double Network::tree_levels(const std::vector<int>& m, double bytes, double t) const {
    const int n = static_cast<int>(m.size());
    double total = 0;
    for (int step = 1; step < n; step *= 2) {
        double slowest = 0;
        for (int i = 0; i + step < n; i += 2 * step)
            slowest =
                std::max(slowest, route(m[static_cast<size_t>(i)], m[static_cast<size_t>(i + step)], t).time(bytes));
        total += slowest;
    }
    return total;
}

Cost Network::all_reduce(const std::vector<int>& m, double bytes, Algorithm algo, double t) const {
    const int n = static_cast<int>(m.size());
    if (n < 2) return {0, 0, Algorithm::Ring};
    Cost ring{ring_rounds(m, bytes / n, 2 * (n - 1), t), all_reduce_bytes(n, bytes), Algorithm::Ring};
    if (algo == Algorithm::Ring) return ring;
    // Reduce up a binomial tree, broadcast down it: every non-root sends the buffer once up, and
    // inner nodes send it down; per rank about twice the buffer at most.
    Cost tree{2 * tree_levels(m, bytes, t), all_reduce_bytes(n, bytes), Algorithm::Tree};
    if (algo == Algorithm::Tree) return tree;

    // Hierarchical: reduce-scatter inside each node, all-reduce of the shards across nodes (one
    // ring per local index, in parallel), all-gather inside each node. Needs equal nodes.
    std::map<int, std::vector<int>> nodes;
    for (int r : m) nodes[node_of(r)].push_back(r);
    const int per_node = static_cast<int>(nodes.begin()->second.size());
    bool even = two_level() && nodes.size() > 1 && per_node > 1;
    for (const auto& [node, ranks] : nodes) even &= static_cast<int>(ranks.size()) == per_node;
    if (even) {
        double intra = 0, inter = 0;
        for (const auto& [node, ranks] : nodes)
            intra = std::max(intra, ring_rounds(ranks, bytes / per_node, per_node - 1, t));
        const int node_count = static_cast<int>(nodes.size());
        for (int local = 0; local < per_node; ++local) {
            std::vector<int> across;
            for (const auto& [node, ranks] : nodes) across.push_back(ranks[static_cast<size_t>(local)]);
            inter = std::max(inter, ring_rounds(across, bytes / per_node / node_count, 2 * (node_count - 1), t));
        }
        Cost hier{2 * intra + inter,
                  2.0 * (per_node - 1) / per_node * bytes + 2.0 * (node_count - 1) / node_count * bytes / per_node,
                  Algorithm::Hierarchical};
        if (algo == Algorithm::Hierarchical) return hier;
        Cost best = ring.seconds <= tree.seconds ? ring : tree;
        return hier.seconds < best.seconds ? hier : best;
    }
    if (algo == Algorithm::Hierarchical)
        throw Error(
            "sim.algorithm = \"hierarchical\" needs a two_level topology and a group spanning several "
            "equal nodes",
            "use algorithm = \"auto\" (it takes hierarchical where it applies)");
    return ring.seconds <= tree.seconds ? ring : tree;
}

Cost Network::reduce_scatter(const std::vector<int>& m, double bytes, double t) const {
    const int n = static_cast<int>(m.size());
    if (n < 2) return {};
    return {ring_rounds(m, bytes / n, n - 1, t), shard_bytes(n, bytes), Algorithm::Ring};
}

Cost Network::all_gather(const std::vector<int>& m, double bytes, double t) const {
    const int n = static_cast<int>(m.size());
    if (n < 2) return {};
    return {ring_rounds(m, bytes / n, n - 1, t), shard_bytes(n, bytes), Algorithm::Ring};
}

Cost Network::broadcast(const std::vector<int>& m, double bytes, double t) const {
    return {tree_levels(m, bytes, t), bytes, Algorithm::Tree};
}

Cost Network::barrier(const std::vector<int>& m, double t) const {
    return {2 * tree_levels(m, 0, t), 0, Algorithm::Tree};
}

DeviceProfile device_profile(const std::string& name, double efficiency, double measured_core_flops, double cores,
                             double custom_flops) {
    DeviceProfile p;
    p.name = name;
    double default_efficiency = 0.4;  // a typical large-model training MFU on accelerators
    if (name == "h100" || name == "h200") {
        p.peak_flops = 989.4e12;
        p.source = "datasheet " + std::string(name == "h100" ? "H100" : "H200") + " SXM bf16 dense";
    } else if (name == "a100") {
        p.peak_flops = 312e12;
        p.source = "datasheet A100 SXM bf16 dense";
    } else if (name == "measured") {
        if (!(cores > 0))
            throw Error("sim.cores must be > 0", "the share of this machine's cores one simulated rank has");
        p.peak_flops = measured_core_flops * cores;
        p.source = "measured fp32 matmul, " + num(cores) + " core(s) of this machine";
        // bench/gpt_step reaches 44-59% of the matmul peak on the quickstart GPT step here.
        default_efficiency = 0.5;
    } else if (name == "custom") {
        if (!(custom_flops > 0))
            throw Error("sim.device = \"custom\" needs sim.device_flops > 0", "the device's peak FLOP/s, e.g. 1e15");
        p.peak_flops = custom_flops;
        p.source = "sim.device_flops";
    } else {
        throw Error("sim.device = \"" + name + "\" is unknown", "use measured, h100, h200, a100 or custom");
    }
    p.efficiency = efficiency > 0 ? efficiency : default_efficiency;
    if (p.efficiency > 1) throw Error("sim.efficiency must be in (0, 1]", "the fraction of the peak a step reaches");
    return p;
}

}  // namespace plexus::host::sim
