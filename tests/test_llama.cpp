// models/llama: its operations against direct computations, its shapes and FLOPs against hand
// counts, grouped-query attention against multi-head attention, and training under the
// strategies that split it.
#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "helpers.hpp"
#include "models/llama/llama_ops.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

std::string file_text(const std::string& path) {
    std::ifstream in(path);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// `plexus run ARGS --db DB`: its loss curve and rank 0's peak tensor memory.
std::pair<std::vector<std::pair<int64_t, double>>, double> curve_and_peak(const std::string& args,
                                                                          const std::string& db) {
    auto res = run_plexus("run " + args + " --db " + db);
    INFO(args << "\n" << res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(db);
    const auto id = store.list_runs(1).at(0).id;
    double peak = 0;
    for (const auto& [rank, key, value, text] : store.summaries(id))
        if (rank == 0 && key == "peak_tensor_bytes") peak = *value;
    return {store.metric_series(id, "loss"), peak};
}

std::shared_ptr<Model> make_llama(const TempDir& dir, const std::string& keys, int64_t vocab = 40, int64_t seq = 12) {
    auto cfg = resolve_text(dir, "[model]\nname = \"llama\"\n" + keys + "[data]\nname = \"synthetic\"\nvocab_size = " +
                                     std::to_string(vocab) + "\n[train]\nseq_len = " + std::to_string(seq) + "\n");
    host::HostContext ctx(cfg, torch::kCPU, vocab);
    return ctx.make_model();
}

}  // namespace

TEST_CASE("llama ops: RMSNorm, rotary embeddings and the SwiGLU width against direct computations", "[llama]") {
    torch::manual_seed(0);
    auto x = torch::randn({2, 3, 8}, torch::kFloat64);
    auto w = torch::randn({8}, torch::kFloat64);
    // RMSNorm: each row divided by its root mean square, then scaled.
    auto rms = torch::sqrt((x * x).sum(-1, true) / 8 + 1e-5);
    CHECK(torch::allclose(llama::rms_norm(x, w, 1e-5), x / rms * w, 0, 1e-12));

    // RoPE: pair i of position t turned by t * base^(-2i/hd), written as a 2 x 2 rotation.
    const int64_t T = 5, hd = 6;
    const double base = 500.0;
    auto q = torch::randn({1, 2, T, hd}, torch::kFloat64);
    auto [cos, sin] = llama::rope_tables(T, hd, base, torch::kFloat64);
    auto rotated = llama::apply_rope(q, cos, sin);
    double worst = 0;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < hd / 2; ++i) {
            const double angle = t * std::pow(base, -2.0 * i / hd);
            for (int64_t h = 0; h < 2; ++h) {
                const double a = q[0][h][t][2 * i].item<double>(), b = q[0][h][t][2 * i + 1].item<double>();
                worst = std::max(worst, std::abs(rotated[0][h][t][2 * i].item<double>() -
                                                 (a * std::cos(angle) - b * std::sin(angle))));
                worst = std::max(worst, std::abs(rotated[0][h][t][2 * i + 1].item<double>() -
                                                 (a * std::sin(angle) + b * std::cos(angle))));
            }
        }
    CHECK(worst < 1e-12);
    // A rotation keeps lengths, and the score of two positions depends on their distance only.
    CHECK(torch::allclose(rotated.norm(2, -1), q.norm(2, -1), 0, 1e-12));
    auto k = torch::randn({1, 1, 1, hd}, torch::kFloat64).expand({1, 1, T, hd});
    auto qq = torch::randn({1, 1, 1, hd}, torch::kFloat64).expand({1, 1, T, hd});
    auto rq = llama::apply_rope(qq.contiguous(), cos, sin), rk = llama::apply_rope(k.contiguous(), cos, sin);
    const double s13 = (rq[0][0][3] * rk[0][0][1]).sum().item<double>(),
                 s24 = (rq[0][0][4] * rk[0][0][2]).sum().item<double>();
    CHECK(s13 == Approx(s24).epsilon(1e-12));

    // Meta's rule: int(2/3 * 4d), rounded up to the multiple.
    CHECK(llama::swiglu_hidden(4096, 256) == 11008);  // Llama 7B
    CHECK(llama::swiglu_hidden(64, 32) == 192);       // 170 -> 192
    CHECK(llama::swiglu_hidden(48, 1) == 128);
}

