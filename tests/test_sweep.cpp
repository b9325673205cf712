// Grids, sweeps (parallel, resumable, interruptible), the leaderboard, compare and curves.
#include <signal.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <fstream>
#include <set>
#include <thread>

#include "helpers.hpp"
#include "lab/leaderboard.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// Two learning rates x two seeds of the tiny experiment.
const std::string kGrid = std::string(kTinyExperiment) + R"(
[grid]
"optimizer.lr" = [1e-2, 3e-3]
seeds = [0, 1]
)";

host::Experiment load(const TempDir& dir, const std::string& toml) {
    return host::load_experiment(dir.file("g.toml", toml));
}

}  // namespace

TEST_CASE("a grid expands to the cartesian product, seeds and zipped axes included", "[sweep]") {
    TempDir dir;
    auto exp = load(dir, std::string(kTinyExperiment) + R"(
[grid]
optimizer.lr = [1e-2, 3e-3, 1e-3]
seeds = [0, 1]
[grid.zip]
"model.n_layer" = [1, 2]
"model.d_model" = [16, 32]
)");
    auto points = host::expand_grid(exp);
    REQUIRE(points.size() == 3 * 2 * 2);
    // Zipped keys vary together: never n_layer 1 with d_model 32.
    int small = 0, large = 0;
    for (const auto& p : points) {
        std::map<std::string, Value> a(p.assignments.begin(), p.assignments.end());
        REQUIRE(a.size() == 4);
        if (a.at("model.n_layer").as_int() == 1) {
            CHECK(a.at("model.d_model").as_int() == 16);
            ++small;
        } else {
            CHECK(a.at("model.d_model").as_int() == 32);
            ++large;
        }
    }
    CHECK(small == 6);
    CHECK(large == 6);
    CHECK_THAT(points[0].label, Contains("seed=0"));

    // A child replaces its base's axis over the same key and keeps the others.
    dir.file("base.toml", std::string(kTinyExperiment) + "[grid]\n\"optimizer.lr\" = [1, 2, 3]\nseeds = [0, 1]\n");
    auto child =
        host::load_experiment(dir.file("child.toml", "extends = \"base.toml\"\n[grid]\n\"optimizer.lr\" = [5e-3]\n"));
    CHECK(host::expand_grid(child).size() == 2);
}

TEST_CASE("grid mistakes name the file and line", "[sweep]") {
    TempDir dir;
    CHECK_THROWS_WITH(
        load(dir, std::string(kTinyExperiment) + "[grid.zip]\n\"model.n_layer\" = [1, 2]\n\"model.d_model\" = [16]\n"),
        Contains("g.toml:") && Contains("[grid.zip] 'model.n_layer' has 2 values but 'model.d_model' has 1"));
    CHECK_THROWS_WITH(load(dir, std::string(kTinyExperiment) + "[grid]\n\"optimizer.lr\" = 3e-3\n"),
                      Contains("must be a non-empty list"));
    CHECK_THROWS_WITH(load(dir, std::string(kTinyExperiment) + "[grid]\nseeds = [0.5]\n"),
                      Contains("seeds must be integers"));
    // An unknown key in a grid is reported by the sweep with the grid's location.
    auto bad = run_plexus("sweep " +
                          dir.file("bad.toml", std::string(kTinyExperiment) + "[grid]\n\"optimizer.lrr\" = [1e-3]\n") +
                          " --db " + dir / "r.db");
    CHECK(bad.exit_code == 1);
    CHECK_THAT(bad.output,
               Contains("grid point 0") && Contains("unknown key 'optimizer.lrr'") && Contains("bad.toml:"));
}

TEST_CASE("switching a plugin in a grid keeps the keys the new plugin shares", "[sweep]") {
    TempDir dir;
    auto exp = load(dir, std::string(kTinyExperiment) + "[grid]\n\"optimizer.name\" = [\"adamw\", \"sgd\"]\n");
    auto& reg = registry();
    auto find = [&](PluginKind k, const std::string& n) { return reg.find(k, n); };
    auto points = host::expand_grid(exp);
    REQUIRE(points.size() == 2);
    auto sgd = host::apply_grid_point(exp, points[1], find);
    CHECK(sgd.settings.at("optimizer.name").value.as_string() == "sgd");
    CHECK(sgd.settings.at("optimizer.lr").value.as_double() == 1e-2);  // shared: kept
    auto cfg = host::resolve(sgd, find, [&](PluginKind k) { return reg.names(k); });
    CHECK(cfg.values.at("optimizer.lr").as_double() == 1e-2);
}

