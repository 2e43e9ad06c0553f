// SPDX-License-Identifier: BSL-1.0
// fake::connector: in-memory connections with session state, scripted connect outcomes, fault
// injection and counters. For your own tests as much as for keypool's.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <map>
#include <set>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include <boost/smart_ptr/intrusive_ptr.hpp>
#include <boost/smart_ptr/intrusive_ref_counter.hpp>

#include <keypool/detail/config.hpp>
#include <keypool/error.hpp>
#include <keypool/policies/clock.hpp>
#include <keypool/resolver.hpp>

namespace keypool::fake {

/// A latch a test opens to let blocked connects through. Thread-safety: all members.
class gate {
public:
    void open() {
        std::lock_guard lk(m_);
        open_ = true;
        for (auto& wake : wakers_) wake();
    }
    void close() {
        std::lock_guard lk(m_);
        open_ = false;
    }
    bool is_open() const {
        std::lock_guard lk(m_);
        return open_;
    }
    /// How many connects are blocked on this gate right now (lets a test wait for them).
    std::size_t waiting() const {
        std::lock_guard lk(m_);
        return wakers_.size();
    }

    /// Blocks until the gate opens (true), the deadline passes on `clock` or `st` fires (false).
    template <class Clock>
    bool wait(const Clock& clock, time_point deadline, std::stop_token st) {
        typename Clock::event ev(clock);
        std::list<std::function<void()>>::iterator me;
        {
            std::lock_guard lk(m_);
            if (open_) return true;
            me = wakers_.insert(wakers_.end(), [&ev] { ev.set(); });
        }
        std::stop_callback cb(st, [&ev] { ev.set(); });
        for (;;) {
            ev.wait_until(deadline);
            std::lock_guard lk(m_);
            if (open_ || st.stop_requested() || clock.now() >= deadline) {
                wakers_.erase(me);
                return open_;
            }
            ev.reset();
        }
    }

private:
    mutable std::mutex m_;
    bool open_ = false;
    std::list<std::function<void()>> wakers_;
};

/// What the next connect does. The script is consumed one outcome per connect attempt; when it is
/// empty, connects succeed at once.
struct outcome {
    enum class kind { succeed, fail, delay, block };
    kind what = kind::succeed;
    std::error_code ec{};
    duration delay{};
    std::shared_ptr<gate> at{};

    static outcome succeed() { return {}; }
    static outcome fail(std::error_code ec = make_error_code(errc::connect_failed)) {
        return {kind::fail, ec, {}, {}};
    }
    /// Takes `d` of the connector's clock (a manual clock must be advanced), then succeeds; the
    /// connect's deadline and stop token still end it early.
    static outcome slow(duration d) { return {kind::delay, {}, d, {}}; }
    /// Blocks until `g` opens, the deadline passes or the stop token fires; once the gate opens the
    /// connect succeeds, or fails with `then` if given.
    static outcome wait_for(std::shared_ptr<gate> g, std::error_code then = {}) {
        return {kind::block, then, {}, std::move(g)};
    }
};

/// What the connector has seen since it was built.
struct counters {
    std::uint64_t connect_attempts = 0;
    std::uint64_t connects = 0;         ///< successful
    std::uint64_t connect_failures = 0;
    std::uint64_t closes = 0;
    std::uint64_t resets = 0;
    std::uint64_t reset_failures = 0;
    std::uint64_t alive_checks = 0;
    std::uint64_t pings = 0;
    std::uint64_t live = 0;             ///< opened and not yet closed
};

struct connection;

namespace detail {
/// A connection's flags and counters (no second allocation to miss in the cache). Only the
/// connection's current owner calls reset/alive, so the counters need no read-modify-write; the
/// flags, which the connector also sets (kill, fail_next_resets), change by atomic or/and.
/// Two parts: what every reset touches (`hot_state`, 8 bytes: the flags, whether the session was
/// used, the reset count), which a pool keeps in the slot's header once the connection is in its
/// slot (connector::bind; until then the connection holds it), so that a fault-free reset of a
/// connection whose session nobody touched reads and writes those 8 bytes alone (a registry
/// puts its key's node, the idle-stack head and slot 0's 32-byte header before them, one 64-byte
/// record: 16 + 8 + 32 + 8 bytes); the rest (`cold_state`) in the connection. A connection's
/// reset count is 32 bits (it wraps after 2^32 resets of one connection); the connector's
/// counters sum them in 64.
template <class T>
KEYPOOL_ALWAYS_INLINE void bump(std::atomic<T>& a) noexcept {
    (void)keypool::detail::owner_increment(a);
}
template <class T>
void copy(std::atomic<T>& to, const std::atomic<T>& from) noexcept {
    to.store(from.load(std::memory_order_relaxed), std::memory_order_relaxed);
}
struct hot_state {
    /// `killed`: alive, ping and reset report failure from now on. `faulty`: resets were set to
    /// fail (fail_next_resets) while the connection was open, so its next reset looks at the
    /// connector's count (the fault-free reset reads this byte alone, no shared state).
    static constexpr std::uint8_t killed = 1, faulty = 2;
    std::atomic<std::uint8_t> flags{0};
    bool session_used = false; // the session holds state a reset must clear (owner only)
    std::atomic<std::uint32_t> resets{0};
    bool dead() const noexcept { return (flags.load(std::memory_order_relaxed) & killed) != 0; }
    void copy_from(const hot_state& o) noexcept {
        copy(flags, o.flags);
        session_used = o.session_used;
        copy(resets, o.resets);
    }
};
static_assert(sizeof(hot_state) == 8);
struct cold_state {
    std::atomic<std::uint64_t> reset_failures{0}, alive_checks{0}, pings{0};
    void copy_from(const cold_state& o) noexcept {
        copy(reset_failures, o.reset_failures);
        copy(alive_checks, o.alive_checks);
        copy(pings, o.pings);
    }
};

/// An open connection as its connector sees it: where its state is now (the connection moves),
/// or, once the connection object was destroyed without a close, the state it had then.
struct live_record {
    hot_state* hot = nullptr;
    cold_state* cold = nullptr;
    struct : hot_state, cold_state {} orphaned;

