// The pieces one rank's training loop (trainer.cpp) is built from, each with one job:
//   RankRun / assemble    the rank's plugins and streams, made from the resolved experiment
//   LoopState             every counter of the loop, saved into and restored from checkpoints
//   Progress, Recorder    the terminal, and this rank's rows in the database
//   MetricsLogger         per-step and per-interval metrics, the log line, the progress bar
//   FaultInjector         [[faults]] on this rank: slow from a step, kill at a step
//   Checkpointer          writing this rank's checkpoint, the tally, resuming from one
//   finish_record         the summaries at the end, every rank's figures gathered to rank 0
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <plexus/strategy.hpp>

#include "device/memory_meter.hpp"
#include "device/peak.hpp"
#include "runtime/host_context.hpp"
#include "runtime/trainer.hpp"

namespace plexus::host {

// The terminal: lines (rank 0) and, on a terminal or when asked, a progress bar.
class Progress {
public:
    Progress(const std::string& mode, int64_t total_steps);
    void line(const std::string& text);
    void bar(int64_t step, double loss, double eta);
    void clear();

private:
    int64_t total_;
    bool bar_ = false, lines_ = true, shown_ = false;
};

// Writes one rank's rows. The run's record (summaries, its end) is the owner's (rank 0); every
// rank's metric rows reach the database: written here where this process has it open (rank 0,
// the simulated ranks), else handed to the control channel for rank 0 to write.
class Recorder {
public:
    Recorder(ResultsStore* store, bool owner, int64_t run) : store_(store), owner_(owner && store), run_(run) {}
    void use_channel(ControlChannel* channel) { channel_ = channel; }
    void summary(const std::string& key, double value, int rank = 0);
    void summary_text(const std::string& key, const std::string& text);
    void metrics(std::vector<MetricRow>& rows);
    void peers_metrics();  // the owner writes the rows other ranks handed to the channel
    void finish(const std::string& status, const std::string& error);
    std::string where() const { return store_ ? store_->path() : "rank 0's database"; }

private:
    ResultsStore* store_;
    bool owner_;
    int64_t run_;
    ControlChannel* channel_ = nullptr;
};

// A rank's plugins and streams, as the experiment makes them.
struct RankRun {
    Connection connection;
    std::shared_ptr<Dataset> dataset;
    std::unique_ptr<HostContext> ctx;
    std::unique_ptr<DeviceStream> val, train;
    std::unique_ptr<Strategy> strategy;
    int data_shards = 1;       // distinct batches per step (ranks that share one share a shard)
    int64_t eval_batches = 0;  // per evaluation: train.eval_batches, or the whole split's batches
    std::string eval_windows;  // a digest of the validation batches one evaluation reads
    Peak peak;
    ControlChannel& control() { return *connection.control; }
};
// Connects, builds the dataset (or takes the simulated ranks' shared one), the context, the
// validation stream (first: it checks that a sequence fits the data), the strategy with its
// model, this rank's training shard; finds the peak FLOP/s for MFU. `run.ctx` is set as soon as
// it exists, so that a failure later can still record its rows.
void assemble(const Job& job, const RankEnv& env, Recorder& rec, RankRun& run);

// Every counter of the loop. Checkpoints carry them by name (fields()); a resumed run continues
// each where it was.
struct LoopState {
    int64_t step = 0, job_tokens = 0, own_tokens = 0, last_eval_step = -1, tokens_after_first = 0;
    int64_t interval_tokens = 0, interval_steps = 0;
    double last_eval = NAN, last_loss = NAN, horizon = 0, interval_seconds = 0, interval_loss = 0;
    double step_seconds_total = 0, step_seconds_after_first = 0;
    double slow_seconds = 0;  // what a slowed real rank has slept ([[faults]] slow)
    CommStats comm_before;    // earlier attempts' traffic (less the harness's own)
    CommStats comm_setup;     // this attempt's traffic before its first step (DDP's broadcast of the
                              // initial weights, a resume's gathers): not the training's
    std::string status = "finished";

