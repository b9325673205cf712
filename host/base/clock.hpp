// The clock a rank's RunContext reads time from: the wall clock on real hardware, or a simulated
// rank's virtual clock (sim/cluster.hpp implements that one). Below every layer that reads time.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <plexus/context.hpp>

namespace plexus::host {

// What a rank's RunContext reads time from: the wall clock, or a simulated rank's clock.
class RankClock {
public:
    virtual ~RankClock() = default;
    virtual double now() = 0;  // seconds since the run started
    virtual void charge_compute(double flops) = 0;
    virtual bool simulated() const = 0;
    // RunContext::start_background: a thread, or a simulated rank's second activity.
    virtual std::unique_ptr<BackgroundTask> start_background(std::function<void()> task) = 0;
    // The clock's state in a checkpoint, as text, and its restoration on resume (from the rank's
    // own thread, before its first collective): a resumed run's times continue where they were.
    // [[faults]] slow: compute from now on takes `factor` times as long (simulated ranks; real
    // ranks are slowed by the harness).
    virtual void set_slowdown(double factor) = 0;
    virtual std::string save_state() = 0;
    virtual void load_state(const std::string& state) = 0;
};

std::shared_ptr<RankClock> make_wall_clock();

}  // namespace plexus::host
