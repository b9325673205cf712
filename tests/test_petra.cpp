// models/revgpt and strategies/petra (docs/algorithms/petra.md): the reversible block's inverse
// and hand-written backward against autograd, reversible backprop against backprop (and its
// memory), PETRA's schedule counted (delays, kept inputs), its equivalence to backprop with one
// stage or synchronous, partitions by measured time, and runs on Gloo processes.
#include <catch2/catch.hpp>
#include <cmath>

#include <plexus/plexus.hpp>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// The tiny experiment with a revgpt of `layers` blocks in place of gpt.
std::string rev_experiment(int layers) {
    std::string text = kTinyExperiment;
    const std::string gpt = "name = \"gpt\"\nn_layer = 2\n";
    text.replace(text.find(gpt), gpt.size(), "name = \"revgpt\"\nn_layer = " + std::to_string(layers) + "\n");
    return text;
}

const std::string kPetra = rev_experiment(4) + "\n[strategy]\nname = \"petra\"\ncheck_every = 4\n";

double relative(const torch::Tensor& a, const torch::Tensor& b) {
    return (a - b).norm().item<double>() / std::max(1e-30, b.norm().item<double>());
}

struct BuiltModel {
    TempDir dir;
    host::ResolvedConfig cfg;
    std::unique_ptr<host::HostContext> ctx;
    std::shared_ptr<plexus::Model> model;
    explicit BuiltModel(const std::string& text) : cfg(resolve_text(dir, text)) {
        ctx = std::make_unique<host::HostContext>(cfg, torch::kCPU, 32);
        model = ctx->make_model();
    }
};

std::vector<torch::Tensor> parameter_grads(Block& block) {
    std::vector<torch::Tensor> out;
    for (auto& p : block.parameters()) out.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    return out;
}

}  // namespace

TEST_CASE("the reversible block: its inverse reconstructs the input, its backward matches autograd", "[revgpt]") {
    BuiltModel m(rev_experiment(3));
    const auto& blocks = m.model->blocks();
    REQUIRE(blocks.size() == 5);
    CHECK(!blocks[0]->invertible());
    CHECK(!blocks[4]->invertible());
    torch::manual_seed(3);
    for (size_t i = 1; i <= 3; ++i) {
        INFO("block " << i);
        auto& block = *blocks[i];
        REQUIRE(block.invertible());
        // Inputs of the scale a trained stream has (the embedding's is 0.02: too easy).
        auto x = torch::randn({2, 32, 64});
        auto y = block.forward(x).detach();
        CHECK(relative(block.inverse(y), x) < 1e-5);
        CHECK(relative(y, x) > 1e-3);  // the block does something (its projections start small)

        // Autograd through the forward, against the hand-written reverse and the default one.
        auto grad_y = torch::randn_like(y);
        block.zero_grad();
        auto leaf = x.clone().requires_grad_(true);
        torch::autograd::backward(std::vector<torch::Tensor>{block.forward(leaf)}, std::vector<torch::Tensor>{grad_y});
        const auto reference_x = leaf.grad().clone();
        const auto reference = parameter_grads(block);
        for (bool base : {false, true}) {
            INFO((base ? "Block::reverse" : "revgpt's reverse"));
            block.zero_grad();
            auto [x_rec, grad_x] = base ? block.Block::reverse(y, grad_y) : block.reverse(y, grad_y);
            CHECK(relative(x_rec, x) < 1e-5);
            CHECK(relative(grad_x, reference_x) < 1e-5);
            const auto grads = parameter_grads(block);
            REQUIRE(grads.size() == reference.size());
            for (size_t p = 0; p < grads.size(); ++p) CHECK(relative(grads[p], reference[p]) < 1e-5);
        }
    }
}

TEST_CASE("reversible backprop trains exactly like backprop and keeps less memory", "[revgpt][run]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("r.toml", rev_experiment(6));
    struct Result {
        double param_sum, loss, peak;
    };
    auto run = [&](const std::string& args) {
        const NewestRun r = run_recorded(
            file, db,
            "--set train.steps=4 --set train.seq_len=64 --set train.batch_size=16 --set train.eval_every=0 "
            "--set optimizer.name=sgd --set optimizer.lr=0.5 --set train.threads=1 " +
                args);
        return Result{r["param_sum"], r["final_loss"], r["peak_tensor_bytes"]};
    };
    const auto backprop = run("");
    const auto reversible = run("--set model.reversible_backprop=true");
    const auto faster = run("--set optimizer.lr=0.6");
    // The same gradients up to the reconstruction's rounding: a 20% larger rate moves the
    // parameters a thousand times more.
    CHECK(reversible.loss == Approx(backprop.loss).epsilon(1e-5));
    CHECK(std::fabs(reversible.param_sum - backprop.param_sum) * 1e3 <
          std::fabs(faster.param_sum - backprop.param_sum));
    // Six blocks' activations (1024 tokens, attention maps included) against one block's at a
    // time: measured 2.6x less at peak, parameters and gradients included.
    INFO("peak tensor bytes: backprop " << backprop.peak << ", reversible " << reversible.peak);
    CHECK(reversible.peak < 0.6 * backprop.peak);
}

