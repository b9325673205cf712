#include "lab/sweep.hpp"
#include "lab/sweep_plan.hpp"
#include "base/cores.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <thread>

#include <plexus/error.hpp>

#include "config/experiment.hpp"
#include "lab/leaderboard.hpp"
#include "runtime/checkpoint.hpp"
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

// A signal a run's code does not raise itself: something outside stopped it (the OOM killer, an
// administrator, a logout). Its run is interrupted, not failed, and continues from its checkpoint.
bool stopped_from_outside(int sig) { return sig == SIGKILL || sig == SIGTERM || sig == SIGINT || sig == SIGHUP; }

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

// One unnamed axis: "optimizer.lr: 0.1, 0.3" (zipped keys joined by + and values by /).
std::string axis_values(const GridAxis& axis) {
    std::string values;
    for (const auto& p : axis.points) {
        std::string v;
        for (const auto& x : p) v += (v.empty() ? "" : "/") + x.to_text();
        values += (values.empty() ? "" : ", ") + v;
    }
    std::string keys;
    for (const auto& k : axis.keys) keys += (keys.empty() ? "" : " + ") + (k == "train.seed" ? std::string("seed") : k);
    return keys + ": " + values;
}

// The axes a sweep varies, one line each ("variant: ddp, acco", "optimizer.lr: 0.1, 0.3"; a
// choice's own tuned lists: "optimizer.step_mult (variant=lopt): 1e-3, 1e-2").
std::vector<std::string> varying_axes(const Experiment& exp) {
    std::vector<std::string> varying;
    for (const auto& axis : exp.grid) {
        if (axis.named()) {
            varying.push_back(axis.keys[0] + ": " + join(axis.names, ", "));
            for (size_t i = 0; i < axis.tunes.size(); ++i)
                for (const auto& list : axis.tunes[i]) {
                    const std::string line = axis_values(list);
                    varying.push_back(list.keys[0] + " (" + axis.keys[0] + "=" + axis.names[i] + ")" +
                                      line.substr(list.keys[0].size()));
                }
            continue;
        }
        varying.push_back(axis_values(axis));
    }
    return varying;
}

}  // namespace

SweepPlan plan_sweep(const std::string& path, const SweepOptions& o, PluginRegistry& registry) {
    SweepPlan plan;
    plan.exp = load_experiment(path);
    if (!o.preset.empty()) apply_preset(plan.exp, o.preset);
    for (const auto& s : o.overrides) apply_override(plan.exp, s);
    if (!o.db.empty()) plan.exp.settings["results.db"] = Setting{Value(o.db), SourceLoc{"--db", 0, 0}};
    scan_plugins(plan.exp, registry);
    auto find = [&](PluginKind k, const std::string& n) { return registry.find(k, n); };
    const auto grid = expand_grid(plan.exp);
    plan.varying = varying_axes(plan.exp);
    for (size_t i = 0; i < grid.size(); ++i) {
        Point p;
        p.index = static_cast<int>(i);
        p.grid = grid[i];
        try {
            const auto cfg = resolve(apply_grid_point(plan.exp, grid[i], find), find,
                                     [&](PluginKind k) { return registry.names(k); });
            p.hash = cfg.hash;
            p.checkpoints = RunCheckpoints::of(cfg, 0).dir().parent_path();
            p.wall_limit_s = cfg.host.limits.wall_minutes * 60;
            p.memory_limit_bytes = cfg.host.limits.memory_gb * double(1 << 30);
            if (p.wall_limit_s < 0 || p.memory_limit_bytes < 0)
                throw Error("limits.wall_minutes and limits.memory_gb must be >= 0", "0 means no limit");
            if (cfg.host.launch.mode == "local")
                p.slots = static_cast<int>(std::max<int64_t>(1, cfg.host.launch.ranks));
            if (i == 0) {
                plan.name = cfg.values.at("name").as_string();
                plan.db = cfg.host.results.db;
            }
        } catch (const Error& e) {
            throw Error("grid point " + std::to_string(i) + " (" + grid[i].label + "): " + message_of(e), e.hint());
        }
        plan.points.push_back(p);
    }
    if (plan.name.empty()) plan.name = fs::path(path).stem().string();
    return plan;
}

