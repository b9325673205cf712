// optimizers/lopt (docs/algorithms/lopt.md): one step from a zero state with the MLP wired
// to pass a single feature through as the direction, against the feature computed by hand; the
// μLO scaling; the weights file's errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>

#include <plexus/plexus.hpp>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

constexpr int kInputs = 39;

// A weights file whose MLP outputs d = (normalized) feature k and magnitude 0:
// hidden units relu(x_k) and relu(-x_k), d = their difference.
std::string passthrough_weights(const TempDir& dir, int k) {
    std::ostringstream w;
    w << "plexus-lopt 1\n# passes feature " << k << " through\ndecay_offsets 0 0 0 0 0 0 0\nw0";
    for (int row = 0; row < 32; ++row)
        for (int col = 0; col < kInputs; ++col) w << " " << (col == k ? (row == 0 ? 1 : row == 1 ? -1 : 0) : 0);
    w << "\nb0";
    for (int i = 0; i < 32; ++i) w << " 0";
    w << "\nw1";
    for (int row = 0; row < 32; ++row)
        for (int col = 0; col < 32; ++col) w << " " << (row == col && row < 2 ? 1 : 0);
    w << "\nb1";
    for (int i = 0; i < 32; ++i) w << " 0";
    w << "\nw2";
    for (int row = 0; row < 2; ++row)
        for (int col = 0; col < 32; ++col) w << " " << (row == 0 && col == 0 ? 1 : row == 0 && col == 1 ? -1 : 0);
    w << "\nb2 0 0\n";
    return dir.file("w" + std::to_string(k) + ".lopt", w.str());
}

struct Stepped {
    std::vector<double> weight, bias;  // parameters after the steps
};

// A [2, 3] weight and a [3] bias, one or two steps of lopt with feature k passed through.
// `role`: the weight's μP role (the bias is a vector when the weight has one).
Stepped step_lopt(int k, const std::vector<double>& g_weight, const std::vector<double>& g_bias, int steps = 1,
                  const std::string& extra = "", WidthRole role = WidthRole::None) {
    TempDir dir;
    const auto weights = passthrough_weights(dir, k);
    std::string text = kTinyExperiment;
    const std::string adamw = "[optimizer]\nname = \"adamw\"\nlr = 1e-2\n";
    text.replace(text.find(adamw), adamw.size(),
                 "[optimizer]\nname = \"lopt\"\nweights = \"" + weights + "\"\nstep_mult = 0.01\n" + extra);
    auto cfg = resolve_text(dir, text);
    host::HostContext ctx(cfg, torch::kCPU, 32);
    auto w = torch::tensor({0.5, -1.0, 2.0, 0.25, 1.5, -0.75}, torch::kFloat32).view({2, 3});
    auto b = torch::tensor({0.1, -0.2, 0.3}, torch::kFloat32);
    std::vector<ParamSlot> slots{{"layer.fc.weight", w, {2, 3}}, {"layer.fc.bias", b, {3}}};
    slots[0].width_role = role;
    slots[0].width_mult = 3.0;  // not used by μLO's 1 / fan_in
    slots[1].width_role = role == WidthRole::None ? role : WidthRole::Vector;
    auto optimizer = ctx.make_optimizer(slots, "optimizer");
    for (int s = 0; s < steps; ++s)
        optimizer->step({torch::tensor(g_weight, torch::kFloat32).view({2, 3}), torch::tensor(g_bias, torch::kFloat32)},
                        1.0);
    Stepped out;
    for (int i = 0; i < 6; ++i) out.weight.push_back(w.view(-1)[i].item<double>());
    for (int i = 0; i < 3; ++i) out.bias.push_back(b[i].item<double>());
    return out;
}

// x / sqrt(1e-5 + mean(x²)): the feature normalization, by hand.
std::vector<double> normalized(const std::vector<double>& x) {
    double sq = 0;
    for (double v : x) sq += v * v;
    const double rms = std::sqrt(1e-5 + sq / static_cast<double>(x.size()));
    std::vector<double> out;
    for (double v : x) out.push_back(v / rms);
    return out;
}

const std::vector<double> kWeight0 = {0.5, -1.0, 2.0, 0.25, 1.5, -0.75}, kBias0 = {0.1, -0.2, 0.3};
// A rank-1 gradient a bᵀ (a = (1, -2), b = (0.5, 1, -3)): its g² is rank 1 too.
const std::vector<double> kGradW = {0.5, 1.0, -3.0, -1.0, -2.0, 6.0}, kGradB = {0.2, -0.4, 0.05};

void check_step(const std::vector<double>& before, const std::vector<double>& after, const std::vector<double>& feature,
                double scale = 1.0) {
    REQUIRE(after.size() == feature.size());
    for (size_t i = 0; i < after.size(); ++i)
        CHECK(after[i] == Approx(before[i] - 0.01 * scale * feature[i]).epsilon(2e-5).margin(1e-7));
}

}  // namespace

