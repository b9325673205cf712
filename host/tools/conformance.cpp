#include "tools/conformance.hpp"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <set>

#include <plexus/plexus.hpp>
#include <torch/torch.h>

#include "base/text.hpp"
#include "config/experiment.hpp"
#include "runtime/host_context.hpp"
#include "runtime/trainer_parts.hpp"
#include "sim/cluster.hpp"

namespace plexus::host {

namespace fs = std::filesystem;

namespace {

// The experiment every check starts from: small enough to run in seconds on one core. The model
// and the dataset come from the partners (below) or the plugin under test.
const char* kBase = R"(
[train]
steps = 5
batch_size = 4
seq_len = 16
eval_batches = 2
log_every = 1
peak_flops = 1e11
threads = 1

[sim]
device = "h100"
)";

const char* section_of(PluginKind kind) {
    switch (kind) {
        case PluginKind::Model: return "model";
        case PluginKind::Dataset: return "data";
        case PluginKind::Optimizer: return "optimizer";
        case PluginKind::Strategy: return "strategy";
        case PluginKind::Comm: return "comm";
    }
    return "?";
}

// The model or the dataset that runs with plugins of other kinds: the one whose descriptor
// declares extras "check.partner" (the host names no plugin).
const PluginDescriptor& partner(PluginRegistry& registry, PluginKind kind) {
    for (const auto& name : registry.names(kind))
        if (const auto* d = registry.find(kind, name); d && d->extras.count("check.partner")) return *d;
    throw Error(std::string("plexus check: no ") + to_string(kind) + " plugin declares extras \"check.partner\"",
                "every check runs with a partner model and dataset (models/gpt and datasets/synthetic are); is the "
                "plugin folder complete?");
}

// The check's experiment: the plugin under test in its section with the partners for a model and
// a dataset, each plugin's check.settings (assignments separated by ';'; the tested plugin's
// last) and the caller's overrides; `world` ranks.
ResolvedConfig experiment_for(PluginRegistry& registry, const PluginDescriptor& plugin,
                              const std::vector<std::string>& overrides, int world) {
    std::string text = kBase;
    std::vector<const PluginDescriptor*> in_run;
    for (auto kind : {PluginKind::Model, PluginKind::Dataset})
        if (plugin.kind != kind) in_run.push_back(&partner(registry, kind));
    in_run.push_back(&plugin);
    for (const auto* d : in_run) text += std::string("\n[") + section_of(d->kind) + "]\nname = \"" + d->name + "\"\n";
    text += "\n[launch]\nmode = \"sim\"\nranks = " + std::to_string(world) + "\n";
    const fs::path dir = fs::temp_directory_path() / ("plexus-check-" + std::to_string(getpid()));
    fs::create_directories(dir);
    const fs::path file = dir / "check.toml";
    std::ofstream(file) << text;
    Experiment exp = load_experiment(file.string());
    fs::remove_all(dir);
    for (const auto* d : in_run)
        if (auto it = d->extras.find("check.settings"); it != d->extras.end())
            for (const auto& assignment : split(it->second, ';')) apply_override(exp, assignment);
    for (const auto& o : overrides) apply_override(exp, o);
    return resolve(exp, registry);
}

bool same(const torch::Tensor& a, const torch::Tensor& b) {
    return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() && torch::equal(a, b);
}

// One check's outcome from a function that returns "" when the property holds, else why not.
CheckResult run_check(const std::string& plugin, const std::string& name, const std::function<std::string()>& body) {
    CheckResult r{plugin, name, false, ""};
    try {
        r.detail = body();
        r.passed = r.detail.empty();
    } catch (const std::exception& e) { r.detail = "threw: " + error_text(e); }
    return r;
}

// ---- every plugin ----

std::string descriptor_complete(const PluginDescriptor& d) {
    if (d.name.empty() || d.name.find_first_of(" \t\"") != std::string::npos)
        return "name '" + d.name + "' is empty or has spaces";
    if (d.version.empty() || d.summary.empty()) return "version and summary must be set";
    const int factories = !!d.make_model + !!d.make_dataset + !!d.make_optimizer + !!d.make_strategy + !!d.make_comm;
    const bool right = d.kind == PluginKind::Model       ? !!d.make_model
                       : d.kind == PluginKind::Dataset   ? !!d.make_dataset
                       : d.kind == PluginKind::Optimizer ? !!d.make_optimizer
                       : d.kind == PluginKind::Strategy  ? !!d.make_strategy
                                                         : !!d.make_comm;
    if (factories != 1 || !right)
        return "exactly the make_* factory of its kind must be set (" + std::to_string(factories) + " set)";
    return "";
}

std::string schema_complete(const PluginDescriptor& d) {
    std::set<std::string> names;
    for (const auto& k : d.schema) {
        if (k.name.empty() || k.name == "name") return "a key may not be called '" + k.name + "'";
        if (!names.insert(k.name).second) return "key '" + k.name + "' is declared twice";
        if (k.doc.empty()) return "key '" + k.name + "' has no documentation";
        if (!k.choices.empty() && k.type() != ValueType::String)
            return "key '" + k.name + "' has choices but is not a string";
        const std::string why = k.refusal(k.name, k.default_value);
        if (!why.empty()) return "the default is not allowed: " + why;
    }
    return "";
}

// ---- datasets ----

std::vector<Batch> windows(Dataset& data, const StreamSpec& spec, int count) {
    auto stream = data.open(spec);
    std::vector<Batch> out;
    for (int i = 0; i < count; ++i) out.push_back(stream->next());
    return out;
}

void check_dataset(const ResolvedConfig& cfg, const PluginDescriptor& d, std::vector<CheckResult>& out) {
    const std::string who = "dataset " + d.name;
    HostContext boot(cfg, torch::kCPU, 0);
    std::shared_ptr<Dataset> data;
    out.push_back(run_check(who, "builds from its defaults", [&] {
        data = d.make_dataset(cfg.sections.at("data"), boot);
        return data ? std::string() : "make_dataset returned nothing";
    }));
    if (!data) return;
    const StreamSpec global{Split::Train, 8, 16, 0, 1, 7};
    out.push_back(run_check(who, "the same spec gives the same windows", [&] {
        const auto a = windows(*data, global, 3), b = windows(*data, global, 3);
        for (size_t k = 0; k < a.size(); ++k)
            if (!same(a[k].inputs, b[k].inputs) || !same(a[k].targets, b[k].targets))
                return "batch " + std::to_string(k) + " differs between two streams of one spec";
        return std::string();
    }));
    out.push_back(run_check(who, "shard r of W is rows [r b, (r+1) b) of the global batch", [&] {
        const auto all = windows(*data, global, 2);
        for (int r = 0; r < 2; ++r) {
            const auto part = windows(*data, {Split::Train, 4, 16, r, 2, 7}, 2);
            for (size_t k = 0; k < part.size(); ++k)
                if (!same(part[k].inputs, all[k].inputs.narrow(0, r * 4, 4)) ||
                    !same(part[k].targets, all[k].targets.narrow(0, r * 4, 4)))
                    return "shard " + std::to_string(r) + " of 2, batch " + std::to_string(k) +
                           " is not its rows of the global batch";
        }
        return std::string();
    }));
}

// ---- models ----

void check_model(const ResolvedConfig& cfg, const PluginDescriptor& d, std::vector<CheckResult>& out) {
    const std::string who = "model " + d.name;
    HostContext boot(cfg, torch::kCPU, 0);
    const auto data = make_dataset(cfg, boot);
    const int64_t V = data->vocab_size(), B = 4, T = 16;
    HostContext ctx(cfg, torch::kCPU, V), again(cfg, torch::kCPU, V);
    std::shared_ptr<Model> model;
    const auto output = d.extras.find("check.output");
    const bool logits_out = output == d.extras.end() || output->second != "free";
    out.push_back(run_check(who, logits_out ? "logits [B, T, V] and a finite loss" : "a finite loss", [&] {
        model = ctx.make_model();
        if (!model) return std::string("make_model returned nothing");
        const auto batch = data->open({Split::Train, B, T, 0, 1, 1})->next();
        const auto logits = model->forward(batch.inputs);
        if (logits_out && logits.sizes() != torch::IntArrayRef({B, T, V}))
            return "logits have shape " + std::string(c10::str(logits.sizes())) + ", not [" + std::to_string(B) + ", " +
                   std::to_string(T) + ", " + std::to_string(V) + "]";
        const double loss = model->loss(logits, batch.targets).item<double>();
        return std::isfinite(loss) ? std::string() : "the loss is " + std::to_string(loss);
    }));
    if (!model) return;
    out.push_back(run_check(who, "FLOPs per token reported", [&] {
        return model->flops_per_token(T).flops > 0 ? std::string() : "flops_per_token() is not > 0";
    }));
    out.push_back(run_check(who, "the same seed gives the same initial parameters", [&] {
        const auto twin = again.make_model();
        const auto a = model->parameters(), b = twin->parameters();
        if (a.size() != b.size()) return std::string("the two models have different parameter lists");
        for (size_t i = 0; i < a.size(); ++i)
            if (!same(a[i], b[i])) return "parameter " + std::to_string(i) + " differs";
        return std::string();
    }));
}

// A model that offers μP (a `parametrization` key): built with "mup", its blocks declare a role
// for every parameter (the host refuses a block that leaves one out) and some matrix is hidden;
// built in SP, none. Optimizers scale their steps by these roles (plexus/width.hpp).
std::string width_roles(PluginRegistry& registry, const PluginDescriptor& d, const std::vector<std::string>& overrides,
                        bool mup) {
    auto with = overrides;
    with.push_back(std::string("model.parametrization=") + (mup ? "mup" : "sp"));
    const auto cfg = experiment_for(registry, d, with, 1);
    HostContext boot(cfg, torch::kCPU, 0);
    HostContext ctx(cfg, torch::kCPU, make_dataset(cfg, boot)->vocab_size());
    const auto model = ctx.make_model();
    size_t declared = 0, hidden = 0;
    for (const auto& block : model->blocks())
        for (const auto& rule : block->width_plan()) {
            ++declared;
            hidden += rule.role == WidthRole::Hidden;
        }
    if (!mup) return declared == 0 ? "" : "in SP the blocks declare μP roles (width_plan() must be empty)";
    if (declared == 0) return "parametrization = \"mup\" declares no roles (Block::width_plan())";
    return hidden > 0 ? "" : "in μP no parameter is hidden: optimizers would scale nothing";
}

void check_width_roles(PluginRegistry& registry, const PluginDescriptor& d, const std::vector<std::string>& overrides,
                       std::vector<CheckResult>& out) {
    bool offers = false;
    for (const auto& key : d.schema) offers = offers || key.name == "parametrization";
    if (!offers) return;
    const std::string who = "model " + d.name;
    out.push_back(run_check(who, "μP: a role for every parameter, some hidden",
                            [&] { return width_roles(registry, d, overrides, true); }));
    out.push_back(run_check(who, "SP: no μP roles", [&] { return width_roles(registry, d, overrides, false); }));
}

// ---- optimizers ----

void check_optimizer(const ResolvedConfig& cfg, const PluginDescriptor& d, std::vector<CheckResult>& out) {
    const std::string who = "optimizer " + d.name;
    HostContext ctx(cfg, torch::kCPU, 32);
    torch::manual_seed(11);
    const std::vector<torch::Tensor> start = {torch::randn({6, 5}), torch::randn({7})};
    std::vector<std::vector<torch::Tensor>> grads;
    for (int k = 0; k < 4; ++k) grads.push_back({torch::randn({6, 5}), torch::randn({7})});
    auto copies = [&] { return std::vector<torch::Tensor>{start[0].clone(), start[1].clone()}; };
    auto make = [&](const std::vector<torch::Tensor>& params) {
        std::vector<ParamSlot> slots;
        for (size_t i = 0; i < params.size(); ++i) {
            ParamSlot s;
            s.name = "p" + std::to_string(i);
            s.param = params[i];
            s.full_shape = params[i].sizes().vec();
            slots.push_back(std::move(s));
        }
        auto opt = ctx.make_optimizer(std::move(slots), "optimizer");
        if (!opt) throw Error("make_optimizer returned nothing");
        return opt;
    };
    out.push_back(run_check(who, "lr_scale 0 changes nothing", [&] {
        auto p = copies();
        auto opt = make(p);
        opt->step(grads[0], 0.0);
        opt->step(grads[1], 0.0);
        return same(p[0], start[0]) && same(p[1], start[1]) ? std::string() : "parameters moved with lr_scale = 0";
    }));
    out.push_back(run_check(who, "a step changes the parameters", [&] {
        auto p = copies();
        make(p)->step(grads[0], 1.0);
        return !same(p[0], start[0]) ? std::string() : "a step with lr_scale 1 left the parameters as they were";
    }));
    out.push_back(run_check(who, "step_scaled(g, s) updates as step(s * g)", [&] {
        auto pa = copies(), pb = copies();
        auto a = make(pa), b = make(pb);
        // The factor changes between steps: Adam-like updates do not see one constant factor.
        for (int k = 0; k < 3; ++k) {
            const double factor = k == 1 ? 0.3 : 1.0;
            a->step({grads[k][0] * factor, grads[k][1] * factor}, 1.0);
            b->step_scaled({grads[k][0].clone(), grads[k][1].clone()}, 1.0, factor);
        }
        for (int i = 0; i < 2; ++i)
            if (!torch::allclose(pa[i], pb[i], 1e-5, 1e-7))
                return "parameter " + std::to_string(i) + " differs by up to " +
                       std::to_string((pa[i] - pb[i]).abs().max().item<double>()) +
                       " (a step_scaled override must apply the factor to every gradient it reads)";
        return std::string();
    }));
    out.push_back(run_check(who, "state() and load_state() continue identically", [&] {
        auto pa = copies();
        auto a = make(pa);
        a->step(grads[0], 1.0);
        a->step(grads[1], 1.0);
        std::vector<torch::Tensor> pb = {pa[0].clone(), pa[1].clone()};
        auto b = make(pb);
        b->load_state(a->state());
        a->step(grads[2], 0.5);
        b->step(grads[2], 0.5);
        return same(pa[0], pb[0]) && same(pa[1], pb[1])
                   ? std::string()
                   : "a fresh optimizer given state() steps differently from the original";
    }));
}

// ---- communication schemes ----

void check_comm(const ResolvedConfig& cfg, const PluginDescriptor& d, std::vector<CheckResult>& out) {
    const std::string who = "comm " + d.name;
    const int world = 4;
    double tolerance = 1e-6;
    if (auto it = d.extras.find("check.tolerance"); it != d.extras.end()) tolerance = std::stod(it->second);
    sim::Cluster cluster(sim::settings_from(cfg, 0, {}));
    std::mutex mu;
    std::vector<std::string> errors(2);
    const int64_t n = 1000;
    cluster.run([&](int r) {
        std::string exact, bytes;
        try {
            HostContext ctx(cfg, torch::kCPU, 32, cluster.transport(r), cluster.clock(r));
            auto scheme = ctx.make_comm("comm");
            if (!scheme) throw Error("make_comm returned nothing");
            torch::manual_seed(5);  // the same tensor on every rank
            const auto t = torch::randn({n});
            const auto before = ctx.transport().stats().bytes_sent;
            for (int call = 0; call < 2; ++call) {
                auto x = t.clone();
                scheme->all_reduce_mean(x, ctx.transport(), 0)->wait();
                const double err = (x - t).abs().max().item<double>() / t.abs().max().item<double>();
                if (!(err <= tolerance))
                    exact = "call " + std::to_string(call) + ": the mean of identical tensors is off by " +
                            std::to_string(err) + " of max|x| (allowed " + std::to_string(tolerance) + ")";
            }
            const auto stats = scheme->stats();
            const int64_t sent = ctx.transport().stats().bytes_sent - before;
            const int64_t logical = 2 * ring_all_reduce_bytes(n * 4, world);
            if (stats.bytes_sent != sent)
                bytes = "bytes_sent " + std::to_string(stats.bytes_sent) + " but the transport carried " +
                        std::to_string(sent);
            else if (stats.logical_bytes != logical)
                bytes = "logical_bytes " + std::to_string(stats.logical_bytes) +
                        ", a ring all-reduce of what was handed in is " + std::to_string(logical);
        } catch (const std::exception& e) { exact = bytes = "threw: " + error_text(e); }
        std::lock_guard<std::mutex> lock(mu);
        if (errors[0].empty() && !exact.empty()) errors[0] = "rank " + std::to_string(r) + ": " + exact;
        if (errors[1].empty() && !bytes.empty()) errors[1] = "rank " + std::to_string(r) + ": " + bytes;
    });
    out.push_back({who, "on 4 ranks the mean of identical tensors is the tensor", errors[0].empty(), errors[0]});
    out.push_back({who, "bytes are the transport's, logical bytes a ring all-reduce's", errors[1].empty(), errors[1]});
}

// ---- strategies ----

struct StrategyFindings {
    std::string built, crashed, deterministic, evaluate, round_trip, resume;
    bool claims_exact = false;
};

// The first entry in which two states differ ("" when they do not), for the message.
std::string first_difference(const StateDict& a, const StateDict& b) {
    if (a.size() != b.size()) return std::to_string(a.size()) + " entries, then " + std::to_string(b.size());
    for (size_t i = 0; i < a.size(); ++i) {
        if (a[i].first.find(".measured.") != std::string::npos) continue;
        if (a[i].first != b[i].first)
            return "entry " + std::to_string(i) + " is '" + a[i].first + "', then '" + b[i].first + "'";
        if (!same(a[i].second, b[i].second)) return "'" + a[i].first + "'";
    }
    return "";
}

// What run a left behind on each rank after its 3 steps: its state, the data position, the CPU
// generator and the clock (all a checkpoint holds), and its state after 2 more steps.
struct Saved {
    std::string hash3, hash5;
    StateDict state;
    int64_t position = 0;
    torch::Tensor generator;
    std::string clock;
};

// Runs `body(rank, run)` on every rank of a fresh simulated cluster, with the strategy built as
// the trainer builds it. Each run gets its own cluster: an asynchronous strategy's messages in
// flight at the end of one run must not reach the next. Exceptions are noted, then end the rank.
class StrategyRuns {
public:
    StrategyRuns(const ResolvedConfig& cfg, StrategyFindings& f) : cfg_(cfg), f_(f) {
        job_.cfg = &cfg_;
        job_.info = &info_;
        job_.shared_dataset = std::make_shared<std::shared_ptr<Dataset>>();
    }

