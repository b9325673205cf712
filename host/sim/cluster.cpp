#include "sim/cluster.hpp"
#include "base/cores.hpp"

#include "config/faults.hpp"
#include "base/text.hpp"

#include <sched.h>
#include <sys/prctl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <system_error>
#include <condition_variable>
#include <deque>
#include <iomanip>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <plexus/error.hpp>
#include <plexus/kit/util.hpp>
#include <torch/torch.h>

namespace plexus::host {

namespace sim {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string num(double v) { return short_number(v); }

// One operation as a rank sees it: done or not, when it completes, why it failed.
struct OpState {
    bool done = false;
    std::string error;
    int lost_peer = -1;  // the error is that this rank failed (PeerLost)
    double completion = 0;
    std::vector<int> waiters;  // entities blocked on it
};

// The entity (rank or background activity) this thread runs, -1 outside the simulation.
thread_local int tl_entity = -1;

enum class Kind { AllReduce, ReduceScatter, AllGather, Broadcast, Barrier };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::AllReduce: return "all_reduce";
        case Kind::ReduceScatter: return "reduce_scatter";
        case Kind::AllGather: return "all_gather";
        case Kind::Broadcast: return "broadcast";
        case Kind::Barrier: return "barrier";
    }
    return "?";
}

// A collective some members have joined.
struct Pending {
    Kind kind = Kind::Barrier;
    int64_t numel = 0;
    torch::ScalarType dtype = torch::kFloat;
    ReduceOp op = ReduceOp::Sum;
    int root = 0;
    std::vector<torch::Tensor> in, out;
    std::vector<double> issued;
    std::vector<char> joined_flags;  // by member index
    int joined = 0;
    std::shared_ptr<OpState> state = std::make_shared<OpState>();
};

struct Message {
    torch::Tensor data;
    double arrival = 0;
};

struct PendingRecv {
    torch::Tensor out;
    std::shared_ptr<OpState> state;
    double issued = 0;
};

struct Channel {
    std::deque<Message> messages;
    std::deque<PendingRecv> receives;
};

struct Group {
    std::string name;
    std::vector<int> members;  // global ranks, in group order
    bool free = false;         // the control group: no simulated time, no accounting
    std::vector<int64_t> next_seq;
    std::map<int64_t, Pending> pending;
    double busy_until = 0;                                  // collectives of a group run one after another
    std::map<std::tuple<int, int, int>, Channel> channels;  // (from, to, tag) in group indices
};

// A rank, or a background activity of one (owner: its rank; a rank owns itself).
struct RankState {
    enum class State { Ready, Running, Blocked, Done };
    int owner = 0;
    double clock = 0;
    State state = State::Ready;
    std::condition_variable cv;
    std::string waiting_for;
    bool dead = false;
    std::string death;
    double nic_busy = 0;  // this rank's outgoing point-to-point transfers queue behind each other
    std::shared_ptr<CommStats> stats = std::make_shared<CommStats>();
    std::mt19937_64 rng;
};

}  // namespace

struct Cluster::Impl {
    Settings settings;
    Network network;
    std::mutex mu;
    std::vector<std::unique_ptr<RankState>> ranks;
    std::set<std::pair<double, int>> ready;
    int running = -1;
    int done_count = 0;
    std::condition_variable all_done;
    std::string abort;          // set on a deadlock: every blocked rank fails with it
    bool start_failed = false;  // a rank's thread could not be started: the started ones return
    std::map<std::string, std::shared_ptr<Group>> groups;
    int cpu = -1;        // where every entity's thread runs (simulation_cpu)
    int dead_count = 0;  // ranks failed so far: the checks over a group's members are skipped while 0

    explicit Impl(Settings s) : settings(std::move(s)), network(settings.network) {
        for (int r = 0; r < settings.ranks; ++r) {
            ranks.push_back(std::make_unique<RankState>());
            ranks.back()->owner = r;
            ranks.back()->rng.seed(mix_seed(settings.seed, 0x6a177e5ULL + static_cast<uint64_t>(r)));
        }
    }

    RankState& rank(int r) { return *ranks[static_cast<size_t>(r)]; }

    // [[faults]] corrupt: flips one random bit of a message on a faulty link, with the fault's
    // probability, from its time on. Seeded: the same run flips the same bits.
    std::mt19937_64 corruption_rng{mix_seed(settings.seed, 0xc0440ULL)};
    std::vector<int64_t> corrupted;  // per corruption fault: messages changed
    void maybe_corrupt(int from, int to, double time, torch::Tensor& data) {
        for (size_t k = 0; k < settings.corruptions.size(); ++k) {
            const auto& c = settings.corruptions[k];
            if (!((c.a == from && c.b == to) || (c.a == to && c.b == from)) || time < c.from_time) continue;
            std::uniform_real_distribution<double> u(0.0, 1.0);
            if (u(corruption_rng) >= c.probability) continue;
            const int64_t bytes = data.numel() * static_cast<int64_t>(data.element_size());
            if (bytes == 0) continue;
            std::uniform_int_distribution<int64_t> byte(0, bytes - 1);
            std::uniform_int_distribution<int> bit(0, 7);
            static_cast<unsigned char*>(data.data_ptr())[byte(corruption_rng)] ^=
                static_cast<unsigned char>(1u << bit(corruption_rng));
            if (corrupted.size() < settings.corruptions.size()) corrupted.resize(settings.corruptions.size());
            ++corrupted[k];
        }
    }

