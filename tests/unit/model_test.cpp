// SPDX-License-Identifier: BSL-1.0
// A sequential model test (issue 6): a single-threaded pool on a manual clock, with a fake
// connector whose faults the test drives, is run through random operations beside a reference
// model written from the documented rules (docs/design.md, pool.hpp, options.hpp). After every
// operation every observable result is compared: success or failure and the exact error code,
// which connection a lease got, stats(), leases_out(), last_connect_error(), the fake's counters
// and which connections it has open, and the due time maintain() returns.
//
// The model is plain data: the idle connections in most-recently-used order, the leased ones, the
// clock, each connection's expiry and checkout time, what the fake will do next, and the counters.
// Reproduce a failure with the seed it prints: KEYPOOL_MODEL_SEED=<seed> runs that seed alone, and
// KEYPOOL_MODEL_TRACE=1 prints every operation.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "../support/helpers.hpp"

using namespace std::chrono_literals;
using keypool::close_reason;
using keypool::duration;
using keypool::errc;
using keypool::pool_options;
using keypool::time_point;

namespace {

using model_pool = keypool::basic_pool<keypool::fake::connector, keypool::with_sync<keypool::sync::none>,
                                       keypool::with_clock<keypool::manual_clock>>;

constexpr int kSeeds = 400;
constexpr int kSteps = 1000;

// ---- the reference model ----------------------------------------------------------------------

struct mconn {
    std::uint64_t id = 0;                // the fake's connection id
    time_point expires = time_point::max(); // created + max_lifetime (lifetime_jitter is 0 here)
    time_point used_at{};                // idle time counts from here: the last checkout (or the connect)
    bool dirty = false;                  // returned since its last reset: reset at the next checkout
    bool dead = false;                   // killed in the fake: alive() and reset() fail
    bool retire = false;                 // maintain() saw it leased past its lifetime: closed at return
    std::uint64_t uses = 0;              // checkouts of this connection
    // maintain()'s note of the last pass that saw it leased (design.md, "Idle time"): a connection
    // idle again with the same use count was returned after that pass, so its idle time counts from it.
    std::uint64_t seen_uses = 0;
    std::optional<time_point> seen_at;
};

enum class tri { no, yes, unknown };

/// What maintain()'s due time must be: `known`, or min(known, the backoff end) when the backoff
/// end (only known to lie in [lo, hi]) takes part.
struct due_expectation {
    time_point known = time_point::max();
    bool with_backoff = false;
    time_point lo{}, hi{};
    bool current = false; // that backoff is still the pool's: what the due time shows narrows it
    // min_idle unmet with room, and the model cannot tell whether the backoff is over: `now` if
    // it is (the pool must come back at once to open the rest), else the rest of the expectation.
    bool maybe_now = false;
};

struct model {
    pool_options o;
    time_point now;
    std::vector<mconn> idle;   // back() is the most recently used: the top of the idle stack
    std::vector<mconn> leased; // in the order of the test's leases
    bool closed = false;

    // What the fake will do next.
    std::deque<std::error_code> script; // the next connects' outcomes (empty code = success); then success
    std::size_t failing_resets = 0;     // resets (of live connections) that will report failure
    std::uint64_t next_id = 0;          // ids count successful connects from 1

    // Connect failures: after the n-th failure in a row the pool backs off until a time drawn
    // from [end + d/2, end + d], d = backoff_initial * 2^(n-1) capped at backoff_max. The model
    // knows the interval and narrows it by what it observes.
    unsigned failures = 0;
    time_point backoff_lo{}, backoff_hi{};
    std::error_code last_error;

    keypool::pool_stats st{};     // expected stats() (counters and peaks; gauges come from the lists)
    keypool::fake::counters fk{}; // expected fake counters
    std::string contradiction;    // set when an observation contradicts the backoff interval

    // How often maintain() ended with min_idle unmet, room to connect, no backoff and a due time
    // in the future (the skipped "model bug: maintain() ..." tests): counted, not failed.
    std::uint64_t undone_top_ups = 0;
    std::uint64_t backoff_learnt = 0, deadlocks = 0; // coverage: resolved backoff ends, would_deadlock

    model(const pool_options& opt, time_point start) : o(opt), now(start) {}

    std::size_t open() const { return idle.size() + leased.size(); }
    std::size_t max_connecting() const { return std::min(o.max_connecting, o.max_size); }

