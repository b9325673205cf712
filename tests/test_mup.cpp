// μP: the models' parametrization, the roles the host hands optimizers, μAdam's step by hand,
// the roles under a sharded strategy, and the coordinate check (activations after a few steps
// independent of width in μP, growing with it in SP).
#include <catch2/catch.hpp>
#include <plexus/kit/util.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "helpers.hpp"
#include "runtime/host_context.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;

namespace {

// A model of `model_section` (TOML lines under [model]) built as a run builds it, with its context.
struct Built {
    host::ResolvedConfig cfg;
    std::unique_ptr<host::HostContext> ctx;
    std::shared_ptr<Model> model;
};
std::unique_ptr<Built> build_model(const TempDir& dir, const std::string& model_section,
                                   const std::string& optimizer = "name = \"adamw\"\nlr = 1e-2\nweight_decay = 0.0\n") {
    auto b = std::make_unique<Built>();
    b->cfg = resolve_text(dir, "[model]\n" + model_section + "\n[data]\nname = \"synthetic\"\nvocab_size = 64\n" +
                                   "[optimizer]\n" + optimizer + "[train]\nseq_len = 32\nbatch_size = 4\n");
    b->ctx = std::make_unique<host::HostContext>(b->cfg, torch::kCPU, 64);
    b->model = b->ctx->make_model();
    return b;
}

std::map<std::string, WidthRule> plan_of(const Model& model) {
    std::map<std::string, WidthRule> out;
    for (const auto& block : model.blocks())
        for (const auto& rule : block->width_plan()) out[block->block_name() + "." + rule.parameter] = rule;
    return out;
}

double rms(const torch::Tensor& t) { return t.to(torch::kFloat64).pow(2).mean().sqrt().item<double>(); }

// The coordinate check: a GPT of width `width` trained `steps` AdamW steps at rate 1e-2 on fixed
// random tokens; the RMS of its logits and of the last layer's output (the head's input) after.
struct Coordinates {
    double logits = 0, hidden = 0;
};
Coordinates coordinates(const std::string& parametrization, int64_t width, int steps) {
    TempDir dir;
    auto b = build_model(dir, "name = \"gpt\"\nn_layer = 2\nn_head = 4\nd_model = " + std::to_string(width) +
                                  "\nparametrization = \"" + parametrization + "\"\n" +
                                  (parametrization == "mup" ? "base_width = 64\n" : ""));
    auto optimizer = b->ctx->make_optimizer(slots_of(*b->model), "optimizer");
    torch::manual_seed(7);
    const auto tokens = torch::randint(0, 64, {4, 33}, torch::kLong);
    const auto in = tokens.narrow(1, 0, 32), target = tokens.narrow(1, 1, 32);
    auto params = b->model->parameters();
    for (int s = 0; s < steps; ++s) {
        for (auto& p : params) p.mutable_grad() = torch::Tensor();
        b->model->loss(b->model->forward(in), target).backward();
        std::vector<torch::Tensor> grads;
        for (auto& p : params) grads.push_back(p.grad());
        optimizer->step(grads, 1.0);
    }
    torch::NoGradGuard no_grad;
    auto x = in;
    const auto& blocks = b->model->blocks();
    for (size_t i = 0; i + 1 < blocks.size(); ++i) x = blocks[i]->forward(x);
    return {rms(blocks.back()->forward(x)), rms(x)};
}

}  // namespace

TEST_CASE("muP GPT: roles of every parameter, muP initialization, SP declares nothing", "[mup]") {
    TempDir dir;
    auto mup = build_model(dir,
                           "name = \"gpt\"\nn_layer = 1\nn_head = 2\nd_model = 128\nparametrization = \"mup\"\n"
                           "base_width = 32\n");
    const auto plan = plan_of(*mup->model);
    CHECK(plan.size() == mup->model->named_parameters().size());  // every parameter has a role
    CHECK(plan.at("layer0.qkv.weight").role == WidthRole::Hidden);
    CHECK(plan.at("layer0.qkv.weight").width_mult == 4.0);
    CHECK(plan.at("layer0.out.weight").role == WidthRole::Hidden);
    CHECK(plan.at("layer0.out.weight").width_mult == 4.0);  // fan-in d_ff = 4 d_model, base 4 x 32
    CHECK(plan.at("head.weight").role == WidthRole::Output);
    CHECK(plan.at("embed.tokens.weight").role == WidthRole::Vector);
    CHECK(plan.at("layer0.ln1.bias").role == WidthRole::Vector);
    auto named = mup->model->named_parameters();
    CHECK(named["head.weight"].std().item<double>() == Approx(0.02).epsilon(0.05));  // width-independent
    // Hidden standard deviation 0.02 / sqrt(4) = 0.01 (fc: 128 x 512 draws); embeddings keep 0.02.
    CHECK(named["layer0.fc.weight"].std().item<double>() == Approx(0.01).epsilon(0.02));
    CHECK(named["embed.tokens.weight"].std().item<double>() == Approx(0.02).epsilon(0.05));

    auto sp = build_model(dir, "name = \"gpt\"\nn_layer = 1\nn_head = 2\nd_model = 128\n");
    CHECK(plan_of(*sp->model).empty());
    CHECK(sp->model->named_parameters()["layer0.fc.weight"].std().item<double>() == Approx(0.02).epsilon(0.02));

    // base_width without μP is refused, by key.
    CHECK_THROWS_WITH(build_model(dir, "name = \"gpt\"\nd_model = 64\nbase_width = 32\n"),
                      Catch::Contains("base_width") && Catch::Contains("mup"));
}

