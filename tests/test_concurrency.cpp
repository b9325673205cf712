// Sweeps and resumes that share one database: claims are atomic, each point runs once, a run
// killed from outside continues from its checkpoint, what a retry supersedes is cleaned up.
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// The tiny experiment over four seeds, each run long enough (a second or so) for two sweeps
// started together to overlap.
std::string four_points() { return std::string(kTinyExperiment) + "[grid]\nseeds = [0, 1, 2, 3]\n"; }

// One compute thread per run: these tests start several processes at once, and OpenMP pools of
// two threads each, spinning against each other under ctest -j2, made them 10 times slower.
const std::string kOneThread = " --set train.threads=1";

int count_of(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
    return n;
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("a claim on a point is atomic: of 8 processes racing for it one holds it, and it names its run",
          "[concurrency]") {
    TempDir dir;
    const std::string db = dir / "r.db";
    int64_t sweep = 0;
    {
        host::ResultsStore store(db);
        sweep = store.ensure_sweep("g", "", "", "");
    }
    // The racers wait on a pipe, then all claim at once; each says whether it holds the claim.
    int gate[2];
    REQUIRE(pipe(gate) == 0);
    std::vector<pid_t> racers;
    for (int i = 0; i < 8; ++i) {
        const pid_t pid = fork();
        if (pid == 0) {
            close(gate[1]);
            char c;
            (void)!read(gate[0], &c, 1);
            try {
                host::ResultsStore store(db);
                const std::string me = "racer" + std::to_string(i);
                const auto held = store.claim_point(sweep, "hash", me, [](const host::PointClaim&) { return true; });
                _exit(held.owner == me ? 0 : 1);
            } catch (...) { _exit(2); }
        }
        racers.push_back(pid);
    }
    close(gate[0]);
    close(gate[1]);  // the gate opens
    int holders = 0, errors = 0;
    for (pid_t pid : racers) {
        int status = 0;
        waitpid(pid, &status, 0);
        holders += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        errors += !WIFEXITED(status) || WEXITSTATUS(status) == 2;
    }
    CHECK(holders == 1);
    CHECK(errors == 0);

    host::ResultsStore store(db);
    // A holder judged gone is replaced; the run its child starts is recorded on the claim.
    const auto late = store.claim_point(sweep, "hash", "late", [](const host::PointClaim&) { return false; });
    CHECK(late.owner == "late");
    host::RunInfo info;
    info.sweep_id = sweep;
    info.name = "g";
    info.config_hash = "hash";
    info.config_json = "{}";
    info.claim = "late";
    const int64_t run = store.begin_run(info, {});
    CHECK(store.claimed_run(sweep, "hash", "late") == run);
    CHECK(store.claimed_run(sweep, "hash", "racer0") == 0);
    store.release_point(sweep, "hash", "late");
    CHECK(store.claimed_run(sweep, "hash", "late") == 0);

    CHECK(store.newest_sweep_run(sweep, "hash")->id == run);
    CHECK_FALSE(store.newest_sweep_run(sweep, "other"));

    // Taking a run over for --resume is a compare-and-swap on its owner; a sweep that resumes
    // the run (its claim) learns the run's id from the take-over.
    store.set_summary_text(run, 0, "process", "first");
    store.finish_run(run, "interrupted", "");
    REQUIRE(store.claim_point(sweep, "hash", "resumer", [](const host::PointClaim&) { return false; }).owner ==
            "resumer");
    auto resumed = *store.get_run(run);
    resumed.claim = "resumer";
    CHECK(store.take_over_run(resumed, "first", "second"));
    CHECK(store.get_run(run)->status == "running");
    CHECK(store.claimed_run(sweep, "hash", "resumer") == run);
    CHECK_FALSE(store.take_over_run(resumed, "first", "third"));
    CHECK(store.summary_text(run, "process") == "second");
}

TEST_CASE("two sweeps of one file on one database run each point once, and neither fails the other's runs",
          "[concurrency]") {
    TempDir dir;
    const auto file = dir.file("g.toml", four_points());
    const std::string db = dir / "r.db", args = " --db " + db + " --progress none --set train.steps=150" + kOneThread;
    const std::string plexus = PLEXUS_BINARY;
    run_command("bash -c '" + plexus + " sweep " + file + args + " > " + dir / "a.log" + " 2>&1 & " + plexus +
                " sweep " + file + args + " > " + dir / "b.log" + " 2>&1 & wait'");
    const std::string a = read_file(dir / "a.log"), b = read_file(dir / "b.log");
    INFO(a << "\n----\n" << b);
    host::ResultsStore store(db);
    const auto runs = store.sweep_runs(store.find_sweep("g")->id);
    CHECK(runs.size() == 4);  // before claims: 8, every point twice
    std::set<std::string> hashes;
    for (const auto& run : runs) {
        CHECK(run.status == "finished");
        hashes.insert(run.config_hash);
    }
    CHECK(hashes.size() == 4);
    CHECK(count_of(a + b, "] run ") == 4);  // "[k/n] run N finished": four runs ran, between them
    CHECK(count_of(a + b, " finished in ") == 4);
    CHECK_THAT(a + b, !Contains("failed in") && !Contains("taken over"));
}

TEST_CASE("two resumes of one run at once: one continues it exactly, the other stops before touching it",
          "[concurrency]") {
    TempDir dir;
    auto text = std::string(kTinyExperiment) + "[checkpoint]\nevery_steps = 5\n";
    const auto file = dir.file("exp.toml", text);
    const std::string args = " --set train.steps=200" + kOneThread;
    REQUIRE(run_plexus("run " + file + args + " --db " + dir / "whole.db").exit_code == 0);
    // Killed after its first checkpoint: the row says "running", its process is gone.
    run_command("bash -c 'setsid " + std::string(PLEXUS_BINARY) + " run " + file + args + " --db " + dir / "b.db" +
                " >/dev/null 2>&1 & pid=$!; for i in $(seq 3000); do ls " + dir / "checkpoints/b/run1" +
                "/*/COMPLETE >/dev/null 2>&1 && break; sleep 0.01; done; kill -KILL -- -$pid; wait $pid'");
    const std::string resume = std::string(PLEXUS_BINARY) + " run --resume 1 --db " + dir / "b.db";
    run_command("bash -c '(" + resume + "; echo exit=$?) > " + dir / "r1.log" + " 2>&1 & (" + resume +
                "; echo exit=$?) > " + dir / "r2.log" + " 2>&1 & wait'");
    const std::string r1 = read_file(dir / "r1.log"), r2 = read_file(dir / "r2.log");
    INFO(r1 << "\n----\n" << r2);
    CHECK(count_of(r1 + r2, "exit=0") == 1);
    CHECK(count_of(r1 + r2, "exit=1") == 1);
    const std::string& stopped = r1.find("exit=1") != std::string::npos ? r1 : r2;
    CHECK((stopped.find("taken over by another process") != std::string::npos ||
           stopped.find("is still running") != std::string::npos ||
           stopped.find("has already finished") != std::string::npos));
    host::ResultsStore a(dir / "whole.db"), b(dir / "b.db");
    CHECK(b.get_run(1)->status == "finished");
    CHECK(b.metric_series(1, "loss") == a.metric_series(1, "loss"));
    CHECK(b.metric_series(1, "eval_loss") == a.metric_series(1, "eval_loss"));
}

TEST_CASE("a sweep's run killed from outside is interrupted, and the next sweep continues it from its checkpoint",
          "[concurrency]") {
    TempDir dir;
    const auto file = dir.file("g.toml", std::string(kTinyExperiment) + "[checkpoint]\nevery_steps = 5\n");
    const std::string args = " --db " + dir / "r.db" + " --progress none --set train.steps=200" + kOneThread;
    REQUIRE(run_plexus("sweep " + file + " --db " + dir / "whole.db --progress none --set train.steps=200" + kOneThread)
                .exit_code == 0);
    // The run, not the sweep, is killed (as the OOM killer or an administrator would).
    const auto first = run_command("bash -c '" + std::string(PLEXUS_BINARY) + " sweep " + file + args +
                                   " & sweep=$!; for i in $(seq 3000); do ls " + dir / "checkpoints/r/run1" +
                                   "/*/COMPLETE >/dev/null 2>&1 && break; sleep 0.01; done; "
                                   "pkill -KILL -f \"[p]lexus run .*--point 0\"; wait $sweep; echo exit=$?'");
    INFO(first.output);
    CHECK_THAT(first.output, Contains("exit=130"));
    CHECK_THAT(first.output, Contains("run 1 interrupted"));
    host::ResultsStore store(dir / "r.db");
    CHECK(store.get_run(1)->status == "interrupted");
    CHECK_THAT(store.get_run(1)->error, Contains("signal 9") && Contains("sent from outside the sweep"));

    const auto again = run_plexus("sweep " + file + args);
    INFO(again.output);
    CHECK(again.exit_code == 0);
    CHECK_THAT(read_file(dir / "logs/g/point0.log"), Contains("resuming run 1 from its checkpoint at step"));
    CHECK(store.list_runs(10).size() == 1);  // the same run, continued
    CHECK(store.get_run(1)->status == "finished");
    host::ResultsStore whole(dir / "whole.db");
    CHECK(store.metric_series(1, "loss") == whole.metric_series(1, "loss"));
}

TEST_CASE("retrying a failed point continues its run in place, while a diverged one starts over and its checkpoints go",
          "[concurrency]") {
    TempDir dir;
    // Killed by its own [[faults]] at step 12 (exit 137: failed) after its checkpoint at 10; the
    // retry continues it from there, in the same row, and it finishes.
    const auto killed = dir.file("killed.toml", std::string(kTinyExperiment) +
                                                    "[checkpoint]\nevery_steps = 5\n[[faults]]\nkind = \"kill\"\n"
                                                    "rank = 0\nstep = 12\n");
    const std::string args = " --db " + dir / "r.db" + " --progress none --set train.steps=30" + kOneThread;
    auto res = run_plexus("sweep " + killed + args);
    INFO(res.output);
    CHECK_THAT(res.output, Contains("0 finished, 1 failed"));
    res = run_plexus("sweep " + killed + args + " --retry-failed");
    INFO(res.output);
    CHECK_THAT(read_file(dir / "logs/killed/point0.log"), Contains("resuming run 1 from its checkpoint at step 10"));
    host::ResultsStore store(dir / "r.db");
    CHECK(store.list_runs(10).size() == 1);
    CHECK(store.get_run(1)->status == "finished");

    // Diverged with a checkpoint on disk: the retry is a new run, and the old run's checkpoints go.
    const auto wild = dir.file("wild.toml", std::string(kTinyExperiment) + "[checkpoint]\nevery_steps = 1\n");
    const std::string wild_args =
        " --db " + dir / "w.db" +
        " --progress none --set train.steps=50 --set optimizer.lr=1e4 --set train.grad_clip=0.0" + kOneThread;
    res = run_plexus("sweep " + wild + wild_args);
    INFO(res.output);
    CHECK_THAT(res.output, Contains("diverged"));
    REQUIRE(fs::exists(dir / "checkpoints/w/run1"));
    res = run_plexus("sweep " + wild + wild_args + " --retry-failed");
    INFO(res.output);
    CHECK_FALSE(fs::exists(dir / "checkpoints/w/run1"));
    host::ResultsStore w(dir / "w.db");
    CHECK(w.list_runs(10).size() == 2);
}
