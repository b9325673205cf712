// The training harness: one experiment, one rank, the same loop for every strategy.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "device/peak.hpp"  // set_compute_threads
#include "runtime/exit_codes.hpp"

namespace plexus::host {

struct Experiment;
struct RunInfo;
class PluginRegistry;
class ResultsStore;

struct RunOptions {
    std::vector<std::string> overrides;  // --set assignments
    std::string preset;                  // --preset NAME (--quick): the file's [preset.NAME], before --set
    std::string db;                      // --db: overrides results.db
    std::string progress;                // --progress: overrides results.progress
    std::string command_line;            // recorded with the run
    std::vector<std::string> argv;       // the whole command line: local workers re-run it
    int point = -1;                      // --point: which point of the file's [grid] to run
    std::string in_sweep;                // --in-sweep NAME: the run belongs to that sweep of its database
    int64_t resume_run = 0;              // --resume: continue this run from its newest checkpoint
    int64_t from_step = -1;              // --from-step: from this checkpoint instead (-1: the newest intact)
};

// --progress and results.progress: auto (a bar on a terminal), bar, lines or none.
bool is_progress_mode(const std::string& mode);

// The environment variable that says the user trusts experiment files' plugin_path
// (--allow-plugin-path sets it for the process and its children).
inline constexpr const char* kAllowPluginPathVariable = "PLEXUS_ALLOW_PLUGIN_PATH";

// Scans (loads nothing) the default plugin folders and the experiment's plugin_path; throws,
// naming the key, if plugin_path is set without the user's consent or is not a list of folders.
void scan_plugins(const Experiment& exp, PluginRegistry& registry);

// Runs the experiment in `path` (with options.resume_run: the file, point and overrides recorded
// with that run, `path` unused); returns an ExitCode. Prints errors with their hints.
int run_experiment(const std::string& path, const RunOptions& options);

// Learning-rate factor in [0, 1] after `tokens` tokens: linear warm-up, then constant,
// cosine or linear decay to min_ratio at `horizon` tokens.
double lr_factor(const std::string& schedule, double tokens, double warmup, double horizon, double min_ratio);

// The short git revision of the repository holding `dir` ("" outside one), and this machine's
// name: recorded with every run.
std::string git_revision(const std::string& dir);
std::string hostname();

// A run recorded as "running" may be running now, in another sweep or terminal: the process that
// owns it is written with it ("host:pid:start"). Says who runs it ("process 123 on this host"),
// or nothing when no live process does: the owner on this host has exited (a pid reused later
// has another start time), or the owner is on another host and its heartbeat is older than
// kHeartbeatSeconds. Runs recorded before this existed have no owner: nothing.
constexpr double kHeartbeatSeconds = 600;
std::string process_tag();
std::optional<std::string> live_owner(ResultsStore& store, const RunInfo& run);
// The same for any process tag, given when it last showed signs of life (epoch seconds): a sweep
// holding a point (ResultsStore::claim_point) is judged this way.
std::optional<std::string> live_process(const std::string& tag, double last_seen);

// Keeps freed tensor memory in the process instead of handing it back to the kernel and
// faulting it in again at the next step (glibc malloc's thresholds; a no-op elsewhere).
void keep_freed_memory();

}  // namespace plexus::host
