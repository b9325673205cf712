// gossip_base.hpp, shared by the gossip, a2cid2 and dadao plugins (not SDK): asynchronous
// decentralized data parallelism by pairwise averaging (AD-PSGD style gossip) and A2CiD2's
// continuous momentum (docs/algorithms/gossip.md).
//
// Every worker keeps its own parameters x (a flat buffer the model's parameters are views of)
// and never joins a global barrier. Events happen in "algorithm time" τ, whose unit is one
// gradient step per worker:
//   - a gradient event per worker per unit, at a seeded uniform offset inside it: a micro-batch,
//     the optimizer's step on x. (Regular rather than Poisson, so that every worker consumes
//     the same tokens per step and the ranks agree on the learning-rate schedule without talking.)
//   - communication events on the graph's edges, Poisson with rate r_ij = λ (W_ij + W_ji) / 2,
//     so that each worker averages λ times per unit on average (λ = comm_rate) with a neighbour
//     drawn from its list: both ends exchange x and set x ← (x_i + x_j) / 2.
// One harness step is one unit of τ: the events in [s, s + 1), in time order. The peers of an
// edge event meet through send/recv; since every worker handles its events in time order, the
// wait always ends. Simulated (or wall) time measures what the events cost; τ orders them.
//
// A2CiD2 adds x̃ per worker. Before any event both are mixed over the τ elapsed since the last
// one: x ← a x + b x̃, x̃ ← b x + a x̃, a, b = (1 ± e^{-2ηΔτ}) / 2. A gradient event applies the
// optimizer's exact step Δx to x and to x̃. A communication event (both ends mixed to the event
// time first) does x̃ ← x̃ + α̃ (x_j − x_i), x ← (x_i + x_j) / 2. η and α̃ come from the graph's
// spectrum (plexus/kit/graph.hpp). Evaluation is at the workers' average, gathered over the
// measurement transport, which also gives the consensus distance (1/W) Σ ‖x_i − x̄‖².
#pragma once

#include <cmath>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "plexus/kit/graph.hpp"
#include "plexus/kit/poisson.hpp"
#include "plexus/context.hpp"
#include "plexus/kit/replica.hpp"
#include "plexus/kit/util.hpp"

namespace plexus {

// The per-worker arithmetic of gossip and A2CiD2 on flat tensors, separate from events and
// transport (so that it can be tested on many workers in one thread).
struct AcidState {
    torch::Tensor x, x_tilde;  // x_tilde undefined: plain gossip
    double eta = 0, alpha_tilde = 0;
    double last = 0;  // τ of the last event

