// The simulated cluster: the network model against closed forms, the scheduler's determinism and
// causality, its diagnostics, and whole runs (bit-identical twice, equal to Gloo, stragglers).
#include <catch2/catch.hpp>
#include <cmath>
#include <plexus/plexus.hpp>
#include <plexus/kit/poisson.hpp>
#include <torch/torch.h>

#include "tools/bench_network.hpp"
#include "helpers.hpp"
#include "store/results.hpp"
#include "sim/cluster.hpp"
#include "device/block_cache.hpp"

using namespace plexus;
using namespace plexus::test;
using namespace plexus::host::sim;
using Catch::Matchers::Contains;

namespace {

Settings uniform(int ranks, double latency, double bandwidth, Algorithm algo = Algorithm::Ring) {
    Settings s;
    s.ranks = ranks;
    s.network.ranks = ranks;
    s.network.link = {latency, bandwidth};
    s.algorithm = algo;
    s.device = device_profile("custom", 1.0, 0, 1, 1e12);  // 1 TFLOP/s: 1e9 FLOPs = 1 ms
    s.slowdown.assign(static_cast<size_t>(ranks), 1.0);
    s.fail_at.assign(static_cast<size_t>(ranks), std::numeric_limits<double>::infinity());
    return s;
}

std::vector<int> iota(int n) {
    std::vector<int> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = i;
    return v;
}

// Runs `body` on every rank; returns the message of the first rank that threw ("" if none).
std::string run_cluster(Cluster& cluster, const std::function<void(int, Transport&, host::RankClock&)>& body) {
    std::vector<std::string> errors(static_cast<size_t>(cluster.size()));
    cluster.run([&](int r) {
        auto t = cluster.transport(r);
        auto c = cluster.clock(r);
        try {
            body(r, *t, *c);
        } catch (const std::exception& e) {
            errors[static_cast<size_t>(r)] = e.what();
            throw;
        }
    });
    for (const auto& e : errors)
        if (!e.empty()) return e;
    return "";
}

const std::string kSimDdp = std::string(kTinyExperiment) + R"(
[strategy]
name = "ddp"
bucket_mb = 0.02

[launch]
mode = "sim"
ranks = 4
)";

struct RunRows {
    std::vector<std::tuple<int64_t, double, double>> loss;  // step, value, sim_time
    std::string state_hash;
    double sim_time = 0;
    std::string status, error;
};

RunRows last_run(const std::string& db) {
    host::ResultsStore store(db);
    auto run = store.list_runs(1).at(0);
    RunRows out;
    out.status = run.status;
    out.error = run.error;
    for (const auto& [rank, key, value, text] : store.summaries(run.id)) {
        if (rank == 0 && key == "state_hash") out.state_hash = text;
        if (rank == 0 && key == "sim_time") out.sim_time = *value;
    }
    return out;
}

}  // namespace

TEST_CASE("ring all-reduce time is the alpha-beta closed form 2(n-1)(alpha + S/(nB))", "[sim]") {
    const double alpha = 7e-6, B = 12.5e9;
    for (int n : {2, 3, 8, 64}) {
        for (double S : {4096.0, 1048576.0, 67108864.0}) {
            Network net(uniform(n, alpha, B).network);
            const double expected = 2.0 * (n - 1) * (alpha + S / (n * B));
            INFO("n=" << n << " S=" << S);
            CHECK(net.all_reduce(iota(n), S, Algorithm::Ring, 0).seconds == Approx(expected).epsilon(1e-12));
            CHECK(net.all_reduce(iota(n), S, Algorithm::Ring, 0).bytes_per_rank == Approx(2.0 * (n - 1) / n * S));
            const double levels = std::ceil(std::log2(n));
            CHECK(net.all_reduce(iota(n), S, Algorithm::Tree, 0).seconds ==
                  Approx(2 * levels * (alpha + S / B)).epsilon(1e-12));
        }
    }
}

