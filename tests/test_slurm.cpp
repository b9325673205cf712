// Slurm: the environment an srun task gets, parsed into a rank, its node's ranks and a rendezvous;
// cores counted from the affinity mask Slurm (or taskset) gives a process.
#include <catch2/catch.hpp>
#include <map>

#include "base/cores.hpp"
#include "helpers.hpp"
#include "transport/slurm.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {
using Strings = std::vector<std::string>;

std::function<const char*(const char*)> env_of(const std::map<std::string, std::string>& vars) {
    return [vars](const char* name) -> const char* {
        const auto it = vars.find(name);
        return it == vars.end() ? nullptr : it->second.c_str();
    };
}
}  // namespace

TEST_CASE("Slurm host lists expand as Slurm writes them", "[slurm]") {
    CHECK(host::expand_hostlist("node01") == Strings{"node01"});
    CHECK(host::expand_hostlist("node[01-04,07]") == Strings{"node01", "node02", "node03", "node04", "node07"});
    CHECK(host::expand_hostlist("n[9-11]") == Strings{"n9", "n10", "n11"});  // no padding to keep
    CHECK(host::expand_hostlist("n[098-101]") == Strings{"n098", "n099", "n100", "n101"});
    CHECK(host::expand_hostlist("gpu-a1,cpu[2-3],login") == Strings{"gpu-a1", "cpu2", "cpu3", "login"});
    CHECK(host::expand_hostlist("r[1-2]n[1,3]") == Strings{"r1n1", "r1n3", "r2n1", "r2n3"});
    CHECK(host::expand_hostlist("a[1-2]-ib") == Strings{"a1-ib", "a2-ib"});
    CHECK(host::expand_hostlist("x[5]") == Strings{"x5"});
    for (const std::string bad : {"node[1-2", "node1-2]", "node[a-b]", "node[3-1]", "node[]", "a,,b", "node[1,]"}) {
        INFO(bad);
        CHECK_THROWS_WITH(host::expand_hostlist(bad), Contains("'" + bad + "' is malformed"));
    }
}

TEST_CASE("Slurm tasks per node expand their repeats", "[slurm]") {
    CHECK(host::expand_tasks_per_node("4") == std::vector<int>{4});
    CHECK(host::expand_tasks_per_node("2(x3),1") == std::vector<int>{2, 2, 2, 1});
    CHECK(host::expand_tasks_per_node("1(x2),3") == std::vector<int>{1, 1, 3});
    CHECK(host::expand_tasks_per_node("8(x1)") == std::vector<int>{8});
    for (const std::string bad : {"", "2(x3", "x", "2(xa)", "2,,1"}) {
        INFO(bad);
        CHECK_THROWS_WITH(host::expand_tasks_per_node(bad), Contains("malformed"));
    }
}

TEST_CASE("an srun task finds its rank, its node's ranks and rank 0's node", "[slurm]") {
    std::map<std::string, std::string> vars{{"SLURM_PROCID", "5"},
                                            {"SLURM_NTASKS", "7"},
                                            {"SLURM_LOCALID", "1"},
                                            {"SLURM_JOB_NODELIST", "gpu[07-10]"},
                                            {"SLURM_TASKS_PER_NODE", "2(x3),1"},
                                            {"SLURMD_NODENAME", "gpu09"},
                                            {"SLURM_NODEID", "0"},  // the name wins
                                            {"SLURM_JOB_ID", "123456"},
                                            {"SLURM_STEP_ID", "0"}};
    auto place = host::slurm_place(env_of(vars));
    REQUIRE(place);
    CHECK(place->rank == 5);
    CHECK(place->world_size == 7);
    CHECK(place->local_rank == 1);
    CHECK(place->local_world_size == 2);
    CHECK(place->first_host == "gpu07");
    CHECK(place->port == 20000 + (123456 * 7) % 40000);
    CHECK(place->port >= 20000);
    CHECK(place->port < 60000);

    vars["SLURMD_NODENAME"] = "gpu10";  // the last node holds one task
    CHECK(host::slurm_place(env_of(vars))->local_world_size == 1);
    // A step over part of the allocation: its own lists come first.
    vars["SLURM_STEP_NODELIST"] = "gpu[09-10]";
    vars["SLURM_STEP_TASKS_PER_NODE"] = "3,4";
    place = host::slurm_place(env_of(vars));
    CHECK(place->first_host == "gpu09");
    CHECK(place->local_world_size == 4);
    vars["SLURM_STEP_ID"] = "1";  // another step of the job: another port
    CHECK(host::slurm_place(env_of(vars))->port != place->port);
    // No node name: the node's index.
    vars.erase("SLURMD_NODENAME");
    vars["SLURM_NODEID"] = "0";
    CHECK(host::slurm_place(env_of(vars))->local_world_size == 3);
    // Only the uniform count (an older Slurm).
    const std::map<std::string, std::string> sparse{
        {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "4"}, {"SLURM_NTASKS_PER_NODE", "2"}};
    place = host::slurm_place(env_of(sparse));
    CHECK(place->local_world_size == 2);
    CHECK(place->first_host.empty());  // the rendezvous keeps its default (or MASTER_ADDR)
    CHECK_FALSE(host::slurm_place(env_of({{"SLURM_JOB_ID", "3"}})));  // in an allocation, not a task
}

TEST_CASE("cores are counted from the affinity mask: taskset -c 0 gives a run one thread", "[slurm][affinity]") {
    CHECK(host::usable_cores() >= 1);
    TempDir dir;
    const auto file = dir.file("t.toml", kTinyExperiment);
    auto pinned = run_plexus("run " + file + " --db " + dir / "r.db" +
                                 " --set train.steps=2 --set train.threads=0 --set results.progress=lines",
                             "taskset -c 0");
    INFO(pinned.output);
    REQUIRE(pinned.exit_code == 0);
    CHECK_THAT(pinned.output, Contains("cpu (1 threads)"));
    if (host::usable_cores() >= 2) {  // unpinned it takes what the mask allows
        auto free = run_plexus("run " + file + " --db " + dir / "r.db" +
                               " --set train.steps=2 --set train.threads=0 --set results.progress=lines");
        CHECK_THAT(free.output, Contains("cpu (" + std::to_string(host::usable_cores()) + " threads)"));
    }
}
