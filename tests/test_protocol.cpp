// The evaluation protocol: schedules and budgets count the job's tokens, validation windows are
// fixed by the data, the whole split can be evaluated, and each strategy evaluates what it
// delivers (DiLoCo: its anchor).
#include <catch2/catch.hpp>
#include <cmath>

#include <plexus/kit/token_windows.hpp>

#include "helpers.hpp"
#include "lab/leaderboard.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

std::vector<std::pair<int64_t, double>> losses(const std::string& db) {
    host::ResultsStore store(db);
    return store.metric_series(store.list_runs(1).at(0).id, "loss");
}

double worst_gap(const std::vector<std::pair<int64_t, double>>& a, const std::vector<std::pair<int64_t, double>>& b) {
    REQUIRE(a.size() == b.size());
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i].second - b[i].second));
    return worst;
}

}  // namespace

TEST_CASE("one global batch split over 1, 2 or 4 ranks trains under the same warm-up and cosine schedule",
          "[protocol][distributed]") {
    // 20 steps of a global batch of 16 x 32 tokens; the warm-up lasts 5 of them (2,560 of the
    // job's tokens) whichever way the batch is split. Counted per rank, it lasted 5, 10 and 20
    // steps, and the curves parted at once.
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    const std::string common =
        " --set train.steps=20 --set train.log_every=1 --set train.eval_every=0 --set train.threads=1"
        " --set train.lr_schedule=cosine --set train.warmup_tokens=2560 ";
    auto run = [&](const std::string& name, const std::string& args) {
        const auto db = dir / (name + ".db");
        const auto r = run_recorded(file, db, common + args);
        CHECK(r["job_tokens"] == 20 * 16 * 32);
        return losses(db);
    };
    const auto single = run("single", "--set train.batch_size=16");
    const auto ddp = run("ddp",
                         "--set strategy.name=ddp --set launch.mode=local --set launch.ranks=2 "
                         "--set train.batch_size=8");
    const auto zero3 = run("zero3",
                           "--set strategy.name=zero --set strategy.stage=3 --set launch.mode=sim "
                           "--set launch.ranks=4 --set train.batch_size=4");
    REQUIRE(single.size() == 20);
    CHECK(worst_gap(ddp, single) < 1e-4);
    CHECK(worst_gap(zero3, single) < 1e-4);
    CHECK(single.back().second < single.front().second - 0.5);  // and it learned
}

TEST_CASE("train.tokens is the job's budget: 2 ranks stop at the tokens 1 rank with their global batch does",
          "[protocol]") {
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    const std::string budget = " --set train.steps=0 --set train.tokens=8192 --set train.eval_every=0 ";
    const auto one = run_recorded(file, dir / "a.db", budget + "--set train.batch_size=16");
    const auto two = run_recorded(file, dir / "b.db",
                                  budget +
                                      "--set train.batch_size=8 --set strategy.name=ddp --set launch.mode=sim "
                                      "--set launch.ranks=2");
    CHECK(one["steps"] == 16);  // 8192 / (16 x 32)
    CHECK(two["steps"] == 16);
    CHECK(two["job_tokens"] == 8192);
    CHECK(two["tokens"] == 4096);  // per data-parallel rank: the curves' axis
}

