// plexus: the command-line entry point.
#include <cstdio>
#include <algorithm>
#include <cmath>
#include <charconv>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <string>
#include <tuple>
#include <thread>
#include <vector>

#include <unistd.h>

#include <plexus/build_config.hpp>

#include "tools/bench_network.hpp"
#include "base/cores.hpp"
#include "tools/config_reference.hpp"
#include "tools/conformance.hpp"
#include "tools/scaffold.hpp"
#include "runtime/harness.hpp"
#include "lab/leaderboard.hpp"
#include "device/memory_meter.hpp"
#include "tools/meta_train.hpp"
#include "lab/report.hpp"
#include "lab/slurm_sweep.hpp"
#include "lab/sweep.hpp"
#include "runtime/loader.hpp"
#include "runtime/weights.hpp"
#include "device/peak.hpp"
#include "store/results.hpp"
#include "base/text.hpp"

using namespace plexus;
using namespace plexus::host;

namespace {

// Every command: its name, its usage as `plexus --help` shows it, and what runs it. The help,
// the dispatch and the "did you mean" of an unknown command all read this one table.
struct Command {
    const char* name;
    const char* usage;
    int (*run)(std::vector<std::string>& args, int argc, char** argv);
};

const std::vector<Command>& commands();

const char* kHelpHead = R"(plexus: one harness to train, measure and compare distributed training algorithms.

)";

const char* kHelpTail = R"(
Experiment files (TOML) have sections [model], [data], [optimizer], [strategy], [comm] naming
plugins (name = "...") with their settings, and the host's [train], [results], [launch], [sim],
[checkpoint], [limits] and [[faults]].
`extends = "base.toml"` inherits another file. Unknown keys are errors.

Distributed runs ([launch] mode): single (one process), local (plexus starts `ranks` worker
processes here over c10d: Gloo, or NCCL for train.device = "cuda" in a CUDA build; [launch]
backend = auto|gloo|nccl), env (join a job started by torchrun, srun or mpirun: RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT or their OMPI_/SLURM_ equivalents), sim (`ranks` simulated
ranks in this process: deterministic, with a virtual clock; [sim] sets the device profile, the
network topology, stragglers and failures; its keys are listed in docs/guide/simulator.md).
Rank 0 records the run; what plugins record is recorded for every rank.
[checkpoint] every_steps, every_minutes, dir, keep: checkpoints for --resume (written atomically,
with a checksum; a damaged one or one of another config is refused).
[[faults]] tables apply failures on schedule (seeded, in the config hash, recorded):
  kind = "kill"  rank, step         the rank exits (a simulated one fails; gossip, A2CiD2, DADAO
                                    and async SGD train on without it; synchronous ones fail)
  kind = "slow"  rank, factor, step the rank computes `factor` times slower from `step`
  kind = "drop_link"  link = [a, b], time         the simulated link goes down at `time`
  kind = "corrupt"    link = [a, b], probability, time   a random bit of a message flips
On a GPU: [train] device = "cuda" and precision = "bf16" (autocast; parameters stay float32).

Benchmarks: scripts/bench.sh (CPU, ratios against references measured in the same run);
scripts/device-run.sh (CUDA build, GPU tests and GPU benchmark on a GPU machine).

Environment:
  PLEXUS_PLUGIN_PATH   extra plugin folders, colon-separated (searched after the build's own)
  PLEXUS_ALLOW_PLUGIN_PATH=1   honour experiment files' plugin_path (as --allow-plugin-path)
  GLOO_SOCKET_IFNAME   network interface for Gloo across machines

Exit codes: 0 finished, 1 failed, 2 usage, 3 diverged, 130 interrupted, 137 killed by [[faults]].
Robustness checks: scripts/fuzz.sh [SECONDS] (libFuzzer on the experiment loader),
scripts/sanitize.sh (ASan + UBSan build, unit tests under it).
Default database: results/plexus.db (relative to the current folder).
)";

std::string help_text() {
    std::string out = std::string(kHelpHead) + "usage:\n";
    for (const auto& c : commands()) out += c.usage;
    return out + "  plexus --help | --version\n" + kHelpTail;
}

int usage_error(const std::string& msg) {
    std::cerr << "error: " << msg << "\nrun `plexus --help` for usage\n";
    return kUsage;
}

