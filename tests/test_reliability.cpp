// Reliability: checkpoints and exact resume, runs killed at any moment, failures contained to
// their run, damaged checkpoints refused.
#include <catch2/catch.hpp>
#include <cstring>

#include <random>
#include <sstream>

#include <plexus/error.hpp>
#include <torch/torch.h>

#include "runtime/checkpoint.hpp"
#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// A small GPT on synthetic tokens: a few hundred steps in a second or two, checkpoints every 5.
std::string experiment(const std::string& strategy, const std::string& launch, int steps,
                       const std::string& strategy_keys = "") {
    return "name = \"reliable\"\n"
           "[model]\nname = \"gpt\"\nn_layer = 2\nd_model = 32\nn_head = 2\n"
           "[data]\nname = \"synthetic\"\n"
           "[optimizer]\nname = \"adamw\"\nlr = 3e-3\n"
           "[strategy]\nname = \"" +
           strategy + "\"\n" + strategy_keys + "[train]\nsteps = " + std::to_string(steps) +
           "\nbatch_size = 4\nseq_len = 16\neval_every = 40\nlog_every = 10\nlr_schedule = \"cosine\"\nthreads = 1\n"
           "[checkpoint]\nevery_steps = 5\n" +
           launch;
}

// Every row of one metric of every rank, as text that is equal only when the numbers are
// bit-identical (17 significant digits), simulated times included.
std::string metric_dump(const std::string& db, const std::string& key) {
    host::ResultsStore store(db);
    const int64_t run = store.list_runs(1).at(0).id;
    std::ostringstream out;
    out.precision(17);
    for (int rank = 0; rank < 8; ++rank)
        for (const auto& m : store.metric_rows(run, key, rank))
            out << rank << " " << m.step << " " << m.value << " " << (m.sim_time ? *m.sim_time : -1.0) << "\n";
    return out.str();
}

std::map<std::string, std::string> summaries_of(const std::string& db) {
    host::ResultsStore store(db);
    std::map<std::string, std::string> out;
    for (const auto& [rank, key, value, text] : store.summaries(store.list_runs(1).at(0).id)) {
        std::ostringstream v;
        v.precision(17);
        if (value) v << *value;
        out[std::to_string(rank) + "." + key] = value ? v.str() : text;
    }
    return out;
}

// The numeric summaries only (not a text that happens to start with a digit: a state hash such
// as "3e5107..." would read as an out-of-range number).
std::map<std::string, double> numbers_of(const std::string& db) {
    host::ResultsStore store(db);
    std::map<std::string, double> out;
    for (const auto& [rank, key, value, text] : store.summaries(store.list_runs(1).at(0).id))
        if (value) out[std::to_string(rank) + "." + key] = *value;
    return out;
}

// Starts `plexus ARGS` in a session of its own, waits until the run's first checkpoint is
// complete, then sends `signal` to every process of the session.
CommandResult start_and_signal(const std::string& args, const std::string& checkpoints, const std::string& signal) {
    return run_command("bash -c 'setsid " + std::string(PLEXUS_BINARY) + " " + args + " >/dev/null 2>&1 & pid=$!; " +
                       "for i in $(seq 3000); do ls " + checkpoints +
                       "/*/COMPLETE >/dev/null 2>&1 && break; sleep 0.01; done; " + "kill -" + signal +
                       " -- -$pid; wait $pid'");
}

// Runs `text` (an experiment of `steps` steps checkpointing every 5) whole, then again killed
// with SIGKILL after its first checkpoint and resumed, and checks that the two record the same
// bits: losses, evaluations, state hash, traffic, simulated times.
void check_killed_run_resumes_exactly(const std::string& text, int steps) {
    TempDir dir;
    const auto file = dir.file("exp.toml", text);
    const auto whole = run_plexus("run " + file + " --db " + dir / "whole.db");
    INFO(whole.output);
    REQUIRE(whole.exit_code == 0);

    const auto killed = start_and_signal("run " + file + " --db " + dir / "b.db", dir / "checkpoints/b/run1", "KILL");
    host::ResultsStore store(dir / "b.db");
    REQUIRE(store.get_run(1)->status == "running");  // it could record nothing
    const auto partial = store.metric_series(1, "loss");
    REQUIRE(partial.size() < static_cast<size_t>(steps));  // killed before the end

    const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("resumed from the checkpoint at step"));
    CHECK(numbers_of(dir / "b.db")["0.exact_resume"] == 1);  // the strategy said so; this checks it
    CHECK(store.get_run(1)->status == "finished");
    CHECK(store.list_runs(10).size() == 1);  // the same run, continued

    CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
    CHECK(metric_dump(dir / "b.db", "eval_loss") == metric_dump(dir / "whole.db", "eval_loss"));
    CHECK(store.metric_series(1, "loss").size() == static_cast<size_t>(steps));
    auto a = summaries_of(dir / "whole.db"), b = summaries_of(dir / "b.db");
    for (const char* key : {"0.state_hash", "0.final_eval_loss", "0.tokens", "0.steps", "0.bytes_sent", "1.bytes_sent"})
        CHECK(b[key] == a[key]);
    if (text.find("mode = \"sim\"") != std::string::npos) {
        CHECK(b["0.sim_time"] == a["0.sim_time"]);  // the simulated clock continued where it was
        CHECK(b["3.sim_time"] == a["3.sim_time"]);
    }
    CHECK_FALSE(fs::exists(dir / "checkpoints/b/run1"));  // a finished run's checkpoints are gone
}

}  // namespace

