#include "base/text.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <limits>
#include <sstream>

#include <c10/util/Exception.h>
#include <plexus/error.hpp>

namespace plexus::host {

size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

std::vector<std::string> closest(const std::string& word, const std::vector<std::string>& candidates,
                                 size_t max_results) {
    std::vector<std::pair<size_t, std::string>> scored;
    const size_t limit = std::max<size_t>(2, word.size() / 3);
    for (const auto& c : candidates) {
        size_t d = edit_distance(word, c);
        const bool prefix = !word.empty() && (c.rfind(word, 0) == 0 || word.rfind(c, 0) == 0);
        if (d <= limit || prefix) scored.emplace_back(prefix ? std::min(d, limit) : d, c);
    }
    std::stable_sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    std::vector<std::string> out;
    for (const auto& s : scored) {
        if (out.size() == max_results) break;
        if (std::find(out.begin(), out.end(), s.second) == out.end()) out.push_back(s.second);
    }
    return out;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates) {
    auto best = closest(word, candidates);
    if (best.empty()) return "";
    std::string s = "did you mean ";
    for (size_t i = 0; i < best.size(); ++i)
        s += (i == 0 ? "" : (i + 1 == best.size() ? " or " : ", ")) + ("'" + best[i] + "'");
    return s + "?";
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
    return out;
}

std::vector<std::string> split(const std::string& text, char sep) {
    std::vector<std::string> out;
    std::string item;
    for (char c : text) {
        if (c == sep) {
            if (!item.empty()) out.push_back(item);
            item.clear();
        } else {
            item += c;
        }
    }
    if (!item.empty()) out.push_back(item);
    return out;
}

std::string short_number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

std::string human_count(double n) {
    char buf[32];
    const double a = std::fabs(n);
    if (a >= 1e15)
        std::snprintf(buf, sizeof buf, "%.2fP", n / 1e15);
    else if (a >= 1e12)
        std::snprintf(buf, sizeof buf, "%.2fT", n / 1e12);
    else if (a >= 1e9)
        std::snprintf(buf, sizeof buf, "%.2fG", n / 1e9);
    else if (a >= 1e6)
        std::snprintf(buf, sizeof buf, "%.2fM", n / 1e6);
    else if (a >= 1e3)
        std::snprintf(buf, sizeof buf, "%.1fk", n / 1e3);
    else
        std::snprintf(buf, sizeof buf, "%.0f", n);
    return buf;
}

std::string human_bytes(double bytes) {
    char buf[32];
    if (bytes >= 1024.0 * 1024 * 1024)
        std::snprintf(buf, sizeof buf, "%.2f GiB", bytes / (1024.0 * 1024 * 1024));
    else if (bytes >= 1024.0 * 1024)
        std::snprintf(buf, sizeof buf, "%.0f MiB", bytes / (1024.0 * 1024));
    else if (bytes >= 1024.0)
        std::snprintf(buf, sizeof buf, "%.0f KiB", bytes / 1024.0);
    else
        std::snprintf(buf, sizeof buf, "%.0f B", bytes);
    return buf;
}

std::string human_duration(double s) {
    char buf[32];
    if (!std::isfinite(s) || s < 0) return "?";
    // Simulated steps of fast devices last microseconds: keep three digits there.
    if (s > 0 && s < 1e-3) {
        std::snprintf(buf, sizeof buf, "%.3gus", s * 1e6);
        return buf;
    }
    if (s > 0 && s < 1) {
        std::snprintf(buf, sizeof buf, "%.3gms", s * 1e3);
        return buf;
    }
    if (s < 60) {
        std::snprintf(buf, sizeof buf, "%.1fs", s);
        return buf;
    }
    const auto total = static_cast<long>(s + 0.5);
    if (total >= 3600)
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", total / 3600, (total / 60) % 60, total % 60);
    else
        std::snprintf(buf, sizeof buf, "%ld:%02ld", total / 60, total % 60);
    return buf;
}

uint64_t fnv1a(const std::string& text) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : text) {
        h ^= c;
        h *= 1099511628211ull;
    }
    return h;
}

std::string hex64(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}

std::string exact_double(double v) {
    std::ostringstream out;
    out << std::setprecision(std::numeric_limits<double>::max_digits10) << v;
    return out.str();
}

std::string message_of(const std::exception& e) {
    if (const auto* torch_error = dynamic_cast<const c10::Error*>(&e)) return torch_error->what_without_backtrace();
    return e.what();
}

void print_error(const std::exception& e) {
    std::cerr << "error: " << message_of(e) << "\n";
    if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty())
        std::cerr << "hint: " << pe->hint() << "\n";
}

std::string error_text(const std::exception& e) {
    std::string s = message_of(e);
    if (auto* pe = dynamic_cast<const Error*>(&e); pe && !pe->hint().empty()) s += " (hint: " + pe->hint() + ")";
    return s;
}

std::string printable(const std::string& text) {
    std::string out;
    for (unsigned char c : text) {
        if (c < 0x20 || c == 0x7f) {
            char buf[5];
            std::snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

std::string shown(const std::string& text, size_t max) {
    if (text.size() <= max) return printable(text);
    return printable(text.substr(0, max)) + "... (" + std::to_string(text.size()) + " characters)";
}

bool is_plain_name(const std::string& name) {
    if (name.empty() || name.size() > 100 || !std::isalnum(static_cast<unsigned char>(name[0]))) return false;
    for (unsigned char c : name)
        if (!std::isalnum(c) && c != '.' && c != '_' && c != '+' && c != '-' && c != ' ') return false;
    return true;
}

}  // namespace plexus::host
