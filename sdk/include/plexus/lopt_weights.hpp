// plexus/lopt_weights.hpp: the weights of the small_fc_lopt learned optimizer (optimizers/lopt)
// and their file format, shared by the plugin, which reads them, and `plexus meta-train`, which
// trains and writes them.
//
// Weights file (text, whitespace-separated numbers; `#` starts a comment):
//   plexus-lopt 1
//   decay_offsets <7: momentum x3, rms, adafactor x3>
//   w0 <32 x 39, row-major>  b0 <32>  w1 <32 x 32>  b1 <32>  w2 <2 x 32>  b2 <2>
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "plexus/error.hpp"

namespace plexus {

namespace lopt {
constexpr int kFeatures = 28, kTimeFeatures = 11, kInputs = kFeatures + kTimeFeatures, kHidden = 32;
}  // namespace lopt

// The meta-parameters: the MLP and the decay offsets.
struct LoptWeights {
    using Layout = std::vector<std::pair<std::string, std::vector<int64_t>>>;
    torch::Tensor decay_offsets, w0, b0, w1, b1, w2, b2;

    static Layout layout() {
        using namespace lopt;
        return {{"decay_offsets", {7}}, {"w0", {kHidden, kInputs}}, {"b0", {kHidden}}, {"w1", {kHidden, kHidden}},
                {"b1", {kHidden}},      {"w2", {2, kHidden}},       {"b2", {2}}};
    }
    std::vector<torch::Tensor*> tensors() { return {&decay_offsets, &w0, &b0, &w1, &b1, &w2, &b2}; }
    std::vector<const torch::Tensor*> tensors() const { return {&decay_offsets, &w0, &b0, &w1, &b1, &w2, &b2}; }

    // All the numbers in file order, as one float64 vector (what meta-training perturbs).
    torch::Tensor flat() const {
        std::vector<torch::Tensor> parts;
        for (const auto* t : tensors()) parts.push_back(t->reshape({-1}));
        return torch::cat(parts);
    }
    static LoptWeights from_flat(const torch::Tensor& flat) {
        LoptWeights w;
        auto tensors = w.tensors();
        const auto shapes = layout();
        int64_t at = 0;
        for (size_t i = 0; i < shapes.size(); ++i) {
            int64_t n = 1;
            for (auto d : shapes[i].second) n *= d;
            if (at + n > flat.numel())
                throw Error("lopt weights: a flat vector of " + std::to_string(flat.numel()) + " numbers is too short");
            *tensors[i] = flat.narrow(0, at, n).to(torch::kFloat64).reshape(shapes[i].second).clone();
            at += n;
        }
        if (at != flat.numel())
            throw Error("lopt weights: a flat vector of " + std::to_string(flat.numel()) + " numbers, expected " +
                        std::to_string(at));
        return w;
    }

    // Writes the file format below, through a temporary file renamed into place (a reader never
    // sees half a file; a crash leaves the previous one).
    void save(const std::string& path, const std::string& comment = "") const {
        const std::string tmp = path + ".tmp";
        {
            std::ofstream out(tmp);
            if (!out)
                throw Error("cannot write lopt weights to '" + tmp + "'",
                            "check that the folder exists and is writable");
            out << "plexus-lopt 1\n";
            if (!comment.empty()) out << "# " << comment << "\n";
            out.precision(17);
            const auto shapes = layout();
            const auto ts = tensors();
            for (size_t i = 0; i < shapes.size(); ++i) {
                out << shapes[i].first << "\n";
                const auto values = ts[i]->to(torch::kFloat64).contiguous();
                const double* v = values.data_ptr<double>();
                const int64_t row = shapes[i].second.back();
                for (int64_t k = 0; k < values.numel(); ++k) out << v[k] << ((k + 1) % row == 0 ? "\n" : " ");
            }
            if (!out) throw Error("writing lopt weights to '" + tmp + "' failed", "is the disk full?");
        }
        if (std::rename(tmp.c_str(), path.c_str()) != 0)
            throw Error("cannot move '" + tmp + "' to '" + path + "'", "check the folder's permissions");
    }

    // Weights N(0, 1 / fan_in), zero biases and offsets, from `seed`.
    static LoptWeights initial(uint64_t seed) {
        auto gen = at::detail::createCPUGenerator(seed);
        LoptWeights w;
        auto tensors = w.tensors();
        const auto shapes = layout();
        for (size_t i = 0; i < shapes.size(); ++i) {
            const auto& shape = shapes[i].second;
            *tensors[i] = shape.size() == 2
                              ? at::normal(0.0, 1.0 / std::sqrt(static_cast<double>(shape[1])), shape, gen)
                              : torch::zeros(shape);
            *tensors[i] = tensors[i]->to(torch::kFloat64);
        }
        return w;
    }

    static LoptWeights load(const std::string& path) {
        std::ifstream in(path);
        if (!in)
            throw Error("optimizer.weights: cannot open '" + path + "'",
                        "point it at a weights file of `plexus-lopt 1` format, or use \"init\" for untrained weights");
        std::string text, line;
        while (std::getline(in, line)) text += line.substr(0, line.find('#')) + "\n";
        std::istringstream words(text);
        std::string magic, version;
        words >> magic >> version;
        if (magic != "plexus-lopt" || version != "1")
            throw Error("optimizer.weights: '" + path + "' is not a plexus-lopt 1 file (it starts with '" + magic +
                            " " + version + "')",
                        "the file must begin with `plexus-lopt 1`");
        LoptWeights w;
        auto tensors = w.tensors();
        const auto shapes = layout();
        for (size_t i = 0; i < shapes.size(); ++i) {
            std::string name;
            words >> name;
            if (name != shapes[i].first)
                throw Error("optimizer.weights: '" + path + "': expected section '" + shapes[i].first + "', found '" +
                                name + "'",
                            "sections come in the order decay_offsets w0 b0 w1 b1 w2 b2");
            int64_t n = 1;
            for (auto d : shapes[i].second) n *= d;
            std::vector<double> values;
            double v;
            for (int64_t k = 0; k < n && words >> v; ++k) values.push_back(v);
            if (static_cast<int64_t>(values.size()) != n) {
                words.clear();
                throw Error("optimizer.weights: '" + path + "': section '" + name + "' has " +
                                std::to_string(values.size()) + " numbers, expected " + std::to_string(n),
                            "the MLP is 39 -> 32 -> 32 -> 2; weights are written row-major");
            }
            *tensors[i] = torch::tensor(values, torch::kFloat64).view(shapes[i].second);
        }
        std::string extra;
        if (words >> extra)
            throw Error("optimizer.weights: '" + path + "': unexpected '" + extra + "' after section b2",
                        "a weights file holds exactly the seven sections");
        return w;
    }
};

}  // namespace plexus
