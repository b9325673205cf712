// plexus/kit/grad_buckets.hpp: gradients averaged over a data-parallel group while backward goes
// on. DDP's buckets, and the data-parallel part of tensor and pipeline parallelism.
//
// Parameters are grouped, in reverse order (roughly the order backward produces their
// gradients), into buckets of about bucket_mb. A hook on each parameter copies its gradient into
// its bucket; when a bucket's last gradient arrives, its reduction starts at once (overlap on)
// while backward goes on with earlier layers. finish() waits for every bucket (the time it
// blocks is the exposed communication) and writes the results into .grad.
//
// Several backward passes per update (gradient accumulation, a pipeline's micro-batches): call
// expect(false) before the ones that only accumulate, expect(true) before the last; only the
// last communicates, its hook adding what .grad holds so far.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "plexus/error.hpp"
#include "plexus/transport.hpp"

namespace plexus {

class GradientBuckets {
public:
    // Starts the reduction of bucket `index`, in place on `flat`.
    using Reduce = std::function<std::shared_ptr<Work>(torch::Tensor& flat, int64_t index)>;

    // `owner` names the strategy in errors. With require_all, a parameter that received no
    // gradient is an error (DDP); otherwise it counts as a zero gradient.
    GradientBuckets(std::string owner, std::vector<torch::Tensor> params, double bucket_mb, bool overlap,
                    bool require_all, Reduce reduce)
        : owner_(std::move(owner)), params_(std::move(params)), overlap_(overlap), require_all_(require_all),
          reduce_(std::move(reduce)) {
        const auto bucket_bytes = static_cast<int64_t>(bucket_mb * 1024 * 1024);
        int64_t filled = 0;  // bytes in the bucket being filled
        bucket_of_.assign(params_.size(), 0);
        offset_of_.assign(params_.size(), 0);
        arrived_.assign(params_.size(), 0);
        for (size_t k = params_.size(); k-- > 0;) {
            const int64_t bytes = params_[k].numel() * static_cast<int64_t>(params_[k].element_size());
            if (buckets_.empty() || (filled > 0 && filled + bytes > bucket_bytes)) {
                buckets_.emplace_back();
                filled = 0;
            }
            auto& b = buckets_.back();
            offset_of_[k] = filled / static_cast<int64_t>(params_[k].element_size());
            b.params.push_back(k);
            bucket_of_[k] = buckets_.size() - 1;
            filled += bytes;
        }
        for (auto& b : buckets_) {
            int64_t n = 0;
            for (size_t k : b.params) n += params_[k].numel();
            b.flat = torch::zeros({n}, params_[b.params[0]].options());
        }
        for (size_t k = 0; k < params_.size(); ++k)
            params_[k].register_hook([this, k](torch::Tensor grad) {
                on_grad(k, grad);
                return grad;
            });
    }
    // The hooks hold `this`.
    GradientBuckets(const GradientBuckets&) = delete;
    GradientBuckets& operator=(const GradientBuckets&) = delete;

    size_t size() const { return buckets_.size(); }
    // Bucket b's parameters (indices into the constructor's list) and where each one sits in it.
    const std::vector<size_t>& params_of(size_t b) const { return buckets_[b].params; }
    int64_t offset_of(size_t param) const { return offset_of_[param]; }

    // Whether the next backward is the last before the update (only that one communicates).
    void expect(bool last, bool accumulated = false) {
        last_ = last;
        accumulated_ = accumulated;
    }

    // After the last backward: starts what has not started, waits for all, and returns each
    // parameter's mean gradient (constructor order) as a view of its bucket: no copy out, as
    // PyTorch DDP's gradient_as_bucket_view. The views hold until the next backward's hooks
    // overwrite them; .grad is left as autograd set it (this rank's own gradient).
    std::vector<torch::Tensor> finish_as_views() {
        torch::NoGradGuard no_grad;
        for (size_t b = 0; b < buckets_.size(); ++b) complete_and_launch(b);
        std::vector<torch::Tensor> means(params_.size());
        for (auto& bucket : buckets_) {
            bucket.work->wait();
            bucket.work.reset();
            bucket.ready = 0;
            for (size_t k : bucket.params) {
                means[k] = bucket.flat.narrow(0, offset_of_[k], params_[k].numel()).view(params_[k].sizes());
                arrived_[k] = 0;
            }
        }
        return means;
    }

    // finish_as_views(), the means then copied into .grad (for strategies that read .grad).
    void finish() {
        const auto means = finish_as_views();
        torch::NoGradGuard no_grad;
        for (size_t k = 0; k < params_.size(); ++k) {
            auto& p = params_[k];
            if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
            p.mutable_grad().copy_(means[k]);
        }
    }

private:
    struct Bucket {
        torch::Tensor flat;          // reduced in place
        std::vector<size_t> params;  // indices into params_
        size_t ready = 0;            // gradients arrived in this backward
        std::shared_ptr<Work> work;
    };

    void on_grad(size_t k, const torch::Tensor& grad) {
        if (!last_) return;  // accumulating: the gradient goes to .grad as usual
        torch::NoGradGuard no_grad;
        auto& b = buckets_[bucket_of_[k]];
        auto slot = b.flat.narrow(0, offset_of_[k], grad.numel());
        const auto& held = params_[k].grad();
        if (accumulated_ && held.defined())
            torch::add_out(slot, held.view(-1), grad.reshape(-1));
        else
            slot.copy_(grad.reshape(-1));
        arrived_[k] = 1;
        if (++b.ready == b.params.size() && overlap_) b.work = reduce_(b.flat, static_cast<int64_t>(bucket_of_[k]));
    }

    // A bucket not started yet: overlap off, or a parameter without gradient (zero, or an error).
    void complete_and_launch(size_t b) {
        auto& bucket = buckets_[b];
        if (bucket.work) return;
        for (size_t k : bucket.params) {
            if (arrived_[k]) continue;
            if (require_all_)
                throw Error(
                    owner_ + ": bucket " + std::to_string(b) + " never received all its gradients",
                    "a parameter the loss does not reach has no gradient; " + owner_ + " needs every parameter used");
            const auto& held = params_[k].grad();
            auto slot = bucket.flat.narrow(0, offset_of_[k], params_[k].numel());
            if (accumulated_ && held.defined())
                slot.copy_(held.view(-1));
            else
                slot.zero_();
        }
        bucket.work = reduce_(bucket.flat, static_cast<int64_t>(b));
    }

    std::string owner_;
    std::vector<torch::Tensor> params_;
    bool overlap_, require_all_;
    Reduce reduce_;
    std::vector<Bucket> buckets_;
    std::vector<size_t> bucket_of_;
    std::vector<int64_t> offset_of_;
    std::vector<char> arrived_;
    bool last_ = true, accumulated_ = false;
};

}  // namespace plexus
