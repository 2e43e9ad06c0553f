// SPDX-License-Identifier: BSL-1.0
// How much of the cache this machine gives a process, counted in the lines a walk touches with
// their 128-byte neighbours (the L2 fetches pairs here), not in the lines alone: `span_chase
// <lines> <stride> [huge = 1]` lays <lines> 64-byte lines <stride>
// bytes apart in one 2 MiB-aligned mapping (transparent huge pages advised unless huge = 0),
// links them into one random cycle and times a dependent walk along it (each load's address is
// the previous load's value, so no two misses overlap): nanoseconds per load, best of five rounds
// of 2,000,000 loads. Without arguments it prints the sweep docs/benchmarks.md quotes (session
// 30): 64-byte lines at the strides of a dense array (64), of a line and its unused neighbour
// (128), of three lines a key (192) and of the registry's block (576), for line counts from
// 25,000 to 200,000.
//
// A W3 hit at 100,000 keys reads one line of its key (docs/benchmarks.md, "Session 29"); where
// the latency jumps from the cache's to memory's says whether 100,000 such lines stay cached at
// the registry's stride.
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

namespace {

constexpr std::size_t huge_page = std::size_t{2} << 20;

/// Nanoseconds per dependent load over `lines` lines `stride` bytes apart; -1 if the memory
/// cannot be mapped.
double chase(std::size_t lines, std::size_t stride, bool huge) {
    const std::size_t span = (lines * stride + huge_page - 1) / huge_page * huge_page;
    void* m = ::mmap(nullptr, span + huge_page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    auto* base = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(m) + huge_page - 1) & ~(huge_page - 1));
    if (huge) (void)::madvise(base, span, MADV_HUGEPAGE);
    std::vector<std::uint32_t> order(lines);
    std::iota(order.begin(), order.end(), 0U);
    std::mt19937 rng(1);
    std::shuffle(order.begin(), order.end(), rng);
    auto at = [&](std::size_t i) { return reinterpret_cast<std::uint64_t*>(base + i * stride); };
    for (std::size_t i = 0; i < lines; ++i) *at(order[i]) = order[(i + 1) % lines]; // one cycle through all
    constexpr std::size_t steps = 2'000'000;
    double best = 1e30;
    std::uint64_t p = order[0];
    for (int round = 0; round < 5; ++round) {
        const auto t0 = std::chrono::steady_clock::now();
        for (std::size_t i = 0; i < steps; ++i) p = *static_cast<volatile std::uint64_t*>(at(p));
        const auto t1 = std::chrono::steady_clock::now();
        best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / double(steps));
    }
    ::munmap(m, span + huge_page);
    return p < lines ? best : -1; // (p is always a line index: uses the walk's result)
}

} // namespace

int main(int argc, char** argv) {
    if (argc >= 3) {
        const std::size_t lines = std::strtoull(argv[1], nullptr, 10);
        const std::size_t stride = std::strtoull(argv[2], nullptr, 10);
        const bool huge = argc < 4 || std::atoi(argv[3]) != 0;
        if (lines < 2 || stride < 64 || stride % 8 != 0) {
            std::fputs("span_chase <lines >= 2> <stride: a multiple of 8, >= 64> [huge = 1]\n", stderr);
            return 2;
        }
        std::printf("%zu lines, %zu bytes apart (%.1f MiB span), huge pages %s: %.1f ns a load\n", lines, stride,
                    double(lines * stride) / double(1 << 20), huge ? "advised" : "off", chase(lines, stride, huge));
        return 0;
    }
    std::printf("ns per dependent load, huge pages advised (span in MiB in brackets)\n%8s", "lines");
    const std::size_t strides[] = {64, 128, 192, 576};
    for (std::size_t s : strides) std::printf("  %14zu B", s);
    std::printf("\n");
    for (std::size_t lines : {25'000, 50'000, 75'000, 100'000, 130'000, 200'000}) {
        std::printf("%8zu", lines);
        for (std::size_t s : strides)
            std::printf("  %7.1f (%5.1f)", chase(lines, s, true), double(lines * s) / double(1 << 20));
        std::printf("\n");
    }
    return 0;
}
