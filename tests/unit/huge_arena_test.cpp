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

} // TEST_SUITE
