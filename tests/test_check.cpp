// `plexus check` (host/tools/conformance.hpp): every shipped plugin passes it, and each check
// catches its own breakage in a plugin that breaks one promise on request (tests/plugins/broken).
#include <catch2/catch.hpp>
#include <cstdint>
#include <fstream>
#include <plexus/plexus.hpp>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// An llm.c token shard: a header of 256 int32 (magic 20240520, version 1, count), then uint16 tokens.
std::string write_shard(const TempDir& dir, int64_t count) {
    const auto path = dir / "tokens.bin";
    std::ofstream out(path, std::ios::binary);
    std::vector<int32_t> header(256, 0);
    header[0] = 20240520, header[1] = 1, header[2] = static_cast<int32_t>(count);
    out.write(reinterpret_cast<const char*>(header.data()), 256 * 4);
    for (int64_t i = 0; i < count; ++i) {
        const uint16_t token = static_cast<uint16_t>((i * 7919) % 1000);
        out.write(reinterpret_cast<const char*>(&token), 2);
    }
    return path;
}

}  // namespace

TEST_CASE("plexus check: every shipped plugin passes its kind's checks", "[check]") {
    const auto res = run_plexus("check", "env -u PLEXUS_PLUGIN_PATH");
    INFO(res.output);
    CHECK(res.exit_code == 0);
    CHECK_THAT(res.output, !Contains("FAIL"));
    // Every plugin the registry loads was checked (no list kept by hand here).
    for (const auto& l : registry().loaded()) {
        const std::string who = std::string(to_string(l.descriptor->kind)) + " " + l.descriptor->name + ": ";
        CHECK_THAT(res.output, Contains("ok    " + who + "descriptor complete"));
    }
    CHECK_THAT(res.output, Contains("ok    strategy ddp: evaluate() changes no state"));
    CHECK_THAT(res.output, Contains("ok    comm allreduce: bytes are the transport's"));
    // The token dataset needs a shard file, and says so instead of failing.
    CHECK_THAT(res.output, Contains("skip  dataset tokens: runtime checks") && Contains("--set data.train="));
}

TEST_CASE("plexus check: the token dataset passes given a shard", "[check]") {
    TempDir dir;
    const auto res = run_plexus("check tokens --set data.train=" + write_shard(dir, 50000));
    INFO(res.output);
    CHECK(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("ok    dataset tokens: shard r of W is rows [r b, (r+1) b) of the global batch"));
}

TEST_CASE("plexus check: each check catches its own breakage", "[check]") {
    const std::string env = "PLEXUS_PLUGIN_PATH=" + std::string(PLEXUS_BROKEN_PLUGIN_DIR);
    struct Case {
        const char* kind;
        const char* section;
        const char* breaks;
        const char* check;
    };
    const Case cases[] = {
        {"strategy", "strategy", "nondeterministic", "two runs from one seed are identical"},
        {"strategy", "strategy", "evaluate_mutates", "evaluate() changes no state"},
        {"strategy", "strategy", "evaluates_elsewhere",
         "evaluates the model it trains (at initialization, as one rank does)"},
        {"strategy", "strategy", "load_ignored", "state() round-trips through load_state()"},
        {"strategy", "strategy", "state_incomplete", "exact_resume(): a resumed run continues bit for bit"},
        {"optimizer", "optimizer", "lr0_moves", "lr_scale 0 changes nothing"},
        {"optimizer", "optimizer", "state_lossy", "state() and load_state() continue identically"},
        {"optimizer", "optimizer", "scale_ignored", "step_scaled(g, s) updates as step(s * g)"},
        {"comm", "comm", "inexact", "on 4 ranks the mean of identical tensors is the tensor"},
        {"comm", "comm", "bytes_unaccounted", "bytes are the transport's, logical bytes a ring all-reduce's"},
        {"comm", "comm", "logical_bytes", "bytes are the transport's, logical bytes a ring all-reduce's"},
        {"dataset", "data", "nondeterministic", "the same spec gives the same windows"},
        {"dataset", "data", "shards_overlap", "shard r of W is rows [r b, (r+1) b) of the global batch"},
        {"model", "model", "bad_shape", "logits [B, T, V] and a finite loss"},
        {"model", "model", "no_flops", "FLOPs per token reported"},
        {"model", "model", "random_init", "the same seed gives the same initial parameters"},
        {"model", "model", "mup_missing_role", "μP: a role for every parameter, some hidden"},
        {"model", "model", "mup_no_hidden", "μP: a role for every parameter, some hidden"},
        {"model", "model", "sp_roles", "SP: no μP roles"},
    };
    for (const auto& c : cases) {
        const std::string plugin = std::string("broken_") + c.kind;
        const auto res = run_plexus("check " + plugin + " --set " + c.section + ".breaks=" + c.breaks, env);
        INFO(plugin << " breaks " << c.breaks << "\n" << res.output);
        CHECK(res.exit_code == 1);
        CHECK_THAT(res.output, Contains("FAIL  " + std::string(c.kind) + " " + plugin + ": " + c.check));
    }
    // Unbroken, each passes.
    for (const char* kind : {"strategy", "optimizer", "comm", "dataset", "model"}) {
        const auto res = run_plexus(std::string("check broken_") + kind, env);
        INFO(kind << "\n" << res.output);
        CHECK(res.exit_code == 0);
        CHECK_THAT(res.output, !Contains("FAIL"));
    }
}

TEST_CASE("an error thrown inside a plugin call names the plugin and the call", "[check][bad-input]") {
    // A comm scheme whose state() throws as LibTorch does: DDP asks for it when the run ends
    // (the state hash), and the message must lead back to the scheme, through the strategy.
    TempDir dir;
    const auto file = dir.file("e.toml", std::string(kTinyExperiment) +
                                             "[strategy]\nname = \"ddp\"\n[comm]\nname = \"broken_comm\"\n"
                                             "breaks = \"state\"\n");
    const auto res = run_plexus("run " + file + " --db " + dir / "r.db" + " --set train.steps=2",
                                "PLEXUS_PLUGIN_PATH=" + std::string(PLEXUS_BROKEN_PLUGIN_DIR));
    INFO(res.output);
    CHECK(res.exit_code != 0);
    CHECK_THAT(res.output, Contains("strategy 'ddp', state(): comm scheme 'broken_comm', state(): Expected a proper "
                                    "Tensor but got None"));
}
