#include "config/host_settings.hpp"

namespace plexus::host {

HostSettings read_host_settings(const std::map<std::string, Value>& v) {
    auto i = [&](const char* key) { return v.at(key).as_int(); };
    auto d = [&](const char* key) { return v.at(key).as_double(); };
    auto s = [&](const char* key) { return v.at(key).as_string(); };
    HostSettings h;
    auto& t = h.train;
    t.steps = i("train.steps"), t.tokens = i("train.tokens"), t.batch_size = i("train.batch_size");
    t.seq_len = i("train.seq_len"), t.warmup_tokens = i("train.warmup_tokens"), t.eval_every = i("train.eval_every");
    t.eval_batches = i("train.eval_batches"), t.log_every = i("train.log_every"), t.seed = i("train.seed");
    t.threads = i("train.threads"), t.min_lr_ratio = d("train.min_lr_ratio"), t.grad_clip = d("train.grad_clip");
    t.peak_flops = d("train.peak_flops"), t.lr_schedule = s("train.lr_schedule"), t.device = s("train.device");
    t.precision = s("train.precision"), t.stop_at_loss = d("train.stop_at_loss"), t.init_from = s("train.init_from");
    h.launch = {s("launch.mode"), s("launch.backend"), i("launch.ranks"), d("launch.timeout")};
    h.checkpoint = {i("checkpoint.every_steps"), i("checkpoint.keep"), d("checkpoint.every_minutes"),
                    s("checkpoint.dir"), v.at("checkpoint.keep_final").as_bool()};
    h.limits = {d("limits.wall_minutes"), d("limits.memory_gb")};
    h.results = {s("results.db"), s("results.progress")};
    return h;
}

}  // namespace plexus::host