TEST_CASE("llama: shapes, parameter count and FLOPs per token by hand, causal, settings checked", "[llama]") {
    TempDir dir;
    // D = 32, H = 4 (hd 8), KV = 2, hidden = 2/3 * 128 = 85 -> 96 (multiple of 32), V = 40, L = 2, T = 12.
    auto model = make_llama(dir, "n_layer = 2\nd_model = 32\nn_head = 4\nn_kv_head = 2\n");
    REQUIRE(model->blocks().size() == 4);
    const int64_t D = 32, KV = 2, hd = 8, F = 96, V = 40, L = 2, T = 12;
    const int64_t layer = D /*attn_norm*/ + D * D /*wq*/ + 2 * KV * hd * D /*wk, wv*/ + D * D /*wo*/ + D /*mlp_norm*/ +
                          3 * F * D /*w1, w3, w2*/;
    int64_t total = 0;
    for (const auto& p : model->parameters()) total += p.numel();
    CHECK(total == V * D + L * layer + D + V * D);  // embedding, layers, final norm, untied head
    const auto flops = model->flops_per_token(T);
    CHECK(flops.counted_params == L * layer + D + V * D);
    CHECK(flops.flops == Approx(6.0 * (L * layer + D + V * D) + 12.0 * L * D * T));

    auto ids = torch::randint(0, V, {2, T}, torch::kInt64);
    auto logits = model->forward(ids);
    CHECK(logits.sizes().vec() == std::vector<int64_t>{2, T, V});
    auto changed = ids.clone();
    changed.index_put_({0, 7}, (ids.index({0, 7}) + 1) % V);
    auto logits2 = model->forward(changed);
    CHECK(torch::allclose(logits.narrow(1, 0, 7), logits2.narrow(1, 0, 7)));
    CHECK_FALSE(torch::allclose(logits.narrow(1, 7, 1), logits2.narrow(1, 7, 1)));
    CHECK(model->loss(logits, torch::randint(0, V, {2, T}, torch::kInt64)).item<double>() ==
          Approx(std::log(static_cast<double>(V))).epsilon(0.05));
    for (size_t i = 1; i + 1 < model->blocks().size(); ++i) {
        auto params = model->blocks()[i]->named_parameters();
        for (const auto& rule : model->blocks()[i]->tensor_parallel_plan()) CHECK(params.contains(rule.parameter));
    }
    // Tied: the head reads the embedding, counted once.
    auto tied = make_llama(dir, "n_layer = 1\nd_model = 32\nn_head = 4\ntie_embeddings = true\n");
    int64_t tied_total = 0;
    for (const auto& p : tied->parameters()) tied_total += p.numel();
    CHECK(tied_total == V * D + (layer + 2 * 2 * hd * D) + D);  // n_kv_head = n_head = 4 here

    auto refuse = [&](const std::string& keys, const std::string& what) {
        try {
            make_llama(dir, keys);
            FAIL("accepted: " << keys);
        } catch (const Error& e) { CHECK_THAT(std::string(e.what()), Contains(what)); }
    };
    refuse("d_model = 32\nn_head = 4\nn_kv_head = 3\n", "model.n_kv_head");
    refuse("d_model = 12\nn_head = 4\n", "even head size");
}

TEST_CASE("llama: grouped-query attention is multi-head attention with each key/value head repeated", "[llama]") {
    TempDir dir;
    // The same model with 4 key/value heads, whose heads 2g and 2g+1 copy head g of the grouped
    // one (2 key/value heads): the outputs are equal.
    const std::string shape = "n_layer = 2\nd_model = 32\nn_head = 4\n";
    auto grouped = make_llama(dir, shape + "n_kv_head = 2\n");
    auto full = make_llama(dir, shape + "n_kv_head = 4\n");
    {
        torch::NoGradGuard no_grad;
        auto from = grouped->named_parameters(), to = full->named_parameters();
        for (const auto& item : to) {
            const auto& name = item.key();
            auto src = from[name];
            if (src.sizes() == item.value().sizes()) {
                item.value().copy_(src);
                continue;
            }
            // wk / wv: [2 * 8, 32] -> [4 * 8, 32], each head twice
            item.value().copy_(src.view({2, 8, 32}).repeat_interleave(2, 0).reshape({32, 32}));
        }
    }
    auto ids = torch::randint(0, 40, {2, 12}, torch::kInt64);
    CHECK(torch::allclose(grouped->forward(ids), full->forward(ids), 0, 1e-5));
    // And grouped-query attention with a head per group is multi-head attention, computed directly.
    auto q = torch::randn({1, 2, 5, 4}), k = torch::randn({1, 2, 5, 4}), v = torch::randn({1, 2, 5, 4});
    auto mask = compat::causal_mask(5, torch::TensorOptions());
    auto scores = torch::matmul(q, k.transpose(-1, -2)) / 2.0 + mask;
    CHECK(torch::allclose(llama::grouped_attention(q, k, v, mask), torch::matmul(torch::softmax(scores, -1), v), 0,
                          1e-6));
}

