// SPDX-License-Identifier: BSL-1.0
// Per-CPU words written without a locked instruction: restartable sequences (rseq).
//
// A pool keeps one idle connection per CPU in a word of its own (pool_core's per-CPU caches).
// Taking it or putting one there with a compare-and-swap costs two locked instructions per
// acquire + release, about 11 ns of a 15 ns cycle on this machine (docs/benchmarks.md). Inside a
// restartable sequence the same load, compare and store are plain instructions: the kernel
// restarts (aborts) the sequence if the thread is preempted, migrated or signalled before its
// last instruction, the store (the commit), so a sequence on CPU j runs as if alone on word j.
// Words are numbered by the thread's concurrency id where the kernel keeps one (see available()):
// no two threads run with one id at once, and an id, like a CPU, changes only at scheduling.
//
// That holds only against other sequences on the same CPU (id). Code touching word j from
// elsewhere (a steal, blocking the caches for waiters, close) is "remote" and must follow
// seize_all():
// 1. compare-and-swap the word to `locked` (owners never commit on it: take needs a connection,
//    put needs an empty word);
// 2. fence(): membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) makes every sequence running on
//    that CPU (on every CPU, for ids) restart and orders memory;
// 3. the word still `locked` means no sequence committed over it and none can (those that start
//    now see `locked`), so the remote owns the value it replaced; anything else means a sequence
//    that had loaded that value committed between 1 and 2 — the owner has it, the remote must not.
// Remote code is serialised by the caller (pool_core holds its mutex), so no other remote can
// lock the word again between 1 and 3.
//
// Used only where all of this is available: x86-64, glibc's rseq registration (≥ 2.35),
// membarrier's rseq command (Linux ≥ 5.10), and not under ThreadSanitizer (which cannot see the
// plain accesses inside the assembly and would report the hand-offs as races). Elsewhere
// available() is false and pool_core uses compare-and-swap on the same words.
// GLIBC_TUNABLES=glibc.pthread.rseq=0 turns it off for a process.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include <keypool/detail/config.hpp>
#include <keypool/detail/cpu.hpp>

#if defined(KEYPOOL_RSEQ_CPU) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__) && !defined(KEYPOOL_NO_RSEQ_CACHES)
#if defined(__has_feature)
#if !__has_feature(thread_sanitizer)
#define KEYPOOL_RSEQ_CACHES 1
#endif
#else
#define KEYPOOL_RSEQ_CACHES 1
#endif
#endif

#if defined(KEYPOOL_RSEQ_CACHES)
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sys/auxv.h>
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace keypool::detail::percpu {

/// Words are 64 bytes apart (one per cache line): word j at `base + j * stride`.
inline constexpr std::size_t stride = 64;

#if defined(KEYPOOL_RSEQ_CACHES)

namespace impl {
// Where in the rseq area the word index is read: `cpu_id` (offset 4), or `mm_cid` (offset 24 in
// the kernel's ABI; glibc's header may not name it). Set once, by available(), before any
// sequence runs; sequences of one process never mix the two.
inline constexpr std::ptrdiff_t cpu_id_offset = 4;
inline constexpr std::ptrdiff_t mm_cid_offset = 24;
inline std::ptrdiff_t index_offset = cpu_id_offset;

// The calling thread's index field in its rseq area `rs`.
KEYPOOL_ALWAYS_INLINE const std::uint32_t* index_field(const struct rseq* rs) noexcept {
    return reinterpret_cast<const std::uint32_t*>(reinterpret_cast<const char*>(rs) + index_offset);
}

// The kernel fills `mm_cid` (and says so with AT_RSEQ_FEATURE_SIZE >= 28, Linux 6.3) unless
// KEYPOOL_RSEQ_INDEX=cpu asks for CPU numbers (`auto` or unset: ids where the kernel has them;
// any other value is reported on stderr and treated as `auto`).
inline bool use_mm_cid() noexcept {
    const char* e = std::getenv("KEYPOOL_RSEQ_INDEX");
    if (e && std::strcmp(e, "cpu") == 0) return false;
    if (e && *e && std::strcmp(e, "auto") != 0)
        std::fputs("keypool: KEYPOOL_RSEQ_INDEX is neither \"cpu\" nor \"auto\"; using auto\n", stderr);
    constexpr unsigned long at_rseq_feature_size = 27; // AT_RSEQ_FEATURE_SIZE (<linux/auxvec.h>, 6.3)
    return ::getauxval(at_rseq_feature_size) >= static_cast<unsigned long>(mm_cid_offset + 4);
}
} // namespace impl

/// Whether this process can use the sequences below: rseq registered by glibc and membarrier's
/// rseq command registered (once, by the first caller). Fixed for the life of the process.
///
/// Word j belongs to the thread running with index j: its concurrency id (`mm_cid`) where the
/// kernel keeps one — unique among the process's threads running at any moment and dense, from 0
/// to the number of CPUs the process may use, so a process confined to CPUs 8–15 numbers its
/// words 0–7 — else its CPU number. Either changes only when the thread is scheduled, which
/// aborts a sequence in flight.
inline bool available() noexcept {
    static const bool ok = [] {
        const bool mm_cid = impl::use_mm_cid(); // (first: reports a bad KEYPOOL_RSEQ_INDEX in any case)
        if (rseq_area_offset == 0) return false;
        const long cmds = ::syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
        if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ)) return false;
        if (::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) return false;
        impl::index_offset = mm_cid ? impl::mm_cid_offset : impl::cpu_id_offset;
        return true;
    }();
    return ok;
}

