// SPDX-License-Identifier: BSL-1.0
// huge_arena: a large registry's pool blocks and bucket arrays, carved from 2 MiB chunks that
// maintenance turns into transparent huge pages (Linux).
#pragma once

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

/// Memory in 2 MiB-aligned chunks that collapse() asks the kernel to back with transparent huge
/// pages: a registry of 100,000 keys spreads its pools over ≈ 60 MB, and with 4 KiB pages nearly
/// every hit misses the TLB on its bucket's page and on its pool's, where one huge page covers
/// ≈ 3,600 pools (docs/benchmarks.md, "Session 19").
///
/// - Blocks are carved one after the other from the current chunk (64-byte aligned, no header):
///   a registry's pool blocks all have one size, so they pack densely.
/// - A freed block goes to a free list of its size and is reused by the next request of that size
///   (few sizes: a registry's pool block and its tables' power-of-two bucket arrays). Requests of
///   a chunk or more get mappings of their own, unmapped when freed.
/// - Chunks are faulted in with ordinary pages, so carving never waits for the kernel to find a
///   huge page: a chunk advised with MADV_HUGEPAGE up front took 0.3–7 ms on its first touch
///   here, inside whichever acquire built a pool there. collapse() (the registry's maintain())
///   turns every chunk filled since the last call into a huge page, off the acquire path
///   (MADV_COLLAPSE, Linux 6.1; where the kernel has none, MADV_HUGEPAGE leaves it to
///   khugepaged). Where THP is off (`never`), chunks stay ordinary pages, still dense.
/// - Chunks go back to the system only when the arena is destroyed (with its registry's last
///   pool): memory of evicted pools is kept for the pools that replace them.
/// - Thread-safe (one mutex: pools are built and freed off the acquire fast path; collapse()
///   does not hold it while the kernel works).
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
            maps_.push_back({p, len, false});
            return p;
        }
        auto cls = free_.try_emplace(n, nullptr).first; // (deallocate() then never inserts)
        if (free_block* b = cls->second) {
            KEYPOOL_ARENA_UNPOISON(b, n);
            cls->second = b->next;
            return b;
        }
        if (left_ < n) {
            maps_.reserve(maps_.size() + 1);
            cur_ = static_cast<unsigned char*>(map(chunk_bytes));
            maps_.push_back({cur_, chunk_bytes, false});
            left_ = chunk_bytes; // (the old chunk's tail, under one block, stays unused)
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
                    // While collapse() works unlocked it may still name this range: unmapped
                    // once it is done, so the kernel is never told about a range reused since.
                    bool later = collapsing_;
                    if (later) {
                        try {
                            doomed_.push_back(*it);
                        } catch (...) { // (out of memory: unmapped now; a stray collapse is only a hint)
                            later = false;
                        }
                    }
                    if (!later) unmap(it->at, it->bytes);
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

    /// Asks the kernel to back every chunk filled since the last call (and every mapping of its
    /// own) with huge pages; the chunk still being carved waits for the next call. Returns how
    /// many mappings it handed over. For maintenance threads: the kernel finds a huge page for
    /// each chunk and copies it there (0.7–5.4 ms a chunk here), and a reader touching the chunk
    /// during the copy waits for it.
    std::size_t collapse() {
        std::vector<std::pair<void*, std::size_t>> todo;
        {
            std::lock_guard lk(m_);
            if (collapsing_) return 0; // another thread is at it
            todo.reserve(maps_.size()); // (so none is marked settled and then lost to a throw)
            for (mapping& m : maps_)
                if (!m.settled && m.at != current_chunk()) todo.emplace_back(m.at, m.bytes), m.settled = true;
            if (todo.empty()) return 0;
            collapsing_ = true;
        }
        for (auto [p, n] : todo) settle(p, n);
        std::lock_guard lk(m_);
        collapsing_ = false;
        for (const mapping& m : doomed_) unmap(m.at, m.bytes);
        doomed_.clear();
        return todo.size();
    }

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
        bool settled; // handed to the kernel by collapse()
    };
    static constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept { return (n + to - 1) / to * to; }
    static constexpr std::size_t rounded(std::size_t n) noexcept { return round_up(n == 0 ? 1 : n, alignment); }
    // The chunk being carved (the one cur_ points into or just past), or nullptr.
    const void* current_chunk() const noexcept { return cur_ ? cur_ - (chunk_bytes - left_) : nullptr; }

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
    // Huge pages for a filled range: collapsed now where the kernel can (Linux 6.1+), else left to
    // khugepaged (the range is populated, so no later fault waits for a huge page). Failures
    // (THP off, no huge page free) leave ordinary pages: only slower.
    static void settle(void* p, std::size_t n) noexcept {
#if defined(__linux__)
#if defined(MADV_COLLAPSE)
        constexpr int advice = MADV_COLLAPSE;
#else
        constexpr int advice = 25; // MADV_COLLAPSE (Linux 6.1's value; older headers lack it)
#endif
        if (::madvise(p, n, advice) != 0) (void)::madvise(p, n, MADV_HUGEPAGE);
#else
        (void)p, (void)n;
#endif
    }

    mutable std::mutex m_;
    // Free blocks by size: a handful of sizes, so a flat map (one small sorted array).
    boost::container::flat_map<std::size_t, free_block*> free_;
    unsigned char* cur_ = nullptr; // the current chunk's next free byte
    std::size_t left_ = 0;         // and how many follow it
    std::vector<mapping> maps_;    // every mapping (a chunk per 3,600 pools of 576 bytes)
    bool collapsing_ = false;      // collapse() is working without the lock
    std::vector<mapping> doomed_;  // own mappings freed meanwhile: unmapped after it
};

} // namespace keypool::detail