TEST_CASE("plexus run refuses a grid file without --point, and runs one point with it", "[sweep]") {
    TempDir dir;
    const auto file = dir.file("g.toml", kGrid);
    auto res = run_plexus("run " + file + " --db " + dir / "r.db");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("has a [grid] of 4 runs") && Contains("plexus sweep"));
    res = run_plexus("run " + file + " --db " + dir / "r.db" + " --point 4");
    CHECK_THAT(res.output, Contains("--point 4") && Contains("0..3"));
    res = run_plexus("run " + file + " --db " + dir / "r.db" + " --point 3 --set train.steps=5");
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(dir / "r.db");
    auto params = store.params(store.list_runs(1).at(0).id);
    CHECK(params.at("optimizer.lr") == "0.003");
    CHECK(params.at("train.seed") == "1");
}

TEST_CASE("a sweep with -j 2 records every run whole, a second sweep skips them, the leaderboard averages seeds",
          "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("g.toml", kGrid);
    auto res = run_plexus("sweep " + file + " -j 2 --db " + db + " --progress none");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("4 runs") && Contains("[4/4]") && Contains("4 finished, 0 failed"));
    host::ResultsStore store(db);
    auto sweep = store.find_sweep("g");
    REQUIRE(sweep);
    auto runs = store.sweep_runs(sweep->id);
    REQUIRE(runs.size() == 4);
    std::set<std::string> hashes;
    for (const auto& r : runs) {
        CHECK(r.status == "finished");
        hashes.insert(r.config_hash);
        CHECK(store.metric_series(r.id, "loss").size() == 60);  // every step of every run
        CHECK(store.metric_series(r.id, "eval_loss").size() == 2);
        bool has_final = false;
        for (const auto& [rank, key, value, text] : store.summaries(r.id))
            has_final |= key == "final_eval_loss" && value;
        CHECK(has_final);
    }
    CHECK(hashes.size() == 4);

    auto again = run_plexus("sweep " + file + " -j 2 --db " + db + " --progress none");
    CHECK(again.exit_code == 0);
    CHECK_THAT(again.output, Contains("4 already finished in this sweep: skipped") && Contains("nothing to run"));
    CHECK(store.sweep_runs(sweep->id).size() == 4);
    auto dry = run_plexus("sweep " + file + " --dry-run --db " + db);
    CHECK_THAT(dry.output, Contains("finished (run ") && Contains(", skip"));

    // The leaderboard's mean and sample std over the two seeds of each learning rate.
    std::map<std::string, std::vector<double>> by_lr;
    for (const auto& r : runs) {
        double v = NAN;
        for (const auto& [rank, key, value, text] : store.summaries(r.id))
            if (key == "final_eval_loss") v = *value;
        by_lr[store.params(r.id).at("optimizer.lr")].push_back(v);
    }
    std::string title;
    int unfinished = 0;
    auto board = host::make_board(store, host::runs_to_rank(store, "g", title, unfinished), {});
    REQUIRE(board.rows.size() == 2);
    CHECK(board.keys == std::vector<std::string>{"optimizer.lr"});
    for (const auto& row : board.rows) {
        const auto& v = by_lr.at(row.key_values[0]);
        REQUIRE(v.size() == 2);
        CHECK(row.n == 2);
        CHECK(row.mean == Approx((v[0] + v[1]) / 2).epsilon(1e-12));
        CHECK(row.std == Approx(std::fabs(v[0] - v[1]) / std::sqrt(2.0)).epsilon(1e-9));
    }
    CHECK(board.rows[0].mean <= board.rows[1].mean);  // best first
    auto table = run_plexus("leaderboard g --db " + db);
    CHECK_THAT(table.output, Contains("4 finished run(s) in 2 grid points") && Contains("±"));
    auto csv = run_plexus("leaderboard --db " + db + " --format csv --metric tokens_per_s --runs");
    CHECK_THAT(csv.output, Contains("rank,optimizer.lr,train.seed,tokens_per_s_mean"));
    auto md = run_plexus("leaderboard --db " + db + " --format markdown");
    CHECK_THAT(md.output, Contains("| # | optimizer.lr | final_eval_loss | n | 95% CI | runs |"));

    // compare and curves
    auto cmp = run_plexus("compare " + std::to_string(runs[0].id) + " " + std::to_string(runs[3].id) + " --db " + db);
    CHECK_THAT(cmp.output, Contains("optimizer.lr") && Contains("final_eval_loss") && Contains("(+"));
    auto curves = run_plexus("curves " + std::to_string(runs[0].id) + " --keys loss,eval_loss --db " + db);
    int lines = 0;
    for (char c : curves.output) lines += c == '\n';
    CHECK(lines == 1 + 60 + 2);
    CHECK_THAT(curves.output, Contains("run_id,key,step,tokens,wall_time,sim_time,value"));
}

