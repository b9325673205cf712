#include "tools/meta_train.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include <plexus/plexus.hpp>
#include <plexus/kit/util.hpp>
#include "base/toml.hpp"
#include <torch/torch.h>

#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "runtime/harness.hpp"
#include "transport/launch.hpp"
#include "runtime/loader.hpp"
#include "store/results.hpp"
#include "base/text.hpp"
#include "transport/c10d.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_stop{0};
void on_stop(int) { ++g_stop; }

std::string toml_text(const toml::node& n) {
    std::ostringstream out;
    if (auto s = n.as_string()) {
        out << '"';
        for (char c : s->get()) out << (c == '"' || c == '\\' ? std::string("\\") + c : std::string(1, c));
        out << '"';
    } else if (auto i = n.as_integer()) {
        out << i->get();
    } else if (auto f = n.as_floating_point()) {
        out << Value(f->get()).to_text();
    } else if (auto b = n.as_boolean()) {
        out << (b->get() ? "true" : "false");
    } else {
        throw Error("only numbers, strings and booleans can be chosen");
    }
    return out.str();
}

PluginRegistry& registry() {
    static PluginRegistry r;
    return r;
}

// Scans the plugins once (the default folders and the first task's plugin_path), before any
// rank thread reads the registry.
void ensure_plugins(const MetaSpec& spec) {
    static std::once_flag once;
    std::call_once(once, [&] { scan_plugins(load_experiment(spec.tasks.front().experiment), registry()); });
}

// The seeds of iteration k, pair i: its direction and its task.
uint64_t pair_seed(const MetaSpec& spec, int64_t k, int64_t i, uint64_t salt) {
    return mix_seed(
        mix_seed(mix_seed(static_cast<uint64_t>(spec.seed), static_cast<uint64_t>(k)), static_cast<uint64_t>(i)), salt);
}

// What survives a restart: the weights, Adam's moments, where the run is recorded.
struct Checkpoint {
    int64_t next_iteration = 0, run_id = 0, adam_steps = 0;
    double first_meta_loss = NAN;
    torch::Tensor theta, m, v;

    Checkpoint copy() const {  // the tensors too (training updates them in place)
        Checkpoint out = *this;
        out.theta = theta.clone();
        out.m = m.clone();
        out.v = v.clone();
        return out;
    }

    void save(const std::string& path) const {
        const std::string tmp = path + ".tmp";
        {
            std::ofstream out(tmp);
            out.precision(17);
            out << "plexus-meta 1\niteration " << next_iteration << "\nrun " << run_id << "\nadam_steps " << adam_steps
                << "\nfirst_meta_loss " << first_meta_loss << "\n";
            for (const auto& [name, t] :
                 {std::pair<const char*, const torch::Tensor*>{"theta", &theta}, {"m", &m}, {"v", &v}}) {
                out << name << " " << t->numel() << "\n";
                const double* p = t->data_ptr<double>();
                for (int64_t k = 0; k < t->numel(); ++k) out << p[k] << ((k + 1) % 8 == 0 ? "\n" : " ");
                out << "\n";
            }
            if (!out) throw Error("cannot write the meta-training checkpoint '" + tmp + "'", "is the disk full?");
        }
        if (std::rename(tmp.c_str(), path.c_str()) != 0) throw Error("cannot move '" + tmp + "' to '" + path + "'");
    }

    static Checkpoint load(const std::string& path) {
        std::ifstream in(path);
        std::string magic, version, key;
        Checkpoint c;
        in >> magic >> version;
        if (magic != "plexus-meta" || version != "1")
            throw Error("'" + path + "' is not a plexus-meta 1 checkpoint", "delete it, or pass --restart");
        in >> key >> c.next_iteration >> key >> c.run_id >> key >> c.adam_steps >> key;
        std::string first;
        in >> first;
        c.first_meta_loss = std::strtod(first.c_str(), nullptr);
        for (torch::Tensor* t : {&c.theta, &c.m, &c.v}) {
            int64_t n = 0;
            in >> key >> n;
            std::vector<double> values(static_cast<size_t>(std::max<int64_t>(0, n)));
            for (auto& x : values) in >> x;
            if (!in || n <= 0)
                throw Error("the checkpoint '" + path + "' is truncated (at '" + key + "')",
                            "delete it, or pass --restart");
            *t = torch::tensor(values, torch::kFloat64);
        }
        return c;
    }
};

}  // namespace

