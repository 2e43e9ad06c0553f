// SPDX-License-Identifier: BSL-1.0
// pool_options validation: every rule, with the exact message that names the field.
#include <string>
#include <vector>

#include <ostream> // doctest prints std::error_code through it

#include <doctest/doctest.h>
#include <keypool/options.hpp>

using namespace std::chrono_literals;
using keypool::pool_options;

TEST_SUITE("options") {

TEST_CASE("the defaults are valid and every wait is finite") {
    std::string msg;
    CHECK_FALSE(keypool::validate(pool_options{}, msg));
    CHECK(msg.empty());
    CHECK(pool_options{}.acquire_timeout == 30s);
    CHECK(pool_options{}.connect_timeout == 10s);
}

TEST_CASE("each violation gives invalid_config and a message naming the field") {
    struct row {
        pool_options o;
        const char* message;
    };
    const std::vector<row> rows = {
        {{.max_size = 0}, "pool_options.max_size must be in 1..65534 (got 0)"},
        {{.max_size = 65535}, "pool_options.max_size must be in 1..65534 (got 65535)"},
        {{.max_size = 4, .min_idle = 5}, "pool_options.min_idle must not exceed max_size (got 5 > 4)"},
        {{.max_connecting = 0}, "pool_options.max_connecting must be at least 1 (got 0)"},
        {{.max_waiters = 0}, "pool_options.max_waiters must be in 1..1000000 (got 0)"},
        {{.acquire_timeout = 0s}, "pool_options.acquire_timeout must be positive (got 0 ms)"},
        {{.connect_timeout = -1s}, "pool_options.connect_timeout must be positive (got -1000 ms)"},
        {{.idle_timeout = 0s}, "pool_options.idle_timeout must be positive or nullopt (got 0 ms)"},
        {{.max_lifetime = 0s}, "pool_options.max_lifetime must be positive or nullopt (got 0 ms)"},
        {{.lifetime_jitter = -1ms}, "pool_options.lifetime_jitter must not be negative (got -1 ms)"},
        {{.max_lifetime = 1min, .lifetime_jitter = 1min},
         "pool_options.lifetime_jitter must be below max_lifetime (got 60000 ms >= 60000 ms)"},
        {{.validate_after_idle = -1ms}, "pool_options.validate_after_idle must not be negative (got -1 ms)"},
        {{.backoff_initial = 0ms}, "pool_options.backoff_initial must be positive (got 0 ms)"},
        {{.backoff_initial = 2s, .backoff_max = 1s},
         "pool_options.backoff_max must not be below backoff_initial (got 1000 ms)"},
    };
    for (const auto& r : rows) {
        std::string msg;
        CAPTURE(r.message);
        CHECK(keypool::validate(r.o, msg) == keypool::errc::invalid_config);
        CHECK(msg == r.message);
    }
}

TEST_CASE("unlimited lifetime and idle timeout are spelled nullopt") {
    std::string msg;
    CHECK_FALSE(keypool::validate({.idle_timeout = std::nullopt, .max_lifetime = std::nullopt}, msg));
    CHECK_FALSE(keypool::validate({.validate_after_idle = 0s}, msg)); // 0 = always validate
}

} // TEST_SUITE
