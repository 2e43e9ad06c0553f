// SPDX-License-Identifier: BSL-1.0
// key_table: the registry shard's hash table, key -> value, one node per key that never moves,
// readable without the shard's lock inside an rcu section.
#pragma once

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <boost/container_hash/hash.hpp>
#include <boost/intrusive/parent_from_member.hpp>

#include <keypool/detail/config.hpp>
#include <keypool/detail/huge_arena.hpp>
#include <keypool/detail/rcu.hpp>

namespace keypool::detail {

/// A chained hash map from Key to T for one registry shard. Writers hold the shard's lock;
/// find_shared() reads it without the lock, inside an rcu_section, while writers change it:
///
/// - a bucket is the head of its own list of nodes; the links are atomics, a node is linked only
///   once it is fully built (release) and unlinked by one store, so a lock-free reader walks
///   either the old or the new chain. A rehash relinks each node once into the new buckets: a
///   reader on an old chain may miss its key then (it takes the locked path), never loops;
/// - an erased node is unlinked at once but neither destroyed nor reused until a grace period
///   that began after its erasure has passed (reclaim()): a reader may still be on it, reading
///   its key and value and following its link. Old bucket arrays wait the same way. So a reader
///   may read a node's key and the value's fields that do not change while it is linked without
///   a data race; fields that do change must be atomics;
/// - nodes never move (entries are linked into the eviction ring and leases point at their keys)
///   and come from the table's own chunks, one cache line each when a node and its Tail fit in
///   one; a node is its link word, the key and the value (the registry's entry keeps its state
///   in the link word's low bits and takes no room: 16 bytes for an 8-byte key);
/// - no stored hash: the chain compares keys, a rehash hashes each key again (under the shard's
///   lock, ≈ 1e6 / 64 keys per shard at most).
///
/// Power-of-two buckets, indexed by the bits of a mixed hash right below its top 12 (hash_of,
/// bucket_of; boost::hash of an integer is the integer itself). It doubles its buckets when it
/// holds half as many nodes, or as many from 2,048 buckets on (capacity_of); reserve() sizes it
/// up front so a growing registry does not rehash under the shard lock. An iterator is a node
/// pointer (`->first`, `->second`); end() is nullptr.
///
/// A node may also live in memory its caller owns (emplace(k, mem), replace(n, mem)): the table
/// links, unlinks and destroys it like any other, but never frees or reuses that memory, and
/// `External` (a function object on the value) tells it which nodes those are. The caller frees
/// the memory once the node is destroyed (after erase() and a reclaim() past a grace period).
///
/// `Concurrent` false (sync::none): no lock-free readers, so an erased node is destroyed at once.
///
/// `Tail`: a type of the caller's that each node in the table's own memory has room for right
/// after it, at tail_of(node) (the table neither builds nor destroys it: the value does, e.g. the
/// registry's entry keeps its fields that a hit does not read there); `void` for none. A node in
/// the caller's memory has no such room.
struct never_external {
    template <class T>
    bool operator()(const T&) const noexcept {
        return false;
    }
};
template <class Key, class T, class Hash = boost::hash<Key>, class Eq = std::equal_to<Key>, bool Concurrent = true,
          class External = never_external, class Tail = void>
class key_table {
public:
    /// A node: its link word, the key and the value (a value of an empty type takes no room:
    /// the registry's 8-byte key makes a 16-byte node). The link word holds the next node of
    /// the chain and, in its low `value_bits` bits, bits of the value's own (bits(), set_bits()):
    /// the registry keeps its entry's state there, so a lookup reads the link, the key and the
    /// state from 16 bytes.
    struct node {
        template <class... Args>
        explicit node(const Key& k, Args&&... a) : first(k), second(std::forward<Args>(a)...) {}
        node(const node&) = delete;
        node& operator=(const node&) = delete;
        std::atomic<std::uintptr_t> link{0};
        const Key first;
        [[no_unique_address]] T second;

