// A convex model for the decentralized strategies' tests: rank i owns
//     f_i(x) = (1 / 2m) ‖A_i x − b_i‖²,   A_i [m, d], b_i [m] drawn from (seed, i),
// and the job minimizes F = (1/W) Σ_i f_i, whose optimum x* the model solves for at construction.
// Training ignores the tokens (full-batch gradients of f_i); evaluation returns F(x) − F(x*),
// the suboptimality of whatever parameters the strategy evaluates (the workers' average).
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

namespace {

class Weights : public plexus::Block {
public:
    explicit Weights(int64_t d) { x = register_parameter("x", torch::zeros({d}, torch::kFloat64)); }
    torch::Tensor forward(const torch::Tensor& tokens) override { return tokens; }  // the loss uses x
    double flops_per_token(int64_t) const override { return 0; }
    torch::Tensor x;
};

class LeastSquares : public plexus::Model {
public:
    LeastSquares(int64_t m, int64_t d, uint64_t seed, int rank, int world) {
        weights_ = std::make_shared<Weights>(d);
        add_block("weights", weights_);
        for (int r = 0; r < world; ++r) {
            auto gen = at::detail::createCPUGenerator(plexus::mix_seed(seed, static_cast<uint64_t>(r)));
            // Rows of varied scale: a conditioned but not trivial problem.
            auto a = torch::randn({m, d}, gen, torch::kFloat64) * torch::linspace(0.6, 1.2, d, torch::kFloat64);
            auto b = torch::randn({m}, gen, torch::kFloat64);
            all_a_.push_back(a);
            all_b_.push_back(b);
        }
        own_a_ = all_a_[static_cast<size_t>(rank)];
        own_b_ = all_b_[static_cast<size_t>(rank)];
        // x* from the normal equations of F.
        auto h = torch::zeros({d, d}, torch::kFloat64), g = torch::zeros({d}, torch::kFloat64);
        for (size_t r = 0; r < all_a_.size(); ++r) {
            h += all_a_[r].t().mm(all_a_[r]);
            g += all_a_[r].t().mv(all_b_[r]);
        }
        const auto x_star = at::linalg_solve(h, g.unsqueeze(1), true).squeeze(1);
        best_ = objective(x_star).item<double>();
    }
    torch::Tensor forward(const torch::Tensor& tokens) override { return tokens; }
    torch::Tensor loss(const torch::Tensor&, const torch::Tensor&) override {
        if (is_training()) {
            auto r = own_a_.mv(weights_->x) - own_b_;
            return 0.5 * r.pow(2).mean();
        }
        return objective(weights_->x) - best_;
    }
    plexus::FlopsPerToken flops_per_token(int64_t) const override {
        return {6.0 * static_cast<double>(weights_->x.numel()), "6d (a test model)", weights_->x.numel()};
    }

private:
    torch::Tensor objective(const torch::Tensor& x) const {
        auto total = torch::zeros({}, torch::kFloat64);
        for (size_t r = 0; r < all_a_.size(); ++r) total += 0.5 * (all_a_[r].mv(x) - all_b_[r]).pow(2).mean();
        return total / static_cast<double>(all_a_.size());
    }
    std::shared_ptr<Weights> weights_;
    std::vector<torch::Tensor> all_a_, all_b_;
    torch::Tensor own_a_, own_b_;
    double best_ = 0;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "least_squares";
    d.kind = plexus::PluginKind::Model;
    d.version = "0.1";
    d.summary = "test plugin: per-rank least squares; evaluation is the job's suboptimality F(x) - F(x*)";
    d.schema = {{"rows", 40, "m: rows per rank"}, {"dim", 10, "d: parameters"}, {"seed", 3, "the problem's seed"}};
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        return std::make_shared<LeastSquares>(cfg.get_int("rows"), cfg.get_int("dim"),
                                              static_cast<uint64_t>(cfg.get_int("seed")), ctx.rank(), ctx.world_size());
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
