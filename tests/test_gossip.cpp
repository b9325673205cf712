// Gossip and A2CiD2 (plugins/shared/gossip_base.hpp): consensus on a graph without gradients,
// against the spectral rates; the conservation laws of the updates; whole runs on the simulated
// cluster.
#include <catch2/catch.hpp>
#include <cmath>

#include "shared/gossip_base.hpp"

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// W workers with random x in one thread; every edge rings at λ (W_ij + W_ji) / 2 (the
// strategies' rates), both ends mix to the event time and average. Returns the consensus
// distance (1/W) Σ ‖x_i − x̄‖² at t = 0, 1, ..., horizon.
struct Consensus {
    std::vector<double> distance;
    double sum_x_drift = 0, sum_total_drift = 0;  // conservation, float64
};

// `eta_scale`, `alpha_scale`: multiply A2CiD2's constants (a test that a wrong constant shows).
Consensus run_consensus(const Graph& g, bool accelerated, double horizon, uint64_t seed = 5, double eta_scale = 1,
                        double alpha_scale = 1) {
    const int n = g.nodes();
    const double rate = 1.0;
    auto constants = acid_constants(gossip_spectrum(g, rate));
    constants.eta *= eta_scale;
    constants.alpha_tilde *= alpha_scale;
    torch::manual_seed(static_cast<int64_t>(seed));
    std::vector<AcidState> workers(static_cast<size_t>(n));
    for (auto& w : workers) {
        w.x = torch::randn({200}, torch::kFloat64);
        if (accelerated) {
            w.x_tilde = w.x.clone();
            w.eta = constants.eta;
            w.alpha_tilde = constants.alpha_tilde;
        }
    }
    // One Poisson process per edge, merged by time.
    std::vector<std::pair<std::pair<int, int>, PoissonProcess>> edges;
    for (const auto& [a, b] : g.edges()) {
        auto count = [&](int i, int j) {
            const auto& nb = g.neighbours[static_cast<size_t>(i)];
            return static_cast<double>(std::count(nb.begin(), nb.end(), j)) / static_cast<double>(nb.size());
        };
        edges.push_back({{a, b},
                         PoissonProcess(mix_seed(seed, static_cast<uint64_t>(a * 1000 + b)),
                                        rate * (count(a, b) + count(b, a)) / 2)});
    }
    auto sums = [&] {
        auto sx = torch::zeros({200}, torch::kFloat64), st = torch::zeros({200}, torch::kFloat64);
        for (auto& w : workers) {
            sx += w.x;
            st += w.x + (accelerated ? w.x_tilde : w.x);
        }
        return std::make_pair(sx, st);
    };
    const auto [sx0, st0] = sums();
    Consensus out;
    auto measure = [&](double t) {
        for (auto& w : workers) w.mix(t);  // everyone to the same time
        auto mean = torch::zeros({200}, torch::kFloat64);
        for (auto& w : workers) mean += w.x;
        mean /= n;
        double d = 0;
        for (auto& w : workers) d += (w.x - mean).pow(2).sum().item<double>();
        out.distance.push_back(d / n);
    };
    measure(0);
    double next_measure = 1;
    while (true) {
        size_t best = 0;
        for (size_t e = 1; e < edges.size(); ++e)
            if (edges[e].second.peek() < edges[best].second.peek()) best = e;
        const double t = edges[best].second.peek();
        while (next_measure <= std::min(t, horizon)) {
            measure(next_measure);
            next_measure += 1;
        }
        if (t > horizon) break;
        edges[best].second.next();
        auto& [a, b] = edges[best].first;
        auto& wa = workers[static_cast<size_t>(a)];
        auto& wb = workers[static_cast<size_t>(b)];
        wa.mix(t);
        wb.mix(t);
        auto xa = wa.x.clone(), xb = wb.x.clone();
        wa.average(xb);
        wb.average(xa);
    }
    const auto [sx1, st1] = sums();
    out.sum_x_drift = (sx1 - sx0).abs().max().item<double>();
    out.sum_total_drift = (st1 - st0).abs().max().item<double>();
    return out;
}

// The decay rate of the distance over the second half of the run (a fit of its logarithm).
double decay_rate(const std::vector<double>& d) {
    const size_t a = d.size() / 2, b = d.size() - 1;
    return (std::log(d[a]) - std::log(d[b])) / static_cast<double>(b - a);
}

}  // namespace

