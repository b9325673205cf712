// GPU tests: compiled only in CUDA builds (tests/CMakeLists.txt), run by scripts/device-run.sh on
// a machine with a GPU. Each compares the GPU path with the CPU one or with exact arithmetic.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <thread>

#include <plexus/kit/compat.hpp>
#include <plexus/kit/layer_norm.hpp>
#include <plexus/kit/loss.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "device/cuda.hpp"
#include "transport/launch.hpp"
#include "device/dispatch.hpp"
#include "device/peak.hpp"
#include "transport/c10d.hpp"
#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;

namespace {

const torch::Device kGpu(torch::kCUDA, 0);

// The largest difference over the largest reference value (or over `floor`, if larger: the
// natural scale of a sum that may land near 0).
double max_rel(const torch::Tensor& a, const torch::Tensor& b, double floor = 1e-30) {
    if (a.numel() == 0 && b.numel() == 0) return 0.0;
    // in float64 on a's device: only the result comes back (the layer norm test compares
    // hundreds of tensors of up to 12M elements)
    const auto x = a.to(torch::kFloat64), y = b.to(x.device(), torch::kFloat64);
    return ((x - y).abs().max() / y.abs().max().clamp_min(floor)).item<double>();
}

// The tiny GPT on `device`, with `from`'s parameters when given.
std::shared_ptr<Model> tiny_gpt(host::HostContext& ctx, const std::shared_ptr<Model>& from = nullptr) {
    auto model = ctx.make_model();
    if (from) {
        torch::NoGradGuard no_grad;
        auto src = from->parameters(), dst = model->parameters();
        REQUIRE(src.size() == dst.size());
        for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
    }
    return model;
}

}  // namespace

TEST_CASE("the GPU is there and its datasheet peak is known", "[gpu]") {
    REQUIRE(torch::cuda::is_available());
    REQUIRE(host::gpu::built_with_cuda());
    const auto name = host::gpu::device_name(kGpu);
    INFO(name);
    REQUIRE(!name.empty());
    const auto peak = host::gpu_peak(name);
    if (name.find("H100") != std::string::npos || name.find("H200") != std::string::npos)
        REQUIRE(peak.flops.value_or(0) >= 756e12);
    // RunContext::tensor_bytes() counts this device's tensors (PETRA measures stored activations with it).
    TempDir dir;
    auto cfg = resolve_text(dir, kTinyExperiment);
    host::HostContext ctx(cfg, kGpu, 32);
    const auto before = ctx.tensor_bytes();
    REQUIRE(before >= 0);
    auto block = torch::empty({1 << 20}, kGpu);
    CHECK(ctx.tensor_bytes() - before >= 4 << 20);
}

TEST_CASE("GPT on the GPU computes the CPU's loss and gradients in float32", "[gpu]") {
    TempDir dir;
    auto cfg = resolve_text(dir, kTinyExperiment);
    host::HostContext cpu(cfg, torch::kCPU, 32), gpu(cfg, kGpu, 32);
    auto a = tiny_gpt(cpu);
    auto b = tiny_gpt(gpu, a);
    torch::manual_seed(3);
    const auto ids = torch::randint(0, 32, {4, 33}, torch::kLong);
    const auto x = ids.narrow(1, 0, 32), y = ids.narrow(1, 1, 32);
    auto la = a->loss(a->forward(x), y);
    auto lb = b->loss(b->forward(x.to(kGpu)), y.to(kGpu));
    la.backward();
    lb.backward();
    CHECK(std::abs(la.item<double>() - lb.item<double>()) < 1e-5 * std::abs(la.item<double>()));
    auto pa = a->parameters(), pb = b->parameters();
    for (size_t i = 0; i < pa.size(); ++i) CHECK(max_rel(pb[i].grad(), pa[i].grad()) < 1e-4);
}