History recall(ResultsStore& store, SweepPlan& plan) {
    History h;
    if (auto sw = store.sweep_named(plan.name)) {
        h.sweep_id = sw->id;
        for (const auto& run : store.sweep_runs(h.sweep_id))
            for (auto& p : plan.points)
                if (p.hash == run.config_hash) {
                    p.last_status = run.status;
                    p.last_run = run.id;
                }
    }
    for (const auto& p : plan.points)
        if (p.last_status == "running" && p.last_run > 0)
            if (auto run = store.get_run(p.last_run))
                if (auto owner = live_owner(store, *run))
                    h.owned_elsewhere[p.index] = "run " + std::to_string(p.last_run) + ", " + *owner;
    return h;
}

bool should_run(const Point& p, bool retry_failed) {
    if (p.last_status == "finished") return false;
    if (p.last_status == "failed" || p.last_status == "diverged") return retry_failed;
    return true;  // new, interrupted, or left running by a killed process
}

bool should_run(const Point& p, const History& h, bool retry_failed) {
    return !h.owned_elsewhere.count(p.index) && should_run(p, retry_failed);
}

// A point's last run continues in place (`plexus run --resume`, from its newest checkpoint or its
// start) when it stopped without ending: interrupted, killed, or failed and retried. A diverged
// run would diverge again from its checkpoint: its point starts over in a new run.
bool continues_in_place(const Point& p, ResultsStore& store) {
    const bool stopped = p.last_status == "interrupted" || p.last_status == "running" || p.last_status == "failed";
    return stopped && p.last_run > 0 && !store.summary_text(p.last_run, "resume.file").empty();
}

// [grid.tune]: a point's group (what it assigns but the tuned keys and the seed) and its tuned values.
namespace {
using Assignments = std::vector<std::pair<std::string, Value>>;
}  // namespace
static void split_tuned(const GridPoint& p, const GridTune& tune, Assignments& group, Assignments& tuned) {
    for (const auto& kv : p.assignments) {
        if (kv.first == "train.seed") continue;
        const bool is_tuned = std::find(tune.keys.begin(), tune.keys.end(), kv.first) != tune.keys.end();
        (is_tuned ? tuned : group).push_back(kv);
    }
}

