// plexus/kit/weights_file.hpp: learned weights as named sections of numbers in a text file.
//
// A plugin with weights learned outside the run (a learned optimizer's MLP) keeps them in a file
// of this shape, and `plexus meta-train` reads and writes it without knowing what the sections
// mean:
//
//   <magic> <version>          e.g. "plexus-lopt 1", chosen by the plugin
//   # a comment                (anywhere; '#' starts a comment to the end of the line)
//   <section name> <numbers...>
//   <section name> <numbers...>
//
// Numbers are whitespace-separated; a section ends where the next name begins. The plugin checks
// the sections it expects (names, order, counts) with expect(); meta-training treats the numbers
// as one float64 vector (flat(), with_flat()) and keeps the names and counts.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "plexus/error.hpp"

namespace plexus {

struct WeightsFile {
    std::string magic;  // the first line: "<name> <version>"
    std::vector<std::pair<std::string, std::vector<double>>> sections;

    // Reads `path`; `what` names the setting in errors ("optimizer.weights").
    static WeightsFile read(const std::string& path, const std::string& what) {
        std::ifstream in(path);
        if (!in)
            throw Error(what + ": cannot open '" + path + "'",
                        "check the path (relative paths: the experiment file's folder)");
        std::string text, line;
        while (std::getline(in, line)) text += line.substr(0, line.find('#')) + "\n";
        std::istringstream words(text);
        WeightsFile file;
        std::string name, version, word;
        words >> name >> version;
        file.magic = name + " " + version;
        while (words >> word) {
            char* end = nullptr;
            const double v = std::strtod(word.c_str(), &end);
            if (end != word.c_str() && *end == '\0') {
                if (file.sections.empty())
                    throw Error(what + ": '" + path + "': a number before the first section name",
                                "sections begin with a name");
                file.sections.back().second.push_back(v);
            } else {
                file.sections.push_back({word, {}});
            }
        }
        return file;
    }

    // Refuses a file whose magic or sections (names, order, counts) differ from `layout`.
    void expect(const std::string& want_magic, const std::vector<std::pair<std::string, int64_t>>& layout,
                const std::string& path, const std::string& what) const {
        if (magic != want_magic)
            throw Error(what + ": '" + path + "' is not a " + want_magic + " file (it starts with '" + magic + "')",
                        "the file must begin with `" + want_magic + "`");
        for (size_t i = 0; i < layout.size(); ++i) {
            if (i >= sections.size() || sections[i].first != layout[i].first)
                throw Error(what + ": '" + path + "': expected section '" + layout[i].first + "', found '" +
                                (i < sections.size() ? sections[i].first : std::string("the end of the file")) + "'",
                            "sections come in the order the plugin documents");
            if (static_cast<int64_t>(sections[i].second.size()) != layout[i].second)
                throw Error(what + ": '" + path + "': section '" + layout[i].first + "' has " +
                                std::to_string(sections[i].second.size()) + " numbers, expected " +
                                std::to_string(layout[i].second),
                            "the plugin's documentation gives each section's size");
        }
        if (sections.size() > layout.size())
            throw Error(what + ": '" + path + "': unexpected section '" + sections[layout.size()].first + "' after '" +
                            layout.back().first + "'",
                        "the file holds exactly the plugin's sections");
    }

    // Section `name` as a float64 tensor of `shape`.
    torch::Tensor tensor(const std::string& name, const std::vector<int64_t>& shape) const {
        for (const auto& [n, values] : sections)
            if (n == name) return torch::tensor(values, torch::kFloat64).view(shape).clone();
        throw Error("weights: no section '" + name + "'");
    }

    // Every number, in file order.
    torch::Tensor flat() const {
        std::vector<double> all;
        for (const auto& s : sections) all.insert(all.end(), s.second.begin(), s.second.end());
        return torch::tensor(all, torch::kFloat64);
    }

    // The same sections holding the numbers of `flat` (as many as flat() gave).
    WeightsFile with_flat(const torch::Tensor& flat) const {
        const auto values = flat.to(torch::kFloat64).contiguous();
        int64_t total = 0;
        for (const auto& s : sections) total += static_cast<int64_t>(s.second.size());
        if (values.numel() != total)
            throw Error("weights: a flat vector of " + std::to_string(values.numel()) + " numbers for " + magic +
                        " sections holding " + std::to_string(total));
        WeightsFile out = *this;
        const double* p = values.data_ptr<double>();
        for (auto& s : out.sections)
            for (auto& v : s.second) v = *p++;
        return out;
    }

    // Writes the file through a temporary one renamed into place (a reader never sees half a
    // file; a crash leaves the previous one). `row` numbers per line, for the eye only.
    void write(const std::string& path, const std::string& comment = "", size_t row = 8) const {
        const std::string tmp = path + ".tmp";
        {
            std::ofstream out(tmp);
            if (!out)
                throw Error("cannot write weights to '" + tmp + "'", "check that the folder exists and is writable");
            out << magic << "\n";
            if (!comment.empty()) out << "# " << comment << "\n";
            out.precision(17);
            for (const auto& [name, values] : sections) {
                out << name << "\n";
                for (size_t k = 0; k < values.size(); ++k)
                    out << values[k] << ((k + 1) % row == 0 || k + 1 == values.size() ? "\n" : " ");
            }
            if (!out) throw Error("writing weights to '" + tmp + "' failed", "is the disk full?");
        }
        if (std::rename(tmp.c_str(), path.c_str()) != 0)
            throw Error("cannot move '" + tmp + "' to '" + path + "'", "check the folder's permissions");
    }
};

}  // namespace plexus
