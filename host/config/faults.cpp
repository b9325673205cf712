#include "config/faults.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <sstream>

#include <plexus/error.hpp>
#include <plexus/kit/util.hpp>

#include "base/text.hpp"

namespace plexus::host {

namespace {

const char* kKinds = "kill, slow, drop_link or corrupt";

// What each kind takes: required and optional keys.
const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>>& kinds() {
    static const std::map<std::string, std::pair<std::vector<std::string>, std::vector<std::string>>> k = {
        {"kill", {{"rank", "step"}, {}}},
        {"slow", {{"rank", "factor"}, {"step"}}},
        {"drop_link", {{"link", "time"}, {}}},
        {"corrupt", {{"link"}, {"probability", "time"}}},
    };
    return k;
}

double number(const Value& v, const std::string& what) {
    if (v.type() == ValueType::Int) return static_cast<double>(v.as_int());
    if (v.type() == ValueType::Float) return v.as_double();
    throw Error(what + " must be a number, got " + v.to_text(), "");
}

}  // namespace

std::string fault_text(const std::vector<std::pair<std::string, Value>>& table, const std::string& where) {
    std::map<std::string, Value> keys(table.begin(), table.end());
    auto kind_it = keys.find("kind");
    if (kind_it == keys.end() || kind_it->second.type() != ValueType::String)
        throw Error(where + ": a [[faults]] table needs kind = \"...\"", std::string("one of ") + kKinds);
    const std::string kind = kind_it->second.as_string();
    auto spec = kinds().find(kind);
    if (spec == kinds().end())
        throw Error(where + ": unknown fault kind \"" + kind + "\"", std::string("use ") + kKinds);
    const auto& [required, optional] = spec->second;
    std::string text = "kind=" + kind;
    for (const auto& k : required)
        if (!keys.count(k))
            throw Error(where + ": a " + kind + " fault needs '" + k + "'", "see `plexus --help` under [[faults]]");
    for (const auto& [k, v] : keys) {
        if (k == "kind") continue;
        if (std::find(required.begin(), required.end(), k) == required.end() &&
            std::find(optional.begin(), optional.end(), k) == optional.end()) {
            std::string accepted;
            for (const auto& a : required) accepted += (accepted.empty() ? "" : ", ") + a;
            for (const auto& a : optional) accepted += ", " + a;
            throw Error(where + ": a " + kind + " fault has no key '" + k + "'", "it takes " + accepted);
        }
        if (k == "link") {
            if (v.type() != ValueType::List || v.as_list().size() != 2 || v.as_list()[0].type() != ValueType::Int ||
                v.as_list()[1].type() != ValueType::Int)
                throw Error(where + ": link must be two ranks, got " + v.to_text(), "link = [0, 1]");
            text += " link=" + std::to_string(v.as_list()[0].as_int()) + "," + std::to_string(v.as_list()[1].as_int());
        } else if (k == "rank" || k == "step") {
            if (v.type() != ValueType::Int || v.as_int() < 0)
                throw Error(where + ": " + k + " must be an integer >= 0, got " + v.to_text(), "");
            text += " " + k + "=" + std::to_string(v.as_int());
        } else {
            const double x = number(v, where + ": " + k);
            std::ostringstream s;
            s.precision(17);
            s << x;
            text += " " + k + "=" + s.str();
        }
    }
    parse_faults(Value(Value::List{Value(text)}), 1 << 30, true);  // the ranges (factor > 0, ...)
    return text;
}

std::vector<Fault> parse_faults(const Value& faults, int ranks, bool simulated) {
    std::vector<Fault> out;
    if (faults.type() != ValueType::List) throw Error("faults must be a list of [[faults]] tables", "");
    for (const auto& item : faults.as_list()) {
        if (item.type() != ValueType::String)
            throw Error("faults holds " + item.to_text() + ", not a fault", "write [[faults]] tables");
        Fault f;
        f.text = item.as_string();
        std::istringstream words(f.text);
        std::string word;
        try {
            while (words >> word) {
                const auto eq = word.find('=');
                if (eq == std::string::npos) throw Error("");
                const std::string k = word.substr(0, eq), v = word.substr(eq + 1);
                if (k == "kind")
                    f.kind = v;
                else if (k == "rank")
                    f.rank = std::stoi(v);
                else if (k == "step")
                    f.step = std::stoll(v);
                else if (k == "factor")
                    f.factor = std::stod(v);
                else if (k == "time")
                    f.time = std::stod(v);
                else if (k == "probability")
                    f.probability = std::stod(v);
                else if (k == "link")
                    f.a = std::stoi(v.substr(0, v.find(','))), f.b = std::stoi(v.substr(v.find(',') + 1));
                else
                    throw Error("");
            }
        } catch (const std::exception&) {
            throw Error("fault '" + f.text + "' is unreadable", "write faults as [[faults]] tables");
        }
        const std::string where = "fault '" + f.text + "'";
        if (!kinds().count(f.kind)) throw Error(where + ": unknown kind", std::string("use ") + kKinds);
        if ((f.kind == "kill" || f.kind == "slow") && (f.rank < 0 || f.rank >= ranks))
            throw Error(where + " names rank " + std::to_string(f.rank) + ", outside 0.." + std::to_string(ranks - 1),
                        "ranks count from 0 to launch.ranks - 1");
        if (f.kind == "slow" && !(f.factor > 0)) throw Error(where + ": factor must be > 0", "3.0: three times slower");
        if (f.kind == "drop_link" || f.kind == "corrupt") {
            if (!simulated)
                throw Error(where + " acts on the simulated network",
                            "set [launch] mode = \"sim\", or use kill and slow faults");
            if (f.a < 0 || f.b < 0 || f.a >= ranks || f.b >= ranks || f.a == f.b)
                throw Error(where + ": the link must join two different ranks in 0.." + std::to_string(ranks - 1),
                            "link = [0, 1]");
            if (f.time < 0) throw Error(where + ": time must be >= 0", "");
        }
        if (f.kind == "corrupt" && !(f.probability > 0 && f.probability <= 1))
            throw Error(where + ": probability must be in (0, 1]", "0.01: one message in a hundred");
        out.push_back(f);
    }
    return out;
}

std::vector<std::vector<double>> number_rows(const Value& list, const std::string& key, size_t min_len, size_t max_len,
                                             const std::string& shape) {
    std::vector<std::vector<double>> rows;
    for (const auto& item : list.as_list()) {
        std::vector<double> row;
        bool ok = item.type() == ValueType::List;
        if (ok)
            for (const auto& x : item.as_list()) {
                if (x.type() == ValueType::Int)
                    row.push_back(static_cast<double>(x.as_int()));
                else if (x.type() == ValueType::Float)
                    row.push_back(x.as_double());
                else
                    ok = false;
            }
        if (!ok || row.size() < min_len || row.size() > max_len)
            throw Error(key + " holds " + item.to_text() + ", not " + shape,
                        "for example " + key + " = [" + shape + "]");
        rows.push_back(row);
    }
    return rows;
}

int rank_in(double v, int n, const std::string& key) {
    const int r = static_cast<int>(v);
    if (r != v || r < 0 || r >= n)
        throw Error(key + " names rank " + short_number(v) + ", outside 0.." + std::to_string(n - 1),
                    "ranks count from 0 to launch.ranks - 1");
    return r;
}

namespace {

Fault shorthand(const std::string& kind, const std::string& origin, const std::string& text) {
    Fault f;
    f.kind = kind;
    f.origin = origin;
    f.text = "kind=" + kind + " " + text + " (" + origin + ")";
    return f;
}

// slow_ranks and slow_fraction, with slow_factor: slow faults from step 0.
void add_stragglers(const std::map<std::string, Value>& v, int ranks, uint64_t seed, std::vector<Fault>& plan) {
    const double factor = v.at("sim.slow_factor").as_double();
    if (!(factor > 0)) throw Error("sim.slow_factor must be > 0", "2.0 makes a straggler take twice as long");
    std::vector<bool> slow(static_cast<size_t>(ranks), false);
    for (const auto& r : v.at("sim.slow_ranks").as_list()) {
        if (r.type() != ValueType::Int)
            throw Error("sim.slow_ranks holds " + r.to_text() + ", not a rank", "slow_ranks = [3]");
        slow[static_cast<size_t>(rank_in(static_cast<double>(r.as_int()), ranks, "sim.slow_ranks"))] = true;
    }
    const double fraction = v.at("sim.slow_fraction").as_double();
    if (fraction < 0 || fraction > 1)
        throw Error("sim.slow_fraction must be in [0, 1]", "0.1 slows a tenth of the ranks");
    if (fraction > 0) {
        std::vector<int> order(static_cast<size_t>(ranks));
        for (int r = 0; r < ranks; ++r) order[static_cast<size_t>(r)] = r;
        std::mt19937_64 rng(seed);
        std::shuffle(order.begin(), order.end(), rng);
        const int k = static_cast<int>(std::lround(fraction * ranks));
        for (int i = 0; i < k; ++i) slow[static_cast<size_t>(order[static_cast<size_t>(i)])] = true;
    }
    for (int r = 0; r < ranks; ++r) {
        if (!slow[static_cast<size_t>(r)]) continue;
        Fault f = shorthand("slow", "sim.slow_ranks", "rank=" + std::to_string(r) + " factor=" + short_number(factor));
        f.rank = r;
        f.factor = factor;
        plan.push_back(f);
    }
}

}  // namespace

std::vector<Fault> fault_plan(const std::map<std::string, Value>& v, int ranks, bool simulated) {
    auto plan = parse_faults(v.at("faults"), ranks, simulated);
    if (!simulated) return plan;  // the shorthands are [sim] keys: the simulated cluster's only
    // The stragglers' draw, as the simulator has always made it (its seed, then a salt).
    const uint64_t seed = mix_seed(mix_seed(static_cast<uint64_t>(v.at("train.seed").as_int()), 0x51a1ULL), 0x5106ULL);
    add_stragglers(v, ranks, seed, plan);
    for (const auto& row : number_rows(v.at("sim.fail_ranks"), "sim.fail_ranks", 2, 2, "[rank, time_s], ...")) {
        Fault f = shorthand("kill", "sim.fail_ranks", "rank=" + short_number(row[0]) + " time=" + short_number(row[1]));
        f.rank = rank_in(row[0], ranks, "sim.fail_ranks");
        f.time = row[1];
        f.at_time = true;
        plan.push_back(f);
    }
    for (const auto& row : number_rows(v.at("sim.fail_links"), "sim.fail_links", 3, 3, "[a, b, time_s], ...")) {
        Fault f =
            shorthand("drop_link", "sim.fail_links",
                      "link=" + short_number(row[0]) + "," + short_number(row[1]) + " time=" + short_number(row[2]));
        f.a = rank_in(row[0], ranks, "sim.fail_links");
        f.b = rank_in(row[1], ranks, "sim.fail_links");
        f.time = row[2];
        plan.push_back(f);
    }
    return plan;
}

}  // namespace plexus::host
