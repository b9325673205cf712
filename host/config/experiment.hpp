// Experiment files: TOML with `extends`, --set overrides, and validation against the schemas of
// the host's own sections and of the plugins each section names. Every setting remembers where
// it came from (file:line:column or the --set flag) so that errors can point at it.
#pragma once

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <plexus/config.hpp>
#include <plexus/error.hpp>
#include <plexus/plugin.hpp>

#include "config/host_settings.hpp"

namespace plexus::host {

struct SourceLoc {
    std::string file;  // file path, or "--set"
    long line = 0, column = 0;
    std::string str() const;  // "file:3:7", "file", or "--set"
};

struct Setting {
    Value value;
    SourceLoc where;
};

// One axis of a [grid]: a single key (cartesian), several keys that vary together (zipped),
// or a named axis ([grid.variant.NAME], [grid.workload.NAME], ...): named choices, each its own
// set of settings, recorded on the run as the setting AXIS = NAME.
struct GridAxis {
    std::vector<std::string> keys;           // a named axis: {its name}
    std::vector<std::vector<Value>> points;  // points[i][k]: the value of keys[k] at position i
    SourceLoc where;
    // Named choices: choice i is named names[i] and assigns settings[i] (keys differ between them).
    std::vector<std::string> names;
    std::vector<std::vector<std::pair<std::string, Value>>> settings;
    // [grid.NAME.CHOICE.tune]: choice i's own tuned lists, in place of [grid.tune]'s (empty: those).
    std::vector<std::vector<GridAxis>> tunes;
    bool named() const { return !names.empty(); }
    bool has_choice_tunes() const {
        return std::any_of(tunes.begin(), tunes.end(), [](const auto& t) { return !t.empty(); });
    }
};

// [grid.tune]: keys each group of the grid (every other axis but the seed) chooses on the tuning
// seeds, by the best mean of `metric`; the grid's own seeds then run the chosen values only, so
// the numbers reported never chose themselves (`plexus sweep` runs the two phases). A named
// axis's choice may tune keys of its own instead ([grid.variant.NAME.tune]: a learned optimizer's
// step multiplier where the others tune a rate); `keys` then holds every tuned key.
struct GridTune {
    std::vector<std::string> keys;
    std::vector<int64_t> seeds;
    std::string metric = "final_eval_loss";
    SourceLoc where;
    bool empty() const { return keys.empty(); }
};

// [[grid.skip]]: a point matching every entry (a named axis's choice, or a setting's value; one
// value or a list of them) is not part of the grid, for combinations that cannot run (a strategy
// that cannot survive a rank failure, say).
struct GridSkip {
    std::vector<std::pair<std::string, std::vector<Value>>> match;
    SourceLoc where;
};

// An experiment as written: every setting under its dotted key ("optimizer.lr"; top-level
// keys such as "name" have no dot), after `extends` and overrides are applied.
struct Experiment {
    std::string path;                // the file given on the command line
    std::string text;                // its text, recorded with the run
    std::vector<std::string> files;  // it and every file it extends, in load order
    std::map<std::string, Setting> settings;
    std::vector<std::string> overrides;  // the --set assignments, as given
    // Keys a --set of "<section>.name" dropped with the plugin they belonged to (by section),
    // restored if a later --set names that plugin again.
    std::map<std::string, std::pair<Value, std::map<std::string, Setting>>> set_aside;
    std::vector<GridAxis> grid;  // [grid]: empty for a single run
    GridTune tune;
    std::vector<GridSkip> skip;
    // [preset.NAME]: settings applied together on request (--preset NAME; --quick is "quick").
    std::map<std::string, std::map<std::string, Setting>> presets;
};

// One point of a grid: the settings it assigns, and a short label ("optimizer.lr=0.001 seed=1").
struct GridPoint {
    std::vector<std::pair<std::string, Value>> assignments;
    std::string label;
    std::vector<std::pair<std::string, std::string>> choices;  // named axes: (axis, choice), recorded as settings
    bool tuning = false;                                       // its seed is one of [grid.tune]'s
};

// The cartesian product of the axes, in a stable order (first axis slowest), less the points
// [[grid.skip]] leaves out; one empty point when there is no grid. [grid.tune]'s seeds come
// first on the seed axis.
std::vector<GridPoint> expand_grid(const Experiment& exp);

// Refuses (plexus::Error at origin:line:column) a non-ASCII character outside the strings and
// comments of TOML text (invalid TOML), with a clearer message than the parser's.
void check_toml_text(const std::string& text, const std::string& origin);

// Reads `path` and the files it extends. Throws ConfigError (a plexus::Error) naming the file,
// line and column of what is wrong.
Experiment load_experiment(const std::string& path);
// Applies the settings of [preset.NAME]; throws naming the presets the file has.
void apply_preset(Experiment& exp, const std::string& name);
// Applies "section.key=value" (value in TOML syntax; bare words are taken as strings).
void apply_override(Experiment& exp, const std::string& assignment);

// A plugin-backed section of the experiment and the kind of plugin it names.
struct PluginSection {
    enum class Need { Required, Defaulted, Optional };
    std::string section;
    PluginKind kind;
    Need need;  // Defaulted: without a name, the plugin of its kind that declares extras "default"
};
// The sections every experiment has: [model] and [data] (required), [optimizer], [strategy] and
// [comm] (defaulted). The host names no plugin: defaults come from the plugins themselves.
const std::vector<PluginSection>& core_plugin_sections();
// Those, and the optional sections that `strategies` declare in their descriptors' extras
// "sections", "NAME=KIND" comma-separated ("outer_optimizer=optimizer"). An experiment may hold
// a section any loaded strategy declares (a grid's variants switch strategies).
std::vector<PluginSection> plugin_sections(const std::vector<const PluginDescriptor*>& strategies);

// Host-owned sections ([train], [results], [launch]) and their schemas.
const std::map<std::string, ConfigSchema>& host_schemas();
// Keys allowed at the top level of an experiment.
const ConfigSchema& top_level_schema();

// Finds a plugin's descriptor by kind and name (nullptr if none).
using DescriptorLookup = std::function<const PluginDescriptor*(PluginKind, const std::string&)>;
// Names of the plugins of a kind, for suggestions.
using NameLookup = std::function<std::vector<std::string>(PluginKind)>;
// The plugin of `kind` whose descriptor declares extras "default", or "" if none does.
std::string default_plugin(PluginKind kind, const DescriptorLookup& find, const NameLookup& names);
// Why a plugin of that kind and name is missing when a library for it was found and refused
// (its ABI fingerprint, say); "" when none was.
using RefusalLookup = std::function<std::string(PluginKind, const std::string&)>;

// The experiment checked against every schema, with defaults filled in.
struct ResolvedConfig {
    std::map<std::string, Value> values;                     // every dotted key, defaults included
    HostSettings host;                                       // the host's sections, typed (from values)
    std::map<std::string, Config> sections;                  // per section, what its plugin or the host gets
    std::map<std::string, const PluginDescriptor*> plugins;  // section -> plugin it names
    std::string hash;                                        // stable hash of what affects training
    std::string to_json() const;
};

// The stable hash of what in `cfg.values` affects training (ResolvedConfig::hash).
std::string config_hash(const ResolvedConfig& cfg);

// Throws ConfigError listing every problem found (unknown keys with the nearest known key,
// wrong types, unknown plugins with close names), each with its location.
ResolvedConfig resolve(const Experiment& exp, const DescriptorLookup& find, const NameLookup& names,
                       const RefusalLookup& refusal = {});

// The experiment of one grid point: its assignments applied, grid removed. A point that names
// another plugin for a section keeps only the section's keys that plugin also accepts (so
// "optimizer.name" = ["adamw", "sgd"] keeps a shared lr but drops adamw's betas for sgd).
Experiment apply_grid_point(const Experiment& exp, const GridPoint& point, const DescriptorLookup& find);

// `s` escaped for a JSON string literal (without the quotes).
std::string json_escape(const std::string& s);

// Parses TOML `text` (for --set values and tests); throws ConfigError with `origin`.
Value parse_value(const std::string& text, const std::string& origin);

}  // namespace plexus::host
