// One rank's training loop. It reads top to bottom: assemble the rank, announce it, resume, then
// each step (faults, the strategy's step, metrics, evaluation, the agreement with the other ranks
// at log points, checkpoints), then the final record. The pieces are in trainer_parts.hpp.
#include "runtime/trainer.hpp"

#include <cmath>
#include <iostream>

#include <plexus/kit/compat.hpp>
#include <plexus/error.hpp>

#include "base/text.hpp"
#include "runtime/harness.hpp"
#include "runtime/trainer_parts.hpp"
#include "sim/cluster.hpp"

namespace plexus::host {

std::atomic<int>& interrupt_requests() {
    static std::atomic<int> count{0};
    return count;
}

namespace {

class Trainer {
public:
    Trainer(const Job& job, const RankEnv& env)
        : job_(job), env_(env), train_(job.cfg->host.train), rank_(env.rank), world_(env.world),
          progress_(rank_ == 0 ? job.cfg->host.results.progress : "none", train_.steps),
          rec_(job.store, rank_ == 0, job.run_id), meter_(std::make_shared<TensorMemoryMeter>()),
          base_lr_(base_lr(job.cfg->values)) {}

    RankResult run() {
        // This rank's tensors: parameters, optimizer state, activations, messages (peak_tensor_bytes).
        MeterScope meter_scope(meter_);
        try {
            assemble(job_, env_, rec_, run_);
            announce();
            // Mixed precision for this rank's thread (background tasks inherit it: HostContext).
            compat::AutocastGuard autocast(job_.device.type(), run_.ctx->autocast_dtype());
            return loop();
        } catch (const std::exception& e) {
            if (auto oom = out_of_memory(e, *job_.cfg, job_.device)) return failed(*oom);
            return failed(e);
        }
    }

private:
    RankResult loop() {
        auto& ctx = *run_.ctx;
        const int64_t max_steps = train_.steps, max_tokens = train_.tokens;
        const int64_t log_every = train_.log_every, eval_every = train_.eval_every;
        MetricsLogger metrics(run_, s_, rec_, progress_, rank_, max_steps, max_tokens);
        FaultInjector faults(job_, rank_, ctx.simulated(), *env_.clock, s_);
        Checkpointer checkpoints(job_, env_, run_, s_, rec_, progress_);
        if (!job_.faults.empty()) rec_.summary_text("faults", faults.describe());
        s_.horizon = max_tokens > 0 ? static_cast<double>(max_tokens) : 0.0;
        checkpoints.announce();
        checkpoints.restore();
        faults.resume_at(s_.step);
        s_.comm_setup = ctx.transport().stats();  // bytes_sent counts the training's traffic only
        while (!(max_steps > 0 && s_.step >= max_steps) && !(max_tokens > 0 && s_.job_tokens >= max_tokens)) {
            // One rank stops alone; several agree at log points (below), so that none is left
            // waiting in a collective for a peer that has gone.
            if (world_ == 1 && interrupt_requests() > 0) {
                s_.status = "interrupted";
                break;
            }
            if (auto killed = faults.before_step(s_.step)) return die(*killed);
            ctx.step = s_.step;
            StepInput in;
            in.step = s_.step;
            in.tokens_seen = ctx.tokens;
            in.lr_scale = lr_scale();
            in.max_grad_norm = train_.grad_clip;
            in.train = run_.train.get();
            // Simulated seconds on the simulated cluster, wall seconds otherwise.
            const double t0 = ctx.now();
            const StepOutput out = run_.strategy->step(in);
            faults.after_step(ctx.now() - t0);
            metrics.step_done(out, ctx.now() - t0, count_tokens(out), base_lr_ * in.lr_scale);
            ++s_.step;
            const bool diverged = !std::isfinite(out.loss) && !job_.device.is_meta();
            if (diverged) {
                progress_.line("step " + std::to_string(s_.step) + ": loss is " + std::to_string(out.loss) +
                               ": the run diverged");
                diverged_here_ = true;
                if (world_ == 1) {
                    s_.status = "diverged";
                    break;
                }  // several ranks agree first, below
            }
            const bool log_now = s_.step % log_every == 0 || s_.step == max_steps;
            const bool eval_now = (eval_every > 0 && s_.step % eval_every == 0) || s_.step == max_steps;
            if (eval_now) s_.last_eval = evaluate(metrics);
            if (log_now || eval_now) metrics.log_point(eval_now, base_lr_ * in.lr_scale);
            metrics.bar(out.loss);
            bool checkpoint_now = checkpoints.step_due(s_.step);
            if (log_now) {
                const bool reached = train_.stop_at_loss > 0 && s_.last_eval_step > 0 &&
                                     s_.last_eval <= train_.stop_at_loss;  // NaN: not reached
                const Agreement agreed = run_.control().at_log_point(
                    s_.step, {interrupt_requests() > 0, diverged_here_, checkpoints.minutes_due(true), reached});
                if (!agreed.stop.empty()) {
                    s_.status = agreed.stop;
                    if (agreed.stop == "finished")
                        progress_.line("step " + std::to_string(s_.step) + ": train.stop_at_loss (" +
                                       short_number(train_.stop_at_loss) + ") reached: the run ends here");
                    break;
                }
                checkpoint_now = checkpoint_now || agreed.checkpoint;
                rec_.peers_metrics();
            }
            if (checkpoint_now && !(max_steps > 0 && s_.step >= max_steps)) checkpoints.write();
        }
        // An interrupted run can be resumed from where it stopped; a finished one keeps its final
        // weights when asked to ([checkpoint] keep_final: plexus export, train.init_from).
        const bool keep_final = s_.status == "finished" && job_.cfg->host.checkpoint.keep_final;
        if ((s_.status == "interrupted" || keep_final) && checkpoints.enabled() && s_.step > 0) checkpoints.write();
        progress_.clear();
        if (s_.status == "finished" && s_.step > 0 && s_.last_eval_step != s_.step) s_.last_eval = evaluate(metrics);
        finish_record(job_, env_, run_, s_, rec_, *meter_, faults.any_slow());
        checkpoints.remove_all_if_finished();
        return ending();
    }

