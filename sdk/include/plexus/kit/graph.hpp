// plexus/kit/graph.hpp: communication graphs for decentralized algorithms (gossip, A2CiD2, DADAO),
// and the spectral quantities their constants come from (docs/algorithms/gossip.md, docs/algorithms/dadao.md).
//
//   auto g = plexus::make_graph("exponential", 16);
//   auto s = plexus::gossip_spectrum(g, /*rate=*/1.0);        // chi1, chi2
//   auto c = plexus::acid_constants(s);                        // eta, alpha_tilde
//
// A graph here is what a worker may talk to: each node's neighbour list, with repeats where the
// construction repeats a neighbour (the exponential graph lists its antipode twice, so it is
// picked twice as often). The gossip process pairs a node with a neighbour drawn from that list,
// `rate` times per unit of time (one expected gradient step), so
//     W_ij = (times j appears in N(i)) / |N(i)|,   L = rate (I - W),
//     chi1 = 1 / (smallest positive eigenvalue of L),
//     chi2 = max over edges (i, j) of (e_i - e_j)^T L^+ (e_i - e_j) / 2,
// the normalization of the A2CiD2 reference code (its constants change with any other).
// Deterministic: a random regular graph comes from its seed alone.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "plexus/error.hpp"
#include "plexus/kit/util.hpp"

