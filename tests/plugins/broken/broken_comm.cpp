// A communication scheme (plain all-reduce) that breaks one promise on request (comm.breaks), for
// the tests of `plexus check`. "none": correct. "state": state() throws a LibTorch-style error (the
// host must say which plugin and which call it came from).
#include <plexus/plexus.hpp>

namespace {

class Broken : public plexus::CommScheme {
public:
    explicit Broken(std::string breaks) : breaks_(std::move(breaks)) {}
    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t) override {
        const int64_t bytes = tensor.numel() * static_cast<int64_t>(tensor.element_size());
        stats_.logical_bytes +=
            breaks_ == "logical_bytes" ? bytes : plexus::ring_all_reduce_bytes(bytes, transport.world_size());
        const auto before = transport.stats().bytes_sent;
        auto work = transport.all_reduce(tensor, plexus::ReduceOp::Mean);
        if (breaks_ != "bytes_unaccounted") stats_.bytes_sent += transport.stats().bytes_sent - before;
        work->wait();
        if (breaks_ == "inexact") tensor.mul_(1.01);
        return work;
    }
    plexus::CommSchemeStats stats() const override { return stats_; }
    plexus::StateDict state() const override {
        if (breaks_ == "state") throw std::runtime_error("Expected a proper Tensor but got None");
        return {};
    }

private:
    std::string breaks_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "broken_comm";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "a communication scheme that breaks one promise on request (tests of plexus check)";
    d.schema = {plexus::ConfigKey("breaks", "none", "which promise to break")
                    .one_of({"none", "inexact", "bytes_unaccounted", "logical_bytes", "state"})};
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::CommScheme> {
        return std::make_unique<Broken>(cfg.get_string("breaks"));
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
