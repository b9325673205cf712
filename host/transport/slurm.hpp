// Where an srun task stands, from the environment Slurm gives it: its rank, the ranks on its
// node, and a rendezvous every task of the step agrees on without MASTER_ADDR exported by hand.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace plexus::host {

// Slurm's compact host list: "node[01-03,07],gpu-a1" -> node01, node02, node03, node07, gpu-a1.
// Several bracket groups cross ("r[1-2]n[1-2]": r1n1, r1n2, r2n1, r2n2); a range keeps its
// lower bound's zero padding. Throws plexus::Error on a malformed list, quoting it.
std::vector<std::string> expand_hostlist(const std::string& list);

// Slurm's tasks per node: "2(x3),1" -> 2, 2, 2, 1.
std::vector<int> expand_tasks_per_node(const std::string& list);

struct SlurmPlace {
    int rank = 0, world_size = 1;
    int local_rank = 0, local_world_size = 1;  // the ranks on this task's node (they share its cores)
    std::string first_host;                    // the step's first node: rank 0 runs there
    int port = 0;                              // from the job and step ids: the same in every task
};

// The task's place from SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, the step's node list and tasks
// per node (SLURM_STEP_NODELIST / SLURM_JOB_NODELIST, SLURM_STEP_TASKS_PER_NODE /
// SLURM_TASKS_PER_NODE, SLURMD_NODENAME to find this node, else SLURM_NTASKS_PER_NODE) and
// SLURM_JOB_ID / SLURM_STEP_ID. `get` reads a variable (nullptr when unset): getenv, or a test's.
// nullopt outside an srun task (no SLURM_PROCID or SLURM_NTASKS).
std::optional<SlurmPlace> slurm_place(const std::function<const char*(const char*)>& get);

// A node's address for the rendezvous: its name where the name resolves (the usual cluster),
// else the NodeAddr Slurm knows it by (`scontrol show node`), else the name unchanged.
std::string node_address(const std::string& node);

}  // namespace plexus::host