torch::Tensor direction(const MetaSpec& spec, int64_t k, int64_t i, int64_t n) {
    auto gen = at::detail::createCPUGenerator(pair_seed(spec, k, i, 1));
    return at::normal(0.0, 1.0, {n}, gen).to(torch::kFloat64);
}

torch::Tensor es_gradient(const MetaSpec& spec, int64_t k, const torch::Tensor& losses, int64_t n) {
    const int64_t unroll = spec.truncations_per_unroll();
    auto grad = torch::zeros({n}, torch::kFloat64);
    for (int64_t i = 0; i < spec.pairs; ++i) {
        const double plus = losses[2 * i].item<double>(), minus = losses[2 * i + 1].item<double>();
        // ES: this iteration's direction; PES: ξ, the sum of the directions since the unroll began.
        auto xi = direction(spec, k, i, n);
        for (int64_t j = k - k % unroll; j < k; ++j) xi += direction(spec, j, i, n);
        grad.add_(xi, (plus - minus) / (2.0 * spec.sigma * static_cast<double>(spec.pairs)));
    }
    return grad;
}

namespace {
MetaParameters find_meta_parameters(const MetaSpec& spec);
}

MetaSpec load_meta_spec(const std::string& path) {
    MetaSpec spec;
    spec.path = fs::absolute(path).string();
    std::ifstream in(path);
    if (!in) throw Error("cannot open '" + path + "'", "give the path of a meta-train TOML file (see `plexus --help`)");
    std::stringstream buf;
    buf << in.rdbuf();
    spec.text = buf.str();
    toml::table doc;
    try {
        check_toml_text(spec.text, path);
        doc = toml::parse(spec.text, path);
    } catch (const toml::parse_error& e) {
        throw Error(path + ":" + std::to_string(e.source().begin.line) + ":" + std::to_string(e.source().begin.column) +
                        ": " + std::string(e.description()),
                    "fix the TOML syntax");
    }
    const fs::path dir = fs::path(spec.path).parent_path();
    auto where = [&](const toml::node& n) { return path + ":" + std::to_string(n.source().begin.line) + ": "; };
    for (const auto& [k, v] : doc)
        if (k != "meta" && k != "task")
            throw Error(where(v) + "unknown section [" + std::string(k.str()) + "]",
                        "a meta-train file has [meta] and [[task]]");
    const auto* meta = doc["meta"].as_table();
    if (!meta)
        throw Error(path + ": no [meta] section", "add [meta] with iterations, pairs, sigma, lr, inner_steps, out");
    for (const auto& [k, v] : *meta) {
        const std::string key(k.str());
        auto integer = [&](int64_t& field, int64_t min) {
            auto x = v.value<int64_t>();
            if (!x || *x < min)
                throw Error(where(v) + "meta." + key + " must be an integer >= " + std::to_string(min), "");
            field = *x;
        };
        auto number = [&](double& field) {
            auto x = v.value<double>();
            if (!x || !(*x > 0)) throw Error(where(v) + "meta." + key + " must be a positive number", "");
            field = *x;
        };
        if (key == "iterations")
            integer(spec.iterations, 0);
        else if (key == "pairs")
            integer(spec.pairs, 1);
        else if (key == "inner_steps")
            integer(spec.inner_steps, 1);
        else if (key == "checkpoint_every")
            integer(spec.checkpoint_every, 1);
        else if (key == "seed")
            integer(spec.seed, 0);
        else if (key == "ranks")
            integer(spec.ranks, 1);
        else if (key == "truncation")
            integer(spec.truncation, 0);
        else if (key == "sigma")
            number(spec.sigma);
        else if (key == "lr")
            number(spec.lr);
        else if (key == "init" || key == "out") {
            auto s = v.value<std::string>();
            if (!s || s->empty()) throw Error(where(v) + "meta." + key + " must be a non-empty string", "");
            (key == "init" ? spec.init : spec.out) = *s == "init" && key == "init" ? *s : (dir / *s).string();
        } else {
            throw Error(where(v) + "unknown key meta." + key,
                        "keys: iterations, pairs, sigma, lr, inner_steps, seed, init, out, checkpoint_every, ranks, "
                        "truncation");
        }
    }
    if (spec.truncation > 0) {
        if (spec.inner_steps % spec.truncation != 0)
            throw Error(path + ": meta.truncation = " + std::to_string(spec.truncation) +
                            " does not divide meta.inner_steps = " + std::to_string(spec.inner_steps),
                        "PES cuts each unroll of inner_steps into equal truncations");
        const int64_t unroll = spec.truncations_per_unroll();
        if (spec.checkpoint_every % unroll != 0)
            throw Error(path + ": meta.checkpoint_every = " + std::to_string(spec.checkpoint_every) +
                            " is not a multiple of the " + std::to_string(unroll) + " truncations of an unroll",
                        "PES checkpoints between unrolls (its tasks' training state is not saved)");
    }
    if (spec.out.empty()) throw Error(path + ": meta.out is missing", "name the file the trained weights go to");
    const auto* tasks = doc["task"].as_array();
    if (!tasks || tasks->empty())
        throw Error(path + ": no [[task]]",
                    "add [[task]] experiment = \"an experiment whose optimizer has learned weights\"");
    for (const auto& node : *tasks) {
        const auto* t = node.as_table();
        if (!t) throw Error(where(node) + "[[task]] must be a table", "");
        MetaTask task;
        for (const auto& [k, v] : *t) {
            const std::string key(k.str());
            if (key == "experiment") {
                auto s = v.value<std::string>();
                if (!s) throw Error(where(v) + "task.experiment must be a string", "");
                task.experiment = (dir / *s).string();
            } else if (key == "choose") {
                const auto* c = v.as_table();
                if (!c)
                    throw Error(where(v) + "task.choose must be a table of lists",
                                "choose = { \"model.d_model\" = [16, 32] }");
                for (const auto& [ck, cv] : *c) {
                    const auto* list = cv.as_array();
                    if (!list || list->empty())
                        throw Error(where(cv) + "task.choose." + std::string(ck.str()) + " must be a non-empty list",
                                    "");
                    std::vector<std::string> values;
                    for (const auto& item : *list) values.push_back(toml_text(item));
                    task.choose.emplace_back(std::string(ck.str()), values);
                }
            } else {
                throw Error(where(v) + "unknown key task." + key, "keys: experiment, choose");
            }
        }
        if (task.experiment.empty()) throw Error(where(node) + "a [[task]] without experiment", "");
        spec.tasks.push_back(task);
    }
    spec.params = find_meta_parameters(spec);
    return spec;
}