// After the tuning phase: each group's tuned values are those with the best mean of the tuning
// metric over its finished tuning runs, chosen as the leaderboard's --best-over chooses. Marks
// every reported point chosen or not; returns a line per group ("variant=ddp: optimizer.lr=0.1
// (2 tuning runs)").
std::vector<std::string> choose_tuned(SweepPlan& plan, ResultsStore& store) {
    struct Group {
        Assignments key;
        std::string label;
        CandidateScores scores, final_loss;  // final_loss: where every run is censored
        std::map<std::string, Assignments> values_of;
        int runs = 0;
        std::string best;  // the chosen candidate, "" if none
    };
    std::vector<Group> groups;
    auto group_of = [&](const Point& p, Assignments& tuned) -> Group& {
        Assignments key;
        split_tuned(p.grid, plan.exp.tune, key, tuned);
        for (auto& g : groups)
            if (g.key == key) return g;
        std::string label;
        for (const auto& [axis, choice] : p.grid.choices) label += (label.empty() ? "" : " ") + axis + "=" + choice;
        for (const auto& [k, v] : key)
            if (label.find(k + "=") == std::string::npos)
                for (const auto& axis : plan.exp.grid)
                    if (!axis.named() && std::find(axis.keys.begin(), axis.keys.end(), k) != axis.keys.end())
                        label += (label.empty() ? "" : " ") + k + "=" + v.to_text();
        groups.push_back({key, label.empty() ? "(one group)" : label, {}, {}, {}, 0, ""});
        return groups.back();
    };
    BoardOptions metric, final_loss;
    metric.metric = plan.exp.tune.metric;
    final_loss.metric = "final_eval_loss";
    for (auto& p : plan.points) {
        if (!p.grid.tuning) continue;
        Assignments tuned;
        Group& g = group_of(p, tuned);
        if (p.last_status != "finished" || p.last_run <= 0) continue;
        const std::string candidate = candidate_text(store.params(p.last_run), plan.exp.tune.keys);
        g.scores[candidate].push_back(run_metric(store, p.last_run, metric));
        g.final_loss[candidate].push_back(run_metric(store, p.last_run, final_loss));
        g.values_of[candidate] = tuned;
        ++g.runs;
    }
    std::vector<std::string> lines;
    for (auto& g : groups) {
        g.best = best_candidate(g.scores, lower_is_better(metric.metric), g.final_loss);
        const bool fell_back = !g.best.empty() && best_candidate(g.scores, lower_is_better(metric.metric)).empty();
        lines.push_back(g.label + ": " +
                        (g.best.empty() ? "nothing chosen (no tuning run finished with a value)" : g.best) + " (" +
                        std::to_string(g.runs) + " tuning run" + (g.runs == 1 ? "" : "s") +
                        (fell_back ? "; none reached the target: chosen by final_eval_loss" : "") + ")");
    }
    for (auto& p : plan.points) {
        if (p.grid.tuning) continue;
        Assignments tuned;
        const Group& g = group_of(p, tuned);
        p.chosen = !g.best.empty() && g.values_of.at(g.best) == tuned;
    }
    return lines;
}

// The tuning points that have not ended, as "point 3 interrupted (run 530), point 5 running".
std::string unfinished_tuning(const SweepPlan& plan) {
    std::string out;
    for (const auto& p : plan.points)
        if (p.grid.tuning && p.last_status != "finished" && p.last_status != "failed" && p.last_status != "diverged")
            out += std::string(out.empty() ? "" : ", ") + "point " + std::to_string(p.index) + " " +
                   (p.last_status.empty() ? "not started" : p.last_status) +
                   (p.last_run > 0 ? " (run " + std::to_string(p.last_run) + ")" : "");
    return out;
}

bool tuning_done(const SweepPlan& plan) {
    for (const auto& p : plan.points)
        if (p.grid.tuning && p.last_status != "finished" && p.last_status != "failed" && p.last_status != "diverged")
            return false;
    return true;
}

