// SPDX-License-Identifier: BSL-1.0
// pq::connector: the keypool Connector for PostgreSQL through libpq.
//
//   keypool::basic_pool<keypool::pq::connector> pool(keypool::pq::connector{}, target, options);
//   auto lease = pool.acquire();
//   PGresult* r = PQexec(lease.native_handle(), "SELECT 1");
//
// Connects with PQconnectStartParams (keyword/value arrays, expand_dbname = 0: no string is ever
// parsed as a connection string), polled so the deadline and the stop token are honoured. Resets a
// returned connection (rollback, cancel a running query, the reset query, the role), detects a
// backend that died while idle without a round trip, and classifies failures (pq/classify.hpp).
#pragma once

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <keypool/error.hpp>
#include <keypool/policies/clock.hpp>
#include <keypool/pq/classify.hpp>
#include <keypool/pq/target.hpp>
#include <keypool/resolver.hpp>

namespace keypool::pq {

/// How a lease's role switch (`keypool::role` setup, from `resolve::role_switch`) is done.
enum class role_switch_mode {
    /// `set_config('role', $1, false)` for the session; the reset on return undoes it
    /// (`DISCARD ALL`, or an explicit `RESET ROLE` when the reset query is something else).
    session,
    /// For PgBouncer in transaction mode (no session survives between transactions): the lease
    /// opens a transaction and switches with `set_config('role', $1, true)` (`SET LOCAL ROLE`).
    /// The lease's work runs inside that transaction: commit it before returning the lease;
    /// whatever is still open on return is rolled back, which also ends the role.
    transaction,
};

/// A server notice (or an unsolicited error such as the FATAL of a terminated backend).
struct notice {
    std::string_view severity; ///< "NOTICE", "WARNING", "FATAL", ...
    std::string_view sqlstate;
    std::string_view message;
};

/// What the connector reports to `on_error`: keypool's classification, kept apart from the
/// server's (or libpq's) own text. Neither ever contains a password: the target is described
/// without it, and the server text has any occurrence of the password masked.
struct error_report {
    std::string_view phase; ///< "connect", "reset", "prepare"
    std::error_code code;
    std::string_view server_message;
    std::string_view target; ///< target::describe()
};

struct connector_options {
    /// Runs on every return after any open transaction is rolled back. Empty: none (PgBouncer in
    /// transaction mode, where the pooler owns the server sessions).
    std::string reset_query = "DISCARD ALL";
    role_switch_mode role_mode = role_switch_mode::session;

    /// Defaults added to every target that does not set them itself.
    std::string application_name = "keypool";
    std::chrono::seconds connect_timeout{10};
    /// TCP keepalives flag an idle connection whose peer silently vanished; tcp_user_timeout
    /// fails a query in flight to such a peer instead of hanging for the kernel's ≈15 minutes.
    /// Each covers one case only, so both are on by default.
    std::chrono::seconds keepalives_idle{30};
    std::chrono::seconds keepalives_interval{10};
    int keepalives_count = 3;
    std::chrono::milliseconds tcp_user_timeout{30000};

    /// The longest any of the adapter's own round trips may take (the reset's ROLLBACK and reset
    /// query, the role switch, the keepalive ping, draining a cancelled query); a server that has
    /// not answered by then is taken for silent and the connection is destroyed. A reset at
    /// checkout also ends at the acquiring caller's deadline, whichever comes first.
    std::chrono::milliseconds command_timeout{5000};

    /// Send the reset query when a lease comes back and read its answer only at the next
    /// checkout (`reset_begin`): the round trip happens while the connection sits idle, not while
    /// the next caller waits. Only for a clean return (no transaction open, nothing running);
    /// anything else gets the full reset at checkout. False: the whole reset runs at checkout.
    bool pipelined_reset = true;

    /// Cancel a query still running when its lease comes back (then drain it) instead of
    /// destroying the connection. A cancel request is a new connection to the server.
    bool cancel_running_query = true;

