// SPDX-License-Identifier: BSL-1.0
// pq::target: where a libpq connection goes, as keyword/value pairs (never a hand-built string),
// plus a password source that is asked at each connect (so a rotated password is picked up by the
// next connect without rebuilding the pool).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace keypool::pq {

/// One libpq connection parameter (`host`, `port`, `dbname`, `user`, `options`, ...).
struct param {
    std::string keyword;
    std::string value;
    friend bool operator==(const param&, const param&) = default;
};

/// Returns the password for a connect, or nullopt with `ec` set (e.g. `key_not_found` for an
/// unknown tenant). Must be thread-safe: many connects may ask at once.
using password_source = std::function<std::optional<std::string>(std::error_code& ec)>;

/// A connection target. `params` never holds a `password` (use `password`), and no value is empty
/// (libpq reads an empty value as "not set" and falls back to environment variables such as
/// PGPASSWORD / PGDATABASE; the connector rejects one with `invalid_config`).
struct target {
    std::vector<param> params;
    password_source password{};

    /// The value of `keyword`, or nullptr.
    const std::string* find(std::string_view keyword) const noexcept {
        for (const param& p : params)
            if (p.keyword == keyword) return &p.value;
        return nullptr;
    }

    /// Sets (or replaces) one parameter; returns *this for chaining.
    target& set(std::string keyword, std::string value) {
        for (param& p : params)
            if (p.keyword == keyword) {
                p.value = std::move(value);
                return *this;
            }
        params.push_back({std::move(keyword), std::move(value)});
        return *this;
    }

    /// "host=... port=... dbname=... user=..." for messages and logs: never contains a password
    /// (the password lives only in `password`, and a `password` param is shown as `***`).
    std::string describe() const {
        std::string out;
        for (const param& p : params) {
            if (!out.empty()) out += ' ';
            out += p.keyword;
            out += '=';
            out += (p.keyword == "password" || p.keyword == "sslpassword") ? std::string("***") : p.value;
        }
        return out;
    }

    /// Targets compare by their parameters (two pools to the same place are the same target; the
    /// password source is not compared).
    friend bool operator==(const target& a, const target& b) { return a.params == b.params; }
};

} // namespace keypool::pq