TEST_CASE("the same all-reduce through the scheduler: clocks advance by the formula, sums are right", "[sim]") {
    const double alpha = 5e-6, B = 10e9;
    for (int n : {2, 5, 16}) {
        Cluster cluster(uniform(n, alpha, B));
        const int64_t numel = 1 << 16;
        std::vector<double> first(static_cast<size_t>(n));
        auto error = run_cluster(cluster, [&](int r, Transport& t, host::RankClock&) {
            auto x = torch::full({numel}, static_cast<float>(r + 1));
            t.all_reduce(x, ReduceOp::Sum)->wait();
            first[static_cast<size_t>(r)] = x[0].item<double>();
        });
        REQUIRE(error.empty());
        const double S = numel * 4.0;
        for (int r = 0; r < n; ++r) {
            CHECK(first[static_cast<size_t>(r)] == n * (n + 1) / 2);
            CHECK(cluster.clock_of(r) == Approx(2.0 * (n - 1) * (alpha + S / (n * B))).epsilon(1e-12));
        }
    }
}

TEST_CASE("two-level topology: hierarchical all-reduce matches its formula, a ring pays the slow links", "[sim]") {
    const int G = 4, nodes = 4, n = G * nodes;
    Settings s = uniform(n, 20e-6, 5e9);
    s.network.topology = "two_level";
    s.network.gpus_per_node = G;
    s.network.intra = {1e-6, 200e9};
    Network net(s.network);
    const double S = 8e6;
    const auto& in = s.network.intra;
    const auto& out = s.network.link;
    const double hier = 2.0 * (G - 1) * (in.latency + S / (G * in.bandwidth)) +
                        2.0 * (nodes - 1) * (out.latency + S / (G * nodes * out.bandwidth));
    CHECK(net.all_reduce(iota(n), S, Algorithm::Hierarchical, 0).seconds == Approx(hier).epsilon(1e-12));
    CHECK(net.all_reduce(iota(n), S, Algorithm::Ring, 0).seconds ==
          Approx(2.0 * (n - 1) * (out.latency + S / (n * out.bandwidth))).epsilon(1e-12));
    // auto picks the fastest: hierarchical here.
    auto best = net.all_reduce(iota(n), S, Algorithm::Auto, 0);
    CHECK(best.algorithm == Algorithm::Hierarchical);
    CHECK(best.seconds == Approx(hier).epsilon(1e-12));
    // It routes the bytes differently, not fewer of them: a rank sends 2(n-1)/n of the buffer
    // whatever the algorithm (the cluster counts them when a rank issues the all-reduce).
    CHECK(best.bytes_per_rank == Approx(2.0 * (n - 1) / n * S));
    // Hierarchical needs equal nodes spanning more than one.
    CHECK_THROWS_WITH(net.all_reduce({0, 1, 2}, S, Algorithm::Hierarchical, 0), Contains("two_level"));
}

TEST_CASE("routes follow the topology, a failed link reroutes, no route is an error", "[sim]") {
    Settings s = uniform(8, 1e-6, 1e9);
    s.network.topology = "ring";
    s.network.link_failures = {{0, 1, 5.0}};
    Network ring(s.network);
    CHECK(ring.route(0, 3, 0).latency == Approx(3e-6));
    CHECK(ring.route(0, 6, 0).latency == Approx(2e-6));  // the short way round
    CHECK(ring.route(0, 1, 0).latency == Approx(1e-6));
    CHECK(ring.route(0, 1, 6.0).latency == Approx(7e-6));  // after the failure: the long way

    Settings t = uniform(12, 1e-6, 1e9);
    t.network.topology = "torus2d";
    Network torus(t.network);  // 3 x 4
    CHECK(torus.spec().torus_rows == 3);
    CHECK(torus.route(0, 5, 0).latency == Approx(2e-6));  // one right, one down
    CHECK(torus.route(0, 3, 0).latency == Approx(1e-6));  // wraps around the row

    Settings c = uniform(4, 1e-6, 1e9);
    c.network.topology = "custom";
    c.network.edges = {{0, 1}, {1, 2}};
    c.network.links = {{std::make_tuple(0, 1, Link{3e-6, 2e9})}};
    Network custom(c.network);
    CHECK(custom.route(0, 2, 0).latency == Approx(4e-6));
    CHECK(custom.route(0, 2, 0).bandwidth == Approx(1e9));  // the narrowest link on the way
    CHECK_THROWS_WITH(custom.route(0, 3, 0), Contains("no route from rank 0 to rank 3"));
}

