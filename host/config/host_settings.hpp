// The host's own sections, read once from a resolved experiment into typed fields. Their schemas
// (host_schemas() in config/experiment.cpp) declare each key's type, default, choices and range,
// and resolve() has checked them before this is filled: code reads cfg.host.train.steps, never a
// dotted key. [sim] has its own typed form (sim::Settings); [[faults]] and the simulator's
// shorthands for them, config/faults.hpp's plan.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <plexus/config.hpp>

namespace plexus::host {

struct TrainSettings {
    int64_t steps = 0, tokens = 0, batch_size = 0, seq_len = 0, warmup_tokens = 0;
    int64_t eval_every = 0, eval_batches = 0, log_every = 0, seed = 0, threads = 0;
    double min_lr_ratio = 0, grad_clip = 0, peak_flops = 0, stop_at_loss = 0;
    std::string lr_schedule, device, precision, init_from;
};

struct LaunchSettings {
    std::string mode, backend;
    int64_t ranks = 1;
    double timeout = 0;
};

struct CheckpointSettings {
    int64_t every_steps = 0, keep = 0;
    double every_minutes = 0;
    std::string dir;
    bool keep_final = false;
};

struct LimitsSettings {
    double wall_minutes = 0, memory_gb = 0;
};

struct ResultsSettings {
    std::string db, progress;
};

struct HostSettings {
    TrainSettings train;
    LaunchSettings launch;
    CheckpointSettings checkpoint;
    LimitsSettings limits;
    ResultsSettings results;
};

// From resolved values (every host key present, defaults filled, types checked).
HostSettings read_host_settings(const std::map<std::string, Value>& values);

}  // namespace plexus::host
