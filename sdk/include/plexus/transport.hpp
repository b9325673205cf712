// plexus/transport.hpp: moving tensors between ranks.
//
// A strategy never talks to NCCL, Gloo or the simulator directly: it calls this interface, which
// the host implements once per back end (one process alone, c10d processes, the simulated
// cluster). Every call is accounted (bytes, calls, time, exposed time) so that communication is
// measured the same way for every algorithm.
//
// Collectives and point-to-point calls return a Work handle at once. The operation may run in the
// background (overlapping compute); call wait() before reading or reusing the tensor. The time
// wait() actually blocks is the "exposed" communication time that the harness reports.
// A transport may be driven from a second thread (a communication thread) as long as only one
// thread issues calls to it at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include <torch/types.h>

#include "plexus/error.hpp"

namespace plexus {

enum class ReduceOp { Sum, Mean, Max, Min };

// A pending communication. wait() blocks until it is complete (and rethrows its failure).
class Work {
public:
    virtual ~Work() = default;
    virtual void wait() = 0;
    virtual bool is_completed() = 0;
    // Blocks like wait(), from a thread other than the one computing (ACCO's communication
    // thread): the time counts as communication time but not as exposed time, since compute
    // goes on meanwhile. Works that do no accounting may leave it to wait().
    virtual void wait_in_background() { wait(); }
};

// A Work that is already complete: for operations that finished before returning.
class CompletedWork : public Work {
public:
    void wait() override {}
    bool is_completed() override { return true; }
};

// Thrown by an operation (or its wait()) that needs a peer which has failed: on the simulated
// cluster, a rank killed by the experiment's [[faults]]. A strategy that can train on without a
// worker (gossip) catches it and stops exchanging with `rank()`; any other lets it end the run.
class PeerLost : public Error {
public:
    PeerLost(int rank, const std::string& why)
        : Error("rank " + std::to_string(rank) + " failed: " + why, "the run stops: a rank it needs has failed"),
          rank_(rank) {}
    int rank() const noexcept { return rank_; }

private:
    int rank_;
};

// Totals since the transport was created, for this rank.
struct CommStats {
    int64_t calls = 0;
    int64_t bytes_sent = 0;        // payload bytes this rank put on the wire, counted as it issues each operation
    double seconds_total = 0.0;    // from issue to completion, summed over calls
    double seconds_exposed = 0.0;  // time spent blocked in wait(): communication not hidden

    CommStats& operator+=(const CommStats& o) {
        calls += o.calls;
        bytes_sent += o.bytes_sent;
        seconds_total += o.seconds_total;
        seconds_exposed += o.seconds_exposed;
        return *this;
    }
    CommStats& operator-=(const CommStats& o) {
        calls -= o.calls;
        bytes_sent -= o.bytes_sent;
        seconds_total -= o.seconds_total;
        seconds_exposed -= o.seconds_exposed;
        return *this;
    }
    friend CommStats operator+(CommStats a, const CommStats& b) { return a += b; }
    friend CommStats operator-(CommStats a, const CommStats& b) { return a -= b; }
};

class Transport {
public:
    virtual ~Transport() = default;

    virtual int rank() const = 0;
    virtual int world_size() const = 0;
    // A short name of the back end: "local", "gloo", "nccl", "sim".
    virtual const char* backend() const = 0;

    // In place on `tensor`, identical shape on every rank.
    virtual std::shared_ptr<Work> all_reduce(torch::Tensor& tensor, ReduceOp op = ReduceOp::Sum) = 0;
    // `input` holds world_size() equal chunks (flat); chunk r, reduced over ranks, lands in `output` on rank r.
    virtual std::shared_ptr<Work> reduce_scatter(torch::Tensor& output, const torch::Tensor& input,
                                                 ReduceOp op = ReduceOp::Sum) = 0;
    // `output` (flat) receives every rank's `input`, in rank order.
    virtual std::shared_ptr<Work> all_gather(torch::Tensor& output, const torch::Tensor& input) = 0;
    // On rank `root`, `output` (flat) receives every rank's `input`, in rank order; elsewhere
    // `output` is not used (pass an undefined tensor). Completes before it returns. The default
    // all-gathers into a temporary; the simulator, which holds every rank in one process,
    // overrides it so that only the root holds world_size() parts.
    virtual std::shared_ptr<Work> gather(torch::Tensor& output, const torch::Tensor& input, int root) {
        auto all =
            rank() == root && output.defined() ? output : torch::empty({world_size() * input.numel()}, input.options());
        all_gather(all, input)->wait();
        return std::make_shared<CompletedWork>();
    }
    virtual std::shared_ptr<Work> broadcast(torch::Tensor& tensor, int root) = 0;
    virtual void barrier() = 0;

    // Point to point (pipelines, PETRA, gossip). `tag` separates concurrent streams between a pair.
    virtual std::shared_ptr<Work> send(const torch::Tensor& tensor, int peer, int tag = 0) = 0;
    virtual std::shared_ptr<Work> recv(torch::Tensor& tensor, int peer, int tag = 0) = 0;

    // A transport over a subset of ranks (in the given order; every listed rank must call it
    // with the same list). Used for meshes: data parallel over pipeline or tensor-parallel groups.
    // Its traffic counts in this rank's totals: a subgroup's stats() and its parent's are the
    // same figures, so add up the bytes of one of them, never of both.
    virtual std::shared_ptr<Transport> subgroup(const std::vector<int>& ranks) = 0;

    virtual CommStats stats() const = 0;

    // Blocks until one of `works` (receives from several peers, say) is complete, waits for it,
    // and returns its index: the one that completed first (on the simulated cluster, first in
    // simulated time, once every rank behind that time has run, so the choice is causal). The
    // others stay pending. Real back ends poll (every 20 us) unless they override it.
    virtual size_t wait_any(const std::vector<std::shared_ptr<Work>>& works) {
        if (works.empty()) throw std::invalid_argument("wait_any: no operations to wait for");
        for (;;) {
            for (size_t i = 0; i < works.size(); ++i)
                if (works[i]->is_completed()) {
                    works[i]->wait();
                    return i;
                }
            std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
    }
};

}  // namespace plexus
