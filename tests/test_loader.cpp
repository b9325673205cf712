#include <catch2/catch.hpp>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {
const std::string kTestPlugins = PLEXUS_TEST_PLUGIN_DIR;

std::string refusal(host::PluginRegistry& reg, const std::string& path) {
    try {
        reg.load(path);
    } catch (const Error& e) { return e.what(); }
    return "(loaded)";
}
}  // namespace

TEST_CASE("the build's plugins load with their descriptors", "[loader]") {
    auto& reg = registry();
    for (auto [kind, name] : std::vector<std::pair<PluginKind, std::string>>{{PluginKind::Model, "gpt"},
                                                                             {PluginKind::Optimizer, "adamw"},
                                                                             {PluginKind::Optimizer, "sgd"},
                                                                             {PluginKind::Strategy, "single"},
                                                                             {PluginKind::Dataset, "text"},
                                                                             {PluginKind::Dataset, "tokens"},
                                                                             {PluginKind::Dataset, "synthetic"}}) {
        const auto* d = reg.find(kind, name);
        REQUIRE(d);
        CHECK(d->kind == kind);
        CHECK_FALSE(d->summary.empty());
        CHECK_FALSE(d->schema.empty());
    }
    CHECK(reg.refused().empty());
}

TEST_CASE("a plugin with another ABI fingerprint is refused with both fingerprints", "[loader]") {
    host::PluginRegistry reg;
    auto why = refusal(reg, kTestPlugins + "/plexus_model_bad_fingerprint.so");
    CHECK_THAT(why, Contains("fingerprint mismatch"));
    CHECK_THAT(why, Contains("libtorch 2.5; cuda on"));                   // the plugin's
    CHECK_THAT(why, Contains(host::PluginRegistry::host_fingerprint()));  // the host's
    CHECK(reg.loaded().empty());
}

TEST_CASE("libraries that are not plexus plugins are refused, never loaded", "[loader]") {
    TempDir dir;
    host::PluginRegistry reg;
    CHECK_THAT(refusal(reg, kTestPlugins + "/plexus_test_not_a_plugin.so"), Contains("not a plexus plugin"));
    CHECK_THAT(refusal(reg, dir.file("random.so", "this is text, not ELF")), Contains("not a loadable shared library"));

    // A truncated copy of a real plugin.
    std::ifstream in(kTestPlugins + "/plexus_model_throwing.so", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    REQUIRE(bytes.size() > 4096);
    CHECK_THAT(refusal(reg, dir.file("truncated.so", bytes.substr(0, bytes.size() / 3))),
               Contains("not a loadable shared library"));
    CHECK(reg.loaded().empty());
    CHECK(reg.refused().size() == 3);
}

TEST_CASE("a second plugin of the same kind and name is refused", "[loader]") {
    TempDir dir;
    host::PluginRegistry reg;
    const auto& d = reg.load(kTestPlugins + "/plexus_model_throwing.so");
    CHECK(d.name == "throwing");
    fs::copy_file(kTestPlugins + "/plexus_model_throwing.so", dir / "copy.so");
    CHECK_THAT(refusal(reg, dir / "copy.so"), Contains("already loaded"));
    CHECK(reg.loaded().size() == 1);
}

TEST_CASE("scan loads the good and lists the refused with reasons", "[loader]") {
    host::PluginRegistry reg;
    reg.scan({kTestPlugins});
    CHECK(reg.names(PluginKind::Model) == std::vector<std::string>{"misbehaving", "throwing"});
    CHECK(reg.refused().size() == 2);  // bad fingerprint, not a plugin
}