/// The calling thread's word index now (a hint: it changes when the thread is scheduled). Only
/// once available() returned true.
inline std::uint32_t current_index() noexcept {
    return *static_cast<const volatile std::uint32_t*>(impl::index_field(rseq_area()));
}
/// Whether word j is CPU j's (else the index is a concurrency id). Only once available() returned true.
inline bool indexed_by_cpu() noexcept { return impl::index_offset == impl::cpu_id_offset; }

namespace impl {
/// After a sequence, however it ended: no descriptor left pointing into this code (the kernel
/// would read it at the next preemption; rseq(2) asks for this before such memory can go away).
KEYPOOL_ALWAYS_INLINE void leave(struct rseq* rs) noexcept {
    volatile decltype(rs->rseq_cs)& cs = rs->rseq_cs;
    cs = 0;
}
} // namespace impl

// The sequence, shared by take and put: [start] read the CPU, refuse if it has no word, load the
// word, refuse if `old >= limit`, store `v` [commit]. The descriptor (struct rseq_cs) goes into
// __rseq_cs; the abort handler, preceded by the signature the kernel checks (RSEQ_SIG, encoded
// as the operand of a `ud1`), into __rseq_failure.
#define KEYPOOL_RSEQ_SWAP_ASM                                                                     \
    ".pushsection __rseq_cs, \"aw?\", @progbits\n\t"                                              \
    ".balign 32\n\t"                                                                              \
    "3:\n\t"                                                                                      \
    ".long 0, 0\n\t"                                                                              \
    ".quad 1f, (2f - 1f), 4f\n\t"                                                                 \
    ".popsection\n\t"                                                                             \
    "leaq 3b(%%rip), %%rax\n\t"                                                                   \
    "movq %%rax, %[rseq_cs]\n\t"                                                                  \
    "1:\n\t"                                                                                      \
    "movl %[index], %%eax\n\t"                                                                    \
    "cmpl %[n], %%eax\n\t"                                                                        \
    "jae %l[refused]\n\t"                                                                         \
    "shlq $6, %%rax\n\t"                                                                          \
    "addq %[base], %%rax\n\t"                                                                     \
    "movl (%%rax), %[old]\n\t"                                                                    \
    "cmpl %[limit], %[old]\n\t"                                                                   \
    "jae %l[refused]\n\t"                                                                         \
    "movl %[v], (%%rax)\n\t"                                                                      \
    "2:\n\t"                                                                                      \
    ".pushsection __rseq_failure, \"ax?\", @progbits\n\t"                                         \
    ".byte 0x0f, 0xb9, 0x3d\n\t"                                                                  \
    ".long 0x53053053\n\t"                                                                        \
    "4:\n\t"                                                                                      \
    "jmp %l[refused]\n\t"                                                                         \
    ".popsection\n\t"

/// On the calling thread's word j (its index, see available(); if j < n): if word j < `limit`,
/// replaces it with `v` and returns true with its old value in `old`. Else (or if the sequence was
/// aborted) false, nothing written. No locked instruction; acquire/release as plain x86 loads and
/// stores are. Only once available() returned true.
KEYPOOL_ALWAYS_INLINE bool swap_if_below(std::atomic<std::uint32_t>* base, std::uint32_t n, std::uint32_t limit,
                                         std::uint32_t v, std::uint32_t& old) noexcept {
    static_assert(stride == 64, "the sequence shifts the index by 6");
    struct rseq* rs = rseq_area();
    const std::uint32_t* index = impl::index_field(rs);
    std::uint32_t o;
    // volatile: g++ 12 deletes an asm goto whose outputs are all dead (a caller that ignores
    // `old`), and the caller's put then returns true having stored nothing.
    asm volatile goto(KEYPOOL_RSEQ_SWAP_ASM
             : [old] "=&r"(o)
             : [rseq_cs] "m"(rs->rseq_cs), [index] "m"(*index), [base] "r"(base), [n] "r"(n),
               [limit] "r"(limit), [v] "r"(v)
             : "memory", "cc", "rax"
             : refused);
    impl::leave(rs);
    old = o;
    return true;
refused:
    impl::leave(rs);
    return false;
}
#undef KEYPOOL_RSEQ_SWAP_ASM

