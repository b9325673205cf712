#include "runtime/harness.hpp"
#include "base/cores.hpp"
#include "base/shell.hpp"

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

#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "runtime/checkpoint.hpp"
#include "runtime/control.hpp"
#include "runtime/trainer.hpp"
#include "config/faults.hpp"
#include "device/cuda.hpp"
#include "runtime/loader.hpp"
#include "device/block_cache.hpp"
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
    return run_command("git -C " + shell_quoted(dir) + " rev-parse --short HEAD 2>/dev/null").text;
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
    return live_process(store.summary_text(run.id, "process"), run.heartbeat);
}

std::optional<std::string> live_process(const std::string& tag, double last_seen) {
    const auto first = tag.find(':'), last = tag.rfind(':');
    if (tag.empty() || first == last) return std::nullopt;
    const std::string host = tag.substr(0, first), pid = tag.substr(first + 1, last - first - 1),
                      start = tag.substr(last + 1);
    if (host == hostname()) {
        if (start.empty() || start_time_of(pid) != start) return std::nullopt;
        return "process " + pid + " on this host";
    }
    const double age = ResultsStore::now() - last_seen;
    if (age > kHeartbeatSeconds) return std::nullopt;
    return "process " + pid + " on " + host + " (its last heartbeat " + std::to_string(static_cast<int>(age)) +
           " s ago)";
}

