// Multi-process runs over c10d/Gloo on this machine: DDP against the single-rank reference,
// gradient accumulation, a worker that dies, and joining a job started by someone else.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <chrono>
#include <plexus/plexus.hpp>
#include <thread>
#include <torch/torch.h>

#include "helpers.hpp"
#include "transport/launch.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

double numbers_of_run(host::ResultsStore& store, int64_t run, int rank, const std::string& key) {
    for (const auto& [r, k, value, text] : store.summaries(run))
        if (r == rank && k == key && value) return *value;
    return NAN;
}

const std::string kDdp = std::string(kTinyExperiment) + R"(
[strategy]
name = "ddp"
bucket_mb = 0.02

[launch]
mode = "local"
ranks = 2
timeout = 60.0
)";

// A stream that serves the given batches in order, then again from the start.
class FixedStream : public BatchStream {
public:
    explicit FixedStream(std::vector<Batch> batches) : batches_(std::move(batches)) {}
    Batch next() override { return batches_[static_cast<size_t>(pos_++) % batches_.size()]; }
    int64_t position() const override { return pos_; }
    void seek(int64_t p) override { pos_ = p; }

private:
    std::vector<Batch> batches_;
    int64_t pos_ = 0;
};

bool alive(pid_t pid) { return kill(pid, 0) == 0; }

}  // namespace

TEST_CASE("DDP on 2 ranks with batch b follows the single strategy with batch 2b", "[distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    auto ddp = run_plexus("run " + dir.file("ddp.toml", kDdp) + " --db " + db +
                          " --set train.steps=20 --set train.batch_size=4");
    INFO(ddp.output);
    REQUIRE(ddp.exit_code == 0);
    auto single = run_plexus("run " + dir.file("single.toml", kTinyExperiment) + " --db " + db +
                             " --set train.steps=20 --set train.batch_size=8");
    REQUIRE(single.exit_code == 0);
    host::ResultsStore store(db);
    auto runs = store.list_runs(2);
    REQUIRE(runs[1].world_size == 2);
    auto a = store.metric_series(runs[1].id, "loss");  // ddp: mean over both ranks' rows
    auto b = store.metric_series(runs[0].id, "loss");  // single: all rows at once
    REQUIRE(a.size() == 20);
    REQUIRE(b.size() == 20);
    // Same data rows, same initial parameters, same updates: only the order of float sums
    // differs (two half-batch means averaged vs one mean), about 1e-7 relative per step; after
    // 20 AdamW steps the curves agree to 1e-4 (measured: 3e-7).
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i].second - b[i].second));
    CHECK(worst < 1e-4);
    CHECK(a.back().second < a.front().second - 1.0);  // and it learned
    // Each rank sent its gradients: 2(W-1)/W of them per step, plus the loss scalars.
    double bytes0 = 0, bytes1 = 0;
    for (const auto& [rank, key, value, text] : store.summaries(runs[1].id)) {
        if (key == "bytes_sent" && rank == 0) bytes0 = *value;
        if (key == "bytes_sent" && rank == 1) bytes1 = *value;
    }
    const double params = [&] {
        for (const auto& [rank, key, value, text] : store.summaries(runs[1].id))
            if (key == "params") return *value;
        return 0.0;
    }();
    CHECK(bytes0 >= 20 * params * 4);  // ring all-reduce on 2 ranks: the whole gradient per step
    CHECK(bytes1 >= 20 * params * 4);
    // The same traffic from both ranks: rank 0's broadcast of the initial weights is the setup,
    // recorded apart, not training traffic.
    CHECK(bytes0 == bytes1);
    CHECK(numbers_of_run(store, runs[1].id, 0, "setup_bytes_sent") == params * 4);
    // Exactly: the buckets partition the parameters (none twice, none left out), and a ring
    // all-reduce on 2 ranks sends each rank's whole buffer once, 4 bytes per float.
    const auto comm_bytes = store.metric_series(runs[1].id, "comm_bytes");
    REQUIRE(comm_bytes.size() == 20);
    CHECK(comm_bytes.back().second == 20.0 * 4.0 * static_cast<double>(model_numel(dir, kDdp)));
}

