// plexus-tokenize (run by `plexus tokenize`): text corpora into token shards the tokens dataset
// reads (llm.c's formats: a header of 256 int32 - magic, version, the token count - then the
// tokens: 20240520, 1 and uint16 ids for up to 65,536 tokens; 20240801, 7 and uint32 past that or
// when --format uint32 asks), with a BPE tokenizer trained here by SentencePiece (Kudo and
// Richardson, 2018) or given. A program of its own: SentencePiece's copy of protobuf and LibTorch's cannot share a
// process (host/CMakeLists.txt).
//
// Each line of the corpus is a document: its tokens, then the tokenizer's end-of-sequence id.
// A `val_fraction` of the lines, spread evenly over the corpus (line i where i * fraction passes
// a whole number: every 100th for 1%), go to the validation shard, so that a corpus assembled
// from several sources is validated on all of them. The tokenizer keeps the text
// as it is (no Unicode normalization, spaces kept, unknown characters as bytes), so decoding a
// line's tokens gives the line back (`--decode SHARD` prints a shard's documents, one a line).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include <string>
#include <vector>

#include "base/cores.hpp"

#include <plexus/error.hpp>
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

namespace {

namespace fs = std::filesystem;
using plexus::Error;

struct TokenizeOptions {
    std::vector<std::string> inputs;  // text files
    std::string out;                  // folder: tokenizer.model, train_NNN.bin, val_000.bin
    std::string model;                // a SentencePiece model to use; "": train one
    int64_t vocab_size = 8000;
    double val_fraction = 0.01;
    int64_t shard_tokens = 100'000'000;  // tokens per training shard at most
    std::string format = "auto";         // uint16, uint32, or auto: uint16 where the vocabulary fits
};

struct TokenizeResult {
    std::string model;  // the tokenizer used
    int64_t vocab_size = 0, train_tokens = 0, val_tokens = 0, lines = 0;
    std::vector<std::string> shards;
};

std::string join(const std::vector<std::string>& items, const std::string& sep) {
    std::string out;
    for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
    return out;
}

// llm.c's two shard formats (karpathy/llm.c dev/data/data_common.py @16635d4): GPT-2's uint16
// ids, and Llama 3's uint32 for vocabularies that do not fit 16 bits.
constexpr int32_t kMagic16 = 20240520, kVersion16 = 1, kMagic32 = 20240801, kVersion32 = 7;

template <typename T>
void write_tokens(std::ofstream& out, const std::vector<uint32_t>& tokens) {
    std::vector<T> narrow(tokens.begin(), tokens.end());
    out.write(reinterpret_cast<const char*>(narrow.data()), static_cast<std::streamsize>(narrow.size() * sizeof(T)));
}

void write_shard(const fs::path& path, const std::vector<uint32_t>& tokens, bool wide) {
    int32_t header[256] = {wide ? kMagic32 : kMagic16, wide ? kVersion32 : kVersion16,
                           static_cast<int32_t>(tokens.size())};
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(header), sizeof header);
    if (wide)
        write_tokens<uint32_t>(out, tokens);
    else
        write_tokens<uint16_t>(out, tokens);
    if (!out.flush()) throw Error("cannot write " + path.string(), "check the disk has room");
}

void check_files(const TokenizeOptions& o) {
    if (o.inputs.empty()) throw Error("plexus tokenize: no text file given", "plexus tokenize FILE... --out DIR");
    for (const auto& f : o.inputs) {
        if (!fs::is_regular_file(f)) throw Error("plexus tokenize: no file " + f, "name text files to tokenize");
        if (f.find(',') != std::string::npos)
            throw Error("plexus tokenize: " + f + ": a comma in a file name",
                        "SentencePiece's trainer splits on commas; rename it");
    }
    if (o.out.empty()) throw Error("plexus tokenize: --out DIR is missing", "the folder for the tokenizer and shards");
    // (The numbers' ranges are checked where main() reads them: usage errors.)
}