    // The optimizer's own rate, where it has one, for the logged lr (the schedule's factor times it).
    static double base_lr(const std::map<std::string, Value>& v) {
        const auto lr = v.find("optimizer.lr");
        return lr != v.end() && lr->second.type() == ValueType::Float ? lr->second.as_double() : 1.0;
    }

    // The learning-rate factor of the schedule at the job's tokens so far: warm-up, decay and the
    // budget count what the whole job consumed, so that one global batch split over more ranks
    // trains under the same schedule.
    double lr_scale() const {
        return lr_factor(train_.lr_schedule, static_cast<double>(s_.job_tokens),
                         static_cast<double>(train_.warmup_tokens), s_.horizon, train_.min_lr_ratio);
    }

    // The job's tokens: the strategy's count (StepOutput::job_tokens), or this rank's share times
    // the world size (a rank that shares its batch with others, a pipeline stage or a tensor-
    // parallel rank, reports its share, so the shares add up to the batch). Tokens "per rank"
    // (the curves' axis, what strategies see) are the job's over the data shards, the same on
    // every rank even when ranks consume different amounts. Returns the step's.
    int64_t count_tokens(const StepOutput& out) {
        auto& ctx = *run_.ctx;
        s_.own_tokens += out.tokens;
        const int64_t job_step = out.job_tokens >= 0 ? out.job_tokens : out.tokens * world_;
        s_.job_tokens += job_step;
        if (s_.horizon == 0) s_.horizon = static_cast<double>(job_step) * static_cast<double>(train_.steps);
        const int64_t step_tokens = s_.job_tokens / run_.data_shards - ctx.tokens;
        ctx.tokens += step_tokens;
        return step_tokens;
    }

    double evaluate(MetricsLogger& metrics) {
        run_.val->seek(0);  // the same validation batches every time: curves are comparable
        const double loss = run_.strategy->evaluate(*run_.val, run_.eval_batches);
        s_.last_eval_step = run_.ctx->step + 1;
        metrics.record("eval_loss", loss);
        return loss;
    }

    // The rank's processes and the rows it still holds, before anything is recorded.
    void announce() {
        auto& ctx = *run_.ctx;
        const auto& info = *job_.info;
        const auto& peak = run_.peak;
        const auto& transport = *run_.connection.transport;
        rec_.summary("params", static_cast<double>(ctx.params));
        rec_.summary("flops_per_token", ctx.flops.flops);
        rec_.summary("eval_batches", static_cast<double>(run_.eval_batches));
        rec_.summary_text("eval_windows", run_.eval_windows);
        rec_.summary_text("flops_convention", ctx.flops.convention);
        rec_.summary_text("peak_source", peak.source);
        rec_.summary_text("transport", transport.backend());
        if (peak.flops) rec_.summary("peak_flops", *peak.flops);
        if (job_.sim_device) {
            rec_.summary_text("sim_device", job_.sim_device->name);
            rec_.summary("sim_efficiency", job_.sim_device->efficiency);
            rec_.summary_text("sim_network", job_.sim_network);
        }
        progress_.line("plexus run '" + info.name + "' -> run " + std::to_string(job_.run_id) + " in " + rec_.where() +
                       (world_ > 1 ? " (rank 0 of " + std::to_string(world_) + ", " + transport.backend() + ")" : ""));
        progress_.line("  " + run_.dataset->describe());
        if (const auto& d = job_.sim_device)
            progress_.line("  simulated: " + d->name + " at " + human_count(d->flops_per_second()) + "FLOP/s (" +
                           std::to_string(d->efficiency).substr(0, 4) + " of " + human_count(d->peak_flops) +
                           "FLOP/s) | " + job_.sim_network);
        progress_.line("  " + info.plugins + " | " + human_count(static_cast<double>(ctx.params)) + " params, " +
                       human_count(ctx.flops.flops) + "FLOP/token | " + info.device + " | peak " +
                       (peak.flops ? human_count(*peak.flops) + "FLOP/s (" + peak.source + ")"
                                   : std::string("unknown: MFU not reported")));
    }

