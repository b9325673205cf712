// bench/gpt_step: the same GPT training step (same shapes, AdamW, clipping) timed in plexus
// (models/gpt + optimizers/adamw + strategies/single, through the host's own plugin path) and
// in a PyTorch eager reference (bench/gpt_step_ref.py), in one run. --model llama does the same
// for models/llama (RMSNorm, rotary positions, SwiGLU, grouped-query attention with --kv-heads)
// against an eager Llama written as Meta's reference code writes it. Prints the ratio of tokens/s
// and plexus's MFU: on the CPU against the fp32 matmul peak measured in the same run, on a GPU
// (--device cuda, usually with --precision bf16) against the card's datasheet bf16 peak. On a
// GPU the reference runs separately (bench/gpt_step_gpu.sh drives both), since two 1.3B
// models with their optimizer state need not fit on one card together. --profile TRACE writes a
// Chrome trace of one more plexus round (bench/profile_summary.py TRACE sums it: by operator on
// the CPU, by kernel on a GPU).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>
#include <thread>

#include <plexus/kit/compat.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "bench_util.hpp"
#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "device/cuda.hpp"
#include "runtime/harness.hpp"
#include "runtime/loader.hpp"
#include "device/peak.hpp"

using namespace plexus;

namespace {

bench::Flags parse_args(int argc, char** argv) {
    return bench::Flags(
        argc, argv,
        {{"model", "gpt"},
         {"kv-heads", "0"},
         {"layers", "4"},
         {"width", "256"},
         {"heads", "4"},
         {"seq", "128"},
         {"batch", "8"},
         {"vocab", "4096"},
         {"steps", "5"},
         {"rounds", "7"},
         {"warmup", "3"},
         {"threads", std::to_string(std::max(1u, std::thread::hardware_concurrency()))},
         {"reference", "1"},
         {"device", "cpu"},
         {"precision", "fp32"},
         {"profile", ""},
         {"fused-norm", "1"}},
        "gpt_step [--model gpt|llama --kv-heads N (llama; 0: --heads) --layers N --width N --heads N --seq N --batch N "
        "--vocab N --steps N --rounds N "
        "--warmup N --threads N --reference 0|1 --device cpu|cuda --precision fp32|bf16 --profile TRACE "
        "--fused-norm 0|1 (models/gpt's fused_norm: plexus's residual add + layer norm kernels on a GPU)]");
}

// The PyTorch reference as a child process in --serve mode: one timed round per request.
class Reference {
public:
    explicit Reference(const std::string& command) {
        int to_child[2], from_child[2];
        if (pipe(to_child) != 0 || pipe(from_child) != 0) return;
        pid_ = fork();
        if (pid_ == 0) {
            dup2(to_child[0], STDIN_FILENO);
            dup2(from_child[1], STDOUT_FILENO);
            close(to_child[1]);
            close(from_child[0]);
            execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
            _exit(127);
        }
        close(to_child[0]);
        close(from_child[1]);
        in_ = fdopen(to_child[1], "w");
        out_ = fdopen(from_child[0], "r");
        ok_ = read_line() == "ready";
    }
    ~Reference() {
        if (in_) fclose(in_);  // EOF ends the child's loop
        if (out_) fclose(out_);
        if (pid_ > 0) waitpid(pid_, nullptr, 0);
    }
    bool ok() const { return ok_; }
    double round() {
        std::fputs("round\n", in_);
        std::fflush(in_);
        const auto line = read_line();
        return line.empty() ? -1.0 : std::stod(line);
    }

private:
    std::string read_line() {
        char buf[256];
        if (!out_ || !std::fgets(buf, sizeof buf, out_)) return "";
        std::string s(buf);
        while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
        return s;
    }
    pid_t pid_ = -1;
    FILE* in_ = nullptr;
    FILE* out_ = nullptr;
    bool ok_ = false;
};

}  // namespace