TEST_CASE("train.stop_at_loss ends a run, on every rank, at the log point after an evaluation reaches it",
          "[protocol][sim]") {
    // Gradient descent on a least-squares problem: the relative suboptimality falls steadily.
    TempDir dir;
    const auto file = dir.file("gd.toml", R"(
[model]
name = "least_squares"
rows = 32
dim = 8
condition = 10.0
signal = 1.0
design = "orthogonal"
relative = true
[data]
name = "synthetic"
vocab_size = 32
[optimizer]
name = "sgd"
lr = 1.0
[strategy]
name = "ddp"
[launch]
mode = "sim"
ranks = 4
[train]
steps = 300
batch_size = 1
seq_len = 8
lr_schedule = "constant"
grad_clip = 0.0
eval_every = 5
eval_batches = 1
log_every = 5
[results]
progress = "none"
)");
    const auto db = dir / "r.db";
    const auto whole = run_recorded(file, db, "");
    host::ResultsStore store(db);
    int64_t first = -1;  // the first evaluation at or below 1e-6, as a step count
    for (const auto& [step, loss] : store.metric_series(whole.id, "eval_loss"))
        if (first < 0 && loss <= 1e-6) first = step + 1;
    REQUIRE(first > 0);
    REQUIRE(first < 250);
    const auto stopped = run_recorded(file, db, "--set train.stop_at_loss=1e-6");
    INFO("reached at step " << first << ", stopped after " << stopped["steps"]);
    CHECK(stopped["steps"] >= first);
    CHECK(stopped["steps"] <= first + 10);  // a log point at least max(log_every, ranks) on, at most
    CHECK(stopped["final_eval_loss"] <= 1e-6);
    CHECK(store.get_run(stopped.id)->status == "finished");
    CHECK(whole["steps"] == 300);
}

TEST_CASE("validation windows are fixed by the data: runs with other seeds read the same windows", "[protocol]") {
    // The run records a digest of the validation batches one evaluation reads. Two seeds (other
    // initializations, other training batches) read the same ones; other data reads others.
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    const std::string args = " --set train.steps=1 --set train.eval_every=0 ";
    const auto a = run_recorded(file, dir / "a.db", args + "--set train.seed=0");
    const auto b = run_recorded(file, dir / "b.db", args + "--set train.seed=7");
    CHECK(!a.text.at("eval_windows").empty());
    CHECK(a.text.at("eval_windows") == b.text.at("eval_windows"));
    CHECK(a["final_eval_loss"] != b["final_eval_loss"]);  // the models differ
    const auto c = run_recorded(file, dir / "c.db", args + "--set train.seed=7 --set data.val_tokens=6000");
    CHECK(c.text.at("eval_windows") != a.text.at("eval_windows"));
}

TEST_CASE("eval_batches = 0 evaluates the whole validation split, in order", "[protocol]") {
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    // 5,000 validation tokens in windows of 32 (stride 32): 156 windows, 19 full batches of 8.
    const auto r =
        run_recorded(file, dir / "r.db", " --set train.steps=2 --set train.eval_every=0 --set train.eval_batches=0");
    CHECK(r["eval_batches"] == 19);
    CHECK(std::isfinite(r["final_eval_loss"]));
    // A split too small for one batch (100 tokens: 3 windows of 32, a batch is 8) is refused.
    TempDir other;
    const auto small = run_plexus("run " + other.file("e.toml", std::string(kTinyExperiment)) + " --db " +
                                  other / "r.db" + " --set train.eval_batches=0 --set data.val_tokens=100");
    CHECK(small.exit_code != 0);
    CHECK_THAT(small.output, Contains("train.eval_batches = 0") && Contains("less than one batch"));
}

TEST_CASE("a sequential stream reads every window of its split once, in order, and knows its length",
          "[protocol][data]") {
    // 103 tokens 0, 1, 2, ...: windows of 10 (+1 for the targets) at stride 10: 10 windows,
    // 2 full batches of 4 on one shard; on 2 shards each reads its rows of the global batch of 8.
    std::vector<uint16_t> ids;
    for (uint16_t t = 0; t < 103; ++t) ids.push_back(t);
    const auto tokens = TokenSequence::of(ids);
    StreamSpec spec{Split::Validation, 4, 10, 0, 1, 99};
    spec.sequential = true;
    TokenWindowStream one(tokens, spec);
    REQUIRE(one.length() == 2);
    for (int64_t b = 0; b < 2; ++b) {
        const auto batch = one.next();
        for (int64_t row = 0; row < 4; ++row) {
            const int64_t first = (b * 4 + row) * 10;
            CHECK(batch.inputs[row][0].item<int64_t>() == first);
            CHECK(batch.inputs[row][9].item<int64_t>() == first + 9);
            CHECK(batch.targets[row][9].item<int64_t>() == first + 10);
        }
    }
    CHECK_THROWS_WITH(one.next(), Contains("read past its end"));
    one.seek(0);
    CHECK(one.next().inputs[0][0].item<int64_t>() == 0);
    spec.world_size = 2;
    spec.rank = 1;
    TokenWindowStream shard(tokens, spec);
    CHECK(shard.length() == 1);
    CHECK(shard.next().inputs[0][0].item<int64_t>() == 40);  // row 4 of the global batch
    spec.sequential = false;
    CHECK(TokenWindowStream(tokens, spec).length() == -1);
}

