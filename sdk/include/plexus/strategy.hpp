// plexus/strategy.hpp: what a strategy plugin provides.
//
// A strategy owns the training step of one rank: which parameters live here, what is computed,
// what is communicated and when, when the optimizer runs. The harness calls step() in a loop and
// evaluate() every so often; it assumes nothing else. In particular:
//   - "a step" is whatever the algorithm calls one: one optimizer update (DDP, ZeRO), one
//     pipeline schedule, one PETRA tick, one unit of gossip's event time (all the exchanges in
//     it). No global barrier is implied: the harness agrees on stops and checkpoints over
//     its own control channel, and on real back ends without making ranks wait for each other
//     (its collectives come only at the end of a run, at checkpoints and at evaluations).
//   - the strategy pulls as many batches from `input.train` as it needs; it reports the tokens
//     it consumed and the harness counts them (learning-rate schedules are indexed by tokens,
//     so that algorithms with variable batch sizes stay comparable).
//   - evaluation goes through the strategy, because only it knows which parameters to use:
//     the full model, gathered shards, all pipeline stages, or the workers' average.
#pragma once

#include <cstdint>

#include "plexus/dataset.hpp"
#include "plexus/optimizer.hpp"

namespace plexus {

struct StepInput {
    int64_t step = 0;  // 0-based index of this call
    // Tokens trained on before this step, per rank: the job's total divided by the number of
    // ranks, the same on every rank even where ranks consume different amounts (ACCO).
    int64_t tokens_seen = 0;
    double lr_scale = 1.0;     // the schedule's factor at tokens_seen; pass to Optimizer::step
    double max_grad_norm = 0;  // clip the global gradient norm to this; 0 disables clipping
    BatchStream* train = nullptr;
};

// Which part of every global batch a rank reads: rows [index·b, (index+1)·b) of count·b.
struct DataShard {
    int index = 0;
    int count = 1;
};

struct StepOutput {
    // Tokens this rank accounts for: the tokens it consumed, or, where several ranks work on the
    // same batch (a tensor-parallel group, the stages of a pipeline), its share of them, so that
    // the sum over ranks is the job's count (tokens/s and MFU per rank stay right).
    int64_t tokens = 0;
    // Tokens the whole job consumed, for strategies whose ranks consume different amounts
    // (ACCO: a slower worker contributes fewer micro-batches). It must be the same number on
    // every rank, because the harness indexes the learning-rate schedule and checks the
    // train.tokens budget with it (job tokens / world size: tokens "per rank"); it may lag by a
    // step when the strategy learns it from a later collective. -1 (the default): the ranks'
    // shares are equal, so the job consumed tokens x world size.
    int64_t job_tokens = -1;
    int64_t micro_batches = 0;  // batches drawn from the stream
    double loss = 0.0;          // mean training loss over those batches
    double grad_norm = -1.0;    // global gradient norm before clipping; < 0 if not computed
    bool optimizer_stepped = true;
};

class Strategy {
public:
    virtual ~Strategy() = default;
    virtual StepOutput step(const StepInput& input) = 0;
    // Mean loss over `batches` batches of `stream`, without changing any state.
    virtual double evaluate(BatchStream& stream, int64_t batches) = 0;
    // The rank's state for a checkpoint, taken between two step() calls: the model, the
    // optimizer, and whatever else the strategy's future depends on (buffers in flight, counters,
    // its own random generators). Every rank calls it at the same step, so it may communicate
    // (gathering shards). load_state() receives exactly what state() returned, on a freshly
    // built strategy of the same configuration; throw plexus::Error if it does not fit.
    // An entry whose name contains ".measured." holds a measurement of the machine (seconds
    // spent, say) that the strategy's decisions use: it is saved and restored like the rest,
    // but left out of the run's state_hash, which must not change from one run to the next.
    virtual StateDict state() const = 0;
    virtual void load_state(const StateDict& state) = 0;
    // True if state() holds all of that, so that a run resumed from a checkpoint is
    // bit-identical to an uninterrupted one (tests/test_reliability.cpp checks those that say
    // so). False: a resumed run starts from the saved weights and optimizer state but may take
    // another path; plexus says so when the run checkpoints.
    virtual bool exact_resume() const { return false; }
    // The data this rank reads, asked once after construction. Ranks that work on the same
    // batch (tensor parallel, pipeline stages) return the same shard. Default: one per rank.
    virtual DataShard data_shard(int rank, int world_size) const { return {rank, world_size}; }
};

}  // namespace plexus