namespace {

void print_dry_run(const SweepPlan& plan, const History& h, bool retry_failed) {
    const bool tuned = !plan.exp.tune.empty(), chosen_known = tuned && tuning_done(plan);
    std::printf("%5s  %-16s  %-22s  %s\n", "point", "config hash", "state", "settings");
    int tuning = 0, reported = 0, to_report = 0;
    for (const auto& p : plan.points) {
        std::string state = p.last_status.empty() ? "new" : p.last_status + " (run " + std::to_string(p.last_run) + ")";
        state += h.owned_elsewhere.count(p.index) ? ", running elsewhere"
                 : should_run(p, h, retry_failed) ? ""
                                                  : ", skip";
        if (tuned && p.grid.tuning) ++tuning, state += ", tuning";
        if (tuned && !p.grid.tuning) {
            ++reported;
            to_report += chosen_known && p.chosen ? 1 : 0;
            if (chosen_known && !p.chosen) state = "not chosen";
        }
        std::printf("%5d  %-16s  %-22s  %s\n", p.index, p.hash.c_str(), state.c_str(), p.grid.label.c_str());
    }
    if (!tuned) return;
    // One reported run per group and seed (the grid's skips may leave a group fewer seeds).
    std::set<std::string> group_seeds;
    for (const auto& p : plan.points) {
        if (p.grid.tuning) continue;
        Assignments group, values;
        split_tuned(p.grid, plan.exp.tune, group, values);
        std::string key;
        for (const auto& [k, v] : p.grid.assignments)
            if (k == "train.seed") key = v.to_text();
        for (const auto& [k, v] : group) key += " " + k + "=" + v.to_text();
        group_seeds.insert(key);
    }
    std::string seeds;
    for (auto v : plan.exp.tune.seeds) seeds += (seeds.empty() ? "" : ",") + std::to_string(v);
    const std::string will_run =
        chosen_known ? std::to_string(to_report) : std::to_string(group_seeds.size()) + " (which, known after tuning)";
    std::printf(
        "[grid.tune]: %d tuning runs on seed(s) %s, then %s of the %d reported points: each group's best %s "
        "by %s\n",
        tuning, seeds.c_str(), will_run.c_str(), reported, join(plan.exp.tune.keys, ", ").c_str(),
        plan.exp.tune.metric.c_str());
}

// Runs the queued points as child processes, -j slots at once, enforcing [limits], and says
// what became of each.
class Runner {
public:
    Runner(const std::string& path, const SweepOptions& o, const SweepPlan& plan, ResultsStore& store, int64_t sweep_id,
           std::deque<Point*> queue, int jobs, int cores, fs::path logs)
        : path_(path), o_(o), plan_(plan), store_(store), sweep_id_(sweep_id), queue_(std::move(queue)), jobs_(jobs),
          cores_(cores), cores_per_slot_(std::max(1, cores / jobs)), logs_(std::move(logs)), total_(queue_.size()),
          bar_(o.progress == "bar" || (o.progress == "auto" && isatty(STDERR_FILENO))) {}

    // Until every queued run ended, or a stop request let the running ones end.
    void run() {
        while (!queue_.empty() || !running_.empty()) {
            start_what_fits();
            if (running_.empty()) break;
            int status = 0;
            const pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid == 0) {
                enforce_limits();
                draw_bar(false);
                std::this_thread::sleep_for(std::chrono::milliseconds(250));  // the bar's refresh period
                continue;
            }
            if (pid < 0) {
                if (errno == EINTR) continue;
                break;
            }
            reap(pid, status);
        }
        draw_bar(true);
    }

    int finished = 0, failed = 0, interrupted = 0, left = 0;
    size_t not_started() const { return queue_.size(); }

private:
    // Holds the point for this sweep (one transaction) unless another live sweep holds it; then
    // reads its newest run again, since another process may have finished or resumed it after
    // this sweep looked, and decides how it runs. False: the point is left, and the sweep says why.
    bool claim(Point& p) {
        const auto alive = [](const PointClaim& c) { return live_process(c.owner, c.last_seen).has_value(); };
        const auto held = store_.claim_point(sweep_id_, p.hash, me_, alive);
        if (held.owner != me_)
            return leave(p, "is being run by another sweep (" +
                                live_process(held.owner, held.last_seen).value_or(held.owner) + ")");
        const auto newest = store_.newest_sweep_run(sweep_id_, p.hash);
        if (newest) p.last_status = newest->status, p.last_run = newest->id;
        if (newest && newest->status == "running")
            if (auto owner = live_owner(store_, *newest)) {
                store_.release_point(sweep_id_, p.hash, me_);
                return leave(p, "is still running (run " + std::to_string(p.last_run) + ", " + *owner + ")");
            }
        if (!should_run(p, o_.retry_failed)) {
            store_.release_point(sweep_id_, p.hash, me_);
            return leave(
                p, "ended in another process meanwhile (run " + std::to_string(p.last_run) + ", " + p.last_status + ")",
                "skipped");
        }
        p.resume_run = continues_in_place(p, store_) ? p.last_run : 0;  // its --resume names it on the claim
        if (!p.resume_run && p.last_run > 0) {
            std::error_code ec;  // superseded by the new run: its checkpoints would never be read again
            fs::remove_all(RunCheckpoints(p.checkpoints, p.last_run).dir(), ec);
        }
        return true;
    }