TEST_CASE("bf16 autocast on the GPU: bf16 products, float32 loss, close to float32, then off again", "[gpu]") {
    TempDir dir;
    auto cfg = resolve_text(dir, kTinyExperiment);
    host::HostContext gpu(cfg, kGpu, 32);
    auto model = tiny_gpt(gpu);
    torch::manual_seed(4);
    const auto ids = torch::randint(0, 32, {8, 33}, torch::TensorOptions().dtype(torch::kLong).device(kGpu));
    const auto x = ids.narrow(1, 0, 32), y = ids.narrow(1, 1, 32);
    const auto m = torch::randn({64, 64}, kGpu);
    double fp32 = 0, bf16 = 0;
    {
        torch::NoGradGuard no_grad;
        fp32 = model->loss(model->forward(x), y).item<double>();
        {
            compat::AutocastGuard autocast(torch::kCUDA, torch::kBFloat16);
            CHECK(torch::matmul(m, m).scalar_type() == torch::kBFloat16);
            const auto loss = model->loss(model->forward(x), y);
            CHECK(loss.scalar_type() == torch::kFloat);
            bf16 = loss.item<double>();
        }
        CHECK(torch::matmul(m, m).scalar_type() == torch::kFloat);
    }
    CHECK(bf16 != fp32);                                   // it did run in bf16
    CHECK(std::abs(bf16 - fp32) < 2e-2 * std::abs(fp32));  // bf16's 8-bit mantissa, not garbage
}

TEST_CASE("cross_entropy of bf16 logits under autocast on the GPU: the exact loss and its gradient rounded once",
          "[gpu]") {
    host::register_operators();  // plexus's fused kernels: what plexus::cross_entropy takes on a GPU
    REQUIRE(plexus::detail::host_kernel_on("plexus::cross_entropy_forward", c10::DispatchKey::CUDA));
    torch::manual_seed(5);
    auto logits64 = torch::randn({96, 1000}, torch::kFloat64) * 3.0;
    const auto targets = torch::randint(0, 1000, {96}, torch::kLong);
    for (int64_t r = 0; r < 24; ++r) logits64[r][targets[r].item<int64_t>()] = logits64[r].max() + 12.0;  // p near 1
    const auto logits = logits64.to(torch::kBFloat16);
    // The exact loss and gradient of the rounded logits (float64): torch's own float path cancels
    // in p - 1 at the confident rows' targets by more than a bf16 rounding.
    auto ref_x = logits.to(torch::kFloat64).requires_grad_();
    const auto ref_loss = torch::nn::functional::cross_entropy(ref_x, targets);
    ref_loss.backward();
    auto x = logits.to(kGpu).requires_grad_();
    torch::Tensor loss;
    {
        compat::AutocastGuard autocast(torch::kCUDA, torch::kBFloat16);
        loss = plexus::cross_entropy(x, targets.to(kGpu));
    }
    loss.backward();
    CHECK(loss.scalar_type() == torch::kFloat);
    CHECK(x.grad().scalar_type() == torch::kBFloat16);
    CHECK(std::abs(loss.item<double>() - ref_loss.item<double>()) < 1e-5 * ref_loss.item<double>());
    const auto ours = x.grad().to(torch::kCPU, torch::kFloat64), exact = ref_x.grad();
    // one bf16 rounding (at most 2^-8 relative) of a float value (its own error ~1e-6)
    CHECK(((ours - exact).abs() / exact.abs().clamp_min(1e-30)).max().item<double>() < std::ldexp(1.0, -8) + 1e-5);
}

