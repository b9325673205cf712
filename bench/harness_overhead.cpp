// bench/harness_overhead: what the harness adds to a training step. A GPT so small that its step
// does almost nothing (L=1, D=8, T=8, B=1) is trained through `plexus run`'s loop (schedule,
// metrics recorded to SQLite every log_every steps, progress, divergence checks) and through a
// bare loop of strategy->step() calls, in one process. The per-step cost of each is the
// difference between a long and a short run divided by the extra steps, so that start-up
// (plugin loading, the database, model creation, the final evaluation) cancels out.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "bench_util.hpp"
#include "runtime/harness.hpp"

using namespace plexus;
using Clock = std::chrono::steady_clock;

namespace {

const char* kTiny = R"(
[model]
name = "gpt"
n_layer = 1
d_model = 8
n_head = 1
[data]
name = "synthetic"
vocab_size = 16
train_tokens = 20000
val_tokens = 1000
[optimizer]
name = "sgd"
lr = 0.01
[train]
batch_size = 1
seq_len = 8
eval_every = 0
eval_batches = 1
log_every = 10
peak_flops = 1e11
threads = 1
)";

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

int main(int argc, char** argv) {
    const int64_t short_steps = 200, long_steps = argc > 1 ? std::atoll(argv[1]) : 2200;
    host::keep_freed_memory();  // as plexus's main does
    host::set_compute_threads(1);
    const std::string file = bench::write_experiment(kTiny, "tiny.toml");
    const std::string dir = std::filesystem::path(file).parent_path();

    auto through_harness = [&](int64_t steps) {
        host::RunOptions o;
        o.db = dir + "/runs.db";
        o.progress = "none";
        o.overrides = {"train.steps=" + std::to_string(steps)};
        const auto t0 = Clock::now();
        if (host::run_experiment(file, o) != host::kOk) {
            std::fprintf(stderr, "harness_overhead: the run failed\n");
            std::exit(1);
        }
        return seconds(t0);
    };

    const auto cfg = bench::resolve_file(file);
    auto bare = [&](int64_t steps) {
        const auto t0 = Clock::now();
        host::BareRun run(cfg, torch::kCPU);
        for (int64_t i = 0; i < steps; ++i) run.strategy->step(run.in);
        return seconds(t0);
    };

    // Alternating repetitions; the median of each difference.
    std::vector<double> harness, loop;
    for (int rep = 0; rep < 5; ++rep) {
        harness.push_back((through_harness(long_steps) - through_harness(short_steps)) / (long_steps - short_steps));
        loop.push_back((bare(long_steps) - bare(short_steps)) / (long_steps - short_steps));
    }
    std::filesystem::remove_all(dir);
    const double h = bench::median(harness), b = bench::median(loop);
    std::printf("harness_overhead: GPT L=1 D=8 T=8 B=1 (a step that does almost nothing), 1 thread, median of 5\n");
    std::printf("  bare loop of strategy->step(): %8.1f us/step\n", b * 1e6);
    std::printf("  plexus run's training loop:    %8.1f us/step (metrics to SQLite every 10 steps)\n", h * 1e6);
    std::printf("  harness overhead: %.1f us/step, ratio harness/bare %.3f\n", (h - b) * 1e6, h / b);
    std::printf("RESULT harness_overhead us_per_step=%.2f ratio=%.4f\n", (h - b) * 1e6, h / b);
    return 0;
}