    void point_at(hot_state& h, cold_state& c) noexcept {
        hot = &h;
        cold = &c;
    }
    void orphan() noexcept {
        orphaned.hot_state::copy_from(*hot);
        orphaned.cold_state::copy_from(*cold);
        point_at(orphaned, orphaned);
    }
    void add_to(counters& c) const noexcept {
        c.resets += hot->resets.load(std::memory_order_relaxed);
        c.reset_failures += cold->reset_failures.load(std::memory_order_relaxed);
        c.alive_checks += cold->alive_checks.load(std::memory_order_relaxed);
        c.pings += cold->pings.load(std::memory_order_relaxed);
    }
};

/// What copies of one fake connector share.
struct connector_state : boost::intrusive_ref_counter<connector_state, boost::thread_safe_counter> {
    std::mutex m;
    const manual_clock* clock = nullptr;
    std::deque<outcome> script;
    std::atomic<std::size_t> failing_resets{0};
    std::shared_ptr<gate> close_gate;
    std::set<std::string> rejected_roles;
    std::map<std::uint64_t, live_record> live; // under m; nodes never move
    std::uint64_t next_id = 0;
    counters count;
};
} // namespace detail

/// One fake connection: an id, the target it was opened for, and session state that use sets
/// and reset clears (like Go's fakedb). Move-only: its connector tracks where it is.
struct connection {
private:
    // Its hot part (see detail::hot_state): its own until a pool binds it to a slot's header
    // (connector::bind), which then holds it; `hot_` says where it is.
    detail::hot_state own_;
    detail::hot_state* hot_ = &own_;

    std::string session_; // empty = clean

public:
    std::uint64_t id = 0;
    std::string target;

    /// Sets session state, as a query that changes it would (a reset clears it).
    void use(std::string_view state = "used") {
        session_.assign(state);
        hot_->session_used = true;
    }
    /// The session state set since the last reset (empty: clean).
    const std::string& session() const noexcept { return session_; }
    bool dirty() const noexcept { return hot_->session_used; }

    connection() = default;
    connection(connection&& o) noexcept : session_(std::move(o.session_)), id(o.id), target(std::move(o.target)) {
        take(o);
    }
    connection& operator=(connection&& o) noexcept {
        if (this != &o) {
            leave();
            session_ = std::move(o.session_);
            id = o.id;
            target = std::move(o.target);
            take(o);
        }
        return *this;
    }
    ~connection() { leave(); }

private:
    friend class connector;
    // Moves `o`'s registration (and counters) here; its hot part comes back into the connection.
    void take(connection& o) noexcept {
        hot_ = &own_;
        own_.session_used = o.hot_->session_used;
        owner_ = std::move(o.owner_);
        if (!owner_) return;
        std::lock_guard lk(owner_->m);
        own_.copy_from(*o.hot_);
        cold_.copy_from(o.cold_);
        if (auto it = owner_->live.find(id); it != owner_->live.end()) it->second.point_at(own_, cold_);
    }
    // Its hot part moves to `h` (connector::bind).
    void bind(detail::hot_state& h) noexcept {
        if (&h == hot_) return;
        if (!owner_) {
            h.copy_from(*hot_);
            hot_ = &h;
            return;
        }
        std::lock_guard lk(owner_->m); // (kill and fail_next_resets set flags under it: none is lost)
        h.copy_from(*hot_);
        hot_ = &h;
        if (auto it = owner_->live.find(id); it != owner_->live.end()) it->second.point_at(h, cold_);
    }
    void clear_session() noexcept {
        session_.clear();
        hot_->session_used = false;
    }
    // Destroyed (or overwritten) without a close: the connector keeps it as live, with its counts.
    // The last reference to the connector's state may be ours: it goes after the unlock.
    void leave() noexcept {
        if (!owner_) return;
        const boost::intrusive_ptr<detail::connector_state> owner = std::move(owner_);
        std::lock_guard lk(owner->m);
        if (auto it = owner->live.find(id); it != owner->live.end() && it->second.hot == hot_) it->second.orphan();
    }

