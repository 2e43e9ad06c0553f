// SPDX-License-Identifier: BSL-1.0
// Compiler hints for the acquire/release fast path (GCC and Clang; no-ops elsewhere).
#pragma once

#if defined(__GNUC__) || defined(__clang__)
#define KEYPOOL_ALWAYS_INLINE inline __attribute__((always_inline))
#define KEYPOOL_NOINLINE __attribute__((noinline))
#else
#define KEYPOOL_ALWAYS_INLINE inline
#define KEYPOOL_NOINLINE
#endif
