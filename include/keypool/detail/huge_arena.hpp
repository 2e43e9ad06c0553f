// SPDX-License-Identifier: BSL-1.0
// huge_arena: a large registry's pool blocks and bucket arrays, carved from 2 MiB chunks that
// maintenance prepares with transparent huge pages (Linux).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include <boost/container/flat_map.hpp>

#if defined(__linux__)
#include <sys/mman.h>
#endif

// Under AddressSanitizer a freed block is poisoned until it is handed out again, as the
// allocator's own blocks are: a use after free in the arena is reported, not read silently.
#if defined(__SANITIZE_ADDRESS__)
#define KEYPOOL_ARENA_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KEYPOOL_ARENA_ASAN 1
#endif
#endif
#if defined(KEYPOOL_ARENA_ASAN)
#include <sanitizer/asan_interface.h>
#define KEYPOOL_ARENA_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define KEYPOOL_ARENA_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define KEYPOOL_ARENA_POISON(p, n) ((void)(p), (void)(n))
#define KEYPOOL_ARENA_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

namespace keypool::detail {

/// Memory in 2 MiB-aligned chunks, the ones prepared by maintenance backed by transparent huge
/// pages: a registry of 100,000 keys spreads its pools over ≈ 60 MB, and with 4 KiB pages nearly
/// every hit misses the TLB on its bucket's page and on its pool's, where one huge page covers
/// ≈ 3,600 pools (docs/benchmarks.md, "Session 19").
///
/// - Blocks are carved one after the other from the current chunk (64-byte aligned, no header):
///   a registry's pool blocks all have one size, so they pack densely.
/// - A freed block goes to a free list of its size and is reused by the next request of that size
///   (few sizes: a registry's pool block and its tables' power-of-two bucket arrays). Requests of
///   a chunk or more get mappings of their own (ordinary pages), unmapped when freed.
/// - **No acquire ever waits for a huge page.** prepare() (the registry's maintain()) maps spare
///   chunks advised with MADV_HUGEPAGE and faults them in, off the acquire path, while nothing
///   uses them; carving takes a spare before it maps a chunk of its own. A chunk mapped on the
///   carving path (no spare left: the registry grew faster than maintenance ran) keeps ordinary
///   pages for good. Two ways of getting huge pages were measured and dropped, because each made
///   acquires wait (docs/benchmarks.md, "Session 20"):
///   - advising chunks when mapping them: their first touch, inside whichever acquire built a
///     pool there, waited 0.3–7 ms for the kernel to find and zero a huge page;
///   - collapsing filled chunks in maintenance (MADV_COLLAPSE): the kernel freezes a chunk while it
///     copies it, and an acquire touching it meanwhile waited a median 6–7 ms, once per chunk.
///   Where THP is off (`never`), spares are ordinary pages, still dense.
/// - Chunks go back to the system only when the arena is destroyed (with its registry's last
///   pool): memory of evicted pools is kept for the pools that replace them.
/// - Thread-safe (one mutex: pools are built and freed off the acquire fast path; prepare() does
///   not hold it while the kernel faults the spares in).
/// - Without mmap (not Linux) the arena is not available (`supported()`).
class huge_arena {
public:
    static constexpr std::size_t chunk_bytes = std::size_t{2} << 20;
    static constexpr std::size_t alignment = 64;

    static constexpr bool supported() noexcept {
#if defined(__linux__)
        return true;
#else
        return false;
#endif
    }

    huge_arena() = default;
    huge_arena(const huge_arena&) = delete;
    huge_arena& operator=(const huge_arena&) = delete;
    ~huge_arena() {
        for (const mapping& m : maps_) KEYPOOL_ARENA_UNPOISON(m.at, m.bytes), unmap(m.at, m.bytes);
    }

    /// `bytes` of memory aligned to 64 bytes; std::bad_alloc when the system has none.
    void* allocate(std::size_t bytes) {
        const std::size_t n = rounded(bytes);
        std::lock_guard lk(m_);
        if (n >= chunk_bytes) {
            maps_.reserve(maps_.size() + 1);
            const std::size_t len = round_up(n, chunk_bytes);
            void* p = map(len);
            maps_.push_back({p, len});
            return p;
        }
        auto cls = free_.try_emplace(n, nullptr).first; // (deallocate() then never inserts)
        if (free_block* b = cls->second) {
            KEYPOOL_ARENA_UNPOISON(b, n);
            cls->second = b->next;
            return b;
        }
        if (left_ < n) {
            if (!spares_.empty()) {
                cur_ = static_cast<unsigned char*>(spares_.back());
                spares_.pop_back();
            } else {
                maps_.reserve(maps_.size() + 1);
                cur_ = static_cast<unsigned char*>(map(chunk_bytes));
                maps_.push_back({cur_, chunk_bytes});
            }
            left_ = chunk_bytes; // (the old chunk's tail, under one block, stays unused)
            ++carved_;
        }
        void* p = cur_;
        cur_ += n;
        left_ -= n;
        return p;
    }

    /// Gives back what allocate(bytes) returned, for reuse by a request of the same size.
    void deallocate(void* p, std::size_t bytes) noexcept {
        const std::size_t n = rounded(bytes);
        std::lock_guard lk(m_);
        if (n >= chunk_bytes) {
            for (auto it = maps_.begin(); it != maps_.end(); ++it)
                if (it->at == p) {
                    unmap(it->at, it->bytes);
                    maps_.erase(it);
                    return;
                }
            return;
        }
        auto cls = free_.find(n); // (allocate() made it)
        auto* b = ::new (p) free_block{cls->second};
        cls->second = b;
        KEYPOOL_ARENA_POISON(p, n);
    }

