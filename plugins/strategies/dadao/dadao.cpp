// strategies/dadao: DADAO (Nabli, Oyallon 2023), decoupled accelerated decentralized
// asynchronous optimization for L-smooth, mu-strongly convex objectives (docs/algorithms/dadao.md).
//
// Each worker keeps six vectors v = (x, x~, y, y~, z, z~) (x: the parameters, a flat buffer the
// model's parameters are views of; x starts at the model's initialization, the rest at 0).
// Between events v follows a linear ODE, integrated exactly with the 6x6 matrix exponential
// exp(M dt) (the same for every coordinate). Events, in algorithm time (unit: one expected
// gradient per worker), are two independent Poisson processes:
//   gradient (rate 1 per worker):  g = grad f_i(x) - nu x - y~;  x -= gamma g;  x~ -= gamma~ g;
//                                  y~ += (delta + delta~) g
//   communication (rate lambda_mix / |E| per edge, lambda_mix = sqrt(2 chi1 chi2)): both ends
//                                  integrate to the event, exchange y + z, m = own - peer;
//                                  z -= beta m;  z~ -= beta~ m
// with nu = mu / 2 and the constants of the paper's code (below). chi1, chi2 are those of the
// edge-sampling Laplacian (plexus/kit/graph.hpp edge_sampling_spectrum). One harness step is one
// unit of algorithm time; since gradient events are Poisson, the ranks' token counts differ:
// set train.steps. The [optimizer] section is not used (the step sizes come from mu and L).
#include <set>

#include "shared/gossip_base.hpp"
#include <plexus/plexus.hpp>
#include <plexus/kit/poisson.hpp>
#include <plexus/kit/util.hpp>

