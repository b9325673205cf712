// Reading results back: the leaderboard of a sweep (runs, or grid points with mean ± std over
// seeds, ranked by a metric), the comparison of runs, and curves as CSV. `plexus report` draws
// the same data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "store/results.hpp"

namespace plexus::host {

struct BoardOptions {
    std::string metric = "final_eval_loss";
    double target = 0;                  // tokens_to / time_to: the eval loss to reach
    double tokens = 0;                  // loss_at: the token budget
    std::vector<std::string> group_by;  // empty: every varying key but the seed
    bool per_run = false;               // one row per run, no grouping
};

struct BoardRow {
    std::vector<std::string> key_values;  // in Board::keys order
    std::vector<int64_t> runs;
    std::vector<double> values;  // per run (NaN: the run has no value)
    double mean = 0, std = 0;    // over the finite values; std is the sample std
    int n = 0;                   // finite values
};

struct Board {
    std::string title;         // "sweep 'lr' (id 3)"
    std::string metric;        // as asked
    std::string metric_label;  // with its direction
    bool lower_is_better = true;
    std::vector<std::string> keys;  // the settings shown: those that vary (or the group-by keys)
    std::vector<BoardRow> rows;     // best first; rows without a value last
    int runs = 0, unfinished = 0;   // finished runs ranked; runs of the sweep not finished
};

// The finished runs of a sweep (the newest run of each config hash), or of the whole database
// when it has no sweep. `which`: sweep id or name, empty for the newest. Throws plexus::Error.
std::vector<RunInfo> runs_to_rank(ResultsStore& store, const std::string& which, std::string& title, int& unfinished);

// One metric of one run: a summary key, or loss_at / tokens_to / time_to from its eval curve.
double run_metric(ResultsStore& store, int64_t run, const BoardOptions& o);

Board make_board(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o);

// "table" (aligned text), "csv", "json" or "markdown".
std::string format_board(const Board& board, const std::string& format);

// The settings that differ between the runs that have them (name, description, results.* and
// train.threads aside).
std::vector<std::string> varying_keys(const std::vector<std::map<std::string, std::string>>& params);

// `plexus compare`: settings that differ, then summary figures with deltas against the first run.
std::string compare_runs(ResultsStore& store, const std::vector<int64_t>& runs);

// `plexus curves`: one CSV row per metric row (rank 0): run, key, step, tokens, wall and
// simulated time, value.
std::string curves_csv(ResultsStore& store, const std::vector<int64_t>& runs, const std::vector<std::string>& keys);

}  // namespace plexus::host
