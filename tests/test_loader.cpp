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

namespace {
const std::string kMarkerPlugins = PLEXUS_MARKER_PLUGIN_DIR;

// The names of the marker libraries loaded while `body` ran (each appends its name when loaded).
std::string marks_of(const TempDir& dir, const std::function<void(const std::string& env)>& body) {
    const std::string marks = dir / "marks.txt";
    fs::remove(marks);
    body("PLEXUS_TEST_MARKER=" + marks);
    std::ifstream in(marks);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}
}  // namespace

TEST_CASE("no code of a library runs unless the run names its plugin and its fingerprint is the host's", "[loader]") {
    TempDir dir;
    const auto file = dir.file("e.toml", kTinyExperiment);
    const std::string db = dir / "r.db", path = "PLEXUS_PLUGIN_PATH=" + kMarkerPlugins;
    // A run, a sweep's dry run and a local worker naming other plugins load neither marker.
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + file + " --db " + db + " --set train.steps=2", env + " " + path);
              INFO(r.output);
              CHECK(r.exit_code == 0);
          }) == "");
    CHECK(marks_of(dir, [&](const std::string& env) {
              CHECK(run_plexus("sweep " + file + " --db " + db + " --dry-run", env + " " + path).exit_code == 0);
          }) == "");
    CHECK(marks_of(dir, [&](const std::string& env) {
              CHECK(run_plexus("run " + file + " --db " + db +
                                   " --set train.steps=2 --set launch.mode=local --set launch.ranks=2 "
                                   "--set strategy.name=ddp",
                               env + " " + path)
                        .exit_code == 0);
          }) == "");
    // Named: the one with the host's fingerprint is loaded (and says it builds no model); the one
    // with another SDK's is refused from its file's bytes, before dlopen could run anything.
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + file + " --db " + db + " --set model.name=marker", env + " " + path);
              CHECK_THAT(r.output, Contains("the marker plugin builds no model"));
          }) == "marker\n");
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r =
                  run_plexus("run " + file + " --db " + db + " --set model.name=marker_bad", env + " " + path);
              CHECK(r.exit_code != 0);
              CHECK_THAT(r.output, Contains("fingerprint mismatch") && Contains("plexus_model_marker_bad.so"));
          }) == "");
    // `plexus plugins` is asked for all of them: it loads the good one and still refuses the other.
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("plugins", env + " " + path);
              CHECK_THAT(r.output, Contains("marker_bad.so: ABI fingerprint mismatch"));
          }) == "marker\n");
}

TEST_CASE("an experiment file's plugin_path needs the user's consent and resolves against the file", "[loader]") {
    TempDir dir;
    fs::create_directories(dir / "exp/plugins");
    fs::copy_file(kMarkerPlugins + "/plexus_model_marker.so", dir / "exp/plugins/plexus_model_marker.so");
    const auto file = dir.file("exp/e.toml", std::string("plugin_path = [\"plugins\"]\n") + kTinyExperiment);
    const std::string db = dir / "r.db";
    // Refused before anything is loaded, naming the key and the way to consent.
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + file + " --db " + db + " --set model.name=marker", env);
              CHECK(r.exit_code == 1);
              CHECK_THAT(r.output,
                         Contains("e.toml:1:1: plugin_path asks to load plugins") && Contains("--allow-plugin-path"));
              CHECK(run_plexus("sweep " + file + " --db " + db + " --dry-run", env).exit_code == 1);
          }) == "");
    const auto wrong = dir.file("exp/wrong.toml", std::string("plugin_path = 5\n") + kTinyExperiment);
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + wrong + " --db " + db + " --allow-plugin-path", env);
              CHECK(r.exit_code == 1);
              CHECK_THAT(r.output, Contains("wrong.toml:1:1: 'plugin_path' must be a list, got int"));
          }) == "");
    // With consent, from another directory: exp/plugins is found (the file's folder, not the
    // current one), and its library loaded because the run names it.
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + file + " --db " + db + " --allow-plugin-path --set model.name=marker",
                                        "cd / && " + env);
              CHECK_THAT(r.output, Contains("the marker plugin builds no model"));
          }) == "marker\n");
    CHECK(marks_of(dir, [&](const std::string& env) {
              const auto r = run_plexus("run " + file + " --db " + db + " --set model.name=marker",
                                        env + " PLEXUS_ALLOW_PLUGIN_PATH=1");
              CHECK_THAT(r.output, Contains("the marker plugin builds no model"));
          }) == "marker\n");
}
