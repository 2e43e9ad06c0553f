// SPDX-License-Identifier: BSL-1.0
// W3 layout model: what would a registry laid out differently cost per acquire + release, against
// the bare std::mutex + std::unordered_map baseline, in the same process? Not keypool's code: a
// stripped-down copy of the cycle's memory traffic, so layouts can be compared before one is built
// (docs/benchmarks.md, "Session 12" and "Session 15").
//
//   w3_layout_model <keys> [cycles per round = 2000000] [rounds = 7] [model]
//
// Every model does the registry's work on a hit: find the key's node in a chained table (mixed
// hash, power-of-two buckets, 64-byte nodes from 64-byte aligned chunks), pop the key's idle
// stack (compare-and-swap on a tagged head), check the slot's expiry and idle time, reset the
// connection (writes to its first bytes), stamp the slot, then release: set dirty, push (CAS).
// Slots are 184 bytes, a 32-byte header and the fake connection's 152. The models:
//
//   three      the registry until session 13: node -> {core's first line, slot 0} (the head lives
//              in the core; one 536-byte block per key: two slots, then the core at offset 384).
//   three_adjacent  those lines, the node in the pool's block right before the core's first
//              line: the bucket's pointer names node, core and slot 0, which load side by side.
//   two        the node carries the head and the slots' address -> slot 0: two hot lines per key,
//              slots in their own 384-byte allocation.
//   two_arena  as two, the slots of all keys carved from one array in key order.
//   two_arena32  as two_arena, the 32-byte nodes side by side (two a line) in the table's chunks:
//              half the node lines of a key set (session 25).
//   one_level  node and slots in one block ([node][slot 0][slot 1], 448 bytes): the bucket's
//              pointer names both lines, so they load side by side (the registry's shape since
//              session 13, without its core after the slots).
//   pair_arena the two hot lines of every key side by side in one array, 128 bytes per key
//              ([node + head][slot 0's first line]): what a dense layout would buy (the rest of
//              slot 0 and the other slots would live elsewhere).
//   direct     open addressing over the keys' blocks ([key + head][slot 0][slot 1], 448 bytes, at
//              least two entries per key): the block's address follows from the hash, so its
//              first line and slot 0 load side by side with no bucket before them (session 19).
//   inline_key open addressing over 16-byte {key, block} pairs, at least two per key; the block
//              is [head + slot 0][slot 1]: a hit reads the pair, then one line of the key (the
//              key compared in the index, no node line): two rounds, one hot line (session 20).
//   stride<S>  one_level's two hot lines at a fixed stride in one huge-page arena, block k at
//              arena + S * k (node at 0, slot 0 at 64): `stride128` is pair_arena in huge pages,
//              `stride192` a dense record of three lines, `stride576` the registry's block size
//              with its hot lines first, `stride512` a power-of-two stride (its hot lines use a
//              quarter of the cache sets), `stride256`, `stride384`, `stride640`, `stride1024`
//              the curve between (session 27). `registry576`: the registry's own block, slot 0 on
//              line 0 and the node on line 6 (session 24).
//   one_line<S>  one hot line per key at stride S (huge pages): the node's link and key, the
//              head, slot 0's header and its connection's first bytes in the block's first line,
//              the key compared on the line the hit then writes. `one_line576` the registry's
//              block size, `one_line64` dense (session 25), `one_line128` to `one_line256` the
//              curve between (session 27). `one_line576_at32`: slot 0 at byte 32 (a node of link,
//              key and an 8-byte entry state before the head), so its connection starts on the
//              block's second line, which the reset then touches too (session 28).
//   split<S>   hot and cold apart: every key's hot line in one dense array (64 bytes a key: the
//              node's link and key, the idle-stack head, slot 0's 32-byte header), its connection
//              in a second array at stride S (S = 192: a fake connection's 144 bytes rounded to
//              lines; 64: a handle-sized one such as pq's 32 bytes; 576: the registry's block
//              size), at the same index, so its address follows from the hot line's and the two
//              load side by side (session 27). `split576_hot128`, `_hot192`: the hot lines 128
//              or 192 bytes apart (a record with every slot's header).
//   node_apart<S>  the other split: the nodes alone in the dense array, the head and slot 0 (the
//              line the hit writes) in the second at stride S (session 27). `node_apart576_32`:
//              32-byte nodes (link, key, the entry's state: two a line; session 28).
//   *_plus40   diagnostic: the same plus 40 independent ALU instructions per cycle (after the
//              release), which keep the out-of-order window from reaching the next cycles' misses:
//              what a longer cycle costs once a hit misses the caches (session 24). `*_plus68`:
//              68 more, the registry's hit length (141 instructions) against the models' 73
//              (session 27).
//   *_nocas    diagnostic: the same with plain stores for the head (not thread-safe): what the
//              two locked instructions cost.
//
// Each model runs in its own process (forked, one after the other; [model] runs one in this
// process): in a process that holds every model's data, the baseline's lines compete with the
// others' and its time, the denominator, grows (session 15). Each round times the baseline, then
// the model; the line printed per model is the median over rounds of its time ÷ the same round's
// baseline time. The process starts and joins a thread first, as the benchmarks do
// (baselines/process.hpp).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../baselines/mutex_map_pool.hpp"

