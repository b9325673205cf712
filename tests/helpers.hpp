// Shared test helpers: temporary folders, running the plexus binary, building plugins through
// the real host path (experiment file -> registry -> resolve -> HostContext).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>

#include <chrono>
#include <cmath>
#include <exception>
#include <functional>
#include <map>
#include <thread>
#include <vector>

#include <sqlite3.h>

#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "transport/launch.hpp"
#include "runtime/loader.hpp"
#include "store/results.hpp"
#include "transport/c10d.hpp"

namespace plexus::test {

namespace fs = std::filesystem;

// Runs SQL on a database file with SQLite's library (not the sqlite3 program, which GPU machines
// lack): the first column of every row, one per line; "error: ..." if it fails.
inline std::string sql_rows(const fs::path& db, const std::string& sql) {
    sqlite3* h = nullptr;
    std::string out;
    if (sqlite3_open(db.c_str(), &h) != SQLITE_OK) {
        out = "error: " + std::string(sqlite3_errmsg(h));
    } else {
        auto collect = [](void* text, int columns, char** values, char**) {
            if (columns > 0) *static_cast<std::string*>(text) += std::string(values[0] ? values[0] : "NULL") + "\n";
            return 0;
        };
        char* message = nullptr;
        if (sqlite3_exec(h, sql.c_str(), collect, &out, &message) != SQLITE_OK) out = "error: " + std::string(message);
        sqlite3_free(message);
    }
    sqlite3_close(h);
    return out;
}

// A fresh folder under /tmp, removed at the end of the test.
struct TempDir {
    fs::path path;
    TempDir() {
        char tmpl[] = "/tmp/plexus-test-XXXXXX";
        path = mkdtemp(tmpl);
        fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string file(const std::string& name, const std::string& text) const {
        auto p = path / name;
        fs::create_directories(p.parent_path());
        std::ofstream(p) << text;
        return p.string();
    }
    std::string operator/(const std::string& name) const { return (path / name).string(); }
};

struct CommandResult {
    int exit_code = -1;   // its exit status, or 128 + the signal that killed it
    bool exited = false;  // it exited (rather than died of a signal: 130 can be either)
    std::string output;   // stdout and stderr together
};

inline void set_status(CommandResult& r, int status) {
    r.exited = WIFEXITED(status);
    r.exit_code = r.exited ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline CommandResult run_command(const std::string& command) {
    CommandResult r;
    FILE* p = popen((command + " 2>&1").c_str(), "r");
    if (!p) return r;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
    set_status(r, pclose(p));
    return r;
}

// Waits for a process started with its stdout and stderr in `log`; its status and that output.
inline CommandResult wait_logged(pid_t pid, const std::string& log) {
    CommandResult r;
    int status = 0;
    waitpid(pid, &status, 0);
    set_status(r, status);
    std::ifstream in(log);
    r.output.assign((std::istreambuf_iterator<char>(in)), {});
    return r;
}

// Polls `db` every 50 ms, for up to 30 s, until its newest run has recorded `steps` losses (a run
// in another process is under way); returns how many it had by then.
inline size_t wait_for_losses(const std::string& db, size_t steps) {
    size_t seen = 0;
    for (int i = 0; i < 600 && seen < steps; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        try {
            host::ResultsStore store(db);
            const auto runs = store.list_runs(1);
            if (!runs.empty()) seen = store.metric_series(runs[0].id, "loss").size();
        } catch (...) {  // the database may not exist yet, or be mid-write
        }
    }
    return seen;
}

// Runs the plexus binary with `args`; the peak is fixed so no test measures the CPU.
inline CommandResult run_plexus(const std::string& args, const std::string& env = "") {
    return run_command(env + (env.empty() ? "" : " ") + std::string(PLEXUS_BINARY) + " " + args);
}

// The build's plugins, loaded once per test binary.
inline host::PluginRegistry& registry() {
    static host::PluginRegistry* r = [] {
        auto* reg = new host::PluginRegistry();
        reg->scan(host::PluginRegistry::default_search_path());
        return reg;
    }();
    return *r;
}

inline host::ResolvedConfig resolve_text(const TempDir& dir, const std::string& toml) {
    return host::resolve(host::load_experiment(dir.file("exp.toml", toml)), registry());
}

// Elements of every parameter of the model an experiment builds (what a replica's gradient
// all-reduce carries), counted on a model made here, not by the strategy under test.
inline int64_t model_numel(const TempDir& dir, const std::string& toml) {
    const auto cfg = resolve_text(dir, toml);
    host::HostContext bootstrap(cfg, torch::kCPU, 0);
    const auto dataset = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), bootstrap);
    host::HostContext ctx(cfg, torch::kCPU, dataset->vocab_size());
    int64_t n = 0;
    for (const auto& p : ctx.make_model()->parameters()) n += p.numel();
    return n;
}

// The newest run of a results database with its summaries by key (numbers and texts; rank 0
// in `value`/`text`, every rank in `per_rank`): what a test reads after `plexus run`.
struct NewestRun {
    int64_t id = 0;
    std::map<std::string, double> value;
    std::map<std::string, std::string> text;
    std::map<int, std::map<std::string, double>> per_rank;
    explicit NewestRun(host::ResultsStore& store) : id(store.list_runs(1).at(0).id) {
        for (const auto& [rank, key, number, words] : store.summaries(id)) {
            if (number) per_rank[rank][key] = *number;
            if (rank != 0) continue;
            if (number) value[key] = *number;
            text[key] = words;
        }
    }
    double operator[](const std::string& key) const {
        auto it = value.find(key);
        return it == value.end() ? NAN : it->second;
    }
};

// `plexus run FILE --db DB ARGS`, required to succeed (showing the command's output where it
// does not), and the run it recorded. For the tests' Catch2 translation units.
inline NewestRun run_recorded(const std::string& file, const std::string& db, const std::string& args) {
    const auto res = run_plexus("run " + file + " --db " + db + " " + args);
    INFO(args << "\n" << res.output);
    REQUIRE(res.exit_code == 0);
    host::ResultsStore store(db);
    return NewestRun(store);
}

// Runs `body(rank, transport)` on `world` threads of this process joined over c10d/Gloo, as
// processes would be; rethrows the first rank's exception after all have finished.
inline void with_gloo_ranks(int world, const std::function<void(int, std::shared_ptr<Transport>)>& body) {
    const int port = host::free_port();
    std::vector<std::exception_ptr> errors(static_cast<size_t>(world));
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r)
        threads.emplace_back([&, r] {
            try {
                host::Rendezvous rv;
                rv.master_port = port;
                rv.rank = r;
                rv.world_size = world;
                rv.timeout_s = 60;
                body(r, host::make_gloo_transport(rv));
            } catch (...) { errors[static_cast<size_t>(r)] = std::current_exception(); }
        });
    for (auto& t : threads) t.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

// A tiny model on synthetic data: fast enough for any test. One compute thread: tests run two at
// a time (ctest -j2), and two-thread OpenMP pools spinning against each other slowed
// multi-process tests several times over.
// The file is tests/tiny_experiment.toml (read as is: a test's line numbers count from its first,
// empty line), shared with tests/python and tests/slurm.
inline const std::string kTinyExperiment = [] {
    std::ifstream in(std::string(PLEXUS_SOURCE_DIR) + "/tests/tiny_experiment.toml");
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}();

}  // namespace plexus::test
