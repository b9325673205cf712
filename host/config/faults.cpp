#include "config/faults.hpp"

#include <algorithm>
#include <map>
#include <sstream>

#include <plexus/error.hpp>

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

}  // namespace plexus::host