TEST_CASE("partition = by_rank: each shard draws its training windows from its own slice", "[protocol][data]") {
    // 1,000 tokens 0, 1, 2, ... (mod 2^16): a window's first token is its start.
    std::vector<uint16_t> ids;
    for (uint16_t t = 0; t < 1000; ++t) ids.push_back(t);
    const auto tokens = TokenSequence::of(ids);
    StreamSpec spec{Split::Train, 8, 10, 0, 4, 7};
    bool shared_crosses = false;
    for (int rank = 0; rank < 4; ++rank) {
        spec.rank = rank;
        TokenWindowStream own(tokens, spec, /*by_rank=*/true), shared(tokens, spec);
        int64_t lowest = 1000, highest = -1;
        for (int b = 0; b < 50; ++b) {
            const auto starts = own.next().inputs.select(1, 0);
            lowest = std::min(lowest, starts.min().item<int64_t>());
            highest = std::max(highest, starts.max().item<int64_t>());
            const auto other = shared.next().inputs.select(1, 0);
            shared_crosses = shared_crosses || (other < 250 * rank).any().item<bool>() ||
                             (other >= 250 * (rank + 1)).any().item<bool>();
        }
        INFO("rank " << rank << ": starts " << lowest << " to " << highest);
        CHECK(lowest >= 250 * rank);
        CHECK(highest + 10 < 250 * (rank + 1));  // the window and its target stay inside
        CHECK(highest - lowest > 150);           // and spread over the slice
    }
    CHECK(shared_crosses);  // without it the shards share the split
    // Sequential streams (evaluation) read the whole split whatever the partition.
    spec.sequential = true;
    spec.rank = 1;
    CHECK(TokenWindowStream(tokens, spec, true).next().inputs[0][0].item<int64_t>() == 80);
    // A slice too small for one window is refused, naming the setting.
    spec.sequential = false;
    spec.world_size = 200;
    CHECK_THROWS_WITH(TokenWindowStream(tokens, spec, true), Contains("data.partition"));
}

TEST_CASE("DiLoCo evaluates its anchor, the model it delivers, not a replica past it", "[protocol][baselines]") {
    // Local SGD (outer SGD, lr 1) syncs every 5 inner steps; 7 steps leave the replicas 2 steps
    // past the anchor of step 5. Evaluated at the anchor, step 7's loss is step 5's.
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    const std::string args =
        " --set strategy.name=diloco --set strategy.inner_steps=5 --set outer_optimizer.name=sgd"
        " --set outer_optimizer.lr=1.0 --set outer_optimizer.momentum=0.0 --set launch.mode=sim --set launch.ranks=2"
        " --set train.lr_schedule=constant --set train.eval_every=0 --set train.batch_size=4 ";
    const auto five = run_recorded(file, dir / "a.db", args + "--set train.steps=5");
    const auto seven = run_recorded(file, dir / "b.db", args + "--set train.steps=7");
    CHECK(seven["final_eval_loss"] == five["final_eval_loss"]);
    CHECK(seven["final_loss"] != five["final_loss"]);  // the replicas did move on
}