    // Who acts for rank `r` on this thread: its background activity if this thread runs one,
    // else the rank itself.
    int caller(int r) const {
        if (tl_entity >= 0 && tl_entity < static_cast<int>(ranks.size()) &&
            ranks[static_cast<size_t>(tl_entity)]->owner == r)
            return tl_entity;
        return r;
    }
    bool is_rank(int e) const { return ranks[static_cast<size_t>(e)]->owner == e; }

    // A background activity of rank `owner`, starting at the caller's time, ready to run.
    int spawn(int owner) {
        const int from = caller(owner);
        auto state = std::make_unique<RankState>();
        state->owner = owner;
        state->clock = rank(from).clock;
        state->stats = rank(owner).stats;  // its traffic is its rank's
        ranks.push_back(std::move(state));
        const int id = static_cast<int>(ranks.size()) - 1;
        make_ready(id);
        return id;
    }

    std::shared_ptr<Group> group(const std::string& name, const std::vector<int>& members, bool free) {
        auto& g = groups[name];
        if (!g) {
            g = std::make_shared<Group>();
            g->name = name;
            g->members = members;
            g->free = free;
            g->next_seq.assign(members.size(), 0);
        }
        return g;
    }

    // --- the scheduler; every function below runs with `mu` held ---

    void make_ready(int r) {
        auto& s = rank(r);
        s.state = RankState::State::Ready;
        ready.insert({s.clock, r});
    }

    // Hands the processor to the ready rank with the smallest clock, and (unless `me` is done)
    // sleeps until it is handed back.
    void switch_away(int me, std::unique_lock<std::mutex>& lk) {
        if (ready.empty() && done_count < static_cast<int>(ranks.size())) declare_deadlock();
        if (ready.empty()) {
            all_done.notify_all();
            return;
        }
        const int next = ready.begin()->second;
        ready.erase(ready.begin());
        rank(next).state = RankState::State::Running;
        running = next;
        if (next == me) return;
        rank(next).cv.notify_one();
        if (me < 0 || rank(me).state == RankState::State::Done) return;  // me < 0: the starting thread
        rank(me).cv.wait(lk, [&] { return running == me; });
    }

    // Lets every rank behind `me` in simulated time run first.
    void yield(int me, std::unique_lock<std::mutex>& lk) {
        if (ready.empty() || *ready.begin() > std::make_pair(rank(me).clock, me)) return;
        make_ready(me);
        switch_away(me, lk);
    }

    void block_on(int me, const std::shared_ptr<OpState>& op, const std::string& what,
                  std::unique_lock<std::mutex>& lk) {
        while (!op->done) {
            if (!abort.empty())
                throw Error(abort,
                            "every rank must issue the same collectives in the same order, "
                            "and every receive needs a matching send");
            rank(me).state = RankState::State::Blocked;
            rank(me).waiting_for = what;
            op->waiters.push_back(me);
            switch_away(me, lk);
        }
    }

    void complete(const std::shared_ptr<OpState>& op, double completion, bool advances_clock) {
        op->done = true;
        op->completion = completion;
        for (int w : op->waiters) {
            auto& s = rank(w);
            if (s.state != RankState::State::Blocked) continue;
            if (advances_clock) s.clock = std::max(s.clock, completion);
            make_ready(w);
        }
        op->waiters.clear();
    }

    void fail(const std::shared_ptr<OpState>& op, const std::string& error, int lost_peer = -1) {
        op->error = error;
        op->lost_peer = lost_peer;
        complete(op, 0, false);
    }

    void declare_deadlock() {
        std::string what;
        int listed = 0;
        for (int r = 0; r < static_cast<int>(ranks.size()); ++r) {
            auto& s = rank(r);
            if (s.state != RankState::State::Blocked) continue;
            const std::string who = "rank " + std::to_string(s.owner) + (is_rank(r) ? "" : " (background task)");
            if (listed++ < 6) what += (what.empty() ? "" : "; ") + (who + " waits for " + s.waiting_for);
            make_ready(r);
        }
        if (listed > 6) what += "; and " + std::to_string(listed - 6) + " more";
        abort = "the simulated ranks are deadlocked: " + what;
    }

    void check_alive(int me) {
        auto& s = rank(me);
        const double fail_at = settings.fail_at[static_cast<size_t>(s.owner)];
        if (s.clock >= fail_at)
            throw Error(
                "rank " + std::to_string(s.owner) + " failed at simulated time " + num(fail_at) + " s (sim.fail_ranks)",
                "a scheduled failure: remove it from sim.fail_ranks to run through");
        if (!abort.empty()) throw Error(abort);
    }

    // A rank's body ended with an error: whatever waits on it fails with the reason.
    void kill(int me, const std::string& why) {
        auto& s = rank(me);
        s.dead = true;
        s.death = why;
        ++dead_count;
        const std::string error = "rank " + std::to_string(me) + " failed: " + why;
        for (auto& [name, g] : groups) {
            auto it = std::find(g->members.begin(), g->members.end(), me);
            if (it == g->members.end()) continue;
            const int index = static_cast<int>(it - g->members.begin());
            // The harness's control group goes on among the living (a run that tolerates a lost
            // rank still agrees on when to stop, and gathers its summaries); others fail.
            std::vector<int64_t> complete_now;
            for (auto& [seq, p] : g->pending) {
                if (p.state->done) continue;
                if (!g->free)
                    fail(p.state, error);
                else if (p.joined > 0 && all_living_joined(*g, p))
                    complete_now.push_back(seq);
            }
            for (int64_t seq : complete_now) {
                finish(*g, seq);
                g->pending.erase(seq);
            }
            for (auto& [key, channel] : g->channels)
                if (std::get<0>(key) == index)
                    for (auto& r : channel.receives) fail(r.state, error, me);
        }
    }

