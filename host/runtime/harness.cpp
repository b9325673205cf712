#include "runtime/harness.hpp"

#include <malloc.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <optional>
#include <sstream>
#include <thread>

#include <plexus/compat.hpp>
#include <plexus/plexus.hpp>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/control.hpp"
#include "config/faults.hpp"
#include "device/cuda.hpp"
#include "runtime/loader.hpp"
#include "device/memory_meter.hpp"
#include "device/peak.hpp"
#include "store/results.hpp"
#include "base/text.hpp"
#include "transport/launch.hpp"
#include "sim/cluster.hpp"
#include "transport/c10d.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

double lr_factor(const std::string& schedule, double tokens, double warmup, double horizon, double min_ratio) {
    if (warmup > 0 && tokens < warmup) return (tokens + 1) / warmup;
    if (schedule == "constant" || horizon <= warmup) return 1.0;
    const double p = std::clamp((tokens - warmup) / (horizon - warmup), 0.0, 1.0);
    const double shape = schedule == "linear" ? 1.0 - p : 0.5 * (1.0 + std::cos(M_PI * p));
    return min_ratio + (1.0 - min_ratio) * shape;
}

void keep_freed_memory() {
#ifdef __GLIBC__
    // Tensors of a few MB and more come from mmap and go back at free, so every step faulted its
    // activations and gradients in anew, a page at a time (783k page faults in the bench's large
    // GPT step run, 226k with this; 1150-1210 tok/s became 1250-1260). Blocks up to 32 MB (glibc's
    // largest mmap threshold) now come from the heap, and the heap is never trimmed: the process
    // keeps its peak, as PyTorch's CUDA caching allocator does.
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
    mallopt(M_TOP_PAD, 64 << 20);
#endif
}

std::string git_revision(const std::string& dir) {
    std::string quoted = "'";
    for (char c : dir) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    std::string cmd = "git -C " + quoted + "' rev-parse --short HEAD 2>/dev/null";
    std::string out;
    if (FILE* p = popen(cmd.c_str(), "r")) {
        char buf[128];
        while (fgets(buf, sizeof buf, p)) out += buf;
        pclose(p);
    }
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
}

std::string hostname() {
    char buf[256] = {0};
    gethostname(buf, sizeof buf - 1);
    return buf;
}

namespace {
// Field 22 of /proc/PID/stat: when the process started (clock ticks since boot); empty if there
// is no such process, or only its corpse (a zombie nobody has reaped yet).
std::string start_time_of(const std::string& pid) {
    std::ifstream in("/proc/" + pid + "/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto close = stat.rfind(')');  // the command name may hold spaces and parentheses
    if (close == std::string::npos) return "";
    std::istringstream fields(stat.substr(close + 1));
    std::string field;
    for (int i = 3; i <= 22 && fields >> field; ++i) {
        if (i == 3 && (field == "Z" || field == "X")) return "";
        if (i == 22) return field;
    }
    return "";
}
}  // namespace

std::string process_tag() {
    const auto pid = std::to_string(getpid());
    return hostname() + ":" + pid + ":" + start_time_of(pid);
}

std::optional<std::string> live_owner(ResultsStore& store, const RunInfo& run) {
    if (run.status != "running") return std::nullopt;
    const auto tag = store.summary_text(run.id, "process");
    const auto first = tag.find(':'), last = tag.rfind(':');
    if (tag.empty() || first == last) return std::nullopt;
    const std::string host = tag.substr(0, first), pid = tag.substr(first + 1, last - first - 1),
                      start = tag.substr(last + 1);
    if (host == hostname()) {
        if (start.empty() || start_time_of(pid) != start) return std::nullopt;
        return "process " + pid + " on this host";
    }
    const double age = ResultsStore::now() - run.heartbeat;
    if (age > kHeartbeatSeconds) return std::nullopt;
    return "process " + pid + " on " + host + " (its last heartbeat " + std::to_string(static_cast<int>(age)) + " s ago)";
}

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_interrupts{0};
void on_signal(int) {
    if (++g_interrupts > 1) std::_Exit(kInterrupted);  // a second Ctrl-C: leave at once
}

torch::Device choose_device(const std::string& name) {
    if (name == "cpu") return torch::kCPU;
    if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    if (name.rfind("cuda", 0) == 0) {
        if (!torch::cuda::is_available())
            throw Error("train.device = \"" + name + "\" but this LibTorch sees no CUDA device",
                        "use device = \"cpu\", or build plexus against a CUDA LibTorch (scripts/device-run.sh)");
        return torch::Device(name);
    }
    throw Error("train.device = \"" + name + "\" is not a device", "use cpu, cuda, cuda:N or auto");
}

double peak_rss_bytes() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) * 1024.0;
}

}  // namespace

bool is_progress_mode(const std::string& mode) {
    return mode == "auto" || mode == "bar" || mode == "lines" || mode == "none";
}

namespace {

class Progress {
public:
    Progress(const std::string& mode, int64_t total_steps) : total_(total_steps) {
        const bool tty = isatty(STDERR_FILENO);
        bar_ = mode == "bar" || (mode == "auto" && tty);
        lines_ = mode != "none";
    }
    void line(const std::string& text) {
        if (!lines_) return;
        clear();
        std::cout << text << std::endl;
    }
    void bar(int64_t step, double loss, double eta) {
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
    void clear() {
        if (shown_) std::cerr << "\r\033[K" << std::flush;
        shown_ = false;
    }

private:
    int64_t total_;
    bool bar_ = false, lines_ = true, shown_ = false;
};

// Writes one rank's rows. The run's record (summaries, its end) is the owner's (rank 0); every
// rank's metric rows reach the database: written here where this process has it open (rank 0,
// the simulated ranks), else handed to the control channel for rank 0 to write. The loop below
// needs no rank checks.
class Recorder {
public:
    Recorder(ResultsStore* store, bool owner, int64_t run) : store_(store), owner_(owner && store), run_(run) {}
    void use_channel(ControlChannel* channel) { channel_ = channel; }
    void summary(const std::string& key, double value, int rank = 0) {
        if (owner_) store_->set_summary(run_, rank, key, value);
    }
    void summary_text(const std::string& key, const std::string& text) {
        if (owner_) store_->set_summary_text(run_, 0, key, text);
    }
    void metrics(std::vector<MetricRow>& rows) {
        if (rows.empty()) return;
        if (store_) store_->add_metrics(run_, rows);
        else if (channel_) channel_->send_rows(rows);
        rows.clear();
    }
    // The owner writes the rows other ranks handed to the channel.
    void peers_metrics() {
        if (!owner_ || !channel_) return;
        auto rows = channel_->receive_rows();
        metrics(rows);
    }
    void finish(const std::string& status, const std::string& error) {
        if (owner_) store_->finish_run(run_, status, error);
    }
    std::string where() const { return store_ ? store_->path() : "rank 0's database"; }

private:
    ResultsStore* store_;
    bool owner_;
    int64_t run_;
    ControlChannel* channel_ = nullptr;
};

// The launcher of a local multi-process run: starts the workers (this same command line with a
// rank in the environment), and if one fails, stops the rest and records why on the run.
int launch_workers(ResultsStore& store, int64_t run_id, const RunOptions& options, int ranks,
                   const std::vector<std::string>& extra_env, const std::vector<Fault>& faults) {
    const int port = free_port();
    std::vector<std::string> env = {"PLEXUS_WORKER=1", "PLEXUS_RUN_ID=" + std::to_string(run_id)};
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::cout << "plexus: launching " << ranks << " local workers for run " << run_id << " (rendezvous 127.0.0.1:"
              << port << ")" << std::endl;
    // Ctrl-C reaches every worker from the terminal; each records itself as interrupted. The
    // launcher must outlive them to report (workers die with it: PR_SET_PDEATHSIG).
    std::signal(SIGINT, SIG_IGN);
    auto failure = run_local_workers(options.argv, ranks, port,
                                           env,
                                           {kInterrupted, kDiverged});
    if (failure.rank < 0) return kOk;
    // Stopped on request (SIGTERM to the launcher): a worker still starting up dies of the signal
    // (143) and its peers lose their connection, but the run was interrupted, not failed.
    const int worker_code = failure.exit_code;
    if (failure.stop_requested && failure.exit_code != kDiverged) failure.exit_code = kInterrupted;
    const bool orderly = failure.exit_code == kInterrupted || failure.exit_code == kDiverged;
    if (orderly) {
        // The ranks agreed to stop and rank 0 recorded why; keep its record.
        const auto run = store.get_run(run_id);
        if (run && (run->status == "interrupted" || run->status == "diverged")) return failure.exit_code;
    }
    const auto loss = store.metric_series(run_id, "loss");
    const std::string last = loss.empty() ? "before the first step" : "after step " + std::to_string(loss.back().first);
    std::string what = failure.stop_requested
                           ? "stopped by SIGTERM " + last + " (rank " + std::to_string(failure.rank) + " exited with code " +
                                 std::to_string(worker_code) + ")"
                           : "rank " + std::to_string(failure.rank) + " exited with code " + std::to_string(worker_code) +
                                 " " + last + "; the other workers were stopped";
    for (const auto& f : faults)
        if (f.kind == "kill" && f.rank == failure.rank && failure.exit_code == kKilled) what += " (killed by [[faults]]: " + f.text + ")";
    // Rank 0 may have recorded its own view first (a peer's connection reset): keep it, after ours.
    const auto run = store.get_run(run_id);
    std::string error = what;
    if (run && run->status != "running" && !run->error.empty()) error += "; rank 0 reported: " + run->error;
    const bool interrupted = failure.exit_code == kInterrupted;
    store.finish_run(run_id, failure.exit_code == kDiverged ? "diverged" : interrupted ? "interrupted" : "failed", error);
    std::cerr << (interrupted ? "run " : "error: run ") << run_id << ": " << what << "\n";
    return failure.exit_code == kDiverged ? kDiverged : interrupted ? kInterrupted : kFailed;
}

void print_error(const std::exception& e) {
    std::cerr << "error: " << message_of(e) << "\n";
    if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty()) std::cerr << "hint: " << pe->hint() << "\n";
}

std::string error_text(const std::exception& e) {
    std::string s = message_of(e);
    if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty()) s += " (hint: " + pe->hint() + ")";
    return s;
}

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
    uint64_t h = 1469598103934665603ULL;
    StateDigest d;
    for (const auto& [name, t] : state) {
        if (name.find(".measured.") != std::string::npos) continue;  // timings (Strategy::state)
        auto c = t.detach().contiguous().cpu();
        const auto* p = static_cast<const unsigned char*>(c.data_ptr());
        const size_t n = static_cast<size_t>(c.numel()) * c.element_size();
        for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ULL;
        if (c.is_floating_point() && name.rfind("model.", 0) == 0) {
            const auto wide = c.to(torch::kFloat64);
            d.param_sum += wide.sum().item<double>();
            d.param_square_sum += wide.square().sum().item<double>();
        }
    }
    d.hash = hex64(h);
    return d;
}

