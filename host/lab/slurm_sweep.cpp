#include "lab/slurm_sweep.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>

#include <plexus/error.hpp>

#include "base/shell.hpp"
#include "base/text.hpp"
#include "lab/sweep_plan.hpp"
#include "runtime/loader.hpp"
#include "store/results.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

// Runs a shell command, stdout and stderr together.
CommandOutput capture(const std::string& command) { return run_command(command + " 2>&1"); }

// Where the array tasks' databases, scripts and logs go: beside the sweep's database, one folder
// per database and sweep (two databases in one folder keep their sweeps apart).
fs::path slurm_folder(const SweepPlan& plan) {
    const fs::path db = fs::absolute(plan.db);
    return db.parent_path() / "slurm" / db.stem() / plan.name;
}

// "task_123_4.db" -> "123_4", the array task that wrote it.
std::string task_of(const fs::path& db) {
    const std::string stem = db.stem().string();
    return stem.rfind("task_", 0) == 0 ? stem.substr(5) : "";
}

// Whether Slurm still holds the array task (pending, running, completing); nullopt where squeue
// cannot say (not installed, the controller unreachable).
std::optional<bool> task_alive(const std::string& task) {
    const auto r = capture("squeue -h -j " + task + " -o %T");
    if (r.code != 0) {
        if (r.text.find("Invalid job id") != std::string::npos) return false;  // long gone
        return std::nullopt;
    }
    return !r.text.empty();
}

struct Fold {
    int databases = 0, marked = 0;
    ResultsStore::MergeCounts counts;
};

// Every array task's database folded into the sweep's; a run whose task ended while it was
// still "running" (killed before it could record its end) is marked interrupted first.
Fold fold_task_databases(ResultsStore& store, const fs::path& folder) {
    Fold fold;
    std::error_code ec;
    std::vector<fs::path> dbs;
    for (const auto& entry : fs::directory_iterator(folder, ec))
        if (entry.path().extension() == ".db" && !task_of(entry.path()).empty()) dbs.push_back(entry.path());
    std::sort(dbs.begin(), dbs.end());
    for (const auto& db : dbs) {
        {
            ResultsStore task(db.string(), ResultsStore::Open::MustExist);
            for (const auto& run : task.list_runs(1 << 30)) {
                if (run.status != "running") continue;
                const auto alive = task_alive(task_of(db));
                if (!alive)
                    std::cout << "  warning: squeue cannot say whether array task " << task_of(db)
                              << " still runs: run " << run.id << " of " << db.filename().string()
                              << " stays \"running\" (its point is not submitted again until it ends)\n";
                if (alive && !*alive) {
                    task.finish_run(run.id, "interrupted",
                                    "its Slurm array task " + task_of(db) +
                                        " ended without recording an end (scancel, the time limit or a node failure)");
                    ++fold.marked;
                }
            }
        }
        const auto c = store.merge_from(db.string());
        fold.counts.added += c.added, fold.counts.updated += c.updated, fold.counts.unchanged += c.unchanged;
        ++fold.databases;
    }
    return fold;
}

void print_fold(const Fold& f, const fs::path& folder) {
    if (!f.databases) return;
    std::cout << "  folded in " << f.databases << " array-task database(s) from " << folder.string() << ": "
              << f.counts.added << " run(s) new, " << f.counts.updated << " updated"
              << (f.marked ? ", " + std::to_string(f.marked) + " marked interrupted (their task had ended)" : "")
              << "\n";
}

// The options a later submission repeats (the follow-up job after a tuning array).
std::vector<std::string> resubmit_arguments(const SweepOptions& o) {
    std::vector<std::string> a;
    for (const auto& s : o.overrides) a.insert(a.end(), {"--set", s});
    if (!o.preset.empty()) a.insert(a.end(), {"--preset", o.preset});
    if (!o.db.empty()) a.insert(a.end(), {"--db", fs::absolute(o.db).string()});
    if (o.retry_failed) a.emplace_back("--retry-failed");
    if (!o.partition.empty()) a.insert(a.end(), {"--partition", o.partition});
    if (!o.time_limit.empty()) a.insert(a.end(), {"--time", o.time_limit});
    if (o.cpus_per_task) a.insert(a.end(), {"--cpus-per-task", std::to_string(o.cpus_per_task)});
    if (o.gpus_per_task) a.insert(a.end(), {"--gpus-per-task", std::to_string(o.gpus_per_task)});
    if (o.ranks_per_point > 1) a.insert(a.end(), {"--ranks-per-point", std::to_string(o.ranks_per_point)});
    return a;
}

std::string joined_quoted(const std::vector<std::string>& args) {
    std::string s;
    for (const auto& a : args) s += " " + shell_quoted(a);
    return s;
}

std::string sbatch_resources(const SweepOptions& o) {
    std::string s;
    if (!o.partition.empty()) s += " --partition=" + shell_quoted(o.partition);
    if (!o.time_limit.empty()) s += " --time=" + shell_quoted(o.time_limit);
    return s;
}

