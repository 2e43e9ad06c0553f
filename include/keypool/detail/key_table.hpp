// SPDX-License-Identifier: BSL-1.0
// key_table: the registry shard's hash table, key -> value, one node per key that never moves.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <new>
#include <utility>
#include <vector>

#include <boost/container_hash/hash.hpp>
#include <boost/intrusive/parent_from_member.hpp>
#include <boost/intrusive/unordered_set.hpp>

namespace keypool::detail {

/// A hash map from Key to T for one registry shard, on Boost.Intrusive's unordered_set:
///
/// - a bucket is the head of its own list, so a lookup reads the bucket, then the node (two
///   dependent cache misses). std::unordered_map and Boost 1.74's unordered_map keep one list
///   through all nodes and point each bucket at the node *before* its first: bucket, previous
///   node, node (three), on the path of every acquire once the keys outgrow the cache;
/// - nodes never move (entries are linked into the eviction ring and leases point at their keys);
/// - nodes come from the table's own chunks, one cache line each when a node fits in one (an
///   8-byte key and the registry's 48-byte entry: 64 bytes), so a lookup's node is one miss, not
///   two for the three nodes in four that a 16-byte aligned 80-byte node straddled; freed nodes
///   are reused, chunks are returned when the table goes;
/// - no stored hash: the chain compares keys (for an integer key as cheap as a hash), a rehash
///   hashes each key again (under the shard lock, ≈ 1e6 / 64 keys per shard at most).
///
/// Power-of-two buckets, indexed by a fully mixed hash (boost::hash of an integer is the integer
/// itself). It doubles its buckets when it holds more nodes than buckets; reserve() sizes it up
/// front so a growing registry does not rehash under the shard lock. Not thread-safe: the shard's
/// lock guards it. An iterator is a node pointer (`->first`, `->second`); end() is nullptr.
template <class Key, class T, class Hash = boost::hash<Key>, class Eq = std::equal_to<Key>>
class key_table {
    using hook = boost::intrusive::unordered_set_base_hook<boost::intrusive::store_hash<false>>;

public:
    struct node : hook, std::pair<const Key, T> {
        explicit node(const Key& k) : std::pair<const Key, T>(std::piecewise_construct, std::forward_as_tuple(k), std::tuple<>{}) {}
    };
    using iterator = node*;

    /// The node whose value is `v` (a value that lives in this table's node).
    static node& node_of(T& v) noexcept {
        return static_cast<node&>(*boost::intrusive::get_parent_from_member(&v, &std::pair<const Key, T>::second));
    }

    key_table() : buckets_(new bucket_type[min_buckets]), set_(bucket_traits(buckets_.get(), min_buckets)) {}
    ~key_table() {
        set_.clear_and_dispose(disposer{this});
        for (unsigned char* c : chunks_) ::operator delete(c, std::align_val_t{line});
    }
    key_table(const key_table&) = delete;
    key_table& operator=(const key_table&) = delete;

    std::size_t size() const noexcept { return set_.size(); }
    iterator end() const noexcept { return nullptr; }

    iterator find(const Key& k) noexcept(noexcept(Hash{}(k)) && noexcept(Eq{}(k, k))) {
        auto it = set_.find(k, hasher{}, key_equal{});
        return it == set_.end() ? nullptr : &*it;
    }

    /// Inserts a node for `k` with a value-initialised T; `k` must not be in the table.
    iterator emplace(const Key& k) {
        if (set_.size() >= set_.bucket_count()) grow(set_.bucket_count() * 2);
        void* mem = allocate_node();
        node* n;
        try {
            n = new (mem) node(k);
        } catch (...) {
            free_node(mem);
            throw;
        }
        set_.insert(*n);
        return n;
    }

    void erase(iterator n) noexcept { set_.erase_and_dispose(set_.iterator_to(*n), disposer{this}); }
    bool erase(const Key& k) {
        iterator n = find(k);
        if (n) erase(n);
        return n != nullptr;
    }

    /// Calls `f(node&)` for every node; erases (and destroys) those for which it returns true.
    template <class F>
    void erase_if(F f) {
        for (auto it = set_.begin(); it != set_.end();) {
            node& n = *it++;
            if (f(n)) erase(&n);
        }
    }

    /// Room for `n` keys without growing.
    void reserve(std::size_t n) {
        if (n > set_.bucket_count()) grow(std::bit_ceil(n));
    }

private:
    static constexpr std::size_t line = 64;
    // Node storage: a line each when a node fits in one, else its size rounded to its alignment.
    static constexpr std::size_t stride =
        sizeof(node) <= line ? line : (sizeof(node) + alignof(node) - 1) / alignof(node) * alignof(node);
    static_assert(alignof(node) <= line);

    struct disposer {
        key_table* t;
        void operator()(node* n) const noexcept {
            n->~node();
            t->free_node(n);
        }
    };

    // Free node storage is linked through its first pointer. A new chunk holds an eighth of the
    // table's nodes (4 to 256): at most ~1/8 of a line of slack per key, few chunks when big.
    void* allocate_node() {
        if (!free_) {
            const std::size_t n = std::clamp<std::size_t>(set_.size() / 8, 4, 256);
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
    // Bits of every byte of the key's hash reach the bucket index (MurmurHash3's finaliser).
    struct hasher {
        std::size_t operator()(const Key& k) const noexcept(noexcept(Hash{}(k))) { return mix(Hash{}(k)); }
        std::size_t operator()(const node& n) const noexcept(noexcept(Hash{}(n.first))) { return mix(Hash{}(n.first)); }
        static std::size_t mix(std::uint64_t h) noexcept {
            h ^= h >> 33;
            h *= 0xff51afd7ed558ccdULL;
            h ^= h >> 33;
            h *= 0xc4ceb9fe1a85ec53ULL;
            h ^= h >> 33;
            return static_cast<std::size_t>(h);
        }
    };
    struct key_equal {
        bool operator()(const Key& a, const node& b) const { return Eq{}(a, b.first); }
        bool operator()(const node& a, const node& b) const { return Eq{}(a.first, b.first); }
    };
    using set_type = boost::intrusive::unordered_set<node, boost::intrusive::hash<hasher>, boost::intrusive::equal<key_equal>,
                                                     boost::intrusive::power_2_buckets<true>,
                                                     boost::intrusive::constant_time_size<true>>;
    using bucket_type = typename set_type::bucket_type;
    using bucket_traits = typename set_type::bucket_traits;
    static constexpr std::size_t min_buckets = 16;

    void grow(std::size_t buckets) {
        std::unique_ptr<bucket_type[]> fresh(new bucket_type[buckets]);
        set_.rehash(bucket_traits(fresh.get(), buckets)); // relinks the nodes: no node moves
        buckets_ = std::move(fresh);
    }

    std::unique_ptr<bucket_type[]> buckets_;
    set_type set_;
    std::vector<unsigned char*> chunks_;
    void* free_ = nullptr;
};

} // namespace keypool::detail
