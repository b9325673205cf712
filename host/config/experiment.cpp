#include "config/experiment.hpp"

#include <cmath>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "base/toml.hpp"

#include "config/faults.hpp"
#include "base/text.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

std::string SourceLoc::str() const {
    if (line <= 0) return file;
    return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

namespace {

SourceLoc loc_of(const toml::source_region& r, const std::string& file) {
    return {file, static_cast<long>(r.begin.line), static_cast<long>(r.begin.column)};
}

Error config_error(const SourceLoc& where, const std::string& what, const std::string& hint) {
    return Error(where.str() + ": " + what, hint);
}

Value to_value(const toml::node& node, const std::string& key, const std::string& file) {
    if (auto v = node.as_boolean()) return Value(v->get());
    if (auto v = node.as_integer()) return Value(static_cast<int64_t>(v->get()));
    if (auto v = node.as_floating_point()) return Value(v->get());
    if (auto v = node.as_string()) return Value(v->get());
    if (auto arr = node.as_array()) {
        Value::List items;
        for (const auto& item : *arr) {
            if (item.is_table() || item.is_array_of_tables())
                throw config_error(loc_of(item.source(), file), "'" + key + "' holds a table inside a list",
                                   "lists may hold numbers, strings, booleans or lists");
            items.push_back(to_value(item, key, file));
        }
        return Value(std::move(items));
    }
    throw config_error(loc_of(node.source(), file), "'" + key + "' has a date or time value",
                       "use a number or a string");
}

// Flattens nested tables into dotted keys.
void flatten(const toml::table& table, const std::string& prefix, const std::string& file,
             std::map<std::string, Setting>& out) {
    for (const auto& [k, node] : table) {
        const std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
        if (const auto* sub = node.as_table()) {
            flatten(*sub, key, file, out);
        } else {
            out[key] = Setting{to_value(node, key, file), loc_of(k.source(), file)};
        }
    }
}

// When `key` is "<section>.name" and names another plugin than `settings` has, the section's
// earlier keys belong to the old plugin's schema: drop them (extends and --set alike). Returns
// what was dropped, with the old plugin's name.
std::pair<Value, std::map<std::string, Setting>> forget_old_plugin_keys(std::map<std::string, Setting>& settings,
                                                                        const std::string& key, const Value& v) {
    std::pair<Value, std::map<std::string, Setting>> dropped;
    const auto dot = key.find('.');
    if (dot == std::string::npos || key.compare(dot, std::string::npos, ".name") != 0) return dropped;
    auto old = settings.find(key);
    if (old == settings.end() || old->second.value == v) return dropped;
    dropped.first = old->second.value;
    const std::string prefix = key.substr(0, dot + 1);
    for (auto s = settings.begin(); s != settings.end();) {
        if (s->first.rfind(prefix, 0) != 0) {
            ++s;
            continue;
        }
        dropped.second.insert(*s);
        s = settings.erase(s);
    }
    return dropped;
}

// Every number in `v` (in lists too) is finite: nan passes every range check, inf most.
bool finite_numbers(const Value& v) {
    if (v.type() == ValueType::Float) return std::isfinite(v.as_double());
    if (v.type() == ValueType::List)
        for (const auto& item : v.as_list())
            if (!finite_numbers(item)) return false;
    return true;
}

constexpr uintmax_t kMaxExperimentBytes = 16 << 20;
constexpr size_t kMaxExtendsDepth = 64;
// A grid this large is a mistake: 10,000 runs of a minute each are a week of one machine, and
// every point is resolved before a sweep starts (a dry run of 10,000 takes seconds, of 10^6
// minutes).
constexpr double kMaxGridPoints = 1e4;

}  // namespace

// TOML allows non-ASCII characters only inside strings and comments: one elsewhere (a stray
// no-break space after a value, say) gets a message that says so, with its line and column,
// rather than TOML++'s. (TOML++ 3.3 also mishandled such characters: see toml.hpp.)
void check_toml_text(const std::string& text, const std::string& origin) {
    enum class In { Code, Comment, Basic, Literal, MultiBasic, MultiLiteral } in = In::Code;
    long line = 1, column = 1;
    auto starts = [&](size_t i, const char* s) { return text.compare(i, std::strlen(s), s) == 0; };
    // UTF-16 (as some Windows editors save) or a binary file: said as such, not as a stray character.
    if (starts(0, "\xFF\xFE") || starts(0, "\xFE\xFF"))
        throw Error(origin + ": the file is UTF-16 text; TOML files are UTF-8", "save it as UTF-8");
    if (text.find('\0') != std::string::npos)
        throw Error(origin + ": the file holds NUL bytes: it is not text (UTF-16 without a byte-order mark, or binary)",
                    "save it as UTF-8 text");
    // A UTF-8 byte-order mark, as some editors write, is not text: TOML++ skips it, and so do we.
    const size_t first = starts(0, "\xEF\xBB\xBF") ? 3 : 0;
    for (size_t i = first; i < text.size(); ++i, ++column) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == '\n') {
            ++line;
            column = 0;
            if (in != In::MultiBasic && in != In::MultiLiteral) in = In::Code;  // an unclosed string: TOML++ says so
            continue;
        }
        switch (in) {
            case In::Code:
                if (starts(i, "\"\"\""))
                    in = In::MultiBasic, i += 2, column += 2;
                else if (starts(i, "'''"))
                    in = In::MultiLiteral, i += 2, column += 2;
                else if (c == '"')
                    in = In::Basic;
                else if (c == '\'')
                    in = In::Literal;
                else if (c == '#')
                    in = In::Comment;
                else if (c >= 0x80)
                    throw Error(origin + ":" + std::to_string(line) + ":" + std::to_string(column) +
                                    ": malformed TOML: a non-ASCII character outside a string or comment",
                                "keys are ASCII letters, digits, _ and -; text goes in quotes: name = \"caf\u00e9\"");
                break;
            case In::Comment: break;
            case In::Basic:
                if (c == '\\')
                    ++i, ++column;
                else if (c == '"')
                    in = In::Code;
                break;
            case In::Literal:
                if (c == '\'') in = In::Code;
                break;
            case In::MultiBasic:
            case In::MultiLiteral: {
                const char quote = in == In::MultiBasic ? '"' : '\'';
                if (in == In::MultiBasic && c == '\\') {
                    ++i, ++column;
                    if (i < text.size() && text[i] == '\n') ++line, column = 0;
                } else if (c == static_cast<unsigned char>(quote) && i + 2 < text.size() && text[i + 1] == quote &&
                           text[i + 2] == quote) {
                    // The closing delimiter; up to two more quotes before it belong to the string.
                    size_t n = 3;
                    while (n < 5 && i + n < text.size() && text[i + n] == quote) ++n;
                    i += n - 1;
                    column += static_cast<long>(n) - 1;
                    in = In::Code;
                }
                break;
            }
        }
    }
}