    /// Maps spare chunks for the carving to come, advised for huge pages and faulted in now, so
    /// no later touch waits for the kernel: as many as the carving took since the last call (at
    /// least one, at most max_spares, within `limit` bytes), less the spares still unused.
    /// Returns how many it mapped. For maintenance threads: a chunk's first touch took the kernel
    /// 0.3–7 ms here (finding a free huge page, zeroing it), and nothing else waits for it.
    std::size_t prepare(std::size_t limit) {
        return top_up([&] {
            const std::size_t target = std::min({std::max<std::size_t>(carved_, 1), max_spares, limit / chunk_bytes});
            carved_ = 0;
            return target;
        });
    }
    /// The same for `bytes` of requests the caller is about to make (the registry's reserved
    /// tables, when it is built), whatever the carving did before: spares for all of them.
    std::size_t prepare_for(std::size_t bytes) {
        return top_up([&] { return round_up(bytes, chunk_bytes) / chunk_bytes; });
    }
    static constexpr std::size_t max_spares = 32; // 64 MiB

    /// Bytes mapped now: chunks and own mappings.
    std::size_t mapped_bytes() const {
        std::lock_guard lk(m_);
        std::size_t total = 0;
        for (const mapping& m : maps_) total += m.bytes;
        return total;
    }

private:
    struct free_block {
        free_block* next;
    };
    struct mapping {
        void* at;
        std::size_t bytes;
    };
    static constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }
    static constexpr std::size_t rounded(std::size_t n) noexcept { return round_up(n == 0 ? 1 : n, alignment); }

    // `n` bytes (a multiple of chunk_bytes) at a chunk-aligned address: a huge page can back only
    // an aligned 2 MiB range. Maps a chunk more and unmaps what lies outside the aligned range.
    static void* map(std::size_t n) {
#if defined(__linux__)
        if (n > SIZE_MAX - chunk_bytes) throw std::bad_alloc();
        void* raw = ::mmap(nullptr, n + chunk_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) throw std::bad_alloc();
        const auto start = reinterpret_cast<std::uintptr_t>(raw);
        const std::uintptr_t aligned = (start + chunk_bytes - 1) & ~std::uintptr_t{chunk_bytes - 1};
        if (aligned > start) ::munmap(raw, aligned - start);
        if (const std::uintptr_t end = start + n + chunk_bytes; end > aligned + n)
            ::munmap(reinterpret_cast<void*>(aligned + n), end - (aligned + n));
        return reinterpret_cast<void*>(aligned);
#else
        (void)n;
        throw std::bad_alloc();
#endif
    }
    static void unmap(void* p, std::size_t n) noexcept {
#if defined(__linux__)
        ::munmap(p, n);
#else
        (void)p, (void)n;
#endif
    }
    // Unless another thread is preparing: as many spares as `target()` (called under the lock)
    // says, less those still unused.
    template <class Target>
    std::size_t top_up(Target target) {
        std::size_t want = 0;
        {
            std::lock_guard lk(m_);
            if (preparing_) return 0;
            const std::size_t n = target();
            if (spares_.size() >= n) return 0;
            want = n - spares_.size();
            preparing_ = true;
        }
        return add_spares(want);
    }
    // Maps up to `want` spares without the lock (preparing_ is set; cleared here) and lists them.
    std::size_t add_spares(std::size_t want) noexcept {
        std::vector<void*> got;
        try {
            got.reserve(want);
        } catch (...) {
            want = 0;
        }
        while (got.size() < want) {
            void* p = nullptr;
            try {
                p = map(chunk_bytes);
            } catch (const std::bad_alloc&) {
                break; // (no memory for more: the carving maps its own)
            }
            fault_in_huge(p);
            got.push_back(p);
        }
        std::lock_guard lk(m_);
        preparing_ = false;
        std::size_t listed = 0;
        for (void* p : got) {
            try {
                maps_.push_back({p, chunk_bytes});
            } catch (...) {
                unmap(p, chunk_bytes);
                continue;
            }
            ++listed;
            try {
                spares_.push_back(p);
            } catch (...) { // (listed, so unmapped with the arena; never carved)
            }
        }
        return listed;
    }

    // Advises a fresh chunk for huge pages and faults it in with a write to each 4 KiB page: the
    // first takes a huge page when the kernel has one, the others then fault nothing. Not
    // MADV_POPULATE_WRITE: that holds the process's mapping lock while the kernel finds each huge
    // page (compacting, at times for milliseconds), and a pool creation that mapped a chunk of its
    // own meanwhile waited for it — 33–39 acquires over 5 ms while growing to 1e6 keys beside a
    // busy janitor, none with writes (docs/benchmarks.md, "Session 20"). Failures (THP off, no
    // huge page free) leave ordinary pages: only slower.
    static void fault_in_huge(void* p) noexcept {
#if defined(__linux__)
        (void)::madvise(p, chunk_bytes, MADV_HUGEPAGE);
        for (std::size_t off = 0; off < chunk_bytes; off += 4096) static_cast<volatile unsigned char*>(p)[off] = 0;
#else
        (void)p;
#endif
    }

    mutable std::mutex m_;
    // Free blocks by size: a handful of sizes, so a flat map (one small sorted array).
    boost::container::flat_map<std::size_t, free_block*> free_;
    unsigned char* cur_ = nullptr; // the current chunk's next free byte
    std::size_t left_ = 0;         // and how many follow it
    std::vector<mapping> maps_;    // every mapping (a chunk per 3,600 pools of 576 bytes)
    std::vector<void*> spares_;    // prepared chunks not carved yet
    std::size_t carved_ = 0;       // chunks the carving began since the last prepare()
    bool preparing_ = false;       // prepare() is faulting spares in without the lock
};

} // namespace keypool::detail
