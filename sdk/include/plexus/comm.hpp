// plexus/comm.hpp: what a communication-scheme plugin provides.
//
// A communication scheme decides how a tensor is synchronized over a transport: plain
// all-reduce, a hierarchical all-reduce, quantized or sparsified exchange with error feedback,
// low-rank (PowerSGD). Strategies ask for one by name in the [comm] section and call it for
// each gradient bucket; they do not care how the bytes travel.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "plexus/optimizer.hpp"
#include "plexus/transport.hpp"

namespace plexus {

// Bytes each rank sends in a bandwidth-optimal (ring) all-reduce of `bytes` over `world` ranks:
// 2 (W - 1) / W of the buffer (the c10d and simulated transports count the same).
inline int64_t ring_all_reduce_bytes(int64_t bytes, int world) {
    return world > 1 ? 2 * (world - 1) * bytes / world : 0;
}

struct CommSchemeStats {
    // What a plain ring all-reduce of the tensors handed in would have sent from this rank
    // (ring_all_reduce_bytes of their bytes), so that plain all-reduce has a ratio of 1.
    int64_t logical_bytes = 0;
    int64_t bytes_sent = 0;  // bytes this scheme actually put on the transport
    double compression_ratio() const { return bytes_sent > 0 ? static_cast<double>(logical_bytes) / bytes_sent : 1.0; }
    // As a tensor in a scheme's state() (the counts continue across a resume).
    torch::Tensor as_tensor() const { return torch::tensor({logical_bytes, bytes_sent}, torch::kInt64); }
    static CommSchemeStats from_tensor(const torch::Tensor& t) { return {t[0].item<int64_t>(), t[1].item<int64_t>()}; }
};

// One parameter's place in a flat tensor handed to all_reduce_mean.
struct TensorPiece {
    std::string name;            // the parameter's name, as named_parameters() gives it
    int64_t offset = 0;          // its first element in the flat tensor
    std::vector<int64_t> shape;  // its shape
};

class CommScheme {
public:
    virtual ~CommScheme() = default;

    // Where the parameters lie in the tensor of `key`: a strategy that packs parameters into
    // flat buckets says so once per key, before that key's first all_reduce_mean, so that a
    // scheme may work per parameter (PowerSGD compresses each weight matrix on its own). A
    // scheme that treats the tensor as numbers ignores it; a strategy that never calls it hands
    // in tensors without known boundaries.
    virtual void set_layout(int64_t key, const std::vector<TensorPiece>& pieces) {
        (void)key;
        (void)pieces;
    }

    // Replaces `tensor` by (an estimate of) its mean over the transport's ranks. `key`
    // identifies the tensor across calls (a bucket index), for schemes that keep per-tensor
    // memory such as error feedback or PowerSGD's warm start. The result is valid after wait().
    virtual std::shared_ptr<Work> all_reduce_mean(torch::Tensor& tensor, Transport& transport, int64_t key) = 0;

    virtual CommSchemeStats stats() const = 0;

    // What the scheme carries from call to call (error-feedback residuals, PowerSGD's Q), for
    // checkpoints: the strategy that owns the scheme puts it in its own state. load_state()
    // receives what state() returned, on a fresh scheme of the same configuration. A scheme
    // without memory keeps these defaults.
    virtual StateDict state() const { return {}; }
    virtual void load_state(const StateDict& state) { (void)state; }
};

}  // namespace plexus
