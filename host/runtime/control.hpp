// The harness's control channel: how the ranks of one run agree when to stop (an interrupt, a
// diverged loss) and when to take a time-based checkpoint, how the metric rows of ranks that do
// not write the database reach it, and the harness's own collectives (the final gathers, the
// checkpoint tally, the resume choice). None of it uses the strategy's transport, and on real
// back ends the agreement at log points makes no rank wait for another: an asynchronous strategy
// (gossip, A2CiD2, DADAO, async SGD) keeps its ranks apart as far as its algorithm lets them.
//
// The agreement on real back ends: a rank that wants to stop posts "stop at step T" to the
// rendezvous store (T: the first log point at least max(log_every, world) steps after its own log
// point s), unless a stop is posted already; every rank stops at its first log point at or past
// T. In a synchronous strategy no rank gets past step s + 1 before the poster has posted (they
// share that step's collectives), nor, where ranks lag one step per hop, past s + world: all see
// the post in time and stop at T together, as they did with a collective at every log point. An
// asynchronous rank already past T when the post appears stops at its next log point instead.
// Time-based checkpoints work alike: rank 0 posts the k-th one's step; a rank already past it
// (asynchronous) skips that one, and the set stays incomplete (resume takes the last complete one).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <plexus/transport.hpp>

#include "store/results.hpp"
#include "transport/c10d.hpp"

namespace plexus::host {

// What one rank brings to a log point.
struct LogPointNews {
    bool interrupted = false;     // SIGINT/SIGTERM reached this process
    bool diverged = false;        // this rank saw a non-finite loss
    bool checkpoint_due = false;  // rank 0 only: checkpoint.every_minutes has passed
    bool reached = false;         // this rank's last evaluation is at or below train.stop_at_loss
};

// What every rank does at that log point.
struct Agreement {
    std::string stop;  // "", "interrupted", "diverged" or "finished" (train.stop_at_loss reached)
    bool checkpoint = false;
};

class ControlChannel {
public:
    virtual ~ControlChannel() = default;
    // At each log point (the same steps on every rank: step % log_every == 0, and the last).
    virtual Agreement at_log_point(int64_t step, const LogPointNews& news) = 0;
    // After a collective that every rank joined past its last step: a stop a rank posted too late
    // for the others to act on ("" if none), so that the run's record says why it ended.
    virtual std::string late_stop() = 0;
    // A rank that cannot write the database hands its rows over (they are cleared); rank 0
    // takes what has arrived and records it. Channels whose ranks all write the database
    // themselves have nothing to carry.
    virtual void send_rows(std::vector<MetricRow>& rows) = 0;
    virtual std::vector<MetricRow> receive_rows() = 0;
    // The harness's own collectives (CPU tensors; not in the strategy's traffic figures).
    virtual Transport& collectives() = 0;
    std::shared_ptr<Transport> collectives_ptr() { return collectives_; }

protected:
    explicit ControlChannel(std::shared_ptr<Transport> collectives) : collectives_(std::move(collectives)) {}
    std::shared_ptr<Transport> collectives_;
};

// One all-reduce of the flags per log point over `collectives`: one rank (nothing to agree) and
// the simulated cluster, whose control transport costs no simulated time and whose ranks share
// the process's database.
std::unique_ptr<ControlChannel> make_collective_control(std::shared_ptr<Transport> collectives);

// Through the rendezvous store, without waiting (above); rows of ranks other than 0 travel
// through the store to rank 0. `log_every`: the distance between log points.
std::unique_ptr<ControlChannel> make_store_control(std::shared_ptr<KeyValueStore> store,
                                                   std::shared_ptr<Transport> collectives, int64_t log_every);

// Rows as text and back (the store carries bytes): one line a row, fields tab-separated, numbers
// exact. A key's tabs and line breaks become spaces.
std::string rows_to_text(const std::vector<MetricRow>& rows);
std::vector<MetricRow> rows_from_text(const std::string& text);

}  // namespace plexus::host
