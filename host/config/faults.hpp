// [[faults]] in an experiment: failures and degradations applied on schedule, deterministically,
// as part of the experiment (they enter its config hash and are recorded with the run).
//
//   [[faults]]                          [[faults]]
//   kind = "kill"                       kind = "slow"
//   rank = 2                            rank = 1
//   step = 30                           factor = 3.0
//                                       step = 10        # from this step on (default 0)
//   [[faults]]                          [[faults]]
//   kind = "drop_link"                  kind = "corrupt"
//   link = [0, 1]                       link = [0, 1]
//   time = 0.5                          probability = 0.01   # per message (default 1)
//                                       time = 0.0           # from this simulated time (default 0)
//
// kill: the rank's process exits at once (code 137) at the start of that step, as if killed;
// on the simulated cluster the rank fails, and strategies that tolerate a lost worker (gossip,
// A2CiD2, DADAO, async SGD) train on without it while the others fail cleanly. A resumed run
// (--resume) continues past its kills. slow: the rank computes `factor` times slower from that
// step (simulated time; real runs sleep). drop_link and corrupt act on the simulated network
// only: the link goes down at that simulated time, or a random bit of each message over it
// flips (seeded).
//
// The simulator's [sim] keys for stragglers and failures are shorthands for faults, and become
// entries of the same plan (fault_plan), with the same executors:
//   slow_ranks = [r], slow_factor = f      slow, rank r, factor f, from step 0
//   slow_fraction = p                      slow, factor f, on round(p x ranks) ranks drawn from the seed
//   fail_ranks = [[r, t]]                  kill, rank r, at simulated time t (not a step)
//   fail_links = [[a, b, t]]               drop_link, link [a, b], time t
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <plexus/config.hpp>

namespace plexus::host {

struct Fault {
    std::string kind;  // kill, slow, drop_link, corrupt
    int rank = -1;
    int64_t step = 0;
    double factor = 1.0;
    int a = -1, b = -1;  // the link
    double time = 0.0;
    double probability = 1.0;
    bool at_time = false;               // a kill at simulated `time` (sim.fail_ranks), not at `step`
    std::string text;                   // the canonical form, "kind=kill rank=2 step=30"
    std::string origin = "[[faults]]";  // or the [sim] key it was written as
};

// One [[faults]] table (key -> value) as its canonical text; throws plexus::Error naming
// `where` and the key at fault.
std::string fault_text(const std::vector<std::pair<std::string, Value>>& table, const std::string& where);
// The setting `faults` (canonical texts) parsed and checked against the run's ranks and mode.
std::vector<Fault> parse_faults(const Value& faults, int ranks, bool simulated);

// The run's one fault plan, from resolved settings: [[faults]] first (their order numbers the
// corrupt faults' counters), then, on the simulated cluster, the [sim] shorthands above
// (slow_fraction's ranks are drawn from train.seed).
std::vector<Fault> fault_plan(const std::map<std::string, Value>& values, int ranks, bool simulated);

// A setting that holds rows of numbers ([[a, b, t], ...]), each of min_len..max_len numbers;
// throws naming `key` and the expected `shape`.
std::vector<std::vector<double>> number_rows(const Value& list, const std::string& key, size_t min_len, size_t max_len,
                                             const std::string& shape);
// `v` as a rank in 0..n-1; throws naming `key` otherwise.
int rank_in(double v, int n, const std::string& key);

}  // namespace plexus::host