TEST_CASE("pure gossip: the consensus distance decays at the rate the spectral gap predicts", "[gossip]") {
    for (const char* topology : {"ring", "exponential"}) {
        const auto g = make_graph(topology, 16);
        const double chi1 = gossip_spectrum(g, 1.0).chi1;
        const auto plain = run_consensus(g, false, std::max(40.0, 12 * chi1));
        // E[distance] = tr E[(x - x̄)(x - x̄)^T]; the mean dynamics contract each side by L / 2,
        // so the slowest mode decays like exp(-t / chi1) (stated tolerance: 25%; measured 1.5% on
        // the ring, 3.3% on the exponential graph).
        const double rate = decay_rate(plain.distance);
        INFO(topology << ": measured " << rate << ", 1 / chi1 = " << 1 / chi1);
        CHECK(rate > 0.8 / chi1);
        CHECK(rate < 1.25 / chi1);
        CHECK(plain.sum_x_drift < 1e-9);  // averaging conserves the sum of the workers' x
    }
}

TEST_CASE("A2CiD2 mixes faster than gossip on a 32-ring, and conserves sum(x) and sum(x + x~)", "[gossip]") {
    const auto g = make_graph("ring", 32);
    const double horizon = 200;  // chi1 = 52, sqrt(chi1 chi2) = 7.1
    const auto plain = run_consensus(g, false, horizon);
    const auto acid = run_consensus(g, true, horizon);
    INFO("distance at t = 200: gossip " << plain.distance.back() << ", a2cid2 " << acid.distance.back() << "; rates "
                                        << decay_rate(plain.distance) << ", " << decay_rate(acid.distance));
    CHECK(acid.distance.back() < plain.distance.back() / 5);
    CHECK(decay_rate(acid.distance) > 3 * decay_rate(plain.distance));
    CHECK(acid.sum_total_drift < 1e-9);  // jumps conserve sum x and sum x~; mixing conserves x + x~
}

namespace {

// A2CiD2's consensus rate on a ring of n, in units of the predicted 1 / sqrt(chi1 chi2): the
// decay rate of the expected distance (the mean over 8 seeds) over 12 predicted time constants.
double acid_rate_in_units(int n, double eta_scale, double alpha_scale) {
    const auto g = make_graph("ring", n);
    const auto s = gossip_spectrum(g, 1.0);
    const double unit = std::sqrt(s.chi1 * s.chi2);
    std::vector<double> mean;
    for (uint64_t seed = 5; seed < 13; ++seed) {
        const auto acid = run_consensus(g, true, 12 * unit, seed, eta_scale, alpha_scale);
        if (mean.empty()) mean.assign(acid.distance.size(), 0.0);
        for (size_t i = 0; i < mean.size(); ++i) mean[i] += acid.distance[i] / 8;
    }
    return decay_rate(mean) * unit;
}

}  // namespace

TEST_CASE("A2CiD2's consensus rate scales as 1 / sqrt(chi1 chi2) on rings of 16 32 and 64 and wrong constants break it",
          "[gossip]") {
    // With the reference constants the rate is 0.61, 0.70, 0.78 in units of 1 / sqrt(chi1 chi2)
    // (gossip's 1 / chi1 would be 0.27, 0.14, 0.07: it scales as n^-2, A2CiD2 as n^-1.5).
    auto in_band = [](double c) { return c > 0.5 && c < 1.0; };
    std::vector<double> right;
    for (int n : {16, 32, 64}) right.push_back(acid_rate_in_units(n, 1, 1));
    INFO("rings 16, 32, 64: " << right[0] << ", " << right[1] << ", " << right[2]);
    for (double c : right) CHECK(in_band(c));
    CHECK(right[2] / right[0] > 0.75);  // gossip's scaling would give 0.26
    CHECK(right[2] / right[0] < 1.6);
    // A factor 2 in eta (up) or alpha~ (either way) leaves the band on some ring (measured: eta x2
    // 0.56, 0.25, diverges; alpha~ x2 0.19, diverges; alpha~ x0.5 0.39, 0.35, 0.33). Eta x0.5 does
    // not change the rate at these sizes (0.65, 0.69, 0.70): the constants test in test_graph.cpp
    // pins eta's value.
    for (auto [eta, alpha] : {std::pair{2.0, 1.0}, std::pair{1.0, 2.0}, std::pair{1.0, 0.5}}) {
        bool all_in = true;
        for (int n : {16, 32, 64}) all_in = all_in && in_band(acid_rate_in_units(n, eta, alpha));
        INFO("eta x" << eta << ", alpha~ x" << alpha);
        CHECK_FALSE(all_in);
    }
}

