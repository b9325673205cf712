// The Transport over a c10d process group, shared by the Gloo transport (every build) and the
// NCCL one (CUDA builds only, transport/nccl.cpp). A "flavor" says what differs:
//
//   struct Flavor {
//       using Group = c10d::ProcessGroupGloo;          // the c10d class
//       static constexpr const char* kName = "gloo";   // Transport::backend()
//       static constexpr bool kNativeShards = false;   // has _reduce_scatter_base / _allgather_base
//       static constexpr bool kPollableRecv = false;   // a receive's isCompleted() works before wait()
//       torch::Device device;                          // where the collectives want tensors
//       c10::intrusive_ptr<Group> make_group(store, rank, world, timeout) const;
//       c10d::BarrierOptions barrier_options() const;
//       void close(Group& group) const;                // when the transport goes
//   };
//
// Tensors elsewhere than flavor.device are staged there and copied back when the work completes
// (a CPU scalar all-reduced over NCCL, say); tensors already there are used in place.
#pragma once

#include <atomic>
#include <chrono>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/torch.h>

#include <plexus/error.hpp>
#include <plexus/transport.hpp>

#include "transport/c10d.hpp"

namespace plexus::host {
// The TCPStore of the rendezvous (rank 0 serves it); throws a clear error after rv.timeout_s.
c10::intrusive_ptr<c10d::Store> connect_store(const Rendezvous& rv);
// The NCCL transport over a store already connected (nccl.cpp; CPU builds: nccl_none.cpp, an error).
std::unique_ptr<Transport> make_nccl_transport_on(const Rendezvous& rv, c10::intrusive_ptr<c10d::Store> store,
                                                  const torch::Device& device);
}  // namespace plexus::host

namespace plexus::host::c10d_impl {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline int64_t nbytes(const torch::Tensor& t) { return t.numel() * static_cast<int64_t>(t.element_size()); }

// Wraps a c10d work: accounts time, and runs a completion step (copy out, divide for a mean)
// exactly once, on the first wait().
//
// `watched`: the work does not report its own completion (Gloo's receives say isCompleted()
// only once waited for), so the first is_completed() that finds it pending starts a thread that
// waits for it; Transport::wait_any, which polls, then sees it complete.
class C10dWork : public Work {
public:
    C10dWork(c10::intrusive_ptr<::c10d::Work> work, std::shared_ptr<CommStats> stats, std::function<void()> finish,
             bool watched = false)
        : work_(std::move(work)), stats_(std::move(stats)), finish_(std::move(finish)), issued_(Clock::now()),
          watched_(watched) {}
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
    bool is_completed() override {
        if (done_ || work_->isCompleted()) return true;
        if (!watched_) return false;
        if (!waiter_.joinable())
            waiter_ = std::thread([this] {
                try {
                    work_->wait();
                } catch (...) { failure_ = std::current_exception(); }
                arrived_ = true;
            });
        return arrived_;
    }

private:
    void finish(bool exposed) {
        if (done_) return;
        const auto t0 = Clock::now();
        if (waiter_.joinable()) {
            waiter_.join();
            if (failure_) std::rethrow_exception(std::exchange(failure_, nullptr));
        } else {
            work_->wait();
        }
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
    bool watched_ = false;
    std::thread waiter_;  // watched works: waits for the work off the caller's thread
    std::atomic<bool> arrived_{false};
    std::exception_ptr failure_;
};

// A work whose completion runs one more step after the inner work's.
class Chained : public Work {
public:
    Chained(std::shared_ptr<Work> inner, std::function<void()> then)
        : inner_(std::move(inner)), then_(std::move(then)) {}
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

inline c10d::ReduceOp to_c10d(ReduceOp op) {
    switch (op) {
        case ReduceOp::Sum:
        case ReduceOp::Mean: return c10d::ReduceOp::SUM;  // Gloo has no average: divide after
        case ReduceOp::Max: return c10d::ReduceOp::MAX;
        case ReduceOp::Min: return c10d::ReduceOp::MIN;
    }
    return c10d::ReduceOp::SUM;
}

template <class Flavor>
class C10dTransport : public Transport {
public:
    // `stats` is shared with the parent transport for a subgroup: the run's figures count every
    // byte and wait, whichever group carried it.
    C10dTransport(Flavor flavor, c10::intrusive_ptr<c10d::Store> store, int rank, int world,
                  std::chrono::milliseconds timeout, std::shared_ptr<CommStats> stats = std::make_shared<CommStats>())
        : flavor_(std::move(flavor)), store_(std::move(store)), rank_(rank), world_(world), timeout_(timeout),
          stats_(std::move(stats)) {
        pg_ = flavor_.make_group(store_, rank_, world_, timeout_);
    }
    ~C10dTransport() override {
        try {
            flavor_.close(*pg_);
        } catch (...) {
            // a destructor must not throw; a group that fails to close is gone with the process
        }
    }
    C10dTransport(const C10dTransport&) = delete;
    C10dTransport& operator=(const C10dTransport&) = delete;

    int rank() const override { return rank_; }
    int world_size() const override { return world_; }
    const char* backend() const override { return Flavor::kName; }

