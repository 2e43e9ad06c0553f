// SPDX-License-Identifier: BSL-1.0
// Per-tenant passwords for pq targets: the `password_resolver` concept, a fixed password, and a
// thread-safe TTL cache with single flight per tenant in front of a slow lookup (a secret store).
//
// Nothing here logs, formats or describes a password: errors are `std::error_code`s only.
#pragma once

#include <concepts>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

#include <keypool/error.hpp>
#include <keypool/policies/clock.hpp>

namespace keypool::pq {

/// `p.password(tenant, ec)` returns the tenant's password, or nullopt with `ec` set
/// (`errc::key_not_found` for an unknown tenant, another code for a failed lookup).
/// Must be thread-safe: many connects may ask at once.
template <class P>
concept password_resolver = requires(P& p, std::string_view tenant, std::error_code& ec) {
    { p.password(tenant, ec) } -> std::same_as<std::optional<std::string>>;
};

/// A type-erased per-tenant password lookup, as the route builders take it.
using tenant_password_fn = std::function<std::optional<std::string>(std::string_view tenant, std::error_code&)>;

namespace detail {

/// Calls `fn` and enforces the contract every caller relies on: a value means success (and an
/// empty value is `invalid_config`, since libpq would read it as "not set" and fall back to
/// PGPASSWORD); nullopt always comes with an error code; no exception escapes.
inline std::optional<std::string> ask_password(const tenant_password_fn& fn, std::string_view tenant,
                                               std::error_code& ec) noexcept {
    ec.clear();
    if (!fn) {
        ec = make_error_code(errc::invalid_config);
        return std::nullopt;
    }
    try {
        std::optional<std::string> pw = fn(tenant, ec);
        if (!pw) {
            if (!ec) ec = make_error_code(errc::connect_failed);
            return std::nullopt;
        }
        if (ec) return std::nullopt; // a value with an error is still an error
        if (pw->empty()) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        return pw;
    } catch (...) {
        ec = make_error_code(errc::connect_failed);
        return std::nullopt;
    }
}

} // namespace detail

/// Adapts a shared resolver to a `tenant_password_fn`; the function keeps the resolver alive.
/// A null pointer gives a function that always fails with `invalid_config`.
template <password_resolver P>
tenant_password_fn password_from(std::shared_ptr<P> resolver) {
    if (!resolver)
        return [](std::string_view, std::error_code& ec) -> std::optional<std::string> {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        };
    return [r = std::move(resolver)](std::string_view tenant, std::error_code& ec) -> std::optional<std::string> {
        return r->password(tenant, ec);
    };
}

/// The same password for every tenant. An empty `value` is `invalid_config` when asked.
struct static_password {
    std::string value;

    std::optional<std::string> password(std::string_view /*tenant*/, std::error_code& ec) const {
        if (value.empty()) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        ec.clear();
        return value;
    }
};

/// A TTL cache in front of `fetch(tenant, ec) -> std::optional<std::string>`.
///
/// - A cached password is served until `ttl` has passed on `Clock` since its fetch started.
/// - Single flight per tenant: concurrent misses for one tenant call `fetch` once; every caller
///   waiting for it gets its password or its error. The lock is not held while `fetch` runs.
/// - A failure is delivered to the callers that waited for it but not cached: the next call
///   fetches again. A fetch that throws fails with `errc::connect_failed` (nothing escapes);
///   nullopt without an error code, or an empty password, counts as a failure too.
/// - `invalidate(tenant)` / `invalidate_all()` drop cached passwords; a fetch in flight at that
///   moment still answers the callers already waiting for it, but its result is not cached, and
///   callers arriving after the invalidation start a new fetch.
///
/// Thread-safety: every member may be called from any thread. `fetch` may run concurrently for
/// different tenants. The clock must outlive the cache (as for pools; `manual_clock` cannot be
/// copied). Use it through `password_from(std::make_shared<caching_password<...>>(...))`.
template <class Fetch, class Clock = steady_clock>
    requires std::invocable<Fetch&, std::string_view, std::error_code&> &&
             std::convertible_to<std::invoke_result_t<Fetch&, std::string_view, std::error_code&>,
                                 std::optional<std::string>>
class caching_password {
public:
    /// A cache on the process's steady clock. `ttl` must not be negative (`invalid_config`);
    /// zero caches nothing but still shares concurrent fetches.
    caching_password(Fetch fetch, duration ttl)
        requires std::same_as<Clock, steady_clock>
        : caching_password(std::move(fetch), ttl, default_clock()) {}

