#include <sqlite3.h>

#include <catch2/catch.hpp>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {
host::RunInfo some_run(const std::string& name) {
    host::RunInfo r;
    r.name = name;
    r.config_hash = "0123456789abcdef";
    r.config_json = "{}";
    return r;
}

int64_t count(const std::string& db, const std::string& sql) {
    sqlite3* h = nullptr;
    sqlite3_open_v2(db.c_str(), &h, SQLITE_OPEN_READONLY, nullptr);
    sqlite3_stmt* s = nullptr;
    sqlite3_prepare_v2(h, sql.c_str(), -1, &s, nullptr);
    int64_t n = -1;
    if (sqlite3_step(s) == SQLITE_ROW) n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(h);
    return n;
}
}  // namespace

TEST_CASE("a new database gets the current schema", "[results]") {
    TempDir dir;
    host::ResultsStore store(dir / "sub/folder/r.db");  // folders are created
    CHECK(store.schema_version() == host::kSchemaVersion);
    for (const char* table : {"sweep", "run", "param", "metric", "summary"})
        CHECK(count(dir / "sub/folder/r.db",
                    std::string("SELECT count(*) FROM sqlite_master WHERE name='") + table + "'") == 1);
}

TEST_CASE("runs, params, metrics and summaries round-trip, metrics upsert", "[results]") {
    TempDir dir;
    const auto db = dir / "r.db";
    host::ResultsStore store(db);
    const int64_t id = store.begin_run(some_run("a"), {{"optimizer.lr", Value(3e-4)}, {"model.name", Value("gpt")}});
    store.add_metrics(id, {{0, "loss", 0, 5.5, 100, 0.1, std::nullopt}, {0, "loss", 1, 4.0, 200, 0.2, std::nullopt}});
    store.add_metrics(id, {{0, "loss", 1, 3.5, 200, 0.3, std::nullopt}});  // a resumed run overwrites step 1
    store.add_metrics(id, {{0, "loss", 2, NAN, 300, 0.4, std::nullopt}});  // NaN is stored as NULL
    store.set_summary(id, 0, "final_loss", 3.5);
    store.set_summary(id, 0, "final_loss", 3.25);
    store.finish_run(id, "finished", "");

    auto run = store.get_run(id);
    REQUIRE(run);
    CHECK(run->status == "finished");
    CHECK(run->name == "a");
    CHECK(store.params(id).at("optimizer.lr") == "0.0003");
    CHECK(store.params(id).at("model.name") == "gpt");
    auto series = store.metric_series(id, "loss");
    REQUIRE(series.size() == 3);
    CHECK(series[1].second == 3.5);
    CHECK(std::isnan(series[2].second));
    CHECK(count(db, "SELECT count(*) FROM metric") == 3);
    CHECK(count(db, "SELECT count(*) FROM summary WHERE key='final_loss' AND value=3.25") == 1);
    CHECK(sql_rows(db, "PRAGMA journal_mode") == "wal\n");
}

