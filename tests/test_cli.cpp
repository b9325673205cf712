// End to end: the plexus binary on real experiment files, and every kind of bad input.
#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {
const std::string kTestPlugins = PLEXUS_TEST_PLUGIN_DIR;

// A finished run to prove that later failures leave earlier rows alone.
int64_t record_a_good_run(const TempDir& dir, const std::string& db) {
    auto r = run_plexus("run " + dir.file("good.toml", kTinyExperiment) + " --db " + db + " --set train.steps=5");
    REQUIRE(r.exit_code == 0);
    host::ResultsStore store(db);
    return store.list_runs(1).at(0).id;
}

void check_good_run_intact(const std::string& db, int64_t id) {
    host::ResultsStore store(db);
    auto run = store.get_run(id);
    REQUIRE(run);
    CHECK(run->status == "finished");
    CHECK(store.metric_series(id, "loss").size() == 5);
}
}  // namespace

TEST_CASE("a short run learns, and its rows are in the database", "[e2e]") {
    TempDir dir;
    const auto db = dir / "r.db";
    auto r = run_plexus("run " + dir.file("tiny.toml", kTinyExperiment) + " --db " + db + " --progress lines");
    INFO(r.output);
    REQUIRE(r.exit_code == 0);
    CHECK_THAT(r.output, Contains("step     60"));
    CHECK_THAT(r.output, Contains("tok/s"));
    CHECK_THAT(r.output, Contains("MFU"));

    host::ResultsStore store(db);
    auto runs = store.list_runs(10);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].status == "finished");
    CHECK(runs[0].name == "tiny");
    auto loss = store.metric_series(runs[0].id, "loss");
    REQUIRE(loss.size() == 60);
    // The chain has 32 tokens with 2 successors each: loss starts near ln 32 = 3.47 and the
    // structure is learnable to below 1.5 nats; 60 steps take it at least 1.2 nats down.
    CHECK(loss.front().second > 3.0);
    auto eval = store.metric_series(runs[0].id, "eval_loss");
    REQUIRE(eval.size() == 2);  // at steps 30 and 60
    CHECK(eval.back().second < loss.front().second - 1.2);
    CHECK(store.metric_series(runs[0].id, "tokens_per_s").size() == 6);
    double mfu = NAN, peak = NAN;
    for (const auto& [rank, key, value, text] : store.summaries(runs[0].id)) {
        if (key == "mfu") mfu = *value;
        if (key == "peak_flops") peak = *value;
    }
    CHECK(peak == 1e11);
    CHECK(mfu > 0);
    CHECK(mfu < 1);
    CHECK(store.params(runs[0].id).at("model.d_model") == "32");

    auto shown = run_plexus("show " + std::to_string(runs[0].id) + " --db " + db);
    CHECK(shown.exit_code == 0);
    CHECK_THAT(shown.output, Contains("final_eval_loss"));
    auto listed = run_plexus("runs --db " + db);
    CHECK_THAT(listed.output, Contains("tiny"));
}

TEST_CASE("the same config and seed give the same loss curve", "[e2e]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("tiny.toml", kTinyExperiment);
    for (const char* seed : {"1", "1", "2"})
        REQUIRE(
            run_plexus("run " + file + " --db " + db + " --set train.steps=12 --set train.seed=" + seed).exit_code ==
            0);
    host::ResultsStore store(db);
    auto runs = store.list_runs(3);  // newest first
    auto a = store.metric_series(runs[2].id, "loss"), b = store.metric_series(runs[1].id, "loss"),
         c = store.metric_series(runs[0].id, "loss");
    REQUIRE(a.size() == 12);
    CHECK(a == b);
    CHECK(a != c);
    CHECK(runs[2].config_hash == runs[1].config_hash);
    CHECK(runs[2].config_hash != runs[0].config_hash);
}

