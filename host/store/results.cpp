#include "store/results.hpp"

#include <sqlite3.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>

#include <plexus/error.hpp>

namespace plexus::host {

namespace {

// Migration i brings the schema from version i to i + 1.
const char* const kMigrations[] = {
    // 1: the first schema (docs/guide/experiments.md, "The results database")
    R"sql(
    CREATE TABLE sweep (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        toml TEXT,
        created REAL NOT NULL,
        git_rev TEXT,
        host TEXT
    );
    CREATE TABLE run (
        id INTEGER PRIMARY KEY,
        sweep_id INTEGER REFERENCES sweep(id),
        name TEXT NOT NULL,
        config_hash TEXT NOT NULL,
        config_json TEXT NOT NULL,
        toml TEXT,
        seed INTEGER,
        status TEXT NOT NULL CHECK (status IN ('queued','running','finished','failed','diverged','interrupted')),
        started REAL,
        ended REAL,
        heartbeat REAL,
        error TEXT,
        plugins TEXT,
        fingerprint TEXT,
        device TEXT,
        host TEXT,
        git_rev TEXT,
        world_size INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX run_hash ON run(config_hash);
    CREATE TABLE param (
        run_id INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        type TEXT NOT NULL,
        value TEXT,
        num REAL,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE metric (
        run_id INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL DEFAULT 0,
        key TEXT NOT NULL,
        step INTEGER NOT NULL,
        value REAL,
        tokens INTEGER,
        wall_time REAL,
        sim_time REAL,
        PRIMARY KEY (run_id, rank, key, step)
    );
    CREATE TABLE summary (
        run_id INTEGER NOT NULL REFERENCES run(id) ON DELETE CASCADE,
        rank INTEGER NOT NULL DEFAULT 0,
        key TEXT NOT NULL,
        value REAL,
        text TEXT,
        PRIMARY KEY (run_id, rank, key)
    );
    )sql",
    // 2: the command line that started a run (to reproduce it), and a status index for
    // "what is running / what failed" queries.
    R"sql(
    ALTER TABLE run ADD COLUMN command TEXT;
    CREATE INDEX run_status ON run(status);
    )sql",
    // 3: a sweep's claim on a point while it runs it (owner: its process tag), so that two sweeps
    // of one file share the points instead of running each twice.
    R"sql(
    CREATE TABLE point_claim (
        sweep_id INTEGER NOT NULL REFERENCES sweep(id),
        config_hash TEXT NOT NULL,
        owner TEXT NOT NULL,
        claimed REAL NOT NULL,
        run_id INTEGER,
        PRIMARY KEY (sweep_id, config_hash)
    );
    )sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == kSchemaVersion, "one migration per version");

class Stmt {
public:
    Stmt(sqlite3* db, const std::string& sql) : db_(db) {
        if (sqlite3_prepare_v2(db, sql.c_str(), -1, &s_, nullptr) != SQLITE_OK)
            throw Error(std::string("results database: cannot prepare statement: ") + sqlite3_errmsg(db));
    }
    ~Stmt() { sqlite3_finalize(s_); }
    Stmt& bind(int i, int64_t v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, int v) {
        sqlite3_bind_int64(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, double v) {
        sqlite3_bind_double(s_, i, v);
        return *this;
    }
    Stmt& bind(int i, const std::string& v) {
        sqlite3_bind_text(s_, i, v.c_str(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
        return *this;
    }
    Stmt& bind_null(int i) {
        sqlite3_bind_null(s_, i);
        return *this;
    }
    bool step() {
        int rc = sqlite3_step(s_);
        if (rc == SQLITE_ROW) return true;
        if (rc == SQLITE_DONE) return false;
        if (rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT)
            throw Error(std::string("results database: ") + sqlite3_errmsg(db_),
                        "the file is not an SQLite database, or is damaged: name another with --db");
        throw Error(std::string("results database: ") + sqlite3_errmsg(db_),
                    "check that the disk has room and the file is writable");
    }
    void reset() {
        sqlite3_reset(s_);
        sqlite3_clear_bindings(s_);
    }
    int64_t i64(int c) { return sqlite3_column_int64(s_, c); }
    double dbl(int c) { return sqlite3_column_double(s_, c); }
    bool null(int c) { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
    std::string text(int c) {
        auto* t = sqlite3_column_text(s_, c);
        return t ? reinterpret_cast<const char*>(t) : "";
    }

private:
    sqlite3* db_;
    sqlite3_stmt* s_ = nullptr;
};

// BEGIN IMMEDIATE ... COMMIT, rolled back if anything throws.
class Transaction {
public:
    explicit Transaction(ResultsStore& store) : store_(store) { store_.exec("BEGIN IMMEDIATE"); }
    void commit() {
        store_.exec("COMMIT");
        done_ = true;
    }
    ~Transaction() {
        if (!done_) {
            try {
                store_.exec("ROLLBACK");
            } catch (...) {}
        }
    }

private:
    ResultsStore& store_;
    bool done_ = false;
};

}  // namespace

double ResultsStore::now() {
    using namespace std::chrono;
    return duration<double>(system_clock::now().time_since_epoch()).count();
}

ResultsStore::ResultsStore(const std::string& path, Open mode) : path_(path) {
    namespace fs = std::filesystem;
    const auto parent = fs::path(path).parent_path();
    std::error_code ec;
    if (mode == Open::MustExist && !fs::exists(path, ec))
        throw Error("no results database at " + path,
                    "runs go to results/plexus.db (below the folder plexus ran in) unless --db or [results] db "
                    "named another; `plexus run experiments/quickstart.toml` records a first one");
    if (fs::exists(path, ec) && !fs::is_regular_file(path, ec))
        throw Error("results database " + path + " is not a file (" +
                        (fs::is_directory(path, ec) ? "a folder" : "a device, pipe or socket") + ")",
                    "name a file (new or written by plexus) with --db or [results] db");
    if (!parent.empty() && !fs::exists(parent, ec)) {
        fs::create_directories(parent, ec);
        if (ec)
            throw Error("results database " + path + ": cannot create folder " + parent.string() + ": " + ec.message(),
                        "choose another location with --db or [results] db");
    }
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK) {
        std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
        sqlite3_close(db_);
        db_ = nullptr;
        throw Error("results database " + path + ": cannot open: " + msg,
                    "check the path and its permissions, or choose another with --db");
    }
    if (sqlite3_db_readonly(db_, "main") == 1) {
        sqlite3_close(db_);
        db_ = nullptr;
        throw Error("results database " + path + " is read-only",
                    "make it writable (chmod u+w) or record into another file with --db");
    }
    sqlite3_busy_timeout(db_, 10000);
    try {
        exec("PRAGMA foreign_keys = ON");
        {
            Stmt probe(db_, "PRAGMA schema_version");  // fails if the file is not a database
            probe.step();
        }
        // Tables but no plexus schema version: another program's database, not to be written into.
        if (schema_version() == 0) {
            Stmt tables(db_, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name");
            std::string names;
            while (tables.step()) names += (names.empty() ? "" : ", ") + tables.text(0);
            if (!names.empty())
                throw Error("is an SQLite database, but not plexus's results (its tables: " + names + ")",
                            "record into another file with --db; plexus leaves this one as it is");
        }
        exec("PRAGMA journal_mode = WAL");
        exec("PRAGMA synchronous = NORMAL");
        migrate();
    } catch (const Error& e) {
        sqlite3_close(db_);
        db_ = nullptr;
        std::string what = e.what();
        // Stmt's prefix and exec()'s, said once below.
        for (const std::string prefix : {std::string("results database: "), "results database " + path + ": "})
            if (what.rfind(prefix, 0) == 0) what.erase(0, prefix.size());
        if (what.find("readonly") != std::string::npos || what.find("read-only") != std::string::npos)
            throw Error("results database " + path + " is read-only (" + what + ")",
                        "make it writable or record into another file with --db");
        throw Error("results database " + path + ": " + what,
                    e.hint().empty() ? "is it an SQLite file written by plexus? choose another with --db" : e.hint());
    }
}

ResultsStore::~ResultsStore() {
    if (db_) sqlite3_close(db_);
}

void ResultsStore::exec(const std::string& sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
        std::string msg = err ? err : "unknown error";
        sqlite3_free(err);
        throw Error("results database " + path_ + ": " + msg, "check that the disk has room and the file is writable");
    }
}

int ResultsStore::schema_version() {
    Stmt s(db_, "PRAGMA user_version");
    s.step();
    return static_cast<int>(s.i64(0));
}

void ResultsStore::migrate() {
    int version = schema_version();
    if (version > kSchemaVersion)
        throw Error("schema version " + std::to_string(version) + " is newer than this plexus understands (" +
                        std::to_string(kSchemaVersion) + ")",
                    "it was written by a newer plexus: upgrade, or record into another file with --db");
    while (version < kSchemaVersion) {
        Transaction tx(*this);
        exec(kMigrations[version]);
        exec("PRAGMA user_version = " + std::to_string(version + 1));
        tx.commit();
        ++version;
    }
}

int64_t ResultsStore::begin_run(const RunInfo& r, const std::map<std::string, Value>& params) {
    Transaction tx(*this);
    Stmt s(db_,
           "INSERT INTO run (sweep_id, name, config_hash, config_json, toml, seed, status, started, heartbeat,"
           " plugins, fingerprint, device, host, git_rev, world_size, command)"
           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', ?7, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)");
    if (r.sweep_id)
        s.bind(1, *r.sweep_id);
    else
        s.bind_null(1);
    s.bind(2, r.name).bind(3, r.config_hash).bind(4, r.config_json).bind(5, r.toml).bind(6, r.seed);
    s.bind(7, now()).bind(8, r.plugins).bind(9, r.fingerprint).bind(10, r.device).bind(11, r.host);
    s.bind(12, r.git_rev).bind(13, r.world_size).bind(14, r.command);
    s.step();
    const int64_t id = sqlite3_last_insert_rowid(db_);
    Stmt p(db_, "INSERT INTO param (run_id, key, type, value, num) VALUES (?1, ?2, ?3, ?4, ?5)");
    for (const auto& [key, v] : params) {
        p.bind(1, id).bind(2, key).bind(3, std::string(to_string(v.type())));
        p.bind(4, v.type() == ValueType::String ? v.as_string() : v.to_text());
        if (v.type() == ValueType::Int || v.type() == ValueType::Float)
            p.bind(5, v.as_double());
        else if (v.type() == ValueType::Bool)
            p.bind(5, v.as_bool() ? 1.0 : 0.0);
        else
            p.bind_null(5);
        p.step();
        p.reset();
    }
    Stmt t(db_, "INSERT INTO summary (run_id, rank, key, text) VALUES (?1, 0, ?2, ?3)");
    for (const auto& [key, text] : r.texts) {
        t.bind(1, id).bind(2, key).bind(3, text).step();
        t.reset();
    }
    note_claimed_run(r, id);
    tx.commit();
    return id;
}

void ResultsStore::note_claimed_run(const RunInfo& r, int64_t id) {
    if (!r.sweep_id || r.claim.empty()) return;  // not started by a sweep
    Stmt c(db_, "UPDATE point_claim SET run_id = ?1 WHERE sweep_id = ?2 AND config_hash = ?3 AND owner = ?4");
    c.bind(1, id).bind(2, *r.sweep_id).bind(3, r.config_hash).bind(4, r.claim).step();
}

PointClaim ResultsStore::claim_point(int64_t sweep, const std::string& hash, const std::string& owner,
                                     const std::function<bool(const PointClaim&)>& holder_alive) {
    Transaction tx(*this);
    Stmt get(db_,
             "SELECT c.owner, max(c.claimed, coalesce(r.heartbeat, 0)), coalesce(c.run_id, 0) FROM point_claim c"
             " LEFT JOIN run r ON r.id = c.run_id WHERE c.sweep_id = ?1 AND c.config_hash = ?2");
    get.bind(1, sweep).bind(2, hash);
    if (get.step()) {
        PointClaim held{get.text(0), get.dbl(1), get.i64(2)};
        if (held.owner != owner && holder_alive(held)) return held;  // rolled back: nothing changed
    }
    Stmt put(db_,
             "INSERT OR REPLACE INTO point_claim (sweep_id, config_hash, owner, claimed, run_id)"
             " VALUES (?1, ?2, ?3, ?4, NULL)");
    put.bind(1, sweep).bind(2, hash).bind(3, owner).bind(4, now()).step();
    tx.commit();
    return {owner, now(), 0};
}

int64_t ResultsStore::claimed_run(int64_t sweep, const std::string& hash, const std::string& owner) {
    Stmt s(db_, "SELECT coalesce(run_id, 0) FROM point_claim WHERE sweep_id = ?1 AND config_hash = ?2 AND owner = ?3");
    s.bind(1, sweep).bind(2, hash).bind(3, owner);
    return s.step() ? s.i64(0) : 0;
}

void ResultsStore::release_point(int64_t sweep, const std::string& hash, const std::string& owner) {
    Stmt s(db_, "DELETE FROM point_claim WHERE sweep_id = ?1 AND config_hash = ?2 AND owner = ?3");
    s.bind(1, sweep).bind(2, hash).bind(3, owner).step();
}

bool ResultsStore::take_over_run(const RunInfo& run, const std::string& expected, const std::string& owner) {
    Transaction tx(*this);
    if (summary_text(run.id, "process") != expected) return false;  // another process took it first
    set_summary_text(run.id, 0, "process", owner);
    reopen_run(run.id);
    note_claimed_run(run, run.id);
    tx.commit();
    return true;
}

void ResultsStore::add_metrics(int64_t run, const std::vector<MetricRow>& rows) {
    Transaction tx(*this);
    Stmt s(db_,
           "INSERT INTO metric (run_id, rank, key, step, value, tokens, wall_time, sim_time)"
           " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
           " ON CONFLICT (run_id, rank, key, step) DO UPDATE SET value = excluded.value,"
           " tokens = excluded.tokens, wall_time = excluded.wall_time, sim_time = excluded.sim_time");
    for (const auto& m : rows) {
        s.bind(1, run).bind(2, m.rank).bind(3, m.key).bind(4, m.step);
        if (std::isfinite(m.value))
            s.bind(5, m.value);
        else
            s.bind_null(5);  // NaN is not storable as REAL; NULL says "no number"
        s.bind(6, m.tokens).bind(7, m.wall_time);
        if (m.sim_time)
            s.bind(8, *m.sim_time);
        else
            s.bind_null(8);
        s.step();
        s.reset();
    }
    Stmt h(db_, "UPDATE run SET heartbeat = ?1 WHERE id = ?2");
    h.bind(1, now()).bind(2, run).step();
    tx.commit();
}

void ResultsStore::set_summary(int64_t run, int rank, const std::string& key, double value) {
    Stmt s(db_,
           "INSERT INTO summary (run_id, rank, key, value) VALUES (?1, ?2, ?3, ?4)"
           " ON CONFLICT (run_id, rank, key) DO UPDATE SET value = excluded.value, text = NULL");
    s.bind(1, run).bind(2, rank).bind(3, key);
    if (std::isfinite(value))
        s.bind(4, value);
    else
        s.bind_null(4);
    s.step();
}

void ResultsStore::set_summary_text(int64_t run, int rank, const std::string& key, const std::string& text) {
    Stmt s(db_,
           "INSERT INTO summary (run_id, rank, key, text) VALUES (?1, ?2, ?3, ?4)"
           " ON CONFLICT (run_id, rank, key) DO UPDATE SET text = excluded.text, value = NULL");
    s.bind(1, run).bind(2, rank).bind(3, key).bind(4, text).step();
}

void ResultsStore::finish_run(int64_t run, const std::string& status, const std::string& error) {
    Stmt s(db_, "UPDATE run SET status = ?1, ended = ?2, heartbeat = ?2, error = ?3 WHERE id = ?4");
    s.bind(1, status).bind(2, now());
    if (error.empty())
        s.bind_null(3);
    else
        s.bind(3, error);
    s.bind(4, run).step();
}

std::string ResultsStore::integrity_check() {
    Stmt s(db_, "PRAGMA integrity_check");
    std::string out;
    while (s.step()) out += (out.empty() ? "" : "\n") + s.text(0);
    return out;
}

void ResultsStore::reopen_run(int64_t run) {
    Stmt s(db_, "UPDATE run SET status = 'running', ended = NULL, heartbeat = ?1, error = NULL WHERE id = ?2");
    s.bind(1, now()).bind(2, run).step();
}

void ResultsStore::forget_metrics_from(int64_t run, int64_t step) {
    Stmt s(db_, "DELETE FROM metric WHERE run_id = ?1 AND step >= ?2");
    s.bind(1, run).bind(2, step).step();
}

std::string ResultsStore::summary_text(int64_t run, const std::string& key) {
    Stmt s(db_, "SELECT text FROM summary WHERE run_id = ?1 AND rank = 0 AND key = ?2");
    s.bind(1, run).bind(2, key);
    return s.step() ? s.text(0) : "";
}

int64_t ResultsStore::ensure_sweep(const std::string& name, const std::string& toml, const std::string& git_rev,
                                   const std::string& host) {
    Transaction tx(*this);
    Stmt find(db_, "SELECT id FROM sweep WHERE name = ?1 ORDER BY id DESC LIMIT 1");
    find.bind(1, name);
    int64_t id = 0;
    if (find.step()) {
        id = find.i64(0);
        Stmt u(db_, "UPDATE sweep SET toml = ?1 WHERE id = ?2");
        u.bind(1, toml).bind(2, id).step();
    } else {
        Stmt s(db_, "INSERT INTO sweep (name, toml, created, git_rev, host) VALUES (?1, ?2, ?3, ?4, ?5)");
        s.bind(1, name).bind(2, toml).bind(3, now()).bind(4, git_rev).bind(5, host).step();
        id = sqlite3_last_insert_rowid(db_);
    }
    tx.commit();
    return id;
}

namespace {
// The run table's columns a merge copies (all but id and sweep_id, which are this database's).
constexpr const char* kCopiedRunColumns =
    "name, config_hash, config_json, toml, seed, status, started, ended, heartbeat, error, plugins, fingerprint, "
    "device, host, git_rev, world_size, command";
}  // namespace

ResultsStore::MergeCounts ResultsStore::merge_from(const std::string& other) {
    {
        ResultsStore check(other, Open::MustExist);  // a plexus database, migrated to this schema
    }
    Stmt attach(db_, "ATTACH DATABASE ?1 AS src");
    attach.bind(1, other).step();
    struct Detach {
        ResultsStore& s;
        ~Detach() {
            try {
                s.exec("DETACH DATABASE src");
            } catch (...) {}
        }
    } detach{*this};
    MergeCounts counts;
    Transaction tx(*this);
    Stmt runs(db_,
              "SELECT r.id, r.config_hash, r.started, r.host, r.status, r.ended, r.heartbeat, s.name, s.toml, "
              "s.git_rev, s.host FROM src.run r LEFT JOIN src.sweep s ON s.id = r.sweep_id ORDER BY r.id");
    while (runs.step()) {
        const int64_t src = runs.i64(0);
        Stmt same(db_,
                  "SELECT id, status, ended, heartbeat FROM main.run WHERE config_hash = ?1 AND started IS ?2 "
                  "AND host IS ?3");
        same.bind(1, runs.text(1)).bind(2, runs.dbl(2)).bind(3, runs.text(3));
        if (same.step()) {
            if (same.text(1) == runs.text(4) && same.dbl(2) == runs.dbl(5) && same.dbl(3) == runs.dbl(6)) {
                ++counts.unchanged;
                continue;
            }
            Stmt drop(db_, "DELETE FROM main.run WHERE id = ?1");
            drop.bind(1, same.i64(0)).step();
            ++counts.updated;
        } else {
            ++counts.added;
        }
        std::optional<int64_t> sweep;
        if (!runs.null(7)) {
            Stmt find(db_, "SELECT id FROM main.sweep WHERE name = ?1 ORDER BY id DESC LIMIT 1");
            find.bind(1, runs.text(7));
            if (find.step()) {
                sweep = find.i64(0);
            } else {
                Stmt add(db_,
                         "INSERT INTO main.sweep (name, toml, created, git_rev, host) VALUES (?1, ?2, ?3, ?4, ?5)");
                add.bind(1, runs.text(7)).bind(2, runs.text(8)).bind(3, now()).bind(4, runs.text(9));
                add.bind(5, runs.text(10)).step();
                sweep = sqlite3_last_insert_rowid(db_);
            }
        }
        Stmt copy(db_, std::string("INSERT INTO main.run (sweep_id, ") + kCopiedRunColumns + ") SELECT ?1, " +
                           kCopiedRunColumns + " FROM src.run WHERE id = ?2");
        if (sweep)
            copy.bind(1, *sweep);
        else
            copy.bind_null(1);
        copy.bind(2, src).step();
        const int64_t id = sqlite3_last_insert_rowid(db_);
        for (const char* table :
             {"param (run_id, key, type, value, num) SELECT ?1, key, type, value, num FROM src.param",
              "metric (run_id, rank, key, step, value, tokens, wall_time, sim_time) SELECT ?1, "
              "rank, key, step, value, tokens, wall_time, sim_time FROM src.metric",
              "summary (run_id, rank, key, value, text) SELECT ?1, rank, key, value, text FROM "
              "src.summary"}) {
            Stmt rows(db_, std::string("INSERT INTO main.") + table + " WHERE run_id = ?2");
            rows.bind(1, id).bind(2, src).step();
        }
    }
    tx.commit();
    return counts;
}

std::vector<SweepInfo> ResultsStore::list_sweeps() {
    Stmt s(db_, "SELECT id, name, toml, created FROM sweep ORDER BY id DESC");
    std::vector<SweepInfo> out;
    while (s.step()) out.push_back({s.i64(0), s.text(1), s.text(2), s.dbl(3)});
    return out;
}

std::optional<SweepInfo> ResultsStore::find_sweep(const std::string& which) {
    const auto sweeps = list_sweeps();
    if (which.empty()) return sweeps.empty() ? std::nullopt : std::optional<SweepInfo>(sweeps.front());
    if (auto named = sweep_named(which)) return named;
    for (const auto& sw : sweeps)
        if (std::to_string(sw.id) == which) return sw;
    return std::nullopt;
}

std::optional<SweepInfo> ResultsStore::sweep_named(const std::string& name) {
    for (const auto& sw : list_sweeps())
        if (sw.name == name) return sw;
    return std::nullopt;
}

namespace {
const char* kRunColumns =
    "id, sweep_id, name, config_hash, config_json, toml, status, error, plugins, fingerprint, device, host,"
    " git_rev, command, seed, world_size, started, ended, heartbeat";

RunInfo read_run(Stmt& s) {
    RunInfo r;
    r.id = s.i64(0);
    if (!s.null(1)) r.sweep_id = s.i64(1);
    r.name = s.text(2);
    r.config_hash = s.text(3);
    r.config_json = s.text(4);
    r.toml = s.text(5);
    r.status = s.text(6);
    r.error = s.text(7);
    r.plugins = s.text(8);
    r.fingerprint = s.text(9);
    r.device = s.text(10);
    r.host = s.text(11);
    r.git_rev = s.text(12);
    r.command = s.text(13);
    r.seed = s.i64(14);
    r.world_size = s.i64(15);
    r.started = s.dbl(16);
    r.ended = s.dbl(17);
    r.heartbeat = s.dbl(18);
    return r;
}
}  // namespace

std::vector<RunInfo> ResultsStore::list_runs(int64_t limit) {
    Stmt s(db_, std::string("SELECT ") + kRunColumns + " FROM run ORDER BY id DESC LIMIT ?1");
    s.bind(1, limit);
    std::vector<RunInfo> out;
    while (s.step()) out.push_back(read_run(s));
    return out;
}

std::vector<RunInfo> ResultsStore::sweep_runs(int64_t sweep) {
    Stmt s(db_, std::string("SELECT ") + kRunColumns + " FROM run WHERE sweep_id = ?1 ORDER BY id");
    s.bind(1, sweep);
    std::vector<RunInfo> out;
    while (s.step()) out.push_back(read_run(s));
    return out;
}

std::optional<RunInfo> ResultsStore::newest_sweep_run(int64_t sweep, const std::string& hash) {
    Stmt s(db_, std::string("SELECT ") + kRunColumns +
                    " FROM run WHERE sweep_id = ?1 AND config_hash = ?2 ORDER BY id DESC LIMIT 1");
    s.bind(1, sweep).bind(2, hash);
    if (!s.step()) return std::nullopt;
    return read_run(s);
}

std::optional<RunInfo> ResultsStore::get_run(int64_t id) {
    Stmt s(db_, std::string("SELECT ") + kRunColumns + " FROM run WHERE id = ?1");
    s.bind(1, id);
    if (!s.step()) return std::nullopt;
    return read_run(s);
}

std::map<std::string, std::string> ResultsStore::params(int64_t run) {
    Stmt s(db_, "SELECT key, value FROM param WHERE run_id = ?1");
    s.bind(1, run);
    std::map<std::string, std::string> out;
    while (s.step()) out[s.text(0)] = s.text(1);
    return out;
}

std::vector<std::tuple<int, std::string, std::optional<double>, std::string>> ResultsStore::summaries(int64_t run) {
    Stmt s(db_, "SELECT rank, key, value, text FROM summary WHERE run_id = ?1 ORDER BY rank, key");
    s.bind(1, run);
    std::vector<std::tuple<int, std::string, std::optional<double>, std::string>> out;
    while (s.step()) {
        std::optional<double> v;
        if (!s.null(2)) v = s.dbl(2);
        out.emplace_back(static_cast<int>(s.i64(0)), s.text(1), v, s.text(3));
    }
    return out;
}

std::vector<std::string> ResultsStore::metric_keys(int64_t run) {
    Stmt s(db_, "SELECT DISTINCT key FROM metric WHERE run_id = ?1 ORDER BY key");
    s.bind(1, run);
    std::vector<std::string> out;
    while (s.step()) out.push_back(s.text(0));
    return out;
}

std::vector<std::pair<int64_t, double>> ResultsStore::metric_series(int64_t run, const std::string& key) {
    Stmt s(db_, "SELECT step, value FROM metric WHERE run_id = ?1 AND rank = 0 AND key = ?2 ORDER BY step");
    s.bind(1, run).bind(2, key);
    std::vector<std::pair<int64_t, double>> out;
    while (s.step()) out.emplace_back(s.i64(0), s.null(1) ? NAN : s.dbl(1));
    return out;
}

std::vector<MetricRow> ResultsStore::metric_rows(int64_t run, const std::string& key, int rank) {
    Stmt s(db_,
           "SELECT step, value, tokens, wall_time, sim_time FROM metric WHERE run_id = ?1 AND rank = ?2 "
           "AND key = ?3 ORDER BY step");
    s.bind(1, run).bind(2, static_cast<int64_t>(rank)).bind(3, key);
    std::vector<MetricRow> out;
    while (s.step()) {
        MetricRow m;
        m.rank = rank;
        m.key = key;
        m.step = s.i64(0);
        m.value = s.null(1) ? NAN : s.dbl(1);
        m.tokens = s.i64(2);
        m.wall_time = s.dbl(3);
        if (!s.null(4)) m.sim_time = s.dbl(4);
        out.push_back(m);
    }
    return out;
}

}  // namespace plexus::host
