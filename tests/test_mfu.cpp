#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "harness.hpp"
#include "helpers.hpp"
#include "peak.hpp"

using namespace plexus;
using namespace plexus::test;

TEST_CASE("the PaLM FLOPs formula reproduces the published Llama-2-7B figures", "[mfu]") {
    // Llama-2-7B: 6,738,415,616 parameters (embeddings included, as IBM counted), 32 layers,
    // 32 heads of 128, T = 4096: 46.87 GFLOP/token. At 3,760 tokens/s on an A100 (312 TFLOP/s)
    // that is the blog's 57% MFU (algorithms.md section 6, consistency check).
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
    CHECK(lr_factor("cosine", 499, 1000, 11000, 0.1) == Approx(0.5));   // halfway through warm-up
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