    bool accelerated() const { return x_tilde.defined(); }
    // The ODE between events, up to τ = `tau` (exact, 2x2 matrix exponential).
    void mix(double tau) {
        torch::NoGradGuard no_grad;
        if (accelerated() && tau > last) {
            const double e = std::exp(-2.0 * eta * (tau - last));
            const double a = (1 + e) / 2, b = (1 - e) / 2;
            auto old = x.clone();
            x.mul_(a).add_(x_tilde, b);
            x_tilde.mul_(a).add_(old, b);
        }
        last = std::max(last, tau);
    }
    // A communication event with a peer whose (mixed) parameters are `peer`.
    void average(const torch::Tensor& peer) {
        torch::NoGradGuard no_grad;
        if (accelerated()) x_tilde.add_(peer - x, alpha_tilde);
        x.add_(peer).mul_(0.5);
    }
    // A gradient event moved x by `delta`: x̃ moves by the same.
    void stepped(const torch::Tensor& delta) {
        torch::NoGradGuard no_grad;
        if (accelerated()) x_tilde.add_(delta);
    }
};

// The settings that choose a communication graph, and the graph they choose (the ranks of the
// transport are its nodes). Errors name strategy.graph.
inline ConfigSchema graph_schema() {
    return {
        ConfigKey("graph", "ring", "ring, exponential, torus, complete, random_regular, custom")
            .one_of({"ring", "exponential", "torus", "complete", "random_regular", "custom"}),
        {"degree", 4, "random_regular: neighbours per worker"},
        {"torus_rows", 0, "torus: rows (0: the squarest)"},
        {"edges", Value::list({}), "custom: [[a, b], ...]"},
    };
}
inline Graph graph_from(const Config& cfg, int nodes, uint64_t seed) {
    GraphOptions options;
    options.degree = static_cast<int>(cfg.get_int("degree"));
    options.torus_rows = static_cast<int>(cfg.get_int("torus_rows"));
    options.seed = seed;
    for (const auto& e : cfg.get("edges").as_list()) {
        const auto& pair = e.as_list();
        cfg.require(pair.size() == 2, "edges", "holds pairs [a, b]");
        options.edges.emplace_back(static_cast<int>(pair[0].as_int()), static_cast<int>(pair[1].as_int()));
    }
    try {
        return make_graph(cfg.get_string("graph"), nodes, options);
    } catch (const Error& e) { throw Error(std::string("strategy.graph: ") + e.what(), e.hint()); }
}

// Settings every gossip strategy shares (declare them in the plugin's schema).
inline ConfigSchema gossip_schema() {
    auto schema = graph_schema();
    schema.push_back({"comm_rate", 1.0, "λ: pairwise averagings per worker per gradient step (expected)"});
    schema.push_back({"exchange_thread", false,
                      "exchanges on a communication thread, overlapping the gradient (it reads a snapshot of x)"});
    return schema;
}

// Evaluation at the workers' average x̄ of the flat parameters `x` (which the model's parameters
// are views of), over the measurement transport; records the consensus distance
// (1/W) Σ ‖x_i − x̄‖². `evaluate` runs the model's evaluation once x holds x̄.
template <typename Evaluate>
double evaluate_average(RunContext& ctx, torch::Tensor& x, Evaluate&& evaluate) {
    torch::NoGradGuard no_grad;
    auto& m = ctx.measurement_transport();
    auto mean = x.clone();
    m.all_reduce(mean, ReduceOp::Mean)->wait();
    auto distance = (x - mean).pow(2).sum().to(torch::kFloat64).reshape({1});
    m.all_reduce(distance, ReduceOp::Mean)->wait();
    ctx.record("consensus_distance", value_of(distance[0]));
    auto mine = x.clone();
    x.copy_(mean);
    const double loss = evaluate();
    x.copy_(mine);
    return loss;
}

// gossip_spectrum, computed once per process for a graph and rate: the ranks of a simulated
// cluster share it (a dense eigendecomposition per rank grows as ranks^4 in all).
inline GossipSpectrum shared_spectrum(const Graph& g, double rate) {
    static std::mutex mu;
    static std::map<std::pair<std::vector<std::vector<int>>, double>, GossipSpectrum> known;
    std::lock_guard<std::mutex> lk(mu);
    auto key = std::make_pair(g.neighbours, rate);
    if (auto it = known.find(key); it != known.end()) return it->second;
    return known[key] = gossip_spectrum(g, rate);
}

class GossipStrategy : public ReplicaStrategy {
public:
    StepOutput step(const StepInput& in) override {
        StepOutput out;
        const double end = slice_ + 1.0;
        const double grad_at = slice_ + uniform(static_cast<uint64_t>(slice_));
        torch::Tensor loss;
        if (!threaded_) {
            communicate_until(grad_at);
            state_.mix(grad_at);
            auto before = state_.x.clone();
            loss = forward_backward(*in.train, 1, out);
            update(in, out, gradients());
            state_.stepped(state_.x - before);
            communicate_until(end);
        } else {
            // The unit's exchanges run beside the gradient, which is taken at a snapshot of x
            // (mixed to its time) and added to x (and x̃) when done: x moved meanwhile.
            auto exchanges = ctx_.start_background([this, end] { communicate_until(end); });
            {
                std::lock_guard<std::mutex> lock(mu_);
                state_.mix(grad_at);
                torch::NoGradGuard no_grad;
                work_.copy_(state_.x);
            }
            auto before = work_.clone();
            loss = forward_backward(*in.train, 1, out);
            update(in, out, gradients());
            {
                std::lock_guard<std::mutex> lock(mu_);
                torch::NoGradGuard no_grad;
                auto delta = work_ - before;
                state_.x.add_(delta);
                state_.stepped(delta);
            }
            exchanges->join();
        }
        slice_ += 1;
        out.loss = value_of(loss);
        ctx_.record("gossip/comm_events", static_cast<double>(comm_events_));
        comm_events_ = 0;
        if (!recorded_graph_) {
            recorded_graph_ = true;
            ctx_.record("graph/chi1", spectrum_.chi1);
            ctx_.record("graph/chi2", spectrum_.chi2);
            if (state_.accelerated()) {
                ctx_.record("a2cid2/eta", state_.eta);
                ctx_.record("a2cid2/alpha_tilde", state_.alpha_tilde);
            }
        }
        return out;
    }

