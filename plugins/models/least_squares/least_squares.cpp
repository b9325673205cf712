// A convex workload with a known optimum, split over the ranks: rank i owns
//     f_i(x) = (1 / 2m) ‖A_i x − b_i‖²,   A_i [m, d], b_i [m] drawn from (seed, i),
// and the job minimizes F = (1/W) Σ_i f_i, whose optimum x* the model solves for at construction.
// The workers' problems differ (heterogeneous data), which is what decentralized methods must
// overcome. Training takes the gradient of f_i on all m rows, or on `batch_rows` of them drawn
// from the batch's targets (a stochastic gradient that follows the data stream, so the seed and
// resume govern it as they govern the data). Evaluation returns F(x) − F(x*), the suboptimality
// of whatever parameters the strategy evaluates (the workers' average, the server's, ...).
//
// With `signal` > 0, b_i = A_i x0 + noise for one planted x0 ~ N(0, signal² I) shared by the
// ranks (the workers agree on the bulk of the answer, and their noise pulls them apart); with 0,
// b_i is the noise alone (F(0) − F* is then small).
//
// Conditioning: column j of every A_i is scaled by s_j, linear from 1.2 / sqrt(condition) to 1.2,
// so the expected Hessian's eigenvalues span about `condition` (4: scales 0.6 to 1.2). The summary
// line of a run logs mu and L of F measured from the Hessian, the constants DADAO asks for. Each
// f_i's own Hessian is noisier than F's (more so when rows / dim is small).
//
// `design = "orthogonal"` makes the spectrum exact instead: A_i = sqrt(m) Q_i diag(s) with Q_i
// orthonormal columns, so every f_i (and F) has the Hessian diag(s²), its eigenvalues spaced
// geometrically from 1 / condition (mu) to 1 (L). Complexity experiments need this: an
// accelerated method's constants then are the problem's, on every rank and for every seed.
// `seed = -1` draws a new problem for every train.seed; `relative = true` reports the
// suboptimality as a fraction of the start's, (F(x) − F*) / (F(0) − F*).
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include <map>
#include <mutex>
#include <tuple>

