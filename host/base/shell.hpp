// Running a shell command from the host: git for a run's revision, Slurm's sbatch, squeue and
// scontrol.
#pragma once

#include <string>

namespace plexus::host {

// `text` as one single-quoted shell word.
std::string shell_quoted(const std::string& text);

struct CommandOutput {
    int code = -1;     // the exit status; 128 when killed by a signal, -1 when it could not start
    std::string text;  // its standard output (add 2>&1 for the errors), trailing newlines cut
};
CommandOutput run_command(const std::string& command);

}  // namespace plexus::host