namespace {

// The task `task_seed` draws from the family (its experiment, choices and seed), training for
// the unroll's inner_steps with the weights in `weights_file`.
ResolvedConfig task_config(const MetaSpec& spec, uint64_t task_seed, const std::string& weights_file) {
    ensure_plugins(spec);
    std::mt19937_64 rng(task_seed);
    const auto& task = spec.tasks[rng() % spec.tasks.size()];
    auto exp = load_experiment(task.experiment);
    for (const auto& [key, values] : task.choose) apply_override(exp, key + "=" + values[rng() % values.size()]);
    apply_override(exp, spec.params.weights_key + "=\"" + weights_file + "\"");
    apply_override(exp, "train.steps=" + std::to_string(spec.inner_steps));
    apply_override(exp, "train.seed=" + std::to_string(rng() % 1000000007));
    return resolve(exp, registry());
}

// Every value of every task's choices resolves against the plugins (a misspelled key, a value
// of the wrong type): checked before the run row exists, not when the first task draws it.
void check_choices(const MetaSpec& spec, const std::string& path) {
    ensure_plugins(spec);
    for (size_t t = 0; t < spec.tasks.size(); ++t) {
        const auto& task = spec.tasks[t];
        const Experiment base = load_experiment(task.experiment);
        for (const auto& [key, values] : task.choose)
            for (const auto& value : values) {
                auto exp = base;
                try {
                    apply_override(exp, key + "=" + value);
                    resolve(exp, registry());
                } catch (const Error& e) {
                    throw Error(path + ": [[task]] " + std::to_string(t + 1) + " (" + task.experiment + "), choose " +
                                    key + " = " + value + ": " + e.what(),
                                e.hint());
                }
            }
    }
}

std::unique_ptr<BareRun> build_run(const ResolvedConfig& cfg) {
    // Models draw their initial weights from LibTorch's global generator (seeded by
    // make_model): one rank thread at a time, or they would race for its numbers.
    static std::mutex build;
    std::lock_guard<std::mutex> lk(build);
    return std::make_unique<BareRun>(cfg, torch::kCPU);
}

// A task under training: where its unroll is, and its first loss (the meta-loss's scale).
struct TaskTrack {
    std::unique_ptr<BareRun> run;
    int64_t steps = 0;
    double first = NAN;
    bool diverged = false;
};

// Trains `steps` more steps of a task; returns the sum of their losses over the task's first,
// each capped at kCap (from a divergence on, every step counts as capped).
double train_steps(TaskTrack& task, int64_t steps) {
    constexpr double kCap = 4.0;
    double sum = 0;
    for (int64_t s = 0; s < steps; ++s) {
        if (task.diverged) {
            sum += kCap;
            continue;
        }
        task.run->in.step = task.steps++;
        const double loss = task.run->strategy->step(task.run->in).loss;
        if (!std::isfinite(task.first)) task.first = loss;
        const double ratio = std::isfinite(loss) && task.first > 0 ? loss / task.first : kCap;
        sum += std::min(ratio, kCap);
        task.diverged = ratio >= kCap;
    }
    return sum;
}

// Writes the weights `theta` in the optimizer's sections.
void save_weights(const MetaSpec& spec, const torch::Tensor& theta, const std::string& file,
                  const std::string& comment = "") {
    spec.params.start.with_flat(theta).write(file, comment);
}

}  // namespace