    // Every member that is alive has joined (a dead one's input, if it gave one, counts too).
    bool all_living_joined(const Group& g, const Pending& p) {
        if (dead_count == 0) return p.joined == static_cast<int>(g.members.size());  // O(1) while none failed
        for (size_t i = 0; i < g.members.size(); ++i)
            if (!rank(g.members[i]).dead && !p.joined_flags[i]) return false;
        return true;
    }

    std::string dead_member(const Group& g) {
        if (dead_count == 0) return "";
        for (int r : g.members)
            if (rank(r).dead) return "rank " + std::to_string(r) + " failed: " + rank(r).death;
        return "";
    }

    // --- operations ---

    std::shared_ptr<OpState> join(Group& g, int index, Kind kind, const torch::Tensor& in, const torch::Tensor& out,
                                  ReduceOp op, int root) {
        const int me = g.members[static_cast<size_t>(index)];
        const int who = caller(me);
        check_alive(who);
        const int64_t seq = g.next_seq[static_cast<size_t>(index)]++;
        auto& p = g.pending[seq];
        const int n = static_cast<int>(g.members.size());
        const int64_t numel = in.defined() ? in.numel() : 0;
        if (p.joined == 0) {
            p.kind = kind;
            p.numel = numel;
            p.dtype = in.defined() ? in.scalar_type() : torch::kFloat;
            p.op = op;
            p.root = root;
            p.in.resize(static_cast<size_t>(n));
            p.out.resize(static_cast<size_t>(n));
            p.issued.assign(static_cast<size_t>(n), 0);
            p.joined_flags.assign(static_cast<size_t>(n), 0);
        } else if (p.kind != kind || p.numel != numel || p.op != op || p.root != root) {
            const std::string error = "rank " + std::to_string(me) + " called " + kind_name(kind) + " of " +
                                      std::to_string(numel) + " elements as collective #" + std::to_string(seq) +
                                      " of group " + g.name + ", where another rank called " + kind_name(p.kind) +
                                      " of " + std::to_string(p.numel) + " elements";
            if (!p.state->done) fail(p.state, error);
            throw Error(error,
                        "every rank of a group must issue the same collectives, of the same sizes, in the same order");
        }
        p.in[static_cast<size_t>(index)] = in;
        p.out[static_cast<size_t>(index)] = out;
        p.issued[static_cast<size_t>(index)] = rank(who).clock;
        p.joined_flags[static_cast<size_t>(index)] = 1;
        ++p.joined;
        // This rank's bytes on the wire count when it issues the operation, as on the c10d
        // transports: a caller reading stats() around its call (the comm schemes) then sees them
        // whichever rank arrives last. They do not depend on the algorithm the network picks at
        // execution: ring, tree and hierarchical all-reduce all send 2(n-1)/n of the buffer.
        if (!g.free) {
            const double bytes = static_cast<double>(numel) * static_cast<double>(c10::elementSize(p.dtype));
            double sent = 0;
            switch (kind) {
                case Kind::AllReduce: sent = all_reduce_bytes(n, bytes); break;
                case Kind::ReduceScatter: sent = shard_bytes(n, bytes); break;
                case Kind::AllGather: sent = shard_bytes(n, bytes * n); break;  // `bytes` is each rank's part
                case Kind::Broadcast: sent = index == root ? bytes : 0; break;
                case Kind::Barrier: break;
            }
            rank(me).stats->bytes_sent += static_cast<int64_t>(sent);
        }
        auto state = p.state;
        const bool complete = p.joined == n || (g.free && all_living_joined(g, p));
        if (!state->done) {
            if (auto dead = dead_member(g); !dead.empty() && !g.free)
                fail(state, dead);
            else if (complete)
                finish(g, seq);
        }
        if (complete) g.pending.erase(seq);
        return state;
    }

