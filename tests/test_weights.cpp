// Weights out of a run and into another: [checkpoint] keep_final, `plexus export --safetensors`
// read back by an independent reader (Python and numpy), and train.init_from.
#include <catch2/catch.hpp>

#include <sstream>

#include "helpers.hpp"
#include "store/results.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

double summary(const std::string& db, int64_t run, const std::string& key) {
    host::ResultsStore store(db);
    for (const auto& [rank, k, value, text] : store.summaries(run))
        if (rank == 0 && k == key && value) return *value;
    return NAN;
}

// A safetensors reader written from the format's description (Debian's Python and numpy): the
// tensor count, element count, sum and sum of squares of every value, and the run it names.
const char* kReader = R"(
import json, struct, sys
import numpy as np
data = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', data[:8])[0]
header = json.loads(data[8:8 + n])
meta = header.pop('__metadata__')
kinds = {'F32': '<f4', 'F64': '<f8', 'I64': '<i8'}
total = squares = 0.0
count = 0
for name, e in sorted(header.items()):
    begin, end = e['data_offsets']
    a = np.frombuffer(data[8 + n + begin:8 + n + end], dtype=kinds[e['dtype']]).reshape(e['shape']).astype(np.float64)
    total += a.sum()
    squares += (a * a).sum()
    count += a.size
print(len(header), count, repr(total), repr(squares), meta['plexus.run'], meta['plexus.model'])
)";

}  // namespace

TEST_CASE("a finished run keeps its final weights, exports them as safetensors, and another run starts from them",
          "[weights]") {
    TempDir dir;
    const std::string db = dir / "r.db";
    const auto file = dir.file("w.toml", std::string(kTinyExperiment) + "[checkpoint]\nkeep_final = true\n");
    auto res = run_plexus("run " + file + " --db " + db + " --set train.steps=20");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    // One checkpoint is left, at the last step.
    int folders = 0;
    for (const auto& e : fs::directory_iterator(dir / "checkpoints/r/run1")) folders += e.is_directory();
    CHECK(folders == 1);
    CHECK(fs::exists(dir / "checkpoints/r/run1/step20/COMPLETE"));

    const std::string weights = dir / "w.safetensors";
    res = run_plexus("export 1 --db " + db + " --safetensors " + weights);
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("wrote " + weights + ": 29 tensors"));
    // numpy comes with Debian's python3-torch (scripts/packages.txt names it); a GPU machine's
    // image may have another Python, where this part is skipped, said so.
    if (run_command("/usr/bin/python3 -c 'import numpy'").exit_code != 0) {
        WARN("no numpy for /usr/bin/python3: the independent read-back is skipped");
    } else {
        dir.file("read.py", kReader);
        const auto read = run_command("/usr/bin/python3 " + dir / "read.py" + " " + weights);
        INFO(read.output);
        REQUIRE(read.exit_code == 0);
        std::istringstream fields(read.output);
        int tensors = 0;
        double count = 0, total = 0, squares = 0;
        std::string run, model;
        fields >> tensors >> count >> total >> squares >> run >> model;
        CHECK(tensors == 29);  // tokens and positions, 2 layers of 6 weights and 6 biases, the head's 3
        CHECK(count == summary(db, 1, "params"));
        CHECK(total == Approx(summary(db, 1, "param_sum")).epsilon(1e-9));
        CHECK(squares == Approx(summary(db, 1, "param_square_sum")).epsilon(1e-9));
        CHECK(run == "1");
        CHECK(model == "gpt");
    }

    // From the file and from the run: with a zero rate, the weights stay what run 1 ended with,
    // and evaluate to its final loss.
    // (plexus run --init-from RUN|FILE sets train.init_from: a number is a run id.)
    for (const auto& [flag, from] : std::vector<std::pair<std::string, std::string>>{
             {"--set train.init_from=w.safetensors", "w.safetensors"}, {"--init-from 1", "run:1"}}) {
        INFO(from);
        res = run_plexus("run " + file + " --db " + db + " --set train.steps=2 --set optimizer.lr=0 " + flag);
        INFO(res.output);
        REQUIRE(res.exit_code == 0);
        host::ResultsStore store(db);
        const int64_t id = store.list_runs(1).at(0).id;
        CHECK(summary(db, id, "param_sum") == summary(db, 1, "param_sum"));
        CHECK(summary(db, id, "final_eval_loss") == summary(db, 1, "final_eval_loss"));
        CHECK(store.params(id).at("train.init_from") == from);
    }

    // A missing file is refused before the run exists; weights of another shape fail the run as
    // its model is built, naming the parameter.
    const size_t runs_before = host::ResultsStore(db).list_runs(100).size();
    res = run_plexus("run " + file + " --db " + db + " --set train.init_from=missing.safetensors");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("train.init_from = 'missing.safetensors': no file"));
    CHECK(host::ResultsStore(db).list_runs(100).size() == runs_before);
    res = run_plexus("run " + file + " --db " + db + " --set model.d_model=16 --set train.init_from=w.safetensors");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("'embed.tokens.weight' is [32, 32] there but [32, 16] in this model"));
    CHECK(host::ResultsStore(db).get_run(static_cast<int64_t>(runs_before) + 1)->status == "failed");
    // A run that kept nothing has nothing to export.
    const auto plain = dir.file("p.toml", kTinyExperiment);
    REQUIRE(run_plexus("run " + plain + " --db " + db + " --set train.steps=2").exit_code == 0);
    res = run_plexus("export " + std::to_string(runs_before + 2) + " --db " + db + " --safetensors " + dir / "x.st");
    CHECK(res.exit_code == 1);
    CHECK_THAT(res.output, Contains("kept no weights") && Contains("keep_final = true"));
}