double meta_loss(const MetaSpec& spec, const torch::Tensor& theta, uint64_t task_seed, const std::string& scratch) {
    const std::string weights_file = scratch + "/task.weights";
    save_weights(spec, theta, weights_file);
    TaskTrack task;
    task.run = build_run(task_config(spec, task_seed, weights_file));
    return train_steps(task, spec.inner_steps) / static_cast<double>(spec.inner_steps);
}

namespace {

// The tasks' optimizer (one for all), and the weights it starts from: the file of meta.init, or
// the optimizer's untrained weights, exported by building the first task once with meta.seed.
MetaParameters find_meta_parameters(const MetaSpec& spec) {
    ensure_plugins(spec);
    MetaParameters p;
    const PluginDescriptor* d = nullptr;
    for (const auto& task : spec.tasks) {
        const std::string name =
            resolve(load_experiment(task.experiment), registry()).values.at("optimizer.name").as_string();
        if (!p.optimizer.empty() && name != p.optimizer)
            throw Error(spec.path + ": the tasks use optimizers '" + p.optimizer + "' and '" + name + "'",
                        "meta-training trains the weights of one optimizer: give every task the same");
        p.optimizer = name;
        d = registry().find(PluginKind::Optimizer, name);
    }
    const auto weights = d->extras.find("meta.weights"), exporter = d->extras.find("meta.export");
    if (weights == d->extras.end() || exporter == d->extras.end())
        throw Error(spec.path + ": the tasks' optimizer '" + p.optimizer + "' has no learned weights to meta-train",
                    "meta-train needs an optimizer whose descriptor declares extras meta.weights and meta.export "
                    "(see docs/plugins.md), such as optimizers/lopt");
    p.weights_key = "optimizer." + weights->second;
    if (spec.init != "init") {
        p.start = WeightsFile::read(spec.init, spec.path + ": meta.init");
        return p;
    }
    char folder[] = "/tmp/plexus-meta-init-XXXXXX";
    if (!mkdtemp(folder)) throw Error("cannot create a folder under /tmp", "is /tmp writable?");
    const std::string file = std::string(folder) + "/start.weights";
    auto exp = load_experiment(spec.tasks.front().experiment);
    apply_override(exp, p.weights_key + "=\"init\"");
    apply_override(exp, "optimizer." + exporter->second + "=\"" + file + "\"");
    apply_override(exp, "train.seed=" + std::to_string(spec.seed));
    {
        const ResolvedConfig cfg = resolve(exp, registry());
        build_run(cfg);  // the strategy builds the optimizer, which exports its weights
    }
    std::error_code ec;
    if (!fs::exists(file, ec))
        throw Error("optimizer '" + p.optimizer + "' did not write its weights to optimizer." + exporter->second,
                    "its descriptor declares meta.export = \"" + exporter->second + "\": the key must write the file");
    p.start = WeightsFile::read(file, "optimizer." + exporter->second);
    fs::remove_all(folder, ec);
    return p;
}

// PES: one side of a pair, its task trained across the truncations of an unroll. A truncation
// changes the weights, which the optimizer reads when it is built: the run is built again from the same
// task with the new weights file, and takes over the model, the optimizer state and the data
// position of the one before.
struct PesTask {
    ResolvedConfig cfg;
    TaskTrack track;
};

double pes_truncation(const MetaSpec& spec, PesTask& task, const torch::Tensor& theta,
                      const std::string& weights_file) {
    save_weights(spec, theta, weights_file);
    auto run = build_run(task.cfg);
    if (task.track.run) {
        run->strategy->load_state(task.track.run->strategy->state());
        run->stream->seek(task.track.run->stream->position());
    }
    task.track.run = std::move(run);
    return train_steps(task.track, spec.truncation) / static_cast<double>(spec.truncation);
}

// One rank's meta-training loop. Rank 0 records and checkpoints; `transport` joins the ranks.
int train_rank(const MetaSpec& spec, const MetaOptions& options, Transport& transport, ResultsStore* store,
               std::vector<std::string>* errors) {
    const int rank = transport.rank(), world = transport.world_size();
    const std::string ckpt_path = spec.out + ".ckpt";
    char scratch_template[] = "/tmp/plexus-meta-XXXXXX";
    const std::string scratch = mkdtemp(scratch_template);
    struct RemoveScratch {
        std::string dir;
        ~RemoveScratch() {
            std::error_code ec;
            fs::remove_all(dir, ec);
        }
    } remove_scratch{scratch};

    Checkpoint c;
    const bool resume = !options.restart && fs::exists(ckpt_path);
    if (resume) {
        c = Checkpoint::load(ckpt_path);
    } else {
        c.theta = spec.params.start.flat();
        c.m = torch::zeros_like(c.theta);
        c.v = torch::zeros_like(c.theta);
    }
    const int64_t iterations = options.iterations >= 0 ? options.iterations : spec.iterations;
    const int64_t n = c.theta.numel();
    const auto t0 = Clock::now();
    if (rank == 0) {
        if (resume && store && store->get_run(c.run_id)) {
            std::cout << "meta-train: resuming from iteration " << c.next_iteration << " (" << ckpt_path << "), run "
                      << c.run_id << std::endl;
        } else if (store) {
            RunInfo info;
            info.name = "meta-train " + fs::path(spec.path).stem().string();
            info.config_hash = hex64(fnv1a(spec.text));
            info.config_json = "{}";
            info.toml = spec.text;
            info.seed = spec.seed;
            info.plugins = "meta-train optimizer=" + spec.params.optimizer;
            info.fingerprint = PluginRegistry::host_fingerprint();
            info.device = "cpu";
            info.host = hostname();
            info.git_rev = git_revision(fs::path(spec.path).parent_path().string());
            info.command = options.command_line;
            info.world_size = world;
            std::map<std::string, Value> params = {{"meta.iterations", Value(iterations)},
                                                   {"meta.pairs", Value(spec.pairs)},
                                                   {"meta.sigma", Value(spec.sigma)},
                                                   {"meta.lr", Value(spec.lr)},
                                                   {"meta.inner_steps", Value(spec.inner_steps)},
                                                   {"meta.seed", Value(spec.seed)}};
            c.run_id = store->begin_run(info, params);
        }
        std::cout << "meta-train '" << spec.path << "' -> run " << c.run_id << ": " << iterations << " iterations x "
                  << 2 * spec.pairs << " tasks of " << spec.inner_steps << " steps on " << world << " rank(s), " << n
                  << " meta-parameters, out " << spec.out << std::endl;
    }

    std::string status = "finished";
    int64_t done = 0;
    std::vector<double> recent;
    // PES: this rank's pairs' tasks, one per sign, alive for an unroll; and the checkpoint of the
    // current unroll's start (what a run stopped inside it keeps).
    const int64_t unroll = spec.truncations_per_unroll();
    std::map<int64_t, std::pair<PesTask, PesTask>> live;
    Checkpoint unroll_start = c.copy();
    for (int64_t k = c.next_iteration; k < iterations; ++k) {
        if (k % unroll == 0) {
            live.clear();
            unroll_start = c.copy();
        }
        // Slots 0..2P-1: the losses; 2P: "a rank failed"; 2P+1: "stop" (Ctrl-C).
        auto losses = torch::zeros({2 * spec.pairs + 2}, torch::kFloat64);
        for (int64_t i = rank; i < spec.pairs; i += world) {
            const auto eps = direction(spec, k, i, n) * spec.sigma;
            try {
                if (spec.truncation > 0) {
                    const std::string file = scratch + "/pair" + std::to_string(i);
                    auto& [plus, minus] = live[i];
                    if (!plus.track.run) {  // the unroll's first truncation: the pair's task
                        const uint64_t task = pair_seed(spec, k / unroll, i, 2);
                        plus.cfg = task_config(spec, task, file + "+.weights");
                        minus.cfg = task_config(spec, task, file + "-.weights");
                    }
                    losses[2 * i] = pes_truncation(spec, plus, c.theta + eps, file + "+.weights");
                    losses[2 * i + 1] = pes_truncation(spec, minus, c.theta - eps, file + "-.weights");
                } else {
                    const uint64_t task = pair_seed(spec, k, i, 2);
                    losses[2 * i] = meta_loss(spec, c.theta + eps, task, scratch);
                    losses[2 * i + 1] = meta_loss(spec, c.theta - eps, task, scratch);
                }
            } catch (const std::exception& e) {
                if (errors)
                    errors->push_back("rank " + std::to_string(rank) + ", iteration " + std::to_string(k) + ": " +
                                      message_of(e));
                losses[2 * spec.pairs] = 1;
            }
        }
        if (g_stop > 0) losses[2 * spec.pairs + 1] = 1;
        transport.all_reduce(losses, ReduceOp::Sum)->wait();
        if (losses[2 * spec.pairs].item<double>() > 0) {
            status = "failed";
            break;
        }
        // The same update on every rank, from the same losses and directions.
        const auto grad = es_gradient(spec, k, losses, n);
        double mean = 0;
        for (int64_t i = 0; i < spec.pairs; ++i)
            mean += (losses[2 * i].item<double>() + losses[2 * i + 1].item<double>()) /
                    (2.0 * static_cast<double>(spec.pairs));
        ++c.adam_steps;
        const double b1 = 0.9, b2 = 0.999;
        c.m.mul_(b1).add_(grad, 1 - b1);
        c.v.mul_(b2).addcmul_(grad, grad, 1 - b2);
        const double bc1 = 1 - std::pow(b1, static_cast<double>(c.adam_steps));
        const double bc2 = 1 - std::pow(b2, static_cast<double>(c.adam_steps));
        c.theta.sub_(c.m / bc1 / ((c.v / bc2).sqrt() + 1e-8) * spec.lr);
        c.next_iteration = k + 1;
        ++done;
        if (!std::isfinite(c.first_meta_loss)) c.first_meta_loss = mean;
        recent.push_back(mean);
        if (recent.size() > 5) recent.erase(recent.begin());

        if (rank == 0) {
            const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
            if (store)
                store->add_metrics(c.run_id,
                                   {{0, "meta_loss", k, mean, 0, elapsed, std::nullopt},
                                    {0, "meta_grad_norm", k, grad.norm().item<double>(), 0, elapsed, std::nullopt}});
            const double per_iter = elapsed / static_cast<double>(done);
            char line[256];
            std::snprintf(line, sizeof line,
                          "iteration %5lld/%lld | meta-loss %.4f (first %.4f) | %.2f s/iteration | ETA %s",
                          static_cast<long long>(k + 1), static_cast<long long>(iterations), mean, c.first_meta_loss,
                          per_iter, human_duration(per_iter * static_cast<double>(iterations - k - 1)).c_str());
            std::cout << line << std::endl;
            if ((k + 1) % spec.checkpoint_every == 0) {  // (the last iteration's: after the loop)
                c.save(ckpt_path);
                save_weights(spec, c.theta, spec.out,
                             "meta-trained by plexus meta-train " + fs::path(spec.path).filename().string() + ", " +
                                 std::to_string(k + 1) + " iterations");
            }
        }
        if (losses[2 * spec.pairs + 1].item<double>() > 0) {
            status = "interrupted";
            break;
        }
    }
    if (rank == 0 && c.next_iteration % unroll != 0 && done > 0) {
        std::cout << "meta-train: stopped inside a PES unroll; the checkpoint is at its start (iteration "
                  << unroll_start.next_iteration << "), and a resumed run redoes the "
                  << c.next_iteration - unroll_start.next_iteration << " iteration(s) since" << std::endl;
        c = unroll_start;
    }
    if (rank == 0) {
        if (status != "failed" && done > 0) {
            c.save(ckpt_path);
            save_weights(spec, c.theta, spec.out,
                         "meta-trained by plexus meta-train " + fs::path(spec.path).filename().string() + ", " +
                             std::to_string(c.next_iteration) + " iterations");
        }
        if (store && c.run_id > 0) {
            if (!recent.empty()) {
                double last = 0;
                for (double x : recent) last += x / static_cast<double>(recent.size());
                store->set_summary(c.run_id, 0, "meta_loss", last);
            }
            store->set_summary(c.run_id, 0, "meta_loss_first", c.first_meta_loss);
            store->set_summary(c.run_id, 0, "iterations", static_cast<double>(c.next_iteration));
            store->set_summary(c.run_id, 0, "wall_time", std::chrono::duration<double>(Clock::now() - t0).count());
            store->finish_run(c.run_id, status,
                              status == "failed" && errors && !errors->empty() ? errors->front() : "");
        }
        std::cout << "meta-train " << status << " after iteration " << c.next_iteration
                  << (fs::exists(spec.out) ? "; weights in " + spec.out : "; no weights written") << std::endl;
    }
    return status == "finished" ? 0 : status == "interrupted" ? 130 : 1;
}

}  // namespace