TEST_CASE("the leaderboard keeps a config's newest finished run, and names a metric or curve no run has", "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", kTinyExperiment);
    REQUIRE(run_plexus("run " + file + " --db " + db + " --set train.steps=5").exit_code == 0);
    {
        // A later attempt at the same configuration, interrupted: it must not hide the finished one.
        host::ResultsStore store(db);
        auto attempt = store.get_run(1).value();
        store.finish_run(store.begin_run(attempt, {}), "interrupted", "");
        std::string title;
        int unfinished = -1;
        const auto ranked = host::runs_to_rank(store, "", title, unfinished);
        REQUIRE(ranked.size() == 1);
        CHECK(ranked[0].id == 1);
        CHECK(unfinished == 0);  // its configuration has a finished run
    }
    CHECK_THAT(run_plexus("leaderboard --db " + db).output, Contains("1 finished run(s)"));
    auto typo = run_plexus("leaderboard --db " + db + " --metric tokens_per_sec");
    CHECK(typo.exit_code == 1);
    CHECK_THAT(typo.output,
               Contains("--metric tokens_per_sec: no run here has that figure; did you mean 'tokens_per_s'"));
    typo = run_plexus("curves 1 --db " + db + " --keys eval_los");
    CHECK(typo.exit_code == 1);
    CHECK_THAT(typo.output, Contains("--keys eval_los: no such curve in these runs; did you mean 'eval_loss'"));
}

TEST_CASE("a sweep named with digits is its own, not the sweep with that id", "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const std::string one_point = std::string(kTinyExperiment) + "\n[grid]\nseeds = [0]\n";
    const std::string args = " --db " + db + " --progress none --set train.steps=3";
    REQUIRE(run_plexus("sweep " + dir.file("g.toml", one_point) + args).exit_code == 0);
    // Sweep id 1 is "g". A sweep named "1" over the same point must not take g's run as its own.
    const auto named_one = dir.file("one.toml", "name = \"1\"\n" + one_point);
    auto dry = run_plexus("sweep " + named_one + " --dry-run" + args);
    CHECK_THAT(dry.output, Contains("new") && !Contains("skip"));
    REQUIRE(run_plexus("sweep " + named_one + args).exit_code == 0);
    host::ResultsStore store(db);
    REQUIRE(store.find_sweep("1"));
    CHECK(store.find_sweep("1")->name == "1");  // the name first
    CHECK(store.find_sweep("2")->name == "1");  // then the id
    CHECK(store.find_sweep("g")->id == 1);
    CHECK(store.sweep_runs(store.find_sweep("1")->id).size() == 1);
}

TEST_CASE("a failed point is skipped on re-run unless --retry-failed", "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    // lr 1e6 diverges: the run ends "diverged", the sweep counts it failed.
    const auto file = dir.file("g.toml", std::string(kTinyExperiment) + "[grid]\n\"optimizer.lr\" = [1e-2, 1e6]\n");
    auto res =
        run_plexus("sweep " + file + " --db " + db + " --progress none --set train.steps=20 --set train.grad_clip=0.0");
    INFO(res.output);
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("diverged") && Contains("1 finished, 1 failed"));
    auto again =
        run_plexus("sweep " + file + " --db " + db + " --progress none --set train.steps=20 --set train.grad_clip=0.0");
    CHECK_THAT(again.output, Contains("1 failed before: skipped (--retry-failed"));
    auto retry = run_plexus("sweep " + file + " --db " + db +
                            " --progress none --set train.steps=20 --set train.grad_clip=0.0 --retry-failed");
    CHECK_THAT(retry.output, Contains("[1/1]"));
    host::ResultsStore store(db);
    CHECK(store.sweep_runs(store.find_sweep("g")->id).size() == 3);
}