TEST_CASE("AdamW's fused GPU kernel computes the CPU loop's update, clipping factor folded in", "[gpu]") {
    TempDir dir;
    auto cfg = resolve_text(dir, std::string(kTinyExperiment) + "\n");
    host::HostContext cpu(cfg, torch::kCPU, 32), gpu(cfg, kGpu, 32);
    torch::manual_seed(5);
    std::vector<ParamSlot> on_cpu, on_gpu;
    for (auto shape : {std::vector<int64_t>{16, 8}, std::vector<int64_t>{8}, std::vector<int64_t>{3, 5, 7}}) {
        auto p = torch::randn(shape);
        on_cpu.push_back({"p" + std::to_string(on_cpu.size()), p.clone(), shape});
        on_gpu.push_back({"p" + std::to_string(on_gpu.size()), p.to(kGpu), shape});
    }
    std::vector<torch::Tensor> initial;
    for (const auto& s : on_cpu) initial.push_back(s.param.clone());
    auto opt_cpu = cpu.make_optimizer(on_cpu, "optimizer");
    auto opt_gpu = gpu.make_optimizer(on_gpu, "optimizer");
    for (int step = 0; step < 5; ++step) {
        std::vector<torch::Tensor> g_cpu, g_gpu;
        for (const auto& s : on_cpu) {
            g_cpu.push_back(torch::randn(s.full_shape));
            g_gpu.push_back(g_cpu.back().to(kGpu));
        }
        if (step % 2 == 0) {
            opt_cpu->step(g_cpu, 0.7);
            opt_gpu->step(g_gpu, 0.7);
        } else {  // a clipping factor: the CPU pass multiplies, the fused kernel divides
            opt_cpu->step_scaled(g_cpu, 0.7, 0.3);
            opt_gpu->step_scaled(g_gpu, 0.7, 0.3);
        }
    }
    for (size_t i = 0; i < on_cpu.size(); ++i) {
        INFO("tensor " << i);
        CHECK(max_rel(on_gpu[i].param, on_cpu[i].param) < 1e-5);
        // and it moved: lr 1e-2 over 5 steps is far above that tolerance
        CHECK(max_rel(on_gpu[i].param, initial[i]) > 1e-3);
    }
}

TEST_CASE("NCCL transport on one GPU: every collective, CPU tensors staged and copied back", "[gpu]") {
    host::Rendezvous rv;
    rv.master_port = host::free_port();
    rv.timeout_s = 60;
    auto t = host::make_nccl_transport(rv, kGpu);
    CHECK(std::string(t->backend()) == "nccl");
    auto x = torch::arange(12, torch::TensorOptions().dtype(torch::kFloat).device(kGpu));
    auto expect = x.clone();
    t->all_reduce(x, ReduceOp::Sum)->wait();
    CHECK(torch::equal(x.cpu(), expect.cpu()));
    t->all_reduce(x, ReduceOp::Mean)->wait();
    CHECK(torch::equal(x.cpu(), expect.cpu()));
    auto on_cpu = torch::full({5}, 2.5);
    t->all_reduce(on_cpu, ReduceOp::Max)->wait();
    CHECK(on_cpu.device().is_cpu());
    CHECK(torch::equal(on_cpu, torch::full({5}, 2.5)));
    auto gathered = torch::zeros({12}, kGpu);
    t->all_gather(gathered, x)->wait();
    CHECK(torch::equal(gathered.cpu(), expect.cpu()));
    auto shard = torch::zeros({12}, kGpu);
    t->reduce_scatter(shard, x, ReduceOp::Sum)->wait();
    CHECK(torch::equal(shard.cpu(), expect.cpu()));
    // Outputs on the CPU: the results land on the GPU first and must be copied back into them
    // (zeros would stay zeros if the copy-back were lost; an identity on one rank shows nothing).
    auto gathered_cpu = torch::zeros({12});
    t->all_gather(gathered_cpu, x)->wait();
    CHECK(torch::equal(gathered_cpu, expect.cpu()));
    auto shard_cpu = torch::zeros({12});
    t->reduce_scatter(shard_cpu, x, ReduceOp::Sum)->wait();
    CHECK(torch::equal(shard_cpu, expect.cpu()));
    auto b = torch::full({3}, 7.0);
    t->broadcast(b, 0)->wait();
    CHECK(torch::equal(b, torch::full({3}, 7.0)));
    t->barrier();
    auto sub = t->subgroup({0});
    sub->all_reduce(x, ReduceOp::Sum)->wait();
    CHECK(torch::equal(x.cpu(), expect.cpu()));
    CHECK(t->stats().calls == 10);  // the subgroup counts into the parent's figures
}

TEST_CASE("Gloo all-reduces CUDA tensors by staging them on the CPU (2 ranks)", "[gpu]") {
    std::vector<torch::Tensor> out(2);
    with_gloo_ranks(2, [&](int r, std::shared_ptr<Transport> t) {
        auto x = torch::full({4}, static_cast<double>(r + 1), kGpu);
        t->all_reduce(x, ReduceOp::Mean)->wait();
        out[r] = x;
    });
    for (const auto& x : out) {
        CHECK(x.is_cuda());
        CHECK(torch::equal(x.cpu(), torch::full({4}, 1.5)));
    }
}

