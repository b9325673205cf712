// train.precision (autocast), launch.backend and the loss's numerics, on the CPU: what every
// build can check. The GPU side is in test_gpu.cpp.
#include <catch2/catch.hpp>

#include <plexus/kit/compat.hpp>
#include <plexus/kit/layer_norm.hpp>
#include <plexus/kit/loss.hpp>
#include <torch/torch.h>

#include "helpers.hpp"
#include "transport/launch.hpp"
#include "device/dispatch.hpp"

using namespace plexus;
using namespace plexus::test;

TEST_CASE("AutocastGuard turns bf16 products on for its scope only, and nests", "[precision]") {
    const auto m = torch::randn({16, 16});
    CHECK(torch::matmul(m, m).scalar_type() == torch::kFloat);
    {
        compat::AutocastGuard outer(torch::kCPU, torch::kBFloat16);
        CHECK(torch::matmul(m, m).scalar_type() == torch::kBFloat16);
        {
            compat::AutocastGuard off(torch::kCPU, torch::kFloat);  // float: does nothing
            CHECK(torch::matmul(m, m).scalar_type() == torch::kBFloat16);
            compat::AutocastGuard inner(torch::kCPU, torch::kBFloat16);
            CHECK(torch::matmul(m, m).scalar_type() == torch::kBFloat16);
        }
        CHECK(torch::matmul(m, m).scalar_type() == torch::kBFloat16);  // the inner guard left it on
        // the product differs from float32's by bf16's rounding, not more
        const auto exact = torch::matmul(m.to(torch::kFloat64), m.to(torch::kFloat64));
        const auto rel =
            ((torch::matmul(m, m).to(torch::kFloat64) - exact).abs().max() / exact.abs().max()).item<double>();
        CHECK(rel > 1e-4);
        CHECK(rel < 3e-2);
    }
    CHECK(torch::matmul(m, m).scalar_type() == torch::kFloat);
}

TEST_CASE("AutocastGuard: a product sees a parameter changed in place under the same guard", "[precision]") {
    // One guard spans a whole training loop: each step must multiply by the weights the
    // optimizer left, not by a bfloat16 copy cached at the first step.
    auto w = torch::randn({8, 8}).requires_grad_();
    const auto x = torch::randn({4, 8});
    compat::AutocastGuard autocast(torch::kCPU, torch::kBFloat16);
    for (int step = 0; step < 3; ++step) {
        const auto y = torch::linear(x, w).to(torch::kFloat64);
        const auto exact = torch::matmul(x.to(torch::kFloat64), w.detach().to(torch::kFloat64).t());
        INFO("step " << step);
        CHECK(((y - exact).abs().max() / exact.abs().max()).item<double>() < 3e-2);
        torch::NoGradGuard no_grad;
        w.add_(1.0);  // as an optimizer step does
    }
}

TEST_CASE("train.precision = bf16 trains like fp32, and only a non-default precision enters the hash", "[precision]") {
    TempDir dir;
    const auto file = dir.file("exp.toml", kTinyExperiment);
    const auto fp32 = run_recorded(file, dir / "r.db", "--set train.steps=40");
    const auto bf16 = run_recorded(file, dir / "r.db", "--set train.steps=40 --set train.precision=bf16");
    INFO("fp32 " << fp32["final_loss"] << ", bf16 " << bf16["final_loss"]);
    CHECK(bf16["final_loss"] < 0.8 * std::log(32.0));
    CHECK(bf16["final_loss"] != fp32["final_loss"]);                  // it did compute in bf16
    CHECK(std::abs(bf16["final_loss"] - fp32["final_loss"]) < 0.01);  // bf16 rounding, not stale weights

    const auto hash_of = [&](const std::string& extra) {
        return resolve_text(dir, std::string(kTinyExperiment) + extra).hash;
    };
    const auto plain = hash_of("");
    CHECK(hash_of("\n[launch]\nbackend = \"gloo\"\n") == plain);  // a resource, like train.threads
    // precision is in [train]: set through a second copy of the text with the key added
    std::string with_fp32 = kTinyExperiment, with_bf16 = kTinyExperiment;
    const auto at = with_fp32.find("[train]\n") + 8;
    with_fp32.insert(at, "precision = \"fp32\"\n");
    with_bf16.insert(at, "precision = \"bf16\"\n");
    CHECK(resolve_text(dir, with_fp32).hash == plain);
    CHECK(resolve_text(dir, with_bf16).hash != plain);
}

