// datasets/text: byte-level language modelling on any text file or folder (vocabulary 256).
// A folder is read recursively in name order, skipping symlinks and the exclude patterns; the
// last val_fraction of the bytes is the validation split.
#include <fnmatch.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <plexus/plexus.hpp>
#include <plexus/kit/token_windows.hpp>

namespace {

namespace fs = std::filesystem;

bool excluded(const fs::path& p, const std::vector<std::string>& patterns) {
    const auto name = p.filename().string();
    for (const auto& pat : patterns)
        if (fnmatch(pat.c_str(), name.c_str(), 0) == 0) return true;
    return false;
}

class TextDataset : public plexus::TokenArrayDataset {
public:
    explicit TextDataset(const plexus::Config& cfg) {
        vocab_ = 256;
        by_rank_ = plexus::partition_by_rank(cfg);
        const fs::path root = cfg.get_string("path");
        const std::vector<std::string> exclude = cfg.get_strings("exclude");
        const double val_fraction = cfg.get_double("val_fraction");
        cfg.require(val_fraction > 0 && val_fraction < 1, "val_fraction", "must lie in (0, 1)");

        std::error_code ec;
        std::vector<fs::path> files;
        if (fs::is_regular_file(root, ec)) {
            files.push_back(root);
        } else if (fs::is_directory(root, ec)) {
            for (const auto& e : fs::recursive_directory_iterator(root, ec))
                if (!e.is_symlink() && e.is_regular_file() && !excluded(e.path(), exclude)) files.push_back(e.path());
            std::sort(files.begin(), files.end());
        } else {
            throw plexus::Error("data.path: '" + root.string() + "' is neither a file nor a folder",
                                "point data.path at a text file or a folder of text files "
                                "(the quickstart uses /usr/share/games/fortunes from Debian's "
                                "'fortunes' package: run scripts/setup.sh)");
        }
        std::string bytes;
        for (const auto& f : files) {
            std::ifstream in(f, std::ios::binary);
            if (!in) throw plexus::Error("data.path: cannot read '" + f.string() + "'", "check its permissions");
            std::ostringstream ss;
            ss << in.rdbuf();
            bytes += ss.str();
        }
        if (bytes.empty())
            throw plexus::Error("data.path: '" + root.string() + "' holds no text (after excluding " +
                                    plexus::Value(cfg.get("exclude")).to_text() + ")",
                                "point data.path at text files");
        const size_t n_val = static_cast<size_t>(static_cast<double>(bytes.size()) * val_fraction);
        auto ids = [&](auto first, auto last) {
            std::vector<uint16_t> out;
            out.reserve(static_cast<size_t>(last - first));
            for (auto it = first; it != last; ++it)
                out.push_back(static_cast<uint16_t>(static_cast<unsigned char>(*it)));
            return plexus::TokenSequence::of(std::move(out));
        };
        train_ = ids(bytes.begin(), bytes.end() - n_val);
        val_ = ids(bytes.end() - n_val, bytes.end());
        description_ = "text: " + std::to_string(files.size()) + " file(s) under " + root.string() + ", " +
                       std::to_string(train_->size()) + " train / " + std::to_string(val_->size()) +
                       " validation bytes";
    }
};

plexus::PluginDescriptor describe() {
    plexus::PluginDescriptor d;
    d.name = "text";
    d.kind = plexus::PluginKind::Dataset;
    d.version = "1.0";
    d.summary = "byte-level text (vocabulary 256) from a file or a folder";
    d.schema = {
        {"path", "/usr/share/games/fortunes", "a text file, or a folder read recursively"},
        {"exclude", plexus::Value::list({"*.dat"}), "file-name patterns to skip in a folder"},
        {"val_fraction", 0.05, "fraction of the bytes (at the end) held out for validation"},
        plexus::partition_key(),
    };
    d.make_dataset = [](const plexus::Config& cfg, plexus::RunContext&) -> std::unique_ptr<plexus::Dataset> {
        return std::make_unique<TextDataset>(cfg);
    };
    return d;
}

}  // namespace

PLEXUS_PLUGIN(describe)
