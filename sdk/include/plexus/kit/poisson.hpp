// plexus/kit/poisson.hpp: seeded Poisson event processes that ranks reproduce without talking.
//
// Asynchronous algorithms (gossip, A2CiD2, DADAO) act at random times: a worker computes a
// gradient when its clock rings, two neighbours average when their edge rings. For the two ends
// of an edge to meet, both must know the edge's event times; derive them from a shared seed
// (RunContext::seed("gossip")) and each end computes the same sequence.
//
//   // rank i, on a ring, one communication per unit of time per edge:
//   plexus::EdgeEvents events(ctx.seed("gossip"), i, {{left, 1.0}, {right, 1.0}});
//   while (events.peek().time < horizon) { auto e = events.next(); /* exchange with e.peer */ }
//
// "Each worker rings at rate lambda and picks one of its deg neighbours at random" is the same
// process, in distribution, as independent edges of rate lambda/deg(a) + lambda/deg(b): pass
// those rates.
//
// Times are in the units of the rates (per step, per second of simulated time: the caller's
// choice). Sampling uses its own generator and formula, so the sequences are identical on every
// platform and standard library.
#pragma once

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "plexus/error.hpp"
#include "plexus/kit/util.hpp"

namespace plexus {

// Event times of one Poisson process of `rate` events per unit of time, from `seed`.
class PoissonProcess {
public:
    PoissonProcess(uint64_t seed, double rate) : state_(seed), rate_(rate) {
        if (!(rate > 0)) throw Error("a Poisson process needs a rate > 0", "events per unit of time");
        advance();
    }
    // The time of the next event, without consuming it.
    double peek() const { return next_; }
    // The time of the next event; the one after becomes next.
    double next() {
        const double t = next_;
        advance();
        return t;
    }
    double rate() const { return rate_; }

private:
    // splitmix64: small, fast, and the same everywhere.
    uint64_t draw() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    void advance() {
        const double u = static_cast<double>(draw() >> 11) * 0x1.0p-53;  // uniform in [0, 1)
        next_ += -std::log1p(-u) / rate_;                                // exponential gap
    }

    uint64_t state_;
    double rate_;
    double next_ = 0;
};

// The events on the edges around one rank, merged in time order. Edge (a, b) is seeded by the
// shared seed and the unordered pair, so rank a and rank b see the same times for it.
class EdgeEvents {
public:
    struct Event {
        double time = 0;
        int peer = -1;
    };

    // `edges`: (neighbour, events per unit of time on that edge).
    EdgeEvents(uint64_t seed, int me, const std::vector<std::pair<int, double>>& edges) {
        for (const auto& [peer, rate] : edges) {
            if (peer == me) throw Error("rank " + std::to_string(me) + " lists itself as a neighbour");
            const uint64_t a = static_cast<uint64_t>(std::min(me, peer)), b = static_cast<uint64_t>(std::max(me, peer));
            processes_.push_back({peer, PoissonProcess(mix_seed(seed, (a << 32) | b), rate)});
        }
    }

    bool empty() const { return processes_.empty(); }
    // The next event on any edge (ties go to the lower peer), without consuming it.
    Event peek() const {
        if (processes_.empty()) throw Error("EdgeEvents: this rank has no edges");
        const Edge* best = &processes_.front();
        for (const auto& e : processes_)
            if (e.process.peek() < best->process.peek() ||
                (e.process.peek() == best->process.peek() && e.peer < best->peer))
                best = &e;
        return {best->process.peek(), best->peer};
    }
    Event next() {
        const Event e = peek();
        for (auto& edge : processes_)
            if (edge.peer == e.peer) {
                edge.process.next();
                break;
            }
        return e;
    }

private:
    struct Edge {
        int peer;
        PoissonProcess process;
    };
    std::vector<Edge> processes_;
};

}  // namespace plexus