namespace {

class Dadao : public plexus::ReplicaStrategy {
public:
    Dadao(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx), transport_(ctx.transport()) {
        const double mu = cfg.get_double("mu"), smooth = cfg.get_double("smoothness");
        cfg.require(mu > 0, "mu", "must be > 0 (the strong convexity of each worker's objective)");
        cfg.require(smooth >= mu, "smoothness", "must be >= mu (L, the gradient's Lipschitz constant)");
        const int world = transport_.world_size(), rank = transport_.rank();
        const auto graph = plexus::graph_from(cfg, world, ctx.seed("graph"));
        spectrum_ = plexus::edge_sampling_spectrum(graph);
        lambda_mix_ = std::sqrt(2 * spectrum_.chi1 * spectrum_.chi2) * cfg.get_double("comm_scale");
        cfg.require(lambda_mix_ > 0, "comm_scale", "must be > 0");

        // The constants of the reference code, nu = mu / 2.
        const double nu = mu / 2, r = std::sqrt(nu / smooth);
        const double alpha = r / 4, alpha_tilde = r / 8, eta = r / 8, theta = 0.5 / r;
        gamma_ = 1 / (4 * smooth);
        gamma_tilde_ = 1 / (4 * std::sqrt(smooth * nu));
        delta_ = r / 4 + 1.0;  // delta + delta~ (delta~ = 1)
        beta_ = 0.5;
        beta_tilde_ = 2 * (spectrum_.chi1 / lambda_mix_) / r;  // 2 chi1* sqrt(L / nu)
        nu_ = nu;
        // dv/dt = M v over (x, x~, y, y~, z, z~).
        m_ = torch::zeros({6, 6}, torch::kFloat64);
        auto M = m_.accessor<double, 2>();
        M[0][0] = -eta, M[0][1] = eta;                              // dx  = eta (x~ - x)
        M[1][0] = eta, M[1][1] = -eta;                              // dx~ = eta~ (x - x~)
        M[2][2] = -alpha, M[2][3] = alpha;                          // dy  = alpha (y~ - y)
        M[3][1] = -theta * nu, M[3][2] = -theta, M[3][4] = -theta;  // dy~ = -theta (nu x~ + y + z)
        M[4][4] = -alpha, M[4][5] = alpha;                          // dz  = alpha (z~ - z)
        M[5][4] = alpha_tilde, M[5][5] = -alpha_tilde;              // dz~ = alpha~ (z - z~)

        const auto edges = graph.edges();
        std::vector<std::pair<int, double>> mine;
        for (const auto& [a, b] : edges)
            if (a == rank || b == rank)
                mine.emplace_back(a == rank ? b : a, lambda_mix_ / static_cast<double>(edges.size()));
        comm_events_ = plexus::EdgeEvents(ctx.seed("dadao.edges"), rank, mine);
        grad_events_ =
            plexus::PoissonProcess(plexus::mix_seed(ctx.seed("dadao.gradients"), static_cast<uint64_t>(rank)), 1.0);

        torch::NoGradGuard no_grad;
        v_[0] = plexus::flat_copy(params_);
        for (int k = 1; k < 6; ++k) v_[static_cast<size_t>(k)] = torch::zeros_like(v_[0]);
        grad_ = torch::zeros_like(v_[0]);
        plexus::view_parameters(params_, v_[0]);
        plexus::view_gradients(params_, grad_);
        transport_.broadcast(v_[0], 0)->wait();
        peer_ = torch::empty_like(v_[0]);
        char line[200];
        std::snprintf(line, sizeof line,
                      "dadao: %s graph of %d workers, chi1 %.4g, chi2 %.4g, lambda_mix %.4g, L/mu %.3g",
                      graph.name.c_str(), world, spectrum_.chi1, spectrum_.chi2, lambda_mix_, smooth / mu);
        ctx.log(plexus::LogLevel::Info, line);
    }

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        const double end = static_cast<double>(slice_ + 1);
        double loss_sum = 0;
        int64_t comms = 0;
        // One gradient at τ = 0 first, so that every worker has a loss to report from its first
        // step on (a later unit without a gradient event reports the last one).
        if (slice_ == 0) loss_sum += gradient_event(in, out);
        while (true) {
            const double tg = grad_events_.peek();
            const double tc = comm_events_.empty() ? INFINITY : comm_events_.peek().time;
            const double t = std::min(tg, tc);
            if (t >= end) break;
            integrate(t);
            if (tg <= tc) {
                grad_events_.next();
                loss_sum += gradient_event(in, out);
            } else {
                communication_event(comm_events_.next().peer);
                ++comms;
            }
        }
        ++slice_;
        // A unit without a gradient event (Poisson) reports the last loss it computed.
        if (out.micro_batches > 0) last_loss_ = loss_sum / static_cast<double>(out.micro_batches);
        out.loss = last_loss_;
        out.optimizer_stepped = out.micro_batches > 0;
        // The ranks' Poisson gradient counts differ, and the budget must stop them together: a
        // unit of time is, in expectation, one batch per worker.
        out.job_tokens = ctx_.batch_size() * ctx_.seq_len() * transport_.world_size();
        ctx_.record("dadao/gradient_events", static_cast<double>(out.micro_batches));
        ctx_.record("dadao/comm_events", static_cast<double>(comms));
        if (slice_ == 1) {
            ctx_.record("graph/chi1", spectrum_.chi1);
            ctx_.record("graph/chi2", spectrum_.chi2);
            ctx_.record("dadao/lambda_mix", lambda_mix_);
        }
        return out;
    }

    // At the workers' average (measurement transport); records the consensus distance.
    double evaluate(plexus::BatchStream& stream, int64_t batches) override {
        return plexus::evaluate_average(ctx_, v_[0], [&] { return ReplicaStrategy::evaluate(stream, batches); });
    }

    // x (the parameters) with the optimizer, the other five variables, and the worker's time:
    // its slice, the last integration time and the last loss. The gradient and edge events are
    // functions of the seed: a resumed worker replays them up to its slice.
    plexus::StateDict state() const override {
        auto out = ReplicaStrategy::state();
        const char* names[] = {"x", "x_tilde", "y", "y_tilde", "z", "z_tilde"};
        for (int k = 1; k < 6; ++k) out.emplace_back(std::string("dadao.") + names[k], v_[k].clone());
        out.emplace_back("dadao.time",
                         torch::tensor({static_cast<double>(slice_), last_, last_loss_}, torch::kFloat64));
        return out;
    }