namespace {

toml::table parse_file(const std::string& path) {
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw Error(path + ": " + (ec ? ec.message() : "no such experiment file"),
                    "check the path; experiments live in experiments/");
    // A folder, a device (/dev/zero would be read forever) or a huge file is not an experiment.
    if (!fs::is_regular_file(path, ec)) throw Error(path + ": not a regular file", "an experiment is a TOML file");
    if (fs::file_size(path, ec) > kMaxExperimentBytes)
        throw Error(path + ": " + std::to_string(fs::file_size(path, ec)) +
                        " bytes is too large for an experiment file (the limit is " +
                        std::to_string(kMaxExperimentBytes >> 20) + " MiB)",
                    "is this the right file?");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(path + ": cannot be read", "check its permissions");
    std::stringstream buf;
    buf << in.rdbuf();
    const std::string text = buf.str();
    check_toml_text(text, path);
    try {
        return toml::parse(text, path);
    } catch (const toml::parse_error& e) {
        const auto& b = e.source().begin;
        throw Error(path + ":" + std::to_string(b.line) + ":" + std::to_string(b.column) +
                        ": malformed TOML: " + std::string(e.description()),
                    "see https://toml.io for the syntax; strings need quotes, tables are [name]");
    }
}

// [grid]: lists of values under dotted keys (quoted, "optimizer.lr", or as TOML dotted keys or
// sub-tables); `seeds` is the train.seed axis; every sub-table whose name starts with "zip" is
// one group of lists that vary together; a sub-table holding only tables is a named axis (its
// tables are named sets of settings: [grid.variant.ddp], [grid.workload.markov]); [grid.tune]
// and [[grid.skip]] are described at GridTune and GridSkip.
void collect_lists(const toml::table& table, const std::string& prefix, const std::string& file,
                   std::vector<std::pair<std::string, const toml::node*>>& out, bool zip_groups,
                   std::vector<std::pair<std::string, const toml::table*>>* zips) {
    for (const auto& [k, node] : table) {
        const std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
        if (const auto* sub = node.as_table()) {
            if (zip_groups && prefix.empty() && (key.rfind("zip", 0) == 0 || key == "variant" || key == "tune"))
                zips->emplace_back(key, sub);
            else if (zip_groups && prefix.empty() && !sub->empty() &&
                     std::all_of(sub->begin(), sub->end(), [](const auto& kv) { return kv.second.is_table(); }))
                zips->emplace_back(key, sub);  // a named axis
            else
                collect_lists(*sub, key, file, out, false, nullptr);
        } else if (zip_groups && prefix.empty() && key == "skip") {
            continue;  // [[grid.skip]]: parse_skips
        } else {
            out.emplace_back(key, &node);
        }
    }
}

GridAxis grid_list(const std::string& key, const toml::node& node, const std::string& file) {
    const auto* arr = node.as_array();
    if (!arr || arr->empty())
        throw config_error(loc_of(node.source(), file), "[grid] '" + key + "' must be a non-empty list of values",
                           "for example \"optimizer.lr\" = [1e-3, 3e-4]");
    GridAxis axis;
    axis.where = loc_of(node.source(), file);
    for (const auto& item : *arr) axis.points.push_back({to_value(item, key, file)});
    if (key == "seeds") {
        for (const auto& p : axis.points)
            if (p[0].type() != ValueType::Int)
                throw config_error(axis.where, "[grid] seeds must be integers", "seeds = [0, 1, 2]");
        axis.keys = {"train.seed"};
    } else {
        if (key.find('.') == std::string::npos && key != "name")
            throw config_error(axis.where, "[grid] '" + key + "' is not a dotted setting",
                               "name the section too: \"optimizer.lr\" = [...]");
        axis.keys = {key};
    }
    return axis;
}

// Text equal for two values exactly when they are equal (Value::operator==): a hash key.
std::string exact_key(const Value& v) {
    switch (v.type()) {
        case ValueType::Bool: return v.as_bool() ? "b1" : "b0";
        case ValueType::Int: return "i" + std::to_string(v.as_int());
        case ValueType::Float: {
            char buf[40];
            std::snprintf(buf, sizeof buf, "f%a", v.as_double() == 0 ? 0.0 : v.as_double());  // -0.0 == 0.0
            return buf;
        }
        case ValueType::String: return "s" + std::to_string(v.as_string().size()) + ":" + v.as_string();
        case ValueType::List: {
            std::string key = "l" + std::to_string(v.as_list().size()) + "[";
            for (const auto& item : v.as_list()) key += exact_key(item) + ",";
            return key + "]";
        }
    }
    return "";
}

// The same point twice would train the same run under two point numbers. An axis longer than a
// whole grid may be is refused first; the check is linear (a hash of each point).
void check_distinct(const GridAxis& axis, const std::string& what) {
    if (static_cast<double>(axis.points.size()) > kMaxGridPoints)
        throw config_error(axis.where,
                           what + " lists " + std::to_string(axis.points.size()) + " values, over the limit of " +
                               std::to_string(static_cast<int64_t>(kMaxGridPoints)) + " points a grid may have",
                           "split it into several sweeps");
    std::unordered_map<std::string, size_t> first;
    first.reserve(axis.points.size());
    for (size_t i = 0; i < axis.points.size(); ++i) {
        std::string key;
        for (const auto& v : axis.points[i]) key += exact_key(v) + ";";
        const auto [seen, fresh] = first.emplace(std::move(key), i);
        if (fresh) continue;
        std::string point;
        for (const auto& v : axis.points[i]) point += (point.empty() ? "" : ", ") + v.to_text();
        throw config_error(axis.where,
                           what + " lists " + (axis.points[i].size() > 1 ? "(" + point + ")" : point) +
                               " twice (points " + std::to_string(seen->second) + " and " + std::to_string(i) + ")",
                           "each value once; seeds = [0, 1, 2] for repeats");
    }
}

// [grid.NAME.CHOICE.tune]: the lists a choice tunes in place of [grid.tune]'s (on its seeds).
std::vector<GridAxis> choice_tune_lists(const toml::table& table, const std::string& what, const std::string& file) {
    std::vector<std::pair<std::string, const toml::node*>> lists;
    collect_lists(table, "", file, lists, false, nullptr);
    std::vector<GridAxis> axes;
    for (const auto& [key, node] : lists) {
        if (key == "seeds" || key == "metric")
            throw config_error(loc_of(node->source(), file), what + " sets '" + key + "', which only [grid.tune] sets",
                               "a choice lists the values of its own tuned keys; the seeds and metric are shared");
        axes.push_back(grid_list(key, *node, file));
        check_distinct(axes.back(), what + " '" + key + "'");
    }
    if (axes.empty())
        throw config_error(loc_of(table.source(), file), what + " lists nothing to tune",
                           "\"optimizer.step_mult\" = [3e-4, 1e-3, 3e-3], or remove the table");
    return axes;
}

// [grid.NAME.CHOICE] tables: one named axis. Its name becomes a recorded setting, so it may not
// be a section's.
GridAxis named_axis(const std::string& name, const toml::table& table, const std::string& file) {
    GridAxis axis;
    axis.keys = {name};
    axis.where = loc_of(table.source(), file);
    const auto& sections = host_schemas();
    bool plugin_section = false;
    for (const auto& s : core_plugin_sections()) plugin_section |= s.section == name;
    if (plugin_section || sections.count(name) || name == "sim" || name == "name" || name == "seeds")
        throw config_error(axis.where, "[grid." + name + "] names a section: a named axis needs a name of its own",
                           "[grid.variant.NAME] or [grid.workload.NAME]; lists of a section's keys go in [grid]");
    for (const auto& [choice, node] : table) {
        const auto* sub = node.as_table();
        if (!sub)
            throw config_error(loc_of(node.source(), file),
                               "[grid." + name + "] '" + std::string(choice.str()) + "' must be a table",
                               "[grid." + name + ".NAME] \"strategy.name\" = \"ddp\"");
        toml::table own = *sub;
        axis.tunes.emplace_back();
        if (const auto* tune = own.get_as<toml::table>("tune")) {
            axis.tunes.back() =
                choice_tune_lists(*tune, "[grid." + name + "." + std::string(choice.str()) + ".tune]", file);
            own.erase("tune");
        }
        std::map<std::string, Setting> flat;
        flatten(own, "", file, flat);
        axis.names.emplace_back(choice.str());
        axis.settings.emplace_back();
        for (const auto& [key, setting] : flat) {
            for (const auto& list : axis.tunes.back())
                if (list.keys[0] == key)
                    throw config_error(
                        setting.where,
                        "'" + key + "' is both set and tuned by [grid." + name + "." + std::string(choice.str()) + "]",
                        "set it, or list its values under .tune, not both");
            axis.settings.back().emplace_back(key, setting.value);
        }
    }
    if (axis.names.empty())
        throw config_error(axis.where, "[grid." + name + "] has no choices",
                           "[grid." + name + ".NAME] \"strategy.name\" = \"ddp\", or remove the table");
    return axis;
}

GridAxis zip_axis(const std::string& name, const toml::table& table, const std::string& file) {
    std::vector<std::pair<std::string, const toml::node*>> members;
    collect_lists(table, "", file, members, false, nullptr);
    GridAxis zipped;
    zipped.where = loc_of(table.source(), file);
    for (const auto& [key, node] : members) {
        GridAxis one = grid_list(key, *node, file);
        if (!zipped.keys.empty() && one.points.size() != zipped.points.size())
            throw config_error(one.where,
                               "[grid." + name + "] '" + key + "' has " + std::to_string(one.points.size()) +
                                   " values but '" + zipped.keys[0] + "' has " + std::to_string(zipped.points.size()),
                               "lists in a zip group vary together: give them the same length");
        if (zipped.keys.empty()) zipped.points.resize(one.points.size());
        zipped.keys.push_back(one.keys[0]);
        for (size_t i = 0; i < one.points.size(); ++i) zipped.points[i].push_back(one.points[i][0]);
    }
    if (zipped.keys.empty())
        throw config_error(zipped.where, "[grid." + name + "] has no lists",
                           "a zip group varies lists of equal length together");
    check_distinct(zipped, "[grid." + name + "]");
    return zipped;
}

// [grid.tune]: lists of the tuned keys (axes like the others), `seeds` and an optional `metric`.
std::vector<GridAxis> parse_tune(const toml::table& table, const std::string& file, GridTune& tune) {
    tune = GridTune{};
    tune.where = loc_of(table.source(), file);
    std::vector<GridAxis> axes;
    for (const auto& [k, node] : table) {
        const std::string key(k.str());
        if (key == "metric") {
            if (!node.is_string())
                throw config_error(loc_of(node.source(), file), "[grid.tune] metric must be a string",
                                   "metric = \"final_eval_loss\"");
            tune.metric = node.as_string()->get();
        } else if (key == "seeds") {
            for (const auto& p : grid_list(key, node, file).points) tune.seeds.push_back(p[0].as_int());
        } else {
            std::vector<std::pair<std::string, const toml::node*>> lists;
            if (const auto* sub = node.as_table())
                collect_lists(*sub, key, file, lists, false, nullptr);
            else
                lists.emplace_back(key, &node);
            for (const auto& [name, list] : lists) {
                axes.push_back(grid_list(name, *list, file));
                check_distinct(axes.back(), "[grid.tune] '" + name + "'");
                tune.keys.push_back(name);
            }
        }
    }
    if (tune.seeds.empty())  // the keys may come from the choices: settle_choice_tunes checks
        throw config_error(tune.where, "[grid.tune] needs the keys to tune and the seeds to tune them on",
                           "[grid.tune] \"optimizer.lr\" = [0.1, 0.3] and seeds = [100]");
    return axes;
}

// Once every file is read: the keys choices tune join [grid.tune]'s, which they need for its
// seeds; one named axis at most carries them (a point takes one choice's lists).
void settle_choice_tunes(Experiment& exp) {
    std::string carrier;
    for (const auto& axis : exp.grid) {
        if (!axis.has_choice_tunes()) continue;
        if (!carrier.empty())
            throw config_error(
                axis.where, "[grid." + carrier + "] and [grid." + axis.keys[0] + "] both have choices with .tune lists",
                "give choices tune lists on one named axis only");
        carrier = axis.keys[0];
        if (exp.tune.seeds.empty())
            throw config_error(axis.where,
                               "[grid." + carrier + "] has choices with .tune lists but no [grid.tune] seeds",
                               "[grid.tune] seeds = [100]: the seeds every choice is tuned on");
        for (const auto& lists : axis.tunes)
            for (const auto& list : lists)
                if (std::find(exp.tune.keys.begin(), exp.tune.keys.end(), list.keys[0]) == exp.tune.keys.end())
                    exp.tune.keys.push_back(list.keys[0]);
    }
    if (!exp.tune.seeds.empty() && exp.tune.keys.empty())
        throw config_error(exp.tune.where, "[grid.tune] needs the keys to tune and the seeds to tune them on",
                           "[grid.tune] \"optimizer.lr\" = [0.1, 0.3] and seeds = [100]");
}

// [[grid.skip]] tables: each key a named axis or a setting, each value one value or a list.
std::vector<GridSkip> parse_skips(const toml::node& node, const std::string& file) {
    const auto* arr = node.as_array();
    if (!arr || !arr->is_array_of_tables() || arr->empty())
        throw config_error(loc_of(node.source(), file), "[grid] skip must be [[grid.skip]] tables",
                           "[[grid.skip]]\nscenario = \"failure\"\nvariant = [\"ddp\", \"zero1\"]");
    std::vector<GridSkip> out;
    for (const auto& item : *arr) {
        GridSkip skip;
        skip.where = loc_of(item.source(), file);
        std::map<std::string, Setting> flat;
        flatten(*item.as_table(), "", file, flat);
        for (const auto& [key, setting] : flat)
            skip.match.emplace_back(key, setting.value.type() == ValueType::List ? setting.value.as_list()
                                                                                 : std::vector<Value>{setting.value});
        if (skip.match.empty())
            throw config_error(skip.where, "[[grid.skip]] is empty (it would skip every point)",
                               "name the choices to leave out: variant = \"ddp\"");
        out.push_back(std::move(skip));
    }
    return out;
}

// A file's axes replace its base's axes over the same keys; the others add up.
void add_axis(std::vector<GridAxis>& grid, GridAxis axis) {
    grid.erase(std::remove_if(grid.begin(), grid.end(),
                              [&](const GridAxis& a) {
                                  for (const auto& k : a.keys)
                                      if (std::find(axis.keys.begin(), axis.keys.end(), k) != axis.keys.end())
                                          return true;
                                  return false;
                              }),
               grid.end());
    grid.push_back(std::move(axis));
}

void parse_grid(const toml::table& grid, const std::string& file, Experiment& exp) {
    std::vector<std::pair<std::string, const toml::node*>> lists;
    std::vector<std::pair<std::string, const toml::table*>> tables;
    collect_lists(grid, "", file, lists, true, &tables);
    bool any = false;
    for (const auto& [key, node] : lists) {
        GridAxis axis = grid_list(key, *node, file);
        check_distinct(axis, "[grid] '" + key + "'");
        add_axis(exp.grid, std::move(axis));
        any = true;
    }
    for (const auto& [name, table] : tables) {
        if (name == "tune") {
            for (auto& axis : parse_tune(*table, file, exp.tune)) add_axis(exp.grid, std::move(axis));
        } else if (name.rfind("zip", 0) == 0) {
            add_axis(exp.grid, zip_axis(name, *table, file));
        } else {
            add_axis(exp.grid, named_axis(name, *table, file));
        }
        any = true;
    }
    if (const auto* skip = grid.get("skip"))
        for (auto& s : parse_skips(*skip, file)) exp.skip.push_back(std::move(s));
    if (!any) throw config_error(loc_of(grid.source(), file), "[grid] is empty", "give it lists to vary, or remove it");
}

// The file's absolute, normalized name; a file-system error (a name too long, a folder that
// cannot be searched) becomes an error that names the file instead of escaping raw.
std::string canonical_name(const std::string& path) {
    std::error_code ec;
    const fs::path canonical = fs::weakly_canonical(path, ec);
    if (ec) throw Error(path + ": " + ec.message(), "check the path");
    return canonical.string();
}

void load_into(const std::string& path, Experiment& exp, std::vector<std::string>& stack) {
    const std::string canonical = canonical_name(path);
    for (const auto& s : stack)
        if (s == canonical)
            throw Error(path + ": 'extends' forms a cycle (" + join(stack, " -> ") + " -> " + canonical + ")",
                        "remove one of the extends");
    // A file two bases share is loaded once (with each loaded again, a chain of files that each
    // extend two others would load exponentially many).
    for (const auto& loaded : exp.files)
        if (canonical_name(loaded) == canonical) return;
    if (stack.size() >= kMaxExtendsDepth)
        throw Error(path + ": 'extends' nests more than " + std::to_string(kMaxExtendsDepth) + " files deep",
                    "a chain this long is a mistake: flatten it");
    stack.push_back(canonical);
    toml::table table = parse_file(path);
    if (auto* ext = table.get("extends")) {
        std::vector<std::string> bases;
        bool all_strings = true;
        if (auto s = ext->as_string())
            bases.push_back(s->get());
        else if (auto arr = ext->as_array()) {
            for (const auto& item : *arr)
                if (auto s = item.as_string())
                    bases.push_back(s->get());
                else
                    all_strings = false;
        }
        if (bases.empty() || !all_strings)
            throw config_error(loc_of(ext->source(), path), "'extends' must be a file name or a list of them",
                               "for example extends = \"quickstart.toml\"");
        for (const auto& base : bases) {
            fs::path p = fs::path(path).parent_path() / base;
            std::error_code ec;
            if (!fs::exists(p, ec))
                throw config_error(
                    loc_of(ext->source(), path),
                    "extends '" + base + "': " + (ec ? ec.message() : "no such file") + " (" + p.string() + ")",
                    "paths in extends are relative to the file that names them");
            load_into(p.string(), exp, stack);
        }
        table.erase("extends");
    }
    // [[faults]]: kept as one setting, a list of each fault's canonical text.
    if (auto* faults = table.get("faults")) {
        const auto* arr = faults->as_array();
        if (!arr || !(arr->empty() || arr->is_array_of_tables()))
            throw config_error(loc_of(faults->source(), path), "'faults' must be [[faults]] tables",
                               "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 30");
        Value::List list;
        for (const auto& node : *arr) {
            std::vector<std::pair<std::string, Value>> keys;
            for (const auto& [k, v] : *node.as_table())
                keys.emplace_back(std::string(k.str()), to_value(v, "faults." + std::string(k.str()), path));
            list.push_back(Value(fault_text(keys, loc_of(node.source(), path).str())));
        }
        exp.settings["faults"] = Setting{Value(std::move(list)), loc_of(faults->source(), path)};
        table.erase("faults");
    }
    if (auto* grid = table.get("grid")) {
        if (!grid->is_table())
            throw config_error(loc_of(grid->source(), path), "'grid' must be a table",
                               "[grid] \"optimizer.lr\" = [1e-3, 3e-4]");
        parse_grid(*grid->as_table(), path, exp);
        table.erase("grid");
    }
    if (auto* presets = table.get("preset")) {
        if (!presets->is_table())
            throw config_error(loc_of(presets->source(), path), "'preset' must hold tables",
                               "[preset.quick] \"train.steps\" = 100");
        for (const auto& [name, node] : *presets->as_table()) {
            if (!node.is_table())
                throw config_error(loc_of(node.source(), path),
                                   "[preset] '" + std::string(name.str()) + "' must be a table",
                                   "[preset.quick] \"train.steps\" = 100");
            flatten(*node.as_table(), "", path, exp.presets[std::string(name.str())]);
        }
        table.erase("preset");
    }
    std::map<std::string, Setting> mine;
    flatten(table, "", path, mine);
    for (auto& kv : mine) forget_old_plugin_keys(exp.settings, kv.first, kv.second.value);
    for (auto& kv : mine) exp.settings[kv.first] = kv.second;
    exp.files.push_back(path);
    stack.pop_back();
}

bool type_fits(ValueType want, ValueType got) {
    return want == got || (want == ValueType::Float && got == ValueType::Int);
}

Value coerce(ValueType want, const Value& v) {
    if (want == ValueType::Float && v.type() == ValueType::Int) return Value(v.as_double());
    return v;
}

std::string to_json_value(const Value& v) {
    switch (v.type()) {
        case ValueType::String: return "\"" + json_escape(v.as_string()) + "\"";
        case ValueType::Float: {
            if (!std::isfinite(v.as_double())) return "null";
            return v.to_text();
        }
        case ValueType::List: {
            std::string out = "[";
            const auto& items = v.as_list();
            for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + to_json_value(items[i]);
            return out + "]";
        }
        default: return v.to_text();
    }
}

}  // namespace