TEST_CASE("point-to-point: arrival at alpha + S/B, a sender's transfers queue, is_completed respects time", "[sim]") {
    const double alpha = 10e-6, B = 1e9;
    Cluster cluster(uniform(2, alpha, B));
    const int64_t numel = 250000;  // 1 MB: 1 ms on the wire
    std::vector<double> when(4);
    std::vector<int> polls;
    auto error = run_cluster(cluster, [&](int r, Transport& t, host::RankClock& clock) {
        if (r == 1) {
            auto a = torch::full({numel}, 1.0f), b = torch::full({numel}, 2.0f);
            clock.charge_compute(2e9);  // 2 ms of compute first
            t.send(a, 0, 0);
            t.send(b, 0, 1)->wait();  // queued behind the first
            when[3] = clock.now();
        } else {
            auto a = torch::zeros({numel}), b = torch::zeros({numel});
            auto wa = t.recv(a, 1, 0);
            polls.push_back(wa->is_completed() ? 1 : 0);  // at t = 0: the message is not even sent
            clock.charge_compute(10e9);                   // 10 ms later it has long arrived
            polls.push_back(wa->is_completed() ? 1 : 0);
            wa->wait();
            auto wb = t.recv(b, 1, 1);
            wb->wait();
            when[0] = clock.now();
            CHECK(a[0].item<float>() == 1.0f);
            CHECK(b[7].item<float>() == 2.0f);
        }
    });
    REQUIRE(error.empty());
    CHECK(polls == std::vector<int>{0, 1});
    CHECK(when[3] == Approx(2e-3 + 2 * 1e-3).epsilon(1e-12));  // two injections back to back
    CHECK(when[0] == Approx(10e-3).epsilon(1e-12));            // both arrived before 10 ms
    // Without the compute on rank 0, the second message lands at 2 ms + 2 S/B + alpha.
    Cluster again(uniform(2, alpha, B));
    double landed = 0;
    run_cluster(again, [&](int r, Transport& t, host::RankClock& clock) {
        auto x = torch::zeros({numel});
        if (r == 1) {
            clock.charge_compute(2e9);
            t.send(x, 0, 0);
            t.send(x, 0, 1);
        } else {
            t.recv(x, 1, 0)->wait();
            t.recv(x, 1, 1)->wait();
            landed = clock.now();
        }
    });
    CHECK(landed == Approx(2e-3 + alpha + 2e-3).epsilon(1e-12));
}

TEST_CASE("a background task runs on its own clock: its collectives chain at their completion times, hidden", "[sim]") {
    const double alpha = 10e-6, B = 1e9;
    Cluster cluster(uniform(2, alpha, B));
    const int64_t numel = 250000;                            // 1 MB
    const double c = 2.0 * (alpha + numel * 4.0 / (2 * B));  // one all-reduce over 2 ranks
    std::vector<double> end(2), sums(2), exposed(2), total(2);
    int polls = 0;
    auto error = run_cluster(cluster, [&](int r, Transport& t, host::RankClock& clock) {
        auto x = torch::full({numel}, static_cast<float>(r + 1));
        auto task = clock.start_background([&] {
            t.all_reduce(x, ReduceOp::Sum)->wait();
            clock.charge_compute(1e9);  // 1 ms of work between the two, on the task's clock
            t.all_reduce(x, ReduceOp::Sum)->wait();
        });
        if (r == 0) {
            do {
                clock.charge_compute(5e8);  // 0.5 ms micro-batches until the task is done
                ++polls;
            } while (!task->done());
        }
        task->join();  // rank 1 joins at once and waits for the task's end
        end[static_cast<size_t>(r)] = clock.now();
        sums[static_cast<size_t>(r)] = x[0].item<double>();
        exposed[static_cast<size_t>(r)] = t.stats().seconds_exposed;
        total[static_cast<size_t>(r)] = t.stats().seconds_total;
    });
    REQUIRE(error.empty());
    const double task_end = 2 * c + 1e-3;  // 3.04 ms
    CHECK(sums[0] == 6.0);                 // (1 + 2) summed twice
    CHECK(polls == 7);                     // done first seen at 3.5 ms
    CHECK(end[0] == Approx(3.5e-3).epsilon(1e-12));
    CHECK(end[1] == Approx(task_end).epsilon(1e-12));
    CHECK(exposed[0] == 0.0);  // the task's waits are not the rank's
    CHECK(total[0] == Approx(2 * c).epsilon(1e-12));
}