TEST_CASE("plexus run on the GPU: bf16 trains like fp32, over NCCL with DDP, memory from the allocator", "[gpu]") {
    TempDir dir;
    const auto file = dir.file("exp.toml", kTinyExperiment);
    const auto fp32 = run_recorded(file, dir / "r.db", "--set train.device=cuda --set train.peak_flops=0");
    const auto bf16 = run_recorded(file, dir / "r.db", "--set train.device=cuda --set train.precision=bf16");
    INFO("fp32 " << fp32["final_loss"] << ", bf16 " << bf16["final_loss"]);
    CHECK(bf16["final_loss"] < 0.8 * std::log(32.0));  // it learned (uniform guessing: log 32)
    CHECK(std::abs(bf16["final_loss"] - fp32["final_loss"]) < 0.1);
    CHECK(fp32["peak_tensor_bytes"] > 4.0 * fp32["params"]);  // at least the float32 parameters
    CHECK(fp32["peak_tensor_bytes"] < 512e6);
    CHECK(fp32.text.at("peak_source").find("datasheet") != std::string::npos);

    const auto port = std::to_string(host::free_port());
    const auto res = run_plexus("run " + file + " --db " + (dir / "n.db") +
                                    " --set train.device=cuda --set strategy.name=ddp --set launch.mode=env",
                                "RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + port);
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(dir / "n.db");
    NewestRun nccl(store);
    CHECK(nccl.text.at("transport") == "nccl");
    CHECK(std::abs(nccl["final_loss"] - fp32["final_loss"]) < 1e-3);  // DDP of one rank = single
}

TEST_CASE("checkpoints on the GPU: its random state round-trips, and a killed run resumes where it was", "[gpu]") {
    const auto saved = host::gpu::rng_state(kGpu);
    const auto first = torch::rand({1000}, torch::TensorOptions().device(kGpu));
    host::gpu::set_rng_state(kGpu, saved);
    CHECK(torch::equal(torch::rand({1000}, torch::TensorOptions().device(kGpu)), first));

    TempDir dir;
    const std::string setup = std::string(kTinyExperiment) + "\n[checkpoint]\nevery_steps = 10\n";
    const auto clean = dir.file("clean.toml", setup);
    const auto killed = dir.file("killed.toml", setup + "\n[[faults]]\nkind = \"kill\"\nrank = 0\nstep = 27\n");
    const std::string on_gpu = " --set train.device=cuda --set train.steps=60";
    REQUIRE(run_plexus("run " + clean + " --db " + (dir / "clean.db") + on_gpu).exit_code == 0);
    CHECK(run_plexus("run " + killed + " --db " + (dir / "k.db") + on_gpu).exit_code == 137);
    const auto resumed = run_plexus("run --resume 1 --db " + (dir / "k.db"));
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(resumed.output.find("from its checkpoint at step 20") != std::string::npos);
    host::ResultsStore a(dir / "clean.db"), b(dir / "k.db");
    const auto want = a.metric_series(1, "loss"), got = b.metric_series(1, "loss");
    REQUIRE(got.size() == want.size());
    double worst = 0;
    size_t identical = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        CHECK(got[i].first == want[i].first);
        worst = std::max(worst, std::abs(got[i].second - want[i].second));
        identical += got[i].second == want[i].second;
    }
    // Model, AdamW's moments and the data position came back: the curves agree to the GPU's
    // run-to-run reproducibility (bit for bit where its kernels are deterministic).
    INFO("worst difference " << worst << ", " << identical << " of " << want.size() << " losses bit-identical");
    CHECK(worst < 1e-5);
    WARN("GPU resume: worst loss difference " << worst << ", " << identical << " of " << want.size()
                                              << " bit-identical");
}

