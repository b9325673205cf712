// The optimizer baselines beside AdamW and SGD: each against steps computed by hand, its state
// restored exactly, and under ZeRO-1 on 2 Gloo processes as under the single strategy.
#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>

#include "helpers.hpp"
#include "optimizers/muon/muon.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// The run's optimizer ([optimizer] of `section`) over the given tensors, named `names` (default
// w0, w1, ...).
std::unique_ptr<Optimizer> build(const TempDir& dir, const std::string& section, std::vector<torch::Tensor> params,
                                 std::vector<std::string> names = {}) {
    auto cfg = resolve_text(dir, "[model]\nname = \"gpt\"\n[data]\nname = \"synthetic\"\n[optimizer]\n" + section);
    static std::unique_ptr<host::HostContext> ctx;  // outlives the optimizer it builds
    ctx = std::make_unique<host::HostContext>(cfg, torch::kCPU, 32);
    std::vector<ParamSlot> slots;
    for (size_t i = 0; i < params.size(); ++i)
        slots.push_back({names.empty() ? "w" + std::to_string(i) : names[i], params[i], params[i].sizes().vec()});
    return ctx->make_optimizer(std::move(slots), "optimizer");
}

// Loss curve and final parameter sum of a short GPT run.
std::pair<std::vector<std::pair<int64_t, double>>, double> train(const TempDir& dir, const std::string& args) {
    const auto db = dir / "o.db";
    auto res =
        run_plexus("run " + dir.file("o.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n") +
                   " --db " + db + " --set train.steps=10 --set train.threads=1 --set train.log_every=1 " + args);
    INFO(args << "\n" << res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(db);
    const auto id = store.list_runs(1).at(0).id;
    double sum = NAN;
    for (const auto& [rank, key, value, text] : store.summaries(id))
        if (rank == 0 && key == "param_sum") sum = *value;
    return {store.metric_series(id, "loss"), sum};
}

// The same training under the single strategy (batch 8) and ZeRO-1 on 2 Gloo processes (4 each):
// the largest gap between their loss curves, and the two final parameter sums.
struct ZeroAgainstSingle {
    double worst_loss_gap = 0, single_sum = 0, zero_sum = 0;
    bool learns = false;
};
ZeroAgainstSingle zero_against_single(const TempDir& dir, const std::string& args) {
    const auto [single, single_sum] = train(dir, args + " --set train.batch_size=8");
    const auto [zero, zero_sum] =
        train(dir, args + " --set strategy.name=zero --set strategy.stage=1" +
                       " --set launch.mode=local --set launch.ranks=2 --set train.batch_size=4");
    REQUIRE(single.size() == zero.size());
    ZeroAgainstSingle out{0, single_sum, zero_sum, single.back().second < single.front().second};
    for (size_t i = 0; i < single.size(); ++i)
        out.worst_loss_gap = std::max(out.worst_loss_gap, std::fabs(single[i].second - zero[i].second));
    return out;
}

}  // namespace

TEST_CASE("lion: two steps by hand, decay on matrices only, the state restored exactly", "[optimizer][lion]") {
    TempDir dir;
    auto w = torch::tensor({{1.0, -2.0}, {0.5, 0.0}}, torch::kDouble), b = torch::tensor({3.0, -1.0}, torch::kDouble);
    auto opt = build(dir, "name = \"lion\"\nlr = 0.1\nbetas = [0.8, 0.5]\nweight_decay = 0.5\n", {w, b});
    const auto gw1 = torch::tensor({{0.2, -0.1}, {0.0, 4.0}}, torch::kDouble),
               gb1 = torch::tensor({-1.0, 2.0}, torch::kDouble);
    opt->step({gw1, gb1}, 1.0);
    // Step 1, m = 0: p * (1 - 0.1 * 0.5) - 0.1 * sign(0.2 g); m = 0.5 g. sign(0) = 0.
    CHECK(torch::allclose(w, torch::tensor({{0.95 - 0.1, -1.9 + 0.1}, {0.475, 0.0 - 0.1}}, torch::kDouble)));
    CHECK(torch::allclose(b, torch::tensor({3.0 + 0.1, -1.0 - 0.1}, torch::kDouble)));  // not decayed
    const auto saved = opt->state();
    const auto w1 = w.clone(), b1 = b.clone();
    // Step 2 at half the rate: the interpolation 0.8 m + 0.2 g, with m = 0.5 g1, decides the signs.
    const auto gw2 = torch::tensor({{-1.0, -1.0}, {1.0, -0.5}}, torch::kDouble),
               gb2 = torch::tensor({1.0, -2.0}, torch::kDouble);
    opt->step({gw2, gb2}, 0.5);
    // w: c = 0.4 gw1 + 0.2 gw2 = {{-0.12, -0.24}, {0.2, 1.5}}; decay 1 - 0.05 * 0.5.
    const auto decay = 1.0 - 0.05 * 0.5;
    CHECK(torch::allclose(w, w1 * decay - 0.05 * torch::tensor({{-1.0, -1.0}, {1.0, 1.0}}, torch::kDouble)));
    // b: c = 0.4 gb1 + 0.2 gb2 = {-0.2, 0.4}.
    CHECK(torch::allclose(b, b1 - 0.05 * torch::tensor({-1.0, 1.0}, torch::kDouble)));
    // Restoring the state after step 1 and stepping again gives the same parameters.
    const auto w2 = w.clone();
    w.copy_(w1), b.copy_(b1);
    opt->load_state(saved);
    opt->step({gw2, gb2}, 0.5);
    CHECK(torch::equal(w, w2));
}

