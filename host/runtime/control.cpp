#include "runtime/control.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include <torch/torch.h>

#include <plexus/error.hpp>

#include "base/text.hpp"

namespace plexus::host {

namespace {

// Why the ranks stop, the gravest first; "" to go on.
std::string stop_reason(bool diverged, bool interrupted, bool reached) {
    return diverged ? "diverged" : interrupted ? "interrupted" : reached ? "finished" : "";
}

class CollectiveControl : public ControlChannel {
public:
    explicit CollectiveControl(std::shared_ptr<Transport> collectives) : ControlChannel(std::move(collectives)) {}

    Agreement at_log_point(int64_t, const LogPointNews& news) override {
        Agreement a;
        if (collectives_->world_size() == 1) {
            a.stop = stop_reason(news.diverged, news.interrupted, news.reached);
            a.checkpoint = news.checkpoint_due;
            return a;
        }
        auto flags = torch::tensor({news.interrupted ? 1.0 : 0.0, news.diverged ? 1.0 : 0.0,
                                    news.checkpoint_due ? 1.0 : 0.0, news.reached ? 1.0 : 0.0},
                                   torch::kFloat64);
        collectives_->all_reduce(flags, ReduceOp::Max)->wait();
        a.stop = stop_reason(flags[1].item<double>() > 0, flags[0].item<double>() > 0, flags[3].item<double>() > 0);
        a.checkpoint = flags[2].item<double>() > 0;
        return a;
    }
    std::string late_stop() override { return ""; }  // every log point agreed already
    void send_rows(std::vector<MetricRow>& rows) override { rows.clear(); }
    std::vector<MetricRow> receive_rows() override { return {}; }
    Transport& collectives() override { return *collectives_; }
};

class StoreControl : public ControlChannel {
public:
    StoreControl(std::shared_ptr<KeyValueStore> store, std::shared_ptr<Transport> collectives, int64_t log_every)
        : ControlChannel(std::move(collectives)), store_(std::move(store)), log_every_(log_every),
          rank_(collectives_->rank()), world_(collectives_->world_size()), received_(static_cast<size_t>(world_), 0) {}

    Agreement at_log_point(int64_t step, const LogPointNews& news) override {
        Agreement a;
        if (news.diverged || news.interrupted || news.reached)
            store_->set_once("stop", std::to_string(target(step)) + " " +
                                         stop_reason(news.diverged, news.interrupted, news.reached));
        if (auto posted = posted_stop(); posted.first >= 0 && posted.first <= step) a.stop = posted.second;
        if (news.checkpoint_due && rank_ == 0 && !checkpoint_posted_)
            store_->set("checkpoint." + std::to_string(checkpoints_seen_), std::to_string(target(step)));
        checkpoint_posted_ = checkpoint_posted_ || (news.checkpoint_due && rank_ == 0);
        if (auto target = store_->peek("checkpoint." + std::to_string(checkpoints_seen_))) {
            const int64_t at = std::stoll(*target);
            if (at <= step) {
                a.checkpoint = at == step;  // past it: an asynchronous rank skips this one
                ++checkpoints_seen_;
                checkpoint_posted_ = false;
            }
        }
        return a;
    }

    std::string late_stop() override { return posted_stop().second; }

    void send_rows(std::vector<MetricRow>& rows) override {
        if (rows.empty()) return;
        store_->set("rows." + std::to_string(rank_) + "." + std::to_string(sent_++), rows_to_text(rows));
        rows.clear();
    }

    std::vector<MetricRow> receive_rows() override {
        std::vector<MetricRow> rows;
        for (int r = 0; r < world_; ++r) {
            if (r == rank_) continue;
            auto& next = received_[static_cast<size_t>(r)];
            while (true) {
                const std::string key = "rows." + std::to_string(r) + "." + std::to_string(next);
                auto text = store_->peek(key);
                if (!text) break;
                for (auto& row : rows_from_text(*text)) rows.push_back(std::move(row));
                store_->erase(key);
                ++next;
            }
        }
        return rows;
    }

    Transport& collectives() override { return *collectives_; }

private:
    // The log point a decision taken at `step` acts on: at least log_every steps on, and at least
    // world steps, so that a strategy whose ranks lag each other by a step per hop (ACCO's
    // rounds, a pipeline's stages) has every rank see it before getting there.
    int64_t target(int64_t step) const {
        const int64_t ahead = step + std::max<int64_t>(log_every_, world_);
        return (ahead + log_every_ - 1) / log_every_ * log_every_;
    }

    // The posted stop: (step, reason), or (-1, "").
    std::pair<int64_t, std::string> posted_stop() {
        auto text = store_->peek("stop");
        if (!text) return {-1, ""};
        const auto space = text->find(' ');
        return {std::stoll(text->substr(0, space)), text->substr(space + 1)};
    }

    std::shared_ptr<KeyValueStore> store_;
    int64_t log_every_;
    int rank_, world_;
    int64_t checkpoints_seen_ = 0;    // time-based checkpoints this rank has passed
    bool checkpoint_posted_ = false;  // rank 0: the next one is posted, not yet reached
    int64_t sent_ = 0;                // this rank's row batches
    std::vector<int64_t> received_;   // rank 0: each rank's next batch
};

std::string clean_key(std::string key) {
    for (auto& c : key)
        if (c == '\t' || c == '\n' || c == '\r') c = ' ';
    return key;
}

}  // namespace

std::unique_ptr<ControlChannel> make_collective_control(std::shared_ptr<Transport> collectives) {
    return std::make_unique<CollectiveControl>(std::move(collectives));
}

std::unique_ptr<ControlChannel> make_store_control(std::shared_ptr<KeyValueStore> store,
                                                   std::shared_ptr<Transport> collectives, int64_t log_every) {
    return std::make_unique<StoreControl>(std::move(store), std::move(collectives), log_every);
}

std::string rows_to_text(const std::vector<MetricRow>& rows) {
    std::string out;
    for (const auto& r : rows) {
        out += std::to_string(r.rank) + "\t" + clean_key(r.key) + "\t" + std::to_string(r.step) + "\t" +
               exact_double(r.value) + "\t" + std::to_string(r.tokens) + "\t" + exact_double(r.wall_time) + "\t" +
               (r.sim_time ? exact_double(*r.sim_time) : "") + "\n";
    }
    return out;
}

std::vector<MetricRow> rows_from_text(const std::string& text) {
    std::vector<MetricRow> rows;
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
        std::vector<std::string> f;
        size_t start = 0;
        for (size_t tab; (tab = line.find('\t', start)) != std::string::npos; start = tab + 1)
            f.push_back(line.substr(start, tab - start));
        f.push_back(line.substr(start));
        if (f.size() != 7)
            throw Error("control channel: a metric row with " + std::to_string(f.size()) + " fields: " + line, "");
        MetricRow r;
        r.rank = std::stoi(f[0]);
        r.key = f[1];
        r.step = std::stoll(f[2]);
        r.value = std::stod(f[3]);
        r.tokens = std::stoll(f[4]);
        r.wall_time = std::stod(f[5]);
        if (!f[6].empty()) r.sim_time = std::stod(f[6]);
        rows.push_back(std::move(r));
    }
    return rows;
}

}  // namespace plexus::host