    void finish(Group& g, int64_t seq) {
        auto& p = g.pending.at(seq);
        const int n = static_cast<int>(g.members.size());
        torch::NoGradGuard no_grad;
        // Over the members that joined: all of them, but for a control group with dead ranks.
        auto reduce = [&]() {
            torch::Tensor acc;
            int count = 0;
            for (int i = 0; i < n; ++i) {
                if (!p.in[static_cast<size_t>(i)].defined()) continue;
                auto x = p.in[static_cast<size_t>(i)].detach().reshape(-1);
                ++count;
                if (!acc.defined())
                    acc = x.clone();
                else if (p.op == ReduceOp::Max)
                    acc = torch::max(acc, x);
                else if (p.op == ReduceOp::Min)
                    acc = torch::min(acc, x);
                else
                    acc.add_(x);
            }
            if (p.op == ReduceOp::Mean) acc.div_(count);
            return acc;
        };
        const double bytes = static_cast<double>(p.numel) * static_cast<double>(c10::elementSize(p.dtype));
        double start = 0;
        for (double t : p.issued) start = std::max(start, t);
        start = std::max(start, g.busy_until);
        Cost cost;
        switch (p.kind) {
            case Kind::AllReduce: {
                auto acc = reduce();
                for (auto& o : p.out)
                    if (o.defined()) o.view(-1).copy_(acc);
                cost = network.all_reduce(g.members, bytes, settings.algorithm, start);
                break;
            }
            case Kind::ReduceScatter: {
                auto acc = reduce();
                const int64_t chunk = p.out[0].numel();
                for (int i = 0; i < n; ++i)
                    p.out[static_cast<size_t>(i)].view(-1).copy_(acc.narrow(0, i * chunk, chunk));
                cost = network.reduce_scatter(g.members, bytes, start);
                break;
            }
            case Kind::AllGather: {
                std::vector<torch::Tensor> parts;
                const auto shape = [&] {
                    for (auto& t : p.in)
                        if (t.defined()) return t;
                    return torch::Tensor();
                }();
                for (auto& t : p.in)  // a dead rank's part is NaN (a control group going on without it)
                    parts.push_back(t.defined() ? t.detach().reshape(-1) : torch::full_like(shape.reshape(-1), NAN));
                auto all = torch::cat(parts);
                for (auto& o : p.out)
                    if (o.defined()) o.view(-1).copy_(all);
                cost = network.all_gather(g.members, bytes * n, start);
                break;
            }
            case Kind::Broadcast: {
                const auto& src = p.in[static_cast<size_t>(p.root)];
                if (!src.defined()) {
                    fail(p.state, dead_member(g));
                    return;
                }
                for (int i = 0; i < n; ++i)
                    if (i != p.root && p.out[static_cast<size_t>(i)].defined())
                        p.out[static_cast<size_t>(i)].copy_(src);
                cost = network.broadcast(g.members, bytes, start);
                break;
            }
            case Kind::Barrier: cost = network.barrier(g.members, start); break;
        }
        if (g.free) {
            complete(p.state, 0, false);
            return;
        }
        const double done = start + cost.seconds;
        g.busy_until = done;  // (each member's bytes were counted when it joined)
        complete(p.state, done, true);
    }
};

namespace {

// A pending operation of a simulated rank.
class SimWork : public Work {
public:
    SimWork(std::shared_ptr<Cluster::Impl> impl, std::shared_ptr<OpState> state, int rank, bool free, std::string what)
        : impl_(std::move(impl)), state_(std::move(state)), rank_(rank), free_(free), what_(std::move(what)),
          issued_(impl_->rank(rank).clock) {}

    // Whoever waits (the rank, or its background activity) is the one that blocks.
    void wait() override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        if (waited_) return;
        const int who = impl_->caller(impl_->rank(rank_).owner);
        auto& s = impl_->rank(who);
        const double before = s.clock;
        impl_->block_on(who, state_, what_, lk);
        waited_ = true;
        if (state_->lost_peer >= 0) {
            const std::string prefix = "rank " + std::to_string(state_->lost_peer) + " failed: ";
            throw PeerLost(state_->lost_peer,
                           state_->error.substr(state_->error.rfind(prefix, 0) == 0 ? prefix.size() : 0));
        }
        if (!state_->error.empty()) throw Error(state_->error, "the run stops: a simulated rank failed");
        if (free_) return;
        s.clock = std::max(s.clock, state_->completion);
        if (impl_->is_rank(who)) s.stats->seconds_exposed += s.clock - before;  // a background wait hides
        s.stats->seconds_total += state_->completion - issued_;
        impl_->check_alive(who);
    }

    bool is_completed() override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        const int who = impl_->caller(impl_->rank(rank_).owner);
        impl_->yield(who, lk);
        return state_->done && (free_ || !state_->error.empty() || state_->completion <= impl_->rank(who).clock);
    }

    const std::shared_ptr<OpState>& state() const { return state_; }

private:
    std::shared_ptr<Cluster::Impl> impl_;
    std::shared_ptr<OpState> state_;
    int rank_;
    bool free_;
    std::string what_;
    double issued_;
    bool waited_ = false;
};

class SimTransport : public Transport {
public:
    SimTransport(std::shared_ptr<Cluster::Impl> impl, std::shared_ptr<Group> group, int index)
        : impl_(std::move(impl)), group_(std::move(group)), index_(index),
          me_(group_->members[static_cast<size_t>(index)]) {}

    int rank() const override { return index_; }
    int world_size() const override { return static_cast<int>(group_->members.size()); }
    const char* backend() const override { return "sim"; }

    std::shared_ptr<Work> all_reduce(torch::Tensor& t, ReduceOp op) override {
        return collective(Kind::AllReduce, t, t, op, 0);
    }
    // An output that holds every rank's part of `in`.
    void check_gathered(const char* op, const torch::Tensor& out, const torch::Tensor& in) const {
        if (out.numel() != in.numel() * world_size())
            throw Error(std::string(op) + ": the output has " + std::to_string(out.numel()) + " elements, not " +
                        std::to_string(world_size()) + " x the input's " + std::to_string(in.numel()));
    }
    std::shared_ptr<Work> reduce_scatter(torch::Tensor& out, const torch::Tensor& in, ReduceOp op) override {
        if (in.numel() != out.numel() * world_size())
            throw Error("reduce_scatter: the input has " + std::to_string(in.numel()) + " elements, not " +
                        std::to_string(world_size()) + " x the output's " + std::to_string(out.numel()));
        return collective(Kind::ReduceScatter, in, out, op, 0);
    }
    std::shared_ptr<Work> all_gather(torch::Tensor& out, const torch::Tensor& in) override {
        check_gathered("all_gather", out, in);
        return collective(Kind::AllGather, in, out, ReduceOp::Sum, 0);
    }
    // An all-gather whose output exists on the root only (the others' stays undefined): at
    // 10,000 ranks, an output on every rank would be 10,000 times the parts.
    std::shared_ptr<Work> gather(torch::Tensor& out, const torch::Tensor& in, int root) override {
        check_peer(root, "gather root");
        if (index_ == root) check_gathered("gather", out, in);
        auto none = torch::Tensor();
        auto work = collective(Kind::AllGather, in, index_ == root ? out : none, ReduceOp::Sum, 0);
        work->wait();
        return work;
    }
    std::shared_ptr<Work> broadcast(torch::Tensor& t, int root) override {
        check_peer(root, "broadcast root");
        return collective(Kind::Broadcast, t, t, ReduceOp::Sum, root);
    }
    void barrier() override { collective(Kind::Barrier, torch::Tensor(), torch::Tensor(), ReduceOp::Sum, 0)->wait(); }

