// strategies/gossip: asynchronous pairwise averaging (AD-PSGD style) on a communication graph.
// Each worker takes gradient steps and, at Poisson times on its edges, averages its parameters
// with one neighbour; there is no global barrier. The engine is plugins/shared/gossip_base.hpp.
#include "shared/gossip_base.hpp"
#include <plexus/plexus.hpp>

namespace {

class Gossip : public plexus::GossipStrategy {
public:
    Gossip(const plexus::Config& cfg, plexus::RunContext& ctx) : GossipStrategy(cfg, ctx, /*accelerated=*/false) {}
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "gossip";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "asynchronous decentralized SGD: pairwise averaging with graph neighbours at Poisson times";
    d.schema = plexus::gossip_schema();
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<Gossip>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
