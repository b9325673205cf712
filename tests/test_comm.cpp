// Communication schemes on two ranks over Gloo (two threads of this process): each averages
// within its error bound, error feedback keeps the accumulated error bounded, and the bytes
// sent match each scheme's formula.
#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <thread>
#include <torch/torch.h>

#include "helpers.hpp"
#include "transport/launch.hpp"
#include "transport/c10d.hpp"

using namespace plexus;
using namespace plexus::test;

namespace {

struct RankResult {
    std::vector<torch::Tensor> outputs;  // one per call
    CommSchemeStats stats;
    int64_t transport_bytes = 0;
};

// Calls the [comm] scheme of `comm_section` on each rank's inputs (inputs[rank][call]).
// `layout`, when given, is what the strategy says of the tensors (CommScheme::set_layout).
std::vector<RankResult> run_scheme(const std::string& comm_section,
                                   const std::vector<std::vector<torch::Tensor>>& inputs,
                                   const std::vector<TensorPiece>& layout = {}) {
    TempDir dir;
    auto cfg = resolve_text(dir, "[model]\nname = \"gpt\"\n[data]\nname = \"synthetic\"\n" + comm_section);
    std::vector<RankResult> results(inputs.size());
    with_gloo_ranks(static_cast<int>(inputs.size()), [&](int r, std::shared_ptr<Transport> transport) {
        host::HostContext ctx(cfg, torch::kCPU, 32, transport);
        auto scheme = ctx.make_comm("comm");
        if (!layout.empty()) scheme->set_layout(0, layout);
        for (const auto& x : inputs[r]) {
            auto t = x.clone();
            scheme->all_reduce_mean(t, *transport, 0)->wait();
            results[r].outputs.push_back(t);
        }
        results[r].stats = scheme->stats();
        results[r].transport_bytes = transport->stats().bytes_sent;
    });
    return results;
}

std::vector<std::vector<torch::Tensor>> random_inputs(int64_t n, int calls, int ranks = 2) {
    std::vector<std::vector<torch::Tensor>> in(static_cast<size_t>(ranks));
    for (int r = 0; r < ranks; ++r) {
        torch::manual_seed(100 + r);
        for (int c = 0; c < calls; ++c) in[r].push_back(torch::randn({n}));
    }
    return in;
}

}  // namespace

TEST_CASE("plain, top-k at ratio 1 and hierarchical all-reduce give the exact mean", "[comm]") {
    const int64_t n = 1000;
    auto in = random_inputs(n, 2);
    for (const std::string section :
         {"[comm]\nname = \"allreduce\"\n", "[comm]\nname = \"topk\"\nratio = 1.0\n",
          "[comm]\nname = \"hierarchical\"\nnode_size = 1\n", "[comm]\nname = \"hierarchical\"\nnode_size = 2\n"}) {
        INFO(section);
        auto out = run_scheme(section, in);
        for (int c = 0; c < 2; ++c) {
            auto mean = (in[0][c] + in[1][c]) / 2;
            CHECK(torch::allclose(out[0].outputs[c], mean, 1e-6, 1e-6));
            CHECK(torch::equal(out[0].outputs[c], out[1].outputs[c]));
        }
        // The scheme's bytes are what went through the rank's transport (subgroups included).
        for (int r = 0; r < 2; ++r) CHECK(out[r].stats.bytes_sent == out[r].transport_bytes);
    }
    // Two nodes of two ranks: the mean over all four, and the bytes each rank really sent.
    auto in4 = random_inputs(n, 1, 4);
    auto hier = run_scheme("[comm]\nname = \"hierarchical\"\nnode_size = 2\n", in4);
    auto mean4 = (in4[0][0] + in4[1][0] + in4[2][0] + in4[3][0]) / 4;
    for (int r = 0; r < 4; ++r) {
        CHECK(torch::allclose(hier[r].outputs[0], mean4, 1e-6, 1e-6));
        CHECK(hier[r].stats.bytes_sent == hier[r].transport_bytes);
        CHECK(hier[r].stats.bytes_sent > 0);
    }
    // Plain all-reduce on 2 ranks: a ring sends 2(W-1)/W of the buffer, i.e. 4n bytes per call.
    auto plain = run_scheme("[comm]\nname = \"allreduce\"\n", in);
    CHECK(plain[0].stats.bytes_sent == 2 * 4 * n);
    CHECK(plain[0].stats.compression_ratio() == Approx(1.0));
}

