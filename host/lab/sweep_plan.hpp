// A sweep's plan, shared by the local sweep (lab/sweep.cpp) and the Slurm one (lab/slurm_sweep.cpp):
// every grid point resolved, what the database says of each, and [grid.tune]'s choice.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "config/experiment.hpp"
#include "lab/sweep.hpp"

namespace plexus::host {

class PluginRegistry;
class ResultsStore;

struct Point {
    int index = 0;
    GridPoint grid;
    std::string hash;
    int slots = 1;            // cores-worth this run needs: its ranks for mode = local
    std::string last_status;  // of the newest run of this point in the sweep, "" if none
    int64_t last_run = 0;
    bool chosen = true;       // [grid.tune]: a reported point at its group's chosen values (known after tuning)
    double wall_limit_s = 0;  // [limits]: 0 none
    double memory_limit_bytes = 0;
    std::filesystem::path checkpoints;  // where its runs' checkpoint folders go (RunCheckpoints::of)
    int64_t resume_run = 0;             // the run this sweep continues in place (--resume), 0: a new run
};

// What a sweep runs: every point resolved (so a bad one is named before anything starts), the
// sweep's name and database, and what varies.
struct SweepPlan {
    Experiment exp;
    std::vector<Point> points;
    std::string name, db;
    std::vector<std::string> varying;
};
SweepPlan plan_sweep(const std::string& path, const SweepOptions& o, PluginRegistry& registry);

// What the database says of the points: their newest run in this sweep, and which are running in
// another live process (a second sweep of the same file), left to it.
struct History {
    int64_t sweep_id = 0;
    std::map<int, std::string> owned_elsewhere;  // point index -> "run N, host:pid"
};
History recall(ResultsStore& store, SweepPlan& plan);

// Whether a point runs again: new, interrupted, left running by a killed process; failed or
// diverged with retry_failed.
bool should_run(const Point& p, bool retry_failed);
bool should_run(const Point& p, const History& h, bool retry_failed);
bool continues_in_place(const Point& p, ResultsStore& store);

// [grid.tune]: each group's choice from its finished tuning runs; marks the reported points
// chosen or not; a line per group.
std::vector<std::string> choose_tuned(SweepPlan& plan, ResultsStore& store);
bool tuning_done(const SweepPlan& plan);
std::string unfinished_tuning(const SweepPlan& plan);  // "point 3 running (run 7), ..."

}  // namespace plexus::host
