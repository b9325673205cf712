// bench/allreduce: bus bandwidth of plexus's c10d (Gloo) all-reduce on 2 ranks, for sizes from
// 4 KiB to 64 MiB, beside a plain memcpy of the same size measured in the same run.
// busbw follows nccl-tests: algbw = bytes / time, busbw = algbw * 2(n-1)/n.
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "runtime/harness.hpp"
#include "transport/launch.hpp"
#include "transport/c10d.hpp"

using namespace plexus;
using Clock = std::chrono::steady_clock;

namespace {

double seconds(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int iterations_for(int64_t bytes) { return bytes <= (1 << 20) ? 50 : bytes <= (16 << 20) ? 10 : 4; }

}  // namespace

int main() {
    host::set_compute_threads(1);
    const int world = 2;
    const int port = host::free_port();
    std::vector<int64_t> sizes;
    for (int64_t b = 4 << 10; b <= (64 << 20); b *= 4) sizes.push_back(b);
    std::vector<double> times(sizes.size());

    std::vector<std::thread> ranks;
    for (int r = 0; r < world; ++r)
        ranks.emplace_back([&, r] {
            host::Rendezvous rv;
            rv.master_port = port;
            rv.rank = r;
            rv.world_size = world;
            rv.timeout_s = 120;
            auto transport = host::make_gloo_transport(rv);
            for (size_t i = 0; i < sizes.size(); ++i) {
                auto t = torch::ones({sizes[i] / 4});
                transport->all_reduce(t)->wait();  // warm up this size
                transport->barrier();
                const int iters = iterations_for(sizes[i]);
                const auto t0 = Clock::now();
                for (int k = 0; k < iters; ++k) transport->all_reduce(t)->wait();
                transport->barrier();
                if (r == 0) times[i] = seconds(t0) / iters;
            }
        });
    for (auto& t : ranks) t.join();

    std::printf("all-reduce over c10d/Gloo, %d ranks on this machine (loopback TCP), float32\n", world);
    std::printf("%10s %12s %12s %12s %14s %10s\n", "size", "time (us)", "algbw GB/s", "busbw GB/s", "memcpy GB/s",
                "bus/memcpy");
    for (size_t i = 0; i < sizes.size(); ++i) {
        auto src = torch::ones({sizes[i] / 4}), dst = torch::empty({sizes[i] / 4});
        dst.copy_(src);
        const int iters = iterations_for(sizes[i]) * 4;
        const auto t0 = Clock::now();
        for (int k = 0; k < iters; ++k) dst.copy_(src);
        const double memcpy_bw = static_cast<double>(sizes[i]) / (seconds(t0) / iters) / 1e9;
        const double algbw = static_cast<double>(sizes[i]) / times[i] / 1e9;
        const double busbw = algbw * 2.0 * (world - 1) / world;
        char label[32];
        if (sizes[i] >= (1 << 20))
            std::snprintf(label, sizeof label, "%lld MiB", static_cast<long long>(sizes[i] >> 20));
        else
            std::snprintf(label, sizeof label, "%lld KiB", static_cast<long long>(sizes[i] >> 10));
        std::printf("%10s %12.1f %12.3f %12.3f %14.2f %10.3f\n", label, times[i] * 1e6, algbw, busbw, memcpy_bw,
                    busbw / memcpy_bw);
    }
    return 0;
}
