// datasets/tokens at scale: uint16 and uint32 shards read as one sequence, windows across shard
// boundaries, ids checked as they are read, and shards mapped, not copied: two processes that
// read a whole shard hold it once, in the page cache they share.
#include <catch2/catch.hpp>
#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "helpers.hpp"

using namespace plexus;
using namespace plexus::test;
using Catch::Matchers::Contains;

namespace {

// An llm.c shard: uint16 ids (magic 20240520, version 1) or uint32 (20240801, version 7).
template <typename T>
void write_shard(const std::string& path, const std::vector<T>& tokens) {
    std::vector<int32_t> header(256, 0);
    header[0] = sizeof(T) == 2 ? 20240520 : 20240801;
    header[1] = sizeof(T) == 2 ? 1 : 7;
    header[2] = static_cast<int32_t>(tokens.size());
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.data()), 1024);
    out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * sizeof(T)));
}

std::unique_ptr<Dataset> open_tokens(const TempDir& dir, const std::string& settings) {
    auto cfg = resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"tokens\"\n" + settings);
    host::HostContext ctx(cfg, torch::kCPU, 0);
    return cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), ctx);
}

// Fields of /proc/self/status (RssAnon) or of one mapping in /proc/self/smaps, in bytes.
int64_t status_kb(const std::string& field) {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);)
        if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
    return -1;
}
std::map<std::string, int64_t> mapping_of(const std::string& path) {
    std::ifstream in("/proc/self/smaps");
    std::map<std::string, int64_t> out;
    bool inside = false;
    for (std::string line; std::getline(in, line);) {
        const bool header = line.find('-') < line.find(' ') && line.find(':') > line.find(' ');
        if (header) {
            inside = line.size() >= path.size() && line.compare(line.size() - path.size(), path.size(), path) == 0;
            continue;
        }
        const auto colon = line.find(':');
        if (inside && colon != std::string::npos && line.find(" kB") != std::string::npos)
            out[line.substr(0, colon)] += std::stoll(line.substr(colon + 1)) * 1024;
    }
    return out;
}

}  // namespace

TEST_CASE("token shards: uint16 and uint32 files read as one sequence, ids checked as read", "[data][tokens]") {
    TempDir dir;
    // Token i of the whole sequence is i % 70000 (so the uint32 shard holds ids past 65,535), in
    // three shards of two formats; windows of 64 cross both boundaries.
    std::vector<uint16_t> a;
    std::vector<uint32_t> b;
    std::vector<uint16_t> c;
    int64_t i = 0;
    for (; i < 1000; ++i) a.push_back(static_cast<uint16_t>(i));
    for (; i < 3000; ++i) b.push_back(static_cast<uint32_t>(66000 + i));
    for (; i < 4000; ++i) c.push_back(static_cast<uint16_t>(i));
    write_shard(dir / "s_000.bin", a);
    write_shard(dir / "s_001.bin", b);
    write_shard(dir / "s_002.bin", c);
    auto expected = [](int64_t k) { return k < 1000 || k >= 3000 ? k : 66000 + k; };

    // The last fifth held out: training is shards 0, 1 and the start of 2, validation the rest.
    auto data = open_tokens(dir, "train=\"" + (dir / "s_*.bin") + "\"\nval_fraction=0.2\nvocab_size=70000\n");
    CHECK_THAT(data->describe(), Contains("3 train shard(s)") && Contains("3200 train / 800 validation tokens"));
    StreamSpec spec{Split::Train, 1, 63, 0, 1, 5};
    spec.sequential = true;  // window k starts at token 63 k: windows 15 and 47 cross the boundaries
    auto train = data->open(spec);
    REQUIRE(train->length() == 50);
    for (int64_t w = 0; w < 50; ++w) {
        const auto batch = train->next();
        for (int64_t t = 0; t < 63; ++t) {
            INFO("window " << w << ", token " << t);
            REQUIRE(batch.inputs[0][t].item<int64_t>() == expected(w * 63 + t));
            REQUIRE(batch.targets[0][t].item<int64_t>() == expected(w * 63 + t + 1));
        }
    }
    spec.split = Split::Validation;
    CHECK(data->open(spec)->next().inputs[0][0].item<int64_t>() == 3200);

    // An id at or past vocab_size fails the read that meets it, naming the shard.
    auto small = open_tokens(dir, "train=\"" + (dir / "s_*.bin") + "\"\nval_fraction=0.2\nvocab_size=60000\n");
    auto stream = small->open({Split::Train, 1, 999, 0, 1, 5, true});
    CHECK_NOTHROW(stream->next());  // tokens 0..999: shard 0 only
    CHECK_THROWS_WITH(stream->next(), Contains("s_001.bin' holds token id 67000 >= data.vocab_size (60000)"));

    // A uint32 shard with a damaged version, or one cut short, is refused as it opens.
    std::vector<int32_t> header(256, 0);
    header[0] = 20240801, header[1] = 1, header[2] = 10;
    std::ofstream(dir / "v.bin", std::ios::binary).write(reinterpret_cast<const char*>(header.data()), 1024);
    CHECK_THROWS_WITH(open_tokens(dir, "train=\"" + (dir / "v.bin") + "\"\n"),
                      Contains("has version 1, expected 7 for magic 20240801"));
    write_shard(dir / "cut.bin", std::vector<uint32_t>(10, 1));
    fs::resize_file(dir / "cut.bin", 1024 + 39);
    CHECK_THROWS_WITH(open_tokens(dir, "train=\"" + (dir / "cut.bin") + "\"\n"),
                      Contains("announces 10 tokens but holds fewer"));
}