TEST_CASE("muP llama: every parameter has a role", "[mup][llama]") {
    TempDir dir;
    auto b = build_model(dir,
                         "name = \"llama\"\nn_layer = 1\nn_head = 4\nn_kv_head = 2\nd_model = 64\n"
                         "parametrization = \"mup\"\nbase_width = 16\n");
    const auto plan = plan_of(*b->model);
    CHECK(plan.size() == b->model->named_parameters().size());
    CHECK(plan.at("layer0.w2.weight").role == WidthRole::Hidden);
    CHECK(plan.at("layer0.w2.weight").width_mult == 4.0);
    CHECK(plan.at("head.out").role == WidthRole::Output);
}

TEST_CASE("muP at its base width is SP: the same parameters and logits, bit for bit", "[mup]") {
    TempDir dir;
    const std::string gpt = "name = \"gpt\"\nn_layer = 2\nn_head = 4\nd_model = 64\n";
    auto sp = build_model(dir, gpt), mup = build_model(dir, gpt + "parametrization = \"mup\"\nbase_width = 64\n");
    const auto a = sp->model->parameters(), b = mup->model->parameters();
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
    const auto tokens = torch::randint(0, 64, {2, 32}, torch::kLong);
    CHECK(torch::equal(sp->model->forward(tokens), mup->model->forward(tokens)));
}

TEST_CASE("muP mlp_lm: hidden matrices, the readout scaled by 1 / width_mult", "[mup]") {
    TempDir dir;
    auto b =
        build_model(dir, "name = \"mlp_lm\"\nwidth = 64\nhidden = 128\nparametrization = \"mup\"\nbase_width = 16\n");
    const auto plan = plan_of(*b->model);
    CHECK(plan.size() == b->model->named_parameters().size());
    CHECK(plan.at("mix0.w2").role == WidthRole::Hidden);
    CHECK(plan.at("head.w").role == WidthRole::Output);
    CHECK(plan.at("head.w").width_mult == 4.0);
    // The readout's logits are 1/4 of what the same weights give in SP.
    auto head = b->model->blocks().back();
    torch::NoGradGuard no_grad;
    head->named_parameters()["w"].fill_(1.0);
    CHECK(head->forward(torch::ones({1, 1, 64})).mean().item<double>() == Approx(16.0));
}

TEST_CASE("muAdam: a hidden matrix's step is the rate / width_mult, its decay per step unchanged", "[mup][optimizer]") {
    TempDir dir;
    auto b = build_model(dir, "name = \"gpt\"\n", "name = \"adamw\"\nlr = 0.1\nweight_decay = 0.5\n");
    auto w = torch::tensor({{1.0, -2.0}, {0.5, 3.0}}), h = w.clone(), o = w.clone(), v = torch::tensor({1.0, -1.0});
    std::vector<ParamSlot> slots{{"w", w, {2, 2}}, {"h", h, {2, 2}}, {"o", o, {2, 2}}, {"v", v, {2}}};
    slots[1].width_role = WidthRole::Hidden, slots[1].width_mult = 4.0;
    slots[2].width_role = WidthRole::Output, slots[2].width_mult = 4.0;
    slots[3].width_role = WidthRole::Vector;
    auto optimizer = b->ctx->make_optimizer(slots, "optimizer");
    const auto g = torch::tensor({{0.3, -0.2}, {1.0, 0.5}});
    optimizer->step({g, g, g, torch::tensor({2.0, -4.0})}, 1.0);
    // First Adam step: m / sqrt(v) = sign(g) (eps 1e-8 aside); decay 1 - 0.1 * 0.5 for matrices.
    const auto w0 = torch::tensor({{1.0, -2.0}, {0.5, 3.0}});
    CHECK(torch::allclose(w, w0 * 0.95 - 0.1 * g.sign(), 0, 1e-6));      // no role: the rate
    CHECK(torch::allclose(h, w0 * 0.95 - 0.1 / 4 * g.sign(), 0, 1e-6));  // hidden: rate / 4
    CHECK(torch::allclose(o, w0 * 0.95 - 0.1 * g.sign(), 0, 1e-6));      // output: the rate
    CHECK(torch::allclose(v, torch::tensor({0.9, -0.9}), 0, 1e-6));      // vector, undecayed
    // width_scaling = false: one rate for all.
    auto off =
        build_model(dir, "name = \"gpt\"\n", "name = \"adamw\"\nlr = 0.1\nweight_decay = 0.5\nwidth_scaling = false\n");
    h.copy_(w0);
    auto plain = off->ctx->make_optimizer({slots[1]}, "optimizer");
    plain->step({g}, 1.0);
    CHECK(torch::allclose(h, w0 * 0.95 - 0.1 * g.sign(), 0, 1e-6));
}

