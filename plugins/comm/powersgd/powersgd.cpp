// comm/powersgd: rank-r compression with error feedback and warm start (Vogels et al. 2019;
// docs/algorithms/compression.md). A matrix M (plus its residual) is averaged as its rank-r
// approximation. With Q from the previous call (warm start; the first Q is drawn from a seed
// shared by all ranks):
//   P = M Q, all-reduce-mean P, orthonormalize P (QR);  Q = Mᵀ P, all-reduce-mean Q;
//   result = P Qᵀ,  residual = M - P Qᵀ.
// Bytes per matrix: two all-reduces of r (rows + cols) floats instead of rows * cols.
// Which matrices: by default the whole flat tensor, viewed as one near-square matrix (zero
// padded). With per_matrix = true and a layout from the strategy (CommScheme::set_layout), each
// parameter of two or more dimensions is its own matrix (rows = its first dimension), as in the
// paper, and the vectors (biases, norm gains) go uncompressed in one plain all-reduce.
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include <cmath>
#include <map>

namespace {

class PowerSgd : public plexus::CommScheme {
public:
    PowerSgd(int64_t rank, uint64_t seed, bool per_matrix) : rank_(rank), seed_(seed), per_matrix_(per_matrix) {}

    void set_layout(int64_t key, const std::vector<plexus::TensorPiece>& pieces) override {
        if (per_matrix_) layouts_[key] = pieces;
    }

    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t key) override {
        torch::NoGradGuard no_grad;
        const int64_t n = tensor.numel();
        stats_.logical_bytes +=
            plexus::ring_all_reduce_bytes(n * static_cast<int64_t>(tensor.element_size()), transport.world_size());
        const auto before = transport.stats().bytes_sent;
        auto flat = tensor.is_contiguous() ? tensor.view(-1) : tensor.contiguous().view(-1);
        const auto layout = layouts_.find(key);
        if (layout == layouts_.end()) {
            const int64_t rows = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
            low_rank_mean(flat, rows, (n + rows - 1) / rows, std::to_string(key),
                          plexus::mix_seed(seed_, static_cast<uint64_t>(key)), transport);
        } else {
            per_matrix_mean(flat, key, layout->second, transport);
        }
        if (!tensor.is_contiguous()) tensor.copy_(flat.view_as(tensor));
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        return std::make_shared<plexus::CompletedWork>();
    }

    plexus::CommSchemeStats stats() const override { return stats_; }

    // Per matrix: the residual (error feedback) and Q (the warm start); and the byte counts.
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (const auto& [name, s] : state_) {
            out.emplace_back(name + ".residual", s.residual.clone());
            out.emplace_back(name + ".q", s.q.clone());
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
            const auto dot = name.rfind('.');
            auto& s = state_[name.substr(0, dot)];
            (name.substr(dot + 1) == "q" ? s.q : s.residual) = t.clone();
        }
    }

private:
    struct State {
        torch::Tensor residual, q;
    };

    // Replaces `values` (n <= rows * cols numbers, zero-padded to a rows x cols matrix) by the
    // mean of their rank-r approximations over the ranks; `name` keys the matrix's state.
    void low_rank_mean(torch::Tensor values, int64_t rows, int64_t cols, const std::string& name, uint64_t seed,
                       plexus::Transport& transport) {
        const int64_t n = values.numel();
        const int64_t r = std::min({rank_, rows, cols});
        auto& s = state_[name];
        if (!s.residual.defined() || s.residual.numel() != rows * cols) {
            const auto f32 = values.options().dtype(torch::kFloat32);  // on the tensor's device
            s.residual = torch::zeros({rows * cols}, f32);
            // Drawn on the CPU from the shared seed, so every rank (and device) starts alike.
            auto gen = at::detail::createCPUGenerator(seed);
            s.q = torch::randn({cols, r}, gen, torch::kFloat32).to(f32.device());
        }
        auto m_flat = s.residual.clone();
        m_flat.narrow(0, 0, n).add_(values.to(torch::kFloat32));
        auto m = m_flat.view({rows, cols});
        auto p = torch::mm(m, s.q);
        transport.all_reduce(p, plexus::ReduceOp::Mean)->wait();
        p = std::get<0>(torch::linalg_qr(p));
        s.q = torch::mm(m.t(), p).contiguous();
        transport.all_reduce(s.q, plexus::ReduceOp::Mean)->wait();
        auto approx = torch::mm(p, s.q.t()).view(-1);
        s.residual.copy_(m_flat - approx);
        values.copy_(approx.narrow(0, 0, n));
    }

    // Each matrix of the layout on its own; the vectors in one plain all-reduce.
    void per_matrix_mean(torch::Tensor& flat, int64_t key, const std::vector<plexus::TensorPiece>& pieces,
                         plexus::Transport& transport) {
        std::vector<torch::Tensor> vectors;
        int64_t covered = 0;
        for (size_t i = 0; i < pieces.size(); ++i) {
            const auto& piece = pieces[i];
            int64_t numel = 1;
            for (auto d : piece.shape) numel *= d;
            covered += numel;
            auto values = flat.narrow(0, piece.offset, numel);
            if (piece.shape.size() < 2) {
                vectors.push_back(values);
                continue;
            }
            low_rank_mean(values, piece.shape[0], numel / piece.shape[0], std::to_string(key) + "/" + std::to_string(i),
                          plexus::mix_seed(plexus::mix_seed(seed_, static_cast<uint64_t>(key)), i + 1), transport);
        }
        if (covered != flat.numel())
            throw plexus::Error("powersgd: the layout of tensor " + std::to_string(key) + " covers " +
                                    std::to_string(covered) + " of its " + std::to_string(flat.numel()) + " numbers",
                                "the strategy's set_layout must name every parameter of the tensor");
        if (vectors.empty()) return;
        auto packed = torch::cat(vectors);
        transport.all_reduce(packed, plexus::ReduceOp::Mean)->wait();
        int64_t at = 0;
        for (auto& v : vectors) {
            v.copy_(packed.narrow(0, at, v.numel()));
            at += v.numel();
        }
    }

    int64_t rank_;
    uint64_t seed_;
    bool per_matrix_;
    std::map<int64_t, std::vector<plexus::TensorPiece>> layouts_;
    std::map<std::string, State> state_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "powersgd";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "PowerSGD: rank-r low-rank averaging with error feedback and warm start";
    d.schema = {{"rank", 4, "rank r of the approximation"},
                {"per_matrix", false,
                 "compress each weight matrix on its own (as the paper does) where the strategy gives the layout "
                 "(ddp, diloco); vectors go uncompressed. false: the whole tensor as one matrix"}};
    // `plexus check` (1000 values: a 32 x 32 matrix): at full rank the mean is exact, up to rounding.
    d.extras["check.settings"] = "comm.rank=32";
    d.extras["check.tolerance"] = "1e-5";
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::CommScheme> {
        cfg.require(cfg.get_int("rank") >= 1, "rank", "must be >= 1");
        return std::make_unique<PowerSgd>(cfg.get_int("rank"), ctx.seed("powersgd"), cfg.get_bool("per_matrix"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
