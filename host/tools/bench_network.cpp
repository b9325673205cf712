#include "tools/bench_network.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include <plexus/error.hpp>
#include <torch/torch.h>

#include "runtime/harness.hpp"
#include "transport/launch.hpp"
#include "transport/c10d.hpp"
#include "base/text.hpp"

namespace plexus::host {

LinkFit fit_ring_all_reduce(int ranks, const std::vector<double>& bytes, const std::vector<double>& seconds) {
    if (ranks < 2 || bytes.size() != seconds.size() || bytes.size() < 2)
        throw Error("the network fit needs at least 2 ranks and 2 sizes");
    // t = a + b S with a = 2(n-1) alpha and b = 2(n-1) / (n B); weights 1/t^2.
    double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (size_t i = 0; i < bytes.size(); ++i) {
        const double w = 1.0 / (seconds[i] * seconds[i]);
        sw += w;
        sx += w * bytes[i];
        sy += w * seconds[i];
        sxx += w * bytes[i] * bytes[i];
        sxy += w * bytes[i] * seconds[i];
    }
    const double b = (sw * sxy - sx * sy) / (sw * sxx - sx * sx);
    const double a = (sy - b * sx) / sw;
    const double n = ranks;
    LinkFit fit;
    fit.latency = std::max(0.0, a / (2 * (n - 1)));
    fit.bandwidth = b > 0 ? 2 * (n - 1) / (n * b) : 1e12;
    return fit;
}

int bench_network(int ranks) {
    using Clock = std::chrono::steady_clock;
    if (ranks < 2) throw Error("plexus bench network needs --ranks >= 2");
    set_compute_threads(1);
    std::vector<double> sizes;
    for (double b = 4096; b <= 16.0 * (1 << 20); b *= 4) sizes.push_back(b);
    std::vector<double> times(sizes.size());
    const int port = free_port();
    std::printf("plexus bench network: all-reduce over c10d/Gloo, %d ranks on this machine (loopback TCP)\n", ranks);
    std::vector<std::thread> threads;
    std::vector<std::string> errors(static_cast<size_t>(ranks));
    for (int r = 0; r < ranks; ++r)
        threads.emplace_back([&, r] {
            try {
                Rendezvous rv;
                rv.master_port = port;
                rv.rank = r;
                rv.world_size = ranks;
                rv.timeout_s = 120;
                auto transport = make_gloo_transport(rv);
                for (size_t i = 0; i < sizes.size(); ++i) {
                    auto t = torch::ones({static_cast<int64_t>(sizes[i] / 4)});
                    transport->all_reduce(t)->wait();  // warm up this size
                    // The median of several timed calls: robust to a descheduled rank.
                    std::vector<double> samples;
                    const int iters = sizes[i] <= (1 << 20) ? 30 : 6;
                    for (int k = 0; k < iters; ++k) {
                        transport->barrier();
                        const auto t0 = Clock::now();
                        transport->all_reduce(t)->wait();
                        samples.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
                    }
                    std::nth_element(samples.begin(), samples.begin() + iters / 2, samples.end());
                    if (r == 0) times[i] = samples[static_cast<size_t>(iters / 2)];
                }
            } catch (const std::exception& e) { errors[static_cast<size_t>(r)] = message_of(e); }
        });
    for (auto& t : threads) t.join();
    for (const auto& e : errors)
        if (!e.empty()) throw Error("bench network: " + e);
    const auto fit = fit_ring_all_reduce(ranks, sizes, times);
    std::printf("%10s %12s %12s %8s\n", "size", "measured us", "model us", "ratio");
    for (size_t i = 0; i < sizes.size(); ++i) {
        const double model = 2.0 * (ranks - 1) * (fit.latency + sizes[i] / (ranks * fit.bandwidth));
        std::printf("%8.0f KiB %12.1f %12.1f %8.2f\n", sizes[i] / 1024, times[i] * 1e6, model * 1e6, times[i] / model);
    }
    std::printf("fit of 2(n-1)(alpha + S/(nB)): alpha %.2f us, B %.3f GB/s\n", fit.latency * 1e6, fit.bandwidth / 1e9);
    std::printf("[sim] settings: --set sim.latency_us=%.3f --set sim.bandwidth_gbs=%.4f\n", fit.latency * 1e6,
                fit.bandwidth / 1e9);
    return 0;
}

}  // namespace plexus::host
