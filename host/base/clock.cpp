#include "base/clock.hpp"

#include <atomic>
#include <chrono>
#include <thread>

#include "base/text.hpp"

namespace plexus::host {

namespace {

// A background task on real hardware: a thread.
class ThreadTask : public BackgroundTask {
public:
    explicit ThreadTask(std::function<void()> task)
        : thread_([this, task = std::move(task)] {
              try {
                  task();
              } catch (...) { error_ = std::current_exception(); }
              done_.store(true);
          }) {}
    ~ThreadTask() override {
        if (thread_.joinable()) thread_.join();
    }
    bool done() override { return done_.load(); }
    void join() override {
        if (thread_.joinable()) thread_.join();
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
    }

private:
    std::atomic<bool> done_{false};
    std::exception_ptr error_;
    std::thread thread_;  // last: it starts once the members it uses exist
};

class WallClock : public RankClock {
public:
    double now() override { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }
    void charge_compute(double) override {}  // real hardware: time is measured, not charged
    bool simulated() const override { return false; }
    std::unique_ptr<BackgroundTask> start_background(std::function<void()> task) override {
        return std::make_unique<ThreadTask>(std::move(task));
    }
    void set_slowdown(double) override {}  // real time is slowed by the harness, which sleeps
    // The seconds elapsed: a resumed run's clock starts there (wall time counts both attempts).
    std::string save_state() override { return exact_double(now()); }
    void load_state(const std::string& state) override {
        start_ -= std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(std::stod(state) - now()));
    }

private:
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

std::shared_ptr<RankClock> make_wall_clock() { return std::make_shared<WallClock>(); }

}  // namespace plexus::host