// (Without clipping: PETRA's stages clip their own norms, backprop the global one.)
TEST_CASE("PETRA with one stage, or synchronous, is backprop", "[petra][sim]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("p.toml", kPetra);
    // The parameters' sum and sum of squares: under SGD the sum cannot see the tensors whose
    // gradients sum to zero (the head's, those behind a layer norm); the squares can.
    struct Digest {
        double sum, square;
    };
    auto run = [&](const std::string& args) {
        const NewestRun r =
            run_recorded(file, db,
                         "--set train.steps=6 --set optimizer.name=sgd --set optimizer.lr=0.5 --set train.threads=1 "
                         "--set train.eval_every=0 --set train.grad_clip=0 " +
                             args);
        return Digest{r["param_sum"], r["param_square_sum"]};
    };
    const auto backprop = run("--set strategy.name=single");
    // (A constant rate: a PETRA stage reads the schedule when it steps, backprop when it starts
    // accumulating.)
    const auto accumulated =
        run("--set strategy.name=single --set strategy.accumulate=2 --set train.steps=3 "
            "--set train.lr_schedule=constant");
    const auto faster = run("--set strategy.name=single --set optimizer.lr=0.6");
    // Within a thousandth of what a 20% larger rate moves each digest.
    auto close = [&](const Digest& a, const Digest& b) {
        return std::fabs(a.sum - b.sum) < 1e-3 * std::fabs(faster.sum - backprop.sum) &&
               std::fabs(a.square - b.square) < 1e-3 * std::fabs(faster.square - backprop.square);
    };
    const auto one_rank = run("--set launch.mode=sim --set launch.ranks=1");
    CHECK(one_rank.sum == Approx(backprop.sum).epsilon(1e-7));
    CHECK(one_rank.square == Approx(backprop.square).epsilon(1e-7));
    for (const char* method : {"petra", "delayed_recompute", "delayed"}) {
        INFO(method);
        const std::string sync = std::string(" --set strategy.synchronous=true --set strategy.method=") + method;
        CHECK(close(run("--set launch.mode=sim --set launch.ranks=3" + sync), backprop));
    }
    // k = 2: one step on the mean of two micro-batches, as backprop accumulating two.
    CHECK(close(run("--set launch.mode=sim --set launch.ranks=3 --set strategy.synchronous=true "
                    "--set strategy.accumulate=2 --set train.lr_schedule=constant"),
                accumulated));
}