TEST_CASE("merging databases copies runs whole, once, and replaces a run that has ended since", "[results]") {
    TempDir dir;
    const auto task = dir / "task_7_0.db", main_db = dir / "main.db";
    int64_t running = 0;
    {
        host::ResultsStore src(task);
        auto in_sweep = some_run("a");
        in_sweep.sweep_id = src.ensure_sweep("grid", "toml", "rev", "node1");
        const int64_t done = src.begin_run(in_sweep, {{"optimizer.lr", Value(3e-4)}});
        src.add_metrics(done, {{0, "loss", 0, 5.5, 100, 0.1, std::nullopt}, {1, "loss", 0, 5.25, 100, 0.1, 2.0}});
        src.set_summary(done, 0, "final_eval_loss", 3.25);
        src.set_summary_text(done, 0, "state_hash", "abc");
        src.finish_run(done, "finished", "");
        auto other = some_run("b");
        other.config_hash = "another";
        running = src.begin_run(other, {{"optimizer.lr", Value(1e-3)}});
    }
    host::ResultsStore store(main_db);
    store.begin_run(some_run("here before"), {});
    auto c = store.merge_from(task);
    CHECK(c.added == 2);
    CHECK(c.updated == 0);
    CHECK(count(main_db, "SELECT count(*) FROM run") == 3);
    CHECK(count(main_db, "SELECT count(*) FROM sweep WHERE name = 'grid'") == 1);
    CHECK(count(main_db, "SELECT count(*) FROM run r JOIN sweep s ON s.id = r.sweep_id WHERE r.name = 'a'") == 1);
    CHECK(count(main_db, "SELECT count(*) FROM metric") == 2);
    CHECK(count(main_db, "SELECT count(*) FROM metric WHERE rank = 1 AND sim_time = 2.0") == 1);
    CHECK(count(main_db, "SELECT count(*) FROM summary WHERE text = 'abc' OR value = 3.25") == 2);
    CHECK(count(main_db, "SELECT count(*) FROM param WHERE key = 'optimizer.lr'") == 2);
    // Again: nothing new.
    c = store.merge_from(task);
    CHECK(c.added == 0);
    CHECK(c.unchanged == 2);
    CHECK(count(main_db, "SELECT count(*) FROM run") == 3);
    // The running one ends there: merged again, it is replaced, not doubled.
    {
        host::ResultsStore src(task);
        src.set_summary(running, 0, "final_eval_loss", 2.5);
        src.finish_run(running, "interrupted", "scancel");
    }
    c = store.merge_from(task);
    CHECK(c.updated == 1);
    CHECK(c.unchanged == 1);
    CHECK(count(main_db, "SELECT count(*) FROM run") == 3);
    CHECK(count(main_db, "SELECT count(*) FROM run WHERE name = 'b' AND status = 'interrupted'") == 1);
    CHECK(count(main_db, "SELECT count(*) FROM summary WHERE value = 2.5") == 1);
    CHECK_THROWS_WITH(store.merge_from(dir / "missing.db"), Contains("missing.db"));
}

TEST_CASE("a version-1 database is migrated forward without losing rows", "[results]") {
    TempDir dir;
    const auto db = dir / "old.db";
    {
        host::ResultsStore store(db);  // build the current schema, then roll the file back to v1
        store.begin_run(some_run("kept"), {{"k", Value(1)}});
    }
    // What a v1 file looks like: no command column, no status index, no point claims.
    REQUIRE(sql_rows(db,
                     "DROP TABLE point_claim; DROP INDEX run_status; ALTER TABLE run DROP COLUMN command; "
                     "PRAGMA user_version = 1;")
                .empty());
    CHECK(count(db, "PRAGMA user_version") == 1);
    host::ResultsStore store(db);
    CHECK(store.schema_version() == host::kSchemaVersion);
    auto runs = store.list_runs(10);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].name == "kept");
    CHECK(count(db, "SELECT count(*) FROM pragma_table_info('run') WHERE name='command'") == 1);
    CHECK(count(db, "SELECT count(*) FROM sqlite_master WHERE name='point_claim'") == 1);
    CHECK(count(db, "SELECT count(*) FROM param") == 1);
}

TEST_CASE("a database from a newer plexus, or not a database at all, is refused", "[results]") {
    TempDir dir;
    const auto db = dir / "new.db";
    {
        host::ResultsStore store(db);
        store.begin_run(some_run("precious"), {});
        store.exec("PRAGMA user_version = 99");
    }
    try {
        host::ResultsStore again(db);
        FAIL("a newer schema was accepted");
    } catch (const Error& e) {
        CHECK_THAT(std::string(e.what()), Contains("newer"));
        CHECK_THAT(std::string(e.what()), Contains("99"));
    }
    CHECK(count(db, "SELECT count(*) FROM run WHERE name='precious'") == 1);  // untouched

    const auto junk = dir.file("junk.db", std::string(4096, 'x'));
    try {
        host::ResultsStore bad(junk);
        FAIL("a non-database file was accepted");
    } catch (const Error& e) { CHECK_THAT(std::string(e.what()), Contains("junk.db")); }
}
