// Checkpoints of a run, for exact resume (`plexus run --resume RUN`).
//
// Layout: <checkpoint.dir>/run<ID>/step<S>/rank<R>.ckpt (by default checkpoint.dir is
// checkpoints/<database name> next to the database), one file per rank, and a COMPLETE
// marker that rank 0 writes once every rank's file is on disk. Only a step folder with its
// marker is ever resumed from, so a crash in the middle of writing leaves the previous
// checkpoint in charge. Every file is written to a temporary name, fsynced, then renamed.
//
// A rank file holds the strategy's state (model, optimizer, the strategy's own buffers), the
// harness's counters (step, tokens, ...), the data position, LibTorch's random generator and
// the rank's clock (simulated time included). It ends with a checksum of everything before it:
// a truncated or damaged file is refused whole, never half-loaded.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <plexus/optimizer.hpp>

namespace plexus::host {

struct ResolvedConfig;

struct RankCheckpoint {
    std::string config_hash;  // the run's: a checkpoint of another config is refused
    int64_t run_id = 0;
    int64_t step = 0;  // steps completed
    int rank = 0, world = 1;
    std::map<std::string, double> numbers;     // the harness's counters
    std::map<std::string, std::string> texts;  // the clock's state
    StateDict tensors;                         // "strategy.*" and "rng.*"
};

// Writes atomically (temporary file, fsync, rename, fsync of the folder). Throws plexus::Error
// naming the file and the system's reason (a full disk: "No space left on device").
void write_rank_checkpoint(const std::filesystem::path& file, const RankCheckpoint& ckpt);
// Reads and verifies (magic, version, length, checksum). Throws plexus::Error naming the file.
RankCheckpoint read_rank_checkpoint(const std::filesystem::path& file);

// The checkpoints of one run.
class RunCheckpoints {
public:
    RunCheckpoints(std::filesystem::path root, int64_t run_id);
    // [checkpoint] dir, or checkpoints/<database name>/ next to the results database.
    static RunCheckpoints of(const ResolvedConfig& cfg, int64_t run_id);

    const std::filesystem::path& dir() const { return dir_; }
    std::filesystem::path rank_file(int64_t step, int rank) const;
    // Rank 0, after every rank wrote its file: the step becomes resumable; then all but the
    // newest `keep` complete checkpoints are deleted.
    void mark_complete(int64_t step, int world, int keep) const;
    // The newest step with its COMPLETE marker, if any.
    std::optional<int64_t> latest() const;
    // The newest complete step whose rank files read back whole (magic, length, checksum);
    // each newer complete step that does not is described in `skipped`.
    std::optional<int64_t> latest_intact(std::vector<std::string>& skipped) const;
    // "" when `step` is complete and every rank file of it this process sees reads back whole;
    // else why not. (A missing file is left to the rank that loads it to report.)
    std::string problem_of(int64_t step) const;
    // The complete steps, oldest first.
    std::vector<int64_t> complete_steps() const;
    // Deletes every step folder but `step`'s (a finished run's final weights).
    void keep_only(int64_t step) const;

private:
    std::filesystem::path step_dir(int64_t step) const;
    // Every stepS folder: S -> whether it has its COMPLETE marker.
    std::map<int64_t, bool> steps() const;
    std::filesystem::path dir_;
};

}  // namespace plexus::host
