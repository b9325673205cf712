#include "device/peak.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sys/file.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <unistd.h>
#include <vector>

#include <torch/torch.h>

namespace plexus::host {

namespace fs = std::filesystem;

void set_compute_threads(int threads) {
    // OpenBLAS ignores LibTorch's setting and keeps its own pool, unless it is the OpenMP build,
    // which shares LibTorch's OpenMP pool (scripts/setup.sh selects it). Measured on the bench's
    // large GPT step (2 cores): OpenMP OpenBLAS with both at 2 threads, 1217 tok/s and 74-80% MFU;
    // the pthreads build at 2 threads with LibTorch at 1, 1150 tok/s and 68% (its elementwise work
    // single-threaded beside OpenBLAS's spinning pool); the pthreads build with LibTorch at 2,
    // 625 tok/s (two pools spinning against each other). So with the pthreads build the cores go
    // to OpenBLAS and LibTorch stays single-threaded. A LibTorch without OpenBLAS (PyTorch's
    // wheels use MKL, which follows LibTorch's pool) gets the cores.
    using SetThreads = void (*)(int);
    using GetParallel = int (*)();
    auto set_blas_threads = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    auto blas_parallel = reinterpret_cast<GetParallel>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
    constexpr int kOpenBlasOpenMP = 2;  // openblas_get_parallel(): 0 sequential, 1 pthreads, 2 OpenMP
    const bool own_pool = set_blas_threads && !(blas_parallel && blas_parallel() == kOpenBlasOpenMP);
    at::set_num_threads(own_pool ? 1 : threads);
    if (set_blas_threads) set_blas_threads(threads);
}

double measure_cpu_matmul_flops(double seconds, int64_t size) {
    torch::NoGradGuard no_grad;
    auto a = torch::randn({size, size});
    auto b = torch::randn({size, size});
    auto c = torch::empty({size, size});
    for (int i = 0; i < 3; ++i) torch::mm_out(c, a, b);  // warm up threads and caches
    const double flops_per_mm = 2.0 * size * size * size;
    // The best of several timed windows: a shared machine only ever slows a window down.
    std::vector<double> rates;
    const auto t_end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < t_end || rates.size() < 3) {
        const auto t0 = std::chrono::steady_clock::now();
        int n = 0;
        do {
            torch::mm_out(c, a, b);
            ++n;
        } while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds / 5);
        const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        rates.push_back(n * flops_per_mm / dt);
    }
    return *std::max_element(rates.begin(), rates.end());
}

std::string peak_cache_path() {
    const char* xdg = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    fs::path base = xdg && *xdg ? fs::path(xdg) : fs::path(home ? home : "/tmp") / ".cache";
    return (base / "plexus" / "peak.txt").string();
}

namespace {

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            auto p = line.find(':');
            return p == std::string::npos ? line : line.substr(p + 2);
        }
    return "unknown cpu";
}

// OpenBLAS's build ("... USE_OPENMP Haswell ...") where it is the BLAS: switching between its
// OpenMP and pthreads builds changes the peak.
std::string blas_config() {
    using GetConfig = const char* (*)();
    auto fn = reinterpret_cast<GetConfig>(dlsym(RTLD_DEFAULT, "openblas_get_config"));
    return fn ? std::string(" | ") + fn() : std::string();
}

// One line per measurement: "<key>\t<flops>"; the key names the CPU, threads, LibTorch and BLAS.
// (Until 2026-11-27 the key said "threads N" and a simulated cluster's one-thread entry could be
// measured with all the threads; the new wording leaves those numbers unread.)
std::string cache_key(int threads) {
    return cpu_model() + " | " + std::to_string(threads) + " thread(s) | libtorch " + TORCH_VERSION + blas_config();
}

}  // namespace

// An exclusive lock on a file beside the cache, for as long as it lives (none if it cannot be
// made: the cache is then only as safe as its atomic rename).
class CacheLock {
public:
    explicit CacheLock(const std::string& path)
        : fd_(::open((path + ".lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)) {
        if (fd_ >= 0) ::flock(fd_, LOCK_EX);
    }
    ~CacheLock() {
        if (fd_ >= 0) ::close(fd_);  // closing releases the lock
    }
    CacheLock(const CacheLock&) = delete;
    CacheLock& operator=(const CacheLock&) = delete;

private:
    int fd_;
};

Peak cpu_peak(int threads, bool refresh, bool verbose) {
    const std::string key = cache_key(threads);
    const std::string path = peak_cache_path();
    std::error_code ec;
    fs::create_directories(fs::path(path).parent_path(), ec);
    // Held from reading to writing: a run that finds no number waits for the one measuring.
    CacheLock lock(path);
    std::vector<std::string> lines;
    {
        std::ifstream in(path);
        std::string line;
        while (std::getline(in, line)) {
            auto tab = line.find('\t');
            if (tab == std::string::npos) continue;
            if (line.substr(0, tab) == key && !refresh) {
                try {
                    return {std::stod(line.substr(tab + 1)),
                            "measured fp32 matmul, " + std::to_string(threads) + " thread(s), cached in " + path};
                } catch (...) {
                    // a damaged line: measure again
                }
            }
            if (line.substr(0, tab) != key) lines.push_back(line);
        }
    }
    if (verbose) std::cerr << "measuring this CPU's float32 matmul peak (" << threads << " thread(s), ~2 s)...\n";
    set_compute_threads(threads);  // the count the key names, whatever the caller had set
    // Kept as written to the cache, so that this run and later ones use the very same number
    // (the simulated cluster's times depend on it bit for bit).
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", measure_cpu_matmul_flops(2.0));
    const double flops = std::stod(text);
    const std::string tmp = path + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp);
        for (const auto& l : lines) out << l << "\n";
        out << key << "\t" << text << "\n";
    }
    fs::rename(tmp, path, ec);  // atomic: a reader without the lock never sees half a file
    return {flops, "measured fp32 matmul, " + std::to_string(threads) + " thread(s)"};
}

Peak gpu_peak(const std::string& name) {
    // Dense bf16 tensor-core peaks from the datasheets (torchtitan's table).
    struct Entry {
        const char* match;
        double flops;
        const char* label;
    };
    static const Entry table[] = {
        {"H200", 989e12, "H200 bf16 dense"},         {"H100 PCIe", 756e12, "H100 PCIe bf16 dense"},
        {"H100 NVL", 835e12, "H100 NVL bf16 dense"}, {"H100", 989e12, "H100 SXM bf16 dense"},
        {"A100", 312e12, "A100 bf16 dense"},         {"B200", 2.25e15, "B200 bf16 dense"},
        {"MI300X", 1300e12, "MI300X bf16 dense"},
    };
    for (const auto& e : table)
        if (name.find(e.match) != std::string::npos) return {e.flops, std::string("datasheet ") + e.label};
    return {std::nullopt, "unknown GPU '" + name + "': set train.peak_flops to get MFU"};
}

}  // namespace plexus::host