namespace {

// A database of finished runs with given settings and summaries, for the leaderboard's sums.
struct FakeRuns {
    TempDir dir;
    host::ResultsStore store{dir / "r.db"};
    int64_t add(const std::map<std::string, Value>& params, double final_eval_loss,
                const std::vector<std::pair<int64_t, double>>& eval_curve = {}) {
        host::RunInfo info;
        info.name = "fake";
        info.config_hash = "h" + std::to_string(++count_);
        const int64_t id = store.begin_run(info, params);
        store.set_summary(id, 0, "final_eval_loss", final_eval_loss);
        std::vector<host::MetricRow> rows;
        for (const auto& [tokens, loss] : eval_curve) rows.push_back({0, "eval_loss", tokens, loss, tokens, 1.0, {}});
        if (!rows.empty()) store.add_metrics(id, rows);
        store.finish_run(id, "finished", "");
        return id;
    }
    std::vector<host::RunInfo> runs() {
        auto all = store.list_runs(100);
        std::reverse(all.begin(), all.end());
        return all;
    }
    int count_ = 0;
};

std::map<std::string, Value> settings(const std::string& variant, int64_t seed, double clip = 1.0) {
    return {{"variant", Value(variant)}, {"train.seed", Value(seed)}, {"train.grad_clip", Value(clip)}};
}

const host::BoardRow& row_of(const host::Board& b, const std::string& variant) {
    for (const auto& r : b.rows)
        if (r.key_values.at(0) == variant) return r;
    FAIL("no row " << variant);
    return b.rows.front();
}

}  // namespace

TEST_CASE("leaderboard statistics: n, mean, std, the 95% t interval and paired differences, as by hand",
          "[protocol][results]") {
    FakeRuns db;
    const double a[] = {1.0, 1.2, 1.1}, b[] = {0.9, 1.0, 1.05};
    for (int64_t seed = 0; seed < 3; ++seed) {
        db.add(settings("a", seed), a[seed]);
        db.add(settings("b", seed), b[seed]);
    }
    host::BoardOptions o;
    o.baseline = "variant=a";
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 2);
    CHECK(board.rows[0].key_values[0] == "b");  // lower is better
    const auto& ra = row_of(board, "a");
    const auto& rb = row_of(board, "b");
    // By hand: t(0.975, 2) = 4.302653; half width t s / sqrt(3).
    CHECK(ra.n == 3);
    CHECK(ra.mean == Approx(1.1).epsilon(1e-12));
    CHECK(ra.std == Approx(0.1).epsilon(1e-9));
    CHECK(ra.lo == Approx(0.8515862288).epsilon(1e-9));
    CHECK(ra.hi == Approx(1.3484137712).epsilon(1e-9));
    CHECK(rb.lo == Approx(0.7936041816).epsilon(1e-9));
    // b - a paired by seed: -0.1, -0.2, -0.05.
    CHECK(rb.pairs == 3);
    CHECK(rb.diff == Approx(-0.1166666667).epsilon(1e-9));
    CHECK(rb.diff_lo == Approx(-0.3063958184).epsilon(1e-9));
    CHECK(rb.diff_hi == Approx(0.0730624850).epsilon(1e-9));
    CHECK(ra.diff == 0);
    // The interval holds 0: marked in the table; no warning of few seeds with 3 each.
    const auto table = host::format_board(board, "table");
    CHECK_THAT(table, Contains("-0.1167 [-0.3064, 0.0731] ~") && Contains("95% CI") && Contains("[0.8516, 1.3484]"));
    CHECK_THAT(table, !Contains("fewer than 3 seeds"));
    const auto csv = host::format_board(board, "csv");
    CHECK_THAT(csv, Contains("ci_low,ci_high,censored,diff_mean,diff_low,diff_high,pairs"));
    // Two seeds are not enough to claim anything: said.
    FakeRuns two;
    two.add(settings("a", 0), 1.0);
    two.add(settings("a", 1), 1.1);
    CHECK_THAT(host::format_board(host::make_board(two.store, two.runs(), {}), "table"),
               Contains("fewer than 3 seeds"));
}

