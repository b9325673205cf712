#include <dlfcn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include "runtime/harness.hpp"
#include "helpers.hpp"
#include "device/peak.hpp"

using namespace plexus;
using namespace plexus::test;

TEST_CASE("the PaLM FLOPs formula reproduces the published Llama-2-7B figures", "[mfu]") {
    // Llama-2-7B: 6,738,415,616 parameters (embeddings included, as IBM counted), 32 layers,
    // 32 heads of 128, T = 4096: 46.87 GFLOP/token. At 3,760 tokens/s on an A100 (312 TFLOP/s)
    // that is the blog's 57% MFU (IBM and PyTorch, "Maximizing training throughput using PyTorch FSDP",
    // 2024; docs/guide/performance.md, MFU).
    const double f = palm_flops_per_token(6738415616.0, 32, 32, 128, 4096);
    CHECK(f == Approx(46872944640.0));
    CHECK(host::mfu(f, 3760, 312e12) == Approx(0.5649).epsilon(1e-3));
    CHECK(host::mfu(f, 9600, 989e12) == Approx(0.455).epsilon(2e-3));
}

TEST_CASE("GPT reports 6N + 12LHQT with N hand-counted", "[mfu][gpt]") {
    TempDir dir;
    auto cfg = resolve_text(dir, R"(
[model]
name = "gpt"
n_layer = 2
d_model = 64
n_head = 4
[data]
name = "synthetic"
vocab_size = 256
[train]
seq_len = 32
)");
    host::HostContext ctx(cfg, torch::kCPU, 256);
    auto model = ctx.make_model();
    // Per layer: ln1 128, qkv 64*192+192, proj 64*64+64, ln2 128, fc 64*256+256, out 256*64+64
    // = 49,984; two layers 99,968; head 256*64 + ln 128 = 16,512. N = 116,480 (embeddings excluded).
    const auto f = model->flops_per_token(32);
    CHECK(f.counted_params == 116480);
    CHECK(f.flops == Approx(6.0 * 116480 + 12.0 * 2 * 64 * 32));  // 748,032
    CHECK(f.flops == Approx(palm_flops_per_token(116480, 2, 4, 16, 32)));
    // Every parameter is counted except the token (256x64) and position (32x64) tables.
    int64_t total = 0;
    for (const auto& p : model->parameters()) total += p.numel();
    CHECK(total - f.counted_params == 256 * 64 + 32 * 64);
    CHECK(ctx.flops.flops == f.flops);  // what the harness divides by the peak
}

TEST_CASE("learning-rate schedules over tokens", "[schedule]") {
    using host::lr_factor;
    CHECK(lr_factor("constant", 5000, 0, 10000, 0.1) == 1.0);
    CHECK(lr_factor("cosine", 999, 1000, 11000, 0.1) == Approx(1.0));  // end of warm-up
    CHECK(lr_factor("cosine", 499, 1000, 11000, 0.1) == Approx(0.5));  // halfway through warm-up
    CHECK(lr_factor("cosine", 1000, 1000, 11000, 0.1) == Approx(1.0));
    CHECK(lr_factor("cosine", 6000, 1000, 11000, 0.1) == Approx(0.55));  // cosine midpoint: 0.1 + 0.9/2
    CHECK(lr_factor("cosine", 11000, 1000, 11000, 0.1) == Approx(0.1));
    CHECK(lr_factor("cosine", 20000, 1000, 11000, 0.1) == Approx(0.1));  // clamped past the horizon
    CHECK(lr_factor("linear", 6000, 1000, 11000, 0.0) == Approx(0.5));
}

TEST_CASE("known GPU peaks come from the datasheet table, unknown ones stay unknown", "[mfu]") {
    CHECK(*host::gpu_peak("NVIDIA H100 80GB HBM3").flops == 989e12);
    CHECK(*host::gpu_peak("NVIDIA H100 PCIe").flops == 756e12);
    CHECK(*host::gpu_peak("NVIDIA A100-SXM4-80GB").flops == 312e12);
    CHECK_FALSE(host::gpu_peak("Some Future GPU").flops.has_value());
}

namespace {

// Page faults of the third round of allocating, touching and freeing three 24 MB blocks, in a
// child process (glibc's malloc settings are process-wide and cannot be undone), with or
// without keep_freed_memory().
long third_round_page_faults(bool keep) {
    int fds[2];
    REQUIRE(pipe(fds) == 0);
    const pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // only malloc, memset and getrusage here: the parent has threads
        if (keep) host::keep_freed_memory();
        long faults = 0;
        for (int round = 0; round < 3; ++round) {
            rusage before{}, after{};
            getrusage(RUSAGE_SELF, &before);
            void* blocks[3];
            for (auto& b : blocks) {
                b = std::malloc(24 << 20);
                std::memset(b, 1, 24 << 20);
            }
            for (auto& b : blocks) std::free(b);
            getrusage(RUSAGE_SELF, &after);
            faults = after.ru_minflt - before.ru_minflt;
        }
        const ssize_t written = write(fds[1], &faults, sizeof faults);
        _exit(written == sizeof faults ? 0 : 1);
    }
    close(fds[1]);
    long faults = -1;
    const ssize_t got = read(fds[0], &faults, sizeof faults);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(got == static_cast<ssize_t>(sizeof faults));
    return faults;
}

}  // namespace

