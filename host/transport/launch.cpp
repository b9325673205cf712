#include "transport/launch.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <thread>

#include <plexus/error.hpp>

namespace plexus::host {

void exec_self(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
    for (const auto& kv : env) putenv(strdup(kv.c_str()));
    putenv(strdup(("PLEXUS_PARENT=" + std::to_string(getppid())).c_str()));
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv("/proc/self/exe", args.data());
    _exit(127);
}

const char* internal_variable(const char* name) {
    const char* value = std::getenv(name);
    if (!value) return nullptr;
    const char* parent = std::getenv("PLEXUS_PARENT");
    if (parent && std::to_string(getppid()) == parent) return value;
    throw Error(std::string(name) + "=" + value +
                    " is set in the environment, but this process was not started by the plexus process "
                    "that sets it (it leaked from one, or that process is gone)",
                "unset it (and the other PLEXUS_ variables a launcher sets: PLEXUS_WORKER, PLEXUS_RUN_ID, "
                "PLEXUS_SWEEP_ID, PLEXUS_CLAIM, PLEXUS_CORES, PLEXUS_RESUME_STEP)");
}

int free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        if (fd >= 0) close(fd);
        throw Error(std::string("cannot find a free port on 127.0.0.1: ") + std::strerror(errno));
    }
    const int port = ntohs(addr.sin_port);
    close(fd);
    return port;
}

namespace {
// A process's state letter in /proc/PID/stat (R running, S sleeping, T stopped, ...); '?' if gone.
char process_state(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text;
    std::getline(stat, text);
    const auto close = text.rfind(')');  // after "pid (name)", which may hold spaces
    return close != std::string::npos && close + 2 < text.size() ? text[close + 2] : '?';
}

int decode(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

// The workers of the launch in progress, for the SIGTERM handler (async-signal-safe: kill only).
constexpr int kMaxWorkers = 4096;
volatile sig_atomic_t g_worker_count = 0;
volatile sig_atomic_t g_stop_forwarded = 0;
pid_t g_workers[kMaxWorkers];

void forward_to_workers(int sig) {
    g_stop_forwarded = 1;
    for (int i = 0; i < g_worker_count; ++i)
        if (g_workers[i] > 0) kill(g_workers[i], sig);
}
}  // namespace

void catch_stop_requests() { std::signal(SIGTERM, forward_to_workers); }

WorkerExit run_local_workers(const std::vector<std::string>& argv, int ranks, int port,
                             const std::vector<std::string>& env, const std::vector<int>& orderly, double grace_s) {
    const pid_t launcher = getpid();
    std::vector<pid_t> pids(ranks, -1);
    // `kill <launcher>` stops the workers the same way: they record the run as interrupted. The
    // handler goes in before the first fork (if catch_stop_requests() did not already), so a
    // SIGTERM while workers start is not lost.
    g_worker_count = 0;
    auto previous_term = std::signal(SIGTERM, forward_to_workers);
    for (int r = 0; r < ranks; ++r) {
        pid_t pid = fork();
        if (pid < 0) {
            const std::string why = std::strerror(errno);
            std::signal(SIGTERM, previous_term);
            throw Error("cannot start worker " + std::to_string(r) + ": " + why);
        }
        if (pid == 0) {
            // A worker never outlives its launcher, even one killed with SIGKILL.
            std::signal(SIGTERM, SIG_DFL);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            if (getppid() != launcher) _exit(137);
            setenv("RANK", std::to_string(r).c_str(), 1);
            setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
            setenv("WORLD_SIZE", std::to_string(ranks).c_str(), 1);
            setenv("LOCAL_WORLD_SIZE", std::to_string(ranks).c_str(), 1);
            setenv("MASTER_ADDR", "127.0.0.1", 1);
            setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
            exec_self(argv, env);
        }
        pids[r] = pid;
        if (r < kMaxWorkers) g_workers[r] = pid;
        g_worker_count = std::min(r + 1, kMaxWorkers);
    }
    if (g_stop_forwarded) forward_to_workers(SIGTERM);  // it came while the workers were being started

    WorkerExit first_failure;
    int running = ranks;
    auto rank_of = [&](pid_t pid) {
        for (int r = 0; r < ranks; ++r)
            if (pids[r] == pid) return r;
        return -1;
    };
    auto reaped = [&](int r) {  // forget the pid: it may be reused by an unrelated process
        pids[r] = -1;
        if (r < kMaxWorkers) g_workers[r] = 0;
        --running;
    };
    while (running > 0) {
        int status = 0;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) {
            if (errno == EINTR) continue;
            break;
        }
        const int r = rank_of(pid);
        if (r < 0) continue;
        reaped(r);
        const int code = decode(status);
        if (code != 0 && first_failure.rank < 0) {
            first_failure = {r, code};
            if (std::find(orderly.begin(), orderly.end(), code) != orderly.end()) continue;
            // A rank that failed may have failed waiting for a peer that stopped answering: a
            // process stopped (SIGSTOP, a debugger) is named, before the others are stopped.
            for (int q = 0; q < ranks; ++q)
                if (pids[q] > 0 && process_state(pids[q]) == 'T') first_failure.stopped_ranks.push_back(q);
            // One rank failed: the others would only wait for it until the collective timeout.
            for (pid_t p : pids)
                if (p > 0) kill(p, SIGTERM);
            const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(grace_s);
            while (running > 0 && std::chrono::steady_clock::now() < deadline) {
                pid_t q = waitpid(-1, &status, WNOHANG);
                if (q > 0) {
                    const int rq = rank_of(q);
                    if (rq >= 0) reaped(rq);
                } else {
                    std::this_thread::sleep_for(std::chrono::milliseconds(20));
                }
            }
            for (pid_t p : pids)
                if (p > 0) kill(p, SIGKILL);
        }
    }
    std::signal(SIGTERM, previous_term);
    g_worker_count = 0;
    first_failure.stop_requested = g_stop_forwarded != 0;
    return first_failure;
}

}  // namespace plexus::host