namespace {

using u64 = std::uint64_t;
constexpr std::uint32_t none = 0xFFFF;

u64 mix(u64 h) noexcept {
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 33);
}

struct slot {
    std::atomic<std::uint32_t> next{none};
    std::uint8_t state = 1, retire = 0, dirty = 0, pad = 0;
    std::uint32_t uses = 0, resets = 0;
    u64 expires = ~u64{0}, last_used = 0;
    unsigned char conn[152] = {};
};
static_assert(sizeof(slot) == 184);

void* alloc(std::size_t n) {
    void* p = ::operator new(n, std::align_val_t{64});
    std::memset(p, 0, n);
    return p;
}

template <class Node, std::size_t NodeBytes = 64>
class table {
public:
    explicit table(std::size_t keys) {
        std::size_t n = 16;
        while (n < keys) n *= 2;
        buckets_.assign(n, nullptr);
        mask_ = n - 1;
    }
    ~table() {
        for (void* c : chunks_) ::operator delete(c, std::align_val_t{64});
    }
    table(const table&) = delete;
    table& operator=(const table&) = delete;
    Node* make() { // a node from the table's chunks, NodeBytes apart
        if (used_ == per_chunk) {
            chunks_.push_back(alloc(NodeBytes * per_chunk));
            used_ = 0;
        }
        return new (static_cast<unsigned char*>(chunks_.back()) + NodeBytes * used_++) Node;
    }
    void link(Node* n) {
        Node*& b = buckets_[mix(n->key) & mask_];
        n->link = b;
        b = n;
    }
    Node* const* bucket(u64 k) const { return &buckets_[mix(k) & mask_]; }
    static Node* find(Node* n, u64 k) {
        while (n && n->key != k) n = n->link;
        return n;
    }

private:
    static constexpr std::size_t per_chunk = 4096;
    std::vector<Node*> buckets_;
    u64 mask_ = 0;
    std::vector<void*> chunks_;
    std::size_t used_ = per_chunk;
};

/// The work of one hit on `head` (the key's idle stack) and `slots`. The reset writes the
/// connection's bytes 0, ConnStride and 2 × ConnStride (8: the fake's hot word and its session;
/// one_line's 2 keeps them on the slot's first line).
template <bool Cas, int ConnStride = 8>
inline void cycle_on(std::atomic<u64>& head, slot* slots, u64 now) {
    u64 h = head.load(std::memory_order_acquire);
    const auto i = static_cast<std::uint32_t>(h & none);
    if (i == none) std::abort();
    const u64 popped = ((h & ~u64{none}) + 0x10000) | slots[i].next.load(std::memory_order_relaxed);
    if constexpr (Cas) {
        if (!head.compare_exchange_strong(h, popped, std::memory_order_acquire)) std::abort();
    } else {
        head.store(popped, std::memory_order_relaxed);
    }
    slot* s = &slots[i];
    if (now >= s->expires || now - s->last_used > (u64{1} << 40)) std::abort();
    if (s->dirty) { // the reset: the fake's counters and session come first in the connection
        ++s->resets;
        s->conn[0] = 0;
        s->conn[ConnStride] = static_cast<unsigned char>(s->conn[ConnStride] + 1);
        s->conn[2 * ConnStride] = 0;
    }
    s->last_used = now;
    s->state = 2;
    ++s->uses;
    asm volatile("" : : "r"(s) : "memory"); // the lease
    if (s->retire) std::abort();
    s->dirty = 1;
    s->state = 1;
    h = head.load(std::memory_order_relaxed);
    s->next.store(static_cast<std::uint32_t>(h & none), std::memory_order_relaxed);
    const u64 pushed = ((h & ~u64{none}) + 0x10000) | i;
    if constexpr (Cas) {
        if (!head.compare_exchange_strong(h, pushed, std::memory_order_release)) std::abort();
    } else {
        head.store(pushed, std::memory_order_relaxed);
    }
}