namespace {

class Weights : public plexus::Block {
public:
    explicit Weights(int64_t d) { x = register_parameter("x", torch::zeros({d}, torch::kFloat64)); }
    // The "activations" are a view of x: the loss reads them, and strategies that charge compute
    // block by block see a backward pass reach this block (the whole model's cost is here). A
    // view, not x: a hook set on a parameter would stay for every later step.
    torch::Tensor forward(const torch::Tensor&) override { return x.view_as(x); }
    double flops_per_token(int64_t) const override { return 6.0 * static_cast<double>(x.numel()); }
    torch::Tensor x;
};

struct Problem {
    int64_t rows, dim, batch_rows;
    double condition, signal, noise;
    bool orthogonal, relative;
    uint64_t seed;
};

// Rank r's design matrix [rows, dim].
torch::Tensor design_matrix(const Problem& p, at::Generator& gen) {
    if (!p.orthogonal) {
        const auto scale = torch::linspace(1.2 / std::sqrt(p.condition), 1.2, p.dim, torch::kFloat64);
        return torch::randn({p.rows, p.dim}, gen, torch::kFloat64) * scale;
    }
    // Eigenvalues condition^(-1) ... 1, geometric: s_j = condition^(-(1 - j / (d - 1)) / 2).
    const auto power =
        p.dim > 1 ? torch::linspace(-0.5, 0.0, p.dim, torch::kFloat64) : torch::zeros({1}, torch::kFloat64);
    const auto scale = torch::pow(p.condition, power);
    const auto q = std::get<0>(at::linalg_qr(torch::randn({p.rows, p.dim}, gen, torch::kFloat64), "reduced"));
    return q * scale * std::sqrt(static_cast<double>(p.rows));
}

// rank r's problem: A_r [rows, dim] and b_r [rows].
std::pair<torch::Tensor, torch::Tensor> rank_problem(const Problem& p, const torch::Tensor& x0, int r) {
    auto gen = at::detail::createCPUGenerator(plexus::mix_seed(p.seed, static_cast<uint64_t>(r)));
    auto a = design_matrix(p, gen);
    auto b = torch::randn({p.rows}, gen, torch::kFloat64) * p.noise + a.mv(x0);
    return {a, b};
}

// What the job's objective needs of every rank's problem: F(x) = (xᵀHx - 2gᵀx + c) / (2mW) with
// H = Σ A_rᵀA_r, g = Σ A_rᵀb_r. Kept instead of the W problems (at 10,000 ranks those would be
// 10,000 per rank), and built once per process: ranks simulated in one process share it.
struct Job {
    torch::Tensor h, x_star;
    double start_gap = 0, mu = 0, smoothness = 0;
    int64_t rows_total = 0;  // m W
    // F(x) - F* = (x - x*)ᵀ H (x - x*) / (2mW): exact for a quadratic, and no cancellation
    // between two nearly equal values when x is close to x*.
    torch::Tensor gap(const torch::Tensor& x) const {
        const auto e = x - x_star;
        return 0.5 * e.dot(h.mv(e)) / static_cast<double>(rows_total);
    }
};

std::shared_ptr<const Job> job_of(const Problem& p, const torch::Tensor& x0, int world) {
    static std::mutex mu;
    static std::map<std::tuple<uint64_t, int64_t, int64_t, double, double, double, bool, int>,
                    std::shared_ptr<const Job>>
        built;
    const auto key = std::make_tuple(p.seed, p.rows, p.dim, p.condition, p.signal, p.noise, p.orthogonal, world);
    std::lock_guard<std::mutex> lk(mu);
    if (auto it = built.find(key); it != built.end()) return it->second;
    auto job = std::make_shared<Job>();
    auto h = torch::zeros({p.dim, p.dim}, torch::kFloat64), g = torch::zeros({p.dim}, torch::kFloat64);
    for (int r = 0; r < world; ++r) {
        const auto [a, b] = rank_problem(p, x0, r);
        h += a.t().mm(a);
        g += a.t().mv(b);
    }
    job->h = h;
    job->rows_total = p.rows * world;
    job->x_star = at::linalg_solve(h, g.unsqueeze(1), true).squeeze(1);
    job->start_gap = job->gap(torch::zeros({p.dim}, torch::kFloat64)).item<double>();
    // The extreme eigenvalues of F's Hessian: its mu and L.
    const auto eig = at::linalg_eigvalsh(h / static_cast<double>(job->rows_total), "L");
    job->mu = eig.min().item<double>();
    job->smoothness = eig.max().item<double>();
    built[key] = job;
    return job;
}

class LeastSquares : public plexus::Model {
public:
    LeastSquares(const Problem& p, int rank, int world) : batch_rows_(p.batch_rows) {
        weights_ = std::make_shared<Weights>(p.dim);
        add_block("weights", weights_);
        auto planted = at::detail::createCPUGenerator(plexus::mix_seed(p.seed, 0x706c616e74ULL));
        const auto x0 = torch::randn({p.dim}, planted, torch::kFloat64) * p.signal;
        std::tie(own_a_, own_b_) = rank_problem(p, x0, rank);
        job_ = job_of(p, x0, world);
        scale_ = p.relative ? 1.0 / job_->start_gap : 1.0;
    }
    torch::Tensor forward(const torch::Tensor& tokens) override { return weights_->forward(tokens); }
    // `x`: what forward returned (the parameters); `targets`: the batch's, which pick the rows.
    torch::Tensor loss(const torch::Tensor& x, const torch::Tensor& targets) override {
        if (!is_training()) return job_->gap(x) * scale_;
        if (batch_rows_ <= 0) return 0.5 * (own_a_.mv(x) - own_b_).pow(2).mean();
        const auto rows = sampled_rows(targets);
        return 0.5 * (own_a_.index_select(0, rows).mv(x) - own_b_.index_select(0, rows)).pow(2).mean();
    }
    plexus::FlopsPerToken flops_per_token(int64_t) const override {
        return {6.0 * static_cast<double>(weights_->x.numel()), "6d (a convex test workload)", weights_->x.numel()};
    }
    double mu() const { return job_->mu; }
    double smoothness() const { return job_->smoothness; }
    double start_gap() const { return job_->start_gap; }

private:
    // batch_rows of the m rows, drawn by a generator seeded with the batch's tokens.
    torch::Tensor sampled_rows(const torch::Tensor& tokens) const {
        const auto flat = tokens.to(torch::kCPU, torch::kInt64).contiguous();
        uint64_t h = 0x9e3779b97f4a7c15ULL;
        const int64_t* t = flat.data_ptr<int64_t>();
        for (int64_t i = 0; i < flat.numel(); ++i) h = plexus::mix_seed(h, static_cast<uint64_t>(t[i]));
        auto gen = at::detail::createCPUGenerator(h);
        return torch::randint(own_a_.size(0), {batch_rows_}, gen, torch::kInt64);
    }
    std::shared_ptr<Weights> weights_;
    std::shared_ptr<const Job> job_;
    torch::Tensor own_a_, own_b_;
    int64_t batch_rows_;
    double scale_ = 1;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "least_squares";
    d.kind = plexus::PluginKind::Model;
    d.version = "0.4";
    d.summary = "convex per-rank least squares with a known optimum; evaluation is the job's suboptimality F(x) - F*";
    d.extras["check.output"] = "free";  // forward returns x, which loss() reads: no logits
    d.schema = {
        plexus::ConfigKey("rows", 40, "m: rows per rank").at_least(1),
        plexus::ConfigKey("dim", 10, "d: parameters").at_least(1),
        plexus::ConfigKey("seed", 3,
                          "the problem's seed (the same problem for every train.seed); -1: one per train.seed")
            .at_least(-1),
        plexus::ConfigKey("condition", 4.0, "spread of the column scales squared: the Hessian's condition, roughly")
            .at_least(1),
        plexus::ConfigKey("signal", 0.0, "scale of the planted solution x0 in b_i = A_i x0 + noise (0: b is noise)")
            .at_least(0),
        plexus::ConfigKey("noise", 1.0, "scale of the noise in b_i (0 with signal > 0: every f_i has the optimum x0)")
            .at_least(0),
        plexus::ConfigKey("design", "gaussian", "gaussian, or orthogonal: every f_i has the Hessian's exact spectrum")
            .one_of({"gaussian", "orthogonal"}),
        {"relative", false, "evaluate (F(x) - F*) / (F(0) - F*) instead of F(x) - F*"},
        plexus::ConfigKey("batch_rows", 0, "rows per stochastic gradient, drawn from the batch (0: all m rows)")
            .at_least(0),
    };
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        const int64_t seed = cfg.get_int("seed");
        const Problem p{cfg.get_int("rows"),
                        cfg.get_int("dim"),
                        cfg.get_int("batch_rows"),
                        cfg.get_double("condition"),
                        cfg.get_double("signal"),
                        cfg.get_double("noise"),
                        cfg.get_string("design") == "orthogonal",
                        cfg.get_bool("relative"),
                        seed < 0 ? ctx.seed("least_squares") : static_cast<uint64_t>(seed)};
        cfg.require(!p.orthogonal || p.rows >= p.dim, "rows", "must be >= dim with design = \"orthogonal\"");
        auto model = std::make_shared<LeastSquares>(p, ctx.rank(), ctx.world_size());
        if (ctx.rank() == 0)
            ctx.log(plexus::LogLevel::Info, "least_squares: F has mu = " + std::to_string(model->mu()) +
                                                ", L = " + std::to_string(model->smoothness()) + " over " +
                                                std::to_string(ctx.world_size()) +
                                                " rank(s), F(0) - F* = " + std::to_string(model->start_gap()));
        return model;
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