Experiment load_experiment(const std::string& path) {
    Experiment exp;
    exp.path = path;
    std::vector<std::string> stack;
    load_into(path, exp, stack);
    settle_choice_tunes(exp);
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    exp.text = ss.str();
    return exp;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    return out;
}

namespace {

// The axes as expanded: [grid.tune]'s seeds put first on the seed axis.
std::vector<GridAxis> axes_with_tuning_seeds(const Experiment& exp) {
    std::vector<GridAxis> axes = exp.grid;
    if (exp.tune.empty()) return axes;
    auto seeds = std::find_if(axes.begin(), axes.end(),
                              [](const GridAxis& a) { return a.keys == std::vector<std::string>{"train.seed"}; });
    if (seeds == axes.end())
        throw config_error(exp.tune.where, "[grid.tune] needs held-out seeds to report the chosen settings on",
                           "seeds = [0, 1, 2] in [grid], apart from [grid.tune]'s seeds");
    std::vector<std::vector<Value>> points;
    for (int64_t s : exp.tune.seeds) {
        for (const auto& p : seeds->points)
            if (p[0].as_int() == s)
                throw config_error(exp.tune.where,
                                   "seed " + std::to_string(s) + " is both a tuning seed and a reported one",
                                   "tuning seeds choose, the [grid] seeds report: keep them apart");
        points.push_back({Value(s)});
    }
    points.insert(points.end(), seeds->points.begin(), seeds->points.end());
    seeds->points = std::move(points);
    return axes;
}

bool skipped(const GridPoint& p, const std::vector<GridSkip>& skips) {
    for (const auto& skip : skips) {
        bool all = true;
        for (const auto& [key, values] : skip.match) {
            bool one = false;
            for (const auto& [axis, choice] : p.choices)
                if (axis == key)
                    for (const auto& v : values) one |= v.type() == ValueType::String && v.as_string() == choice;
            for (const auto& [k, value] : p.assignments)
                if (k == key)
                    for (const auto& v : values) one |= v == value;
            all &= one;
        }
        if (all) return true;
    }
    return false;
}

// Every point times every position of one axis (first axis slowest).
std::vector<GridPoint> cross(const std::vector<GridPoint>& points, const GridAxis& axis, const Experiment& exp) {
    std::vector<GridPoint> next;
    for (const auto& p : points) {
        if (axis.named()) {
            for (size_t v = 0; v < axis.names.size(); ++v) {
                GridPoint q = p;
                for (const auto& kv : axis.settings[v]) q.assignments.push_back(kv);
                q.label += (q.label.empty() ? "" : " ") + axis.keys[0] + "=" + axis.names[v];
                q.choices.emplace_back(axis.keys[0], axis.names[v]);
                next.push_back(std::move(q));
            }
            continue;
        }
        for (const auto& values : axis.points) {
            GridPoint q = p;
            for (size_t k = 0; k < axis.keys.size(); ++k) {
                q.assignments.emplace_back(axis.keys[k], values[k]);
                const std::string shown = axis.keys[k] == "train.seed" ? "seed" : axis.keys[k];
                q.label += (q.label.empty() ? "" : " ") + shown + "=" + values[k].to_text();
                if (axis.keys[k] == "train.seed")
                    q.tuning = std::find(exp.tune.seeds.begin(), exp.tune.seeds.end(), values[k].as_int()) !=
                               exp.tune.seeds.end();
            }
            next.push_back(std::move(q));
        }
    }
    return next;
}

// The tuned lists of a point: its choice's own, or [grid.tune]'s.
const std::vector<GridAxis>& lists_of_choice(const GridPoint& p, const GridAxis& chooser,
                                             const std::vector<GridAxis>& shared) {
    for (const auto& [axis, choice] : p.choices)
        if (axis == chooser.keys[0])
            for (size_t i = 0; i < chooser.names.size(); ++i)
                if (chooser.names[i] == choice && !chooser.tunes[i].empty()) return chooser.tunes[i];
    return shared;
}

// A skip naming a key the grid does not vary would silently skip nothing.
void check_skips(const Experiment& exp) {
    for (const auto& skip : exp.skip)
        for (const auto& [key, values] : skip.match) {
            bool known = false;
            for (const auto& axis : exp.grid) {
                known |= std::find(axis.keys.begin(), axis.keys.end(), key) != axis.keys.end();
                for (const auto& set : axis.settings)
                    for (const auto& kv : set) known |= kv.first == key;
                for (const auto& lists : axis.tunes)
                    for (const auto& list : lists) known |= list.keys[0] == key;
            }
            if (!known)
                throw config_error(skip.where, "[[grid.skip]] '" + key + "' is not varied by the grid",
                                   "skip by a named axis (variant = \"ddp\") or a key the grid varies");
        }
}

}  // namespace

