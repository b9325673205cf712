// plexus/dataset.hpp: what a dataset plugin provides.
//
// A dataset opens streams of batches. Strategies pull batches from the stream the harness hands
// them, as many as their algorithm needs per step (one for DDP, m micro-batches for a pipeline, a
// variable number for ACCO), and the harness counts the tokens consumed. Streams are
// deterministic: the same spec (split, shapes, rank, world, seed) gives the same batches, and
// seek() returns to a position exactly (checkpoints and resume rely on it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <torch/types.h>

namespace plexus {

enum class Split { Train, Validation };

struct Batch {
    torch::Tensor inputs;   // int64 token ids [batch, seq]
    torch::Tensor targets;  // int64 token ids [batch, seq]: inputs shifted by one position
    int64_t tokens() const { return inputs.numel(); }
};

struct StreamSpec {
    Split split = Split::Train;
    int64_t batch_size = 8;
    int64_t seq_len = 128;
    int rank = 0;        // the data-parallel shard this stream belongs to
    int world_size = 1;  // the number of data-parallel shards
    uint64_t seed = 0;
    // false: windows drawn at random from (seed, batch, row), an endless stream. true: the split
    // read in order, window after window (stride seq_len), each once, so that the stream has a
    // length; the harness evaluates the whole validation split this way (train.eval_batches = 0).
    bool sequential = false;
};

class BatchStream {
public:
    virtual ~BatchStream() = default;
    virtual Batch next() = 0;
    // Number of batches drawn so far; seek(n) makes the next batch the (n+1)-th.
    virtual int64_t position() const = 0;
    virtual void seek(int64_t position) = 0;
    // Batches in the stream: -1 for an endless one (random windows); a sequential stream's full
    // batches (the split's last windows, fewer than a batch, are left out).
    virtual int64_t length() const { return -1; }
};

class Dataset {
public:
    virtual ~Dataset() = default;
    virtual int64_t vocab_size() const = 0;
    virtual std::unique_ptr<BatchStream> open(const StreamSpec& spec) = 0;
    // One line for logs: what was loaded, how many tokens in each split.
    virtual std::string describe() const = 0;
};

}  // namespace plexus