TEST_CASE("DDP gradient accumulation: 2 micro-batches of b equal one batch of 2b", "[distributed]") {
    TempDir dir;
    torch::manual_seed(3);
    std::vector<Batch> halves, wholes;
    for (int i = 0; i < 3; ++i) {
        auto ids = torch::randint(0, 32, {8, 33}, torch::kInt64);
        Batch whole{ids.narrow(1, 0, 32).clone(), ids.narrow(1, 1, 32).clone()};
        wholes.push_back(whole);
        halves.push_back({whole.inputs.narrow(0, 0, 4), whole.targets.narrow(0, 0, 4)});
        halves.push_back({whole.inputs.narrow(0, 4, 4), whole.targets.narrow(0, 4, 4)});
    }
    auto train = [&](int accumulate, std::vector<Batch> batches) {
        // SGD: Adam would amplify float rounding where its second moment is tiny, hiding what
        // this test checks (that the hook adds the gradient accumulated so far).
        std::string toml = kTinyExperiment;
        const std::string adamw = "name = \"adamw\"\nlr = 1e-2";
        toml.replace(toml.find(adamw), adamw.size(), "name = \"sgd\"\nlr = 0.1\nmomentum = 0.9");
        auto cfg =
            resolve_text(dir, toml + "\n[strategy]\nname = \"ddp\"\naccumulate = " + std::to_string(accumulate) + "\n");
        host::HostContext ctx(cfg, torch::kCPU, 32);
        auto strategy = cfg.plugins.at("strategy")->make_strategy(cfg.sections.at("strategy"), ctx);
        FixedStream stream(std::move(batches));
        StepInput in;
        in.max_grad_norm = 1.0;
        in.train = &stream;
        std::vector<double> losses;
        for (int s = 0; s < 3; ++s) losses.push_back(strategy->step(in).loss);
        return std::make_pair(losses, strategy->state());
    };
    auto [loss_acc, state_acc] = train(2, halves);
    auto [loss_one, state_one] = train(1, wholes);
    for (int s = 0; s < 3; ++s) CHECK(loss_acc[s] == Approx(loss_one[s]).epsilon(1e-6));
    REQUIRE(state_acc.size() == state_one.size());
    for (size_t i = 0; i < state_acc.size(); ++i) {
        INFO(state_acc[i].first << " max diff "
                                << (state_acc[i].second.to(torch::kFloat64) - state_one[i].second.to(torch::kFloat64))
                                       .abs()
                                       .max()
                                       .item<double>());
        CHECK(torch::allclose(state_acc[i].second.to(torch::kFloat64), state_one[i].second.to(torch::kFloat64), 1e-5,
                              1e-7));
    }
}

// A local 2-rank DDP run in the background: waits (bounded) until it has recorded 5 steps, sends
// `sig` to rank 1 (or to the launcher), and returns what became of the launcher and the workers.
struct Outcome {
    int exit_code = -1;
    double seconds = 0;        // from the signal to the launcher's exit
    bool workers_left = true;  // any worker process still alive afterwards
    host::RunInfo run;
    std::string log;
};