TEST_CASE("paired differences pair each group with the baseline of its own workload", "[protocol][results]") {
    // Two workloads on different scales; b - a is -0.1 on both, never the gap between workloads.
    FakeRuns db;
    for (int64_t seed = 0; seed < 3; ++seed)
        for (const auto& [workload, scale] : {std::pair<std::string, double>{"text", 3.0}, {"convex", 0.01}}) {
            auto p = [&](const std::string& v) {
                auto s = settings(v, seed);
                s["workload"] = Value(workload);
                return s;
            };
            db.add(p("a"), scale + 0.01 * static_cast<double>(seed));
            db.add(p("b"), scale - 0.1 + 0.02 * static_cast<double>(seed));
        }
    host::BoardOptions o;
    o.baseline = "variant=a";
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 4);
    for (const auto& r : board.rows) {
        INFO(r.key_values[0] << " " << r.key_values[1]);
        CHECK(r.pairs == 3);
        CHECK(r.diff == Approx(r.key_values[0] == "b" ? -0.09 : 0.0).margin(1e-12));
    }
}

TEST_CASE("tokens_to interpolates between evaluations, and a run that never gets there is censored, counted",
          "[protocol][results]") {
    FakeRuns db;
    db.add(settings("a", 0), 2.0, {{100, 3.0}, {200, 2.0}});  // crosses 2.5 half way: 150
    db.add(settings("a", 1), 2.0, {{100, 2.5}, {200, 2.0}});  // at 2.5 on an evaluation: 100
    db.add(settings("a", 2), 2.9, {{100, 3.0}, {200, 2.9}});  // never: censored
    host::BoardOptions o;
    o.metric = "tokens_to";
    o.target = 2.5;
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 1);
    const auto& r = board.rows[0];
    CHECK(r.values[0] == Approx(150));
    CHECK(r.values[1] == Approx(100));
    CHECK(std::isinf(r.values[2]));
    CHECK(r.n == 2);
    CHECK(r.censored == 1);
    CHECK(r.mean == Approx(125));
    CHECK_THAT(host::format_board(board, "table"), Contains("(+1 > budget)"));
}

TEST_CASE("without --target, tokens_to reads each run's results.target_loss: one target per workload",
          "[protocol][results]") {
    FakeRuns db;
    auto with_target = [](const std::string& workload, double target) {
        auto p = settings("a", 0);
        p["workload"] = Value(workload);
        p["results.target_loss"] = Value(target);
        return p;
    };
    db.add(with_target("text", 2.5), 2.0, {{100, 3.0}, {200, 2.0}});     // 2.5 half way: 150
    db.add(with_target("convex", 0.1), 0.0, {{100, 0.3}, {200, 0.05}});  // 0.1 at 0.2 / 0.25 of the way: 180
    host::BoardOptions o;
    o.metric = "tokens_to";
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 2);
    for (const auto& row : board.rows) CHECK(row.values.at(0) == Approx(row.key_values.at(0) == "text" ? 150 : 180));
    CHECK_THAT(board.metric_label, Contains("results.target_loss"));
    // A run without one, and no --target: said, with the way out.
    FakeRuns bare;
    bare.add(settings("a", 0), 2.0, {{100, 3.0}});
    CHECK_THROWS_WITH(host::make_board(bare.store, bare.runs(), o),
                      Contains("needs --target LOSS") && Contains("results.target_loss"));
}

TEST_CASE("the leaderboard flags settings the compared groups differ in besides the grouping", "[protocol][results]") {
    FakeRuns db;
    for (int64_t seed = 0; seed < 3; ++seed) {
        db.add(settings("a", seed, 1.0), 1.0 + 0.01 * seed);
        db.add(settings("b", seed, 0.0), 1.1 + 0.01 * seed);
    }
    const auto board = host::make_board(db.store, db.runs(), {});
    const auto text = host::format_board(board, "table");
    CHECK_THAT(text, Contains("the groups differ in train.grad_clip: gradient clipping is not the same for all"));
    // Grouped by something else, the clipping differs inside a group: a confound.
    host::BoardOptions by_seed;
    by_seed.group_by = {"train.seed"};
    CHECK_THAT(host::format_board(host::make_board(db.store, db.runs(), by_seed), "table"),
               Contains("runs within a group differ in train.grad_clip (not a grouping key): a confound"));
}

