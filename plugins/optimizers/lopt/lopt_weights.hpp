// lopt_weights.hpp: the weights of the small_fc_lopt learned optimizer and their file, a
// plexus/kit/weights_file.hpp file with this plugin's magic and sections:
//   plexus-lopt 1
//   decay_offsets <7: momentum x3, rms, adafactor x3>
//   w0 <32 x 39, row-major>  b0 <32>  w1 <32 x 32>  b1 <32>  w2 <2 x 32>  b2 <2>
// `plexus meta-train` trains them without knowing this layout: it reads the file the plugin
// exports (key `export`) and writes the same sections back.
#pragma once

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include <plexus/error.hpp>
#include <plexus/kit/weights_file.hpp>

namespace plexus {

namespace lopt {
constexpr int kFeatures = 28, kTimeFeatures = 11, kInputs = kFeatures + kTimeFeatures, kHidden = 32;
constexpr const char* kMagic = "plexus-lopt 1";
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
    torch::Tensor flat() const { return file().flat(); }

    // The weights as a file of this plugin's sections.
    WeightsFile file() const {
        WeightsFile f;
        f.magic = lopt::kMagic;
        const auto shapes = layout();
        const auto ts = tensors();
        for (size_t i = 0; i < shapes.size(); ++i) {
            const auto values = ts[i]->to(torch::kFloat64).contiguous();
            const double* v = values.data_ptr<double>();
            f.sections.push_back({shapes[i].first, std::vector<double>(v, v + values.numel())});
        }
        return f;
    }

    void save(const std::string& path, const std::string& comment = "") const {
        file().write(path, comment, static_cast<size_t>(lopt::kHidden));
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
        const std::string what = "optimizer.weights";
        const auto f = WeightsFile::read(path, what);
        std::vector<std::pair<std::string, int64_t>> counts;
        for (const auto& [name, shape] : layout()) {
            int64_t n = 1;
            for (auto d : shape) n *= d;
            counts.push_back({name, n});
        }
        f.expect(lopt::kMagic, counts, path, what);
        LoptWeights w;
        auto tensors = w.tensors();
        const auto shapes = layout();
        for (size_t i = 0; i < shapes.size(); ++i) *tensors[i] = f.tensor(shapes[i].first, shapes[i].second);
        return w;
    }
};

}  // namespace plexus
