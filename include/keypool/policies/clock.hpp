// SPDX-License-Identifier: BSL-1.0
// Clock policies: the real steady clock (with a cheap coarse reading, one cache line while a
// coarse_ticker keeps its copy) and a manual clock for deterministic tests. A clock also supplies
// the `event` that blocked waiters sleep on, so a manual clock can wake them when a test moves
// time forward.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <stop_token>
#include <thread>

#include <keypool/detail/config.hpp>

#if defined(__linux__)
#include <pthread.h>
#include <time.h>
#if defined(__GLIBC__) && __has_include(<dlfcn.h>)
#include <dlfcn.h>
#define KEYPOOL_VDSO_CLOCK 1
#endif
#endif

namespace keypool {

/// Every keypool clock measures time as `std::chrono::steady_clock` time points, so deadlines can be
/// passed to connectors and between components without conversion.
using time_point = std::chrono::steady_clock::time_point;
using duration = std::chrono::steady_clock::duration;

namespace detail {
/// The coarse time a coarse_ticker keeps: `CLOCK_MONOTONIC_COARSE` as steady_clock ticks, read by
/// the ticker's thread every period, in `ticks`: the copy (even: its lowest bit cleared), the copy
/// + 1 (odd) while the ticker asks whether anyone reads, or `none` (1) while no ticker runs or it
/// idles. So a reader tests one bit: even is the time, odd sends it to steady_clock::coarse_odd,
/// which sets `wanted` (only when clear: one store per asking period in all) and reads the clock
/// for `none`. On a line of its own: written about once per period, read by every fast path.
struct alignas(64) coarse_time_cell {
    static constexpr duration::rep none = 1;
    std::atomic<duration::rep> ticks{none};
    std::atomic<bool> wanted{false};
    void want() noexcept {
        if (!wanted.load(std::memory_order_relaxed)) wanted.store(true, std::memory_order_relaxed);
    }
    /// Whether a copy is kept (asked about or not).
    bool kept() const noexcept { return ticks.load(std::memory_order_relaxed) != none; }
    /// The copy kept, 0 if none.
    duration::rep copy() const noexcept {
        const duration::rep t = ticks.load(std::memory_order_relaxed);
        return t == none ? 0 : t & ~duration::rep{1};
    }
};
inline coarse_time_cell coarse_cell;
} // namespace detail

/// The default clock: `std::chrono::steady_clock`, plus `coarse_now()`, `CLOCK_MONOTONIC_COARSE`
/// (4 ms resolution here, same epoch). The fast paths read only the coarse clock; idle timeout,
/// max lifetime and validation thresholds tolerate its resolution. While a `coarse_ticker` lives
/// (every pool and registry on this clock holds one unless `pool_options::use_coarse_ticker` is
/// false), `coarse_now()` reads the ticker's copy (one load and one bit test), a period (4 ms)
/// older than the clock at most while its thread gets a CPU; otherwise it reads the clock through
/// the vDSO (≈3 ns alone, but up to a third of a registry cycle at 10,000 keys here:
/// docs/benchmarks.md, "Session 15").
struct steady_clock {
    time_point now() const noexcept { return std::chrono::steady_clock::now(); }

    KEYPOOL_ALWAYS_INLINE time_point coarse_now() const noexcept {
        const duration::rep t = detail::coarse_cell.ticks.load(std::memory_order_relaxed);
        if (!(t & 1)) [[likely]]
            return time_point(duration(t));
        return coarse_odd(t);
    }

    /// coarse_now() for an odd word: the ticker asks whether anyone reads (the copy + 1), or no
    /// copy is kept (`none`: no ticker, or it idles until a read wants it back).
    static KEYPOOL_NOINLINE time_point coarse_odd(duration::rep t) noexcept {
        detail::coarse_cell.want();
        if (t == detail::coarse_time_cell::none) return read_coarse();
        return time_point(duration(t - 1));
    }

    /// `CLOCK_MONOTONIC_COARSE` itself, read now: what `coarse_now()` returns while no ticker runs.
    static time_point read_coarse() noexcept {
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
        timespec ts;
#if defined(KEYPOOL_VDSO_CLOCK)
        if (auto* direct = vdso_clock_gettime) [[likely]]
            direct(CLOCK_MONOTONIC_COARSE, &ts);
        else
#endif
            ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return time_point(std::chrono::duration_cast<duration>(std::chrono::seconds(ts.tv_sec) +
                                                               std::chrono::nanoseconds(ts.tv_nsec)));
#else
        return time_point(std::chrono::steady_clock::now());
#endif
    }

#if defined(KEYPOOL_VDSO_CLOCK)
    /// The kernel's vDSO `clock_gettime`, called directly: the same function and the same clock as
    /// `::clock_gettime`, minus glibc's wrapper (≈2.7 ns instead of ≈3.5 ns per read here, a twentieth
    /// of an acquire/release cycle). Looked up once during static initialisation; null (so the
    /// wrapper is used) before that, or where the vDSO lacks the symbol.
    using vdso_fn = int (*)(clockid_t, timespec*);
    static vdso_fn find_vdso_clock() noexcept {
        void* vdso = ::dlopen("linux-vdso.so.1", RTLD_NOW | RTLD_NOLOAD);
        if (!vdso) return nullptr;
        void* f = ::dlsym(vdso, "__vdso_clock_gettime");
        if (!f) f = ::dlsym(vdso, "__kernel_clock_gettime"); // the aarch64 name
        ::dlclose(vdso);
        return reinterpret_cast<vdso_fn>(f);
    }
    static inline const vdso_fn vdso_clock_gettime = find_vdso_clock();
#endif