TEST_CASE("a run killed with SIGKILL resumes from its checkpoint bit-identical to an uninterrupted run",
          "[reliability]") {
    struct Case {
        const char* name;
        std::string strategy, launch;
        int steps;
        std::string strategy_keys;
    };
    const std::vector<Case> cases = {
        {"single", "single", "", 300},
        {"ddp over gloo, 2 processes", "ddp", "[launch]\nmode = \"local\"\nranks = 2\n", 100},
        {"simulated cluster, 4 ranks with jitter", "ddp", "[launch]\nmode = \"sim\"\nranks = 4\n[sim]\njitter = 0.1\n",
         100},
        {"ddp with powersgd (error feedback), 4 simulated ranks", "ddp",
         "[comm]\nname = \"powersgd\"\n[launch]\nmode = \"sim\"\nranks = 4\n", 100},
        {"gossip, 4 simulated ranks", "gossip", "[launch]\nmode = \"sim\"\nranks = 4\n", 100},
        {"a2cid2, 4 simulated ranks", "a2cid2", "[launch]\nmode = \"sim\"\nranks = 4\n", 100},
        {"dadao, 4 simulated ranks", "dadao", "[launch]\nmode = \"sim\"\nranks = 4\n", 100},
        {"acco, 4 simulated ranks (a round per step, G and the look-ahead carried over)", "acco",
         "[launch]\nmode = \"sim\"\nranks = 4\n[sim]\njitter = 0.1\n", 100},
        {"async SGD with a staleness bound, 4 simulated ranks with jitter", "async_sgd",
         "[launch]\nmode = \"sim\"\nranks = 4\n[sim]\njitter = 0.1\n", 100,
         "staleness_bound = 1\nstaleness_lr = \"inverse\"\n"},
        {"zero stage 3, 4 simulated ranks", "zero", "[launch]\nmode = \"sim\"\nranks = 4\n", 100, "stage = 3\n"},
        {"zero stage 1, its all-gather in flight between steps, 4 simulated ranks", "zero",
         "[launch]\nmode = \"sim\"\nranks = 4\n", 100, "stage = 1\n"},
        {"pipeline 1F1B, 4 simulated stages", "pipeline", "[launch]\nmode = \"sim\"\nranks = 4\n", 100},
        {"tensor parallel, 2 simulated ranks", "tensor_parallel", "[launch]\nmode = \"sim\"\nranks = 2\n", 100},
        {"diloco with powersgd, 4 simulated ranks (killed inside an outer round)", "diloco",
         "[launch]\nmode = \"sim\"\nranks = 4\n[comm]\nname = \"powersgd\"\n"
         "[outer_optimizer]\nname = \"sgd\"\nlr = 0.7\nmomentum = 0.9\nnesterov = true\n",
         100, "inner_steps = 7\n"},
        {"streaming diloco, 3 fragments, 4 simulated ranks", "diloco",
         "[launch]\nmode = \"sim\"\nranks = 4\n"
         "[outer_optimizer]\nname = \"sgd\"\nlr = 0.7\nmomentum = 0.9\nnesterov = true\n",
         100, "inner_steps = 9\nfragments = 3\n"},
    };
    for (const auto& c : cases) DYNAMIC_SECTION(c.name) {
            check_killed_run_resumes_exactly(experiment(c.strategy, c.launch, c.steps, c.strategy_keys), c.steps);
        }
}

TEST_CASE("PETRA resumes bit-identical: kept inputs, accumulated gradients, messages on the way, a re-balanced cut",
          "[reliability]") {
    // A reversible GPT (embedding, 4 reversible blocks, head) over 4 simulated stages, 2
    // micro-batches per step of a stage (delayed_stash: stashed weights kept too). Rank 3 is slow, so the re-balancing every 20
    // micro-batches moves blocks; the run is killed at step 47 (after the second re-balancing,
    // the last checkpoint at 45), so the resumed run must take the cut from the checkpoint.
    const std::string reversible = "name = \"revgpt\"\nn_layer = 4\n", gpt = "name = \"gpt\"\nn_layer = 2\n";
    const std::string slow = "[[faults]]\nkind = \"slow\"\nrank = 3\nfactor = 3.0\nstep = 0\n";
    const std::string kill = "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 47\n";
    for (const std::string method : {"petra", "delayed_recompute", "delayed", "delayed_stash"}) {
        DYNAMIC_SECTION(method) {
            // The simulated device is pinned: on the default "measured" one the cut each
            // re-balancing picks depends on this machine's measured peak (compute against the
            // fixed network), which moves by 10% from run to run.
            const std::string device = "[sim]\ndevice = \"custom\"\ndevice_flops = 4e11\nefficiency = 0.5\n";
            auto text = experiment("petra", "[launch]\nmode = \"sim\"\nranks = 4\n" + device + slow, 120);
            text.replace(text.find(gpt), gpt.size(), reversible);
            const std::string petra = "name = \"petra\"\n";
            text.replace(text.find(petra), petra.size(),
                         petra + "method = \"" + method +
                             "\"\naccumulate = 2\ncheck_every = 3\nrebalance_every = 20\npartition = \"count\"\n");
            TempDir dir;
            const auto whole = run_plexus("run " + dir.file("whole.toml", text) + " --db " + dir / "whole.db");
            INFO(whole.output);
            REQUIRE(whole.exit_code == 0);
            CHECK_THAT(whole.output, Contains("re-balanced at micro-batch 40: 0..2 | 3..3 | 4..4 | 5..5"));

            const auto killed = run_plexus("run " + dir.file("killed.toml", text + kill) + " --db " + dir / "b.db");
            INFO(killed.output);
            CHECK_THAT(killed.output, Contains("rank 1 killed at step 47"));
            const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
            INFO(resumed.output);
            REQUIRE(resumed.exit_code == 0);
            CHECK_THAT(resumed.output, Contains("resumed from the checkpoint at step 45"));
            if (method == "delayed") {
                // Its kept forward graphs are run again at the checkpoint's weights: the same up
                // to the checkpoint, close after it, and it says it is not exact.
                CHECK(numbers_of(dir / "b.db")["0.exact_resume"] == 0);
                host::ResultsStore a(dir / "whole.db"), b(dir / "b.db");
                const auto want = a.metric_series(1, "loss"), got = b.metric_series(1, "loss");
                REQUIRE(got.size() == want.size());
                for (size_t i = 0; i < 45; ++i) CHECK(got[i].second == want[i].second);
                bool differs = false;
                for (size_t i = 45; i < got.size(); ++i) differs = differs || got[i].second != want[i].second;
                CHECK(differs);  // as it says: were it exact, it should say so
                CHECK(std::abs(numbers_of(dir / "b.db")["0.final_eval_loss"] -
                               numbers_of(dir / "whole.db")["0.final_eval_loss"]) < 0.1);
                return;
            }
            CHECK(numbers_of(dir / "b.db")["0.exact_resume"] == 1);
            CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
            CHECK(metric_dump(dir / "b.db", "eval_loss") == metric_dump(dir / "whole.db", "eval_loss"));
            CHECK(metric_dump(dir / "b.db", "petra/stage1/reconstruction_error") ==
                  metric_dump(dir / "whole.db", "petra/stage1/reconstruction_error"));
            auto a = summaries_of(dir / "whole.db"), b = summaries_of(dir / "b.db");
            for (const char* key : {"0.state_hash", "0.final_eval_loss", "0.tokens", "0.sim_time", "3.sim_time"})
                CHECK(b[key] == a[key]);
        }
    }
}

