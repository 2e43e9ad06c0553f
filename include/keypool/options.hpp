// SPDX-License-Identifier: BSL-1.0
// Runtime options of a pool: a plain aggregate written with designated initialisers and checked
// once by `validate` when the pool is built.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <keypool/error.hpp>
#include <keypool/policies/clock.hpp>

namespace keypool {

using namespace std::chrono_literals;

/// Options of one pool. `std::nullopt` means "never" where a duration is optional; there is no
/// magic zero. Example: `keypool::pool_options{.max_size = 16, .idle_timeout = 5min}`.
struct pool_options {
    /// Upper bound on open connections, counting idle, leased, connecting and closing ones.
    /// Default 10; range 1..65534.
    std::size_t max_size = 10;
    /// Idle connections `maintain()` keeps open (and idle eviction never goes below).
    /// Default 0; range 0..max_size.
    std::size_t min_idle = 0;
    /// Connects that may be in flight at once. Default 2; at least 1 (values above max_size act as
    /// max_size).
    std::size_t max_connecting = 2;
    /// Callers that may wait at once; one more gets `pool_exhausted` at once. Default 4096;
    /// range 1..1'000'000.
    std::size_t max_waiters = 4096;
    /// Timeout of `acquire()` without an explicit one. Default 30 s; must be positive (finite by type).
    duration acquire_timeout = 30s;
    /// Upper bound of each connect attempt (the caller's deadline may end it sooner). Default 10 s;
    /// must be positive.
    duration connect_timeout = 10s;
    /// Idle connections above `min_idle` are closed by `maintain()` after this long. Default 10 min;
    /// nullopt = never; when set, must be positive.
    std::optional<duration> idle_timeout = 10min;
    /// A connection is closed (at checkout, at return or by `maintain()`) once this old. Default
    /// 30 min; nullopt = never; when set, must be positive.
    std::optional<duration> max_lifetime = 30min;
    /// Each connection's lifetime is shortened by a random amount in [0, lifetime_jitter], fixed at
    /// creation, so connections opened together do not expire together. Default 30 s; must be
    /// zero or positive and below `max_lifetime`.
    duration lifetime_jitter = 30s;
    /// A connection idle at least this long is checked with the connector's `alive()` before it is
    /// handed out (0 = always check). Default 1 s; must be zero or positive.
    duration validate_after_idle = 1s;
    /// `maintain()` pings (the connector's `ping`, when it has one) each idle connection that has
    /// gone this long without use or a ping, and closes it if the ping fails: keeps firewalls and
    /// servers with idle timeouts from dropping idle connections silently. Default nullopt
    /// (never); when set, must be positive.
    std::optional<duration> keepalive_after = std::nullopt;
    /// First delay after a failed connect, doubled after each further failure up to `backoff_max`,
    /// each delay drawn at random from [d/2, d]. Defaults 100 ms and 10 s; positive, initial <= max.
    duration backoff_initial = 100ms;
    duration backoff_max = 10s;
    /// After handing a returned connection to a parked waiter, the releasing thread yields the CPU
    /// so the waiter runs before the releaser can queue again: this keeps strict FIFO from
    /// collapsing into a lock convoy when threads outnumber cores. Default true.
    bool yield_after_handoff = true;
    /// Per-CPU caches of one idle connection each, in front of the shared idle stack: a thread
    /// returns its connection to its CPU's cache and takes it back from there, so threads on
    /// different CPUs do not pass one cache line back and forth. Reuse order stays
    /// most-recently-used per CPU. Default nullopt = automatic: the number of CPUs the thread
    /// building the pool may run on (its affinity mask: a container's cpuset, `taskset`; one past
    /// the highest of their numbers where words follow CPU numbers, see docs/design.md), at most
    /// max_size / 4 and 64, rounded down to a power of two (so none below max_size 4, one for
    /// max_size 4..7 or on one CPU, and none for sync::none). 0 disables; otherwise 1..64, rounded
    /// down to a power of two.
    std::optional<std::size_t> cpu_caches = std::nullopt;
    /// Leak detection: `maintain()` reports each lease held at least this long, once, to the
    /// observer's `on_leak` with its age and acquire site, and counts it in `stats().leaks`. When
    /// set, every `basic_pool::acquire` records its caller's `std::source_location` (one store).
    /// Default nullopt (off); when set, must be positive.
    std::optional<duration> leak_threshold = std::nullopt;
    /// A caller that would wait on a full pool while its own thread already holds a lease of it
    /// gets `would_deadlock` at once instead of waiting (N threads each holding one of N
    /// connections and asking for a second never make progress). Costs one store per checkout.
    /// Default false.
    bool detect_self_deadlock = false;
    /// With the steady clock (and a thread-safe sync): while the pool (or registry) lives it holds
    /// a `keypool::coarse_ticker`, the one thread per process that copies the coarse clock into a
    /// word every 4 ms while it is read (ten wakeups a second while it is not), so its fast paths
    /// read that word instead of calling the vDSO (up to a third of a registry cycle at 10,000
    /// keys on this project's machine). false: no thread; each fast path reads the clock. Default
    /// true.
    bool use_coarse_ticker = true;
    /// Seed of the jitter generator, for reproducible runs. Default: drawn per pool.
    std::optional<std::uint64_t> seed = std::nullopt;
};

/// Checks `o`; on a violation returns `errc::invalid_config` and sets `message` to a sentence that
/// names the field and the rule. Options hold no secrets, so values may be quoted.
inline std::error_code validate(const pool_options& o, std::string& message) {
    auto fail = [&](std::string text) {
        message = "pool_options." + std::move(text);
        return make_error_code(errc::invalid_config);
    };
    auto ms = [](duration d) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + " ms";
    };
    if (o.max_size < 1 || o.max_size > 65534)
        return fail("max_size must be in 1..65534 (got " + std::to_string(o.max_size) + ")");
    if (o.min_idle > o.max_size)
        return fail("min_idle must not exceed max_size (got " + std::to_string(o.min_idle) + " > " +
                    std::to_string(o.max_size) + ")");
    if (o.max_connecting < 1)
        return fail("max_connecting must be at least 1 (got " + std::to_string(o.max_connecting) + ")");
    if (o.max_waiters < 1 || o.max_waiters > 1'000'000)
        return fail("max_waiters must be in 1..1000000 (got " + std::to_string(o.max_waiters) + ")");
    if (o.leak_threshold && *o.leak_threshold <= duration::zero())
        return fail("leak_threshold must be positive or nullopt (got " + ms(*o.leak_threshold) + ")");
    if (o.cpu_caches && *o.cpu_caches > 64)
        return fail("cpu_caches must be in 0..64 or nullopt (got " + std::to_string(*o.cpu_caches) + ")");
    if (o.acquire_timeout <= duration::zero())
        return fail("acquire_timeout must be positive (got " + ms(o.acquire_timeout) + ")");
    if (o.connect_timeout <= duration::zero())
        return fail("connect_timeout must be positive (got " + ms(o.connect_timeout) + ")");
    if (o.idle_timeout && *o.idle_timeout <= duration::zero())
        return fail("idle_timeout must be positive or nullopt (got " + ms(*o.idle_timeout) + ")");
    if (o.max_lifetime && *o.max_lifetime <= duration::zero())
        return fail("max_lifetime must be positive or nullopt (got " + ms(*o.max_lifetime) + ")");
    if (o.lifetime_jitter < duration::zero())
        return fail("lifetime_jitter must not be negative (got " + ms(o.lifetime_jitter) + ")");
    if (o.max_lifetime && o.lifetime_jitter >= *o.max_lifetime)
        return fail("lifetime_jitter must be below max_lifetime (got " + ms(o.lifetime_jitter) +
                    " >= " + ms(*o.max_lifetime) + ")");
    if (o.validate_after_idle < duration::zero())
        return fail("validate_after_idle must not be negative (got " + ms(o.validate_after_idle) + ")");
    if (o.keepalive_after && *o.keepalive_after <= duration::zero())
        return fail("keepalive_after must be positive or nullopt (got " + ms(*o.keepalive_after) + ")");
    if (o.backoff_initial <= duration::zero())
        return fail("backoff_initial must be positive (got " + ms(o.backoff_initial) + ")");
    if (o.backoff_max < o.backoff_initial)
        return fail("backoff_max must not be below backoff_initial (got " + ms(o.backoff_max) + ")");
    message.clear();
    return {};
}