// A command line that cannot be read, found while taking its flags apart (exit code 2).
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A whole number in [min, max] written in decimal digits, or nothing (the caller says what the
// flag takes): no sign, no exponent, nothing after the digits, and never an exception for a
// number too large.
std::optional<int64_t> parse_count(const std::string& text, int64_t min, int64_t max = INT64_MAX) {
    if (text.empty() || text.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    int64_t value = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (error != std::errc() || end != text.data() + text.size() || value < min || value > max) return std::nullopt;
    return value;
}

// Pulls "--flag VALUE" or "--flag=VALUE" out of args.
bool take_flag(std::vector<std::string>& args, const std::string& flag, std::string& value);

// --preset NAME, or --quick for the preset named quick.
void take_preset(std::vector<std::string>& args, std::string& preset) {
    take_flag(args, "--preset", preset);
    const auto quick = std::find(args.begin(), args.end(), "--quick");
    if (quick == args.end()) return;
    if (!preset.empty() && preset != "quick") throw UsageError("--quick is --preset quick: give one preset");
    preset = "quick";
    args.erase(quick);
}

bool take_flag(std::vector<std::string>& args, const std::string& flag, std::string& value) {
    for (size_t i = 0; i < args.size(); ++i) {
        const bool separate = args[i] == flag && i + 1 < args.size();
        if (!separate && args[i].rfind(flag + "=", 0) != 0) continue;
        value = separate ? args[i + 1] : args[i].substr(flag.size() + 1);
        args.erase(args.begin() + i, args.begin() + i + (separate ? 2 : 1));
        // No flag takes an empty value on purpose: `--db "$DB"` with DB unset would otherwise
        // quietly mean the default database.
        if (value.empty())
            throw UsageError(flag +
                             " was given an empty value (a shell variable that is unset or empty expands to nothing)");
        return true;
    }
    return false;
}

int cmd_plugins(std::vector<std::string> args) {
    PluginRegistry registry;
    const auto path = PluginRegistry::default_search_path();
    const bool markdown = std::find(args.begin(), args.end(), "--markdown") != args.end();
    args.erase(std::remove(args.begin(), args.end(), "--markdown"), args.end());
    registry.scan(path);
    registry.load_all();  // asked for every plugin: the trusted folders' libraries are loaded
    if (markdown) {
        if (!args.empty()) return usage_error("plugins --markdown takes no plugin name");
        std::cout << config_reference_markdown(registry);
        return kOk;
    }
    if (!args.empty()) {
        const std::string& name = args[0];
        std::vector<const PluginDescriptor*> matches;
        std::vector<std::string> all;
        for (const auto& l : registry.loaded()) {
            all.push_back(l.descriptor->name);
            if (l.descriptor->name == name) matches.push_back(l.descriptor);
        }
        if (matches.empty()) {
            std::string hint = did_you_mean(name, all);
            std::cerr << "error: no plugin named '" << name << "'" << (hint.empty() ? "" : "; " + hint) << "\n"
                      << "hint: `plexus plugins` lists them all\n";
            return kFailed;
        }
        for (const auto* d : matches) {
            std::cout << "[" << to_string(d->kind) << "] name = \"" << d->name << "\"   # version " << d->version
                      << ", " << registry.path_of(d) << "\n# " << d->summary << "\n";
            size_t width = 0;
            for (const auto& k : d->schema)
                width = std::max(width, k.name.size() + 3 + k.default_value.to_text().size());
            for (const auto& k : d->schema) {
                std::string line = k.name + " = " + k.default_value.to_text();
                line.resize(std::max(width, line.size()) + 2, ' ');
                std::cout << line << "# " << k.doc << " (" << to_string(k.type()) << ")\n";
            }
            std::cout << "\n";
        }
        return kOk;
    }
    std::cout << "search path: " << join(path, ":") << "\n";
    for (PluginKind kind :
         {PluginKind::Model, PluginKind::Dataset, PluginKind::Optimizer, PluginKind::Strategy, PluginKind::Comm}) {
        std::cout << to_string(kind) << ":\n";
        bool any = false;
        for (const auto& l : registry.loaded())
            if (l.descriptor->kind == kind) {
                char buf[512];
                std::snprintf(buf, sizeof buf, "  %-12s %-6s %s", l.descriptor->name.c_str(),
                              l.descriptor->version.c_str(), l.descriptor->summary.c_str());
                std::cout << buf << "\n";
                any = true;
            }
        if (!any) std::cout << "  (none)\n";
    }
    if (!registry.refused().empty()) {
        std::cout << "refused:\n";
        for (const auto& r : registry.refused()) std::cout << "  " << r.path << ": " << r.reason << "\n";
    }
    return kOk;
}

std::string format_time(double t) {
    if (t <= 0) return "-";
    time_t s = static_cast<time_t>(t);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", std::localtime(&s));
    return buf;
}

std::string summary_value(ResultsStore& store, int64_t run, const std::string& key) {
    for (const auto& [rank, k, v, text] : store.summaries(run))
        if (rank == 0 && k == key) {
            if (!v) return text.empty() ? "-" : text;
            char buf[32];
            std::snprintf(buf, sizeof buf, "%.4g", *v);
            return buf;
        }
    return "-";
}

// A run recorded as running whose process is gone (a crash, kill -9, a [[faults]] kill of a
// one-process run) shows as "died": nothing will ever finish its record.
std::string shown_status(ResultsStore& store, const RunInfo& run) {
    return run.status == "running" && !live_owner(store, run) ? "died" : run.status;
}
const char* kDiedNote =
    "died: its process is gone without recording how the run ended (a crash, kill -9, or a [[faults]] kill of "
    "a one-process run); `plexus run --resume ID` continues it (from its last checkpoint, if it wrote one)";

// `plexus check [NAME | FILE.so]... [--set KEY=VALUE]...`: the conformance checks of each plugin
// named (every plugin found, when none is); exit 1 when any check fails.
int cmd_check(std::vector<std::string> args) {
    std::vector<std::string> overrides;
    std::string value;
    while (take_flag(args, "--set", value)) overrides.push_back(value);
    PluginRegistry registry;
    registry.scan(PluginRegistry::default_search_path());
    registry.load_all();
    std::vector<const PluginDescriptor*> chosen;
    for (const auto& arg : args) {
        if (arg.size() > 3 && arg.compare(arg.size() - 3, 3, ".so") == 0) {
            chosen.push_back(&registry.load(arg));  // a refused library throws, saying why
            continue;
        }
        std::vector<std::string> names;
        size_t before = chosen.size();
        for (const auto& l : registry.loaded()) {
            names.push_back(l.descriptor->name);
            if (l.descriptor->name == arg) chosen.push_back(l.descriptor);
        }
        if (chosen.size() == before) {
            const std::string hint = did_you_mean(arg, names);
            throw Error("no plugin named '" + arg + "'" + (hint.empty() ? "" : "; " + hint),
                        "`plexus plugins` lists them; give a library's path to check one that is not installed");
        }
    }
    if (args.empty())
        for (const auto& l : registry.loaded()) chosen.push_back(l.descriptor);
    int passed = 0, failed = 0, skipped = 0;
    for (const auto* d : chosen) {
        for (const auto& r : check_plugin(registry, *d, overrides)) {
            (r.skipped ? skipped : r.passed ? passed : failed) += 1;
            std::cout << (r.skipped  ? "skip  "
                          : r.passed ? "ok    "
                                     : "FAIL  ")
                      << r.plugin << ": " << r.check << (r.detail.empty() ? "" : "\n      " + r.detail) << std::endl;
        }
    }
    std::cout << "plexus check: " << passed << " of " << passed + failed << " checks held"
              << (failed ? ", " + std::to_string(failed) + " did not" : "")
              << (skipped ? "; " + std::to_string(skipped) + " plugin(s) skipped for a missing setting" : "") << "\n";
    return failed ? kFailed : kOk;
}

// `plexus new KIND NAME [DIR]`: a plugin folder that builds out of tree and passes `plexus check`.
int cmd_new(const std::vector<std::string>& args) {
    if (args.size() < 2 || args.size() > 3) return usage_error("usage: plexus new KIND NAME [DIR]");
    const std::string dir = args.size() == 3 ? args[2] : args[1];
    for (const auto& path : write_plugin_scaffold(args[0], args[1], dir)) std::cout << "wrote " << path << "\n";
    std::cout << "next: cmake -S " << dir << " -B " << dir << "/build -DCMAKE_PREFIX_PATH=<plexus install prefix> && "
              << "cmake --build " << dir << "/build -j2 && plexus check " << dir << "/build/plugins/plexus_" << args[0]
              << "_" << args[1] << ".so\n";
    return kOk;
}

int cmd_merge(std::vector<std::string> args) {
    std::string db = "results/plexus.db";
    take_flag(args, "--db", db);
    if (args.empty()) return usage_error("plexus merge needs the databases to fold in");
    try {
        ResultsStore store(db);
        for (const auto& source : args) {
            if (source.rfind("--", 0) == 0) return usage_error("unknown option '" + source + "' for plexus merge");
            if (std::filesystem::absolute(source) == std::filesystem::absolute(db))
                return usage_error(source + " is the database merged into");
            const auto c = store.merge_from(source);
            std::cout << source << ": " << c.added << " run(s) added, " << c.updated << " updated, " << c.unchanged
                      << " already there\n";
        }
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
    return 0;
}

int cmd_runs(std::vector<std::string> args) {
    std::string db = "results/plexus.db", limit = "20";
    take_flag(args, "--db", db);
    take_flag(args, "--limit", limit);
    if (!args.empty()) return usage_error("unexpected argument '" + args[0] + "' for plexus runs");
    const auto count = parse_count(limit, 1);
    if (!count) return usage_error("--limit takes a number of runs >= 1, not '" + limit + "'");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        auto runs = store.list_runs(*count);
        if (runs.empty()) {
            std::cout << "no runs in " << db << " yet: try `plexus run experiments/quickstart.toml`\n";
            return kOk;
        }
        std::printf("%5s  %-20s %-11s %-16s %8s %10s %10s %7s  %s\n", "id", "name", "status", "started", "steps",
                    "eval loss", "tok/s", "MFU", "plugins");
        bool any_died = false;
        for (const auto& r : runs) {
            std::string mfu = summary_value(store, r.id, "mfu");
            if (mfu != "-") mfu = std::to_string(std::stod(mfu) * 100).substr(0, 4) + "%";
            std::string tps = summary_value(store, r.id, "tokens_per_s");
            if (tps != "-") tps = human_count(std::stod(tps));
            const std::string status = shown_status(store, r);
            any_died = any_died || status == "died";
            std::printf("%5lld  %-20s %-11s %-16s %8s %10s %10s %7s  %s\n", static_cast<long long>(r.id),
                        printable(r.name).substr(0, 20).c_str(), status.c_str(), format_time(r.started).c_str(),
                        summary_value(store, r.id, "steps").c_str(),
                        summary_value(store, r.id, "final_eval_loss").c_str(), tps.c_str(), mfu.c_str(),
                        printable(r.plugins).c_str());
        }
        if (any_died) std::cout << kDiedNote << "\n";
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

// "--metric", "--target", "--tokens", "--group-by", "--baseline", "--runs" of leaderboard and report.
bool take_board_options(std::vector<std::string>& args, BoardOptions& o, std::string& error) {
    std::string value;
    if (take_flag(args, "--metric", value)) o.metric = value;
    try {
        if (take_flag(args, "--target", value)) o.target = std::stod(value);
        if (take_flag(args, "--tokens", value)) o.tokens = std::stod(value);
    } catch (...) {
        error = "'" + value + "' is not a number";
        return false;
    }
    if (!std::isfinite(o.target) || !std::isfinite(o.tokens)) {
        error = "--target and --tokens take finite numbers (not nan or inf)";
        return false;
    }
    if (take_flag(args, "--group-by", value)) o.group_by = split(value, ',');
    if (take_flag(args, "--baseline", value)) o.baseline = value;
    if (take_flag(args, "--best-over", value)) o.best_over = split(value, ',');
    if (take_flag(args, "--tuning-seeds", value)) o.tuning_seeds = split(value, ',');
    if (take_flag(args, "--tune-metric", value)) o.tune_metric = value;
    if (take_flag(args, "--profile", value)) o.profile = value;
    auto it = std::find(args.begin(), args.end(), "--runs");
    if (it != args.end()) {
        o.per_run = true;
        args.erase(it);
    }
    return true;
}

int cmd_leaderboard(std::vector<std::string> args) {
    std::string db = "results/plexus.db", format = "table", error;
    BoardOptions o;
    take_flag(args, "--db", db);
    take_flag(args, "--format", format);
    if (!take_board_options(args, o, error)) return usage_error(error);
    if (args.size() > 1 || (!args.empty() && args[0].rfind("--", 0) == 0))
        return usage_error("unexpected argument '" + args.back() + "' for plexus leaderboard");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        std::string title;
        int unfinished = 0;
        const auto runs = runs_to_rank(store, args.empty() ? "" : args[0], title, unfinished);
        if (!o.profile.empty()) {
            std::cout << title << "\n" << format_profile(make_profile(store, runs, o, o.profile), format);
            return kOk;
        }
        auto board = make_board(store, runs, o);
        board.title = title;
        board.unfinished = unfinished;
        std::cout << format_board(board, format);
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

std::vector<int64_t> run_ids(const std::vector<std::string>& args, std::string& bad) {
    std::vector<int64_t> ids;
    for (const auto& a : args) {
        const auto id = parse_count(a, 1);
        if (!id) {
            bad = a;
            return {};
        }
        ids.push_back(*id);
    }
    return ids;
}

int cmd_compare(std::vector<std::string> args) {
    std::string db = "results/plexus.db", bad;
    take_flag(args, "--db", db);
    const auto ids = run_ids(args, bad);
    if (!bad.empty()) return usage_error("'" + bad + "' is not a run id (see `plexus runs`)");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        std::cout << compare_runs(store, ids);
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

int cmd_curves(std::vector<std::string> args) {
    std::string db = "results/plexus.db", keys, out, sweep, bad;
    take_flag(args, "--db", db);
    take_flag(args, "--keys", keys);
    take_flag(args, "-o", out);
    const bool by_sweep = take_flag(args, "--sweep", sweep);
    auto ids = run_ids(args, bad);
    if (!bad.empty()) return usage_error("'" + bad + "' is not a run id (see `plexus runs`)");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        if (by_sweep) {
            auto sw = store.find_sweep(sweep);
            if (!sw) throw Error("no sweep '" + sweep + "' in " + db, "`plexus leaderboard` shows the newest one");
            for (const auto& r : store.sweep_runs(sw->id))
                if (std::find(ids.begin(), ids.end(), r.id) == ids.end()) ids.push_back(r.id);  // once each
        }
        if (ids.empty()) return usage_error("plexus curves needs run ids or --sweep SWEEP");
        const std::string csv = curves_csv(store, ids, keys.empty() ? std::vector<std::string>{} : split(keys, ','));
        if (out.empty()) {
            std::cout << csv;
        } else {
            std::ofstream f(out);
            f << csv;
            if (!f) throw Error("cannot write " + out, "check the folder exists and is writable");
            std::cerr << "wrote " << out << "\n";
        }
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

int cmd_report(std::vector<std::string> args) {
    std::string db = "results/plexus.db", out, error;
    BoardOptions o;
    take_flag(args, "--db", db);
    take_flag(args, "-o", out);
    if (!take_board_options(args, o, error)) return usage_error(error);
    if (out.empty()) return usage_error("plexus report needs -o FILE.html");
    if (std::filesystem::is_directory(out))
        return usage_error("-o " + out + " is a folder: name the page's file, e.g. -o " +
                           (std::filesystem::path(out) / "report.html").string());
    if (args.size() > 1) return usage_error("unexpected argument '" + args.back() + "' for plexus report");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        const std::string html = make_report(store, args.empty() ? "" : args[0], o);
        const std::string tmp = out + ".tmp";
        {
            std::ofstream f(tmp);
            f << html;
            if (!f) {
                std::filesystem::remove(tmp);
                throw Error("cannot write " + out, "check the folder exists and is writable");
            }
        }
        std::error_code ec;
        std::filesystem::rename(tmp, out, ec);  // never a half-written report
        if (ec) {
            std::filesystem::remove(tmp);
            throw Error("cannot write " + out + ": " + ec.message(), "name a file in a folder you can write to");
        }
        std::cout << "wrote " << out << " (" << html.size() / 1024 << " KiB, self-contained)\n";
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

// --allow-plugin-path: the user trusts the experiment file's plugin_path. The consent travels
// in the environment, which the run's workers and a sweep's points inherit.
void take_plugin_path_consent(std::vector<std::string>& args) {
    const auto it = std::find(args.begin(), args.end(), "--allow-plugin-path");
    if (it == args.end()) return;
    args.erase(it);
    setenv(kAllowPluginPathVariable, "1", 1);
}

int cmd_sweep(std::vector<std::string> args) {
    take_plugin_path_consent(args);
    SweepOptions o;
    std::string value;
    while (take_flag(args, "--set", value)) o.overrides.push_back(value);
    take_flag(args, "--db", o.db);
    take_flag(args, "--progress", o.progress);
    take_preset(args, o.preset);
    const auto take_jobs = [&](const std::string& text) {
        const auto jobs = parse_count(text, 1, 1 << 20);  // capped at the cores later
        if (jobs) o.jobs = static_cast<int>(*jobs);
        return jobs.has_value();
    };
    if (take_flag(args, "-j", value) && !take_jobs(value))
        return usage_error("-j takes a number of runs >= 1, not '" + value + "'");
    take_flag(args, "--partition", o.partition);
    take_flag(args, "--time", o.time_limit);
    for (auto [flag, field, least] :
         {std::tuple{"--cpus-per-task", &o.cpus_per_task, 1}, std::tuple{"--gpus-per-task", &o.gpus_per_task, 0},
          std::tuple{"--ranks-per-point", &o.ranks_per_point, 1}})
        if (take_flag(args, flag, value)) {
            const auto n = parse_count(value, least, 1 << 20);
            if (!n)
                return usage_error(std::string(flag) + " takes a number >= " + std::to_string(least) + ", not '" +
                                   value + "'");
            *field = static_cast<int>(*n);
        }
    for (auto it = args.begin(); it != args.end();) {
        if (*it == "--slurm")
            o.slurm = true;
        else if (*it == "--status")
            o.status = true;
        else if (*it == "--retry-failed")
            o.retry_failed = true;
        else if (*it == "--dry-run")
            o.dry_run = true;
        else if (it->rfind("-j", 0) == 0 && it->size() > 2) {
            if (!take_jobs(it->substr(2)))
                return usage_error("-j takes a number of runs >= 1, not '" + it->substr(2) + "'");
        } else {
            ++it;
            continue;
        }
        it = args.erase(it);
    }
    if (!is_progress_mode(o.progress))
        return usage_error("--progress takes auto, bar, lines or none, not '" + o.progress + "'");
    if (args.size() != 1)
        return usage_error(args.empty() ? "plexus sweep needs an experiment file"
                                        : "unexpected argument '" + args[1] + "'");
    if (args[0].rfind("--", 0) == 0) return usage_error("unknown option '" + args[0] + "'");
    const bool slurm_options =
        !o.partition.empty() || !o.time_limit.empty() || o.cpus_per_task || o.gpus_per_task || o.ranks_per_point > 1;
    if (slurm_options && !o.slurm)
        return usage_error(
            "--partition, --time, --cpus-per-task, --gpus-per-task and --ranks-per-point go with --slurm");
    if (o.slurm && (o.status || o.dry_run)) return usage_error("--slurm submits: not with --status or --dry-run");
    if (o.status) return sweep_status(args[0], o);
    if (o.slurm) return submit_slurm_sweep(args[0], o);
    return run_sweep(args[0], o);
}

int cmd_show(std::vector<std::string> args) {
    std::string db = "results/plexus.db";
    take_flag(args, "--db", db);
    if (args.size() != 1) return usage_error("plexus show takes one run id");
    const auto parsed = parse_count(args[0], 1);
    if (!parsed) return usage_error("'" + args[0] + "' is not a run id (a number, see `plexus runs`)");
    const int64_t id = *parsed;
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        auto run = store.get_run(id);
        if (!run) {
            std::cerr << "error: no run " << id << " in " << db << "\nhint: `plexus runs --db " << db
                      << "` lists them\n";
            return kFailed;
        }
        const std::string status = shown_status(store, *run);
        // Everything recorded is shown through printable(): a name or an error may hold
        // terminal escapes (from a file name, a plugin's message), which must not reach the terminal.
        std::cout << "run " << run->id << " '" << printable(run->name) << "': " << status << "\n";
        if (status == "died") std::cout << "  " << kDiedNote << "\n";
        if (!run->error.empty()) std::cout << "  error:       " << printable(run->error) << "\n";
        std::cout << "  started:     " << format_time(run->started) << ", ended " << format_time(run->ended) << "\n"
                  << "  plugins:     " << printable(run->plugins) << "\n"
                  << "  device:      " << printable(run->device) << " on " << printable(run->host) << "\n"
                  << "  config hash: " << run->config_hash << "  git "
                  << (run->git_rev.empty() ? "-" : printable(run->git_rev)) << "\n"
                  << "  command:     " << printable(run->command) << "\n";
        std::cout << "settings:\n";
        for (const auto& [k, v] : store.params(id)) std::cout << "  " << printable(k) << " = " << printable(v) << "\n";
        std::cout << "summary:\n";
        for (const auto& [rank, k, v, text] : store.summaries(id)) {
            char buf[64];
            if (v) std::snprintf(buf, sizeof buf, "%.6g", *v);
            std::cout << "  " << (rank ? "rank " + std::to_string(rank) + " " : "") << printable(k) << " = "
                      << (v ? buf : (text.empty() ? "NULL" : printable(text))) << "\n";
        }
        std::cout << "curves (first -> min -> last, points):\n";
        for (const auto& key : store.metric_keys(id)) {
            auto series = store.metric_series(id, key);
            if (series.empty()) continue;
            double mn = series.front().second;
            for (const auto& p : series)
                if (p.second < mn) mn = p.second;
            char buf[200];
            std::snprintf(buf, sizeof buf, "  %-14s %.5g -> %.5g -> %.5g  (%zu, steps %lld..%lld)",
                          printable(key).c_str(), series.front().second, mn, series.back().second, series.size(),
                          static_cast<long long>(series.front().first), static_cast<long long>(series.back().first));
            std::cout << buf << "\n";
        }
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

// plexus export RUN --safetensors FILE: the weights a run kept, as its model names them.
int cmd_export(std::vector<std::string> args) {
    std::string db = "results/plexus.db", out;
    take_flag(args, "--db", db);
    take_flag(args, "--safetensors", out);
    if (args.size() != 1 || out.empty()) return usage_error("plexus export takes a run id and --safetensors FILE");
    const auto id = parse_count(args[0], 1);
    if (!id) return usage_error("'" + args[0] + "' is not a run id (a number, see `plexus runs`)");
    try {
        ResultsStore store(db, ResultsStore::Open::MustExist);
        const auto weights = run_weights(store, *id, db);
        const auto run = store.get_run(*id);
        int64_t params = 0;
        for (const auto& [name, t] : weights) params += t.numel();
        write_safetensors(out, weights,
                          {{"format", "pt"},
                           {"plexus.run", std::to_string(*id)},
                           {"plexus.config_hash", run->config_hash},
                           {"plexus.model", store.params(*id)["model.name"]}});
        std::cout << "wrote " << out << ": " << weights.size() << " tensors, "
                  << human_count(static_cast<double>(params)) << " parameters of run " << *id << "\n";
        return kOk;
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

// plexus tokenize ...: plexus-tokenize, beside this binary, does the work (host/CMakeLists.txt
// says why it is a program of its own).
int cmd_tokenize(const std::vector<std::string>& args) {
    const auto helper = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "plexus-tokenize";
    if (!std::filesystem::exists(helper)) {
        std::cerr << "error: this plexus was built without SentencePiece (no " << helper.string() << ")\n"
                  << "hint: install libsentencepiece-dev (scripts/setup.sh does) and build plexus again\n";
        return kFailed;
    }
    std::vector<char*> argv = {const_cast<char*>("plexus tokenize")};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(helper.c_str(), argv.data());
    std::cerr << "error: cannot run " << helper.string() << ": " << std::strerror(errno) << "\n";
    return kFailed;
}

int cmd_bench(std::vector<std::string> args) {
    if (args.empty() || (args[0] != "peak" && args[0] != "network"))
        return usage_error("plexus bench knows: peak, network");
    const std::string what = args[0];
    args.erase(args.begin());
    if (what == "network") {
        std::string ranks = "2";
        take_flag(args, "--ranks", ranks);
        if (!args.empty()) return usage_error("unexpected argument '" + args[0] + "'");
        const auto count = parse_count(ranks, 2, 256);
        if (!count) return usage_error("--ranks takes a number of processes from 2 to 256, not '" + ranks + "'");
        try {
            return bench_network(static_cast<int>(*count));
        } catch (const std::exception& e) {
            print_error(e);
            return kFailed;
        }
    }
    std::string threads_text = std::to_string(usable_cores());
    take_flag(args, "--threads", threads_text);
    if (!args.empty()) return usage_error("unexpected argument '" + args[0] + "' for plexus bench peak");
    const auto count = parse_count(threads_text, 1, 4096);
    if (!count) return usage_error("--threads takes a number of threads >= 1, not '" + threads_text + "'");
    const int threads = static_cast<int>(*count);
    set_compute_threads(threads);
    auto peak = cpu_peak(threads, /*refresh=*/true, /*verbose=*/true);
    std::printf("peak: %.2f GFLOP/s (%s), cached in %s\n", *peak.flops / 1e9, peak.source.c_str(),
                peak_cache_path().c_str());
    return kOk;
}

int cmd_run(std::vector<std::string>& args, int argc, char** argv) {
    RunOptions opts;
    for (int i = 0; i < argc; ++i) opts.command_line += (i ? " " : "") + std::string(argv[i]);
    opts.argv.assign(argv, argv + argc);
    take_plugin_path_consent(args);
    std::string value;
    while (take_flag(args, "--set", value)) opts.overrides.push_back(value);
    take_flag(args, "--db", opts.db);
    take_flag(args, "--progress", opts.progress);
    take_preset(args, opts.preset);
    take_flag(args, "--in-sweep", opts.in_sweep);
    if (take_flag(args, "--point", value)) {
        const auto point = parse_count(value, 0, INT32_MAX);
        if (!point) return usage_error("--point takes a grid point number (see `plexus sweep FILE --dry-run`)");
        opts.point = static_cast<int>(*point);
    }
    if (take_flag(args, "--init-from", value)) {  // a run id or a safetensors file: train.init_from
        const bool run_id = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
        opts.overrides.push_back("train.init_from=" + plexus::Value(run_id ? "run:" + value : value).to_text());
    }
    std::string from_step;
    const bool has_from_step = take_flag(args, "--from-step", from_step);
    if (take_flag(args, "--resume", value)) {
        const auto run = parse_count(value, 1);
        if (!run) return usage_error("--resume takes a run id (see `plexus runs`)");
        opts.resume_run = *run;
        if (has_from_step) {
            const auto step = parse_count(from_step, 0);
            if (!step) return usage_error("--from-step takes a checkpoint's step (a number >= 0)");
            opts.from_step = *step;
        }
        if (!args.empty())
            return usage_error("plexus run --resume RUN takes no file: the run's own file, point and --set are used");
        if (!opts.overrides.empty() || opts.point >= 0 || !opts.preset.empty())
            return usage_error(
                "--resume continues the run as it was recorded: --set, --preset and --point do not apply");
        return run_experiment("", opts);
    }
    if (has_from_step) return usage_error("--from-step goes with --resume RUN");
    if (args.size() != 1)
        return usage_error(args.empty() ? "plexus run needs an experiment file"
                                        : "unexpected argument '" + args[1] + "'");
    if (args[0].rfind("--", 0) == 0) return usage_error("unknown option '" + args[0] + "'");
    return run_experiment(args[0], opts);
}

int cmd_meta_train(std::vector<std::string>& args, int argc, char** argv) {
    MetaOptions opts;
    for (int i = 0; i < argc; ++i) opts.command_line += (i ? " " : "") + std::string(argv[i]);
    take_flag(args, "--db", opts.db);
    std::string value;
    if (take_flag(args, "--iterations", value)) {
        const auto iterations = parse_count(value, 0);
        if (!iterations) return usage_error("--iterations takes a number >= 0");
        opts.iterations = *iterations;
    }
    for (size_t i = 0; i < args.size(); ++i)
        if (args[i] == "--restart") opts.restart = true, args.erase(args.begin() + static_cast<long>(i--));
    if (args.size() != 1)
        return usage_error(args.empty() ? "plexus meta-train needs a meta-train file"
                                        : "unexpected argument '" + args[1] + "'");
    if (args[0].rfind("--", 0) == 0) return usage_error("unknown option '" + args[0] + "'");
    try {
        return meta_train(args[0], opts);
    } catch (const std::exception& e) {
        print_error(e);
        return kFailed;
    }
}

const std::vector<Command>& commands() {
    using Args = std::vector<std::string>;
    static const std::vector<Command> table = {
        {"run", R"(  plexus run FILE.toml [--set KEY=VALUE]... [--preset NAME | --quick] [--db PATH]
                   [--progress auto|bar|lines|none] [--point I [--in-sweep NAME]] [--init-from RUN|FILE]
                   [--allow-plugin-path]
        Train the experiment in FILE.toml and record it in the results database.
        --set overrides any setting (TOML syntax), e.g. --set optimizer.lr=3e-4 --set train.steps=200
        --init-from starts from run RUN's kept weights or a safetensors FILE (train.init_from).
        --preset NAME applies the file's [preset.NAME] settings first (--quick: [preset.quick]).
        --point I runs point I of the file's [grid] (see `plexus sweep --dry-run`); --in-sweep NAME
        records the run in sweep NAME of its database (what a Slurm sweep's array tasks do).
        --allow-plugin-path: load plugins from the folders the file's plugin_path names (their
        code runs: refused without this, or PLEXUS_ALLOW_PLUGIN_PATH=1).
        With [checkpoint] every_steps = N (or every_minutes = M) the run writes a checkpoint every
        N steps, and when interrupted (Ctrl-C); a killed run loses at most the steps since.
  plexus run --resume RUN [--from-step S] [--db PATH] [--progress MODE]
        Continue run RUN from its newest checkpoint that reads back whole (a damaged newer one is
        named and passed over; --from-step S: that step's) with the file, point and --set it
        started with (from the start, in the same run, if it has none). With a strategy that declares exact
        resume (every strategy but petra's delayed method) the result is bit-identical to an
        uninterrupted run's. Refused if the experiment file has changed since, or if the run is
        still running in another live process.
)",
         cmd_run},
        {"sweep", R"(  plexus sweep FILE.toml [-j N] [--retry-failed] [--dry-run] [--set KEY=VALUE]... [--db PATH]
                     [--preset NAME | --quick] [--progress auto|bar|lines|none] [--allow-plugin-path]
        Run every point of the file's [grid], N at once (never more cores than the machine has;
        a local multi-process run counts its ranks). Resumable: points already finished in the
        sweep are skipped; failed ones run again with --retry-failed; interrupted or killed ones
        continue from their checkpoints (--resume); one still running in another live process (a
        second sweep of the same file) is left to it. Each run is its own process: [limits]
        wall_minutes and memory_gb stop one that hangs or grows, and a run that crashes is
        marked failed with its signal and last log lines. --dry-run lists the points.
        With [grid.tune] it runs in two phases: the tuning seeds at every tuned value, then the
        grid's seeds at each group's best value only (chosen by the tuning metric's mean).
  plexus sweep FILE.toml --slurm [--partition P] [--time T] [--cpus-per-task N] [--gpus-per-task N]
                     [--ranks-per-point N] [--set KEY=VALUE]... [--db PATH] [--preset NAME]
        Submit the points still to run as one Slurm job array (sbatch); prints the job id. Each
        array task runs its point with `plexus run --point I` (under srun with N ranks and
        launch.mode = env for --ranks-per-point N) into a database of its own beside the sweep's
        (SQLite must not be shared across nodes), in DB_DIR/slurm/DB_NAME/SWEEP/. Submitting again
        folds those in, marks runs whose task ended without an end (scancel, a node failure, the
        time limit) interrupted, and submits what is not finished; with [grid.tune], a job after
        the tuning array does that, so the reported seeds follow on their own.
  plexus sweep FILE.toml --status [--db PATH]
        Fold the array tasks' databases into the sweep's (as `plexus merge` does) and show each
        point's state and the sweep's jobs still in Slurm's queue.
)",
         [](Args& a, int, char**) { return cmd_sweep(a); }},
        {"leaderboard",
         R"(  plexus leaderboard [SWEEP] [--metric M] [--target LOSS] [--tokens N] [--group-by K1,K2] [--runs]
                     [--baseline KEY=VALUE] [--best-over K1,K2 --tuning-seeds S1,S2 [--tune-metric M]]
                     [--profile KEY] [--format table|csv|json|markdown] [--db PATH]
        Rank the newest (or the named) sweep's grid points by M, with n seeds, mean ± std and the
        mean's 95% interval (Student t): final_eval_loss (default), loss_at (eval loss at --tokens),
        tokens_to / time_to (to reach eval loss --target, interpolated between evaluations;
        simulated time on the simulated cluster; a run that never gets there is "> budget",
        counted), mfu, tokens_per_s, peak_memory, bytes_sent, or any summary key. --baseline:
        each group's difference to that group, paired by seed, with its interval ("~": holds 0).
        --best-over: each group's setting of those keys is its best on the --tuning-seeds (by
        --tune-metric, final_eval_loss unless given, as a sweep's [grid.tune] chooses) and is
        reported on the other seeds (equal tuning budgets; the runs each choice had are shown).
        Warns of groups with fewer than 3 seeds, of unequal tuning budgets and of settings the
        groups also differ in. --profile KEY: performance profiles of KEY's values (the methods)
        over the groups of the other settings (the problems), with M = time_to or tokens_to.
        --runs: one row per run.
)",
         [](Args& a, int, char**) { return cmd_leaderboard(a); }},
        {"compare", R"(  plexus compare RUN RUN... [--db PATH]
        The settings that differ between runs, and their figures with deltas against the first.
)",
         [](Args& a, int, char**) { return cmd_compare(a); }},
        {"curves", R"(  plexus curves RUN... [--sweep SWEEP] [--keys loss,eval_loss] [-o FILE.csv] [--db PATH]
        Per-step curves as CSV (run, key, step, tokens, wall time, simulated time, value).
)",
         [](Args& a, int, char**) { return cmd_curves(a); }},
        {"report",
         R"(  plexus report [SWEEP] -o report.html [--metric M] [--target LOSS] [--tokens N] [--group-by K1,K2]
                [--runs] [--baseline KEY=VALUE] [--profile KEY] [--db PATH]
        A self-contained HTML page: the leaderboard (ranked as `plexus leaderboard` with the same
        options), loss against steps, tokens and time (a band over seeds), MFU and memory bars.
        Opens without a network.
)",
         [](Args& a, int, char**) { return cmd_report(a); }},
        {"plugins", R"(  plexus plugins [NAME | --markdown]
        List the plugins found and why any was refused; with NAME, print its settings; with
        --markdown, the whole configuration reference (docs/reference/config.md is its copy).
)",
         [](Args& a, int, char**) { return cmd_plugins(a); }},
        {"check", R"(  plexus check [NAME | FILE.so]... [--set KEY=VALUE]...
        Run the conformance checks on plugins (every plugin found, when none is named): the
        descriptor and schema, then checks by kind (docs/plugins.md lists them). Exit 1 if any fails.
)",
         [](Args& a, int, char**) { return cmd_check(a); }},
        {"new", R"(  plexus new KIND NAME [DIR]
        Write a plugin folder (CMakeLists.txt, NAME.cpp, README.md; KIND: model, dataset,
        optimizer, strategy or comm) that builds against the installed SDK and passes plexus check.
)",
         [](Args& a, int, char**) { return cmd_new(a); }},
        {"export", R"(  plexus export RUN --safetensors FILE [--db PATH]
        Write the model weights run RUN kept (a finished run with [checkpoint] keep_final = true,
        or its newest checkpoint) as safetensors, named as the model names its parameters.
        train.init_from = "FILE" starts another run from them.
)",
         [](Args& a, int, char**) { return cmd_export(a); }},
        {"tokenize", R"(  plexus tokenize FILE... --out DIR [--vocab N] [--model FILE.model] [--val-fraction F]
                [--shard-tokens N] [--format auto|uint16|uint32]
        Train a BPE tokenizer (SentencePiece; default 8000 tokens) on the text files, or use
        --model, and write DIR/tokenizer.model, DIR/train_NNN.bin and DIR/val_000.bin in llm.c's
        shard format for the tokens dataset: each line a document ending in the end-of-sequence
        token, a --val-fraction (0.01) of the lines, spread evenly, for validation. Token ids are uint16
        where the vocabulary fits (auto), else uint32 (llm.c's Llama 3 format).
  plexus tokenize --decode SHARD.bin --model FILE.model
        Print a shard's documents as text, one a line.
)",
         [](Args& a, int, char**) { return cmd_tokenize(a); }},
        {"merge", R"(  plexus merge SOURCE.db... [--db PATH]
        Fold other results databases into this one (default results/plexus.db): their runs with
        their settings, metrics, summaries and sweeps (found by name, or created). Idempotent: a
        run already there (same config hash, start and host) is skipped, or replaced when it has
        changed since (it was running, now it has ended). What `plexus sweep --slurm` and
        `--status` do with the databases of a sweep's array tasks.
)",
         [](Args& a, int, char**) { return cmd_merge(a); }},
        {"runs", R"(  plexus runs [--db PATH] [--limit N]
        List recorded runs, newest first.
)",
         [](Args& a, int, char**) { return cmd_runs(a); }},
        {"show", R"(  plexus show RUN [--db PATH]
        Print one run: status, settings, summaries and a summary of its curves.
)",
         [](Args& a, int, char**) { return cmd_show(a); }},
        {"meta-train", R"(  plexus meta-train FILE.toml [--db PATH] [--restart] [--iterations N]
        Meta-train the learned optimizer's weights (optimizers/lopt) with antithetic evolution
        strategies over the [[task]] families of FILE ([meta]: iterations, pairs, sigma, lr,
        inner_steps, seed, init, out, checkpoint_every, ranks, truncation). truncation = K > 0:
        PES, each task trained across iterations in truncations of K steps. Resumes from
        OUT.ckpt unless --restart; records the meta-loss curve as a run. Under torchrun, one rank
        per process.
)",
         cmd_meta_train},
        {"bench", R"(  plexus bench peak [--threads N]
        Measure this CPU's sustained float32 matmul FLOP/s (the peak MFU divides by) and cache it.
  plexus bench network [--ranks N]
        Time c10d/Gloo all-reduce on N local ranks and fit the simulator's link latency and
        bandwidth to it (the [sim] settings that model this machine).
)",
         [](Args& a, int, char**) { return cmd_bench(a); }},
    };
    return table;
}

}  // namespace

