// plexus/config.hpp: configuration values and the schema a plugin declares.
//
// Every plugin declares the keys it accepts (name, type, default, one line of documentation).
// The host validates the experiment TOML against that schema before anything runs: unknown keys
// are refused with the nearest known key, wrong types are refused with the file and line, and
// missing keys take their defaults. A plugin's factory then receives a Config holding exactly the
// keys of its schema, all present and of the declared type, so plugin code never parses.
//
//   plexus::ConfigSchema schema() {
//       return {{"lr", 3e-4, "peak learning rate"},
//               {"betas", plexus::Value::list({0.9, 0.95}), "Adam decay rates (beta1, beta2)"},
//               {"fused", false, "use the fused kernel when the LibTorch build has one"}};
//   }
//   ...
//   double lr = cfg.get_double("lr");
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "plexus/error.hpp"

namespace plexus {

enum class ValueType { Bool, Int, Float, String, List };

inline const char* to_string(ValueType t) {
    switch (t) {
        case ValueType::Bool: return "bool";
        case ValueType::Int: return "int";
        case ValueType::Float: return "float";
        case ValueType::String: return "string";
        case ValueType::List: return "list";
    }
    return "?";
}

// A configuration value: bool, 64-bit int, double, string, or a list of values.
class Value {
public:
    using List = std::vector<Value>;

    Value() : v_(std::string()) {}
    Value(bool b) : v_(b) {}
    Value(int i) : v_(static_cast<int64_t>(i)) {}
    Value(int64_t i) : v_(i) {}
    Value(double d) : v_(d) {}
    Value(const char* s) : v_(std::string(s)) {}
    Value(std::string s) : v_(std::move(s)) {}
    static Value list(std::initializer_list<Value> items) { return Value(List(items)); }
    explicit Value(List items) : v_(std::move(items)) {}

    ValueType type() const { return static_cast<ValueType>(v_.index()); }

    bool as_bool() const { return std::get<bool>(v_); }
    int64_t as_int() const { return std::get<int64_t>(v_); }
    // Ints are accepted where floats are expected ("lr = 1" means 1.0).
    double as_double() const {
        return type() == ValueType::Int ? static_cast<double>(std::get<int64_t>(v_)) : std::get<double>(v_);
    }
    const std::string& as_string() const { return std::get<std::string>(v_); }
    const List& as_list() const { return std::get<List>(v_); }

    // TOML-like text: true, 3, 0.001, "text", [1, 2].
    std::string to_text() const;

    bool operator==(const Value& o) const { return v_ == o.v_; }
    bool operator!=(const Value& o) const { return !(*this == o); }

private:
    std::variant<bool, int64_t, double, std::string, List> v_;
};

// One key a plugin accepts. The type is taken from the default value. A key may also say which
// values it takes, and the host refuses any other before the run exists, naming the file, line
// and key, as it refuses a wrong type:
//
//   {"schedule", "cosine", "learning-rate schedule"}  ->  ConfigKey(...).one_of({"constant", "cosine"})
//   {"beta", 0.9, "momentum"}                         ->  ConfigKey(...).between(0.0, 1.0)
//   {"micro_batches", 1, "per step"}                  ->  ConfigKey(...).at_least(1)
//
// A range applies to int and float keys (a float outside it, or not finite, is refused);
// choices to string keys.
struct ConfigKey {
    std::string name;
    Value default_value;
    std::string doc;
    std::vector<std::string> choices;  // empty: any string
    bool has_min = false, has_max = false;
    double min = 0, max = 0;
    ConfigKey(std::string n, Value d, std::string documentation)
        : name(std::move(n)), default_value(std::move(d)), doc(std::move(documentation)) {}
    ValueType type() const { return default_value.type(); }

    ConfigKey& one_of(std::vector<std::string> allowed) {
        choices = std::move(allowed);
        return *this;
    }
    ConfigKey& at_least(double lo) {
        has_min = true, min = lo;
        return *this;
    }
    ConfigKey& at_most(double hi) {
        has_max = true, max = hi;
        return *this;
    }
    ConfigKey& between(double lo, double hi) { return at_least(lo).at_most(hi); }