    tri in_backoff() const {
        if (failures == 0) return tri::no;
        if (now < backoff_lo) return tri::yes;
        if (now >= backoff_hi) return tri::no;
        return tri::unknown;
    }
    /// The pool showed whether it was backing off at `now`.
    void learn_backoff(bool backing_off) {
        ++backoff_learnt;
        if (backing_off)
            backoff_lo = std::max(backoff_lo, now + duration(1));
        else
            backoff_hi = std::min(backoff_hi, now);
        if (backoff_lo > backoff_hi) contradiction = "the backoff end left its interval [end + d/2, end + d]";
    }

    duration backoff_d() const {
        duration d = o.backoff_initial;
        for (unsigned i = 1; i < failures && d < o.backoff_max; ++i) d *= 2;
        return std::min(d, o.backoff_max);
    }

    void close_conn(const mconn&, close_reason why) {
        ++st.closes[static_cast<std::size_t>(why)];
        ++fk.closes;
    }

    /// One connect attempt. `own_deadline`: the caller's deadline had passed when it ended (an
    /// acquire with a zero timeout on the manual clock), so a failure is not the server's.
    std::optional<mconn> connect(bool own_deadline, std::error_code& ec) {
        ++fk.connect_attempts;
        std::error_code outcome;
        if (!script.empty()) {
            outcome = script.front();
            script.pop_front();
        }
        if (!outcome) {
            ++fk.connects;
            ++st.connects_ok;
            failures = 0;
            mconn c;
            c.id = ++next_id;
            c.used_at = now;
            if (o.max_lifetime) c.expires = now + *o.max_lifetime;
            return c;
        }
        ++fk.connect_failures;
        ++st.connects_failed;
        if (own_deadline && (outcome == errc::timeout || outcome == errc::cancelled)) {
            ++st.timeouts; // the caller's own deadline ended it: a timeout, not the server's failure
            ec = make_error_code(errc::timeout);
            return std::nullopt;
        }
        ec = outcome;
        last_error = outcome;
        ++failures;
        const duration d = backoff_d();
        backoff_lo = now + d / 2;
        backoff_hi = now + d;
        return std::nullopt;
    }

    /// Checkout rules: past its lifetime -> closed (lifetime); idle at least validate_after_idle ->
    /// alive() or closed (broken); dirty -> reset or closed (reset_failed). The clock is the coarse
    /// one, which the manual clock reads the same.
    bool checkout(mconn& c) {
        if (now >= c.expires || now - c.used_at >= o.validate_after_idle) {
            if (now >= c.expires) return close_conn(c, close_reason::lifetime), false;
            ++fk.alive_checks;
            if (c.dead) return close_conn(c, close_reason::broken), false;
        }
        if (c.dirty) {
            ++st.resets;
            ++fk.resets;
            bool fail = c.dead;
            if (!fail && failing_resets > 0) --failing_resets, fail = true;
            if (fail) return ++fk.reset_failures, close_conn(c, close_reason::reset_failed), false;
            c.dirty = false;
        }
        c.used_at = now;
        ++c.uses;
        ++st.acquires;
        return true;
    }

    std::optional<mconn> pop_idle() {
        if (closed || idle.empty()) return std::nullopt;
        mconn c = idle.back();
        idle.pop_back();
        return c;
    }

    /// try_acquire: idle connections, MRU first, until one passes checkout; never connects.
    std::optional<std::uint64_t> try_acquire() {
        while (auto c = pop_idle()) {
            if (checkout(*c)) {
                leased.push_back(*c);
                return c->id;
            }
        }
        return std::nullopt;
    }

    /// acquire(timeout) on a single-threaded pool. `connect_seen`: whether the fake saw a connect
    /// attempt (used only when the model cannot tell whether the pool is still backing off).
    std::optional<std::uint64_t> acquire(duration timeout, bool connect_seen, std::error_code& ec) {
        ec.clear();
        if (closed) return ec = make_error_code(errc::closed), std::nullopt;
        // The first idle candidate is tried without a deadline check (the fast path); after each
        // later one that fails checkout the deadline is checked.
        for (bool first = true;; first = false) {
            if (auto c = pop_idle()) {
                if (checkout(*c)) {
                    leased.push_back(*c);
                    return c->id;
                }
                if (!first && timeout <= duration::zero()) {
                    ++st.timeouts;
                    return ec = make_error_code(errc::timeout), std::nullopt;
                }
                continue;
            }
            // Nothing idle: connect if there is room and no backoff; nobody else can return a
            // connection, so otherwise fail at once.
            const bool room = open() < o.max_size;
            tri b = in_backoff();
            if (b == tri::unknown && room) {
                learn_backoff(!connect_seen);
                b = connect_seen ? tri::no : tri::yes;
            }
            if (b == tri::no && room) {
                st.peak_size = std::max<std::uint64_t>(st.peak_size, open() + 1);
                auto c = connect(timeout <= duration::zero(), ec);
                if (!c) return std::nullopt;
                const bool ok = checkout(*c); // a fresh connection always passes
                if (!ok) contradiction = "a fresh connection failed checkout in the model";
                leased.push_back(*c);
                return c->id;
            }
            if (b != tri::no && open() == 0) return ec = last_error, std::nullopt;
            ++deadlocks;
            return ec = make_error_code(errc::would_deadlock), std::nullopt;
        }
    }

