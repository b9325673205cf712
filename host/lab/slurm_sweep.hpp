// Sweeps on Slurm: `plexus sweep FILE --slurm` submits the points still to run as one job array,
// each array task running its point into a database of its own (SQLite's locking is unreliable
// on the network file systems clusters share, so no two nodes write one file); submitting again,
// or `--status`, folds those databases into the sweep's and marks the runs of tasks that ended
// without recording an end (scancel, a node failure, the time limit) interrupted.
#pragma once

#include <string>

#include "lab/sweep.hpp"

namespace plexus::host {

// `plexus sweep FILE --slurm [...]`: an exit code (0: submitted, or nothing left to submit).
int submit_slurm_sweep(const std::string& path, const SweepOptions& options);

// `plexus sweep FILE --status`: folds the array tasks' databases in, prints each phase's points by
// state and the sweep's jobs in Slurm's queue.
int sweep_status(const std::string& path, const SweepOptions& options);

}  // namespace plexus::host