TEST_CASE("lopt: one step from zero state, feature by feature, equals the features computed by hand", "[lopt]") {
    auto square = [](std::vector<double> x) {
        for (auto& v : x) v *= v;
        return x;
    };
    auto times = [](std::vector<double> x, double c) {
        for (auto& v : x) v *= c;
        return x;
    };
    SECTION("the gradient: SGD on the gradient normalized per tensor") {
        const auto s = step_lopt(0, kGradW, kGradB);
        check_step(kWeight0, s.weight, normalized(kGradW));
        check_step(kBias0, s.bias, normalized(kGradB));
    }
    SECTION("the parameter") {
        const auto s = step_lopt(1, kGradW, kGradB);
        check_step(kWeight0, s.weight, normalized(kWeight0));
    }
    SECTION("momentum and RMS from zero state: (1 - d) g and (1 - d) g²") {
        check_step(kWeight0, step_lopt(2, kGradW, kGradB).weight, normalized(times(kGradW, 0.1)));
        check_step(kWeight0, step_lopt(4, kGradW, kGradB).weight, normalized(times(kGradW, 0.001)));
        check_step(kWeight0, step_lopt(5, kGradW, kGradB).weight, normalized(times(square(kGradW), 0.001)));
    }
    SECTION(
        "Adafactor on a rank-1 g²: row_f · col_f = rsqrt((1 - d) g²), so g · row_f · col_f = sign(g) / sqrt(1 - d)") {
        for (int c = 0; c < 3; ++c) {
            const double d = c == 0 ? 0.9 : c == 1 ? 0.99 : 0.999;
            std::vector<double> expected_w, expected_b;
            for (double g : kGradW) expected_w.push_back((g > 0 ? 1 : -1) / std::sqrt(1 - d));
            // 1-D: full second moments, g · rsqrt(v + 1e-9) (the epsilon matters at g = 0.05).
            for (double g : kGradB) expected_b.push_back(g / std::sqrt((1 - d) * (g * g + 1e-30) + 1e-9));
            const auto s = step_lopt(10 + c, kGradW, kGradB);
            check_step(kWeight0, s.weight, normalized(expected_w));
            check_step(kBias0, s.bias, normalized(expected_b));
        }
    }
    SECTION("momentum times the Adafactor factors; 1-D: m · rsqrt(v + 1e-6), the reference's epsilon there") {
        // From zero state m = (1 - d) g and v = (1 - d) g² at the paired decays 0.9, 0.99, 0.999.
        // On the rank-1 matrix m · row_f · col_f = sqrt(1 - d) sign(g); on the vector the 1e-6
        // (not the gradient feature's 1e-9) moves the feature of g = 0.05 by 0.2%.
        for (int c = 0; c < 3; ++c) {
            const double d = c == 0 ? 0.9 : c == 1 ? 0.99 : 0.999;
            std::vector<double> expected_w, expected_b;
            for (double g : kGradW) expected_w.push_back((g > 0 ? 1 : -1) * std::sqrt(1 - d));
            for (double g : kGradB) expected_b.push_back((1 - d) * g / std::sqrt((1 - d) * (g * g + 1e-30) + 1e-6));
            const auto s = step_lopt(25 + c, kGradW, kGradB);
            check_step(kWeight0, s.weight, normalized(expected_w));
            check_step(kBias0, s.bias, normalized(expected_b));
        }
    }
    SECTION("the Adafactor row statistic, broadcast along the largest dimension") {
        // Rows of g² = (0.25, 1, 9) and (1, 4, 36): means 10.25/3 and 41/3, times (1 - 0.9).
        const double r0 = 0.1 * 10.25 / 3, r1 = 0.1 * 41.0 / 3;
        check_step(kWeight0, step_lopt(13, kGradW, kGradB).weight, normalized({r0, r0, r0, r1, r1, r1}));
    }
    SECTION("progress features are appended after normalization: tanh(t - 1) at t = 0, then 0") {
        const double first = std::tanh(-1.0);
        check_step(kWeight0, step_lopt(28, kGradW, kGradB).weight, std::vector<double>(6, first));
        // A second step at t = 1: tanh(1 - 1) = 0, the parameters stay where the first left them.
        check_step(kWeight0, step_lopt(28, kGradW, kGradB, 2).weight, std::vector<double>(6, first));
    }
    SECTION("μLO: hidden matrices (μP role) step 1 / fan_in as far, the others as before") {
        const auto s = step_lopt(0, kGradW, kGradB, 1, "", WidthRole::Hidden);
        check_step(kWeight0, s.weight, normalized(kGradW), 1.0 / 3);
        check_step(kBias0, s.bias, normalized(kGradB));
        // Without the width scaling (the ablation), the hidden matrix steps as in SP.
        const auto off = step_lopt(0, kGradW, kGradB, 1, "width_scaling = false\n", WidthRole::Hidden);
        check_step(kWeight0, off.weight, normalized(kGradW));
    }
}

