// SPDX-License-Identifier: BSL-1.0
// janitor: an optional background thread that calls maintain() when it is due. Nothing in keypool
// needs it; it is a convenience for services that do not run their own timer.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <stop_token>
#include <thread>

#include <keypool/policies/clock.hpp>

namespace keypool {

/// Calls `target.maintain()` on its own thread whenever the returned due time arrives, and at least
/// every `max_interval`. Stops (and joins) on destruction. `target` must outlive the janitor and use
/// the steady clock. Thread-safety: construct and destroy from one thread.
class janitor {
public:
    template <class Maintainable>
        requires requires(Maintainable& m) { { m.maintain() } -> std::same_as<time_point>; }
    explicit janitor(Maintainable& target, duration max_interval = std::chrono::seconds(1))
        : task_([&target] { return target.maintain(); }), max_interval_(max_interval),
          thread_([this](std::stop_token st) { run(st); }) {
        // reset_at::background: run as soon as a returned connection waits for its reset, so the
        // reset happens here and not on a borrower's path.
        if constexpr (requires { target.set_reset_signal(std::function<void()>{}); }) {
            target.set_reset_signal([this] { poke(); });
            unregister_ = [&target] { target.set_reset_signal({}); };
        }
    }

    janitor(const janitor&) = delete;
    janitor& operator=(const janitor&) = delete;
    ~janitor() {
        if (unregister_) unregister_(); // under the pool's lock: no signal is running after this
        thread_.request_stop();         // jthread joins
    }

    /// Runs maintenance now instead of at the due time.
    void poke() {
        std::lock_guard lk(m_);
        if (poked_) return;
        poked_ = true;
        cv_.notify_all();
    }

private:
    void run(std::stop_token st) {
        while (!st.stop_requested()) {
            const time_point due = task_();
            const time_point cap = std::chrono::steady_clock::now() + max_interval_;
            std::unique_lock lk(m_);
            cv_.wait_until(lk, st, std::min(due, cap), [&] { return poked_; });
            poked_ = false;
        }
    }

    std::function<time_point()> task_;
    std::function<void()> unregister_;
    duration max_interval_;
    std::mutex m_;
    std::condition_variable_any cv_;
    bool poked_ = false;
    std::jthread thread_; // last: starts after everything it uses is built
};

} // namespace keypool
