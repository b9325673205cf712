#include "runtime/plugin_calls.hpp"

#include <exception>
#include <utility>

#include "base/text.hpp"

namespace plexus::host {

std::string plugin_label(const PluginDescriptor& d) {
    const char* kind = d.kind == PluginKind::Comm ? "comm scheme" : to_string(d.kind);
    return std::string(kind) + " '" + d.name + "'";
}

void rethrow_named(const std::string& who, const char* call) {
    const std::string prefix = who + ", " + call + ": ";
    try {
        throw;
    } catch (const PeerLost&) { throw; } catch (const Error& e) {
        if (std::string(e.what()).rfind(prefix, 0) == 0) throw;  // named already (a nested call)
        throw Error(prefix + e.what(), e.hint());
    } catch (const std::exception& e) { throw Error(prefix + message_of(e)); }  // LibTorch's backtrace left out
}

namespace {

class NamedStrategy : public Strategy {
public:
    NamedStrategy(std::string who, std::unique_ptr<Strategy> inner) : who_(std::move(who)), s_(std::move(inner)) {}
    StepOutput step(const StepInput& in) override {
        return call_plugin(who_, "step()", [&] { return s_->step(in); });
    }
    double evaluate(BatchStream& stream, int64_t batches) override {
        return call_plugin(who_, "evaluate()", [&] { return s_->evaluate(stream, batches); });
    }
    StateDict state() const override {
        return call_plugin(who_, "state()", [&] { return s_->state(); });
    }
    void load_state(const StateDict& state) override {
        call_plugin(who_, "load_state()", [&] { s_->load_state(state); });
    }
    bool exact_resume() const override { return s_->exact_resume(); }
    DataShard data_shard(int rank, int world) const override {
        return call_plugin(who_, "data_shard()", [&] { return s_->data_shard(rank, world); });
    }

private:
    std::string who_;
    std::unique_ptr<Strategy> s_;
};

class NamedOptimizer : public Optimizer {
public:
    NamedOptimizer(std::string who, std::unique_ptr<Optimizer> inner) : who_(std::move(who)), o_(std::move(inner)) {}
    void step(const std::vector<torch::Tensor>& grads, double lr_scale) override {
        call_plugin(who_, "step()", [&] { o_->step(grads, lr_scale); });
    }
    void step_scaled(const std::vector<torch::Tensor>& grads, double lr_scale, double grad_scale) override {
        call_plugin(who_, "step_scaled()", [&] { o_->step_scaled(grads, lr_scale, grad_scale); });
    }
    StateDict state() const override {
        return call_plugin(who_, "state()", [&] { return o_->state(); });
    }
    void load_state(const StateDict& state) override {
        call_plugin(who_, "load_state()", [&] { o_->load_state(state); });
    }
    double flops_per_step() const override { return o_->flops_per_step(); }

private:
    std::string who_;
    std::unique_ptr<Optimizer> o_;
};

class NamedComm : public CommScheme {
public:
    NamedComm(std::string who, std::unique_ptr<CommScheme> inner) : who_(std::move(who)), c_(std::move(inner)) {}
    void set_layout(int64_t key, const std::vector<TensorPiece>& pieces) override {
        call_plugin(who_, "set_layout()", [&] { c_->set_layout(key, pieces); });
    }
    std::shared_ptr<Work> all_reduce_mean(torch::Tensor& tensor, Transport& transport, int64_t key) override {
        return call_plugin(who_, "all_reduce_mean()", [&] { return c_->all_reduce_mean(tensor, transport, key); });
    }
    CommSchemeStats stats() const override { return c_->stats(); }
    StateDict state() const override {
        return call_plugin(who_, "state()", [&] { return c_->state(); });
    }
    void load_state(const StateDict& state) override {
        call_plugin(who_, "load_state()", [&] { c_->load_state(state); });
    }

private:
    std::string who_;
    std::unique_ptr<CommScheme> c_;
};

class NamedDataset : public Dataset {
public:
    NamedDataset(std::string who, std::shared_ptr<Dataset> inner) : who_(std::move(who)), d_(std::move(inner)) {}
    int64_t vocab_size() const override { return d_->vocab_size(); }
    std::unique_ptr<BatchStream> open(const StreamSpec& spec) override {
        return call_plugin(who_, "open()", [&] { return d_->open(spec); });
    }
    std::string describe() const override { return d_->describe(); }

private:
    std::string who_;
    std::shared_ptr<Dataset> d_;
};

}  // namespace

std::unique_ptr<Strategy> named(const PluginDescriptor& d, std::unique_ptr<Strategy> inner) {
    if (!inner) throw Error(plugin_label(d) + " returned no strategy");
    return std::make_unique<NamedStrategy>(plugin_label(d), std::move(inner));
}
std::unique_ptr<Optimizer> named(const PluginDescriptor& d, std::unique_ptr<Optimizer> inner) {
    if (!inner) throw Error(plugin_label(d) + " returned no optimizer");
    return std::make_unique<NamedOptimizer>(plugin_label(d), std::move(inner));
}
std::unique_ptr<CommScheme> named(const PluginDescriptor& d, std::unique_ptr<CommScheme> inner) {
    if (!inner) throw Error(plugin_label(d) + " returned no scheme");
    return std::make_unique<NamedComm>(plugin_label(d), std::move(inner));
}
std::shared_ptr<Dataset> named(const PluginDescriptor& d, std::shared_ptr<Dataset> inner) {
    if (!inner) throw Error(plugin_label(d) + " returned no dataset");
    return std::make_shared<NamedDataset>(plugin_label(d), std::move(inner));
}

}  // namespace plexus::host