/// Options of a registry of pools (one pool per key or per resolved target).
struct registry_options {
    /// Options of every pool the registry builds.
    pool_options pool{};
    /// Live pools kept under `evict::lru` (the least recently used is retired beyond it).
    /// Default 500; range 1..100'000'000.
    std::size_t max_pools = 500;
    /// Under `evict::size`, server connections open at once across all pools; a pool that needs one
    /// more first closes an idle connection of another key (the pool nearest the CLOCK hand that
    /// has one), else waits in line with every other key's callers. Default 100; range
    /// 1..1'000'000.
    std::size_t max_connections = 100;
    /// Under `evict::idle`, a pool with no lease out and no acquire for this long is retired (by
    /// `maintain()` / `evict_idle()`, once between this and 33/32 of it: the last acquire's time
    /// as a key keeps it may lag by up to 1/32). Acquires through a `pool(key)` object count;
    /// `maintain()`'s connects for `min_idle` do not. Default 15 min; nullopt = never; when set,
    /// must be positive.
    std::optional<duration> pool_idle_timeout = 15min;
    /// How long a failed resolution is remembered and returned at once to later callers for the key.
    /// Default 1 s; must be zero or positive.
    duration failure_backoff = 1s;
    /// Lock shards of the key table. Default 64; range 1..4096.
    std::size_t shards = 64;
    /// Whether the 2 MiB chunks the pools come from (a registry whose keys have pools of their
    /// own keeps one arena of them whatever this says: each key's hot bytes side by side, see
    /// docs/design.md, "block layout") and the key table's bucket arrays are those `maintain()`
    /// prepares ahead of need in transparent huge pages (Linux; elsewhere ignored): with many
    /// keys, a hit then misses the TLB far less often. No acquire waits for
    /// the kernel (docs/options.md). The memory of evicted pools is kept for the
    /// pools that replace them and goes back to the system with the registry and its last pool.
    /// Default nullopt: on when `max_pools` pools (at most 2^21) would take 12 MiB or more.
    std::optional<bool> huge_pages{};
};

inline std::error_code validate(const registry_options& o, std::string& message) {
    if (auto ec = validate(o.pool, message)) {
        message = "registry_options.pool." + message.substr(std::string("pool_options.").size());
        return ec;
    }
    auto fail = [&](std::string text) {
        message = "registry_options." + std::move(text);
        return make_error_code(errc::invalid_config);
    };
    if (o.max_pools < 1 || o.max_pools > 100'000'000)
        return fail("max_pools must be in 1..100000000 (got " + std::to_string(o.max_pools) + ")");
    if (o.max_connections < 1 || o.max_connections > 1'000'000)
        return fail("max_connections must be in 1..1000000 (got " + std::to_string(o.max_connections) + ")");
    if (o.pool_idle_timeout && *o.pool_idle_timeout <= duration::zero())
        return fail("pool_idle_timeout must be positive or nullopt");
    if (o.failure_backoff < duration::zero()) return fail("failure_backoff must not be negative");
    if (o.shards < 1 || o.shards > 4096)
        return fail("shards must be in 1..4096 (got " + std::to_string(o.shards) + ")");
    message.clear();
    return {};
}

} // namespace keypool