/// Makes every restartable sequence that may be working on word `j` (or on any word, if `j` < 0)
/// restart, and orders memory with them: those on CPU j when words are CPUs' (≈ 1 µs here), those
/// on every CPU running this process's threads when they are concurrency ids (whose CPU the remote
/// does not know). Registration succeeded (available()) and a forked child keeps it, so the
/// one-CPU form fails only for a CPU number the kernel does not know: then the all-CPU form is
/// used. Should that fail too (the process lost its registration), it registers again once; a
/// fence that still fails ends the process with a message, since without it a remote could take
/// a word an owner is about to commit over (and a silent retry loop would hang the caller).
inline void fence(int j) noexcept {
    const int cpu = indexed_by_cpu() ? j : -1;
    if (cpu >= 0 &&
        ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, MEMBARRIER_CMD_FLAG_CPU, cpu) == 0)
        return;
    for (int attempt = 0;; ++attempt) {
        long r;
        do r = ::syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ, 0, 0);
        while (r != 0 && errno == EINTR);
        if (r == 0) return;
        if (attempt > 0 || ::syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ, 0, 0) != 0) {
            std::fputs("keypool: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_RSEQ) failed; the per-CPU caches "
                       "cannot be used safely\n",
                       stderr);
            std::abort();
        }
    }
}

#else

inline bool available() noexcept { return false; }
inline std::uint32_t current_index() noexcept { return 0; }
inline bool indexed_by_cpu() noexcept { return true; }
inline bool swap_if_below(std::atomic<std::uint32_t>*, std::uint32_t, std::uint32_t, std::uint32_t,
                          std::uint32_t&) noexcept {
    return false;
}
inline void fence(int) noexcept {}

#endif

/// Word j of the array at `base` (words `stride` bytes apart).
inline std::atomic<std::uint32_t>& word(std::atomic<std::uint32_t>* base, std::size_t j) noexcept {
    return *reinterpret_cast<std::atomic<std::uint32_t>*>(reinterpret_cast<char*>(base) + j * stride);
}

/// The remote side (see the top of this file), for words 0..n-1 of `base` at once: takes every
/// word below `empty` (it holds a value) for which `want(value)` holds and, when `final` is not
/// `empty`, every word not yet `final`, from its owners, and leaves it `final`; `take(value)`
/// gets each value taken (those below `empty` are the owners' data). One `fence_fn(cpu)` per round (cpu -1: all CPUs); a word
/// an owner's sequence committed over during the round keeps the owner's value and is tried again.
/// The caller serialises remotes (nobody else may store `locked`). `fence_fn` is percpu::fence,
/// or a test's stand-in that plays the owner.
template <class Want, class Take, class Fence>
void seize_all(std::atomic<std::uint32_t>* base, std::uint32_t n, std::uint32_t empty, std::uint32_t final,
               std::uint32_t locked, Want&& want, Take&& take, Fence&& fence_fn) {
    std::uint64_t pending = n >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
    std::uint32_t held[64];
    while (pending) {
        std::uint64_t mine = 0;
        for (std::uint64_t p = pending; p; p &= p - 1) {
            const int j = std::countr_zero(p);
            std::atomic<std::uint32_t>& w = word(base, static_cast<std::size_t>(j));
            std::uint32_t v = w.load(std::memory_order_acquire);
            for (;;) {
                if (final == empty ? v >= empty || !want(v) : v == final) { // nothing to take, or final already
                    pending &= ~(std::uint64_t{1} << j);
                    break;
                }
                if (w.compare_exchange_weak(v, locked, std::memory_order_acquire, std::memory_order_relaxed)) {
                    held[j] = v;
                    mine |= std::uint64_t{1} << j;
                    break;
                }
            }
        }
        if (!mine) return;
        fence_fn(std::popcount(mine) == 1 ? std::countr_zero(mine) : -1);
        for (std::uint64_t p = mine; p; p &= p - 1) {
            const int j = std::countr_zero(p);
            std::atomic<std::uint32_t>& w = word(base, static_cast<std::size_t>(j));
            if (w.load(std::memory_order_acquire) != locked) continue; // an owner committed: again
            w.store(final, std::memory_order_release);
            take(held[j]);
            pending &= ~(std::uint64_t{1} << j);
        }
    }
}

} // namespace keypool::detail::percpu
