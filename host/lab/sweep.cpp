#include "lab/sweep.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include <plexus/error.hpp>

#include "config/experiment.hpp"
#include "runtime/harness.hpp"
#include "transport/launch.hpp"
#include "runtime/loader.hpp"
#include "store/results.hpp"
#include "base/text.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_stop = 0;
constexpr int kMaxChildren = 256;
pid_t g_children[kMaxChildren];

void on_interrupt(int) { g_stop = 1; }  // the terminal sent SIGINT to the runs as well
void on_terminate(int) {
    g_stop = 1;
    for (pid_t p : g_children)
        if (p > 0) kill(p, SIGTERM);  // they record themselves as interrupted
}

struct Point {
    int index = 0;
    GridPoint grid;
    std::string hash;
    int slots = 1;            // cores-worth this run needs: its ranks for mode = local
    std::string last_status;  // of the newest run of this point in the sweep, "" if none
    int64_t last_run = 0;
    double wall_limit_s = 0;  // [limits]: 0 none
    double memory_limit_bytes = 0;
};

// Every process of a run: the one the sweep started and its descendants (a local run's workers).
std::vector<pid_t> process_tree(pid_t root) {
    std::multimap<pid_t, pid_t> children;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/proc", ec)) {
        const std::string name = e.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::FILE* f = std::fopen((e.path() / "stat").c_str(), "r");
        if (!f) continue;
        char buf[512];
        const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = '\0';
        // "pid (comm) state ppid ...": the name may hold spaces and parentheses, so parse after the last ')'.
        const char* close = std::strrchr(buf, ')');
        char state = 0;
        int ppid = 0;
        if (close && std::sscanf(close + 1, " %c %d", &state, &ppid) == 2)
            children.emplace(static_cast<pid_t>(ppid), static_cast<pid_t>(std::stoi(name)));
    }
    std::vector<pid_t> tree = {root};
    for (size_t i = 0; i < tree.size(); ++i) {
        auto [lo, hi] = children.equal_range(tree[i]);
        for (auto it = lo; it != hi; ++it) tree.push_back(it->second);
    }
    return tree;
}

double resident_bytes(const std::vector<pid_t>& pids) {
    double total = 0;
    for (pid_t p : pids) {
        std::FILE* f = std::fopen(("/proc/" + std::to_string(p) + "/statm").c_str(), "r");
        if (!f) continue;
        long size = 0, resident = 0;
        if (std::fscanf(f, "%ld %ld", &size, &resident) == 2)
            total += static_cast<double>(resident) * sysconf(_SC_PAGESIZE);
        std::fclose(f);
    }
    return total;
}

std::string signal_name(int sig) {
    const char* d = strsignal(sig);
    return "signal " + std::to_string(sig) + (d ? " (" + std::string(d) + ")" : std::string());
}

pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, const std::string& log) {
    const pid_t parent = getpid();
    const pid_t pid = fork();
    if (pid < 0) throw Error(std::string("cannot start a run: ") + std::strerror(errno));
    if (pid == 0) {
        // A run outlives no sweep: killed with it, it gets SIGTERM and records itself interrupted.
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent) _exit(130);
        const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        exec_self(argv, env);
    }
    return pid;
}

std::string last_lines(const std::string& path, int n) {
    std::FILE* f = std::fopen(path.c_str(), "r");
    if (!f) return "";
    std::vector<std::string> lines;
    char buf[1024];
    while (std::fgets(buf, sizeof buf, f)) {
        lines.emplace_back(buf);
        if (static_cast<int>(lines.size()) > n) lines.erase(lines.begin());
    }
    std::fclose(f);
    std::string out;
    for (const auto& l : lines) out += "    | " + l;
    return out;
}

std::string one_decimal(double s) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1fs", s);
    return buf;
}

}  // namespace

