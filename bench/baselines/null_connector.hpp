// SPDX-License-Identifier: BSL-1.0
// A connector whose connection is an int and whose reset and alive cost nothing. Diagnostic rows
// only (W1's keypool_null_connector and keypool_core, W3's keypool_null_connector): it separates
// the pool's own cost from the fake connector's, whose reset runs on every cycle under
// reset_at::checkout and whose connection (120 bytes, inline in the pool's slot) makes every
// registry entry's allocation 536 bytes instead of 280.
#pragma once

#include <optional>
#include <stop_token>
#include <string>
#include <system_error>

#include <keypool/keypool.hpp>

namespace keypool_bench {

struct null_connector {
    using connection_type = int;
    using target_type = std::string;
    std::optional<int> connect(const std::string&, keypool::time_point, std::stop_token, std::error_code& ec) {
        ec.clear();
        return 1;
    }
    bool reset(int&) noexcept { return true; }
    bool alive(int&) noexcept { return true; }
    void close(int&) noexcept {}
};

} // namespace keypool_bench