TEST_CASE("unknown precision and back end are named, and NCCL without a GPU says what it needs", "[precision]") {
    TempDir dir;
    const auto file = dir.file("exp.toml", kTinyExperiment);
    auto res = run_plexus("run " + file + " --db " + (dir / "r.db") + " --set train.precision=fp8");
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("train.precision = \"fp8\" is unknown") != std::string::npos);
    res = run_plexus("run " + file + " --db " + (dir / "r.db") + " --set launch.backend=mpi");
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("launch.backend = \"mpi\" is unknown") != std::string::npos);
    res = run_plexus("run " + file + " --db " + (dir / "r.db") + " --set launch.mode=env --set launch.backend=nccl",
                     "RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(host::free_port()));
    INFO(res.output);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("launch.backend = \"nccl\" needs") != std::string::npos);
}

namespace {

// Logits [rows, V] whose first rows are confident (the target's logit far above the rest, p of
// the target near 1, where p - 1 cancels), and their targets.
std::pair<torch::Tensor, torch::Tensor> loss_inputs(int64_t rows, int64_t vocab) {
    torch::manual_seed(7);
    auto logits = torch::randn({rows, vocab}, torch::kFloat64) * 3.0;
    auto targets = torch::randint(0, vocab, {rows}, torch::kLong);
    for (int64_t r = 0; r < rows / 4; ++r) logits[r][targets[r].item<int64_t>()] = logits[r].max() + 12.0;
    return {logits, targets};
}

// The loss and the gradient with respect to logits `x` (a fresh leaf) of `loss_fn`, with an
// upstream gradient of 2.5 (a scaled loss).
template <typename LossFn>
std::pair<torch::Tensor, torch::Tensor> loss_and_grad(const torch::Tensor& logits, const torch::Tensor& targets,
                                                      LossFn loss_fn) {
    auto x = logits.detach().clone().requires_grad_();
    auto loss = loss_fn(x, targets);
    (loss * 2.5).backward();
    return {loss.detach(), x.grad()};
}

}  // namespace

TEST_CASE("cross_entropy equals torch's in value and gradient, for float and double logits", "[precision][loss]") {
    const auto [logits, targets] = loss_inputs(48, 37);
    const auto [ref_loss, ref_grad] = loss_and_grad(
        logits, targets,
        [](const torch::Tensor& x, const torch::Tensor& t) { return torch::nn::functional::cross_entropy(x, t); });
    for (const auto dtype : {torch::kFloat64, torch::kFloat32}) {
        INFO("dtype " << dtype);
        const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-6;
        // [4, 12, V] as a model returns it: any leading shape, the gradient in that shape.
        const auto [loss, grad] =
            loss_and_grad(logits.to(dtype).view({4, 12, 37}), targets.view({4, 12}), plexus::cross_entropy);
        CHECK(grad.scalar_type() == dtype);
        CHECK(grad.sizes() == torch::IntArrayRef({4, 12, 37}));
        CHECK(std::abs(loss.item<double>() - ref_loss.item<double>()) < tol * ref_loss.item<double>());
        CHECK((grad.reshape({48, 37}).to(torch::kFloat64) - ref_grad).abs().max().item<double>() <
              tol * ref_grad.abs().max().item<double>());
    }
}