TEST_CASE("Ctrl-C stops a sweep, marks the running run interrupted, and the next sweep resumes", "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("g.toml", kGrid);
    const std::string log = dir / "out.log";
    pid_t sweep = fork();
    if (sweep == 0) {
        setpgid(0, 0);  // its own group, as a terminal's foreground job
        freopen(log.c_str(), "w", stdout);
        dup2(fileno(stdout), STDERR_FILENO);
        execl(PLEXUS_BINARY, "plexus", "sweep", file.c_str(), "--db", db.c_str(), "--progress", "none", "--set",
              "train.steps=200", static_cast<char*>(nullptr));
        _exit(127);
    }
    setpgid(sweep, sweep);
    REQUIRE(wait_for_losses(db, 3) >= 3);
    kill(-sweep, SIGINT);  // what Ctrl-C does: the whole foreground group
    const auto ended = wait_logged(sweep, log);
    INFO(ended.output);
    CHECK(ended.exited);
    CHECK(ended.exit_code == 130);
    CHECK_THAT(ended.output, Contains("interrupted") && Contains("run the same command again to resume"));
    host::ResultsStore store(db);
    auto runs = store.sweep_runs(store.find_sweep("g")->id);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].status == "interrupted");
    CHECK(store.metric_series(runs[0].id, "loss").size() >= 3);  // its rows are kept
    // Resuming continues the interrupted point in its own run (plexus run --resume), then the rest.
    auto resumed = run_plexus("sweep " + file + " --db " + db + " --progress none --set train.steps=200");
    CHECK(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("4 finished, 0 failed"));
    auto after = store.sweep_runs(store.find_sweep("g")->id);
    REQUIRE(after.size() == 4);
    CHECK(after[0].id == runs[0].id);
    CHECK(after[0].status == "finished");
    CHECK(store.metric_series(runs[0].id, "loss").size() == 200);
}

TEST_CASE("a stopped grid point resumes after values were added to its grid, which renumbers the points", "[sweep]") {
    // Point 1 (lr 3e-3, seed 0) is stopped by Ctrl-C; a rate added in front of the axis makes it
    // point 2. Resuming finds it by the run's config hash, where the recorded number would give
    // another point's settings (and the resume would be refused).
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("g.toml", std::string(kTinyExperiment) + "[grid]\n\"optimizer.lr\" = [1e-2, 3e-3]\n");
    const std::string log = dir / "out.log";
    pid_t run = fork();
    if (run == 0) {
        setpgid(0, 0);
        freopen(log.c_str(), "w", stdout);
        dup2(fileno(stdout), STDERR_FILENO);
        execl(PLEXUS_BINARY, "plexus", "run", file.c_str(), "--point", "1", "--db", db.c_str(), "--progress", "none",
              "--set", "train.steps=200", static_cast<char*>(nullptr));
        _exit(127);
    }
    setpgid(run, run);
    REQUIRE(wait_for_losses(db, 3) >= 3);
    kill(-run, SIGINT);
    INFO(wait_logged(run, log).output);
    host::ResultsStore store(db);
    const auto stopped = store.list_runs(1).at(0);
    REQUIRE(stopped.status == "interrupted");
    dir.file("g.toml", std::string(kTinyExperiment) + "[grid]\n\"optimizer.lr\" = [3e-2, 1e-2, 3e-3]\n");
    auto resumed = run_plexus("run --resume " + std::to_string(stopped.id) + " --db " + db + " --progress none");
    INFO(resumed.output);
    CHECK(resumed.exit_code == 0);
    CHECK(store.get_run(stopped.id)->status == "finished");
    CHECK(store.get_run(stopped.id)->config_hash == stopped.config_hash);
    CHECK(store.metric_series(stopped.id, "loss").size() == 200);
    CHECK(store.params(stopped.id).at("optimizer.lr") == "0.003");
}

