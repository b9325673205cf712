// plexus/model.hpp: what a model plugin provides.
//
// A model is an ordered list of blocks: blocks()[0] maps token ids to hidden states, the middle
// blocks map hidden states to hidden states, and the last block maps hidden states to logits.
// forward() is their composition and loss() turns logits into a scalar. Keeping the blocks
// explicit is what lets strategies partition any model without knowing its internals:
//   - pipeline and PETRA strategies place contiguous runs of blocks on stages and balance them
//     with each block's flops_per_token();
//   - PETRA reconstructs a block's input from its output with inverse() when invertible();
//   - tensor parallelism shards the parameters a block lists in tensor_parallel_plan();
//   - the simulated cluster charges compute time from the FLOPs of the blocks a rank runs.
//
// Model and Block are torch::nn::Module, so parameters(), named_parameters(), to(device),
// train() and eval() work as usual. Register every block with add_block() in the constructor.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/autograd.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include "plexus/error.hpp"
#include "plexus/width.hpp"

namespace plexus {

// How tensor parallelism may split a parameter of a block (Megatron-style).
struct TensorParallelRule {
    enum class Split {
        Column,    // split the output dimension (dim 0 of a Linear weight, and its bias)
        Row,       // split the input dimension (dim 1 of a Linear weight); the output is summed
        Replicate  // keep whole on every rank (norms, the bias of a row-parallel layer)
    };
    std::string parameter;  // name relative to the block, as named_parameters() gives it
    Split split;
    // The split dimension is made of this many equal parts, each split across the ranks
    // separately (a fused q, k, v projection: 3, so that every rank gets its heads of each).
    int64_t chunks = 1;
    // Rows (columns) that must stay on one rank together: an attention head's dimension, so
    // that every rank holds whole heads.
    int64_t granule = 1;
};

// What a tensor-parallel strategy gives the blocks whose parameters it split (Megatron's f and
// g operators). A block calls enter() on the input of its column-parallel layers and exit() on
// the partial output of its row-parallel layers; without tensor parallelism both are identities.
class TensorParallel {
public:
    virtual ~TensorParallel() = default;
    virtual int size() const = 0;  // ranks sharing the block
    // Identity forward; the gradient is all-reduced over the group in backward. With sequence
    // parallelism: all-gathers the sequence dimension (dim 1) forward, reduce-scatters backward.
    virtual torch::Tensor enter(const torch::Tensor& x) = 0;
    // All-reduces the partial sums forward; identity backward. With sequence parallelism:
    // reduce-scatters along the sequence dimension forward, all-gathers backward.
    virtual torch::Tensor exit(const torch::Tensor& partial) = 0;
    // Column-parallel layers that read the same input: x_i = enter(x) W_iᵀ + b_i (b_i may be
    // undefined). A strategy overrides it to overlap the input gradient's all-reduce with the
    // weight gradients' computation in backward (Megatron's asynchronous all-reduce).
    virtual std::vector<torch::Tensor> column_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                                     const std::vector<torch::Tensor>& biases) {
        const auto in = enter(x);
        std::vector<torch::Tensor> out;
        for (size_t i = 0; i < weights.size(); ++i)
            out.push_back(torch::linear(in, weights[i], i < biases.size() ? biases[i] : torch::Tensor()));
        return out;
    }
};

class Block : public torch::nn::Module {
public:
    virtual torch::Tensor forward(const torch::Tensor& x) = 0;

    // Training FLOPs (forward and backward) per token for this block at sequence length
    // seq_len, in the same convention as the model's flops_per_token().
    virtual double flops_per_token(int64_t seq_len) const = 0;

    // Reversible blocks (PETRA, reversible backprop) compute their input from their output.
    virtual bool invertible() const { return false; }
    virtual torch::Tensor inverse(const torch::Tensor& /*y*/) {
        throw Error("block '" + block_name() + "' is not invertible",
                    "use a reversible model (for example models/revgpt) with this strategy");
    }

    // The backward pass of a reversible block with nothing kept from its forward: from its
    // output y (often itself reconstructed) and the loss's gradient with respect to y, returns
    // the block's input x and the gradient with respect to x, and adds the gradients of its
    // parameters to their .grad - all at the parameters' current values. Equal to autograd
    // through forward(x) when y = forward(x). The default inverts, then runs forward again with
    // a graph (two forwards); a block overrides it when the inversion can serve as the
    // recomputation (an additive coupling: one forward of each half).
    virtual std::pair<torch::Tensor, torch::Tensor> reverse(const torch::Tensor& y, const torch::Tensor& grad_y) {
        torch::Tensor x;
        {
            torch::NoGradGuard no_grad;
            x = inverse(y);
        }
        torch::AutoGradMode grad_on(true);
        auto leaf = x.detach().requires_grad_(true);
        torch::autograd::backward({forward(leaf)}, {grad_y});
        return {leaf.detach(), leaf.grad()};
    }

