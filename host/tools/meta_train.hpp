// `plexus meta-train FILE.toml`: meta-trains an optimizer's learned weights with antithetic
// evolution strategies over a family of small training tasks, in parallel over ranks, with
// checkpoints, resumption and the meta-loss curve recorded in the results database like any run.
//
// Which optimizer: the tasks' [optimizer]. Its descriptor says how its weights travel, in two
// extras: "meta.weights" names its key that reads a weights file (plexus/kit/weights_file.hpp),
// "meta.export" its key that writes the weights in use. Meta-training reads the untrained
// weights through the second, then hands each task its perturbed weights through the first; it
// never knows what the sections mean.
//
// The file:
//   [meta]
//   iterations = 200        # ES iterations
//   pairs = 8               # antithetic pairs per iteration: 2 x pairs task trainings
//   sigma = 0.01            # perturbation scale
//   lr = 0.003              # Adam's step on the weights
//   inner_steps = 30        # training steps of each task
//   seed = 0
//   init = "init"           # starting weights: "init" (the optimizer's own, from seed) or a file
//   out = "trained.weights" # the trained weights (relative paths: this file's folder)
//   checkpoint_every = 10   # iterations; the checkpoint is OUT.ckpt
//   ranks = 1               # ranks in this process (threads over Gloo, one core each); under
//                           # torchrun or srun: one rank per process
//   truncation = 0          # > 0: PES, unrolls of inner_steps cut into truncations of this many
//                           # steps (a divisor of inner_steps), one truncation per iteration
//
//   [[task]]                # one or more task families
//   experiment = "task_mlp.toml"          # a plexus experiment whose optimizer has weights
//   choose = { "model.d_model" = [16, 32], "train.batch_size" = [4, 8] }   # drawn per task
//
// Meta-loss of one task: the mean training loss over its inner steps divided by its first loss
// (so tasks of different scales weigh alike), capped at 4 (a diverging task is bad, not NaN).
// Iteration k draws, for pair i, a task (its choices and seed) and a direction ε_i ~ N(0, I),
// both from (seed, k, i), so every rank can regenerate them: rank r trains the pairs i with
// i mod R = r, one all-reduce of the 2 x pairs losses follows, and every rank takes the same
// Adam step on g = Σ_i (L(θ + σε_i) - L(θ - σε_i)) ε_i / (2σ pairs).
//
// PES (persistent evolution strategies, Vicol et al. 2021), with truncation = K: each pair keeps
// its two tasks (one per sign) training across the U = inner_steps / K truncations of an unroll;
// iteration k trains each K more steps with θ ± σε_{k,i} and takes the step on
// g = Σ_i (L+ - L-) ξ_{k,i} / (2σ pairs), ξ the sum of the pair's ε since its unroll began, so
// the estimate accounts for how earlier perturbations shaped the state it continues from: an
// unbiased gradient of the whole unroll's loss at the cost of K steps per iteration. Tasks are
// drawn per unroll; a truncation's loss is the mean of its steps' losses over the task's first.
// Checkpoints fall on unroll boundaries (checkpoint_every is a multiple of U); a run stopped
// inside an unroll keeps the checkpoint of its start, and redoes the iterations since.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <plexus/kit/weights_file.hpp>
#include <torch/types.h>

namespace plexus::host {

struct MetaTask {
    std::string experiment;                                                // absolute path
    std::vector<std::pair<std::string, std::vector<std::string>>> choose;  // key -> values as TOML text
};

// What is meta-trained: the optimizer's weights as sections of numbers, found through its
// descriptor (see the top).
struct MetaParameters {
    std::string optimizer;    // the plugin's name
    std::string weights_key;  // the dotted key that reads the weights file ("optimizer.weights")
    WeightsFile start;        // the sections, holding the starting weights
};

struct MetaSpec {
    std::string path, text;
    int64_t iterations = 100, pairs = 8, inner_steps = 20, checkpoint_every = 10, seed = 0, ranks = 1;
    int64_t truncation = 0;  // PES: steps per truncation (0: antithetic ES over whole unrolls)
    double sigma = 0.01, lr = 0.003;
    std::string init = "init", out;  // out: absolute
    std::vector<MetaTask> tasks;
    MetaParameters params;  // filled by load_meta_spec from the tasks' optimizer

    // Iterations per unroll: its truncations (PES), or 1 (ES: a whole unroll per iteration).
    int64_t truncations_per_unroll() const { return truncation > 0 ? inner_steps / truncation : 1; }
};

// Reads and checks a meta-train file, and finds what it trains (loads the plugins and builds the
// first task once to read the untrained weights); errors name the file and the key.
MetaSpec load_meta_spec(const std::string& path);

// The meta-loss of the task that `task_seed` draws from the family, trained with the weights
// `theta` (flat, in the order of spec.params' sections). `scratch` is a folder this caller alone
// writes (the weights file the task reads).
double meta_loss(const MetaSpec& spec, const torch::Tensor& theta, uint64_t task_seed, const std::string& scratch);

// ε_{k,i}: the standard normal direction of iteration k, pair i (n weights), drawn from (seed, k, i).
torch::Tensor direction(const MetaSpec& spec, int64_t k, int64_t i, int64_t n);

// The estimate of iteration k from its losses [L+_0, L-_0, L+_1, ...]: Σ_i (L+_i - L-_i) w_i /
// (2σ pairs), w_i = ε_{k,i} (ES) or the sum of ε_{j,i} since the unroll began (PES).
torch::Tensor es_gradient(const MetaSpec& spec, int64_t k, const torch::Tensor& losses, int64_t n);

struct MetaOptions {
    std::string db;            // results database ("" : results/plexus.db)
    bool restart = false;      // ignore an existing checkpoint
    int64_t iterations = -1;   // override [meta] iterations (>= 0)
    std::string command_line;  // recorded with the run
};

// Runs meta-training; returns an exit code (0 finished, 1 failed, 130 interrupted).
int meta_train(const std::string& path, const MetaOptions& options);

}  // namespace plexus::host