// LibTorch's default CPU generator, in a checkpoint (dropout and anything else drawing from it).
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

// What every rank of one run shares.
struct Job {
    const ResolvedConfig* cfg = nullptr;
    const RunInfo* info = nullptr;
    int64_t run_id = 0;
    torch::Device device = torch::kCPU;
    int threads = 1;
    ResultsStore* store = nullptr;  // where rank 0 records; null in processes that do not
    std::optional<sim::DeviceProfile> sim_device;
    std::string sim_network;
    // Simulated ranks share one dataset (read-only; only one rank thread runs at a time), so
    // that 64 ranks do not hold 64 copies of the corpus.
    std::shared_ptr<std::shared_ptr<Dataset>> shared_dataset;
    // Where this run's checkpoints go; null when [checkpoint] writes none.
    std::optional<RunCheckpoints> checkpoints;
    std::optional<int64_t> resume_step;  // the checkpoint every rank starts from (--resume)
    bool resumed = false;                 // --resume: [[faults]] kills already happened
    std::vector<Fault> faults;
};

// One rank's ways to the others: the strategy's transport, the harness's control channel.
struct Connection {
    std::shared_ptr<Transport> transport;
    std::unique_ptr<ControlChannel> control;
};

// How one rank reaches the others.
struct RankEnv {
    int rank = 0, world = 1;
    std::function<Connection()> connect;  // called where a failure is recorded
    std::shared_ptr<RankClock> clock = make_wall_clock();
    int ranks_per_node = 1;
    bool print_errors = true;
};

struct RankResult {
    int code = kOk;
    std::string error;
};