    // At the workers' average x̄; records the consensus distance (1/W) Σ ‖x_i − x̄‖².
    double evaluate(BatchStream& stream, int64_t batches) override {
        return evaluate_average(ctx_, state_.x, [&] {
            if (threaded_) {  // the model computes on the snapshot buffer
                torch::NoGradGuard no_grad;
                work_.copy_(state_.x);
            }
            return ReplicaStrategy::evaluate(stream, batches);
        });
    }

    // The replica's parameters (x) and optimizer, x̃, and where the worker is in time: the slice
    // and the last event's τ. The edge events are a function of the seed: a resumed worker
    // replays them up to its slice.
    StateDict state() const override {
        auto out = ReplicaStrategy::state();
        if (state_.accelerated()) out.emplace_back("a2cid2.x_tilde", state_.x_tilde.clone());
        out.emplace_back("gossip.time", torch::tensor({static_cast<double>(slice_), state_.last}, torch::kFloat64));
        return out;
    }

    void load_state(const StateDict& state) override {
        const size_t extra = state_.accelerated() ? 2 : 1;
        if (state.size() < extra || state.back().first != "gossip.time")
            throw Error("gossip: the state does not come from a gossip run",
                        "resume with the experiment the run started with");
        ReplicaStrategy::load_state(StateDict(state.begin(), state.end() - static_cast<std::ptrdiff_t>(extra)));
        torch::NoGradGuard no_grad;
        state_.x.copy_(flat_copy(params_));  // the parameters are views of x (or of its snapshot)
        work_.copy_(state_.x);
        if (state_.accelerated()) state_.x_tilde.copy_(state[state.size() - 2].second);
        const auto time = state.back().second;
        slice_ = static_cast<int64_t>(time[0].item<double>());
        state_.last = time[1].item<double>();
        while (!events_.empty() && events_.peek().time < static_cast<double>(slice_)) events_.next();
        recorded_graph_ = true;
    }

