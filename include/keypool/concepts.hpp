// SPDX-License-Identifier: BSL-1.0
// The concepts every policy must satisfy. Each requirement is its own named concept, so a compiler
// error names the missing piece (e.g. "does not satisfy connector_has_reset").
#pragma once

#include <concepts>
#include <optional>
#include <stop_token>
#include <system_error>
#include <type_traits>

#include <keypool/policies/clock.hpp>
#include <keypool/policies/reset.hpp>

namespace keypool {

// ---- Connector -------------------------------------------------------------------------------
// A connector knows how to open, reset, check and close connections to a target. One connector
// object serves a whole pool and is called from many threads at once: it must be thread-safe.
// No member may throw (a throwing `connect` is treated as `connect_failed`, a throwing `reset`
// as a failed reset).

template <class C>
concept connector_has_connection_type =
    requires { typename C::connection_type; } && std::movable<typename C::connection_type>;

template <class C>
concept connector_has_target_type =
    requires { typename C::target_type; } && std::copy_constructible<typename C::target_type>;

/// `c.connect(target, deadline, stop_token, ec)` opens a connection before `deadline`, or returns
/// an empty optional and sets `ec` (a `keypool::errc` where it can be classified).
template <class C>
concept connector_has_connect = requires(C& c, const typename C::target_type& t, time_point d,
                                         std::stop_token st, std::error_code& ec) {
    { c.connect(t, d, st, ec) } -> std::same_as<std::optional<typename C::connection_type>>;
};

/// `c.reset(x)` clears all session state; false means the connection must be destroyed.
template <class C>
concept connector_has_reset = requires(C& c, typename C::connection_type& x) {
    { c.reset(x) } -> std::same_as<bool>;
};

/// `c.alive(x)` is a cheap check (no round trip where possible) that an idle connection still works.
template <class C>
concept connector_has_alive = requires(C& c, typename C::connection_type& x) {
    { c.alive(x) } -> std::same_as<bool>;
};

/// `c.close(x)` releases the connection's resources. Called exactly once per opened connection.
template <class C>
concept connector_has_close = requires(C& c, typename C::connection_type& x) {
    { c.close(x) } -> std::same_as<void>;
};

template <class C>
concept connector = connector_has_connection_type<C> && connector_has_target_type<C> &&
                    connector_has_connect<C> && connector_has_reset<C> && connector_has_alive<C> &&
                    connector_has_close<C>;

/// Optional: `c.native_handle(x)` gives the driver's handle (`PGconn*` for pq); `lease::native_handle()`
/// exists only when the connector has it.
template <class C>
concept connector_has_native_handle = requires(C& c, typename C::connection_type& x) {
    c.native_handle(x);
};

/// Optional: `c.prepare(x, setup, ec) -> bool` runs a lease's session setup (e.g. the role switch)
/// right after checkout; false closes the connection and fails the acquire with `ec`. The
/// connector's `reset` must undo whatever `prepare` did.
template <class C, class Setup>
concept connector_has_prepare = requires(C& c, typename C::connection_type& x, const Setup& s, std::error_code& ec) {
    { c.prepare(x, s, ec) } -> std::same_as<bool>;
};

/// Optional: `c.reset(x, deadline) -> bool`, a reset that gives up (returning false, so the
/// connection is destroyed) when `deadline` passes: the pool passes the acquiring caller's deadline
/// to a reset that runs at checkout (`time_point::max()` elsewhere), so a silent server cannot hold
/// the caller past it.
template <class C>
concept connector_has_reset_until = requires(C& c, typename C::connection_type& x, time_point d) {
    { c.reset(x, d) } -> std::same_as<bool>;
};

/// Optional: `c.reset_begin(x)` starts the reset when a lease returns (under `reset_at::checkout`
/// and `reset_at::background`), without waiting for it: e.g. sends `DISCARD ALL` and leaves its
/// answer unread. The `reset` that still runs before the next hand-out then finds the work done
/// (it collects that answer) instead of making its round trip while a caller waits. It may also
/// decline (do nothing); `reset` must work either way. Must not throw.
template <class C>
concept connector_has_reset_begin = requires(C& c, typename C::connection_type& x) {
    { c.reset_begin(x) } -> std::same_as<void>;
};

/// Optional, with `reset_begin`: `c.reset_ready(x) -> bool`, false while a begun reset still waits
/// for its answer (a non-blocking probe, e.g. a poll of the socket). A checkout that pops such a
/// connection takes the next idle one instead if that one is ready, so the caller does not wait
/// for the round trip the other's reset is still making. Must not throw.
template <class C>
concept connector_has_reset_ready = requires(C& c, typename C::connection_type& x) {
    { c.reset_ready(x) } -> std::same_as<bool>;
};

/// Optional: `c.ping(x) -> bool` makes one round trip on an idle connection; false means it is
/// dead. With `pool_options::keepalive_after`, `maintain()` pings connections idle that long.
template <class C>
concept connector_has_ping = requires(C& c, typename C::connection_type& x) {
    { c.ping(x) } -> std::same_as<bool>;
};

/// Optional: the part of a connection its reset reads on every checkout (its flags, say), kept by
/// the pool in the slot's header instead of in the connection: `typename C::hot_type` (a few
/// bytes, default-constructible), `c.bind(x, h)`, called once the connection is in its slot and
/// before any other call on it — from then on `x` keeps that part in `h`, which outlives `x` —
/// and `c.reset(x, h) -> bool`, the reset given it (the pool calls it instead of `reset(x)`; a
/// connector that also has `reset(x, deadline)` is reset with that one). A reset that needs nothing more of a clean connection than `h` then
/// touches none of its lines: with a registry's pools that keeps a hit on one cache line of its
/// key (docs/design.md, "block layout"). Neither may throw.
template <class C>
concept connector_has_hot =
    requires(C& c, typename C::connection_type& x, typename C::hot_type& h) {
        { c.bind(x, h) } -> std::same_as<void>;
        { c.reset(x, h) } -> std::same_as<bool>;
    } && std::default_initializable<typename C::hot_type>;

// ---- Clock -----------------------------------------------------------------------------------

template <class C>
concept clock_has_now = requires(const C& c) {
    { c.now() } -> std::same_as<time_point>;
    { c.coarse_now() } -> std::same_as<time_point>;
};

/// `typename C::event ev(clock)`: `ev.set()`, `ev.reset()`, `ev.wait_until(deadline) -> bool`.
template <class C>
concept clock_has_event = requires(const C& c, typename C::event& ev, time_point d) {
    typename C::event;
    requires std::constructible_from<typename C::event, const C&>;
    ev.set();
    ev.reset();
    { ev.wait_until(d) } -> std::same_as<bool>;
};

template <class C>
concept clock = clock_has_now<C> && clock_has_event<C>;

// ---- Sync ------------------------------------------------------------------------------------

template <class S>
concept sync_policy = requires {
    { S::thread_safe } -> std::convertible_to<bool>;
    typename S::mutex_type;
    typename S::template atomic<unsigned long long>;
};

// ---- Reset placement -------------------------------------------------------------------------

template <class R>
concept reset_policy = std::same_as<R, reset_at::release> || std::same_as<R, reset_at::checkout> ||
                       std::same_as<R, reset_at::background>;

// ---- Observer --------------------------------------------------------------------------------
// Any class type: every hook is optional (see policies/observer.hpp).
template <class O>
concept observer = std::is_class_v<O> && std::move_constructible<O>;

} // namespace keypool
