#include <catch2/catch.hpp>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) { return e.what(); }
    return "(no error)";
}
}  // namespace

TEST_CASE("extends merges base and child, child wins, and keys remember their file", "[config]") {
    TempDir dir;
    dir.file("base.toml", "[model]\nname = \"gpt\"\nn_layer = 6\nd_model = 64\n[data]\nname = \"synthetic\"\n");
    auto path = dir.file("child.toml", "extends = \"base.toml\"\n[model]\nn_layer = 2\n");
    auto exp = host::load_experiment(path);
    REQUIRE(exp.settings.at("model.n_layer").value.as_int() == 2);
    REQUIRE(exp.settings.at("model.d_model").value.as_int() == 64);
    CHECK(exp.settings.at("model.n_layer").where.file == path);
    CHECK(exp.settings.at("model.n_layer").where.line == 3);
    CHECK_THAT(exp.settings.at("model.d_model").where.file, Contains("base.toml"));
    CHECK(exp.files.size() == 2);
}

TEST_CASE("a child naming another plugin drops the base's keys for that section", "[config]") {
    TempDir dir;
    dir.file("base.toml", "[optimizer]\nname = \"adamw\"\nbetas = [0.9, 0.99]\n");
    auto exp = host::load_experiment(dir.file("child.toml", "extends = \"base.toml\"\n[optimizer]\nname = \"sgd\"\n"));
    CHECK(exp.settings.count("optimizer.betas") == 0);
    CHECK(exp.settings.at("optimizer.name").value.as_string() == "sgd");
}

TEST_CASE("extends cycles are refused", "[config]") {
    TempDir dir;
    dir.file("a.toml", "extends = \"b.toml\"\n");
    dir.file("b.toml", "extends = \"a.toml\"\n");
    CHECK_THAT(error_of([&] { host::load_experiment(dir / "a.toml"); }), Contains("cycle"));
}

TEST_CASE("extends naming a file the file system refuses is a plexus error naming it", "[config]") {
    TempDir dir;
    // A name over NAME_MAX (255): the file system's own error once escaped as a crash (fuzzer).
    const std::string long_name(300, 'x');
    dir.file("e.toml", "extends = \"" + long_name + ".toml\"\n");
    const std::string error = error_of([&] { host::load_experiment(dir / "e.toml"); });
    CHECK_THAT(error, Contains("e.toml") && Contains("File name too long") && Contains(long_name));
    CHECK_THAT(error_of([&] { host::load_experiment(dir / (long_name + ".toml")); }), Contains("File name too long"));
}

TEST_CASE("a --set naming another plugin and then the file's again keeps the file's keys", "[config]") {
    TempDir dir;
    auto exp = host::load_experiment(dir.file("e.toml", "[optimizer]\nname = \"adamw\"\nbetas = [0.9, 0.99]\n"));
    host::apply_override(exp, "optimizer.name=sgd");
    CHECK(exp.settings.count("optimizer.betas") == 0);  // adamw's key, not sgd's
    host::apply_override(exp, "optimizer.momentum=0.5");
    host::apply_override(exp, "optimizer.name=adamw");
    CHECK(exp.settings.at("optimizer.betas").value.to_text() == "[0.9, 0.99]");
    CHECK(exp.settings.count("optimizer.momentum") == 0);  // sgd's, gone with it
}

TEST_CASE("extends: each shared base loaded once, chains bounded, every entry a file name", "[config]") {
    TempDir dir;
    // 40 levels, each extending the next twice: loaded once each, not 2^40 times.
    for (int i = 0; i < 40; ++i)
        dir.file("l" + std::to_string(i) + ".toml", "extends = [\"l" + std::to_string(i + 1) + ".toml\", \"l" +
                                                        std::to_string(i + 1) + ".toml\"]\nkey" + std::to_string(i) +
                                                        " = " + std::to_string(i) + "\n");
    dir.file("l40.toml", "[train]\nsteps = 7\n");
    const auto start = std::chrono::steady_clock::now();
    auto exp = host::load_experiment(dir / "l0.toml");
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 5.0);
    CHECK(exp.files.size() == 41);
    CHECK(exp.settings.at("train.steps").value.as_int() == 7);
    // A chain deeper than 64 files is refused (10,000 overflowed the parser's stack).
    for (int i = 0; i < 70; ++i)
        dir.file("c" + std::to_string(i) + ".toml", "extends = \"c" + std::to_string(i + 1) + ".toml\"\n");
    dir.file("c70.toml", "");
    CHECK_THAT(error_of([&] { host::load_experiment(dir / "c0.toml"); }), Contains("nests more than 64 files deep"));
}

TEST_CASE("overrides (--set) take TOML values, bare words as strings", "[config]") {
    TempDir dir;
    auto exp = host::load_experiment(dir.file("e.toml", "[optimizer]\nlr = 0.1\n"));
    host::apply_override(exp, "optimizer.lr=3e-4");
    host::apply_override(exp, "data.path=/tmp/some corpus");
    host::apply_override(exp, "optimizer.betas=[0.8, 0.9]");
    CHECK(exp.settings.at("optimizer.lr").value.as_double() == Approx(3e-4));
    CHECK(exp.settings.at("data.path").value.as_string() == "/tmp/some corpus");
    CHECK(exp.settings.at("optimizer.betas").value.as_list().size() == 2);
    CHECK_THAT(error_of([&] { host::apply_override(exp, "no_equals_sign"); }), Contains("section.key=value"));
}

