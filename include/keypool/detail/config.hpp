// SPDX-License-Identifier: BSL-1.0
// Compiler hints for the acquire/release fast path (GCC and Clang; no-ops elsewhere).
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define KEYPOOL_ALWAYS_INLINE inline __attribute__((always_inline))
#define KEYPOOL_NOINLINE __attribute__((noinline))
#define KEYPOOL_PREFETCH_WRITE(p) __builtin_prefetch((p), 1)
// The compiler no longer knows what the variable holds (it stays in a register): a value it
// proved equal to a loaded one is not replaced by the load.
#define KEYPOOL_OPAQUE(v) asm("" : "+r"(v))
// The compiler may take `c` as true (it is: a hint, never a check).
#define KEYPOOL_ASSUME(c)                                                                            \
    do {                                                                                             \
        if (!(c)) __builtin_unreachable();                                                           \
    } while (false)
#else
#define KEYPOOL_ALWAYS_INLINE inline
#define KEYPOOL_NOINLINE
#define KEYPOOL_PREFETCH_WRITE(p) ((void)(p))
#define KEYPOOL_OPAQUE(v) ((void)(v))
#define KEYPOOL_ASSUME(c) ((void)0)
#endif

#include <atomic>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_THREAD__)
#if defined(__has_feature)
#if !__has_feature(thread_sanitizer)
#define KEYPOOL_OWNER_ADD_ASM 1
#endif
#else
#define KEYPOOL_OWNER_ADD_ASM 1
#endif
#endif

namespace keypool::detail {

/// Adds 1 to a count that only the calling thread writes (others may load it): as a relaxed load
/// and store would, but on x86-64 with GCC or Clang as one `add` to memory (its store is as
/// atomic as a relaxed store's; the compiler fuses no atomic load and store into one). `Release`:
/// also a release store (and a compiler barrier). ThreadSanitizer builds, which see nothing inside
/// asm, and other targets take the load and store. `A`: a std::atomic<T> (or sync::none's
/// plain_atomic) of a 32- or 64-bit unsigned T. Returns whether the count wrapped to 0.
template <bool Release = false, class A>
KEYPOOL_ALWAYS_INLINE bool owner_increment(A& a) noexcept {
    using T = std::remove_cv_t<decltype(a.load(std::memory_order_relaxed))>;
    static_assert(std::is_unsigned_v<T> && (sizeof(T) == 4 || sizeof(T) == 8));
#if defined(KEYPOOL_OWNER_ADD_ASM)
    if constexpr (sizeof(A) == sizeof(T) && std::is_standard_layout_v<A>) {
        bool zero; // (volatile: never dropped, whether or not the caller looks at the wrap)
        if constexpr (sizeof(T) == 8) {
            if constexpr (Release) asm volatile("addq $1, %0" : "+m"(a), "=@ccz"(zero) : : "memory");
            else asm volatile("addq $1, %0" : "+m"(a), "=@ccz"(zero));
        } else {
            if constexpr (Release) asm volatile("addl $1, %0" : "+m"(a), "=@ccz"(zero) : : "memory");
            else asm volatile("addl $1, %0" : "+m"(a), "=@ccz"(zero));
        }
        return zero;
    }
#endif
    const T v = static_cast<T>(a.load(std::memory_order_relaxed) + 1);
    a.store(v, Release ? std::memory_order_release : std::memory_order_relaxed);
    return v == 0;
}

} // namespace keypool::detail