/// `Extra` independent ALU instructions (in fours, four chains of adds the compiler cannot fold),
/// for the *_plus diagnostics: what a longer hit costs once its misses cannot overlap the next's.
template <int Extra>
inline void pad(u64 k, u64 now) {
    if constexpr (Extra > 0) {
        u64 a = k, b = now, c = 1, d = 2;
        for (int i = 0; i < Extra / 4; ++i) {
            asm volatile("" : "+r"(a), "+r"(b), "+r"(c), "+r"(d));
            a += 1, b += 3, c += 5, d += 7;
        }
        asm volatile("" : : "r"(a), "r"(b), "r"(c), "r"(d));
    }
}

struct core_line {
    std::atomic<u64> head{0};
    slot* slots = nullptr;
    void* rest[5] = {};
};

// today's registry
template <bool Cas>
class three {
public:
    struct node {
        node* link = nullptr;
        u64 key = 0;
        core_line* core = nullptr;
    };
    explicit three(std::size_t keys) : t_(keys) {
        for (u64 k = 0; k < keys; ++k) {
            auto* block = static_cast<unsigned char*>(alloc(536));
            auto* c = new (block + 384) core_line;
            c->slots = new (block) slot[2];
            node* n = t_.make();
            n->key = k;
            n->core = c;
            t_.link(n);
        }
    }
    void cycle(u64 k, u64 now) {
        node* n = table<node>::find(*t_.bucket(k), k);
        core_line* c = n->core;
        __builtin_prefetch(c, 1);
        __builtin_prefetch(reinterpret_cast<unsigned char*>(c) - 384, 1);
        cycle_on<Cas>(c->head, c->slots, now);
    }

private:
    table<node> t_;
};

// today's lines, but the node sits in the pool's block right before the core's first line
// ([slot 0][slot 1][node][core]): the bucket's pointer names all three lines, so they load side by
// side (prefetched before the key is compared).
template <bool Cas>
class three_adjacent {
public:
    struct node {
        node* link = nullptr;
        u64 key = 0;
        core_line* core = nullptr;
        unsigned char pad[40] = {};
    };
    static_assert(sizeof(node) == 64);
    explicit three_adjacent(std::size_t keys) {
        std::size_t n = 16;
        while (n < keys) n *= 2;
        buckets_.assign(n, nullptr);
        mask_ = n - 1;
        for (u64 k = 0; k < keys; ++k) {
            auto* block = static_cast<unsigned char*>(alloc(384 + 64 + 152));
            auto* c = new (block + 448) core_line;
            c->slots = new (block) slot[2];
            node* nd = new (block + 384) node;
            nd->key = k;
            nd->core = c;
            node*& b = buckets_[mix(k) & mask_];
            nd->link = b;
            b = nd;
        }
    }
    void cycle(u64 k, u64 now) {
        node* n = buckets_[mix(k) & mask_];
        __builtin_prefetch(reinterpret_cast<unsigned char*>(n) + 64, 1);
        __builtin_prefetch(reinterpret_cast<unsigned char*>(n) - 384, 1);
        n = table<node>::find(n, k);
        core_line* c = n->core;
        cycle_on<Cas>(c->head, c->slots, now);
    }

private:
    std::vector<node*> buckets_;
    u64 mask_ = 0;
};

// the node carries the head
template <bool Cas, bool Arena, std::size_t NodeBytes = 64>
class two {
public:
    struct node {
        node* link = nullptr;
        u64 key = 0;
        std::atomic<u64> head{0};
        slot* slots = nullptr;
    };
    explicit two(std::size_t keys) : t_(keys) {
        if constexpr (Arena) arena_ = static_cast<unsigned char*>(alloc(keys * 2 * sizeof(slot) + 64));
        for (u64 k = 0; k < keys; ++k) {
            void* where = Arena ? arena_ + k * 2 * sizeof(slot) : alloc(2 * sizeof(slot));
            node* n = t_.make();
            n->key = k;
            n->slots = new (where) slot[2];
            t_.link(n);
        }
    }
    void cycle(u64 k, u64 now) {
        node* n = table<node>::find(*t_.bucket(k), k);
        __builtin_prefetch(n->slots, 1);
        cycle_on<Cas>(n->head, n->slots, now);
    }

private:
    table<node, NodeBytes> t_;
    unsigned char* arena_ = nullptr;
};