TEST_CASE("PETRA on 4 Gloo processes resumes bit-identical after a worker is killed", "[reliability]") {
    const std::string gpt = "name = \"gpt\"\nn_layer = 2\n", petra = "name = \"petra\"\n";
    auto text = experiment("petra", "[launch]\nmode = \"local\"\nranks = 4\n", 40);
    text.replace(text.find(gpt), gpt.size(), "name = \"revgpt\"\nn_layer = 4\n");
    text.replace(text.find(petra), petra.size(), petra + "accumulate = 2\ncheck_every = 3\npartition = \"count\"\n");
    TempDir dir;
    REQUIRE(run_plexus("run " + dir.file("whole.toml", text) + " --db " + dir / "whole.db").exit_code == 0);
    const auto killed =
        run_plexus("run " + dir.file("killed.toml", text + "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 27\n") +
                   " --db " + dir / "b.db");
    CHECK_THAT(killed.output, Contains("rank 1 exited with code 137"));
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("from its checkpoint at step 25"));
    CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
    CHECK(metric_dump(dir / "b.db", "eval_loss") == metric_dump(dir / "whole.db", "eval_loss"));
    CHECK(summaries_of(dir / "b.db")["0.state_hash"] == summaries_of(dir / "whole.db")["0.state_hash"]);
}

TEST_CASE("Ctrl-C checkpoints where the run stops, and --resume continues it exactly", "[reliability]") {
    TempDir dir;
    const auto file = dir.file("exp.toml", experiment("single", "", 400));
    REQUIRE(run_plexus("run " + file + " --db " + dir / "whole.db").exit_code == 0);
    start_and_signal("run " + file + " --db " + dir / "b.db", dir / "checkpoints/b/run1", "INT");
    host::ResultsStore store(dir / "b.db");
    const auto run = store.get_run(1);
    REQUIRE(run->status == "interrupted");
    // The checkpoint is at the step it stopped at: nothing recorded is computed twice.
    const auto loss = store.metric_series(1, "loss");
    REQUIRE(!loss.empty());
    double checkpoint_step = -1;
    for (const auto& [rank, key, value, text] : store.summaries(1))
        if (key == "checkpoint_step") checkpoint_step = *value;
    CHECK(checkpoint_step == static_cast<double>(loss.back().first + 1));  // metric steps count from 0
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
    // A finished run is not resumed again.
    const auto again = run_plexus("run --resume 1 --db " + dir / "b.db");
    CHECK(again.exit_code != 0);
    CHECK_THAT(again.output, Contains("run 1 has already finished"));
}

TEST_CASE("a resumed run refuses a changed experiment and a checkpoint of another run", "[reliability]") {
    TempDir dir;
    const auto file = dir.file("exp.toml", experiment("single", "", 400));
    start_and_signal("run " + file + " --db " + dir / "b.db", dir / "checkpoints/b/run1", "KILL");
    // The file changed since: another config hash.
    const auto text = experiment("single", "", 400);
    dir.file("exp.toml",
             text.substr(0, text.find("lr = 3e-3")) + "lr = 1e-3" + text.substr(text.find("lr = 3e-3") + 9));
    auto changed = run_plexus("run --resume 1 --db " + dir / "b.db");
    CHECK(changed.exit_code != 0);
    CHECK_THAT(changed.output, Contains("was recorded with config hash"));
    CHECK_THAT(changed.output, Contains("the experiment (or a file it extends) changed"));
    // The file gone: the hint says where its recorded text is.
    fs::remove(file);
    auto gone = run_plexus("run --resume 1 --db " + dir / "b.db");
    CHECK(gone.exit_code == 1);
    CHECK_THAT(gone.output, Contains("run 1 started from " + file + ", which is gone"));
    CHECK_THAT(gone.output, Contains("sqlite3 " + dir / "b.db" + " \"select toml from run where id = 1\" > " + file));
    dir.file("exp.toml", text);

    // A checkpoint file of another run put in this one's place: refused, not loaded.
    const auto other = dir.file("other.toml", experiment("single", "", 400) + "[sim]\njitter = 0.5\n");
    start_and_signal("run " + other + " --db " + dir / "c.db", dir / "checkpoints/c/run1", "KILL");
    const host::RunCheckpoints mine(dir / "checkpoints/b", 1), theirs(dir / "checkpoints/c", 1);
    REQUIRE(mine.latest());
    REQUIRE(theirs.latest());
    fs::remove_all(mine.dir());
    fs::create_directories(mine.dir());
    fs::copy(theirs.dir(), mine.dir(), fs::copy_options::recursive);
    auto foreign = run_plexus("run --resume 1 --db " + dir / "b.db");
    CHECK(foreign.exit_code != 0);
    CHECK_THAT(foreign.output, Contains("belongs to another run"));
    host::ResultsStore store(dir / "b.db");
    CHECK(store.get_run(1)->status == "failed");  // the refusal is recorded on the run
}

TEST_CASE("a damaged newest checkpoint: resume falls back to the older one, or starts from a step given",
          "[reliability]") {
    TempDir dir;
    const auto text = experiment("single", "", 40);
    const auto whole = run_plexus("run " + dir.file("whole.toml", text) + " --db " + dir / "whole.db");
    REQUIRE(whole.exit_code == 0);
    // Killed at step 17: complete checkpoints at 10 and 15 (keep = 2); then step 15's file damaged.
    const auto file = dir.file("killed.toml", text + "[[faults]]\nkind = \"kill\"\nrank = 0\nstep = 17\n");
    const std::string db = dir / "b.db";
    const auto killed = run_plexus("run " + file + " --db " + db);
    REQUIRE(killed.exit_code == 137);
    const fs::path step15 = dir / "checkpoints/b/run1/step15/rank0.ckpt";
    REQUIRE(fs::exists(step15));
    REQUIRE(fs::exists(dir / "checkpoints/b/run1/step10/COMPLETE"));
    {
        std::fstream f(step15, std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(static_cast<std::streamoff>(fs::file_size(step15) / 2));
        f.put('\x5a');
    }
    host::ResultsStore store(db);
    const auto curve = store.metric_series(1, "loss");

    // A step that has no checkpoint, and the damaged one, asked for by name: refused, nothing
    // deleted, the available steps listed.
    for (const std::string step : {"12", "15"}) {
        const auto r = run_plexus("run --resume 1 --from-step " + step + " --db " + db);
        INFO(r.output);
        CHECK(r.exit_code == 1);
        CHECK_THAT(r.output, Contains("--from-step " + step) && Contains("by step: 10, 15"));
        CHECK(store.metric_series(1, "loss") == curve);
    }
    const auto resumed = run_plexus("run --resume 1 --db " + db);
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("the checkpoint at step 15 is damaged") &&
                                   Contains("resuming run 1 from its checkpoint at step 10"));
    CHECK(metric_dump(db, "loss") == metric_dump(dir / "whole.db", "loss"));
    CHECK(summaries_of(db)["0.state_hash"] == summaries_of(dir / "whole.db")["0.state_hash"]);
}