// Starts `cmd` (through sh) in the background, its stdout and stderr in `log`; returns its pid.
pid_t start_logged(const std::string& cmd, const std::string& log) {
    const pid_t pid = fork();
    if (pid == 0) {
        freopen(log.c_str(), "w", stdout);
        dup2(fileno(stdout), STDERR_FILENO);
        execl("/bin/sh", "sh", "-c", ("exec " + cmd).c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    return pid;
}

Outcome signal_a_local_run(const TempDir& dir, int sig, double timeout_s, bool to_launcher = false) {
    Outcome o;
    const auto db = dir / "r.db";
    const std::string log = dir / "out.log";
    const std::string cmd =
        std::string(PLEXUS_BINARY) + " run " + dir.file("ddp.toml", kDdp) + " --db " + db +
        " --set train.steps=100000 --set train.log_every=1 --set launch.timeout=" + std::to_string(timeout_s) +
        " --progress lines";
    const pid_t launcher = start_logged(cmd, log);
    REQUIRE(wait_for_losses(db, 5) >= 5);
    std::vector<pid_t> workers;
    std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children");
    for (pid_t p; children >> p;) workers.push_back(p);
    REQUIRE(workers.size() == 2);
    pid_t rank1 = -1;
    for (pid_t w : workers) {
        std::ifstream environ("/proc/" + std::to_string(w) + "/environ");
        std::string all = std::string(1, '\0') + std::string((std::istreambuf_iterator<char>(environ)), {});
        if (all.find(std::string("\0RANK=1\0", 8)) != std::string::npos) rank1 = w;
    }
    REQUIRE(rank1 > 0);
    const auto t0 = std::chrono::steady_clock::now();
    kill(to_launcher ? launcher : rank1, sig);
    const auto ended = wait_logged(launcher, log);
    o.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    o.exit_code = ended.exit_code;
    o.log = ended.output;
    o.workers_left = false;
    for (pid_t w : workers) o.workers_left |= alive(w);
    host::ResultsStore store(db);
    o.run = store.list_runs(1).at(0);
    return o;
}

TEST_CASE("a worker that dies fails the run at once and leaves no process behind", "[distributed]") {
    TempDir dir;
    auto o = signal_a_local_run(dir, SIGKILL, 60);
    INFO(o.log);
    CHECK(o.exit_code == 1);
    CHECK(o.seconds < 30);  // a dead peer is noticed at once (connection reset), not at the timeout
    CHECK_FALSE(o.workers_left);
    CHECK(o.run.status == "failed");
    CHECK_THAT(o.run.error, Contains("rank 1 exited with code 137 after step"));
    CHECK_THAT(o.log, Contains("rank 1 exited"));
}

TEST_CASE("a worker that hangs fails the run after launch.timeout and leaves no process behind", "[distributed]") {
    TempDir dir;
    auto o = signal_a_local_run(dir, SIGSTOP, 4);  // rank 1 freezes; rank 0 waits in a collective
    INFO(o.log);
    CHECK(o.exit_code == 1);
    CHECK(o.seconds >= 3);  // rank 0 gave up at the collective timeout ...
    CHECK(o.seconds < 40);  // ... and the launcher then stopped the frozen rank (SIGKILL after the grace)
    CHECK_FALSE(o.workers_left);
    CHECK(o.run.status == "failed");
    CHECK_THAT(o.run.error, Contains("rank 0 exited with code 1"));
    CHECK_THAT(o.run.error, Contains("rank 0 reported"));
    // The frozen rank is named, not only the healthy one that timed out waiting for it.
    CHECK_THAT(o.run.error, Contains("rank 1 stopped responding (process stopped"));
}

TEST_CASE("SIGTERM to the launcher while its workers start records the run interrupted, not failed", "[distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const std::string log = dir / "out.log";
    const std::string cmd = std::string(PLEXUS_BINARY) + " run " + dir.file("ddp.toml", kDdp) + " --db " + db +
                            " --set train.steps=100000 --set launch.ranks=3 --progress none";
    const pid_t launcher = start_logged(cmd, log);
    // The moment its first worker exists: the workers are still starting and connecting (a worker
    // dies of the signal, its peers lose their connection). Whatever each then does, the run was
    // stopped on request.
    bool started = false;
    for (int i = 0; i < 2000 && !started; ++i) {
        std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children");
        for (pid_t p; children >> p && !started;) {  // a worker, not another child (git, say)
            std::ifstream environ("/proc/" + std::to_string(p) + "/environ");
            const std::string all((std::istreambuf_iterator<char>(environ)), {});
            started = all.find(std::string("PLEXUS_WORKER=1\0", 16)) != std::string::npos;
        }
        if (!started) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    REQUIRE(started);
    kill(launcher, SIGTERM);
    const auto ended = wait_logged(launcher, log);
    INFO(ended.output);
    CHECK(ended.exited);
    CHECK(ended.exit_code == 130);
    host::ResultsStore store(db);
    const auto run = store.list_runs(1).at(0);
    CHECK(run.status == "interrupted");
}

TEST_CASE("SIGTERM to the launcher interrupts every rank at an agreed step and marks the run", "[distributed]") {
    TempDir dir;
    auto o = signal_a_local_run(dir, SIGTERM, 60, /*to_launcher=*/true);
    INFO(o.log);
    CHECK(o.exit_code == 130);
    CHECK(o.seconds < 30);
    CHECK_FALSE(o.workers_left);
    CHECK(o.run.status == "interrupted");
    // Both ranks stopped together at a log point, so rank 0 recorded its summaries.
    host::ResultsStore store(dir / "r.db");
    bool has_rank1_summary = false;
    for (const auto& [rank, key, value, text] : store.summaries(o.run.id)) has_rank1_summary |= rank == 1;
    CHECK(has_rank1_summary);
}

TEST_CASE("mode env joins a job whose ranks were started by someone else", "[distributed]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file =
        dir.file("env.toml", std::string(kTinyExperiment) +
                                 "\n[strategy]\nname = \"ddp\"\n[launch]\nmode = \"env\"\ntimeout = 60.0\n");
    const std::string port = std::to_string(host::free_port());
    std::vector<pid_t> pids;
    for (int r = 0; r < 2; ++r) {
        pid_t pid = fork();
        if (pid == 0) {
            setenv("RANK", std::to_string(r).c_str(), 1);
            setenv("WORLD_SIZE", "2", 1);
            setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
            setenv("LOCAL_WORLD_SIZE", "2", 1);
            setenv("MASTER_ADDR", "127.0.0.1", 1);
            setenv("MASTER_PORT", port.c_str(), 1);
            freopen("/dev/null", "w", stdout);
            execl(PLEXUS_BINARY, PLEXUS_BINARY, "run", file.c_str(), "--db", db.c_str(), "--set", "train.steps=6",
                  static_cast<char*>(nullptr));
            _exit(127);
        }
        pids.push_back(pid);
    }
    for (pid_t p : pids) {
        int status = 0;
        waitpid(p, &status, 0);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
    }
    host::ResultsStore store(db);
    auto runs = store.list_runs(10);
    REQUIRE(runs.size() == 1);  // rank 0 alone records
    CHECK(runs[0].status == "finished");
    CHECK(runs[0].world_size == 2);
    CHECK(store.metric_series(runs[0].id, "loss").size() == 6);

    // Without a rank in the environment, mode env says what is missing.
    auto r = run_plexus("run " + file + " --db " + db);
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.output, Contains("no rank is set in the environment"));
}
