// strategies/a2cid2: A2CiD2 (Nabli, Belilovsky, Oyallon 2023): gossip plus a continuous
// momentum x̃ per worker, mixed with x between events and jumping by α̃ (x_j − x_i) at each
// averaging; η and α̃ from the graph's spectrum. momentum = false is plain gossip.
// The engine is plugins/shared/gossip_base.hpp.
#include "shared/gossip_base.hpp"
#include <plexus/plexus.hpp>

namespace {

class A2cid2 : public plexus::GossipStrategy {
public:
    A2cid2(const plexus::Config& cfg, plexus::RunContext& ctx) : GossipStrategy(cfg, ctx, cfg.get_bool("momentum")) {}
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "a2cid2";
    d.kind = plexus::PluginKind::Strategy;
    d.version = "1.0";
    d.summary = "A2CiD2: asynchronous gossip with a continuous momentum that accelerates mixing on sparse graphs";
    d.schema = plexus::gossip_schema();
    d.schema.push_back({"momentum", true, "the continuous momentum x~; false: plain gossip"});
    d.make_strategy = [](const plexus::Config& cfg, plexus::RunContext& ctx) -> std::unique_ptr<plexus::Strategy> {
        return std::make_unique<A2cid2>(cfg, ctx);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