TEST_CASE("llama trains under DDP, ZeRO-3, tensor parallelism and a pipeline as under the single strategy",
          "[llama][zero][tp][pipeline]") {
    TempDir dir;
    const std::string file = dir.file("l.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n");
    // SGD (a gradient's scale is the step), a fixed token budget, 2 Gloo processes.
    const std::string base = " --db " + dir / "r.db" +
                             " --set model.name=llama --set model.n_layer=2 --set model.d_model=32 --set model.n_head=4"
                             " --set model.n_kv_head=2 --set optimizer.name=sgd --set optimizer.lr=0.3"
                             " --set train.grad_clip=0 --set train.steps=12 --set train.threads=1";
    auto losses = [&](const std::string& args) {
        auto res = run_plexus("run " + file + base + args);
        INFO(args << "\n" << res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(dir / "r.db");
        return store.metric_series(store.list_runs(1).at(0).id, "loss");
    };
    const auto single = losses(" --set strategy.name=single");
    REQUIRE(single.size() == 12);
    CHECK(single.back().second < single.front().second - 0.1);  // it learns
    const std::string gloo = " --set launch.mode=local --set launch.ranks=2";
    for (const std::string strategy :
         {gloo + " --set strategy.name=ddp --set train.batch_size=4",
          gloo + " --set strategy.name=zero --set strategy.stage=3 --set train.batch_size=4",
          gloo + " --set strategy.name=tensor_parallel --set strategy.tp=2",
          gloo + " --set strategy.name=pipeline --set strategy.micro_batches=2"}) {
        INFO(strategy);
        const auto other = losses(strategy);
        REQUIRE(other.size() == single.size());
        double worst = 0;
        for (size_t i = 0; i < other.size(); ++i) worst = std::max(worst, std::abs(other[i].second - single[i].second));
        CHECK(worst < 1e-4);
    }
    // Key/value heads that do not split over the tensor-parallel ranks are refused, by name.
    auto res = run_plexus("run " + file + base + gloo + " --set strategy.name=tensor_parallel --set strategy.tp=2" +
                          " --set model.n_kv_head=1");
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("wk.weight"));
}

TEST_CASE("llama: activation checkpointing gives the same gradients bit for bit, and keeps fewer activations",
          "[llama]") {
    TempDir dir;
    const std::string shape = "n_layer = 3\nd_model = 32\nn_head = 4\nn_kv_head = 2\n";
    auto kept = make_llama(dir, shape, 40, 16),
         recomputed = make_llama(dir, shape + "activation_checkpointing = 1\n", 40, 16);
    auto ids = torch::randint(0, 40, {4, 16}, torch::kInt64), targets = torch::randint(0, 40, {4, 16}, torch::kInt64);
    for (auto* m : {&kept, &recomputed}) (*m)->loss((*m)->forward(ids), targets).backward();
    auto a = kept->named_parameters(), b = recomputed->named_parameters();
    REQUIRE(a.size() == b.size());
    for (const auto& item : a) {
        INFO(item.key());
        CHECK(torch::equal(item.value(), b[item.key()]));                // the same initialization
        CHECK(torch::equal(item.value().grad(), b[item.key()].grad()));  // and the same gradients, bit for bit
    }

    // Through the harness, alone and under DDP on 2 Gloo processes: the same curve, bit for bit,
    // with less tensor memory at its peak.
    const std::string file = dir.file("c.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n");
    const std::string base =
        " --set model.name=llama --set model.n_layer=4 --set model.d_model=64 --set model.n_head=4"
        " --set train.steps=6 --set train.threads=1 --set train.seq_len=64";
    auto measure = [&](const std::string& args, const std::string& db) {
        return curve_and_peak(file + base + args, dir / db);
    };
    for (const std::string strategy :
         {std::string(" --set strategy.name=single"),
          std::string(" --set strategy.name=ddp --set launch.mode=local --set launch.ranks=2")}) {
        INFO(strategy);
        const auto [loss, peak] = measure(strategy, "kept.db");
        const auto [loss_r, peak_r] = measure(strategy + " --set model.activation_checkpointing=1", "recomputed.db");
        CHECK(loss_r == loss);
        CHECK(peak_r < 0.8 * peak);
    }
}