    /// Server notices; by default they are dropped (libpq's default prints them on stderr).
    std::function<void(const notice&)> on_notice{};
    /// Failures with the server's own text, for logging.
    std::function<void(const error_report&)> on_error{};
};

namespace detail {
struct settings {
    connector_options opt;
};
/// Per-connection state the notice receiver writes: libpq does not mark a connection bad when a
/// terminated backend's FATAL arrives while it is idle, so the receiver remembers having seen one.
struct connection_state {
    std::shared_ptr<const settings> s;
    bool fatal_seen = false;
};
} // namespace detail

/// One libpq connection as the pool holds it. Move-only; the connector closes it.
class connection {
public:
    connection() = default;
    connection(connection&& o) noexcept
        : pg_(std::exchange(o.pg_, nullptr)), state_(std::move(o.state_)), role_set_(o.role_set_),
          reset_stage_(o.reset_stage_) {}
    connection& operator=(connection&& o) noexcept {
        if (this != &o) {
            if (pg_) PQfinish(pg_);
            pg_ = std::exchange(o.pg_, nullptr);
            state_ = std::move(o.state_);
            role_set_ = o.role_set_;
            reset_stage_ = o.reset_stage_;
        }
        return *this;
    }
    connection(const connection&) = delete;
    connection& operator=(const connection&) = delete;
    ~connection() {
        if (pg_) PQfinish(pg_);
    }

    PGconn* native_handle() const noexcept { return pg_; }

private:
    friend class connector;
    bool usable() const noexcept { return pg_ && PQstatus(pg_) == CONNECTION_OK && !state_->fatal_seen; }

    PGconn* pg_ = nullptr;
    std::unique_ptr<detail::connection_state> state_; // stable address: the notice receiver's argument
    bool role_set_ = false;
    // reset_begin: 0 nothing begun, 1 the reset query is sent, 2 alive() has read its whole answer (good).
    std::uint8_t reset_stage_ = 0;
};

class connector {
public:
    using target_type = target;
    using connection_type = connection;

    explicit connector(connector_options o = {})
        : s_(std::make_shared<const detail::settings>(detail::settings{std::move(o)})) {}

    const connector_options& options() const noexcept { return s_->opt; }

    std::optional<connection> connect(const target& t, time_point deadline, std::stop_token st,
                                      std::error_code& ec) const {
        std::optional<std::string> password;
        if (!build_params(t, password, ec)) return std::nullopt;
        std::vector<const char*> keys, values;
        for (const param& p : t.params) push(keys, values, p.keyword.c_str(), p.value);
        const auto& o = s_->opt;
        const std::string ct = std::to_string(std::max<long long>(1, o.connect_timeout.count()));
        const std::string ki = std::to_string(o.keepalives_idle.count());
        const std::string kv = std::to_string(o.keepalives_interval.count());
        const std::string kc = std::to_string(o.keepalives_count);
        const std::string tu = std::to_string(o.tcp_user_timeout.count());
        const std::string on = "1";
        // `values` keeps c_str() pointers: every string pushed must outlive the connect call.
        auto dflt = [&](const char* k, const std::string& v) {
            if (!t.find(k) && !v.empty()) push(keys, values, k, v);
        };
        dflt("application_name", o.application_name);
        dflt("connect_timeout", ct);
        dflt("keepalives", on);
        dflt("keepalives_idle", ki);
        dflt("keepalives_interval", kv);
        dflt("keepalives_count", kc);
        dflt("tcp_user_timeout", tu);
        if (password) push(keys, values, "password", *password);
        keys.push_back(nullptr);
        values.push_back(nullptr);

        PGconn* pg = PQconnectStartParams(keys.data(), values.data(), /*expand_dbname=*/0);
        if (!pg) {
            ec = make_error_code(errc::connect_failed);
            return std::nullopt;
        }
        connection c;
        c.pg_ = pg;
        c.state_ = std::make_unique<detail::connection_state>(detail::connection_state{s_});
        PQsetNoticeReceiver(pg, &connector::receive_notice, c.state_.get());
        if (PQstatus(pg) == CONNECTION_BAD) {
            fail_connect(c, t, password, ec);
            return std::nullopt;
        }
        if (!poll_connect(pg, deadline, st, ec)) {
            if (!ec) fail_connect(c, t, password, ec);
            else report("connect", ec, "", &t);
            return std::nullopt;
        }
        return c;
    }

    /// Clears the session before the connection is handed out again; false destroys it. Gives
    /// up (false) when `deadline` or `command_timeout` passes: a silent server holds nobody.
    bool reset(connection& c) const { return reset(c, time_point::max()); }
    bool reset(connection& c, time_point deadline) const {
        deadline = std::min(deadline, own_deadline());
        if (!c.usable()) return false;
        if (!(c.reset_stage_ != 0 ? finish_begun_reset(c, deadline) : undo_session(c, deadline))) return false;
        c.role_set_ = false;
        drain_notifications(c.pg_);
        return c.usable() && PQtransactionStatus(c.pg_) == PQTRANS_IDLE;
    }