        /// The next node of the chain, for the table's writers (readers load the link with acquire).
        node* next() const noexcept { return pointer(link.load(std::memory_order_relaxed)); }
        /// The value's bits, loaded with acquire: what set_bits() published before them is seen.
        KEYPOOL_ALWAYS_INLINE std::uintptr_t bits() const noexcept { return load_acquire(link) & bits_mask; }
        /// Sets the value's bits (below 2^value_bits), keeping the link; by the table's writers
        /// (under the shard's lock) or before the node is linked. A release store: a reader that
        /// sees them sees what was written before.
        void set_bits(std::uintptr_t b) noexcept {
            link.store((link.load(std::memory_order_relaxed) & ~bits_mask) | b, std::memory_order_release);
        }
    };
    static constexpr unsigned value_bits = 3;
    static constexpr std::uintptr_t bits_mask = (std::uintptr_t{1} << value_bits) - 1;
    static_assert(alignof(node) >= 8, "the low 3 bits of a node's address are its link word's value bits");
    using iterator = node*;

    /// Where the room for a `Tail` after node `n` (in the table's own memory) starts.
    static void* tail_of(node* n) noexcept { return reinterpret_cast<unsigned char*>(n) + tail_offset; }

    /// The node whose value is `v` (a value that lives in this table's node).
    static node& node_of(T& v) noexcept {
        return *boost::intrusive::get_parent_from_member(&v, &node::second);
    }

    key_table() { own_word_.store(make_buckets(min_buckets, nullptr).word(), std::memory_order_relaxed); }
    ~key_table() {
        const bucket_array b = current();
        each_node(b, [this](node* n) { destroy(n); });
        free_buckets(b, arena_);
        for (auto& [n, stamp] : limbo_) destroy(n);
        for (auto& [a, stamp] : old_buckets_) free_buckets(a, arena_);
        for (unsigned char* c : chunks_) ::operator delete(c, std::align_val_t{line});
    }
    key_table(const key_table&) = delete;
    key_table& operator=(const key_table&) = delete;

    std::size_t size() const noexcept { return size_; }
    /// Buckets now: at least two per node below 1,024 nodes, at least one from there (see
    /// capacity_of). Under the shard's lock.
    std::size_t bucket_count() const noexcept { return current().count(); }
    iterator end() const noexcept { return nullptr; }

    /// Under the shard's lock.
    iterator find(const Key& k) const noexcept(noexcept(Hash{}(k)) && noexcept(Eq{}(k, k))) { return find_shared(k); }

    /// The key's hash, mixed: its top `split_bits` bits are the caller's, for its own split (the
    /// registry's shards), and the bits below them index the buckets (bucket_of).
    static std::size_t hash_of(const Key& k) noexcept(noexcept(Hash{}(k))) { return mix(Hash{}(k)); }
    static constexpr unsigned split_bits = 12;
    /// The bucket of hash `h` (hash_of) in a table of `buckets` (a power of two, at most
    /// 2^(64 - split_bits)): the bits right below the caller's.
    static std::size_t bucket_of(std::size_t h, std::size_t buckets) noexcept {
        return bucket_array::index(h, 64 - static_cast<unsigned>(std::countr_zero(buckets)));
    }

    /// Without the lock, inside an rcu_section: the node linked for `k` at some moment during
    /// the call, or nullptr (also, rarely, while a rehash moves `k`'s node: look again locked).
    KEYPOOL_ALWAYS_INLINE iterator find_shared(const Key& k) const noexcept(noexcept(Hash{}(k)) && noexcept(Eq{}(k, k))) {
        return find_shared_at(*buckets_, k, hash_of(k));
    }
    /// The same, for the table whose bucket word lives at `word` (publish_to), `h` being
    /// hash_of(k) (which a caller that also picks a shard by it computes once).
    static KEYPOOL_ALWAYS_INLINE iterator find_shared_at(const std::atomic<std::uintptr_t>& word, const Key& k,
                                                         std::size_t h) noexcept(noexcept(Eq{}(k, k))) {
        const bucket_array b = bucket_array::of(load_acquire(word));
        for (node* n = pointer(load_acquire(b.heads[b.index(h)])); n; n = pointer(load_acquire(n->link)))
            if (Eq{}(k, n->first)) return n;
        return nullptr;
    }