int run_sweep(const std::string& path, const SweepOptions& o) {
    Experiment exp;
    PluginRegistry registry;
    std::vector<Point> points;
    std::string name, db;
    std::vector<std::string> varying;
    try {
        exp = load_experiment(path);
        for (const auto& s : o.overrides) apply_override(exp, s);
        if (!o.db.empty()) exp.settings["results.db"] = Setting{Value(o.db), SourceLoc{"--db", 0, 0}};
        scan_plugins(exp, registry);
        auto find = [&](PluginKind k, const std::string& n) { return registry.find(k, n); };
        const auto grid = expand_grid(exp);
        for (const auto& axis : exp.grid) {
            if (!axis.names.empty()) {
                varying.push_back("variant: " + join(axis.names, ", "));
                continue;
            }
            std::string values;
            for (const auto& p : axis.points) {
                std::string v;
                for (const auto& x : p) v += (v.empty() ? "" : "/") + x.to_text();
                values += (values.empty() ? "" : ", ") + v;
            }
            std::string keys;
            for (const auto& k : axis.keys)
                keys += (keys.empty() ? "" : " + ") + (k == "train.seed" ? std::string("seed") : k);
            varying.push_back(keys + ": " + values);
        }
        for (size_t i = 0; i < grid.size(); ++i) {
            Point p;
            p.index = static_cast<int>(i);
            p.grid = grid[i];
            try {
                const auto cfg = resolve(apply_grid_point(exp, grid[i], find), find,
                                         [&](PluginKind k) { return registry.names(k); });
                p.hash = cfg.hash;
                p.wall_limit_s = cfg.values.at("limits.wall_minutes").as_double() * 60;
                p.memory_limit_bytes = cfg.values.at("limits.memory_gb").as_double() * double(1 << 30);
                if (p.wall_limit_s < 0 || p.memory_limit_bytes < 0)
                    throw Error("limits.wall_minutes and limits.memory_gb must be >= 0", "0 means no limit");
                if (cfg.values.at("launch.mode").as_string() == "local")
                    p.slots = static_cast<int>(std::max<int64_t>(1, cfg.values.at("launch.ranks").as_int()));
                if (i == 0) {
                    name = cfg.values.at("name").as_string();
                    db = cfg.values.at("results.db").as_string();
                }
            } catch (const Error& e) {
                throw Error("grid point " + std::to_string(i) + " (" + grid[i].label + "): " + message_of(e), e.hint());
            }
            points.push_back(p);
        }
        if (name.empty()) name = fs::path(path).stem().string();
    } catch (const std::exception& e) {
        std::cerr << "error: " << message_of(e) << "\n";
        if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty())
            std::cerr << "hint: " << pe->hint() << "\n";
        return 1;
    }

    std::cout << "sweep '" << name << "': " << points.size() << " run" << (points.size() == 1 ? "" : "s") << "\n";
    for (const auto& v : varying) std::cout << "  varying " << v << "\n";
    if (varying.empty()) std::cout << "  (no [grid]: one run)\n";

    std::unique_ptr<ResultsStore> store;
    int64_t sweep_id = 0;
    try {
        store = std::make_unique<ResultsStore>(db);
        if (auto sw = store->sweep_named(name)) {
            sweep_id = sw->id;
            for (const auto& run : store->sweep_runs(sweep_id))
                for (auto& p : points)
                    if (p.hash == run.config_hash) {
                        p.last_status = run.status;
                        p.last_run = run.id;
                    }
        }
    } catch (const std::exception& e) {
        std::cerr << "error: " << message_of(e) << "\n";
        return 1;
    }
    // A point whose run is still running in another live process (a second sweep of the same
    // file) is left to it.
    std::map<int, std::string> owned_elsewhere;
    for (const auto& p : points)
        if (p.last_status == "running" && p.last_run > 0)
            if (auto run = store->get_run(p.last_run))
                if (auto owner = live_owner(*store, *run))
                    owned_elsewhere[p.index] = "run " + std::to_string(p.last_run) + ", " + *owner;
    auto should_run = [&](const Point& p) {
        if (p.last_status == "finished" || owned_elsewhere.count(p.index)) return false;
        if (p.last_status == "failed" || p.last_status == "diverged") return o.retry_failed;
        return true;  // new, interrupted, or left running by a killed process
    };

    if (o.dry_run) {
        std::printf("%5s  %-16s  %-22s  %s\n", "point", "config hash", "state", "settings");
        for (const auto& p : points) {
            std::string state =
                p.last_status.empty() ? "new" : p.last_status + " (run " + std::to_string(p.last_run) + ")";
            state += owned_elsewhere.count(p.index) ? ", running elsewhere" : should_run(p) ? "" : ", skip";
            std::printf("%5d  %-16s  %-22s  %s\n", p.index, p.hash.c_str(), state.c_str(), p.grid.label.c_str());
        }
        return 0;
    }

    std::deque<Point*> queue;
    int skipped = 0, skipped_failed = 0;
    for (auto& p : points) {
        if (should_run(p))
            queue.push_back(&p);
        else if (p.last_status == "finished")
            ++skipped;
        else if (!owned_elsewhere.count(p.index))
            ++skipped_failed;
    }
    if (skipped) std::cout << "  " << skipped << " already finished in this sweep: skipped\n";
    for (const auto& [index, who] : owned_elsewhere)
        std::cout << "  point " << index << " is still running (" << who << "): left to it\n";
    if (skipped_failed)
        std::cout << "  " << skipped_failed << " failed before: skipped (--retry-failed runs them again)\n";
    if (queue.empty()) {
        std::cout << "nothing to run; see `plexus leaderboard " << name << "`\n";
        return skipped_failed ? 1 : 0;
    }

    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    int jobs = std::max(1, o.jobs);
    if (jobs > cores) {
        std::cout << "  -j " << jobs << " capped at " << cores << ": this machine has " << cores << " cores\n";
        jobs = cores;
    }
    const int cores_per_slot = std::max(1, cores / jobs);
    const fs::path logs = fs::absolute(db).parent_path() / "logs" / name;
    std::error_code ec;
    fs::create_directories(logs, ec);
    try {
        sweep_id = store->ensure_sweep(name, exp.text, "", "");
    } catch (const std::exception& e) {
        std::cerr << "error: " << message_of(e) << "\n";
        return 1;
    }
    std::cout << "  running " << queue.size() << " (up to " << jobs << " at once, " << cores_per_slot
              << " core(s) each); logs in " << logs.string() << "\n"
              << std::flush;

    struct Running {
        Point* point;
        pid_t pid;
        Clock::time_point started;
        std::string log;
        int slots;
        std::string killed_for;  // why the sweep killed it ([limits]); "" if it did not
    };
    std::vector<Running> running;
    g_stop = 0;
    std::fill(std::begin(g_children), std::end(g_children), 0);
    auto prev_int = std::signal(SIGINT, on_interrupt);
    auto prev_term = std::signal(SIGTERM, on_terminate);
    const bool bar = o.progress == "bar" || (o.progress == "auto" && isatty(STDERR_FILENO));
    const size_t total = queue.size();
    size_t done = 0;
    int finished = 0, failed = 0, interrupted = 0;
    double seconds_done = 0;
    const auto t_start = Clock::now();
    auto used_slots = [&] {
        int n = 0;
        for (const auto& r : running) n += r.slots;
        return n;
    };
    auto draw_bar = [&](bool clear) {
        if (!bar) return;
        if (clear) {
            std::cerr << "\r\033[K" << std::flush;
            return;
        }
        const double elapsed = std::chrono::duration<double>(Clock::now() - t_start).count();
        const double per_run = done > 0 ? seconds_done / static_cast<double>(done) : NAN;
        const double eta = per_run * static_cast<double>(total - done) / jobs;
        const int width = 30;
        std::string b(static_cast<size_t>(width * done / total), '#');
        b.resize(width, '.');
        char buf[200];
        std::snprintf(buf, sizeof buf, "\r[%s] %zu/%zu runs | %zu running | %s elapsed | ETA %s\033[K", b.c_str(), done,
                      total, running.size(), human_duration(elapsed).c_str(),
                      done > 0 ? human_duration(eta).c_str() : "?");
        std::cerr << buf << std::flush;
    };

    while (!queue.empty() || !running.empty()) {
        // Start what fits: a run needs its slots free (a run wider than -j runs alone).
        while (!g_stop && !queue.empty() && running.size() < static_cast<size_t>(kMaxChildren)) {
            Point* p = queue.front();
            if (!running.empty() && used_slots() + p->slots > jobs) break;
            // Logs get the progress lines: the last ones say where a run that died was.
            std::vector<std::string> argv = {
                "plexus",     "run",  fs::absolute(path).string(), "--point", std::to_string(p->index), "--db", db,
                "--progress", "lines"};
            for (const auto& s : o.overrides) {
                argv.push_back("--set");
                argv.push_back(s);
            }
            // A run interrupted or killed before continues in place, from its newest checkpoint
            // (from its start if it has none), when it recorded how to.
            if ((p->last_status == "interrupted" || p->last_status == "running") && p->last_run > 0 &&
                !store->summary_text(p->last_run, "resume.file").empty())
                argv = {"plexus", "run", "--resume", std::to_string(p->last_run), "--db", db, "--progress", "lines"};
            const std::string log = (logs / ("point" + std::to_string(p->index) + ".log")).string();
            const int run_cores = std::min(cores, std::max(1, p->slots * cores_per_slot));
            const pid_t pid = spawn(
                argv, {"PLEXUS_SWEEP_ID=" + std::to_string(sweep_id), "PLEXUS_CORES=" + std::to_string(run_cores)},
                log);
            for (auto& c : g_children)
                if (c == 0) {
                    c = pid;
                    break;
                }
            running.push_back({p, pid, Clock::now(), log, p->slots, ""});
            queue.pop_front();
        }
        if (running.empty()) break;
        int status = 0;
        const pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid == 0) {
            // [limits]: a run past its wall-clock or memory limit is killed with its workers
            // (SIGKILL: a hung plugin would not act on SIGTERM) and marked failed below.
            for (auto& r : running) {
                if (!r.killed_for.empty()) continue;
                const double secs = std::chrono::duration<double>(Clock::now() - r.started).count();
                const auto tree = (r.point->memory_limit_bytes > 0 || r.point->wall_limit_s > 0) ? process_tree(r.pid)
                                                                                                 : std::vector<pid_t>{};
                char why[200] = "";
                if (r.point->wall_limit_s > 0 && secs > r.point->wall_limit_s)
                    std::snprintf(why, sizeof why, "it ran past limits.wall_minutes = %g", r.point->wall_limit_s / 60);
                else if (r.point->memory_limit_bytes > 0) {
                    const double rss = resident_bytes(tree);
                    if (rss > r.point->memory_limit_bytes)
                        std::snprintf(why, sizeof why, "its processes held %.2f GiB, over limits.memory_gb = %g",
                                      rss / double(1 << 30), r.point->memory_limit_bytes / double(1 << 30));
                }
                if (!*why) continue;
                r.killed_for = why;
                for (pid_t p : tree) kill(p, SIGKILL);
            }
            draw_bar(false);
            std::this_thread::sleep_for(std::chrono::milliseconds(250));  // the bar's refresh period
            continue;
        }
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        auto it = std::find_if(running.begin(), running.end(), [&](const Running& r) { return r.pid == pid; });
        if (it == running.end()) continue;
        for (auto& c : g_children)
            if (c == pid) c = 0;
        Running r = *it;
        running.erase(it);
        const double secs = std::chrono::duration<double>(Clock::now() - r.started).count();
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        ++done;
        seconds_done += secs;
        // What the run recorded about itself.
        std::string outcome = code == 0 ? "finished" : code == 130 ? "interrupted" : code == 3 ? "diverged" : "failed";
        if (!r.killed_for.empty()) outcome = "failed";
        int64_t run_id = 0;
        std::string detail;
        try {
            std::string recorded;
            for (const auto& run : store->sweep_runs(sweep_id))
                if (run.config_hash == r.point->hash) {
                    run_id = run.id;
                    detail = run.error;
                    recorded = run.status;
                }
            // A run that could not record its own end (killed, crashed in a plugin): the sweep
            // records why, with the last lines of its log.
            if (run_id && (recorded == "running" || !r.killed_for.empty())) {
                const std::string why = !r.killed_for.empty() ? "killed by the sweep: " + r.killed_for
                                        : WIFSIGNALED(status) ? "the run died of " + signal_name(WTERMSIG(status))
                                                              : "the run exited with code " + std::to_string(code) +
                                                                    " without recording its end";
                std::string tail = last_lines(r.log, 6);
                detail = why + (tail.empty() ? "" : "; last lines of " + r.log + ":\n" + tail);
                store->finish_run(run_id, outcome == "interrupted" ? "interrupted" : "failed", detail);
                detail = why;
            }
            if (run_id && code == 0)
                for (const auto& [rank, key, value, text] : store->summaries(run_id))
                    if (rank == 0 && key == "final_eval_loss" && value)
                        detail = "eval " + std::to_string(*value).substr(0, 6);
        } catch (const std::exception& e) {
            detail = std::string("(could not read the database: ") + message_of(e) + ")";
        }
        if (outcome == "finished")
            ++finished;
        else if (outcome == "interrupted")
            ++interrupted;
        else
            ++failed;
        draw_bar(true);
        std::cout << "[" << done << "/" << total << "] " << (run_id ? "run " + std::to_string(run_id) + " " : "")
                  << outcome << " in " << one_decimal(secs) << "  point " << r.point->index << ": "
                  << r.point->grid.label << (detail.empty() ? "" : "  " + detail) << "\n";
        if (outcome == "failed" || outcome == "diverged")
            std::cout << "  log " << r.log << ":\n" << last_lines(r.log, 4);
        std::cout << std::flush;
    }
    draw_bar(true);
    std::signal(SIGINT, prev_int);
    std::signal(SIGTERM, prev_term);
    const size_t not_started = queue.size();
    std::cout << "sweep '" << name << "' (id " << sweep_id << "): " << finished << " finished, " << failed << " failed"
              << (interrupted ? ", " + std::to_string(interrupted) + " interrupted" : std::string())
              << (not_started ? ", " + std::to_string(not_started) + " not started" : std::string())
              << (skipped ? ", " + std::to_string(skipped) + " finished before" : std::string()) << "\n"
              << "  plexus leaderboard " << name << (db == "results/plexus.db" ? "" : " --db " + db) << "\n";
    if (g_stop || interrupted) {
        std::cout << "  interrupted: run the same command again to resume (finished runs are skipped)\n";
        return 130;
    }
    return failed || skipped_failed ? 1 : 0;
}

}  // namespace plexus::host