TEST_CASE("plexus's layer norm kernels compute LibTorch's values and gradients", "[gpu]") {
    // The operators as the GPU registers them (plexus's kernels, LibTorch's beyond 8192 wide)
    // against LibTorch's CUDA kernels arranged to the same contract.
    host::register_operators();
    REQUIRE(plexus::detail::host_layer_norm_on(c10::DispatchKey::CUDA));
    using Tensors4 = std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>;
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto forward = dispatcher.findSchemaOrThrow("plexus::layer_norm_forward", "")
                             .typed<Tensors4(const torch::Tensor&, const c10::optional<torch::Tensor>&,
                                             const torch::Tensor&, const torch::Tensor&, double, c10::ScalarType)>();
    const auto backward = dispatcher.findSchemaOrThrow("plexus::layer_norm_backward", "")
                              .typed<Tensors4(const c10::optional<torch::Tensor>&, const c10::optional<torch::Tensor>&,
                                              const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                              const torch::Tensor&, c10::optional<c10::ScalarType>)>();
    torch::manual_seed(6);
    using Dtype = c10::optional<c10::ScalarType>;
    for (const int64_t width : {2048, 100, 32, 1, 8192, 8193}) {
        // 1500 rows: more than the backward's blocks (4 per multiprocessor), so blocks sum several rows.
        for (const int64_t rows : {0, 7, 300, 1500}) {
            for (const Dtype residual_dtype :
                 {Dtype(), Dtype(torch::kFloat), Dtype(torch::kBFloat16), Dtype(torch::kHalf)}) {
                for (const auto out_dtype : {torch::kFloat, torch::kBFloat16}) {
                    INFO("width " << width << ", rows " << rows << ", residual "
                                  << (residual_dtype ? c10::toString(*residual_dtype) : "none") << ", normed "
                                  << c10::toString(out_dtype));
                    const auto f32 = torch::TensorOptions().device(kGpu);
                    // An offset and a spread per row, as a residual stream has.
                    const auto x = torch::randn({rows, width}, f32) * 3 + torch::randn({rows, 1}, f32) * 5;
                    const c10::optional<torch::Tensor> residual =
                        residual_dtype
                            ? c10::optional<torch::Tensor>(torch::randn({rows, width}, f32).to(*residual_dtype))
                            : c10::nullopt;
                    const auto weight = 1 + 0.1 * torch::randn({width}, f32), bias = 0.1 * torch::randn({width}, f32);
                    const auto [sum, normed, mean, rstd] = forward.call(x, residual, weight, bias, 1e-5, out_dtype);
                    const auto [ref_sum, ref_normed, ref_mean, ref_rstd] =
                        host::layer_norm_forward_reference(x, residual, weight, bias, 1e-5, out_dtype);
                    REQUIRE(normed.scalar_type() == out_dtype);
                    REQUIRE(normed.sizes() == x.sizes());
                    if (residual) CHECK(torch::equal(sum, ref_sum));  // the same float additions
                    CHECK(max_rel(mean, ref_mean) < 1e-5);
                    CHECK(max_rel(rstd, ref_rstd) < 1e-4);
                    // float: rounding apart; bf16: at most one step of bf16 (where the float
                    // values straddle a rounding boundary)
                    CHECK(max_rel(normed, ref_normed) < (out_dtype == torch::kFloat ? 1e-5 : 1.0 / 128));

                    const auto& input = residual ? sum : x;
                    const auto grad_normed = torch::randn({rows, width}, f32).to(out_dtype);
                    const auto grad_sum = torch::randn({rows, width}, f32);
                    for (const bool stream_gradient : {true, false}) {
                        INFO("gradient along the residual stream: " << stream_gradient);
                        const c10::optional<torch::Tensor> given_sum =
                            stream_gradient ? c10::optional<torch::Tensor>(grad_sum) : c10::nullopt;
                        const auto [gx, gres, gw, gb] =
                            backward.call(grad_normed, given_sum, input, mean, rstd, weight, residual_dtype);
                        const auto [rx, rres, rw, rb] = host::layer_norm_backward_reference(
                            grad_normed, given_sum, input, ref_mean, ref_rstd, weight, residual_dtype);
                        CHECK(max_rel(gx, rx) < 1e-4);
                        // weight and bias gradients are sums over rows of +-N(0, 1) terms: at width
                        // 1 the one sum can land near 0, so they are measured against its scale
                        const double scale = std::sqrt(static_cast<double>(std::max<int64_t>(rows, 1)));
                        CHECK(max_rel(gw, rw, scale) < 1e-4);
                        CHECK(max_rel(gb, rb, scale) < 1e-4);
                        if (residual_dtype) {
                            REQUIRE(gres.scalar_type() == *residual_dtype);
                            CHECK(max_rel(gres, rres) < 1e-2);
                        }
                    }
                }
            }
        }
    }
}