TEST_CASE("grid variants: named sets of settings, e.g. strategies with keys of their own", "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("v.toml", std::string(kTinyExperiment) + R"(
[launch]
mode = "sim"
ranks = 2

[grid]
seeds = [0, 1]

[grid.variant.ddp]
"strategy.name" = "ddp"

[grid.variant.local_sgd]
"strategy.name" = "diloco"
"strategy.inner_steps" = 5
"outer_optimizer.name" = "sgd"
"outer_optimizer.lr" = 1.0
)");
    auto exp = host::load_experiment(file);
    auto points = host::expand_grid(exp);
    REQUIRE(points.size() == 4);
    CHECK_THAT(points[0].label, Contains("seed=0") && Contains("variant=ddp"));
    CHECK_THAT(points[1].label, Contains("variant=local_sgd"));
    auto res = run_plexus("sweep " + file + " --db " + db + " --progress none --set train.steps=10");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("varying variant: ddp, local_sgd") && Contains("4 finished, 0 failed"));
    auto board = run_plexus("leaderboard --db " + db + " --format csv");
    // Grouped by the variant alone: strategy.name and inner_steps are the variant's own.
    CHECK_THAT(board.output, Contains("rank,variant,final_eval_loss_mean"));
    CHECK_THAT(board.output, Contains(",ddp,") && Contains(",local_sgd,"));
    CHECK_THAT(run_plexus("leaderboard --db " + db).output, !Contains("confound") && !Contains("strategy.name"));
    // The variant's name is a run setting: leaderboards group by it.
    auto by_variant = run_plexus("leaderboard --db " + db + " --format csv --group-by variant");
    INFO(by_variant.output);
    CHECK(by_variant.exit_code == 0);
    CHECK_THAT(by_variant.output, Contains("rank,variant,") && Contains(",local_sgd,") && Contains(",ddp,"));
}

TEST_CASE("named axes cross, [[grid.skip]] leaves out combinations, [grid.tune]'s seeds come first", "[sweep]") {
    TempDir dir;
    auto exp = load(dir, std::string(kTinyExperiment) + R"(
[grid]
seeds = [0, 1]

[grid.tune]
"optimizer.lr" = [1e-2, 3e-3]
seeds = [7]

[grid.workload.small]
"model.n_layer" = 1

[grid.workload.markov]
"data.branching" = 3

[grid.variant.ddp]
"strategy.name" = "ddp"

[grid.variant.gossip]
"strategy.name" = "gossip"

[[grid.skip]]
workload = "small"
variant = ["gossip"]
)");
    REQUIRE(exp.tune.keys == std::vector<std::string>{"optimizer.lr"});
    CHECK(exp.tune.seeds == std::vector<int64_t>{7});
    CHECK(exp.tune.metric == "final_eval_loss");
    const auto points = host::expand_grid(exp);
    // 3 seeds x 2 rates x 2 workloads x 2 variants = 24, less small x gossip (3 x 2) = 18.
    REQUIRE(points.size() == 18);
    int tuning = 0;
    for (const auto& p : points) {
        tuning += p.tuning ? 1 : 0;
        CHECK_FALSE((p.label.find("workload=small") != std::string::npos &&
                     p.label.find("variant=gossip") != std::string::npos));
        REQUIRE(p.choices.size() == 2);  // recorded as settings: workload = ..., variant = ...
        CHECK(p.choices[0].first == "variant");
        CHECK(p.choices[1].first == "workload");
        CHECK(p.tuning == (p.label.find("seed=7") != std::string::npos));
    }
    CHECK(tuning == 6);
    CHECK_THAT(points[0].label, Contains("seed=7"));  // the tuning seed first

    // Mistakes, with the file and line.
    auto refuse = [&](const std::string& grid, const std::string& why) {
        INFO(grid);
        CHECK_THROWS_WITH(host::expand_grid(load(dir, std::string(kTinyExperiment) + grid)), Contains(why));
    };
    refuse("[grid]\nseeds = [0, 1]\n[grid.tune]\n\"optimizer.lr\" = [1e-2]\nseeds = [1]\n",
           "seed 1 is both a tuning seed and a reported one");
    refuse("[grid.tune]\n\"optimizer.lr\" = [1e-2, 3e-3]\nseeds = [1]\n", "needs held-out seeds");
    refuse("[grid]\nseeds = [0]\n[[grid.skip]]\nvariant = \"ddp\"\n", "'variant' is not varied by the grid");
    refuse("[grid]\nseeds = [0]\n[[grid.skip]]\nseeds = [0]\n", "not varied by the grid");
    refuse("[grid.variant.a]\n\"optimizer.lr\" = 1e-2\n[[grid.skip]]\nvariant = \"a\"\n", "skips every point");
    CHECK_THROWS_WITH(load(dir, std::string(kTinyExperiment) + "[grid.optimizer.big]\n\"optimizer.lr\" = 1.0\n"),
                      Contains("[grid.optimizer] names a section") && Contains("g.toml:"));
}