    /// A lease returns: closed if maintain() marked it (lifetime), closed if the pool is closed,
    /// else dirty on top of the idle stack.
    void release(std::size_t i, bool discard) {
        mconn c = leased[i];
        leased.erase(leased.begin() + static_cast<std::ptrdiff_t>(i));
        if (discard) return close_conn(c, close_reason::discarded);
        if (c.retire) return close_conn(c, close_reason::lifetime);
        if (closed) return close_conn(c, close_reason::closed);
        c.dirty = true;
        idle.push_back(c);
    }

    void close() {
        if (closed) return;
        closed = true;
        for (auto it = idle.rbegin(); it != idle.rend(); ++it) close_conn(*it, close_reason::closed);
        idle.clear();
    }

    void kill(std::uint64_t id) {
        for (auto* v : {&idle, &leased})
            for (auto& c : *v)
                if (c.id == id) c.dead = true;
    }

    /// maintain(): mark leased connections past their lifetime; close idle ones past their lifetime,
    /// then idle ones past idle_timeout from the LRU end while more than min_idle remain; open
    /// connections up to min_idle (counting those being closed against max_size, at most
    /// max_connecting, not while backing off); say when it next has work.
    due_expectation maintain(bool connect_seen) {
        due_expectation due;
        if (closed) return due;
        time_point& d = due.known;
        for (auto& c : leased) {
            c.seen_uses = c.uses;
            c.seen_at = now;
            if (now >= c.expires)
                c.retire = true;
            else
                d = std::min(d, c.expires);
        }
        for (auto& c : idle)
            if (c.seen_at && c.uses == c.seen_uses) c.used_at = std::max(c.used_at, *c.seen_at);

        std::size_t keep = 0;
        for (auto& c : idle) keep += now < c.expires;
        std::vector<std::pair<mconn, close_reason>> to_close;
        std::vector<mconn> kept;
        for (auto& c : idle) { // LRU first
            if (now >= c.expires) {
                to_close.emplace_back(c, close_reason::lifetime);
            } else if (o.idle_timeout && keep > o.min_idle && now - c.used_at >= *o.idle_timeout) {
                to_close.emplace_back(c, close_reason::idle);
                --keep;
            } else {
                kept.push_back(c);
            }
        }
        idle = kept;
        for (auto& c : idle) {
            d = std::min(d, c.expires);
            if (o.idle_timeout && keep > o.min_idle) d = std::min(d, c.used_at + *o.idle_timeout);
        }

        const std::size_t open_now = open() + to_close.size(); // closing ones still count
        std::size_t top_up = 0;
        if (keep < o.min_idle) {
            const std::size_t room =
                std::min({o.min_idle - keep, o.max_size - std::min(o.max_size, open_now), max_connecting()});
            tri b = in_backoff();
            if (b == tri::unknown && room > 0) {
                learn_backoff(!connect_seen);
                b = connect_seen ? tri::no : tri::yes;
            }
            if (b == tri::no) top_up = room;
        }
        if (failures > 0 && top_up < o.min_idle - std::min(o.min_idle, keep)) {
            due.with_backoff = true;
            due.lo = backoff_lo;
            due.hi = backoff_hi;
            due.current = top_up == 0;
        }
        st.peak_size = std::max<std::uint64_t>(st.peak_size, open_now + top_up);
        for (auto& [c, why] : to_close) close_conn(c, why);
        for (std::size_t i = 0; i < top_up; ++i) {
            std::error_code ec;
            if (auto c = connect(false, ec)) idle.push_back(*c);
        }
        if (top_up > 0) {
            // A backoff that took part above had ended (<= now); a new one starts after now.
            if (failures > 0 && !due.with_backoff) {
                due.with_backoff = true;
                due.lo = backoff_lo;
                due.hi = backoff_hi;
                due.current = true;
            }
            if (o.idle_timeout && open() > o.min_idle) d = std::min(d, now + *o.idle_timeout);
            if (o.max_lifetime) d = std::min(d, now + *o.max_lifetime);
        }
        // min_idle still unmet with room to connect (the top-up was sized while closing ones still
        // counted, or capped by max_connecting): due at once unless backing off.
        if (idle.size() < o.min_idle && open() < o.max_size) {
            switch (in_backoff()) {
            case tri::no: d = std::min(d, now); break;
            case tri::unknown: due.maybe_now = true; break;
            case tri::yes: break;
            }
        }
        if (failures == 0 && idle.size() < o.min_idle && open() < o.max_size && d > now) ++undone_top_ups;
        return due;
    }