TEST_CASE("bad experiment files fail with a location and a non-zero exit", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const int64_t good = record_a_good_run(dir, db);

    auto malformed = run_plexus("run " + dir.file("bad.toml", "[model]\nname = \"gpt\nn_layer = 2\n") + " --db " + db);
    CHECK(malformed.exit_code == 1);
    CHECK_THAT(malformed.output, Contains("bad.toml:2:"));

    auto typo = run_plexus(
        "run " +
        dir.file("typo.toml", std::string(kTinyExperiment) + "\n[strategy]\nname = \"single\"\naccumulat = 2\n") +
        " --db " + db);
    CHECK(typo.exit_code == 1);
    CHECK_THAT(typo.output, Contains("typo.toml:"));
    CHECK_THAT(typo.output, Contains("did you mean 'accumulate'"));

    auto unknown = run_plexus("run " + dir.file("u.toml", "[model]\nname = \"gtp2\"\n[data]\nname = \"synthetic\"\n") +
                              " --db " + db);
    CHECK(unknown.exit_code == 1);
    CHECK_THAT(unknown.output, Contains("no model plugin named 'gtp2'"));
    CHECK_THAT(unknown.output, Contains("did you mean 'gpt'"));

    CHECK(run_plexus("run " + (dir / "nope.toml") + " --db " + db).exit_code == 1);
    CHECK(run_plexus("run").exit_code == 2);
    CHECK(run_plexus("frobnicate").exit_code == 2);
    check_good_run_intact(db, good);
    host::ResultsStore store(db);
    CHECK(store.list_runs(10).size() == 1);  // config errors create no run
}

TEST_CASE("numbers on the command line that do not parse, or are out of range, are usage errors", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", kTinyExperiment);
    // Each of these ended in std::terminate (a number too large for stoll/stoi) or a bare "stoll".
    for (const std::string& args : std::vector<std::string>{
             "compare 1 99999999999999999999 --db " + db, "curves 99999999999999999999 --db " + db,
             "show 99999999999999999999 --db " + db, "runs --limit abc --db " + db, "runs --limit 0 --db " + db,
             "run " + file + " --point 99999999999 --db " + db, "run --resume 99999999999999999999 --db " + db,
             "sweep " + file + " -j 99999999999 --dry-run", "sweep " + file + " -jx --dry-run",
             "meta-train " + file + " --iterations 99999999999999999999999", "bench peak --threads abc",
             "bench peak extra", "bench network --ranks abc"}) {
        INFO(args);
        const auto res = run_plexus(args);
        CHECK(res.exit_code == 2);
        CHECK_THAT(res.output, Contains("plexus --help"));
        CHECK_THAT(res.output, !Contains("terminate") && !Contains("stoll") && !Contains("stoi"));
    }
}

TEST_CASE("a flag given an empty value is a usage error, not the default", "[e2e][bad-input]") {
    TempDir dir;
    const auto file = dir.file("e.toml", kTinyExperiment);
    // `--db "$DB"` with DB unset: before, the run went into results/plexus.db of the current folder.
    for (const std::string& args :
         std::vector<std::string>{"run " + file + " --db ''", "run " + file + " --db=", "leaderboard --db ''",
                                  "sweep " + file + " -j '' --dry-run", "run " + file + " --set ''"}) {
        INFO(args);
        const auto res = run_command("cd " + dir.path.string() + " && " + PLEXUS_BINARY + " " + args);
        CHECK(res.exit_code == 2);
        CHECK_THAT(res.output, Contains("was given an empty value"));
        CHECK_THAT(res.output, !Contains("terminate"));
    }
    CHECK(!fs::exists(dir / "results"));
}

TEST_CASE("[train], [launch] and optimizer values out of range are refused, naming the key", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", kTinyExperiment);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"train.grad_clip=-1", "train.grad_clip = -1.0 must be >= 0"},
        {"train.min_lr_ratio=5", "train.min_lr_ratio = 5.0 must lie in [0, 1]"},
        {"train.warmup_tokens=-100", "train.warmup_tokens = -100 must be >= 0"},
        {"train.steps=-5", "train.steps = -5 must be >= 0"},
        {"train.eval_every=-1", "train.eval_every = -1 must be >= 0"},
        {"launch.mode=sim --set launch.ranks=100000", "at most 16384"},
        {"launch.mode=local --set launch.ranks=1000", "at most 256"}};
    for (const auto& [set, message] : cases) {
        INFO(set);
        const auto res = run_plexus("run " + file + " --db " + db + " --set " + set);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains(message));
    }
    // A learning rate that is not a finite number >= 0 names the key (nan and inf, like any
    // non-finite number in any key, before the plugin sees them).
    for (const std::string lr : {"-1", "nan", "inf"}) {
        const auto res = run_plexus("run " + file + " --db " + db + " --set optimizer.lr=" + lr);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains(lr == "-1" ? "optimizer.lr: must be a finite number >= 0"
                                                   : "optimizer.lr = " + lr + ": a setting's numbers must be finite"));
    }
    // A sequence longer than the data is the dataset's clear message, without a C++ backtrace.
    const auto res = run_plexus("run " + file + " --db " + db + " --set train.seq_len=100000");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("fewer than seq_len + 2 (100002)") && !Contains("frame #"));
    host::ResultsStore store(db);
    for (const auto& run : store.list_runs(50)) CHECK_THAT(run.error, !Contains("frame #"));
}