    /// Inserts a node for `k` with a T made from `a...`; `k` must not be in the table. `mem`:
    /// where to build it (the caller's memory, sizeof(node) bytes aligned for a node; the value
    /// must then say External), or nullptr for the table's own.
    template <class... Args>
    iterator emplace(const Key& k, void* mem = nullptr, Args&&... a) {
        bucket_array b = current();
        if (size_ >= capacity_of(b.count())) b = grow(2 * b.count());
        node* n = build(k, mem, std::forward<Args>(a)...);
        auto& head = b.heads[b.index(hash_of(n->first))];
        relink(n->link, pointer(head.load(std::memory_order_relaxed)), std::memory_order_relaxed);
        relink(head, n, std::memory_order_release); // publishes the built node
        ++size_;
        return n;
    }

    /// Unlinks `n`; it is destroyed by the first reclaim() after a grace period.
    void erase(iterator n) noexcept {
        relink(link_of(n), n->next(), std::memory_order_release);
        --size_;
        retire(n);
    }

    /// Puts a new node for `old`'s key (a T made from `a...`, built in `mem` as emplace() does)
    /// where `old` is in its chain, in one store, and retires `old` as erase() does: a lock-free
    /// reader finds one or the other.
    template <class... Args>
    iterator replace(iterator old, void* mem = nullptr, Args&&... a) {
        node* n = build(old->first, mem, std::forward<Args>(a)...);
        relink(n->link, old->next(), std::memory_order_relaxed);
        relink(link_of(old), n, std::memory_order_release); // publishes the built node
        retire(old);
        return n;
    }
    bool erase(const Key& k) {
        iterator n = find(k);
        if (n) erase(n);
        return n != nullptr;
    }

    /// Calls `f(const node&)` for every node (under the shard's lock).
    template <class F>
    void for_each(F f) const {
        each_node(current(), [&](const node* n) { f(*n); });
    }

    /// Calls `f(node&)` for every node; erases those for which it returns true.
    template <class F>
    void erase_if(F f) {
        each_node(current(), [&](node* n) {
            if (f(*n)) erase(n);
        });
    }

    /// Before any lock-free reader, or under the shard's lock: the table's bucket word lives at
    /// `w` from now on, for a caller that keeps the words of many tables side by side (the
    /// registry's shard directory: one load from a few always-cached lines finds a shard's
    /// buckets, instead of one from each shard's own line). Readers may find the table through
    /// it with find_shared_at(w, ...). `w` must outlive the table's use.
    void publish_to(std::atomic<std::uintptr_t>& w) noexcept {
        w.store(buckets_->load(std::memory_order_relaxed), std::memory_order_release);
        buckets_ = &w;
    }

    /// Before any node or lock-free reader: bucket arrays come from `a` from now on (a large
    /// registry's huge-page arena; it must outlive the table), the current one included.
    void use_arena(huge_arena* a) {
        const bucket_array old = current();
        const bucket_array fresh = make_buckets(old.count(), a);
        free_buckets(old, arena_);
        arena_ = a;
        buckets_->store(fresh.word(), std::memory_order_release);
    }

    /// The bytes of the bucket array that holds `n` keys without growing (0: the smallest).
    static std::size_t bytes_for(std::size_t n) noexcept { return buckets_for(n) * sizeof(link_word); }
    /// Room for `n` keys without growing.
    void reserve(std::size_t n) {
        if (buckets_for(n) > current().count()) grow(buckets_for(n));
    }

