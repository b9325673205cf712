// comm/quantize: average a tensor over ranks from low-precision copies (docs/algorithms/compression.md).
//   format = "bf16": each rank sends its tensor rounded to bfloat16 (half the bytes).
//   format = "int8": each rank sends int8 codes with one float32 scale per chunk of `chunk`
//                    elements (scale = max|x| / 127 over the chunk), about a quarter of the bytes.
// Sums of int8 codes would overflow, so ranks all-gather their compressed copies and each rank
// decompresses and averages them. Error per element: at most scale/2 per rank (int8), or the
// bfloat16 rounding (relative 2^-9).
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Quantize : public plexus::CommScheme {
public:
    Quantize(std::string format, int64_t chunk) : format_(std::move(format)), chunk_(chunk) {}

    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t) override {
        torch::NoGradGuard no_grad;
        const int world = transport.world_size();
        const int64_t n = tensor.numel();
        stats_.logical_bytes +=
            plexus::ring_all_reduce_bytes(n * static_cast<int64_t>(tensor.element_size()), transport.world_size());
        auto flat = tensor.reshape(-1).to(torch::kFloat32);
        const auto before = transport.stats().bytes_sent;
        torch::Tensor sum;
        if (format_ == "bf16") {
            // Gloo gathers no bfloat16: the 2-byte codes travel reinterpreted as float16 (bits
            // only; gathering does no arithmetic on them).
            auto codes = flat.to(torch::kBFloat16).view(torch::kHalf);
            auto all = torch::empty({world * n}, codes.options());
            transport.all_gather(all, codes)->wait();
            sum = all.view(torch::kBFloat16).to(torch::kFloat32).view({world, n}).sum(0);
        } else {
            const int64_t chunks = (n + chunk_ - 1) / chunk_;
            auto padded = torch::zeros({chunks * chunk_}, flat.options());
            padded.narrow(0, 0, n).copy_(flat);
            auto blocks = padded.view({chunks, chunk_});
            auto scales = blocks.abs().amax(1).clamp_min(1e-30) / 127.0;
            auto codes = (blocks / scales.unsqueeze(1)).round().clamp(-127, 127).to(torch::kInt8);
            auto all_codes = torch::empty({world * chunks * chunk_}, codes.options());
            auto all_scales = torch::empty({world * chunks}, scales.options());
            transport.all_gather(all_codes, codes.view(-1))->wait();
            transport.all_gather(all_scales, scales)->wait();
            auto values =
                all_codes.view({world, chunks, chunk_}).to(torch::kFloat32) * all_scales.view({world, chunks, 1});
            sum = values.sum(0).view(-1).narrow(0, 0, n);
        }
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        tensor.copy_((sum / world).view_as(tensor));
        return std::make_shared<plexus::CompletedWork>();
    }

    plexus::CommSchemeStats stats() const override { return stats_; }

private:
    std::string format_;
    int64_t chunk_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "quantize";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "average from bf16 or int8 (per-chunk scaled) copies: 2x or ~4x fewer bytes";
    d.schema = {
        {"format", "int8", "bf16 or int8"},
        {"chunk", 256, "elements per int8 scale"},
    };
    // `plexus check`: identical tensors come back within one int8 step (max|x| / 127 / 2) of themselves.
    d.extras["check.tolerance"] = "0.004";
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::CommScheme> {
        const auto format = cfg.get_string("format");
        cfg.require(format == "bf16" || format == "int8", "format", "must be bf16 or int8");
        cfg.require(cfg.get_int("chunk") >= 1, "chunk", "must be >= 1");
        return std::make_unique<Quantize>(format, cfg.get_int("chunk"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