    // Bytes are those a bandwidth-optimal (ring) algorithm sends per rank: 2(W-1)/W of the
    // buffer for an all-reduce, (W-1)/W of the output for an all-gather or reduce-scatter input.
    std::shared_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override {
        auto staged = stage(t);
        std::vector<torch::Tensor> v{staged};
        c10d::AllreduceOptions o;
        o.reduceOp = to_c10d(op);
        count(2.0 * (world_ - 1) / world_ * nbytes(t));
        return std::make_shared<C10dWork>(pg_->allreduce(v, o), stats_, finisher(t, staged, op == ReduceOp::Mean));
    }

    std::shared_ptr<Work> reduce_scatter(torch::Tensor& out, const torch::Tensor& in, ReduceOp op) override {
        if constexpr (Flavor::kNativeShards) {
            auto staged_in = stage(in).contiguous().view(-1);
            auto staged_out = stage(out);
            auto flat_out = staged_out.view(-1);
            c10d::ReduceScatterOptions o;
            o.reduceOp = to_c10d(op);
            count(static_cast<double>(world_ - 1) / world_ * nbytes(in));
            return std::make_shared<C10dWork>(pg_->_reduce_scatter_base(flat_out, staged_in, o), stats_,
                                              finisher(out, staged_out, op == ReduceOp::Mean));
        } else {
            // Gloo (LibTorch 1.13) has no reduce-scatter: an all-reduce of the input, then this rank's chunk.
            auto buffer = in.clone();
            auto inner = all_reduce(buffer, op);
            auto chunk = out.numel();
            return std::make_shared<Chained>(inner, [out, buffer, chunk, r = rank_]() mutable {
                out.view(-1).copy_(buffer.view(-1).narrow(0, r * chunk, chunk));
            });
        }
    }

    std::shared_ptr<Work> all_gather(torch::Tensor& out, const torch::Tensor& in) override {
        auto flat_in = stage(in).contiguous().view(-1);
        auto staged_out = stage(out);
        auto flat_out = staged_out.view(-1);
        count(static_cast<double>(world_ - 1) / world_ * nbytes(out));
        if constexpr (Flavor::kNativeShards) {
            return std::make_shared<C10dWork>(pg_->_allgather_base(flat_out, flat_in), stats_,
                                              finisher(out, staged_out, false));
        } else {
            const auto n = flat_in.numel();
            std::vector<std::vector<torch::Tensor>> outputs(1);
            for (int r = 0; r < world_; ++r) outputs[0].push_back(flat_out.narrow(0, r * n, n));
            std::vector<torch::Tensor> inputs{flat_in};
            return std::make_shared<C10dWork>(pg_->allgather(outputs, inputs), stats_,
                                              finisher(out, staged_out, false));
        }
    }

    std::shared_ptr<Work> broadcast(torch::Tensor& t, int root) override {
        auto staged = stage(t);
        std::vector<torch::Tensor> v{staged};
        c10d::BroadcastOptions o;
        o.rootRank = root;
        count(rank_ == root ? static_cast<double>(nbytes(t)) : 0.0);
        return std::make_shared<C10dWork>(pg_->broadcast(v, o), stats_, finisher(t, staged, false));
    }

    void barrier() override {
        count(0);
        C10dWork(pg_->barrier(flavor_.barrier_options()), stats_, nullptr).wait();
    }

    std::shared_ptr<Work> send(const torch::Tensor& t, int peer, int tag) override {
        std::vector<torch::Tensor> v{stage(t).contiguous()};
        count(static_cast<double>(nbytes(t)));
        return std::make_shared<C10dWork>(pg_->send(v, peer, tag), stats_, nullptr);
    }

    std::shared_ptr<Work> recv(torch::Tensor& t, int peer, int tag) override {
        auto staged = stage(t);
        std::vector<torch::Tensor> v{staged};
        count(0);
        return std::make_shared<C10dWork>(pg_->recv(v, peer, tag), stats_, finisher(t, staged, false),
                                          !Flavor::kPollableRecv);
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
        return std::make_shared<C10dTransport>(flavor_, prefixed, my_index, static_cast<int>(ranks.size()), timeout_,
                                               stats_);
    }

    CommStats stats() const override { return *stats_; }

private:
    // `t` itself when it is where the collectives want it, else a copy there.
    torch::Tensor stage(const torch::Tensor& t) const {
        return t.device() == flavor_.device ? t : t.to(flavor_.device);
    }

    // What completes a work whose result landed in `staged`: the division of a mean, and the
    // copy back into `t` when `staged` is a copy.
    std::function<void()> finisher(const torch::Tensor& t, const torch::Tensor& staged, bool mean) const {
        const bool copy_back = !staged.is_same(t);
        if (!mean && !copy_back) return nullptr;
        return [t, staged, mean, copy_back, w = world_]() mutable {
            if (mean) staged.div_(w);
            if (copy_back) t.copy_(staged);
        };
    }

    void count(double bytes) {
        ++stats_->calls;
        stats_->bytes_sent += static_cast<int64_t>(bytes);
    }

    Flavor flavor_;
    c10::intrusive_ptr<c10d::Store> store_;
    c10::intrusive_ptr<typename Flavor::Group> pg_;
    int rank_, world_;
    std::chrono::milliseconds timeout_;
    std::shared_ptr<CommStats> stats_;
    std::map<std::string, int> groups_made_;
};

}  // namespace plexus::host::c10d_impl