namespace {

const std::string kGossip = std::string(kTinyExperiment) + R"(
[strategy]
name = "a2cid2"

[launch]
mode = "sim"
ranks = 8
)";

struct GossipRun {
    std::string state_hash;
    double first_eval = NAN, last_eval = NAN, chi1 = NAN, consensus = NAN;
};

GossipRun run_gossip(const TempDir& dir, const std::string& args) {
    const auto db = dir / "g.db";
    const NewestRun run =
        run_recorded(dir.file("g.toml", kGossip), db,
                     "--set train.steps=60 --set train.threads=1 --set optimizer.name=sgd --set optimizer.lr=0.3"
                     " --set optimizer.momentum=0.9 " +
                         args);
    host::ResultsStore store(db);
    const auto id = run.id;
    GossipRun r;
    r.state_hash = run.text.at("state_hash");
    const auto eval = store.metric_series(id, "eval_loss");
    r.first_eval = eval.front().second;
    r.last_eval = eval.back().second;
    const auto chi1 = store.metric_series(id, "graph/chi1");
    if (!chi1.empty()) r.chi1 = chi1.front().second;
    const auto consensus = store.metric_series(id, "consensus_distance");
    if (!consensus.empty()) r.consensus = consensus.back().second;
    return r;
}

}  // namespace

TEST_CASE("A2CiD2 with the momentum off is gossip, bit for bit, and both train 8 simulated workers", "[gossip][sim]") {
    TempDir dir;
    const auto gossip = run_gossip(dir, "--set strategy.name=gossip");
    const auto off = run_gossip(dir, "--set strategy.momentum=false");
    const auto acid = run_gossip(dir, "");
    CHECK(!gossip.state_hash.empty());
    CHECK(off.state_hash == gossip.state_hash);   // the same events, the same arithmetic
    CHECK(acid.state_hash != gossip.state_hash);  // the momentum changes the trajectory
    CHECK(acid.chi1 == Approx(3.4142).epsilon(1e-4));
    for (const auto* r : {&gossip, &acid}) {
        CHECK(r->last_eval < std::log(32.0) - 2.0);  // the averaged model learned the chain
        CHECK(r->consensus > 0);                     // workers differ, and it is measured
    }
}

TEST_CASE("gossip settings errors name the key", "[gossip]") {
    TempDir dir;
    const auto file = dir.file("g.toml", kGossip);
    auto bad =
        run_plexus("run " + file + " --db " + dir / "r.db" + " --set strategy.graph=exponential --set launch.ranks=6");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.output, Contains("strategy.graph") && Contains("power of 2"));
    bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set strategy.comm_rate=0");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.output, Contains("strategy.comm_rate") && Contains("> 0"));
}

