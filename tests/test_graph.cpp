// plexus/kit/graph.hpp: the topologies, and the spectral constants of A2CiD2 against the test vectors
// in docs/algorithms/gossip.md (computed with the A2CiD2 reference code's formulas, rate 1).
#include <catch2/catch.hpp>
#include <cmath>

#include <plexus/kit/graph.hpp>

using namespace plexus;
using Catch::Matchers::Contains;

TEST_CASE("graph spectra and A2CiD2 constants match the reference values", "[graph]") {
    struct Row {
        int n;
        const char* graph;
        double chi1, chi2, eta, alpha_tilde;
    };
    const Row rows[] = {
        {8, "ring", 3.4142, 0.8750, 0.28928, 0.9877},  {8, "exponential", 1.5000, 0.9637, 0.41586, 0.6238},
        {16, "ring", 13.137, 0.9375, 0.14247, 1.8717}, {16, "exponential", 2.0000, 1.0097, 0.35186, 0.7037},
        {32, "ring", 52.043, 0.9688, 0.07042, 3.6648}, {32, "exponential", 2.5000, 1.0229, 0.31266, 0.7817},
        {64, "ring", 207.67, 0.9844, 0.03497, 7.2624}, {64, "exponential", 3.0000, 1.0241, 0.28526, 0.8558},
    };
    for (const auto& row : rows) {
        INFO(row.n << " " << row.graph);
        const auto s = gossip_spectrum(make_graph(row.graph, row.n), 1.0);
        const auto c = acid_constants(s);
        CHECK(s.chi1 == Approx(row.chi1).epsilon(1e-4));
        CHECK(s.chi2 == Approx(row.chi2).epsilon(1e-3));
        CHECK(c.eta == Approx(row.eta).epsilon(1e-3));
        CHECK(c.alpha_tilde == Approx(row.alpha_tilde).epsilon(1e-3));
    }
    // The ring's closed forms at another rate: chi1 = 1 / (rate (1 - cos 2 pi / n)), chi2 = (n - 1) / (rate n);
    // eta scales with the rate, alpha_tilde does not.
    const auto half = gossip_spectrum(make_graph("ring", 12), 0.5);
    CHECK(half.chi1 == Approx(1.0 / (0.5 * (1 - std::cos(2 * M_PI / 12)))).epsilon(1e-10));
    CHECK(half.chi2 == Approx(11.0 / (0.5 * 12)).epsilon(1e-10));
    const auto one = acid_constants(gossip_spectrum(make_graph("ring", 12), 1.0));
    CHECK(acid_constants(half).eta == Approx(one.eta * 0.5).epsilon(1e-10));
    CHECK(acid_constants(half).alpha_tilde == Approx(one.alpha_tilde).epsilon(1e-10));
}

TEST_CASE("the ring's spectrum in closed form equals the dense eigendecomposition of the same graph", "[graph]") {
    for (int n : {3, 5, 12, 40}) {
        GraphOptions o;
        for (int r = 0; r < n; ++r) o.edges.push_back({r, (r + 1) % n});
        const auto dense = gossip_spectrum(make_graph("custom", n, o), 0.7);  // no closed form for "custom"
        const auto ring = gossip_spectrum(make_graph("ring", n), 0.7);
        INFO(n);
        CHECK(is_ring(make_graph("ring", n)));
        CHECK_FALSE(is_ring(make_graph("custom", n, o)));
        CHECK(ring.chi1 == Approx(dense.chi1).epsilon(1e-9));
        CHECK(ring.chi2 == Approx(dense.chi2).epsilon(1e-9));
    }
}

TEST_CASE("DADAO's edge-sampling spectrum: the ring's closed forms", "[graph]") {
    for (int n : {8, 16, 33}) {
        // L = (graph Laplacian) / |E|, |E| = n: chi1 = n / (2 (1 - cos 2 pi / n)). chi2 is half the
        // largest effective resistance of an edge: a ring edge is 1 ohm beside n - 1 in series,
        // (n - 1) / n ohm under the graph Laplacian, n times that under L: (n - 1) / 2.
        const auto s = edge_sampling_spectrum(make_graph("ring", n));
        CHECK(s.chi1 == Approx(n / (2 * (1 - std::cos(2 * M_PI / n)))).epsilon(1e-9));
        CHECK(s.chi2 == Approx((n - 1.0) / 2).epsilon(1e-9));
    }
}

TEST_CASE("DADAO's chi2 from its definition, on a graph without closed forms", "[graph]") {
    // A triangle 1-2-3 with node 0 hanging from node 1: edges 0-1, 1-2, 1-3, 2-3.
    // Effective resistances under the graph Laplacian, by series/parallel: 0-1 is a bridge (1 ohm);
    // 1-2 is 1 ohm beside 1-3-2 (2 ohm): 2/3; 2-3 likewise 2/3; 1-3 likewise 2/3. Under L = graph
    // Laplacian / |E| (|E| = 4) resistances scale by 4; chi2 = max / 2 = 4 x 1 / 2 = 2.
    GraphOptions o;
    o.edges = {{0, 1}, {1, 2}, {1, 3}, {2, 3}};
    const auto s = edge_sampling_spectrum(make_graph("custom", 4, o));
    CHECK(s.chi2 == Approx(2.0).epsilon(1e-9));
}

TEST_CASE("topologies have the degrees and edges they promise, and bad graphs are refused", "[graph]") {
    const auto ring = make_graph("ring", 6);
    CHECK(ring.edges().size() == 6);
    const auto exp16 = make_graph("exponential", 16);
    for (const auto& nb : exp16.neighbours) CHECK(nb.size() == 8);  // +-1, +-2, +-4, and +8 twice
    CHECK(exp16.edges().size() == 16 * 7 / 2);
    const auto torus = make_graph("torus", 12);  // 3 x 4
    for (const auto& nb : torus.neighbours) CHECK(nb.size() == 4);
    CHECK(make_graph("complete", 5).edges().size() == 10);
    GraphOptions o;
    o.degree = 3;
    o.seed = 7;
    const auto rr = make_graph("random_regular", 10, o);
    for (const auto& nb : rr.neighbours) CHECK(nb.size() == 3);
    CHECK(rr.edges().size() == 15);
    CHECK(make_graph("random_regular", 10, o).edges() == rr.edges());  // seeded
    o.seed = 8;
    CHECK(make_graph("random_regular", 10, o).edges() != rr.edges());
    o.edges = {{0, 1}, {1, 2}};
    CHECK(make_graph("custom", 3, o).edges().size() == 2);

    auto error_of = [](const std::string& topology, int n, GraphOptions opts = {}) {
        try {
            make_graph(topology, n, opts);
        } catch (const Error& e) { return std::string(e.what()) + " / " + e.hint(); }
        return std::string();
    };
    CHECK_THAT(error_of("exponential", 12), Contains("power of 2"));
    CHECK_THAT(error_of("star", 4), Contains("unknown") && Contains("random_regular"));
    GraphOptions cut;
    cut.edges = {{0, 1}, {2, 3}};
    CHECK_THAT(error_of("custom", 4, cut), Contains("does not connect node 2"));
    GraphOptions odd;
    odd.degree = 3;
    CHECK_THAT(error_of("random_regular", 5, odd), Contains("impossible"));
}