TEST_CASE("mismatched collectives and a missing peer are reported, not hung", "[sim]") {
    Cluster mismatch(uniform(2, 1e-6, 1e9));
    auto error = run_cluster(mismatch, [&](int r, Transport& t, host::RankClock&) {
        auto x = torch::zeros({r == 0 ? 10 : 20});
        t.all_reduce(x, ReduceOp::Sum)->wait();
    });
    CHECK_THAT(error, Contains("all_reduce of 20 elements") && Contains("10 elements"));

    Cluster deadlock(uniform(3, 1e-6, 1e9));
    error = run_cluster(deadlock, [&](int r, Transport& t, host::RankClock&) {
        auto x = torch::zeros({4});
        if (r != 2) t.all_reduce(x, ReduceOp::Sum)->wait();  // rank 2 never joins
    });
    CHECK_THAT(error, Contains("deadlocked") && Contains("rank 0 waits for all_reduce #0 of group world"));

    // An output that cannot hold every rank's part: all_gather on any rank, gather on the root.
    for (const bool rooted : {false, true}) {
        Cluster sizes(uniform(2, 1e-6, 1e9));
        error = run_cluster(sizes, [&](int, Transport& t, host::RankClock&) {
            auto part = torch::ones({3});
            auto out = torch::zeros({5});
            if (rooted)
                t.gather(out, part, 0)->wait();
            else
                t.all_gather(out, part)->wait();
        });
        CHECK_THAT(error, Contains("gather: the output has 5 elements, not 2 x the input's 3"));
        const bool names_all_gather = error.find("all_gather") != std::string::npos;
        CHECK(names_all_gather == !rooted);
    }
}

TEST_CASE("a rank scheduled to fail stops at that simulated time and its peers learn why", "[sim]") {
    Settings s = uniform(2, 1e-6, 1e9);
    s.fail_at[1] = 0.0035;
    Cluster cluster(s);
    std::vector<int> steps(2, 0);
    auto error = run_cluster(cluster, [&](int r, Transport& t, host::RankClock& clock) {
        for (int step = 0; step < 10; ++step) {
            clock.charge_compute(1e9);  // 1 ms per step
            auto x = torch::ones({8});
            t.all_reduce(x, ReduceOp::Sum)->wait();
            steps[static_cast<size_t>(r)] = step + 1;
        }
    });
    CHECK_THAT(error, Contains("rank 1 failed at simulated time 0.0035"));
    CHECK(steps[0] == 3);
    CHECK(steps[1] == 3);
    CHECK(cluster.clock_of(1) == Approx(0.0035));
}

TEST_CASE("Poisson processes: both ends of an edge see the same events, at the right rate", "[sim]") {
    EdgeEvents a(42, 3, {{2, 1.0}, {4, 0.5}});
    EdgeEvents b(42, 4, {{3, 0.5}, {5, 2.0}});
    std::vector<double> a_with_4, b_with_3;
    int a_count = 0;
    while (a.peek().time < 2000) {
        auto e = a.next();
        ++a_count;
        if (e.peer == 4) a_with_4.push_back(e.time);
    }
    while (b.peek().time < 2000) {
        auto e = b.next();
        if (e.peer == 3) b_with_3.push_back(e.time);
    }
    CHECK(a_with_4 == b_with_3);
    // 1.5 events per unit over 2000 units: 3000 expected, standard deviation ~55.
    CHECK(a_count > 3000 - 5 * 55);
    CHECK(a_count < 3000 + 5 * 55);
    PoissonProcess p(7, 4.0), q(7, 4.0);
    double last = 0;
    for (int i = 0; i < 100; ++i) {
        const double t = p.next();
        CHECK(t > last);
        CHECK(t == q.next());
        last = t;
    }
}