TEST_CASE("reading commands need an existing plexus database, and no command writes into another program's",
          "[e2e][bad-input]") {
    TempDir dir;
    // A mistyped --db: an error naming it, and no folder or empty database left behind.
    for (const std::string command : {"runs", "show 1", "compare 1 2", "curves 1", "leaderboard", "run --resume 1"}) {
        INFO(command);
        const auto res = run_plexus(command + " --db " + dir / "typo/r.db");
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains("no results database at " + dir / "typo/r.db"));
        CHECK(!std::filesystem::exists(dir / "typo"));
    }
    // Another program's SQLite file: refused by reading and recording commands alike, untouched.
    const auto foreign = dir / "notes.db";
    REQUIRE(sql_rows(foreign, "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine')").empty());
    for (const std::string command :
         {"runs --db " + foreign, "run " + dir.file("e.toml", kTinyExperiment) + " --db " + foreign}) {
        INFO(command);
        const auto res = run_plexus(command);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains("not plexus's results (its tables: notes)"));
    }
    CHECK(sql_rows(foreign, "SELECT name FROM sqlite_master") == "notes\n");
    CHECK(sql_rows(foreign, "SELECT text FROM notes") == "mine\n");
}

TEST_CASE("report -o a folder, an unwritable checkpoint folder and `run -h` say what to do", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    record_a_good_run(dir, db);
    auto res = run_plexus("report --db " + db + " -o " + dir.path.string());
    CHECK(res.exit_code == 2);
    CHECK_THAT(res.output, Contains("is a folder: name the page's file"));
    CHECK(!std::filesystem::exists(dir.path.string() + ".tmp"));
    // A checkpoint folder that cannot be made stops the run before it starts.
    res = run_plexus("run " + dir.file("c.toml", kTinyExperiment) + " --db " + db +
                     " --set checkpoint.every_steps=2 --set checkpoint.dir=" + dir.file("a_file", "") + "/sub");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("checkpoints cannot be written to"));
    host::ResultsStore store(db);
    CHECK(store.list_runs(10).size() == 1);  // only the good run
    res = run_plexus("run -h");
    CHECK(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("usage:"));
    res = run_plexus("run " + dir.file("p.toml", kTinyExperiment) + " --db " + db + " --progress bogus");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("results.progress = \"bogus\" is unknown"));
    CHECK(run_plexus("sweep " + dir / "p.toml" + " --progress bogus --dry-run").exit_code == 2);
    // A --set written with TOML's spaces names the key.
    res = run_plexus("run " + dir / "p.toml" + " --db " + db + " --set 'train.steps = 2' --progress none");
    CHECK(res.exit_code == 0);
    CHECK(host::ResultsStore(db).metric_series(host::ResultsStore(db).list_runs(1).at(0).id, "loss").size() == 2);
}

TEST_CASE("a run naming a plugin whose library was refused says so, not only 'unknown'", "[e2e][bad-input]") {
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    const auto r = run_plexus("run " + file + " --db " + dir / "r.db" + " --set model.name=bad_fingerprint",
                              "PLEXUS_PLUGIN_PATH=" + kTestPlugins);
    INFO(r.output);
    CHECK(r.exit_code != 0);
    CHECK_THAT(r.output, Contains("no model plugin named 'bad_fingerprint'") &&
                             Contains("plexus_model_bad_fingerprint.so was refused: ABI fingerprint mismatch"));
}

TEST_CASE("a plugin from another build is refused with both fingerprints", "[e2e][bad-input]") {
    auto r = run_plexus("plugins", "PLEXUS_PLUGIN_PATH=" + kTestPlugins);
    CHECK(r.exit_code == 0);
    CHECK_THAT(r.output, Contains("plexus_model_bad_fingerprint.so: ABI fingerprint mismatch"));
    CHECK_THAT(r.output, Contains("libtorch 2.5; cuda on"));
    CHECK_THAT(r.output, Contains("plexus_test_not_a_plugin.so: not a plexus plugin"));
    CHECK_THAT(r.output, Contains("throwing"));
    auto schema = run_plexus("plugins adamw");
    CHECK_THAT(schema.output, Contains("weight_decay = 0.1"));
    CHECK(run_plexus("plugins adamm").exit_code == 1);
}

