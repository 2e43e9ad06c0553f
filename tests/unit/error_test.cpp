// SPDX-License-Identifier: BSL-1.0
// The keypool error category and exception.
#include <ostream> // doctest prints std::error_code through it

#include <doctest/doctest.h>
#include <keypool/error.hpp>

using keypool::errc;

TEST_SUITE("error") {

TEST_CASE("each code has a category named keypool and a message that is its name") {
    const std::pair<errc, const char*> names[] = {
        {errc::timeout, "timeout"},
        {errc::pool_exhausted, "pool_exhausted"},
        {errc::cancelled, "cancelled"},
        {errc::closed, "closed"},
        {errc::connect_failed, "connect_failed"},
        {errc::upstream_unreachable, "upstream_unreachable"},
        {errc::key_not_found, "key_not_found"},
        {errc::authentication_failed, "authentication_failed"},
        {errc::server_saturated, "server_saturated"},
        {errc::invalid_config, "invalid_config"},
        {errc::would_deadlock, "would_deadlock"},
        {errc::broken_connection, "broken_connection"},
    };
    for (auto [e, name] : names) {
        std::error_code ec = e; // implicit: errc is an error_code enum
        CHECK(std::string(ec.category().name()) == "keypool");
        CHECK(ec.message() == name);
        CHECK(ec == e);
    }
    CHECK(std::error_code(999, keypool::category()).message() == "unknown keypool error");
}

TEST_CASE("the exception carries the code and keypool's own message") {
    keypool::error e(errc::invalid_config, "pool_options.max_size must be in 1..65534 (got 0)");
    CHECK(e.code() == errc::invalid_config);
    CHECK(std::string(e.what()).find("max_size") != std::string::npos);
    CHECK(std::string(e.what()).find("invalid_config") != std::string::npos);
}

} // TEST_SUITE