TEST_CASE("GPT on the GPU in bf16: the fused norm kernels train like LibTorch's", "[gpu]") {
    TempDir dir;
    std::string text = kTinyExperiment;
    auto cfg_fused = resolve_text(dir, text);
    text.replace(text.find("[model]\n"), 8, "[model]\nfused_norm = false\n");
    auto cfg_plain = resolve_text(dir, text);
    host::HostContext fused_ctx(cfg_fused, kGpu, 32), plain_ctx(cfg_plain, kGpu, 32);
    auto fused = tiny_gpt(fused_ctx);
    auto plain = tiny_gpt(plain_ctx, fused);
    torch::manual_seed(7);
    const auto ids = torch::randint(0, 32, {8, 33}, torch::TensorOptions().dtype(torch::kLong).device(kGpu));
    const auto x = ids.narrow(1, 0, 32), y = ids.narrow(1, 1, 32);
    double losses[2];
    {
        compat::AutocastGuard autocast(torch::kCUDA, torch::kBFloat16);
        auto a = fused->loss(fused->forward(x), y), b = plain->loss(plain->forward(x), y);
        a.backward();
        b.backward();
        losses[0] = a.item<double>();
        losses[1] = b.item<double>();
    }
    CHECK(std::abs(losses[0] - losses[1]) < 1e-3 * std::abs(losses[1]));
    auto pa = fused->parameters(), pb = plain->parameters();
    REQUIRE(pa.size() == pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
        INFO("parameter " << i);
        CHECK(max_rel(pa[i].grad(), pb[i].grad()) < 2e-2);
    }
}