std::vector<GridPoint> expand_grid(const Experiment& exp) {
    auto axes = axes_with_tuning_seeds(exp);
    check_skips(exp);
    double total = 1;
    for (const auto& axis : axes) total *= static_cast<double>(axis.named() ? axis.names.size() : axis.points.size());
    if (total > kMaxGridPoints)
        throw Error("the [grid] of " + exp.path + " has " +
                        (total < 9e18 ? std::to_string(static_cast<long long>(total)) : "over 10^18") +
                        " points, over the limit of " + std::to_string(static_cast<int64_t>(kMaxGridPoints)),
                    "split it into several sweeps, or zip axes that vary together ([grid.zip])");
    // Where choices tune keys of their own, [grid.tune]'s lists go last: a point knows its choice
    // by then, and takes that choice's lists or these.
    const auto carrier = std::find_if(axes.begin(), axes.end(), [](const GridAxis& a) { return a.has_choice_tunes(); });
    std::optional<GridAxis> chooser;
    std::vector<GridAxis> shared_tune;
    if (carrier != axes.end()) {
        chooser = *carrier;
        const auto tuned = [&](const GridAxis& a) {
            return !a.named() &&
                   std::find(exp.tune.keys.begin(), exp.tune.keys.end(), a.keys[0]) != exp.tune.keys.end();
        };
        std::copy_if(axes.begin(), axes.end(), std::back_inserter(shared_tune), tuned);
        axes.erase(std::remove_if(axes.begin(), axes.end(), tuned), axes.end());
    }
    std::vector<GridPoint> points(1);
    for (const auto& axis : axes) points = cross(points, axis, exp);
    if (chooser) {
        std::vector<GridPoint> all;
        for (const auto& p : points) {
            const auto& lists = lists_of_choice(p, *chooser, shared_tune);
            std::vector<GridPoint> one{p};
            for (const auto& axis : lists) one = cross(one, axis, exp);
            all.insert(all.end(), one.begin(), one.end());
        }
        points = std::move(all);
    }
    points.erase(std::remove_if(points.begin(), points.end(), [&](const GridPoint& p) { return skipped(p, exp.skip); }),
                 points.end());
    if (points.empty()) throw Error("the [grid] of " + exp.path + " skips every point", "loosen its [[grid.skip]]");
    return points;
}