TEST_CASE("a checkpoint file cut short or damaged anywhere is refused whole", "[reliability]") {
    TempDir dir;
    host::RankCheckpoint c;
    c.config_hash = "0123456789abcdef";
    c.run_id = 7;
    c.step = 40;
    c.rank = 1;
    c.world = 2;
    c.numbers = {{"tokens", 2560}, {"last_loss", 3.14159265358979}};
    c.texts = {{"clock", "12.5 0 42"}};
    torch::manual_seed(0);
    c.tensors = {{"strategy.model.w", torch::randn({5, 3})},
                 {"strategy.optimizer.step", torch::tensor(int64_t{40})},
                 {"rng.cpu", torch::randint(0, 255, {16}, torch::kUInt8)}};
    const fs::path file = dir / "rank1.ckpt";
    host::write_rank_checkpoint(file, c);
    CHECK_FALSE(fs::exists(file.string() + ".tmp"));

    const auto back = host::read_rank_checkpoint(file);
    CHECK(back.config_hash == c.config_hash);
    CHECK(back.step == 40);
    CHECK(back.rank == 1);
    CHECK(back.world == 2);
    CHECK(back.numbers == c.numbers);
    CHECK(back.texts == c.texts);
    REQUIRE(back.tensors.size() == 3);
    for (size_t i = 0; i < 3; ++i) {
        CHECK(back.tensors[i].first == c.tensors[i].first);
        CHECK(back.tensors[i].second.scalar_type() == c.tensors[i].second.scalar_type());
        CHECK(torch::equal(back.tensors[i].second, c.tensors[i].second));
    }

    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), {});
    const fs::path bad = dir / "bad.ckpt";
    int refused = 0;
    // Every truncation.
    for (size_t n = 0; n < bytes.size(); ++n) {
        std::ofstream(bad, std::ios::binary | std::ios::trunc) << bytes.substr(0, n);
        try {
            host::read_rank_checkpoint(bad);
        } catch (const Error& e) { ++refused; }
    }
    CHECK(refused == static_cast<int>(bytes.size()));
    // Every single-byte change, past the magic number (which names another kind of file).
    refused = 0;
    for (size_t i = 8; i < bytes.size(); ++i) {
        std::string changed = bytes;
        changed[i] = static_cast<char>(changed[i] ^ 0x10);
        std::ofstream(bad, std::ios::binary | std::ios::trunc) << changed;
        try {
            host::read_rank_checkpoint(bad);
        } catch (const Error& e) {
            ++refused;
            if (i >= 12) CHECK_THAT(std::string(e.what()), Contains("is damaged"));
        }
    }
    CHECK(refused == static_cast<int>(bytes.size()) - 8);
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << "this is some other file, long enough to have a header";
    CHECK_THROWS_WITH(host::read_rank_checkpoint(bad), Contains("is not a plexus checkpoint"));
}

TEST_CASE("a checkpoint of format 1 (an FNV-1a checksum) is still read, and the version picks the checksum",
          "[reliability]") {
    TempDir dir;
    host::RankCheckpoint c;
    c.config_hash = "00ff00ff00ff00ff";
    c.step = 3;
    c.numbers = {{"tokens", 96}};
    c.tensors = {{"strategy.model.w", torch::arange(12, torch::kFloat32).view({3, 4})}};
    const fs::path file = dir / "v2.ckpt";
    host::write_rank_checkpoint(file, c);
    std::ifstream in(file, std::ios::binary);
    const std::string v2((std::istreambuf_iterator<char>(in)), {});
    // Layout: 8 bytes of magic, a uint32 version, the body, its uint64 checksum.
    uint32_t version = 0;
    std::memcpy(&version, v2.data() + 8, 4);
    CHECK(version == 2);
    const std::string body = v2.substr(12, v2.size() - 20);
    uint64_t fnv = 1469598103934665603ULL;  // format 1's checksum, computed here independently
    for (unsigned char b : body) fnv = (fnv ^ b) * 1099511628211ULL;
    uint64_t stored = 0;
    std::memcpy(&stored, v2.data() + v2.size() - 8, 8);
    CHECK(stored != fnv);  // format 2 does not checksum with FNV-1a

    auto with = [&](uint32_t v, uint64_t checksum) {
        std::string bytes = v2;
        std::memcpy(bytes.data() + 8, &v, 4);
        std::memcpy(bytes.data() + bytes.size() - 8, &checksum, 8);
        const fs::path out = dir / ("v" + std::to_string(v) + "_" + std::to_string(checksum) + ".ckpt");
        std::ofstream(out, std::ios::binary) << bytes;
        return out;
    };
    const auto old = host::read_rank_checkpoint(with(1, fnv));
    CHECK(old.config_hash == c.config_hash);
    CHECK(old.numbers == c.numbers);
    REQUIRE(old.tensors.size() == 1);
    CHECK(torch::equal(old.tensors[0].second, c.tensors[0].second));
    CHECK_THROWS_WITH(host::read_rank_checkpoint(with(1, stored)), Contains("checksum does not match"));
    CHECK_THROWS_WITH(host::read_rank_checkpoint(with(3, stored)), Contains("format version 3") && Contains("1 to 2"));
}

TEST_CASE("a checkpoint the disk has no room for leaves the run going and no partial file", "[reliability]") {
    TempDir dir;
    // A file-size limit makes every write past 1 MiB fail with EFBIG, as a full disk fails with
    // ENOSPC: the checkpoints (about 1.5 MB) do not fit, the database does.
    auto text = experiment("single", "", 30);
    text.replace(text.find("d_model = 32"), 12, "d_model = 96");
    const auto file = dir.file("exp.toml", text);
    const auto res = run_command("sh -c \"trap '' XFSZ; ulimit -f 2048; exec " + std::string(PLEXUS_BINARY) + " run " +
                                 file + " --db " + dir / "r.db" + "\"");
    INFO(res.output);
    CHECK(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("no checkpoint at step 5"));
    CHECK_THAT(res.output, Contains("File too large"));
    host::ResultsStore store(dir / "r.db");
    CHECK(store.get_run(1)->status == "finished");
    CHECK(store.metric_series(1, "loss").size() == 30);
    int leftovers = 0;
    if (fs::exists(dir / "checkpoints"))
        for (const auto& e : fs::recursive_directory_iterator(dir / "checkpoints"))
            if (e.path().extension() == ".tmp" || e.path().extension() == ".ckpt") ++leftovers;
    CHECK(leftovers == 0);
}