    /// Destroys the erased nodes and frees the old bucket arrays no reader can still be on (a
    /// grace period began after they were unlinked). Returns how many nodes it destroyed.
    std::size_t reclaim() noexcept {
        std::size_t done = 0;
        std::erase_if(limbo_, [&](auto& p) {
            if (!rcu.passed(p.second)) return false;
            destroy(p.first);
            return ++done, true;
        });
        std::erase_if(old_buckets_, [this](auto& p) { return rcu.passed(p.second) ? (free_buckets(p.first, arena_), true) : false; });
        return done;
    }
    /// Erased nodes and replaced bucket arrays not yet freed.
    std::size_t retired() const noexcept { return limbo_.size() + old_buckets_.size(); }

private:
    static constexpr std::size_t line = 64;
    struct no_tail {};
    using tail_type = std::conditional_t<std::is_void_v<Tail>, no_tail, Tail>;
    static constexpr std::size_t tail_offset = (sizeof(node) + alignof(tail_type) - 1) / alignof(tail_type) * alignof(tail_type);
    static constexpr std::size_t record = std::is_void_v<Tail> ? sizeof(node) : tail_offset + sizeof(tail_type);
    static constexpr std::size_t record_align = std::max(alignof(node), alignof(tail_type));
    // Node storage (with the tail's room): a line each when that fits in one, else its size
    // rounded to its alignment.
    static constexpr std::size_t stride = record <= line ? line : (record + record_align - 1) / record_align * record_align;
    static_assert(record_align <= line);
    static constexpr std::size_t min_buckets = 16;
    // The keys a table of `buckets` buckets holds before it doubles. Below dense_buckets, half a
    // key per bucket (a load between 1/4 and 1/2): a present key is the first of its chain 79-89%
    // of the time, against 63-79% at a load between 1/2 and 1, and a key further down costs a
    // mispredicted branch and one more dependent miss (docs/benchmarks.md, "Session 16"). From
    // dense_buckets on (16 KiB of buckets: tables of 1,024 keys and more), one key per bucket:
    // there the bucket a hit reads first is itself a miss, and half the array stays in the L2
    // more often than the shorter chains save (W3 at 100,000 keys, 64 tables of 2,048 buckets
    // rather than 4,096: docs/benchmarks.md, "Session 24"). A bucket is 8 bytes.
    static constexpr std::size_t dense_buckets = 2048;
    static constexpr std::size_t capacity_of(std::size_t buckets) noexcept {
        return buckets < dense_buckets ? buckets / 2 : buckets;
    }
    static std::size_t buckets_for(std::size_t keys) noexcept {
        std::size_t n = min_buckets;
        while (capacity_of(n) < keys) n *= 2;
        return n;
    }

    // A bucket array: 2^k heads on their own lines, k ≥ 4. The table's `buckets_` word holds its
    // address with 64 - k in the low 6 bits (the address is line-aligned), so a lookup reads the
    // array's size with its address: one load fewer on its dependent chain, and no header line
    // to miss. The bucket of hash h is bits [64 - split_bits - k, 64 - split_bits) of h.
    // A bucket is a link word as a node's is (its value bits always zero).
    using link_word = std::atomic<std::uintptr_t>;
    static node* pointer(std::uintptr_t w) noexcept { return reinterpret_cast<node*>(w & ~bits_mask); }
    // Points link word `w` at `n`, keeping the word's value bits (writers only).
    static void relink(link_word& w, node* n, std::memory_order o) noexcept {
        w.store(reinterpret_cast<std::uintptr_t>(n) | (w.load(std::memory_order_relaxed) & bits_mask), o);
    }
    struct bucket_array {
        link_word* heads;
        unsigned shift; // 64 - k
        static bucket_array of(std::uintptr_t w) noexcept {
            return {reinterpret_cast<link_word*>(w & ~std::uintptr_t{line - 1}), static_cast<unsigned>(w & (line - 1))};
        }
        std::uintptr_t word() const noexcept { return reinterpret_cast<std::uintptr_t>(heads) | shift; }
        std::size_t count() const noexcept { return std::size_t{1} << (64 - shift); }
        static std::size_t index(std::size_t h, unsigned shift) noexcept { return (h << split_bits) >> shift; }
        std::size_t index(std::size_t h) const noexcept { return index(h, shift); }
    };
    bucket_array current() const noexcept { return bucket_array::of(buckets_->load(std::memory_order_relaxed)); }
    // The link that points at linked node `n`: its bucket's head or its predecessor's next.
    link_word& link_of(node* n) noexcept {
        const bucket_array b = current();
        link_word* at = &b.heads[b.index(hash_of(n->first))];
        while (pointer(at->load(std::memory_order_relaxed)) != n) at = &pointer(at->load(std::memory_order_relaxed))->link;
        return *at;
    }
    template <class... Args>
    node* build(const Key& k, void* mem, Args&&... a) {
        const bool own = mem == nullptr;
        if (own) mem = allocate_node();
        try {
            node* n = new (mem) node(k, std::forward<Args>(a)...);
            owned_ += own;
            return n;
        } catch (...) {
            if (own) free_node(mem);
            throw;
        }
    }