TEST_CASE("resolve fills defaults, coerces ints to floats and validates types", "[config]") {
    TempDir dir;
    auto cfg = resolve_text(dir, std::string(kTinyExperiment) + "\n");
    CHECK(cfg.values.at("optimizer.weight_decay").as_double() == Approx(0.1));  // adamw default
    CHECK(cfg.values.at("strategy.name").as_string() == "single");              // default strategy
    CHECK(cfg.values.at("model.n_layer").as_int() == 2);
    CHECK(cfg.sections.at("model").get_int("n_head") == 2);

    auto with_int_lr = resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"synthetic\"\n[optimizer]\nlr = 1\n");
    CHECK(with_int_lr.values.at("optimizer.lr").type() == ValueType::Float);

    auto err =
        error_of([&] { resolve_text(dir, "[model]\nname=\"gpt\"\nn_layer = \"four\"\n[data]\nname=\"synthetic\"\n"); });
    CHECK_THAT(err, Contains("exp.toml:3:1"));
    CHECK_THAT(err, Contains("'model.n_layer' must be an int"));

    // A list's elements are checked against its default's, ints coerced to floats.
    const std::string base = "[model]\nname=\"gpt\"\n[data]\nname=\"synthetic\"\n[optimizer]\n";
    err = error_of([&] { resolve_text(dir, base + "betas = [0.9, \"x\"]\n"); });
    CHECK_THAT(err, Contains("exp.toml:6:1") && Contains("'optimizer.betas' holds \"x\", not a float"));
    auto int_betas = resolve_text(dir, base + "betas = [0, 1]\n");
    CHECK(int_betas.values.at("optimizer.betas").as_list().at(1).type() == ValueType::Float);
    CHECK(int_betas.sections.at("optimizer").get_doubles("betas") == std::vector<double>{0.0, 1.0});
    // A plugin reading a list of the wrong elements gets an error naming the key, not std::get's.
    const Config strings("data", {{"exclude", Value::list({"*.dat", 3})}});
    CHECK_THAT(error_of([&] { strings.get_strings("exclude"); }),
               Contains("data.exclude: holds 3, which is not a string"));
    CHECK_THAT(error_of([&] { strings.get_doubles("exclude"); }),
               Contains("data.exclude: holds \"*.dat\", which is not a number"));
}

TEST_CASE("an unknown key is reported with file, line, column and the nearest known key", "[config]") {
    TempDir dir;
    auto err = error_of([&] {
        resolve_text(
            dir,
            "[model]\nname = \"gpt\"\n\n[data]\nname = \"synthetic\"\n[optimizer]\nname = \"adamw\"\n  lrr = 0.1\n");
    });
    CHECK_THAT(err, Contains("exp.toml:8:3"));
    CHECK_THAT(err, Contains("unknown key 'optimizer.lrr'"));
    CHECK_THAT(err, Contains("did you mean 'lr'"));

    auto section_err =
        error_of([&] { resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"synthetic\"\n[trian]\nsteps = 3\n"); });
    CHECK_THAT(section_err, Contains("unknown section [trian]"));
    CHECK_THAT(section_err, Contains("did you mean 'train'"));
}

TEST_CASE("an unknown plugin name lists the close names", "[config]") {
    TempDir dir;
    auto err = error_of([&] { resolve_text(dir, "[model]\nname = \"gtp\"\n[data]\nname = \"synthetic\"\n"); });
    CHECK_THAT(err, Contains("exp.toml:2:1"));
    CHECK_THAT(err, Contains("no model plugin named 'gtp'"));
    CHECK_THAT(err, Contains("did you mean 'gpt'"));
}

TEST_CASE("malformed TOML is reported with file, line and column", "[config]") {
    TempDir dir;
    auto err =
        error_of([&] { host::load_experiment(dir.file("bad.toml", "[model]\nname = \"gpt\"\nn_layer = = 3\n")); });
    CHECK_THAT(err, Contains("bad.toml:3:"));
    CHECK_THAT(err, Contains("malformed TOML"));
    CHECK_THAT(error_of([&] { host::load_experiment(dir / "missing.toml"); }), Contains("no such experiment file"));
}

TEST_CASE("a UTF-8 byte-order mark at the start of a file is skipped, not a malformed character", "[config]") {
    TempDir dir;
    const auto exp = host::load_experiment(dir.file("bom.toml", std::string("\xEF\xBB\xBF") + kTinyExperiment));
    const auto plain = host::load_experiment(dir.file("plain.toml", kTinyExperiment));
    REQUIRE(exp.settings.size() == plain.settings.size());
    for (const auto& [key, setting] : plain.settings) {
        INFO(key);
        REQUIRE(exp.settings.count(key) == 1);
        CHECK(exp.settings.at(key).value == setting.value);
    }
    // Elsewhere the same bytes are still a stray character, with their place.
    auto err = error_of([&] { host::load_experiment(dir.file("mid.toml", "[model]\n\xEF\xBB\xBFname = \"gpt\"\n")); });
    CHECK_THAT(err, Contains("mid.toml:2:1"));
}

