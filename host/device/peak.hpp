// The peak FLOP/s that MFU divides by: measured on CPU (sustained float32 matmul, cached per
// machine and thread count), the datasheet figure on known GPUs, or unknown (MFU is then NULL,
// never guessed).
#pragma once

#include <optional>
#include <string>

namespace plexus::host {

struct Peak {
    std::optional<double> flops;  // FLOP/s; empty when unknown
    std::string source;           // "measured fp32 matmul ...", "datasheet H100 SXM bf16 dense", ...
};

// Model FLOPs utilization: achieved model FLOP/s over the peak (per rank).
inline double mfu(double flops_per_token, double tokens_per_second, double peak_flops) {
    return flops_per_token * tokens_per_second / peak_flops;
}

// Gives `threads` cores to LibTorch's intra-op pool and to OpenBLAS; with OpenBLAS's pthreads
// build, whose pool would fight LibTorch's for the cores, LibTorch's stays at one thread
// (measurements in peak.cpp).
void set_compute_threads(int threads);

// Sustained float32 matmul FLOP/s with the current thread settings, over about `seconds`.
double measure_cpu_matmul_flops(double seconds, int64_t size = 1024);

// The CPU peak for `threads` threads: read from the cache, or measured at that many threads
// (set_compute_threads(threads), left so) and cached. One process measures a key at a time (a
// lock beside the cache); the others then read its number, so concurrent runs on one machine
// share one peak. `refresh` forces a new measurement.
Peak cpu_peak(int threads, bool refresh = false, bool verbose = false);

// Datasheet dense bf16 peak of a GPU by its device name ("NVIDIA H100 80GB HBM3"), if known.
Peak gpu_peak(const std::string& device_name);

// Where the CPU peak cache lives ($XDG_CACHE_HOME or ~/.cache)/plexus/peak.txt.
std::string peak_cache_path();

}  // namespace plexus::host