TEST_CASE("PETRA's schedule, counted: delays of 2(J-1-j) ticks, nothing kept on reversible stages", "[petra][sim]") {
    TempDir dir;
    const auto db = dir / "r.db";
    constexpr int J = 4, steps = 20;
    auto run = [&](const std::string& args) {
        return run_recorded(
                   dir.file("p.toml", kPetra), db,
                   "--set launch.mode=sim --set launch.ranks=4 --set train.steps=" + std::to_string(steps) + " " + args)
            .id;
    };
    host::ResultsStore store(db);
    auto series = [&](int64_t id, int stage, const std::string& key) {
        return store.metric_series(id, "petra/stage" + std::to_string(stage) + "/" + key);
    };
    const int64_t B = 8, T = 32, width = 2 * 32;
    for (const std::string method : {"petra", "delayed_recompute", "delayed"}) {
        INFO(method);
        const auto id = run("--set strategy.method=" + method);
        // Blocks [embed, rev0 .. rev3, head] by FLOPs: embed and rev0 | rev1 | rev2 | rev3 and head.
        for (int j = 0; j < J; ++j) CHECK(series(id, j, "first_block").at(0).second == (j == 0 ? 0 : j + 1));
        for (int j = 0; j < J; ++j) {
            INFO("stage " << j);
            const auto delay = series(id, j, "delay_ticks"), fifo = series(id, j, "fifo_length"),
                       bytes = series(id, j, "stored_activation_bytes");
            // Step 0 fills the pipe (ticks 0 .. J-1, the last one's figures recorded); step s is
            // tick J-1+s. A stage back-propagates from tick 2(J-1)-j on.
            REQUIRE(fifo.size() == static_cast<size_t>(steps));
            CHECK(delay.size() == static_cast<size_t>(steps - (J - 1 - j)));
            for (const auto& [step, d] : delay) CHECK(d == 2 * (J - 1 - j));
            for (size_t s = 0; s < fifo.size(); ++s) {
                const int64_t tick = J - 1 + static_cast<int64_t>(s);
                const int64_t in_flight = j == J - 1 ? 0 : std::min<int64_t>(tick - j + 1, 2 * (J - 1 - j));
                CHECK(series(id, j, "in_flight").at(s).second == in_flight);
                if (method == "petra") {
                    // Stage 0 keeps the token ids for the embedding; the reversible stages nothing.
                    CHECK(fifo[s].second == (j == 0 ? in_flight : 0));
                    CHECK(bytes[s].second == (j == 0 ? in_flight * B * T * 8 : 0));
                } else if (method == "delayed_recompute") {
                    // Every stage keeps its input: token ids on stage 0, the 2D-wide stream above.
                    CHECK(fifo[s].second == in_flight);
                    CHECK(bytes[s].second == in_flight * (j == 0 ? B * T * 8 : B * T * width * 4));
                } else if (j > 0 && j < J - 1) {
                    // The whole forward's activations: many times the input.
                    CHECK(bytes[s].second > 5 * in_flight * B * T * width * 4);
                }
            }
        }
    }
    // The reconstruction uses the current weights, which moved since the forward: its error
    // grows with the learning rate and is float rounding at lr = 0 (measured every 4
    // micro-batches on the reversible stages 1 and 2).
    auto mean_error = [&](int64_t id, int stage) {
        const auto err = series(id, stage, "reconstruction_error");
        REQUIRE(err.size() >= 3);
        double sum = 0;
        for (const auto& [step, e] : err) sum += e;
        return sum / static_cast<double>(err.size());
    };
    const auto frozen = run("--set optimizer.lr=0"), slow = run("--set optimizer.lr=1e-4"),
               fast = run("--set optimizer.lr=1e-3");
    for (int j = 1; j < J - 1; ++j) {
        INFO("stage " << j << ": mean error at lr 1e-4 " << mean_error(slow, j) << ", 1e-3 " << mean_error(fast, j));
        for (const auto& [step, e] : series(frozen, j, "reconstruction_error")) CHECK(e < 1e-6);
        CHECK(mean_error(slow, j) < 0.05);
        CHECK(mean_error(fast, j) > 3 * mean_error(slow, j));
    }
    // k = 2: a stage steps every other backward, so a delay of d ticks spans d/2 steps.
    const auto accumulated = run("--set strategy.accumulate=2");
    for (const auto& [step, u] : series(accumulated, 0, "delay_updates"))
        if (step > 10) CHECK(u == 3);
}

TEST_CASE("PETRA stages by measured time: a slower rank gets fewer blocks", "[petra][sim]") {
    TempDir dir;
    const auto db = dir / "r.db";
    auto first_blocks = [&](const std::string& args) {
        const auto id =
            run_recorded(dir.file("p.toml", kPetra), db,
                         "--set launch.mode=sim --set launch.ranks=3 --set train.steps=2 --set model.n_layer=7 "
                         "--set strategy.partition=measured --set sim.device=custom --set sim.device_flops=1e9 " +
                             args)
                .id;
        host::ResultsStore store(db);
        std::vector<double> out;
        for (int j = 0; j < 3; ++j)
            out.push_back(store.metric_series(id, "petra/stage" + std::to_string(j) + "/first_block").at(0).second);
        out.push_back(9);  // blocks: embed, rev0 .. rev6, head
        return out;
    };
    const auto even = first_blocks("");
    const auto slow = first_blocks("--set sim.slow_ranks=[1] --set sim.slow_factor=4.0");
    INFO("even: " << even[1] << ", " << even[2] << "; rank 1 slow: " << slow[1] << ", " << slow[2]);
    // Alike ranks: 3 reversible blocks each, with the embedding and the head on the ends.
    CHECK(even[1] - even[0] == 3);
    CHECK(even[2] - even[1] == 3);
    // Four times slower: one block, the others share the rest.
    CHECK(slow[2] - slow[1] == 1);
}