void apply_preset(Experiment& exp, const std::string& name) {
    const auto it = exp.presets.find(name);
    if (it == exp.presets.end()) {
        std::vector<std::string> names;
        for (const auto& kv : exp.presets) names.push_back(kv.first);
        throw Error(
            exp.path + " has no [preset." + name + "]" + (names.empty() ? "" : "; its presets: " + join(names, ", ")),
            "a preset is a table of settings in the file: [preset." + name + "] \"train.steps\" = 100");
    }
    for (const auto& [key, setting] : it->second) {
        forget_old_plugin_keys(exp.settings, key, setting.value);
        exp.settings[key] = setting;
    }
}

namespace {
// The strategy a grid point names, or its experiment (null: the default one, or none found).
const PluginDescriptor* strategy_of(const Experiment& exp, const GridPoint& point, const DescriptorLookup& find) {
    for (const auto& [key, value] : point.assignments)
        if (key == "strategy.name" && value.type() == ValueType::String)
            return find(PluginKind::Strategy, value.as_string());
    const auto it = exp.settings.find("strategy.name");
    if (it == exp.settings.end() || it->second.value.type() != ValueType::String) return nullptr;
    return find(PluginKind::Strategy, it->second.value.as_string());
}
}  // namespace

Experiment apply_grid_point(const Experiment& exp, const GridPoint& point, const DescriptorLookup& find) {
    Experiment out = exp;
    out.grid.clear();
    auto where_of = [&](const std::string& key) {
        for (const auto& axis : exp.grid) {
            if (std::find(axis.keys.begin(), axis.keys.end(), key) != axis.keys.end()) return axis.where;
            for (const auto& set : axis.settings)
                for (const auto& kv : set)
                    if (kv.first == key) return axis.where;
        }
        return SourceLoc{exp.path, 0, 0};
    };
    // Plugin names first: a section switching plugin keeps only the keys the new one accepts.
    for (const auto& [key, value] : point.assignments) {
        const auto dot = key.find('.');
        if (dot == std::string::npos || key.compare(dot, std::string::npos, ".name") != 0) continue;
        const std::string section = key.substr(0, dot);
        auto old = out.settings.find(key);
        if (old != out.settings.end() && old->second.value == value) continue;
        std::optional<PluginKind> kind;
        for (const auto& s : plugin_sections({strategy_of(out, point, find)}))
            if (section == s.section) kind = s.kind;
        const PluginDescriptor* d =
            kind && value.type() == ValueType::String ? find(*kind, value.as_string()) : nullptr;
        for (auto it = out.settings.begin(); it != out.settings.end();) {
            const bool in_section = it->first.rfind(section + ".", 0) == 0 && it->first != key;
            bool accepted = false;
            if (in_section && d)
                for (const auto& k : d->schema) accepted |= section + "." + k.name == it->first;
            it = in_section && !accepted ? out.settings.erase(it) : std::next(it);
        }
        out.settings[key] = Setting{value, where_of(key)};
    }
    for (const auto& [key, value] : point.assignments) out.settings[key] = Setting{value, where_of(key)};
    return out;
}

Value parse_value(const std::string& text, const std::string& origin) {
    try {
        check_toml_text(text, origin);
        toml::table t = toml::parse("v = " + text);
        return to_value(*t.get("v"), origin, origin);
    } catch (const toml::parse_error& e) {
        throw Error(origin + ": cannot read '" + text + "' as a TOML value: " + std::string(e.description()),
                    "numbers as 3e-4, booleans as true/false, lists as [1, 2], strings as \"text\"");
    }
}