TEST_CASE("muP roles reach the slots of ZeRO and pipeline stages: on 2 Gloo processes both follow single",
          "[mup][zero][pipeline]") {
    // If the roles were lost on the pieces or the stages' slots, hidden matrices would step 4x as
    // far. (A stage's slots are named by the blocks' registered names, as the model's parameters.)
    TempDir dir;
    auto losses = [&](const std::string& args) {
        const auto db = dir / "m.db";
        auto res =
            run_plexus("run " + dir.file("m.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n") +
                       " --db " + db + " --set train.steps=8 --set train.log_every=1 --set train.threads=1" +
                       " --set model.parametrization=mup --set model.base_width=8 " + args);
        INFO(args << "\n" << res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(db);
        return store.metric_series(store.list_runs(1).at(0).id, "loss");
    };
    const auto single = losses("--set train.batch_size=8");
    const auto zero = losses(
        "--set strategy.name=zero --set strategy.stage=1 --set launch.mode=local "
        "--set launch.ranks=2 --set train.batch_size=4");
    const auto pipeline = losses(
        "--set strategy.name=pipeline --set strategy.micro_batches=2 --set launch.mode=local "
        "--set launch.ranks=2 --set train.batch_size=8");
    const auto unscaled = losses("--set train.batch_size=8 --set optimizer.width_scaling=false");
    REQUIRE(single.size() == zero.size());
    REQUIRE(single.size() == pipeline.size());
    REQUIRE(single.size() == unscaled.size());
    double worst = 0, apart = 0;
    for (size_t i = 0; i < single.size(); ++i) {
        worst = std::max(
            {worst, std::fabs(single[i].second - zero[i].second), std::fabs(single[i].second - pipeline[i].second)});
        apart = std::max(apart, std::fabs(single[i].second - unscaled[i].second));
    }
    CHECK(worst < 1e-4);
    CHECK(apart > 100 * worst);  // the per-layer rates matter at this width multiplier (4)
}

TEST_CASE("muP coordinate check: after a few AdamW steps, activations do not grow with width, in SP they do",
          "[mup][coord]") {
    // Widths 64 and 512 (8x) after 4 steps at rate 1e-2 (μP's base width 64). μAdam keeps the
    // logits' and the last hidden layer's RMS within a factor 1.5 across the widths; SP's grow
    // with the width (the readout's update sums 8x as many coordinates).
    const auto mup_small = coordinates("mup", 64, 4), mup_wide = coordinates("mup", 512, 4);
    const auto sp_small = coordinates("sp", 64, 4), sp_wide = coordinates("sp", 512, 4);
    const double mup_logits = mup_wide.logits / mup_small.logits, sp_logits = sp_wide.logits / sp_small.logits;
    const double mup_hidden = mup_wide.hidden / mup_small.hidden, sp_hidden = sp_wide.hidden / sp_small.hidden;
    INFO("logits ratio (512 / 64): μP " << mup_logits << ", SP " << sp_logits);
    INFO("hidden ratio (512 / 64): μP " << mup_hidden << ", SP " << sp_hidden);
    CHECK(mup_logits > 1 / 1.5);
    CHECK(mup_logits < 1.5);
    CHECK(mup_hidden > 1 / 1.5);
    CHECK(mup_hidden < 1.5);
    CHECK(sp_logits > 3.0);
    CHECK(sp_hidden > 3.0);
}

TEST_CASE("the muP keys enter a run's config hash only away from their defaults", "[mup][config]") {
    // They were added after runs were recorded (extras "config.added_later"): at their defaults
    // the hash is what it was before them, so that recorded sweeps resume.
    TempDir dir;
    const auto hash_of = [&](const std::string& model, const std::string& optimizer) {
        std::string text = kTinyExperiment;
        text.insert(text.find("[data]"), model);
        text.insert(text.find("[train]"), optimizer);
        return resolve_text(dir, text).hash;
    };
    const auto plain = hash_of("", "");
    CHECK(hash_of("parametrization = \"sp\"\nbase_width = 0\n", "width_scaling = true\n") == plain);
    CHECK(hash_of("parametrization = \"mup\"\n", "") != plain);
    CHECK(hash_of("", "width_scaling = false\n") != plain);
    // The hash leaves out exactly these lines: the canonical text without them, hashed here.
    auto cfg = resolve_text(dir, std::string(kTinyExperiment));
    CHECK(cfg.values.count("model.parametrization") == 1);  // the key is in the run's settings
    cfg.values.erase("model.parametrization");
    cfg.values.erase("model.base_width");
    cfg.values.erase("optimizer.width_scaling");
    CHECK(host::config_hash(cfg) == plain);
}