    detail::cold_state cold_;
    boost::intrusive_ptr<detail::connector_state> owner_; // null: closed, moved from, or made empty
};

/// The fake connector. Copies share one state, so a test keeps a copy to script and inspect the
/// one inside a pool. Thread-safety: all members.
class connector {
public:
    using connection_type = connection;
    using target_type = std::string;
    /// A connection's hot part, which a pool keeps in the slot's header (connector_has_hot).
    using hot_type = detail::hot_state;

    /// Delays and deadlines run on the real steady clock.
    connector() : st_(new detail::connector_state) {}
    /// Delays and deadlines run on `clock`, which must outlive every copy of the connector.
    explicit connector(const manual_clock& clock) : connector() { st_->clock = &clock; }

    // ---- scripting and fault injection --------------------------------------------------------
    void script(std::initializer_list<outcome> outcomes) {
        std::lock_guard lk(st_->m);
        for (auto& o : outcomes) st_->script.push_back(o);
    }
    void push(outcome o) {
        std::lock_guard lk(st_->m);
        st_->script.push_back(std::move(o));
    }
    /// The next `n` connects fail with `ec` (after anything already scripted).
    void fail_next_connects(std::size_t n, std::error_code ec = make_error_code(errc::connect_failed)) {
        std::lock_guard lk(st_->m);
        for (std::size_t i = 0; i < n; ++i) st_->script.push_back(outcome::fail(ec));
    }
    /// The next `n` resets report failure (of connections open now or opened before they have).
    void fail_next_resets(std::size_t n) {
        std::lock_guard lk(st_->m);
        st_->failing_resets.fetch_add(n);
        for (auto& [id, r] : st_->live) r.hot->flags.fetch_or(detail::hot_state::faulty);
    }
    /// From now on every `close` blocks until `g` opens (nullptr: closes return at once again).
    void block_closes(std::shared_ptr<gate> g) {
        std::lock_guard lk(st_->m);
        st_->close_gate = std::move(g);
    }
    /// Kills the connection with this id: `alive` and `reset` report false from now on.
    void kill(std::uint64_t id) {
        std::lock_guard lk(st_->m);
        if (auto it = st_->live.find(id); it != st_->live.end()) it->second.hot->flags.fetch_or(detail::hot_state::killed);
    }
    void kill_all() {
        std::lock_guard lk(st_->m);
        for (auto& [id, r] : st_->live) r.hot->flags.fetch_or(detail::hot_state::killed);
    }

    // ---- inspection ---------------------------------------------------------------------------
    counters stats() const {
        std::lock_guard lk(st_->m);
        counters c = st_->count;
        c.live = st_->live.size();
        for (auto& [id, r] : st_->live) r.add_to(c);
        return c;
    }
    std::uint64_t live() const { return stats().live; }
    /// Outcomes scripted and not yet consumed by a connect.
    std::size_t scripted() const {
        std::lock_guard lk(st_->m);
        return st_->script.size();
    }
    bool is_live(std::uint64_t id) const {
        std::lock_guard lk(st_->m);
        return st_->live.count(id) != 0;
    }

    // ---- the connector concept --------------------------------------------------------------
    std::optional<connection> connect(const std::string& target, time_point deadline, std::stop_token stop,
                                      std::error_code& ec) {
        outcome o;
        time_point start;
        {
            std::lock_guard lk(st_->m);
            // The start of a scripted delay is fixed with the attempt's count, so a test that has
            // seen the attempt may move a manual clock and know the delay started before.
            start = st_->clock ? st_->clock->now() : steady_clock{}.now();
            ++st_->count.connect_attempts;
            if (!st_->script.empty()) {
                o = std::move(st_->script.front());
                st_->script.pop_front();
            }
        }
        ec = st_->clock ? play(*st_->clock, o, start, deadline, stop) : play(steady_clock{}, o, start, deadline, stop);
        std::optional<connection> c;
        {
            std::lock_guard lk(st_->m);
            if (ec) {
                ++st_->count.connect_failures;
                return std::nullopt;
            }
            ++st_->count.connects;
            c.emplace();
            c->id = ++st_->next_id;
            c->target = target;
            c->owner_ = st_;
            if (st_->failing_resets.load(std::memory_order_relaxed) != 0) c->own_.flags.store(detail::hot_state::faulty);
            st_->live[c->id].point_at(c->own_, c->cold_);
        }
        return c; // (a move re-registers it, under m)
    }

