// comm/powersgd: rank-r compression with error feedback and warm start (Vogels et al. 2019;
// docs/algorithms/compression.md). The flat tensor plus its residual is viewed as a matrix M (rows x cols,
// zero-padded, near square). With Q from the previous call (warm start; the first Q is drawn
// from a seed shared by all ranks):
//   P = M Q, all-reduce-mean P, orthonormalize P (QR);  Q = Mᵀ P, all-reduce-mean Q;
//   result = P Qᵀ,  residual = M - P Qᵀ.
// Bytes per call: two all-reduces of r (rows + cols) floats instead of rows * cols.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cmath>
#include <map>

namespace {

class PowerSgd : public plexus::CommScheme {
public:
    PowerSgd(int64_t rank, uint64_t seed) : rank_(rank), seed_(seed) {}

    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t key) override {
        torch::NoGradGuard no_grad;
        const int64_t n = tensor.numel();
        stats_.logical_bytes +=
            plexus::ring_all_reduce_bytes(n * static_cast<int64_t>(tensor.element_size()), transport.world_size());
        auto& s = state_[key];
        const int64_t rows = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
        const int64_t cols = (n + rows - 1) / rows;
        const int64_t r = std::min({rank_, rows, cols});
        if (!s.residual.defined() || s.residual.numel() != rows * cols) {
            const auto f32 = tensor.options().dtype(torch::kFloat32);  // on the tensor's device
            s.residual = torch::zeros({rows * cols}, f32);
            // Drawn on the CPU from the shared seed, so every rank (and device) starts alike.
            auto gen = at::detail::createCPUGenerator(plexus::mix_seed(seed_, static_cast<uint64_t>(key)));
            s.q = torch::randn({cols, r}, gen, torch::kFloat32).to(f32.device());
        }
        auto m_flat = s.residual.clone();
        m_flat.narrow(0, 0, n).add_(tensor.reshape(-1).to(torch::kFloat32));
        auto m = m_flat.view({rows, cols});
        const auto before = transport.stats().bytes_sent;
        auto p = torch::mm(m, s.q);
        transport.all_reduce(p, plexus::ReduceOp::Mean)->wait();
        p = std::get<0>(torch::linalg_qr(p));
        s.q = torch::mm(m.t(), p).contiguous();
        transport.all_reduce(s.q, plexus::ReduceOp::Mean)->wait();
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        auto approx = torch::mm(p, s.q.t()).view(-1);
        s.residual.copy_(m_flat - approx);
        tensor.copy_(approx.narrow(0, 0, n).view_as(tensor));
        return std::make_shared<plexus::CompletedWork>();
    }

    plexus::CommSchemeStats stats() const override { return stats_; }

    // Per bucket: the residual (error feedback) and Q (the warm start); and the byte counts.
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (const auto& [key, s] : state_) {
            out.emplace_back(std::to_string(key) + ".residual", s.residual.clone());
            out.emplace_back(std::to_string(key) + ".q", s.q.clone());
        }
        out.emplace_back("stats", stats_.as_tensor());
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        state_.clear();
        for (const auto& [name, t] : state) {
            if (name == "stats") {
                stats_ = plexus::CommSchemeStats::from_tensor(t);
                continue;
            }
            const auto dot = name.find('.');
            auto& s = state_[std::stoll(name.substr(0, dot))];
            (name.substr(dot + 1) == "q" ? s.q : s.residual) = t.clone();
        }
    }

private:
    struct State {
        torch::Tensor residual, q;
    };
    int64_t rank_;
    uint64_t seed_;
    std::map<int64_t, State> state_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "powersgd";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "PowerSGD: rank-r low-rank averaging with error feedback and warm start";
    d.schema = {{"rank", 4, "rank r of the approximation"}};
    // `plexus check` (1000 values: a 32 x 32 matrix): at full rank the mean is exact, up to rounding.
    d.extras["check.settings"] = "comm.rank=32";
    d.extras["check.tolerance"] = "1e-5";
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::CommScheme> {
        cfg.require(cfg.get_int("rank") >= 1, "rank", "must be >= 1");
        return std::make_unique<PowerSgd>(cfg.get_int("rank"), ctx.seed("powersgd"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