// The largest array Slurm accepts here (MaxArraySize - 1 indices), 1000 by default.
size_t max_array_tasks() {
    const auto r = capture("scontrol show config");
    const size_t at = r.text.find("MaxArraySize");
    if (r.code != 0 || at == std::string::npos) return 1000;
    const size_t eq = r.text.find('=', at);
    const long n = eq == std::string::npos ? 0 : std::atol(r.text.c_str() + eq + 1);
    return n > 1 ? static_cast<size_t>(n - 1) : 1000;
}

// The array task's script: its points (`per_task` consecutive lines of the list; one, unless the
// sweep has more points than an array may have tasks), its own database, the sweep's name.
std::string task_script(const std::string& path, const SweepPlan& plan, const SweepOptions& o, const fs::path& points,
                        const fs::path& folder, size_t per_task) {
    std::string run = shell_quoted(fs::read_symlink("/proc/self/exe").string()) + " run " +
                      shell_quoted(fs::absolute(path)) + " --point \"$point\" --db \"$db\" --in-sweep " +
                      shell_quoted(plan.name) + " --progress lines";
    if (!o.preset.empty()) run += " --preset " + shell_quoted(o.preset);
    for (const auto& s : o.overrides) run += " --set " + shell_quoted(s);
    if (o.ranks_per_point > 1)
        run = "srun --ntasks=" + std::to_string(o.ranks_per_point) + " --kill-on-bad-exit=1 " + run +
              " --set launch.mode='\"env\"'";
    const std::string per = std::to_string(per_task);
    std::string text =
        "#!/bin/bash\n# plexus sweep '" + plan.name +
        "' on Slurm: an array task runs its grid points (written by plexus sweep --slurm)\nset -u\ncd " +
        shell_quoted(fs::current_path().string()) + " || exit 1\ndb=" + shell_quoted(folder.string()) +
        "/task_${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}.db\nfirst=$((SLURM_ARRAY_TASK_ID * " + per +
        " + 1))\npoints=$(sed -n \"${first},$((first + " + per + " - 1))p\" " + shell_quoted(points.string()) +
        ")\n[ -n \"$points\" ] || { echo \"no grid point for array task $SLURM_ARRAY_TASK_ID\" >&2; exit 1; }\n";
    // One point: exec, so that scancel's SIGTERM reaches plexus itself (it checkpoints and
    // records the run interrupted); several: each in turn (the signal reaches the whole group).
    if (per_task == 1) return text + "point=$points\nexec " + run + "\n";
    return text + "status=0\nfor point in $points; do\n  " + run + " || status=$?\ndone\nexit $status\n";
}

// The points this submission runs, and whether they are [grid.tune]'s tuning points.
std::vector<const Point*> points_to_submit(SweepPlan& plan, ResultsStore& store, const SweepOptions& o, bool& tuning) {
    auto wanted = [&](const Point& p) { return p.last_status != "running" && should_run(p, o.retry_failed); };
    std::vector<const Point*> todo;
    tuning = !plan.exp.tune.empty() && !tuning_done(plan);
    if (!plan.exp.tune.empty() && !tuning) {
        std::cout << "chosen by " << plan.exp.tune.metric << " on the tuning seeds:\n";
        for (const auto& line : choose_tuned(plan, store)) std::cout << "  " << line << "\n";
    }
    for (const auto& p : plan.points) {
        const bool phase = plan.exp.tune.empty() || (tuning ? p.grid.tuning : !p.grid.tuning && p.chosen);
        if (phase && wanted(p)) todo.push_back(&p);
    }
    return todo;
}

std::string submit(const std::string& command) {
    const auto r = capture(command);
    if (r.code != 0)
        throw Error("sbatch failed (exit " + std::to_string(r.code) + "): " + r.text,
                    "check the partition, the time limit and that Slurm's controller answers (sinfo)");
    return r.text.substr(0, r.text.find(';'));  // --parsable: "JOBID[;CLUSTER]"
}

struct Planned {
    PluginRegistry registry;
    SweepPlan plan;
    std::unique_ptr<ResultsStore> store;
    fs::path folder;
    History history;
};

void prepare(Planned& p, const std::string& path, const SweepOptions& o) {
    p.plan = plan_sweep(path, o, p.registry);
    std::cout << "sweep '" << p.plan.name << "': " << p.plan.points.size() << " point(s)\n";
    p.store = std::make_unique<ResultsStore>(p.plan.db);
    p.folder = slurm_folder(p.plan);
    print_fold(fold_task_databases(*p.store, p.folder), p.folder);
    p.store->ensure_sweep(p.plan.name, p.plan.exp.text, "", "");
    p.history = recall(*p.store, p.plan);
}

}  // namespace