    // A [[faults]] kill: as a crash would, no cleanup and nothing recorded (a simulated rank fails instead).
    RankResult die(const std::string& what) {
        rec_.metrics(run_.ctx->pending);
        std::cerr << "fault: " << what << std::endl;
        if (!run_.ctx->simulated()) std::cout.flush(), std::_Exit(kKilled);
        progress_.clear();
        return {kKilled, what};
    }

    RankResult ending() {
        const auto& ctx = *run_.ctx;
        const double tps = s_.tokens_per_second(ctx.tokens);
        const auto& peak = run_.peak;
        char buf[256];
        std::snprintf(buf, sizeof buf, "run %lld %s: %lld steps, %s tokens, final eval loss %.4f, %s tok/s, MFU %s",
                      static_cast<long long>(job_.run_id), s_.status.c_str(), static_cast<long long>(s_.step),
                      human_count(static_cast<double>(ctx.tokens)).c_str(), s_.last_eval, human_count(tps).c_str(),
                      peak.flops
                          ? (std::to_string(mfu(ctx.flops.flops, tps, *peak.flops) * 100).substr(0, 4) + "%").c_str()
                          : "n/a");
        progress_.line(buf);
        if (s_.status == "diverged") {
            if (rank_ == 0)
                std::cerr << "error: run " << job_.run_id << " diverged (loss " << s_.last_loss << " at step "
                          << s_.step << ")\n"
                          << "hint: lower optimizer.lr, add train.warmup_tokens, or set train.grad_clip\n";
            return {kDiverged, "diverged"};
        }
        if (s_.status == "interrupted") {
            if (rank_ == 0)
                std::cerr << "run " << job_.run_id << " interrupted at step " << s_.step
                          << "; its rows so far are kept\n";
            return {kInterrupted, "interrupted"};
        }
        return {kOk, ""};
    }

    // Records the run's end as failed (its last rows first); says how to go on from a checkpoint.
    RankResult failed(const std::exception& e) {
        progress_.clear();
        if (env_.print_errors) print_error(e);
        const int64_t run_id = job_.run_id;
        try {
            if (run_.ctx) rec_.metrics(run_.ctx->pending);
        } catch (const std::exception& again) {
            std::cerr << "error: could not record the last metrics of run " << run_id << ": " << message_of(again)
                      << "\n";
        }
        bool recorded = true;
        try {
            rec_.finish("failed", error_text(e));
        } catch (const std::exception& again) {
            std::cerr << "error: could not record the end of run " << run_id << ": " << message_of(again) << "\n";
            recorded = false;
        }
        if (job_.store && rank_ == 0) {
            if (recorded) std::cerr << "run " << run_id << " marked failed in " << job_.store->path() << "\n";
            // Whatever stopped it (a full disk, a bug since fixed), the run can go on from its last
            // checkpoint; when the database could not even take its end, that is how it gets recorded.
            if (job_.checkpoints && job_.checkpoints->latest())
                std::cerr << "hint: `plexus run --resume " << run_id << " --db " << job_.store->path()
                          << "` continues run " << run_id << " from its checkpoint at step "
                          << *job_.checkpoints->latest() << " and records the rest\n";
        }
        return {kFailed, error_text(e)};
    }

    const Job& job_;
    const RankEnv& env_;
    const TrainSettings& train_;
    const int rank_, world_;
    Progress progress_;
    Recorder rec_;
    std::shared_ptr<TensorMemoryMeter> meter_;
    RankRun run_;
    const double base_lr_;
    LoopState s_;
    bool diverged_here_ = false;  // this rank saw a non-finite loss
};

}  // namespace

RankResult train_rank(const Job& job, const RankEnv& env) { return Trainer(job, env).run(); }

RankEnv simulated_rank(sim::Cluster& cluster, int rank) {
    RankEnv env;
    env.rank = rank;
    env.world = cluster.size();
    env.connect = [&cluster, rank] {
        return Connection{cluster.transport(rank), make_collective_control(cluster.control(rank))};
    };
    env.clock = cluster.clock(rank);
    env.print_errors = rank == 0;
    env.ranks_per_node = cluster.network().two_level() ? cluster.network().spec().gpus_per_node : 1;
    return env;
}

}  // namespace plexus::host
