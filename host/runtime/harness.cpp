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
    const double rss_before = current_rss_bytes();
    std::cout << "plexus: simulating " << n << " ranks in this process" << std::endl;
    cluster.run([&](int r) {
        results[static_cast<size_t>(r)] = train_rank(job, simulated_rank(cluster, r));
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
                throw Error(
                    path + " has a [grid] of " + std::to_string(points.size()) + " runs",
                    "run them all with `plexus sweep " + path + "`, or one with `plexus run " + path + " --point I`");
            if (options.point >= static_cast<int>(points.size()))
                throw Error("--point " + std::to_string(options.point) + ": " + path + " has " +
                                std::to_string(points.size()) + " grid point(s), 0.." +
                                std::to_string(points.size() - 1),
                            "`plexus sweep " + path + " --dry-run` lists them");
            exp = apply_grid_point(exp, points[static_cast<size_t>(options.point)], find);
            variant = points[static_cast<size_t>(options.point)].variant;
        }
        cfg = resolve(exp, find, [&](PluginKind k) { return registry.names(k); });
        if (resumed && cfg.hash != resumed->config_hash)
            throw Error("run " + std::to_string(resumed->id) + " was recorded with config hash " +
                            resumed->config_hash + "; " + path + " now gives " + cfg.hash,
                        "the experiment (or a file it extends) changed since the run started: restore it to resume");
        // A folder that cannot take checkpoints is a config error, found now, not a warning at
        // every checkpoint of a week-long run that then has nothing to resume from.
        if (cfg.values.at("checkpoint.every_steps").as_int() > 0 ||
            cfg.values.at("checkpoint.every_minutes").as_double() > 0) {
            const fs::path root = RunCheckpoints::of(cfg, 0).dir().parent_path();
            std::error_code ec;
            fs::create_directories(root, ec);
            const fs::path probe = root / (".plexus-write-test-" + std::to_string(getpid()));
            if (!ec) std::ofstream(probe).put('x');
            if (ec || !fs::exists(probe))
                throw Error(
                    "checkpoints cannot be written to " + root.string() + (ec ? ": " + ec.message() : ""),
                    "set checkpoint.dir to a folder you can write to (\"\" puts them beside the results database)");
            fs::remove(probe, ec);
        }
        mode = cfg.values.at("launch.mode").as_string();
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
                throw Error(
                    "launch.mode = \"" + mode + "\" but no rank is set in the environment",
                    "start plexus with torchrun, srun or mpirun, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT");
            rendezvous->timeout_s = cfg.values.at("launch.timeout").as_double();
        }
        if (cfg.values.at("train.steps").as_int() == 0 && cfg.values.at("train.tokens").as_int() == 0)
            throw Error("train.steps and train.tokens are both 0: the run would never stop", "set one of them");
        device = choose_device(cfg.values.at("train.device").as_string());
        // Several ranks on one machine: "cuda" is each rank's own GPU.
        if (device.is_cuda() && !device.has_index() && rendezvous)
            device = torch::Device(torch::kCUDA,
                                   static_cast<c10::DeviceIndex>(rendezvous->local_rank %
                                                                 std::max<int64_t>(1, torch::cuda::device_count())));
        gpu::set_current(device);
        if (mode == "sim") {
            // The "measured" profile needs this machine's per-core peak (cached after the first run).
            double core_flops = 0;
            if (cfg.values.at("sim.device").as_string() == "measured") core_flops = *cpu_peak(1, false, true).flops;
            cluster = std::make_unique<sim::Cluster>(sim::settings_from(cfg, core_flops));
            // Meta numerics: tensors with shapes and no data. Compute and communication are
            // charged as usual; losses are NaN; a 1.3B-parameter model costs no memory per rank.
            if (cfg.values.at("sim.numerics").as_string() == "meta") device = torch::Device(torch::kMeta);
        }
        const int fault_ranks = mode == "local" || mode == "sim"
                                    ? static_cast<int>(cfg.values.at("launch.ranks").as_int())
                                : rendezvous ? rendezvous->world_size
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
    const int threads =
        asked > 0 ? static_cast<int>(std::min<int64_t>(asked, machine)) : std::max(1, cores / local_ranks);
    set_compute_threads(threads);

    // Phase 2: the run exists; from here every failure is recorded on it.
    RunInfo info;
    info.name = v.at("name").as_string().empty() ? fs::path(path).stem().string() : v.at("name").as_string();
    info.config_hash = cfg.hash;
    info.config_json = cfg.to_json();
    info.toml = exp.text;
    info.seed = v.at("train.seed").as_int();
    for (const auto& [section, d] : cfg.plugins)
        info.plugins += (info.plugins.empty() ? "" : " ") + section + "=" + d->name + "@" + d->version;
    info.fingerprint = PluginRegistry::host_fingerprint();
    info.device = device.str() + (device.is_cpu() ? " (" + std::to_string(threads) + " threads)" : "");
    if (v.at("train.precision").as_string() != "fp32") info.device += " " + v.at("train.precision").as_string();
    info.host = hostname();
    info.git_rev = git_revision(fs::absolute(path).parent_path().string());
    info.command = options.command_line;
    info.world_size = is_launcher || cluster ? v.at("launch.ranks").as_int() : world;
    if (const char* sweep = std::getenv("PLEXUS_SWEEP_ID"); sweep && std::atoll(sweep) > 0)
        info.sweep_id = std::atoll(sweep);
    if (cluster)
        info.device += ", simulating " + std::to_string(cluster->size()) + " x " + cluster->settings().device.name;
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
            } catch (...) {}
            return kFailed;
        }
    }

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
        job.sim_network =
            cluster->network().describe() + ", all-reduce " + sim::to_string(cluster->settings().algorithm);
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