    void run(std::string& slot, const std::function<void(int, RankRun&, RankClock&)>& body) {
        sim::Cluster cluster(sim::settings_from(cfg_, 0, {}));
        cluster.run([&](int r) {
            RankEnv env = simulated_rank(cluster, r);
            env.print_errors = false;
            RankRun run;
            try {
                torch::manual_seed(1);
                Recorder rec(nullptr, false, 0);
                assemble(job_, env, rec, run);
            } catch (const std::exception& e) {
                note(f_.built, r, error_text(e));
                throw;
            }
            try {
                body(r, run, *env.clock);
            } catch (const std::exception& e) {
                note(slot, r, error_text(e));
                throw;
            }
        });
    }

    void steps(RankRun& run, int from, int count) {
        for (int k = from; k < from + count; ++k) {
            StepInput in;
            in.step = k;
            in.tokens_seen = k * 64;
            in.lr_scale = 1.0;
            in.max_grad_norm = cfg_.host.train.grad_clip;
            in.train = run.train.get();
            run.strategy->step(in);
        }
    }

    void note(std::string& slot, int r, const std::string& what) {
        std::lock_guard<std::mutex> lock(mu_);
        if (slot.empty()) slot = "rank " + std::to_string(r) + ": " + what;
    }

private:
    const ResolvedConfig& cfg_;
    StrategyFindings& f_;
    RunInfo info_;
    Job job_;
    std::mutex mu_;
};

// Run a: 3 steps, an evaluation (state unchanged?), its state saved, and (if the strategy claims
// exact resume) 2 more steps. Run b: 3 steps from the same seed (identical to a?). Run c: a fresh
// strategy given a's state (state() the same?) and, if claimed, 2 more steps (identical to a's?).
StrategyFindings strategy_findings(const ResolvedConfig& cfg, int world) {
    StrategyFindings f;
    StrategyRuns runs(cfg, f);
    std::vector<Saved> saved(static_cast<size_t>(world));
    runs.run(f.crashed, [&](int r, RankRun& a, RankClock& clock) {
        auto& mine = saved[static_cast<size_t>(r)];
        f.claims_exact = a.strategy->exact_resume();
        runs.steps(a, 0, 3);
        const auto before = a.strategy->state();
        mine.hash3 = state_hash(before);
        a.strategy->evaluate(*a.val, 2);
        mine.state = a.strategy->state();
        if (state_hash(mine.state) != mine.hash3)
            runs.note(f.evaluate, r, "evaluate() changed the state: " + first_difference(before, mine.state));
        mine.position = a.train->position();
        mine.generator = cpu_rng_state();
        mine.clock = clock.save_state();
        if (!f.claims_exact) return;
        runs.steps(a, 3, 2);
        mine.hash5 = state_hash(a.strategy->state());
    });
    if (!f.built.empty() || !f.crashed.empty()) return f;
    runs.run(f.crashed, [&](int r, RankRun& b, RankClock&) {
        runs.steps(b, 0, 3);
        if (state_hash(b.strategy->state()) != saved[static_cast<size_t>(r)].hash3)
            runs.note(f.deterministic, r, "two runs of 3 steps from one seed end in different states");
    });
    runs.run(f.crashed, [&](int r, RankRun& c, RankClock& clock) {
        const auto& mine = saved[static_cast<size_t>(r)];
        c.strategy->load_state(mine.state);
        if (state_hash(c.strategy->state()) != state_hash(mine.state))
            runs.note(f.round_trip, r, "state() after load_state(s) is not s");
        if (!f.claims_exact) return;
        set_cpu_rng_state(mine.generator);
        c.train->seek(mine.position);
        clock.load_state(mine.clock);
        runs.steps(c, 3, 2);
        if (state_hash(c.strategy->state()) != mine.hash5)
            runs.note(f.resume, r,
                      "it claims exact_resume(), but a run resumed from state() after step 3 differs at step 5");
    });
    return f;
}

// Rank 0's evaluation right after the strategy is built, when every rank holds the initial model
// (a synchronization point for every strategy): what it evaluates must be that model.
double evaluate_at_init(const ResolvedConfig& cfg, StrategyFindings& f) {
    StrategyRuns runs(cfg, f);
    double loss = NAN;
    runs.run(f.crashed, [&](int r, RankRun& run, RankClock&) {
        const double l = run.strategy->evaluate(*run.val, 2);
        if (r == 0) loss = l;
    });
    return loss;
}

// The strategy under test and the default strategy on one rank evaluate the same initial model to
// within float summation order (1e-5 relative); "" when they do.
std::string evaluates_its_model(PluginRegistry& registry, const PluginDescriptor& d,
                                const std::vector<std::string>& overrides, int world) {
    auto find = [&](PluginKind k, const std::string& n) { return registry.find(k, n); };
    const std::string reference =
        default_plugin(PluginKind::Strategy, find, [&](PluginKind k) { return registry.names(k); });
    if (reference.empty()) return "no strategy declares itself the default to compare with";
    auto ref_overrides = overrides;
    ref_overrides.push_back("strategy.name=" + reference);
    ref_overrides.push_back("launch.ranks=1");
    StrategyFindings mine_f, ref_f;
    const double mine = evaluate_at_init(experiment_for(registry, d, overrides, world), mine_f);
    const double theirs = evaluate_at_init(experiment_for(registry, d, ref_overrides, 1), ref_f);
    if (!mine_f.crashed.empty()) return mine_f.crashed;
    if (!ref_f.crashed.empty()) return "the reference (" + reference + ") failed: " + ref_f.crashed;
    if (std::fabs(mine - theirs) <= 1e-5 * std::fabs(theirs) + 1e-6) return "";
    char buf[200];
    std::snprintf(buf, sizeof buf, "at initialization it evaluates %.8g where %s on one rank evaluates %.8g", mine,
                  reference.c_str(), theirs);
    return buf;
}

void check_strategy(PluginRegistry& registry, const PluginDescriptor& d, const std::vector<std::string>& overrides,
                    std::vector<CheckResult>& out) {
    const std::string who = "strategy " + d.name;
    StrategyFindings f;
    int world = 0;
    std::string refused;
    std::vector<int> worlds = {1, 2, 4};
    if (auto it = d.extras.find("check.ranks"); it != d.extras.end()) worlds = {std::stoi(it->second)};
    for (int w : worlds) {
        try {
            const auto cfg = experiment_for(registry, d, overrides, w);
            f = strategy_findings(cfg, w);
        } catch (const std::exception& e) {
            f = {};
            f.built = error_text(e);
        }
        if (f.built.empty()) {
            world = w;
            break;
        }
        refused += (refused.empty() ? "" : "; ") + std::to_string(w) + " rank(s): " + f.built;
    }
    out.push_back({who,
                   "builds on " + std::string(worlds.size() > 1 ? "1, 2 or 4" : std::to_string(worlds[0])) + " rank(s)",
                   world > 0, world > 0 ? "" : refused});
    if (world == 0) return;
    const std::string on = " (" + std::to_string(world) + " simulated rank" + (world > 1 ? "s)" : ")");
    if (!f.crashed.empty()) {
        out.push_back({who, "runs the check's steps" + on, false, f.crashed});
        return;
    }
    out.push_back({who, "two runs from one seed are identical" + on, f.deterministic.empty(), f.deterministic});
    out.push_back({who, "evaluate() changes no state" + on, f.evaluate.empty(), f.evaluate});
    const std::string evaluates = evaluates_its_model(registry, d, overrides, world);
    out.push_back({who, "evaluates the model it trains (at initialization, as one rank does)" + on, evaluates.empty(),
                   evaluates});
    out.push_back({who, "state() round-trips through load_state()" + on, f.round_trip.empty(), f.round_trip});
    if (f.claims_exact)
        out.push_back({who, "exact_resume(): a resumed run continues bit for bit" + on, f.resume.empty(), f.resume});
}

}  // namespace

