// Exit codes of `plexus run`, and what one rank's training ends with.
#pragma once

namespace plexus::host {

// kKilled: a [[faults]] kill (137, as for SIGKILL).
enum ExitCode { kOk = 0, kFailed = 1, kUsage = 2, kDiverged = 3, kInterrupted = 130, kKilled = 137 };

}  // namespace plexus::host