std::string train_tokenizer(const TokenizeOptions& o) {
    const std::string prefix = (fs::path(o.out) / "tokenizer").string();
    const int threads = plexus::host::usable_cores();
    // BPE over the text as it is: no normalization, spaces kept, digits one by one, characters
    // it never saw as their UTF-8 bytes (so every line decodes back to itself).
    const std::string args = "--input=" + join(o.inputs, ",") + " --model_prefix=" + prefix +
                             " --vocab_size=" + std::to_string(o.vocab_size) +
                             " --model_type=bpe --character_coverage=1.0 --byte_fallback=true"
                             " --normalization_rule_name=identity --remove_extra_whitespaces=false"
                             " --split_digits=true --input_sentence_size=2000000 --shuffle_input_sentence=true"
                             " --minloglevel=1 --num_threads=" +
                             std::to_string(threads);
    std::cerr << "tokenize: training a " << o.vocab_size << "-token BPE tokenizer on " << o.inputs.size()
              << " file(s)\n";
    const auto status = sentencepiece::SentencePieceTrainer::Train(args);
    if (!status.ok())
        throw Error("plexus tokenize: SentencePiece could not train: " + status.ToString(),
                    "a smaller --vocab for a small corpus, or more text");
    return prefix + ".model";
}

int64_t count_lines(const std::vector<std::string>& inputs) {
    int64_t n = 0;
    std::string line;
    for (const auto& f : inputs) {
        std::ifstream in(f);
        while (std::getline(in, line)) ++n;
    }
    return n;
}

TokenizeResult tokenize(const TokenizeOptions& o) {
    check_files(o);
    fs::create_directories(o.out);
    TokenizeResult r;
    r.model = o.model.empty() ? train_tokenizer(o) : o.model;
    if (const fs::path kept = fs::path(o.out) / "tokenizer.model"; !o.model.empty() && !fs::exists(kept))
        fs::copy_file(o.model, kept);  // the shards' tokenizer travels with them
    sentencepiece::SentencePieceProcessor sp;
    if (const auto status = sp.Load(r.model); !status.ok())
        throw Error("plexus tokenize: cannot load the tokenizer " + r.model + ": " + status.ToString());
    r.vocab_size = sp.GetPieceSize();
    if (o.format == "uint16" && r.vocab_size > 65536)
        throw Error("plexus tokenize: " + r.model + " has " + std::to_string(r.vocab_size) + " tokens",
                    "uint16 shards hold at most 65,536: --format uint32 (or auto)");
    const bool wide = o.format == "uint32" || (o.format == "auto" && r.vocab_size > 65536);
    const int eos = sp.eos_id();
    if (eos < 0) throw Error("plexus tokenize: " + r.model + " has no end-of-sequence token", "documents end with it");
    const int64_t lines = count_lines(o.inputs);
    auto validation = [&](int64_t i) {  // line i (from 0) is held out
        return std::floor(static_cast<double>(i + 1) * o.val_fraction) >
               std::floor(static_cast<double>(i) * o.val_fraction);
    };
    std::vector<uint32_t> train, val;
    std::vector<int> ids;
    auto flush_train = [&] {
        char name[32];
        std::snprintf(name, sizeof name, "train_%03zu.bin", r.shards.size());
        write_shard(fs::path(o.out) / name, train, wide);
        r.shards.push_back((fs::path(o.out) / name).string());
        r.train_tokens += static_cast<int64_t>(train.size());
        train.clear();
    };
    auto last_report = std::chrono::steady_clock::now();
    std::string line;
    for (const auto& f : o.inputs) {
        std::ifstream in(f);
        while (std::getline(in, line)) {
            if (const auto status = sp.Encode(line, &ids); !status.ok())
                throw Error("plexus tokenize: " + f + ": cannot encode line " + std::to_string(r.lines + 1) + ": " +
                            status.ToString());
            auto& dst = validation(r.lines) ? val : train;
            dst.insert(dst.end(), ids.begin(), ids.end());
            dst.push_back(static_cast<uint32_t>(eos));
            ++r.lines;
            if (static_cast<int64_t>(train.size()) >= o.shard_tokens) flush_train();
            if (std::chrono::steady_clock::now() - last_report > std::chrono::seconds(2)) {
                last_report = std::chrono::steady_clock::now();
                std::cerr << "tokenize: " << r.lines << " of " << lines << " lines, "
                          << r.train_tokens + static_cast<int64_t>(train.size() + val.size()) << " tokens\n";
            }
        }
    }
    if (!train.empty() || r.shards.empty()) flush_train();
    write_shard(fs::path(o.out) / "val_000.bin", val, wide);
    r.shards.push_back((fs::path(o.out) / "val_000.bin").string());
    r.val_tokens = static_cast<int64_t>(val.size());
    return r;
}

