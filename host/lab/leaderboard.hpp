// Reading results back: the leaderboard of a sweep (runs, or grid points with mean ± std and a
// 95% interval over seeds, ranked by a metric, with paired differences against a baseline group
// and the confounds between the groups), the comparison of runs, and curves as CSV.
// `plexus report` draws the same data.
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
    std::string baseline;               // KEY=VALUE: paired differences against that group, by seed
    // Equal tuning budgets: each group's setting of these keys is chosen on the tuning seeds (its
    // best mean there), and the group is reported on the other seeds only (held out).
    std::vector<std::string> best_over;
    std::vector<std::string> tuning_seeds;        // values of train.seed
    std::string tune_metric = "final_eval_loss";  // what the choice minimizes (a sweep's [grid.tune] metric)
    std::string profile;                          // KEY: performance profiles of its values (make_profile)
};

// A sample's mean, sample std and two-sided 95% Student-t interval for the mean (lo = hi = mean
// for one value; NaN for none).
struct Interval {
    int n = 0;
    double mean = NAN, std = NAN, lo = NAN, hi = NAN;
};
Interval t_interval(const std::vector<double>& values);

struct BoardRow {
    std::vector<std::string> key_values;  // in Board::keys order
    std::vector<int64_t> runs;
    std::vector<double> values;  // per run (NaN: the run has no value; +inf: censored, below)
    double mean = 0, std = 0;    // over the finite values; std is the sample std
    int n = 0;                   // finite values
    double lo = NAN, hi = NAN;   // the 95% interval of the mean (Student t, n - 1 degrees)
    int censored = 0;            // tokens_to / time_to: runs that never reached the target
    // Paired by train.seed against the baseline group: the mean difference (this - baseline), its
    // 95% interval, and how many seeds both have.
    double diff = NAN, diff_lo = NAN, diff_hi = NAN;
    int pairs = 0;
    std::string tuned;  // --best-over: the setting chosen on the tuning seeds ("optimizer.lr=0.003")
    int trials = 0;     // ... and how many tuning runs the choice had
};

struct Board {
    std::string title;         // "sweep 'lr' (id 3)"
    std::string metric;        // as asked
    std::string metric_label;  // with its direction
    bool lower_is_better = true;
    std::vector<std::string> keys;                     // the settings shown: those that vary (or the group-by keys)
    std::vector<BoardRow> rows;                        // best first; rows without a value last
    int runs = 0, unfinished = 0;                      // finished runs ranked; runs of the sweep not finished
    std::string baseline;                              // the baseline group (KEY=VALUE), if any
    std::vector<std::string> best_over, tuning_seeds;  // as asked
    // What a reader must know before trusting a difference: groups of fewer than 3 seeds, and
    // settings that differ between the runs compared besides the grouping keys (confounds),
    // the ones that change what is compared named (global batch, budget, clipping, schedule,
    // precision, evaluation).
    std::vector<std::string> warnings;
};

// The finished runs of a sweep (the newest run of each config hash), or of the whole database
// when it has no sweep. `which`: sweep id or name, empty for the newest. Throws plexus::Error.
std::vector<RunInfo> runs_to_rank(ResultsStore& store, const std::string& which, std::string& title, int& unfinished);

// One metric of one run: a summary key, or loss_at / tokens_to / time_to from its eval curve
// (tokens_to and time_to interpolate between evaluations; +inf for a run that never reached the
// target: censored, counted, not dropped).
double run_metric(ResultsStore& store, int64_t run, const BoardOptions& o);

Board make_board(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o);

// Equal tuning budgets (--best-over, and `plexus sweep` with [grid.tune]) choose alike: of the
// candidate settings ("optimizer.lr=0.1", as candidate_text writes them from a run's settings)
// with their values on the tuning seeds, the best finite mean; ties to the first in text order.
// Where no candidate has a finite mean (tokens_to or time_to with every run censored: none reached
// the target), the lowest mean of `fallback` (their final eval losses) chooses, so that the group
// is still reported ("> budget") rather than dropped.
using CandidateScores = std::map<std::string, std::vector<double>>;
std::string best_candidate(const CandidateScores& scores, bool lower_is_better, const CandidateScores& fallback = {});
std::string candidate_text(const std::map<std::string, std::string>& params, const std::vector<std::string>& keys);
bool lower_is_better(const std::string& metric);

// "table" (aligned text), "csv", "json" or "markdown".
std::string format_board(const Board& board, const std::string& format);

// Performance profiles (Dolan and Moré 2002, as AlgoPerf reports them): the methods are the values
// of one setting (`method_key`, e.g. variant), the problems the groups of every other varying
// setting but the seed (workload x scenario). Per problem, a method's figure is its mean over
// seeds (infinite if any seed never reached the target); its ratio is that over the best
// method's; rho(tau) is the share of problems on which the method is within tau of the best.
struct Profile {
    std::string metric, method_key;
    std::vector<std::string> methods, problems;
    std::vector<std::vector<double>> ratio;  // [method][problem]; inf: not reached, or no run
    std::vector<double> taus;
    std::vector<std::vector<double>> rho;  // [method][tau]
};
// `o.metric` must be one where lower is better (time_to, tokens_to, a loss).
Profile make_profile(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o,
                     const std::string& method_key);
// "table" (rho over tau, then the ratios per problem) or "csv" (method, tau, rho).
std::string format_profile(const Profile& p, const std::string& format);

// The settings that differ between the runs that have them (name, description, results.* and
// train.threads aside).
std::vector<std::string> varying_keys(const std::vector<std::map<std::string, std::string>>& params);

// `plexus compare`: settings that differ, then summary figures with deltas against the first run.
std::string compare_runs(ResultsStore& store, const std::vector<int64_t>& runs);

// `plexus curves`: one CSV row per metric row (rank 0): run, key, step, tokens, wall and
// simulated time, value.
std::string curves_csv(ResultsStore& store, const std::vector<int64_t>& runs, const std::vector<std::string>& keys);

}  // namespace plexus::host