int main(int argc, char** argv) {
    auto a = parse_args(argc, argv);
    host::keep_freed_memory();  // as plexus's main does
    host::set_compute_threads(static_cast<int>(a["threads"]));
    const torch::Device device(a.text("device"));
    const bool gpu = device.is_cuda();
    if (gpu && a["reference"]) {
        std::cerr
            << "gpt_step: on a GPU, run the reference separately (bench/gpt_step_gpu.sh does); use --reference 0\n";
        return 2;
    }
    const auto autocast_dtype = a.text("precision") == "bf16" ? torch::kBFloat16 : torch::kFloat;

    const std::string model = a.text("model");
    if (model != "gpt" && model != "llama") {
        std::cerr << "gpt_step: --model takes gpt or llama, not '" << model << "'\n";
        return 2;
    }
    const std::string model_keys = model == "gpt" ? std::string("fused_norm = ") + (a["fused-norm"] ? "true" : "false")
                                                  : "n_kv_head = " + std::to_string(a["kv-heads"]);
    char toml[1024];
    std::snprintf(toml, sizeof toml,
                  "[model]\nname = \"%s\"\nn_layer = %lld\nd_model = %lld\nn_head = %lld\n%s\n"
                  "[data]\nname = \"synthetic\"\nvocab_size = %lld\nbranching = 8\ntrain_tokens = 200000\n"
                  "[optimizer]\nname = \"adamw\"\nlr = 1e-3\nbetas = [0.9, 0.95]\nweight_decay = 0.1\n"
                  "[strategy]\nname = \"single\"\n[train]\nbatch_size = %lld\nseq_len = %lld\ngrad_clip = 1.0\n",
                  model.c_str(), (long long)a["layers"], (long long)a["width"], (long long)a["heads"],
                  model_keys.c_str(), (long long)a["vocab"], (long long)a["batch"], (long long)a["seq"]);
    const std::string file = bench::write_experiment(toml, "gpt_step.toml");
    const auto cfg = bench::resolve_file(file);
    std::filesystem::remove_all(std::filesystem::path(file).parent_path());

    host::gpu::set_current(device);
    host::BareRun run(cfg, device);
    auto& strategy = run.strategy;
    auto& ctx = *run.ctx;
    auto& in = run.in;
    // As the harness does for train.precision.
    compat::AutocastGuard autocast(device.type(), autocast_dtype);

    for (int64_t i = 0; i < a["warmup"]; ++i) strategy->step(in);
    // Each step reads its loss back (as the harness does), so the clock stops after the GPU's work.
    auto plexus_round = [&] {
        host::gpu::synchronize(device);
        const auto t0 = std::chrono::steady_clock::now();
        int64_t tokens = 0;
        for (int64_t i = 0; i < a["steps"]; ++i) tokens += strategy->step(in).tokens;
        host::gpu::synchronize(device);
        return tokens / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };

    // Rounds alternate between plexus and the reference, so both see the same machine load.
    std::unique_ptr<Reference> reference;
    std::string command;
    if (a["reference"]) {
        const char* py = std::getenv("PLEXUS_PYTHON");
        command = std::string(py ? py : "/usr/bin/python3") + " " + PLEXUS_BENCH_DIR + "/gpt_step_ref.py --serve";
        for (const char* k : {"layers", "width", "heads", "kv-heads", "seq", "batch", "vocab", "steps", "warmup"})
            command += std::string(" --") + k + " " + std::to_string(a[k]);
        command += " --model " + model;
        command += " --dtype " + a.text("precision");
        command += " --threads " + std::to_string(at::get_num_threads());  // LibTorch's pool as plexus set it
        reference = std::make_unique<Reference>(command);
        if (!reference->ok()) {
            std::fprintf(stderr, "reference failed to start: `%s` (needs Debian's python3-torch)\n", command.c_str());
            return 1;
        }
    }
    // On the CPU the matmul peak is measured after every round too: this machine's speed drifts
    // within minutes, and each round's MFU is taken against the peak measured beside it.
    const std::string gpu_name = host::gpu::device_name(device);
    const auto card = host::gpu_peak(gpu_name);
    std::vector<double> mine, theirs, ratios, peaks, mfus;
    for (int64_t r = 0; r < a["rounds"]; ++r) {
        mine.push_back(plexus_round());
        if (reference) {
            theirs.push_back(reference->round());
            ratios.push_back(mine.back() / theirs.back());
        }
        peaks.push_back(gpu ? card.flops.value_or(NAN) : host::measure_cpu_matmul_flops(0.5));
        mfus.push_back(host::mfu(ctx.flops.flops, mine.back(), peaks.back()));
    }
    reference.reset();
    if (!a.text("profile").empty()) {  // after the timed rounds, which it would slow down
        {
            compat::ProfileTrace trace(a.text("profile"), gpu);
            plexus_round();
        }
        std::fprintf(
            stderr,
            "profile of one round (%lld steps) in %s; summary:\n  python3 %s/profile_summary.py %s --steps %lld\n",
            (long long)a["steps"], a.text("profile").c_str(), PLEXUS_BENCH_DIR, a.text("profile").c_str(),
            (long long)a["steps"]);
    }
    const double plexus_tps = bench::median(mine);
    const double peak = bench::median(peaks);
    const double mfu = bench::median(mfus);

    std::printf("gpt_step %s L=%lld D=%lld H=%lld T=%lld B=%lld V=%lld, %s %s, %s, %s params\n", model.c_str(),
                (long long)a["layers"], (long long)a["width"], (long long)a["heads"], (long long)a["seq"],
                (long long)a["batch"], (long long)a["vocab"], device.str().c_str(), a.text("precision").c_str(),
                gpu ? gpu_name.c_str() : (std::to_string(a["threads"]) + " threads").c_str(),
                std::to_string(ctx.params).c_str());
    std::printf("  plexus:    %10.0f tok/s (median of %lld rounds of %lld steps)\n", plexus_tps, (long long)a["rounds"],
                (long long)a["steps"]);
    if (!theirs.empty()) {
        std::printf("  reference: %10.0f tok/s (PyTorch %s eager, same thread settings, rounds alternating)\n",
                    bench::median(theirs), TORCH_VERSION);
        std::printf("  ratio plexus/reference: %.2f (median of per-round ratios; range %.2f to %.2f)\n",
                    bench::median(ratios), *std::min_element(ratios.begin(), ratios.end()),
                    *std::max_element(ratios.begin(), ratios.end()));
    }
    if (gpu) {
        std::printf("  MFU:       %9.1f%% of %s, %.0f TFLOP/s (%.2f GFLOP/token, 6N+12LHQT)\n", mfu * 100,
                    card.source.c_str(), peak / 1e12, ctx.flops.flops / 1e9);
        std::printf("  peak GPU memory of tensors: %.1f GiB\n",
                    static_cast<double>(host::gpu::peak_allocated_bytes(device)) / (1 << 30));
    } else {
        std::printf(
            "  MFU:       %9.1f%% of the fp32 matmul peak measured after each round (median of rounds; "
            "range %.1f%% to %.1f%%), peak median %.1f GFLOP/s (%.2f MFLOP/token, 6N+12LHQT)\n",
            mfu * 100, *std::min_element(mfus.begin(), mfus.end()) * 100,
            *std::max_element(mfus.begin(), mfus.end()) * 100, peak / 1e9, ctx.flops.flops / 1e6);
    }
    // One line for scripts (bench/gpt_step_gpu.sh, scripts/bench.sh).
    std::printf("RESULT plexus tokens_per_s=%.1f mfu=%.4f params=%lld flops_per_token=%.6g\n", plexus_tps, mfu,
                static_cast<long long>(ctx.params), ctx.flops.flops);
    return 0;
}