// The training loop of one rank, the same for every launch mode and strategy.
RankResult train_rank(const Job& job, const RankEnv& env) {
    const auto& cfg = *job.cfg;
    const auto& v = cfg.values;
    const auto& info = *job.info;
    const int rank = env.rank, world = env.world, threads = job.threads;
    const int64_t run_id = job.run_id;
    const torch::Device device = job.device;
    Progress progress(rank == 0 ? v.at("results.progress").as_string() : "none", v.at("train.steps").as_int());
    Recorder rec(job.store, rank == 0, run_id);
    std::unique_ptr<HostContext> ctx;
    // This rank's tensors: parameters, optimizer state, activations, messages (peak_tensor_bytes).
    const auto meter = std::make_shared<TensorMemoryMeter>();
    MeterScope meter_scope(meter);
    // Records the run's end; false if the database could not take it.
    auto fail = [&](const std::string& status, const std::string& error) {
        try {
            if (ctx) rec.metrics(ctx->pending);
        } catch (const std::exception& e) {
            std::cerr << "error: could not record the last metrics of run " << run_id << ": " << message_of(e) << "\n";
        }
        try {
            rec.finish(status, error);
            return true;
        } catch (const std::exception& e) {
            std::cerr << "error: could not record the end of run " << run_id << ": " << message_of(e) << "\n";
            return false;
        }
    };

    try {
        const int64_t B = v.at("train.batch_size").as_int(), T = v.at("train.seq_len").as_int();
        // The dataset needs a context for its factory; its vocabulary is known only after.
        Connection connection = env.connect();
        std::shared_ptr<Transport> transport = connection.transport;
        ControlChannel& channel = *connection.control;
        rec.use_channel(&channel);
        HostContext bootstrap(cfg, device, 0, transport, env.clock);
        bootstrap.set_ranks_per_node(env.ranks_per_node);
        std::shared_ptr<Dataset> dataset = job.shared_dataset ? *job.shared_dataset : nullptr;
        if (!dataset) {
            dataset = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), bootstrap);
            if (!dataset) throw Error("dataset plugin '" + cfg.plugins.at("data")->name + "' returned no dataset");
            if (job.shared_dataset) *job.shared_dataset = dataset;
        }
        ctx = std::make_unique<HostContext>(cfg, device, dataset->vocab_size(), transport, env.clock);
        ctx->set_ranks_per_node(env.ranks_per_node);
        ctx->set_measurement_transport(channel.collectives_ptr());
        const bool sim = ctx->simulated();
        // The validation stream first: it checks that a sequence fits the data, before the
        // strategy builds a model whose causal mask alone is seq_len² floats.
        StreamSpec val_spec{Split::Validation, B, T, 0, 1, ctx->seed("data.val")};
        DeviceStream val(dataset->open(val_spec), device);
        auto strategy = cfg.plugins.at("strategy")->make_strategy(cfg.sections.at("strategy"), *ctx);
        if (!strategy) throw Error("strategy plugin '" + cfg.plugins.at("strategy")->name + "' returned no strategy");
        // Each rank trains on its shard of every global batch (the strategy says which: ranks
        // sharing a batch share a shard); every rank evaluates the same batches.
        const DataShard shard = strategy->data_shard(rank, world);
        if (shard.count < 1 || shard.index < 0 || shard.index >= shard.count)
            throw Error("strategy '" + cfg.plugins.at("strategy")->name + "' asked for data shard " +
                        std::to_string(shard.index) + " of " + std::to_string(shard.count));
        StreamSpec train_spec{Split::Train, B, T, shard.index, shard.count, ctx->seed("data")};
        DeviceStream train(dataset->open(train_spec), device);
        if (!ctx->built_model) throw Error("strategy '" + cfg.plugins.at("strategy")->name + "' built no model", "a strategy must call RunContext::make_model()");

        Peak peak;
        if (job.sim_device) peak = {job.sim_device->peak_flops, job.sim_device->source};
        else if (v.at("train.peak_flops").as_double() > 0) peak = {v.at("train.peak_flops").as_double(), "train.peak_flops"};
        else if (device.is_cpu()) peak = cpu_peak(threads, false, true);
        else peak = gpu_peak(gpu::device_name(device));

        const double flops_per_token = ctx->flops.flops;
        rec.summary("params", static_cast<double>(ctx->params));
        rec.summary("flops_per_token", flops_per_token);
        rec.summary_text("flops_convention", ctx->flops.convention);
        rec.summary_text("peak_source", peak.source);
        rec.summary_text("transport", transport->backend());
        if (peak.flops) rec.summary("peak_flops", *peak.flops);
        if (job.sim_device) {
            rec.summary_text("sim_device", job.sim_device->name);
            rec.summary("sim_efficiency", job.sim_device->efficiency);
            rec.summary_text("sim_network", job.sim_network);
        }

        progress.line("plexus run '" + info.name + "' -> run " + std::to_string(run_id) + " in " + rec.where() +
                      (world > 1 ? " (rank 0 of " + std::to_string(world) + ", " + transport->backend() + ")" : ""));
        progress.line("  " + dataset->describe());
        if (job.sim_device)
            progress.line("  simulated: " + job.sim_device->name + " at " + human_count(job.sim_device->flops_per_second()) +
                          "FLOP/s (" + std::to_string(job.sim_device->efficiency).substr(0, 4) + " of " +
                          human_count(job.sim_device->peak_flops) + "FLOP/s) | " + job.sim_network);
        progress.line("  " + info.plugins + " | " + human_count(static_cast<double>(ctx->params)) + " params, " +
                      human_count(flops_per_token) + "FLOP/token | " + info.device + " | peak " +
                      (peak.flops ? human_count(*peak.flops) + "FLOP/s (" + peak.source + ")" : std::string("unknown: MFU not reported")));

        // Mixed precision for this rank's thread (background tasks inherit it: HostContext).
        compat::AutocastGuard autocast(device.type(), ctx->autocast_dtype());
        const int64_t max_steps = v.at("train.steps").as_int();
        const int64_t max_tokens = v.at("train.tokens").as_int();
        const int64_t log_every = v.at("train.log_every").as_int();
        const int64_t eval_every = v.at("train.eval_every").as_int();
        const int64_t eval_batches = v.at("train.eval_batches").as_int();
        const double grad_clip = v.at("train.grad_clip").as_double();
        const std::string schedule = v.at("train.lr_schedule").as_string();
        const double warmup = static_cast<double>(v.at("train.warmup_tokens").as_int());
        const double min_ratio = v.at("train.min_lr_ratio").as_double();
        const double base_lr = cfg.values.count("optimizer.lr") && cfg.values.at("optimizer.lr").type() == ValueType::Float
                                   ? cfg.values.at("optimizer.lr").as_double() : 1.0;
        int64_t last_eval_step = -1;
        bool diverged_here = false;  // this rank saw a non-finite loss
        // The harness's own curves (loss, lr, throughput, evaluation) are the run's: rank 0's.
        // What plugins record (RunContext::record) is recorded for every rank.
        auto run_metric = [&](const char* key, double value) {
            if (rank == 0) ctx->record(key, value);
        };
        double horizon = max_tokens > 0 ? static_cast<double>(max_tokens) : 0.0;

        auto evaluate = [&]() {
            val.seek(0);  // the same validation batches every time: curves are comparable
            const double loss = strategy->evaluate(val, eval_batches);
            last_eval_step = ctx->step + 1;
            run_metric("eval_loss", loss);
            return loss;
        };

        double step_seconds_total = 0, step_seconds_after_first = 0;
        int64_t tokens_after_first = 0;
        double interval_seconds = 0;
        int64_t interval_tokens = 0, interval_steps = 0;
        double interval_loss = 0, last_eval = NAN, last_loss = NAN;
        int64_t step = 0, job_tokens = 0, own_tokens = 0;
        std::string status = "finished";
        double slow_factor = 1;   // [[faults]] slow on this rank
        double slow_seconds = 0;  // what a slowed real rank has slept (summary fault_slow_seconds)
        if (!job.faults.empty()) {
            std::string all;
            for (const auto& f : job.faults) all += (all.empty() ? "" : "; ") + f.text;
            rec.summary_text("faults", all);
        }

        // Checkpoints: every rank writes its own file; rank 0 marks the step complete once all
        // have (one all-reduce on the harness's transport, which costs no simulated time).
        CommStats comm_before;  // what earlier attempts of a resumed run communicated (less the harness's)
        // The harness's own collectives (agreeing to stop or to checkpoint) are not the
        // strategy's traffic: where they share its transport, they are taken out of the stats.
        auto harness_all_reduce = [&](torch::Tensor& t, ReduceOp op) {
            const auto before = ctx->transport().stats();
            channel.collectives().all_reduce(t, op)->wait();
            comm_before -= ctx->transport().stats() - before;
        };
        const int64_t ckpt_every = v.at("checkpoint.every_steps").as_int();
        const double ckpt_minutes = v.at("checkpoint.every_minutes").as_double();
        double last_ckpt_wall = 0;
        // The counters a checkpoint carries, by name: saved and restored through one list.
        const std::vector<std::pair<const char*, double*>> real_counters = {
            {"last_eval", &last_eval}, {"last_loss", &last_loss}, {"horizon", &horizon},
            {"interval_seconds", &interval_seconds}, {"interval_loss", &interval_loss},
            {"step_seconds_total", &step_seconds_total}, {"step_seconds_after_first", &step_seconds_after_first},
            {"comm.seconds_total", &comm_before.seconds_total}, {"comm.seconds_exposed", &comm_before.seconds_exposed}};
        const std::vector<std::pair<const char*, int64_t*>> int_counters = {
            {"step", &step}, {"job_tokens", &job_tokens}, {"own_tokens", &own_tokens}, {"tokens", &ctx->tokens},
            {"last_eval_step", &last_eval_step}, {"tokens_after_first", &tokens_after_first},
            {"interval_tokens", &interval_tokens}, {"interval_steps", &interval_steps},
            {"comm.calls", &comm_before.calls}, {"comm.bytes_sent", &comm_before.bytes_sent}};
        auto write_checkpoint = [&] {
            rec.metrics(ctx->pending);  // the rows up to this step are recorded before a checkpoint claims them
            RankCheckpoint c;
            c.config_hash = cfg.hash;
            c.run_id = run_id;
            c.step = step;
            c.rank = rank;
            c.world = world;
            bool ok = true;
            std::string why;
            try {
                // The strategy first: its state() may communicate (gathering shards), and the
                // clock and traffic saved below must include that, as an uninterrupted run does.
                for (auto& [name, t] : strategy->state()) c.tensors.emplace_back("strategy." + name, t);
                c.tensors.emplace_back("rng.cpu", cpu_rng_state());
                if (device.is_cuda()) c.tensors.emplace_back("rng.cuda", gpu::rng_state(device));
                for (const auto& [name, p] : real_counters) c.numbers[name] = *p;
                for (const auto& [name, p] : int_counters) c.numbers[name] = static_cast<double>(*p);
                c.numbers["slow_seconds"] = slow_seconds;
                // The traffic is the run's so far: earlier attempts' and this one's.
                const auto comm = comm_before + ctx->transport().stats();
                c.numbers["comm.calls"] = static_cast<double>(comm.calls);
                c.numbers["comm.bytes_sent"] = static_cast<double>(comm.bytes_sent);
                c.numbers["comm.seconds_total"] = comm.seconds_total;
                c.numbers["comm.seconds_exposed"] = comm.seconds_exposed;
                c.numbers["data_position"] = static_cast<double>(train.position());
                c.texts["clock"] = env.clock->save_state();
                write_rank_checkpoint(job.checkpoints->rank_file(step, rank), c);
            } catch (const std::exception& e) {
                ok = false;
                why = message_of(e);
            }
            if (world > 1) {
                // Counted, not a minimum: on the simulated cluster a lost rank ([[faults]] kill) is
                // simply absent from the harness's collectives, and it wrote nothing.
                auto written = torch::tensor({ok ? 1.0 : 0.0}, torch::kFloat64);
                harness_all_reduce(written, ReduceOp::Sum);
                const bool all = written.item<double>() == static_cast<double>(world);
                if (ok && !all && rank == 0) why = "another rank could not write its file (or is lost)";
                ok = all;
            }
            if (ok && rank == 0) {
                try {
                    job.checkpoints->mark_complete(step, world, static_cast<int>(v.at("checkpoint.keep").as_int()));
                    rec.summary("checkpoint_step", static_cast<double>(step));
                } catch (const std::exception& e) {
                    ok = false;
                    why = message_of(e);
                }
            }
            // A checkpoint that cannot be written does not end the run: the previous one stays.
            if (!ok && (rank == 0 || !why.empty()))
                std::cerr << "warning: rank " << rank << ": no checkpoint at step " << step << ": " << why
                          << " (the previous checkpoint stays the one to resume from)\n";
            else if (ok) progress.line("checkpoint at step " + std::to_string(step) + " in " + job.checkpoints->dir().string());
            last_ckpt_wall = ctx->wall_seconds();
        };
        if (job.checkpoints) {
            rec.summary("exact_resume", strategy->exact_resume() ? 1 : 0);
            if (!strategy->exact_resume())
                progress.line("note: strategy '" + cfg.plugins.at("strategy")->name +
                              "' does not declare exact resume: a run resumed from its checkpoints continues from the saved "
                              "weights and optimizer state, but may not match an uninterrupted run");
        }
        // Every rank resumes from rank 0's choice: a rank started on its own (torchrun, srun) looked
        // at its own view of the folder, which may lag or differ (the local launcher passes its
        // choice to its workers already). Taken before the clock is restored: no trace of it stays.
        std::optional<int64_t> resume_step = job.resume_step;
        if (job.resumed && world > 1 && !sim) {
            auto chosen = torch::tensor({rank == 0 && resume_step ? static_cast<double>(*resume_step) : -1.0}, torch::kFloat64);
            harness_all_reduce(chosen, ReduceOp::Max);
            resume_step.reset();
            if (chosen.item<double>() >= 0) resume_step = static_cast<int64_t>(chosen.item<double>());
        }
        if (resume_step) {
            const auto file = job.checkpoints->rank_file(*resume_step, rank);
            if (!fs::exists(file))
                throw Error("rank " + std::to_string(rank) + " has no checkpoint file for step " + std::to_string(*resume_step) +
                                " (" + file.string() + ")",
                            "every rank reads its own file: the checkpoint folder must be the same on every node (a shared "
                            "file system), as must the database for --resume");
            const auto c = read_rank_checkpoint(file);
            if (c.config_hash != cfg.hash || c.world != world || c.rank != rank || c.step != *resume_step)
                throw Error("checkpoint " + file.string() + " belongs to another run (config " + c.config_hash + ", rank " +
                                std::to_string(c.rank) + " of " + std::to_string(c.world) + "); this run has config " +
                                cfg.hash + ", rank " + std::to_string(rank) + " of " + std::to_string(world),
                            "resume a run with the experiment file and settings it started with");
            StateDict strategy_state;
            for (const auto& [name, t] : c.tensors) {
                if (name.rfind("strategy.", 0) == 0) strategy_state.emplace_back(name.substr(9), t);
                else if (name == "rng.cpu") set_cpu_rng_state(t);
                else if (name == "rng.cuda" && device.is_cuda()) gpu::set_rng_state(device, t);
            }
            auto number = [&](const char* name) {
                auto it = c.numbers.find(name);
                if (it == c.numbers.end()) throw Error("checkpoint " + file.string() + " has no '" + name + "'", "");
                return it->second;
            };
            strategy->load_state(strategy_state);
            for (const auto& [name, p] : real_counters) *p = number(name);
            for (const auto& [name, p] : int_counters) *p = static_cast<int64_t>(number(name));
            if (c.numbers.count("slow_seconds")) slow_seconds = c.numbers.at("slow_seconds");  // (newer than the format)
            train.seek(static_cast<int64_t>(number("data_position")));
            env.clock->load_state(c.texts.count("clock") ? c.texts.at("clock") : "");
            // The communication the strategy's construction just did is this attempt's, not the run's.
            comm_before -= ctx->transport().stats();
            progress.line("resumed from the checkpoint at step " + std::to_string(step) + " (" + file.parent_path().string() + ")");
        }
        last_ckpt_wall = ctx->wall_seconds();
        // Slow faults of earlier steps hold in a resumed run too (the clock's factor is not saved).
        for (const auto& f : job.faults)
            if (f.kind == "slow" && f.rank == rank && f.step < step) env.clock->set_slowdown(f.factor), slow_factor = f.factor;
        while (true) {
            if (max_steps > 0 && step >= max_steps) break;
            if (max_tokens > 0 && ctx->tokens >= max_tokens) break;
            // One rank stops alone; several agree on it at log points (below) so that none is left
            // waiting in a collective for a peer that has gone.
            if (world == 1 && g_interrupts > 0) { status = "interrupted"; break; }
            for (const auto& f : job.faults) {
                if (f.rank != rank || f.step != step) continue;
                if (f.kind == "slow") {
                    env.clock->set_slowdown(f.factor);
                    slow_factor = f.factor;
                    std::cerr << "fault: rank " << rank << " slowed " << f.factor << "x from step " << step << " ([[faults]])\n";
                }
                if (f.kind == "kill" && !job.resumed) {
                    rec.metrics(ctx->pending);
                    const std::string what = "rank " + std::to_string(rank) + " killed at step " + std::to_string(step) +
                                             " by [[faults]] (" + f.text + ")";
                    std::cerr << "fault: " << what << std::endl;
                    // As a crash would: no cleanup, nothing recorded (a simulated rank fails instead).
                    if (!sim) std::cout.flush(), std::_Exit(kKilled);
                    progress.clear();
                    return {kKilled, what};
                }
            }
            ctx->step = step;
            StepInput in;
            in.step = step;
            in.tokens_seen = ctx->tokens;
            in.lr_scale = lr_factor(schedule, static_cast<double>(ctx->tokens), warmup, horizon, min_ratio);
            in.max_grad_norm = grad_clip;
            in.train = &train;
            // Simulated seconds on the simulated cluster, wall seconds otherwise.
            const double t0 = ctx->now();
            StepOutput out = strategy->step(in);
            // A slowed real rank ([[faults]] slow) sleeps in proportion; a simulated one's clock did it.
            if (slow_factor > 1 && !sim) {
                const double sleep = (slow_factor - 1) * (ctx->now() - t0);
                std::this_thread::sleep_for(std::chrono::duration<double>(sleep));
                slow_seconds += sleep;
            }
            const double dt = ctx->now() - t0;
            // Tokens "per rank" are the job's divided by the world size, the same on every rank
            // even when ranks consume different amounts (StepOutput::job_tokens).
            own_tokens += out.tokens;
            job_tokens += out.job_tokens >= 0 ? out.job_tokens : out.tokens * world;
            const int64_t step_tokens = job_tokens / world - ctx->tokens;
            if (horizon == 0) horizon = static_cast<double>(step_tokens) * static_cast<double>(max_steps);
            ctx->tokens += step_tokens;
            step_seconds_total += dt;
            if (step > 0) { step_seconds_after_first += dt; tokens_after_first += step_tokens; }
            interval_seconds += dt;
            interval_tokens += step_tokens;
            interval_loss += out.loss;
            ++interval_steps;
            last_loss = out.loss;
            run_metric("loss", out.loss);
            run_metric("lr", base_lr * in.lr_scale);
            if (out.grad_norm >= 0) run_metric("grad_norm", out.grad_norm);
            ++step;
            if (!std::isfinite(out.loss) && !device.is_meta()) {
                progress.line("step " + std::to_string(step) + ": loss is " + std::to_string(out.loss) + ": the run diverged");
                diverged_here = true;
                if (world == 1) { status = "diverged"; break; }  // several ranks agree first, below
            }
            const bool log_now = step % log_every == 0 || step == max_steps;
            const bool eval_now = (eval_every > 0 && step % eval_every == 0) || step == max_steps;
            if (eval_now) last_eval = evaluate();
            if (log_now || eval_now) {
                const double tps = interval_seconds > 0 ? interval_tokens / interval_seconds : 0;
                const double util = peak.flops ? mfu(flops_per_token, tps, *peak.flops) : NAN;
                run_metric("tokens_per_s", tps);
                run_metric("step_time", interval_seconds / std::max<int64_t>(1, interval_steps));
                if (peak.flops) run_metric("mfu", util);
                run_metric("memory", peak_rss_bytes());
                // The ETA is in real seconds, whatever the clock of the run.
                const double wall_per_token = ctx->wall_seconds() / std::max<int64_t>(1, ctx->tokens);
                const double eta = max_steps > 0 ? ctx->wall_seconds() / step * (max_steps - step)
                                                 : (max_tokens - ctx->tokens) * wall_per_token;
                char buf[320];
                std::snprintf(buf, sizeof buf,
                              "step %6lld | loss %.4f%s | lr %.2e | %s tok/s | MFU %s | mem %s | %s elapsed, ETA %s",
                              static_cast<long long>(step), interval_loss / interval_steps,
                              eval_now ? (" | eval " + std::to_string(last_eval).substr(0, 6)).c_str() : "",
                              base_lr * in.lr_scale, human_count(tps).c_str(),
                              peak.flops ? (std::to_string(util * 100).substr(0, 4) + "%").c_str() : "n/a",
                              human_bytes(peak_rss_bytes()).c_str(),
                              (human_duration(ctx->wall_seconds()) + (sim ? " (simulated " + human_duration(ctx->now()) + ")" : "")).c_str(),
                              human_duration(eta).c_str());
                progress.line(buf);
                rec.metrics(ctx->pending);
                interval_seconds = 0;
                interval_tokens = interval_steps = 0;
                interval_loss = 0;
            }
            progress.bar(step, out.loss, max_steps > 0 ? ctx->wall_seconds() / step * (max_steps - step) : NAN);
            // Time-based checkpoints are decided by rank 0's clock at log points; the control
            // channel makes every rank act on the same step (control.hpp).
            bool checkpoint_now = job.checkpoints && ckpt_every > 0 && step % ckpt_every == 0;
            const bool minutes_due = job.checkpoints && ckpt_minutes > 0 && log_now && rank == 0 &&
                                     ctx->wall_seconds() - last_ckpt_wall >= ckpt_minutes * 60;
            if (log_now) {
                const Agreement agreed = channel.at_log_point(step, {g_interrupts > 0, diverged_here, minutes_due});
                if (!agreed.stop.empty()) { status = agreed.stop; break; }
                checkpoint_now = checkpoint_now || agreed.checkpoint;
                rec.peers_metrics();
            }
            if (checkpoint_now && !(max_steps > 0 && step >= max_steps)) write_checkpoint();
        }
        // An interrupted run can be resumed from where it stopped.
        if (status == "interrupted" && job.checkpoints && step > 0) write_checkpoint();
        progress.clear();
        if (status == "finished" && step > 0 && last_eval_step != step) last_eval = evaluate();

        // Summaries: throughput excludes the first step (allocations, thread start-up).
        const double tps = tokens_after_first > 0 ? tokens_after_first / step_seconds_after_first
                                                  : (step_seconds_total > 0 ? ctx->tokens / step_seconds_total : 0);
        rec.summary("steps", static_cast<double>(step));
        rec.summary("tokens", static_cast<double>(ctx->tokens));
        rec.summary("final_loss", last_loss);
        rec.summary("final_eval_loss", last_eval);
        rec.summary("tokens_per_s", tps);
        rec.summary("step_time", step > 0 ? step_seconds_total / step : NAN);
        rec.summary("mfu", peak.flops ? mfu(flops_per_token, tps, *peak.flops) : NAN);
        rec.summary("peak_memory", peak_rss_bytes());
        // On a GPU, the caching allocator's own peak (the meter counts CPU tensors).
        const double tensor_peak = device.is_cuda() ? static_cast<double>(gpu::peak_allocated_bytes(device))
                                                    : static_cast<double>(meter->peak());
        rec.summary("peak_tensor_bytes", tensor_peak);
        const auto comm = ctx->transport().stats() + comm_before;
        rec.summary("bytes_sent", static_cast<double>(comm.bytes_sent));
        rec.summary("comm_time", comm.seconds_total);
        rec.summary("comm_exposed_time", comm.seconds_exposed);
        rec.summary("wall_time", ctx->wall_seconds());
        if (sim) rec.summary("sim_time", ctx->now());
        // Per-rank figures, gathered to rank 0 (one small all-gather at the end).
        // rank_tokens: what the rank itself consumed (ranks differ where the strategy lets them).
        rec.summary("rank_tokens", static_cast<double>(own_tokens));
        const bool slowed = !sim && std::any_of(job.faults.begin(), job.faults.end(), [](const Fault& f) { return f.kind == "slow"; });
        auto mine = torch::tensor({tps, static_cast<double>(comm.bytes_sent), comm.seconds_total, comm.seconds_exposed,
                                   peak_rss_bytes(), ctx->now(), static_cast<double>(own_tokens),
                                   tensor_peak, step > 0 ? step_seconds_total / step : NAN, slow_seconds}, torch::kFloat64);
        auto all = torch::empty({world * mine.numel()}, torch::kFloat64);
        rec.metrics(ctx->pending);  // before the gather: rank 0 takes every rank's rows after it
        channel.collectives().all_gather(all, mine)->wait();
        rec.peers_metrics();
        // A stop posted at the last log point, too late for the others to act on (a loss that
        // turned non-finite in the last interval): the run's record says so, as it would have.
        if (status == "finished" && channel.late_stop() == "diverged") status = "diverged";
        // On the simulated cluster every rank shares one process: its memory is reported once.
        const char* per_rank[] = {"tokens_per_s", "bytes_sent", "comm_time", "comm_exposed_time",
                                  sim ? nullptr : "peak_memory", sim ? "sim_time" : nullptr, "rank_tokens",
                                  "peak_tensor_bytes", "step_time", slowed ? "fault_slow_seconds" : nullptr};
        if (slowed) rec.summary("fault_slow_seconds", slow_seconds);
        const int64_t fields = mine.numel();
        for (int r = 1; r < world; ++r)
            for (int64_t k = 0; k < fields; ++k)
                if (per_rank[k]) rec.summary(per_rank[k], all[r * fields + k].item<double>(), r);
        const auto state_digest = device.is_meta() ? StateDigest{"meta", NAN, NAN} : digest(strategy->state());
        rec.summary_text("state_hash", state_digest.hash);
        rec.summary("param_sum", state_digest.param_sum);
        rec.summary("param_square_sum", state_digest.param_square_sum);
        rec.metrics(ctx->pending);
        rec.finish(status, status == "diverged" ? "loss became " + std::to_string(last_loss) + " at step " + std::to_string(step) : "");
        // A finished run is not resumed: its checkpoints would only fill the disk. (Every rank
        // is past its last checkpoint: the all-gather above.)
        if (status == "finished" && job.checkpoints && rank == 0) {
            std::error_code ec;
            fs::remove_all(job.checkpoints->dir(), ec);
        }

        char buf[256];
        std::snprintf(buf, sizeof buf, "run %lld %s: %lld steps, %s tokens, final eval loss %.4f, %s tok/s, MFU %s",
                      static_cast<long long>(run_id), status.c_str(), static_cast<long long>(step),
                      human_count(static_cast<double>(ctx->tokens)).c_str(), last_eval, human_count(tps).c_str(),
                      peak.flops ? (std::to_string(mfu(flops_per_token, tps, *peak.flops) * 100).substr(0, 4) + "%").c_str() : "n/a");
        progress.line(buf);
        if (status == "diverged") {
            if (rank == 0) std::cerr << "error: run " << run_id << " diverged (loss " << last_loss << " at step " << step << ")\n"
                      << "hint: lower optimizer.lr, add train.warmup_tokens, or set train.grad_clip\n";
            return {kDiverged, "diverged"};
        }
        if (status == "interrupted") {
            if (rank == 0) std::cerr << "run " << run_id << " interrupted at step " << step << "; its rows so far are kept\n";
            return {kInterrupted, "interrupted"};
        }
        return {kOk, ""};
    } catch (const std::exception& e) {
        progress.clear();
        if (env.print_errors) print_error(e);
        const bool recorded = fail("failed", error_text(e));
        if (job.store && rank == 0) {
            if (recorded) std::cerr << "run " << run_id << " marked failed in " << job.store->path() << "\n";
            // Whatever stopped it (a full disk, a bug since fixed), the run can go on from its
            // last checkpoint; when the database could not even take its end, that is how it
            // gets recorded.
            if (job.checkpoints && job.checkpoints->latest())
                std::cerr << "hint: `plexus run --resume " << run_id << " --db "
                          << job.store->path() << "` continues run " << run_id << " from its checkpoint at step "
                          << *job.checkpoints->latest() << " and records the rest\n";
        }
        return {kFailed, error_text(e)};
    }
}

