// SPDX-License-Identifier: BSL-1.0
// detail::key_table, the registry shard's hash table: lookups, growth without moving nodes,
// erasure, and keys whose integer hashes differ only in their high bits.
#include <cstdint>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <keypool/detail/key_table.hpp>

using keypool::detail::key_table;

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

TEST_CASE("key_table: integer keys that differ only in their high bits are found (the hash is mixed)") {
    // boost::hash of an integer is the integer: unmixed, these would all share bucket 0 of a
    // power-of-two table (found, but one long list).
    key_table<std::uint64_t, int> t;
    t.reserve(1024);
    for (std::uint64_t i = 0; i < 1000; ++i) t.emplace(i << 40)->second = static_cast<int>(i);
    for (std::uint64_t i = 0; i < 1000; ++i) {
        auto n = t.find(i << 40);
        REQUIRE(n != t.end());
        CHECK(n->second == static_cast<int>(i));
    }
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

} // TEST_SUITE