static int dispatch(int argc, char** argv);  // the commands; below

int main(int argc, char** argv) {
    try {
        return dispatch(argc, argv);
    } catch (const UsageError& e) {
        return usage_error(e.what());
    } catch (const std::exception& e) {  // each command reports its own errors; this is the last net
        print_error(e);
        return kFailed;
    }
}

static int dispatch(int argc, char** argv) {
    plexus::host::keep_freed_memory();
    // Every tensor this thread allocates is known to the allocator's bookkeeping, so a rank's
    // meter (runtime/harness.cpp) can take over blocks made before it started.
    plexus::host::MeterScope process_meter(std::make_shared<plexus::host::TensorMemoryMeter>());
    std::vector<std::string> args(argv + 1, argv + argc);
    if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
        std::cout << help_text();
        return args.empty() ? kUsage : kOk;
    }
    if (args[0] == "--version") {
        std::cout << "plexus " << PLEXUS_VERSION << " (" << PluginRegistry::host_fingerprint() << ")\n";
        return kOk;
    }
    const std::string cmd = args[0];
    args.erase(args.begin());
    for (const auto& c : commands()) {
        if (c.name != cmd) continue;
        // `plexus run -h`: that command's usage, not "no such file -h".
        if (std::find(args.begin(), args.end(), "--help") != args.end() ||
            std::find(args.begin(), args.end(), "-h") != args.end()) {
            std::cout << "usage:\n"
                      << c.usage << "\n`plexus --help` describes every command, the settings and the environment.\n";
            return kOk;
        }
        return c.run(args, argc, argv);
    }
    std::vector<std::string> names;
    for (const auto& c : commands()) names.push_back(c.name);
    const std::string hint = did_you_mean(cmd, names);
    return usage_error("unknown command '" + cmd + "'" + (hint.empty() ? "" : "; " + hint));
}