TEST_CASE("a sim run is bit-identical twice: losses, simulated times, final state", "[sim][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("sim.toml", kSimDdp);
    RunRows runs[2];
    for (auto& rows : runs) {
        auto res = run_plexus("run " + file + " --db " + db + " --set train.steps=20");
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        rows = last_run(db);
        host::ResultsStore store(db);
        for (const auto& m : store.metric_rows(store.list_runs(1).at(0).id, "loss"))
            rows.loss.emplace_back(m.step, m.value, m.sim_time.value_or(-1));
    }
    REQUIRE(runs[0].loss.size() == 20);
    const bool same_rows = runs[0].loss == runs[1].loss;  // step, value and simulated time, exactly
    CHECK(same_rows);
    CHECK(runs[0].state_hash == runs[1].state_hash);
    CHECK(runs[0].sim_time > 0);
    CHECK(runs[0].sim_time == runs[1].sim_time);
    // Every row carries its simulated time (compared above with the values), increasing.
    for (size_t i = 1; i < runs[0].loss.size(); ++i)
        CHECK(std::get<2>(runs[0].loss[i]) > std::get<2>(runs[0].loss[i - 1]));
    CHECK(std::get<2>(runs[0].loss[0]) > 0);
}

TEST_CASE("DDP on the simulated cluster equals DDP on Gloo processes", "[sim][run][distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("sim.toml", kSimDdp);
    // One compute thread in both: OpenBLAS rounds differently with another thread count.
    const std::string common = " --db " + db + " --set train.steps=15 --set launch.ranks=2 --set train.threads=1";
    auto sim = run_plexus("run " + file + common);
    INFO(sim.output);
    REQUIRE(sim.exit_code == 0);
    auto a = last_run(db);
    auto gloo = run_plexus("run " + file + common + " --set launch.mode=local");
    INFO(gloo.output);
    REQUIRE(gloo.exit_code == 0);
    auto b = last_run(db);
    // Two ranks: each sum is a + b in both back ends, the mean the same division, so the
    // parameters and Adam moments agree bit for bit.
    CHECK(!a.state_hash.empty());
    CHECK(a.state_hash == b.state_hash);
}

TEST_CASE("a straggler paces synchronous DDP: one slow rank costs as much as all slow", "[sim][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("sim.toml", kSimDdp);
    auto time_of = [&](const std::string& extra) {
        auto res = run_plexus("run " + file + " --db " + db +
                              " --set train.steps=10 --set sim.device=custom "
                              "--set sim.device_flops=1e10 --set sim.efficiency=1.0 " +
                              extra);
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        // The job ends with its last rank (a fast rank may finish its last optimizer step first).
        host::ResultsStore store(db);
        double end = 0;
        for (const auto& [rank, key, value, text] : store.summaries(store.list_runs(1).at(0).id))
            if (key == "sim_time") end = std::max(end, *value);
        return end;
    };
    // Per rank: the time it spent blocked in a collective, waiting for the others.
    auto exposed = [&] {
        host::ResultsStore store(db);
        const NewestRun run(store);
        std::vector<double> out;
        for (int r = 0; r < 4; ++r) out.push_back(run.per_rank.at(r).at("comm_exposed_time"));
        return out;
    };
    const double base = time_of("");
    const double one = time_of("--set sim.slow_ranks=[2] --set sim.slow_factor=3.0");
    const auto exposed_one = exposed();
    const double all = time_of("--set sim.slow_ranks=[0,1,2,3] --set sim.slow_factor=3.0");
    const auto exposed_all = exposed();
    CHECK(one == Approx(all).epsilon(1e-9));
    CHECK(one > 2.0 * base);  // compute dominates this run: tripling it more than doubles the step
    // Only rank 2 was slowed: the others waited for it, by most of the extra time, and it did not
    // wait for them. (Slowing every rank would make the waits alike, as in the all-slow run.)
    for (int r : {0, 1, 3}) CHECK(exposed_one[r] > exposed_one[2] + 0.5 * (one - base));
    for (int r = 0; r < 4; ++r) CHECK(exposed_all[r] == Approx(exposed_all[0]).epsilon(0.05).margin(1e-9));
}