TEST_CASE("gpt and revgpt: activation checkpointing trains the same curve bit for bit with a smaller peak",
          "[llama][recompute]") {
    // The kit's checkpointing in the other transformer models; every other layer (k = 2) on
    // revgpt, and under a 2-stage pipeline for gpt (each stage recomputes its own layers).
    TempDir dir;
    const std::string file = dir.file("c.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n");
    auto measure = [&](const std::string& args, const std::string& db) {
        return curve_and_peak(
            file + " --set train.steps=5 --set train.seq_len=64 --set model.n_layer=4" + " --set model.n_head=4" + args,
            dir / db);
    };
    for (const auto& [model, k] : std::vector<std::pair<std::string, std::string>>{
             {" --set model.name=gpt --set model.d_model=64", "1"},
             {" --set model.name=revgpt --set model.d_model=32", "2"},
             {" --set model.name=gpt --set model.d_model=64 --set strategy.name=pipeline --set launch.mode=local"
              " --set launch.ranks=2 --set strategy.micro_batches=2",
              "1"}}) {
        INFO(model << ", k = " << k);
        const auto [loss, peak] = measure(model, "kept.db");
        const auto [loss_r, peak_r] = measure(model + " --set model.activation_checkpointing=" + k, "recomputed.db");
        REQUIRE(loss.size() == 5);
        CHECK(loss_r == loss);
        CHECK(peak_r < 0.85 * peak);
    }
}

TEST_CASE("llama runs under every other strategy family on a simulated cluster", "[llama][sim]") {
    // The model requirements of ACCO, DiLoCo, the gossip family, asynchronous SGD and ZeRO 1/2
    // are those of any model of blocks: each trains llama for 16 steps on 2 simulated ranks and
    // its loss falls.
    TempDir dir;
    const std::string file = dir.file("l.toml", std::string(kTinyExperiment) + "[strategy]\nname = \"single\"\n");
    const std::string base = " --db " + dir / "r.db" +
                             " --set model.name=llama --set model.n_layer=2 --set model.d_model=32 --set model.n_head=4"
                             " --set model.n_kv_head=2 --set train.steps=16 --set launch.mode=sim --set launch.ranks=2";
    for (const std::string strategy :
         {"acco", "diloco --set strategy.inner_steps=4 --set outer_optimizer.name=sgd --set outer_optimizer.lr=0.7",
          "gossip", "a2cid2", "dadao", "async_sgd", "zero --set strategy.stage=1", "zero --set strategy.stage=2"}) {
        INFO(strategy);
        auto res = run_plexus("run " + file + base + " --set strategy.name=" + strategy);
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(dir / "r.db");
        const auto loss = store.metric_series(store.list_runs(1).at(0).id, "loss");
        REQUIRE(loss.size() >= 2);
        CHECK(loss.back().second < loss.front().second);
    }
}

TEST_CASE("the suite's Llama workload: its dry run plans four tuning runs, then three seeds", "[llama][protocol]") {
    // The file must stay valid without the corpus (a dry run reads no data), and name the shards
    // scripts/corpus/debian-corpus.sh writes.
    TempDir dir;
    const std::string file = std::string(PLEXUS_SOURCE_DIR) + "/experiments/suite/llama.toml";
    auto res = run_plexus("sweep " + file + " --dry-run --db " + dir / "s.db");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("sweep 'suite_llama': 16 runs") &&
                               Contains("4 tuning runs on seed(s) 100, then 3 (which, known after tuning) of the 12"));
    const auto toml = file_text(file);
    CHECK_THAT(toml, Contains("train = \"data/debian/train_*.bin\"") && Contains("vocab_size = 8192"));
    CHECK_THAT(file_text(std::string(PLEXUS_SOURCE_DIR) + "/scripts/corpus/debian-corpus.sh"),
               Contains("--vocab 8192") && Contains("data/debian"));
}
