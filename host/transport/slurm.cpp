#include "transport/slurm.hpp"
#include "base/shell.hpp"

#include <netdb.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>

#include <plexus/error.hpp>

namespace plexus::host {

namespace {

Error malformed(const std::string& what, const std::string& list, const std::string& why) {
    return Error("Slurm's " + what + " '" + list + "' is malformed: " + why,
                 "set MASTER_ADDR, MASTER_PORT and LOCAL_WORLD_SIZE by hand, or report the list");
}

// Splits at the commas outside brackets.
std::vector<std::string> top_level_items(const std::string& list) {
    std::vector<std::string> items;
    std::string item;
    int depth = 0;
    for (char c : list) {
        if (c == '[') ++depth;
        if (c == ']' && --depth < 0) throw malformed("host list", list, "a ']' closes no '['");
        if (c == ',' && depth == 0) {
            items.push_back(item), item.clear();
        } else {
            item += c;
        }
    }
    if (depth != 0) throw malformed("host list", list, "a '[' is not closed");
    items.push_back(item);
    return items;
}

bool all_digits(const std::string& s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "01-03,07" -> 01, 02, 03, 07 (the lower bound's width pads the range).
std::vector<std::string> expand_ranges(const std::string& ranges, const std::string& list) {
    std::vector<std::string> out;
    size_t start = 0;
    while (start <= ranges.size()) {
        const size_t comma = std::min(ranges.find(',', start), ranges.size());
        const std::string part = ranges.substr(start, comma - start);
        const size_t dash = part.find('-');
        const std::string lo = part.substr(0, dash), hi = dash == std::string::npos ? lo : part.substr(dash + 1);
        if (!all_digits(lo) || !all_digits(hi) || lo.size() > 9 || hi.size() > 9)
            throw malformed("host list", list, "'" + part + "' is not a number or a range of numbers");
        const long a = std::stol(lo), b = std::stol(hi);
        if (b < a) throw malformed("host list", list, "the range '" + part + "' runs backwards");
        if (b - a > 100000) throw malformed("host list", list, "the range '" + part + "' is too long");
        for (long v = a; v <= b; ++v) {
            std::string s = std::to_string(v);
            if (s.size() < lo.size()) s.insert(0, lo.size() - s.size(), '0');
            out.push_back(s);
        }
        start = comma + 1;
    }
    return out;
}

// One item: text and bracket groups, crossed left to right.
std::vector<std::string> expand_item(const std::string& item, const std::string& list) {
    std::vector<std::string> names{""};
    size_t pos = 0;
    while (pos < item.size()) {
        const size_t open = item.find('[', pos);
        const std::string text = item.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
        for (auto& n : names) n += text;
        if (open == std::string::npos) break;
        const size_t close = item.find(']', open);
        std::vector<std::string> next;
        for (const auto& n : names)
            for (const auto& v : expand_ranges(item.substr(open + 1, close - open - 1), list)) next.push_back(n + v);
        names = std::move(next);
        pos = close + 1;
    }
    if (names.size() == 1 && names[0].empty()) throw malformed("host list", list, "it has an empty name");
    return names;
}

int parse_count(const std::string& text, const std::string& list) {
    if (!all_digits(text) || text.size() > 9) throw malformed("tasks per node", list, "'" + text + "' is not a count");
    return std::stoi(text);
}

}  // namespace

std::vector<std::string> expand_hostlist(const std::string& list) {
    std::vector<std::string> hosts;
    for (const auto& item : top_level_items(list))
        for (auto& h : expand_item(item, list)) hosts.push_back(std::move(h));
    return hosts;
}

std::vector<int> expand_tasks_per_node(const std::string& list) {
    std::vector<int> counts;
    size_t start = 0;
    while (start <= list.size()) {
        const size_t comma = std::min(list.find(',', start), list.size());
        const std::string part = list.substr(start, comma - start);
        const size_t paren = part.find("(x");
        int repeat = 1;
        if (paren != std::string::npos) {
            if (part.back() != ')') throw malformed("tasks per node", list, "'" + part + "' lacks its ')'");
            repeat = parse_count(part.substr(paren + 2, part.size() - paren - 3), list);
        }
        const int count = parse_count(part.substr(0, paren), list);
        if (repeat > 100000) throw malformed("tasks per node", list, "'" + part + "' repeats too often");
        counts.insert(counts.end(), static_cast<size_t>(repeat), count);
        start = comma + 1;
    }
    return counts;
}

std::optional<SlurmPlace> slurm_place(const std::function<const char*(const char*)>& get) {
    auto text = [&](const char* name) -> std::string {
        const char* v = get(name);
        return v ? v : "";
    };
    auto first_of = [&](std::initializer_list<const char*> names) {
        for (const char* n : names)
            if (!text(n).empty()) return text(n);
        return std::string();
    };
    if (text("SLURM_PROCID").empty() || text("SLURM_NTASKS").empty()) return std::nullopt;
    SlurmPlace s;
    s.rank = std::atoi(text("SLURM_PROCID").c_str());
    s.world_size = std::atoi(text("SLURM_NTASKS").c_str());
    s.local_rank = std::atoi(text("SLURM_LOCALID").c_str());

    const std::string nodelist = first_of({"SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"});
    const auto nodes = nodelist.empty() ? std::vector<std::string>{} : expand_hostlist(nodelist);
    if (!nodes.empty()) s.first_host = nodes.front();
    const std::string per_node = first_of({"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"});
    const auto counts = per_node.empty() ? std::vector<int>{} : expand_tasks_per_node(per_node);
    // This node's count: by its name in the node list, by its index, or the uniform count.
    const auto here = std::find(nodes.begin(), nodes.end(), text("SLURMD_NODENAME"));
    size_t index = here != nodes.end() ? static_cast<size_t>(here - nodes.begin())
                                       : static_cast<size_t>(std::atoi(text("SLURM_NODEID").c_str()));
    if (counts.size() == 1) index = 0;
    if (index < counts.size())
        s.local_world_size = counts[index];
    else if (!text("SLURM_NTASKS_PER_NODE").empty())
        s.local_world_size = std::atoi(text("SLURM_NTASKS_PER_NODE").c_str());
    s.local_world_size = std::max(1, s.local_world_size);

    // A port in 20000-59999 that every task of the step computes alike, and that two jobs (or two
    // steps of one job) sharing a first node rarely both take.
    const long job = std::atol(text("SLURM_JOB_ID").c_str()), step = std::atol(text("SLURM_STEP_ID").c_str());
    s.port = static_cast<int>(20000 + (job * 7 + step) % 40000);
    return s;
}

std::string node_address(const std::string& node) {
    addrinfo* found = nullptr;
    if (getaddrinfo(node.c_str(), nullptr, nullptr, &found) == 0) {
        freeaddrinfo(found);
        return node;
    }
    // Node names need not be host names (NodeName=n1 NodeAddr=10.0.0.5): ask Slurm.
    const bool safe = std::all_of(node.begin(), node.end(),
                                  [](char c) { return std::isalnum(c) || c == '-' || c == '.' || c == '_'; });
    const std::string out = safe ? run_command("scontrol show node " + node + " -o 2>/dev/null").text : "";
    const size_t at = out.find("NodeAddr=");
    if (at == std::string::npos) return node;
    const size_t from = at + 9;
    const std::string addr = out.substr(from, out.find_first_of(" \n", from) - from);
    return addr.empty() ? node : addr;
}

}  // namespace plexus::host
