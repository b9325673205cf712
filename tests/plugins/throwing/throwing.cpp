// A model plugin whose factory throws plexus::Error: the run must be marked failed with the
// message and hint, and nothing else in the database may be touched.
#include <plexus/plugin.hpp>

static plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "throwing";
    d.kind = plexus::PluginKind::Model;
    d.version = "0.1";
    d.summary = "test plugin: its factory always throws";
    d.schema = {{"message", "deliberate failure in the factory", "what to throw"}};
    d.make_model = [](const plexus::Config& cfg, plexus::RunContext&) -> std::shared_ptr<plexus::Model> {
        throw plexus::Error(cfg.get_string("message"), "this plugin exists to test failure handling");
    };
    return d;
}

PLEXUS_PLUGIN(describe)
