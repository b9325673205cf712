#include "runtime/trainer_parts.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include <ATen/CPUGeneratorImpl.h>
#include <plexus/error.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include "base/hash.hpp"
#include "base/text.hpp"
#include "device/cuda.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

torch::Tensor cpu_rng_state() {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
}
void set_cpu_rng_state(const torch::Tensor& state) {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
}

namespace {

// A digest of a strategy's state: a hash of every byte (parameters and optimizer state), for
// "bit-identical" checks, and the sum of the parameters' elements ("model.*" entries), for
// "close" checks between strategies that keep their optimizer state in different layouts.
struct StateDigest {
    std::string hash;
    double param_sum = 0;
    // Σp²: a gradient whose elements sum to zero (a softmax head's, anything behind a layer
    // norm) moves no parameter sum under SGD, but does move this.
    double param_square_sum = 0;
};

StateDigest digest(const StateDict& state) {
    StreamHash h;
    StateDigest d;
    for (const auto& [name, t] : state) {
        if (name.find(".measured.") != std::string::npos) continue;  // timings (Strategy::state)
        auto c = t.detach().contiguous().cpu();
        h.add(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
        if (c.is_floating_point() && name.rfind("model.", 0) == 0) {
            const auto wide = c.to(torch::kFloat64);
            d.param_sum += wide.sum().item<double>();
            d.param_square_sum += wide.square().sum().item<double>();
        }
    }
    d.hash = hex64(h.value());
    return d;
}

const std::string& plugin_name(const ResolvedConfig& cfg, const char* section) { return cfg.plugins.at(section)->name; }

}  // namespace

std::string state_hash(const StateDict& state) { return digest(state).hash; }

// ---- Progress, Recorder ----

Progress::Progress(const std::string& mode, int64_t total_steps) : total_(total_steps) {
    const bool tty = isatty(STDERR_FILENO);
    bar_ = mode == "bar" || (mode == "auto" && tty);
    lines_ = mode != "none";
}

void Progress::line(const std::string& text) {
    if (!lines_) return;
    clear();
    std::cout << text << std::endl;
}

void Progress::bar(int64_t step, double loss, double eta) {
    if (!bar_ || total_ <= 0) return;
    const int width = 30;
    const double frac = std::min(1.0, static_cast<double>(step) / total_);
    std::string b(static_cast<size_t>(frac * width), '#');
    b.resize(width, '.');
    char buf[160];
    std::snprintf(buf, sizeof buf, "\r[%s] %3.0f%% step %lld/%lld loss %.4f ETA %s\033[K", b.c_str(), frac * 100,
                  static_cast<long long>(step), static_cast<long long>(total_), loss, human_duration(eta).c_str());
    std::cerr << buf << std::flush;
    shown_ = true;
}

void Progress::clear() {
    if (shown_) std::cerr << "\r\033[K" << std::flush;
    shown_ = false;
}

void Recorder::summary(const std::string& key, double value, int rank) {
    if (owner_) store_->set_summary(run_, rank, key, value);
}
void Recorder::summary_text(const std::string& key, const std::string& text) {
    if (owner_) store_->set_summary_text(run_, 0, key, text);
}
void Recorder::metrics(std::vector<MetricRow>& rows) {
    if (rows.empty()) return;
    if (store_)
        store_->add_metrics(run_, rows);
    else if (channel_)
        channel_->send_rows(rows);
    rows.clear();
}
void Recorder::peers_metrics() {
    if (!owner_ || !channel_) return;
    auto rows = channel_->receive_rows();
    metrics(rows);
}
void Recorder::finish(const std::string& status, const std::string& error) {
    if (owner_) store_->finish_run(run_, status, error);
}

// ---- assembly ----

namespace {

Peak find_peak(const Job& job, const ResolvedConfig& cfg) {
    if (job.sim_device) return {job.sim_device->peak_flops, job.sim_device->source};
    const double given = cfg.host.train.peak_flops;
    if (given > 0) return {given, "train.peak_flops"};
    if (job.device.is_cpu()) return cpu_peak(job.threads, false, true);
    return gpu_peak(gpu::device_name(job.device));
}

}  // namespace

namespace {

// The validation stream: windows fixed by the data, not by the run (the seed is train.seed 0's,
// whatever train.seed is), so that every run on the same data is evaluated on the same windows;
// with train.eval_batches = 0 the whole split in order. Sets what one evaluation reads
// (run.eval_batches) and a digest of those windows (run.eval_windows, recorded with the run).
std::unique_ptr<DeviceStream> open_validation(const ResolvedConfig& cfg, Dataset& data, torch::Device device,
                                              RankRun& run) {
    int64_t& batches = run.eval_batches;
    const auto& t = cfg.host.train;
    StreamSpec spec{Split::Validation, t.batch_size, t.seq_len, 0, 1, mix_seed(0, fnv1a("data.val"))};
    spec.sequential = t.eval_batches == 0;
    auto stream = data.open(spec);
    batches = spec.sequential ? stream->length() : t.eval_batches;
    if (spec.sequential && batches < 1)
        throw Error(stream->length() < 0
                        ? "train.eval_batches = 0 asks for the whole validation split, and dataset '" +
                              plugin_name(cfg, "data") + "' cannot read it in order (its streams have no length)"
                        : "train.eval_batches = 0: the validation split holds less than one batch of " +
                              std::to_string(t.batch_size) + " windows of " + std::to_string(t.seq_len) + " tokens",
                    "set train.eval_batches to a number of batches");
    std::string tokens;
    for (int64_t b = 0; b < batches; ++b) {
        const auto inputs = stream->next().inputs.contiguous();
        tokens.append(static_cast<const char*>(inputs.data_ptr()), static_cast<size_t>(inputs.nbytes()));
    }
    stream->seek(0);
    run.eval_windows = hex64(fnv1a(tokens)) + " (" + std::to_string(batches) + " batches)";
    return std::make_unique<DeviceStream>(std::move(stream), device);
}

}  // namespace

void assemble(const Job& job, const RankEnv& env, Recorder& rec, RankRun& run) {
    const auto& cfg = *job.cfg;
    const int64_t B = cfg.host.train.batch_size, T = cfg.host.train.seq_len;
    run.connection = env.connect();
    rec.use_channel(run.connection.control.get());
    // The dataset needs a context for its factory; its vocabulary is known only after.
    HostContext bootstrap(cfg, job.device, 0, run.connection.transport, env.clock);
    bootstrap.set_ranks_per_node(env.ranks_per_node);
    run.dataset = job.shared_dataset ? *job.shared_dataset : nullptr;
    if (!run.dataset) {
        run.dataset = make_dataset(cfg, bootstrap);
        if (job.shared_dataset) *job.shared_dataset = run.dataset;
    }
    run.ctx =
        std::make_unique<HostContext>(cfg, job.device, run.dataset->vocab_size(), run.connection.transport, env.clock);
    auto& ctx = *run.ctx;
    ctx.set_ranks_per_node(env.ranks_per_node);
    ctx.set_initial_weights(job.initial_weights);
    ctx.set_measurement_transport(run.control().collectives_ptr());
    // The validation stream first: it checks that a sequence fits the data, before the
    // strategy builds a model whose causal mask alone is seq_len² floats.
    run.val = open_validation(cfg, *run.dataset, job.device, run);
    const std::string& strategy = plugin_name(cfg, "strategy");
    run.strategy = make_strategy(cfg, ctx);
    // Each rank trains on its shard of every global batch (the strategy says which: ranks
    // sharing a batch share a shard); every rank evaluates the same batches.
    const DataShard shard = run.strategy->data_shard(env.rank, env.world);
    if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
        throw Error("strategy '" + strategy + "' asked for data shard " + std::to_string(shard.index) + " of " +
                    std::to_string(shard.count));
    run.data_shards = shard.count;
    StreamSpec train_spec{Split::Train, B, T, shard.index, shard.count, ctx.seed("data")};
    run.train = std::make_unique<DeviceStream>(run.dataset->open(train_spec), job.device);
    if (!ctx.built_model)
        throw Error("strategy '" + strategy + "' built no model", "a strategy must call RunContext::make_model()");
    run.peak = find_peak(job, cfg);
}

// ---- loop state ----

LoopState::Fields LoopState::fields(int64_t& ctx_tokens) {
    return {{{"last_eval", &last_eval},
             {"last_loss", &last_loss},
             {"horizon", &horizon},
             {"interval_seconds", &interval_seconds},
             {"interval_loss", &interval_loss},
             {"step_seconds_total", &step_seconds_total},
             {"step_seconds_after_first", &step_seconds_after_first},
             {"comm.seconds_total", &comm_before.seconds_total},
             {"comm.seconds_exposed", &comm_before.seconds_exposed}},
            {{"step", &step},
             {"job_tokens", &job_tokens},
             {"own_tokens", &own_tokens},
             {"tokens", &ctx_tokens},
             {"last_eval_step", &last_eval_step},
             {"tokens_after_first", &tokens_after_first},
             {"interval_tokens", &interval_tokens},
             {"interval_steps", &interval_steps},
             {"comm.calls", &comm_before.calls},
             {"comm.bytes_sent", &comm_before.bytes_sent}}};
}

CommStats LoopState::training_traffic(const CommStats& now) const { return comm_before + (now - comm_setup); }

double LoopState::tokens_per_second(int64_t tokens) const {
    if (tokens_after_first > 0) return tokens_after_first / step_seconds_after_first;
    return step_seconds_total > 0 ? tokens / step_seconds_total : 0;
}

// ---- metrics ----

MetricsLogger::MetricsLogger(RankRun& run, LoopState& state, Recorder& rec, Progress& progress, int rank,
                             int64_t max_steps, int64_t max_tokens)
    : run_(run), s_(state), rec_(rec), progress_(progress), rank_(rank), max_steps_(max_steps),
      max_tokens_(max_tokens) {}

// The share of its data shard's tokens a rank computes the whole model for: 1 when each rank
// has its own batch; 1/tp (1/pp) when a tensor group (a pipeline) shares one. MFU counts the
// model's FLOPs on that share: the shard's tokens/s alone counted a tensor-parallel rank's
// batch once per rank of its group (119% MFU for tp = 8).
double compute_share(const RankRun& run) {
    return static_cast<double>(run.data_shards) / static_cast<double>(std::max(1, run.ctx->world_size()));
}

void MetricsLogger::record(const char* key, double value) {
    if (rank_ == 0) run_.ctx->record(key, value);
}

void MetricsLogger::step_done(const StepOutput& out, double seconds, int64_t step_tokens, double lr) {
    s_.step_seconds_total += seconds;
    if (s_.step > 0) s_.step_seconds_after_first += seconds, s_.tokens_after_first += step_tokens;
    s_.interval_seconds += seconds;
    s_.interval_tokens += step_tokens;
    s_.interval_loss += out.loss;
    ++s_.interval_steps;
    s_.last_loss = out.loss;
    record("loss", out.loss);
    record("lr", lr);
    if (out.grad_norm >= 0) record("grad_norm", out.grad_norm);
}

void MetricsLogger::log_point(bool eval_now, double lr) {
    auto& ctx = *run_.ctx;
    const auto& peak = run_.peak;
    const double tps = s_.interval_seconds > 0 ? s_.interval_tokens / s_.interval_seconds : 0;
    const double util = peak.flops ? mfu(ctx.flops.flops, tps * compute_share(run_), *peak.flops) : NAN;
    record("tokens_per_s", tps);
    record("step_time", s_.interval_seconds / std::max<int64_t>(1, s_.interval_steps));
    if (peak.flops) record("mfu", util);
    record("memory", peak_rss_bytes());
    // The ETA is in real seconds, whatever the clock of the run.
    const double wall_per_token = ctx.wall_seconds() / static_cast<double>(std::max<int64_t>(1, s_.job_tokens));
    const double eta = max_steps_ > 0 ? ctx.wall_seconds() / s_.step * (max_steps_ - s_.step)
                                      : static_cast<double>(max_tokens_ - s_.job_tokens) * wall_per_token;
    const std::string elapsed =
        human_duration(ctx.wall_seconds()) + (ctx.simulated() ? " (simulated " + human_duration(ctx.now()) + ")" : "");
    char buf[320];
    std::snprintf(
        buf, sizeof buf, "step %6lld | loss %.4f%s | lr %.2e | %s tok/s | MFU %s | mem %s | %s elapsed, ETA %s",
        static_cast<long long>(s_.step), s_.interval_loss / s_.interval_steps,
        eval_now ? (" | eval " + std::to_string(s_.last_eval).substr(0, 6)).c_str() : "", lr, human_count(tps).c_str(),
        peak.flops ? (std::to_string(util * 100).substr(0, 4) + "%").c_str() : "n/a",
        human_bytes(peak_rss_bytes()).c_str(), elapsed.c_str(), human_duration(eta).c_str());
    progress_.line(buf);
    rec_.metrics(ctx.pending);
    s_.interval_seconds = 0;
    s_.interval_tokens = s_.interval_steps = 0;
    s_.interval_loss = 0;
}

void MetricsLogger::bar(double loss) {
    const auto& ctx = *run_.ctx;
    progress_.bar(s_.step, loss, max_steps_ > 0 ? ctx.wall_seconds() / s_.step * (max_steps_ - s_.step) : NAN);
}

// ---- faults ----

FaultInjector::FaultInjector(const Job& job, int rank, bool simulated, RankClock& clock, LoopState& state)
    : faults_(job.faults), rank_(rank), simulated_(simulated), resumed_(job.resumed), clock_(clock), state_(state) {}

void FaultInjector::resume_at(int64_t step) {
    for (const auto& f : faults_)
        if (f.kind == "slow" && f.rank == rank_ && f.step < step) clock_.set_slowdown(f.factor), factor_ = f.factor;
}

std::optional<std::string> FaultInjector::before_step(int64_t step) {
    for (const auto& f : faults_) {
        if (f.rank != rank_ || f.step != step || f.at_time) continue;  // at a time: the simulator's
        if (f.kind == "slow") {
            clock_.set_slowdown(f.factor);
            factor_ = f.factor;
            std::cerr << "fault: rank " << rank_ << " slowed " << f.factor << "x from step " << step << " (" << f.origin
                      << ")\n";
        }
        // A resumed run continues past its kills.
        if (f.kind == "kill" && !resumed_)
            return "rank " + std::to_string(rank_) + " killed at step " + std::to_string(step) + " by [[faults]] (" +
                   f.text + ")";
    }
    return std::nullopt;
}

void FaultInjector::after_step(double step_seconds) {
    // A slowed real rank sleeps in proportion; a simulated one's clock did it.
    if (factor_ <= 1 || simulated_) return;
    const double sleep = (factor_ - 1) * step_seconds;
    std::this_thread::sleep_for(std::chrono::duration<double>(sleep));
    state_.slow_seconds += sleep;
}

bool FaultInjector::any_slow() const {
    return !simulated_ && std::any_of(faults_.begin(), faults_.end(), [](const Fault& f) { return f.kind == "slow"; });
}

std::string FaultInjector::describe() const {
    std::string all;
    for (const auto& f : faults_) all += (all.empty() ? "" : "; ") + f.text;
    return all;
}

// ---- checkpoints ----

void harness_all_reduce(RankRun& run, LoopState& state, torch::Tensor& t, ReduceOp op) {
    const auto before = run.ctx->transport().stats();
    run.control().collectives().all_reduce(t, op)->wait();
    state.comm_before -= run.ctx->transport().stats() - before;
}

Checkpointer::Checkpointer(const Job& job, const RankEnv& env, RankRun& run, LoopState& state, Recorder& rec,
                           Progress& progress)
    : job_(job), env_(env), run_(run), s_(state), rec_(rec), progress_(progress), last_wall_(run.ctx->wall_seconds()) {}

void Checkpointer::announce() {
    if (!enabled()) return;
    rec_.summary("exact_resume", run_.strategy->exact_resume() ? 1 : 0);
    if (!run_.strategy->exact_resume())
        progress_.line("note: strategy '" + plugin_name(*job_.cfg, "strategy") +
                       "' does not declare exact resume: a run resumed from its checkpoints continues from the saved "
                       "weights and optimizer state, but may not match an uninterrupted run");
}

bool Checkpointer::step_due(int64_t step) const {
    const int64_t every = job_.cfg->host.checkpoint.every_steps;
    return enabled() && every > 0 && step % every == 0;
}

bool Checkpointer::minutes_due(bool log_point) const {
    const double minutes = job_.cfg->host.checkpoint.every_minutes;
    return enabled() && minutes > 0 && log_point && env_.rank == 0 &&
           run_.ctx->wall_seconds() - last_wall_ >= minutes * 60;
}

void Checkpointer::write() {
    auto& ctx = *run_.ctx;
    rec_.metrics(ctx.pending);  // the rows up to this step are recorded before a checkpoint claims them
    RankCheckpoint c;
    c.config_hash = job_.cfg->hash;
    c.run_id = job_.run_id;
    c.step = s_.step;
    c.rank = env_.rank;
    c.world = env_.world;
    bool ok = true;
    std::string why;
    try {
        // The strategy first: its state() may communicate (gathering shards), and the clock and
        // traffic saved below must include that, as an uninterrupted run does.
        for (auto& [name, t] : run_.strategy->state()) c.tensors.emplace_back("strategy." + name, t);
        c.tensors.emplace_back("rng.cpu", cpu_rng_state());
        if (job_.device.is_cuda()) c.tensors.emplace_back("rng.cuda", gpu::rng_state(job_.device));
        const auto fields = s_.fields(ctx.tokens);
        for (const auto& [name, p] : fields.reals) c.numbers[name] = *p;
        for (const auto& [name, p] : fields.ints) c.numbers[name] = static_cast<double>(*p);
        c.numbers["slow_seconds"] = s_.slow_seconds;
        // The traffic is the run's so far: earlier attempts' and this one's.
        const auto comm = s_.training_traffic(ctx.transport().stats());
        c.numbers["comm.calls"] = static_cast<double>(comm.calls);
        c.numbers["comm.bytes_sent"] = static_cast<double>(comm.bytes_sent);
        c.numbers["comm.seconds_total"] = comm.seconds_total;
        c.numbers["comm.seconds_exposed"] = comm.seconds_exposed;
        c.numbers["data_position"] = static_cast<double>(run_.train->position());
        c.texts["clock"] = env_.clock->save_state();
        write_rank_checkpoint(job_.checkpoints->rank_file(s_.step, env_.rank), c);
    } catch (const std::exception& e) {
        ok = false;
        why = message_of(e);
    }
    tally(ok, why);
    last_wall_ = ctx.wall_seconds();
}

// Every rank wrote its file: rank 0 marks the step complete. A checkpoint that cannot be written
// does not end the run: the previous one stays.
void Checkpointer::tally(bool ok, std::string why) {
    const int rank = env_.rank, world = env_.world;
    if (world > 1) {
        // Counted, not a minimum: on the simulated cluster a lost rank ([[faults]] kill) is simply
        // absent from the harness's collectives, and it wrote nothing.
        auto written = torch::tensor({ok ? 1.0 : 0.0}, torch::kFloat64);
        harness_all_reduce(run_, s_, written, ReduceOp::Sum);
        const bool all = written.item<double>() == static_cast<double>(world);
        if (ok && !all && rank == 0) why = "another rank could not write its file (or is lost)";
        ok = all;
    }
    if (ok && rank == 0) {
        try {
            job_.checkpoints->mark_complete(s_.step, world, static_cast<int>(job_.cfg->host.checkpoint.keep));
            rec_.summary("checkpoint_step", static_cast<double>(s_.step));
        } catch (const std::exception& e) {
            ok = false;
            why = message_of(e);
        }
    }
    if (!ok && (rank == 0 || !why.empty()))
        std::cerr << "warning: rank " << rank << ": no checkpoint at step " << s_.step << ": " << why
                  << " (the previous checkpoint stays the one to resume from)\n";
    else if (ok)
        progress_.line("checkpoint at step " + std::to_string(s_.step) + " in " + job_.checkpoints->dir().string());
}

void Checkpointer::restore() {
    const int rank = env_.rank, world = env_.world;
    auto& ctx = *run_.ctx;
    // Every rank resumes from rank 0's choice: a rank started on its own (torchrun, srun) looked
    // at its own view of the folder, which may lag or differ (the local launcher passes its
    // choice to its workers already). Taken before the clock is restored: no trace of it stays.
    std::optional<int64_t> step = job_.resume_step;
    if (job_.resumed && world > 1 && !ctx.simulated()) {
        auto chosen = torch::tensor({rank == 0 && step ? static_cast<double>(*step) : -1.0}, torch::kFloat64);
        harness_all_reduce(run_, s_, chosen, ReduceOp::Max);
        step.reset();
        if (chosen.item<double>() >= 0) step = static_cast<int64_t>(chosen.item<double>());
    }
    if (step) {
        const auto file = job_.checkpoints->rank_file(*step, rank);
        if (!fs::exists(file))
            throw Error("rank " + std::to_string(rank) + " has no checkpoint file for step " + std::to_string(*step) +
                            " (" + file.string() + ")",
                        "every rank reads its own file: the checkpoint folder must be the same on every node (a shared "
                        "file system), as must the database for --resume");
        const auto c = read_rank_checkpoint(file);
        const auto& hash = job_.cfg->hash;
        if (c.config_hash != hash || c.world != world || c.rank != rank || c.step != *step)
            throw Error("checkpoint " + file.string() + " belongs to another run (config " + c.config_hash + ", rank " +
                            std::to_string(c.rank) + " of " + std::to_string(c.world) + "); this run has config " +
                            hash + ", rank " + std::to_string(rank) + " of " + std::to_string(world),
                        "resume a run with the experiment file and settings it started with");
        StateDict strategy_state;
        for (const auto& [name, t] : c.tensors) {
            if (name.rfind("strategy.", 0) == 0)
                strategy_state.emplace_back(name.substr(9), t);
            else if (name == "rng.cpu")
                set_cpu_rng_state(t);
            else if (name == "rng.cuda" && job_.device.is_cuda())
                gpu::set_rng_state(job_.device, t);
        }
        auto number = [&](const char* name) {
            auto it = c.numbers.find(name);
            if (it == c.numbers.end()) throw Error("checkpoint " + file.string() + " has no '" + name + "'", "");
            return it->second;
        };
        run_.strategy->load_state(strategy_state);
        const auto fields = s_.fields(ctx.tokens);
        for (const auto& [name, p] : fields.reals) *p = number(name);
        for (const auto& [name, p] : fields.ints) *p = static_cast<int64_t>(number(name));
        if (c.numbers.count("slow_seconds")) s_.slow_seconds = c.numbers.at("slow_seconds");  // (newer than the format)
        run_.train->seek(static_cast<int64_t>(number("data_position")));
        env_.clock->load_state(c.texts.count("clock") ? c.texts.at("clock") : "");
        // (The communication the strategy's construction just did is this attempt's setup, left
        // out of the run's traffic by LoopState::comm_setup.)
        progress_.line("resumed from the checkpoint at step " + std::to_string(s_.step) + " (" +
                       file.parent_path().string() + ")");
    }
    last_wall_ = ctx.wall_seconds();
}

void Checkpointer::remove_all_if_finished() {
    // Every rank is past its last checkpoint (the final all-gather came first).
    if (s_.status != "finished" || !enabled() || env_.rank != 0) return;
    if (job_.cfg->host.checkpoint.keep_final) {
        job_.checkpoints->keep_only(s_.step);
        return;
    }
    std::error_code ec;
    fs::remove_all(job_.checkpoints->dir(), ec);
}

// ---- the final record ----

void finish_record(const Job& job, const RankEnv& env, RankRun& run, LoopState& s, Recorder& rec,
                   const TensorMemoryMeter& meter, bool slowed) {
    auto& ctx = *run.ctx;
    const bool sim = ctx.simulated();
    const auto& peak = run.peak;
    const double tps = s.tokens_per_second(ctx.tokens);
    rec.summary("steps", static_cast<double>(s.step));
    rec.summary("tokens", static_cast<double>(ctx.tokens));
    rec.summary("job_tokens", static_cast<double>(s.job_tokens));
    rec.summary("final_loss", s.last_loss);
    rec.summary("final_eval_loss", s.last_eval);
    rec.summary("tokens_per_s", tps);
    const double step_time = s.step > 0 ? s.step_seconds_total / s.step : NAN;
    rec.summary("step_time", step_time);
    rec.summary("mfu", peak.flops ? mfu(ctx.flops.flops, tps * compute_share(run), *peak.flops) : NAN);
    rec.summary("peak_memory", peak_rss_bytes());
    // On a GPU, the caching allocator's own peak (the meter counts CPU tensors).
    const double tensor_peak = job.device.is_cuda() ? static_cast<double>(gpu::peak_allocated_bytes(job.device))
                                                    : static_cast<double>(meter.peak());
    rec.summary("peak_tensor_bytes", tensor_peak);
    const auto comm = s.training_traffic(ctx.transport().stats());
    rec.summary("bytes_sent", static_cast<double>(comm.bytes_sent));
    rec.summary("setup_bytes_sent", static_cast<double>(s.comm_setup.bytes_sent));
    rec.summary("comm_time", comm.seconds_total);
    rec.summary("comm_exposed_time", comm.seconds_exposed);
    rec.summary("wall_time", ctx.wall_seconds());
    if (sim) rec.summary("sim_time", ctx.now());
    // rank_tokens: what the rank itself consumed (ranks differ where the strategy lets them).
    rec.summary("rank_tokens", static_cast<double>(s.own_tokens));
    if (slowed) rec.summary("fault_slow_seconds", s.slow_seconds);
    // Per-rank figures, gathered to rank 0 (one small all-gather at the end). On the simulated
    // cluster every rank shares one process: its memory is reported once.
    auto mine = torch::tensor(
        {tps, static_cast<double>(comm.bytes_sent), comm.seconds_total, comm.seconds_exposed, peak_rss_bytes(),
         ctx.now(), static_cast<double>(s.own_tokens), tensor_peak, step_time, s.slow_seconds},
        torch::kFloat64);
    const char* per_rank[] = {"tokens_per_s",
                              "bytes_sent",
                              "comm_time",
                              "comm_exposed_time",
                              sim ? nullptr : "peak_memory",
                              sim ? "sim_time" : nullptr,
                              "rank_tokens",
                              "peak_tensor_bytes",
                              "step_time",
                              slowed ? "fault_slow_seconds" : nullptr};
    auto all = env.rank == 0 ? torch::empty({env.world * mine.numel()}, torch::kFloat64) : torch::Tensor();
    rec.metrics(ctx.pending);  // before the gather: rank 0 takes every rank's rows after it
    run.control().collectives().gather(all, mine, 0);
    rec.peers_metrics();
    // A stop posted at the last log point, too late for the others to act on (a loss that turned
    // non-finite in the last interval): the run's record says so, as it would have.
    if (s.status == "finished" && run.control().late_stop() == "diverged") s.status = "diverged";
    const int64_t fields = mine.numel();
    for (int r = 1; all.defined() && r < env.world; ++r)
        for (int64_t k = 0; k < fields; ++k)
            if (per_rank[k]) rec.summary(per_rank[k], all[r * fields + k].item<double>(), r);
    const auto state_digest = job.device.is_meta() ? StateDigest{"meta", NAN, NAN} : digest(run.strategy->state());
    rec.summary_text("state_hash", state_digest.hash);
    rec.summary("param_sum", state_digest.param_sum);
    rec.summary("param_square_sum", state_digest.param_square_sum);
    rec.metrics(ctx.pending);
    rec.finish(s.status, s.status == "diverged"
                             ? "loss became " + std::to_string(s.last_loss) + " at step " + std::to_string(s.step)
                             : "");
}

}  // namespace plexus::host