double current_rss_bytes() {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
        long size = 0;
        if (std::fscanf(f, "%ld %ld", &size, &pages) != 2) pages = 0;
        std::fclose(f);
    }
    return static_cast<double>(pages) * static_cast<double>(sysconf(_SC_PAGESIZE));
}

// `[launch] mode = "sim"`: every rank a thread of this process on the simulated cluster.
int run_simulated(const Job& job, sim::Cluster& cluster) {
    const int n = cluster.size();
    std::vector<RankResult> results(static_cast<size_t>(n));
    // One malloc arena: only one rank thread runs at a time, so there is no contention to avoid,
    // and an arena per thread keeps each one's freed activations (measured: 16 quickstart ranks
    // took 1.9 GB with the default arenas, 0.6 GB with one).
    mallopt(M_ARENA_MAX, 1);
    const double rss_before = current_rss_bytes();
    std::cout << "plexus: simulating " << n << " ranks in this process" << std::endl;
    cluster.run([&](int r) {
        RankEnv env;
        env.rank = r;
        env.world = n;
        env.connect = [&cluster, r] { return Connection{cluster.transport(r), make_collective_control(cluster.control(r))}; };
        env.clock = cluster.clock(r);
        env.print_errors = r == 0;
        env.ranks_per_node = cluster.network().two_level() ? cluster.network().spec().gpus_per_node : 1;
        results[static_cast<size_t>(r)] = train_rank(job, env);
        // A failed or killed rank fails what its peers wait for (they then record why, rank 0
        // included, unless the strategy trains on without it).
        const int code = results[static_cast<size_t>(r)].code;
        if (code == kFailed || code == kKilled) throw Error(results[static_cast<size_t>(r)].error);
    });
    const double per_rank = (peak_rss_bytes() - rss_before) / n;
    try {
        job.store->set_summary(job.run_id, 0, "sim_memory_per_rank", per_rank);
        int lost = 0;
        for (const auto& res : results) lost += res.code == kKilled ? 1 : 0;
        if (!job.faults.empty()) job.store->set_summary(job.run_id, 0, "ranks_lost", lost);
        const auto corrupted = cluster.corrupted_messages();
        for (size_t k = 0, c = 0; k < job.faults.size(); ++k)
            if (job.faults[k].kind == "corrupt")
                job.store->set_summary(job.run_id, 0, "fault" + std::to_string(k) + "_corrupted_messages",
                                       static_cast<double>(corrupted.at(c++)));
        if (results[0].code == kKilled) {
            job.store->finish_run(job.run_id, "failed", results[0].error + "; rank 0 records the run, so it ends with it");
            return kFailed;
        }
        // Rank 0 may have finished before another rank failed (asynchronous strategies).
        for (int r = 1; r < n; ++r) {
            const auto& res = results[static_cast<size_t>(r)];
            if (res.code == kFailed && results[0].code == kOk) {
                job.store->finish_run(job.run_id, "failed", "rank " + std::to_string(r) + ": " + res.error);
                std::cerr << "error: rank " << r << ": " << res.error << "\n";
                return kFailed;
            }
        }
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    return results[0].code;
}

}  // namespace