    void load_state(const plexus::StateDict& state) override {
        if (state.size() < 6 || state.back().first != "dadao.time")
            throw plexus::Error("dadao: the state does not come from a dadao run",
                                "resume with the experiment the run started with");
        const auto base = state.end() - 6;
        ReplicaStrategy::load_state(plexus::StateDict(state.begin(), base));  // x is the parameters' buffer
        torch::NoGradGuard no_grad;
        for (int k = 1; k < 6; ++k) v_[static_cast<size_t>(k)].copy_((base + (k - 1))->second);
        const auto time = state.back().second;
        slice_ = static_cast<int64_t>(time[0].item<double>());
        last_ = time[1].item<double>();
        last_loss_ = time[2].item<double>();
        const double now = static_cast<double>(slice_);
        while (grad_events_.peek() < now) grad_events_.next();
        while (!comm_events_.empty() && comm_events_.peek().time < now) comm_events_.next();
    }

    // Everything above is all a worker's future depends on (checked by tests).
    bool exact_resume() const override { return true; }

private:
    // v <- exp(M (t - last)) v, coordinate-wise.
    void integrate(double t) {
        if (t <= last_) return;
        torch::NoGradGuard no_grad;
        const auto e = at::linalg_matrix_exp(m_ * (t - last_));
        const auto E = e.accessor<double, 2>();
        std::array<torch::Tensor, 6> next;
        for (int k = 0; k < 6; ++k) {
            next[static_cast<size_t>(k)] = torch::zeros_like(v_[0]);
            for (int l = 0; l < 6; ++l)
                if (E[k][l] != 0) next[static_cast<size_t>(k)].add_(v_[static_cast<size_t>(l)], E[k][l]);
        }
        for (int k = 0; k < 6; ++k) v_[static_cast<size_t>(k)].copy_(next[static_cast<size_t>(k)]);
        last_ = t;
    }

    double gradient_event(const plexus::StepInput& in, plexus::StepOutput& out) {
        grad_.zero_();
        auto loss = forward_backward(*in.train, 1, out);
        torch::NoGradGuard no_grad;
        auto g = grad_ - nu_ * v_[0] - v_[3];
        v_[0].add_(g, -gamma_);
        v_[1].add_(g, -gamma_tilde_);
        v_[3].add_(g, delta_);
        return plexus::value_of(loss);
    }

    void communication_event(int peer) {
        if (lost_.count(peer)) return;
        torch::NoGradGuard no_grad;
        auto mine = v_[2] + v_[4];  // y + z: the only thing exchanged
        // A lost neighbour (a [[faults]] kill) is dropped; the others go on.
        try {
            auto sent = transport_.send(mine, peer, 0);
            transport_.recv(peer_, peer, 0)->wait();
            sent->wait();
        } catch (const plexus::PeerLost& lost) {
            lost_.insert(peer);
            ctx_.log(plexus::LogLevel::Warning,
                     "dadao: rank " + std::to_string(peer) + " is lost (" + lost.what() + ")");
            return;
        }
        auto m = mine - peer_;
        v_[4].add_(m, -beta_);
        v_[5].add_(m, -beta_tilde_);
    }

    plexus::Transport& transport_;
    plexus::GossipSpectrum spectrum_;
    double lambda_mix_ = 0, gamma_ = 0, gamma_tilde_ = 0, delta_ = 0, beta_ = 0, beta_tilde_ = 0, nu_ = 0;
    torch::Tensor m_;
    std::array<torch::Tensor, 6> v_;
    torch::Tensor grad_, peer_;
    plexus::EdgeEvents comm_events_{0, 0, {}};
    plexus::PoissonProcess grad_events_{0, 1.0};
    double last_ = 0, last_loss_ = NAN;
    int64_t slice_ = 0;
    std::set<int> lost_;  // neighbours that failed
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "dadao";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "DADAO: decoupled accelerated decentralized asynchronous optimization (convex: needs mu and L)";
    d.schema = plexus::graph_schema();
    d.schema.push_back({"mu", 0.1, "strong convexity of each worker's objective"});
    d.schema.push_back({"smoothness", 1.0, "L: Lipschitz constant of each worker's gradient"});
    d.schema.push_back({"comm_scale", 1.0, "communication rate as a multiple of the theory's sqrt(2 chi1 chi2)"});
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Dadao>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
