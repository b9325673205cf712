// bench/loss: the next-token loss's forward and backward over one step's logits, plexus's
// cross_entropy (sdk/include/plexus/kit/loss.hpp) against LibTorch's composite
// torch::nn::functional::cross_entropy, alternating rounds in one run. The logits' gradient is
// what the LM head's backward consumes, so each iteration ends with it materialized.
//
//   build/bench/loss [--rows N --vocab V --iters K --rounds R --device cpu|cuda --dtype fp32|bf16]
//
// Defaults: the large CPU GPT step's logits (4 x 256 tokens, vocabulary 8192), float32. On a GPU,
// --rows 16384 --vocab 50304 --dtype bf16 is the 1.3B step's (8 x 2048 tokens): bf16 logits
// under autocast, normalized in float by both.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include <plexus/kit/compat.hpp>
#include <plexus/kit/loss.hpp>
#include <torch/torch.h>

#include "bench_util.hpp"
#include "device/cuda.hpp"
#include "runtime/harness.hpp"
#include "device/dispatch.hpp"

using namespace plexus;

int main(int argc, char** argv) {
    const bench::Flags a(
        argc, argv,
        {{"rows", "1024"}, {"vocab", "8192"}, {"iters", "10"}, {"rounds", "7"}, {"device", "cpu"}, {"dtype", "fp32"}},
        "loss [--rows N --vocab V --iters K --rounds R --device cpu|cuda --dtype fp32|bf16]");
    host::keep_freed_memory();
    host::register_operators();  // as the plugin registry does: the GPU's fused loss kernels
    host::set_compute_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
    const torch::Device device(a.text("device"));
    host::gpu::set_current(device);
    const auto dtype = a.text("dtype") == "bf16" ? torch::kBFloat16 : torch::kFloat;
    const int64_t rows = a["rows"], vocab = a["vocab"], iters = a["iters"];

    torch::manual_seed(1);
    const auto logits =
        (torch::randn({rows, vocab}, torch::TensorOptions().device(device)) * 2).to(dtype).requires_grad_();
    const auto targets = torch::randint(0, vocab, {rows}, torch::TensorOptions().dtype(torch::kLong).device(device));
    compat::AutocastGuard autocast(device.type(), dtype);  // as train.precision = "bf16" runs the loss

    using Loss = torch::Tensor (*)(const torch::Tensor&, const torch::Tensor&);
    const Loss composite = [](const torch::Tensor& x, const torch::Tensor& t) {
        return torch::nn::functional::cross_entropy(x, t);
    };
    const Loss fused = [](const torch::Tensor& x, const torch::Tensor& t) { return plexus::cross_entropy(x, t); };
    // Seconds per forward + backward, over `iters` of them.
    auto round = [&](Loss loss) {
        host::gpu::synchronize(device);
        const auto t0 = std::chrono::steady_clock::now();
        for (int64_t i = 0; i < iters; ++i) {
            logits.mutable_grad() = torch::Tensor();
            loss(logits, targets).backward();
        }
        host::gpu::synchronize(device);
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    };
    round(fused), round(composite);  // warm-up: allocator, kernels
    std::vector<double> ours, theirs, ratios;
    for (int64_t r = 0; r < a["rounds"]; ++r) {
        ours.push_back(round(fused));
        theirs.push_back(round(composite));
        ratios.push_back(ours.back() / theirs.back());
    }
    std::printf("loss forward + backward, %lld x %lld %s logits on %s:\n", (long long)rows, (long long)vocab,
                a.text("dtype").c_str(), device.str().c_str());
    std::printf("  plexus::cross_entropy:     %8.3f ms\n", bench::median(ours) * 1e3);
    std::printf("  torch composite:           %8.3f ms\n", bench::median(theirs) * 1e3);
    std::printf("  time plexus / composite: %.2f (median of per-round ratios; range %.2f to %.2f)\n",
                bench::median(ratios), *std::min_element(ratios.begin(), ratios.end()),
                *std::max_element(ratios.begin(), ratios.end()));
    std::printf("RESULT loss ratio=%.3f plexus_ms=%.3f composite_ms=%.3f\n", bench::median(ratios),
                bench::median(ours) * 1e3, bench::median(theirs) * 1e3);
    return 0;
}