    bool leave(const Point& p, const std::string& why, const char* verdict = "left to it") {
        draw_bar(true);
        std::cout << "  point " << p.index << " " << why << ": " << verdict << "\n" << std::flush;
        ++left;
        return false;
    }

    struct Running {
        Point* point;
        pid_t pid;
        Clock::time_point started;
        std::string log;
        int slots;
        std::string killed_for;  // why the sweep killed it ([limits]); "" if it did not
        int cpu = -1;            // PLEXUS_SIM_CPU: a simulated cluster's rank threads run there
    };

    // The usable CPU fewest running runs were given: concurrent simulations on separate CPUs.
    int least_used_cpu() const {
        int best = -1;
        size_t fewest = SIZE_MAX;
        for (int c : usable_cpus()) {
            const auto n = static_cast<size_t>(
                std::count_if(running_.begin(), running_.end(), [c](const Running& r) { return r.cpu == c; }));
            if (n < fewest) fewest = n, best = c;
        }
        return best;
    }

    int used_slots() const {
        int n = 0;
        for (const auto& r : running_) n += r.slots;
        return n;
    }

    // Starts what fits: a run needs its slots free (a run wider than -j runs alone).
    void start_what_fits() {
        while (!g_stop && !queue_.empty() && running_.size() < static_cast<size_t>(kMaxChildren)) {
            Point* p = queue_.front();
            if (!running_.empty() && used_slots() + p->slots > jobs_) break;
            if (!claim(*p)) {
                queue_.pop_front();
                continue;
            }
            // Logs get the progress lines: the last ones say where a run that died was.
            std::vector<std::string> argv = {"plexus",
                                             "run",
                                             fs::absolute(path_).string(),
                                             "--point",
                                             std::to_string(p->index),
                                             "--db",
                                             plan_.db,
                                             "--progress",
                                             "lines"};
            if (!o_.preset.empty()) {
                argv.push_back("--preset");
                argv.push_back(o_.preset);
            }
            for (const auto& s : o_.overrides) {
                argv.push_back("--set");
                argv.push_back(s);
            }
            if (p->resume_run > 0)
                argv = {"plexus", "run",    "--resume",   std::to_string(p->last_run),
                        "--db",   plan_.db, "--progress", "lines"};
            const std::string log = (logs_ / ("point" + std::to_string(p->index) + ".log")).string();
            const int run_cores = std::min(cores_, std::max(1, p->slots * cores_per_slot_));
            const int cpu = least_used_cpu();
            const pid_t pid =
                spawn(argv,
                      {"PLEXUS_SWEEP_ID=" + std::to_string(sweep_id_), "PLEXUS_CLAIM=" + me_,
                       "PLEXUS_CORES=" + std::to_string(run_cores), "PLEXUS_SIM_CPU=" + std::to_string(cpu)},
                      log);
            for (auto& c : g_children)
                if (c == 0) {
                    c = pid;
                    break;
                }
            running_.push_back({p, pid, Clock::now(), log, p->slots, "", cpu});
            queue_.pop_front();
        }
    }