TEST_CASE("cross_entropy of bf16 logits: a bf16 gradient as accurate as torch's float path rounded",
          "[precision][loss]") {
    // torch's autocast computes the loss of bf16 logits in float; the gradient reaching the bf16
    // logits is the float one rounded. Ours must be that too, within one rounding, also at the
    // confident rows' targets where p - 1 would cancel if computed in bf16.
    const auto [logits64, targets] = loss_inputs(64, 50);
    const auto logits = logits64.to(torch::kBFloat16);
    const auto [ref_loss, ref_grad] = loss_and_grad(
        logits.to(torch::kFloat32), targets,
        [](const torch::Tensor& x, const torch::Tensor& t) { return torch::nn::functional::cross_entropy(x, t); });
    const auto [loss, grad] = loss_and_grad(logits, targets, plexus::cross_entropy);
    CHECK(loss.scalar_type() == torch::kFloat32);
    CHECK(grad.scalar_type() == torch::kBFloat16);
    CHECK(std::abs(loss.item<double>() - ref_loss.item<double>()) < 1e-6 * ref_loss.item<double>());
    const auto ours = grad.to(torch::kFloat64), exact = ref_grad.to(torch::kFloat64);
    // bf16 keeps 8 significant bits: one rounding is within 2^-8 of the value.
    const auto err = ((ours - exact).abs() / exact.abs().clamp_min(1e-30)).max().item<double>();
    CHECK(err < std::ldexp(1.0, -8));
    const auto at_targets = torch::arange(16);  // the confident rows: p of the target near 1
    const auto p = torch::softmax(logits64.index({at_targets}), 1).gather(1, targets.index({at_targets}).unsqueeze(1));
    CHECK((1.0 - p).max().item<double>() < 1e-3);
}

TEST_CASE("the GPU loss's autograd function over the CPU operators gives torch's loss and gradient",
          "[precision][loss]") {
    // What the GPU path adds besides its kernels (test_gpu.cpp holds those to these operators):
    // the wiring, and a formula of its own (log-sum-exp, not log_softmax).
    host::register_operators();
    REQUIRE(plexus::detail::host_kernel_on("plexus::cross_entropy_forward", c10::DispatchKey::CPU));
    const auto [logits, targets] = loss_inputs(48, 37);
    const auto [ref_loss, ref_grad] = loss_and_grad(
        logits, targets,
        [](const torch::Tensor& x, const torch::Tensor& t) { return torch::nn::functional::cross_entropy(x, t); });
    auto fused = [](const torch::Tensor& x, const torch::Tensor& t) {
        return plexus::detail::FusedCrossEntropyFunction::apply(x, t);
    };
    for (const auto dtype : {torch::kFloat64, torch::kFloat32, torch::kBFloat16}) {
        INFO("dtype " << dtype);
        const double loss_tol = dtype == torch::kFloat64 ? 1e-12 : 2e-6;
        // per element, relative: bf16 keeps 8 significant bits (one rounding)
        const double grad_tol = dtype == torch::kFloat64   ? 1e-10
                                : dtype == torch::kFloat32 ? 1e-5
                                                           : std::ldexp(1.0, -8);
        const auto x = logits.to(dtype);
        // bf16: against the exact loss of the same rounded logits, the gradient rounded once
        const auto [want_loss, want_grad] = dtype == torch::kBFloat16
                                                ? loss_and_grad(x.to(torch::kFloat64), targets,
                                                                [](const torch::Tensor& y, const torch::Tensor& t) {
                                                                    return torch::nn::functional::cross_entropy(y, t);
                                                                })
                                                : std::make_pair(ref_loss, ref_grad);
        const auto [loss, grad] = loss_and_grad(x, targets, fused);
        CHECK(grad.scalar_type() == dtype);
        CHECK(loss.scalar_type() == (dtype == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32));
        CHECK(std::abs(loss.item<double>() - want_loss.item<double>()) < loss_tol * want_loss.item<double>());
        const auto ours = grad.to(torch::kFloat64), exact = want_grad.to(torch::kFloat64);
        CHECK(((ours - exact).abs() / exact.abs().clamp_min(1e-30)).max().item<double>() < grad_tol);
    }
    CHECK_THROWS_WITH(fused(torch::randn({3, 5}), torch::tensor({1, 5, 0})), Catch::Contains("out of bounds"));
    // One class: p = 1, so the loss and the gradient are exactly 0 (not NaN from log 0).
    const auto [one_loss, one_grad] = loss_and_grad(torch::randn({4, 1}), torch::zeros({4}, torch::kLong), fused);
    CHECK(one_loss.item<double>() == 0.0);
    CHECK(one_grad.abs().max().item<double>() == 0.0);
}