    /// Compares maintain()'s due time; what it shows about the backoff end narrows the interval.
    bool check_due(time_point got, const due_expectation& e) {
        if (e.maybe_now) {
            if (got == now && e.known >= now) {
                learn_backoff(false); // the pool is not backing off
                return true;
            }
            learn_backoff(true);
        }
        if (!e.with_backoff) return got == e.known;
        if (got < e.known) {
            if (got < e.lo || got > e.hi) return false;
            if (e.current) backoff_lo = backoff_hi = got;
            return true;
        }
        if (got != e.known || e.hi < e.known) return false;
        if (e.current) backoff_lo = std::max(backoff_lo, e.known);
        return true;
    }
};

// ---- the driver -------------------------------------------------------------------------------

std::string ms(time_point t, time_point origin) {
    if (t == time_point::max()) return "max";
    return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(t - origin).count()) + "ms";
}

std::string describe(const pool_options& o) {
    auto opt = [](const std::optional<duration>& d) {
        return d ? std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(*d).count()) + "ms"
                 : std::string("never");
    };
    auto msd = [](duration d) {
        return std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(d).count()) + "ms";
    };
    std::ostringstream s;
    s << "max_size=" << o.max_size << " min_idle=" << o.min_idle << " max_connecting=" << o.max_connecting
      << " idle_timeout=" << opt(o.idle_timeout) << " max_lifetime=" << opt(o.max_lifetime)
      << " validate_after_idle=" << msd(o.validate_after_idle) << " backoff=" << msd(o.backoff_initial) << ".."
      << msd(o.backoff_max);
    return s.str();
}

struct run_result {
    std::string failure; // empty = the pool matched the model throughout
    std::uint64_t undone_top_ups = 0;
    std::uint64_t acquires = 0, closes = 0, connect_failures = 0, backoff_refusals = 0;
    std::array<std::uint64_t, keypool::close_reason_count> by_reason{};
    std::uint64_t timeouts = 0, deadlocks = 0, backoff_learnt = 0;
};