void apply_override(Experiment& exp, const std::string& assignment) {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0)
        throw Error("--set " + assignment + ": expected section.key=value", "for example --set optimizer.lr=3e-4");
    // "train.steps = 3" (spaces as in TOML) names train.steps.
    std::string key = assignment.substr(0, eq);
    key.erase(key.find_last_not_of(" \t") + 1);
    key.erase(0, key.find_first_not_of(" \t"));
    const std::string text = assignment.substr(eq + 1);
    Value v;
    try {
        v = parse_value(text, "--set " + key);
    } catch (const Error&) {
        v = Value(text);  // a bare word: take it as a string (--set data.path=/tmp/corpus)
    }
    // --set model.name=X then --set model.name=gpt: the file's [model] keys come back with gpt.
    auto dropped = forget_old_plugin_keys(exp.settings, key, v);
    const std::string section = key.substr(0, key.find('.'));
    if (auto aside = exp.set_aside.find(section); aside != exp.set_aside.end() && aside->second.first == v) {
        for (auto& [k, setting] : aside->second.second) exp.settings.insert_or_assign(k, setting);
        exp.set_aside.erase(aside);
    } else if (!dropped.second.empty() && !exp.set_aside.count(section)) {
        exp.set_aside[section] = std::move(dropped);
    }
    exp.settings[key] = Setting{v, SourceLoc{"--set " + assignment, 0, 0}};
    exp.overrides.push_back(assignment);
}

const std::vector<PluginSection>& core_plugin_sections() {
    using Need = PluginSection::Need;
    static const std::vector<PluginSection> sections = {
        {"model", PluginKind::Model, Need::Required},          {"data", PluginKind::Dataset, Need::Required},
        {"optimizer", PluginKind::Optimizer, Need::Defaulted}, {"strategy", PluginKind::Strategy, Need::Defaulted},
        {"comm", PluginKind::Comm, Need::Defaulted},
    };
    return sections;
}

std::vector<PluginSection> plugin_sections(const std::vector<const PluginDescriptor*>& strategies) {
    auto sections = core_plugin_sections();
    for (const auto* strategy : strategies) {
        const auto it =
            strategy ? strategy->extras.find("sections") : std::map<std::string, std::string>::const_iterator{};
        if (!strategy || it == strategy->extras.end()) continue;
        std::stringstream list(it->second);
        std::string item;
        while (std::getline(list, item, ',')) {
            const auto eq = item.find('=');
            auto trim = [](std::string t) {
                t.erase(0, t.find_first_not_of(" \t"));
                t.erase(t.find_last_not_of(" \t") + 1);
                return t;
            };
            const std::string name = trim(item.substr(0, eq)),
                              kind = eq == std::string::npos ? "" : trim(item.substr(eq + 1));
            std::optional<PluginKind> k;
            for (auto candidate : {PluginKind::Model, PluginKind::Optimizer, PluginKind::Strategy, PluginKind::Comm,
                                   PluginKind::Dataset})
                if (kind == to_string(candidate)) k = candidate;
            if (name.empty() || !k)
                throw Error("strategy plugin '" + strategy->name + "' declares the section '" + item + "'",
                            "extras[\"sections\"] lists NAME=KIND pairs, KIND one of model, optimizer, strategy, comm, "
                            "dataset");
            bool known = false;
            for (const auto& s : sections) {
                if (s.section != name) continue;
                known = true;
                if (s.kind != *k)
                    throw Error("strategy plugin '" + strategy->name + "' declares [" + name + "] as a " + kind +
                                    " section, which is a " + to_string(s.kind) + " section already",
                                "choose another section name");
            }
            if (!known) sections.push_back({name, *k, PluginSection::Need::Optional});
        }
    }
    return sections;
}

std::string default_plugin(PluginKind kind, const DescriptorLookup& find, const NameLookup& names) {
    for (const auto& name : names(kind))
        if (const auto* d = find(kind, name); d && d->extras.count("default")) return name;
    return "";
}

const std::map<std::string, ConfigSchema>& host_schemas() {
    static const std::map<std::string, ConfigSchema> schemas = {
        {"train",
         {
             ConfigKey("steps", 1000, "strategy steps to run (0: run until train.tokens)").at_least(0),
             ConfigKey("tokens", 0, "token budget of the whole job, all ranks together (0: run train.steps steps)")
                 .at_least(0),
             ConfigKey("batch_size", 16,
                       "sequences per batch of one data-parallel rank (the global batch: times the data shards)")
                 .at_least(1),
             ConfigKey("seq_len", 128, "tokens per sequence").at_least(1),
             ConfigKey("lr_schedule", "cosine", "learning-rate factor over tokens: constant, cosine or linear")
                 .one_of({"constant", "cosine", "linear"}),
             ConfigKey("warmup_tokens", 0,
                       "tokens of the whole job over which the rate warms up linearly from 0 to the peak")
                 .at_least(0),
             ConfigKey("min_lr_ratio", 0.1, "final learning rate as a fraction of the peak (cosine, linear)")
                 .between(0, 1),
             ConfigKey("grad_clip", 1.0, "clip the global gradient norm to this (0: off)").at_least(0),
             ConfigKey("eval_every", 100, "evaluate every this many steps (0: only at the end)").at_least(0),
             ConfigKey("eval_batches", 10,
                       "validation batches per evaluation, the same windows for every run on the data (0: the whole "
                       "validation split, in order)")
                 .at_least(0),
             ConfigKey("log_every", 10, "print and record throughput every this many steps").at_least(1),
             ConfigKey("stop_at_loss", 0.0,
                       "end the run at the first log point after an evaluation at or below this loss (0: run the "
                       "whole budget; tokens_to and time_to need nothing after it)")
                 .at_least(0),
             {"seed", 0, "seed of initialization and data order"},
             {"device", "cpu",
              "cpu, cuda, cuda:N, or auto (cuda when available); with several local ranks, cuda means cuda:LOCAL_RANK"},
             ConfigKey("precision", "fp32",
                       "fp32, or bf16 (autocast: matrix products in bfloat16, parameters, gradients and optimizer "
                       "state in float32)")
                 .one_of({"fp32", "bf16"}),
             ConfigKey("threads", 0, "compute threads (0: all cores)").at_least(0),
             ConfigKey("peak_flops", 0.0, "peak FLOP/s for MFU (0: measured on CPU, datasheet on known GPUs)")
                 .at_least(0),
             {"init_from", "",
              "start from these weights instead of a fresh initialization: run:N (a run that kept its final "
              "weights, in this database) or a safetensors file (relative to the experiment's folder)"},
         }},
        {"results",
         {
             {"db", "results/plexus.db", "SQLite database the run is recorded in"},
             ConfigKey("progress", "auto", "auto (a bar on a terminal), bar, lines or none")
                 .one_of({"auto", "bar", "lines", "none"}),
             ConfigKey("target_loss", 0.0,
                       "the eval loss this workload counts as reached: time_to and tokens_to use it when the "
                       "leaderboard is given no --target (0: none)")
                 .at_least(0),
         }},
        {"checkpoint",
         {
             ConfigKey("every_steps", 0, "write a checkpoint every this many steps (0: never by steps)").at_least(0),
             ConfigKey("every_minutes", 0.0,
                       "and at the first log point after this many minutes since the last (0: never by time)")
                 .at_least(0),
             {"dir", "",
              "folder of the checkpoints (\"\": checkpoints/DBNAME/ next to the results database); run N's are in "
              "runN/"},
             ConfigKey("keep", 2, "complete checkpoints kept per run (older ones are deleted)").at_least(1),
             {"keep_final", false,
              "a finished run keeps one checkpoint, at its last step (for `plexus export` and train.init_from), "
              "instead of deleting them all"},
         }},
        {"limits",
         {
             ConfigKey("wall_minutes", 0.0,
                       "plexus sweep: stop a run that takes longer than this, and mark it failed (0: no limit)")
                 .at_least(0),
             ConfigKey("memory_gb", 0.0,
                       "plexus sweep: stop a run whose processes hold more than this resident memory (0: no limit)")
                 .at_least(0),
         }},
        {"launch",
         {
             ConfigKey("mode", "single",
                       "single (one process), local (start `ranks` workers here), env (join torchrun/srun/mpirun), sim "
                       "(`ranks` simulated ranks in this process)")
                 .one_of({"single", "local", "env", "sim"}),
             ConfigKey("ranks", 2, "number of ranks for mode = local or sim").at_least(1),
             ConfigKey("timeout", 300.0, "seconds to wait for the rendezvous and for any collective before failing")
                 .at_least(1),
             ConfigKey("backend", "auto",
                       "c10d back end of mode = local or env: auto (nccl for CUDA devices in a CUDA build, else gloo), "
                       "gloo or nccl")
                 .one_of({"auto", "gloo", "nccl"}),
         }},
        {"sim",
         {
             ConfigKey("numerics", "real",
                       "real (train for real) or meta (shapes and time only: plan large models and clusters)")
                 .one_of({"real", "meta"}),
             ConfigKey("device", "measured", "compute profile of a rank: measured (this CPU), h100, h200, a100, custom")
                 .one_of({"measured", "h100", "h200", "a100", "custom"}),
             ConfigKey("efficiency", 0.0,
                       "fraction of the device peak a step reaches (0: profile default, 0.5 measured, 0.4 GPUs)")
                 .between(0, 1),
             ConfigKey("device_flops", 0.0, "peak FLOP/s of device = \"custom\"").at_least(0),
             ConfigKey("cores", 0.0, "device = \"measured\": cores of this machine one rank has (0: all)").at_least(0),
             ConfigKey("topology", "fully_connected", "fully_connected, ring, torus2d, two_level or custom")
                 .one_of({"fully_connected", "ring", "torus2d", "two_level", "custom"}),
             {"latency_us", 10.0, "link latency in microseconds (two_level: between nodes)"},
             {"bandwidth_gbs", 10.0, "link bandwidth in GB/s, each direction (two_level: between nodes)"},
             ConfigKey("gpus_per_node", 8, "two_level: ranks per node").at_least(1),
             {"intra_latency_us", 2.0, "two_level: latency inside a node, microseconds"},
             {"intra_bandwidth_gbs", 100.0, "two_level: bandwidth inside a node, GB/s"},
             ConfigKey("torus_rows", 0, "torus2d: rows (0: the squarest torus)").at_least(0),
             {"edges", Value::list({}), "custom: undirected edges [[a, b], ...]"},
             {"links", Value::list({}),
              "heterogeneous links [[a, b, latency_us, bandwidth_gbs], ...] (replace or add)"},
             ConfigKey("algorithm", "auto",
                       "all-reduce algorithm: ring, tree, hierarchical (two_level) or auto (fastest)")
                 .one_of({"ring", "tree", "hierarchical", "auto"}),
             {"slow_ranks", Value::list({}), "straggler ranks, their compute slowed by slow_factor"},
             ConfigKey("slow_fraction", 0.0, "or this fraction of the ranks, picked at random with the run's seed")
                 .between(0, 1),
             ConfigKey("slow_factor", 2.0, "compute time factor of a straggler").at_least(0),
             ConfigKey("jitter", 0.0, "sigma of a seeded log-normal factor on every compute charge").at_least(0),
             {"fail_ranks", Value::list({}), "[[rank, time_s], ...]: the rank fails at that simulated time"},
             {"fail_links", Value::list({}), "[[a, b, time_s], ...]: the link goes down at that simulated time"},
         }},
    };
    return schemas;
}