TEST_CASE("lion under ZeRO-1 on 2 Gloo processes follows the single strategy", "[optimizer][lion][zero]") {
    // Element-wise: each rank updates its shard's pieces as the whole tensors would be updated.
    // Only the gradients' float sums differ (~1e-7), and a sign can flip only where the
    // interpolated momentum is that close to zero (or zero on one side).
    TempDir dir;
    const auto r =
        zero_against_single(dir, "--set optimizer.name=lion --set optimizer.lr=1e-3 --set optimizer.weight_decay=0.1");
    CHECK(r.worst_loss_gap < 1e-4);
    // A flipped sign moves one coordinate by 2 lr = 2e-3: the sums differ by a few dozen flips
    // among 10 steps of ~30k coordinates at most (measured: 0.022, about 11).
    CHECK(std::fabs(r.zero_sum - r.single_sum) < 50 * 2e-3);
    CHECK(r.learns);
}

TEST_CASE("adafactor: a rank-one squared gradient is rebuilt exactly, and a vector's moment by hand",
          "[optimizer][adafactor]") {
    TempDir dir;
    auto w = torch::tensor({{1.0, 2.0}, {3.0, 4.0}}, torch::kDouble), b = torch::tensor({3.0, -1.0}, torch::kDouble);
    auto opt = build(dir, "name = \"adafactor\"\n", {w, b});  // the defaults: relative step, lr 1e-2
    // g = a b^T, so g^2 = a^2 (b^2)^T has rank one and R C^T / mean(R) is g^2 itself: the update
    // is sign(g), of RMS 1 (no clipping), scaled by min(1e-2, 1/sqrt(1)) and the weights' RMS.
    const auto gw = torch::outer(torch::tensor({1.0, -2.0}, torch::kDouble), torch::tensor({0.5, 3.0}, torch::kDouble));
    const auto gb1 = torch::tensor({2.0, -0.5}, torch::kDouble);
    const auto w0 = w.clone(), b0 = b.clone();
    opt->step({gw, gb1}, 1.0);
    CHECK(torch::allclose(w, w0 - 0.01 * std::sqrt(30.0 / 4) * gw.sign(), 1e-10, 1e-12));
    CHECK(torch::allclose(b, b0 - 0.01 * std::sqrt(5.0) * gb1.sign(), 1e-10, 1e-12));
    // Step 2 on the vector: V = beta2 g1^2 + (1 - beta2) g2^2 with beta2 = 1 - 2^-0.8; u = g2 /
    // sqrt(V), clipped to RMS 1; the step min(1e-2, 1/sqrt(2)) times RMS(b) before the step,
    // half of it at a schedule factor of 0.5.
    const auto gb2 = torch::tensor({-4.0, 3.0}, torch::kDouble);
    const double beta2 = 1.0 - std::pow(2.0, -0.8);
    const auto v = beta2 * gb1 * gb1 + (1 - beta2) * (gb2 * gb2 + 1e-30);
    auto u = gb2 / v.sqrt();
    const double u_rms = (u.norm() / std::sqrt(2.0)).item<double>();
    u = u / std::max(1.0, u_rms);
    const auto b1 = b.clone();
    const double b_rms = (b1.norm() / std::sqrt(2.0)).item<double>();
    opt->step({gw, gb2}, 0.5);
    CHECK(torch::allclose(b, b1 - 0.5 * 0.01 * b_rms * u, 1e-10, 1e-12));
    CHECK(u_rms > 1.0);  // this step was clipped: the check covers the clipping

    // State: row and column averages for the matrix, the full moment for the vector.
    const auto state = opt->state();
    REQUIRE(state.size() == 4);
    CHECK(state[1].first == "0.w0.row");
    CHECK(state[1].second.sizes().vec() == std::vector<int64_t>{2});
    CHECK(state[3].first == "1.w1.second");
}

