// SPDX-License-Identifier: BSL-1.0
// keypool's error codes, their std::error_category, and the exception that carries one.
#pragma once

#include <string>
#include <system_error>

namespace keypool {

/// Every failure keypool reports. The enumerator name is also the metric label value and the
/// heading in docs/errors.md.
enum class errc {
    timeout = 1,           ///< the deadline passed before a connection was available
    pool_exhausted,        ///< the bounded wait queue (`max_waiters`) was full: rejected at once
    cancelled,             ///< the caller's stop token was triggered while it waited
    closed,                ///< the pool was closed (before or while the caller waited)
    connect_failed,        ///< a connect failed for a reason not covered by a more specific code
    upstream_unreachable,  ///< the server refused, was unreachable or shutting down
    key_not_found,         ///< the target (database, tenant, key) does not exist
    authentication_failed, ///< the server rejected the credentials
    server_saturated,      ///< the server has no room for another connection (retry with backoff)
    invalid_config,        ///< an option or argument was out of range; the message names it
    would_deadlock,        ///< waiting could never succeed (e.g. a single-threaded pool with all
                           ///< connections leased by the caller itself)
    broken_connection,     ///< the connection was found dead or failed its reset
};

namespace detail {
class category_impl final : public std::error_category {
public:
    const char* name() const noexcept override { return "keypool"; }
    std::string message(int ev) const override {
        switch (static_cast<errc>(ev)) {
        case errc::timeout: return "timeout";
        case errc::pool_exhausted: return "pool_exhausted";
        case errc::cancelled: return "cancelled";
        case errc::closed: return "closed";
        case errc::connect_failed: return "connect_failed";
        case errc::upstream_unreachable: return "upstream_unreachable";
        case errc::key_not_found: return "key_not_found";
        case errc::authentication_failed: return "authentication_failed";
        case errc::server_saturated: return "server_saturated";
        case errc::invalid_config: return "invalid_config";
        case errc::would_deadlock: return "would_deadlock";
        case errc::broken_connection: return "broken_connection";
        }
        return "unknown keypool error";
    }
};
} // namespace detail

namespace detail {
/// One instance per program (an inline variable), built at compile time (constinit: no guard
/// to check on each call, which a function-local static costs every acquire that makes an
/// error_code).
inline constinit const category_impl category_instance{};
} // namespace detail

/// The `keypool` error category.
inline const std::error_category& category() noexcept { return detail::category_instance; }

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

/// The exception thrown by the throwing forms of keypool calls. `what()` is keypool's own message
/// (never a password or a connection string); `code()` is the classified cause.
class error : public std::system_error {
public:
    explicit error(std::error_code ec) : std::system_error(ec) {}
    error(std::error_code ec, const std::string& message) : std::system_error(ec, message) {}
    error(errc e, const std::string& message) : std::system_error(make_error_code(e), message) {}
};

} // namespace keypool

template <> struct std::is_error_code_enum<keypool::errc> : std::true_type {};