// A key's node with its idle-stack head on the same line (one_level, pair_arena, strided).
struct head_node {
    head_node* link = nullptr;
    u64 key = 0;
    std::atomic<u64> head{0};
    unsigned char pad[40] = {};
};
static_assert(sizeof(head_node) == 64);

/// Power-of-two buckets for `keys` keys (at least 16), with key k's node, built in place by
/// `make(k)`, linked in key order. Returns the bucket mask.
template <class Node, class Make>
u64 link_keys(std::vector<Node*>& buckets, std::size_t keys, Make make) {
    std::size_t n = 16;
    while (n < keys) n *= 2;
    buckets.assign(n, nullptr);
    for (u64 k = 0; k < keys; ++k) {
        Node* nd = make(k);
        nd->key = k;
        Node*& b = buckets[mix(k) & (n - 1)];
        nd->link = b;
        b = nd;
    }
    return n - 1;
}

// node and slot 0 side by side, both lines named by the bucket's pointer: each key's block an
// allocation of its own ([node][slot 0][slot 1], 448 bytes: one_level), or (Dense: pair_arena) the
// two hot lines of every key in one array, 128 bytes per key — the rest of slot 0 and slot 1 would
// live elsewhere; here each key's slot runs into the next key's node, built after it.
template <bool Cas, bool Dense>
class node_then_slot {
public:
    using node = head_node;
    explicit node_then_slot(std::size_t keys)
        : arena_(Dense ? static_cast<unsigned char*>(alloc(keys * 128 + sizeof(slot))) : nullptr) {
        // in key order (Dense: node k + 1 overwrites slot k's tail)
        mask_ = link_keys(buckets_, keys, [&](u64 k) {
            auto* block = Dense ? arena_ + 128 * k : static_cast<unsigned char*>(alloc(64 + 2 * sizeof(slot)));
            if (Dense) new (block + 64) slot;
            else new (block + 64) slot[2];
            return new (block) node;
        });
    }
    node_then_slot(const node_then_slot&) = delete;
    node_then_slot& operator=(const node_then_slot&) = delete;
    void cycle(u64 k, u64 now) {
        node* n = buckets_[mix(k) & mask_];
        __builtin_prefetch(reinterpret_cast<unsigned char*>(n) + 64, 1);
        n = table<node>::find(n, k);
        cycle_on<Cas>(n->head, reinterpret_cast<slot*>(reinterpret_cast<unsigned char*>(n) + 64), now);
    }

private:
    unsigned char* arena_; // (the model's memory lives until the process exits)
    std::vector<node*> buckets_;
    u64 mask_ = 0;
};

/// `bytes` (and a little more) of zeroed memory, 2 MiB-aligned and advised for huge pages, kept
/// until the process exits.
unsigned char* huge_page_arena(std::size_t bytes) {
    constexpr std::size_t huge = std::size_t{2} << 20;
    bytes = (bytes + 2 * huge) & ~(huge - 1);
    void* raw = mmap(nullptr, bytes + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) std::abort();
    auto* arena = reinterpret_cast<unsigned char*>((reinterpret_cast<std::uintptr_t>(raw) + huge - 1) & ~std::uintptr_t(huge - 1));
    (void)madvise(arena, bytes, MADV_HUGEPAGE);
    std::memset(arena, 0, bytes);
    return arena;
}