    /// With `pipelined_reset`, when a lease returns: sends the reset query and returns without
    /// waiting; `reset` reads its answer before the connection is handed out again. Declines (the
    /// full reset then runs at checkout) unless the session is clean: no transaction, nothing
    /// running, no pipeline, and no role that only an extra `RESET ROLE` would undo.
    void reset_begin(connection& c) const noexcept {
        const auto& o = s_->opt;
        PGconn* pg = c.pg_;
        if (!o.pipelined_reset || o.reset_query.empty() || c.reset_stage_ != 0 || !c.usable()) return;
        if (PQisBusy(pg) || PQpipelineStatus(pg) != PQ_PIPELINE_OFF || PQtransactionStatus(pg) != PQTRANS_IDLE)
            return;
        if (c.role_set_ && o.role_mode == role_switch_mode::session && o.reset_query != "DISCARD ALL") return;
        if (PQisnonblocking(pg)) PQsetnonblocking(pg, 0); // so the send completes (a few bytes)
        drain_notifications(pg);
        if (PQsendQuery(pg, o.reset_query.c_str()) == 1) c.reset_stage_ = 1;
    }

    /// False while the reset sent by reset_begin has no answer yet (a poll of the socket, no
    /// round trip): the pool then hands out another idle connection whose reset is done.
    bool reset_ready(connection& c) const noexcept {
        if (c.reset_stage_ != 1) return true;
        pollfd p{PQsocket(c.pg_), POLLIN, 0};
        return p.fd < 0 || ::poll(&p, 1, 0) != 0;
    }

    /// A backend that was terminated while the connection sat idle leaves the socket readable (its
    /// FATAL message, then EOF) while PQstatus still says OK. No round trip: poll the socket; if
    /// it has data, let libpq read it and look at the status again.
    bool alive(connection& c) const {
        PGconn* pg = c.pg_;
        if (!c.usable()) return false;
        pollfd p{PQsocket(pg), POLLIN, 0};
        if (p.fd < 0) return false;
        const int n = ::poll(&p, 1, 0);
        if (n < 0) return false;
        if (n == 0) return true;
        if (p.revents & (POLLERR | POLLNVAL)) return false;
        if (PQconsumeInput(pg) == 0) return false;
        if (c.reset_stage_ == 1) {
            // The answer to the reset sent on return: libpq parses nothing behind a result nobody
            // has read, so read it now, or a terminated backend's FATAL queued behind it stays
            // unseen until the reset at checkout fails on it.
            while (!PQisBusy(pg)) {
                PGresult* r = PQgetResult(pg);
                if (!r) {
                    c.reset_stage_ = 2;
                    break;
                }
                const bool good = PQresultStatus(r) == PGRES_COMMAND_OK;
                PQclear(r);
                if (!good) return false;
            }
        }
        (void)PQisBusy(pg); // parses what was read: an unsolicited FATAL reaches the notice receiver
        if (PQconsumeInput(pg) == 0) return false;
        drain_notifications(pg);
        return c.usable();
    }

    /// One round trip (an empty query): for keepalive of long-idle connections. False (dead) if
    /// the server does not answer within `command_timeout`.
    bool ping(connection& c) const {
        PGconn* pg = c.pg_;
        if (c.reset_stage_ != 0) return reset(c); // its answer is the round trip (the pool resets dirty ones anyway)
        if (!c.usable() || PQtransactionStatus(pg) != PQTRANS_IDLE) return false;
        return run(c, "", 0, nullptr, own_deadline(), PGRES_EMPTY_QUERY, nullptr) && c.usable();
    }

    void close(connection& c) const noexcept {
        if (c.pg_) PQfinish(std::exchange(c.pg_, nullptr));
    }

    PGconn* native_handle(connection& c) const noexcept { return c.pg_; }

