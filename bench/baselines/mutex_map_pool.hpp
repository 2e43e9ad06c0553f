// SPDX-License-Identifier: BSL-1.0
// The W3 baseline (bench/registry_bench.cpp, bench/profile/w3_cycles.cpp): what a careful
// engineer writes without a library for a keyed pool. One global std::mutex around a
// std::unordered_map of per-key idle vectors; every key is pre-filled with two "connections"
// (pointers into a shared array of 64 ints). acquire pops the back, release pushes it back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace keypool_bench {

class mutex_map_pool {
public:
    using key_type = std::uint64_t;
    explicit mutex_map_pool(std::size_t keys) {
        for (key_type k = 0; k < keys; ++k) map_[k] = {&conns_[k % conns_.size()], &conns_[(k + 1) % conns_.size()]};
    }
    /// The same for the keys given (the k-th key gets what key k gets above).
    explicit mutex_map_pool(const std::vector<key_type>& keys) {
        for (std::size_t k = 0; k < keys.size(); ++k)
            map_[keys[k]] = {&conns_[k % conns_.size()], &conns_[(k + 1) % conns_.size()]};
    }
    int* acquire(key_type k) {
        std::lock_guard lk(m_);
        auto& v = map_.find(k)->second;
        if (v.empty()) return nullptr;
        int* c = v.back();
        v.pop_back();
        return c;
    }
    void release(key_type k, int* c) {
        std::lock_guard lk(m_);
        map_.find(k)->second.push_back(c);
    }

private:
    std::mutex m_;
    std::unordered_map<key_type, std::vector<int*>> map_;
    std::vector<int> conns_ = std::vector<int>(64);
};

} // namespace keypool_bench
