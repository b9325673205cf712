#include "runtime/checkpoint.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <set>

#include <plexus/error.hpp>
#include <torch/torch.h>

#include "base/hash.hpp"
#include "base/text.hpp"
#include "config/experiment.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

constexpr char kMagic[8] = {'P', 'L', 'X', 'C', 'K', 'P', 'T', '\n'};
// Version 2 checksums the body with XXH3-64; version 1 (still read) with FNV-1a byte by byte,
// 20 s of a 1.3B-parameter AdamW rank's 16 GB at 0.9 GB/s.
constexpr uint32_t kVersion = 2;
constexpr uint32_t kOldestVersion = 1;
// The element types a checkpoint may hold (anything a strategy's state uses).
const std::set<c10::ScalarType> kStorable = {c10::kByte, c10::kChar,  c10::kShort,  c10::kInt,  c10::kLong,
                                             c10::kHalf, c10::kFloat, c10::kDouble, c10::kBool, c10::kBFloat16};

std::string sys_error() { return std::strerror(errno); }

class Writer {
public:
    Writer(const fs::path& file) : path_(file.string()), f_(std::fopen(path_.c_str(), "wb")) {
        if (!f_)
            throw Error("cannot write checkpoint " + path_ + ": " + sys_error(), "check that the folder is writable");
    }
    ~Writer() {
        if (f_) std::fclose(f_);
    }
    void raw(const void* data, size_t n) {
        if (n && std::fwrite(data, 1, n, f_) != n)
            throw Error("cannot write checkpoint " + path_ + ": " + sys_error(), "free some disk space");
    }
    void body(const void* data, size_t n) {
        hash_.add(data, n);
        raw(data, n);
    }
    template <typename T>
    void value(T v) {
        body(&v, sizeof v);
    }
    void text(const std::string& s) {
        value<uint64_t>(s.size());
        body(s.data(), s.size());
    }
    uint64_t hash() const { return hash_.value(); }
    // Flushes to the disk and closes; throws on any error (a full disk may show only here).
    void close() {
        if (std::fflush(f_) != 0 || fsync(fileno(f_)) != 0) {
            const std::string why = sys_error();
            std::fclose(f_);
            f_ = nullptr;
            throw Error("cannot write checkpoint " + path_ + ": " + why, "free some disk space");
        }
        const int rc = std::fclose(f_);
        f_ = nullptr;
        if (rc != 0) throw Error("cannot write checkpoint " + path_ + ": " + sys_error(), "free some disk space");
    }

private:
    std::string path_;
    std::FILE* f_;
    StreamHash hash_;  // over every byte of the body, in the order written
};

class Reader {
public:
    Reader(const fs::path& file) : path_(file.string()), in_(path_, std::ios::binary) {
        if (!in_) throw Error("cannot read checkpoint " + path_ + ": " + sys_error(), "");
        in_.seekg(0, std::ios::end);
        size_ = static_cast<uint64_t>(in_.tellg());
        in_.seekg(0);
    }
    [[noreturn]] void bad(const std::string& what) const {
        throw Error("checkpoint " + path_ + " is damaged: " + what,
                    "it was cut short or overwritten; resume from an older checkpoint or start the run again");
    }
    void raw(void* data, size_t n) {
        if (n > size_ - pos_) bad("it ends early (" + std::to_string(size_) + " bytes)");
        in_.read(static_cast<char*>(data), static_cast<std::streamsize>(n));
        if (!in_) bad("a read failed");
        pos_ += n;
    }
    // The body's checksum from here on: the one of the file's format version.
    void start_body(uint32_t version) {
        hash_ = std::make_unique<StreamHash>(version == 1 ? StreamHash::Kind::kFnv1a : StreamHash::Kind::kXxh3);
    }
    void body(void* data, size_t n) {
        raw(data, n);
        hash_->add(data, n);
    }
    template <typename T>
    T value() {
        T v{};
        body(&v, sizeof v);
        return v;
    }
    // A length, checked against what is left of the file before anything is allocated.
    uint64_t length() {
        const auto n = value<uint64_t>();
        if (n > size_ - pos_) bad("a length of " + std::to_string(n) + " bytes runs past its end");
        return n;
    }
    std::string text() {
        std::string s(length(), '\0');
        body(s.data(), s.size());
        return s;
    }
    uint64_t hash() const { return hash_->value(); }
    uint64_t left() const { return size_ - pos_; }

private:
    std::string path_;
    std::ifstream in_;
    uint64_t size_ = 0, pos_ = 0;
    std::unique_ptr<StreamHash> hash_;
};

void fsync_dir(const fs::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        ::close(fd);
    }
}

