#include "lab/report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>

#include <plexus/error.hpp>

#include "base/text.hpp"
#include "config/experiment.hpp"

namespace plexus::host {

extern const char kChartJs[];  // generated at configure time from host/report/node_modules (empty if absent)

namespace {

std::string html_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '&': out += "&amp;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

// A JSON string that is safe inside the page's <script>: no "</script>" can close it early.
std::string js_string(const std::string& s) {
    std::string out;
    for (char c : json_escape(s)) out += c == '<' ? std::string("\\u003c") : std::string(1, c);
    return "\"" + out + "\"";
}

std::string num(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}

// One metric of a grid point over its seeds, per step: [step, tokens, time, mean, min, max].
std::string series_json(ResultsStore& store, const std::vector<int64_t>& runs, const std::string& key, bool sim_time) {
    std::map<int64_t, std::vector<MetricRow>> by_step;
    for (auto id : runs)
        for (const auto& m : store.metric_rows(id, key)) by_step[m.step].push_back(m);
    std::vector<std::string> points;
    for (const auto& [step, rows] : by_step) {
        if (rows.size() != runs.size()) continue;  // a step some seed did not reach
        double tokens = 0, time = 0, sum = 0, lo = INFINITY, hi = -INFINITY;
        int n = 0;
        for (const auto& m : rows) {
            tokens += static_cast<double>(m.tokens);
            time += sim_time ? m.sim_time.value_or(NAN) : m.wall_time;
            if (std::isfinite(m.value)) {
                sum += m.value;
                lo = std::min(lo, m.value);
                hi = std::max(hi, m.value);
                ++n;
            }
        }
        if (!n) continue;
        const double k = static_cast<double>(rows.size());
        points.push_back("[" + std::to_string(step) + "," + num(tokens / k) + "," + num(time / k) + "," + num(sum / n) +
                         "," + num(lo) + "," + num(hi) + "]");
    }
    // A few hundred points a line are plenty on a page.
    const size_t stride = std::max<size_t>(1, points.size() / 400);
    std::string out = "[";
    for (size_t i = 0; i < points.size(); ++i)
        if (i % stride == 0 || i + 1 == points.size()) out += (out.size() > 1 ? "," : "") + points[i];
    return out + "]";
}

const char* kStyle = R"CSS(
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.meta { color: #666; }
table { border-collapse: collapse; margin-top: 0.5em; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: left; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 1.5em; }
.chart { position: relative; height: 340px; }
.warning { color: #8a4b00; margin: 0.3em 0; }
)CSS";

// Draws every chart from DATA; records what it drew in window.plexusReport (the test reads it).
const char* kScript = R"JS(
(function () {
  const palette = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
  const color = (i, alpha) => {
    const c = palette[i % palette.length];
    if (alpha === undefined) return c;
    const v = parseInt(c.slice(1), 16);
    return 'rgba(' + (v >> 16) + ',' + ((v >> 8) & 255) + ',' + (v & 255) + ',' + alpha + ')';
  };
  const xs = { step: [0, 'step'], tokens: [1, 'tokens (per rank)'], time: [2, DATA.time_label] };
  const drawn = [];
  function lineChart(id, metric, axis) {
    const [xi, xlabel] = xs[axis];
    const datasets = [];
    DATA.groups.forEach((g, gi) => {
      const s = g.series[metric] || [];
      const pts = s.filter(p => p[xi] !== null);
      if (!pts.length) return;
      if (g.runs.length > 1) {
        datasets.push({ label: g.label + ' min', band: true, data: pts.map(p => ({ x: p[xi], y: p[4] })),
                        borderWidth: 0, pointRadius: 0, fill: false });
        datasets.push({ label: g.label + ' max', band: true, data: pts.map(p => ({ x: p[xi], y: p[5] })),
                        borderWidth: 0, pointRadius: 0, fill: '-1', backgroundColor: color(gi, 0.18) });
      }
      datasets.push({ label: g.label, full: g.full, data: pts.map(p => ({ x: p[xi], y: p[3] })), borderColor: color(gi),
                      backgroundColor: color(gi), borderWidth: 1.5, pointRadius: metric === 'eval_loss' ? 2 : 0, fill: false });
    });
    if (!datasets.length) return;
    // Past 8 curves a legend takes the plot's room and helps no one: hover names a curve.
    const curves = datasets.filter(d => !d.band).length, legend = curves <= 8;
    new Chart(document.getElementById(id), {
      type: 'line', data: { datasets },
      options: { animation: false, maintainAspectRatio: false, parsing: true,
        scales: { x: { type: 'linear', title: { display: true, text: xlabel } },
                  y: { title: { display: true, text: metric } } },
        plugins: { legend: { display: legend, position: 'bottom',
                             labels: { boxWidth: 12, filter: (item, data) => !data.datasets[item.datasetIndex].band } },
                   tooltip: { callbacks: { title: items => items.length ? (items[0].dataset.full || items[0].dataset.label) : '' } },
                   title: { display: true, text: metric + ' vs ' + xlabel +
                                                 (legend ? '' : ' (' + curves + ' groups: hover a curve to name it)') } } } });
    drawn.push(id);
  }
  function barChart(id, key, label) {
    const groups = DATA.groups.filter(g => g[key] !== null);
    if (!groups.length) return;
    // Horizontal bars: the group labels get the width they need and the bars keep the plot.
    new Chart(document.getElementById(id), {
      type: 'bar',
      data: { labels: groups.map(g => g.label), datasets: [{ label, data: groups.map(g => g[key]),
              backgroundColor: groups.map(g => color(DATA.groups.indexOf(g))) }] },
      options: { animation: false, maintainAspectRatio: false, indexAxis: 'y',
                 plugins: { legend: { display: false }, title: { display: true, text: label },
                            tooltip: { callbacks: { title: items => items.length ? groups[items[0].dataIndex].full : '' } } } } });
    drawn.push(id);
  }
  for (const metric of ['loss', 'eval_loss'])
    for (const axis of ['step', 'tokens', 'time']) lineChart(metric + '_' + axis, metric, axis);
  // Performance profiles: rho(tau) per method, a step line over tau (log scale).
  if (DATA.profile) {
    const datasets = DATA.profile.methods.map((m, i) => ({ label: m.label, stepped: 'before',
      data: DATA.profile.taus.map((t, k) => ({ x: t, y: m.rho[k] })), borderColor: color(i), backgroundColor: color(i),
      borderWidth: 1.5, pointRadius: 2, fill: false }));
    new Chart(document.getElementById('profile'), {
      type: 'line', data: { datasets },
      options: { animation: false, maintainAspectRatio: false,
        scales: { x: { type: 'logarithmic', title: { display: true, text: 'tau (times the best method)' } },
                  y: { min: 0, max: 1, title: { display: true, text: 'share of problems' } } },
        plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } },
                   title: { display: true, text: 'performance profile of ' + DATA.profile.key } } } });
    drawn.push('profile');
  }
  barChart('mfu', 'mfu', 'MFU (mean over seeds)');
  barChart('memory', 'memory_mib', 'peak memory, MiB (mean over seeds)');
  // What the browser test reads: the charts drawn and the share of each canvas its plot area keeps.
  const areas = {};
  for (const id of drawn) {
    const chart = Chart.getChart(id);
    const a = chart.chartArea;
    areas[id] = (a.right - a.left) * (a.bottom - a.top) / (chart.width * chart.height);
  }
  window.plexusReport = { charts: drawn, plot_share: areas };
})();
)JS";

}  // namespace