// one_level's lines at stride `Stride` in one 2 MiB-aligned arena advised for huge pages (so the
// TLB is no part of the difference): block k at arena + Stride * k, the node at NodeOff, slot 0 at
// SlotOff. `Extra`: independent ALU instructions added per cycle, in fours (see *_plus40).
template <std::size_t Stride, std::size_t NodeOff, std::size_t SlotOff, int Extra = 0>
class strided {
public:
    using node = head_node;
    explicit strided(std::size_t keys) {
        arena_ = huge_page_arena(keys * Stride);
        static_assert(NodeOff % 64 == 0 && SlotOff % 64 == 0);
        mask_ = link_keys(buckets_, keys, [&](u64 k) {
            unsigned char* block = arena_ + Stride * k;
            new (block + SlotOff) slot;
            return new (block + NodeOff) node;
        });
    }
    strided(const strided&) = delete;
    strided& operator=(const strided&) = delete;
    void cycle(u64 k, u64 now) {
        constexpr std::ptrdiff_t to_slot = std::ptrdiff_t(SlotOff) - std::ptrdiff_t(NodeOff);
        node* n = buckets_[mix(k) & mask_];
        __builtin_prefetch(reinterpret_cast<unsigned char*>(n) + to_slot, 1);
        n = table<node>::find(n, k);
        cycle_on<true>(n->head, reinterpret_cast<slot*>(reinterpret_cast<unsigned char*>(n) + to_slot), now);
        pad<Extra>(k, now);
    }

private:
    unsigned char* arena_ = nullptr; // (the model's memory lives until the process exits)
    std::vector<node*> buckets_;
    u64 mask_ = 0;
};

// one hot line per key: block k at arena + Stride * k (huge pages, as strided), its first line
// holding the node's link and key, the idle-stack head, slot 0's 32-byte header and the first 8
// bytes of its connection, which the reset touches (the fake's hot word); the chain's key compare
// reads the line the hit then writes. What a hit would cost with the node's fields in slot 0's
// line (session 25). At a stride below the slot's size (one_line64) each key's slot runs into
// the next keys' lines, built after it (as pair_arena): only its first line is the model's.
template <std::size_t Stride, std::size_t SlotAt = 24, int Extra = 0>
class one_line {
public:
    struct line_head {
        line_head* link = nullptr;
        u64 key = 0;
        std::atomic<u64> head{0};
    };
    static_assert(sizeof(line_head) == 24 && sizeof(slot) == 184);
    explicit one_line(std::size_t keys) {
        arena_ = huge_page_arena(keys * Stride);
        mask_ = link_keys(buckets_, keys, [&](u64 k) {
            unsigned char* block = arena_ + Stride * k;
            new (block + SlotAt) slot;
            return new (block) line_head;
        });
    }
    one_line(const one_line&) = delete;
    one_line& operator=(const one_line&) = delete;
    void cycle(u64 k, u64 now) {
        line_head* n = buckets_[mix(k) & mask_];
        while (n->key != k) n = n->link;
        cycle_on<true, 2>(n->head, reinterpret_cast<slot*>(reinterpret_cast<unsigned char*>(n) + SlotAt), now);
        pad<Extra>(k, now);
    }

private:
    unsigned char* arena_ = nullptr; // (the model's memory lives until the process exits)
    std::vector<line_head*> buckets_;
    u64 mask_ = 0;
};

