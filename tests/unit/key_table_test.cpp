// SPDX-License-Identifier: BSL-1.0
// detail::key_table, the registry shard's hash table: lookups, growth without moving nodes,
// erasure, keys whose integer hashes differ only in their high bits, the hash's top bits (the
// registry's shard), the table's own node storage (one cache line per node that fits, freed nodes
// reused, node_of, room for the caller's Tail), values built from emplace's arguments, the value
// bits of each node's link word, and what a lock-free reader relies on: an erased node stays
// intact until a grace period has passed.
#include <cstdint>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <boost/container_hash/hash.hpp>
#include <doctest/doctest.h>
#include <keypool/detail/key_table.hpp>

using keypool::detail::key_table;

namespace {
/// A key whose copy throws for negative values.
struct picky {
    int v;
    picky(int x) : v(x) {}
    picky(const picky& o) : v(o.v) {
        if (v < 0) throw std::runtime_error("no copies of negative keys");
    }
    bool operator==(const picky& o) const { return v == o.v; }
    friend std::size_t hash_value(const picky& p) { return static_cast<std::size_t>(p.v); }
};
} // namespace

TEST_SUITE("key_table") {

TEST_CASE("key_table: find, emplace and erase by key and by node") {
    key_table<std::string, int> t;
    CHECK(t.find("a") == t.end());
    auto a = t.emplace("a");
    a->second = 1;
    t.emplace("b")->second = 2;
    CHECK(t.size() == 2);
    REQUIRE(t.find("a") == a);
    CHECK(t.find("a")->first == "a");
    CHECK(t.find("b")->second == 2);
    CHECK(t.erase(std::string("a")));
    CHECK_FALSE(t.erase(std::string("a")));
    CHECK(t.find("a") == t.end());
    t.erase(t.find("b"));
    CHECK(t.size() == 0);
}

TEST_CASE("key_table: for_each visits every linked node once, erased ones not") {
    key_table<int, int> t;
    for (int i = 0; i < 100; ++i) t.emplace(i)->second = i * 2;
    t.erase(7);
    std::set<int> seen;
    const auto& ct = t;
    ct.for_each([&](const auto& n) {
        CHECK(n.second == n.first * 2);
        CHECK(seen.insert(n.first).second);
    });
    CHECK(seen.size() == 99);
    CHECK_FALSE(seen.contains(7));
}

TEST_CASE("key_table: growing past its buckets keeps every node where it was") {
    key_table<std::uint64_t, std::uint64_t> t;
    std::vector<decltype(t)::iterator> nodes;
    for (std::uint64_t k = 0; k < 5000; ++k) {
        auto n = t.emplace(k);
        n->second = k * 3;
        nodes.push_back(n);
    }
    for (std::uint64_t k = 0; k < 5000; ++k) {
        REQUIRE(t.find(k) == nodes[k]); // the same node: entries are linked elsewhere by address
        CHECK(nodes[k]->second == k * 3);
    }
    CHECK(t.find(5000) == t.end());
}

TEST_CASE("key_table: two buckets per node up to 1,024 nodes, one from there, growing and reserved") {
    key_table<std::uint64_t, int> t;
    for (std::uint64_t k = 0; k < 3000; ++k) {
        t.emplace(k);
        if (t.size() <= 512) REQUIRE(t.bucket_count() >= 2 * t.size()); // short chains while small
        REQUIRE(t.bucket_count() >= t.size());
        if (t.size() == 512) CHECK(t.bucket_count() == 1024);
        if (t.size() == 513) CHECK(t.bucket_count() == 2048); // from here one key per bucket
        if (t.size() == 2048) CHECK(t.bucket_count() == 2048);
    }
    CHECK(t.bucket_count() == 4096); // doubled when it held 2048 nodes, and not again
    key_table<std::uint64_t, int> r;
    r.reserve(3000);
    CHECK(r.bucket_count() == 4096);
    for (std::uint64_t k = 0; k < 3000; ++k) r.emplace(k);
    CHECK(r.bucket_count() == 4096); // reserved: no rehash on the way
    key_table<std::uint64_t, int> s;
    s.reserve(300);
    CHECK(s.bucket_count() == 1024); // a small table reserved: two buckets a key
    CHECK(key_table<std::uint64_t, int>::bytes_for(3000) == 4096 * sizeof(void*));
    CHECK(key_table<std::uint64_t, int>::bytes_for(300) == 1024 * sizeof(void*));
}

TEST_CASE("key_table: integer keys that differ only in their high bits are found, and spread over the buckets") {
    // boost::hash of an integer is the integer: unmixed, these would all share bucket 0 of a
    // power-of-two table (found, but one long list). A 64-bit multiplicative hash alone would
    // still put keys differing only above the bucket bits in one bucket: the mix brings the
    // key's high bits down (the high half of a 128-bit product).
    using table = key_table<std::uint64_t, int>;
    for (unsigned shift : {32u, 40u, 52u, 56u}) {
        CAPTURE(shift);
        table t;
        t.reserve(1024);
        std::vector<int> per_bucket(t.bucket_count());
        for (std::uint64_t i = 0; i < 256; ++i) {
            t.emplace(i << shift)->second = static_cast<int>(i);
            ++per_bucket[table::bucket_of(table::hash_of(i << shift), t.bucket_count())];
        }
        for (std::uint64_t i = 0; i < 256; ++i) {
            auto n = t.find(i << shift);
            REQUIRE(n != t.end());
            CHECK(n->second == static_cast<int>(i));
        }
        int used = 0;
        for (int n : per_bucket) used += n != 0;
        CHECK(used > 192); // 256 keys over 2048 buckets: ~241 buckets if random
    }
}

TEST_CASE("key_table: hash_of spreads consecutive keys over its top 12 bits, which a registry's shards use") {
    // The registry picks a key's shard by the top 12 bits of hash_of and its bucket by the bits
    // below (bucket_of): consecutive integer keys (tenant ids) must reach every one of 64 shards,
    // evenly, and keys of one shard must still spread over its buckets.
    std::vector<int> per_shard(64), per_bucket(1024);
    for (std::uint64_t k = 0; k < 64 * 256; ++k) {
        const std::size_t h = key_table<std::uint64_t, int>::hash_of(k);
        const std::size_t shard = (h >> 52) & 63;
        ++per_shard[shard];
        if (shard == 0) ++per_bucket[key_table<std::uint64_t, int>::bucket_of(h, 1024)];
    }
    for (int n : per_shard) {
        CHECK(n > 128); // 256 expected
        CHECK(n < 384);
    }
    int used = 0;
    for (int n : per_bucket) used += n != 0;
    CHECK(used > per_shard[0] / 2); // ~ 1024 * (1 - e^(-1/4)) of them for 256 keys
}

TEST_CASE("key_table: a table whose bucket word lives outside it (publish_to) grows through that word") {
    // The registry keeps its shards' words side by side and looks keys up through them.
    using table = key_table<std::uint64_t, int>;
    std::atomic<std::uintptr_t> word{0}; // (outlives the table, which reads it until destroyed)
    table t;
    t.emplace(0)->second = 0;
    t.publish_to(word);
    REQUIRE(word.load() != 0);
    CHECK(table::find_shared_at(word, 0, table::hash_of(0)) == t.find(0));
    const std::uintptr_t before = word.load();
    for (std::uint64_t k = 1; k < 1000; ++k) t.emplace(k)->second = static_cast<int>(k);
    CHECK(word.load() != before); // grown: the new array is published there
    CHECK(t.bucket_count() >= 2000);
    for (std::uint64_t k = 0; k < 1000; ++k) {
        auto n = table::find_shared_at(word, k, table::hash_of(k));
        REQUIRE(n != nullptr);
        CHECK(n->second == static_cast<int>(k));
        CHECK(n == t.find(k));
    }
    CHECK(table::find_shared_at(word, 1000, table::hash_of(1000)) == nullptr);
}

TEST_CASE("key_table: bucket arrays from an arena (use_arena) grow there and go back to it") {
    // A large registry's tables take their bucket arrays from its huge-page arena.
    using keypool::detail::huge_arena;
    if (!huge_arena::supported()) return;
    using table = key_table<std::uint64_t, int>;
    huge_arena arena;
    {
        table t;
        t.use_arena(&arena);
        CHECK(arena.mapped_bytes() == huge_arena::chunk_bytes); // the current array moved there
        for (std::uint64_t k = 0; k < 5000; ++k) t.emplace(k)->second = static_cast<int>(k);
        CHECK(t.bucket_count() == 8192);
        for (std::uint64_t k = 0; k < 5000; ++k) REQUIRE((t.find(k) != t.end() && t.find(k)->second == static_cast<int>(k)));
        keypool::detail::rcu.synchronize();
        t.reclaim(); // the outgrown arrays, back in the arena's free lists
        CHECK(t.retired() == 0);
        // 8,192 buckets (64 KiB) and every smaller array in one chunk: nothing mapped beyond it.
        CHECK(arena.mapped_bytes() == huge_arena::chunk_bytes);
    } // destroyed: its array goes back to the arena, which is still alive
    CHECK(arena.mapped_bytes() == huge_arena::chunk_bytes);
}

TEST_CASE("key_table: erase_if removes exactly the nodes it is asked to, while iterating") {
    key_table<int, int> t;
    for (int k = 0; k < 100; ++k) t.emplace(k)->second = k;
    int seen = 0;
    t.erase_if([&](auto& n) {
        ++seen;
        return n.first % 2 == 0;
    });
    CHECK(seen == 100);
    CHECK(t.size() == 50);
    for (int k = 0; k < 100; ++k) CHECK((t.find(k) != t.end()) == (k % 2 == 1));
}


TEST_CASE("key_table: a node that fits in a cache line gets one of its own, and freed nodes are reused") {
    struct value {
        std::uint64_t a[5] = {};
    }; // 8-byte key + hook + 40 bytes: 64
    key_table<std::uint64_t, value> t;
    std::vector<std::uintptr_t> at;
    for (std::uint64_t k = 0; k < 300; ++k) {
        auto n = t.emplace(k);
        n->second.a[4] = k;
        at.push_back(reinterpret_cast<std::uintptr_t>(n));
    }
    const std::set<std::uintptr_t> distinct(at.begin(), at.end());
    CHECK(distinct.size() == at.size());
    for (std::uintptr_t a : at) CHECK(a % 64 == 0);
    // Erased nodes' storage comes back for new keys once a grace period has passed (no new chunk
    // while some is free).
    std::set<std::uintptr_t> freed;
    for (std::uint64_t k = 0; k < 300; k += 3) {
        freed.insert(reinterpret_cast<std::uintptr_t>(t.find(k)));
        CHECK(t.erase(k));
    }
    keypool::detail::rcu.synchronize();
    CHECK(t.reclaim() == 100);
    for (std::uint64_t k = 1000; k < 1100; ++k) CHECK(freed.count(reinterpret_cast<std::uintptr_t>(t.emplace(k))) == 1);
    for (std::uint64_t k = 0; k < 300; ++k) {
        if (k % 3 == 0) {
            CHECK(t.find(k) == t.end());
        } else {
            REQUIRE(t.find(k) != t.end());
            CHECK(t.find(k)->second.a[4] == k);
        }
    }
    CHECK(t.size() == 300);
}

TEST_CASE("key_table: node_of finds the node from its value") {
    key_table<std::string, int> t;
    auto n = t.emplace("tenant-with-a-name-longer-than-sso");
    n->second = 7;
    CHECK(&key_table<std::string, int>::node_of(n->second) == n);
    CHECK(key_table<std::string, int>::node_of(t.find("tenant-with-a-name-longer-than-sso")->second).first ==
          "tenant-with-a-name-longer-than-sso");
}

TEST_CASE("key_table: a value is built from emplace's arguments, and each own node has room for its Tail right after it") {
    // The registry keeps the part of its entry a hit does not read in that room (its `cold`).
    struct tail {
        std::uint64_t words[5];
    };
    using table = key_table<std::uint64_t, std::pair<int, int>, boost::hash<std::uint64_t>, std::equal_to<std::uint64_t>,
                            true, keypool::detail::never_external, tail>;
    table t;
    std::vector<table::node*> nodes;
    for (std::uint64_t k = 0; k < 200; ++k) nodes.push_back(t.emplace(k, nullptr, static_cast<int>(k), -static_cast<int>(k)));
    for (std::uint64_t k = 0; k < 200; ++k) {
        table::node* n = nodes[k];
        CHECK(n->second == std::pair<int, int>(static_cast<int>(k), -static_cast<int>(k)));
        auto* room = static_cast<unsigned char*>(table::tail_of(n));
        CHECK(room >= reinterpret_cast<unsigned char*>(n) + sizeof(table::node));
        CHECK(reinterpret_cast<std::uintptr_t>(room) % alignof(tail) == 0);
        auto* mine = ::new (room) tail{};
        for (auto& w : mine->words) w = ~k;
    }
    // No node's room overlaps another node: every key and value is intact after all were written.
    for (std::uint64_t k = 0; k < 200; ++k) {
        CHECK(t.find(k) == nodes[k]);
        CHECK(nodes[k]->second.first == static_cast<int>(k));
        CHECK(static_cast<tail*>(table::tail_of(nodes[k]))->words[4] == ~k);
    }
    auto r = t.replace(nodes[3], nullptr, 30, 31); // replace() forwards too
    CHECK(t.find(3) == r);
    CHECK(r->second == std::pair<int, int>(30, 31));
}

TEST_CASE("key_table: each node's value bits survive every relink, and an empty value takes no room") {
    // The registry keeps its entry's state in them (a lock-free lookup reads them with the link):
    // inserting before a node, erasing or replacing its neighbours and growing the table rewrite
    // the link words around it, never its bits.
    using table = key_table<std::uint64_t, int>;
    table t;
    const std::uint64_t n = 3000; // several doublings, chains of more than one node on the way
    std::vector<table::node*> nodes;
    for (std::uint64_t k = 0; k < n; ++k) {
        nodes.push_back(t.emplace(k));
        CHECK(nodes.back()->bits() == 0);
        nodes.back()->set_bits(k % 8);
    }
    for (std::uint64_t k = 0; k < n; k += 3) t.erase(nodes[k]);
    std::vector<table::node*> fresh(n, nullptr);
    for (std::uint64_t k = 1; k < n; k += 3) {
        fresh[k] = t.replace(nodes[k], nullptr, static_cast<int>(k));
        CHECK(fresh[k]->bits() == 0); // a new node starts with none
        fresh[k]->set_bits(7 - k % 8);
    }
    for (std::uint64_t k = n; k < 2 * n; ++k) t.emplace(k); // grows again
    for (std::uint64_t k = 0; k < n; ++k) {
        auto* f = t.find(k);
        if (k % 3 == 0) {
            CHECK(f == nullptr);
        } else if (k % 3 == 1) {
            REQUIRE(f == fresh[k]);
            CHECK(f->bits() == 7 - k % 8);
            CHECK(f->second == static_cast<int>(k));
        } else {
            REQUIRE(f == nodes[k]);
            CHECK(f->bits() == k % 8);
        }
    }
    struct empty {};
    CHECK(sizeof(key_table<std::uint64_t, empty>::node) == 16); // link word and key
}

TEST_CASE("key_table: a key whose constructor throws leaves the table as it was") {
    key_table<picky, int> t;
    for (int k = 0; k < 10; ++k) t.emplace(picky{k})->second = k;
    CHECK_THROWS_AS(t.emplace(picky{-1}), std::runtime_error);
    CHECK(t.size() == 10);
    for (int k = 10; k < 20; ++k) t.emplace(picky{k})->second = k; // the storage came back
    for (int k = 0; k < 20; ++k) CHECK(t.find(picky{k})->second == k);
}

TEST_CASE("key_table: an erased node stays intact, key, value and link, until a grace period has passed") {
    using keypool::detail::rcu;
    key_table<std::string, int> t;
    for (int k = 0; k < 8; ++k) t.emplace("tenant-" + std::to_string(k) + "-with-a-long-name")->second = k;
    auto n = t.find("tenant-3-with-a-long-name");
    REQUIRE(n != t.end());
    auto* after = n->next();
    auto reader = std::make_unique<keypool::detail::rcu_section>(); // a lookup on this thread
    CHECK(t.find_shared("tenant-3-with-a-long-name") == n);
    t.erase(n);
    CHECK(t.find_shared("tenant-3-with-a-long-name") == t.end());
    CHECK(t.size() == 7);
    keypool::detail::rcu_domain::grace_period gp(rcu);
    CHECK_FALSE(gp.done()); // the reader may still be on the node
    CHECK(t.reclaim() == 0);
    CHECK(t.retired() == 1);
    // What the reader may still read is untouched, and a new key does not get its storage.
    CHECK(n->first == "tenant-3-with-a-long-name");
    CHECK(n->second == 3);
    CHECK(n->next() == after);
    for (int k = 100; k < 200; ++k) CHECK(t.emplace("k" + std::to_string(k)) != n);
    reader.reset(); // the reader leaves
    CHECK(gp.done());
    CHECK(t.reclaim() == 1);
    // The bucket arrays the 100 new keys outgrew after the grace period began: 16, 32, 64 and 128
    // buckets (the table keeps at least two buckets per node).
    CHECK(t.retired() == 4);
    rcu.synchronize();
    CHECK(t.reclaim() == 0);
    CHECK(t.retired() == 0);
    CHECK(t.find("tenant-3-with-a-long-name") == t.end());
    CHECK(t.find("tenant-4-with-a-long-name")->second == 4);
}

TEST_CASE("key_table: a node in the caller's memory is linked, replaced and destroyed, never freed by the table") {
    using keypool::detail::rcu;
    struct value {
        bool external = false;
        int v = 0;
        std::shared_ptr<int> alive = std::make_shared<int>(0); // its count tells whether the node was destroyed
    };
    struct is_external {
        bool operator()(const value& x) const noexcept { return x.external; }
    };
    using table = key_table<std::string, value, boost::hash<std::string>, std::equal_to<std::string>, true, is_external>;
    table t;
    for (int k = 0; k < 8; ++k) t.emplace("k" + std::to_string(k))->second.v = k;
    // The caller's memory, as the registry's pool allocations: freed by the caller, once.
    struct alignas(table::node) storage {
        unsigned char bytes[sizeof(table::node)];
    };
    auto mem = std::make_unique<storage>();
    auto old = t.find("k3");
    std::weak_ptr<int> old_alive = old->second.alive;
    auto n = t.replace(old, mem.get());
    n->second.external = true;
    n->second.v = 33;
    CHECK(static_cast<void*>(n) == static_cast<void*>(mem.get()));
    CHECK(n->first == "k3");
    CHECK(t.size() == 8);
    CHECK(t.find_shared("k3") == n);
    CHECK(t.find("k3")->second.v == 33);
    for (int k = 0; k < 8; ++k) CHECK(t.find("k" + std::to_string(k)) != t.end()); // the chain is whole
    CHECK(t.retired() == 1); // the replaced node waits for a grace period
    rcu.synchronize();
    CHECK(t.reclaim() == 1);
    CHECK(old_alive.expired());
    // Erased and reclaimed: destroyed in place; the memory stays the caller's.
    std::weak_ptr<int> alive = n->second.alive;
    t.erase(n);
    rcu.synchronize();
    CHECK(t.reclaim() == 1);
    CHECK(alive.expired());
    // A new node never takes the caller's memory, and one built there back in the table's.
    for (int k = 100; k < 300; ++k) CHECK(static_cast<void*>(t.emplace("k" + std::to_string(k))) != mem.get());
    auto again = t.emplace("k3", mem.get());
    again->second.external = true;
    auto back = t.replace(again, nullptr);
    CHECK(static_cast<void*>(back) != mem.get());
    CHECK(t.find("k3") == back);
    rcu.synchronize();
    CHECK(t.reclaim() == 1);
    // (ASan: had the table freed or reused `mem`, the unique_ptr's delete would be a double free.)
}

TEST_CASE("key_table: a lookup without the lock while the table grows finds every key already in it") {
    // One writer grows the table (rehashes relink every node) while a reader looks keys up
    // inside read sections: a key inserted before the reader started is found, or (rarely,
    // while its node moves) reported missing, never confused with another; under
    // ThreadSanitizer this also checks that readers and the writer do not race.
    key_table<std::uint64_t, std::uint64_t> t;
    std::mutex m; // the shard lock
    {
        std::lock_guard lk(m);
        for (std::uint64_t k = 0; k < 64; ++k) t.emplace(k)->second = k * 7;
    }
    std::atomic<bool> stop{false}, started{false};
    std::uint64_t found = 0, wrong = 0;
    std::thread reader([&] {
        for (std::uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
            {
                keypool::detail::rcu_section s;
                const std::uint64_t k = i % 64;
                if (auto n = t.find_shared(k)) {
                    ++found;
                    if (n->first != k || n->second != k * 7) ++wrong;
                }
            }
            started.store(true, std::memory_order_release);
        }
    });
    while (!started.load(std::memory_order_acquire)) std::this_thread::yield(); // one lookup before any change
    for (std::uint64_t k = 64; k < 20000; ++k) {
        std::lock_guard lk(m);
        t.emplace(k)->second = k * 7;
        if (k % 3 == 0) {
            t.erase(k);
            t.reclaim();
        }
    }
    keypool::detail::rcu.synchronize();
    {
        std::lock_guard lk(m);
        t.reclaim();
        CHECK(t.retired() == 0);
    }
    stop = true;
    reader.join();
    CHECK(wrong == 0);
    CHECK(found > 0);
}
} // TEST_SUITE
