// The harness's control channel (host/runtime/control.hpp): every rank's RunContext::record rows
// reach the database with their rank, the agreement at log points over the rendezvous store,
// and that it puts no barrier into an asynchronous strategy on real processes.
#include <catch2/catch.hpp>
#include <cmath>
#include <map>
#include <plexus/plexus.hpp>

#include "helpers.hpp"
#include "runtime/control.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;

namespace {

// The store of a job, in memory, shared by the "ranks" of a test.
class MemoryStore : public host::KeyValueStore {
public:
    void set(const std::string& key, const std::string& value) override { values_[key] = value; }
    std::optional<std::string> peek(const std::string& key) override {
        auto it = values_.find(key);
        if (it == values_.end()) return std::nullopt;
        return it->second;
    }
    std::string set_once(const std::string& key, const std::string& value) override {
        return values_.emplace(key, value).first->second;
    }
    void erase(const std::string& key) override { values_.erase(key); }
    size_t size() const { return values_.size(); }

private:
    std::map<std::string, std::string> values_;
};

// A rank of a world, for the channel's bookkeeping; it carries nothing.
class Nowhere : public Transport {
public:
    Nowhere(int rank, int world) : rank_(rank), world_(world) {}
    int rank() const override { return rank_; }
    int world_size() const override { return world_; }
    const char* backend() const override { return "none"; }
    std::shared_ptr<Work> all_reduce(torch::Tensor&, ReduceOp) override { throw Error("no collectives here"); }
    std::shared_ptr<Work> reduce_scatter(torch::Tensor&, const torch::Tensor&, ReduceOp) override {
        throw Error("no collectives here");
    }
    std::shared_ptr<Work> all_gather(torch::Tensor&, const torch::Tensor&) override {
        throw Error("no collectives here");
    }
    std::shared_ptr<Work> broadcast(torch::Tensor&, int) override { throw Error("no collectives here"); }
    void barrier() override { throw Error("no collectives here"); }
    std::shared_ptr<Work> send(const torch::Tensor&, int, int) override { throw Error("no collectives here"); }
    std::shared_ptr<Work> recv(torch::Tensor&, int, int) override { throw Error("no collectives here"); }
    std::shared_ptr<Transport> subgroup(const std::vector<int>&) override { throw Error("no collectives here"); }
    CommStats stats() const override { return {}; }

private:
    int rank_, world_;
};

std::vector<std::unique_ptr<host::ControlChannel>> channels(const std::shared_ptr<MemoryStore>& store, int world,
                                                            int64_t log_every) {
    std::vector<std::unique_ptr<host::ControlChannel>> out;
    for (int r = 0; r < world; ++r)
        out.push_back(host::make_store_control(store, std::make_shared<Nowhere>(r, world), log_every));
    return out;
}

// (step, wall time) of one rank's rows of `key`, in step order.
std::vector<std::pair<int64_t, double>> timeline(host::ResultsStore& store, int64_t run, const std::string& key,
                                                 int rank) {
    std::vector<std::pair<int64_t, double>> out;
    for (const auto& row : store.metric_rows(run, key, rank)) out.emplace_back(row.step, row.wall_time);
    return out;
}

}  // namespace

TEST_CASE("metric rows survive the control channel's text exactly", "[control]") {
    std::vector<host::MetricRow> rows(3);
    rows[0] = {1, "gossip/comm_events", 7, 0.1 + 0.2, 4096, 1.0 / 3.0, std::nullopt};
    rows[1] = {3, "a\tkey\nwith breaks", -1, -std::numeric_limits<double>::infinity(), 0, 0.0, 2.5e-300};
    rows[2] = {2, "nan", 9, std::nan(""), 1, 7.0, 0.0};
    const auto back = host::rows_from_text(host::rows_to_text(rows));
    REQUIRE(back.size() == 3);
    CHECK(back[0].rank == 1);
    CHECK(back[0].key == "gossip/comm_events");
    CHECK(back[0].step == 7);
    CHECK(back[0].value == 0.1 + 0.2);  // bit for bit
    CHECK(back[0].tokens == 4096);
    CHECK(back[0].wall_time == 1.0 / 3.0);
    CHECK_FALSE(back[0].sim_time.has_value());
    CHECK(back[1].key == "a key with breaks");
    CHECK(back[1].value == -std::numeric_limits<double>::infinity());
    CHECK(back[1].sim_time == 2.5e-300);
    CHECK(std::isnan(back[2].value));
    CHECK(back[2].sim_time == 0.0);
}

TEST_CASE("the store channel: a stop posted at step s holds from the first log point max(log_every, world) on",
          "[control]") {
    auto store = std::make_shared<MemoryStore>();
    auto ch = channels(store, 2, 10);
    CHECK(ch[0]->at_log_point(10, {}).stop.empty());
    // Rank 1 diverges at its log point 10: everyone stops at 20, rank 1 included.
    CHECK(ch[1]->at_log_point(10, {false, true, false}).stop.empty());
    CHECK(ch[0]->late_stop() == "diverged");
    CHECK(ch[0]->at_log_point(20, {}).stop == "diverged");
    CHECK(ch[1]->at_log_point(20, {}).stop == "diverged");
    // The first post wins: a later interrupt does not move the step or the reason.
    ch[0]->at_log_point(20, {true, false, false});
    CHECK(ch[1]->late_stop() == "diverged");

    // More ranks than log_every: the stop lies world steps ahead, rounded up to a log point.
    auto wide = channels(std::make_shared<MemoryStore>(), 8, 2);
    wide[3]->at_log_point(4, {true, false, false});
    CHECK(wide[0]->at_log_point(10, {}).stop.empty());
    CHECK(wide[0]->at_log_point(12, {}).stop == "interrupted");
}

