// SPDX-License-Identifier: BSL-1.0
// detail::huge_arena: aligned, dense, reused blocks from 2 MiB chunks; own mappings for large
// requests, unmapped when freed.
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include <doctest/doctest.h>

#include <keypool/detail/huge_arena.hpp>

using keypool::detail::huge_arena;
using keypool::detail::pair_layout;

namespace {
std::uintptr_t addr(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
constexpr std::size_t chunk = huge_arena::chunk_bytes;
} // namespace

TEST_SUITE("huge_arena") {

TEST_CASE("huge_arena: blocks are 64-byte aligned, packed one after another from a 2 MiB-aligned chunk") {
    if (!huge_arena::supported()) return;
    huge_arena a;
    CHECK(a.mapped_bytes() == 0);
    void* first = a.allocate(576);
    CHECK(addr(first) % chunk == 0); // a chunk starts on a huge-page boundary
    CHECK(a.mapped_bytes() == chunk);
    void* second = a.allocate(576);
    CHECK(addr(second) == addr(first) + 576); // no header, no gap
    void* odd = a.allocate(100);              // rounded up to 128
    CHECK(addr(odd) == addr(second) + 576);
    CHECK(addr(a.allocate(1)) == addr(odd) + 128);
    std::memset(first, 0xab, 576); // writable
    std::memset(second, 0xcd, 576);
    CHECK(static_cast<unsigned char*>(first)[575] == 0xab);
}

TEST_CASE("huge_arena: a freed block is reused by the next request of its size only") {
    if (!huge_arena::supported()) return;
    huge_arena a;
    void* x = a.allocate(576);
    void* y = a.allocate(576);
    a.deallocate(x, 576);
    void* other = a.allocate(640); // another size: not x
    CHECK(other != x);
    CHECK(a.allocate(576) == x); // the same size: x again, not fresh memory
    a.deallocate(y, 570);        // (the same rounded size)
    CHECK(a.allocate(576) == y);
    void* fresh = a.allocate(576);
    CHECK(fresh != x);
    CHECK(fresh != y);
}

TEST_CASE("huge_arena: blocks never straddle a chunk, and a new chunk is mapped only when one is full") {
    if (!huge_arena::supported()) return;
    huge_arena a;
    const std::size_t size = 100'000; // 20 per chunk, 97,152 bytes left over in each
    std::set<std::uintptr_t> chunks;
    for (int i = 0; i < 50; ++i) {
        const std::uintptr_t p = addr(a.allocate(size));
        CHECK(p / chunk == (p + size - 1) / chunk);
        chunks.insert(p / chunk);
    }
    CHECK(chunks.size() == 3); // 20 + 20 + 10
    CHECK(a.mapped_bytes() == 3 * chunk);
}

TEST_CASE("huge_arena: a request of a chunk or more gets a mapping of its own, unmapped when freed") {
    if (!huge_arena::supported()) return;
    huge_arena a;
    void* small = a.allocate(64);
    void* big = a.allocate(chunk);
    void* bigger = a.allocate(3 * chunk);
    CHECK(addr(big) % chunk == 0);
    CHECK(addr(bigger) % chunk == 0);
    CHECK(a.mapped_bytes() == chunk + chunk + 3 * chunk);
    std::memset(bigger, 1, 3 * chunk);
    a.deallocate(big, chunk);
    CHECK(a.mapped_bytes() == chunk + 3 * chunk);
    a.deallocate(bigger, 3 * chunk);
    CHECK(a.mapped_bytes() == chunk);
    a.deallocate(small, 64);
    CHECK(a.mapped_bytes() == chunk); // chunks stay until the arena goes
}

TEST_CASE("huge_arena: prepare maps as many spares as the carving took since the last call, and the carving uses them first") {
    if (!huge_arena::supported()) return;
    huge_arena a;
    CHECK(a.prepare(0) == 0); // no room: nothing
    CHECK(a.mapped_bytes() == 0);
    CHECK(a.prepare(10 * chunk) == 1); // at least one
    CHECK(a.mapped_bytes() == chunk);
    CHECK(a.prepare(10 * chunk) == 0); // one is left unused: enough for no carving since
    const std::size_t size = 100'000; // 20 per chunk
    std::vector<void*> blocks;
    blocks.push_back(a.allocate(size));
    CHECK(a.mapped_bytes() == chunk); // carved from the spare, nothing mapped
    // The spare is zeroed and faulted in; whatever the kernel backed it with, it keeps its bytes.
    CHECK(static_cast<unsigned char*>(blocks[0])[size - 1] == 0);
    std::memset(blocks[0], 5, size);
    CHECK(static_cast<unsigned char*>(blocks[0])[size - 1] == 5);
    for (int i = 1; i < 65; ++i) blocks.push_back(a.allocate(size)); // the spare and 3 chunks of its own begun
    CHECK(a.mapped_bytes() == 4 * chunk);
    CHECK(a.prepare(3 * chunk) == 3); // 4 begun since the last call, room for 3
    CHECK(a.mapped_bytes() == 7 * chunk);
    for (int i = 0; i < 40; ++i) blocks.push_back(a.allocate(size)); // 2 more chunks: the spares
    CHECK(a.mapped_bytes() == 7 * chunk);
    CHECK(a.prepare(10 * chunk) == 1); // 2 begun, 1 spare left: 1 more
    CHECK(a.mapped_bytes() == 8 * chunk);
    for (void* b : blocks) a.deallocate(b, size);
    CHECK(a.mapped_bytes() == 8 * chunk); // chunks stay until the arena goes
}

TEST_CASE("pair_layout: records side by side, then their bodies, each found from the address of the other") {
    // A registry pool's 64-byte record and 512-byte body (docs/design.md, "block layout").
    const pair_layout l = pair_layout::make(64, 500);
    CHECK(l.rec_bytes == 64);
    CHECK(l.body_bytes == 512);
    CHECK(l.chunk == chunk);
    CHECK(l.count == (chunk - 64) / 576); // 3,640: place 0 holds the layout
    CHECK(l.bodies == (l.count + 1) * 64);
    CHECK(l.bodies + l.count * l.body_bytes <= chunk);
    const std::uintptr_t base = std::uintptr_t{7} * chunk; // (addresses only: nothing is read)
    for (std::size_t i = 1; i <= l.count; ++i) {
        const auto* rec = reinterpret_cast<const unsigned char*>(base + i * 64);
        const unsigned char* body = l.body_of(rec);
        CHECK(addr(body) == base + l.bodies + (i - 1) * 512);
        CHECK(l.record_of(body) == rec);
    }
    // Records of 128 bytes (a wider key) and a body that is no power of two.
    const pair_layout w = pair_layout::make(88, 1000);
    CHECK(w.rec_bytes == 128);
    CHECK(w.body_bytes == 1024);
    const pair_layout w2 = pair_layout::make(88, 1100); // (bodies are whole records)
    CHECK(w2.body_bytes == 1152);
    for (std::size_t i = 1; i <= w2.count; ++i) {
        const auto* rec = reinterpret_cast<const unsigned char*>(base + i * 128);
        CHECK(addr(w2.body_of(rec)) == base + w2.bodies + (i - 1) * 1152);
        CHECK(w2.record_of(w2.body_of(rec)) == rec);
    }
    const pair_layout odd = pair_layout::make(64, 600);
    CHECK(odd.body_bytes == 640);
    const pair_layout fine = pair_layout::make(64, 520, 8); // a body aligned to 8 bytes: no padding
    CHECK(fine.body_bytes == 520);
    for (std::size_t i = 1; i <= fine.count; ++i) {
        const auto* rec = reinterpret_cast<const unsigned char*>(base + i * 64);
        CHECK(addr(fine.body_of(rec)) == base + fine.bodies + (i - 1) * 520);
        CHECK(fine.record_of(fine.body_of(rec)) == rec);
    }
    CHECK(fine.bodies + fine.count * 520 <= chunk);
    for (std::size_t i = 1; i <= odd.count; ++i) {
        const auto* rec = reinterpret_cast<const unsigned char*>(base + i * 64);
        CHECK(odd.record_of(odd.body_of(rec)) == rec);
    }
    // A pool of many slots: a chunk per pair, as large as it takes (a power of two).
    const pair_layout big = pair_layout::make(64, 3 << 20);
    CHECK(big.count == 1);
    CHECK(big.chunk == std::size_t{4} << 20);
    const auto* rec = reinterpret_cast<const unsigned char*>(std::uintptr_t{3} * big.chunk + 64);
    CHECK(big.record_of(big.body_of(rec)) == rec);
}

TEST_CASE("huge_arena: pairs are carved records first, reused after a free, and each chunk carries its layout") {
    if (!huge_arena::supported()) return;
    for (bool huge : {true, false}) {
        huge_arena a(huge);
        CHECK(a.huge() == huge);
        a.set_pairs(pair_layout::make(64, 448));
        const pair_layout& l = a.pairs();
        void* first = a.allocate_pair();
        CHECK(addr(first) % chunk == 64);
        CHECK(&pair_layout::of(first) != &l); // the chunk's own copy
        CHECK(pair_layout::of(first).body_of(first) == l.body_of(first));
        void* second = a.allocate_pair();
        CHECK(addr(second) == addr(first) + 64);
        std::memset(first, 0xab, 64); // writable, records and bodies
        std::memset(l.body_of(first), 0xcd, l.body_bytes);
        std::memset(second, 0xef, 64);
        CHECK(static_cast<unsigned char*>(l.body_of(first))[l.body_bytes - 1] == 0xcd);
        CHECK(pair_layout::of(first).body_bytes == 448); // the layout survived
        a.deallocate_pair(first);
        CHECK(a.allocate_pair() == first);
        // A full chunk: the next pair comes from a new one.
        std::set<std::uintptr_t> chunks;
        for (std::size_t i = 0; i < l.count + 1; ++i) chunks.insert(addr(a.allocate_pair()) / chunk);
        CHECK(chunks.size() == 2);
        CHECK(a.mapped_bytes() == 2 * chunk);
        CHECK(a.prepare(16 * chunk) == (huge ? 2U : 0U)); // spares for the two chunks carved: a huge arena only
    }
}

} // TEST_SUITE