TEST_CASE("muon and adafactor under ZeRO-1 on 2 Gloo processes follow the single strategy, split tensors gathered",
          "[optimizer][muon][adafactor][zero]") {
    // The tiny GPT's flat buffer splits between the two shards inside a hidden matrix; without
    // the gather that matrix would be orthogonalized (Muon) or its moments and RMS taken (Adafactor)
    // in two halves (checked: taking the wrong piece moves the loss by 0.036).
    TempDir dir;
    for (const std::string optimizer : {"muon", "adafactor"}) {
        INFO(optimizer);
        const auto r = zero_against_single(dir, "--set optimizer.name=" + optimizer + " --set optimizer.lr=0.02");
        CHECK(r.worst_loss_gap < 1e-4);
        // Adafactor's first step on a vector is g / |g|: a gradient element within rounding of
        // zero may flip (as Lion's signs; measured 0.0012 over 28,544 parameters).
        CHECK(std::fabs(r.zero_sum - r.single_sum) < 5e-3);
        CHECK(r.learns);
    }
}

TEST_CASE("muon and adafactor refuse tensor parallelism's split parameters, by name, before training",
          "[optimizer][muon][adafactor][tensor_parallel]") {
    TempDir dir;
    for (const std::string optimizer : {"muon", "adafactor", "lopt"}) {
        INFO(optimizer);
        auto res = run_plexus(
            "run " + dir.file("o.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"tensor_parallel\"\n") +
            " --db " + dir / "o.db" + " --set optimizer.name=" + optimizer +
            (optimizer == "lopt" ? " --set optimizer.weights=init" : "") +
            " --set strategy.tp=2 --set launch.mode=local --set launch.ranks=2 --set train.steps=2");
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains(optimizer + ": parameter") && Contains("split over the tensor-parallel group"));
    }
}

TEST_CASE("muon: Newton-Schulz against the singular value decomposition, within its stated band", "[optimizer][muon]") {
    // Each iteration maps every singular value s of G / |G|_F to a s + b s^3 + c s^5 and keeps
    // the singular vectors: so NS5(G) = U diag(p(s)) V^T, and p(s) lies in [0.5, 1.5] (the
    // authors' band: within 0.5 of the orthogonal factor U V^T in spectral norm).
    torch::manual_seed(3);
    for (const auto& shape : std::vector<std::vector<int64_t>>{{6, 4}, {4, 6}, {5, 5}}) {
        const auto g = torch::randn(shape, torch::kDouble);
        const auto x = plexus::muon::newton_schulz(g, 5);
        auto [u, sv, vh] = at::linalg_svd(g / (g.norm() + 1e-7), /*full_matrices=*/false);
        auto p = sv.clone();
        for (int i = 0; i < 5; ++i) p = 3.4445 * p - 4.7750 * p.pow(3) + 2.0315 * p.pow(5);
        CHECK(torch::allclose(x, torch::matmul(u * p, vh), 1e-9, 1e-9));
        CHECK(p.min().item<double>() >= 0.5);
        CHECK(p.max().item<double>() <= 1.5);
        const auto gap = std::get<1>(at::linalg_svd(x - torch::matmul(u, vh), /*full_matrices=*/false));
        CHECK(gap.max().item<double>() <= 0.5);  // the spectral norm of X - U V^T
    }
}

TEST_CASE("muon: a hidden matrix's step by hand, and AdamW on the embedding and on vectors", "[optimizer][muon]") {
    TempDir dir;
    auto w = torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {1.0, 1.0}}, torch::kDouble);
    auto e = torch::tensor({{0.5, -0.5}}, torch::kDouble), b = torch::tensor({1.0, 2.0}, torch::kDouble);
    auto opt = build(dir, "name = \"muon\"\nlr = 0.1\nadam_lr = 0.01\nweight_decay = 0.5\n", {w, e, b},
                     {"layer0.w", "embed.tokens", "layer0.b"});
    const auto gw = torch::tensor({{0.3, -0.2}, {0.1, 0.4}, {-0.5, 0.0}}, torch::kDouble);
    const auto ge = torch::tensor({{-1.0, 2.0}}, torch::kDouble), gb = torch::tensor({0.5, -0.25}, torch::kDouble);
    const auto w0 = w.clone(), e0 = e.clone(), b0 = b.clone();
    opt->step({gw, ge, gb}, 1.0);
    // From zero momentum: M = 0.05 g, the Nesterov step U = 0.05 g + 0.95 M (a multiple of g, which
    // the normalization removes); scaled by sqrt(3 / 2) for a tall matrix; decay 1 - 0.1 * 0.5.
    const auto u = 0.05 * gw + 0.95 * (0.05 * gw);
    CHECK(torch::allclose(w, w0 * 0.95 - 0.1 * std::sqrt(1.5) * plexus::muon::newton_schulz(u, 5), 1e-12, 1e-12));
    // AdamW's first bias-corrected step is g / (|g| + eps): the sign, times the rate; decay too.
    CHECK(torch::allclose(e, e0 * (1 - 0.01 * 0.5) - 0.01 * ge.sign(), 1e-9, 1e-12));
    CHECK(torch::allclose(b, b0 * (1 - 0.01 * 0.5) - 0.01 * gb.sign(), 1e-9, 1e-12));
    // The state: the matrix keeps a momentum, each AdamW tensor two moments.
    CHECK(opt->state().size() == 1 + 1 + 2 + 2);
}