TEST_CASE("a sweep contains a run that crashes, throws, leaks or hangs to that run, and records why",
          "[reliability][crash]") {
    TempDir dir;
    const auto file = dir.file(
        "sweep.toml", "name = \"misbehave\"\nplugin_path = [\"" + std::string(PLEXUS_TEST_PLUGIN_DIR) +
                          "\"]\n[model]\nname = \"misbehaving\"\n[data]\nname = \"synthetic\"\n"
                          "[optimizer]\nname = \"sgd\"\nlr = 0.1\n"
                          "[train]\nsteps = 40\nbatch_size = 2\nseq_len = 8\nlog_every = 1\n"
                          "[limits]\nwall_minutes = 0.1\nmemory_gb = 0.6\n"
                          "[grid]\n\"model.action\" = [\"segfault\", \"throw\", \"leak\", \"hang\", \"none\"]\n");
    const auto res =
        run_plexus("sweep " + file + " --db " + dir / "r.db" + " -j 2 --progress lines --allow-plugin-path");
    INFO(res.output);
    CHECK(res.exit_code == 1);  // some failed
    CHECK_THAT(res.output, Contains("1 finished, 4 failed"));
    host::ResultsStore store(dir / "r.db");
    std::map<std::string, host::RunInfo> by_action;
    for (const auto& run : store.list_runs(10)) by_action[store.params(run.id).at("model.action")] = run;
    REQUIRE(by_action.size() == 5);
    CHECK(by_action["none"].status == "finished");
    for (const char* a : {"segfault", "throw", "leak", "hang"}) CHECK(by_action[a].status == "failed");
    CHECK_THAT(by_action["segfault"].error, Contains("the run died of signal 11"));
    CHECK_THAT(by_action["segfault"].error, Contains("step      3 | loss"));  // its last log lines
    CHECK_THAT(by_action["throw"].error, Contains("misbehaving: thrown on purpose"));
    CHECK_THAT(by_action["leak"].error, Contains("over limits.memory_gb = 0.6"));
    CHECK_THAT(by_action["hang"].error, Contains("ran past limits.wall_minutes = 0.1"));
    // Killed with its processes: nothing of the hung run is left.
    CHECK(run_command("pgrep -f '[p]lexus run " + file + " --point 3'").exit_code != 0);
}

TEST_CASE("a sweep killed with SIGKILL at random moments loses no committed row and resumes to the same results",
          "[reliability]") {
    TempDir dir;
    auto text = experiment("single", "", 800);
    text.replace(text.find("log_every = 10"), 14, "log_every = 5");
    text.replace(text.find("every_steps = 5"), 15, "every_steps = 20");
    const auto file = dir.file("sweep.toml", text + "[grid]\n\"train.seed\" = [0, 1, 2]\n");
    REQUIRE(run_plexus("sweep " + file + " -j 2 --db " + dir / "whole.db").exit_code == 0);

    // Every metric row ever seen, by (run, rank, key, step): a later look must find each again,
    // with the same value (resumed runs recompute the same numbers).
    std::map<std::tuple<int64_t, int, std::string, int64_t>, double> seen;
    std::mt19937 rng(2026);  // the moments are seeded: a failure reproduces
    std::uniform_real_distribution<double> moment(0.0, 0.8);
    int kills = 0, changed = 0;
    for (int round = 0; round < 8; ++round) {
        // The moment counts from the first training step of this round's runs (their logs), so
        // that a slow start on a loaded machine does not turn every kill into one before it.
        char delay[16];
        std::snprintf(delay, sizeof delay, "%.2f", moment(rng));
        fs::remove_all(dir / "logs");
        const auto res =
            run_command("bash -c 'setsid " + std::string(PLEXUS_BINARY) + " sweep " + file + " -j 2 --db " +
                        dir / "b.db" + " >/dev/null 2>&1 & pid=$!; for i in $(seq 3000); do grep -qs ^step " +
                        dir / "logs/reliable" + "/*.log && break; sleep 0.01; done; sleep " + delay +
                        "; kill -KILL -- -$pid 2>/dev/null && echo killed; wait $pid'");
        if (res.output.find("killed") != std::string::npos) ++kills;
        host::ResultsStore store(dir / "b.db");
        INFO("round " << round << ", killed after " << delay << " s");
        REQUIRE(store.integrity_check() == "ok");
        for (const auto& run : store.list_runs(100))
            for (const auto& key : store.metric_keys(run.id))
                for (const auto& m : store.metric_rows(run.id, key, 0)) {
                    if (key == "tokens_per_s" || key == "step_time" || key == "mfu" || key == "memory")
                        continue;  // timings
                    const auto id = std::make_tuple(run.id, 0, key, m.step);
                    auto it = seen.find(id);
                    if (it != seen.end() && it->second != m.value) ++changed;
                    seen[id] = m.value;
                }
        bool all_finished = true;
        for (const auto& run : store.list_runs(100)) all_finished = all_finished && run.status == "finished";
        if (all_finished && store.list_runs(100).size() == 3) break;
    }
    CHECK(kills >= 3);
    CHECK(changed == 0);
    CHECK(seen.size() > 1000);
    // Whatever is left runs to the end.
    REQUIRE(run_plexus("sweep " + file + " -j 2 --db " + dir / "b.db").exit_code == 0);
    host::ResultsStore a(dir / "whole.db"), b(dir / "b.db");
    REQUIRE(b.integrity_check() == "ok");
    const auto runs = b.list_runs(100);
    CHECK(runs.size() == 3);  // every point continued in its own run, none started twice
    for (const auto& run : runs) {
        CHECK(run.status == "finished");
        int64_t twin = 0;
        for (const auto& r : a.list_runs(100))
            if (r.config_hash == run.config_hash) twin = r.id;
        REQUIRE(twin > 0);
        CHECK(b.metric_series(run.id, "loss") == a.metric_series(twin, "loss"));
        CHECK(b.metric_series(run.id, "eval_loss") == a.metric_series(twin, "eval_loss"));
        // every row seen during the kills is in the final database, unchanged
        const auto series = b.metric_series(run.id, "loss");
        const std::map<int64_t, double> final_loss(series.begin(), series.end());
        int missing = 0;
        for (const auto& [id, value] : seen)
            if (std::get<0>(id) == run.id && std::get<2>(id) == "loss" &&
                (!final_loss.count(std::get<3>(id)) || final_loss.at(std::get<3>(id)) != value))
                ++missing;
        CHECK(missing == 0);
    }
}