TEST_CASE("quantized averaging stays within its error bound and sends the stated bytes", "[comm]") {
    const int64_t n = 1000;  // not a multiple of the chunk: padding is exercised
    auto in = random_inputs(n, 1);
    auto mean = (in[0][0] + in[1][0]) / 2;

    auto int8 = run_scheme("[comm]\nname = \"quantize\"\nformat = \"int8\"\nchunk = 128\n", in);
    // Each rank's code is off by at most half its chunk's scale (max|x| / 127); the mean halves it.
    const double bound = (in[0][0].abs().max().item<double>() + in[1][0].abs().max().item<double>()) / 127.0 / 4.0;
    CHECK((int8[0].outputs[0] - mean).abs().max().item<double>() <= bound + 1e-6);
    CHECK((int8[0].outputs[0] - mean).abs().max().item<double>() > 0);  // it is lossy
    // all-gather of 1024 int8 codes and 8 float scales: (W-1) * (1024 + 8*4) bytes.
    CHECK(int8[0].stats.bytes_sent == 1024 + 8 * 4);
    CHECK(int8[0].stats.compression_ratio() == Approx(4000.0 / 1056.0));

    auto bf16 = run_scheme("[comm]\nname = \"quantize\"\nformat = \"bf16\"\n", in);
    auto rel =
        ((bf16[0].outputs[0] - mean).abs() / ((in[0][0].abs() + in[1][0].abs()) / 2 + 1e-12)).max().item<double>();
    CHECK(rel <= std::pow(2.0, -8));
    CHECK(bf16[0].stats.bytes_sent == 2 * n);  // (W-1) * n * 2 bytes
}

TEST_CASE("error feedback keeps the accumulated error bounded (top-k, PowerSGD)", "[comm]") {
    const int64_t n = 900;  // 30 x 30 for PowerSGD
    const int calls = 60;
    // The same gradient every call: without error feedback, top-k would drop the same 99% of it
    // every time and the accumulated error would grow linearly with the calls.
    auto in = random_inputs(n, 1);
    std::vector<std::vector<torch::Tensor>> repeated(2);
    for (int r = 0; r < 2; ++r) repeated[r].assign(calls, in[r][0]);
    auto mean = (in[0][0] + in[1][0]) / 2;
    for (const std::string section :
         {"[comm]\nname = \"topk\"\nratio = 0.05\n", "[comm]\nname = \"powersgd\"\nrank = 2\n"}) {
        INFO(section);
        auto out = run_scheme(section, repeated);
        auto total = torch::zeros({n});
        double worst = 0;
        for (int c = 0; c < calls; ++c) {
            total += out[0].outputs[c];
            // sum of outputs minus sum of true means = -(mean residual): must not grow with c
            worst = std::max(worst, (total - mean * (c + 1)).norm().item<double>());
        }
        CHECK(worst < 25 * mean.norm().item<double>());
        CHECK((total / calls - mean).norm().item<double>() < 0.5 * mean.norm().item<double>());
    }
    auto topk = run_scheme("[comm]\nname = \"topk\"\nratio = 0.05\n", random_inputs(n, 1));
    CHECK(topk[0].stats.bytes_sent == 45 * 8);  // (W-1) * k * (int32 index + float32 value), k = 45
    auto psgd = run_scheme("[comm]\nname = \"powersgd\"\nrank = 2\n", random_inputs(n, 1));
    CHECK(psgd[0].stats.bytes_sent == 4 * 2 * (30 + 30));  // two all-reduces of r*rows and r*cols floats
}

TEST_CASE("PowerSGD per matrix: each weight matrix of the strategy's layout on its own, vectors exact", "[comm]") {
    // A bucket of three parameters: w (30 x 20), b (20), w2 (10 x 10): 720 numbers.
    const std::vector<TensorPiece> layout = {{"w", 0, {30, 20}}, {"b", 600, {20}}, {"w2", 620, {10, 10}}};
    auto in = random_inputs(720, 1);
    const auto mean = (in[0][0] + in[1][0]) / 2;
    // At rank 20, both matrices are at full rank: the mean is exact, up to rounding.
    auto full = run_scheme("[comm]\nname = \"powersgd\"\nrank = 20\nper_matrix = true\n", in, layout);
    CHECK(torch::allclose(full[0].outputs[0], mean, 1e-4, 1e-5));
    CHECK(torch::equal(full[0].outputs[0], full[1].outputs[0]));
    // Bytes: per matrix two all-reduces of r (rows + cols) floats, r = min(rank, rows, cols), and
    // the vector in one plain all-reduce; on 2 ranks an all-reduce of k floats sends 4k bytes.
    CHECK(full[0].stats.bytes_sent == 4 * (20 * (30 + 20) + 10 * (10 + 10) + 20));
    // At rank 2 the matrices are approximated, and the vector still arrives exact.
    auto low = run_scheme("[comm]\nname = \"powersgd\"\nrank = 2\nper_matrix = true\n", in, layout);
    CHECK(low[0].stats.bytes_sent == 4 * (2 * (30 + 20) + 2 * (10 + 10) + 20));
    CHECK(torch::allclose(low[0].outputs[0].narrow(0, 600, 20), mean.narrow(0, 600, 20), 1e-5, 1e-6));
    CHECK(!torch::allclose(low[0].outputs[0].narrow(0, 0, 600), mean.narrow(0, 0, 600), 1e-2, 1e-2));
    // Without per_matrix the layout is ignored: one near-square matrix of the 720 numbers (27 x 27).
    auto whole = run_scheme("[comm]\nname = \"powersgd\"\nrank = 2\n", in, layout);
    CHECK(whole[0].stats.bytes_sent == 4 * 2 * (27 + 27));
    // A layout that does not cover the tensor is refused by name.
    CHECK_THROWS_WITH(run_scheme("[comm]\nname = \"powersgd\"\nper_matrix = true\n", in, {{"w", 0, {30, 20}}}),
                      Catch::Matchers::Contains("covers 600 of its 720 numbers"));
}
