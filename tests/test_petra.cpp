// models/revgpt and strategies/petra (docs/algorithms/petra.md): the reversible block's inverse
// and hand-written backward against autograd, reversible backprop against backprop (and its
// memory), PETRA's schedule counted (delays, kept inputs), its equivalence to backprop with one
// stage or synchronous, partitions by measured time, and runs on Gloo processes.
#include <catch2/catch.hpp>
#include <cmath>

#include <plexus/plexus.hpp>

#include "helpers.hpp"
#include "sim_driver.hpp"
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

namespace {

// PETRA's two stages written out by hand, with SGD (θ ← θ - lr g, each stage after each of its
// backwards). Stage 0 holds blocks [0, cut), stage 1 the rest. At tick t stage 0 forwards
// micro-batch t and back-propagates t - 2 with the gradient stage 1 sent at tick t - 1; stage 1
// forwards and back-propagates t - 1 at once, at its current weights. The methods differ in where
// stage 0 takes micro-batch b's gradient at tick t:
//   petra             each reversible block's input reconstructed from its output with the
//                     current weights and the gradient taken there; the embedding recomputed
//                     from the kept token ids
//   delayed_recompute the stage's forward again from the token ids, at the current weights
//   delayed_stash     the same forward at the weights stage 0 had at tick b
// In every case the gradient is applied to the current weights.
struct HandSchedule {
    std::shared_ptr<Model> model;
    size_t cut;
    double lr;
    std::string method;
    std::unique_ptr<BatchStream> data;
    std::map<int64_t, Batch> batches;
    std::map<int64_t, torch::Tensor> outputs, grads;        // stage 0's output of b, its gradient
    std::map<int64_t, std::vector<torch::Tensor>> stashed;  // stage 0's weights at b's forward

    std::vector<torch::Tensor> params(size_t first, size_t last) const {
        std::vector<torch::Tensor> out;
        for (size_t i = first; i < last; ++i)
            for (auto& p : model->blocks()[i]->parameters()) out.push_back(p);
        return out;
    }
    torch::Tensor forward(size_t first, size_t last, torch::Tensor x) const {
        for (size_t i = first; i < last; ++i) x = model->blocks()[i]->forward(x);
        return x;
    }
    void sgd(size_t first, size_t last) const {
        torch::NoGradGuard no_grad;
        for (auto& p : params(first, last)) {
            if (p.grad().defined()) p.sub_(lr * p.grad());
            p.mutable_grad() = torch::Tensor();
        }
    }
    void set_weights(const std::vector<torch::Tensor>& weights) const {
        torch::NoGradGuard no_grad;
        auto ps = params(0, cut);
        for (size_t i = 0; i < ps.size(); ++i) ps[i].copy_(weights.at(i));
    }
    std::vector<torch::Tensor> weights() const {
        std::vector<torch::Tensor> out;
        for (auto& p : params(0, cut)) out.push_back(p.detach().clone());
        return out;
    }

    void backward_stage0(int64_t b) {
        const auto& ids = batches.at(b).inputs;
        if (method == "petra") {
            torch::Tensor y = outputs.at(b), g = grads.at(b);
            for (size_t i = cut; i-- > 1;) {
                const auto& block = model->blocks()[i];
                REQUIRE(block->invertible());
                torch::Tensor x;
                {
                    torch::NoGradGuard no_grad;
                    x = block->inverse(y);
                }
                x.requires_grad_(true);
                torch::autograd::backward({block->forward(x)}, {g});
                g = x.grad();
                y = x.detach();
            }
            torch::autograd::backward({model->blocks()[0]->forward(ids)}, {g});
            return;
        }
        const auto current = weights();
        if (method == "delayed_stash") set_weights(stashed.at(b));
        torch::autograd::backward({forward(0, cut, ids)}, {grads.at(b)});
        set_weights(current);
    }

    void tick(int64_t t) {
        batches[t] = data->next();
        stashed[t] = weights();
        {
            torch::NoGradGuard no_grad;
            outputs[t] = forward(0, cut, batches[t].inputs);
        }
        if (t >= 2) {
            backward_stage0(t - 2);
            sgd(0, cut);
        }
        if (t >= 1) {
            auto x = outputs.at(t - 1).clone().requires_grad_(true);
            model->loss(forward(cut, model->blocks().size(), x), batches.at(t - 1).targets).backward();
            grads[t - 1] = x.grad().clone();
            sgd(cut, model->blocks().size());
        }
    }

    std::map<std::string, torch::Tensor> named() const {
        std::map<std::string, torch::Tensor> out;
        for (const auto& block : model->blocks())
            for (const auto& item : block->named_parameters())
                out[block->block_name() + "." + item.key()] = item.value().detach().clone();
        return out;
    }
};

double largest_gap(const std::map<std::string, torch::Tensor>& a, const std::map<std::string, torch::Tensor>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (const auto& [name, t] : a) worst = std::max(worst, (t - b.at(name)).abs().max().item<double>());
    return worst;
}

}  // namespace

TEST_CASE("two asynchronous stages with SGD follow the schedule written out by hand: PETRA and its baselines",
          "[petra][sim]") {
    auto experiment = [](const std::string& method) {
        std::string text = rev_experiment(2) + "\n[strategy]\nname = \"petra\"\ncheck_every = 0\nmethod = \"" + method +
                           "\"\n\n[launch]\nmode = \"sim\"\nranks = 2\n";
        const std::string adamw = "[optimizer]\nname = \"adamw\"\nlr = 1e-2\n";
        return text.replace(text.find(adamw), adamw.size(), "[optimizer]\nname = \"sgd\"\nlr = 0.5\n");
    };
    constexpr int kSteps = 6;  // ticks 0 .. 6: the first step fills the pipe (two ticks)
    constexpr int64_t B = 4, T = 16;
    const std::vector<std::string> methods = {"petra", "delayed_recompute", "delayed_stash"};

    // The hand-written schedule of each method, after each tick.
    SimDriver setup(experiment("petra"));
    std::map<std::string, std::vector<std::map<std::string, torch::Tensor>>> expected;
    for (const auto& method : methods) {
        HandSchedule hand{setup.model(), 2, 0.5, method, setup.stream(B, T)};
        for (int64_t t = 0; t <= kSteps; ++t) {
            hand.tick(t);
            if (t >= 1) expected[method].push_back(hand.named());
        }
    }
    for (const auto& method : methods) {
        INFO(method);
        SimDriver d(experiment(method));
        std::vector<std::map<std::string, torch::Tensor>> got(kSteps);
        std::vector<int64_t> bounds;
        const auto error = d.run(kSteps, B, T, [&](int step, int rank, Strategy& s, const StepOutput&) {
            const auto state = s.state();  // every rank: it gathers the stages' parameters
            if (rank != 0) return;
            got[static_cast<size_t>(step)] = model_entries(state);
            for (const auto& [key, t] : state)
                if (key == "petra.bounds")
                    bounds = std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
        });
        INFO(error);
        REQUIRE(error.empty());
        REQUIRE(bounds == std::vector<int64_t>{0, 2, 4});  // embed, rev0 | rev1, head: the hand schedule's cut
        for (int step = 0; step < kSteps; ++step) {
            INFO("step " << step);
            const auto& mine = expected[method][static_cast<size_t>(step)];
            CHECK(largest_gap(got[static_cast<size_t>(step)], mine) < 1e-6);  // measured 6e-8
        }
        // Teeth: at the last step every other method's schedule is far from this run.
        for (const auto& other : methods)
            if (other != method) {
                INFO("against " << other);
                CHECK(largest_gap(got.back(), expected[other].back()) > 1e-3);
            }
    }
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
