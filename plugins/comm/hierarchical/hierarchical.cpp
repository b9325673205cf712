// comm/hierarchical: topology-aware averaging for nodes of G ranks (consecutive ranks share a
// node): reduce-scatter inside the node, all-reduce of each chunk across nodes (between the
// ranks with the same position in their node), all-gather inside the node. Only 1/G of the
// tensor crosses the slow inter-node links. G comes from node_size, else from the run context
// (the launcher's ranks per node, or the simulated cluster's gpus_per_node).
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <cstdlib>

namespace {

class Hierarchical : public plexus::CommScheme {
public:
    explicit Hierarchical(int64_t node_size) : node_size_(node_size) {}

    std::shared_ptr<plexus::Work> all_reduce_mean(torch::Tensor& tensor, plexus::Transport& transport,
                                                  int64_t) override {
        torch::NoGradGuard no_grad;
        const int world = transport.world_size(), rank = transport.rank();
        const int g = static_cast<int>(node_size_ > 0 ? node_size_ : world);
        if (world % g != 0)
            throw plexus::Error(
                "comm.node_size = " + std::to_string(g) + " does not divide the " + std::to_string(world) + " ranks",
                "set comm.node_size to the number of ranks per node");
        if (!intra_) {
            std::vector<int> node, across;
            for (int r = (rank / g) * g; r < (rank / g + 1) * g; ++r) node.push_back(r);
            for (int r = rank % g; r < world; r += g) across.push_back(r);
            intra_ = transport.subgroup(node);
            inter_ = transport.subgroup(across);
        }
        const int64_t n = tensor.numel();
        stats_.logical_bytes +=
            plexus::ring_all_reduce_bytes(n * static_cast<int64_t>(tensor.element_size()), transport.world_size());
        const int64_t chunk = (n + g - 1) / g;
        auto padded = torch::zeros({chunk * g}, tensor.options());
        padded.narrow(0, 0, n).copy_(tensor.reshape(-1));
        auto mine = torch::empty({chunk}, tensor.options());
        // Subgroups count their traffic in the rank's totals, which `transport` reports: summing
        // the two subgroups' stats() would count every byte twice.
        const auto before = transport.stats().bytes_sent;
        intra_->reduce_scatter(mine, padded, plexus::ReduceOp::Sum)->wait();
        inter_->all_reduce(mine, plexus::ReduceOp::Sum)->wait();
        intra_->all_gather(padded, mine)->wait();
        stats_.bytes_sent += transport.stats().bytes_sent - before;
        tensor.copy_((padded.narrow(0, 0, n) / world).view_as(tensor));
        return std::make_shared<plexus::CompletedWork>();
    }

    plexus::CommSchemeStats stats() const override { return stats_; }

private:
    int64_t node_size_;
    std::shared_ptr<plexus::Transport> intra_, inter_;
    plexus::CommSchemeStats stats_;
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "hierarchical";
    d.kind = plexus::PluginKind::Comm;
    d.version = "1.0";
    d.summary = "reduce-scatter in the node, all-reduce across nodes, all-gather in the node";
    d.schema = {{"node_size", 0, "ranks per node; 0: as launched (LOCAL_WORLD_SIZE, or sim.gpus_per_node)"}};
    d.extras["check.settings"] = "comm.node_size=2";  // `plexus check` on 4 ranks: two nodes of two
    d.make_comm = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::CommScheme> {
        int64_t g = cfg.get_int("node_size");
        cfg.require(g >= 0, "node_size", "must be >= 0");
        if (g == 0) g = ctx.ranks_per_node();
        return std::make_unique<Hierarchical>(g);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
