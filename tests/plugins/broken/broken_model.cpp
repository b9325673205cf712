// A model (embedding, then a linear head) that breaks one promise on request (model.breaks), for
// the tests of `plexus check`. "none": correct.
#include <random>

#include <plexus/plexus.hpp>

namespace {

class Table : public plexus::Block {
public:
    Table(int64_t vocab, bool random_init, std::string breaks, bool mup) : breaks_(std::move(breaks)), mup_(mup) {
        auto gen = at::detail::createCPUGenerator(random_init ? std::random_device{}() : 7);
        w = register_parameter("w", torch::randn({vocab, vocab}, gen, torch::kFloat32) * 0.1);
    }
    torch::Tensor forward(const torch::Tensor& tokens) override { return w.index_select(0, tokens.reshape(-1)); }
    double flops_per_token(int64_t) const override { return 0; }
    // μP: w is a hidden matrix (base width: itself).
    std::vector<plexus::WidthRule> width_plan() const override {
        if (breaks_ == "sp_roles" && !mup_) return {{"w", plexus::WidthRole::Hidden, 1.0}};
        if (!mup_) return {};
        if (breaks_ == "mup_missing_role") return {{"b", plexus::WidthRole::Vector, 1.0}};
        if (breaks_ == "mup_no_hidden") return {{"w", plexus::WidthRole::Vector, 1.0}};
        return {{"w", plexus::WidthRole::Hidden, 1.0}};
    }
    torch::Tensor w;

private:
    std::string breaks_;
    bool mup_;
};

class Broken : public plexus::Model {
public:
    Broken(std::string breaks, int64_t vocab, bool mup) : breaks_(std::move(breaks)), vocab_(vocab) {
        table_ = std::make_shared<Table>(vocab, breaks_ == "random_init", breaks_, mup);
        add_block("table", table_);
    }
    torch::Tensor forward(const torch::Tensor& tokens) override {
        auto logits = table_->forward(tokens).view({tokens.size(0), tokens.size(1), vocab_});
        if (breaks_ == "bad_shape") logits = logits.narrow(2, 0, vocab_ - 1);
        return logits;
    }
    torch::Tensor loss(const torch::Tensor& logits, const torch::Tensor& targets) override {
        return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape(-1));
    }
    plexus::FlopsPerToken flops_per_token(int64_t) const override {
        return {breaks_ == "no_flops" ? 0.0 : 6.0 * static_cast<double>(vocab_ * vocab_), "6 N (a test model)",
                vocab_ * vocab_};
    }

private:
    std::string breaks_;
    int64_t vocab_;
    std::shared_ptr<Table> table_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "broken_model";
    d.kind = plexus::PluginKind::Model;
    d.version = "1.0";
    d.summary = "a model that breaks one promise on request (tests of plexus check)";
    d.schema = {
        plexus::ConfigKey("breaks", "none", "which promise to break")
            .one_of({"none", "bad_shape", "no_flops", "random_init", "mup_missing_role", "mup_no_hidden", "sp_roles"}),
        plexus::ConfigKey("parametrization", "sp", "\"sp\" or \"mup\" (width roles)").one_of({"sp", "mup"})};
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::shared_ptr<plexus::Model> {
        return std::make_shared<Broken>(cfg.get_string("breaks"), ctx.vocab_size(),
                                        cfg.get_string("parametrization") == "mup");
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
