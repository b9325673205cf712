#include "transport_c10d.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <map>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <plexus/error.hpp>

namespace plexus::host {

namespace {

using Clock = std::chrono::steady_clock;

const char* env(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
    const char* v = env(name);
    return v ? std::atoi(v) : fallback;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Wraps a c10d work: accounts time, and runs a completion step (copy out, divide for a mean)
// exactly once, on the first wait().
class C10dWork : public Work {
public:
    C10dWork(c10::intrusive_ptr<::c10d::Work> work, std::shared_ptr<CommStats> stats, std::function<void()> finish)
        : work_(std::move(work)), stats_(std::move(stats)), finish_(std::move(finish)), issued_(Clock::now()) {}
    ~C10dWork() override {
        if (!done_) {
            try {
                wait();
            } catch (...) {
                // a destructor must not throw; the failure surfaced where the result was needed
            }
        }
    }
    void wait() override { finish(/*exposed=*/true); }
    void wait_in_background() override { finish(/*exposed=*/false); }
    bool is_completed() override { return done_ || work_->isCompleted(); }

private:
    void finish(bool exposed) {
        if (done_) return;
        const auto t0 = Clock::now();
        work_->wait();
        if (exposed) stats_->seconds_exposed += seconds_since(t0);
        stats_->seconds_total += seconds_since(issued_);
        done_ = true;
        if (finish_) finish_();
    }

    c10::intrusive_ptr<::c10d::Work> work_;
    std::shared_ptr<CommStats> stats_;
    std::function<void()> finish_;
    Clock::time_point issued_;
    bool done_ = false;
};

c10d::ReduceOp to_c10d(ReduceOp op) {
    switch (op) {
        case ReduceOp::Sum:
        case ReduceOp::Mean: return c10d::ReduceOp::SUM;  // Gloo has no average: divide after
        case ReduceOp::Max: return c10d::ReduceOp::MAX;
        case ReduceOp::Min: return c10d::ReduceOp::MIN;
    }
    return c10d::ReduceOp::SUM;
}

int64_t nbytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

class GlooTransport : public Transport {
public:
    // `stats` is shared with the parent transport for a subgroup: the run's figures count every
    // byte and wait, whichever group carried it.
    GlooTransport(c10::intrusive_ptr<c10d::Store> store, int rank, int world, std::chrono::milliseconds timeout,
                  std::string addr, std::shared_ptr<CommStats> stats = std::make_shared<CommStats>())
        : store_(std::move(store)), rank_(rank), world_(world), timeout_(timeout), addr_(std::move(addr)),
          stats_(std::move(stats)) {
        auto options = c10d::ProcessGroupGloo::Options::create(timeout);
        // Loopback on one machine; GLOO_SOCKET_IFNAME or the host name's address across machines.
        if (const char* ifname = env("GLOO_SOCKET_IFNAME"))
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        else if (!addr_.empty())
            options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(addr_));
        else
            options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        options->threads = 1;
        pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, rank, world, options);
    }

    int rank() const override { return rank_; }
    int world_size() const override { return world_; }
    const char* backend() const override { return "gloo"; }

    // Bytes are those a bandwidth-optimal (ring) algorithm sends per rank: 2(W-1)/W of the
    // buffer for an all-reduce, (W-1)/W of the output for an all-gather.
    std::shared_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override {
        std::vector<torch::Tensor> v{t};
        c10d::AllreduceOptions o;
        o.reduceOp = to_c10d(op);
        count(2.0 * (world_ - 1) / world_ * nbytes(t));
        auto finish = op == ReduceOp::Mean ? std::function<void()>([t, w = world_]() mutable { t.div_(w); })
                                           : std::function<void()>();
        return std::make_shared<C10dWork>(pg_->allreduce(v, o), stats_, finish);
    }

    // Gloo (LibTorch 1.13) has no reduce-scatter: an all-reduce of the input, then this rank's chunk.
    std::shared_ptr<Work> reduce_scatter(torch::Tensor& out, const torch::Tensor& in, ReduceOp op) override {
        auto buffer = in.clone();
        auto inner = all_reduce(buffer, op);
        auto chunk = out.numel();
        return std::make_shared<Chained>(inner, [out, buffer, chunk, r = rank_]() mutable {
            out.view(-1).copy_(buffer.view(-1).narrow(0, r * chunk, chunk));
        });
    }

    std::shared_ptr<Work> all_gather(torch::Tensor& out, const torch::Tensor& in) override {
        auto flat_in = in.contiguous().view(-1);
        auto flat_out = out.view(-1);
        const auto n = flat_in.numel();
        std::vector<std::vector<torch::Tensor>> outputs(1);
        for (int r = 0; r < world_; ++r) outputs[0].push_back(flat_out.narrow(0, r * n, n));
        std::vector<torch::Tensor> inputs{flat_in};
        count(static_cast<double>(world_ - 1) / world_ * nbytes(out));
        return std::make_shared<C10dWork>(pg_->allgather(outputs, inputs), stats_, nullptr);
    }

    std::shared_ptr<Work> broadcast(torch::Tensor& t, int root) override {
        std::vector<torch::Tensor> v{t};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        count(rank_ == root ? static_cast<double>(nbytes(t)) : 0.0);
        return std::make_shared<C10dWork>(pg_->broadcast(v, o), stats_, nullptr);
    }