TEST_CASE("the store channel: a time-based checkpoint happens at one step on every rank, and a rank past it skips it",
          "[control]") {
    auto store = std::make_shared<MemoryStore>();
    auto ch = channels(store, 3, 5);
    CHECK_FALSE(ch[0]->at_log_point(5, {false, false, true}).checkpoint);  // rank 0's clock: due; posted for 10
    CHECK_FALSE(ch[0]->at_log_point(5, {false, false, true}).checkpoint);  // not posted twice
    CHECK_FALSE(ch[1]->at_log_point(5, {}).checkpoint);
    CHECK(ch[0]->at_log_point(10, {}).checkpoint);
    CHECK(ch[1]->at_log_point(10, {}).checkpoint);
    CHECK_FALSE(ch[2]->at_log_point(15, {}).checkpoint);  // an asynchronous rank already past it
    CHECK_FALSE(ch[1]->at_log_point(15, {}).checkpoint);  // once only
    // The next one is the second: rank 2 acts on it too.
    ch[0]->at_log_point(15, {false, false, true});
    CHECK(ch[2]->at_log_point(20, {}).checkpoint);
}

TEST_CASE("the store channel carries other ranks' rows to rank 0, once each, in order", "[control]") {
    auto store = std::make_shared<MemoryStore>();
    auto ch = channels(store, 3, 1);
    std::vector<host::MetricRow> a = {{1, "x", 1, 1.0, 0, 0, std::nullopt}}, b = {{1, "x", 2, 2.0, 0, 0, std::nullopt}},
                                 c = {{2, "y", 1, 3.0, 0, 0, std::nullopt}};
    ch[1]->send_rows(a);
    ch[1]->send_rows(b);
    ch[2]->send_rows(c);
    CHECK(a.empty());
    const auto got = ch[0]->receive_rows();
    REQUIRE(got.size() == 3);
    CHECK(got[0].value == 1.0);
    CHECK(got[1].value == 2.0);
    CHECK(got[2].rank == 2);
    CHECK(ch[0]->receive_rows().empty());
    CHECK(store->size() == 0);  // taken rows leave the store
}

TEST_CASE("every rank's record() rows reach the database with its rank, on Gloo processes and simulated ranks",
          "[control][distributed][sim]") {
    TempDir dir;
    const auto db = dir / "r.db";
    const auto file = dir.file(
        "ddp.toml", std::string(kTinyExperiment) +
                        "\n[strategy]\nname = \"ddp\"\n[launch]\nmode = \"local\"\nranks = 2\ntimeout = 60.0\n");
    for (const std::string mode : {"local", "sim"}) {
        const int ranks = mode == "local" ? 2 : 4;
        const auto run = run_recorded(
            file, db,
            "--set train.steps=12 --set launch.mode=" + mode + " --set launch.ranks=" + std::to_string(ranks));
        host::ResultsStore store(db);
        for (int r = 0; r < ranks; ++r) {
            const auto rows = store.metric_rows(run.id, "comm_bytes", r);  // DDP records it every step
            INFO(mode << ": rank " << r);
            REQUIRE(rows.size() == 12);
            CHECK(rows.front().step == 0);
            CHECK(rows.back().step == 11);
            CHECK(rows.back().value > 0);
        }
        // The harness's own curves stay the run's (rank 0's).
        CHECK(store.metric_rows(run.id, "loss", 1).empty());
        CHECK(store.metric_rows(run.id, "loss", 0).size() == 12);
    }
}

TEST_CASE("on 2 Gloo processes, a gossip run's ranks drift apart by more than log_every steps",
          "[control][distributed]") {
    // Rank 1 computes 6x slower. Gossip averages with its one neighbour at Poisson times, 0.05
    // per step, and only there do the two wait for each other: between averagings rank 0 runs
    // ahead. A collective at every log point (log_every = 2) would hold them within 2 steps.
    TempDir dir;
    const auto db = dir / "g.db";
    const auto file = dir.file("g.toml", std::string(kTinyExperiment) + R"(
[strategy]
name = "gossip"
comm_rate = 0.05

[launch]
mode = "local"
ranks = 2
timeout = 60.0

[[faults]]
kind = "slow"
rank = 1
factor = 6.0
)");
    const auto run = run_recorded(file, db,
                                  "--set train.steps=80 --set train.log_every=2 --set train.eval_every=0 "
                                  "--set train.threads=1 --set train.seed=3");
    host::ResultsStore store(db);
    const auto fast = timeline(store, run.id, "gossip/comm_events", 0);
    const auto slow = timeline(store, run.id, "gossip/comm_events", 1);
    REQUIRE(fast.size() == 80);
    REQUIRE(slow.size() == 80);
    // For each step of rank 0, how many steps rank 1 had finished by then (rows are written at
    // the end of each step, with the seconds since each process's run began).
    int64_t drift = 0;
    size_t behind = 0;
    for (const auto& [step, t] : fast) {
        while (behind < slow.size() && slow[behind].second <= t) ++behind;
        drift = std::max<int64_t>(drift, step + 1 - static_cast<int64_t>(behind));
    }
    INFO("largest lead of rank 0 over rank 1: " << drift << " steps");
    CHECK(drift > 3 * 2);
}