    // Why `v` (of this key's type) is not allowed: "" when it is. `key` names it in the message.
    std::string refusal(const std::string& key, const Value& v) const;
};

using ConfigSchema = std::vector<ConfigKey>;

// The validated settings of one plugin (one TOML section), every schema key present.
class Config {
public:
    Config() = default;
    Config(std::string section, std::map<std::string, Value> values)
        : section_(std::move(section)), values_(std::move(values)) {}

    // The TOML section these settings came from, e.g. "optimizer"; used in error messages.
    const std::string& section() const { return section_; }
    bool has(const std::string& key) const { return values_.count(key) != 0; }
    const Value& get(const std::string& key) const {
        auto it = values_.find(key);
        if (it == values_.end())
            throw Error("config key '" + section_ + "." + key + "' is not in the plugin's schema",
                        "declare it in the plugin's schema() so the host validates and fills it");
        return it->second;
    }
    bool get_bool(const std::string& key) const { return get(key).as_bool(); }
    int64_t get_int(const std::string& key) const { return get(key).as_int(); }
    double get_double(const std::string& key) const { return get(key).as_double(); }
    const std::string& get_string(const std::string& key) const { return get(key).as_string(); }
    // A list of numbers (ints accepted) or of strings. An element of another type is a
    // plexus::Error naming the key (the host checks elements only against a non-empty default).
    std::vector<double> get_doubles(const std::string& key) const {
        std::vector<double> out;
        for (const auto& v : get(key).as_list()) {
            require(v.type() == ValueType::Float || v.type() == ValueType::Int, key,
                    "holds " + v.to_text() + ", which is not a number");
            out.push_back(v.as_double());
        }
        return out;
    }
    std::vector<std::string> get_strings(const std::string& key) const {
        std::vector<std::string> out;
        for (const auto& v : get(key).as_list()) {
            require(v.type() == ValueType::String, key, "holds " + v.to_text() + ", which is not a string");
            out.push_back(v.as_string());
        }
        return out;
    }
    const std::map<std::string, Value>& values() const { return values_; }

    // Throws a plexus::Error naming "<section>.<key>" unless `ok`.
    void require(bool ok, const std::string& key, const std::string& what) const {
        if (!ok)
            throw Error(section_ + "." + key + ": " + what,
                        "fix the value in the experiment TOML or with --set " + section_ + "." + key + "=...");
    }

private:
    std::string section_;
    std::map<std::string, Value> values_;
};

inline std::string ConfigKey::refusal(const std::string& key, const Value& v) const {
    if (v.type() == ValueType::String && !choices.empty()) {
        for (const auto& c : choices)
            if (c == v.as_string()) return "";
        std::string list;
        for (size_t i = 0; i < choices.size(); ++i)
            list += (i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ") + Value(choices[i]).to_text();
        return key + " = " + v.to_text() + " is unknown (use " + list + ")";
    }
    if ((v.type() != ValueType::Int && v.type() != ValueType::Float) || (!has_min && !has_max)) return "";
    const double x = v.as_double();
    auto bound = [](double b) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", b);
        return std::string(buf);
    };
    const bool low = has_min && !(x >= min), high = has_max && !(x <= max);
    if (!std::isfinite(x) && v.type() == ValueType::Float)
        return key + " = " + v.to_text() + " must be a finite number";
    if (!low && !high) return "";
    if (has_min && has_max) return key + " = " + v.to_text() + " must lie in [" + bound(min) + ", " + bound(max) + "]";
    return key + " = " + v.to_text() + (low ? " must be >= " + bound(min) : " must be <= " + bound(max));
}

inline std::string Value::to_text() const {
    switch (type()) {
        case ValueType::Bool: return as_bool() ? "true" : "false";
        case ValueType::Int: return std::to_string(as_int());
        case ValueType::Float: {
            // Shortest text that reads back as the same double (3e-4, not 0.00029999999999999997).
            char buf[64];
            for (int digits = 15; digits <= 17; ++digits) {
                std::snprintf(buf, sizeof buf, "%.*g", digits, as_double());
                if (std::strtod(buf, nullptr) == as_double()) break;
            }
            std::string s(buf);
            if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // keep it a float
            return s;
        }
        case ValueType::String: {
            std::string out = "\"";
            for (char c : as_string()) {
                if (c == '"' || c == '\\') out += '\\';
                out += c;
            }
            return out + "\"";
        }
        case ValueType::List: {
            std::string out = "[";
            const auto& items = as_list();
            for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i].to_text();
            return out + "]";
        }
    }
    return {};
}

}  // namespace plexus