TEST_CASE("best-over chooses each method's setting on the tuning seeds and reports it on the others",
          "[protocol][results]") {
    FakeRuns db;
    auto add = [&](const std::string& method, double lr, int64_t seed, double loss) {
        auto p = settings(method, seed);
        p["optimizer.lr"] = Value(lr);
        db.add(p, loss);
    };
    // Method a: lr 0.1 is best on seeds 0 and 1, lr 0.01 would be best on seeds 2 and 3.
    for (int64_t seed : {0, 1}) add("a", 0.1, seed, 1.0), add("a", 0.01, seed, 1.5);
    for (int64_t seed : {2, 3}) add("a", 0.1, seed, 2.0), add("a", 0.01, seed, 0.5);
    // Method b: one setting, so half the tuning runs.
    for (int64_t seed : {0, 1, 2, 3}) add("b", 0.1, seed, 1.2);
    host::BoardOptions o;
    o.best_over = {"optimizer.lr"};
    o.tuning_seeds = {"0", "1"};
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 2);
    const auto& a = row_of(board, "a");
    CHECK(a.tuned == "optimizer.lr=0.1");  // chosen on the tuning seeds, not on the held-out ones
    CHECK(a.trials == 4);
    CHECK(a.n == 2);  // the held-out seeds only
    CHECK(a.mean == Approx(2.0));
    CHECK(row_of(board, "b").trials == 2);
    const auto text = host::format_board(board, "table");
    CHECK_THAT(text, Contains("tuned on seeds 0,1 (runs)") && Contains("optimizer.lr=0.1 (4)"));
    CHECK_THAT(text, Contains("different tuning budgets"));
    CHECK_THAT(text, !Contains("optimizer.lr (not a grouping key)"));
    host::BoardOptions missing;
    missing.best_over = {"optimizer.lr"};
    CHECK_THROWS_WITH(host::make_board(db.store, db.runs(), missing), Contains("--tuning-seeds"));
}

TEST_CASE(
    "best-over by tokens_to: where no tuning run reaches the target, the final loss chooses and --runs lists them",
    "[protocol][results]") {
    FakeRuns db;
    auto add = [&](double lr, int64_t seed, std::vector<std::pair<int64_t, double>> curve) {
        auto p = settings("a", seed);
        p["optimizer.lr"] = Value(lr);
        db.add(p, curve.back().second, curve);
    };
    add(0.1, 9, {{100, 3.0}, {200, 2.7}});  // neither rate reaches 2.5 on the tuning seed;
    add(0.3, 9, {{100, 3.0}, {200, 2.6}});  // 0.3 ends lower
    add(0.3, 0, {{100, 3.0}, {200, 2.0}});  // 150
    add(0.3, 1, {{100, 2.5}, {200, 2.0}});  // 100
    add(0.1, 0, {{100, 2.0}, {200, 2.0}});  // 100, not chosen
    host::BoardOptions o;
    o.metric = o.tune_metric = "tokens_to";
    o.target = 2.5;
    o.best_over = {"optimizer.lr"};
    o.tuning_seeds = {"9"};
    const auto board = host::make_board(db.store, db.runs(), o);
    REQUIRE(board.rows.size() == 1);
    CHECK(board.rows[0].tuned == "optimizer.lr=0.3");
    CHECK(board.rows[0].mean == Approx(125));
    CHECK_THAT(host::format_board(board, "table"),
               Contains("no tuning run reached the target; optimizer.lr=0.3 was chosen by final_eval_loss"));
    o.per_run = true;  // one row per held-out run of the chosen setting
    const auto runs = host::make_board(db.store, db.runs(), o);
    REQUIRE(runs.rows.size() == 2);
    for (const auto& r : runs.rows) CHECK(r.tuned == "optimizer.lr=0.3");
}