    std::shared_ptr<Work> send(const torch::Tensor& t, int peer, int tag) override {
        check_peer(peer, "send to");
        no_p2p_on_control();
        std::unique_lock<std::mutex> lk(impl_->mu);
        const int who = impl_->caller(me_);
        impl_->check_alive(who);
        const int to = group_->members[static_cast<size_t>(peer)];
        if (impl_->rank(to).dead) throw PeerLost(to, impl_->rank(to).death);
        auto& s = impl_->rank(who);
        const double bytes = static_cast<double>(t.numel()) * static_cast<double>(t.element_size());
        const double start = std::max(s.clock, s.nic_busy);
        const Link path = impl_->network.route(me_, to, start);
        const double inject = bytes / path.bandwidth;
        const double arrival = start + path.latency + inject;
        s.nic_busy = start + inject;
        ++s.stats->calls;
        s.stats->bytes_sent += static_cast<int64_t>(bytes);
        Message m{t.detach().contiguous().clone(), arrival};
        impl_->maybe_corrupt(me_, to, start, m.data);
        auto& channel = group_->channels[{index_, peer, tag}];
        if (!channel.receives.empty()) {
            auto r = channel.receives.front();
            channel.receives.pop_front();
            deliver(m, r.out, peer, tag);
            impl_->complete(r.state, std::max(arrival, r.issued), true);
        } else {
            channel.messages.push_back(std::move(m));
        }
        auto state = std::make_shared<OpState>();
        impl_->complete(state, start + inject, true);
        return std::make_shared<SimWork>(impl_, state, who, false, "send to rank " + std::to_string(to));
    }

    std::shared_ptr<Work> recv(torch::Tensor& t, int peer, int tag) override {
        check_peer(peer, "recv from");
        no_p2p_on_control();
        std::unique_lock<std::mutex> lk(impl_->mu);
        const int who = impl_->caller(me_);
        impl_->check_alive(who);
        auto& s = impl_->rank(who);
        ++s.stats->calls;
        auto state = std::make_shared<OpState>();
        auto& channel = group_->channels[{peer, index_, tag}];
        const int from = group_->members[static_cast<size_t>(peer)];
        if (!channel.messages.empty()) {
            auto m = std::move(channel.messages.front());
            channel.messages.pop_front();
            deliver(m, t, index_, tag);
            impl_->complete(state, std::max(m.arrival, s.clock), true);
        } else if (impl_->rank(from).dead) {
            impl_->fail(state, "rank " + std::to_string(from) + " failed: " + impl_->rank(from).death, from);
        } else {
            channel.receives.push_back({t, state, s.clock});
        }
        return std::make_shared<SimWork>(
            impl_, state, who, false, "recv from rank " + std::to_string(from) + " (tag " + std::to_string(tag) + ")");
    }

    std::shared_ptr<Transport> subgroup(const std::vector<int>& ranks) override {
        std::vector<int> members;
        int my_index = -1;
        std::string name = group_->name + "/";
        for (size_t i = 0; i < ranks.size(); ++i) {
            check_peer(ranks[i], "subgroup member");
            members.push_back(group_->members[static_cast<size_t>(ranks[i])]);
            name += (i ? "," : "") + std::to_string(ranks[i]);
            if (ranks[i] == index_) my_index = static_cast<int>(i);
        }
        if (my_index < 0)
            throw Error("rank " + std::to_string(index_) + " asked for a subgroup it is not in (" + name + ")",
                        "every rank listed must call subgroup() with the same list, and only those");
        // The n-th group over the same ranks is its own (members create groups in the same order).
        name += "#" + std::to_string(made_[name]++);
        std::unique_lock<std::mutex> lk(impl_->mu);
        return std::make_shared<SimTransport>(impl_, impl_->group(name, members, group_->free), my_index);
    }

    CommStats stats() const override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        return group_->free ? CommStats{} : *impl_->rank(me_).stats;
    }

    // The first to complete in simulated time: every entity behind the caller runs before it
    // looks (a message from a rank behind could still arrive earlier); if none is complete by
    // its clock, it waits for the earliest completion, blocking while none is known.
    size_t wait_any(const std::vector<std::shared_ptr<Work>>& works) override {
        if (works.empty()) throw Error("wait_any: no operations to wait for");
        std::vector<std::shared_ptr<OpState>> ops;
        for (const auto& w : works) {
            auto* sim = dynamic_cast<SimWork*>(w.get());
            if (!sim) throw Error("wait_any: an operation of another transport");
            ops.push_back(sim->state());
        }
        size_t chosen = 0;
        {
            std::unique_lock<std::mutex> lk(impl_->mu);
            const int who = impl_->caller(me_);
            auto& s = impl_->rank(who);
            const double start = s.clock;
            for (;;) {
                impl_->yield(who, lk);
                int best = -1;
                for (size_t i = 0; i < ops.size(); ++i)
                    if (ops[i]->done && (best < 0 || ops[i]->completion < ops[static_cast<size_t>(best)]->completion))
                        best = static_cast<int>(i);
                if (best >= 0 && ops[static_cast<size_t>(best)]->completion <= s.clock) {
                    chosen = static_cast<size_t>(best);
                    break;
                }
                if (best >= 0) {  // known, but later: idle until then, and look again
                    s.clock = ops[static_cast<size_t>(best)]->completion;
                    continue;
                }
                if (!impl_->abort.empty()) throw Error(impl_->abort);
                s.state = RankState::State::Blocked;
                s.waiting_for = "any of " + std::to_string(ops.size()) + " operations";
                for (auto& op : ops) op->waiters.push_back(who);
                impl_->switch_away(who, lk);
                for (auto& op : ops)
                    op->waiters.erase(std::remove(op->waiters.begin(), op->waiters.end(), who), op->waiters.end());
            }
            if (impl_->is_rank(who)) s.stats->seconds_exposed += s.clock - start;
        }
        works[chosen]->wait();  // completes its accounting and any finishing step
        return chosen;
    }

