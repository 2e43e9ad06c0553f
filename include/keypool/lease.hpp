// SPDX-License-Identifier: BSL-1.0
// basic_lease: the move-only RAII handle to a pooled connection.
#pragma once

#include <source_location>
#include <utility>

#include <keypool/concepts.hpp>
#include <keypool/detail/config.hpp>

namespace keypool {
namespace detail {
struct lease_access; // the pool's way to make a lease
}

/// Exclusive use of one pooled connection. Returned to its pool (reset there, per the pool's
/// reset policy) when the lease is destroyed, reassigned or `release()`d; `discard()` closes the
/// connection instead, for a connection the caller knows is broken.
///
/// Lifetime: a lease may outlive its pool object. Returning into a pool that is closed or
/// destroyed closes the connection; the pool's internals are freed when the last lease returns.
/// Thread-safety: a lease is used by one thread at a time; different leases are independent.
template <class Core>
class basic_lease {
public:
    using connection_type = typename Core::connection_type;

    /// An empty lease (what `try_acquire` returns when no connection is free).
    basic_lease() noexcept = default;
    basic_lease(basic_lease&& o) noexcept
        : core_(std::exchange(o.core_, nullptr)), slot_(std::exchange(o.slot_, nullptr)), ctx_(o.ctx_) {}
    /// Returns the connection held now (if any) before taking over `o`'s.
    basic_lease& operator=(basic_lease&& o) noexcept {
        if (this != &o) {
            release();
            core_ = std::exchange(o.core_, nullptr);
            slot_ = std::exchange(o.slot_, nullptr);
            ctx_ = o.ctx_;
        }
        return *this;
    }
    basic_lease(const basic_lease&) = delete;
    basic_lease& operator=(const basic_lease&) = delete;
    /// Returns the connection, as release() does, but leaves the members as they are: nothing
    /// reads them after (two stores fewer on every acquire + release).
    KEYPOOL_ALWAYS_INLINE ~basic_lease() {
        if (slot_ && core_->release(slot_, false, *ctx_)) delete core_;
    }

    explicit operator bool() const noexcept { return slot_ != nullptr; }

    /// The connection. Preconditions: the lease is not empty.
    connection_type& get() const noexcept { return Core::connection_at(core_, *ctx_, slot_); }
    connection_type& operator*() const noexcept { return get(); }
    connection_type* operator->() const noexcept { return &get(); }

    /// The driver's own handle (e.g. `PGconn*`), when the connector offers `native_handle`.
    decltype(auto) native_handle() const noexcept
        requires connector_has_native_handle<typename Core::connector_type>
    {
        return core_->connector().native_handle(get());
    }

    /// Returns the connection to the pool now; the lease becomes empty.
    void release() noexcept { give_back(false); }

    /// Closes the connection instead of returning it (it counts as `close_reason::discarded`).
    void discard() noexcept { give_back(true); }

private:
    friend struct detail::lease_access;
    basic_lease(Core* core, typename Core::slot* s, typename Core::context* ctx) noexcept
        : core_(core), slot_(s), ctx_(ctx) {}

    KEYPOOL_ALWAYS_INLINE void give_back(bool discard) noexcept {
        if (!slot_) return;
        Core* core = std::exchange(core_, nullptr);
        auto* s = std::exchange(slot_, nullptr);
        if (core->release(s, discard, *ctx_)) delete core; // the pool was gone and this was its last connection
    }

    Core* core_ = nullptr;
    typename Core::slot* slot_ = nullptr;
    // The core's context (Core::shared()), which the core keeps alive: the release reads the
    // options, connector and budget there, not through the core's own line.
    typename Core::context* ctx_ = nullptr;
};

namespace detail {
struct lease_access {
    /// `ctx`: the core's context (core->shared()), which a caller may have at hand already.
    template <class Core>
    static basic_lease<Core> make(Core* core, typename Core::slot* s, typename Core::context& ctx) noexcept {
        return basic_lease<Core>(core, s, &ctx);
    }
    template <class Core>
    static basic_lease<Core> make(Core* core, typename Core::slot* s) noexcept {
        return basic_lease<Core>(core, s, &core->shared());
    }
    /// Records where `l` was acquired, for leak reports (only when the pool has `leak_threshold`).
    template <class Core>
    static basic_lease<Core>& record_site(basic_lease<Core>& l, const std::source_location& site) noexcept {
        if (l.slot_ && l.ctx_->leak_threshold) l.core_->record_site(l.slot_, site);
        return l;
    }
};
} // namespace detail
} // namespace keypool