    /// The role switch of `resolve::role_switch` routes, with the role name as a bind parameter
    /// (no identifier is ever spliced into SQL). A missing role gives `key_not_found`, a role the
    /// pooled login is not a member of `authentication_failed`.
    bool prepare(connection& c, const role& r, std::error_code& ec) const {
        PGconn* pg = c.pg_;
        if (!pg || r.name.empty()) {
            ec = make_error_code(pg ? errc::invalid_config : errc::broken_connection);
            return false;
        }
        const time_point deadline = own_deadline();
        const bool tx = s_->opt.role_mode == role_switch_mode::transaction;
        if (tx && !command(c, "BEGIN", "prepare", deadline)) {
            ec = make_error_code(errc::broken_connection);
            return false;
        }
        c.role_set_ = true; // from here on, the reset must undo the role even if this fails
        const char* values[1] = {r.name.c_str()};
        std::string state;
        const bool ok = run(c,
                            tx ? "SELECT pg_catalog.set_config('role', $1, true)"
                               : "SELECT pg_catalog.set_config('role', $1, false)",
                            1, values, deadline, PGRES_TUPLES_OK, &state);
        if (!ok) {
            ec = make_error_code(!state.empty() ? classify_sqlstate(state.c_str()) : errc::broken_connection);
            report("prepare", ec, PQerrorMessage(pg), nullptr);
        }
        return ok;
    }

private:
    std::shared_ptr<const detail::settings> s_;

    static void push(std::vector<const char*>& k, std::vector<const char*>& v, const char* key,
                     const std::string& value) {
        k.push_back(key);
        v.push_back(value.c_str());
    }

    /// Rejects what libpq would silently reinterpret: an empty value means "not set" (and falls
    /// back to PGPASSWORD, PGDATABASE, ...), an empty keyword is meaningless, and `dbname` must
    /// not be given twice. Asks the password source.
    bool build_params(const target& t, std::optional<std::string>& password, std::error_code& ec) const {
        for (std::size_t i = 0; i < t.params.size(); ++i) {
            const param& p = t.params[i];
            if (p.keyword.empty() || p.value.empty() || p.value.find('\0') != std::string::npos ||
                p.keyword.find('\0') != std::string::npos) {
                ec = make_error_code(errc::invalid_config);
                report("connect", ec, "", &t);
                return false;
            }
            for (std::size_t j = 0; j < i; ++j)
                if (t.params[j].keyword == p.keyword) {
                    ec = make_error_code(errc::invalid_config);
                    report("connect", ec, "", &t);
                    return false;
                }
        }
        if (t.password) {
            std::error_code pec;
            std::optional<std::string> pw;
            try {
                pw = t.password(pec);
            } catch (...) {
                pec = make_error_code(errc::connect_failed);
            }
            if (!pw || pw->empty() || pw->find('\0') != std::string::npos) {
                ec = pec ? pec : make_error_code(errc::invalid_config);
                report("connect", ec, "", &t);
                return false;
            }
            if (t.find("password")) {
                ec = make_error_code(errc::invalid_config); // two passwords: which one is meant?
                report("connect", ec, "", &t);
                return false;
            }
            password = std::move(pw);
        }
        return true;
    }