// hot/cold split: every key's hot line in one dense huge-page array (the node's link and key, the
// idle-stack head, slot 0's 32-byte header: 64 bytes a key), its connection in a parallel array at
// stride ConnStride (key k's connection at conns + ConnStride * k, its address computed from the
// hot line's, so it loads side by side with it). What a registry whose blocks are split in two
// arrays would touch on a hit: the bucket, then two lines, both in dense arrays. The idle stack
// holds slot 0 alone (the pop empties it, the push puts slot 0 back); slot 1 and the core would
// live in a third, cold array that a hit does not touch. HotStride > 64: the hot lines that far
// apart, the rest of each record unused (the other slots' headers, for a record holding every
// slot's: 128 bytes for two slots, 192 for four).
template <std::size_t ConnStride, std::size_t HotStride = 64, int Extra = 0>
class split {
public:
    struct hot_line {
        hot_line* link = nullptr;
        u64 key = 0;
        std::atomic<u64> head{0};
        std::atomic<std::uint32_t> next{none};
        std::uint8_t state = 1, retire = 0, dirty = 0, pad = 0;
        std::uint32_t uses = 0, resets = 0;
        u64 expires = ~u64{0}, last_used = 0;
        u64 state_and_padding = 0; // the entry's state and the rest of the line
    };
    static_assert(sizeof(hot_line) == 64);
    explicit split(std::size_t keys) {
        static_assert(HotStride % 64 == 0);
        hot_ = huge_page_arena(keys * HotStride);
        conns_ = huge_page_arena(keys * ConnStride);
        mask_ = link_keys(buckets_, keys, [&](u64 k) { return new (hot_ + HotStride * k) hot_line; });
    }
    split(const split&) = delete;
    split& operator=(const split&) = delete;
    void cycle(u64 k, u64 now) {
        hot_line* n = buckets_[mix(k) & mask_];
        unsigned char* c = conns_ + ConnStride * index(n);
        __builtin_prefetch(c, 1);
        while (n->key != k) {
            n = n->link;
            c = conns_ + ConnStride * index(n);
        }
        u64 h = n->head.load(std::memory_order_acquire);
        const u64 popped = ((h & ~u64{none}) + 0x10000) | none;
        if (!n->head.compare_exchange_strong(h, popped, std::memory_order_acquire)) std::abort();
        if (now >= n->expires || now - n->last_used > (u64{1} << 40)) std::abort();
        if (n->dirty) {
            ++n->resets;
            c[0] = 0;
            c[8] = static_cast<unsigned char>(c[8] + 1);
            c[16] = 0;
        }
        n->last_used = now;
        n->state = 2;
        ++n->uses;
        asm volatile("" : : "r"(n), "r"(c) : "memory"); // the lease
        if (n->retire) std::abort();
        n->dirty = 1;
        n->state = 1;
        h = n->head.load(std::memory_order_relaxed);
        const u64 pushed = ((h & ~u64{none}) + 0x10000) | 0;
        if (!n->head.compare_exchange_strong(h, pushed, std::memory_order_release)) std::abort();
        pad<Extra>(k, now);
    }

private:
    std::size_t index(const hot_line* n) const {
        return static_cast<std::size_t>(reinterpret_cast<const unsigned char*>(n) - hot_) / HotStride;
    }
    unsigned char* hot_ = nullptr;
    unsigned char* conns_ = nullptr;
    std::vector<hot_line*> buckets_;
    u64 mask_ = 0;
};

// nodes apart: every key's node (link, key, the entry's 48 bytes) in one dense array, its block
// (the idle-stack head, then slot 0) in a second at stride S, at the same index (address computed
// from the node's, loaded side by side): the cheaper split, which leaves the line the hit writes
// (head, slot 0's header) spread out (session 27).
template <std::size_t S, std::size_t NodeBytes = 64>
class node_apart {
public:
    struct nd {
        nd* link = nullptr;
        u64 key = 0;
        unsigned char rest[NodeBytes - 16] = {};
    };
    static_assert(sizeof(nd) == NodeBytes);
    explicit node_apart(std::size_t keys) {
        nodes_ = reinterpret_cast<nd*>(huge_page_arena(keys * NodeBytes));
        blocks_ = huge_page_arena(keys * S);
        mask_ = link_keys(buckets_, keys, [&](u64 k) {
            unsigned char* b = blocks_ + S * k;
            new (b + 8) slot;
            new (b) std::atomic<u64>(0);
            return new (nodes_ + k) nd;
        });
    }
    node_apart(const node_apart&) = delete;
    node_apart& operator=(const node_apart&) = delete;
    void cycle(u64 k, u64 now) {
        nd* n = buckets_[mix(k) & mask_];
        unsigned char* b = blocks_ + S * static_cast<std::size_t>(n - nodes_);
        __builtin_prefetch(b, 1);
        while (n->key != k) {
            n = n->link;
            b = blocks_ + S * static_cast<std::size_t>(n - nodes_);
        }
        cycle_on<true>(*reinterpret_cast<std::atomic<u64>*>(b), reinterpret_cast<slot*>(b + 8), now);
    }

private:
    nd* nodes_ = nullptr;
    unsigned char* blocks_ = nullptr;
    std::vector<nd*> buckets_;
    u64 mask_ = 0;
};