TEST_CASE("a run still running in another process is left to it: a second sweep skips it, --resume refuses",
          "[reliability]") {
    TempDir dir;
    const auto file = dir.file("sweep.toml", experiment("single", "", 1000000));  // runs until killed
    const std::string db = dir / "s.db";
    // The first sweep, in a session of its own, until its run's first checkpoint.
    const auto first =
        run_command("bash -c 'setsid " + std::string(PLEXUS_BINARY) + " sweep " + file + " --db " + db +
                    " >/dev/null 2>&1 & echo $!; for i in $(seq 3000); do ls " + dir / "checkpoints/s/run1" +
                    "/*/COMPLETE >/dev/null 2>&1 && break; sleep 0.01; done'");
    const std::string pid = first.output.substr(0, first.output.find('\n'));
    REQUIRE(std::atoi(pid.c_str()) > 0);
    struct KillAtExit {  // whatever this test finds, the first sweep does not outlive it
        std::string group;
        ~KillAtExit() { run_command("bash -c 'kill -KILL -- -" + group + " 2>/dev/null'"); }
    } kill_at_exit{pid};

    const auto second = run_plexus("sweep " + file + " --db " + db);
    INFO(second.output);
    CHECK(second.exit_code == 0);
    CHECK_THAT(second.output, Contains("point 0 is still running (run 1, process"));
    CHECK_THAT(second.output, Contains("on this host): left to it"));
    CHECK_THAT(second.output, Contains("nothing to run"));
    const auto resume = run_plexus("run --resume 1 --db " + db);
    CHECK(resume.exit_code != 0);
    CHECK_THAT(resume.output, Contains("run 1 is still running (process"));
    CHECK_THAT(run_plexus("sweep " + file + " --db " + db + " --dry-run").output,
               Contains("running (run 1), running elsewhere"));

    // Once its process is gone (SIGKILL: the row still says "running"), the run is resumable.
    run_command("bash -c 'kill -KILL -- -" + pid + "; sleep 0.2'");
    host::ResultsStore store(db);
    CHECK(store.get_run(1)->status == "running");
    CHECK(store.list_runs(10).size() == 1);  // the second sweep started nothing
    const auto after = run_plexus("sweep " + file + " --db " + db + " --dry-run");
    INFO(after.output);
    CHECK_THAT(after.output, Contains("running (run 1)"));
    CHECK_THAT(after.output, !Contains("running elsewhere"));
}

TEST_CASE("a database the disk has no room for stops the run with a clear error, and --resume records the rest later",
          "[reliability]") {
    TempDir dir;
    // A tiny model whose checkpoints fit under the 1 MiB file-size limit, and a database that
    // outgrows it (a row per step): the database fails first, as on a disk that fills up.
    auto text = experiment("single", "", 600);
    text.replace(text.find("n_layer = 2\nd_model = 32"), 24, "n_layer = 1\nd_model = 16");
    text.replace(text.find("log_every = 10"), 14, "log_every = 1");
    text.replace(text.find("every_steps = 5"), 15, "every_steps = 10");
    const auto file = dir.file("exp.toml", text);
    REQUIRE(run_plexus("run " + file + " --db " + dir / "whole.db").exit_code == 0);
    const auto full = run_command("sh -c \"trap '' XFSZ; ulimit -f 2048; exec " + std::string(PLEXUS_BINARY) + " run " +
                                  file + " --db " + dir / "b.db" + "\"");
    INFO(full.output);
    CHECK(full.exit_code == 1);
    CHECK_THAT(full.output, Contains("results database " + dir / "b.db" + ": disk I/O error"));
    CHECK_THAT(full.output,
               Contains("hint: `plexus run --resume 1 --db " + dir / "b.db" + "` continues run 1 from its checkpoint"));
    host::ResultsStore store(dir / "b.db");
    REQUIRE(store.integrity_check() == "ok");
    const auto before = store.metric_series(1, "loss");
    REQUIRE(before.size() > 10);
    REQUIRE(before.size() < 600);
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
}

namespace {

// Gossip or DDP on 8 simulated ranks, with [[faults]] appended.
std::string simulated(const std::string& strategy, const std::string& faults, int steps = 100) {
    return "name = \"faulty\"\n"
           "[model]\nname = \"gpt\"\nn_layer = 2\nd_model = 32\nn_head = 2\n"
           "[data]\nname = \"synthetic\"\n"
           "[optimizer]\nname = \"sgd\"\nlr = 0.1\nmomentum = 0.9\n"
           "[strategy]\nname = \"" +
           strategy +
           "\"\n"
           "[train]\nsteps = " +
           std::to_string(steps) +
           "\nbatch_size = 4\nseq_len = 16\neval_every = 50\nlog_every = 10\n"
           "[launch]\nmode = \"sim\"\nranks = 8\n" +
           faults;
}

const char* kKillRank3 = "[[faults]]\nkind = \"kill\"\nrank = 3\nstep = 20\n";

}  // namespace

TEST_CASE(
    "[[faults]] kill: gossip, async SGD and DADAO train on without the lost rank, DDP fails cleanly naming the fault",
    "[reliability][faults]") {
    TempDir dir;
    const auto clean =
        run_plexus("run " + dir.file("clean.toml", simulated("gossip", "")) + " --db " + dir / "clean.db");
    REQUIRE(clean.exit_code == 0);
    const auto gossip =
        run_plexus("run " + dir.file("g.toml", simulated("gossip", kKillRank3)) + " --db " + dir / "g.db");
    INFO(gossip.output);
    REQUIRE(gossip.exit_code == 0);
    CHECK_THAT(gossip.output, Contains("gossip: rank 3 is lost"));
    host::ResultsStore store(dir / "g.db");
    CHECK(store.get_run(1)->status == "finished");
    auto g = numbers_of(dir / "g.db"), c = numbers_of(dir / "clean.db");
    CHECK(g["0.ranks_lost"] == 1);
    CHECK(store.summary_text(1, "faults") == "kind=kill rank=3 step=20");
    CHECK(store.params(1).at("faults") == "[\"kind=kill rank=3 step=20\"]");
    // It learned about as well as without the fault (7 workers instead of 8 after step 20) ...
    CHECK(g["0.final_eval_loss"] < c["0.final_eval_loss"] + 0.1);
    CHECK(g["0.final_eval_loss"] > c["0.final_eval_loss"] - 0.1);
    // ... but not the same numbers: rank 3's neighbours averaged with others.
    CHECK(metric_dump(dir / "g.db", "loss") != metric_dump(dir / "clean.db", "loss"));
    // The lost rank has no end-of-run figures; its neighbours trained to the end.
    CHECK(g.count("3.rank_tokens") == 0);
    CHECK(g["2.rank_tokens"] == 100 * 4 * 16);

    // The parameter server goes on without a lost worker too.
    const auto async =
        run_plexus("run " + dir.file("a.toml", simulated("async_sgd", kKillRank3)) + " --db " + dir / "a.db");
    INFO(async.output);
    CHECK(async.exit_code == 0);
    CHECK_THAT(async.output, Contains("async_sgd: worker 3 is lost"));
    auto a = numbers_of(dir / "a.db");
    CHECK(a["0.ranks_lost"] == 1);
    CHECK(a["0.final_eval_loss"] < 3.0);  // it learned (from about 4.2)

    const auto dadao =
        run_plexus("run " + dir.file("dadao.toml", simulated("dadao", kKillRank3)) + " --db " + dir / "dadao.db");
    INFO(dadao.output);
    CHECK(dadao.exit_code == 0);
    CHECK_THAT(dadao.output, Contains("dadao: rank 3 is lost"));
    CHECK(numbers_of(dir / "dadao.db")["0.ranks_lost"] == 1);

    const auto ddp = run_plexus("run " + dir.file("d.toml", simulated("ddp", kKillRank3)) + " --db " + dir / "d.db");
    CHECK(ddp.exit_code == 1);
    host::ResultsStore d(dir / "d.db");
    CHECK(d.get_run(1)->status == "failed");
    CHECK_THAT(d.get_run(1)->error, Contains("rank 3 killed at step 20 by [[faults]] (kind=kill rank=3 step=20)"));
}