    static bucket_array make_buckets(std::size_t n, huge_arena* arena) { // n: a power of two
        const std::size_t bytes = n * sizeof(link_word);
        void* mem = arena ? arena->allocate(bytes) : ::operator new(bytes, std::align_val_t{line});
        auto* heads = static_cast<link_word*>(mem);
        for (std::size_t i = 0; i < n; ++i) new (&heads[i]) link_word(0);
        return {heads, 64 - static_cast<unsigned>(std::countr_zero(n))};
    }
    static void free_buckets(bucket_array b, huge_arena* arena) noexcept {
        if (arena) arena->deallocate(static_cast<void*>(b.heads), b.count() * sizeof(link_word));
        else ::operator delete(static_cast<void*>(b.heads), std::align_val_t{line});
    }
    // Calls f(node*) for every node linked in `b` (writers only); f may unlink or relink it.
    template <class F>
    static void each_node(bucket_array b, F&& f) {
        for (std::size_t i = 0; i < b.count(); ++i)
            for (node* n = pointer(b.heads[i].load(std::memory_order_relaxed)); n;) {
                node* next = n->next();
                f(n);
                n = next;
            }
    }

    // Relinks every node into a fresh array, then publishes it; the old one waits in old_buckets_.
    bucket_array grow(std::size_t n) {
        old_buckets_.reserve(old_buckets_.size() + 1);
        const bucket_array fresh = make_buckets(n, arena_);
        const bucket_array old = current();
        each_node(old, [&](node* p) {
            auto& head = fresh.heads[fresh.index(hash_of(p->first))];
            relink(p->link, pointer(head.load(std::memory_order_relaxed)), std::memory_order_release);
            relink(head, p, std::memory_order_relaxed); // (fresh is published below)
        });
        buckets_->store(fresh.word(), std::memory_order_release);
        if constexpr (Concurrent) old_buckets_.push_back({old, rcu.stamp()});
        else free_buckets(old, arena_);
        return fresh;
    }

    void retire(node* n) noexcept {
        if constexpr (!Concurrent) return destroy(n);
        const std::uint64_t stamp = rcu.stamp();
        try {
            limbo_.push_back({n, stamp});
        } catch (...) { // out of memory: wait here for the readers instead
            rcu.synchronize();
            destroy(n);
        }
    }
    void destroy(node* n) noexcept {
        const bool external = External{}(std::as_const(n->second));
        n->~node();
        if (!external) free_node(n), --owned_;
    }