run_result run_seed(std::uint64_t seed, int steps) {
    run_result out;
    const bool trace = std::getenv("KEYPOOL_MODEL_TRACE") != nullptr;
    std::mt19937_64 rng(seed);
    auto below = [&](std::size_t n) { return std::uniform_int_distribution<std::size_t>(0, n - 1)(rng); };
    auto one_of = [&](auto... v) {
        const std::array a{v...};
        return a[below(a.size())];
    };

    pool_options o;
    o.max_size = 1 + below(4);
    o.min_idle = below(o.max_size + 1);
    o.max_connecting = 1 + below(o.max_size);
    o.idle_timeout = one_of(std::optional<duration>{}, std::optional<duration>{3s}, std::optional<duration>{15s});
    o.max_lifetime = one_of(std::optional<duration>{}, std::optional<duration>{10s}, std::optional<duration>{45s});
    o.lifetime_jitter = 0s; // expiry = connect time + max_lifetime exactly
    o.validate_after_idle = one_of(duration(0s), duration(1s), duration(5s));
    o.backoff_initial = one_of(duration(100ms), duration(300ms));
    o.backoff_max = std::max(o.backoff_initial, one_of(duration(100ms), duration(1s), duration(4s)));
    o.seed = seed;

    keypool::manual_clock clock;
    const time_point origin = clock.now();
    keypool::fake::connector fake(clock);
    model m(o, origin);
    std::optional<model_pool> pool;
    pool.emplace(fake, "db", o, clock);
    std::vector<model_pool::lease> leases;

    std::deque<std::string> recent; // the last operations, for the failure message
    std::vector<std::string> bad;
    auto expect = [&](bool ok, const std::string& what) {
        if (!ok) bad.push_back(what);
    };
    auto str = [](auto v) {
        std::ostringstream s;
        s << v;
        return s.str();
    };
    auto eq = [&](const char* what, auto got, auto want) {
        if (!(got == want)) bad.push_back(std::string(what) + ": pool " + str(got) + ", model " + str(want));
    };
    auto ec_str = [](std::error_code ec) { return ec ? ec.message() : std::string("ok"); };
    auto id_str = [](std::uint64_t id) { return id ? "#" + std::to_string(id) : std::string("none"); }; // ids start at 1

    // A handed-out connection must be clean (reset since its last use, or fresh) and for our target.
    auto check_lease = [&](const model_pool::lease& l) {
        expect(l->session().empty(), "a handed-out connection still had session state '" + l->session() + "'");
        expect(l->target == "db", "a handed-out connection is for target '" + l->target + "'");
    };

    auto compare_state = [&] {
        const keypool::pool_stats s = pool->stats();
        eq("stats.size", s.size, std::uint64_t{m.open()});
        eq("stats.idle", s.idle, std::uint64_t{m.idle.size()});
        eq("stats.in_use", s.in_use, std::uint64_t{m.leased.size()});
        eq("stats.connecting", s.connecting, std::uint64_t{0});
        eq("stats.waiters", s.waiters, std::uint64_t{0});
        eq("stats.peak_size", s.peak_size, m.st.peak_size);
        eq("stats.peak_waiters", s.peak_waiters, std::uint64_t{0});
        eq("stats.acquires", s.acquires, m.st.acquires);
        eq("stats.waits", s.waits, std::uint64_t{0});
        eq("stats.timeouts", s.timeouts, m.st.timeouts);
        eq("stats.cancels", s.cancels, std::uint64_t{0});
        eq("stats.rejected", s.rejected, std::uint64_t{0});
        eq("stats.connects_ok", s.connects_ok, m.st.connects_ok);
        eq("stats.connects_failed", s.connects_failed, m.st.connects_failed);
        eq("stats.resets", s.resets, m.st.resets);
        eq("stats.leaks", s.leaks, std::uint64_t{0});
        for (std::size_t r = 0; r < keypool::close_reason_count; ++r)
            eq((std::string("stats.closes[") + keypool::to_string(static_cast<close_reason>(r)) + "]").c_str(),
               s.closes[r], m.st.closes[r]);
        eq("last_connect_error", ec_str(pool->last_connect_error()), ec_str(m.last_error));

        const keypool::fake::counters f = fake.stats();
        eq("fake.connect_attempts", f.connect_attempts, m.fk.connect_attempts);
        eq("fake.connects", f.connects, m.fk.connects);
        eq("fake.connect_failures", f.connect_failures, m.fk.connect_failures);
        eq("fake.closes", f.closes, m.fk.closes);
        eq("fake.resets", f.resets, m.fk.resets);
        eq("fake.reset_failures", f.reset_failures, m.fk.reset_failures);
        eq("fake.alive_checks", f.alive_checks, m.fk.alive_checks);
        eq("fake.pings", f.pings, std::uint64_t{0});
        eq("fake.live", f.live, std::uint64_t{m.open()});
        eq("fake.scripted", fake.scripted(), m.script.size());
        for (auto* v : {&m.idle, &m.leased})
            for (auto& c : *v) expect(fake.is_live(c.id), "connection #" + std::to_string(c.id) + " is not open in the fake");

        // The leases out, by age (the time since their checkout).
        std::vector<duration> got, want;
        for (auto& r : pool->leases_out()) got.push_back(r.age);
        for (auto& c : m.leased) want.push_back(m.now - c.used_at);
        std::sort(got.begin(), got.end());
        std::sort(want.begin(), want.end());
        expect(got == want, "leases_out() ages differ");
        // The test's leases hold the connections the model says are leased, in the same order.
        for (std::size_t i = 0; i < leases.size() && i < m.leased.size(); ++i)
            eq("lease id", leases[i]->id, m.leased[i].id);
        eq("leases", leases.size(), m.leased.size());
        expect(m.contradiction.empty(), m.contradiction);
    };

    auto all_conns = [&] {
        std::vector<std::uint64_t> ids;
        for (auto* v : {&m.idle, &m.leased})
            for (auto& c : *v) ids.push_back(c.id);
        return ids;
    };

    auto do_release = [&](std::size_t i, bool discard) {
        if (discard)
            leases[i].discard();
        else
            leases[i].release();
        leases.erase(leases.begin() + static_cast<std::ptrdiff_t>(i));
        m.release(i, discard);
    };

    // The operations and their weights.
    enum class op_kind { try_acquire, acquire, acquire_0, release, discard, use, advance, maintain, kill,
                         fail_connects, fail_resets, to_backoff_end, close, finish };
    std::discrete_distribution<int> ops({
        12,  // try_acquire
        12,  // acquire(1s)
        4,   // acquire(0s)
        16,  // release
        3,   // discard
        5,   // use (the session becomes dirty)
        14,  // advance the clock
        14,  // maintain
        3,   // kill a connection
        4,   // the next connects fail
        2,   // the next resets fail
        4,   // advance to the backoff end the model knows of (its lower bound, or just past it)
        0.1, // close
    });

    for (int step = 0; step <= steps; ++step) {
        std::ostringstream op;
        op << "step " << step << " t=" << ms(m.now, origin) << ": ";
        const bool last = step == steps;
        op_kind k = last ? op_kind::finish : op_kind(ops(rng));
        if ((k == op_kind::release || k == op_kind::discard || k == op_kind::use) && leases.empty())
            k = op_kind::try_acquire;

        if (last) {
            // The end: close, return every lease, and nothing may stay open.
            op << "close and return everything";
            pool->close();
            m.close();
            while (!leases.empty()) do_release(below(leases.size()), below(4) == 0);
        } else if (k == op_kind::try_acquire) {
            op << "try_acquire";
            auto l = pool->try_acquire();
            const auto want = m.try_acquire();
            const std::uint64_t got = l ? l->id : 0;
            op << " -> " << id_str(got);
            eq("try_acquire id", id_str(got), id_str(want.value_or(0)));
            if (l) check_lease(l), leases.push_back(std::move(l));
        } else if (k == op_kind::acquire || k == op_kind::acquire_0) {
            const duration timeout = k == op_kind::acquire ? duration(1s) : duration(0s);
            op << "acquire(" << std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count() << "ms)";
            const auto attempts = fake.stats().connect_attempts;
            std::error_code ec;
            auto l = pool->acquire(timeout, ec);
            const bool connect_seen = fake.stats().connect_attempts > attempts;
            std::error_code want_ec;
            const tri before = m.in_backoff();
            const auto want = m.acquire(timeout, connect_seen, want_ec);
            const std::uint64_t got = l ? l->id : 0;
            op << " -> " << id_str(got) << " " << ec_str(ec);
            eq("acquire id", id_str(got), id_str(want.value_or(0)));
            eq("acquire error", ec_str(ec), ec_str(want_ec));
            expect(bool(l) != bool(ec), "acquire: a lease and an error, or neither");
            if (!l && before != tri::no && m.failures > 0 && !connect_seen) ++out.backoff_refusals;
            if (l) check_lease(l), leases.push_back(std::move(l));
        } else if (k == op_kind::release || k == op_kind::discard) {
            const std::size_t i = below(leases.size());
            const bool discard = k == op_kind::discard;
            op << (discard ? "discard #" : "release #") << leases[i]->id;
            do_release(i, discard);
        } else if (k == op_kind::use) {
            const std::size_t i = below(leases.size());
            op << "use #" << leases[i]->id;
            leases[i]->use("in a transaction");
        } else if (k == op_kind::advance) {
            const duration d = one_of(duration(1ms), duration(50ms), duration(120ms), duration(400ms), duration(1s),
                                      duration(2s), duration(5s), duration(20s), duration(70s));
            op << "advance " << std::chrono::duration_cast<std::chrono::milliseconds>(d).count() << "ms";
            clock.advance(d);
            m.now += d;
        } else if (k == op_kind::maintain) {
            op << "maintain";
            const auto attempts = fake.stats().connect_attempts;
            const time_point due = pool->maintain();
            const bool connect_seen = fake.stats().connect_attempts > attempts;
            const due_expectation want = m.maintain(connect_seen);
            op << " -> due " << ms(due, origin);
            const std::string want_str = want.with_backoff ? "min(" + ms(want.known, origin) + ", backoff end in [" +
                                                                 ms(want.lo, origin) + ", " + ms(want.hi, origin) + "])"
                                                           : ms(want.known, origin);
            expect(m.check_due(due, want), "maintain() due: pool " + ms(due, origin) + ", model " + want_str);
            // Never late: due no later than any open connection's expiry not yet acted on, nor the
            // first idle timeout while more than min_idle are idle (a closed pool has no work).
            time_point next_work = time_point::max();
            if (!m.closed) {
                for (auto& c : m.idle) next_work = std::min(next_work, c.expires);
                for (auto& c : m.leased)
                    if (!c.retire) next_work = std::min(next_work, c.expires);
                if (m.o.idle_timeout && m.idle.size() > m.o.min_idle)
                    for (auto& c : m.idle) next_work = std::min(next_work, c.used_at + *m.o.idle_timeout);
            }
            expect(due <= next_work, "maintain() due " + ms(due, origin) + " is later than the next work at " +
                                         ms(next_work, origin));
        } else if (k == op_kind::kill) {
            const auto ids = all_conns();
            if (ids.empty()) {
                op << "kill (nothing open)";
            } else {
                const std::uint64_t id = ids[below(ids.size())];
                op << "kill #" << id;
                fake.kill(id);
                m.kill(id);
            }
        } else if (k == op_kind::fail_connects && m.script.size() >= 2) {
            op << "fail connects (enough are scripted)";
        } else if (k == op_kind::fail_connects) {
            const std::size_t n = 1 + below(2);
            const std::error_code ec = one_of(make_error_code(errc::connect_failed),
                                              make_error_code(errc::upstream_unreachable),
                                              make_error_code(errc::server_saturated));
            op << "fail the next " << n << " connects with " << ec.message();
            fake.fail_next_connects(n, ec);
            for (std::size_t i = 0; i < n; ++i) m.script.push_back(ec);
        } else if (k == op_kind::fail_resets) {
            const std::size_t n = 1 + below(2);
            op << "fail the next " << n << " resets";
            fake.fail_next_resets(n);
            m.failing_resets += n;
        } else if (k == op_kind::to_backoff_end) {
            op << "advance to the model's backoff end";
            if (m.failures > 0 && m.backoff_lo > m.now) {
                const duration d = m.backoff_lo - m.now + duration(below(2) ? 0 : 1);
                clock.advance(d);
                m.now += d;
            }
        } else {
            op << "close";
            pool->close();
            m.close();
        }

        compare_state();
        if (trace) std::printf("%s\n", op.str().c_str());
        recent.push_back(op.str());
        if (recent.size() > 40) recent.pop_front();
        if (!bad.empty()) {
            std::ostringstream f;
            f << "seed " << seed << " (" << describe(o) << ") diverged at step " << step
              << ".\nRecent operations:\n";
            for (auto& r : recent) f << "  " << r << "\n";
            f << "Differences:\n";
            for (auto& b : bad) f << "  " << b << "\n";
            out.failure = f.str();
            return out;
        }
    }
    pool.reset();
    if (fake.live() != 0) out.failure = "seed " + std::to_string(seed) + ": connections left open at the end";
    out.undone_top_ups = m.undone_top_ups;
    out.acquires = m.st.acquires;
    out.connect_failures = m.st.connects_failed;
    for (auto c : m.st.closes) out.closes += c;
    out.by_reason = m.st.closes;
    out.timeouts = m.st.timeouts;
    out.deadlocks = m.deadlocks;
    out.backoff_learnt = m.backoff_learnt;
    return out;
}

} // namespace

