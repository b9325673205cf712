// `plexus tokenize`: a BPE tokenizer trained on a corpus, llm.c shards with the right headers and
// counts, every line decoding back to itself, the tokens dataset training on them.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// A shard's header (magic, version, count) and its tokens; checks the file holds exactly them.
// uint16 ids: magic 20240520, version 1; uint32: 20240801, version 7 (llm.c's two formats).
template <typename T = uint16_t>
std::vector<uint32_t> read_shard(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    int32_t header[256];
    in.read(reinterpret_cast<char*>(header), sizeof header);
    REQUIRE(in);
    CHECK(header[0] == (sizeof(T) == 2 ? 20240520 : 20240801));
    CHECK(header[1] == (sizeof(T) == 2 ? 1 : 7));
    std::vector<T> tokens(static_cast<size_t>(header[2]));
    in.read(reinterpret_cast<char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * sizeof(T)));
    CHECK(in.gcount() == static_cast<std::streamsize>(tokens.size() * sizeof(T)));
    CHECK(fs::file_size(path) == 1024 + sizeof(T) * tokens.size());
    return {tokens.begin(), tokens.end()};
}

// 600 lines of made-up text: words, digits, accents, runs of spaces and a tab.
std::vector<std::string> corpus_lines() {
    const char* words[] = {"the",  "gradient", "flows", "through", "eight",  "ranks", "and",
                           "café", "naïve",    "sum",   "of",      "tokens", "π",     "x²"};
    std::vector<std::string> lines;
    uint64_t s = 7;
    for (int i = 0; i < 600; ++i) {
        std::string line;
        const int n = 3 + static_cast<int>(i % 9);
        for (int w = 0; w < n; ++w) {
            s = s * 6364136223846793005ULL + 1442695040888963407ULL;
            line += (w ? (s >> 60 == 0 ? "  " : " ") : "") + std::string(words[(s >> 33) % 14]);
        }
        if (i % 10 == 0) line += "\t" + std::to_string(i * 37);
        lines.push_back(line);
    }
    return lines;
}

}  // namespace

TEST_CASE("plexus tokenize trains a tokenizer and writes shards that decode back to the text and train", "[tokenize]") {
    if (!fs::exists(fs::path(PLEXUS_BINARY).parent_path() / "plexus-tokenize")) {  // built without SentencePiece
        auto res = run_plexus("tokenize x.txt --out y");
        CHECK_THAT(res.output, Contains("built without SentencePiece"));
        return;
    }
    TempDir dir;
    const auto lines = corpus_lines();
    std::string text;
    for (const auto& l : lines) text += l + "\n";
    const auto corpus = dir.file("corpus.txt", text);
    const std::string out = dir / "tok";
    auto res = run_plexus("tokenize " + corpus + " --out " + out + " --vocab 300 --val-fraction 0.1");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK_THAT(res.output, Contains("tokenized 600 lines") && Contains("(300 tokens)"));
    const auto train = read_shard(out + "/train_000.bin"), val = read_shard(out + "/val_000.bin");
    CHECK_THAT(res.output, Contains(std::to_string(train.size()) + " train and " + std::to_string(val.size())));

    // Every line decodes back to itself exactly (each document ends in the end-of-sequence id,
    // which --decode splits at); the validation split is every 10th line (10, 20, ... counting
    // from 1: 60 of the 600), the training split the others, in order.
    std::string train_lines, val_lines;
    for (size_t i = 0; i < lines.size(); ++i) (i % 10 == 9 ? val_lines : train_lines) += lines[i] + "\n";
    const auto train_text =
        run_plexus("tokenize --decode " + out + "/train_000.bin --model " + out + "/tokenizer.model");
    const auto val_text = run_plexus("tokenize --decode " + out + "/val_000.bin --model " + out + "/tokenizer.model");
    REQUIRE(train_text.exit_code == 0);
    CHECK(train_text.output == train_lines);
    CHECK(val_text.output == val_lines);
    CHECK(std::count(val_text.output.begin(), val_text.output.end(), '\n') == 60);
    for (uint32_t t : train) CHECK(t < 300);

    // The same tokenizer given: the same shards, byte for byte.
    res = run_plexus("tokenize " + corpus + " --out " + dir / "again" + " --model " + out + "/tokenizer.model" +
                     " --val-fraction 0.1 --shard-tokens 1000");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    std::vector<uint32_t> joined;
    auto shard_name = [&](int i) {
        char name[32];
        std::snprintf(name, sizeof name, "again/train_%03d.bin", i);
        return dir / name;
    };
    int shards = 0;
    for (; fs::exists(shard_name(shards)); ++shards) {
        const auto part = read_shard(shard_name(shards));
        CHECK(part.size() <= 1000 + 64);  // a shard closes after the line that reaches 1000
        joined.insert(joined.end(), part.begin(), part.end());
    }
    CHECK(shards == 18);  // 17405 tokens in shards of about 1000
    CHECK(joined == train);
    CHECK(read_shard(dir / "again/val_000.bin") == val);

    // The tokens dataset trains on them.
    const auto exp = dir.file("t.toml", std::string(kTinyExperiment));
    res = run_plexus("run " + exp + " --db " + dir / "r.db" + " --set data.name=tokens --set data.train=" + out +
                     "/train_000.bin --set data.val=" + out +
                     "/val_000.bin --set data.vocab_size=300 --set train.steps=5 --set train.seq_len=16");
    INFO(res.output);
    CHECK(res.exit_code == 0);

    // The uint32 format (llm.c's Llama 3 shards, automatic past 65,536 tokens): the same ids,
    // wider, and the dataset trains on it.
    res = run_plexus("tokenize " + corpus + " --out " + dir / "wide" + " --model " + out + "/tokenizer.model" +
                     " --val-fraction 0.1 --format uint32");
    INFO(res.output);
    REQUIRE(res.exit_code == 0);
    CHECK(read_shard<uint32_t>(dir / "wide/train_000.bin") == train);
    CHECK(read_shard<uint32_t>(dir / "wide/val_000.bin") == val);
    const auto wide_text =
        run_plexus("tokenize --decode " + dir / "wide/val_000.bin" + " --model " + out + "/tokenizer.model");
    CHECK(wide_text.output == val_text.output);
    res = run_plexus("run " + exp + " --db " + dir / "r.db" +
                     " --set data.name=tokens --set data.train=" + dir / "wide/train_000.bin --set data.val=" +
                     dir / "wide/val_000.bin --set data.vocab_size=300 --set train.steps=5 --set train.seq_len=16");
    INFO(res.output);
    CHECK(res.exit_code == 0);

    res = run_plexus("tokenize " + corpus + " --out " + dir / "x" + " --vocab 2000000");
    CHECK(res.exit_code == 2);
    CHECK_THAT(res.output, Contains("--vocab takes a vocabulary size in [16, 1000000]"));
    res = run_plexus("tokenize " + corpus + " --out " + dir / "x" + " --format int8");
    CHECK(res.exit_code == 2);
    CHECK_THAT(res.output, Contains("--format takes auto, uint16 or uint32, not 'int8'"));
}