    void barrier() override {
        count(0);
        C10dWork(pg_->barrier(), stats_, nullptr).wait();
    }

    std::shared_ptr<Work> send(const torch::Tensor& t, int peer, int tag) override {
        std::vector<torch::Tensor> v{t.contiguous()};
        count(static_cast<double>(nbytes(t)));
        return std::make_shared<C10dWork>(pg_->send(v, peer, tag), stats_, nullptr);
    }

    std::shared_ptr<Work> recv(torch::Tensor& t, int peer, int tag) override {
        std::vector<torch::Tensor> v{t};
        count(0);
        return std::make_shared<C10dWork>(pg_->recv(v, peer, tag), stats_, nullptr);
    }

    std::shared_ptr<Transport> subgroup(const std::vector<int>& ranks) override {
        int my_index = -1;
        std::string name = "group";
        for (size_t i = 0; i < ranks.size(); ++i) {
            name += "_" + std::to_string(ranks[i]);
            if (ranks[i] == rank_) my_index = static_cast<int>(i);
        }
        if (my_index < 0)
            throw Error("rank " + std::to_string(rank_) + " asked for a subgroup it is not in (" + name + ")",
                        "every rank listed must call subgroup() with the same list, and only those");
        // The n-th group over the same ranks gets its own keys (members create groups in the same order).
        name += "#" + std::to_string(groups_made_[name]++);
        auto prefixed = c10::make_intrusive<c10d::PrefixStore>(name, store_);
        return std::make_shared<GlooTransport>(prefixed, my_index, static_cast<int>(ranks.size()), timeout_, addr_,
                                               stats_);
    }

    CommStats stats() const override { return *stats_; }

private:
    // A work whose completion runs one more step after the inner work's.
    class Chained : public Work {
    public:
        Chained(std::shared_ptr<Work> inner, std::function<void()> then) : inner_(std::move(inner)), then_(std::move(then)) {}
        void wait() override {
            inner_->wait();
            run_then();
        }
        void wait_in_background() override {
            inner_->wait_in_background();
            run_then();
        }
        bool is_completed() override { return inner_->is_completed(); }

    private:
        void run_then() {
            if (then_) {
                then_();
                then_ = nullptr;
            }
        }
        std::shared_ptr<Work> inner_;
        std::function<void()> then_;
    };

    void count(double bytes) {
        ++stats_->calls;
        stats_->bytes_sent += static_cast<int64_t>(bytes);
    }

    c10::intrusive_ptr<c10d::Store> store_;
    c10::intrusive_ptr<c10d::ProcessGroupGloo> pg_;
    int rank_, world_;
    std::chrono::milliseconds timeout_;
    std::string addr_;
    std::shared_ptr<CommStats> stats_;
    std::map<std::string, int> groups_made_;
};

}  // namespace

std::optional<Rendezvous> rendezvous_from_env() {
    Rendezvous rv;
    if (env("RANK") && env("WORLD_SIZE")) {
        rv.rank = env_int("RANK", 0);
        rv.world_size = env_int("WORLD_SIZE", 1);
        rv.local_rank = env_int("LOCAL_RANK", 0);
        rv.local_world_size = env_int("LOCAL_WORLD_SIZE", 1);
        rv.source = "RANK/WORLD_SIZE (torchrun-style)";
    } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
        rv.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
        rv.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
        rv.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
        rv.local_world_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
        rv.source = "OMPI_COMM_WORLD_* (mpirun)";
    } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
        rv.rank = env_int("SLURM_PROCID", 0);
        rv.world_size = env_int("SLURM_NTASKS", 1);
        rv.local_rank = env_int("SLURM_LOCALID", 0);
        rv.local_world_size = env_int("SLURM_NTASKS_PER_NODE", 1);
        rv.source = "SLURM_PROCID/SLURM_NTASKS (srun)";
    } else {
        return std::nullopt;
    }
    if (const char* a = env("MASTER_ADDR")) rv.master_addr = a;
    rv.master_port = env_int("MASTER_PORT", 29500);
    rv.local_world_size = std::max(1, rv.local_world_size);
    if (rv.world_size < 1 || rv.rank < 0 || rv.rank >= rv.world_size)
        throw Error("rank " + std::to_string(rv.rank) + " of world size " + std::to_string(rv.world_size) +
                        " from " + rv.source + " is not a valid rank",
                    "check the launcher's environment");
    return rv;
}

std::unique_ptr<Transport> make_gloo_transport(const Rendezvous& rv) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(rv.timeout_s * 1000));
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(rv.master_port);
    opts.isServer = rv.rank == 0;
    opts.numWorkers = rv.world_size;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    try {
        auto store = c10::make_intrusive<c10d::TCPStore>(rv.master_addr, opts);
        const bool loopback = rv.master_addr == "127.0.0.1" || rv.master_addr == "localhost";
        return std::make_unique<GlooTransport>(store, rv.rank, rv.world_size, timeout,
                                               loopback ? std::string("127.0.0.1") : std::string());
    } catch (const c10::Error& e) {
        throw Error("rank " + std::to_string(rv.rank) + ": rendezvous at " + rv.master_addr + ":" +
                        std::to_string(rv.master_port) + " failed within " + std::to_string(rv.timeout_s) +
                        " s: " + e.what_without_backtrace(),
                    "check MASTER_ADDR/MASTER_PORT and that every rank was started");
    }
}

}  // namespace plexus::host