    // reset and alive take no lock: the benchmarks measure the pool, not the fake.
    KEYPOOL_ALWAYS_INLINE bool reset(connection& c) { return reset(c, *c.hot_); }
    /// The reset given the connection's hot part (`h`, where bind() put it): a clean, fault-free
    /// connection's reset reads and writes those 8 bytes alone.
    KEYPOOL_ALWAYS_INLINE bool reset(connection& c, detail::hot_state& h) {
        detail::bump(h.resets);
        if (h.flags.load(std::memory_order_relaxed) != 0) [[unlikely]]
            return reset_faulty(c);
        if (h.session_used) c.clear_session();
        return true;
    }
    /// The connection, now in a pool's slot, keeps its hot part in `h` (the slot's header).
    void bind(connection& c, detail::hot_state& h) noexcept { c.bind(h); }

    KEYPOOL_ALWAYS_INLINE bool alive(connection& c) {
        detail::bump(c.cold_.alive_checks);
        return !c.hot_->dead();
    }

    /// The keepalive round trip: fails for a killed connection, like `alive`.
    bool ping(connection& c) {
        detail::bump(c.cold_.pings);
        return !c.hot_->dead();
    }

    void close(connection& c) {
        std::shared_ptr<gate> g;
        {
            std::lock_guard lk(st_->m);
            g = st_->close_gate;
        }
        if (g) (void)g->wait(steady_clock{}, time_point::max(), {});
        std::lock_guard lk(st_->m);
        ++st_->count.closes;
        if (auto it = st_->live.find(c.id); it != st_->live.end()) {
            it->second.add_to(st_->count);
            st_->live.erase(it);
        }
        if (c.owner_ == st_) c.owner_.reset(); // (the state outlives this: st_ holds it)
    }

    std::uint64_t native_handle(connection& c) const noexcept { return c.id; }

    /// The role switch: the session now runs as `r` (visible as `session == "role=<name>"`), until
    /// the reset. Roles listed by `reject_role` fail with `authentication_failed`.
    bool prepare(connection& c, const role& r, std::error_code& ec) {
        {
            std::lock_guard lk(st_->m);
            if (st_->rejected_roles.count(r.name)) {
                ec = make_error_code(errc::authentication_failed);
                return false;
            }
        }
        c.use("role=" + r.name);
        return true;
    }
    void reject_role(std::string name) {
        std::lock_guard lk(st_->m);
        st_->rejected_roles.insert(std::move(name));
    }

private:
    // reset() of a killed connection, or of one open while resets were set to fail
    // (fail_next_resets): it fails while the count lasts; once it is out, the flag goes.
    KEYPOOL_NOINLINE bool reset_faulty(connection& c) {
        bool fail = c.hot_->dead();
        for (std::size_t n = st_->failing_resets.load(std::memory_order_relaxed); !fail && n > 0;)
            fail = st_->failing_resets.compare_exchange_weak(n, n - 1);
        if (!fail) {
            {
                std::lock_guard lk(st_->m); // (fail_next_resets flags under it: none is lost)
                if (st_->failing_resets.load(std::memory_order_relaxed) == 0)
                    c.hot_->flags.fetch_and(static_cast<std::uint8_t>(~detail::hot_state::faulty));
            }
            if (c.hot_->session_used) c.clear_session();
            return true;
        }
        detail::bump(c.cold_.reset_failures);
        return false;
    }

    template <class Clock>
    static std::error_code play(const Clock& clock, const outcome& o, time_point start, time_point deadline,
                                std::stop_token stop) {
        auto ended = [&]() -> std::error_code {
            if (stop.stop_requested()) return make_error_code(errc::cancelled);
            return make_error_code(errc::timeout);
        };
        if (stop.stop_requested()) return make_error_code(errc::cancelled);
        switch (o.what) {
        case outcome::kind::succeed: return {};
        case outcome::kind::fail: return o.ec;
        case outcome::kind::delay: {
            const time_point until = start + o.delay;
            if (until > deadline) {
                sleep_until(clock, deadline, stop);
                return ended();
            }
            return sleep_until(clock, until, stop) ? std::error_code{} : ended();
        }
        case outcome::kind::block: return o.at->wait(clock, deadline, stop) ? o.ec : ended();
        }
        return {};
    }

    // One pointer (not a shared_ptr's two): every pool keeps a copy of its connector, and a
    // registry has a pool per key.
    boost::intrusive_ptr<detail::connector_state> st_;
};

} // namespace keypool::fake