    /// Drives PQconnectPoll until the connection is up, the deadline passes (`timeout`) or the
    /// stop token fires (`cancelled`). Returns false with `ec` empty when libpq itself failed.
    static bool poll_connect(PGconn* pg, time_point deadline, std::stop_token& st, std::error_code& ec) {
        struct closer {
            int fd = -1;
            ~closer() {
                if (fd >= 0) ::close(fd);
            }
        } wake;
        // Declared after `wake`, so it is destroyed (unregistered) before the fd closes.
        std::optional<std::stop_callback<std::function<void()>>> cb;
        if (st.stop_possible()) {
            wake.fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
            if (wake.fd >= 0)
                cb.emplace(st, std::function<void()>([fd = wake.fd] {
                               const std::uint64_t one = 1;
                               [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
                           }));
        }
        bool ok = false;
        {
            PostgresPollingStatusType ps = PGRES_POLLING_WRITING;
            for (;;) {
                if (ps == PGRES_POLLING_OK) {
                    ok = true;
                    break;
                }
                if (ps == PGRES_POLLING_FAILED) break;
                if (st.stop_requested()) {
                    ec = make_error_code(errc::cancelled);
                    break;
                }
                const auto now = std::chrono::steady_clock::now();
                if (now >= deadline) {
                    ec = make_error_code(errc::timeout);
                    break;
                }
                const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
                pollfd fds[2] = {{PQsocket(pg), static_cast<short>(ps == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0},
                                 {wake.fd, POLLIN, 0}};
                const int n = ::poll(fds, wake.fd >= 0 ? 2 : 1, static_cast<int>(std::min<long long>(left, 60'000)));
                if (n < 0 && errno != EINTR) break;
                if (n > 0 && fds[0].revents == 0) continue; // woken by the stop token: re-check
                if (n <= 0) continue;                       // timed out or interrupted: re-check
                ps = PQconnectPoll(pg);
            }
        }
        return ok;
    }

    void fail_connect(connection& c, const target& t, const std::optional<std::string>& password,
                      std::error_code& ec) const {
        std::string msg = PQerrorMessage(c.pg_);
        ec = make_error_code(classify_connect_message(msg));
        if (password) mask(msg, *password);
        report("connect", ec, msg, &t);
    }

    time_point own_deadline() const { return std::chrono::steady_clock::now() + s_->opt.command_timeout; }

    /// Waits until the socket is readable or `deadline` passes (false).
    static bool wait_readable(PGconn* pg, time_point deadline) {
        for (;;) {
            const auto now = std::chrono::steady_clock::now();
            if (now >= deadline) return false;
            const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
            pollfd p{PQsocket(pg), POLLIN, 0};
            if (p.fd < 0) return false;
            const int n = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
            if (n > 0) return true;
            if (n < 0 && errno != EINTR) return false;
        }
    }

    /// Reads every result of what was sent, by `deadline`. True if each was `want`; `sqlstate` (if
    /// given) gets the first error's SQLSTATE. False, with results left unread, when the deadline
    /// passes: the caller destroys the connection.
    static bool collect(PGconn* pg, time_point deadline, ExecStatusType want, std::string* sqlstate) {
        bool ok = true;
        for (;;) {
            while (PQisBusy(pg)) {
                if (!wait_readable(pg, deadline) || PQconsumeInput(pg) == 0) return false;
            }
            PGresult* r = PQgetResult(pg);
            if (!r) return ok;
            if (PQresultStatus(r) != want) {
                if (ok && sqlstate) {
                    const char* st = PQresultErrorField(r, PG_DIAG_SQLSTATE);
                    if (st) *sqlstate = st;
                }
                ok = false;
            }
            PQclear(r);
        }
    }

    /// One statement (with text parameters), its results read by `deadline`.
    static bool run(connection& c, const char* sql, int n_params, const char* const* values, time_point deadline,
                    ExecStatusType want, std::string* sqlstate) {
        PGconn* pg = c.pg_;
        const int sent = n_params == 0 ? PQsendQuery(pg, sql)
                                       : PQsendQueryParams(pg, sql, n_params, nullptr, values, nullptr, nullptr, 0);
        return sent == 1 && collect(pg, deadline, want, sqlstate);
    }

    bool command(connection& c, const char* sql, const char* phase, time_point deadline) const {
        std::string state;
        const bool ok = run(c, sql, 0, nullptr, deadline, PGRES_COMMAND_OK, &state);
        if (!ok) report_failure(c, phase, state);
        return ok;
    }

    /// reset_begin sent the reset query: read its answer (usually here already).
    bool finish_begun_reset(connection& c, time_point deadline) const {
        const bool answered = c.reset_stage_ == 2;
        c.reset_stage_ = 0;
        std::string state;
        if (answered || collect(c.pg_, deadline, PGRES_COMMAND_OK, &state)) return true;
        report_failure(c, "reset", state);
        return false;
    }

    /// The whole reset, one round trip after another: leave pipeline mode, end a transaction or a
    /// running query, run the reset query, and RESET ROLE where the reset query does not.
    bool undo_session(connection& c, time_point deadline) const {
        PGconn* pg = c.pg_;
        drain_notifications(pg);
        if (PQpipelineStatus(pg) != PQ_PIPELINE_OFF && PQexitPipelineMode(pg) != 1) return false;
        if (PQisnonblocking(pg)) PQsetnonblocking(pg, 0);
        switch (PQtransactionStatus(pg)) {
        case PQTRANS_IDLE: break;
        case PQTRANS_INTRANS:
        case PQTRANS_INERROR:
            if (!command(c, "ROLLBACK", "reset", deadline)) return false;
            break;
        case PQTRANS_ACTIVE:
            if (!finish_running_query(c, deadline)) return false;
            if (PQtransactionStatus(pg) != PQTRANS_IDLE && !command(c, "ROLLBACK", "reset", deadline)) return false;
            break;
        default: return false;
        }
        const auto& o = s_->opt;
        if (!o.reset_query.empty() && !command(c, o.reset_query.c_str(), "reset", deadline)) return false;
        return !(c.role_set_ && o.role_mode == role_switch_mode::session && o.reset_query != "DISCARD ALL" &&
                 !command(c, "RESET ROLE", "reset", deadline));
    }

    void report_failure(connection& c, const char* phase, const std::string& sqlstate) const {
        report(phase,
               make_error_code(!sqlstate.empty() ? classify_sqlstate(sqlstate.c_str()) : errc::broken_connection),
               PQerrorMessage(c.pg_), nullptr);
    }

    /// A lease came back with a query still running (sent, results not read): cancel it on the
    /// server, then read and drop its results. Without cancelling (or if the cancel fails) the
    /// connection is destroyed instead.
    ///
    /// The server drops a cancel request that reaches the backend while it is still reading the
    /// query (it cancels only what runs): a query sent just before its lease came back, to a
    /// backend not yet scheduled, would then run on (the drain waited out the deadline and the
    /// connection was destroyed, the query still running on the server). So while no answer
    /// comes, the cancel is sent again, at intervals doubling from 10 ms to 1 s. A repeated
    /// cancel cannot hit the next command: PQcancel returns once the server has signalled the
    /// backend, and a backend that has finished the query discards a cancel it gets while
    /// reading the next one.
    bool finish_running_query(connection& c, time_point deadline) const {
        PGconn* pg = c.pg_;
        if (!s_->opt.cancel_running_query) return false;
        const auto cancel_now = [pg] {
            PGcancel* cancel = PQgetCancel(pg);
            if (!cancel) return false;
            char err[256];
            const int sent = PQcancel(cancel, err, sizeof err);
            PQfreeCancel(cancel);
            return sent != 0;
        };
        std::chrono::milliseconds again{10};
        time_point resend = time_point::max(); // when to cancel again (max: nothing was running)
        if (PQisBusy(pg) || PQtransactionStatus(pg) == PQTRANS_ACTIVE) {
            if (!cancel_now()) return false;
            resend = std::chrono::steady_clock::now() + again;
        }
        // COPY IN/OUT cannot be drained by reading results: give up on those.
        for (int i = 0; i < 1000; ++i) {
            while (PQisBusy(pg)) {
                if (wait_readable(pg, std::min(deadline, resend))) {
                    if (PQconsumeInput(pg) == 0) return false;
                    continue;
                }
                if (resend == time_point::max() || std::chrono::steady_clock::now() >= deadline) return false;
                if (!cancel_now()) return false;
                again = std::min(again * 2, std::chrono::milliseconds(1000));
                resend = std::chrono::steady_clock::now() + again;
            }
            PGresult* r = PQgetResult(pg);
            if (!r) return PQstatus(pg) == CONNECTION_OK;
            const ExecStatusType st = PQresultStatus(r);
            PQclear(r);
            if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH) return false;
        }
        return false;
    }

    static void drain_notifications(PGconn* pg) {
        while (PGnotify* n = PQnotifies(pg)) PQfreemem(n);
    }

    static void mask(std::string& text, const std::string& secret) {
        if (secret.empty()) return;
        for (std::size_t at = text.find(secret); at != std::string::npos; at = text.find(secret, at + 3))
            text.replace(at, secret.size(), "***");
    }

    void report(const char* phase, std::error_code ec, std::string_view server, const target* t) const {
        if (!s_->opt.on_error) return;
        try {
            const std::string where = t ? t->describe() : std::string();
            s_->opt.on_error(error_report{phase, ec, server, where});
        } catch (...) {
        }
    }

    static void receive_notice(void* arg, const PGresult* r) {
        auto* st = static_cast<detail::connection_state*>(arg);
        if (!st || !r) return;
        auto field = [r](int code) -> std::string_view {
            const char* f = PQresultErrorField(r, code);
            return f ? std::string_view(f) : std::string_view();
        };
        const std::string_view severity = field(PG_DIAG_SEVERITY_NONLOCALIZED);
        if (severity == "FATAL" || severity == "PANIC") st->fatal_seen = true;
        if (!st->s->opt.on_notice) return;
        try {
            st->s->opt.on_notice(notice{severity, field(PG_DIAG_SQLSTATE), field(PG_DIAG_MESSAGE_PRIMARY)});
        } catch (...) {
        }
    }
};

} // namespace keypool::pq