    struct Fields {
        std::vector<std::pair<const char*, double*>> reals;
        std::vector<std::pair<const char*, int64_t*>> ints;
    };
    Fields fields(int64_t& ctx_tokens);
    // Tokens per second over the run, the first step left out (allocations, thread start-up).
    double tokens_per_second(int64_t tokens) const;
    // The run's training traffic: earlier attempts' and this one's since its first step, from
    // the transport's totals `now`.
    CommStats training_traffic(const CommStats& now) const;
};

// Per step: the loss curve and the interval's sums; at log points: throughput, MFU, memory, the
// log line, the rows written. The harness's own curves are rank 0's.
class MetricsLogger {
public:
    MetricsLogger(RankRun& run, LoopState& state, Recorder& rec, Progress& progress, int rank, int64_t max_steps,
                  int64_t max_tokens);
    void record(const char* key, double value);  // rank 0's curve
    void step_done(const StepOutput& out, double seconds, int64_t step_tokens, double lr);
    void log_point(bool eval_now, double lr);
    void bar(double loss);

private:
    RankRun& run_;
    LoopState& s_;
    Recorder& rec_;
    Progress& progress_;
    int rank_;
    int64_t max_steps_, max_tokens_;
};

// [[faults]] on this rank. Slows take effect at their step (simulated ranks through their clock,
// real ranks by sleeping in proportion after each step); a kill ends the rank at its step.
class FaultInjector {
public:
    FaultInjector(const Job& job, int rank, bool simulated, RankClock& clock, LoopState& state);
    // A resumed run: the slows of earlier steps hold again (the clock's factor is not saved).
    void resume_at(int64_t step);
    // Before `step`: the slows that start now; what kills this rank now, if anything does.
    std::optional<std::string> before_step(int64_t step);
    void after_step(double step_seconds);
    bool any_slow() const;
    std::string describe() const;  // every fault of the run, for the record

private:
    const std::vector<Fault>& faults_;
    int rank_;
    bool simulated_, resumed_;
    RankClock& clock_;
    LoopState& state_;
    double factor_ = 1;
};

// This rank's checkpoints: its own file, the tally that marks a step complete (rank 0), and the
// resume from one (every rank from rank 0's choice).
class Checkpointer {
public:
    Checkpointer(const Job& job, const RankEnv& env, RankRun& run, LoopState& state, Recorder& rec, Progress& progress);
    bool enabled() const { return job_.checkpoints.has_value(); }
    void announce();                         // whether the strategy claims exact resume
    void restore();                          // --resume: the chosen step's state, on every rank
    bool step_due(int64_t step) const;       // checkpoint.every_steps
    bool minutes_due(bool log_point) const;  // checkpoint.every_minutes, by rank 0's clock
    void write();
    void remove_all_if_finished();  // a finished run is not resumed

private:
    void tally(bool ok, std::string why);
    const Job& job_;
    const RankEnv& env_;
    RankRun& run_;
    LoopState& s_;
    Recorder& rec_;
    Progress& progress_;
    double last_wall_ = 0;
};

// LibTorch's default CPU generator (dropout and anything else drawing from it): its state, for a
// checkpoint, and its restoration.
torch::Tensor cpu_rng_state();
void set_cpu_rng_state(const torch::Tensor& state);

// A hash of every byte of a strategy's state, entries named "*.measured.*" (timings) left out:
// what "bit-identical" means in the run's summary state_hash and in `plexus check`.
std::string state_hash(const StateDict& state);

// The harness's own collective on the control channel: its traffic is taken out of the strategy's
// figures where the two share a transport.
void harness_all_reduce(RankRun& run, LoopState& state, torch::Tensor& t, ReduceOp op);

// When `e` is an allocation that failed (std::bad_alloc, LibTorch's CPU or CUDA allocator): an
// error with the size asked for where the message gives it, the memory there is, and the keys
// that set the sizes (train.batch_size, train.seq_len, the model's whole numbers).
std::optional<Error> out_of_memory(const std::exception& e, const ResolvedConfig& cfg, const torch::Device& device);

// The summaries at the end of a rank: throughput, memory, traffic, the state's digest; every
// rank's figures gathered to rank 0 (one small all-gather on the control channel, after which a
// stop posted too late is taken into the status).
void finish_record(const Job& job, const RankEnv& env, RankRun& run, LoopState& state, Recorder& rec,
                   const TensorMemoryMeter& meter, bool slowed);

}  // namespace plexus::host
