// plexus meta-train: evolution strategies over lopt's weights.
#include <catch2/catch.hpp>

#include "optimizers/lopt/lopt_weights.hpp"

#include "tools/meta_train.hpp"
#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// A meta-train file over the shipped tiny-GPT task, writing its weights to OUT.
std::string spec_text(const std::string& out, int64_t iterations, int64_t ranks = 1) {
    return "[meta]\niterations = " + std::to_string(iterations) +
           "\npairs = 4\nsigma = 0.05\nlr = 0.02\ninner_steps = 10\ncheckpoint_every = 4\nranks = " +
           std::to_string(ranks) + "\nout = \"" + out + "\"\n\n[[task]]\nexperiment = \"" + PLEXUS_SOURCE_DIR +
           "/experiments/lopt/task_gpt_synthetic.toml\"\nchoose = { \"model.d_model\" = [8, 16], \"data.branching\" = "
           "[2, 4] }\n";
}

// The same with PES: unrolls of `inner` steps in truncations of `truncation`.
std::string pes_text(const std::string& out, int64_t iterations, int64_t inner, int64_t truncation, int64_t ranks = 1) {
    auto text = spec_text(out, iterations, ranks);
    const std::string steps = "inner_steps = 10\ncheckpoint_every = 4\n";
    text.replace(text.find(steps), steps.size(),
                 "inner_steps = " + std::to_string(inner) + "\ntruncation = " + std::to_string(truncation) +
                     "\ncheckpoint_every = " + std::to_string(2 * inner / truncation) + "\n");
    return text;
}

void meta_train(const std::string& file, const std::string& db, const std::string& args = "") {
    const auto res = run_plexus("meta-train " + file + " --db " + db + " " + args);
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
}

// The meta-loss of 8 tasks the training never drew (other seeds) is lower with the trained
// weights than with the initial ones.
void check_meta_loss_lowered(const std::string& file, const std::string& trained, const TempDir& dir) {
    const auto spec = host::load_meta_spec(file);
    const auto before = spec.params.start.flat(), after = LoptWeights::load(trained).flat();
    double sum_before = 0, sum_after = 0;
    for (uint64_t task = 1000; task < 1008; ++task) {
        sum_before += host::meta_loss(spec, before, task, dir.path.string());
        sum_after += host::meta_loss(spec, after, task, dir.path.string());
    }
    INFO("mean meta-loss before " << sum_before / 8 << ", after " << sum_after / 8);
    CHECK(sum_after / 8 < sum_before / 8 - 0.02);
}

}  // namespace

TEST_CASE("meta-training lowers the meta-loss of a fixed task family, and records its curve", "[meta]") {
    TempDir dir;
    const auto file = dir.file("meta.toml", spec_text(dir / "w.lopt", 12));
    meta_train(file, dir / "r.db");
    check_meta_loss_lowered(file, dir / "w.lopt", dir);
    host::ResultsStore store(dir / "r.db");
    const auto run = store.list_runs(1).at(0);
    CHECK(run.status == "finished");
    CHECK(store.metric_series(run.id, "meta_loss").size() == 12);
}

TEST_CASE("meta-training resumed from its checkpoint ends where an uninterrupted run ends", "[meta]") {
    TempDir dir;
    const auto straight = dir.file("straight.toml", spec_text(dir / "straight.lopt", 9));
    const auto resumed = dir.file("resumed.toml", spec_text(dir / "resumed.lopt", 9));
    meta_train(straight, dir / "a.db");
    meta_train(resumed, dir / "b.db", "--iterations 5");  // stops after 5, checkpointed
    meta_train(resumed, dir / "b.db");                    // picks up at 5
    CHECK(
        torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "resumed.lopt").flat()));
    host::ResultsStore store(dir / "b.db");
    REQUIRE(store.list_runs(10).size() == 1);  // the same run, continued
    CHECK(store.metric_series(store.list_runs(1).at(0).id, "meta_loss").size() == 9);
    // --restart starts over: the weights differ from 9 iterations' after only 2.
    meta_train(resumed, dir / "b.db", "--restart --iterations 2");
    CHECK(
        !torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "resumed.lopt").flat()));
}