    // Which parameters tensor parallelism may split, and how. Empty: the block stays replicated.
    // A block with a plan must work on split parameters: take local sizes (heads, hidden units)
    // from its parameters' shapes, run its column-parallel layers with column_parallel_linear
    // (or call tensor_parallel_enter on their input) and its row-parallel ones with
    // row_parallel_linear (or tensor_parallel_exit on their partial output, then the bias).
    virtual std::vector<TensorParallelRule> tensor_parallel_plan() const { return {}; }
    // Set by a tensor-parallel strategy after it split this block's parameters.
    void set_tensor_parallel(std::shared_ptr<TensorParallel> tp) { tensor_parallel_ = std::move(tp); }

    // μP: the role of each parameter as the model widens (plexus/width.hpp), so that optimizers
    // can scale their steps per layer (μAdam, μLO). Empty: the standard parametrization. A block
    // in μP lists every parameter it registers.
    virtual std::vector<WidthRule> width_plan() const { return {}; }

    // The name the model registered this block under ("embed", "layer0", "head"): the prefix of
    // its parameters' names in the model. (torch's Module::name() is the C++ class's name.)
    const std::string& block_name() const { return block_name_; }

    // Parameters this block uses but another block owns and registers (a tied embedding used
    // by the head). Strategies that place or shard blocks apart (pipelines, ZeRO-3) must know.
    virtual std::vector<torch::Tensor> shared_parameters() const { return {}; }

protected:
    torch::Tensor tensor_parallel_enter(const torch::Tensor& x) {
        return tensor_parallel_ ? tensor_parallel_->enter(x) : x;
    }
    torch::Tensor tensor_parallel_exit(const torch::Tensor& x) {
        return tensor_parallel_ ? tensor_parallel_->exit(x) : x;
    }
    // Column-parallel layers on one input, x W_iᵀ + b_i (biases may be fewer, or undefined):
    // under tensor parallelism their input enters the group once.
    std::vector<torch::Tensor> column_parallel_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                                      const std::vector<torch::Tensor>& biases = {}) {
        if (tensor_parallel_) return tensor_parallel_->column_linear(x, weights, biases);
        std::vector<torch::Tensor> out;
        for (size_t i = 0; i < weights.size(); ++i)
            out.push_back(torch::linear(x, weights[i], i < biases.size() ? biases[i] : torch::Tensor()));
        return out;
    }
    // A row-parallel layer, x Wᵀ + b: under tensor parallelism the partial sums meet (exit)
    // before the bias is added once; without it, one matmul with the bias fused in (addmm).
    torch::Tensor row_parallel_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
        if (!tensor_parallel_) return torch::linear(x, weight, bias);
        return tensor_parallel_->exit(torch::linear(x, weight)) + bias;
    }

private:
    friend class Model;  // names the block in add_block()
    std::shared_ptr<TensorParallel> tensor_parallel_;
    std::string block_name_;
};

// FLOPs per token with the convention that produced it, recorded with every run's MFU.
struct FlopsPerToken {
    double flops = 0.0;          // training FLOPs (forward and backward) per token
    std::string convention;      // e.g. "6N+12LHQT (PaLM); N excludes input embedding tables"
    int64_t counted_params = 0;  // the N in that formula
};

class Model : public torch::nn::Module {
public:
    // Token ids [batch, seq] in, logits [batch, seq, vocab] out (or, where the descriptor says
    // extras "check.output" = "free", whatever this model's own loss() reads).
    virtual torch::Tensor forward(const torch::Tensor& tokens) {
        torch::Tensor x = tokens;
        for (auto& block : blocks_) x = block->forward(x);
        return x;
    }

    // Mean loss over all positions; targets are token ids [batch, seq].
    virtual torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) = 0;

    virtual FlopsPerToken flops_per_token(int64_t seq_len) const = 0;

    const std::vector<std::shared_ptr<Block>>& blocks() const { return blocks_; }

protected:
    // Registers a block as a submodule and appends it to the block list.
    template <typename B>
    std::shared_ptr<B> add_block(const std::string& name, std::shared_ptr<B> block) {
        register_module(name, block);
        static_cast<Block&>(*block).block_name_ = name;
        blocks_.push_back(block);
        return block;
    }

private:
    std::vector<std::shared_ptr<Block>> blocks_;
};

}  // namespace plexus
