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
#include <string>
#include <thread>

#include <time.h>

#include <keypool/error.hpp>
#include <keypool/policies/clock.hpp>

namespace keypool {

/// Calls `target.maintain()` on its own thread whenever the returned due time arrives, and at least
/// every `max_interval`, but spends at most `max_share` of one core on it: after a call that took
/// t of this thread's CPU time (time waiting for a server, a ping's or a reset's round trip, does
/// not count), the next one (due, or asked for by poke()) waits until t × (1 − max_share) /
/// max_share has passed. A registry's maintain() walks every pool (75 ms at 1e6 idle keys on the
/// test machine, 0.36 s with min_idle or background resets, which give every pool a pass), and
/// with that many pools something is nearly always due, so without the bound the thread would
/// maintain back to back. Maintenance then runs late by up to that wait (0.7–3 s at 1e6 keys with
/// the default 0.1), which idle timeouts, lifetimes and keepalives measured in minutes tolerate; a
/// small pool's maintain() takes microseconds and waits microseconds. Stops (and joins) on
/// destruction. `target` must outlive the janitor and use the steady clock. Errors: throws
/// `keypool::error(invalid_config)` if `max_share` is not in (0, 1] or `max_interval` is not
/// positive. Thread-safety: construct and destroy from one thread.
class janitor {
public:
    template <class Maintainable>
        requires requires(Maintainable& m) { { m.maintain() } -> std::same_as<time_point>; }
    explicit janitor(Maintainable& target, duration max_interval = std::chrono::seconds(1), double max_share = 0.1)
        : task_([&target] { return target.maintain(); }), max_interval_(checked_interval(max_interval)),
          rest_factor_(rest_factor_of(max_share)), thread_([this](std::stop_token st) { run(st); }) {
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

    /// Runs maintenance now instead of at the due time (once the rest after the last call, see
    /// max_share, is over).
    void poke() {
        std::lock_guard lk(m_);
        if (poked_) return;
        poked_ = true;
        cv_.notify_all();
    }

private:
    static duration checked_interval(duration d) {
        if (d <= duration::zero()) throw error(errc::invalid_config, "janitor: max_interval must be positive");
        return d;
    }
    static double rest_factor_of(double share) {
        if (!(share > 0.0 && share <= 1.0)) // (also NaN)
            throw error(errc::invalid_config,
                        "janitor: max_share must be in (0, 1] (got " + std::to_string(share) + ")");
        return (1.0 - share) / share;
    }

    /// This thread's CPU time (the steady clock where the system does not tell).
    static duration cpu_now() noexcept {
#if defined(CLOCK_THREAD_CPUTIME_ID)
        timespec ts;
        if (::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
            return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
#endif
        return std::chrono::steady_clock::now().time_since_epoch();
    }

    void run(std::stop_token st) {
        while (!st.stop_requested()) {
            const duration cpu_start = cpu_now();
            const time_point due = task_();
            const duration used = cpu_now() - cpu_start;
            const time_point end = std::chrono::steady_clock::now();
            // The rest after this call (max_share of a core at most, however soon the next call is
            // due or asked for), at most an hour; then until it is due, or poked, or max_interval.
            const double rest_ns = std::chrono::duration<double, std::nano>(used).count() * rest_factor_;
            const duration rest = rest_ns < 3.6e12 ? duration(static_cast<duration::rep>(rest_ns))
                                                   : duration(std::chrono::hours(1));
            const time_point earliest = end + rest;
            const time_point cap = max_interval_ > time_point::max() - end ? time_point::max() : end + max_interval_;
            std::unique_lock lk(m_);
            cv_.wait_until(lk, st, earliest, [] { return false; }); // (a poke now waits too)
            if (!poked_) cv_.wait_until(lk, st, std::min(due, cap), [&] { return poked_; });
            poked_ = false;
        }
    }

    std::function<time_point()> task_;
    std::function<void()> unregister_;
    duration max_interval_;
    double rest_factor_;
    std::mutex m_;
    std::condition_variable_any cv_;
    bool poked_ = false;
    std::jthread thread_; // last: starts after everything it uses is built
};

} // namespace keypool
