#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

std::string with_optimizer(const std::string& optimizer_section) {
    return "[model]\nname = \"gpt\"\nn_layer = 1\nd_model = 16\nn_head = 2\n[data]\nname = \"synthetic\"\n"
           "[train]\nseq_len = 8\n" +
           optimizer_section;
}

// Builds the run's optimizer over one tensor.
std::unique_ptr<Optimizer> optimizer_over(host::HostContext& ctx, torch::Tensor p) {
    return ctx.make_optimizer({{"w", p, p.sizes().vec()}}, "optimizer");
}

}  // namespace

TEST_CASE("GPT maps [B, T] token ids to [B, T, V] logits through L + 2 blocks", "[gpt]") {
    TempDir dir;
    auto cfg = resolve_text(dir,
                            "[model]\nname=\"gpt\"\nn_layer=3\nd_model=32\nn_head=4\n[data]\nname=\"synthetic\"\nvocab_"
                            "size=50\n[train]\nseq_len=16\n");
    host::HostContext ctx(cfg, torch::kCPU, 50);
    auto model = ctx.make_model();
    REQUIRE(model->blocks().size() == 5);
    auto ids = torch::randint(0, 50, {2, 16}, torch::kInt64);
    auto logits = model->forward(ids);
    CHECK(logits.sizes().vec() == std::vector<int64_t>{2, 16, 50});
    auto shorter = model->forward(ids.narrow(1, 0, 5));  // shorter sequences work too
    CHECK(shorter.sizes().vec() == std::vector<int64_t>{2, 5, 50});
    // Causality: changing a later token never changes earlier logits.
    auto changed = ids.clone();
    changed.index_put_({0, 10}, (ids.index({0, 10}) + 1) % 50);
    auto logits2 = model->forward(changed);
    CHECK(torch::allclose(logits.narrow(1, 0, 10), logits2.narrow(1, 0, 10)));
    CHECK_FALSE(torch::allclose(logits.narrow(1, 10, 1), logits2.narrow(1, 10, 1)));
    // At initialization the loss is close to ln(V).
    auto loss = model->loss(logits, torch::randint(0, 50, {2, 16}, torch::kInt64));
    CHECK(loss.item<double>() == Approx(std::log(50.0)).epsilon(0.05));
    // Every block declares its tensor-parallel rules over parameters it really has.
    for (size_t i = 1; i + 1 < model->blocks().size(); ++i) {
        auto params = model->blocks()[i]->named_parameters();
        for (const auto& rule : model->blocks()[i]->tensor_parallel_plan()) CHECK(params.contains(rule.parameter));
    }
}

TEST_CASE("GPT settings are checked", "[gpt]") {
    TempDir dir;
    auto cfg = resolve_text(dir, "[model]\nname=\"gpt\"\nd_model=30\nn_head=4\n[data]\nname=\"synthetic\"\n");
    host::HostContext ctx(cfg, torch::kCPU, 64);
    try {
        ctx.make_model();
        FAIL("n_head not dividing d_model was accepted");
    } catch (const Error& e) { CHECK_THAT(std::string(e.what()), Contains("model.n_head")); }
}

TEST_CASE("AdamW matches a hand-computed step", "[optimizer]") {
    TempDir dir;
    auto cfg = resolve_text(
        dir, with_optimizer("[optimizer]\nname=\"adamw\"\nlr=0.1\nbetas=[0.9, 0.999]\neps=1e-8\nweight_decay=0.1\n"));
    host::HostContext ctx(cfg, torch::kCPU, 64);
    auto p = torch::tensor({{1.0f, -2.0f}});
    auto opt = optimizer_over(ctx, p);
    auto g = torch::tensor({{0.5f, -1.0f}});
    // Step 1: p *= 1 - 0.1*0.1; m_hat = g, v_hat = g^2, so p -= 0.1 * sign(g).
    opt->step({g}, 1.0);
    CHECK(p[0][0].item<double>() == Approx(0.89).epsilon(1e-6));
    CHECK(p[0][1].item<double>() == Approx(-1.88).epsilon(1e-6));
    // Step 2, same gradient: the bias-corrected moments are unchanged, the decay applies again.
    opt->step({g}, 1.0);
    CHECK(p[0][0].item<double>() == Approx(0.89 * 0.99 - 0.1).epsilon(1e-6));
    CHECK(p[0][1].item<double>() == Approx(-1.88 * 0.99 + 0.1).epsilon(1e-6));
    // lr_scale multiplies the learning rate (decay included).
    auto q = torch::tensor({{1.0f, -2.0f}});
    auto opt2 = optimizer_over(ctx, q);
    opt2->step({g}, 0.5);
    CHECK(q[0][0].item<double>() == Approx(1.0 * (1 - 0.05 * 0.1) - 0.05).epsilon(1e-6));
}