TEST_CASE("a preset applies its settings before --set, and an unknown one is named", "[sweep]") {
    TempDir dir;
    auto exp = load(dir, std::string(kTinyExperiment) + R"(
[preset.quick]
name = "tiny_quick"
"train.steps" = 5
)");
    host::apply_preset(exp, "quick");
    CHECK(exp.settings.at("train.steps").value.as_int() == 5);
    CHECK(exp.settings.at("name").value.as_string() == "tiny_quick");
    CHECK_THAT(exp.settings.at("train.steps").where.str(), Contains("g.toml:"));
    CHECK_THROWS_WITH(host::apply_preset(exp, "full"), Contains("no [preset.full]") && Contains("its presets: quick"));

    const auto db = dir / "r.db";
    auto res =
        run_plexus("run " + dir.file("p.toml", std::string(kTinyExperiment) + "[preset.quick]\n\"train.steps\" = 4\n") +
                   " --quick --db " + db);
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(db);
    const auto runs = store.list_runs(1);
    REQUIRE(runs.size() == 1);
    CHECK(store.params(runs[0].id).at("train.steps") == "4");
    CHECK(store.summary_text(runs[0].id, "resume.preset") == "quick");  // --resume re-applies it
}

namespace {
// Two depths on seeds 0 and 1, three rates tuned on seed 5.
const std::string kTunedDepths = std::string(kTinyExperiment) + R"(
[grid]
seeds = [0, 1]
"model.n_layer" = [1, 2]

[grid.tune]
"optimizer.lr" = [1e-1, 1e-2, 1e-4]
seeds = [5]
)";
}  // namespace

TEST_CASE("a tuned sweep's dry run counts one reported run per group and seed, whatever the skips leave", "[sweep]") {
    TempDir dir;
    const auto file = dir.file("t.toml", kTunedDepths + R"(
[[grid.skip]]           # depth 2 is tried at one rate only (as a method with nothing to tune)
"model.n_layer" = 2
"optimizer.lr" = [1e-2, 1e-4]
)");
    auto dry = run_plexus("sweep " + file + " --db " + dir / "r.db" + " --dry-run");
    INFO(dry.output);
    // Reported points: depth 1 at 3 rates x 2 seeds, depth 2 at 1 rate x 2 seeds = 8; runs: 2 x 2.
    CHECK_THAT(dry.output, Contains("4 tuning runs on seed(s) 5, then 4 (which, known after tuning) of the 8 "));
}

TEST_CASE("a sweep with [grid.tune] runs the tuning seeds, then the others at each group's best value only",
          "[sweep]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("t.toml", kTunedDepths);
    auto dry = run_plexus("sweep " + file + " --db " + db + " --dry-run --set train.steps=20");
    INFO(dry.output);
    // 3 seeds x 2 depths x 3 rates = 18 points: 6 tuning runs, then 2 depths x 2 seeds = 4.
    CHECK_THAT(dry.output, Contains("18 runs") && Contains("6 tuning runs on seed(s) 5, then 4 (which, known after "
                                                           "tuning) of the 12 reported points"));
    auto res = run_plexus("sweep " + file + " --db " + db + " --progress none -j 2 --set train.steps=20");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("10 finished, 0 failed") && Contains("--best-over optimizer.lr --tuning-seeds 5"));
    // Per depth: the rate with the lowest eval loss on seed 5 is the only one run on seeds 0 and 1.
    host::ResultsStore store(db);
    std::map<std::string, std::pair<double, std::string>> best;  // depth -> (loss, lr) on the tuning seed
    std::map<std::string, std::set<std::string>> reported;       // depth -> rates run on seeds 0, 1
    int held_out = 0;
    for (const auto& run : store.list_runs(100)) {
        const auto p = store.params(run.id);
        const double loss = host::run_metric(store, run.id, host::BoardOptions{});
        if (p.at("train.seed") == "5") {
            auto& b = best[p.at("model.n_layer")];
            if (b.second.empty() || loss < b.first) b = {loss, p.at("optimizer.lr")};
        } else {
            reported[p.at("model.n_layer")].insert(p.at("optimizer.lr"));
            ++held_out;
        }
    }
    CHECK(held_out == 4);
    REQUIRE(best.size() == 2);
    for (const auto& [depth, choice] : best) {
        INFO("n_layer " << depth << ": best on the tuning seed " << choice.second);
        CHECK(reported[depth] == std::set<std::string>{choice.second});
        CHECK_THAT(res.output,
                   Contains("model.n_layer=" + depth + ": optimizer.lr=" + choice.second + " (3 tuning runs)"));
    }
    // The leaderboard chooses alike and reports the held-out seeds.
    auto board = run_plexus("leaderboard --db " + db + " --best-over optimizer.lr --tuning-seeds 5 --format csv");
    INFO(board.output);
    CHECK(board.exit_code == 0);
    CHECK_THAT(board.output, Contains(",2,") && !Contains("fewer than"));
    // A second sweep finds everything done; the dry run now knows the choice.
    auto again = run_plexus("sweep " + file + " --db " + db + " --progress none --set train.steps=20");
    CHECK_THAT(again.output, Contains("nothing to run"));
    auto dry2 = run_plexus("sweep " + file + " --db " + db + " --dry-run --set train.steps=20");
    CHECK_THAT(dry2.output, Contains("then 4 of the 12 reported points") && Contains("not chosen"));
}