TEST_CASE("keep_freed_memory: a step's blocks reuse the last step's pages instead of faulting new ones",
          "[mfu][memory]") {
#ifdef __SANITIZE_ADDRESS__
    WARN("under AddressSanitizer its allocator replaces glibc's malloc: nothing to measure");
    return;
#endif
    // 3 x 24 MB is 18432 pages: glibc's defaults hand the blocks back and fault them all in again.
    const long kept = third_round_page_faults(true), released = third_round_page_faults(false);
    INFO("page faults in the third round: kept " << kept << ", glibc defaults " << released);
    CHECK(released > 10000);
    CHECK(kept < 1000);
}

TEST_CASE("set_compute_threads shares the cores with OpenBLAS's OpenMP build, and leaves them to its pthreads pool",
          "[mfu][threads]") {
    using GetInt = int (*)();
    using SetInt = void (*)(int);
    auto blas_parallel = reinterpret_cast<GetInt>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
    auto blas_threads = reinterpret_cast<GetInt>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    auto set_blas_threads = reinterpret_cast<SetInt>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (!blas_parallel || !blas_threads || !set_blas_threads) {
        // Not OpenBLAS (PyTorch's own LibTorch, with MKL): LibTorch's pool gets the cores.
        WARN("no OpenBLAS in this process: only LibTorch's thread count is checked");
        const int torch_before = at::get_num_threads();
        host::set_compute_threads(2);
        CHECK(at::get_num_threads() == 2);
        host::set_compute_threads(1);
        CHECK(at::get_num_threads() == 1);
        at::set_num_threads(torch_before);
        return;
    }
    // scripts/setup.sh selects the OpenMP build; the pthreads build would leave LibTorch one core
    CHECK(blas_parallel() == 2);
    const int torch_before = at::get_num_threads(), blas_before = blas_threads();
    host::set_compute_threads(2);
    CHECK(blas_threads() == 2);
    CHECK(at::get_num_threads() == (blas_parallel() == 2 ? 2 : 1));
    host::set_compute_threads(1);
    CHECK(at::get_num_threads() == 1);
    CHECK(blas_threads() == 1);
    at::set_num_threads(torch_before);
    set_blas_threads(blas_before);
}

// The peak cache lives under XDG_CACHE_HOME: these tests point it at a fresh folder, so that they
// measure (and do not disturb the machine's cache).
struct FreshPeakCache {
    TempDir dir;
    std::string before;
    bool had = false;
    FreshPeakCache() {
        if (const char* v = std::getenv("XDG_CACHE_HOME")) had = true, before = v;
        setenv("XDG_CACHE_HOME", dir.path.c_str(), 1);
    }
    ~FreshPeakCache() {
        if (had)
            setenv("XDG_CACHE_HOME", before.c_str(), 1);
        else
            unsetenv("XDG_CACHE_HOME");
    }
    // The cache's lines for `threads` threads.
    std::vector<std::string> lines_for(int threads) const {
        std::ifstream in(dir / "plexus/peak.txt");
        std::vector<std::string> found;
        const std::string tag = " | " + std::to_string(threads) + " thread(s) | ";
        for (std::string line; std::getline(in, line);)
            if (line.find(tag) != std::string::npos) found.push_back(line);
        return found;
    }
};

TEST_CASE("the CPU peak for N threads is measured with N threads, whatever the caller had set", "[mfu][threads]") {
    FreshPeakCache cache;
    using GetInt = int (*)();
    auto blas_threads = reinterpret_cast<GetInt>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    const int torch_before = at::get_num_threads();
    host::set_compute_threads(2);
    // (a simulated cluster asks for the one-thread peak while the process still runs all cores)
    const auto peak = host::cpu_peak(1);
    REQUIRE(peak.flops.has_value());
    CHECK(*peak.flops > 0);
    CHECK(at::get_num_threads() == 1);
    if (blas_threads) CHECK(blas_threads() == 1);
    REQUIRE(cache.lines_for(1).size() == 1);
    // Read back from the cache: the same number, no second measurement.
    CHECK(*host::cpu_peak(1).flops == *peak.flops);
    CHECK_THAT(host::cpu_peak(1).source, Catch::Matchers::Contains("cached in"));
    host::set_compute_threads(torch_before);
}

TEST_CASE("runs that start together on a machine with no cached peak share one measurement", "[mfu][sim]") {
    FreshPeakCache cache;
    // Two simulated runs on the "measured" device, started at once: the second waits for the
    // first's measurement (a lock beside the cache) and reads it, so both simulate the same device.
    const std::string file = cache.dir.file("t.toml", kTinyExperiment);
    auto command = [&](const std::string& db) {
        return "XDG_CACHE_HOME=" + cache.dir.path.string() + " " + PLEXUS_BINARY + " run " + file + " --db " + db +
               " --set launch.mode=sim --set launch.ranks=2 --set sim.device=measured --set train.steps=2 --progress "
               "none";
    };
    const auto both = run_command(command(cache.dir / "a.db") + " > " + cache.dir / "a.log" + " 2>&1 & " +
                                  command(cache.dir / "b.db") + " > " + cache.dir / "b.log" + " 2>&1 & wait");
    REQUIRE(both.exit_code == 0);
    host::ResultsStore a(cache.dir / "a.db"), b(cache.dir / "b.db");
    const double peak_a = NewestRun(a)["peak_flops"], peak_b = NewestRun(b)["peak_flops"];
    CHECK(peak_a > 0);
    CHECK(peak_a == peak_b);
    CHECK(cache.lines_for(1).size() == 1);
}