TEST_CASE("AdamW folds the clipping factor into its one pass: bit for bit scaling first", "[optimizer]") {
    TempDir dir;
    auto cfg = resolve_text(dir, with_optimizer("[optimizer]\nname=\"adamw\"\nlr=0.01\n"));
    host::HostContext ctx(cfg, torch::kCPU, 64);
    torch::manual_seed(3);
    auto start = torch::randn({300, 7});
    auto folded = start.clone(), scaled = start.clone();
    auto opt_folded = optimizer_over(ctx, folded), opt_scaled = optimizer_over(ctx, scaled);
    for (int step = 0; step < 4; ++step) {
        auto g = torch::randn({300, 7});
        const double factor = step % 2 ? 1.0 : 0.37;
        opt_folded->step_scaled({g.clone()}, 1.0, factor);
        opt_scaled->step({g * factor}, 1.0);
    }
    CHECK(torch::equal(folded, scaled));
    CHECK((folded - start).abs().max().item<double>() > 1e-3);  // and they moved
}

TEST_CASE("AdamW and SGD match LibTorch's reference optimizers over several steps", "[optimizer]") {
    TempDir dir;
    torch::manual_seed(7);
    auto init = torch::randn({4, 3});
    std::vector<torch::Tensor> grads;
    for (int i = 0; i < 6; ++i) grads.push_back(torch::randn({4, 3}));

    auto compare = [&](const std::string& section, auto make_reference) {
        auto cfg = resolve_text(dir, with_optimizer(section));
        host::HostContext ctx(cfg, torch::kCPU, 64);
        auto mine = init.clone();
        auto opt = optimizer_over(ctx, mine);
        auto ref = init.clone().requires_grad_(true);
        auto reference = make_reference(ref);
        for (const auto& g : grads) {
            opt->step({g}, 1.0);
            ref.mutable_grad() = g.clone();
            reference->step();
        }
        CHECK(torch::allclose(mine, ref.detach(), 1e-5, 1e-6));
        CHECK_FALSE(torch::allclose(mine, init));
    };
    compare(
        "[optimizer]\nname=\"adamw\"\nlr=0.01\nbetas=[0.9, 0.99]\neps=1e-8\nweight_decay=0.05\ndecay_vectors=true\n",
        [](torch::Tensor& t) {
            return std::make_unique<torch::optim::AdamW>(
                std::vector<torch::Tensor>{t},
                torch::optim::AdamWOptions(0.01).betas({0.9, 0.99}).eps(1e-8).weight_decay(0.05));
        });
    compare("[optimizer]\nname=\"sgd\"\nlr=0.05\nmomentum=0.9\nnesterov=true\nweight_decay=0.01\n",
            [](torch::Tensor& t) {
                return std::make_unique<torch::optim::SGD>(
                    std::vector<torch::Tensor>{t},
                    torch::optim::SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(0.01));
            });
}

TEST_CASE("SGD with Nesterov momentum matches a hand-computed step", "[optimizer]") {
    TempDir dir;
    auto cfg = resolve_text(dir, with_optimizer("[optimizer]\nname=\"sgd\"\nlr=0.1\nmomentum=0.9\nnesterov=true\n"));
    host::HostContext ctx(cfg, torch::kCPU, 64);
    auto p = torch::tensor({1.0f});
    auto opt = optimizer_over(ctx, p);
    opt->step({torch::tensor({0.5f})}, 1.0);  // buf = 0.5, d = 0.5 + 0.9*0.5 = 0.95
    CHECK(p.item<double>() == Approx(0.905));
    opt->step({torch::tensor({0.5f})}, 1.0);  // buf = 0.95, d = 0.5 + 0.9*0.95 = 1.355
    CHECK(p.item<double>() == Approx(0.7695));
}

TEST_CASE("optimizer state is a value: restoring it replays the same updates", "[optimizer]") {
    TempDir dir;
    for (const char* section : {"[optimizer]\nname=\"adamw\"\n", "[optimizer]\nname=\"sgd\"\nmomentum=0.9\n"}) {
        auto cfg = resolve_text(dir, with_optimizer(section));
        host::HostContext ctx(cfg, torch::kCPU, 64);
        auto p = torch::ones({3});
        auto opt = optimizer_over(ctx, p);
        opt->step({torch::full({3}, 0.3f)}, 1.0);
        auto saved_state = opt->state();
        auto saved_p = p.clone();
        opt->step({torch::full({3}, -0.7f)}, 1.0);
        auto after_once = p.clone();
        p.copy_(saved_p);
        opt->load_state(saved_state);
        opt->step({torch::full({3}, -0.7f)}, 1.0);
        CHECK(torch::equal(p, after_once));
    }
}