namespace {
// AdamW tunes [grid.tune]'s rate; the learned optimizer, which has no rate, its step multiplier:
// three values each, on seed 5.
const std::string kOwnTuning = std::string(kTinyExperiment) + R"(
[grid]
seeds = [0, 1]

[grid.tune]
"optimizer.lr" = [1e-1, 1e-2, 1e-4]
seeds = [5]

[grid.variant.adamw]
"optimizer.name" = "adamw"

[grid.variant.lopt]
"optimizer.name" = "lopt"
"optimizer.weights" = ")" + std::string(PLEXUS_SOURCE_DIR) +
                               R"(/experiments/lopt/splo.weights"
[grid.variant.lopt.tune]
"optimizer.step_mult" = [1e-4, 3e-3, 3e-2]
)";
}  // namespace

TEST_CASE("a choice may tune keys of its own on [grid.tune]'s seeds, with the same budget", "[sweep]") {
    TempDir dir;
    const auto exp = load(dir, kOwnTuning);
    CHECK(exp.tune.keys == std::vector<std::string>{"optimizer.lr", "optimizer.step_mult"});
    const auto points = host::expand_grid(exp);
    REQUIRE(points.size() == 18);  // 3 seeds x 2 variants x 3 values
    for (const auto& p : points) {
        INFO(p.label);
        const bool lopt = p.label.find("variant=lopt") != std::string::npos;
        int rates = 0, mults = 0;
        for (const auto& [k, v] : p.assignments) rates += k == "optimizer.lr", mults += k == "optimizer.step_mult";
        CHECK(rates == (lopt ? 0 : 1));
        CHECK(mults == (lopt ? 1 : 0));
    }

    const auto file = dir.file("own.toml", kOwnTuning);
    const auto db = dir / "r.db";
    auto res = run_plexus("sweep " + file + " --db " + db + " --progress none -j 2 --set train.steps=20");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("10 finished, 0 failed") &&
                               Contains("--best-over optimizer.lr,optimizer.step_mult --tuning-seeds 5") &&
                               Contains("varying optimizer.step_mult (variant=lopt): 0.0001, 0.003, 0.03"));
    // Each variant's reported seeds ran at its own best value on seed 5.
    host::ResultsStore store(db);
    std::map<std::string, std::pair<double, std::string>> best;  // variant -> (loss, tuned value)
    std::map<std::string, std::set<std::string>> reported;
    for (const auto& run : store.list_runs(100)) {
        const auto p = store.params(run.id);
        const std::string variant = p.at("variant");
        const std::string value = variant == "lopt" ? p.at("optimizer.step_mult") : p.at("optimizer.lr");
        CHECK(p.count(variant == "lopt" ? "optimizer.lr" : "optimizer.step_mult") == 0);
        const double loss = host::run_metric(store, run.id, host::BoardOptions{});
        if (p.at("train.seed") == "5") {
            auto& b = best[variant];
            if (b.second.empty() || loss < b.first) b = {loss, value};
        } else {
            reported[variant].insert(value);
        }
    }
    REQUIRE(best.size() == 2);
    for (const auto& [variant, choice] : best) {
        INFO(variant << ": best on the tuning seed " << choice.second);
        CHECK(reported[variant] == std::set<std::string>{choice.second});
        const std::string key = variant == "lopt" ? "optimizer.step_mult=" : "optimizer.lr=";
        CHECK_THAT(res.output, Contains("variant=" + variant + ": " + key + choice.second + " (3 tuning runs)"));
    }
    // The leaderboard chooses alike, with equal budgets (no warning).
    auto board = run_plexus("leaderboard --db " + db +
                            " --best-over optimizer.lr,optimizer.step_mult --tuning-seeds 5 --format csv");
    INFO(board.output);
    CHECK(board.exit_code == 0);
    CHECK_THAT(board.output, Contains(",lopt,") && Contains(",adamw,") && !Contains("different tuning budgets"));

    auto refuse = [&](const std::string& grid, const std::string& why) {
        INFO(grid);
        CHECK_THROWS_WITH(load(dir, std::string(kTinyExperiment) + grid), Contains(why) && Contains("g.toml:"));
    };
    const std::string seeds = "[grid]\nseeds = [0]\n";
    refuse(seeds + "[grid.variant.a.tune]\n\"optimizer.lr\" = [1e-2]\n", "no [grid.tune] seeds");
    refuse(seeds +
               "[grid.tune]\nseeds = [5]\n[grid.variant.a]\n\"optimizer.lr\" = 1e-2\n"
               "[grid.variant.a.tune]\n\"optimizer.lr\" = [1e-2]\n",
           "both set and tuned");
    refuse(seeds + "[grid.tune]\nseeds = [5]\n[grid.variant.a.tune]\nseeds = [6]\n", "which only [grid.tune] sets");
    refuse(seeds +
               "[grid.tune]\nseeds = [5]\n[grid.variant.a.tune]\n\"optimizer.lr\" = [1e-2]\n"
               "[grid.workload.b.tune]\n\"optimizer.lr\" = [1e-2]\n",
           "both have choices with .tune lists");
    refuse(seeds + "[grid.tune]\nseeds = [5]\n", "needs the keys to tune");
}

