// SPDX-License-Identifier: BSL-1.0
// W3 layout model: what would a registry laid out differently cost per acquire + release, against
// the bare std::mutex + std::unordered_map baseline, in the same process? Not keypool's code: a
// stripped-down copy of the cycle's memory traffic, so layouts can be compared before one is built
// (docs/benchmarks.md, "Session 12").
//
//   w3_layout_model <keys> [cycles per round = 2000000] [rounds = 7]
//
// Every model does the registry's work on a hit: find the key's node in a chained table (mixed
// hash, power-of-two buckets, 64-byte nodes from 64-byte aligned chunks), pop the key's idle
// stack (compare-and-swap on a tagged head), check the slot's expiry and idle time, reset the
// connection (writes to its first bytes), stamp the slot, then release: set dirty, push (CAS).
// Slots are 184 bytes, a 32-byte header and the fake connection's 152. The models:
//
//   three      today's registry: node -> {core's first line, slot 0} (the head lives in the core;
//              one 536-byte block per key: two slots, then the core at offset 384).
//   three_adjacent  today's lines, the node in the pool's block right before the core's first
//              line: the bucket's pointer names node, core and slot 0, which load side by side.
//   two        the node carries the head and the slots' address -> slot 0: two hot lines per key,
//              slots in their own 384-byte allocation.
//   two_arena  as two, the slots of all keys carved from one array in key order (dense).
//   one_level  node and slots in one block ([node][slot 0][slot 1], 448 bytes): the bucket's
//              pointer names both lines, so they load side by side.
//   *_nocas    diagnostic: the same with plain stores for the head (not thread-safe): what the
//              two locked instructions cost.
//
// Each round runs the baseline and every model once, in a rotated order; the line printed per
// model is the median over rounds of its time ÷ the same round's baseline time. The process
// starts and joins a thread first, as the benchmarks do (baselines/process.hpp).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

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

template <class Node>
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
    Node* make() { // a 64-byte node from the table's chunks
        if (used_ == per_chunk) {
            chunks_.push_back(alloc(64 * per_chunk));
            used_ = 0;
        }
        return new (static_cast<unsigned char*>(chunks_.back()) + 64 * used_++) Node;
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

/// The work of one hit on `head` (the key's idle stack) and `slots`.
template <bool Cas>
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
        s->conn[8] = static_cast<unsigned char>(s->conn[8] + 1);
        s->conn[16] = 0;
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
template <bool Cas, bool Arena>
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
    table<node> t_;
    unsigned char* arena_ = nullptr;
};

// node and slots in one block, both lines named by the bucket's pointer
template <bool Cas>
class one_level {
public:
    struct node {
        node* link = nullptr;
        u64 key = 0;
        std::atomic<u64> head{0};
        unsigned char pad[40] = {};
    };
    static_assert(sizeof(node) == 64);
    explicit one_level(std::size_t keys) {
        std::size_t n = 16;
        while (n < keys) n *= 2;
        buckets_.assign(n, nullptr);
        mask_ = n - 1;
        for (u64 k = 0; k < keys; ++k) {
            auto* block = static_cast<unsigned char*>(alloc(64 + 2 * sizeof(slot)));
            node* nd = new (block) node;
            new (block + 64) slot[2];
            nd->key = k;
            node*& b = buckets_[mix(k) & mask_];
            nd->link = b;
            b = nd;
        }
    }
    void cycle(u64 k, u64 now) {
        node* n = buckets_[mix(k) & mask_];
        __builtin_prefetch(reinterpret_cast<unsigned char*>(n) + 64, 1);
        n = table<node>::find(n, k);
        cycle_on<Cas>(n->head, reinterpret_cast<slot*>(reinterpret_cast<unsigned char*>(n) + 64), now);
    }

private:
    std::vector<node*> buckets_;
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

} // namespace

int main(int argc, char** argv) {
    const std::size_t keys = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10'000;
    const std::size_t n = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 2'000'000;
    const int rounds = argc > 3 ? std::atoi(argv[3]) : 7;
    if (keys == 0 || n == 0 || rounds <= 0) return 2;
    // As every benchmark binary (baselines/process.hpp): once a second thread has run, glibc's
    // mutex takes a locked instruction; before, the baseline's lock is a plain store.
    std::thread([] {}).join();
    std::mt19937_64 rng(42);
    g_keys.resize(65536);
    for (auto& k : g_keys) k = rng() % keys;

    keypool_bench::mutex_map_pool base(keys);
    three<true> m3(keys);
    three<false> m3p(keys);
    three_adjacent<true> m3a(keys);
    two<true, false> m2(keys);
    two<true, true> m2a(keys);
    two<false, true> m2ap(keys);
    one_level<true> m1(keys);
    one_level<false> m1p(keys);
    const std::vector<std::pair<std::string, std::function<double()>>> models = {
        {"three", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m3.cycle(k, t); }); }},
        {"three_nocas", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m3p.cycle(k, t); }); }},
        {"three_adjacent", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m3a.cycle(k, t); }); }},
        {"two", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m2.cycle(k, t); }); }},
        {"two_arena", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m2a.cycle(k, t); }); }},
        {"two_arena_nocas", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m2ap.cycle(k, t); }); }},
        {"one_level", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m1.cycle(k, t); }); }},
        {"one_level_nocas", [&] { return ns_per_cycle(n, [&](u64 k, u64 t) { m1p.cycle(k, t); }); }},
    };
    auto run_base = [&] {
        return ns_per_cycle(n, [&](u64 k, u64) {
            int* c = base.acquire(k);
            asm volatile("" : : "r"(c) : "memory");
            if (c) base.release(k, c);
        });
    };
    std::vector<std::vector<double>> ratio(models.size());
    std::vector<double> base_ns;
    for (int r = 0; r < rounds; ++r) {
        const double b = run_base();
        base_ns.push_back(b);
        for (std::size_t j = 0; j < models.size(); ++j) {
            const std::size_t m = (j + static_cast<std::size_t>(r)) % models.size();
            ratio[m].push_back(models[m].second() / b);
        }
    }
    std::printf("%zu keys, %d rounds of %zu cycles: baseline median %.1f ns\n", keys, rounds, n, median(base_ns));
    for (std::size_t m = 0; m < models.size(); ++m) {
        const auto [lo, hi] = std::minmax_element(ratio[m].begin(), ratio[m].end());
        std::printf("  %-16s %.2fx  (%.2f-%.2f)\n", models[m].first.c_str(), median(ratio[m]), *lo, *hi);
    }
}