private:
    std::shared_ptr<Work> collective(Kind kind, const torch::Tensor& in, const torch::Tensor& out, ReduceOp op,
                                     int root) {
        std::unique_lock<std::mutex> lk(impl_->mu);
        if (!group_->free) ++impl_->rank(me_).stats->calls;
        const int64_t seq = group_->next_seq[static_cast<size_t>(index_)];
        auto state = impl_->join(*group_, index_, kind, in, out, op, root);
        return std::make_shared<SimWork>(
            impl_, state, impl_->caller(me_), group_->free,
            std::string(kind_name(kind)) + " #" + std::to_string(seq) + " of group " + group_->name);
    }

    void deliver(const Message& m, torch::Tensor& out, int receiver, int tag) {
        if (m.data.numel() != out.numel())
            throw Error("rank " + std::to_string(group_->members[static_cast<size_t>(receiver)]) + " receives " +
                            std::to_string(out.numel()) + " elements (tag " + std::to_string(tag) + ") but " +
                            std::to_string(m.data.numel()) + " were sent",
                        "sender and receiver must agree on the shape");
        torch::NoGradGuard no_grad;
        out.view(-1).copy_(m.data.view(-1));
    }

    void check_peer(int peer, const char* what) const {
        if (peer < 0 || peer >= world_size())
            throw Error(std::string(what) + " rank " + std::to_string(peer) + ": the group has ranks 0.." +
                        std::to_string(world_size() - 1));
    }
    void no_p2p_on_control() const {
        if (group_->free) throw Error("the control transport carries collectives only");
    }

    std::shared_ptr<Cluster::Impl> impl_;
    std::shared_ptr<Group> group_;
    int index_, me_;
    std::map<std::string, int> made_;
};

class SimClock : public RankClock {
public:
    SimClock(std::shared_ptr<Cluster::Impl> impl, int rank) : impl_(std::move(impl)), rank_(rank) {}
    double now() override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        return impl_->rank(impl_->caller(rank_)).clock;
    }
    void charge_compute(double flops) override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        const int who = impl_->caller(rank_);
        auto& s = impl_->rank(who);
        const auto& st = impl_->settings;
        double factor = st.slowdown[static_cast<size_t>(rank_)];
        if (st.jitter > 0) {
            std::normal_distribution<double> z(0.0, 1.0);
            factor *= std::exp(st.jitter * z(s.rng) - 0.5 * st.jitter * st.jitter);
        }
        // A rank scheduled to fail stops at that instant, even in the middle of a computation.
        s.clock =
            std::min(s.clock + flops / st.device.flops_per_second() * factor, st.fail_at[static_cast<size_t>(rank_)]);
        impl_->check_alive(who);
    }
    bool simulated() const override { return true; }
    std::unique_ptr<BackgroundTask> start_background(std::function<void()> task) override;
    void set_slowdown(double factor) override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        impl_->settings.slowdown[static_cast<size_t>(rank_)] = factor;
    }
    // The rank's clock, its NIC's queue and its jitter generator: what its future times depend on.
    std::string save_state() override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        auto& s = impl_->rank(rank_);
        std::ostringstream out;
        out << exact_double(s.clock) << " " << exact_double(s.nic_busy) << " " << s.rng;
        return out.str();
    }
    void load_state(const std::string& state) override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        auto& s = impl_->rank(rank_);
        std::istringstream in(state);
        double clock = 0, nic = 0;
        in >> clock >> nic >> s.rng;
        if (!in)
            throw Error("the simulated clock's state in the checkpoint is unreadable: '" + state.substr(0, 40) + "'");
        s.clock = clock;
        s.nic_busy = nic;
    }

private:
    std::shared_ptr<Cluster::Impl> impl_;
    int rank_;
};

// A background activity of a simulated rank: its own thread under the scheduler, its own clock.
class SimTask : public BackgroundTask {
public:
    SimTask(std::shared_ptr<Cluster::Impl> impl, int owner, std::function<void()> task)
        : impl_(std::move(impl)), owner_(owner) {
        std::unique_lock<std::mutex> lk(impl_->mu);
        id_ = impl_->spawn(owner);
        thread_ = std::thread([this, task = std::move(task), cpu = impl_->cpu] {
            auto& impl = *impl_;
            tl_entity = id_;
            pin_this_thread(cpu);
            {
                std::unique_lock<std::mutex> wait_lk(impl.mu);
                impl.rank(id_).cv.wait(wait_lk, [&] { return impl.running == id_; });
            }
            try {
                task();
            } catch (...) { error_ = std::current_exception(); }
            std::unique_lock<std::mutex> end_lk(impl.mu);
            auto& s = impl.rank(id_);
            impl.complete(finished_, s.clock, true);
            s.state = RankState::State::Done;
            ++impl.done_count;
            impl.switch_away(id_, end_lk);
        });
    }
    ~SimTask() override {
        try {
            join();
        } catch (...) {
            // the failure surfaced where the task's result was needed, or the run is ending
        }
    }