    /// A one-shot signal a thread can wait for with a deadline. Thread-safety: `set` from any thread.
    class event {
    public:
        explicit event(const steady_clock&) noexcept {}
        void set() {
            std::lock_guard lk(m_);
            set_ = true;
            cv_.notify_all();
        }
        void reset() {
            std::lock_guard lk(m_);
            set_ = false;
        }
        /// Returns true if the event was set, false if the deadline passed first.
        bool wait_until(time_point deadline) {
            std::unique_lock lk(m_);
            return cv_.wait_until(lk, deadline, [&] { return set_; });
        }

    private:
        std::mutex m_;
        std::condition_variable cv_;
        bool set_ = false;
    };
};

namespace detail {
/// The ticker thread behind coarse_ticker: started by the first holder, stopped by the last,
/// copying the coarse clock into `cell` every period. The thread publishes under the lock and
/// exits once the generation it was started for has passed: a stopped ticker never writes the
/// cell again, so the cell never keeps a stale time while no thread runs. get() is the process's
/// one (on coarse_cell, with fork handling), built on first use and never destroyed (its thread
/// is detached); tests build their own on a cell of their own.
class coarse_ticker_state {
public:
    /// How often a wanted copy is refreshed (the coarse clock's own resolution is 4 ms at HZ=250).
    /// Readers test one bit and say nothing, so every `ask_every` periods the thread asks (it
    /// publishes the copy odd: readers then set `wanted`) until one answers; after `idle_after`
    /// asking periods in a row without a read the copy is dropped (readers call the vDSO) and the
    /// thread looks only every `idle_period` for a reader that wants it back.
    static constexpr std::chrono::milliseconds period{4};
    static constexpr int ask_every = 64;
    static constexpr int idle_after = 64;
    static constexpr std::chrono::milliseconds idle_period{100};

    static coarse_ticker_state& get() {
        static coarse_ticker_state* const s = new coarse_ticker_state(coarse_cell, true);
        return *s;
    }

    /// A ticker on `cell`. `process_wide`: whether a child of fork() must drop the copy.
    coarse_ticker_state(coarse_time_cell& cell, bool process_wide) : cell_(cell) {
#if defined(__linux__)
        // A child of fork() has no ticker thread: its cell must not keep the parent's last time.
        if (process_wide)
            ::pthread_atfork([] { get().m_.lock(); }, [] { get().m_.unlock(); }, [] { get().after_fork_in_child(); });
#else
        (void)process_wide;
#endif
    }
    /// Waits for its thread to leave (the process's one is never destroyed).
    ~coarse_ticker_state() {
        std::unique_lock lk(m_);
        if (running_) stop_locked();
        cv_.wait(lk, [&] { return threads_ == 0; });
    }
    coarse_ticker_state(const coarse_ticker_state&) = delete;
    coarse_ticker_state& operator=(const coarse_ticker_state&) = delete;

    void hold() noexcept {
        std::lock_guard lk(m_);
        ++holders_;
        if (!running_) start_locked();
    }
    void drop() noexcept {
        std::lock_guard lk(m_);
        if (--holders_ == 0 && running_) stop_locked();
    }
    /// How many hold it, and whether its thread runs.
    std::size_t holders() const {
        std::lock_guard lk(m_);
        return holders_;
    }
    bool running() const {
        std::lock_guard lk(m_);
        return running_;
    }

private:
    /// The coarse time, even (asking: odd).
    void publish_locked(bool asking = false) noexcept {
        const duration::rep t = steady_clock::read_coarse().time_since_epoch().count() & ~duration::rep{1};
        cell_.ticks.store(asking ? t + 1 : t, std::memory_order_relaxed);
    }
    void drop_copy_locked() noexcept { cell_.ticks.store(coarse_time_cell::none, std::memory_order_relaxed); }
    void start_locked() noexcept {
        publish_locked(); // fresh before the first holder returns
        const std::uint64_t gen = ++generation_;
        try {
            std::thread([this, gen] { run(gen); }).detach();
            running_ = true;
            ++threads_;
        } catch (...) { // no thread (resources): coarse_now() reads the clock itself
            drop_copy_locked();
        }
    }
    void stop_locked() noexcept {
        ++generation_;
        running_ = false;
        drop_copy_locked();
        cv_.notify_all();
    }
    void run(std::uint64_t gen) noexcept {
        std::unique_lock lk(m_);
        int unread = 0;   // asking periods in a row without a read; idle_after: idling
        int quiet = 0;    // periods since the last ask was answered
        bool asking = false;
        while (generation_ == gen) {
            cv_.wait_for(lk, unread < idle_after ? period : idle_period);
            if (generation_ != gen) break;
            if (asking || unread >= idle_after) {
                if (cell_.wanted.exchange(false, std::memory_order_relaxed)) {
                    asking = false, unread = 0, quiet = 0;
                } else if (unread < idle_after && ++unread == idle_after) {
                    drop_copy_locked(); // idle: readers read the clock (and say so)
                }
                if (unread >= idle_after) continue;
            } else if (++quiet >= ask_every) {
                asking = true;
                cell_.wanted.store(false, std::memory_order_relaxed); // (a stale answer)
            }
            publish_locked(asking); // a kept copy is never more than a period old
        }
        --threads_;
        cv_.notify_all(); // (a destructor may wait for it)
    }
    void after_fork_in_child() noexcept {
        // The forking thread holds m_ (prepare handler); the ticker thread is gone, and it may
        // have been waiting on cv_: a fresh condition variable, not the one it was counted in.
        ::new (static_cast<void*>(&cv_)) std::condition_variable;
        ++generation_;
        running_ = false;
        threads_ = 0;
        drop_copy_locked();
        m_.unlock();
    }

