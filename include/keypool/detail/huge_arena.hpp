// SPDX-License-Identifier: BSL-1.0
// huge_arena: a registry's pool blocks (as record + body pairs) and a large registry's bucket
// arrays, carved from 2 MiB chunks that maintenance prepares with transparent huge pages (Linux).
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include <boost/container/flat_map.hpp>

#include <keypool/detail/config.hpp>

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

/// How the arena lays out pairs: a record of `rec_bytes` (a power of two, 64 or more) and a body
/// of `body_bytes` (a multiple of the body's alignment) for each of `count` blocks of a chunk, the records side by
/// side from the chunk's start, then the bodies in the same order. The chunk's first record
/// place holds this layout, so the body of a record is found from its address alone (of()), and
/// the record of a body from the layout (record_of). A registry keeps each key's hot bytes in
/// its record: 100,000 keys' records are 6 MiB of lines side by side, where one line in each of
/// their 576-byte blocks spread them over 12.8 MB of line pairs (docs/design.md, "block layout").
struct pair_layout {
    std::size_t rec_bytes = 0, body_bytes = 0;
    std::size_t count = 0;                    // pairs a chunk holds
    std::size_t chunk = 0;                    // its bytes: 2 MiB, or a power of two that holds one pair
    std::size_t bodies = 0;                   // where the first body starts in the chunk
    std::size_t body0 = 0;                    // bodies - body_bytes (see body_of)
    std::size_t body_step = 0;                // (body_bytes - rec_bytes) / rec_bytes, in 1/65536ths
    std::uint32_t rec_shift = 0;              // log2(rec_bytes)
    std::uint64_t body_inverse = 0;           // 2^42 / body_bytes, rounded up: record_of's division

