// `plexus sweep FILE`: expands the file's [grid] and runs every point as its own `plexus run`
// process (isolation: one crashing run cannot take the others down), several at once with -j,
// never giving out more cores than the machine has. Resumable: a point whose config hash already
// has a finished run in the sweep is skipped.
#pragma once

#include <string>
#include <vector>

namespace plexus::host {

struct SweepOptions {
    std::vector<std::string> overrides;  // --set, applied to every point
    std::string preset;                  // --preset (--quick): the file's [preset.NAME], applied to every point
    std::string db;                      // --db
    int jobs = 1;                        // -j
    bool retry_failed = false;           // re-run points whose last run failed or diverged
    bool dry_run = false;                // list the points and their state, run nothing
    std::string progress = "auto";       // auto (bar on a terminal), bar, lines, none
    // --slurm: submit the points as one Slurm job array (lab/slurm_sweep.hpp) instead of running
    // them here; --status: fold the array tasks' databases in and show where the sweep stands.
    bool slurm = false, status = false;
    std::string partition, time_limit;         // --partition, --time (sbatch's)
    int cpus_per_task = 0, gpus_per_task = 0;  // 0: Slurm's default
    int ranks_per_point = 1;                   // >1: each point is an srun of that many ranks (launch.mode = env)
};

// Returns an exit code: 0 when every point has a finished run, 1 if any failed, 130 interrupted.
int run_sweep(const std::string& path, const SweepOptions& options);

}  // namespace plexus::host