    coarse_time_cell& cell_;
    mutable std::mutex m_;
    std::condition_variable cv_;
    std::size_t holders_ = 0;
    std::size_t threads_ = 0; // started and not yet left
    bool running_ = false;
    std::uint64_t generation_ = 0;
};
} // namespace detail

/// Keeps the process's coarse time fresh while it lives, for `steady_clock::coarse_now()`: one
/// thread (shared by all coarse_tickers, started by the first, stopped by the last) reads
/// `CLOCK_MONOTONIC_COARSE` every 4 ms into one word, and every fast path reads that word instead
/// of calling the vDSO. Unread for about half a second (it asks readers every quarter second and
/// waits a quarter for an answer), the thread drops the word (readers call
/// the vDSO again) and wakes only ten times a second until a read wants it back: an idle process
/// pays ≈ 10 wakeups a second, not 250. Pools and registries on the steady clock hold one (unless
/// `pool_options::use_coarse_ticker` is false); a service may hold its own. The copy lags the
/// clock by at most a period plus the thread's scheduling delay; pools compare it only with
/// thresholds of a second or more by default. If the thread cannot be started, nothing changes but the speed. A
/// child of `fork()` starts without the thread (the copy is dropped there) until a ticker is made
/// in it. Thread-safety: any thread may make or destroy one.
class coarse_ticker {
public:
    coarse_ticker() { detail::coarse_ticker_state::get().hold(); }
    ~coarse_ticker() { detail::coarse_ticker_state::get().drop(); }
    coarse_ticker(const coarse_ticker&) = delete;
    coarse_ticker& operator=(const coarse_ticker&) = delete;
};

/// A clock that moves only when a test says so. Waiters blocked on a `manual_clock::event` wake
/// when `advance`/`set` moves time past their deadline, so timeouts are tested without sleeping.
/// Thread-safety: every member may be called from any thread.
class manual_clock {
public:
    /// Starts one hour after the epoch, so `now() - some_duration` never underflows in tests.
    explicit manual_clock(time_point start = time_point(std::chrono::hours(1))) : now_(start) {}
    manual_clock(const manual_clock&) = delete;
    manual_clock& operator=(const manual_clock&) = delete;

    time_point now() const {
        std::lock_guard lk(m_);
        return now_;
    }
    time_point coarse_now() const { return now(); }

    void advance(duration d) {
        std::lock_guard lk(m_);
        now_ += d;
        cv_.notify_all();
    }
    void set(time_point t) {
        std::lock_guard lk(m_);
        now_ = t;
        cv_.notify_all();
    }

    /// Like `steady_clock::event`, but its deadline is measured on this manual clock.
    class event {
    public:
        explicit event(const manual_clock& c) noexcept : c_(&c) {}
        void set() {
            std::lock_guard lk(c_->m_);
            set_ = true;
            c_->cv_.notify_all();
        }
        void reset() {
            std::lock_guard lk(c_->m_);
            set_ = false;
        }
        bool wait_until(time_point deadline) {
            std::unique_lock lk(c_->m_);
            c_->cv_.wait(lk, [&] { return set_ || c_->now_ >= deadline; });
            return set_;
        }

    private:
        const manual_clock* c_;
        bool set_ = false; // guarded by c_->m_
    };

private:
    mutable std::mutex m_;
    mutable std::condition_variable cv_;
    time_point now_;
};

/// Sleeps on `clock` until `until`, the stop token fires, or `ev` is set (if given).
/// Returns true if it slept the full time.
template <class Clock>
bool sleep_until(const Clock& clock, time_point until, std::stop_token st = {}) {
    typename Clock::event ev(clock);
    std::stop_callback cb(st, [&] { ev.set(); });
    return !ev.wait_until(until);
}

} // namespace keypool