    static constexpr std::size_t small_chunk = std::size_t{2} << 20;
    /// `body_align`: the body's alignment (a power of two, at most 64).
    static pair_layout make(std::size_t rec_bytes, std::size_t body_bytes, std::size_t body_align = 64) noexcept {
        pair_layout l;
        l.rec_bytes = std::bit_ceil(std::max<std::size_t>(rec_bytes, 64));
        l.body_bytes = std::max(l.rec_bytes, (body_bytes + body_align - 1) / body_align * body_align); // (no smaller than a record)
        l.rec_shift = static_cast<std::uint32_t>(std::countr_zero(l.rec_bytes));
        // A chunk of 2 MiB, or the power of two that holds the layout and one pair (a pool of
        // many slots): then a chunk per pool.
        l.chunk = std::max(small_chunk, std::bit_ceil(2 * l.rec_bytes + l.body_bytes));
        l.count = (l.chunk - l.rec_bytes) / (l.rec_bytes + l.body_bytes);
        l.bodies = (l.count + 1) * l.rec_bytes;
        l.body0 = l.bodies - l.body_bytes;
        l.body_step = (l.body_bytes - l.rec_bytes) << (16 - l.rec_shift); // (records of at most 8 KiB: registry_table::split_layout)
        l.body_inverse = ((std::uint64_t{1} << 42) + l.body_bytes - 1) / l.body_bytes;
        return l;
    }
    /// The layout of the chunk holding record `rec` (records lie in a chunk's first 2 MiB, and
    /// chunks are aligned to 2 MiB at least).
    static const pair_layout& of(const void* rec) noexcept {
        return *std::launder(reinterpret_cast<const pair_layout*>(reinterpret_cast<std::uintptr_t>(rec) & ~(small_chunk - 1)));
    }
    /// The body of record `rec` (an address only: nothing is read). The record at offset o of
    /// its chunk (a multiple of rec_bytes) is number o / rec_bytes - 1, whose body starts at
    /// body0 + o * body_bytes / rec_bytes, that is rec + body0 + o * (body_bytes - rec_bytes) /
    /// rec_bytes: an and, a multiply, a shift and two adds (body_step holds the fraction in
    /// 1/65536ths, exact since o is a multiple of rec_bytes).
    KEYPOOL_ALWAYS_INLINE unsigned char* body_of(const void* rec) const noexcept {
        const auto r = reinterpret_cast<std::uintptr_t>(rec);
        return reinterpret_cast<unsigned char*>(r + body0 + ((body_step * (r & (chunk - 1))) >> 16));
    }
    /// The record of the body that starts at `body` (an address only). (at - bodies) / body_bytes
    /// as a multiply and a shift: exact for a multiple of body_bytes below 2^42, and the product
    /// stays below 2^64 for chunks up to 2^28 bytes (a pool of 65,534 slots needs 2^24).
    KEYPOOL_ALWAYS_INLINE unsigned char* record_of(const void* body) const noexcept {
        const auto b = reinterpret_cast<std::uintptr_t>(body);
        const std::uintptr_t at = b & (chunk - 1);
        return reinterpret_cast<unsigned char*>(b - at + ((((at - bodies) * body_inverse) >> 42) + 1) * rec_bytes);
    }
};

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

    /// `huge`: chunks carved here are advised for huge pages and prepare() maps spares; else
    /// chunks keep ordinary pages (a registry of few keys keeps its pools' pairs here too).
    explicit huge_arena(bool huge = true) noexcept : huge_(huge) {}
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
                advise(cur_, chunk_bytes);
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

    /// Pairs from now on are laid out as `l` (set once, before the first allocate_pair()).
    void set_pairs(const pair_layout& l) noexcept {
        std::lock_guard lk(m_);
        pairs_ = l;
    }
    const pair_layout& pairs() const noexcept { return pairs_; }

    /// A record and its body (pairs()): returns the record, 64-byte aligned; the body is
    /// pairs().body_of(record). std::bad_alloc when the system has no memory.
    void* allocate_pair() {
        std::lock_guard lk(m_);
        if (free_block* b = free_pairs_) {
            KEYPOOL_ARENA_UNPOISON(b, pairs_.rec_bytes);
            KEYPOOL_ARENA_UNPOISON(pairs_.body_of(b), pairs_.body_bytes);
            free_pairs_ = b->next;
            return b;
        }
        if (pair_next_ == pairs_.count || !pair_chunk_) {
            unsigned char* c = nullptr;
            if (pairs_.chunk == chunk_bytes && !spares_.empty()) {
                c = static_cast<unsigned char*>(spares_.back());
                spares_.pop_back();
            } else {
                maps_.reserve(maps_.size() + 1);
                c = static_cast<unsigned char*>(map(pairs_.chunk, pairs_.chunk));
                advise(c, pairs_.chunk);
                maps_.push_back({c, pairs_.chunk});
            }
            ::new (static_cast<void*>(c)) pair_layout(pairs_);
            pair_chunk_ = c;
            pair_next_ = 0;
            ++carved_;
        }
        return pair_chunk_ + (++pair_next_) * pairs_.rec_bytes; // (place 0 holds the layout)
    }
    /// Gives back what allocate_pair() returned, for the next allocate_pair().
    void deallocate_pair(void* rec) noexcept {
        std::lock_guard lk(m_);
        KEYPOOL_ARENA_POISON(pairs_.body_of(rec), pairs_.body_bytes);
        free_pairs_ = ::new (rec) free_block{free_pairs_};
        KEYPOOL_ARENA_POISON(rec, pairs_.rec_bytes);
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
        if (!huge_) return 0;
        return top_up([&] {
            const std::size_t target = std::min({std::max<std::size_t>(carved_, 1), max_spares, limit / chunk_bytes});
            carved_ = 0;
            return target;
        });
    }
    /// The same for `bytes` of requests the caller is about to make (the registry's reserved
    /// tables, when it is built), whatever the carving did before: spares for all of them.
    std::size_t prepare_for(std::size_t bytes) {
        if (!huge_) return 0;
        return top_up([&] { return round_up(bytes, chunk_bytes) / chunk_bytes; });
    }
    static constexpr std::size_t max_spares = 32; // 64 MiB

    /// Whether chunks are advised for huge pages (the constructor's `huge`).
    bool huge() const noexcept { return huge_; }

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
    // (`align`: a power of two, chunk_bytes or more: a pair chunk of more than 2 MiB is aligned
    // to its size, so record_of finds its start from a body's address.)
    static void* map(std::size_t n, std::size_t align = chunk_bytes) {
#if defined(__linux__)
        if (n > SIZE_MAX - align) throw std::bad_alloc();
        void* raw = ::mmap(nullptr, n + align, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw == MAP_FAILED) throw std::bad_alloc();
        const auto start = reinterpret_cast<std::uintptr_t>(raw);
        const std::uintptr_t aligned = (start + align - 1) & ~std::uintptr_t{align - 1};
        if (aligned > start) ::munmap(raw, aligned - start);
        if (const std::uintptr_t end = start + n + align; end > aligned + n)
            ::munmap(reinterpret_cast<void*>(aligned + n), end - (aligned + n));
        return reinterpret_cast<void*>(aligned);
#else
        (void)n, (void)align;
        throw std::bad_alloc();
#endif
    }
    // A chunk the carving mapped: in an arena without huge pages, kept out of them (a kernel set
    // to give every aligned 2 MiB range one would else fill a small registry's chunk at once).
    // (The huge arena's carved chunks get no advice either way: see the class comment.)
    void advise(void* p, std::size_t n) const noexcept {
#if defined(__linux__)
        if (!huge_) (void)::madvise(p, n, MADV_NOHUGEPAGE);
#else
        (void)p, (void)n;
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
    const bool huge_ = true;
    pair_layout pairs_{};               // set_pairs()
    unsigned char* pair_chunk_ = nullptr; // the chunk pairs are carved from
    std::size_t pair_next_ = 0;         // pairs carved from it
    free_block* free_pairs_ = nullptr;  // records given back (their bodies with them)
};

} // namespace keypool::detail