    // [limits]: a run past its wall-clock or memory limit is killed with its workers (SIGKILL: a
    // hung plugin would not act on SIGTERM) and marked failed when reaped.
    void enforce_limits() {
        for (auto& r : running_) {
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
    }

    // A run ended: what it recorded about itself, or why it could not, and a line for the user.
    void reap(pid_t pid, int status) {
        auto it = std::find_if(running_.begin(), running_.end(), [&](const Running& r) { return r.pid == pid; });
        if (it == running_.end()) return;
        for (auto& c : g_children)
            if (c == pid) c = 0;
        Running r = *it;
        running_.erase(it);
        const double secs = std::chrono::duration<double>(Clock::now() - r.started).count();
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        ++done_;
        seconds_done_ += secs;
        std::string outcome = code == 0 ? "finished" : code == 130 ? "interrupted" : code == 3 ? "diverged" : "failed";
        if (WIFSIGNALED(status) && stopped_from_outside(WTERMSIG(status))) outcome = "interrupted";
        if (!r.killed_for.empty()) outcome = "failed";
        int64_t run_id = 0;
        const std::string detail = settle(r, status, code, outcome, run_id);
        try {
            store_.release_point(sweep_id_, r.point->hash, me_);
        } catch (const std::exception&) {}  // a claim left behind is taken over: its owner is gone
        if (outcome == "finished")
            ++finished;
        else if (outcome == "interrupted")
            ++interrupted;
        else
            ++failed;
        draw_bar(true);
        std::cout << "[" << done_ << "/" << total_ << "] " << (run_id ? "run " + std::to_string(run_id) + " " : "")
                  << outcome << " in " << one_decimal(secs) << "  point " << r.point->index << ": "
                  << r.point->grid.label << (detail.empty() ? "" : "  " + detail) << "\n";
        if (outcome == "failed" || outcome == "diverged")
            std::cout << "  log " << r.log << ":\n" << last_lines(r.log, 4);
        std::cout << std::flush;
    }

    // The run's row: a run that could not record its own end (killed, crashed in a plugin) is
    // recorded here, with the last lines of its log. Returns what to say of it.
    std::string settle(const Running& r, int status, int code, const std::string& outcome, int64_t& run_id) {
        std::string detail;
        try {
            // The run this sweep's child started or resumed, as the claim recorded it (never
            // another process's run of the same point).
            run_id = store_.claimed_run(sweep_id_, r.point->hash, me_);
            std::optional<RunInfo> run = run_id ? store_.get_run(run_id) : std::nullopt;
            const std::string recorded = run ? run->status : "";
            if (run) detail = run->error;
            if (run && recorded == "running" && live_owner(store_, *run)) return "(taken over by another process)";
            if (run_id && (recorded == "running" || !r.killed_for.empty())) {
                std::string why = !r.killed_for.empty() ? "killed by the sweep: " + r.killed_for
                                  : WIFSIGNALED(status) ? "the run died of " + signal_name(WTERMSIG(status))
                                                        : "the run exited with code " + std::to_string(code) +
                                                              " without recording its end";
                if (r.killed_for.empty() && outcome == "interrupted")
                    why +=
                        ", sent from outside the sweep (the OOM killer, an administrator); it continues from "
                        "its newest checkpoint when the sweep runs again";
                std::string tail = last_lines(r.log, 6);
                store_.finish_run(run_id, outcome == "interrupted" ? "interrupted" : "failed",
                                  why + (tail.empty() ? "" : "; last lines of " + r.log + ":\n" + tail));
                detail = why;
            }
            if (run_id && code == 0)
                for (const auto& [rank, key, value, text] : store_.summaries(run_id))
                    if (rank == 0 && key == "final_eval_loss" && value)
                        detail = "eval " + std::to_string(*value).substr(0, 6);
        } catch (const std::exception& e) {
            detail = std::string("(could not read the database: ") + message_of(e) + ")";
        }
        return detail;
    }

    void draw_bar(bool clear) {
        if (!bar_) return;
        if (clear) {
            std::cerr << "\r\033[K" << std::flush;
            return;
        }
        const double elapsed = std::chrono::duration<double>(Clock::now() - t_start_).count();
        const double per_run = done_ > 0 ? seconds_done_ / static_cast<double>(done_) : NAN;
        const double eta = per_run * static_cast<double>(total_ - done_) / jobs_;
        const int width = 30;
        std::string b(static_cast<size_t>(width * done_ / total_), '#');
        b.resize(width, '.');
        char buf[200];
        std::snprintf(buf, sizeof buf, "\r[%s] %zu/%zu runs | %zu running | %s elapsed | ETA %s\033[K", b.c_str(),
                      done_, total_, running_.size(), human_duration(elapsed).c_str(),
                      done_ > 0 ? human_duration(eta).c_str() : "?");
        std::cerr << buf << std::flush;
    }

    const std::string& path_;
    const SweepOptions& o_;
    const SweepPlan& plan_;
    ResultsStore& store_;
    const int64_t sweep_id_;
    std::deque<Point*> queue_;
    const int jobs_, cores_, cores_per_slot_;
    const fs::path logs_;
    const size_t total_;
    const bool bar_;
    std::vector<Running> running_;
    const std::string me_ = process_tag();  // the owner of this sweep's claims
    size_t done_ = 0;
    double seconds_done_ = 0;
    const Clock::time_point t_start_ = Clock::now();
};

int print_error_line(const std::exception& e) {
    std::cerr << "error: " << message_of(e) << "\n";
    if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty())
        std::cerr << "hint: " << pe->hint() << "\n";
    return 1;
}