TEST_CASE("gossip and A2CiD2 converge to the optimum of a least-squares problem split over 8 workers",
          "[gossip][sim]") {
    TempDir dir;
    const auto db = dir / "ls.db";
    // plugins/models/least_squares: rank i owns f_i; evaluation is F(x̄) - F(x*) for F the mean.
    const std::string common = " --db " + db +
                               " --set model.name=least_squares --set optimizer.name=sgd --set train.min_lr_ratio=0.0"
                               " --set train.grad_clip=0.0 --set train.eval_every=100 ";
    auto final_eval = [&](const std::string& args) {
        auto res = run_plexus("run " + dir.file("g.toml", kGossip) + common + args);
        INFO(args << "\n" << res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(db);
        const auto id = store.list_runs(1).at(0).id;
        return std::make_pair(store.metric_series(id, "eval_loss").back().second,
                              store.metric_series(id, "consensus_distance").back().second);
    };
    const double initial = final_eval("--set optimizer.lr=0.0 --set train.steps=1").first;  // F(0) - F*
    REQUIRE(initial > 1e-2);
    double reached[2];
    int i = 0;
    for (const char* strategy : {"gossip", "a2cid2"}) {
        const auto [suboptimality, consensus] = final_eval(std::string("--set strategy.name=") + strategy +
                                                           " --set optimizer.lr=0.1 --set train.steps=2000");
        INFO(strategy << ": F(x̄) - F* = " << suboptimality << " of " << initial << ", consensus " << consensus);
        CHECK(suboptimality < 1e-3 * initial);  // measured 2.5e-4 (gossip), 1.0e-4 (a2cid2) of it
        CHECK(suboptimality >= 0);
        CHECK(consensus < 1e-6);
        reached[i++] = suboptimality;
    }
    // The heterogeneous workers pull apart between averagings; A2CiD2's faster mixing leaves less
    // of that bias (2.5x less measured, at three learning rates).
    CHECK(reached[1] < reached[0] / 1.5);
}

TEST_CASE("DADAO converges linearly to the exact optimum of the split least-squares problem", "[gossip][dadao][sim]") {
    TempDir dir;
    const auto db = dir / "d.db";
    const std::string common =
        " --db " + db + " --set model.name=least_squares --set train.grad_clip=0.0 --set train.eval_every=100 ";
    auto evals = [&](const std::string& args) {
        auto res = run_plexus("run " + dir.file("g.toml", kGossip) + common + args);
        INFO(args << "\n" << res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(db);
        std::vector<double> out;
        for (const auto& [step, value] : store.metric_series(store.list_runs(1).at(0).id, "eval_loss"))
            out.push_back(value);
        return out;
    };
    const double initial =
        evals("--set strategy.name=gossip --set optimizer.name=sgd --set optimizer.lr=0.0 --set train.steps=1").at(0);
    // mu and L bound every worker's f_i (rows scaled 0.6..1.2, 40 x 10 Gaussian).
    const auto dadao =
        evals("--set strategy.name=dadao --set strategy.mu=0.1 --set strategy.smoothness=3.0 --set train.steps=500");
    REQUIRE(dadao.size() == 5);
    INFO("suboptimality every 100 units: " << dadao[0] << " " << dadao[1] << " " << dadao[2] << " " << dadao[3] << " "
                                           << dadao[4] << " (initial " << initial << ")");
    // Linear: at least 5x less every 100 units (measured 91x, 27x, 19x, 18x), to 2.5e-9 of the
    // start: exact despite every worker's optimum being different (gossip keeps a bias).
    for (size_t i = 1; i < dadao.size(); ++i) CHECK(dadao[i] < dadao[i - 1] / 5);
    CHECK(dadao.back() < 1e-7 * initial);
    CHECK(dadao.back() >= 0);
}

TEST_CASE("async_sgd: tau = 0 is synchronous SGD, staleness stays within the bound and grows without one",
          "[async][sim][distributed]") {
    TempDir dir;
    const auto db = dir / "a.db";
    struct Outcome {
        double sum, square,
            staleness;  // the parameters' sum and sum of squares (SGD: the sum is blind to some tensors)
    };
    auto run = [&](const std::string& args) {
        const NewestRun run = run_recorded(dir.file("g.toml", kGossip), db,
                                           "--set train.steps=30 --set optimizer.name=sgd --set optimizer.lr=0.3"
                                           " --set train.grad_clip=0.0 --set train.threads=1 " +
                                               args);
        host::ResultsStore store(db);
        double staleness = -1;  // stays -1 where nothing was recorded (DDP; a bug in async SGD)
        for (const auto& [step, value] : store.metric_series(run.id, "async/staleness_max"))
            staleness = std::max(staleness, value);
        return Outcome{run["param_sum"], run["param_square_sum"], staleness};
    };
    // A server and 3 workers against DDP on 3 ranks (the same shards): each gradient is applied
    // as it arrives, divided by 3, so a round of them is one SGD step on the mean.
    const auto ddp = run("--set strategy.name=ddp --set launch.ranks=3");
    const auto sync = run("--set strategy.name=async_sgd --set launch.ranks=4 --set strategy.staleness_bound=0");
    CHECK(sync.sum == Approx(ddp.sum).epsilon(1e-6));  // measured 2.5e-8 relative
    CHECK(sync.square == Approx(ddp.square).epsilon(1e-6));
    // Worker 3 three times slower. Under the bound tau, a worker that has sent c gradients gets
    // its parameters only once every other has sent at least c - tau, and the others can go on up
    // to c + tau + 1 before its next gradient arrives: at most (workers - 1) x (2 tau + 1) updates
    // in between. Without a bound the straggler's gradients age further.
    auto bound = [](int tau) { return (3 - 1) * (2 * tau + 1); };
    // The simulated device is pinned: how far the straggler falls behind depends on its compute
    // time against the fixed network's, and "measured" would make that this machine's.
    const std::string straggler =
        "--set strategy.name=async_sgd --set launch.ranks=4 --set sim.slow_ranks=[3] --set sim.slow_factor=3.0"
        " --set sim.device=custom --set sim.device_flops=4e11 --set sim.efficiency=0.5";
    for (int tau : {0, 1, 2}) {
        const auto r = run(straggler + " --set strategy.staleness_bound=" + std::to_string(tau));
        INFO("tau " << tau << ": max staleness " << r.staleness);
        CHECK(r.staleness <= bound(tau));
        CHECK(r.staleness >= 2);  // a round's later gradients count the earlier ones
    }
    const auto unbounded = run(straggler + " --set strategy.staleness_bound=-1");
    CHECK(unbounded.staleness > bound(1));  // measured 8

    // On 4 Gloo processes: the server waits for whichever worker's gradient comes first
    // (Transport::wait_any; Gloo's receives needed a watcher thread for that). tau = 0 is still
    // synchronous SGD, and the bound holds whatever the timing.
    const auto gloo = run(
        "--set strategy.name=async_sgd --set launch.mode=local --set launch.ranks=4 --set strategy.staleness_bound=0");
    CHECK(gloo.sum == Approx(ddp.sum).epsilon(1e-6));
    CHECK(gloo.square == Approx(ddp.square).epsilon(1e-6));
    CHECK(gloo.staleness == 2);  // synchronous rounds: the last of 3 gradients counts the 2 before it
    const auto bounded = run(
        "--set strategy.name=async_sgd --set launch.mode=local --set launch.ranks=4 --set strategy.staleness_bound=1");
    CHECK(bounded.staleness <= bound(1));  // 6 seen under load: the bound is reached
    CHECK(bounded.staleness >= 2);
}

TEST_CASE("the exchange thread overlaps the exchanges with the gradient (simulated, deterministic) and runs on Gloo",
          "[gossip][sim][distributed]") {
    TempDir dir;
    const auto db = dir / "t.db";
    auto run = [&](const std::string& args) {
        const NewestRun run =
            run_recorded(dir.file("g.toml", kGossip), db,
                         "--set train.steps=40 --set train.threads=1 --set optimizer.name=sgd --set optimizer.lr=0.3"
                         " --set optimizer.momentum=0.9 " +
                             args);
        host::ResultsStore store(db);
        GossipRun r;
        r.state_hash = run.text.at("state_hash");
        r.last_eval = store.metric_series(run.id, "eval_loss").back().second;
        return std::make_pair(r, run["sim_time"]);
    };
    // A gradient takes 0.47 simulated seconds, an exchange 0.23: worth overlapping.
    const std::string slow =
        " --set sim.device=custom --set sim.device_flops=1e8 --set sim.efficiency=1.0"
        " --set sim.bandwidth_gbs=0.0005";
    const auto blocking = run(slow);
    const auto threaded = run(slow + " --set strategy.exchange_thread=true");
    const auto again = run(slow + " --set strategy.exchange_thread=true");
    INFO("simulated time: blocking " << blocking.second << " s, exchange thread " << threaded.second << " s");
    CHECK(threaded.second < 0.85 * blocking.second);
    CHECK(threaded.first.state_hash == again.first.state_hash);  // the simulator stays deterministic
    CHECK(threaded.first.last_eval < std::log(32.0) - 2.0);
    // Four Gloo processes: the exchanges on real threads, no global barrier while training.
    const auto gloo = run("--set launch.mode=local --set launch.ranks=4 --set strategy.exchange_thread=true");
    CHECK(gloo.first.last_eval < std::log(32.0) - 2.0);
}

TEST_CASE("the least-squares workload: condition spreads the spectrum, batch_rows samples rows from the data",
          "[gossip][sim]") {
    TempDir dir;
    const auto file = dir.file("ls.toml", R"(
[model]
name = "least_squares"
rows = 2000
dim = 10
signal = 1.0
[data]
name = "synthetic"
vocab_size = 32
[optimizer]
name = "sgd"
lr = 0.1
[train]
grad_clip = 0.0
steps = 30
batch_size = 2
seq_len = 16
eval_every = 0
[results]
progress = "none"
)");
    // The model logs mu and L of F; with m >> d the Hessian is about diag(scale²), whose
    // condition is `condition`.
    auto spectrum = [&](double condition) {
        const auto res = run_plexus("run " + file + " --db " + dir / "s.db" +
                                    " --set train.steps=1 --set model.condition=" + std::to_string(condition));
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        const auto at = res.output.find("F has mu = ");
        REQUIRE(at != std::string::npos);
        double mu = 0, l = 0;
        REQUIRE(std::sscanf(res.output.c_str() + at, "F has mu = %lf, L = %lf", &mu, &l) == 2);
        return l / mu;
    };
    const double ratio = spectrum(100);
    CHECK(ratio > 70);
    CHECK(ratio < 140);
    CHECK(spectrum(4) < 6);
    // Stochastic rows follow the data: the seed changes them, the same seed repeats them.
    auto final_loss = [&](const std::string& args) {
        return run_recorded(file, dir / "b.db", "--set model.batch_rows=8 " + args)["final_eval_loss"];
    };
    const double a = final_loss("--set train.seed=0"), b = final_loss("--set train.seed=1");
    CHECK(a != b);
    CHECK(final_loss("--set train.seed=0") == a);
    // ... and all rows is the full gradient, which the seed does not touch.
    CHECK(run_recorded(file, dir / "f.db", "--set train.seed=0")["final_eval_loss"] ==
          run_recorded(file, dir / "f.db", "--set train.seed=1")["final_eval_loss"]);
}

TEST_CASE(
    "least squares with the orthogonal design: mu = 1 / condition and L = 1 exactly; relative evaluation; a problem "
    "per seed",
    "[gossip][sim]") {
    TempDir dir;
    const auto file = dir.file("ls.toml", R"(
[model]
name = "least_squares"
rows = 12
dim = 10
condition = 50.0
signal = 1.0
design = "orthogonal"
[data]
name = "synthetic"
vocab_size = 32
[optimizer]
name = "sgd"
lr = 0.5
[train]
grad_clip = 0.0
steps = 5
batch_size = 1
seq_len = 8
eval_every = 0
[results]
progress = "none"
)");
    struct Logged {
        double mu = 0, smooth = 0, start_gap = 0, final_eval = 0;
    };
    auto run = [&](const std::string& args) {
        const auto res = run_plexus("run " + file + " --db " + dir / "s.db" + " " + args);
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        Logged l;
        const auto at = res.output.find("F has mu = ");
        REQUIRE(at != std::string::npos);
        REQUIRE(std::sscanf(res.output.c_str() + at, "F has mu = %lf, L = %lf over 1 rank(s), F(0) - F* = %lf", &l.mu,
                            &l.smooth, &l.start_gap) == 3);
        host::ResultsStore store(dir / "s.db");
        l.final_eval = NewestRun(store)["final_eval_loss"];
        return l;
    };
    // 12 rows for 10 columns: a Gaussian design's spectrum would be far from its scales; this
    // one is exact, for any problem seed.
    for (const char* seed : {"3", "4"}) {
        const auto l = run(std::string("--set model.seed=") + seed);
        CHECK(l.mu == Approx(1.0 / 50).epsilon(1e-5));
        CHECK(l.smooth == Approx(1.0).epsilon(1e-5));
    }
    // relative = true divides the suboptimality by F(0) - F*.
    const auto absolute = run(""), relative = run("--set model.relative=true");
    CHECK(relative.final_eval == Approx(absolute.final_eval / absolute.start_gap).epsilon(1e-5));
    CHECK(relative.final_eval < 1);
    // seed = -1: the problem follows train.seed (with full gradients nothing else does).
    CHECK(run("--set model.seed=-1 --set train.seed=0").start_gap !=
          run("--set model.seed=-1 --set train.seed=1").start_gap);
    CHECK(run("--set train.seed=0").start_gap == run("--set train.seed=1").start_gap);
}

TEST_CASE("a token budget stops every rank at the same step: DADAO's Poisson gradients, async SGD losing a worker",
          "[gossip][dadao][sim]") {
    // Ranks that disagree on the job's tokens stop at different steps and deadlock in the
    // harness's last collective; both strategies count the job as launched, the same on every rank.
    TempDir dir;
    const auto file = dir.file("g.toml", kGossip);
    const auto dadao = run_recorded(file, dir / "d.db",
                                    "--set model.name=least_squares --set strategy.name=dadao --set strategy.mu=0.1"
                                    " --set strategy.smoothness=3.0 --set train.grad_clip=0.0 --set train.steps=0"
                                    " --set train.tokens=51200");  // 8 ranks x 8 x 32: 25 units
    CHECK(dadao["steps"] == 25);
    const auto async = run_recorded(file, dir / "a.db",
                                    "--set strategy.name=async_sgd --set launch.ranks=4 --set train.steps=0"
                                    " --set train.tokens=15360 --set 'faults=[\"kind=kill rank=3 step=5\"]'");
    CHECK(async["steps"] == 20);  // 3 workers x 8 x 32 a step
}
