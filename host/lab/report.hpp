// `plexus report SWEEP -o report.html`: one self-contained HTML page (Chart.js inlined at build
// time, the data as JSON in the page) with the leaderboard and the curves of a sweep: loss and
// eval loss against steps, tokens and (simulated) time, a line per grid point with a band over
// seeds, and MFU and memory bars.
#pragma once

#include <string>

#include "lab/leaderboard.hpp"

namespace plexus::host {

// Throws plexus::Error (no such sweep; a build without the charting library).
std::string make_report(ResultsStore& store, const std::string& sweep, const BoardOptions& options);

}  // namespace plexus::host
