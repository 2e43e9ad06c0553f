// SPDX-License-Identifier: BSL-1.0
// Turning libpq failures into keypool error codes.
//
// Query-time failures carry a SQLSTATE and are classified from it. Connect-time failures do not:
// libpq reports them only as text in PQerrorMessage, so they are matched on the server's (and
// libpq's, and PgBouncer's) English messages. A server whose `lc_messages` is not English gives
// translated texts that do not match: those failures are classified as plain `connect_failed`.
#pragma once

#include <array>
#include <string_view>

#include <keypool/error.hpp>

namespace keypool::pq {

/// The keypool code for a SQLSTATE (five characters). Codes that say nothing about the pool's
/// target or connection give `connect_failed`.
///   3D000 (no such database), 22023 on a role switch (no such role)  -> key_not_found
///   28000, 28P01 (authorization), 42501 (not a member of the role)   -> authentication_failed
///   53300 (too many connections)                                     -> server_saturated
///   57P01/57P02/57P03 (shutdown, crash, cannot connect now)          -> upstream_unreachable
///   08xxx (connection exceptions)                                    -> broken_connection
inline errc classify_sqlstate(std::string_view s) noexcept {
    if (s.size() != 5) return errc::connect_failed;
    if (s == "3D000" || s == "22023") return errc::key_not_found;
    if (s == "28000" || s == "28P01" || s == "42501") return errc::authentication_failed;
    if (s == "53300") return errc::server_saturated;
    if (s == "57P01" || s == "57P02" || s == "57P03") return errc::upstream_unreachable;
    if (s.substr(0, 2) == "08") return errc::broken_connection;
    return errc::connect_failed;
}

/// True for SQLSTATEs after which the connection must not be used again (class 08, and the
/// server shutting the session down: 57P01..57P03, 57P05 idle_session_timeout,
/// 25P03 idle_in_transaction_session_timeout).
inline bool is_connection_fatal(std::string_view s) noexcept {
    return (s.size() == 5 && s.substr(0, 2) == "08") || s == "57P01" || s == "57P02" || s == "57P03" ||
           s == "57P05" || s == "25P03";
}

/// The keypool code for a connect-time failure message (PQerrorMessage after a failed connect).
inline errc classify_connect_message(std::string_view m) noexcept {
    struct rule {
        std::string_view needle;
        errc code;
    };
    // Order matters: the first match wins (e.g. a "role ... does not exist" is checked before the
    // generic phrases that libpq wraps around every server error).
    static constexpr std::array<rule, 21> rules{{
        {"does not exist", errc::key_not_found}, // database "x" / role "x" does not exist
        {"no such database", errc::key_not_found}, // PgBouncer
        {"password authentication failed", errc::authentication_failed},
        {"SASL authentication failed", errc::authentication_failed}, // PgBouncer
        {"pg_hba.conf rejects connection", errc::authentication_failed},
        {"no pg_hba.conf entry", errc::authentication_failed},
        {"authentication failed", errc::authentication_failed},
        {"no password supplied", errc::authentication_failed},
        {"too many connections", errc::server_saturated}, // for role "x" / too many clients already
        {"too many clients already", errc::server_saturated},
        {"remaining connection slots are reserved", errc::server_saturated},
        {"no more connections allowed", errc::server_saturated}, // PgBouncer max_client_conn
        {"the database system is starting up", errc::upstream_unreachable},
        {"the database system is shutting down", errc::upstream_unreachable},
        {"the database system is in recovery mode", errc::upstream_unreachable},
        {"Connection refused", errc::upstream_unreachable},
        {"No such file or directory", errc::upstream_unreachable}, // unix socket gone
        {"could not translate host name", errc::upstream_unreachable},
        {"server closed the connection unexpectedly", errc::upstream_unreachable},
        {"terminating connection", errc::upstream_unreachable},
        {"cannot connect to server", errc::upstream_unreachable}, // PgBouncer
    }};
    for (const rule& r : rules)
        if (m.find(r.needle) != std::string_view::npos) return r.code;
    return errc::connect_failed;
}

} // namespace keypool::pq