const ConfigSchema& top_level_schema() {
    static const ConfigSchema keys = {
        {"name", "", "a short name for the run (defaults to the file name)"},
        {"description", "", "free text recorded with the run"},
        {"plugin_path", Value::list({}), "extra folders to search for plugins"},
        {"faults", Value::list({}),
         "written as [[faults]] tables: kill, slow, drop_link, corrupt (see docs/guide/reliability.md)"},
    };
    return keys;
}

ResolvedConfig resolve(const Experiment& exp, const DescriptorLookup& find, const NameLookup& names,
                       const RefusalLookup& refusal) {
    ResolvedConfig out;
    std::vector<std::string> errors;
    std::set<std::string> used;  // dotted keys consumed by some schema

    // Validates the settings under `section` against `schema`, fills defaults.
    auto check_section = [&](const std::string& section, const ConfigSchema& schema, const std::string& owner) {
        std::map<std::string, Value> values;
        std::vector<std::string> known;
        for (const auto& k : schema) known.push_back(k.name);
        const std::string prefix = section.empty() ? "" : section + ".";
        for (const auto& [key, setting] : exp.settings) {
            if (!section.empty() && key.rfind(prefix, 0) != 0) continue;
            const std::string sub = key.substr(prefix.size());
            if (section.empty() && (sub.find('.') != std::string::npos)) continue;
            if (!section.empty() && sub == "name") continue;
            const ConfigKey* spec = nullptr;
            for (const auto& k : schema)
                if (k.name == sub) spec = &k;
            if (!spec) {
                if (section.empty()) continue;  // decided below, with the sections
                std::string hint = did_you_mean(sub, known);
                errors.push_back(setting.where.str() + ": unknown key '" + shown(key) + "' for " + owner +
                                 (hint.empty() ? "" : "; " + hint) + " (known: " + join(known, ", ") + ")");
                used.insert(key);
                continue;
            }
            used.insert(key);
            if (!finite_numbers(setting.value)) {
                errors.push_back(setting.where.str() + ": " + key + " = " + setting.value.to_text() +
                                 ": a setting's numbers must be finite (nan and inf are refused everywhere)");
                continue;
            }
            if (!type_fits(spec->type(), setting.value.type())) {
                errors.push_back(setting.where.str() + ": '" + key + "' must be " +
                                 (spec->type() == ValueType::Int ? "an " : "a ") + to_string(spec->type()) + ", got " +
                                 to_string(setting.value.type()) + " " + setting.value.to_text() +
                                 " (default: " + spec->default_value.to_text() + ")");
                continue;
            }
            // A list's elements against the default's first (ints stand for floats), where it has one.
            if (spec->type() == ValueType::List && !spec->default_value.as_list().empty()) {
                const auto want = spec->default_value.as_list().front().type();
                Value::List items;
                std::string bad;
                for (const auto& item : setting.value.as_list()) {
                    if (!type_fits(want, item.type())) bad = item.to_text();
                    items.push_back(coerce(want, item));
                }
                if (!bad.empty()) {
                    errors.push_back(setting.where.str() + ": '" + key + "' holds " + bad + ", not " +
                                     (want == ValueType::Int ? "an " : "a ") + to_string(want) +
                                     " (default: " + spec->default_value.to_text() + ")");
                    continue;
                }
                values[sub] = Value(std::move(items));
                continue;
            }
            values[sub] = coerce(spec->type(), setting.value);
            const std::string why = spec->refusal(key, values[sub]);
            if (!why.empty()) errors.push_back(setting.where.str() + ": " + why);
        }
        for (const auto& k : schema) {
            if (!values.count(k.name)) values[k.name] = k.default_value;
            out.values[prefix + k.name] = values[k.name];
        }
        out.sections[section.empty() ? std::string("top") : section] = Config(section, values);
    };

    check_section("", top_level_schema(), "the top level");
    for (const auto& k : top_level_schema()) used.insert(k.name);
    // The name is a folder (a sweep's logs) and a column in tables: a plain word.
    if (auto it = exp.settings.find("name"); it != exp.settings.end() && it->second.value.type() == ValueType::String)
        if (const auto& name = it->second.value.as_string(); !is_plain_name(name))
            errors.push_back(it->second.where.str() + ": name '" + printable(name) +
                             "' must be 1 to 100 letters, digits, spaces, '.', '_', '+' or '-', starting with a "
                             "letter or digit (it names the sweep's log folder)");
    for (const auto& [section, schema] : host_schemas()) check_section(section, schema, "[" + section + "]");
    // The database is a file: SQLite takes "" and ":memory:" for a database that vanishes at
    // exit, and "file:..." for a URI; the run would be recorded nowhere `plexus runs` can read.
    if (auto db = out.values.find("results.db"); db != out.values.end() && db->second.type() == ValueType::String) {
        const std::string& path = db->second.as_string();
        if (path.empty() || path == ":memory:" || path.rfind("file:", 0) == 0) {
            auto it = exp.settings.find("results.db");
            errors.push_back((it == exp.settings.end() ? std::string("results.db") : it->second.where.str()) +
                             ": results.db = '" + printable(path) +
                             "' is not a database file: nothing would be recorded where `plexus runs` reads");
        }
    }

    // Each plugin section: its plugin (named, or the default of its kind) and its keys.
    auto resolve_plugin_section = [&](const PluginSection& ps) {
        const std::string section = ps.section;
        const std::string name_key = section + ".name";
        auto it = exp.settings.find(name_key);
        std::string name;
        if (it != exp.settings.end()) {
            used.insert(name_key);
            if (it->second.value.type() != ValueType::String) {
                errors.push_back(it->second.where.str() + ": '" + name_key + "' must be a plugin name (a string)");
                return;
            }
            name = it->second.value.as_string();
        } else if (const std::string fallback =
                       ps.need == PluginSection::Need::Defaulted ? default_plugin(ps.kind, find, names) : "";
                   !fallback.empty()) {
            name = fallback;
        } else {
            bool has_keys = false;
            for (const auto& kv : exp.settings) has_keys |= kv.first.rfind(section + ".", 0) == 0;
            if (ps.need != PluginSection::Need::Optional || has_keys)
                errors.push_back(exp.path + ": [" + section + "] needs name = \"<" + to_string(ps.kind) +
                                 " plugin>\"; available: " + join(names(ps.kind), ", "));
            return;
        }
        const PluginDescriptor* d = find(ps.kind, name);
        if (!d) {
            const std::string where = it != exp.settings.end() ? it->second.where.str() : exp.path;
            const auto available = names(ps.kind);
            std::string hint = did_you_mean(name, available);
            if (const std::string why = refusal ? refusal(ps.kind, name) : ""; !why.empty()) hint = why;
            errors.push_back(where + ": no " + std::string(to_string(ps.kind)) + " plugin named '" + name + "'" +
                             (hint.empty() ? "" : "; " + hint) +
                             " (available: " + (available.empty() ? std::string("none found") : join(available, ", ")) +
                             "; `plexus plugins` lists them and why any was refused)");
            for (const auto& kv : exp.settings)
                if (kv.first.rfind(section + ".", 0) == 0) used.insert(kv.first);
            return;
        }
        out.plugins[section] = d;
        out.values[name_key] = Value(name);
        check_section(section, d->schema, std::string(to_string(ps.kind)) + " plugin '" + name + "'");
    };
    for (const auto& ps : core_plugin_sections()) resolve_plugin_section(ps);
    // Then the sections strategies declare (a two-level strategy's [outer_optimizer]).
    std::vector<PluginSection> all_sections = core_plugin_sections();
    try {
        std::vector<const PluginDescriptor*> strategies;
        for (const auto& name : names(PluginKind::Strategy)) strategies.push_back(find(PluginKind::Strategy, name));
        all_sections = plugin_sections(strategies);
    } catch (const Error& e) { errors.push_back(e.what()); }
    for (size_t i = core_plugin_sections().size(); i < all_sections.size(); ++i)
        resolve_plugin_section(all_sections[i]);

    // Whatever no schema claimed: unknown sections or top-level keys.
    std::vector<std::string> sections;
    for (const auto& [s, _] : host_schemas()) sections.push_back(s);
    for (const auto& ps : all_sections) sections.push_back(ps.section);
    std::vector<std::string> top_keys;
    for (const auto& k : top_level_schema()) top_keys.push_back(k.name);
    for (const auto& [key, setting] : exp.settings) {
        if (used.count(key)) continue;
        const auto dot = key.find('.');
        if (dot == std::string::npos) {
            std::string hint = did_you_mean(key, top_keys);
            errors.push_back(setting.where.str() + ": unknown top-level key '" + shown(key) + "'" +
                             (hint.empty() ? "" : "; " + hint) + " (sections: " + join(sections, ", ") + ")");
        } else {
            const std::string section = key.substr(0, dot);
            std::string hint = did_you_mean(section, sections);
            errors.push_back(setting.where.str() + ": unknown section [" + shown(section) + "] (key '" + shown(key) +
                             "')" + (hint.empty() ? "" : "; " + hint) + " (sections: " + join(sections, ", ") + ")");
        }
    }

    if (!errors.empty()) {
        std::string msg = errors.size() == 1 ? errors[0]
                                             : std::to_string(errors.size()) + " problems in the experiment:\n  " +
                                                   join(errors, "\n  ");
        throw Error(msg, "`plexus plugins NAME` lists every key a plugin accepts, with its default");
    }

    out.hash = config_hash(out);
    out.host = read_host_settings(out.values);
    return out;
}

