#include "tools/scaffold.hpp"

#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>

#include <plexus/error.hpp>

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

// The smallest correct plugin of each kind: it passes `plexus check` as written.
const std::map<std::string, std::string> kSources = {
    {"optimizer", R"PLUGIN(// @NAME@: an optimizer plugin (written by `plexus new optimizer @NAME@`): SGD with momentum.
// step() gets one gradient per slot and the schedule's factor; state() must hold all it keeps.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Plugin : public plexus::Optimizer {
public:
    Plugin(const plexus::Config& cfg, std::vector<plexus::ParamSlot> slots)
        : lr_(cfg.get_double("lr")), momentum_(cfg.get_double("momentum")), slots_(std::move(slots)) {
        for (const auto& s : slots_) velocity_.push_back(torch::zeros_like(s.param));
    }
    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        torch::NoGradGuard no_grad;
        for (size_t i = 0; i < slots_.size(); ++i) {
            velocity_[i].mul_(momentum_).add_(grads[i]);
            slots_[i].param.add_(velocity_[i], -lr_ * lr_scale);
        }
    }
    plexus::StateDict state() const override {
        plexus::StateDict out;
        for (size_t i = 0; i < velocity_.size(); ++i) out.emplace_back("velocity." + std::to_string(i), velocity_[i].clone());
        return out;
    }
    void load_state(const plexus::StateDict& state) override {
        for (size_t i = 0; i < velocity_.size(); ++i) velocity_[i].copy_(state.at(i).second);
    }

private:
    double lr_, momentum_;
    std::vector<plexus::ParamSlot> slots_;
    std::vector<torch::Tensor> velocity_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "@NAME@";
    d.kind = plexus::PluginKind::Optimizer;
    d.version = "0.1";
    d.summary = "SGD with momentum (a plexus new scaffold)";
    d.schema = {plexus::ConfigKey("lr", 0.1, "learning rate at the schedule's peak").at_least(0),
                plexus::ConfigKey("momentum", 0.9, "momentum factor").between(0, 1)};
    d.make_optimizer = [](const plexus::Config& cfg, plexus::RunContext&, std::vector<plexus::ParamSlot> slots)
        -> std::unique_ptr<plexus::Optimizer> { return std::make_unique<Plugin>(cfg, std::move(slots)); };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
)PLUGIN"},
    {"strategy", R"PLUGIN(// @NAME@: a strategy plugin (written by `plexus new strategy @NAME@`): one replica per rank,
// gradients averaged over all ranks after backward (data parallelism without overlap).
// step() owns one training step of this rank: what is computed, communicated and updated.
#include <plexus/plexus.hpp>
#include <torch/torch.h>
#include <plexus/kit/replica.hpp>

namespace {

class Plugin : public plexus::ReplicaStrategy {
public:
    Plugin(const plexus::Config& cfg, plexus::RunContext& ctx) : ReplicaStrategy(ctx), micro_(cfg.get_int("micro_batches")) {}

    plexus::StepOutput step(const plexus::StepInput& in) override {
        plexus::StepOutput out;
        auto loss = forward_backward(*in.train, micro_, out);
        auto grads = gradients();
        for (auto& g : grads) ctx_.transport().all_reduce(g, plexus::ReduceOp::Mean)->wait();
        update(in, out, grads);
        out.loss = plexus::value_of(loss);
        return out;
    }
    // The parameters and the optimizer's state are all it keeps (`plexus check` verifies it).
    bool exact_resume() const override { return true; }

private:
    int64_t micro_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "@NAME@";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "0.1";
    d.summary = "data parallel, gradients averaged after backward (a plexus new scaffold)";
    d.schema = {plexus::ConfigKey("micro_batches", 1, "micro-batches of train.batch_size per step").at_least(1)};
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Plugin>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
)PLUGIN"},
    {"comm", R"PLUGIN(// @NAME@: a communication scheme plugin (written by `plexus new comm @NAME@`): the plain mean.
// all_reduce_mean() replaces a tensor by its mean over the ranks and counts the bytes it sent.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Plugin : public plexus::CommScheme {
public:
    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport, int64_t) override {
        const int64_t bytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
        stats_.logical_bytes += plexus::ring_all_reduce_bytes(bytes, transport.world_size());
        const auto before = transport.stats().bytes_sent;
        auto work = transport.all_reduce(tensor, plexus::ReduceOp::Mean);
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        return work;
    }
    plexus::CommSchemeStats stats() const override { return stats_; }

private:
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "@NAME@";
    d.kind = plexus::PluginKind::Comm;
    d.version = "0.1";
    d.summary = "the plain mean over ranks (a plexus new scaffold)";
    d.make_comm = [](const plexus::Config&, plexus::RunContext&) -> std::unique_ptr<plexus::CommScheme> {
        return std::make_unique<Plugin>();
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
)PLUGIN"},
    {"dataset",
     R"PLUGIN(// @NAME@: a dataset plugin (written by `plexus new dataset @NAME@`): windows of a token sequence.
// Replace the sequence with your data. A stream serves one global batch of world x batch windows
// per position, drawn from the stream's seed, and this shard takes its rows of it.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Stream : public plexus::BatchStream {
public:
    Stream(torch::Tensor tokens, plexus::StreamSpec spec) : tokens_(std::move(tokens)), spec_(spec) {}
    plexus::Batch next() override {
        auto gen = at::detail::createCPUGenerator(spec_.seed * 1000003 + static_cast<uint64_t>(position_++));
        const int64_t global = spec_.batch_size * spec_.world_size, T = spec_.seq_len;
        const auto starts = torch::randint(tokens_.numel() - T - 1, {global}, gen, torch::kLong);
        std::vector<torch::Tensor> rows;
        for (int64_t i = spec_.rank * spec_.batch_size; i < (spec_.rank + 1) * spec_.batch_size; ++i)
            rows.push_back(tokens_.narrow(0, starts[i].item<int64_t>(), T + 1));
        const auto windows = torch::stack(rows);
        return {windows.narrow(1, 0, T).clone(), windows.narrow(1, 1, T).clone()};
    }
    int64_t position() const override { return position_; }
    void seek(int64_t position) override { position_ = position; }

private:
    torch::Tensor tokens_;
    plexus::StreamSpec spec_;
    int64_t position_ = 0;
};

class Plugin : public plexus::Dataset {
public:
    Plugin(int64_t vocab, int64_t length) : vocab_(vocab) {
        auto gen = at::detail::createCPUGenerator(7);
        train_ = torch::randint(vocab, {length}, gen, torch::kLong);
        val_ = torch::randint(vocab, {length / 10 + 64}, gen, torch::kLong);
    }
    int64_t vocab_size() const override { return vocab_; }
    std::unique_ptr<plexus::BatchStream> open(const plexus::StreamSpec& spec) override {
        return std::make_unique<Stream>(spec.split == plexus::Split::Train ? train_ : val_, spec);
    }
    std::string describe() const override { return "@NAME@: " + std::to_string(train_.numel()) + " tokens"; }

private:
    int64_t vocab_;
    torch::Tensor train_, val_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "@NAME@";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "0.1";
    d.summary = "windows of a random token sequence (a plexus new scaffold)";
    d.schema = {plexus::ConfigKey("vocab_size", 64, "tokens in the vocabulary").at_least(2),
                plexus::ConfigKey("tokens", 20000, "length of the training sequence").at_least(1000)};
    d.make_dataset = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::Dataset> {
        return std::make_unique<Plugin>(cfg.get_int("vocab_size"), cfg.get_int("tokens"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
)PLUGIN"},
    {"model", R"PLUGIN(// @NAME@: a model plugin (written by `plexus new model @NAME@`): token embedding, then a linear
// head. Blocks are what strategies place, shard and pipeline; register each with add_block().
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class Embed : public plexus::Block {
public:
    Embed(int64_t vocab, int64_t width, at::Generator& gen) {
        table = register_parameter("table", torch::randn({vocab, width}, gen, torch::kFloat32) * 0.02);
    }
    torch::Tensor forward(const torch::Tensor& tokens) override { return torch::embedding(table, tokens); }
    double flops_per_token(int64_t) const override { return 0; }  // a lookup
    torch::Tensor table;
};

class Head : public plexus::Block {
public:
    Head(int64_t width, int64_t vocab, at::Generator& gen) {
        weight = register_parameter("weight", torch::randn({vocab, width}, gen, torch::kFloat32) * 0.02);
    }
    torch::Tensor forward(const torch::Tensor& x) override { return torch::matmul(x, weight.t()); }
    double flops_per_token(int64_t) const override { return 6.0 * static_cast<double>(weight.numel()); }
    torch::Tensor weight;
};

class Plugin : public plexus::Model {
public:
    // Initialized from the run's seed for "init": every rank and every run from one seed start alike.
    Plugin(int64_t vocab, int64_t width, uint64_t seed) {
        auto gen = at::detail::createCPUGenerator(seed);
        add_block("embed", std::make_shared<Embed>(vocab, width, gen));
        head_ = std::make_shared<Head>(width, vocab, gen);
        add_block("head", head_);
    }
    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape(-1));
    }
    plexus::FlopsPerToken flops_per_token(int64_t) const override {
        return {6.0 * static_cast<double>(head_->weight.numel()), "6N (N: the head's weights)", head_->weight.numel()};
    }

private:
    std::shared_ptr<Head> head_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "@NAME@";
    d.kind = plexus::PluginKind::Model;
    d.version = "0.1";
    d.summary = "token embedding and a linear head (a plexus new scaffold)";
    d.schema = {plexus::ConfigKey("width", 32, "embedding width").at_least(1)};
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        return std::make_shared<Plugin>(ctx.vocab_size(), cfg.get_int("width"), ctx.seed("init"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
)PLUGIN"},
};

const char* kCMake = R"PLUGIN(# @NAME@: a plexus @KIND@ plugin, built against an installed plexus:
#   cmake -S . -B build -DCMAKE_PREFIX_PATH=<plexus install prefix> && cmake --build build -j2
cmake_minimum_required(VERSION 3.18)
project(plexus_@KIND@_@NAME@ LANGUAGES CXX)
find_package(plexus REQUIRED)  # the SDK, LibTorch, plexus_add_plugin(); Release unless told otherwise
plexus_add_plugin(NAME @NAME@ KIND @KIND@ SOURCES @NAME@.cpp OUTPUT_DIR ${CMAKE_BINARY_DIR}/plugins)
install(TARGETS plexus_@KIND@_@NAME@ LIBRARY DESTINATION lib/plexus/plugins)
)PLUGIN";

const char* kReadme = R"PLUGIN(# @NAME@

A plexus @KIND@ plugin, started with `plexus new @KIND@ @NAME@`.

    cmake -S . -B build -DCMAKE_PREFIX_PATH=<plexus install prefix>
    cmake --build build -j2
    plexus check build/plugins/plexus_@KIND@_@NAME@.so        # the conformance checks of its kind
    PLEXUS_PLUGIN_PATH=$PWD/build/plugins plexus plugins @NAME@  # its settings

In an experiment: `[@SECTION@] name = "@NAME@"`, with `PLEXUS_PLUGIN_PATH` (folders separated by
`:`) naming `build/plugins`. The plexus docs' plugins page describes the SDK.
)PLUGIN";

std::string filled(std::string text, const std::map<std::string, std::string>& values) {
    for (const auto& [key, value] : values)
        for (size_t at; (at = text.find(key)) != std::string::npos;) text.replace(at, key.size(), value);
    return text;
}

}  // namespace

std::vector<std::string> write_plugin_scaffold(const std::string& kind, const std::string& name,
                                               const std::string& dir) {
    const auto source = kSources.find(kind);
    if (source == kSources.end())
        throw Error("plexus new: unknown kind '" + kind + "'", "use model, dataset, optimizer, strategy or comm");
    bool identifier = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0]));
    for (char c : name) identifier = identifier && (std::isalnum(static_cast<unsigned char>(c)) || c == '_');
    if (!identifier)
        throw Error("plexus new: '" + name + "' is not a plugin name",
                    "use letters, digits and _, not starting with a digit");
    std::error_code ec;
    if (fs::exists(dir) && !fs::is_empty(dir, ec))
        throw Error("plexus new: " + dir + " exists and is not empty", "name a new folder as the third argument");
    fs::create_directories(dir);
    const std::map<std::string, std::string> values = {
        {"@NAME@", name}, {"@KIND@", kind}, {"@SECTION@", kind == "dataset" ? "data" : kind}};
    const std::vector<std::pair<std::string, std::string>> files = {{"CMakeLists.txt", filled(kCMake, values)},
                                                                    {name + ".cpp", filled(source->second, values)},
                                                                    {"README.md", filled(kReadme, values)}};
    std::vector<std::string> written;
    for (const auto& [file, text] : files) {
        const auto path = (fs::path(dir) / file).string();
        std::ofstream out(path);
        out << text;
        if (!out) throw Error("plexus new: could not write " + path);
        written.push_back(path);
    }
    return written;
}

}  // namespace plexus::host
