#include "lab/leaderboard.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include <boost/math/distributions/students_t.hpp>
#include <plexus/error.hpp>

#include "config/experiment.hpp"
#include "base/text.hpp"

namespace plexus::host {

namespace {

// Figures where more is better; every other metric ranks lowest first.
bool higher_is_better(const std::string& metric) {
    static const std::set<std::string> higher = {"mfu", "tokens_per_s", "tokens", "steps"};
    return higher.count(metric) > 0;
}

bool ignored_key(const std::string& k) {
    return k == "name" || k == "description" || k == "plugin_path" || k == "train.threads" ||
           k.rfind("results.", 0) == 0;
}

std::string fmt(double v) {
    if (!std::isfinite(v)) return "-";
    char buf[32];
    const double a = std::fabs(v);
    if (a != 0 && (a >= 1e6 || a < 1e-3))
        std::snprintf(buf, sizeof buf, "%.4g", v);
    else if (a >= 100)
        std::snprintf(buf, sizeof buf, "%.1f", v);
    else
        std::snprintf(buf, sizeof buf, "%.4f", v);
    std::string s = buf;
    if (s.find('.') != std::string::npos && s.find('e') == std::string::npos) {
        while (s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
    }
    return s;
}

std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string out = "\"";
    for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
    return out + "\"";
}

std::string json_string(const std::string& s) { return "\"" + json_escape(s) + "\""; }

std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.10g", v);
    return buf;
}

std::string join_ids(const std::vector<int64_t>& ids) {
    std::string s;
    for (auto id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
    return s;
}

// Settings whose difference changes what a comparison compares, with what they change.
const std::map<std::string, std::string>& telling_keys() {
    static const std::map<std::string, std::string> keys = {
        {"train.batch_size", "the global batch (tokens per update)"},
        {"launch.ranks", "the global batch (tokens per update)"},
        {"strategy.accumulate", "the global batch (tokens per update)"},
        {"train.tokens", "the token budget"},
        {"train.steps", "the token budget"},
        {"train.grad_clip", "gradient clipping"},
        {"train.lr_schedule", "the learning-rate schedule"},
        {"train.warmup_tokens", "the learning-rate schedule"},
        {"train.min_lr_ratio", "the learning-rate schedule"},
        {"train.precision", "the precision"},
        {"train.eval_batches", "the evaluation protocol"},
        {"train.eval_every", "the evaluation protocol"},
    };
    return keys;
}

using Params = std::vector<std::map<std::string, std::string>>;

std::string value_in(const std::map<std::string, std::string>& p, const std::string& k) {
    const auto it = p.find(k);
    return it == p.end() ? std::string() : it->second;
}

// Whether `key` takes one value wherever the `by` keys take the same values (in these runs).
bool determined_by(const Params& params, const std::string& key, const std::vector<std::string>& by) {
    std::map<std::vector<std::string>, std::string> seen;
    for (const auto& p : params) {
        std::vector<std::string> at;
        for (const auto& k : by) at.push_back(value_in(p, k));
        const auto [it, fresh] = seen.emplace(at, value_in(p, key));
        if (!fresh && it->second != value_in(p, key)) return false;
    }
    return true;
}

// The keys that tell groups apart: with a grid's named axes (variant, workload, ...: the keys
// without a dot), those and the other keys they do not determine (a variant's strategy.name is
// its own; a zip's second key stays); without, every key given. (Top-level settings such as
// faults have no dot either: they are not axes.)
std::vector<std::string> telling_apart(const Params& params, const std::vector<std::string>& keys) {
    auto is_named = [](const std::string& k) {
        if (k.find('.') != std::string::npos) return false;
        for (const auto& top : top_level_schema())  // faults is a setting, not a named axis
            if (top.name == k) return false;
        return true;
    };
    std::vector<std::string> named;
    for (const auto& k : keys)
        if (is_named(k)) named.push_back(k);
    if (named.empty()) return keys;
    std::vector<std::string> out;
    for (const auto& k : keys)
        if (is_named(k) || !determined_by(params, k, named)) out.push_back(k);
    return out;
}

// Groups of fewer than 3 seeds, and the settings the compared runs differ in: those that differ
// within a group (confounds), and the telling ones wherever they differ.
std::vector<std::string> board_warnings(const Board& b, const std::vector<std::string>& varying, const Params& params) {
    std::vector<std::string> out;
    int few = 0;
    for (const auto& r : b.rows) few += r.runs.size() > 0 && r.n + r.censored < 3 ? 1 : 0;
    if (few && b.rows.size() > 0)
        out.push_back(
            std::to_string(few) + " of " + std::to_string(b.rows.size()) +
            " group(s) have fewer than 3 seeds: their intervals are wide or missing, and a difference between "
            "them is not a result");
    if (!b.best_over.empty()) {
        std::set<int> budgets;
        std::string each;
        for (const auto& r : b.rows) {
            budgets.insert(r.trials);
            each += (each.empty() ? "" : ", ") + join(r.key_values, "/") + ": " + std::to_string(r.trials);
        }
        if (budgets.size() > 1)
            out.push_back("the groups had different tuning budgets (tuning runs: " + each +
                          "): a method tuned more may win by it");
    }
    for (const auto& k : varying) {
        if (k == "train.seed") continue;
        if (std::find(b.best_over.begin(), b.best_over.end(), k) != b.best_over.end()) continue;  // tuned
        const bool grouped = std::find(b.keys.begin(), b.keys.end(), k) != b.keys.end();
        const auto telling = telling_keys().find(k);
        if (!grouped && !determined_by(params, k, b.keys))
            out.push_back("runs within a group differ in " + k + " (not a grouping key): a confound");
        else if (telling != telling_keys().end())
            out.push_back("the groups differ in " + k + ": " + telling->second + " is not the same for all");
    }
    return out;
}

}  // namespace

std::string best_candidate(const CandidateScores& scores, bool lower_is_better, const CandidateScores& fallback) {
    std::string best;
    double best_mean = NAN;
    for (const auto& [candidate, values] : scores) {
        const double mean = t_interval(values).mean;
        const bool better = !std::isfinite(best_mean) || (lower_is_better ? mean < best_mean : mean > best_mean);
        if (std::isfinite(mean) && better) best = candidate, best_mean = mean;
    }
    return best.empty() && !fallback.empty() ? best_candidate(fallback, true) : best;
}

std::string candidate_text(const std::map<std::string, std::string>& params, const std::vector<std::string>& keys) {
    std::string c;
    for (const auto& k : keys)  // a key a run's plugin lacks (a choice tuning keys of its own) is left out
        if (params.count(k)) c += (c.empty() ? "" : " ") + k + "=" + value_in(params, k);
    return c;
}

namespace {

// The group a run's tuned setting is chosen for: its values of the board's keys but the seed
// (which --runs adds to them).
std::vector<std::string> tuning_group(const std::vector<std::string>& keys,
                                      const std::map<std::string, std::string>& p) {
    std::vector<std::string> v;
    for (const auto& k : keys)
        if (k != "train.seed") v.push_back(value_in(p, k));
    return v;
}

// --best-over: for each group (b.keys' values), the setting of the best_over keys with the best
// mean on the tuning seeds, and the count of tuning runs behind the choice. `enter` marks the runs
// the rows then hold: the chosen setting's runs on the other seeds.
std::map<std::vector<std::string>, std::pair<std::string, int>> tune(
    const Board& b, const BoardOptions& o, const std::vector<std::map<std::string, std::string>>& params,
    const std::vector<double>& metric, const std::vector<double>& final_loss, std::vector<bool>& enter,
    std::vector<std::string>& fell_back) {
    auto method_of = [&](size_t i) { return tuning_group(b.keys, params[i]); };
    auto candidate_of = [&](size_t i) { return candidate_text(params[i], o.best_over); };
    auto tuning = [&](size_t i) {
        const auto seed = value_in(params[i], "train.seed");
        return std::find(o.tuning_seeds.begin(), o.tuning_seeds.end(), seed) != o.tuning_seeds.end();
    };
    std::map<std::vector<std::string>, CandidateScores> scores, fallback;
    std::map<std::vector<std::string>, int> trials;
    for (size_t i = 0; i < params.size(); ++i)
        if (tuning(i)) {
            scores[method_of(i)][candidate_of(i)].push_back(metric[i]);
            fallback[method_of(i)][candidate_of(i)].push_back(final_loss[i]);
            ++trials[method_of(i)];
        }
    std::map<std::vector<std::string>, std::pair<std::string, int>> chosen;
    for (const auto& [method, candidates] : scores) {
        const bool lower = !higher_is_better(o.tune_metric);
        chosen[method] = {best_candidate(candidates, lower, fallback[method]), trials[method]};
        if (best_candidate(candidates, lower).empty() && !chosen[method].first.empty())
            fell_back.push_back(join(method, "/") + ": no tuning run reached the target; " + chosen[method].first +
                                " was chosen by final_eval_loss");
    }
    enter.assign(params.size(), false);
    for (size_t i = 0; i < params.size(); ++i) {
        const auto it = chosen.find(method_of(i));
        enter[i] = !tuning(i) && it != chosen.end() && candidate_of(i) == it->second.first;
    }
    return chosen;
}

// Paired differences against the rows whose settings match `baseline` (KEY=VALUE), by train.seed.
void pair_with_baseline(Board& b, const std::string& baseline, const std::vector<RunInfo>& runs,
                        const std::vector<std::map<std::string, std::string>>& params) {
    const auto eq = baseline.find('=');
    if (eq == std::string::npos)
        throw Error("--baseline " + baseline + ": give KEY=VALUE", "for example --baseline variant=ddp");
    const std::string key = baseline.substr(0, eq), want = baseline.substr(eq + 1);
    std::map<int64_t, const std::map<std::string, std::string>*> params_of;
    for (size_t i = 0; i < runs.size(); ++i) params_of[runs[i].id] = &params[i];
    auto seed_of = [&](int64_t run) {
        const auto& p = *params_of.at(run);
        const auto it = p.find("train.seed");
        return it == p.end() ? std::string() : it->second;
    };
    // A row pairs with the baseline row that shares its other grouping keys (the same workload and
    // scenario, say), run by run by seed.
    const auto key_at = static_cast<size_t>(std::find(b.keys.begin(), b.keys.end(), key) - b.keys.begin());
    auto context_of = [&](const BoardRow& r) {
        std::vector<std::string> c;
        if (key_at < b.keys.size()) {
            c = r.key_values;
            c.erase(c.begin() + static_cast<std::ptrdiff_t>(key_at));
        }
        return c;
    };
    std::map<std::pair<std::vector<std::string>, std::string>, double> base;  // (context, seed) -> value
    for (const auto& r : b.rows)
        for (size_t k = 0; k < r.runs.size(); ++k) {
            const auto& p = *params_of.at(r.runs[k]);
            const auto it = p.find(key);
            if (it != p.end() && it->second == want) base[{context_of(r), seed_of(r.runs[k])}] = r.values[k];
        }
    if (base.empty())
        throw Error("--baseline " + baseline + ": no run has " + key + " = " + want,
                    "name a setting and value the runs have, as the leaderboard shows them");
    for (auto& r : b.rows) {
        std::vector<double> diffs;
        for (size_t k = 0; k < r.runs.size(); ++k) {
            const auto it = base.find({context_of(r), seed_of(r.runs[k])});
            if (it != base.end() && std::isfinite(it->second) && std::isfinite(r.values[k]))
                diffs.push_back(r.values[k] - it->second);
        }
        const Interval d = t_interval(diffs);
        r.pairs = d.n, r.diff = d.mean, r.diff_lo = d.lo, r.diff_hi = d.hi;
    }
}

}  // namespace

Interval t_interval(const std::vector<double>& values) {
    Interval r;
    double sum = 0;
    for (double v : values)
        if (std::isfinite(v)) sum += v, ++r.n;
    if (r.n == 0) return r;
    r.mean = sum / r.n;
    double ss = 0;
    for (double v : values)
        if (std::isfinite(v)) ss += (v - r.mean) * (v - r.mean);
    r.std = r.n > 1 ? std::sqrt(ss / (r.n - 1)) : 0;
    if (r.n < 2) return r;  // no interval from one value
    const boost::math::students_t t(r.n - 1);
    const double half = boost::math::quantile(boost::math::complement(t, 0.025)) * r.std / std::sqrt(r.n);
    r.lo = r.mean - half;
    r.hi = r.mean + half;
    return r;
}

std::vector<std::string> varying_keys(const std::vector<std::map<std::string, std::string>>& params) {
    std::set<std::string> all;
    for (const auto& p : params)
        for (const auto& [k, v] : p) all.insert(k);
    std::vector<std::string> out;
    for (const auto& k : all) {
        if (ignored_key(k)) continue;
        // Among the runs that have the key: a key only some runs have belongs to a plugin they
        // switched to (optimizer.betas of adamw beside sgd), and the plugin's name shows that.
        std::set<std::string> values;
        for (const auto& p : params)
            if (auto it = p.find(k); it != p.end()) values.insert(it->second);
        if (values.size() > 1) out.push_back(k);
    }
    return out;
}

std::vector<RunInfo> runs_to_rank(ResultsStore& store, const std::string& which, std::string& title, int& unfinished) {
    std::vector<RunInfo> all;
    if (auto sweep = store.find_sweep(which)) {
        title = "sweep '" + sweep->name + "' (id " + std::to_string(sweep->id) + ")";
        all = store.sweep_runs(sweep->id);
    } else if (!which.empty()) {
        std::string known;
        for (const auto& s : store.list_sweeps())
            known += (known.empty() ? "" : ", ") + s.name + " (" + std::to_string(s.id) + ")";
        throw Error("no sweep '" + which + "' in " + store.path(),
                    known.empty() ? "this database has no sweep yet: run one with `plexus sweep FILE`"
                                  : "sweeps here: " + known);
    } else {
        title = "all runs in " + store.path();
        all = store.list_runs(1000000);
        std::reverse(all.begin(), all.end());  // oldest first, like a sweep's
    }
    // The newest finished run of each configuration counts: a finished re-run replaces an
    // earlier attempt, and a newer attempt that did not finish (interrupted, failed, running)
    // does not hide one that did. Configurations with no finished run are counted apart.
    std::map<std::string, RunInfo> newest_finished;
    std::set<std::string> configs;
    for (const auto& r : all) {
        configs.insert(r.config_hash);
        if (r.status == "finished") newest_finished[r.config_hash] = r;
    }
    std::vector<RunInfo> out;
    for (const auto& [hash, r] : newest_finished) out.push_back(r);
    unfinished = static_cast<int>(configs.size() - newest_finished.size());
    std::sort(out.begin(), out.end(), [](const RunInfo& a, const RunInfo& b) { return a.id < b.id; });
    return out;
}

bool lower_is_better(const std::string& metric) { return !higher_is_better(metric); }

double target_of(ResultsStore& store, int64_t run, const BoardOptions& o) {
    if (o.target > 0) return o.target;
    const auto params = store.params(run);
    const auto it = params.find("results.target_loss");
    const double t = it == params.end() ? 0 : std::atof(it->second.c_str());
    if (!(t > 0))
        throw Error(
            "--metric " + o.metric + " needs --target LOSS: run " + std::to_string(run) + " has no results.target_loss",
            "for example --target 2.5, or give the workload a target: [results] target_loss = 2.5");
    return t;
}

double run_metric(ResultsStore& store, int64_t run, const BoardOptions& o) {
    if (o.metric == "loss_at" || o.metric == "tokens_to" || o.metric == "time_to") {
        const double target = o.metric == "loss_at" ? 0 : target_of(store, run, o);
        const auto rows = store.metric_rows(run, "eval_loss");
        if (o.metric == "loss_at") {
            // The last evaluation within the token budget.
            double v = NAN;
            for (const auto& m : rows)
                if (static_cast<double>(m.tokens) <= o.tokens) v = m.value;
            return v;
        }
        // Where the eval curve crosses the target, interpolated linearly between the evaluations
        // on either side of it; +inf (censored) for a run that never got there.
        double prev_value = NAN, prev_x = NAN;
        for (const auto& m : rows) {
            const double x = o.metric == "tokens_to" ? static_cast<double>(m.tokens) : m.sim_time.value_or(m.wall_time);
            if (std::isfinite(m.value) && m.value <= target) {
                if (std::isfinite(prev_value) && prev_value > target)
                    return prev_x + (prev_value - target) / (prev_value - m.value) * (x - prev_x);
                return x;
            }
            prev_value = m.value;
            prev_x = x;
        }
        return rows.empty() ? NAN : INFINITY;
    }
    for (const auto& [rank, key, value, text] : store.summaries(run))
        if (rank == 0 && key == o.metric) return value ? *value : NAN;
    return NAN;
}

Board make_board(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o) {
    if (o.metric == "loss_at" && !(o.tokens > 0))
        throw Error("--metric loss_at needs --tokens N (the token budget)", "for example --tokens 500000");
    // A metric no run has is a typo, not a column of dashes.
    if (!runs.empty() && o.metric != "loss_at" && o.metric != "tokens_to" && o.metric != "time_to") {
        std::set<std::string> keys;
        for (const auto& r : runs)
            for (const auto& [rank, key, value, text] : store.summaries(r.id))
                if (value) keys.insert(key);
        if (!keys.count(o.metric)) {
            const std::vector<std::string> known(keys.begin(), keys.end());
            const std::string close = did_you_mean(o.metric, known);
            throw Error("--metric " + o.metric + ": no run here has that figure" + (close.empty() ? "" : "; " + close),
                        "metrics: loss_at, tokens_to, time_to, or a summary key: " + join(known, ", "));
        }
    }
    Board b;
    b.metric = o.metric;
    b.lower_is_better = !higher_is_better(o.metric);
    b.metric_label = o.metric;
    if (o.metric == "loss_at") b.metric_label = "eval loss at " + human_count(o.tokens) + " tokens";
    const std::string target = o.target > 0 ? "eval loss " + fmt(o.target) : "each run's results.target_loss";
    if (o.metric == "tokens_to") b.metric_label = "tokens to " + target;
    if (o.metric == "time_to") b.metric_label = "seconds to " + target + " (simulated if simulated)";
    b.runs = static_cast<int>(runs.size());
    std::vector<std::map<std::string, std::string>> params;
    for (const auto& r : runs) params.push_back(store.params(r.id));
    const auto varying = varying_keys(params);
    if (o.per_run) {
        b.keys = varying;
    } else if (!o.group_by.empty()) {
        std::set<std::string> known;
        for (const auto& p : params)
            for (const auto& [k, v] : p) known.insert(k);
        for (const auto& k : o.group_by)
            if (!known.count(k))
                throw Error("--group-by " + k + ": no run has that setting",
                            "settings are dotted keys, e.g. optimizer.lr; varying here: " + join(varying, ", "));
        b.keys = o.group_by;
    } else {
        std::vector<std::string> keys;
        for (const auto& k : varying)
            if (k != "train.seed") keys.push_back(k);
        b.keys = telling_apart(params, keys);
    }
    std::vector<double> metric;
    for (const auto& r : runs) metric.push_back(run_metric(store, r.id, o));
    std::vector<bool> enter(runs.size(), true);
    std::map<std::vector<std::string>, std::pair<std::string, int>> tuned;
    std::vector<std::string> fell_back;  // groups chosen by their final loss (none reached the target)
    if (!o.best_over.empty()) {
        if (o.tuning_seeds.empty())
            throw Error("--best-over needs --tuning-seeds S1,S2",
                        "the seeds the choice is made on; the others report it");
        for (const auto& k : o.best_over) b.keys.erase(std::remove(b.keys.begin(), b.keys.end(), k), b.keys.end());
        std::vector<double> by = metric, final_loss;
        BoardOptions t = o;
        t.metric = o.tune_metric;
        if (o.tune_metric != o.metric)
            for (size_t i = 0; i < runs.size(); ++i) by[i] = run_metric(store, runs[i].id, t);
        t.metric = "final_eval_loss";
        for (const auto& r : runs) final_loss.push_back(run_metric(store, r.id, t));
        tuned = tune(b, o, params, by, final_loss, enter, fell_back);
        b.best_over = o.best_over;
        b.tuning_seeds = o.tuning_seeds;
    }
    std::map<std::vector<std::string>, size_t> row_of;
    for (size_t i = 0; i < runs.size(); ++i) {
        if (!enter[i]) continue;
        std::vector<std::string> values;
        for (const auto& k : b.keys) {
            auto it = params[i].find(k);
            values.push_back(it == params[i].end() ? "" : it->second);
        }
        if (o.per_run) values.push_back(std::to_string(runs[i].id));  // never merge two runs
        auto [it, fresh] = row_of.emplace(values, b.rows.size());
        if (fresh) {
            b.rows.emplace_back();
            b.rows.back().key_values.assign(values.begin(),
                                            values.begin() + static_cast<std::ptrdiff_t>(b.keys.size()));
        }
        auto& row = b.rows[it->second];
        row.runs.push_back(runs[i].id);
        row.values.push_back(metric[i]);
        if (const auto t = tuned.find(tuning_group(b.keys, params[i])); t != tuned.end())
            row.tuned = t->second.first, row.trials = t->second.second;
    }
    for (auto& row : b.rows) {
        const Interval s = t_interval(row.values);
        row.n = s.n, row.mean = s.n ? s.mean : NAN, row.std = s.n ? s.std : 0, row.lo = s.lo, row.hi = s.hi;
        for (double v : row.values) row.censored += std::isinf(v) ? 1 : 0;
    }
    // Rows where some runs never reached the target rank after those where all did.
    std::stable_sort(b.rows.begin(), b.rows.end(), [&](const BoardRow& x, const BoardRow& y) {
        if (std::isfinite(x.mean) != std::isfinite(y.mean)) return std::isfinite(x.mean);
        if ((x.censored > 0) != (y.censored > 0)) return x.censored == 0;
        return b.lower_is_better ? x.mean < y.mean : x.mean > y.mean;
    });
    if (!o.baseline.empty()) {
        pair_with_baseline(b, o.baseline, runs, params);
        b.baseline = o.baseline;
    }
    if (!o.per_run) b.warnings = board_warnings(b, varying, params);
    b.warnings.insert(b.warnings.end(), fell_back.begin(), fell_back.end());
    for (const auto& [method, choice] : tuned) {  // a choice with nothing to report would vanish
        const bool shown = std::any_of(b.rows.begin(), b.rows.end(),
                                       [&](const BoardRow& r) { return o.per_run || r.key_values == method; });
        if (!shown)
            b.warnings.push_back(
                join(method, "/") + ": " +
                (choice.first.empty()
                     ? "no tuning run had a value to choose by"
                     : "chose " + choice.first + " on the tuning seeds, but has no run of it on the others") +
                ": not ranked");
    }
    return b;
}

namespace {

// The board as CSV: one line per group, the intervals, the paired differences and the tuning.
std::string board_csv(const Board& b) {
    const bool paired = !b.baseline.empty(), tuned = !b.best_over.empty();
    std::string out;
    out = "rank";
    for (const auto& k : b.keys) out += "," + csv_field(k);
    out += "," + csv_field(b.metric) + "_mean," + csv_field(b.metric) + "_std,n,runs,ci_low,ci_high,censored";
    out += paired ? ",diff_mean,diff_low,diff_high,pairs" : "";
    out += tuned ? ",tuned,trials\n" : "\n";
    auto number = [](double v) { return std::isfinite(v) ? json_number(v) : std::string(); };
    int i = 0;
    for (const auto& r : b.rows) {
        out += std::to_string(++i);
        for (const auto& v : r.key_values) out += "," + csv_field(v);
        out += "," + (r.n ? json_number(r.mean) : "") + "," + (r.n ? json_number(r.std) : "") + "," +
               std::to_string(r.n) + "," + csv_field(join_ids(r.runs)) + "," + number(r.lo) + "," + number(r.hi) + "," +
               std::to_string(r.censored);
        if (paired)
            out += "," + number(r.diff) + "," + number(r.diff_lo) + "," + number(r.diff_hi) + "," +
                   std::to_string(r.pairs);
        if (tuned) out += "," + csv_field(r.tuned) + "," + std::to_string(r.trials);
        out += "\n";
    }
    return out;
}

// The board as JSON, with each run's value and the warnings.
std::string board_json(const Board& b) {
    const bool paired = !b.baseline.empty(), tuned = !b.best_over.empty();
    std::string out;
    out = "{\"title\": " + json_string(b.title) + ", \"metric\": " + json_string(b.metric) +
          ", \"lower_is_better\": " + (b.lower_is_better ? "true" : "false") + ", \"rows\": [";
    int i = 0;
    for (const auto& r : b.rows) {
        out += std::string(i ? ", " : "") + "{\"rank\": " + std::to_string(i + 1) + ", \"settings\": {";
        for (size_t k = 0; k < b.keys.size(); ++k)
            out += (k ? ", " : "") + json_string(b.keys[k]) + ": " + json_string(r.key_values[k]);
        out += "}, \"mean\": " + json_number(r.n ? r.mean : NAN) + ", \"std\": " + json_number(r.n ? r.std : NAN) +
               ", \"n\": " + std::to_string(r.n) + ", \"ci\": [" + json_number(r.lo) + ", " + json_number(r.hi) +
               "], \"censored\": " + std::to_string(r.censored);
        if (paired)
            out += ", \"diff\": {\"mean\": " + json_number(r.diff) + ", \"ci\": [" + json_number(r.diff_lo) + ", " +
                   json_number(r.diff_hi) + "], \"pairs\": " + std::to_string(r.pairs) + "}";
        if (tuned) out += ", \"tuned\": " + json_string(r.tuned) + ", \"trials\": " + std::to_string(r.trials);
        out += ", \"runs\": [" + join_ids(r.runs) + "], \"values\": [";
        for (size_t k = 0; k < r.values.size(); ++k) out += (k ? ", " : "") + json_number(r.values[k]);
        out += "]}";
        ++i;
    }
    out += "], \"warnings\": [";
    for (size_t k = 0; k < b.warnings.size(); ++k) out += (k ? ", " : "") + json_string(b.warnings[k]);
    return out + "]}\n";
}

}  // namespace

std::string format_board(const Board& b, const std::string& format) {
    const bool grouped = std::any_of(b.rows.begin(), b.rows.end(), [](const BoardRow& r) { return r.runs.size() > 1; });
    const bool censoring = std::any_of(b.rows.begin(), b.rows.end(), [](const BoardRow& r) { return r.censored > 0; });
    const bool paired = !b.baseline.empty();
    const bool tuned = !b.best_over.empty();
    auto value_text = [&](const BoardRow& r) {
        std::string v = !r.n                 ? std::string(r.censored ? "> budget" : "-")
                        : grouped && r.n > 1 ? fmt(r.mean) + " ± " + fmt(r.std)
                                             : fmt(r.mean);
        if (r.n && r.censored) v += " (+" + std::to_string(r.censored) + " > budget)";
        return v;
    };
    auto interval_text = [](double lo, double hi) {
        return std::isfinite(lo) ? "[" + fmt(lo) + ", " + fmt(hi) + "]" : std::string("-");
    };
    // The difference to the baseline, marked "~" where its interval holds 0 (not a result).
    auto diff_text = [&](const BoardRow& r) {
        if (!r.pairs) return std::string("-");
        const bool zero_inside = !std::isfinite(r.diff_lo) || (r.diff_lo <= 0 && r.diff_hi >= 0);
        return (r.diff >= 0 ? "+" : "") + fmt(r.diff) + " " + interval_text(r.diff_lo, r.diff_hi) +
               (zero_inside ? " ~" : "");
    };
    std::string out;
    if (format == "csv") return board_csv(b);
    if (format == "json") return board_json(b);
    // table and markdown share the cells
    std::vector<std::string> header = {"#"};
    for (const auto& k : b.keys) header.push_back(k);
    if (tuned) header.push_back("tuned on seeds " + join(b.tuning_seeds, ",") + " (runs)");
    header.push_back(b.metric);
    if (grouped) header.push_back("n");
    if (grouped) header.push_back("95% CI");
    if (paired) header.push_back("vs " + b.baseline + " (paired)");
    header.push_back("runs");
    std::vector<std::vector<std::string>> cells;
    int i = 0;
    for (const auto& r : b.rows) {
        std::vector<std::string> row = {std::to_string(++i)};
        for (const auto& v : r.key_values) row.push_back(v);
        if (tuned) row.push_back(r.tuned + " (" + std::to_string(r.trials) + ")");
        row.push_back(value_text(r));
        if (grouped) row.push_back(std::to_string(r.n));
        if (grouped) row.push_back(interval_text(r.lo, r.hi));
        if (paired) row.push_back(diff_text(r));
        row.push_back(join_ids(r.runs));
        cells.push_back(row);
    }
    const std::string summary =
        b.title + ": " + b.metric_label + " (" + (b.lower_is_better ? "lower" : "higher") + " is better), " +
        std::to_string(b.runs) + " finished run(s)" +
        (grouped ? " in " + std::to_string(b.rows.size()) +
                       " grid points, mean ± std over seeds with the mean's 95% interval (Student t)"
                 : "") +
        (censoring ? "; \"> budget\": runs that never reached the target (counted, not averaged)" : "") +
        (paired ? "; differences paired by seed, \"~\" where the interval holds 0" : "") +
        (tuned ? "; each group's " + join(b.best_over, ", ") + " chosen on seeds " + join(b.tuning_seeds, ",") +
                     ", reported on the others"
               : "") +
        (b.unfinished ? "; " + std::to_string(b.unfinished) + " not finished (not ranked)" : "");
    if (format == "markdown") {
        out = "**" + summary + "**\n\n|";
        for (const auto& h : header) out += " " + h + " |";
        out += "\n|";
        for (size_t k = 0; k < header.size(); ++k) out += k == 0 ? "---:|" : "---|";
        out += "\n";
        for (const auto& row : cells) {
            out += "|";
            for (const auto& c : row) out += " " + c + " |";
            out += "\n";
        }
        for (const auto& w : b.warnings) out += "\n> warning: " + w + "\n";
        return out;
    }
    if (format != "table") throw Error("--format " + format + " is unknown", "use table, csv, json or markdown");
    std::vector<size_t> width(header.size());
    auto cell_width = [](const std::string& s) {  // count UTF-8 code points (±)
        size_t n = 0;
        for (unsigned char c : s) n += (c & 0xC0) != 0x80;
        return n;
    };
    for (size_t k = 0; k < header.size(); ++k) width[k] = cell_width(header[k]);
    for (const auto& row : cells)
        for (size_t k = 0; k < row.size(); ++k) width[k] = std::max(width[k], cell_width(row[k]));
    auto line = [&](const std::vector<std::string>& row) {
        std::string l;
        for (size_t k = 0; k < row.size(); ++k) {
            const std::string pad(width[k] - cell_width(row[k]), ' ');
            l += (k ? "  " : "") + (k == 0 ? pad + row[k] : row[k] + pad);
        }
        while (!l.empty() && l.back() == ' ') l.pop_back();
        return l + "\n";
    };
    out = summary + "\n" + line(header);
    for (const auto& row : cells) out += line(row);
    if (cells.empty()) out += "(no finished run to rank)\n";
    for (const auto& w : b.warnings) out += "warning: " + w + "\n";
    return out;
}

Profile make_profile(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o,
                     const std::string& method_key) {
    if (higher_is_better(o.metric))
        throw Error("--profile ranks by a figure where lower is better; " + o.metric + " is not",
                    "use --metric time_to or tokens_to with --target LOSS, or a loss");
    // The groups of the board (with --best-over: each method's chosen setting, its held-out seeds).
    Board groups = make_board(store, runs, [&] {
        BoardOptions g = o;
        g.profile.clear();
        g.baseline.clear();
        return g;
    }());
    if (std::find(groups.keys.begin(), groups.keys.end(), method_key) == groups.keys.end())
        throw Error("--profile " + method_key + ": the runs do not differ in it",
                    "name the setting that tells the methods apart; varying here: " + join(groups.keys, ", "));
    // A problem is every other grouping key but those the method fixes (a variant's own settings).
    Params params;
    for (const auto& r : runs) params.push_back(store.params(r.id));
    std::vector<size_t> problem_keys;
    for (size_t k = 0; k < groups.keys.size(); ++k)
        if (groups.keys[k] != method_key && !determined_by(params, groups.keys[k], {method_key}))
            problem_keys.push_back(k);
    const size_t method_at =
        static_cast<size_t>(std::find(groups.keys.begin(), groups.keys.end(), method_key) - groups.keys.begin());
    Profile p;
    p.metric = o.metric;
    p.method_key = method_key;
    std::map<std::pair<std::string, std::string>, const BoardRow*> row_of;  // (method, problem)
    std::set<std::string> methods, problems;
    for (const auto& row : groups.rows) {
        std::string problem;
        for (size_t k : problem_keys)
            problem += (problem.empty() ? "" : " ") + groups.keys[k] + "=" + row.key_values[k];
        if (problem.empty()) problem = "(all)";
        const std::string& method = row.key_values[method_at];
        methods.insert(method);
        problems.insert(problem);
        row_of[{method, problem}] = &row;
    }
    p.methods.assign(methods.begin(), methods.end());
    p.problems.assign(problems.begin(), problems.end());
    // A method's figure on a problem: its mean over seeds, infinite if a seed never got there.
    auto figure = [&](const std::string& m, const std::string& q) -> double {
        const auto it = row_of.find({m, q});
        if (it == row_of.end() || it->second->censored > 0 || it->second->n == 0) return INFINITY;
        return it->second->mean;
    };
    p.ratio.assign(p.methods.size(), std::vector<double>(p.problems.size(), INFINITY));
    for (size_t q = 0; q < p.problems.size(); ++q) {
        double best = INFINITY;
        for (const auto& m : p.methods) best = std::min(best, figure(m, p.problems[q]));
        for (size_t m = 0; m < p.methods.size(); ++m)
            if (std::isfinite(best) && best > 0) p.ratio[m][q] = figure(p.methods[m], p.problems[q]) / best;
    }
    p.taus = {1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 4.0, 8.0};
    p.rho.assign(p.methods.size(), std::vector<double>(p.taus.size(), 0.0));
    for (size_t m = 0; m < p.methods.size(); ++m)
        for (size_t t = 0; t < p.taus.size(); ++t) {
            int within = 0;
            for (double r : p.ratio[m]) within += r <= p.taus[t] * (1 + 1e-12) ? 1 : 0;
            p.rho[m][t] = static_cast<double>(within) / static_cast<double>(p.problems.size());
        }
    return p;
}

std::string format_profile(const Profile& p, const std::string& format) {
    std::string out;
    if (format == "csv") {
        out = "method,tau,rho\n";
        for (size_t m = 0; m < p.methods.size(); ++m)
            for (size_t t = 0; t < p.taus.size(); ++t)
                out += csv_field(p.methods[m]) + "," + fmt(p.taus[t]) + "," + fmt(p.rho[m][t]) + "\n";
        return out;
    }
    if (format != "table") throw Error("--format " + format + " is unknown for --profile", "use table or csv");
    out = "performance profile of " + p.method_key + " on " + std::to_string(p.problems.size()) + " problem(s), " +
          p.metric + ": the share of problems within tau x the best method\n";
    char buf[64];
    std::snprintf(buf, sizeof buf, "%-20s", p.method_key.c_str());
    out += buf;
    for (double t : p.taus) {
        std::snprintf(buf, sizeof buf, "  tau=%-5s", fmt(t).c_str());
        out += buf;
    }
    out += "\n";
    for (size_t m = 0; m < p.methods.size(); ++m) {
        std::snprintf(buf, sizeof buf, "%-20s", p.methods[m].c_str());
        out += buf;
        for (double r : p.rho[m]) {
            std::snprintf(buf, sizeof buf, "  %-9s", fmt(r).c_str());
            out += buf;
        }
        out += "\n";
    }
    out += "\nratio to the best method per problem (inf: not reached on every seed, or not run)\n";
    for (size_t q = 0; q < p.problems.size(); ++q) {
        out += "  " + p.problems[q] + ":";
        for (size_t m = 0; m < p.methods.size(); ++m)
            out += "  " + p.methods[m] + " " + (std::isfinite(p.ratio[m][q]) ? fmt(p.ratio[m][q]) : std::string("inf"));
        out += "\n";
    }
    return out;
}

std::string compare_runs(ResultsStore& store, const std::vector<int64_t>& ids) {
    if (ids.size() < 2) throw Error("plexus compare needs at least two runs", "plexus compare 3 7");
    std::vector<std::map<std::string, std::string>> params;
    std::vector<std::map<std::string, double>> figures;
    for (auto id : ids) {
        if (!store.get_run(id))
            throw Error("no run " + std::to_string(id) + " in " + store.path(), "`plexus runs` lists them");
        params.push_back(store.params(id));
        std::map<std::string, double> f;
        for (const auto& [rank, key, value, text] : store.summaries(id))
            if (rank == 0 && value) f[key] = *value;
        figures.push_back(f);
    }
    std::string out;
    char buf[256];
    auto header = [&](const char* first) {
        std::snprintf(buf, sizeof buf, "%-28s", first);
        out += buf;
        for (auto id : ids) {
            std::snprintf(buf, sizeof buf, "  %24s", ("run " + std::to_string(id)).c_str());
            out += buf;
        }
        out += "\n";
    };
    header("setting");
    const auto keys = varying_keys(params);
    for (const auto& k : keys) {
        std::snprintf(buf, sizeof buf, "%-28s", k.c_str());
        out += buf;
        for (const auto& p : params) {
            auto it = p.find(k);
            std::snprintf(buf, sizeof buf, "  %24s", it == p.end() ? "-" : it->second.c_str());
            out += buf;
        }
        out += "\n";
    }
    if (keys.empty()) out += "(the same settings)\n";
    // The differences that change what is compared, said in words.
    for (const auto& k : keys)
        if (const auto t = telling_keys().find(k); t != telling_keys().end())
            out += "warning: the runs differ in " + k + ": " + t->second + " is not the same for all\n";
    out += "\n";
    header("figure (delta vs first)");
    for (const char* key : {"final_eval_loss", "final_loss", "tokens", "steps", "tokens_per_s", "mfu", "peak_memory",
                            "bytes_sent", "comm_exposed_time", "wall_time", "sim_time"}) {
        bool any = false;
        for (const auto& f : figures) any |= f.count(key) > 0;
        if (!any) continue;
        std::snprintf(buf, sizeof buf, "%-28s", key);
        out += buf;
        const auto first = figures[0].find(key);
        for (size_t i = 0; i < figures.size(); ++i) {
            auto it = figures[i].find(key);
            std::string cell = it == figures[i].end() ? "-" : fmt(it->second);
            if (i > 0 && it != figures[i].end() && first != figures[0].end()) {
                const double d = it->second - first->second;
                cell += " (" + std::string(d >= 0 ? "+" : "") + fmt(d) + ")";
            }
            std::snprintf(buf, sizeof buf, "  %24s", cell.c_str());
            out += buf;
        }
        out += "\n";
    }
    return out;
}

std::string curves_csv(ResultsStore& store, const std::vector<int64_t>& runs, const std::vector<std::string>& keys) {
    std::string out = "run_id,key,step,tokens,wall_time,sim_time,value\n";
    // A key none of the runs recorded is a typo, not an empty table.
    std::set<std::string> recorded;
    for (auto id : runs) {
        if (!store.get_run(id))
            throw Error("no run " + std::to_string(id) + " in " + store.path(), "`plexus runs` lists them");
        for (const auto& key : store.metric_keys(id)) recorded.insert(key);
    }
    const std::vector<std::string> known(recorded.begin(), recorded.end());
    for (const auto& key : keys)
        if (!recorded.count(key)) {
            const std::string close = did_you_mean(key, known);
            throw Error("--keys " + key + ": no such curve in these runs" + (close.empty() ? "" : "; " + close),
                        "their curves: " + join(known, ", "));
        }
    for (auto id : runs) {
        auto wanted = keys;
        if (wanted.empty()) wanted = store.metric_keys(id);
        for (const auto& key : wanted)
            for (const auto& m : store.metric_rows(id, key)) {
                out += std::to_string(id) + "," + csv_field(key) + "," + std::to_string(m.step) + "," +
                       std::to_string(m.tokens) + "," + json_number(m.wall_time) + "," +
                       (m.sim_time ? json_number(*m.sim_time) : "") + "," +
                       (std::isfinite(m.value) ? json_number(m.value) : "") + "\n";
            }
    }
    return out;
}

}  // namespace plexus::host