TEST_CASE("meta-training on 2 ranks over Gloo takes exactly the steps of 1 rank", "[meta][distributed]") {
    TempDir dir;
    meta_train(dir.file("one.toml", spec_text(dir / "one.lopt", 3, 1)), dir / "r.db");
    meta_train(dir.file("two.toml", spec_text(dir / "two.lopt", 3, 2)), dir / "r.db");
    const auto one = LoptWeights::load(dir / "one.lopt").flat(), two = LoptWeights::load(dir / "two.lopt").flat();
    CHECK(torch::equal(one, two));
    CHECK(!torch::equal(one, host::load_meta_spec(dir / "one.toml").params.start.flat()));  // and it moved
}

TEST_CASE(
    "PES: one truncation per unroll is ES bit for bit, longer unrolls lower the meta-loss, it resumes between unrolls "
    "and splits over ranks",
    "[meta]") {
    TempDir dir;
    // truncation = inner_steps: each unroll is one truncation, ξ = ε: the ES estimator.
    meta_train(dir.file("es.toml", spec_text(dir / "es.lopt", 3)), dir / "r.db");
    meta_train(dir.file("pes1.toml", pes_text(dir / "pes1.lopt", 3, 10, 10)), dir / "r.db");
    CHECK(torch::equal(LoptWeights::load(dir / "es.lopt").flat(), LoptWeights::load(dir / "pes1.lopt").flat()));

    // Unrolls of 12 steps in 3 truncations of 4: 18 iterations (6 unrolls) lower the meta-loss
    // of whole 12-step trainings on tasks never drawn.
    const auto file = dir.file("pes.toml", pes_text(dir / "pes.lopt", 18, 12, 4));
    meta_train(file, dir / "p.db");
    check_meta_loss_lowered(file, dir / "pes.lopt", dir);

    // Stopped inside an unroll (after 7 of 9 iterations: the third unroll began at 6), the
    // checkpoint is the unroll's start; resumed, it ends where 9 straight iterations end.
    meta_train(dir.file("straight.toml", pes_text(dir / "straight.lopt", 9, 12, 4)), dir / "s.db");
    const auto resumed = dir.file("resumed.toml", pes_text(dir / "resumed.lopt", 9, 12, 4));
    const auto stopped = run_plexus("meta-train " + resumed + " --db " + dir / "b.db --iterations 7");
    INFO(stopped.output);
    CHECK_THAT(stopped.output, Contains("stopped inside a PES unroll; the checkpoint is at its start (iteration 6)"));
    meta_train(resumed, dir / "b.db");
    CHECK(
        torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "resumed.lopt").flat()));

    // Two ranks keep their own pairs' tasks alive and take the steps of one.
    meta_train(dir.file("two.toml", pes_text(dir / "two.lopt", 9, 12, 4, 2)), dir / "t.db");
    CHECK(torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "two.lopt").flat()));

    // The estimate weighs each pair's loss difference by ξ, its perturbations since the unroll
    // began (PES), not by this iteration's alone (truncated ES, biased): unrolls of 3 truncations,
    // iteration 7 is the second of the unroll that began at 6.
    const auto pes_spec = host::load_meta_spec(dir.file("p3.toml", pes_text(dir / "p3.lopt", 9, 12, 4)));
    const auto losses = torch::tensor({1.0, 0.5, 0.25, 0.75, 2.0, 1.0, 0.5, 0.5}, torch::kFloat64);  // 4 pairs
    const int64_t n = 50;
    auto want = torch::zeros({n}, torch::kFloat64);
    for (int64_t i = 0; i < 4; ++i)
        want += (host::direction(pes_spec, 6, i, n) + host::direction(pes_spec, 7, i, n)) *
                ((losses[2 * i] - losses[2 * i + 1]).item<double>() / (2 * 0.05 * 4));
    CHECK(torch::allclose(host::es_gradient(pes_spec, 7, losses, n), want, 1e-12, 1e-12));
    CHECK(torch::allclose(
        host::es_gradient(pes_spec, 6, losses, n),  // an unroll's first: ε alone
        host::es_gradient(host::load_meta_spec(dir.file("e3.toml", spec_text(dir / "e3.lopt", 9))), 6, losses, n),
        1e-12, 1e-12));

    // A truncation must divide the unroll, and checkpoints fall between unrolls.
    auto bad = pes_text(dir / "x.lopt", 3, 12, 5);
    auto res = run_plexus("meta-train " + dir.file("bad.toml", bad) + " --db " + dir / "x.db");
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("meta.truncation = 5 does not divide meta.inner_steps = 12"));
    bad = pes_text(dir / "x.lopt", 3, 12, 4);
    bad.replace(bad.find("checkpoint_every = 6"), 20, "checkpoint_every = 4");
    res = run_plexus("meta-train " + dir.file("bad2.toml", bad) + " --db " + dir / "x.db");
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("is not a multiple of the 3 truncations of an unroll"));
}