TEST_CASE("PETRA trains on Gloo processes with the same schedule", "[petra][distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const NewestRun run =
        run_recorded(dir.file("p.toml", kPetra), db,
                     "--set launch.mode=local --set launch.ranks=3 --set train.steps=40 --set train.threads=1 "
                     "--set optimizer.lr=3e-3");
    host::ResultsStore store(db);
    CHECK(run["final_eval_loss"] < std::log(32.0) - 0.5);
    // As on the simulated cluster: stage j back-propagates from step J-1-j on, every time with
    // the delay 2(J-1-j).
    for (int j = 0; j < 3; ++j) {
        const auto delay = store.metric_series(run.id, "petra/stage" + std::to_string(j) + "/delay_ticks");
        CHECK(delay.size() == static_cast<size_t>(40 - (2 - j)));
        for (const auto& [step, d] : delay) CHECK(d == 2 * (2 - j));
    }
    // Each process measured its own tensors; stage 0 holds the embedding and its inputs.
    CHECK(run.per_rank.at(1).at("peak_tensor_bytes") > 0);
}

TEST_CASE("PETRA settings errors name the key", "[petra]") {
    TempDir dir;
    const auto file = dir.file("p.toml", kPetra);
    auto bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set strategy.method=pipedream");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.output, Contains("strategy.method") && Contains("delayed_recompute"));
    bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set strategy.accumulate=0");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.output, Contains("strategy.accumulate") && Contains(">= 1"));
    bad = run_plexus("run " + file + " --db " + dir / "r.db" + " --set launch.mode=sim --set launch.ranks=8");
    CHECK(bad.exit_code != 0);
    CHECK_THAT(bad.output, Contains("8 stages for 6 blocks"));
}

TEST_CASE("PETRA re-balances while training: a slowed rank gives blocks away, with their optimizer state",
          "[petra][sim]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("p.toml", kPetra);
    struct Result {
        double param_sum, seconds_per_token;
        std::vector<double> stage1_first, stage2_first;
    };
    auto run = [&](const std::string& args) {
        const NewestRun r = run_recorded(
            file, db,
            "--set model.n_layer=7 --set train.threads=1 --set train.eval_every=0 --set train.grad_clip=0 " + args);
        host::ResultsStore store(db);
        Result out{r["param_sum"], r["sim_time"] / r["tokens"], {}, {}};
        for (const auto& [step, v] : store.metric_series(r.id, "petra/stage1/first_block"))
            out.stage1_first.push_back(v);
        for (const auto& [step, v] : store.metric_series(r.id, "petra/stage2/first_block"))
            out.stage2_first.push_back(v);
        return out;
    };
    // Synchronous, AdamW: moving blocks (parameters and moments) between ranks every 3
    // micro-batches changes nothing in the arithmetic; a 4x slower rank 1 ends with fewer blocks.
    const std::string slow =
        " --set launch.mode=sim --set launch.ranks=3 --set sim.device=custom --set sim.device_flops=1e9"
        " --set sim.slow_ranks=[1] --set sim.slow_factor=4.0 --set train.steps=9";
    const auto backprop = run("--set strategy.name=single --set train.steps=9");
    const auto faster = run("--set strategy.name=single --set train.steps=9 --set optimizer.lr=1.2e-2");
    const auto moved = run(slow + " --set strategy.synchronous=true --set strategy.rebalance_every=3");
    INFO("stage 1 starts at blocks:" << Catch::Detail::stringify(moved.stage1_first) << ", stage 2 at "
                                     << Catch::Detail::stringify(moved.stage2_first));
    REQUIRE(moved.stage1_first.size() >= 2);
    const double blocks_before = moved.stage2_first.front() - moved.stage1_first.front();
    const double blocks_after = moved.stage2_first.back() - moved.stage1_first.back();
    CHECK(blocks_after < blocks_before);
    CHECK(std::fabs(moved.param_sum - backprop.param_sum) < 1e-3 * std::fabs(faster.param_sum - backprop.param_sum));
    // Asynchronous: after re-balancing, the slowed pipe processes tokens faster (simulated time,
    // deterministic), despite draining it every 16 micro-batches.
    const auto stuck = run(slow + " --set train.steps=48");
    const auto balanced = run(slow + " --set train.steps=48 --set strategy.rebalance_every=16");
    INFO("simulated seconds per token: fixed stages " << stuck.seconds_per_token << ", re-balanced "
                                                      << balanced.seconds_per_token);
    CHECK(balanced.seconds_per_token < 0.8 * stuck.seconds_per_token);
}