TEST_CASE("a plugin whose factory throws fails its run, which is recorded as failed", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const int64_t good = record_a_good_run(dir, db);
    auto r = run_plexus(
        "run " + dir.file("t.toml", std::string(kTinyExperiment)) + " --db " + db + " --set model.name=throwing",
        "PLEXUS_PLUGIN_PATH=" + kTestPlugins);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("deliberate failure in the factory"));
    CHECK_THAT(r.output, Contains("hint: this plugin exists to test failure handling"));
    host::ResultsStore store(db);
    auto failed = store.list_runs(1).at(0);
    CHECK(failed.status == "failed");
    CHECK_THAT(failed.error, Contains("deliberate failure"));
    check_good_run_intact(db, good);
}

TEST_CASE("a NaN loss marks the run diverged and keeps the database intact", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const int64_t good = record_a_good_run(dir, db);
    // Plain SGD at a huge learning rate without clipping blows up within a few steps.
    auto r = run_plexus("run " + dir.file("nan.toml", kTinyExperiment) + " --db " + db +
                        " --set optimizer.name=sgd --set optimizer.lr=1e8 --set train.grad_clip=0.0");
    INFO(r.output);
    CHECK(r.exit_code == 3);
    CHECK_THAT(r.output, Contains("diverged"));
    host::ResultsStore store(db);
    auto run = store.list_runs(1).at(0);
    CHECK(run.status == "diverged");
    auto loss = store.metric_series(run.id, "loss");
    REQUIRE_FALSE(loss.empty());
    CHECK(loss.size() < 60);
    CHECK_FALSE(std::isfinite(loss.back().second));
    check_good_run_intact(db, good);
}

TEST_CASE("a read-only or newer database is refused and left as it was", "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const int64_t good = record_a_good_run(dir, db);
    const auto file = dir.file("t.toml", kTinyExperiment);

    // Root ignores file permissions, so run as nobody there, from a copy of the binary and the
    // plugins that nobody can read wherever the build lives (<dir>/bin, <dir>/lib/plexus/plugins).
    std::string binary = PLEXUS_BINARY;
    std::string as_user;
    if (geteuid() == 0) {
        as_user = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
        fs::create_directories(dir.path / "bin");
        fs::create_directories(dir.path / "lib/plexus/plugins");
        fs::copy_file(PLEXUS_BINARY, dir.path / "bin/plexus");
        for (const auto& plugin : fs::directory_iterator(fs::path(PLEXUS_BINARY).parent_path() / "plugins"))
            if (plugin.path().extension() == ".so")
                fs::copy_file(plugin.path(), dir.path / "lib/plexus/plugins" / plugin.path().filename());
        binary = dir / "bin/plexus";
        for (const auto& p : fs::recursive_directory_iterator(dir.path))
            if (p.is_directory())
                fs::permissions(p.path(), fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
    }
    fs::permissions(db, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
    auto r = run_command(as_user + "env HOME=/tmp " + binary + " run " + file + " --db " + db);
    INFO(r.output);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("read-only"));
    fs::permissions(db, fs::perms::owner_read | fs::perms::owner_write);
    check_good_run_intact(db, good);

    {
        host::ResultsStore store(db);
        store.exec("PRAGMA user_version = 42");
    }
    auto newer = run_plexus("run " + file + " --db " + db);
    CHECK(newer.exit_code == 1);
    CHECK_THAT(newer.output, Contains("newer"));
    CHECK_THAT(newer.output, Contains("hint:"));
    auto junk = run_plexus("run " + file + " --db " + dir.file("junk.db", std::string(5000, 'j')));
    CHECK(junk.exit_code == 1);
    CHECK_THAT(junk.output, Contains("junk.db"));
}

TEST_CASE("a plugin's value outside its declared range or choices is refused before the run is recorded",
          "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", kTinyExperiment);
    const std::vector<std::pair<std::string, std::string>> cases = {
        {"strategy.name=zero --set strategy.stage=4", "strategy.stage = 4 must lie in [1, 3]"},
        {"strategy.name=pipeline --set strategy.schedule=zigzag",
         "strategy.schedule = \"zigzag\" is unknown (use \"gpipe\" or \"1f1b\")"}};
    for (const auto& [set, message] : cases) {
        INFO(set);
        const auto res = run_plexus("run " + file + " --db " + db + " --set " + set);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains(message) && Contains("--set"));
    }
    CHECK_FALSE(fs::exists(db));  // refused with the config, before any run row
}

