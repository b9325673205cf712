#include "lab/leaderboard.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

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

}  // namespace

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

double run_metric(ResultsStore& store, int64_t run, const BoardOptions& o) {
    if (o.metric == "loss_at" || o.metric == "tokens_to" || o.metric == "time_to") {
        const auto rows = store.metric_rows(run, "eval_loss");
        if (o.metric == "loss_at") {
            // The last evaluation within the token budget.
            double v = NAN;
            for (const auto& m : rows)
                if (static_cast<double>(m.tokens) <= o.tokens) v = m.value;
            return v;
        }
        for (const auto& m : rows)
            if (std::isfinite(m.value) && m.value <= o.target)
                return o.metric == "tokens_to" ? static_cast<double>(m.tokens) : m.sim_time.value_or(m.wall_time);
        return NAN;  // never reached
    }
    for (const auto& [rank, key, value, text] : store.summaries(run))
        if (rank == 0 && key == o.metric) return value ? *value : NAN;
    return NAN;
}

Board make_board(ResultsStore& store, const std::vector<RunInfo>& runs, const BoardOptions& o) {
    if ((o.metric == "tokens_to" || o.metric == "time_to") && !(o.target > 0))
        throw Error("--metric " + o.metric + " needs --target LOSS", "for example --target 2.5");
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
    if (o.metric == "tokens_to") b.metric_label = "tokens to eval loss " + fmt(o.target);
    if (o.metric == "time_to") b.metric_label = "seconds to eval loss " + fmt(o.target) + " (simulated if simulated)";
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
        for (const auto& k : varying)
            if (k != "train.seed") b.keys.push_back(k);
    }
    std::map<std::vector<std::string>, size_t> row_of;
    for (size_t i = 0; i < runs.size(); ++i) {
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
        row.values.push_back(run_metric(store, runs[i].id, o));
    }
    for (auto& row : b.rows) {
        double sum = 0;
        for (double v : row.values)
            if (std::isfinite(v)) {
                sum += v;
                ++row.n;
            }
        row.mean = row.n ? sum / row.n : NAN;
        double ss = 0;
        for (double v : row.values)
            if (std::isfinite(v)) ss += (v - row.mean) * (v - row.mean);
        row.std = row.n > 1 ? std::sqrt(ss / (row.n - 1)) : 0;
    }
    std::stable_sort(b.rows.begin(), b.rows.end(), [&](const BoardRow& x, const BoardRow& y) {
        if (std::isfinite(x.mean) != std::isfinite(y.mean)) return std::isfinite(x.mean);
        return b.lower_is_better ? x.mean < y.mean : x.mean > y.mean;
    });
    return b;
}

std::string format_board(const Board& b, const std::string& format) {
    const bool grouped = std::any_of(b.rows.begin(), b.rows.end(), [](const BoardRow& r) { return r.runs.size() > 1; });
    auto value_text = [&](const BoardRow& r) {
        if (!r.n) return std::string("-");
        return grouped && r.n > 1 ? fmt(r.mean) + " ± " + fmt(r.std) : fmt(r.mean);
    };
    std::string out;
    if (format == "csv") {
        out = "rank";
        for (const auto& k : b.keys) out += "," + csv_field(k);
        out += "," + csv_field(b.metric) + "_mean," + csv_field(b.metric) + "_std,n,runs\n";
        int i = 0;
        for (const auto& r : b.rows) {
            out += std::to_string(++i);
            for (const auto& v : r.key_values) out += "," + csv_field(v);
            out += "," + (r.n ? json_number(r.mean) : "") + "," + (r.n ? json_number(r.std) : "") + "," +
                   std::to_string(r.n) + "," + csv_field(join_ids(r.runs)) + "\n";
        }
        return out;
    }
    if (format == "json") {
        out = "{\"title\": " + json_string(b.title) + ", \"metric\": " + json_string(b.metric) +
              ", \"lower_is_better\": " + (b.lower_is_better ? "true" : "false") + ", \"rows\": [";
        int i = 0;
        for (const auto& r : b.rows) {
            out += std::string(i ? ", " : "") + "{\"rank\": " + std::to_string(i + 1) + ", \"settings\": {";
            for (size_t k = 0; k < b.keys.size(); ++k)
                out += (k ? ", " : "") + json_string(b.keys[k]) + ": " + json_string(r.key_values[k]);
            out += "}, \"mean\": " + json_number(r.n ? r.mean : NAN) + ", \"std\": " + json_number(r.n ? r.std : NAN) +
                   ", \"n\": " + std::to_string(r.n) + ", \"runs\": [" + join_ids(r.runs) + "], \"values\": [";
            for (size_t k = 0; k < r.values.size(); ++k) out += (k ? ", " : "") + json_number(r.values[k]);
            out += "]}";
            ++i;
        }
        return out + "]}\n";
    }
    // table and markdown share the cells
    std::vector<std::string> header = {"#"};
    for (const auto& k : b.keys) header.push_back(k);
    header.push_back(b.metric);
    if (grouped) header.push_back("n");
    header.push_back("runs");
    std::vector<std::vector<std::string>> cells;
    int i = 0;
    for (const auto& r : b.rows) {
        std::vector<std::string> row = {std::to_string(++i)};
        for (const auto& v : r.key_values) row.push_back(v);
        row.push_back(value_text(r));
        if (grouped) row.push_back(std::to_string(r.n));
        row.push_back(join_ids(r.runs));
        cells.push_back(row);
    }
    const std::string summary =
        b.title + ": " + b.metric_label + " (" + (b.lower_is_better ? "lower" : "higher") + " is better), " +
        std::to_string(b.runs) + " finished run(s)" +
        (grouped ? " in " + std::to_string(b.rows.size()) + " grid points, mean ± std over seeds" : "") +
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