// Writes `text` to `file` atomically.
void write_small_file(const fs::path& file, const std::string& text) {
    const fs::path tmp = file.string() + ".tmp";
    {
        Writer w(tmp);
        w.raw(text.data(), text.size());
        w.close();
    }
    std::error_code ec;
    fs::rename(tmp, file, ec);
    if (ec) throw Error("cannot write " + file.string() + ": " + ec.message(), "");
    fsync_dir(file.parent_path());
}

}  // namespace

void write_rank_checkpoint(const fs::path& file, const RankCheckpoint& c) {
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    if (ec) throw Error("cannot create checkpoint folder " + file.parent_path().string() + ": " + ec.message(), "");
    const fs::path tmp = file.string() + ".tmp";
    try {
        Writer w(tmp);
        w.raw(kMagic, sizeof kMagic);
        w.raw(&kVersion, sizeof kVersion);
        w.text(c.config_hash);
        w.value<int64_t>(c.run_id);
        w.value<int64_t>(c.step);
        w.value<int32_t>(c.rank);
        w.value<int32_t>(c.world);
        w.value<uint64_t>(c.numbers.size());
        for (const auto& [k, v] : c.numbers) {
            w.text(k);
            w.value<double>(v);
        }
        w.value<uint64_t>(c.texts.size());
        for (const auto& [k, v] : c.texts) {
            w.text(k);
            w.text(v);
        }
        w.value<uint64_t>(c.tensors.size());
        for (const auto& [name, tensor] : c.tensors) {
            const auto t = tensor.detach().to(torch::kCPU).contiguous();
            w.text(name);
            w.value<int32_t>(static_cast<int32_t>(t.scalar_type()));
            w.value<uint64_t>(static_cast<uint64_t>(t.dim()));
            for (int64_t s : t.sizes()) w.value<int64_t>(s);
            const size_t bytes = static_cast<size_t>(t.numel()) * t.element_size();
            w.value<uint64_t>(bytes);
            w.body(t.data_ptr(), bytes);
        }
        const uint64_t h = w.hash();
        w.raw(&h, sizeof h);
        w.close();
    } catch (...) {
        fs::remove(tmp, ec);  // a partial file must not fill what is left of the disk
        throw;
    }
    fs::rename(tmp, file, ec);
    if (ec) throw Error("cannot write checkpoint " + file.string() + ": " + ec.message(), "");
    fsync_dir(file.parent_path());
}

RankCheckpoint read_rank_checkpoint(const fs::path& file) {
    Reader r(file);
    char magic[sizeof kMagic];
    if (r.left() < sizeof magic + sizeof kVersion) r.bad("too short to be a checkpoint");
    r.raw(magic, sizeof magic);
    if (std::memcmp(magic, kMagic, sizeof kMagic) != 0)
        throw Error(file.string() + " is not a plexus checkpoint",
                    "pass the folder `plexus run` wrote its checkpoints to");
    uint32_t version = 0;
    r.raw(&version, sizeof version);
    if (version < kOldestVersion || version > kVersion)
        throw Error("checkpoint " + file.string() + " has format version " + std::to_string(version) +
                        ", this plexus reads " + std::to_string(kOldestVersion) + " to " + std::to_string(kVersion),
                    "resume it with the plexus that wrote it");
    r.start_body(version);
    RankCheckpoint c;
    c.config_hash = r.text();
    c.run_id = r.value<int64_t>();
    c.step = r.value<int64_t>();
    c.rank = r.value<int32_t>();
    c.world = r.value<int32_t>();
    for (uint64_t n = r.length(), i = 0; i < n; ++i) {
        auto k = r.text();
        c.numbers[k] = r.value<double>();
    }
    for (uint64_t n = r.length(), i = 0; i < n; ++i) {
        auto k = r.text();
        c.texts[k] = r.text();
    }
    for (uint64_t n = r.length(), i = 0; i < n; ++i) {
        auto name = r.text();
        const auto type = static_cast<c10::ScalarType>(r.value<int32_t>());
        if (!kStorable.count(type)) r.bad("tensor '" + name + "' has no valid type");
        const auto dim = r.value<uint64_t>();
        if (dim > 64) r.bad("tensor '" + name + "' has " + std::to_string(dim) + " dimensions");
        std::vector<int64_t> sizes(dim);
        // The shape is checked against the bytes that follow before anything is allocated.
        uint64_t bytes_for_shape = c10::elementSize(type);
        for (auto& s : sizes) {
            s = r.value<int64_t>();
            if (s < 0 || static_cast<uint64_t>(s) > r.left()) r.bad("tensor '" + name + "' has an impossible shape");
            bytes_for_shape *= static_cast<uint64_t>(s);
            if (bytes_for_shape > r.left()) r.bad("tensor '" + name + "' has an impossible shape");
        }
        const auto bytes = r.length();
        if (bytes != bytes_for_shape)
            r.bad("tensor '" + name + "' has " + std::to_string(bytes) + " bytes for its shape");
        auto t = torch::empty(sizes, torch::TensorOptions().dtype(type));
        r.body(t.data_ptr(), bytes);
        c.tensors.emplace_back(std::move(name), std::move(t));
    }
    const uint64_t expected = r.hash();
    uint64_t stored = 0;
    if (r.left() != sizeof stored) r.bad("it ends early or has trailing bytes");
    r.raw(&stored, sizeof stored);
    if (stored != expected) r.bad("its checksum does not match its contents");
    return c;
}

