// `[launch] mode = "local"`: plexus starts N worker processes of itself on this machine, each
// with the torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT),
// watches them, and stops them all as soon as one fails, so that no worker outlives the run.
#pragma once

#include <string>
#include <vector>

namespace plexus::host {

struct WorkerExit {
    int rank = -1;
    int exit_code = 0;  // 128 + signal for a killed worker
    // The launcher was sent SIGTERM and passed it on: whatever the workers then did (one still
    // connecting dies of it, its peers lose their connection), the run was stopped on request.
    bool stop_requested = false;
    // Ranks whose processes were stopped (SIGSTOP, a debugger) when the first one failed: the
    // failure is likely a timeout waiting for them.
    std::vector<int> stopped_ranks;
};

// In a freshly forked child: adds `env` ("KEY=value") to the environment, and PLEXUS_PARENT,
// the pid of the process that forked it, and replaces the process with this same executable run
// with `argv`. Never returns (exit 127 if exec fails).
[[noreturn]] void exec_self(const std::vector<std::string>& argv, const std::vector<std::string>& env);

// A variable a plexus process sets for the plexus processes it starts (PLEXUS_WORKER,
// PLEXUS_RUN_ID, PLEXUS_SWEEP_ID, PLEXUS_CORES, PLEXUS_RESUME_STEP): its value, or nullptr when
// unset. Honoured only in a process started by the one that set it (PLEXUS_PARENT is this
// process's parent): throws plexus::Error, naming the variable, when it leaked into another
// process's environment (a shell, a run whose launcher is gone), rather than let a plain run
// write into the run or sweep it names.
const char* internal_variable(const char* name);

// A free TCP port on the loopback interface.
int free_port();

// From now on a SIGTERM to this process (the launcher) is remembered and passed on to the workers
// run_local_workers starts, even if it comes before they exist. Call it as soon as the process
// knows it is a launcher, before it records the run.
void catch_stop_requests();

// Runs `argv` as `ranks` workers (extra environment: the rendezvous plus `env`). Returns the
// first worker that failed, or rank -1 with exit code 0 when all finished. Workers still running
// after a failure are terminated (SIGTERM, then SIGKILL after `grace_s`). A SIGTERM sent to the
// launcher meanwhile is forwarded to every worker.
// Exit codes in `orderly` (a worker that stopped on purpose: interrupted, diverged) are
// reported but do not make the launcher stop the others: they are finishing the same way.
WorkerExit run_local_workers(const std::vector<std::string>& argv, int ranks, int port,
                             const std::vector<std::string>& env, const std::vector<int>& orderly = {},
                             double grace_s = 5.0);

}  // namespace plexus::host
