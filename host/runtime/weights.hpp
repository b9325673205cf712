// A model's weights out of a run and into another: the final weights a finished run kept
// ([checkpoint] keep_final), written as safetensors (`plexus export`), and read back to start a
// run from them (train.init_from).
//
// safetensors (the Hugging Face format): 8 bytes of little-endian header length N, N bytes of
// JSON ({"NAME": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
// "__metadata__": {..}}), then the tensors' bytes, little-endian, row-major.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <plexus/model.hpp>
#include <torch/torch.h>

namespace plexus::host {

class ResultsStore;

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Run `run`'s model parameters, as its model names them, from its newest intact checkpoint: every
// strategy's state holds them whole as "model.NAME" (ZeRO gathers, tensor parallelism unsplits);
// a name held by several ranks is taken from the lowest (a replica: rank 0's, also for
// decentralized strategies whose replicas differ). Throws, naming the run, when it kept none.
NamedTensors run_weights(ResultsStore& store, int64_t run, const std::string& db);

void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata);
NamedTensors read_safetensors(const std::string& path);

// train.init_from: "run:N" (run N of `db`) or a safetensors file (relative to `base`).
NamedTensors initial_weights(const std::string& from, const std::string& db, const std::string& base);

// Copies `weights` into the model's parameters by name; every parameter must be there with its
// shape, and every weight must be used (a mismatch names both).
void load_weights(Model& model, const NamedTensors& weights, const std::string& from);

}  // namespace plexus::host
