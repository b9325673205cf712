// plexus meta-train: evolution strategies over lopt's weights.
#include <catch2/catch.hpp>

#include <plexus/lopt_weights.hpp>

#include "meta_train.hpp"
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
           "/experiments/lopt/task_gpt_synthetic.toml\"\nchoose = { \"model.d_model\" = [8, 16], \"data.branching\" = [2, 4] }\n";
}

void meta_train(const std::string& file, const std::string& db, const std::string& args = "") {
    const auto res = run_plexus("meta-train " + file + " --db " + db + " " + args);
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
}

}  // namespace

TEST_CASE("meta-training lowers the meta-loss of a fixed task family, and records its curve", "[meta]") {
    TempDir dir;
    const auto file = dir.file("meta.toml", spec_text(dir / "w.lopt", 12));
    meta_train(file, dir / "r.db");
    const auto spec = host::load_meta_spec(file);
    const auto before = LoptWeights::initial(0), after = LoptWeights::load(dir / "w.lopt");
    // Tasks the training never drew (other seeds), each with both weights.
    double sum_before = 0, sum_after = 0;
    for (uint64_t task = 1000; task < 1008; ++task) {
        sum_before += host::meta_loss(spec, before, task, dir.path.string());
        sum_after += host::meta_loss(spec, after, task, dir.path.string());
    }
    INFO("mean meta-loss before " << sum_before / 8 << ", after " << sum_after / 8);
    CHECK(sum_after / 8 < sum_before / 8 - 0.02);
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
    CHECK(torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "resumed.lopt").flat()));
    host::ResultsStore store(dir / "b.db");
    REQUIRE(store.list_runs(10).size() == 1);  // the same run, continued
    CHECK(store.metric_series(store.list_runs(1).at(0).id, "meta_loss").size() == 9);
    // --restart starts over: the weights differ from 9 iterations' after only 2.
    meta_train(resumed, dir / "b.db", "--restart --iterations 2");
    CHECK(!torch::equal(LoptWeights::load(dir / "straight.lopt").flat(), LoptWeights::load(dir / "resumed.lopt").flat()));
}

TEST_CASE("meta-training on 2 ranks over Gloo takes exactly the steps of 1 rank", "[meta][distributed]") {
    TempDir dir;
    meta_train(dir.file("one.toml", spec_text(dir / "one.lopt", 3, 1)), dir / "r.db");
    meta_train(dir.file("two.toml", spec_text(dir / "two.lopt", 3, 2)), dir / "r.db");
    const auto one = LoptWeights::load(dir / "one.lopt").flat(), two = LoptWeights::load(dir / "two.lopt").flat();
    CHECK(torch::equal(one, two));
    CHECK(!torch::equal(one, LoptWeights::initial(0).flat()));  // and it moved
}

TEST_CASE("meta-train files: unknown keys and tasks without lopt are named", "[meta]") {
    TempDir dir;
    auto res = run_plexus("meta-train " + dir.file("a.toml", "[meta]\niterations = 3\nsigmaa = 0.1\nout = \"w\"\n") + " --db " +
                          (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("a.toml:3: unknown key meta.sigmaa"));
    const auto adamw_task = dir.file("t.toml", std::string(kTinyExperiment));
    res = run_plexus("meta-train " + dir.file("b.toml", "[meta]\nout = \"w\"\n[[task]]\nexperiment = \"" + adamw_task + "\"\n") +
                     " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("does not use optimizer lopt"));
    res = run_plexus("meta-train " + dir.file("c.toml", "[meta]\nout = \"w\"\n") + " --db " + (dir / "r.db"));
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("no [[task]]"));
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