namespace {

// A group's settings in full ("optimizer.lr=0.003 model.n_layer=2"), for tooltips.
std::string group_settings(const Board& board, const BoardRow& row) {
    std::string full;
    for (size_t k = 0; k < board.keys.size(); ++k)
        full += (full.empty() ? "" : " ") + board.keys[k] + "=" + row.key_values[k];
    return full.empty() ? "run " + std::to_string(row.runs[0]) : full;
}

// A group's short name for legends and axes: its variant where that is all that varies, else the
// values of the keys that vary, without the keys (the table above names them).
std::string group_label(const Board& board, const BoardRow& row) {
    if (board.keys.size() == 1 && board.keys[0] == "variant" && !row.key_values[0].empty()) return row.key_values[0];
    std::string label;
    for (const auto& v : row.key_values) label += (label.empty() ? "" : " · ") + v;
    return label.empty() ? "run " + std::to_string(row.runs[0]) : label;
}

}  // namespace

std::string make_report(ResultsStore& store, const std::string& sweep, const BoardOptions& options) {
    if (kChartJs[0] == '\0')
        throw Error("this plexus was built without its charting library (Chart.js)",
                    "run scripts/setup.sh (it installs host/report's npm packages), then rebuild");
    std::string title;
    int unfinished = 0;
    const auto runs = runs_to_rank(store, sweep, title, unfinished);
    auto board = make_board(store, runs, options);
    board.title = title;
    board.unfinished = unfinished;
    // Grid points for the curves: the leaderboard's rows (grouped over seeds).
    bool all_sim = !runs.empty();
    for (const auto& r : runs) {
        bool has = false;
        for (const auto& [rank, key, value, text] : store.summaries(r.id)) has |= rank == 0 && key == "sim_time";
        all_sim &= has;
    }
    std::string groups = "[";
    for (size_t i = 0; i < board.rows.size(); ++i) {
        const auto& row = board.rows[i];
        const std::string full = group_settings(board, row), label = group_label(board, row);
        auto mean_of = [&](const std::string& key, double scale) {
            double sum = 0;
            int n = 0;
            for (auto id : row.runs)
                for (const auto& [rank, k, value, text] : store.summaries(id))
                    if (rank == 0 && k == key && value) {
                        sum += *value;
                        ++n;
                    }
            return n ? sum / n * scale : NAN;
        };
        std::string runs_list;
        for (auto id : row.runs) runs_list += (runs_list.empty() ? "" : ",") + std::to_string(id);
        groups += std::string(i ? "," : "") + "{\"label\":" + js_string(label) + ",\"full\":" + js_string(full) +
                  ",\"runs\":[" + runs_list + "],\"mfu\":" + num(mean_of("mfu", 1.0)) +
                  ",\"memory_mib\":" + num(mean_of("peak_memory", 1.0 / (1024 * 1024))) +
                  ",\"series\":{\"loss\":" + series_json(store, row.runs, "loss", all_sim) +
                  ",\"eval_loss\":" + series_json(store, row.runs, "eval_loss", all_sim) + "}}";
    }
    groups += "]";

    char when[64];
    const std::time_t now = std::time(nullptr);
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M", std::localtime(&now));
    std::string html = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>plexus report: " +
                       html_escape(title) + "</title>\n<style>" + kStyle + "</style>\n<script>\n" + kChartJs +
                       "\n</script>\n</head><body>\n";
    html += "<h1>plexus report: " + html_escape(title) + "</h1>\n<p class=\"meta\">" + std::to_string(runs.size()) +
            " finished run(s)" + (unfinished ? ", " + std::to_string(unfinished) + " not finished" : std::string()) +
            "; database " + html_escape(store.path()) + "; made " + when + "</p>\n";
    html += "<h2>Leaderboard: " + html_escape(board.metric_label) + " (" +
            (board.lower_is_better ? "lower" : "higher") + " is better)</h2>\n<table><tr><th>#</th>";
    for (const auto& k : board.keys) html += "<th>" + html_escape(k) + "</th>";
    if (!board.best_over.empty()) html += "<th>tuned on seeds " + html_escape(join(board.tuning_seeds, ",")) + "</th>";
    html += "<th>" + html_escape(board.metric) + "</th><th>seeds</th><th>95% CI</th>" +
            (board.baseline.empty() ? "" : "<th>vs " + html_escape(board.baseline) + " (paired)</th>") +
            "<th>runs</th></tr>\n";
    for (size_t i = 0; i < board.rows.size(); ++i) {
        const auto& row = board.rows[i];
        html += "<tr><td>" + std::to_string(i + 1) + "</td>";
        for (const auto& v : row.key_values) html += "<td>" + html_escape(v) + "</td>";
        if (!board.best_over.empty())
            html += "<td>" + html_escape(row.tuned) + " (" + std::to_string(row.trials) + " runs)</td>";
        char cell[96] = "-";
        if (row.n > 1)
            std::snprintf(cell, sizeof cell, "%.5g &plusmn; %.5g", row.mean, row.std);
        else if (row.n == 1)
            std::snprintf(cell, sizeof cell, "%.5g", row.mean);
        std::string ids;
        for (auto id : row.runs) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
        std::string extra = row.censored ? " (+" + std::to_string(row.censored) + " &gt; budget)" : "";
        char ci[96] = "-", diff[128] = "-";
        if (std::isfinite(row.lo)) std::snprintf(ci, sizeof ci, "[%.5g, %.5g]", row.lo, row.hi);
        if (row.pairs > 0 && std::isfinite(row.diff_lo))
            std::snprintf(diff, sizeof diff, "%+.5g [%.5g, %.5g]%s", row.diff, row.diff_lo, row.diff_hi,
                          row.diff_lo <= 0 && row.diff_hi >= 0 ? " ~" : "");
        html += std::string("<td>") + cell + extra + "</td><td>" + std::to_string(row.n) + "</td><td>" + ci + "</td>" +
                (board.baseline.empty() ? "" : std::string("<td>") + diff + "</td>") + "<td>" + ids + "</td></tr>\n";
    }
    html += "</table>\n";
    for (const auto& w : board.warnings) html += "<p class=\"warning\">warning: " + html_escape(w) + "</p>\n";
    const std::string time_label = all_sim ? "simulated seconds" : "wall-clock seconds";
    for (const char* metric : {"loss", "eval_loss"}) {
        html += std::string("<h2>") + (std::string(metric) == "loss" ? "Training loss" : "Evaluation loss") +
                " (a line per grid point, a band from the best to the worst seed)</h2>\n<div class=\"charts\">";
        for (const char* axis : {"step", "tokens", "time"})
            html += std::string("<div class=\"chart\"><canvas id=\"") + metric + "_" + axis + "\"></canvas></div>";
        html += "</div>\n";
    }
    std::string profile = "null";
    if (!options.profile.empty()) {
        const Profile p = make_profile(store, runs, options, options.profile);
        profile = "{\"key\":" + js_string(p.method_key) + ",\"taus\":[";
        for (size_t t = 0; t < p.taus.size(); ++t) profile += (t ? "," : "") + num(p.taus[t]);
        profile += "],\"methods\":[";
        for (size_t m = 0; m < p.methods.size(); ++m) {
            profile += std::string(m ? "," : "") + "{\"label\":" + js_string(p.methods[m]) + ",\"rho\":[";
            for (size_t t = 0; t < p.rho[m].size(); ++t) profile += (t ? "," : "") + num(p.rho[m][t]);
            profile += "]}";
        }
        profile += "]}";
        html += "<h2>Performance profile: " + html_escape(p.method_key) + " over " + std::to_string(p.problems.size()) +
                " problem(s), " + html_escape(board.metric_label) +
                "</h2>\n<div class=\"charts\"><div class=\"chart\"><canvas id=\"profile\"></canvas></div></div>\n";
    }
    html +=
        "<h2>Efficiency</h2>\n<div class=\"charts\"><div class=\"chart\"><canvas id=\"mfu\"></canvas></div>"
        "<div class=\"chart\"><canvas id=\"memory\"></canvas></div></div>\n";
    html += "<script>\nconst DATA = {\"time_label\":" + js_string(time_label) + ",\"groups\":" + groups +
            ",\"profile\":" + profile + "};\n" + kScript + "</script>\n</body></html>\n";
    return html;
}

}  // namespace plexus::host