TEST_CASE("llm.c token shards are read exactly, and bad shards are refused", "[data]") {
    TempDir dir;
    auto write_shard = [&](const std::string& name, int32_t magic, int32_t count, int32_t actual) {
        std::vector<int32_t> header(256, 0);
        header[0] = magic;
        header[1] = 1;
        header[2] = count;
        std::ofstream out(dir / name, std::ios::binary);
        out.write(reinterpret_cast<const char*>(header.data()), 1024);
        for (int32_t i = 0; i < actual; ++i) {
            uint16_t t = static_cast<uint16_t>(i % 1000);
            out.write(reinterpret_cast<const char*>(&t), 2);
        }
    };
    write_shard("d_train_000.bin", 20240520, 5000, 5000);
    write_shard("d_val_000.bin", 20240520, 600, 600);
    auto cfg = resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"tokens\"\ntrain=\"" + (dir / "d_train_*.bin") +
                                     "\"\nval=\"" + (dir / "d_val_000.bin") + "\"\nvocab_size=1000\n");
    host::HostContext ctx(cfg, torch::kCPU, 0);
    auto data = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), ctx);
    CHECK(data->vocab_size() == 1000);
    CHECK_THAT(data->describe(), Contains("5000 train / 600 validation tokens"));
    auto stream = data->open({Split::Train, 4, 16, 0, 1, 42});
    auto b = stream->next();
    CHECK(b.inputs.sizes().vec() == std::vector<int64_t>{4, 16});
    // Token i of the shard is i % 1000, so every window counts up by one and targets are shifted inputs.
    auto diffs = (b.inputs.narrow(1, 1, 15) - b.inputs.narrow(1, 0, 15)).remainder(1000);
    CHECK(torch::all(diffs == 1).item<bool>());
    CHECK(torch::equal(b.targets.narrow(1, 0, 15), b.inputs.narrow(1, 1, 15)));

    write_shard("bad_magic.bin", 12345, 100, 100);
    write_shard("short.bin", 20240520, 100, 50);
    for (auto [file, expected] : std::vector<std::pair<std::string, std::string>>{
             {"bad_magic.bin", "magic 12345"}, {"short.bin", "holds fewer"}, {"nothing_*.bin", "no file matches"}}) {
        auto bad = resolve_text(
            dir, "[model]\nname=\"gpt\"\n[data]\nname=\"tokens\"\ntrain=\"" + (dir / file) + "\"\nvocab_size=1000\n");
        host::HostContext bctx(bad, torch::kCPU, 0);
        try {
            bad.plugins.at("data")->make_dataset(bad.sections.at("data"), bctx);
            FAIL("accepted " + file);
        } catch (const Error& e) { CHECK_THAT(std::string(e.what()), Contains(expected)); }
    }
}

TEST_CASE("batch streams are deterministic, seekable, and ranks split one global batch", "[data]") {
    TempDir dir;
    auto cfg = resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"synthetic\"\n");
    host::HostContext ctx(cfg, torch::kCPU, 0);
    auto data = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), ctx);
    auto whole = data->open({Split::Train, 8, 16, 0, 1, 5});
    auto rank0 = data->open({Split::Train, 4, 16, 0, 2, 5});
    auto rank1 = data->open({Split::Train, 4, 16, 1, 2, 5});
    for (int i = 0; i < 3; ++i) {
        auto w = whole->next();
        CHECK(torch::equal(torch::cat({rank0->next().inputs, rank1->next().inputs}), w.inputs));
    }
    whole->seek(1);
    auto again = data->open({Split::Train, 8, 16, 0, 1, 5});
    again->next();
    CHECK(torch::equal(whole->next().inputs, again->next().inputs));
    auto other_seed = data->open({Split::Train, 8, 16, 0, 1, 6});
    auto first = data->open({Split::Train, 8, 16, 0, 1, 5});
    CHECK_FALSE(torch::equal(first->next().inputs, other_seed->next().inputs));
}

TEST_CASE("the text dataset reads a folder, skips excluded files and splits at the end", "[data]") {
    TempDir dir;
    dir.file("corpus/a.txt", std::string(1000, 'a'));
    dir.file("corpus/sub/b.txt", std::string(1000, 'b'));
    dir.file("corpus/a.dat", std::string(1000, 'z'));
    auto cfg = resolve_text(
        dir, "[model]\nname=\"gpt\"\n[data]\nname=\"text\"\npath=\"" + (dir / "corpus") + "\"\nval_fraction=0.1\n");
    host::HostContext ctx(cfg, torch::kCPU, 0);
    auto data = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), ctx);
    CHECK(data->vocab_size() == 256);
    CHECK_THAT(data->describe(), Contains("2 file(s)"));
    CHECK_THAT(data->describe(), Contains("1800 train / 200 validation bytes"));
    auto val = data->open({Split::Validation, 2, 8, 0, 1, 1}).get()->next();
    CHECK(torch::all(val.inputs == 'b').item<bool>());  // the last 10% is all from b.txt
}
