#include "runtime/weights.hpp"

#include <cctype>
#include <cstring>
#include <optional>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <plexus/error.hpp>

#include "base/text.hpp"
#include "config/experiment.hpp"
#include "runtime/checkpoint.hpp"
#include "store/results.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

const std::vector<std::pair<torch::ScalarType, const char*>>& dtype_names() {
    static const std::vector<std::pair<torch::ScalarType, const char*>> names = {
        {torch::kFloat32, "F32"}, {torch::kFloat64, "F64"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"},
        {torch::kInt64, "I64"},   {torch::kInt32, "I32"},   {torch::kUInt8, "U8"},    {torch::kBool, "BOOL"}};
    return names;
}

std::string shape_text(const torch::Tensor& t) {
    std::string out;
    for (auto d : t.sizes()) out += (out.empty() ? "" : ", ") + std::to_string(d);
    return "[" + out + "]";
}

std::string json_string(const std::string& s) { return "\"" + json_escape(s) + "\""; }

// The header's JSON: objects, arrays, strings and whole numbers are all safetensors uses.
struct Json {
    enum class Kind { Object, Array, String, Number } kind = Kind::Object;
    std::map<std::string, Json> object;
    std::vector<Json> array;
    std::string text;
    int64_t number = 0;
};

class JsonReader {
public:
    JsonReader(const std::string& text, const std::string& file) : s_(text), file_(file) {}
    Json document() {
        Json v = value(0);
        skip();
        if (i_ != s_.size()) fail("text after the header's object");
        return v;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw Error(file_ + ": not a safetensors header (" + what + " at byte " + std::to_string(8 + i_) + ")",
                    "the file is damaged, or not safetensors");
    }
    void skip() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
    }
    bool eat(char c) {
        skip();
        if (i_ < s_.size() && s_[i_] == c) return ++i_, true;
        return false;
    }
    std::string string() {
        if (!eat('"')) fail("a string expected");
        std::string out;
        while (i_ < s_.size() && s_[i_] != '"') {
            if (s_[i_] == '\\' && i_ + 1 < s_.size()) ++i_;  // names hold no escapes but quotes and backslashes
            out += s_[i_++];
        }
        if (!eat('"')) fail("an unterminated string");
        return out;
    }
    Json value(int depth) {
        if (depth > 8) fail("nesting too deep");
        Json v;
        skip();
        if (eat('{')) {
            if (eat('}')) return v;
            do {
                std::string key = string();
                if (!eat(':')) fail("':' expected");
                v.object[key] = value(depth + 1);
            } while (eat(','));
            if (!eat('}')) fail("'}' expected");
        } else if (eat('[')) {
            v.kind = Json::Kind::Array;
            if (!eat(']')) {
                do v.array.push_back(value(depth + 1));
                while (eat(','));
                if (!eat(']')) fail("']' expected");
            }
        } else if (i_ < s_.size() && s_[i_] == '"') {
            v.kind = Json::Kind::String, v.text = string();
        } else {
            v.kind = Json::Kind::Number;
            const size_t start = i_;
            while (i_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '-')) ++i_;
            if (start == i_) fail("a value expected");
            v.number = std::stoll(s_.substr(start, i_ - start));
        }
        return v;
    }
    const std::string& s_;
    std::string file_;
    size_t i_ = 0;
};

fs::path checkpoint_root(ResultsStore& store, int64_t run, const std::string& db) {
    const auto params = store.params(run);
    const auto dir = params.find("checkpoint.dir");
    if (dir != params.end() && !dir->second.empty()) return fs::absolute(dir->second);
    const fs::path path = fs::absolute(db);
    return path.parent_path() / "checkpoints" / path.stem();
}

}  // namespace

NamedTensors run_weights(ResultsStore& store, int64_t run, const std::string& db) {
    const std::string id = std::to_string(run);
    if (!store.get_run(run)) throw Error("there is no run " + id + " in " + db, "`plexus runs` lists them");
    const RunCheckpoints checkpoints(checkpoint_root(store, run, db), run);
    std::vector<std::string> skipped;
    const auto step = checkpoints.latest_intact(skipped);
    if (!step)
        throw Error("run " + id + " kept no weights (no complete checkpoint in " + checkpoints.dir().string() + ")",
                    "a finished run keeps its final weights with [checkpoint] keep_final = true");
    const auto first = read_rank_checkpoint(checkpoints.rank_file(*step, 0));
    NamedTensors out;
    std::map<std::string, size_t> index;
    for (int rank = 0; rank < first.world; ++rank) {
        const auto ckpt = rank == 0 ? first : read_rank_checkpoint(checkpoints.rank_file(*step, rank));
        for (const auto& [name, t] : ckpt.tensors) {
            const std::string prefix = "strategy.model.";
            if (name.rfind(prefix, 0) != 0) continue;
            const std::string key = name.substr(prefix.size());
            const auto seen = index.find(key);
            if (seen == index.end()) {
                index[key] = out.size();
                out.emplace_back(key, t);
            } else if (out[seen->second].second.sizes() != t.sizes()) {
                throw Error("run " + id + ": parameter '" + key + "' has shape " + shape_text(t) + " on rank " +
                                std::to_string(rank) + " and " + shape_text(out[seen->second].second) +
                                " on a lower rank: its strategy kept it in shards",
                            "export runs whose strategy's state holds whole parameters");
            }
        }
    }
    if (out.empty())
        throw Error("run " + id + "'s checkpoint at step " + std::to_string(*step) + " holds no model.* parameters",
                    "its strategy names its model's parameters otherwise; nothing to export");
    return out;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata) {
    std::string header = "{";
    int64_t offset = 0;
    std::vector<torch::Tensor> data;
    for (const auto& [name, t] : tensors) {
        const char* dtype = nullptr;
        for (const auto& [type, text] : dtype_names())
            if (t.scalar_type() == type) dtype = text;
        if (!dtype) throw Error("parameter '" + name + "' has a dtype safetensors has no name for here");
        auto bytes = t.detach().to(torch::kCPU).contiguous();
        std::string shape;
        for (auto d : bytes.sizes()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
        const int64_t n = static_cast<int64_t>(bytes.nbytes());
        header += json_string(name) + ":{\"dtype\":\"" + dtype + "\",\"shape\":[" + shape + "],\"data_offsets\":[" +
                  std::to_string(offset) + "," + std::to_string(offset + n) + "]},";
        offset += n;
        data.push_back(bytes);
    }
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata)
        header += (first ? "" : ",") + json_string(k) + ":" + json_string(v), first = false;
    header += "}}";
    header.append((8 - header.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
    const fs::path tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out) throw Error("cannot write " + tmp.string(), "check the folder exists and is writable");
        const uint64_t n = header.size();
        unsigned char le[8];
        for (int b = 0; b < 8; ++b) le[b] = static_cast<unsigned char>(n >> (8 * b));  // little-endian
        out.write(reinterpret_cast<const char*>(le), 8);
        out << header;
        for (const auto& t : data)
            out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
        if (!out.flush()) throw Error("cannot write " + tmp.string() + ": the disk may be full");
    }
    fs::rename(tmp, path);
}