    bool done() override {
        std::unique_lock<std::mutex> lk(impl_->mu);
        const int me = impl_->caller(owner_);
        impl_->yield(me, lk);  // the task runs first if it is behind
        return finished_->done && finished_->completion <= impl_->rank(me).clock;
    }

    void join() override {
        if (!thread_.joinable()) return;
        {
            // Not block_on: after a deadlock was declared it throws at once, while the task,
            // failing in turn, still needs the processor to end.
            std::unique_lock<std::mutex> lk(impl_->mu);
            const int me = impl_->caller(owner_);
            auto& s = impl_->rank(me);
            while (!finished_->done) {
                s.state = RankState::State::Blocked;
                s.waiting_for = "its background task";
                finished_->waiters.push_back(me);
                impl_->switch_away(me, lk);
            }
            s.clock = std::max(s.clock, finished_->completion);
        }
        thread_.join();
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    std::shared_ptr<Cluster::Impl> impl_;
    int owner_, id_ = -1;
    std::shared_ptr<OpState> finished_ = std::make_shared<OpState>();
    std::exception_ptr error_;
    std::thread thread_;
};

std::unique_ptr<BackgroundTask> SimClock::start_background(std::function<void()> task) {
    return std::make_unique<SimTask>(impl_, rank_, std::move(task));
}

// The one CPU every rank thread runs on. Only one runs at a time: on one CPU a hand-over wakes
// the next thread where the last one goes to sleep, instead of waking another CPU first (at
// 10,000 ranks: 1.2 times the 8-rank cost per rank-step, against 1.45 spread over two CPUs).
// PLEXUS_SIM_CPU (set by a sweep, one CPU per concurrent run) or the CPU the run started on.
int simulation_cpu() {
    const auto cpus = usable_cpus();
    if (const char* env = std::getenv("PLEXUS_SIM_CPU"); env && *env) {
        const int wanted = std::atoi(env);
        if (std::find(cpus.begin(), cpus.end(), wanted) != cpus.end()) return wanted;
    }
    const int here = sched_getcpu();
    return std::find(cpus.begin(), cpus.end(), here) != cpus.end() ? here : -1;
}

// Every waiting rank thread sleeps on a futex of its own. Linux (6.16 and later) hashes a
// process's private futexes into a table sized for few threads (16 slots here, rounded up as
// threads are created, capped): with 10,000 sleepers every wake-up searched a long chain, a fifth
// of the simulator's time. Four slots per thread keep chains short; older kernels refuse the
// call and keep their global table.
void size_futex_hash(int threads) {
#ifdef __linux__
    constexpr int kPrFutexHash = 78, kSetSlots = 1;  // <linux/prctl.h> of 6.16
    unsigned long slots = 16;
    while (slots < 4ul * static_cast<unsigned long>(threads)) slots *= 2;
    prctl(kPrFutexHash, kSetSlots, slots, 0, 0);  // best effort
#else
    (void)threads;
#endif
}

}  // namespace

Cluster::Cluster(Settings settings) : impl_(std::make_shared<Impl>(std::move(settings))) {}
Cluster::~Cluster() = default;

int Cluster::size() const { return impl_->settings.ranks; }
const Settings& Cluster::settings() const { return impl_->settings; }
const Network& Cluster::network() const { return impl_->network; }

void Cluster::run(const std::function<void(int)>& body) {
    const int n = size();
    std::vector<std::thread> threads;
    threads.reserve(static_cast<size_t>(n));
    {
        std::unique_lock<std::mutex> lk(impl_->mu);
        for (int r = 0; r < n; ++r) impl_->make_ready(r);
    }
    const int cpu = simulation_cpu();
    impl_->cpu = cpu;
    auto rank_thread = [this, &body, cpu](int r) {
        auto& impl = *impl_;
        tl_entity = r;
        pin_this_thread(cpu);
        {
            std::unique_lock<std::mutex> lk(impl.mu);
            impl.rank(r).cv.wait(lk, [&] { return impl.running == r || impl.start_failed; });
            if (impl.start_failed) return;
        }
        std::string failure;
        try {
            body(r);
        } catch (const std::exception& e) { failure = message_of(e); } catch (...) {
            failure = "unknown exception";
        }
        std::unique_lock<std::mutex> lk(impl.mu);
        if (!failure.empty()) impl.kill(r, failure);
        impl.rank(r).state = RankState::State::Done;
        ++impl.done_count;
        impl.switch_away(r, lk);
    };
    for (int r = 0; r < n; ++r) {
        try {
            threads.emplace_back(rank_thread, r);
        } catch (const std::system_error& e) {  // out of threads (ulimit -u) or memory for stacks
            {
                std::unique_lock<std::mutex> lk(impl_->mu);
                impl_->start_failed = true;
            }
            for (int i = 0; i < r; ++i) impl_->rank(i).cv.notify_all();
            for (auto& t : threads) t.join();
            throw Error("could not start simulated rank " + std::to_string(r) + " of " + std::to_string(n) +
                            " (a thread each): " + e.what(),
                        "simulate fewer ranks, or raise the limits on threads and memory (ulimit -u, ulimit -v)");
        }
    }
    size_futex_hash(static_cast<int>(threads.size()));
    {
        std::unique_lock<std::mutex> lk(impl_->mu);
        impl_->switch_away(-1, lk);  // hand the processor to rank 0
        // Every rank, and every background activity (a rank joins its own before it ends).
        impl_->all_done.wait(lk, [&] { return impl_->done_count == static_cast<int>(impl_->ranks.size()); });
    }
    for (auto& t : threads) t.join();
}

