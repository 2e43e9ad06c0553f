// SPDX-License-Identifier: BSL-1.0
// rcu: read-side sections that write nothing shared, and grace periods that wait for them. The
// registry's lookups run in such a section without taking the shard's lock; what a lookup may
// still be reading (a table node, an old bucket array, a pool core) is freed only after a grace
// period that began after it was unlinked.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <utility>

#include <boost/container/small_vector.hpp>

#if defined(__linux__)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <keypool/detail/config.hpp>

#if defined(__SANITIZE_THREAD__)
#define KEYPOOL_RCU_FENCED_ONLY 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KEYPOOL_RCU_FENCED_ONLY 1
#endif
#endif

namespace keypool::detail {

/// A full barrier. ThreadSanitizer does not model standalone fences (GCC refuses them under
/// -fsanitize=thread): there, a seq_cst read-modify-write of `any` stands in (a full barrier on
/// x86 and AArch64, and an operation TSan orders).
template <class T>
KEYPOOL_ALWAYS_INLINE void rcu_full_fence([[maybe_unused]] std::atomic<T>& any) noexcept {
#if defined(KEYPOOL_RCU_FENCED_ONLY)
    any.fetch_add(0, std::memory_order_seq_cst);
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

/// One thread's read-side state: `seq` is odd while the thread is inside a section. Only its
/// thread writes it; grace periods read it. Records are never freed: a thread that exits gives its
/// record back and a later thread takes it (`index` stays unique among live threads).
struct alignas(64) rcu_record {
    std::atomic<std::uint64_t> seq{0};
    bool fenced = true;  // this process cannot use membarrier: a section starts with a full fence
    unsigned index = 0;  // 0, 1, 2 ... in order of creation
    std::atomic<bool> taken{false};
    rcu_record* next = nullptr; // all records, newest first (a push-only list)
};

inline constinit thread_local rcu_record* rcu_self = nullptr;
/// rcu_self where its sections need no fence (membarrier mode), else null: the one thing a
/// section's start tests (a null sends it to rcu_section::enter_slow, which registers the thread
/// or fences).
inline constinit thread_local rcu_record* rcu_unfenced = nullptr;

/// Gives the thread's record back when the thread exits (made on the record's first use only, so
/// the read side's access to rcu_self stays a plain thread-local load).
struct rcu_thread_exit {
    ~rcu_thread_exit() {
        rcu_unfenced = nullptr;
        if (rcu_record* r = std::exchange(rcu_self, nullptr)) r->taken.store(false, std::memory_order_release);
    }
};
inline thread_local rcu_thread_exit rcu_exit_guard;

/// The process's read-side sections and grace periods (one domain: the records are per thread).
///
/// Two ways to order a section's start against a grace period's check of it:
/// - membarrier (Linux ≥ 4.14, `MEMBARRIER_CMD_PRIVATE_EXPEDITED`): a section starts with a plain
///   store and a compiler barrier; a grace period makes every running thread of the process
///   execute a full barrier (≈ 1 µs here) before it reads the records. Sections are frequent,
///   grace periods rare (the registry's evictions, invalidations and closes).
/// - fenced (no membarrier, e.g. a seccomp filter, or ThreadSanitizer builds, which do not see a
///   barrier made by the kernel): a section starts with a seq_cst fence (≈ 2 ns more per registry
///   acquire here, docs/benchmarks.md).
///
/// A grace period snapshots the records that are inside a section and is over once each of them
/// has left it (its `seq` changed). Sections are short and never block on a lock a grace period's
/// caller holds: callers of synchronize() must hold no lock a section takes and be outside a section.
class rcu_domain {
public:
    constexpr rcu_domain() = default;

    /// The calling thread's record, taken or made on first use.
    KEYPOOL_NOINLINE rcu_record* register_thread() {
        (void)&rcu_exit_guard; // constructs it: its destructor runs at thread exit
        const bool fence = mode() != membarrier;
        for (rcu_record* r = head_.load(std::memory_order_acquire); r; r = r->next) {
            bool expected = false;
            if (!r->taken.load(std::memory_order_relaxed) &&
                r->taken.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
                r->fenced = fence;
                return adopt(r);
            }
        }
        auto* r = new rcu_record; // never freed: grace periods may read it at any time
        r->taken.store(true, std::memory_order_relaxed);
        r->fenced = fence;
        r->index = records_.fetch_add(1, std::memory_order_relaxed);
        rcu_record* h = head_.load(std::memory_order_relaxed);
        do r->next = h;
        while (!head_.compare_exchange_weak(h, r, std::memory_order_release, std::memory_order_relaxed));
        return adopt(r);
    }

    /// Call after unlinking something a section may be reading: free it once passed(stamp).
    std::uint64_t stamp() noexcept {
        rcu_full_fence(started_);
        return started_.load(std::memory_order_seq_cst);
    }
    /// Whether a grace period that began after `stamp()` returned it has ended.
    bool passed(std::uint64_t stamp) const noexcept { return completed_.load(std::memory_order_acquire) > stamp; }

    /// One grace period, observable without blocking (tests) or waited for (synchronize()).
    class grace_period {
    public:
        explicit grace_period(rcu_domain& d) : d_(d) {
            index_ = d.started_.fetch_add(1, std::memory_order_seq_cst) + 1;
            d.heavy_barrier();
            for (rcu_record* r = d.head_.load(std::memory_order_acquire); r; r = r->next) {
                const std::uint64_t s = r->seq.load(std::memory_order_acquire);
                if (s & 1) inside_.push_back({r, s});
            }
        }
        /// True once every section that was open when the grace period began has ended.
        bool done() noexcept {
            while (!inside_.empty()) {
                auto& [r, s] = inside_.back();
                if (r->seq.load(std::memory_order_acquire) == s) return false;
                inside_.pop_back();
            }
            std::uint64_t c = d_.completed_.load(std::memory_order_relaxed);
            while (c < index_ && !d_.completed_.compare_exchange_weak(c, index_, std::memory_order_release,
                                                                      std::memory_order_relaxed)) {
            }
            return true;
        }
        void wait() noexcept {
            for (unsigned spins = 0; !done(); ++spins)
                if (spins >= 64) std::this_thread::yield(); // the reader may have been preempted
        }

    private:
        rcu_domain& d_;
        std::uint64_t index_;
        boost::container::small_vector<std::pair<rcu_record*, std::uint64_t>, 8> inside_;
    };

    /// Waits until every section open now has ended.
    void synchronize() noexcept { grace_period(*this).wait(); }

    /// Settles how sections are ordered (membarrier or fenced) now rather than in the process's
    /// first section: registering for membarrier makes the kernel wait for an RCU grace period
    /// of its own once the process has more than one thread — 12-18 ms on this project's test
    /// machine (Linux 6.18), which the first acquire of a registry used to pay. Registries call it
    /// when built.
    void prepare() noexcept { (void)mode(); }
    /// Whether prepare() (or a first section) has settled the mode.
    bool prepared() const noexcept { return mode_.load(std::memory_order_acquire) != unknown; }

private:
    static rcu_record* adopt(rcu_record* r) noexcept {
        rcu_unfenced = r->fenced ? nullptr : r;
        return rcu_self = r;
    }

    enum mode_value : int { unknown, membarrier, fenced };
    int mode() noexcept {
        int m = mode_.load(std::memory_order_acquire);
        if (m != unknown) return m;
        int want = fenced;
#if defined(__linux__) && !defined(KEYPOOL_RCU_FENCED_ONLY)
        if (::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0) want = membarrier;
#endif
        mode_.compare_exchange_strong(m, want, std::memory_order_acq_rel);
        return mode_.load(std::memory_order_acquire);
    }
    void heavy_barrier() noexcept {
        rcu_full_fence(started_);
#if defined(__linux__) && !defined(KEYPOOL_RCU_FENCED_ONLY)
        if (mode() != membarrier) return;
        // Sections entered without a fence: only a barrier on every thread orders them. The
        // expedited command cannot fail once registered (the kernel documents no such case);
        // should it, MEMBARRIER_CMD_GLOBAL (every CPU passes a scheduler barrier, milliseconds)
        // is slower but as strong, and it is retried until one of the two succeeds.
        for (unsigned tries = 0;; ++tries) {
            if (::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0) return;
            if (::syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) return;
            if (tries >= 16) std::this_thread::yield();
        }
#endif
    }

    std::atomic<rcu_record*> head_{nullptr};
    std::atomic<unsigned> records_{0};
    std::atomic<std::uint64_t> started_{0}, completed_{0};
    std::atomic<int> mode_{unknown};
};

inline constinit rcu_domain rcu{};

/// A read-side section on the calling thread, from construction to leave() or destruction.
/// Sections do not nest.
class rcu_section {
public:
    /// One thread-local load and test, then the store (membarrier mode); a thread's first section
    /// and every fenced one go through enter_slow().
    KEYPOOL_ALWAYS_INLINE rcu_section() noexcept {
        rcu_record* r = rcu_unfenced;
        if (!r) [[unlikely]] {
            r_ = enter_slow();
            return;
        }
        r_ = r;
        (void)owner_increment(r->seq);
        std::atomic_signal_fence(std::memory_order_seq_cst);
    }
    KEYPOOL_ALWAYS_INLINE void leave() noexcept {
        if (r_) {
            (void)owner_increment<true>(r_->seq); // (a release store)
            r_ = nullptr;
        }
    }
    KEYPOOL_ALWAYS_INLINE ~rcu_section() { leave(); }
    rcu_section(const rcu_section&) = delete;
    rcu_section& operator=(const rcu_section&) = delete;

    /// The thread's record index (unique among live threads): a slot in per-thread counters.
    unsigned index() const noexcept { return r_->index; }

private:
    KEYPOOL_NOINLINE static rcu_record* enter_slow() noexcept {
        rcu_record* r = rcu_self;
        if (!r) r = rcu.register_thread();
        r->seq.store(r->seq.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
        if (r->fenced) rcu_full_fence(r->seq);
        else std::atomic_signal_fence(std::memory_order_seq_cst);
        return r;
    }
    rcu_record* r_;
};

/// What code that is generic over thread-safety enters: an rcu_section, or nothing where no
/// other thread can read (sync::none).
struct no_rcu_section {
    void leave() noexcept {}
    unsigned index() const noexcept { return 0; }
};
template <bool ThreadSafe>
using rcu_section_if = std::conditional_t<ThreadSafe, rcu_section, no_rcu_section>;

} // namespace keypool::detail