TEST_CASE("sim settings errors name the key", "[sim][run]") {
    TempDir dir;
    const auto file = dir.file("sim.toml", kSimDdp);
    auto bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set sim.topology=mesh");
    CHECK(bad.exit_code == 1);
    CHECK_THAT(bad.output, Contains("sim.topology = \"mesh\" is unknown"));
    bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set sim.slow_ranks=[9]");
    CHECK_THAT(bad.output, Contains("sim.slow_ranks names rank 9, outside 0..3"));
    bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set sim.fail_ranks=[[1]]");
    CHECK_THAT(bad.output, Contains("sim.fail_ranks holds [1]"));
}

TEST_CASE("a scheduled rank failure fails the sim run, recorded with the rank", "[sim][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("sim.toml", kSimDdp);
    auto res = run_plexus("run " + file + " --db " + db + " --set train.steps=50 --set sim.fail_ranks=[[3,0.0005]]");
    CHECK(res.exit_code == 1);
    auto rows = last_run(db);
    CHECK(rows.status == "failed");
    CHECK_THAT(rows.error, Contains("rank 3 failed at simulated time 0.0005"));
}

TEST_CASE("bench network's fit recovers alpha and B from ring all-reduce times", "[sim]") {
    for (int n : {2, 4}) {
        const double alpha = 120e-6, B = 1.5e9;
        std::vector<double> sizes, times;
        for (double s = 4096; s <= 16e6; s *= 4) {
            sizes.push_back(s);
            times.push_back(2.0 * (n - 1) * (alpha + s / (n * B)));
        }
        auto fit = host::fit_ring_all_reduce(n, sizes, times);
        CHECK(fit.latency == Approx(alpha).epsilon(1e-9));
        CHECK(fit.bandwidth == Approx(B).epsilon(1e-9));
        // 10% noise on one point moves the fit, but not far.
        times[2] *= 1.1;
        fit = host::fit_ring_all_reduce(n, sizes, times);
        CHECK(fit.latency == Approx(alpha).epsilon(0.15));
        CHECK(fit.bandwidth == Approx(B).epsilon(0.15));
    }
}