std::vector<CheckResult> check_plugin(PluginRegistry& registry, const PluginDescriptor& plugin,
                                      const std::vector<std::string>& overrides) {
    const std::string who = std::string(to_string(plugin.kind)) + " " + plugin.name;
    std::vector<CheckResult> out;
    out.push_back(run_check(who, "descriptor complete", [&] { return descriptor_complete(plugin); }));
    out.push_back(run_check(who, "every key documented, defaults allowed", [&] { return schema_complete(plugin); }));
    // A plugin that cannot run without a file or similar (a token shard) says which key it needs;
    // without it on the command line its runtime checks are skipped, and say so.
    if (auto needs = plugin.extras.find("check.needs"); needs != plugin.extras.end()) {
        bool given = false;
        for (const auto& o : overrides) given |= o.rfind(needs->second + "=", 0) == 0;
        if (!given) {
            out.push_back({who, "runtime checks", false,
                           "needs " + needs->second + ": give it with --set " + needs->second + "=...", true});
            return out;
        }
    }
    if (plugin.kind == PluginKind::Strategy) {
        check_strategy(registry, plugin, overrides, out);
        return out;
    }
    ResolvedConfig cfg;
    out.push_back(run_check(who, "resolves in an experiment", [&] {
        cfg = experiment_for(registry, plugin, overrides, plugin.kind == PluginKind::Comm ? 4 : 1);
        return std::string();
    }));
    if (!out.back().passed) return out;
    const auto kind_checks = [&] {
        switch (plugin.kind) {
            case PluginKind::Dataset: return check_dataset(cfg, plugin, out);
            case PluginKind::Model:
                check_model(cfg, plugin, out);
                return check_width_roles(registry, plugin, overrides, out);
            case PluginKind::Optimizer: return check_optimizer(cfg, plugin, out);
            case PluginKind::Comm: return check_comm(cfg, plugin, out);
            case PluginKind::Strategy: return;
        }
    };
    try {
        kind_checks();
    } catch (const std::exception& e) { out.push_back({who, "kind checks", false, "threw: " + error_text(e)}); }
    return out;
}

}  // namespace plexus::host
