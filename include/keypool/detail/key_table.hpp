// SPDX-License-Identifier: BSL-1.0
// key_table: the registry shard's hash table, key -> value, one node per key that never moves.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <tuple>
#include <utility>

#include <boost/container_hash/hash.hpp>
#include <boost/intrusive/unordered_set.hpp>

namespace keypool::detail {

/// A hash map from Key to T for one registry shard, on Boost.Intrusive's unordered_set:
///
/// - a bucket is the head of its own list, so a lookup reads the bucket, then the node (two
///   dependent cache misses). std::unordered_map and Boost 1.74's unordered_map keep one list
///   through all nodes and point each bucket at the node *before* its first: bucket, previous
///   node, node (three), on the path of every acquire once the keys outgrow the cache;
/// - the key's hash is stored in its node (compared before the key; a rehash reads no key);
/// - nodes never move (entries are linked into the eviction ring and leases point at their keys).
///
/// Power-of-two buckets, indexed by a fully mixed hash (boost::hash of an integer is the integer
/// itself). It doubles its buckets when it holds more nodes than buckets; reserve() sizes it up
/// front so a growing registry does not rehash under the shard lock. Not thread-safe: the shard's
/// lock guards it. An iterator is a node pointer (`->first`, `->second`); end() is nullptr.
template <class Key, class T, class Hash = boost::hash<Key>, class Eq = std::equal_to<Key>>
class key_table {
    using hook = boost::intrusive::unordered_set_base_hook<boost::intrusive::store_hash<true>>;

public:
    struct node : hook, std::pair<const Key, T> {
        explicit node(const Key& k) : std::pair<const Key, T>(std::piecewise_construct, std::forward_as_tuple(k), std::tuple<>{}) {}
    };
    using iterator = node*;

    key_table() : buckets_(new bucket_type[min_buckets]), set_(bucket_traits(buckets_.get(), min_buckets)) {}
    ~key_table() { set_.clear_and_dispose(deleter{}); }
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
        auto n = std::make_unique<node>(k);
        set_.insert(*n);
        return n.release();
    }

    void erase(iterator n) noexcept { set_.erase_and_dispose(set_.iterator_to(*n), deleter{}); }
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
    struct deleter {
        void operator()(node* n) const noexcept { delete n; }
    };
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
};

} // namespace keypool::detail