TEST_CASE("plexus's cross-entropy kernels compute the reference operators' loss and gradient", "[gpu]") {
    host::register_operators();
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto forward =
        dispatcher.findSchemaOrThrow("plexus::cross_entropy_forward", "")
            .typed<std::tuple<torch::Tensor, torch::Tensor>(const torch::Tensor&, const torch::Tensor&)>();
    const auto backward = dispatcher.findSchemaOrThrow("plexus::cross_entropy_backward", "")
                              .typed<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&,
                                                   const torch::Tensor&)>();
    torch::manual_seed(8);
    for (const int64_t vocab : {1, 31, 1000, 50304}) {
        for (const int64_t rows : {0, 5, 700}) {
            for (const auto dtype : {torch::kFloat, torch::kBFloat16, torch::kHalf}) {
                INFO("vocab " << vocab << ", rows " << rows << ", " << c10::toString(dtype));
                auto logits64 = torch::randn({rows, vocab}, torch::kFloat64) * 3;
                const auto targets = torch::randint(0, vocab, {rows}, torch::kLong);
                for (int64_t r = 0; r < rows / 2; ++r)  // confident rows: p of the target near 1
                    logits64[r][targets[r].item<int64_t>()] = logits64[r].max() + 9.0;
                const auto logits = logits64.to(dtype).to(kGpu), on_gpu = targets.to(kGpu);
                const auto [loss, stats] = forward.call(logits, on_gpu);
                const auto [ref_loss, ref_stats] = host::cross_entropy_forward_reference(logits, on_gpu);
                REQUIRE(stats.sizes() == ref_stats.sizes());
                CHECK(max_rel(stats.select(1, 0), ref_stats.select(1, 0)) < 1e-5);
                if (vocab > 1)
                    CHECK(max_rel(stats.select(1, 1), ref_stats.select(1, 1)) < 1e-5);
                else  // no logit but the target's: the rest's log-sum-exp is log 0
                    CHECK((stats.select(1, 1) == -std::numeric_limits<float>::infinity()).all().item<bool>());
                if (rows > 0)  // (one class: both exactly 0)
                    CHECK(std::abs(loss.item<double>() - ref_loss.item<double>()) <= 1e-5 * ref_loss.item<double>());
                const auto grad_loss = torch::full({}, 2.5, torch::TensorOptions().device(kGpu));
                const auto grad = backward.call(grad_loss, logits, on_gpu, stats);
                const auto ref_grad = host::cross_entropy_backward_reference(grad_loss, logits, on_gpu, ref_stats);
                REQUIRE(grad.scalar_type() == dtype);
                REQUIRE(grad.sizes() == logits.sizes());
                CHECK(max_rel(grad, ref_grad) < (dtype == torch::kFloat ? 1e-5 : 1.0 / 128));
                if (dtype == torch::kFloat && rows > 0) {  // element by element: p - 1 must not cancel
                    const auto ours = grad.to(torch::kFloat64), ref = ref_grad.to(torch::kFloat64);
                    CHECK(((ours - ref).abs() / ref.abs().clamp_min(1e-30)).max().item<double>() < 2e-5);
                }
                // the gradient sums to zero over each row (softmax minus one-hot)
                if (rows > 0 && vocab > 1 && dtype == torch::kFloat)
                    CHECK(grad.sum(1).abs().max().item<double>() < 1e-6 * grad.abs().max().item<double>() * vocab);
            }
        }
    }
    // A target outside [0, V) (negative too): the GPU's loss is NaN (the CPU's is gather's error).
    const auto small = torch::randn({4, 10}, torch::TensorOptions().device(kGpu));
    for (const int64_t bad : {10, -1}) {
        INFO("target " << bad);
        CHECK(std::isnan(std::get<0>(forward.call(small, torch::tensor(std::vector<int64_t>{1, bad, 0, 2}).to(kGpu)))
                             .item<double>()));
    }
    // A NaN logit that is not the target's still makes its row's loss NaN (each thread holds one
    // value at vocabulary 1000: a NaN must survive the block's combination).
    auto with_nan = torch::randn({3, 1000}, torch::TensorOptions().device(kGpu));
    with_nan[1][16] = std::numeric_limits<float>::quiet_NaN();
    const auto [nan_loss, nan_stats] = forward.call(with_nan, torch::tensor({0, 500, 999}, torch::kLong).to(kGpu));
    CHECK(std::isnan(nan_loss.item<double>()));
    CHECK(std::isnan(nan_stats[1][0].item<double>()));
    CHECK(std::isfinite(nan_stats[0][0].item<double>()));
    // More than 2^31 elements (42700 x 50304 bf16, 4.3 GB): the last rows against the reference.
    const int64_t rows = 42700, vocab = 50304, tail = 3;
    const auto big = torch::randn({rows, vocab}, torch::TensorOptions().device(kGpu).dtype(torch::kBFloat16));
    const auto big_targets = torch::randint(0, vocab, {rows}, torch::TensorOptions().device(kGpu).dtype(torch::kLong));
    const auto [big_loss, big_stats] = forward.call(big, big_targets);
    const auto grad_loss = torch::full({}, 1.0, torch::TensorOptions().device(kGpu));
    const auto big_grad = backward.call(grad_loss, big, big_targets, big_stats);
    const auto last = big.narrow(0, rows - tail, tail), last_targets = big_targets.narrow(0, rows - tail, tail);
    const auto [ref_loss, ref_stats] = host::cross_entropy_forward_reference(last, last_targets);
    CHECK(max_rel(big_stats.narrow(0, rows - tail, tail), ref_stats) < 1e-5);
    // the reference divides by its own 3 rows: give it the same per-row scale
    const auto ref_grad =
        host::cross_entropy_backward_reference(grad_loss * (double(tail) / rows), last, last_targets, ref_stats);
    CHECK(max_rel(big_grad.narrow(0, rows - tail, tail), ref_grad) < 1.0 / 128);
}