namespace {

using Clock = std::chrono::steady_clock;

void on_signal(int) {
    if (++interrupt_requests() > 1) std::_Exit(kInterrupted);  // a second Ctrl-C: leave at once
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

}  // namespace

bool is_progress_mode(const std::string& mode) {
    return mode == "auto" || mode == "bar" || mode == "lines" || mode == "none";
}

namespace {

// The launcher of a local multi-process run: starts the workers (this same command line with a
// rank in the environment), and if one fails, stops the rest and records why on the run.
int launch_workers(ResultsStore& store, int64_t run_id, const RunOptions& options, int ranks,
                   const std::vector<std::string>& extra_env, const std::vector<Fault>& faults) {
    const int port = free_port();
    std::vector<std::string> env = {"PLEXUS_WORKER=1", "PLEXUS_RUN_ID=" + std::to_string(run_id)};
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    std::cout << "plexus: launching " << ranks << " local workers for run " << run_id
              << " (rendezvous 127.0.0.1:" << port << ")" << std::endl;
    // Ctrl-C reaches every worker from the terminal; each records itself as interrupted. The
    // launcher must outlive them to report (workers die with it: PR_SET_PDEATHSIG).
    std::signal(SIGINT, SIG_IGN);
    auto failure = run_local_workers(options.argv, ranks, port, env, {kInterrupted, kDiverged});
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
                           ? "stopped by SIGTERM " + last + " (rank " + std::to_string(failure.rank) +
                                 " exited with code " + std::to_string(worker_code) + ")"
                           : "rank " + std::to_string(failure.rank) + " exited with code " +
                                 std::to_string(worker_code) + " " + last + "; the other workers were stopped";
    for (const auto& f : faults)
        if (f.kind == "kill" && f.rank == failure.rank && failure.exit_code == kKilled)
            what += " (killed by [[faults]]: " + f.text + ")";
    if (!failure.stopped_ranks.empty()) {
        std::vector<std::string> ranks;
        for (int r : failure.stopped_ranks) ranks.push_back(std::to_string(r));
        what = std::string(ranks.size() == 1 ? "rank " : "ranks ") + join(ranks, ", ") +
               " stopped responding (process stopped: SIGSTOP or a debugger); " + what +
               " (it timed out waiting, see launch.timeout)";
    }
    // Rank 0 may have recorded its own view first (a peer's connection reset): keep it, after ours.
    const auto run = store.get_run(run_id);
    std::string error = what;
    if (run && run->status != "running" && !run->error.empty()) error += "; rank 0 reported: " + run->error;
    const bool interrupted = failure.exit_code == kInterrupted;
    store.finish_run(run_id,
                     failure.exit_code == kDiverged ? "diverged"
                     : interrupted                  ? "interrupted"
                                                    : "failed",
                     error);
    std::cerr << (interrupted ? "run " : "error: run ") << run_id << ": " << what << "\n";
    return failure.exit_code == kDiverged ? kDiverged : interrupted ? kInterrupted : kFailed;
}

// `[launch] mode = "sim"`: every rank a thread of this process on the simulated cluster.
int run_simulated(const Job& job, sim::Cluster& cluster) {
    const int n = cluster.size();
    std::vector<RankResult> results(static_cast<size_t>(n));
    // One malloc arena: only one rank thread runs at a time, so there is no contention to avoid,
    // and an arena per thread keeps each one's freed activations (measured: 16 quickstart ranks
    // took 1.9 GB with the default arenas, 0.6 GB with one).
    mallopt(M_ARENA_MAX, 1);
    use_cpu_block_cache();  // tensors: exact-size reuse across ranks (device/block_cache.hpp)
    const double rss_before = current_rss_bytes();
    std::cout << "plexus: simulating " << n << " ranks in this process" << std::endl;
    try {
        cluster.run([&](int r) {
            results[static_cast<size_t>(r)] = train_rank(job, simulated_rank(cluster, r));
            // A failed or killed rank fails what its peers wait for (they then record why, rank 0
            // included, unless the strategy trains on without it).
            const int code = results[static_cast<size_t>(r)].code;
            if (code == kFailed || code == kKilled) throw Error(results[static_cast<size_t>(r)].error);
        });
    } catch (const std::exception& e) {  // its rank threads could not start: no rank recorded anything
        print_error(e);
        try {
            job.store->finish_run(job.run_id, "failed", error_text(e));
        } catch (...) {}
        return kFailed;
    }
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
            job.store->finish_run(job.run_id, "failed",
                                  results[0].error + "; rank 0 records the run, so it ends with it");
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

// An experiment file's plugin_path names code to run, so it is honoured only with the user's
// consent (--allow-plugin-path, or PLEXUS_ALLOW_PLUGIN_PATH=1). A relative folder is the
// file's, as `extends` is; one given with --set is the current directory's.
void scan_plugins(const Experiment& exp, PluginRegistry& registry) {
    auto search = PluginRegistry::default_search_path();
    if (auto it = exp.settings.find("plugin_path"); it != exp.settings.end()) {
        const auto& [value, where] = it->second;
        if (value.type() != ValueType::List)
            throw Error(where.str() + ": 'plugin_path' must be a list, got " + to_string(value.type()),
                        "plugin_path = [\"my_plugins\"]: a list of folders");
        const auto& items = value.as_list();
        const char* consent = std::getenv(kAllowPluginPathVariable);
        if (!items.empty() && !(consent && std::string(consent) == "1"))
            throw Error(where.str() +
                            ": plugin_path asks to load plugins from folders the experiment file names, "
                            "which runs their code",
                        "if you trust this file, run it with --allow-plugin-path (or " +
                            std::string(kAllowPluginPathVariable) +
                            "=1); or put the folders in PLEXUS_PLUGIN_PATH yourself");
        const auto base = where.file == "--set" ? fs::path() : fs::path(where.file).parent_path();
        for (const auto& item : items) {
            if (item.type() != ValueType::String)
                throw Error(where.str() + ": 'plugin_path' must be a list of folders, got " + item.to_text() + " in it",
                            "plugin_path = [\"my_plugins\"]");
            const fs::path folder = item.as_string();
            search.push_back(folder.is_absolute() ? folder.string() : (base / folder).string());
        }
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
    if (!internal_variable("PLEXUS_WORKER"))  // (a worker's launcher owns the run)
        if (auto owner = live_owner(store, *run))
            throw Error("run " + id + " is still running (" + *owner + ")",
                        "wait for it, or stop it first (Ctrl-C writes a checkpoint), then resume");
    run->texts["process"] = store.summary_text(o.resume_run, "process");  // taken over atomically (open_run_row)
    if (const char* claim = internal_variable("PLEXUS_CLAIM")) run->claim = claim;  // a sweep resumes it
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
    o.preset = store.summary_text(o.resume_run, "resume.preset");
    o.overrides.clear();
    for (int i = 0;; ++i) {
        auto s = store.summary_text(o.resume_run, "resume.set." + std::to_string(i));
        if (s.empty()) break;
        o.overrides.push_back(s);
    }
    o.db = db;
    return *run;
}

namespace {

// A run from its file, checked before it exists in the database (phase 1), then recorded and
// trained (phase 2, where every failure is recorded on the run).
struct PreparedRun {
    RunOptions options;
    std::string path;
    std::optional<RunInfo> resumed;
    PluginRegistry registry;  // outlives cfg, which points at its descriptors
    Experiment exp;
    ResolvedConfig cfg;
    std::string mode;
    std::vector<std::pair<std::string, std::string>> choices;  // the grid point's named axes
    bool is_launcher = false;
    std::optional<Rendezvous> rendezvous;
    torch::Device device = torch::kCPU;
    std::vector<Fault> faults;
    std::unique_ptr<sim::Cluster> cluster;
    std::unique_ptr<ResultsStore> store;
    std::shared_ptr<const NamedTensors> initial_weights;  // train.init_from's

    int rank() const { return rendezvous ? rendezvous->rank : 0; }
    int world() const { return rendezvous ? rendezvous->world_size : 1; }
};

// A resumed run's grid point: the one it recorded or, where values were since added to or
// removed from the grid (which renumbers the points), the one that now gives the run's config
// hash. None: the recorded one, and the hash check says what changed.
template <typename Points, typename Find>
int resumed_point(PreparedRun& r, const Points& points, const Find& find) {
    auto gives_run = [&](size_t i) {
        try {
            return resolve(apply_grid_point(r.exp, points[i], find), r.registry).hash == r.resumed->config_hash;
        } catch (const std::exception&) { return false; }  // a point that does not resolve is not it
    };
    const auto recorded = static_cast<size_t>(r.options.point);
    if (recorded < points.size() && gives_run(recorded)) return r.options.point;
    for (size_t i = 0; i < points.size(); ++i)
        if (i != recorded && gives_run(i)) return static_cast<int>(i);
    return r.options.point;
}

// The experiment with its overrides and grid point, resolved against the plugins; a resumed
// run must resolve to the configuration it was recorded with.
void load_and_resolve(PreparedRun& r) {
    if (r.options.resume_run > 0) r.resumed = recall_run(r.options, r.path);
    r.exp = load_experiment(r.path);
    if (!r.options.preset.empty()) apply_preset(r.exp, r.options.preset);
    for (const auto& o : r.options.overrides) apply_override(r.exp, o);
    // Taken as they are (no TOML escapes: a path may hold backslashes or quotes).
    if (!r.options.db.empty()) r.exp.settings["results.db"] = Setting{Value(r.options.db), SourceLoc{"--db", 0, 0}};
    if (!r.options.progress.empty())
        r.exp.settings["results.progress"] = Setting{Value(r.options.progress), SourceLoc{"--progress", 0, 0}};
    scan_plugins(r.exp, r.registry);
    auto find = [&](PluginKind k, const std::string& n) { return r.registry.find(k, n); };
    if (!r.exp.grid.empty() || r.options.point >= 0) {
        const auto points = expand_grid(r.exp);
        if (r.options.point < 0)
            throw Error(
                r.path + " has a [grid] of " + std::to_string(points.size()) + " runs",
                "run them all with `plexus sweep " + r.path + "`, or one with `plexus run " + r.path + " --point I`");
        if (r.resumed) r.options.point = resumed_point(r, points, find);
        if (r.options.point >= static_cast<int>(points.size()))
            throw Error("--point " + std::to_string(r.options.point) + ": " + r.path + " has " +
                            std::to_string(points.size()) + " grid point(s), 0.." + std::to_string(points.size() - 1),
                        "`plexus sweep " + r.path + " --dry-run` lists them");
        r.exp = apply_grid_point(r.exp, points[static_cast<size_t>(r.options.point)], find);
        r.choices = points[static_cast<size_t>(r.options.point)].choices;
    }
    r.cfg = resolve(r.exp, r.registry);
    if (r.resumed && r.cfg.hash != r.resumed->config_hash)
        throw Error("run " + std::to_string(r.resumed->id) + " was recorded with config hash " +
                        r.resumed->config_hash + "; " + r.path + " now gives " + r.cfg.hash,
                    "the experiment (or a file it extends) changed since the run started: restore it to resume");
}

// A folder that cannot take checkpoints is a config error, found now, not a warning at every
// checkpoint of a week-long run that then has nothing to resume from.
void check_checkpoint_folder(const ResolvedConfig& cfg) {
    if (cfg.host.checkpoint.every_steps <= 0 && cfg.host.checkpoint.every_minutes <= 0) return;
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

// How and where the run executes: the launch mode, this process's rank, the device, the fault
// plan, the simulated cluster, and the database (the launcher's or rank 0's only).
void choose_launch(PreparedRun& r) {
    const auto& h = r.cfg.host;
    r.mode = h.launch.mode;
    // A thread per simulated rank, a process per local one: beyond these the machine gives out
    // (threads, memory) long before the run says anything useful.
    if (r.mode == "sim" && h.launch.ranks > 16384)
        throw Error(
            "launch.ranks = " + std::to_string(h.launch.ranks) + " simulated ranks: at most 16384 (one thread each)",
            "simulate fewer ranks; scaling laws extrapolate from a few sizes");
    if (r.mode == "local" && h.launch.ranks > 256)
        throw Error("launch.ranks = " + std::to_string(h.launch.ranks) + " local processes: at most 256",
                    "more ranks than that on one machine is a job for launch.mode = \"sim\"");
    r.is_launcher = r.mode == "local" && !internal_variable("PLEXUS_WORKER");
    if (r.is_launcher) catch_stop_requests();  // a SIGTERM from here on stops the workers it starts
    if (r.mode == "env" || (r.mode == "local" && !r.is_launcher)) {
        r.rendezvous = rendezvous_from_env();
        if (!r.rendezvous)
            throw Error(
                "launch.mode = \"" + r.mode + "\" but no rank is set in the environment",
                "start plexus with torchrun, srun or mpirun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
        r.rendezvous->timeout_s = h.launch.timeout;
    }
    if (h.train.steps == 0 && h.train.tokens == 0)
        throw Error("train.steps and train.tokens are both 0: the run would never stop", "set one of them");
    r.device = choose_device(h.train.device);
    // Several ranks on one machine: "cuda" is each rank's own GPU.
    if (r.device.is_cuda() && !r.device.has_index() && r.rendezvous)
        r.device = torch::Device(torch::kCUDA,
                                 static_cast<c10::DeviceIndex>(r.rendezvous->local_rank %
                                                               std::max<int64_t>(1, torch::cuda::device_count())));
    gpu::set_current(r.device);
    const bool local_or_sim = r.mode == "local" || r.mode == "sim";
    const int fault_ranks = local_or_sim ? static_cast<int>(h.launch.ranks) : r.world();
    r.faults = fault_plan(r.cfg.values, fault_ranks, r.mode == "sim");
    if (r.mode == "sim") {
        // The "measured" profile needs this machine's per-core peak (cached after the first run).
        double core_flops = 0;
        if (r.cfg.values.at("sim.device").as_string() == "measured") core_flops = *cpu_peak(1, false, true).flops;
        r.cluster = std::make_unique<sim::Cluster>(sim::settings_from(r.cfg, core_flops, r.faults));
        // Meta numerics: tensors with shapes and no data. Compute and communication are
        // charged as usual; losses are NaN; a 1.3B-parameter model costs no memory per rank.
        if (r.cfg.values.at("sim.numerics").as_string() == "meta") r.device = torch::Device(torch::kMeta);
    }
    if (!r.rendezvous || r.rendezvous->rank == 0) r.store = std::make_unique<ResultsStore>(h.results.db);
}

// Compute threads for this process: train.threads, or its share of the cores (a sweep running
// several runs at once gives each its share), never more than its affinity mask holds.
int compute_threads(const PreparedRun& r) {
    const int local_ranks = r.is_launcher  ? static_cast<int>(r.cfg.host.launch.ranks)
                            : r.rendezvous ? r.rendezvous->local_world_size
                                           : 1;
    const int machine = usable_cores();  // the affinity mask: taskset, Slurm, a container
    int cores = machine;
    if (const char* share = internal_variable("PLEXUS_CORES"); share && std::atoi(share) > 0) cores = std::atoi(share);
    const int64_t asked = r.cfg.host.train.threads;
    if (asked > machine)
        std::cerr << "warning: train.threads = " << asked << " is more than the " << machine
                  << " cores this process may use (its CPU affinity); using " << machine << "\n";
    return asked > 0 ? static_cast<int>(std::min<int64_t>(asked, machine)) : std::max(1, cores / local_ranks);
}

// The run's row: what ran, where, with which plugins.
RunInfo describe_run(const PreparedRun& r, int threads) {
    const auto& h = r.cfg.host;
    RunInfo info;
    const std::string& name = r.cfg.values.at("name").as_string();
    info.name = name.empty() ? fs::path(r.path).stem().string() : name;
    info.config_hash = r.cfg.hash;
    info.config_json = r.cfg.to_json();
    info.toml = r.exp.text;
    info.seed = h.train.seed;
    for (const auto& [section, d] : r.cfg.plugins)
        info.plugins += (info.plugins.empty() ? "" : " ") + section + "=" + d->name + "@" + d->version;
    info.fingerprint = PluginRegistry::host_fingerprint();
    info.device = r.device.str() + (r.device.is_cpu() ? " (" + std::to_string(threads) + " threads)" : "");
    if (h.train.precision != "fp32") info.device += " " + h.train.precision;
    info.host = hostname();
    info.git_rev = git_revision(fs::absolute(r.path).parent_path().string());
    info.command = r.options.command_line;
    info.world_size = r.is_launcher || r.cluster ? h.launch.ranks : r.world();
    if (const char* sweep = internal_variable("PLEXUS_SWEEP_ID"); sweep && std::atoll(sweep) > 0)
        info.sweep_id = std::atoll(sweep);
    if (!r.options.in_sweep.empty() && r.store)  // a Slurm array task: its own database, the sweep's name
        info.sweep_id = r.store->ensure_sweep(r.options.in_sweep, r.exp.text, info.git_rev, info.host);
    if (const char* claim = internal_variable("PLEXUS_CLAIM")) info.claim = claim;
    if (r.cluster)
        info.device += ", simulating " + std::to_string(r.cluster->size()) + " x " + r.cluster->settings().device.name;
    return info;
}

// The run's id: the resumed run's, the launcher's (a worker), or a new row with what
// `plexus run --resume` needs to build the same run again (a run killed at any moment resumes).
int64_t open_run_row(PreparedRun& r, RunInfo& info) {
    if (r.resumed) {
        const std::string id = std::to_string(r.resumed->id);
        if (r.store && internal_variable("PLEXUS_WORKER")) r.store->reopen_run(r.resumed->id);
        // Two `--resume`s of one run at once: the first to take it over runs it, the other stops
        // here, before it touches a checkpoint or a metric row.
        if (r.store && !internal_variable("PLEXUS_WORKER") &&
            !r.store->take_over_run(*r.resumed, r.resumed->texts["process"], process_tag())) {
            auto now = r.store->get_run(r.resumed->id);
            const auto owner = now ? live_owner(*r.store, *now) : std::nullopt;
            throw Error("run " + id + " was taken over by another process while this one started (" +
                            owner.value_or("it has ended since") + ")",
                        "`plexus show " + id + "` says where it stands; resume it once it has stopped");
        }
        return r.resumed->id;
    }
    if (const char* id = internal_variable("PLEXUS_RUN_ID"); id && !r.is_launcher) return std::atoll(id);
    if (!r.store) return 0;
    // The choices of the grid's named axes are recorded as settings ("variant" = "ddp";
    // leaderboards group by them); they are not part of the configuration hash, which their
    // settings already fix.
    auto params = r.cfg.values;
    for (const auto& [axis, choice] : r.choices) params[axis] = Value(choice);
    info.texts["resume.file"] = fs::absolute(r.path).string();
    if (r.options.point >= 0) info.texts["resume.point"] = std::to_string(r.options.point);
    if (!r.options.preset.empty()) info.texts["resume.preset"] = r.options.preset;
    for (size_t i = 0; i < r.options.overrides.size(); ++i)
        info.texts["resume.set." + std::to_string(i)] = r.options.overrides[i];
    info.texts["process"] = process_tag();  // who runs it (live_owner)
    return r.store->begin_run(info, params);
}

// The checkpoint a resume starts from: `from_step` if given (it must be complete and intact), else
// the newest intact one, saying which damaged ones were passed over (`keep` > 1 exists for this).
std::optional<int64_t> resume_checkpoint(const RunCheckpoints& checkpoints, int64_t from_step) {
    const auto complete = checkpoints.complete_steps();
    std::vector<std::string> listed;
    for (auto s : complete) listed.push_back(std::to_string(s));
    const std::string available = complete.empty() ? "none" : join(listed, ", ");
    if (from_step >= 0) {
        if (const std::string problem = checkpoints.problem_of(from_step); !problem.empty())
            throw Error("--from-step " + std::to_string(from_step) + ": the checkpoint at that step " +
                            (problem == "it is not complete" ? std::string("does not exist or is not complete")
                                                             : "is damaged: " + problem),
                        "complete checkpoints of this run, by step: " + available);
        return from_step;
    }
    std::vector<std::string> skipped;
    const auto step = checkpoints.latest_intact(skipped);
    for (const auto& s : skipped) std::cerr << "warning: " << s << "; trying an older one\n";
    if (!step && !skipped.empty())
        throw Error("no checkpoint of this run reads back whole (" + join(skipped, "; ") + ")",
                    "--resume starts over only when there is no checkpoint at all; delete " +
                        checkpoints.dir().string() + " to start the run from step 0");
    return step;
}

// Where this run writes checkpoints, and the step a resumed run starts from (the launcher picks
// it for its workers, so that all ranks start from the same step).
void find_resume_point(PreparedRun& r, int64_t run_id, Job& job) {
    const auto& c = r.cfg.host.checkpoint;
    if (c.every_steps > 0 || c.every_minutes > 0 || c.keep_final || r.resumed)
        job.checkpoints = RunCheckpoints::of(r.cfg, run_id);
    if (!r.resumed) return;
    if (const char* s = internal_variable("PLEXUS_RESUME_STEP")) {
        if (std::atoll(s) >= 0) job.resume_step = std::atoll(s);
    } else {
        job.resume_step = resume_checkpoint(*job.checkpoints, r.options.from_step);
    }
    // Only now, with the checkpoint read back whole: the curves past it go.
    if (r.store) r.store->forget_metrics_from(run_id, job.resume_step.value_or(0));
    if (r.rank() == 0)
        std::cout << "plexus: resuming run " << run_id << " from "
                  << (job.resume_step ? "its checkpoint at step " + std::to_string(*job.resume_step)
                                      : "the start (no complete checkpoint in " + job.checkpoints->dir().string() + ")")
                  << std::endl;
}

// This process trains: all simulated ranks, or its own rank (alone, or joined to the others).
int train_here(PreparedRun& r, Job& job) {
    auto prev_int = std::signal(SIGINT, on_signal);
    auto prev_term = std::signal(SIGTERM, on_signal);
    struct RestoreSignals {
        void (*i)(int), (*t)(int);
        ~RestoreSignals() {
            std::signal(SIGINT, i);
            std::signal(SIGTERM, t);
        }
    } restore{prev_int, prev_term};
    interrupt_requests() = 0;
    if (r.cluster) {
        job.sim_device = r.cluster->settings().device;
        job.shared_dataset = std::make_shared<std::shared_ptr<Dataset>>();
        job.sim_network =
            r.cluster->network().describe() + ", all-reduce " + sim::to_string(r.cluster->settings().algorithm);
        return run_simulated(job, *r.cluster);
    }
    RankEnv env;
    env.rank = r.rank();
    env.world = r.world();
    env.ranks_per_node = r.rendezvous ? r.rendezvous->local_world_size : 1;
    const auto& rendezvous = r.rendezvous;
    const HostSettings& h = r.cfg.host;
    const torch::Device device = r.device;
    env.connect = [&rendezvous, &h, device]() -> Connection {
        if (!rendezvous) {
            std::shared_ptr<Transport> local = make_local_transport();
            return {local, make_collective_control(local)};
        }
        auto joined = join_c10d_job(*rendezvous, h.launch.backend, device);
        return {joined.transport, make_store_control(joined.store, joined.control, h.train.log_every)};
    };
    return train_rank(job, env).code;
}

}  // namespace

int run_experiment(const std::string& file, const RunOptions& given) {
    PreparedRun r;
    r.options = given;
    r.path = file;
    try {  // phase 1: everything that can be checked before the run exists in the database
        load_and_resolve(r);
        check_checkpoint_folder(r.cfg);
        choose_launch(r);
        if (const auto& from = r.cfg.host.train.init_from; !from.empty())  // read (and checked) once, here
            r.initial_weights = std::make_shared<const NamedTensors>(
                initial_weights(from, r.cfg.host.results.db, fs::absolute(r.path).parent_path().string()));
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    const int threads = compute_threads(r);
    set_compute_threads(threads);

    // Phase 2: the run exists; from here every failure is recorded on it.
    RunInfo info = describe_run(r, threads);
    Job job;
    try {
        job.run_id = open_run_row(r, info);
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    find_resume_point(r, job.run_id, job);
    if (r.is_launcher) {
        try {
            return launch_workers(*r.store, job.run_id, r.options, static_cast<int>(info.world_size),
                                  {"PLEXUS_RESUME_STEP=" + std::to_string(job.resume_step ? *job.resume_step : -1)},
                                  r.faults);
        } catch (const std::exception& e) {
            print_error(e);
            try {
                r.store->finish_run(job.run_id, "failed", error_text(e));
            } catch (...) {}
            return kFailed;
        }
    }
    job.cfg = &r.cfg;
    job.info = &info;
    job.device = r.device;
    job.threads = threads;
    job.store = r.store.get();
    job.initial_weights = r.initial_weights;
    job.resumed = r.resumed.has_value();
    job.faults = r.faults;
    return train_here(r, job);
}

}  // namespace plexus::host