TEST_CASE("[[faults]] kill in a real process exits like a crash, and --resume continues past it exactly",
          "[reliability][faults]") {
    TempDir dir;
    REQUIRE(run_plexus("run " + dir.file("clean.toml", experiment("single", "", 60)) + " --db " + dir / "clean.db")
                .exit_code == 0);
    const auto file =
        dir.file("k.toml", experiment("single", "", 60) + "[[faults]]\nkind = \"kill\"\nrank = 0\nstep = 27\n");
    const auto killed = run_plexus("run " + file + " --db " + dir / "k.db");
    CHECK(killed.exit_code == 137);
    CHECK_THAT(killed.output, Contains("fault: rank 0 killed at step 27 by [[faults]]"));
    host::ResultsStore store(dir / "k.db");
    CHECK(store.get_run(1)->status == "running");  // nothing ran after it, as after a SIGKILL
    CHECK(store.metric_series(1, "loss").size() == 27);
    // The listing knows better: its process is gone.
    const auto listed = run_plexus("runs --db " + dir / "k.db"), shown = run_plexus("show 1 --db " + dir / "k.db");
    CHECK_THAT(listed.output, Contains("died") && Contains("plexus run --resume ID"));
    CHECK_THAT(listed.output, !Contains("running"));
    CHECK_THAT(shown.output, Contains("run 1 'reliable': died"));
    CHECK_THAT(run_plexus("runs --db " + dir / "clean.db").output, Contains("finished") && !Contains("died"));
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "k.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("resumed from the checkpoint at step 25"));
    CHECK(metric_dump(dir / "k.db", "loss") == metric_dump(dir / "clean.db", "loss"));

    // Two local workers over Gloo: the launcher stops the other and says which fault it was.
    const auto local = run_plexus("run " +
                                  dir.file("l.toml", experiment("ddp", "[launch]\nmode = \"local\"\nranks = 2\n", 40) +
                                                         "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 12\n") +
                                  " --db " + dir / "l.db");
    CHECK(local.exit_code == 1);
    host::ResultsStore l(dir / "l.db");
    CHECK(l.get_run(1)->status == "failed");
    CHECK_THAT(l.get_run(1)->error, Contains("rank 1 exited with code 137"));
    CHECK_THAT(l.get_run(1)->error, Contains("(killed by [[faults]]: kind=kill rank=1 step=12)"));
}

TEST_CASE("after a simulated rank is lost, no checkpoint is complete without it, and --resume continues exactly",
          "[reliability][faults]") {
    // DiLoCo communicates once per 7 steps: killed at step 36, the living ranks go on to
    // checkpoint at step 40 before the outer round of step 42 fails; that checkpoint lacks rank 1.
    const std::string keys = "inner_steps = 7\n";
    const std::string outer = "[outer_optimizer]\nname = \"sgd\"\nlr = 0.7\nmomentum = 0.9\nnesterov = true\n";
    const auto text = experiment("diloco", "[launch]\nmode = \"sim\"\nranks = 4\n" + outer, 60, keys);
    TempDir dir;
    REQUIRE(run_plexus("run " + dir.file("whole.toml", text) + " --db " + dir / "whole.db").exit_code == 0);
    const auto killed =
        run_plexus("run " + dir.file("k.toml", text + "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 36\n") + " --db " +
                   dir / "k.db");
    INFO(killed.output);
    CHECK_THAT(killed.output, Contains("no checkpoint at step 40: another rank could not write its file (or is lost)"));
    CHECK_FALSE(fs::exists(dir / "checkpoints/k/run1/step40/COMPLETE"));
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "k.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK_THAT(resumed.output, Contains("from its checkpoint at step 35"));
    CHECK(metric_dump(dir / "k.db", "loss") == metric_dump(dir / "whole.db", "loss"));
}

TEST_CASE("a resumed multi-process run whose rank lacks its checkpoint file says which rank and file",
          "[reliability]") {
    TempDir dir;
    const auto file = dir.file("l.toml", experiment("ddp", "[launch]\nmode = \"local\"\nranks = 2\n", 40) +
                                             "[[faults]]\nkind = \"kill\"\nrank = 1\nstep = 27\n");
    CHECK(run_plexus("run " + file + " --db " + dir / "l.db").exit_code == 1);
    const auto missing = dir / "checkpoints/l/run1/step25/rank1.ckpt";
    REQUIRE(fs::exists(missing));
    fs::remove(missing);  // as on a node that does not see the folder rank 0 wrote in
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "l.db");
    INFO(resumed.output);
    CHECK(resumed.exit_code == 1);
    CHECK_THAT(resumed.output, Contains("rank 1 has no checkpoint file for step 25 (" + missing + ")"));
    CHECK_THAT(resumed.output, Contains("the checkpoint folder must be the same on every node"));
    host::ResultsStore store(dir / "l.db");
    CHECK(store.get_run(1)->status == "failed");
    CHECK(store.metric_series(1, "loss").size() == 25);  // what the checkpoint covers stays recorded
}

