// SPDX-License-Identifier: BSL-1.0
// splitmix64: a tiny, seedable generator for backoff and lifetime jitter (not for secrets).
#pragma once

#include <chrono>
#include <cstdint>

namespace keypool::detail {

class splitmix64 {
public:
    explicit splitmix64(std::uint64_t seed) noexcept : s_(seed) {}
    std::uint64_t next() noexcept {
        std::uint64_t z = (s_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    /// Uniform in [lo, hi] (inclusive) for a non-negative duration range.
    template <class D>
    D between(D lo, D hi) noexcept {
        if (hi <= lo) return lo;
        auto span = static_cast<std::uint64_t>((hi - lo).count());
        return lo + D(static_cast<typename D::rep>(next() % (span + 1)));
    }

private:
    std::uint64_t s_;
};

} // namespace keypool::detail