// A shard's documents, decoded, one a line.
void decode(const std::string& shard, const std::string& model) {
    sentencepiece::SentencePieceProcessor sp;
    if (const auto status = sp.Load(model); !status.ok())
        throw Error("plexus tokenize: cannot load the tokenizer " + model + ": " + status.ToString());
    std::ifstream in(shard, std::ios::binary);
    int32_t header[256];
    const bool read = static_cast<bool>(in.read(reinterpret_cast<char*>(header), sizeof header));
    const bool narrow = read && header[0] == kMagic16 && header[1] == kVersion16;
    if (!narrow && !(read && header[0] == kMagic32 && header[1] == kVersion32))
        throw Error("plexus tokenize: " + shard + " is not an llm.c token shard");
    // The ids in one read (uint16 shards widened after).
    const auto count = static_cast<size_t>(header[2]);
    std::vector<uint32_t> tokens(narrow ? 0 : count);
    std::vector<uint16_t> narrow_ids(narrow ? count : 0);
    const bool whole = narrow ? static_cast<bool>(in.read(reinterpret_cast<char*>(narrow_ids.data()),
                                                          static_cast<std::streamsize>(count * 2)))
                              : static_cast<bool>(in.read(reinterpret_cast<char*>(tokens.data()),
                                                          static_cast<std::streamsize>(count * 4)));
    if (!whole) throw Error("plexus tokenize: " + shard + " is shorter than its header says");
    if (narrow) tokens.assign(narrow_ids.begin(), narrow_ids.end());
    std::vector<int> ids;
    std::string line;
    for (uint32_t t : tokens) {
        if (static_cast<int>(t) != sp.eos_id()) {
            ids.push_back(static_cast<int>(t));
            continue;
        }
        sp.Decode(ids, &line);
        std::cout << line << "\n";
        ids.clear();
    }
}

bool take(std::vector<std::string>& args, const std::string& flag, std::string& value) {
    for (size_t i = 0; i + 1 < args.size(); ++i)
        if (args[i] == flag) {
            value = args[i + 1];
            args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
            return true;
        }
    return false;
}

int usage(const std::string& why) {
    std::cerr << "error: " << why
              << "\nusage: plexus tokenize FILE... --out DIR [--vocab N] [--model FILE.model] "
                 "[--val-fraction F] [--shard-tokens N] [--format auto|uint16|uint32]\n       plexus tokenize --decode "
                 "SHARD.bin --model FILE.model\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    TokenizeOptions o;
    std::string vocab, fraction, shard, decoding;
    take(args, "--out", o.out);
    take(args, "--model", o.model);
    if (take(args, "--format", o.format) && o.format != "auto" && o.format != "uint16" && o.format != "uint32")
        return usage("--format takes auto, uint16 or uint32, not '" + o.format + "'");
    try {
        if (take(args, "--decode", decoding)) {
            if (o.model.empty()) return usage("--decode needs --model");
            decode(decoding, o.model);
            return 0;
        }
        if (take(args, "--vocab", vocab)) {
            char* end = nullptr;
            o.vocab_size = std::strtoll(vocab.c_str(), &end, 10);
            if (vocab.empty() || *end || o.vocab_size < 16 || o.vocab_size > 1'000'000)
                return usage("--vocab takes a vocabulary size in [16, 1000000], not '" + vocab + "'");
        }
        if (take(args, "--shard-tokens", shard)) {
            char* end = nullptr;
            o.shard_tokens = std::strtoll(shard.c_str(), &end, 10);
            if (shard.empty() || *end || o.shard_tokens < 1 || o.shard_tokens > INT32_MAX)
                return usage("--shard-tokens takes a number of tokens in [1, 2^31), not '" + shard + "'");
        }
        if (take(args, "--val-fraction", fraction)) {
            char* end = nullptr;
            o.val_fraction = std::strtod(fraction.c_str(), &end);
            if (fraction.empty() || *end || !(o.val_fraction >= 0 && o.val_fraction < 1))
                return usage("--val-fraction takes a number in [0, 1), not '" + fraction + "'");
        }
        for (const auto& a : args)
            if (a.rfind("--", 0) == 0) return usage("unknown option '" + a + "'");
        o.inputs = args;
        const auto r = tokenize(o);
        std::cout << "tokenized " << r.lines << " lines with " << r.model << " (" << r.vocab_size
                  << " tokens): " << r.train_tokens << " train and " << r.val_tokens << " validation tokens in "
                  << o.out << "\n"
                  << "  [data] name = \"tokens\", train = \"" << (fs::path(o.out) / "train_*.bin").string()
                  << "\", val = \"" << (fs::path(o.out) / "val_000.bin").string() << "\", vocab_size = " << r.vocab_size
                  << "\n";
        return 0;
    } catch (const Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        if (!e.hint().empty()) std::cerr << "hint: " << e.hint() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
}