namespace plexus {

struct Graph {
    std::string name;
    std::vector<std::vector<int>> neighbours;  // per node, repeats kept
    int nodes() const { return static_cast<int>(neighbours.size()); }
    // Each undirected edge once, (a, b) with a < b, repeats removed.
    std::vector<std::pair<int, int>> edges() const {
        std::set<std::pair<int, int>> out;
        for (int a = 0; a < nodes(); ++a)
            for (int b : neighbours[static_cast<size_t>(a)]) out.insert({std::min(a, b), std::max(a, b)});
        return {out.begin(), out.end()};
    }
};

struct GraphOptions {
    int degree = 4;                          // random_regular: neighbours per node
    int torus_rows = 0;                      // torus: rows (0: the squarest that divides n)
    uint64_t seed = 0;                       // random_regular
    std::vector<std::pair<int, int>> edges;  // custom: undirected edges
};

// ring, exponential (n a power of 2: r +- 2^k), torus (2-D, wrapping), complete,
// random_regular (options.degree, seeded), custom (options.edges). Throws plexus::Error with
// what is wrong and what would work; every node must have a neighbour and the graph must be
// connected.
inline Graph make_graph(const std::string& topology, int n, const GraphOptions& options = {}) {
    if (n < 2) throw Error("a communication graph needs at least 2 nodes (got " + std::to_string(n) + ")");
    Graph g;
    g.name = topology;
    g.neighbours.assign(static_cast<size_t>(n), {});
    auto link = [&](int a, int b) {
        g.neighbours[static_cast<size_t>(a)].push_back(b);
        g.neighbours[static_cast<size_t>(b)].push_back(a);
    };
    if (topology == "ring") {
        if (n == 2)
            link(0, 1);
        else
            for (int r = 0; r < n; ++r) link(r, (r + 1) % n);
    } else if (topology == "exponential") {
        if ((n & (n - 1)) != 0)
            throw Error("the exponential graph needs a power of 2 nodes (got " + std::to_string(n) + ")",
                        "use 8, 16, 32, 64 ranks, or another topology");
        for (int r = 0; r < n; ++r)
            for (int hop = 1; hop < n; hop *= 2) {
                g.neighbours[static_cast<size_t>(r)].push_back((r + hop) % n);
                g.neighbours[static_cast<size_t>(r)].push_back((r - hop + n) % n);
            }
    } else if (topology == "torus") {
        int rows = options.torus_rows;
        if (rows == 0)
            for (int d = static_cast<int>(std::sqrt(static_cast<double>(n))); d >= 1; --d)
                if (n % d == 0) {
                    rows = d;
                    break;
                }
        if (rows < 1 || n % rows != 0)
            throw Error("torus: " + std::to_string(rows) + " rows do not divide " + std::to_string(n) + " nodes",
                        "pick a divisor of the number of ranks, or 0 for the squarest torus");
        const int cols = n / rows;
        for (int r = 0; r < rows; ++r)
            for (int c = 0; c < cols; ++c) {
                const int me = r * cols + c;
                if (cols > 2 || (cols == 2 && c == 0)) link(me, r * cols + (c + 1) % cols);
                if (rows > 2 || (rows == 2 && r == 0)) link(me, ((r + 1) % rows) * cols + c);
            }
    } else if (topology == "complete") {
        for (int a = 0; a < n; ++a)
            for (int b = a + 1; b < n; ++b) link(a, b);
    } else if (topology == "random_regular") {
        const int d = options.degree;
        if (d < 1 || d >= n || (static_cast<int64_t>(n) * d) % 2 != 0)
            throw Error(
                "random_regular: degree " + std::to_string(d) + " on " + std::to_string(n) + " nodes is impossible",
                "need 1 <= degree < nodes and degree x nodes even");
        // Pairing model with restarts: shuffle n*d stubs, pair them up, retry on a loop or a
        // repeated edge. Seeded, so every rank builds the same graph.
        uint64_t draws = 0;
        auto below = [&](size_t bound) {  // uniform-enough in [0, bound) for small bounds
            return static_cast<size_t>(mix_seed(options.seed, 0x9a9a0000ULL + draws++) % bound);
        };
        for (int attempt = 0;; ++attempt) {
            if (attempt == 1000)
                throw Error("random_regular: no simple " + std::to_string(d) + "-regular graph on " +
                                std::to_string(n) + " nodes found in 1000 tries",
                            "use a smaller degree");
            std::vector<int> stubs;
            for (int r = 0; r < n; ++r) stubs.insert(stubs.end(), static_cast<size_t>(d), r);
            for (size_t i = stubs.size() - 1; i > 0; --i) {  // Fisher-Yates with our own generator
                std::swap(stubs[i], stubs[below(i + 1)]);
            }
            std::set<std::pair<int, int>> seen;
            bool ok = true;
            for (size_t i = 0; ok && i < stubs.size(); i += 2) {
                const int a = std::min(stubs[i], stubs[i + 1]), b = std::max(stubs[i], stubs[i + 1]);
                ok = a != b && seen.insert({a, b}).second;
            }
            if (!ok) continue;
            for (const auto& [a, b] : seen) link(a, b);
            break;
        }
    } else if (topology == "custom") {
        for (const auto& [a, b] : options.edges) {
            if (a < 0 || b < 0 || a >= n || b >= n || a == b)
                throw Error("custom graph: edge [" + std::to_string(a) + ", " + std::to_string(b) +
                                "] is not between two of the " + std::to_string(n) + " nodes",
                            "edges are pairs of distinct ranks 0.." + std::to_string(n - 1));
            link(a, b);
        }
    } else {
        throw Error("graph \"" + topology + "\" is unknown",
                    "use ring, exponential, torus, complete, random_regular or custom");
    }
    // Connected, every node reachable from node 0.
    std::vector<bool> seen(static_cast<size_t>(n), false);
    std::vector<int> stack{0};
    seen[0] = true;
    while (!stack.empty()) {
        const int a = stack.back();
        stack.pop_back();
        for (int b : g.neighbours[static_cast<size_t>(a)])
            if (!seen[static_cast<size_t>(b)]) {
                seen[static_cast<size_t>(b)] = true;
                stack.push_back(b);
            }
    }
    for (int r = 0; r < n; ++r)
        if (!seen[static_cast<size_t>(r)])
            throw Error("the " + topology + " graph does not connect node " + std::to_string(r) + " to node 0",
                        "gossip cannot reach consensus on a disconnected graph: add edges");
    return g;
}

struct GossipSpectrum {
    double chi1 = 0;  // 1 / algebraic connectivity of L: how slowly plain gossip mixes
    double chi2 = 0;  // max effective resistance of an edge / 2
};

// The gossip Laplacian L = rate (I - W) of `g` (row-normalized W), as a float64 matrix.
inline torch::Tensor gossip_laplacian(const Graph& g, double rate) {
    const int n = g.nodes();
    auto L = torch::eye(n, torch::kFloat64);
    auto acc = L.accessor<double, 2>();
    for (int i = 0; i < n; ++i) {
        const auto& nb = g.neighbours[static_cast<size_t>(i)];
        for (int j : nb) acc[i][j] -= 1.0 / static_cast<double>(nb.size());
    }
    return L * rate;
}

// The ring's constants in closed form (n >= 3): L = (rate / 2) L_cycle, whose eigenvalues are
// rate (1 - cos(2 pi k / n)), and an edge of a cycle of n unit resistors has effective resistance
// (n - 1) / n. A dense eigendecomposition of 10,000 nodes would take longer than the run.
inline bool is_ring(const Graph& g) {
    const int n = g.nodes();
    if (g.name != "ring" || n < 3) return false;
    for (int i = 0; i < n; ++i) {
        auto nb = g.neighbours[static_cast<size_t>(i)];
        std::sort(nb.begin(), nb.end());
        std::vector<int> expected{(i + n - 1) % n, (i + 1) % n};
        std::sort(expected.begin(), expected.end());
        if (nb != expected) return false;
    }
    return true;
}

inline GossipSpectrum gossip_spectrum(const Graph& g, double rate) {
    const int n = g.nodes();
    if (is_ring(g)) {
        const double pi = std::acos(-1.0);
        return {1.0 / (rate * (1.0 - std::cos(2.0 * pi / n))), (n - 1.0) / (n * rate)};
    }
    const auto L = gossip_laplacian(g, rate);
    // L = rate (I - D^-1 A) is similar to the symmetric rate (I - D^-1/2 A D^-1/2): same spectrum.
    auto degree = torch::zeros({n}, torch::kFloat64);
    for (int i = 0; i < n; ++i) degree[i] = static_cast<double>(g.neighbours[static_cast<size_t>(i)].size());
    const auto s = degree.sqrt();
    const auto symmetric = L * s.unsqueeze(1) / s.unsqueeze(0);
    const auto eig = at::linalg_eigvalsh(symmetric, "L");  // ascending; eig[0] = 0
    GossipSpectrum out;
    out.chi1 = 1.0 / eig[1].item<double>();
    const auto pinv = at::linalg_pinv(L);
    for (const auto& [a, b] : g.edges()) {
        const double r = pinv[a][a].item<double>() + pinv[b][b].item<double>() - pinv[a][b].item<double>() -
                         pinv[b][a].item<double>();
        out.chi2 = std::max(out.chi2, r / 2);
    }
    return out;
}

// DADAO's normalization (docs/algorithms/dadao.md): the unweighted graph Laplacian divided by the
// number of edges (communications land on an edge drawn uniformly), chi1 = 1 / its smallest
// positive eigenvalue, chi2 = half the largest effective resistance of an edge under it, as the
// authors' code computes it (AdelNabli/DADAO, utils.py compute_graph_resistance, commit 7d69c35).
inline GossipSpectrum edge_sampling_spectrum(const Graph& g) {
    const int n = g.nodes();
    const auto edges = g.edges();
    auto L = torch::zeros({n, n}, torch::kFloat64);
    for (const auto& [a, b] : edges) {
        L[a][a] += 1.0;
        L[b][b] += 1.0;
        L[a][b] -= 1.0;
        L[b][a] -= 1.0;
    }
    L /= static_cast<double>(edges.size());
    GossipSpectrum out;
    out.chi1 = 1.0 / at::linalg_eigvalsh(L, "L")[1].item<double>();
    const auto pinv = at::linalg_pinv(L);
    for (const auto& [a, b] : edges)
        out.chi2 = std::max(out.chi2, 0.5 * (pinv[a][a] + pinv[b][b] - pinv[a][b] - pinv[b][a]).item<double>());
    return out;
}

// A2CiD2's constants: eta = 1 / (2 sqrt(chi1 chi2)) (the mixing rate of the ODE between
// events), alpha_tilde = sqrt(chi1 / chi2) / 2 (the jump of the momentum variable at an
// averaging). Plain averaging uses alpha = 1/2.
struct AcidConstants {
    double eta = 0, alpha_tilde = 0;
};
inline AcidConstants acid_constants(const GossipSpectrum& s) {
    return {1.0 / (2.0 * std::sqrt(s.chi1 * s.chi2)), 0.5 * std::sqrt(s.chi1 / s.chi2)};
}

}  // namespace plexus
