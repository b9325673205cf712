// comm/allreduce: the plain scheme, an uncompressed all-reduce averaged over ranks.
#include <plexus/plexus.hpp>
#include <torch/torch.h>

namespace {

class PlainAllReduce : public plexus::CommScheme {
public:
    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t) override {
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
    d.name = "allreduce";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "plain all-reduce of the full-precision tensor, averaged over ranks";
    d.schema = {};
    d.make_comm = [](const plexus::Config&, plexus::RunContext&) -> std::unique_ptr<plexus::CommScheme> {
        return std::make_unique<PlainAllReduce>();
    };
    d.extras["default"] = "true";  // the scheme of an experiment whose [comm] names none
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