TEST_CASE("the config hash follows training settings, not where results go", "[config]") {
    TempDir dir;
    const std::string base = kTinyExperiment;
    auto a = resolve_text(dir, base);
    auto b = resolve_text(dir, "name = \"other name\"\n" + base);
    auto exp = host::load_experiment(dir.file("x.toml", base));
    host::apply_override(exp, "results.db=/tmp/elsewhere.db");
    auto& reg = registry();
    auto c = host::resolve(
        exp, [&](PluginKind k, const std::string& n) { return reg.find(k, n); },
        [&](PluginKind k) { return reg.names(k); });
    host::apply_override(exp, "train.threads=1");  // a resource: a sweep hands out cores
    auto e = host::resolve(
        exp, [&](PluginKind k, const std::string& n) { return reg.find(k, n); },
        [&](PluginKind k) { return reg.names(k); });
    host::apply_override(exp, "optimizer.lr=0.5");
    auto d = host::resolve(
        exp, [&](PluginKind k, const std::string& n) { return reg.find(k, n); },
        [&](PluginKind k) { return reg.names(k); });
    CHECK(a.hash == b.hash);
    CHECK(a.hash == c.hash);
    CHECK(a.hash == e.hash);
    CHECK(a.hash != d.hash);
    CHECK(a.hash.size() == 16);
}

TEST_CASE("values print as TOML that reads back identically", "[config]") {
    for (const Value& v :
         {Value(3e-4), Value(0.1), Value(int64_t{7}), Value(true), Value("a \"q\""), Value::list({1, 2.5, "x"})}) {
        CHECK(host::parse_value(v.to_text(), "test") == v);
    }
    CHECK(Value(3e-4).to_text() == "0.0003");
}

// tests/configs/malformed/: each file extends a valid base.toml and breaks one thing; its first
// line says `# expect: TEXT`. `plexus run` must fail cleanly (an exit code, not a signal) and
// print TEXT, which names the file and line where the TOML has one.
TEST_CASE("a corpus of malformed experiments: each is refused with its own message", "[config]") {
    const fs::path corpus = fs::path(PLEXUS_SOURCE_DIR) / "tests" / "configs" / "malformed";
    TempDir dir;
    int checked = 0;
    for (const auto& entry : fs::directory_iterator(corpus)) {
        if (entry.path().extension() != ".toml" || entry.path().filename() == "base.toml") continue;
        std::ifstream in(entry.path());
        std::string first;
        std::getline(in, first);
        REQUIRE(first.rfind("# expect: ", 0) == 0);
        const std::string expect = first.substr(10);
        const auto res = run_command("cd '" + corpus.string() + "' && " + PLEXUS_BINARY + " run " +
                                     entry.path().filename().string() + " --db " + (dir / "r.db"));
        INFO(entry.path().filename() << "\n" << res.output);
        CHECK(res.exit_code >= 1);
        CHECK(res.exit_code < 128);  // refused, not crashed
        CHECK(res.output.rfind("error: ", 0) == 0);
        CHECK_THAT(res.output, Contains(expect));
        ++checked;
    }
    CHECK(checked >= 28);
}

TEST_CASE("a key's declared choices and range: what each refuses, and how it says so", "[config]") {
    const auto stage = ConfigKey("stage", 1, "").between(1, 3);
    CHECK(stage.refusal("strategy.stage", Value(2)).empty());
    CHECK(stage.refusal("strategy.stage", Value(1)).empty());  // bounds included
    CHECK(stage.refusal("strategy.stage", Value(0)) == "strategy.stage = 0 must lie in [1, 3]");
    const auto clip = ConfigKey("grad_clip", 1.0, "").at_least(0);
    CHECK(clip.refusal("train.grad_clip", Value(-0.5)) == "train.grad_clip = -0.5 must be >= 0");
    CHECK(clip.refusal("train.grad_clip", Value(std::nan(""))) == "train.grad_clip = nan must be a finite number");
    CHECK(clip.refusal("train.grad_clip", Value(HUGE_VAL)) == "train.grad_clip = inf must be a finite number");
    const auto upper = ConfigKey("p", 0.5, "").at_most(1e-3);
    CHECK(upper.refusal("x.p", Value(0.5)) == "x.p = 0.5 must be <= 0.001");
    const auto mode = ConfigKey("mode", "a", "").one_of({"a", "b", "c"});
    CHECK(mode.refusal("launch.mode", Value("b")).empty());
    CHECK(mode.refusal("launch.mode", Value("d")) == "launch.mode = \"d\" is unknown (use \"a\", \"b\" or \"c\")");
    CHECK(ConfigKey("free", "x", "").refusal("k", Value("anything")).empty());  // no choices: any string
    CHECK(ConfigKey("n", 3, "").refusal("k", Value(-7)).empty());               // no range: any number
}