TEST_CASE("token shards are mapped: two processes reading a whole shard share one copy", "[data][tokens]") {
    TempDir dir;
    const int64_t n = 32 << 20;  // 64 MiB of uint16 tokens
    std::vector<uint16_t> tokens(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) tokens[static_cast<size_t>(k)] = static_cast<uint16_t>(k % 50000);
    write_shard(dir / "big.bin", tokens);
    write_shard(dir / "small.bin", std::vector<uint16_t>(4096, 7));
    const auto shard = dir / "big.bin", settings = "train=\"" + (dir / "small.bin") + "\"\nval=\"" + shard + "\"\n";
    const int64_t bytes = n * 2;
    // Warm the page cache, so that what the children map is resident from the start.
    std::ifstream(shard, std::ios::binary).ignore(std::numeric_limits<std::streamsize>::max());
    // Resolve the configuration (which loads the plugin) once, here; each child opens its own
    // dataset, as a local rank does, reads all of the validation shard, then waits until both
    // have read before measuring (so each sees the other's mapping).
    auto cfg = resolve_text(dir, "[model]\nname=\"gpt\"\n[data]\nname=\"tokens\"\n" + settings);
    int ready[2], go[2], report[2];
    REQUIRE(pipe(ready) == 0);
    REQUIRE(pipe(go) == 0);
    REQUIRE(pipe(report) == 0);
    std::vector<pid_t> children;
    for (int rank = 0; rank < 2; ++rank) {
        const pid_t pid = fork();
        REQUIRE(pid >= 0);
        if (pid > 0) {
            children.push_back(pid);
            continue;
        }
        std::ostringstream out;
        try {
            host::HostContext ctx(cfg, torch::kCPU, 0);
            // LibTorch's first tensor operations set up pools that are no part of the data.
            for (int k = 0; k < 2; ++k) (void)torch::ones({64, 1025}, torch::kInt64).narrow(1, 0, 1024).clone().sum();
            const int64_t anon_before = status_kb("RssAnon");
            auto data = cfg.plugins.at("data")->make_dataset(cfg.sections.at("data"), ctx);
            auto stream = data->open({Split::Validation, 64, 1024, 0, 1, 1, true});
            int64_t sum = 0;
            for (int64_t k = 0; k < stream->length(); ++k) sum += stream->next().inputs[0][1].item<int64_t>();
            const int64_t anon_grew = status_kb("RssAnon") - anon_before;
            char byte = 'r';
            (void)!write(ready[1], &byte, 1);
            (void)!read(go[0], &byte, 1);
            const auto m = mapping_of(shard);
            out << anon_grew << " " << m.at("Rss") << " " << m.at("Pss") << " " << sum << "\n";
        } catch (const std::exception& e) { out << "error " << e.what() << "\n"; }
        const auto text = out.str();
        (void)!write(report[1], text.data(), text.size());
        _exit(0);
    }
    char byte = 0;
    for (int k = 0; k < 2; ++k) REQUIRE(read(ready[0], &byte, 1) == 1);
    for (int k = 0; k < 2; ++k) REQUIRE(write(go[1], "g", 1) == 1);
    for (pid_t pid : children) waitpid(pid, nullptr, 0);
    close(report[1]);
    std::string all;
    char buf[512];
    for (ssize_t got; (got = read(report[0], buf, sizeof buf)) > 0;) all.append(buf, static_cast<size_t>(got));
    for (int fd : {ready[0], ready[1], go[0], go[1], report[0]}) close(fd);
    INFO(all);
    std::istringstream in(all);
    for (int rank = 0; rank < 2; ++rank) {
        int64_t anon_grew = 0, rss = 0, pss = 0, sum = 0;
        REQUIRE(in >> anon_grew >> rss >> pss >> sum);
        // Each process's private memory grew by a small fraction of the shard (a copy: 64 MiB),
        // the shard is resident through the mapping, and its pages are shared half and half.
        CHECK(anon_grew < bytes / 8);
        CHECK(rss >= bytes * 9 / 10);
        CHECK(pss <= rss * 6 / 10);
        CHECK(sum > 0);
    }
}
