// train.precision (autocast) and launch.backend, on the CPU: what every build can check. The GPU
// side is in test_gpu.cpp.
#include <catch2/catch.hpp>

#include <plexus/compat.hpp>
#include <torch/torch.h>

#include "launch.hpp"
#include "helpers.hpp"

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
        const auto rel = ((torch::matmul(m, m).to(torch::kFloat64) - exact).abs().max() / exact.abs().max()).item<double>();
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
    CHECK(bf16["final_loss"] != fp32["final_loss"]);  // it did compute in bf16
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