TEST_CASE("a performance profile with --best-over compares each method at its chosen setting, held-out seeds",
          "[protocol][results]") {
    // Method A: lr 1 wins on the tuning seed 9 (time 10 against 30) and takes 12 on seeds 0, 1;
    // at lr 2 it would take 4 there. Method B (one rate) takes 6. Chosen A: 12, ratio 2.
    FakeRuns db;
    auto add = [&](const std::string& method, double lr, int64_t seed, double t) {
        auto p = settings(method, seed);
        p["optimizer.lr"] = Value(lr);
        db.add(p, 2.0, {{0, 3.0}, {static_cast<int64_t>(2 * t), 2.0}});
    };
    add("A", 1.0, 9, 10), add("A", 2.0, 9, 30), add("B", 1.0, 9, 6);
    for (int64_t seed : {0, 1}) add("A", 1.0, seed, 12), add("A", 2.0, seed, 4), add("B", 1.0, seed, 6);
    host::BoardOptions o;
    o.metric = "tokens_to";
    o.target = 2.5;
    o.best_over = {"optimizer.lr"};
    o.tuning_seeds = {"9"};
    const auto p = host::make_profile(db.store, db.runs(), o, "variant");
    REQUIRE(p.problems.size() == 1);
    REQUIRE(p.methods == std::vector<std::string>({"A", "B"}));
    CHECK(p.ratio[0][0] == Approx(2.0));
    CHECK(p.ratio[1][0] == Approx(1.0));
}

TEST_CASE("performance profiles: the share of problems each method solves within tau of the best, by hand",
          "[protocol][results]") {
    // Methods A and B on two problems (a setting "scenario"), two seeds each. Times to target:
    // A 10 and 20, B 15 and 10 (means over seeds). Ratios: A 1 and 2, B 1.5 and 1.
    FakeRuns db;
    auto add = [&](const std::string& method, const std::string& scenario, int64_t seed, double t) {
        auto p = settings(method, seed);
        p["scenario"] = Value(scenario);
        p["strategy.name"] = Value(method == "A" ? "ddp" : "gossip");    // the method's own: not a problem
        db.add(p, 2.0, {{0, 3.0}, {static_cast<int64_t>(2 * t), 2.0}});  // crosses 2.5 at t
    };
    for (int64_t seed : {0, 1}) {
        add("A", "p1", seed, seed ? 9 : 11), add("A", "p2", seed, 20);
        add("B", "p1", seed, 15), add("B", "p2", seed, 10);
    }
    add("B", "p3", 0, 5);  // a problem only B ran: A's ratio there is infinite
    host::BoardOptions o;
    o.metric = "tokens_to";
    o.target = 2.5;
    const auto p = host::make_profile(db.store, db.runs(), o, "variant");
    REQUIRE(p.methods == std::vector<std::string>({"A", "B"}));
    REQUIRE(p.problems.size() == 3);
    CHECK(p.ratio[0][0] == Approx(1.0));
    CHECK(p.ratio[0][1] == Approx(2.0));
    CHECK(std::isinf(p.ratio[0][2]));
    CHECK(p.ratio[1][0] == Approx(1.5));
    CHECK(p.ratio[1][1] == Approx(1.0));
    CHECK(p.ratio[1][2] == Approx(1.0));
    auto rho = [&](size_t m, double tau) {
        for (size_t t = 0; t < p.taus.size(); ++t)
            if (p.taus[t] == tau) return p.rho[m][t];
        FAIL("no tau " << tau);
        return 0.0;
    };
    CHECK(rho(0, 1.0) == Approx(1.0 / 3));
    CHECK(rho(0, 2.0) == Approx(2.0 / 3));
    CHECK(rho(1, 1.0) == Approx(2.0 / 3));
    CHECK(rho(1, 1.5) == Approx(1.0));
    CHECK_THAT(host::format_profile(p, "csv"), Contains("A,2,0.6667"));
    host::BoardOptions higher;
    higher.metric = "tokens_per_s";
    CHECK_THROWS_WITH(host::make_profile(db.store, db.runs(), higher, "variant"), Contains("lower is better"));
}