void scan_plugins(const Experiment& exp, PluginRegistry& registry) {
    auto search = PluginRegistry::default_search_path();
    if (auto it = exp.settings.find("plugin_path"); it != exp.settings.end()) {
        const auto& v = it->second.value;
        if (v.type() == ValueType::String) search.push_back(v.as_string());
        if (v.type() == ValueType::List)
            for (const auto& item : v.as_list())
                if (item.type() == ValueType::String) search.push_back(item.as_string());
    }
    registry.scan(search);
}

// --resume RUN: the file, grid point and --set overrides the run started with, as recorded
// with it; the run is then recorded in the database it was found in.
RunInfo recall_run(RunOptions& o, std::string& path) {
    const std::string db = o.db.empty() ? "results/plexus.db" : o.db;
    const std::string id = std::to_string(o.resume_run);
    ResultsStore store(db, ResultsStore::Open::MustExist);
    auto run = store.get_run(o.resume_run);
    if (!run)
        throw Error("--resume " + id + ": there is no run " + id + " in " + db,
                    "`plexus runs` lists the runs; name the database the run is in with --db");
    if (run->status == "finished")
        throw Error("run " + id + " has already finished", "`plexus show " + id + "` shows its results");
    if (!std::getenv("PLEXUS_WORKER"))  // (a worker's launcher owns the run)
        if (auto owner = live_owner(store, *run))
            throw Error("run " + id + " is still running (" + *owner + ")",
                        "wait for it, or stop it first (Ctrl-C writes a checkpoint), then resume");
    path = store.summary_text(o.resume_run, "resume.file");
    if (path.empty())
        throw Error("run " + id + " has no record of the experiment it started from",
                    "it was recorded by an older plexus: start it again with `plexus run FILE`");
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw Error("run " + id + " started from " + path + ", which is gone",
                    "put it back where it was; its text as the run read it is in the database: sqlite3 " + db +
                        " \"select toml from run where id = " + id + "\" > " + path +
                        " (a file it extends must be back too; the run checks that nothing changed)");
    const std::string point = store.summary_text(o.resume_run, "resume.point");
    o.point = point.empty() ? -1 : std::stoi(point);
    o.overrides.clear();
    for (int i = 0;; ++i) {
        auto s = store.summary_text(o.resume_run, "resume.set." + std::to_string(i));
        if (s.empty()) break;
        o.overrides.push_back(s);
    }
    o.db = db;
    return *run;
}