TEST_SUITE("model") {

TEST_CASE("model: a single-threaded pool matches the reference model under random operations") {
    std::uint64_t undone = 0, acquires = 0, closes = 0, failures = 0, refusals = 0, timeouts = 0, deadlocks = 0,
                  learnt = 0;
    std::array<std::uint64_t, keypool::close_reason_count> by_reason{};
    bool diverged = false;
    std::uint64_t first = 1, end = kSeeds + 1;
    if (const char* one = std::getenv("KEYPOOL_MODEL_SEED")) first = std::strtoull(one, nullptr, 10), end = first + 1;
    for (std::uint64_t seed = first; seed < end; ++seed) {
        CAPTURE(seed);
        const run_result r = run_seed(seed, kSteps);
        if (!r.failure.empty()) {
            FAIL_CHECK(r.failure);
            diverged = true;
            break;
        }
        undone += r.undone_top_ups;
        acquires += r.acquires;
        closes += r.closes;
        failures += r.connect_failures;
        refusals += r.backoff_refusals;
        timeouts += r.timeouts;
        deadlocks += r.deadlocks;
        learnt += r.backoff_learnt;
        for (std::size_t i = 0; i < by_reason.size(); ++i) by_reason[i] += r.by_reason[i];
    }
    if (diverged || end - first < kSeeds) return;
    // The runs must have exercised something.
    CHECK(acquires > 10'000);
    CHECK(closes > 1'000);
    CHECK(failures > 100);
    MESSAGE(kSeeds << " seeds x " << kSteps << " steps: " << acquires << " checkouts, " << closes << " closes, "
                   << failures << " failed connects, " << refusals << " acquires refused while backing off, "
                   << undone << " maintain() passes that left min_idle unmet with room and no backoff, " << timeouts
                   << " timeouts, " << deadlocks << " would_deadlock, " << learnt
                   << " times the pool showed whether it was still backing off");
    std::ostringstream reasons;
    for (std::size_t i = 0; i < by_reason.size(); ++i)
        reasons << keypool::to_string(static_cast<close_reason>(i)) << "=" << by_reason[i] << " ";
    MESSAGE("closes by reason: " << reasons.str());
}

} // TEST_SUITE

// ---- suspected bugs, found while writing the model (skipped: the library is not changed here) ----
//
// pool.hpp documents maintain() as "Returns when it next has work (or time_point::max())", and
// "opens connections up to min_idle". The model counts the passes that leave min_idle unmet while
// there is room and no backoff; the two cases below are the minimal ones. A janitor hides them
// behind its max_interval (1 s): warm-up and recovery take one janitor interval per round.

TEST_SUITE("model") {

TEST_CASE("maintain() refills min_idle after closing expired connections, or says it is due at once") {
    // Found by the model: the top-up was sized while the expiring connections still counted against
    // max_size, so none was opened, and maintain() returned time_point::max().
    kp_test::fixture f;
    auto p = f.make<keypool::with_sync<keypool::sync::none>>(
        {.max_size = 2, .min_idle = 2, .idle_timeout = std::nullopt, .max_lifetime = 10s, .lifetime_jitter = 0s});
    CHECK(p.maintain() == f.clock.now() + 10s); // warm: two idle connections, due when they expire
    REQUIRE(p.stats().idle == 2);
    f.clock.advance(10s);
    const time_point due = p.maintain(); // both expire: closed (lifetime)
    CHECK(p.stats().closed_for(close_reason::lifetime) == 2);
    CHECK(due <= f.clock.now());
    CHECK(p.maintain() == f.clock.now() + 10s); // the next pass opens them
    CHECK(p.stats().idle == 2);
}

TEST_CASE("maintain() capped by max_connecting says it is due at once until min_idle is met") {
    kp_test::fixture f;
    auto p = f.make<keypool::with_sync<keypool::sync::none>>(
        {.max_size = 3, .min_idle = 3, .max_connecting = 1, .idle_timeout = std::nullopt, .max_lifetime = std::nullopt});
    CHECK(p.maintain() <= f.clock.now()); // opened max_connecting = 1
    CHECK(p.stats().idle == 1);
    CHECK(p.maintain() <= f.clock.now());
    CHECK(p.maintain() == time_point::max()); // 3 idle: nothing left to do
    CHECK(p.stats().idle == 3);
}

TEST_CASE("a connect the server refused after the caller's deadline passed: the real error, and backoff") {
    // Found by the model: acquire(0s) reported `timeout` for a refused connect, counted no timeout,
    // kept no last_connect_error and started no backoff.
    kp_test::fixture f;
    auto p = f.make<keypool::with_sync<keypool::sync::none>>({.max_size = 1});
    f.fake.fail_next_connects(1, make_error_code(errc::upstream_unreachable));
    std::error_code ec;
    auto l = p.acquire(0s, ec);
    CHECK_FALSE(l);
    CHECK(ec == errc::upstream_unreachable);
    CHECK(p.stats().connects_failed == 1);
    CHECK(p.stats().timeouts == 0);
    CHECK(p.last_connect_error() == errc::upstream_unreachable);
    // A connect that ran out of the caller's own time is a timeout, counted as one.
    f.clock.advance(1h); // past any backoff
    f.fake.fail_next_connects(1, make_error_code(errc::timeout));
    l = p.acquire(0s, ec);
    CHECK(ec == errc::timeout);
    CHECK(p.stats().timeouts == 1);
    CHECK(p.last_connect_error() == errc::upstream_unreachable); // not the server's failure
}

} // TEST_SUITE