// What a sweep's runs came to, over its phases.
struct Tally {
    int finished = 0, failed = 0, interrupted = 0, skipped = 0, skipped_failed = 0, left = 0;
    size_t not_started = 0;
};

// Runs the points `take` accepts that still need a run; adds what became of them to `t`.
void run_phase(const std::string& path, const SweepOptions& o, SweepPlan& plan, ResultsStore& store,
               const History& history, int64_t sweep_id, int jobs, int cores, const fs::path& logs,
               const std::function<bool(const Point&)>& take, Tally& t) {
    std::deque<Point*> queue;
    int skipped = 0, skipped_failed = 0;
    for (auto& p : plan.points) {
        if (!take(p)) continue;
        if (should_run(p, history, o.retry_failed))
            queue.push_back(&p);
        else if (p.last_status == "finished")
            ++skipped;
        else if (!history.owned_elsewhere.count(p.index))
            ++skipped_failed;
    }
    if (skipped) std::cout << "  " << skipped << " already finished in this sweep: skipped\n";
    for (const auto& [index, who] : history.owned_elsewhere)
        if (take(plan.points[static_cast<size_t>(index)]))
            std::cout << "  point " << index << " is still running (" << who << "): left to it\n";
    if (skipped_failed)
        std::cout << "  " << skipped_failed << " failed before: skipped (--retry-failed runs them again)\n";
    t.skipped += skipped;
    t.skipped_failed += skipped_failed;
    if (queue.empty()) return;
    std::cout << "  running " << queue.size() << " (up to " << jobs << " at once, " << std::max(1, cores / jobs)
              << " core(s) each); logs in " << logs.string() << "\n"
              << std::flush;
    g_stop = 0;
    std::fill(std::begin(g_children), std::end(g_children), 0);
    auto prev_int = std::signal(SIGINT, on_interrupt);
    auto prev_term = std::signal(SIGTERM, on_terminate);
    Runner runner(path, o, plan, store, sweep_id, std::move(queue), jobs, cores, logs);
    runner.run();
    std::signal(SIGINT, prev_int);
    std::signal(SIGTERM, prev_term);
    t.finished += runner.finished;
    t.failed += runner.failed;
    t.interrupted += runner.interrupted;
    t.left += runner.left;
    t.not_started += runner.not_started();
}

}  // namespace