int submit_slurm_sweep(const std::string& path, const SweepOptions& o) {
    try {
        Planned p;
        prepare(p, path, o);
        bool tuning = false;
        const auto todo = points_to_submit(p.plan, *p.store, o, tuning);
        if (todo.empty()) {
            std::cout << "nothing to submit" << (tuning ? " (tuning runs still in Slurm's queue)" : "")
                      << "; `plexus sweep " << path << " --status` shows where the sweep stands\n";
            return 0;
        }
        fs::create_directories(p.folder / "logs");
        const size_t per_task = (todo.size() + max_array_tasks() - 1) / max_array_tasks();
        const size_t tasks = (todo.size() + per_task - 1) / per_task;
        const std::string stamp = std::to_string(std::time(nullptr)) + "_" + std::to_string(::getpid());
        const fs::path points = p.folder / ("points_" + stamp + ".txt"), script = p.folder / ("job_" + stamp + ".sh");
        {
            std::ofstream out(points);
            for (const auto* pt : todo) out << pt->index << "\n";
            std::ofstream(script) << task_script(path, p.plan, o, points, p.folder, per_task);
        }
        std::string sbatch = "sbatch --parsable --job-name=" + shell_quoted("plexus-" + p.plan.name) + " --array=0-" +
                             std::to_string(tasks - 1) +
                             " --output=" + shell_quoted((p.folder / "logs" / "%A_%a.out").string()) +
                             sbatch_resources(o) + " --ntasks=" + std::to_string(o.ranks_per_point);
        if (o.cpus_per_task) sbatch += " --cpus-per-task=" + std::to_string(o.cpus_per_task);
        if (o.gpus_per_task) sbatch += " --gpus-per-task=" + std::to_string(o.gpus_per_task);
        const std::string job = submit(sbatch + " " + shell_quoted(script.string()));
        std::cout << "submitted " << todo.size() << (tuning ? " tuning" : "") << " point(s) as Slurm job array " << job
                  << (per_task > 1
                          ? " of " + std::to_string(tasks) + " tasks, " + std::to_string(per_task) + " points each"
                          : std::string())
                  << " (logs in " << (p.folder / "logs").string() << ")\n";
        if (tuning) {  // once the tuning array has ended: fold it in, choose, submit the reported seeds
            const std::string again = shell_quoted(fs::read_symlink("/proc/self/exe").string()) + " sweep " +
                                      shell_quoted(fs::absolute(path)) + " --slurm" +
                                      joined_quoted(resubmit_arguments(o));
            const std::string next =
                submit("sbatch --parsable --job-name=" + shell_quoted("plexus-" + p.plan.name + "-next") +
                       " --dependency=afterany:" + job + " --ntasks=1 --output=" +
                       shell_quoted((p.folder / "logs" / "next_%j.out").string()) + sbatch_resources(o) +
                       " --wrap=" + shell_quoted("cd " + shell_quoted(fs::current_path().string()) + " && " + again));
            std::cout << "then job " << next << " submits the reported seeds at the chosen values\n";
        }
        std::cout << "  plexus sweep " << path << " --status     # where it stands\n";
        return 0;
    } catch (const std::exception& e) {
        print_error(e);
        return 1;
    }
}

int sweep_status(const std::string& path, const SweepOptions& o) {
    try {
        Planned p;
        prepare(p, path, o);
        const bool tuned = !p.plan.exp.tune.empty();
        if (tuned && tuning_done(p.plan)) choose_tuned(p.plan, *p.store);
        std::map<std::string, std::map<std::string, int>> by_phase;  // phase -> state -> points
        for (const auto& pt : p.plan.points) {
            if (tuned && !pt.grid.tuning && !pt.chosen) continue;  // not chosen: never runs
            const std::string phase = !tuned ? "points" : pt.grid.tuning ? "tuning" : "reported";
            by_phase[phase][pt.last_status.empty() ? "not started" : pt.last_status]++;
        }
        for (const char* phase : {"points", "tuning", "reported"}) {
            if (!by_phase.count(phase)) continue;
            const auto& states = by_phase[phase];
            std::string line;
            for (const auto& [state, n] : states) line += (line.empty() ? "" : ", ") + std::to_string(n) + " " + state;
            std::cout << "  " << phase << ": " << line << "\n";
        }
        if (tuned && !tuning_done(p.plan)) std::cout << "  reported: waiting for the tuning runs\n";
        const auto queue = capture("squeue -h -n " + shell_quoted("plexus-" + p.plan.name) + "," +
                                   shell_quoted("plexus-" + p.plan.name + "-next") + " -o '%i %j %T %M'");
        if (queue.code == 0)
            std::cout << (queue.text.empty() ? "  no job of this sweep in Slurm's queue\n"
                                             : "  in Slurm's queue:\n    " + queue.text + "\n");
        std::cout << "  plexus leaderboard " << p.plan.name
                  << (p.plan.db == "results/plexus.db" ? "" : " --db " + p.plan.db) << "\n";
        return 0;
    } catch (const std::exception& e) {
        print_error(e);
        return 1;
    }
}

}  // namespace plexus::host