TEST_CASE("lopt: weights file errors name the file and what is wrong", "[lopt]") {
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    auto run = [&](const std::string& weights) {
        return run_plexus("run " + file + " --db " + dir / "r.db" +
                          " --set optimizer.name=lopt --set optimizer.weights=" + weights + " --set train.steps=2");
    };
    auto res = run(dir / "missing.lopt");
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("optimizer.weights") && Contains("missing.lopt") && Contains("cannot open"));
    res = run(dir.file("bad.lopt", "plexus-lopt 1\ndecay_offsets 0 0 0 0 0 0 0\nw0 1 2 3\n"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("section 'w0' has 3 numbers, expected 1248"));
    res = run(dir.file("other.lopt", "safetensors\n"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("not a plexus-lopt 1 file"));
    // Untrained weights run (the starting point of meta-training).
    res = run("init");
    INFO(res.output);
    CHECK(res.exit_code == 0);
}

TEST_CASE(
    "lopt under DDP, ZeRO-1, ZeRO-3 and ACCO's synchronous rounds equals lopt on one rank with the combined batch",
    "[lopt][distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    auto param_sum = [&](const std::string& args) {
        return run_recorded(file, db,
                            "--set optimizer.name=lopt --set optimizer.weights=init --set optimizer.step_mult=0.01"
                            " --set train.steps=5 --set train.threads=1 --set train.eval_every=0 " +
                                args)["param_sum"];
    };
    const double one = param_sum("--set train.batch_size=8");
    const double larger_step = param_sum("--set train.batch_size=8 --set optimizer.step_mult=0.012");
    const double tolerance = 1e-3 * std::fabs(larger_step - one);  // a 20% larger step moves it 1000 times more
    const double ddp =
        param_sum("--set strategy.name=ddp --set launch.mode=local --set launch.ranks=2 --set train.batch_size=4");
    CHECK(std::fabs(ddp - one) < tolerance);
    // Sharded: each rank updates its pieces of the flat buffers; the row and column second
    // moments and the feature normalization are summed over the ranks' pieces.
    for (const char* stage : {"1", "3"}) {
        INFO("zero stage " << stage);
        const double zero = param_sum(std::string("--set strategy.name=zero --set strategy.stage=") + stage +
                                      " --set launch.mode=sim --set launch.ranks=2 --set train.batch_size=4");
        CHECK(std::fabs(zero - one) < tolerance);
    }
    // Three ranks cut the tensors at other places (pieces of rows, a piece per rank of a vector).
    const double one12 = param_sum("--set train.batch_size=12");
    const double zero3 = param_sum(
        "--set strategy.name=zero --set strategy.stage=1 --set launch.mode=local --set launch.ranks=3"
        " --set train.batch_size=4");
    CHECK(std::fabs(zero3 - one12) < tolerance);
    // ACCO's warm-up rounds are synchronous ZeRO-1 updates: all of them here.
    const double acco = param_sum(
        "--set strategy.name=acco --set strategy.sync_updates=5 --set launch.mode=sim"
        " --set launch.ranks=2 --set train.batch_size=4");
    CHECK(std::fabs(acco - one) < tolerance);
}

TEST_CASE("lopt as DiLoCo's inner optimizer: with the identity outer step it is lopt alone, and 2 ranks run it",
          "[lopt][distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file(
        "e.toml", std::string(kTinyExperiment) + "\n[outer_optimizer]\nname = \"sgd\"\nlr = 1.0\nmomentum = 0.0\n");
    const std::string lopt =
        "--set optimizer.name=lopt --set optimizer.weights=init --set train.steps=6 --set train.threads=1"
        " --set train.eval_every=0 ";
    auto run = [&](const std::string& args) { return run_recorded(file, db, lopt + args); };
    const double alone = run("--set optimizer.step_mult=0.01")["param_sum"];
    const double larger_step = run("--set optimizer.step_mult=0.012")["param_sum"];
    // Outer SGD with lr 1 and no momentum sets the anchor to the replica every H = 3 steps, and
    // the inner optimizer's state carries over: the same trajectory as lopt alone.
    const double diloco =
        run("--set optimizer.step_mult=0.01 --set strategy.name=diloco --set strategy.inner_steps=3")["param_sum"];
    CHECK(std::fabs(diloco - alone) < 1e-3 * std::fabs(larger_step - alone));
    // Two simulated ranks: each trains its replica with its own lopt state, then they average.
    const auto two =
        run("--set optimizer.step_mult=0.01 --set strategy.name=diloco --set strategy.inner_steps=3"
            " --set launch.mode=sim --set launch.ranks=2");
    CHECK(std::isfinite(two["final_loss"]));
    // Two outer steps (6 steps, H = 3), each averaging every parameter's pseudo-gradient once:
    // a ring all-reduce on 2 ranks sends 4 bytes per float per call.
    host::ResultsStore store(db);
    const auto outer = store.metric_series(two.id, "outer_steps");
    REQUIRE(!outer.empty());
    CHECK(outer.back().second == 2);
    const auto comm_bytes = store.metric_series(two.id, "comm_bytes");
    REQUIRE(!comm_bytes.empty());
    CHECK(comm_bytes.back().second == 2.0 * 4.0 * static_cast<double>(model_numel(dir, std::string(kTinyExperiment))));
    CHECK(std::fabs(two["param_sum"] - alone) > 1e-3 * std::fabs(larger_step - alone));  // other data, other path
}
