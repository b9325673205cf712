// The results database (SQLite): sweeps, runs, their parameters, per-step metrics and summaries.
// WAL mode and short BEGIN IMMEDIATE transactions, so several writers and readers can share it;
// the schema is versioned with PRAGMA user_version and migrated forward on open.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <plexus/config.hpp>

struct sqlite3;

namespace plexus::host {

constexpr int kSchemaVersion = 3;

struct MetricRow {
    int rank = 0;
    std::string key;
    int64_t step = 0;
    double value = 0;
    int64_t tokens = 0;
    double wall_time = 0;  // seconds since the run started
    std::optional<double> sim_time;
};

struct RunInfo {
    int64_t id = 0;
    std::optional<int64_t> sweep_id;
    std::string name, config_hash, config_json, toml, status, error, plugins, fingerprint, device, host, git_rev,
        command;
    int64_t seed = 0, world_size = 1;
    double started = 0, ended = 0, heartbeat = 0;
    // Text summaries (rank 0) begin_run writes in the same transaction as the run's row.
    std::map<std::string, std::string> texts;
    // The process tag of the sweep whose claim on this point the run fills: begin_run (a new run)
    // and take_over_run (a resumed one) record its id on that claim, so the sweep knows which
    // run its child ran.
    std::string claim;
};

// A sweep's hold on one of its points (by config hash) while it runs it.
struct PointClaim {
    std::string owner;     // the holder's process tag (host:pid:start)
    double last_seen = 0;  // when it claimed, or its run's heartbeat if newer (epoch seconds)
    int64_t run = 0;       // the run the holder's child started or resumes, 0 until it says
};

struct SweepInfo {
    int64_t id = 0;
    std::string name, toml;
    double created = 0;
};

class ResultsStore {
public:
    // CreateIfMissing: where runs are recorded (run, sweep, meta-train). MustExist: where they
    // are read (runs, show, compare, curves, leaderboard, report, --resume): a mistyped --db is
    // an error, not a new empty database and folder.
    enum class Open { CreateIfMissing, MustExist };
    // Opens and migrates. Throws plexus::Error if the file is not a database, is another
    // program's SQLite database (it has tables but not plexus's), is read-only, or has a newer
    // schema than this plexus.
    explicit ResultsStore(const std::string& path, Open mode = Open::CreateIfMissing);
    ~ResultsStore();
    ResultsStore(const ResultsStore&) = delete;
    ResultsStore& operator=(const ResultsStore&) = delete;

    const std::string& path() const { return path_; }
    int schema_version();

    int64_t begin_run(const RunInfo& info, const std::map<std::string, Value>& params);
    // Upserts (a resumed run overwrites the same step) and refreshes the heartbeat.
    void add_metrics(int64_t run, const std::vector<MetricRow>& rows);
    void set_summary(int64_t run, int rank, const std::string& key, double value);
    void set_summary_text(int64_t run, int rank, const std::string& key, const std::string& text);
    void finish_run(int64_t run, const std::string& status, const std::string& error);
    // A run continues (`plexus run --resume`): running again, its end and error cleared.
    void reopen_run(int64_t run);
    // Deletes the run's metric rows from `step` on: what an interrupted attempt recorded after
    // the checkpoint a resumed run starts from (the resumed run records those steps again, and a
    // row only the interrupted attempt wrote, e.g. a lost rank's, would otherwise stay).
    void forget_metrics_from(int64_t run, int64_t step);
    // Rank 0's text summary `key` of a run, "" if it has none.
    std::string summary_text(int64_t run, const std::string& key);

    // Sweeps sharing points, in one transaction each: the claim on (sweep, hash) becomes `owner`'s
    // unless another holder that `holder_alive` says still runs has it, which is then returned
    // unchanged. The caller compares the owner with its own.
    PointClaim claim_point(int64_t sweep, const std::string& hash, const std::string& owner,
                           const std::function<bool(const PointClaim&)>& holder_alive);
    // The run `owner`'s claim got (its own, or the one its child recorded), 0 if none yet.
    int64_t claimed_run(int64_t sweep, const std::string& hash, const std::string& owner);
    void release_point(int64_t sweep, const std::string& hash, const std::string& owner);
    // `plexus run --resume`: the run becomes `owner`'s and runs again, only if its recorded owner
    // is still `expected`; false if another process took it over first. A run resumed by a sweep
    // (run.claim) is recorded on its claim in the same transaction.
    bool take_over_run(const RunInfo& run, const std::string& expected, const std::string& owner);

    // The sweep of that name (its TOML updated), or a new one.
    int64_t ensure_sweep(const std::string& name, const std::string& toml, const std::string& git_rev,
                         const std::string& host);
    // By name, else by id (digits: a sweep may be named "2024"); empty `which`: the newest sweep.
    std::optional<SweepInfo> find_sweep(const std::string& which);
    // By name only: the sweep a sweep file's runs belong to.
    std::optional<SweepInfo> sweep_named(const std::string& name);
    std::vector<SweepInfo> list_sweeps();
    // The runs of a sweep, oldest first.
    std::vector<RunInfo> sweep_runs(int64_t sweep);
    // The newest run of one point (config hash) of a sweep, if it has one.
    std::optional<RunInfo> newest_sweep_run(int64_t sweep, const std::string& hash);

    std::vector<RunInfo> list_runs(int64_t limit);
    std::optional<RunInfo> get_run(int64_t id);
    std::map<std::string, std::string> params(int64_t run);
    // summary key -> value as text (numbers formatted), rank 0 first
    std::vector<std::tuple<int, std::string, std::optional<double>, std::string>> summaries(int64_t run);
    std::vector<std::string> metric_keys(int64_t run);
    // (step, value) for one metric of rank 0
    std::vector<std::pair<int64_t, double>> metric_series(int64_t run, const std::string& key);
    // Every row of one metric of one rank, with its tokens, wall and simulated times.
    std::vector<MetricRow> metric_rows(int64_t run, const std::string& key, int rank = 0);

    // Folds another database's runs into this one (with their settings, metrics, summaries and
    // sweep, found or created by name), as `plexus merge` and Slurm sweeps do with the database
    // each array task wrote. Idempotent: a run already here (same config hash, start time and
    // host) is left alone, or replaced when it has changed there (it was running, now it ended).
    struct MergeCounts {
        int added = 0, updated = 0, unchanged = 0;
    };
    MergeCounts merge_from(const std::string& other);

    // SQLite's PRAGMA integrity_check: "ok", or what is wrong.
    std::string integrity_check();
    // Executes SQL directly (tests, maintenance).
    void exec(const std::string& sql);

    static double now();

private:
    void migrate();
    void note_claimed_run(const RunInfo& run, int64_t id);  // in the caller's transaction
    std::string path_;
    sqlite3* db_ = nullptr;
};

}  // namespace plexus::host