// open addressing over the keys' blocks themselves: a power-of-two array of 448-byte entries
// ([key + head, 64 bytes][slot 0][slot 1]), at least two per key, probed linearly from the key's
// mixed hash. The entry's address follows from the hash alone, so its first line and slot 0's
// load side by side with no bucket before them: one round to memory per hit, not two. (Entries
// never move here; a table that grows would have to move them, or be sized up front.)
template <bool Cas>
class direct {
public:
    static constexpr std::size_t stride = 448;
    struct line {
        u64 key = ~u64{0}; // ~0: empty
        std::atomic<u64> head{0};
        unsigned char pad[48] = {};
    };
    static_assert(sizeof(line) == 64);
    explicit direct(std::size_t keys) {
        std::size_t n = 16;
        while (n < 2 * keys) n *= 2;
        mask_ = n - 1;
        base_ = static_cast<unsigned char*>(alloc(n * stride));
        for (std::size_t i = 0; i < n; ++i) new (base_ + i * stride) line;
        for (u64 k = 0; k < keys; ++k) {
            std::size_t i = mix(k) & mask_;
            while (at(i)->key != ~u64{0}) i = (i + 1) & mask_;
            at(i)->key = k;
            new (base_ + i * stride + 64) slot[2];
        }
    }
    direct(const direct&) = delete;
    direct& operator=(const direct&) = delete;
    void cycle(u64 k, u64 now) {
        std::size_t i = mix(k) & mask_;
        __builtin_prefetch(base_ + i * stride + 64, 1);
        while (at(i)->key != k) i = (i + 1) & mask_;
        cycle_on<Cas>(at(i)->head, reinterpret_cast<slot*>(base_ + i * stride + 64), now);
    }

private:
    line* at(std::size_t i) const { return reinterpret_cast<line*>(base_ + i * stride); }
    unsigned char* base_; // (the model's memory lives until the process exits)
    u64 mask_ = 0;
};

// a flat index: open addressing over 16-byte {key, block} pairs (at least two per key), probed
// linearly from the key's mixed hash; the block is [head + slot 0's first bytes][slot 0][slot 1],
// its own allocation. A hit reads the pair (the key compared there, no node), then the head's
// line: still two rounds, but one hot line of the key and 32 bytes of index, not two lines and
// 16 bytes (session 20).
template <bool Cas>
class inline_key {
public:
    struct pair {
        u64 key = ~u64{0}; // ~0: empty
        unsigned char* block = nullptr;
    };
    explicit inline_key(std::size_t keys) {
        std::size_t n = 16;
        while (n < 2 * keys) n *= 2;
        mask_ = n - 1;
        pairs_ = static_cast<pair*>(alloc(n * sizeof(pair)));
        for (std::size_t i = 0; i < n; ++i) new (pairs_ + i) pair;
        for (u64 k = 0; k < keys; ++k) {
            std::size_t i = mix(k) & mask_;
            while (pairs_[i].key != ~u64{0}) i = (i + 1) & mask_;
            auto* block = static_cast<unsigned char*>(alloc(8 + 2 * sizeof(slot)));
            new (block) std::atomic<u64>{0};
            new (block + 8) slot[2];
            pairs_[i] = {k, block};
        }
    }
    inline_key(const inline_key&) = delete;
    inline_key& operator=(const inline_key&) = delete;
    void cycle(u64 k, u64 now) {
        std::size_t i = mix(k) & mask_;
        while (pairs_[i].key != k) i = (i + 1) & mask_;
        unsigned char* b = pairs_[i].block;
        cycle_on<Cas>(*reinterpret_cast<std::atomic<u64>*>(b), reinterpret_cast<slot*>(b + 8), now);
    }

private:
    pair* pairs_; // (the model's memory lives until the process exits)
    u64 mask_ = 0;
};

std::vector<u64> g_keys; // 65,536 keys picked at random, as bench/registry_bench.cpp
u64 g_tick = 0;

template <class F>
double ns_per_cycle(std::size_t n, F&& f) {
    for (std::size_t i = 0; i < n / 4; ++i) f(g_keys[i & 65535], ++g_tick); // warm the caches
    const auto t0 = std::chrono::steady_clock::now();
    for (std::size_t i = 0; i < n; ++i) f(g_keys[i & 65535], ++g_tick);
    return std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count() / double(n);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}


/// Times the baseline and `model` (built for `keys` keys) in this process and prints its line.
template <class Model>
void run(const char* name, std::size_t keys, std::size_t n, int rounds) {
    keypool_bench::mutex_map_pool base(keys);
    Model m(keys);
    std::vector<double> ratio, base_ns;
    for (int r = 0; r < rounds; ++r) {
        const double b = ns_per_cycle(n, [&](u64 k, u64) {
            int* c = base.acquire(k);
            asm volatile("" : : "r"(c) : "memory");
            if (c) base.release(k, c);
        });
        base_ns.push_back(b);
        ratio.push_back(ns_per_cycle(n, [&](u64 k, u64 t) { m.cycle(k, t); }) / b);
    }
    const auto [lo, hi] = std::minmax_element(ratio.begin(), ratio.end());
    std::printf("  %-16s %.2fx  (%.2f-%.2f), baseline median %.1f ns\n", name, median(ratio), *lo, *hi, median(base_ns));
    std::fflush(stdout);
}