TEST_CASE("[[faults]] slow on real processes: the slowed rank sleeps in proportion, and DDP waits for it",
          "[reliability][faults]") {
    TempDir dir;
    const auto file = dir.file("s.toml", experiment("ddp", "[launch]\nmode = \"local\"\nranks = 2\n", 40) +
                                             "[[faults]]\nkind = \"slow\"\nrank = 1\nfactor = 3.0\nstep = 10\n");
    const auto res = run_plexus("run " + file + " --db " + dir / "s.db");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("fault: rank 1 slowed 3x from step 10"));
    auto n = numbers_of(dir / "s.db");
    CHECK(n["0.fault_slow_seconds"] == 0);
    const double slept = n["1.fault_slow_seconds"];
    CHECK(slept > 0);
    // It sleeps (factor - 1) x each of its steps from step 10 on: at most 2/3 of its step time,
    // and with 30 of its 40 steps slowed about 60 / (10 + 90) = 0.6 of it (0.5 if its first
    // 10 steps were three times slower). Sleeping (f - 1) / f x instead would give 0.33.
    const double share = slept / (n["1.step_time"] * n["0.steps"]);
    CHECK(share <= 2.0 / 3.0 + 1e-9);
    CHECK(share > 0.4);
    // Every step all-reduces, so rank 0 waits for all of rank 1's sleeps but the one after its last step.
    CHECK(n["0.wall_time"] > 0.5 * slept);
}

TEST_CASE("[[faults]] slow, drop_link and corrupt on the simulated cluster", "[reliability][faults]") {
    TempDir dir;
    auto run = [&](const std::string& name, const std::string& strategy, const std::string& faults, int steps) {
        const auto res = run_plexus("run " + dir.file(name + ".toml", simulated(strategy, faults, steps)) + " --db " +
                                    dir / (name + ".db"));
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        return numbers_of(dir / (name + ".db"));
    };
    // slow: DDP waits for rank 1, three times slower from step 10: the same numbers, later.
    // On a network this fast a step is its compute: 10 steps at the normal pace and 20 at three
    // times it take (10 + 60) / 30 = 2.33 times as long.
    const std::string fast = "[sim]\nbandwidth_gbs = 100000.0\nlatency_us = 0.001\n";
    auto clean = run("clean", "ddp", fast, 30);
    auto slow = run("slow", "ddp", fast + "[[faults]]\nkind = \"slow\"\nrank = 1\nfactor = 3.0\nstep = 10\n", 30);
    CHECK(metric_dump(dir / "slow.db", "loss").size() > 100);
    CHECK(summaries_of(dir / "slow.db")["0.state_hash"] == summaries_of(dir / "clean.db")["0.state_hash"]);
    CHECK(slow["0.sim_time"] / clean["0.sim_time"] > 2.2);
    CHECK(slow["0.sim_time"] / clean["0.sim_time"] < 2.4);

    // drop_link is sim.fail_links written as a fault: the same run.
    run("dropped", "gossip", "[[faults]]\nkind = \"drop_link\"\nlink = [0, 1]\ntime = 0.001\n", 40);
    run("fail_links", "gossip", "[sim]\nfail_links = [[0, 1, 0.001]]\n", 40);
    CHECK(metric_dump(dir / "dropped.db", "loss") == metric_dump(dir / "fail_links.db", "loss"));

    // corrupt: bits flip on link 0-1, the same ones on every run of the same seed.
    const std::string corrupt = "[[faults]]\nkind = \"corrupt\"\nlink = [0, 1]\nprobability = 0.2\n";
    auto a = run("corrupt_a", "gossip", corrupt, 40);
    run("corrupt_b", "gossip", corrupt, 40);
    run("gossip_clean", "gossip", "", 40);
    CHECK(a["0.fault0_corrupted_messages"] > 0);
    CHECK(metric_dump(dir / "corrupt_a.db", "loss") == metric_dump(dir / "corrupt_b.db", "loss"));
    CHECK(metric_dump(dir / "corrupt_a.db", "loss") != metric_dump(dir / "gossip_clean.db", "loss"));
}

TEST_CASE("checkpoints by time land on log points, and resume exactly", "[reliability]") {
    TempDir dir;
    auto text = experiment("single", "", 400);
    text.replace(text.find("every_steps = 5"), 15, "every_minutes = 0.00001");  // at every log point
    const auto file = dir.file("exp.toml", text);
    REQUIRE(run_plexus("run " + file + " --db " + dir / "whole.db").exit_code == 0);
    start_and_signal("run " + file + " --db " + dir / "b.db", dir / "checkpoints/b/run1", "KILL");
    const host::RunCheckpoints checkpoints(dir / "checkpoints/b", 1);
    REQUIRE(checkpoints.latest());
    CHECK(*checkpoints.latest() % 10 == 0);  // log_every = 10
    const auto resumed = run_plexus("run --resume 1 --db " + dir / "b.db");
    INFO(resumed.output);
    REQUIRE(resumed.exit_code == 0);
    CHECK(metric_dump(dir / "b.db", "loss") == metric_dump(dir / "whole.db", "loss"));
}

TEST_CASE("an allocation larger than the machine fails the run with its size and the keys that set it",
          "[reliability]") {
    TempDir dir;
    // d_model = 200000: one attention weight alone is 3 x 200000^2 floats (480 GB).
    const auto res = run_plexus("run " + dir.file("big.toml", kTinyExperiment) + " --db " + dir / "r.db" +
                                " --set model.d_model=200000");
    INFO(res.output);
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("out of memory: an allocation of 447.03 GiB failed (this machine has"));
    CHECK_THAT(res.output, Contains("the sizes come from train.batch_size = 8, train.seq_len = 32"));
    CHECK_THAT(res.output, Contains("model.d_model = 200000"));
    CHECK_THAT(res.output, !Contains("frame #"));  // LibTorch's backtrace is not the user's business
    host::ResultsStore store(dir / "r.db");
    CHECK(store.get_run(1)->status == "failed");
    CHECK_THAT(store.get_run(1)->error, Contains("out of memory"));
}

TEST_CASE("a simulated cluster whose rank threads cannot start fails its run, naming the rank", "[reliability]") {
    TempDir dir;
    // 2000 ranks, a thread each, in 3 GB of address space: thread stacks run out after a few hundred.
    const auto file = dir.file("many.toml", std::string(kTinyExperiment) +
                                                "[strategy]\nname = \"ddp\"\n[launch]\nmode = \"sim\"\nranks = 2000\n");
    const auto res = run_command("bash -c 'ulimit -v 3000000; " + std::string(PLEXUS_BINARY) + " run " + file +
                                 " --db " + dir / "r.db" + "' 2>&1");
    INFO(res.output);
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("could not start simulated rank") && Contains("of 2000 (a thread each)"));
    host::ResultsStore store(dir / "r.db");
    CHECK(store.get_run(1)->status == "failed");  // before: left "running", as if still going
    CHECK_THAT(store.get_run(1)->error, Contains("could not start simulated rank"));
}