int run_sweep(const std::string& path, const SweepOptions& o) {
    PluginRegistry registry;
    SweepPlan plan;
    std::unique_ptr<ResultsStore> store;
    History history;
    try {
        plan = plan_sweep(path, o, registry);
        std::cout << "sweep '" << plan.name << "': " << plan.points.size() << " run"
                  << (plan.points.size() == 1 ? "" : "s") << "\n";
        for (const auto& v : plan.varying) std::cout << "  varying " << v << "\n";
        if (plan.varying.empty()) std::cout << "  (no [grid]: one run)\n";
        store = std::make_unique<ResultsStore>(plan.db);
        history = recall(*store, plan);
        // The dry run shows the choice once tuning is over; a real sweep makes it after its tuning phase.
        if (o.dry_run && !plan.exp.tune.empty() && tuning_done(plan)) choose_tuned(plan, *store);
    } catch (const std::exception& e) { return print_error_line(e); }
    if (o.dry_run) {
        print_dry_run(plan, history, o.retry_failed);
        return 0;
    }
    const bool tuned = !plan.exp.tune.empty();

    const int cores = usable_cores();
    int jobs = std::max(1, o.jobs);
    if (jobs > cores) {
        std::cout << "  -j " << jobs << " capped at " << cores << ": this machine has " << cores << " cores\n";
        jobs = cores;
    }
    const fs::path logs = fs::absolute(plan.db).parent_path() / "logs" / plan.name;
    std::error_code ec;
    fs::create_directories(logs, ec);
    int64_t sweep_id = 0;
    try {
        sweep_id = store->ensure_sweep(plan.name, plan.exp.text, "", "");
    } catch (const std::exception& e) { return print_error_line(e); }

    Tally t;
    if (!tuned) {
        run_phase(
            path, o, plan, *store, history, sweep_id, jobs, cores, logs, [](const Point&) { return true; }, t);
    } else {
        std::cout << "tuning: " << join(plan.exp.tune.keys, ", ") << " on seed(s)";
        for (auto s : plan.exp.tune.seeds) std::cout << " " << s;
        std::cout << "\n";
        run_phase(
            path, o, plan, *store, history, sweep_id, jobs, cores, logs, [](const Point& p) { return p.grid.tuning; },
            t);
        if (!g_stop && !t.interrupted) history = recall(*store, plan);
        if (!g_stop && !t.interrupted && !tuning_done(plan)) {
            // Choosing now would choose from part of the tuning runs: another sweep of this file
            // still runs some, or some stopped unfinished (their logs say why).
            std::cout << "tuning is not complete (" << unfinished_tuning(plan)
                      << "): the reported seeds wait until every tuning run has ended; run the sweep again\n";
        } else if (!g_stop && !t.interrupted) {
            std::cout << "chosen by " << plan.exp.tune.metric << " on the tuning seeds:\n";
            for (const auto& line : choose_tuned(plan, *store)) std::cout << "  " << line << "\n";
            std::cout << "reporting: the grid's seeds at the chosen values\n";
            run_phase(
                path, o, plan, *store, history, sweep_id, jobs, cores, logs,
                [](const Point& p) { return !p.grid.tuning && p.chosen; }, t);
        }
    }
    const bool nothing_ran = t.finished + t.failed + t.interrupted == 0;
    if (nothing_ran) {
        std::cout << "nothing to run; see `plexus leaderboard " << plan.name << "`\n";
        return t.skipped_failed ? 1 : 0;
    }
    std::cout << "sweep '" << plan.name << "' (id " << sweep_id << "): " << t.finished << " finished, " << t.failed
              << " failed" << (t.interrupted ? ", " + std::to_string(t.interrupted) + " interrupted" : std::string())
              << (t.not_started ? ", " + std::to_string(t.not_started) + " not started" : std::string())
              << (t.skipped ? ", " + std::to_string(t.skipped) + " finished before" : std::string())
              << (t.left ? ", " + std::to_string(t.left) + " left to another process" : std::string()) << "\n"
              << "  plexus leaderboard " << plan.name << (plan.db == "results/plexus.db" ? "" : " --db " + plan.db);
    if (tuned) {
        std::string seeds;
        for (auto v : plan.exp.tune.seeds) seeds += (seeds.empty() ? "" : ",") + std::to_string(v);
        std::cout << " --best-over " << join(plan.exp.tune.keys, ",") << " --tuning-seeds " << seeds
                  << (plan.exp.tune.metric == "final_eval_loss" ? "" : " --tune-metric " + plan.exp.tune.metric);
    }
    std::cout << "\n";
    if (g_stop || t.interrupted) {
        std::cout << "  interrupted: run the same command again to resume (finished runs are skipped)\n";
        return 130;
    }
    return t.failed || t.skipped_failed ? 1 : 0;
}

}  // namespace plexus::host