TEST_CASE("meta-train files: unknown keys and tasks whose optimizer has no learned weights are named", "[meta]") {
    TempDir dir;
    auto res = run_plexus("meta-train " + dir.file("a.toml", "[meta]\niterations = 3\nsigmaa = 0.1\nout = \"w\"\n") +
                          " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("a.toml:3: unknown key meta.sigmaa"));
    const auto adamw_task = dir.file("t.toml", std::string(kTinyExperiment));
    res = run_plexus("meta-train " +
                     dir.file("b.toml", "[meta]\nout = \"w\"\n[[task]]\nexperiment = \"" + adamw_task + "\"\n") +
                     " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("the tasks' optimizer 'adamw' has no learned weights to meta-train"));
    res = run_plexus("meta-train " + dir.file("c.toml", "[meta]\nout = \"w\"\n") + " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("no [[task]]"));
    // A choice that does not resolve is named before anything is recorded or trained.
    auto bad_choice = spec_text(dir / "w.weights", 1);
    bad_choice.replace(bad_choice.find("\"data.branching\""), 16, "\"model.bogus\"");
    res = run_plexus("meta-train " + dir.file("d.toml", bad_choice) + " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output,
               Contains("[[task]] 1") && Contains("choose model.bogus = 2") && Contains("unknown key 'model.bogus'"));
    CHECK(!std::filesystem::exists(dir / "r.db"));
}

TEST_CASE("meta-training as 2 processes joined from the environment (torchrun-style) takes the steps of 1 rank",
          "[meta][distributed]") {
    TempDir dir;
    meta_train(dir.file("one.toml", spec_text(dir / "one.lopt", 3, 1)), dir / "r.db");
    const auto two = dir.file("two.toml", spec_text(dir / "two.lopt", 3, 1));
    const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(host::free_port());
    const std::string cmd = std::string(PLEXUS_BINARY) + " meta-train " + two + " --db " + (dir / "r.db");
    // Rank 1 in the background, rank 0 in the foreground; the shell waits for both.
    const auto res = run_command("(" + env + " RANK=1 " + cmd + " > " + (dir / "rank1.log") + " 2>&1) & " + env +
                                 " RANK=0 " + cmd + "; code=$?; wait $! || code=1; exit $code");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK(torch::equal(LoptWeights::load(dir / "one.lopt").flat(), LoptWeights::load(dir / "two.lopt").flat()));
    host::ResultsStore store(dir / "r.db");
    CHECK(store.list_runs(10).size() == 2);  // rank 0 alone recorded the second run
}