TEST_CASE("cross_entropy refuses a target outside 0 to V - 1, torch's ignore index included", "[precision][loss]") {
    const auto logits = torch::randn({3, 5}, torch::requires_grad());
    CHECK_THROWS_WITH(plexus::cross_entropy(logits, torch::tensor({1, 5, 0})), Catch::Contains("out of bounds"));
    CHECK_THROWS_WITH(plexus::cross_entropy(logits, torch::tensor({1, -100, 0})), Catch::Contains("out of bounds"));
}

TEST_CASE("cross_entropy: a second backward through the same graph is refused, not computed from spent values",
          "[precision][loss]") {
    // The backward turns its saved log-probabilities into the gradient in place.
    const auto logits = torch::randn({3, 5}, torch::requires_grad());
    const auto loss = plexus::cross_entropy(logits, torch::tensor({1, 4, 0}));
    loss.backward({}, /*retain_graph=*/true);
    CHECK_THROWS_WITH(loss.backward(), Catch::Contains("modified by an inplace operation"));
}

TEST_CASE("residual_layer_norm's operators give the composite's values and gradients, bit for bit", "[precision]") {
    // The autograd function behind the fused GPU path, run on the CPU operators (LibTorch's
    // kernels): what it adds is the wiring (x passed through, the residual stream's gradient
    // added in the norm's backward, the residual's gradient in its dtype), which must change no
    // number. test_gpu.cpp holds the GPU kernels to these operators.
    host::register_operators();
    REQUIRE(plexus::detail::host_layer_norm_on(c10::DispatchKey::CPU));
    torch::manual_seed(3);
    const int64_t width = 24;
    for (const auto residual_dtype : {c10::optional<c10::ScalarType>(), c10::optional<c10::ScalarType>(torch::kFloat),
                                      c10::optional<c10::ScalarType>(torch::kBFloat16)}) {
        for (const auto out_dtype : {torch::kFloat, torch::kBFloat16}) {
            INFO("residual " << (residual_dtype ? c10::toString(*residual_dtype) : "none") << ", normed "
                             << c10::toString(out_dtype));
            auto x = torch::randn({2, 5, width}).requires_grad_();
            auto residual =
                residual_dtype ? torch::randn({2, 5, width}).to(*residual_dtype).requires_grad_() : torch::Tensor();
            auto weight = (1 + 0.1 * torch::randn({width})).requires_grad_();
            auto bias = (0.1 * torch::randn({width})).requires_grad_();
            const auto along_stream = torch::randn({2, 5, width}), into_norm = torch::randn({2, 5, width});
            for (const bool sum_used : {true, false}) {  // false: as the head, whose sum goes nowhere
                INFO("the sum is used: " << sum_used);
                auto run = [&](bool fused) {
                    torch::Tensor sum, normed;
                    if (fused) {
                        using plexus::detail::ResidualLayerNormFunction;
                        auto outs = residual.defined()
                                        ? ResidualLayerNormFunction::apply(x, residual, weight, bias, 1e-5, out_dtype)
                                        : ResidualLayerNormFunction::apply(x, weight, bias, 1e-5, out_dtype);
                        sum = outs[0];
                        normed = outs[1];
                    } else {
                        sum = residual.defined() ? x + residual : x;
                        normed = torch::layer_norm(sum, {width}, weight, bias, 1e-5).to(out_dtype);
                    }
                    auto loss = (normed.to(torch::kFloat) * into_norm).sum();
                    if (sum_used) loss = loss + (sum * along_stream).sum();
                    loss.backward();
                    std::vector<torch::Tensor> got{sum.detach(), normed.detach()};
                    for (auto* t : {&x, &residual, &weight, &bias}) {
                        if (!t->defined()) continue;
                        got.push_back(t->grad().clone());
                        t->mutable_grad() = torch::Tensor();
                    }
                    return got;
                };
                const auto fused = run(true), composite = run(false);
                CHECK(fused[1].scalar_type() == out_dtype);
                REQUIRE(fused.size() == composite.size());
                for (size_t i = 0; i < fused.size(); ++i) {
                    INFO("output " << i << " (sum, normed, then the gradients of x, residual, weight, bias)");
                    CHECK(fused[i].scalar_type() == composite[i].scalar_type());
                    CHECK(torch::equal(fused[i], composite[i]));
                }
            }
        }
    }
}