TEST_CASE("the standard suite's quick dry run lists the points the protocol expects", "[sweep][protocol]") {
    TempDir dir;
    const std::string suite = std::string(PLEXUS_SOURCE_DIR) + "/experiments/suite/suite.toml";
    auto res = run_plexus("sweep " + suite + " --quick --dry-run --db " + dir / "s.db");
    INFO(res.output.substr(0, 2000));
    REQUIRE(res.exit_code == 0);
    // 3 workloads x 5 scenarios x 8 strategies x 3 rates x 4 seeds = 1440, less DADAO on the two
    // GPT workloads (2 x 5 x 3 x 4 = 120) and the 4 strategies that stop at a rank failure
    // (3 x 4 x 3 x 4 = 144): 1176. A quarter are tuning runs (seed 100); of the 882 reported,
    // one rate in three runs: 294.
    CHECK_THAT(res.output, Contains("sweep 'suite_quick': 1176 runs"));
    CHECK_THAT(res.output, Contains("294 tuning runs on seed(s) 100, then 294 (which, known after tuning) of the 882 "
                                    "reported points"));
    CHECK_THAT(res.output, Contains("varying workload: bytes, lsq, markov") &&
                               Contains("varying scenario: failure, fast, slow, straggler, two_sites") &&
                               Contains("varying variant: a2cid2, acco, async_sgd, dadao, ddp, diloco, gossip, zero1"));
    CHECK_THAT(res.output, !Contains("variant=dadao workload=bytes") && !Contains("scenario=failure optimizer.lr=0.1 "
                                                                                  "variant=ddp"));
    // Without --quick: the full budget, its own sweep name.
    CHECK_THAT(run_plexus("sweep " + suite + " --dry-run --db " + dir / "s.db").output,
               Contains("sweep 'suite': 1176"));
}

TEST_CASE("every shipped experiment file resolves: its dry run lists its points", "[sweep][protocol]") {
    // A shipped file that no longer resolves (a renamed key, a plugin's new check) fails here,
    // not on a researcher's first run. Meta-training files are read by `plexus meta-train`
    // (tests/test_meta.cpp), not by sweeps; the standard suite's and its Llama workload's dry runs
    // have tests of their own (above; tests/test_llama.cpp).
    TempDir dir;
    int files = 0;
    for (const auto& entry : fs::recursive_directory_iterator(std::string(PLEXUS_SOURCE_DIR) + "/experiments")) {
        const auto path = entry.path().string();
        if (entry.path().extension() != ".toml" || path.find("meta_train") != std::string::npos ||
            path.find("/suite/") != std::string::npos)
            continue;
        ++files;
        auto res = run_plexus("sweep " + path + " --dry-run --db " + dir / "d.db");
        INFO(path << "\n" << res.output.substr(0, 2000));
        CHECK(res.exit_code == 0);
        CHECK_THAT(res.output, Contains("sweep '"));
    }
    CHECK(files >= 25);  // the folder holds 27 such files: the walk found them
}