RunCheckpoints::RunCheckpoints(fs::path root, int64_t run_id)
    : dir_(std::move(root) / ("run" + std::to_string(run_id))) {}

RunCheckpoints RunCheckpoints::of(const ResolvedConfig& cfg, int64_t run_id) {
    const std::string dir = cfg.host.checkpoint.dir;
    if (!dir.empty()) return RunCheckpoints(fs::absolute(dir), run_id);
    // Per database: run ids are only unique within one.
    const fs::path db = fs::absolute(cfg.host.results.db);
    return RunCheckpoints(db.parent_path() / "checkpoints" / db.stem(), run_id);
}

void RunCheckpoints::keep_only(int64_t step) const {
    std::error_code ec;
    for (const auto& [s, complete] : steps())
        if (s != step) fs::remove_all(step_dir(s), ec);
}

fs::path RunCheckpoints::step_dir(int64_t step) const { return dir_ / ("step" + std::to_string(step)); }

fs::path RunCheckpoints::rank_file(int64_t step, int rank) const {
    return step_dir(step) / ("rank" + std::to_string(rank) + ".ckpt");
}

std::map<int64_t, bool> RunCheckpoints::steps() const {
    std::map<int64_t, bool> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
        const auto name = e.path().filename().string();
        if (name.rfind("step", 0) != 0 || name.size() == 4 ||
            name.find_first_not_of("0123456789", 4) != std::string::npos)
            continue;
        out[std::stoll(name.substr(4))] = fs::exists(e.path() / "COMPLETE", ec);
    }
    return out;
}

void RunCheckpoints::mark_complete(int64_t step, int world, int keep) const {
    write_small_file(step_dir(step) / "COMPLETE",
                     "step " + std::to_string(step) + "\nranks " + std::to_string(world) + "\n");
    std::set<int64_t> complete;
    std::error_code ec;
    for (const auto& [s, done] : steps()) {
        if (done)
            complete.insert(s);
        else if (s < step)
            fs::remove_all(step_dir(s), ec);  // an attempt that never completed
    }
    while (static_cast<int>(complete.size()) > std::max(1, keep)) {
        fs::remove_all(step_dir(*complete.begin()), ec);
        complete.erase(complete.begin());
    }
}

std::vector<int64_t> RunCheckpoints::complete_steps() const {
    std::vector<int64_t> out;
    for (const auto& [s, done] : steps())
        if (done) out.push_back(s);
    return out;
}

std::string RunCheckpoints::problem_of(int64_t step) const {
    std::error_code ec;
    if (!fs::exists(step_dir(step) / "COMPLETE", ec)) return "it is not complete";
    std::ifstream marker(step_dir(step) / "COMPLETE");
    std::string word;
    int64_t ranks = 0;
    while (marker >> word)
        if (word == "ranks") marker >> ranks;
    if (ranks < 1) return "its COMPLETE marker does not say how many ranks wrote it";
    for (int r = 0; r < ranks; ++r) {
        // A file this process cannot see is not damage: on nodes that do not share the folder,
        // the rank that loads it says so (and that the folder must be shared).
        if (!fs::exists(rank_file(step, r), ec)) continue;
        try {
            read_rank_checkpoint(rank_file(step, r));
        } catch (const std::exception& e) { return message_of(e); }
    }
    return "";
}

std::optional<int64_t> RunCheckpoints::latest_intact(std::vector<std::string>& skipped) const {
    const auto complete = complete_steps();
    for (auto s = complete.rbegin(); s != complete.rend(); ++s) {
        const std::string problem = problem_of(*s);
        if (problem.empty()) return *s;
        skipped.push_back("the checkpoint at step " + std::to_string(*s) + " is damaged: " + problem);
    }
    return std::nullopt;
}

std::optional<int64_t> RunCheckpoints::latest() const {
    std::optional<int64_t> best;
    for (const auto& [s, done] : steps())
        if (done) best = s;  // in ascending order
    return best;
}

}  // namespace plexus::host