int meta_train(const std::string& path, const MetaOptions& options) {
    const MetaSpec spec = load_meta_spec(path);
    check_choices(spec, path);
    auto rendezvous = rendezvous_from_env();
    const int local_ranks = rendezvous ? 1 : static_cast<int>(spec.ranks);
    // One core per rank, whatever the number of ranks: the tasks are small, and the same
    // arithmetic (no thread-count-dependent summation order) makes R ranks reproduce 1 rank.
    set_compute_threads(1);
    std::unique_ptr<ResultsStore> store;
    if (!rendezvous || rendezvous->rank == 0)
        store = std::make_unique<ResultsStore>(options.db.empty() ? "results/plexus.db" : options.db);

    g_stop = 0;
    auto prev_int = std::signal(SIGINT, on_stop);
    auto prev_term = std::signal(SIGTERM, on_stop);
    struct Restore {
        void (*i)(int), (*t)(int);
        ~Restore() { std::signal(SIGINT, i), std::signal(SIGTERM, t); }
    } restore{prev_int, prev_term};

    std::vector<std::string> errors;
    std::mutex errors_mu;
    if (rendezvous) {
        auto transport = make_gloo_transport(*rendezvous);
        const int code = train_rank(spec, options, *transport, store.get(), &errors);
        for (const auto& e : errors) std::cerr << "error: " << e << "\n";
        return code;
    }
    if (local_ranks == 1) {
        auto transport = make_local_transport();
        const int code = train_rank(spec, options, *transport, store.get(), &errors);
        for (const auto& e : errors) std::cerr << "error: " << e << "\n";
        return code;
    }
    // Ranks as threads of this process, joined over Gloo like processes would be.
    const int port = free_port();
    std::vector<int> codes(static_cast<size_t>(local_ranks), 1);
    std::vector<std::thread> threads;
    for (int r = 0; r < local_ranks; ++r)
        threads.emplace_back([&, r] {
            std::vector<std::string> mine;
            try {
                Rendezvous rv;
                rv.master_port = port;
                rv.rank = r;
                rv.world_size = local_ranks;
                rv.timeout_s = 3600;  // a rank waits for the slowest task of an iteration
                auto transport = make_gloo_transport(rv);
                codes[static_cast<size_t>(r)] =
                    train_rank(spec, options, *transport, r == 0 ? store.get() : nullptr, &mine);
            } catch (const std::exception& e) { mine.push_back("rank " + std::to_string(r) + ": " + message_of(e)); }
            std::lock_guard<std::mutex> lk(errors_mu);
            errors.insert(errors.end(), mine.begin(), mine.end());
        });
    for (auto& t : threads) t.join();
    for (const auto& e : errors) std::cerr << "error: " << e << "\n";
    return codes[0];
}

}  // namespace plexus::host