    // Everything above is all a worker's future depends on (checked by tests).
    bool exact_resume() const override { return true; }

protected:
    GossipStrategy(const Config& cfg, RunContext& ctx, bool accelerated)
        : ReplicaStrategy(ctx), transport_(ctx.transport()) {
        const int world = transport_.world_size(), rank = transport_.rank();
        const double rate = cfg.get_double("comm_rate");
        cfg.require(rate > 0, "comm_rate", "must be > 0");
        // Not kept: at 10,000 simulated ranks a graph per rank (held until every rank has
        // joined the broadcast below) was most of their memory.
        std::string graph_name;
        std::vector<std::pair<int, double>> edges;
        {
            const auto graph = graph_from(cfg, world, ctx.seed("graph"));
            graph_name = graph.name;
            spectrum_ = shared_spectrum(graph, rate);
            // Edge rates r_ij = λ (W_ij + W_ji) / 2, for this rank's edges in ascending peer order
            // (the order of Graph::edges(), without listing every edge of the graph).
            const auto& mine = graph.neighbours[static_cast<size_t>(rank)];
            for (const int peer : std::set<int>(mine.begin(), mine.end())) {
                const auto& theirs = graph.neighbours[static_cast<size_t>(peer)];
                const double w_mine =
                    static_cast<double>(std::count(mine.begin(), mine.end(), peer)) / static_cast<double>(mine.size());
                const double w_theirs = static_cast<double>(std::count(theirs.begin(), theirs.end(), rank)) /
                                        static_cast<double>(theirs.size());
                edges.emplace_back(peer, rate * (w_mine + w_theirs) / 2);
            }
        }
        events_ = EdgeEvents(ctx.seed("gossip.edges"), rank, edges);
        grad_seed_ = mix_seed(ctx.seed("gossip.gradients"), static_cast<uint64_t>(rank));

        // x: a flat buffer the parameters are views of (with the exchange thread: of a snapshot
        // buffer, so that averaging never writes under a running backward); the same on every
        // worker at start.
        threaded_ = cfg.get_bool("exchange_thread");
        torch::NoGradGuard no_grad;
        state_.x = flat_copy(params_);
        work_ = threaded_ ? torch::zeros_like(state_.x) : state_.x;
        view_parameters(params_, work_);
        transport_.broadcast(state_.x, 0)->wait();
        work_.copy_(state_.x);
        peer_ = torch::empty_like(state_.x);
        send_ = torch::empty_like(state_.x);
        if (accelerated) {
            state_.x_tilde = state_.x.clone();
            const auto c = acid_constants(spectrum_);
            state_.eta = c.eta;
            state_.alpha_tilde = c.alpha_tilde;
        }
        char line[240];
        std::snprintf(
            line, sizeof line, "%s: %s graph of %d workers, %.3g averagings per gradient, chi1 %.4g, chi2 %.4g%s",
            accelerated ? "a2cid2" : "gossip", graph_name.c_str(), world, rate, spectrum_.chi1, spectrum_.chi2,
            accelerated
                ? (", eta " + std::to_string(state_.eta) + ", alpha_tilde " + std::to_string(state_.alpha_tilde))
                      .c_str()
                : "");
        ctx.log(LogLevel::Info, line);
    }

private:
    // Uniform in [0, 1) for this worker and slice, from the shared seed.
    double uniform(uint64_t slice) const { return static_cast<double>(mix_seed(grad_seed_, slice) >> 11) * 0x1.0p-53; }

    // Every communication event before τ = `until`, in order. With the exchange thread, this
    // runs on it, and touches x (and x̃) only under the lock.
    void communicate_until(double until) {
        torch::NoGradGuard no_grad;
        while (!events_.empty() && events_.peek().time < until) {
            const auto e = events_.next();
            if (lost_.count(e.peer)) continue;
            {
                std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
                if (threaded_) lock.lock();
                state_.mix(e.time);
                send_.copy_(state_.x);
            }
            // A lost neighbour (a [[faults]] kill) is dropped: the others go on averaging, as
            // decentralized training is meant to.
            try {
                auto sent = transport_.send(send_, e.peer, 0);
                transport_.recv(peer_, e.peer, 0)->wait();
                sent->wait();  // the buffer may change only once the transport has it
            } catch (const PeerLost& lost) {
                lost_.insert(e.peer);
                ctx_.log(LogLevel::Warning, "gossip: rank " + std::to_string(lost.rank()) + " is lost (" + lost.what() +
                                                "); training on with the other neighbours");
                continue;
            }
            {
                std::unique_lock<std::mutex> lock(mu_, std::defer_lock);
                if (threaded_) lock.lock();
                state_.average(peer_);
            }
            ++comm_events_;
        }
    }

    Transport& transport_;
    GossipSpectrum spectrum_;
    EdgeEvents events_{0, 0, {}};
    uint64_t grad_seed_ = 0;
    AcidState state_;
    torch::Tensor peer_, send_, work_;  // work_: the model's parameters (state_.x unless threaded)
    bool threaded_ = false;
    std::mutex mu_;  // x and x̃ between the exchange thread and the gradient
    int64_t slice_ = 0, comm_events_ = 0;
    std::set<int> lost_;  // neighbours that failed
    bool recorded_graph_ = false;
};

}  // namespace plexus
