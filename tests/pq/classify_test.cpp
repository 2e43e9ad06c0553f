// SPDX-License-Identifier: BSL-1.0
// Classification of libpq failures: SQLSTATEs, and the English connect-time messages of the
// server, libpq and PgBouncer (texts as PostgreSQL 15, libpq 15 and PgBouncer 1.18 print them).
#include <doctest/doctest.h>
#include <keypool/pq/classify.hpp>

#include <ostream>

using keypool::errc;
using namespace keypool::pq;

TEST_CASE("SQLSTATEs map to keypool codes") {
    CHECK(classify_sqlstate("3D000") == errc::key_not_found);
    CHECK(classify_sqlstate("22023") == errc::key_not_found);
    CHECK(classify_sqlstate("28P01") == errc::authentication_failed);
    CHECK(classify_sqlstate("28000") == errc::authentication_failed);
    CHECK(classify_sqlstate("42501") == errc::authentication_failed);
    CHECK(classify_sqlstate("53300") == errc::server_saturated);
    CHECK(classify_sqlstate("57P01") == errc::upstream_unreachable);
    CHECK(classify_sqlstate("57P02") == errc::upstream_unreachable);
    CHECK(classify_sqlstate("57P03") == errc::upstream_unreachable);
    CHECK(classify_sqlstate("08006") == errc::broken_connection);
    CHECK(classify_sqlstate("08P01") == errc::broken_connection);
    CHECK(classify_sqlstate("22012") == errc::connect_failed); // division by zero says nothing about the pool
    CHECK(classify_sqlstate("") == errc::connect_failed);
    CHECK(classify_sqlstate("0800") == errc::connect_failed);
}

TEST_CASE("connection-fatal SQLSTATEs") {
    for (const char* s : {"08000", "08003", "08006", "57P01", "57P02", "57P03", "57P05", "25P03"}) {
        CAPTURE(s);
        CHECK(is_connection_fatal(s));
    }
    for (const char* s : {"22012", "42P01", "53300", "40001", ""}) {
        CAPTURE(s);
        CHECK(!is_connection_fatal(s));
    }
}

TEST_CASE("connect-time messages map to keypool codes") {
    struct sample {
        const char* text;
        errc code;
    };
    const sample samples[] = {
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  database \"nope\" does not exist\n",
         errc::key_not_found},
        {"connection to server at \"127.0.0.1\", port 55433 failed: FATAL:  no such database: nope\n", errc::key_not_found},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  password authentication failed for user "
         "\"kp_app\"\n",
         errc::authentication_failed},
        {"connection to server at \"127.0.0.1\", port 55433 failed: FATAL:  SASL authentication failed\n",
         errc::authentication_failed},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  pg_hba.conf rejects connection for host "
         "\"127.0.0.1\", user \"kp_rejected\", database \"app\", no encryption\n",
         errc::authentication_failed},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  no pg_hba.conf entry for host "
         "\"10.0.0.1\", user \"x\", database \"y\", no encryption\n",
         errc::authentication_failed},
        {"connection to server at \"127.0.0.1\", port 55432 failed: fe_sendauth: no password supplied\n",
         errc::authentication_failed},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  too many connections for role "
         "\"kp_limited\"\n",
         errc::server_saturated},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  sorry, too many clients already\n",
         errc::server_saturated},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  remaining connection slots are reserved "
         "for non-replication superuser connections\n",
         errc::server_saturated},
        {"connection to server at \"127.0.0.1\", port 55433 failed: FATAL:  no more connections allowed "
         "(max_client_conn)\n",
         errc::server_saturated},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  the database system is starting up\n",
         errc::upstream_unreachable},
        {"connection to server at \"127.0.0.1\", port 55432 failed: FATAL:  the database system is shutting down\n",
         errc::upstream_unreachable},
        {"connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running on that "
         "host and accepting TCP/IP connections?\n",
         errc::upstream_unreachable},
        {"connection to server on socket \"/tmp/x/.s.PGSQL.5432\" failed: No such file or directory\n",
         errc::upstream_unreachable},
        {"could not translate host name \"nowhere.invalid\" to address: Name or service not known\n",
         errc::upstream_unreachable},
        {"connection to server at \"127.0.0.1\", port 55433 failed: server closed the connection unexpectedly\n",
         errc::upstream_unreachable},
        {"connection to server at \"127.0.0.1\", port 55433 failed: ERROR:  pgbouncer cannot connect to server\n",
         errc::upstream_unreachable},
        {"something new the table does not know\n", errc::connect_failed},
        {"", errc::connect_failed},
    };
    for (const sample& s : samples) {
        CAPTURE(s.text);
        CHECK(classify_connect_message(s.text) == s.code);
    }
}