namespace plexus::host {

std::optional<Error> out_of_memory(const std::exception& e, const ResolvedConfig& cfg, const torch::Device& device) {
    const std::string what = message_of(e);
    const bool alloc = dynamic_cast<const std::bad_alloc*>(&e) || what.find("bad_alloc") != std::string::npos ||
                       what.find("can't allocate memory") != std::string::npos ||
                       what.find("out of memory") != std::string::npos;
    if (!alloc) return std::nullopt;
    // LibTorch's CPU allocator: "you tried to allocate 400000000 bytes"; CUDA's: "Tried to allocate 2.00 GiB".
    std::string asked;
    if (const auto at = what.find("you tried to allocate "); at != std::string::npos)
        asked = human_bytes(std::atof(what.c_str() + at + 22));
    else if (const auto at2 = what.find("Tried to allocate "); at2 != std::string::npos)
        asked = what.substr(at2 + 18, what.find_first_of(";(.", at2 + 18 + 2) - at2 - 18);
    const double machine = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGESIZE));
    std::vector<std::string> keys;
    for (const char* k : {"train.batch_size", "train.seq_len"})
        keys.push_back(std::string(k) + " = " + cfg.values.at(k).to_text());
    for (const auto& [k, v] : cfg.values)
        if (k.rfind("model.", 0) == 0 && v.type() == ValueType::Int && v.as_int() != 0)  // 0: "the default"
            keys.push_back(k + " = " + v.to_text());
    return Error("out of memory: " +
                     (asked.empty() ? std::string("an allocation failed") : "an allocation of " + asked + " failed") +
                     (device.is_cpu() ? " (this machine has " + human_bytes(machine) + ")" : " on " + device.str()) +
                     "; the sizes come from " + join(keys, ", "),
                 "lower them, or shard the model over ranks (strategies zero, tensor_parallel, pipeline); the "
                 "allocator said: " +
                     shown(what, 200));
}

}  // namespace plexus::host