namespace {

// A plugin key listed in its descriptor's extras "config.added_later" (names separated by ';')
// was added after runs were recorded: at its default it leaves the hash alone, so that those runs'
// sweeps still resume.
bool added_later_at_default(const ResolvedConfig& cfg, const std::string& key, const Value& v) {
    const auto dot = key.find('.');
    if (dot == std::string::npos) return false;
    const auto plugin = cfg.plugins.find(key.substr(0, dot));
    if (plugin == cfg.plugins.end() || !plugin->second) return false;
    const auto later = plugin->second->extras.find("config.added_later");
    if (later == plugin->second->extras.end()) return false;
    const auto name = key.substr(dot + 1);
    const auto listed = split(later->second, ';');
    if (std::find(listed.begin(), listed.end(), name) == listed.end()) return false;
    for (const auto& k : plugin->second->schema)
        if (k.name == name) return k.default_value.to_text() == v.to_text();
    return false;
}

}  // namespace

std::string config_hash(const ResolvedConfig& out) {
    // The hash covers what changes the training, not where results go or what the run is called.
    std::string canonical;
    for (const auto& [k, v] : out.values) {
        // Where results and checkpoints go, how many cores a run gets and its limits are not what it trains.
        if (k == "name" || k == "description" || k.rfind("results.", 0) == 0 || k == "plugin_path" ||
            k == "train.threads" || k == "launch.backend" || k.rfind("checkpoint.", 0) == 0 ||
            k.rfind("limits.", 0) == 0)
            continue;
        // Keys added after runs were recorded leave the hash alone at their default, so that
        // a sweep recorded before them still resumes.
        if (k == "train.precision" && v.type() == ValueType::String && v.as_string() == "fp32") continue;
        if (k == "train.init_from" && v.type() == ValueType::String && v.as_string().empty()) continue;
        if (k == "faults" && v.type() == ValueType::List && v.as_list().empty()) continue;
        if (added_later_at_default(out, k, v)) continue;
        canonical += k + "=" + v.to_text() + "\n";
    }
    return hex64(fnv1a(canonical));
}

std::string ResolvedConfig::to_json() const {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, v] : values) {
        out += (first ? "" : ", ") + ("\"" + json_escape(k) + "\": " + to_json_value(v));
        first = false;
    }
    return out + "}";
}

}  // namespace plexus::host