NamedTensors read_safetensors(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error("cannot open " + path, "check the path");
    const auto size = static_cast<uint64_t>(fs::file_size(path));
    unsigned char le[8];
    if (!in.read(reinterpret_cast<char*>(le), 8)) throw Error(path + ": too short for a safetensors file");
    uint64_t n = 0;
    for (int b = 7; b >= 0; --b) n = n << 8 | le[b];
    if (n > size - 8 || n > (100u << 20))
        throw Error(path + ": its header length " + std::to_string(n) + " does not fit the file");
    std::string header(n, '\0');
    in.read(header.data(), static_cast<std::streamsize>(n));
    const Json doc = JsonReader(header, path).document();
    const uint64_t data_size = size - 8 - n;
    NamedTensors out;
    for (const auto& [name, entry] : doc.object) {
        if (name == "__metadata__") continue;
        auto field = [&](const char* key) -> const Json& {
            auto it = entry.object.find(key);
            if (it == entry.object.end()) throw Error(path + ": tensor '" + name + "' has no " + key);
            return it->second;
        };
        std::optional<torch::ScalarType> type;
        for (const auto& [t, text] : dtype_names())
            if (field("dtype").text == text) type = t;
        if (!type) throw Error(path + ": tensor '" + name + "' has dtype '" + field("dtype").text + "', not read here");
        std::vector<int64_t> shape;
        for (const auto& d : field("shape").array) shape.push_back(d.number);
        const auto& offsets = field("data_offsets").array;
        auto t = torch::empty(shape, torch::TensorOptions().dtype(*type));
        if (offsets.size() != 2 || offsets[0].number < 0 ||
            offsets[1].number - offsets[0].number != static_cast<int64_t>(t.nbytes()) ||
            static_cast<uint64_t>(offsets[1].number) > data_size)
            throw Error(path + ": tensor '" + name +
                        "' has data offsets that do not match its shape and dtype, or the file");
        in.seekg(static_cast<std::streamoff>(8 + n + offsets[0].number));
        if (!in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes())))
            throw Error(path + ": tensor '" + name + "' is cut short");
        out.emplace_back(name, t);
    }
    return out;
}

NamedTensors initial_weights(const std::string& from, const std::string& db, const std::string& base) {
    if (from.rfind("run:", 0) == 0) {
        const auto id = std::atoll(from.c_str() + 4);
        if (id <= 0) throw Error("train.init_from = '" + from + "': 'run:' takes a run id", "for example run:12");
        ResultsStore store(db, ResultsStore::Open::MustExist);
        return run_weights(store, id, db);
    }
    const fs::path path = fs::path(from).is_absolute() ? fs::path(from) : fs::path(base) / from;
    if (!fs::exists(path))
        throw Error("train.init_from = '" + from + "': no file " + path.string(),
                    "a safetensors file (plexus export RUN --safetensors FILE), or run:N");
    return read_safetensors(path.string());
}

void load_weights(Model& model, const NamedTensors& weights, const std::string& from) {
    std::map<std::string, const torch::Tensor*> by_name;
    for (const auto& [name, t] : weights) by_name[name] = &t;
    std::set<std::string> used;
    torch::NoGradGuard no_grad;
    for (auto& item : model.named_parameters()) {
        const auto it = by_name.find(item.key());
        if (it == by_name.end())
            throw Error("train.init_from = '" + from + "' has no weight for parameter '" + item.key() + "'",
                        "the weights must come from the same model with the same shapes");
        if (it->second->sizes() != item.value().sizes())
            throw Error("train.init_from = '" + from + "': '" + item.key() + "' is " + shape_text(*it->second) +
                            " there but " + shape_text(item.value()) + " in this model",
                        "the weights must come from the same model with the same shapes");
        item.value().copy_(*it->second);
        used.insert(item.key());
    }
    for (const auto& [name, t] : weights)
        if (!used.count(name))
            throw Error("train.init_from = '" + from + "' holds '" + name + "', which this model does not have",
                        "the weights must come from the same model with the same shapes");
}

}  // namespace plexus::host