int run_experiment(const std::string& file, const RunOptions& given) {
    // Phase 1: everything that can be checked before the run exists in the database.
    RunOptions options = given;
    std::string path = file;
    std::optional<RunInfo> resumed;
    Experiment exp;
    ResolvedConfig cfg;
    PluginRegistry registry;
    std::unique_ptr<ResultsStore> store;
    torch::Device device = torch::kCPU;
    std::string mode, variant;
    bool is_launcher = false;
    std::optional<Rendezvous> rendezvous;
    std::unique_ptr<sim::Cluster> cluster;
    std::vector<Fault> faults;
    try {
        if (options.resume_run > 0) resumed = recall_run(options, path);
        exp = load_experiment(path);
        for (const auto& o : options.overrides) apply_override(exp, o);
        // Taken as they are (no TOML escapes: a path may hold backslashes or quotes).
        if (!options.db.empty()) exp.settings["results.db"] = Setting{Value(options.db), SourceLoc{"--db", 0, 0}};
        if (!options.progress.empty())
            exp.settings["results.progress"] = Setting{Value(options.progress), SourceLoc{"--progress", 0, 0}};
        scan_plugins(exp, registry);
        auto find = [&](PluginKind k, const std::string& n) { return registry.find(k, n); };
        if (!exp.grid.empty() || options.point >= 0) {
            const auto points = expand_grid(exp);
            if (options.point < 0)
                throw Error(path + " has a [grid] of " + std::to_string(points.size()) + " runs",
                            "run them all with `plexus sweep " + path + "`, or one with `plexus run " + path + " --point I`");
            if (options.point >= static_cast<int>(points.size()))
                throw Error("--point " + std::to_string(options.point) + ": " + path + " has " +
                                std::to_string(points.size()) + " grid point(s), 0.." + std::to_string(points.size() - 1),
                            "`plexus sweep " + path + " --dry-run` lists them");
            exp = apply_grid_point(exp, points[static_cast<size_t>(options.point)], find);
            variant = points[static_cast<size_t>(options.point)].variant;
        }
        cfg = resolve(exp, find, [&](PluginKind k) { return registry.names(k); });
        if (resumed && cfg.hash != resumed->config_hash)
            throw Error("run " + std::to_string(resumed->id) + " was recorded with config hash " + resumed->config_hash + "; " +
                            path + " now gives " + cfg.hash,
                        "the experiment (or a file it extends) changed since the run started: restore it to resume");
        if (cfg.values.at("checkpoint.every_steps").as_int() < 0 || cfg.values.at("checkpoint.every_minutes").as_double() < 0)
            throw Error("checkpoint.every_steps and checkpoint.every_minutes must be >= 0", "0 turns each off");
        // A folder that cannot take checkpoints is a config error, found now, not a warning at
        // every checkpoint of a week-long run that then has nothing to resume from.
        if (cfg.values.at("checkpoint.every_steps").as_int() > 0 || cfg.values.at("checkpoint.every_minutes").as_double() > 0) {
            const fs::path root = RunCheckpoints::of(cfg, 0).dir().parent_path();
            std::error_code ec;
            fs::create_directories(root, ec);
            const fs::path probe = root / (".plexus-write-test-" + std::to_string(getpid()));
            if (!ec) std::ofstream(probe).put('x');
            if (ec || !fs::exists(probe))
                throw Error("checkpoints cannot be written to " + root.string() + (ec ? ": " + ec.message() : ""),
                            "set checkpoint.dir to a folder you can write to (\"\" puts them beside the results database)");
            fs::remove(probe, ec);
        }
        if (cfg.values.at("checkpoint.keep").as_int() < 1)
            throw Error("checkpoint.keep must be >= 1", "keep = 2 leaves one older checkpoint in case the newest is damaged");
        const std::string schedule = cfg.values.at("train.lr_schedule").as_string();
        if (schedule != "constant" && schedule != "cosine" && schedule != "linear")
            throw Error(exp.settings.count("train.lr_schedule") ? exp.settings.at("train.lr_schedule").where.str() + ": train.lr_schedule = \"" + schedule + "\" is unknown" : "train.lr_schedule is unknown",
                        "use constant, cosine or linear");
        mode = cfg.values.at("launch.mode").as_string();
        if (mode != "single" && mode != "local" && mode != "env" && mode != "sim")
            throw Error("launch.mode = \"" + mode + "\" is unknown",
                        "use single (one process), local (plexus starts launch.ranks workers here), env "
                        "(join a job started by torchrun, srun or mpirun) or sim (launch.ranks simulated ranks)");
        if ((mode == "local" || mode == "sim") && cfg.values.at("launch.ranks").as_int() < 1)
            throw Error("launch.ranks must be >= 1", "set [launch] ranks = 2");
        // A thread per simulated rank, a process per local one: beyond these the machine gives out
        // (threads, memory) long before the run says anything useful.
        if (mode == "sim" && cfg.values.at("launch.ranks").as_int() > 16384)
            throw Error("launch.ranks = " + std::to_string(cfg.values.at("launch.ranks").as_int()) +
                            " simulated ranks: at most 16384 (one thread each)",
                        "simulate fewer ranks; scaling laws extrapolate from a few sizes");
        if (mode == "local" && cfg.values.at("launch.ranks").as_int() > 256)
            throw Error("launch.ranks = " + std::to_string(cfg.values.at("launch.ranks").as_int()) +
                            " local processes: at most 256",
                        "more ranks than that on one machine is a job for launch.mode = \"sim\"");
        is_launcher = mode == "local" && !std::getenv("PLEXUS_WORKER");
        if (is_launcher) catch_stop_requests();  // a SIGTERM from here on stops the workers it starts
        if (mode == "env" || (mode == "local" && !is_launcher)) {
            rendezvous = rendezvous_from_env();
            if (!rendezvous)
                throw Error("launch.mode = \"" + mode + "\" but no rank is set in the environment",
                            "start plexus with torchrun, srun or mpirun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
            rendezvous->timeout_s = cfg.values.at("launch.timeout").as_double();
        }
        for (const char* key : {"train.batch_size", "train.seq_len", "train.log_every", "train.eval_batches"})
            if (cfg.values.at(key).as_int() < 1) throw Error(std::string(key) + " must be >= 1", "fix it in " + path);
        for (const char* key : {"train.steps", "train.tokens", "train.warmup_tokens", "train.eval_every", "train.threads"})
            if (cfg.values.at(key).as_int() < 0) throw Error(std::string(key) + " must be >= 0", "fix it in " + path);
        const double grad_clip = cfg.values.at("train.grad_clip").as_double(),
                     min_lr_ratio = cfg.values.at("train.min_lr_ratio").as_double();
        if (!(grad_clip >= 0) || !std::isfinite(grad_clip))
            throw Error("train.grad_clip = " + cfg.values.at("train.grad_clip").to_text() + " must be >= 0",
                        "0 turns clipping off; 1.0 is usual");
        if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
            throw Error("train.min_lr_ratio = " + cfg.values.at("train.min_lr_ratio").to_text() + " must lie in [0, 1]",
                        "the final learning rate as a fraction of the peak, e.g. 0.1");
        if (cfg.values.at("train.steps").as_int() == 0 && cfg.values.at("train.tokens").as_int() == 0)
            throw Error("train.steps and train.tokens are both 0: the run would never stop", "set one of them");
        device = choose_device(cfg.values.at("train.device").as_string());
        // Several ranks on one machine: "cuda" is each rank's own GPU.
        if (device.is_cuda() && !device.has_index() && rendezvous)
            device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(
                                                     rendezvous->local_rank % std::max<int64_t>(1, torch::cuda::device_count())));
        gpu::set_current(device);
        const std::string progress_mode = cfg.values.at("results.progress").as_string();
        if (!is_progress_mode(progress_mode))
            throw Error("results.progress = \"" + progress_mode + "\" is unknown (--progress sets it)", "use auto, bar, lines or none");
        const std::string precision = cfg.values.at("train.precision").as_string();
        if (precision != "fp32" && precision != "bf16")
            throw Error("train.precision = \"" + precision + "\" is unknown", "use fp32 or bf16");
        const std::string backend = cfg.values.at("launch.backend").as_string();
        if (backend != "auto" && backend != "gloo" && backend != "nccl")
            throw Error("launch.backend = \"" + backend + "\" is unknown", "use auto, gloo or nccl");
        if (mode == "sim") {
            // The "measured" profile needs this machine's per-core peak (cached after the first run).
            double core_flops = 0;
            if (cfg.values.at("sim.device").as_string() == "measured") core_flops = *cpu_peak(1, false, true).flops;
            cluster = std::make_unique<sim::Cluster>(sim::settings_from(cfg, core_flops));
            // Meta numerics: tensors with shapes and no data. Compute and communication are
            // charged as usual; losses are NaN; a 1.3B-parameter model costs no memory per rank.
            const std::string numerics = cfg.values.at("sim.numerics").as_string();
            if (numerics != "real" && numerics != "meta")
                throw Error("sim.numerics = \"" + numerics + "\" is unknown", "use real or meta");
            if (numerics == "meta") device = torch::Device(torch::kMeta);
        }
        const int fault_ranks = mode == "local" || mode == "sim" ? static_cast<int>(cfg.values.at("launch.ranks").as_int())
                                : rendezvous                     ? rendezvous->world_size
                                                                 : 1;
        faults = parse_faults(cfg.values.at("faults"), fault_ranks, mode == "sim");
        // Only the launcher, or rank 0, writes the run's rows.
        if (!rendezvous || rendezvous->rank == 0)
            store = std::make_unique<ResultsStore>(cfg.values.at("results.db").as_string());
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    const int rank = rendezvous ? rendezvous->rank : 0;
    const int world = rendezvous ? rendezvous->world_size : 1;

    const auto& v = cfg.values;
    // N local workers share the cores: never oversubscribe them.
    const int local_ranks = is_launcher  ? static_cast<int>(v.at("launch.ranks").as_int())
                            : rendezvous ? rendezvous->local_world_size
                                         : 1;
    // The cores this run may use: all of them, or the share a sweep running several at once gave it.
    const int machine = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int cores = machine;
    if (const char* share = std::getenv("PLEXUS_CORES"); share && std::atoi(share) > 0) cores = std::atoi(share);
    // An explicit count above the machine's cores only makes the threads wait on each other.
    const int64_t asked = v.at("train.threads").as_int();
    if (asked > machine)
        std::cerr << "warning: train.threads = " << asked << " is more than this machine's " << machine
                  << " cores; using " << machine << "\n";
    const int threads = asked > 0 ? static_cast<int>(std::min<int64_t>(asked, machine)) : std::max(1, cores / local_ranks);
    set_compute_threads(threads);

    // Phase 2: the run exists; from here every failure is recorded on it.
    RunInfo info;
    info.name = v.at("name").as_string().empty() ? fs::path(path).stem().string() : v.at("name").as_string();
    info.config_hash = cfg.hash;
    info.config_json = cfg.to_json();
    info.toml = exp.text;
    info.seed = v.at("train.seed").as_int();
    for (const auto& [section, d] : cfg.plugins) info.plugins += (info.plugins.empty() ? "" : " ") + section + "=" + d->name + "@" + d->version;
    info.fingerprint = PluginRegistry::host_fingerprint();
    info.device = device.str() + (device.is_cpu() ? " (" + std::to_string(threads) + " threads)" : "");
    if (v.at("train.precision").as_string() != "fp32") info.device += " " + v.at("train.precision").as_string();
    info.host = hostname();
    info.git_rev = git_revision(fs::absolute(path).parent_path().string());
    info.command = options.command_line;
    info.world_size = is_launcher || cluster ? v.at("launch.ranks").as_int() : world;
    if (const char* sweep = std::getenv("PLEXUS_SWEEP_ID"); sweep && std::atoll(sweep) > 0) info.sweep_id = std::atoll(sweep);
    if (cluster) info.device += ", simulating " + std::to_string(cluster->size()) + " x " + cluster->settings().device.name;
    int64_t run_id = 0;
    try {
        if (resumed) {
            run_id = resumed->id;
            if (store) store->reopen_run(run_id);
            if (store && !std::getenv("PLEXUS_WORKER")) store->set_summary_text(run_id, 0, "process", process_tag());
        } else if (const char* id = std::getenv("PLEXUS_RUN_ID"); id && !is_launcher) {
            run_id = std::atoll(id);
        } else if (store) {
            // The grid variant's name is recorded as a setting "variant" (leaderboards group by
            // it); it is not part of the configuration hash, which its settings already fix.
            auto params = v;
            if (!variant.empty()) params["variant"] = Value(variant);
            // What `plexus run --resume` needs to build the same run again, written with the
            // run's row: a run killed at any moment can be resumed.
            info.texts["resume.file"] = fs::absolute(path).string();
            if (options.point >= 0) info.texts["resume.point"] = std::to_string(options.point);
            for (size_t i = 0; i < options.overrides.size(); ++i)
                info.texts["resume.set." + std::to_string(i)] = options.overrides[i];
            info.texts["process"] = process_tag();  // who runs it (live_owner)
            run_id = store->begin_run(info, params);
        }
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    // Checkpoints: where this run writes them, and the one a resumed run starts from (the
    // launcher picks it for its workers, so that all ranks start from the same step).
    std::optional<RunCheckpoints> checkpoints;
    std::optional<int64_t> resume_step;
    if (v.at("checkpoint.every_steps").as_int() > 0 || v.at("checkpoint.every_minutes").as_double() > 0 || resumed)
        checkpoints = RunCheckpoints::of(cfg, run_id);
    if (resumed) {
        if (const char* s = std::getenv("PLEXUS_RESUME_STEP")) {
            if (std::atoll(s) >= 0) resume_step = std::atoll(s);
        } else {
            resume_step = checkpoints->latest();
        }
        if (store) store->forget_metrics_from(run_id, resume_step.value_or(0));
        if (rank == 0)
            std::cout << "plexus: resuming run " << run_id << " from "
                      << (resume_step ? "its checkpoint at step " + std::to_string(*resume_step)
                                      : "the start (no complete checkpoint in " + checkpoints->dir().string() + ")")
                      << std::endl;
    }
    if (is_launcher) {
        try {
            return launch_workers(*store, run_id, options, static_cast<int>(info.world_size),
                                  {"PLEXUS_RESUME_STEP=" + std::to_string(resume_step ? *resume_step : -1)}, faults);
        } catch (const std::exception& e) {
            print_error(e);
            try {
                store->finish_run(run_id, "failed", error_text(e));
            } catch (...) {
            }
            return kFailed;
        }
    }

    auto prev_int = std::signal(SIGINT, on_signal);
    auto prev_term = std::signal(SIGTERM, on_signal);
    struct RestoreSignals {
        void (*i)(int), (*t)(int);
        ~RestoreSignals() { std::signal(SIGINT, i); std::signal(SIGTERM, t); }
    } restore{prev_int, prev_term};
    g_interrupts = 0;

    Job job;
    job.cfg = &cfg;
    job.info = &info;
    job.run_id = run_id;
    job.device = device;
    job.threads = threads;
    job.store = store.get();
    job.checkpoints = checkpoints;
    job.resume_step = resume_step;
    job.resumed = resumed.has_value();
    job.faults = faults;
    if (cluster) {
        job.sim_device = cluster->settings().device;
        job.shared_dataset = std::make_shared<std::shared_ptr<Dataset>>();
        job.sim_network = cluster->network().describe() + ", all-reduce " + sim::to_string(cluster->settings().algorithm);
        return run_simulated(job, *cluster);
    }
    RankEnv env;
    env.rank = rank;
    env.world = world;
    env.ranks_per_node = rendezvous ? rendezvous->local_world_size : 1;
    env.connect = [&rendezvous, &v, device]() -> Connection {
        if (!rendezvous) {
            std::shared_ptr<Transport> local = make_local_transport();
            return {local, make_collective_control(local)};
        }
        auto joined = join_c10d_job(*rendezvous, v.at("launch.backend").as_string(), device);
        return {joined.transport, make_store_control(joined.store, joined.control, v.at("train.log_every").as_int())};
    };
    return train_rank(job, env).code;
}

}  // namespace plexus::host