TEST_CASE("launcher variables leaked into a shell are refused, and recorded text is printed escaped",
          "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file("e.toml", std::string(kTinyExperiment));
    REQUIRE(run_plexus("run " + file + " --db " + db + " --set train.steps=2").exit_code == 0);
    host::ResultsStore before(db);
    const auto curve = before.metric_series(1, "loss");
    // A worker's or a sweep point's variables in a plain shell: the run would write into run 1
    // or into sweep 5. Refused, naming the variable; run 1 untouched, no new row.
    for (const std::string env : {"PLEXUS_WORKER=1 PLEXUS_RUN_ID=1", "PLEXUS_SWEEP_ID=5", "PLEXUS_RUN_ID=1",
                                  "PLEXUS_WORKER=1 PLEXUS_RUN_ID=1 PLEXUS_PARENT=1"}) {
        INFO(env);
        const auto r = run_plexus("run " + file + " --db " + db + " --set train.steps=3", env);
        CHECK(r.exit_code == 1);
        CHECK_THAT(r.output, Contains("is set in the environment, but this process was not started by the plexus "
                                      "process that sets it"));
    }
    host::ResultsStore after(db);
    CHECK(after.list_runs(10).size() == 1);
    CHECK(after.metric_series(1, "loss") == curve);

    // A file whose name holds a terminal escape names its run: `runs` and `show` print it escaped.
    const auto odd = dir.file("odd\x1b[31m.toml", std::string(kTinyExperiment));
    REQUIRE(run_plexus("run '" + odd + "' --db " + db + " --set train.steps=2").exit_code == 0);
    for (const std::string command : {"runs", "show 2"}) {
        const auto r = run_plexus(command + " --db " + db);
        INFO(r.output);
        CHECK(r.output.find('\x1b') == std::string::npos);
        CHECK_THAT(r.output, Contains("odd\\x1b[31m"));
    }
}

TEST_CASE("odd inputs get messages that say what they are: UTF-16, a huge key, a target that is not a number",
          "[e2e][bad-input]") {
    TempDir dir;
    const auto db = dir / "r.db";
    std::string utf16 = "\xFF\xFE";
    for (char c : std::string("[train]\nsteps = 2\n")) utf16 += std::string(1, c) + '\0';
    auto r = run_plexus("run " + dir.file("u.toml", utf16) + " --db " + db);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("u.toml: the file is UTF-16 text; TOML files are UTF-8"));
    r = run_plexus("run " + dir.file("n.toml", std::string("[train]\0steps = 2\n", 19)) + " --db " + db);
    CHECK_THAT(r.output, Contains("n.toml: the file holds NUL bytes"));

    const std::string huge(1 << 20, 'k');
    r = run_plexus("run " + dir.file("h.toml", huge + " = 1\n" + kTinyExperiment) + " --db " + db);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("unknown top-level key 'kkk") && Contains("kkk... (1048576 characters)"));
    CHECK(r.output.size() < 4000);  // not echoed whole

    // A database that would vanish at exit, or an SQLite URI: recorded nowhere. (No --db here:
    // the flag would replace the file's setting.)
    for (const std::string db_value : {"", ":memory:", "file:x.db?mode=memory"}) {
        r = run_plexus("run " + dir.file("m.toml", kTinyExperiment) + " --set 'results.db=" + db_value + "'",
                       "cd " + dir.path.string() + " &&");
        CHECK(r.exit_code == 1);
        CHECK_THAT(r.output, Contains("results.db = '" + db_value + "' is not a database file"));
    }
    CHECK_FALSE(fs::exists(dir / "file:x.db?mode=memory"));
    // A device or a folder is not a database file; the message says so once.
    for (const auto& [where, what] :
         std::vector<std::pair<std::string, std::string>>{{"/dev/null", "a device"}, {dir.path.string(), "a folder"}}) {
        r = run_plexus("run " + dir.file("d.toml", kTinyExperiment) + " --db " + where);
        CHECK(r.exit_code == 1);
        CHECK_THAT(r.output, Contains("results database " + where + " is not a file (" + what));
        CHECK(r.output.find("results database") == r.output.rfind("results database"));
    }

    REQUIRE(
        run_plexus("run " + dir.file("e.toml", kTinyExperiment) + " --db " + db + " --set train.steps=2").exit_code ==
        0);
    for (const std::string bad : {"nan", "inf"}) {
        r = run_plexus("leaderboard --db " + db + " --metric tokens_to --target " + bad);
        CHECK(r.exit_code == 2);
        CHECK_THAT(r.output, Contains("finite numbers"));
    }
}