    /// A cache on `clock`, which must outlive it.
    caching_password(Fetch fetch, duration ttl, const Clock& clock)
        : fetch_(std::move(fetch)), ttl_(ttl), clock_(&clock) {
        if (ttl < duration::zero())
            throw error(errc::invalid_config, "caching_password: ttl must not be negative");
    }

    caching_password(const caching_password&) = delete;
    caching_password& operator=(const caching_password&) = delete;

    /// The tenant's password: cached, or fetched (once, however many callers ask at the same time).
    std::optional<std::string> password(std::string_view tenant, std::error_code& ec) {
        ec.clear();
        std::unique_lock lk(m_);
        const time_point now = clock_->now();
        auto it = entries_.find(tenant);
        if (it != entries_.end()) {
            entry& e = it->second;
            if (e.value && now < e.expires) return *e.value;
            if (e.in_flight) return join(lk, e.in_flight, ec);
            e.value.reset(); // expired
        } else {
            it = entries_.emplace(std::string(tenant), entry{}).first;
        }
        auto f = std::make_shared<flight>();
        const std::uint64_t gen = ++generation_;
        it->second.in_flight = f;
        it->second.generation = gen;
        ++fetches_;
        lk.unlock();
        return lead(tenant, f, gen, now, ec);
    }

    /// Drops the tenant's cached password (and forgets a fetch in flight for it).
    void invalidate(std::string_view tenant) {
        std::lock_guard lk(m_);
        if (auto it = entries_.find(tenant); it != entries_.end()) entries_.erase(it);
    }

    /// Drops every cached password (and forgets every fetch in flight).
    void invalidate_all() {
        std::lock_guard lk(m_);
        entries_.clear();
    }

    /// How many times `fetch` has been called.
    std::uint64_t fetches() const {
        std::lock_guard lk(m_);
        return fetches_;
    }

    /// Callers currently waiting for another caller's fetch (for tests).
    std::size_t waiters() const {
        std::lock_guard lk(m_);
        return waiters_;
    }

    /// Tenants with a cached password or a fetch in flight.
    std::size_t size() const {
        std::lock_guard lk(m_);
        return entries_.size();
    }

private:
    /// One fetch in flight; its waiters sleep on `cv` under `m_`.
    struct flight {
        std::condition_variable cv;
        bool done = false;
        std::optional<std::string> value;
        std::error_code ec;
    };
    struct entry {
        std::optional<std::string> value;
        time_point expires{};
        std::shared_ptr<flight> in_flight;
        std::uint64_t generation = 0; ///< of the flight that may store its result here
    };

    static const Clock& default_clock() noexcept {
        static const Clock c{};
        return c;
    }

    std::optional<std::string> join(std::unique_lock<std::mutex>& lk, std::shared_ptr<flight> f,
                                    std::error_code& ec) {
        ++waiters_;
        f->cv.wait(lk, [&] { return f->done; });
        --waiters_;
        if (!f->value) {
            ec = f->ec;
            return std::nullopt;
        }
        return f->value;
    }

    /// Runs the fetch without the lock, then publishes the outcome to the waiters and, if the
    /// entry still belongs to this flight (no invalidation meanwhile), to the cache.
    std::optional<std::string> lead(std::string_view tenant, const std::shared_ptr<flight>& f, std::uint64_t gen,
                                    time_point started, std::error_code& ec) {
        std::error_code fec;
        std::optional<std::string> value;
        try {
            value = fetch_(tenant, fec);
            if (fec) value.reset();
            else if (!value) fec = make_error_code(errc::connect_failed);
            else if (value->empty()) {
                value.reset();
                fec = make_error_code(errc::invalid_config);
            }
        } catch (...) {
            value.reset();
            fec = make_error_code(errc::connect_failed);
        }

        std::lock_guard lk(m_);
        auto it = entries_.find(tenant);
        if (it != entries_.end() && it->second.generation == gen) {
            if (value) {
                try {
                    it->second.value = value;
                    it->second.expires =
                        ttl_ > time_point::max() - started ? time_point::max() : started + ttl_;
                    it->second.in_flight.reset();
                } catch (...) { // could not cache: forget the entry, still answer everyone
                    entries_.erase(it);
                }
            } else {
                entries_.erase(it); // failures are not cached
            }
        }
        f->value = std::move(value); // moves never throw for std::string
        f->ec = fec;
        f->done = true;
        f->cv.notify_all();
        if (!f->value) {
            ec = fec;
            return std::nullopt;
        }
        return f->value;
    }

    Fetch fetch_;
    duration ttl_;
    const Clock* clock_;
    mutable std::mutex m_;
    std::map<std::string, entry, std::less<>> entries_;
    std::uint64_t generation_ = 0;
    std::uint64_t fetches_ = 0;
    std::size_t waiters_ = 0;
};

} // namespace keypool::pq
