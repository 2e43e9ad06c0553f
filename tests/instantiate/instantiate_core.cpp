// SPDX-License-Identifier: BSL-1.0
// Every public class template, explicitly instantiated over every shipped policy. An explicit
// instantiation compiles every member whose constraints hold, so a member that only breaks under
// one policy (say, sync::none with reset_at::background) fails this build, not a user's.
// Built as an object library in the test build (tests/CMakeLists.txt); nothing runs.
#include <keypool/keypool.hpp>

#include <cstdint>
#include <string>

namespace kp = keypool;
using fake = kp::fake::connector;

// ---- basic_pool: clock x sync x reset, and the observer axis ---------------------------------
#define KEYPOOL_POOL(clock, sync, reset)                                                          \
    template class kp::basic_pool<fake, kp::with_clock<clock>, kp::with_sync<sync>,              \
                                  kp::with_reset<reset>>;                                         \
    template class kp::basic_lease<kp::detail::pool_core<fake, clock, sync, kp::null_observer, reset>>;
#define KEYPOOL_POOL_RESETS(clock, sync)                                                          \
    KEYPOOL_POOL(clock, sync, kp::reset_at::checkout)                                             \
    KEYPOOL_POOL(clock, sync, kp::reset_at::release)                                              \
    KEYPOOL_POOL(clock, sync, kp::reset_at::background)
KEYPOOL_POOL_RESETS(kp::steady_clock, kp::sync::mutex)
KEYPOOL_POOL_RESETS(kp::steady_clock, kp::sync::none)
KEYPOOL_POOL_RESETS(kp::manual_clock, kp::sync::mutex)
KEYPOOL_POOL_RESETS(kp::manual_clock, kp::sync::none)

namespace {
/// An observer with every hook the pool and the registry call, so each call site compiles.
struct all_hooks {
    void on_wait(std::chrono::nanoseconds, std::error_code) {}
    void on_connect(std::chrono::nanoseconds, std::error_code) {}
    void on_close(kp::close_reason) {}
    void on_leak(const kp::lease_report&) {}
    template <class Key>
    void on_pool_created(const Key&) {}
    template <class Key, class Reason>
    void on_pool_evicted(const Key&, Reason) {}
};
} // namespace
template class kp::basic_pool<fake, kp::with_observer<all_hooks>>;
template class kp::basic_pool<fake, kp::with_observer<kp::observers<all_hooks, kp::null_observer>>>;

// ---- basic_registry: every eviction policy and combination x flight x sync ---------------------
using string_key = std::string;
using by_identity = kp::resolve::identity<std::string>;
using by_role = kp::resolve::role_switch<std::string>;
using by_function = kp::resolve::function<std::string, kp::no_setup, std::uint64_t>;

using evict_all = kp::evict::all_of<kp::evict::lru, kp::evict::idle, kp::evict::size>;

#define KEYPOOL_REGISTRY(key, resolver, evict, flight, sync)                                      \
    template class kp::basic_registry<key, resolver, fake, kp::with_eviction<evict>,              \
                                      kp::with_flight<flight>, kp::with_sync<sync>>;
#define KEYPOOL_REGISTRY_EVICTIONS(key, resolver, flight, sync)                                   \
    KEYPOOL_REGISTRY(key, resolver, kp::evict::none, flight, sync)                                \
    KEYPOOL_REGISTRY(key, resolver, kp::evict::lru, flight, sync)                                 \
    KEYPOOL_REGISTRY(key, resolver, kp::evict::idle, flight, sync)                                \
    KEYPOOL_REGISTRY(key, resolver, kp::evict::size, flight, sync)                                \
    KEYPOOL_REGISTRY(key, resolver, evict_all, flight, sync)
KEYPOOL_REGISTRY_EVICTIONS(string_key, by_identity, kp::flight::shared, kp::sync::mutex)
KEYPOOL_REGISTRY_EVICTIONS(string_key, by_identity, kp::flight::none, kp::sync::mutex)
KEYPOOL_REGISTRY_EVICTIONS(string_key, by_identity, kp::flight::shared, kp::sync::none)
KEYPOOL_REGISTRY(string_key, by_role, kp::evict::lru, kp::flight::shared, kp::sync::mutex)
KEYPOOL_REGISTRY(std::uint64_t, by_function, kp::evict::idle, kp::flight::none, kp::sync::mutex)
template class kp::basic_registry<string_key, by_identity, fake, kp::with_clock<kp::manual_clock>,
                                  kp::with_reset<kp::reset_at::background>, kp::with_observer<all_hooks>>;
