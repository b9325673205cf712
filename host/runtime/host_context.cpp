#include "runtime/host_context.hpp"
#include "device/cuda.hpp"

#include <iostream>
#include <optional>

#include <plexus/kit/compat.hpp>
#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

#include "device/memory_meter.hpp"
#include "base/text.hpp"
#include "runtime/plugin_calls.hpp"

namespace plexus::host {

namespace {

class LocalTransport : public Transport {
public:
    int rank() const override { return 0; }
    int world_size() const override { return 1; }
    const char* backend() const override { return "local"; }
    std::shared_ptr<Work> all_reduce(torch::Tensor&, ReduceOp) override { return done(); }
    std::shared_ptr<Work> reduce_scatter(torch::Tensor& out, const torch::Tensor& in, ReduceOp) override {
        out.copy_(in.view_as(out));
        return done();
    }
    std::shared_ptr<Work> all_gather(torch::Tensor& out, const torch::Tensor& in) override {
        out.copy_(in.view_as(out));
        return done();
    }
    std::shared_ptr<Work> broadcast(torch::Tensor&, int) override { return done(); }
    void barrier() override {}
    std::shared_ptr<Work> send(const torch::Tensor&, int peer, int) override { no_peer(peer); }
    std::shared_ptr<Work> recv(torch::Tensor&, int peer, int) override { no_peer(peer); }
    std::shared_ptr<Transport> subgroup(const std::vector<int>& ranks) override {
        if (ranks.size() != 1 || ranks[0] != 0)
            throw Error("subgroup of ranks other than {0} in a one-rank run", "launch with more ranks");
        return std::make_shared<LocalTransport>();
    }
    CommStats stats() const override { return stats_; }

private:
    std::shared_ptr<Work> done() {
        ++stats_.calls;
        return std::make_shared<CompletedWork>();
    }
    [[noreturn]] void no_peer(int peer) {
        throw Error("point-to-point with rank " + std::to_string(peer) + " in a one-rank run",
                    "this strategy needs several ranks: set [launch] accordingly");
    }
    CommStats stats_;
};

}  // namespace

std::unique_ptr<Transport> make_local_transport() { return std::make_unique<LocalTransport>(); }

HostContext::HostContext(const ResolvedConfig& cfg, torch::Device device, int64_t vocab,
                         std::shared_ptr<Transport> transport, std::shared_ptr<RankClock> clock)
    : cfg_(cfg), device_(device), vocab_(vocab), transport_(std::move(transport)), clock_(std::move(clock)),
      start_(std::chrono::steady_clock::now()) {}

int64_t HostContext::seq_len() const { return cfg_.host.train.seq_len; }
int64_t HostContext::batch_size() const { return cfg_.host.train.batch_size; }
int64_t HostContext::token_budget() const { return cfg_.host.train.tokens; }

void HostContext::record(const std::string& key, double value) {
    pending.push_back({rank(), key, step, value, tokens, wall_seconds(),
                       clock_->simulated() ? std::optional<double>(clock_->now()) : std::nullopt});
}

void HostContext::log(LogLevel level, const std::string& message) {
    // Information once (rank 0), warnings from every rank, marked with it.
    if (level == LogLevel::Debug || (level == LogLevel::Info && rank() != 0)) return;
    const std::string who = world_size() > 1 ? "[rank " + std::to_string(rank()) + "] " : "";
    std::cerr << who << (level == LogLevel::Warning ? "warning: " : "") << message << "\n";
}

std::unique_ptr<BackgroundTask> HostContext::start_background(std::function<void()> task) {
    return clock_->start_background(
        [meter = current_meter(), task = std::move(task), type = device_.type(), dtype = autocast_dtype()] {
            std::optional<MeterScope> scope;
            if (meter) scope.emplace(meter);
            compat::AutocastGuard autocast(type, dtype);
            task();
        });
}

c10::ScalarType HostContext::autocast_dtype() const {
    const auto it = cfg_.values.find("train.precision");
    return it != cfg_.values.end() && it->second.as_string() == "bf16" ? torch::kBFloat16 : torch::kFloat;
}

int64_t HostContext::tensor_bytes() {
    if (device_.is_cuda()) return gpu::allocated_bytes(device_);  // this rank's GPU (one rank per GPU)
    const auto meter = current_meter();
    return meter && device_.is_cpu() ? meter->live() : -1;
}

uint64_t HostContext::seed(const std::string& stream) const {
    return mix_seed(static_cast<uint64_t>(cfg_.host.train.seed), fnv1a(stream));
}

double HostContext::wall_seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

namespace {

// The μP roles the blocks declare, by the model's parameter names ("<block>.<parameter>"). A block
// that declares any declares all of its own parameters, and names only parameters it has.
std::map<std::string, WidthRule> declared_width_roles(const Model& model) {
    std::map<std::string, WidthRule> roles;
    for (const auto& block : model.blocks()) {
        const auto plan = block->width_plan();
        if (plan.empty()) continue;
        std::map<std::string, WidthRule> own;
        for (const auto& rule : plan) own[rule.parameter] = rule;
        for (const auto& item : block->named_parameters()) {
            auto it = own.find(item.key());
            if (it == own.end())
                throw Error("block '" + block->block_name() +
                                "' declares μP roles (width_plan) but none for its parameter '" + item.key() + "'",
                            "a block in μP lists every parameter it registers");
            roles[block->block_name() + "." + item.key()] = it->second;
            own.erase(it);
        }
        if (!own.empty())
            throw Error("block '" + block->block_name() + "' declares a μP role for '" + own.begin()->first +
                        "', which is not one of its parameters");
    }
    return roles;
}

}  // namespace

std::shared_ptr<Model> HostContext::make_model() {
    torch::manual_seed(seed("init"));
    const auto* d = cfg_.plugins.at("model");
    auto model =
        call_plugin(plugin_label(*d), "make_model()", [&] { return d->make_model(cfg_.sections.at("model"), *this); });
    if (!model) throw Error(plugin_label(*d) + " returned no model");
    model->to(device_);
    if (initial_weights_) load_weights(*model, *initial_weights_, cfg_.host.train.init_from);
    if (!built_model) {
        built_model = true;
        flops = model->flops_per_token(seq_len());
        for (const auto& p : model->parameters()) params += p.numel();
        width_roles_ = declared_width_roles(*model);
    }
    return model;
}

std::unique_ptr<Optimizer> HostContext::make_optimizer(std::vector<ParamSlot> slots, const std::string& section) {
    auto it = cfg_.plugins.find(section);
    if (it == cfg_.plugins.end() || it->second->kind != PluginKind::Optimizer)
        throw Error("no optimizer section [" + section + "] in this experiment",
                    "add [" + section + "] name = \"<optimizer plugin>\" (`plexus plugins` lists them)");
    const PluginDescriptor& d = *it->second;
    for (auto& slot : slots)
        if (auto role = width_roles_.find(slot.tensor_name()); role != width_roles_.end()) {
            slot.width_role = role->second.role;
            slot.width_mult = role->second.width_mult;
        }
    return named(d, call_plugin(plugin_label(d), "make_optimizer()",
                                [&] { return d.make_optimizer(cfg_.sections.at(section), *this, std::move(slots)); }));
}

std::unique_ptr<CommScheme> HostContext::make_comm(const std::string& section) {
    auto it = cfg_.plugins.find(section);
    if (it == cfg_.plugins.end() || it->second->kind != PluginKind::Comm)
        throw Error("no communication scheme [" + section + "] in this experiment",
                    "add [" + section + "] name = \"<comm plugin>\"");
    const PluginDescriptor& d = *it->second;
    return named(
        d, call_plugin(plugin_label(d), "make_comm()", [&] { return d.make_comm(cfg_.sections.at(section), *this); }));
}

std::shared_ptr<Dataset> make_dataset(const ResolvedConfig& cfg, RunContext& ctx) {
    const PluginDescriptor& d = *cfg.plugins.at("data");
    return named(d, call_plugin(plugin_label(d), "make_dataset()", [&] {
                     return std::shared_ptr<Dataset>(d.make_dataset(cfg.sections.at("data"), ctx));
                 }));
}

std::unique_ptr<Strategy> make_strategy(const ResolvedConfig& cfg, RunContext& ctx) {
    const PluginDescriptor& d = *cfg.plugins.at("strategy");
    return named(d, call_plugin(plugin_label(d), "make_strategy()",
                                [&] { return d.make_strategy(cfg.sections.at("strategy"), ctx); }));
}

BareRun::BareRun(const ResolvedConfig& cfg, torch::Device device) {
    HostContext boot(cfg, torch::kCPU, 0);  // the dataset's factory needs a context; the vocabulary comes after
    data = make_dataset(cfg, boot);
    ctx = std::make_unique<HostContext>(cfg, device, data->vocab_size());
    strategy = make_strategy(cfg, *ctx);
    stream = std::make_unique<DeviceStream>(
        data->open({Split::Train, cfg.host.train.batch_size, cfg.host.train.seq_len, 0, 1, ctx->seed("data")}), device);
    in.max_grad_norm = cfg.host.train.grad_clip;
    in.train = stream.get();
}

}  // namespace plexus::host