TEST_CASE("every communication scheme runs unchanged on the simulated cluster", "[sim][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    // Two nodes of two ranks: the hierarchical scheme takes its node size from the topology.
    const auto file = dir.file("sim.toml", kSimDdp + R"(
[sim]
topology = "two_level"
gpus_per_node = 2
)");
    struct Outcome {
        std::vector<std::pair<int64_t, double>> loss;
        double sim_time = NAN;
    };
    auto run = [&](const std::string& args) {
        auto res = run_plexus("run " + file + " --db " + db + " --set train.steps=12 " + args);
        INFO(args << "\n" << res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(db);
        const NewestRun newest(store);
        Outcome out{store.metric_series(newest.id, "loss"), newest["sim_time"]};
        REQUIRE(out.loss.size() == 12);
        CHECK(out.loss.back().second < out.loss.front().second);
        return out;
    };
    std::map<std::string, Outcome> by_scheme;
    for (const std::string scheme : {"allreduce", "quantize", "topk", "powersgd", "hierarchical"})
        by_scheme[scheme] = run("--set comm.name=" + scheme);
    // Hierarchical averaging is exact: plain all-reduce's curve, up to the order of float sums.
    const auto& plain = by_scheme["allreduce"].loss;
    const auto& hier = by_scheme["hierarchical"].loss;
    for (size_t i = 0; i < plain.size(); ++i) CHECK(std::fabs(hier[i].second - plain[i].second) < 1e-5);
    // Its node size came from the topology (2): the same timing as saying so, and faster than nodes
    // of 1 (measured 0.0089 against 0.0120 s). The network's own algorithm is held at ring here:
    // "auto" runs a 4-rank all-reduce over two nodes hierarchically itself, so that nodes of 1
    // would cost what nodes of 2 do (this check once passed on the last bits of a float sum).
    const std::string ring = "--set comm.name=hierarchical --set sim.algorithm=ring";
    const double from_topology = run(ring).sim_time;
    CHECK(run(ring + " --set comm.node_size=2").sim_time == from_topology);
    CHECK(run(ring + " --set comm.node_size=1").sim_time > 1.2 * from_topology);
}

TEST_CASE("meta numerics plans a 1.3B-parameter GPT on 8 simulated H100s in seconds, without its memory",
          "[sim][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("big.toml", kSimDdp + R"(
[sim]
numerics = "meta"
device = "h100"
latency_us = 2.0
bandwidth_gbs = 450.0
)");
    auto res =
        run_plexus("run " + file + " --db " + db +
                   " --set model.n_layer=24 --set model.d_model=2048 --set model.n_head=16"
                   " --set model.vocab_size=50304 --set train.seq_len=2048 --set train.batch_size=8"
                   " --set train.steps=3 --set launch.ranks=8 --set strategy.bucket_mb=100.0 --set train.eval_every=0");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(db);
    const auto id = store.list_runs(1).at(0).id;
    std::map<std::string, double> s;
    for (const auto& [rank, key, value, text] : store.summaries(id))
        if (rank == 0 && value) s[key] = *value;
    CHECK(s["params"] > 1.2e9);
    CHECK(s["params"] < 1.5e9);
    // Compute at the profile's 0.4 of peak, DDP's all-reduce hidden behind backward on NVLink:
    // MFU just under 40% (8 x 2048 tokens a step, 6N + attention FLOPs each).
    CHECK(s["mfu"] > 0.35);
    CHECK(s["mfu"] <= 0.4);
    CHECK(s["peak_memory"] < 1.5e9);  // 8 ranks of 1.3B float32 parameters would be 40 GB
    CHECK(std::isnan(store.metric_series(id, "loss").back().second));  // no values, by design
}

TEST_CASE("the simulator's block cache: aligned, reused by exact size last freed first, blocks never overlap",
          "[sim][memory]") {
    // Installed for this test only: the rest of the process gets its allocator back (simulated
    // runs in the same process install the cache again, idempotently).
    struct Restore {
        c10::Allocator* before = c10::GetAllocator(c10::kCPU);
        ~Restore() { c10::SetAllocator(c10::kCPU, before, 1); }
    } restore;
    host::use_cpu_block_cache();
    auto address = [](const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); };
    // Two blocks of one size freed: the next two requests of that size get them back, last first.
    auto a = torch::empty({1000}), b = torch::empty({1000});
    const auto at_a = address(a), at_b = address(b);
    CHECK(at_a % 64 == 0);
    CHECK(at_b % 64 == 0);
    a.reset();
    b.reset();
    auto other = torch::empty({999});  // another size: not handed a block of 1000 floats
    CHECK(address(other) != at_a);
    CHECK(address(other) != at_b);
    auto c = torch::empty({1000}), d = torch::empty({1000});
    CHECK(address(c) == at_b);
    CHECK(address(d) == at_a);
    // Many live blocks of mixed sizes, some above the 8 MiB that bypasses the cache, each filled
    // with its own value: none overwrote another.
    std::vector<torch::Tensor> live;
    for (int i = 0; i < 200; ++i) {
        const int64_t n = i % 50 == 7 ? (int64_t{3} << 20) : 1 + (i * 7919) % 5000;  // 12 MiB or small
        live.push_back(torch::full({n}, static_cast<float>(i)));
        if (i % 3 == 0) live[static_cast<size_t>(i / 2)] = torch::full({n}, static_cast<float>(i / 2));
    }
    for (size_t i = 0; i < live.size(); ++i) {
        INFO("tensor " << i);
        CHECK(address(live[i]) % 64 == 0);
        CHECK(live[i].min().item<float>() == static_cast<float>(i));
        CHECK(live[i].max().item<float>() == static_cast<float>(i));
    }
}