using runner = void (*)(const char*, std::size_t, std::size_t, int);
const std::pair<const char*, runner> models[] = {
    {"three", run<three<true>>},
    {"three_nocas", run<three<false>>},
    {"three_adjacent", run<three_adjacent<true>>},
    {"two", run<two<true, false>>},
    {"two_arena", run<two<true, true>>},
    {"two_arena_nocas", run<two<false, true>>},
    {"two_arena32", run<two<true, true, 32>>},
    {"one_level", run<node_then_slot<true, false>>},
    {"one_level_nocas", run<node_then_slot<false, false>>},
    {"pair_arena", run<node_then_slot<true, true>>},
    {"direct", run<direct<true>>},
    {"inline_key", run<inline_key<true>>},
    {"stride128", run<strided<128, 0, 64>>},
    {"stride192", run<strided<192, 0, 64>>},
    {"stride256", run<strided<256, 0, 64>>},
    {"stride384", run<strided<384, 0, 64>>},
    {"stride512", run<strided<512, 0, 64>>},
    {"stride576", run<strided<576, 0, 64>>},
    {"stride640", run<strided<640, 0, 64>>},
    {"stride1024", run<strided<1024, 0, 64>>},
    {"registry576", run<strided<576, 384, 0>>},
    {"one_line576", run<one_line<576>>},
    {"one_line64", run<one_line<64>>},
    {"one_line128", run<one_line<128>>},
    {"one_line192", run<one_line<192>>},
    {"one_line256", run<one_line<256>>},
    {"one_line576_at32", run<one_line<576, 32>>},
    {"one_line576_plus68", run<one_line<576, 24, 68>>},
    {"one_line576_at32_plus68", run<one_line<576, 32, 68>>},
    {"stride576_plus68", run<strided<576, 0, 64, 68>>},
    {"split64", run<split<64>>},
    {"node_apart576", run<node_apart<576>>},
    {"node_apart192", run<node_apart<192>>},
    {"node_apart576_32", run<node_apart<576, 32>>},
    {"split192", run<split<192>>},
    {"split576", run<split<576>>},
    {"split576_hot128", run<split<576, 128>>},
    {"split576_hot192", run<split<576, 192>>},
    {"stride128_plus40", run<strided<128, 0, 64, 40>>},
    {"registry576_plus40", run<strided<576, 384, 0, 40>>},
    {"registry576_plus68", run<strided<576, 384, 0, 68>>},
    {"split576_plus40", run<split<576, 64, 40>>},
    {"split576_plus68", run<split<576, 64, 68>>},
};

} // namespace

int main(int argc, char** argv) {
    const std::size_t keys = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000;
    const std::size_t n = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 2'000'000;
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 7;
    const std::string only = argc > 4 ? argv[4] : "";
    if (keys == 0 || n == 0 || rounds <= 0) return 2;
    // As every benchmark binary (baselines/process.hpp): once a second thread has run, glibc's
    // mutex takes a locked instruction; before, the baseline's lock is a plain store.
    std::thread([] {}).join();
    std::mt19937_64 rng(42);
    g_keys.resize(65536);
    for (auto& k : g_keys) k = rng() % keys;

    std::printf("%zu keys, %d rounds of %zu cycles, model time / baseline time:\n", keys, rounds, n);
    std::fflush(stdout);
    bool found = only.empty();
    for (const auto& [name, run_model] : models) {
        if (!only.empty()) {
            if (only == name) run_model(name, keys, n, rounds), found = true;
            continue;
        }
        const pid_t child = fork(); // (no other thread runs: the one above was joined)
        if (child < 0) return 1;
        if (child == 0) {
            run_model(name, keys, n, rounds);
            _exit(0);
        }
        int status = 0;
        if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
    }
    if (!found) std::fprintf(stderr, "no model named %s\n", only.c_str());
    return found ? 0 : 2;
}
