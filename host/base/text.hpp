// Small string helpers shared by the host: suggestions for typos, human-readable numbers.
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace plexus::host {

size_t edit_distance(const std::string& a, const std::string& b);
// The candidates closest to `word` (by edit distance, or sharing a prefix), best first;
// empty when nothing is close.
std::vector<std::string> closest(const std::string& word, const std::vector<std::string>& candidates,
                                 size_t max_results = 3);
// "did you mean 'a' or 'b'?" / "" when there is nothing close.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates);
std::string join(const std::vector<std::string>& items, const std::string& sep);
std::vector<std::string> split(const std::string& text, char sep);  // empty items dropped

std::string short_number(double v);     // printf's %g: 0.0005, 1e+09, 3
std::string human_count(double n);      // 41.2k, 3.1M
std::string human_bytes(double bytes);  // 412 MiB
std::string human_duration(double s);   // 1:02:03, 4:05, 12.3s
uint64_t fnv1a(const std::string& text);
// An exception's message without the C++ backtrace LibTorch appends to its own errors
// (c10::Error): what a user reads after "error:" and what a failed run records.
std::string message_of(const std::exception& e);
// "error: MESSAGE" and "hint: HINT" on stderr (a plexus::Error's hint where it has one), and the
// same as one line for a record ("MESSAGE (hint: HINT)").
void print_error(const std::exception& e);
std::string error_text(const std::exception& e);
std::string hex64(uint64_t v);
// `text` with control characters (terminal escapes, newlines) written as \xNN: safe to print.
std::string printable(const std::string& text);
// printable(text), cut to `max` characters with the length said ("abc... (1048576 characters)"):
// for echoing what a user typed into a message.
std::string shown(const std::string& text, size_t max = 60);
// 1 to 100 of [A-Za-z0-9._+-] and spaces, starting with a letter or digit: safe as a file name.
bool is_plain_name(const std::string& name);
std::string exact_double(double v);  // reads back to the same bits

}  // namespace plexus::host
