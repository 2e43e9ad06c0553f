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
#else
#define KEYPOOL_ALWAYS_INLINE inline
#define KEYPOOL_NOINLINE
#define KEYPOOL_PREFETCH_WRITE(p) ((void)(p))
#define KEYPOOL_OPAQUE(v) ((void)(v))
#endif