    // Free node storage is linked through its first pointer. A new chunk holds an eighth of the
    // nodes in the table's own memory (4 to 256): at most ~1/8 of a line of slack per key, few
    // chunks when big. (With external nodes, few are the table's at a time: the registry's
    // nodes of keys being created, each replaced by one in its pool's allocation.)
    void* allocate_node() {
        if (!free_ && !limbo_.empty()) {
            // Erasures a caller did not follow with a grace period (the registry's replaced
            // creation nodes; its own removals are followed by one): wait for one here once there
            // are a few, so erased nodes are reused instead of piling up in new chunks — in
            // every shard of a registry. (Safe under the shard's lock: read sections take no lock.)
            if (limbo_.size() >= 8) rcu.synchronize();
            reclaim();
        }
        if (!free_) {
            const std::size_t n = std::clamp<std::size_t>(owned_ / 8, 4, 256);
            chunks_.reserve(chunks_.size() + 1);
            auto* c = static_cast<unsigned char*>(::operator new(n * stride, std::align_val_t{line}));
            chunks_.push_back(c);
            for (std::size_t i = n; i-- > 0;) free_node(c + i * stride);
        }
        void* p = free_;
        free_ = *static_cast<void**>(p);
        return p;
    }
    void free_node(void* p) noexcept {
        *static_cast<void**>(p) = free_;
        free_ = p;
    }
    // std::atomic::load is an ordinary inline function, and inside a caller as large as the
    // registry's inlined acquire GCC 12 left it as a call (two per lookup, Release build); the
    // builtin it wraps, on the same object, is never a call.
    template <class V>
    static KEYPOOL_ALWAYS_INLINE V load_acquire(const std::atomic<V>& a) noexcept {
#if defined(__GNUC__)
        static_assert(sizeof(std::atomic<V>) == sizeof(V));
        return __atomic_load_n(reinterpret_cast<const V*>(&a), __ATOMIC_ACQUIRE);
#else
        return a.load(std::memory_order_acquire);
#endif
    }
    // A folded multiply: the 128-bit product with 2^64/φ, its high half xor its low half. The
    // low half is Fibonacci hashing (its top bits take every bit below them into account); the
    // high half brings in the bits of the key above. It sits on every lookup's dependent chain:
    // about 4 cycles, against 11 for MurmurHash3's finaliser, which it replaced. Less even: over
    // key sets shaped like ids (k << m, k × stride, consecutive) a hit visits up to 0.62 extra
    // nodes on average, against 0.16 for MurmurHash3 and 0.15 for random keys — and against 2.7
    // for the 64-bit product with the key's halves folded first (keys k << 50), the first version
    // of session 18 (docs/benchmarks.md, "Session 18"). Without a 128-bit type: two rounds of
    // xor-shift and multiply.
    static std::size_t mix(std::uint64_t h) noexcept {
#if defined(__SIZEOF_INT128__)
        __extension__ using wide = unsigned __int128;
        const wide p = static_cast<wide>(h) * 0x9e3779b97f4a7c15ULL;
        return static_cast<std::size_t>(static_cast<std::uint64_t>(p >> 64) ^ static_cast<std::uint64_t>(p));
#else
        h ^= h >> 32;
        h *= 0x9e3779b97f4a7c15ULL;
        h ^= h >> 32;
        return static_cast<std::size_t>(h * 0x9e3779b97f4a7c15ULL);
#endif
    }

    std::atomic<std::uintptr_t> own_word_{0};                // bucket_array::word(), until publish_to
    std::atomic<std::uintptr_t>* buckets_ = &own_word_; // where the word is
    std::size_t size_ = 0;
    std::size_t owned_ = 0; // nodes in the table's own memory, linked or waiting in limbo_
    std::vector<std::pair<node*, std::uint64_t>> limbo_;             // erased, destroyed after a grace period
    std::vector<std::pair<bucket_array, std::uint64_t>> old_buckets_; // replaced, freed after one
    std::vector<unsigned char*> chunks_;
    void* free_ = nullptr;
    huge_arena* arena_ = nullptr; // where bucket arrays come from (use_arena), else operator new
};

} // namespace keypool::detail