std::shared_ptr<Transport> Cluster::transport(int rank) {
    std::vector<int> all(static_cast<size_t>(size()));
    for (int r = 0; r < size(); ++r) all[static_cast<size_t>(r)] = r;
    std::unique_lock<std::mutex> lk(impl_->mu);
    return std::make_shared<SimTransport>(impl_, impl_->group("world", all, false), rank);
}

std::shared_ptr<Transport> Cluster::control(int rank) {
    std::vector<int> all(static_cast<size_t>(size()));
    for (int r = 0; r < size(); ++r) all[static_cast<size_t>(r)] = r;
    std::unique_lock<std::mutex> lk(impl_->mu);
    return std::make_shared<SimTransport>(impl_, impl_->group("control", all, true), rank);
}

std::shared_ptr<RankClock> Cluster::clock(int rank) { return std::make_shared<SimClock>(impl_, rank); }

std::vector<int64_t> Cluster::corrupted_messages() const {
    std::unique_lock<std::mutex> lk(impl_->mu);
    auto out = impl_->corrupted;
    out.resize(impl_->settings.corruptions.size());
    return out;
}

double Cluster::clock_of(int rank) const {
    std::unique_lock<std::mutex> lk(impl_->mu);
    return impl_->rank(rank).clock;
}

// --- [sim] settings ---

namespace {

const Value& at(const ResolvedConfig& cfg, const std::string& key) { return cfg.values.at(key); }

std::vector<std::vector<double>> rows_of(const ResolvedConfig& cfg, const std::string& key, size_t min_len,
                                         size_t max_len, const std::string& shape) {
    return number_rows(at(cfg, key), key, min_len, max_len, shape);
}

}  // namespace

Settings settings_from(const ResolvedConfig& cfg, double measured_core_flops, const std::vector<Fault>& plan) {
    Settings s;
    s.ranks = static_cast<int>(at(cfg, "launch.ranks").as_int());
    if (s.ranks < 1) throw Error("launch.ranks must be >= 1", "set [launch] ranks = 8");
    s.seed = mix_seed(static_cast<uint64_t>(at(cfg, "train.seed").as_int()), 0x51a1ULL);
    auto& net = s.network;
    net.ranks = s.ranks;
    net.topology = at(cfg, "sim.topology").as_string();
    net.link = {at(cfg, "sim.latency_us").as_double() * 1e-6, at(cfg, "sim.bandwidth_gbs").as_double() * 1e9};
    net.intra = {at(cfg, "sim.intra_latency_us").as_double() * 1e-6,
                 at(cfg, "sim.intra_bandwidth_gbs").as_double() * 1e9};
    net.gpus_per_node = static_cast<int>(at(cfg, "sim.gpus_per_node").as_int());
    net.torus_rows = static_cast<int>(at(cfg, "sim.torus_rows").as_int());
    for (const auto& e : rows_of(cfg, "sim.edges", 2, 2, "[a, b], ..."))
        net.edges.emplace_back(rank_in(e[0], s.ranks, "sim.edges"), rank_in(e[1], s.ranks, "sim.edges"));
    for (const auto& l : rows_of(cfg, "sim.links", 4, 4, "[a, b, latency_us, bandwidth_gbs], ..."))
        net.links.emplace_back(rank_in(l[0], s.ranks, "sim.links"), rank_in(l[1], s.ranks, "sim.links"),
                               Link{l[2] * 1e-6, l[3] * 1e9});
    // The fault plan's part that the simulator executes: links that go down or corrupt messages,
    // ranks that fail at a simulated time, stragglers from the start (later slow faults, and
    // kills at a step, act through the harness on the rank's clock).
    s.slowdown.assign(static_cast<size_t>(s.ranks), 1.0);
    s.fail_at.assign(static_cast<size_t>(s.ranks), kInf);
    for (const auto& f : plan) {
        if (f.kind == "drop_link") net.link_failures.emplace_back(f.a, f.b, f.time);
        if (f.kind == "corrupt") s.corruptions.push_back({f.a, f.b, f.probability, f.time});
        if (f.kind == "kill" && f.at_time) s.fail_at[static_cast<size_t>(f.rank)] = f.time;
        if (f.kind == "slow" && f.step == 0) s.slowdown[static_cast<size_t>(f.rank)] = f.factor;
    }
    s.algorithm = parse_algorithm(at(cfg, "sim.algorithm").as_string());

    double cores = at(cfg, "sim.cores").as_double();
    if (cores == 0) cores = usable_cores();
    s.device = device_profile(at(cfg, "sim.device").as_string(), at(cfg, "sim.efficiency").as_double(),
                              measured_core_flops, cores, at(cfg, "sim.device_flops").as_double());

    s.jitter = at(cfg, "sim.jitter").as_double();
    if (s.jitter < 0) throw Error("sim.jitter must be >= 0", "0.1: each compute charge varies by about 10%");
    return s;
}

}  // namespace sim
}  // namespace plexus::host
