// SPDX-License-Identifier: BSL-1.0
// Every shipped policy satisfies its concept, and near-misses do not.
#include <doctest/doctest.h>
#include <keypool/keypool.hpp>

namespace {
struct conn {};
struct no_reset {
    using connection_type = conn;
    using target_type = int;
    std::optional<conn> connect(const int&, keypool::time_point, std::stop_token, std::error_code&);
    bool alive(conn&);
    void close(conn&);
};
struct reset_returns_int : no_reset {
    int reset(conn&);
};
struct complete : no_reset {
    bool reset(conn&);
};
struct connect_wrong_type : complete {
    conn connect(const int&, keypool::time_point, std::stop_token, std::error_code&);
};
} // namespace

static_assert(keypool::connector<keypool::fake::connector>);
static_assert(keypool::connector_has_native_handle<keypool::fake::connector>);
static_assert(keypool::connector<complete>);
static_assert(!keypool::connector_has_native_handle<complete>);
static_assert(keypool::connector_has_hot<keypool::fake::connector>);
static_assert(!keypool::connector_has_hot<complete>);
static_assert(!keypool::connector_has_reset<no_reset> && !keypool::connector<no_reset>);
static_assert(!keypool::connector_has_reset<reset_returns_int>);
static_assert(!keypool::connector_has_connect<connect_wrong_type>);

static_assert(keypool::clock<keypool::steady_clock>);
static_assert(keypool::clock<keypool::manual_clock>);
static_assert(!keypool::clock<int>);
static_assert(keypool::sync_policy<keypool::sync::mutex>);
static_assert(keypool::sync_policy<keypool::sync::none>);
static_assert(keypool::reset_policy<keypool::reset_at::release>);
static_assert(keypool::reset_policy<keypool::reset_at::checkout>);
static_assert(keypool::reset_policy<keypool::reset_at::background>);
static_assert(!keypool::reset_policy<int>);
static_assert(keypool::observer<keypool::null_observer>);

static_assert(keypool::pool_option<keypool::with_sync<keypool::sync::none>>);
static_assert(!keypool::pool_option<keypool::sync::none>); // a bare policy is not a setter

// Setters are order-free and resolve to named policy types.
using p1 = keypool::basic_pool<keypool::fake::connector, keypool::with_sync<keypool::sync::none>,
                               keypool::with_reset<keypool::reset_at::release>>;
using p2 = keypool::basic_pool<keypool::fake::connector, keypool::with_reset<keypool::reset_at::release>,
                               keypool::with_sync<keypool::sync::none>>;
static_assert(std::is_same_v<p1::sync_type, p2::sync_type> && std::is_same_v<p1::reset_type, p2::reset_type>);
static_assert(std::is_same_v<keypool::pool<keypool::fake::connector>::clock_type, keypool::steady_clock>);
static_assert(std::is_same_v<keypool::pool<keypool::fake::connector>::reset_type, keypool::reset_at::checkout>);

// The lease is move-only.
using lease = keypool::pool<keypool::fake::connector>::lease;
static_assert(std::is_nothrow_move_constructible_v<lease> && !std::is_copy_constructible_v<lease>);

TEST_CASE("concepts: checked at compile time") { CHECK(true); }
