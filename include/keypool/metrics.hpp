// SPDX-License-Identifier: BSL-1.0
// Pool and registry metrics in the Prometheus text exposition format (version 0.0.4), plus a
// lock-free histogram and the observer that feeds it. Every metric is listed in docs/metrics.md.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <keypool/detail/metrics_text.hpp>
#include <keypool/error.hpp>
#include <keypool/options.hpp>
#include <keypool/stats.hpp>

namespace keypool::metrics {

/// The HTTP `Content-Type` of the text this header writes.
inline constexpr std::string_view content_type = "text/plain; version=0.0.4; charset=utf-8";

/// A constant label the caller adds to every sample, e.g. `{"pool", "orders"}`. Names must match
/// `[a-zA-Z_][a-zA-Z0-9_]*`, not start with `__`, and not be one keypool uses itself (`state`,
/// `reason`, `result`, `le`); values are escaped.
struct label {
    std::string name;
    std::string value;
};
using labels = std::vector<label>;

/// What a histogram held when it was read. `cumulative[i]` counts observations <= `bounds[i]`;
/// the `+Inf` bucket is `count`.
struct histogram_snapshot {
    std::vector<std::chrono::nanoseconds> bounds;
    std::vector<std::uint64_t> cumulative;
    std::uint64_t count = 0;
    std::chrono::nanoseconds sum{0};
};

/// Durations in fixed buckets (upper bounds in seconds, inclusive, as Prometheus' `le`). Lock-free:
/// `observe` is two relaxed atomic additions. Reading while others observe may see an observation
/// in the buckets but not yet in the sum; the `+Inf` bucket and `_count` always agree.
/// Not copyable or movable: observers point at it, so it must outlive every pool that feeds it.
class histogram {
public:
    /// 1 ms .. 30 s: 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30.
    static constexpr std::array<double, 14> default_bounds{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                           0.25,  0.5,    1.0,   2.5,  5.0,   10.0, 30.0};

    histogram() : histogram(std::span<const double>(default_bounds)) {}
    histogram(std::initializer_list<double> bounds_seconds)
        : histogram(std::span<const double>(bounds_seconds.begin(), bounds_seconds.size())) {}
    /// Errors: throws `keypool::error(invalid_config)` unless the bounds are finite, >= 0, at most
    /// 1e9 s and strictly increasing once rounded to nanoseconds. No bound at all is allowed
    /// (only `+Inf`).
    explicit histogram(std::span<const double> bounds_seconds) {
        bounds_ns_.reserve(bounds_seconds.size());
        for (const double s : bounds_seconds) {
            if (!std::isfinite(s) || s < 0 || s > 1e9)
                throw error(errc::invalid_config, "keypool::metrics::histogram: bucket bounds must be finite, "
                                                  "in 0..1e9 seconds");
            const auto ns = static_cast<std::uint64_t>(std::llround(s * 1e9));
            if (!bounds_ns_.empty() && ns <= bounds_ns_.back())
                throw error(errc::invalid_config, "keypool::metrics::histogram: bucket bounds must be strictly "
                                                  "increasing (in whole nanoseconds)");
            bounds_ns_.push_back(ns);
        }
        counts_ = std::make_unique<std::atomic<std::uint64_t>[]>(bounds_ns_.size() + 1);
    }
    histogram(const histogram&) = delete;
    histogram& operator=(const histogram&) = delete;

    /// Counts one duration (negative counts as zero). Thread-safe, lock-free, allocation-free.
    void observe(std::chrono::nanoseconds d) noexcept {
        const std::uint64_t ns = d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
        const auto i = static_cast<std::size_t>(std::lower_bound(bounds_ns_.begin(), bounds_ns_.end(), ns) -
                                                bounds_ns_.begin());
        counts_[i].fetch_add(1, std::memory_order_relaxed);
        sum_ns_.fetch_add(ns, std::memory_order_relaxed);
    }

    [[nodiscard]] histogram_snapshot snapshot() const {
        histogram_snapshot r;
        r.bounds.reserve(bounds_ns_.size());
        r.cumulative.reserve(bounds_ns_.size());
        for (std::size_t i = 0; i < bounds_ns_.size(); ++i) {
            r.count += counts_[i].load(std::memory_order_relaxed);
            r.bounds.emplace_back(static_cast<std::chrono::nanoseconds::rep>(bounds_ns_[i]));
            r.cumulative.push_back(r.count);
        }
        r.count += counts_[bounds_ns_.size()].load(std::memory_order_relaxed);
        r.sum = std::chrono::nanoseconds(static_cast<std::chrono::nanoseconds::rep>(sum_ns_.load(std::memory_order_relaxed)));
        return r;
    }

private:
    std::vector<std::uint64_t> bounds_ns_;
    std::unique_ptr<std::atomic<std::uint64_t>[]> counts_; // one per bound, then the overflow bucket
    std::atomic<std::uint64_t> sum_ns_{0};
};

/// The two histograms `observer` feeds, exposed as `keypool_acquire_wait_seconds` and
/// `keypool_connect_seconds`.
struct histograms {
    histograms() = default;
    histograms(std::initializer_list<double> wait_bounds, std::initializer_list<double> connect_bounds)
        : acquire_wait(wait_bounds), connect(connect_bounds) {}

    histogram acquire_wait; ///< how long each acquire that had to wait waited (any outcome)
    histogram connect;      ///< how long each connect attempt took (succeeded or failed)
};

/// An observer policy (`with_observer<metrics::observer>`) that feeds `histograms`: `on_wait` and
/// `on_connect` each cost one `observe`. Copies feed the same histograms, so every pool of a
/// registry feeds one set. Combine it with another observer through `keypool::observers<...>`.
class observer {
public:
    /// `h` must outlive every pool built with this observer (and every lease of them).
    explicit observer(histograms& h) noexcept : wait_(&h.acquire_wait), connect_(&h.connect) {}
    /// The same; null records nothing.
    explicit observer(histograms* h) noexcept
        : wait_(h ? &h->acquire_wait : nullptr), connect_(h ? &h->connect : nullptr) {}
    /// Either may be null (not recorded).
    observer(histogram* acquire_wait, histogram* connect) noexcept : wait_(acquire_wait), connect_(connect) {}

    void on_wait(std::chrono::nanoseconds waited, std::error_code) noexcept {
        if (wait_) wait_->observe(waited);
    }
    void on_connect(std::chrono::nanoseconds took, std::error_code) noexcept {
        if (connect_) connect_->observe(took);
    }

private:
    histogram* wait_;
    histogram* connect_;
};

/// A pool: `stats()` and `options()` (e.g. `basic_pool`).
template <class P>
concept pool_source = requires(const P& p) {
    { p.stats() } -> std::same_as<pool_stats>;
    { p.options() } -> std::convertible_to<const pool_options&>;
};
/// A registry: `stats()` returning `registry_stats` (e.g. `basic_registry`).
template <class R>
concept registry_source = requires(const R& r) {
    { r.stats() } -> std::same_as<registry_stats>;
};

/// One scrape's worth of metrics. Collects samples grouped by metric family (each family's HELP and
/// TYPE once, its samples together, families in the order first added, samples in the order
/// added), then writes them. Add several pools with different labels to the same exposition,
/// not to separate ones written back to back, so each family stays in one group.
/// Not thread-safe (build one per scrape). Label errors throw `keypool::error(invalid_config)`.
class exposition {
public:
    /// Pool families from a snapshot.
    void add(const pool_stats& s, const labels& l = {}) { add_pool(s, nullptr, render(l)); }
    /// The same plus `keypool_connections_max` and `keypool_connections_idle_min` from the options.
    void add(const pool_stats& s, const pool_options& o, const labels& l = {}) { add_pool(s, &o, render(l)); }
    /// `add(p.stats(), p.options(), l)`.
    template <pool_source P>
    void add(const P& p, const labels& l = {}) {
        add(p.stats(), p.options(), l);
    }
    /// Registry families, then the pool families of `s.pools` (the live pools, summed).
    void add(const registry_stats& s, const labels& l = {});
    template <registry_source R>
    void add(const R& r, const labels& l = {}) {
        add(r.stats(), l);
    }
    /// A histogram as family `name` (which should end in `_seconds`): `_bucket{le=...}` for every
    /// bound and `+Inf`, then `_sum` (seconds) and `_count`.
    void add(const histogram& h, std::string_view name, std::string_view help, const labels& l = {}) {
        add_histogram(h.snapshot(), name, help, render(l));
    }
    /// `keypool_acquire_wait_seconds` and `keypool_connect_seconds`.
    void add(const histograms& h, const labels& l = {}) {
        const std::string base = render(l);
        add_histogram(h.acquire_wait.snapshot(), "keypool_acquire_wait_seconds",
                      "Time acquires that had to wait spent waiting, whatever their outcome.", base);
        add_histogram(h.connect.snapshot(), "keypool_connect_seconds",
                      "Duration of connect attempts, successful or failed.", base);
    }

    void write(std::ostream& os) const { os << str(); }
    [[nodiscard]] std::string str() const {
        std::string out;
        for (const family& f : families_) {
            out += "# HELP " + f.name + ' ';
            detail::metrics_text::append_help(out, f.help);
            out += "\n# TYPE " + f.name + ' ' + f.type + '\n';
            out += f.samples;
        }
        return out;
    }

private:
    struct family {
        std::string name, help, type, samples;
    };
    std::vector<family> families_;

    /// Checks the caller's labels and renders them as `a="x",b="y"`.
    static std::string render(const labels& l) {
        std::string out;
        for (std::size_t i = 0; i < l.size(); ++i) {
            const std::string& n = l[i].name;
            if (!detail::metrics_text::valid_label_name(n))
                throw error(errc::invalid_config, "keypool::metrics: label name '" + n +
                                                      "' must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __");
            if (n == "state" || n == "reason" || n == "result" || n == "le")
                throw error(errc::invalid_config, "keypool::metrics: label name '" + n + "' is used by keypool itself");
            for (std::size_t j = 0; j < i; ++j)
                if (l[j].name == n) throw error(errc::invalid_config, "keypool::metrics: label '" + n + "' given twice");
            if (i) out += ',';
            out += n;
            out += "=\"";
            detail::metrics_text::append_label_value(out, l[i].value);
            out += '"';
        }
        return out;
    }

    family& family_for(std::string_view name, std::string_view type, std::string_view help) {
        for (family& f : families_)
            if (f.name == name) {
                if (f.type != type)
                    throw error(errc::invalid_config, "keypool::metrics: metric '" + f.name + "' added as " +
                                                          std::string(type) + " and as " + f.type);
                return f;
            }
        if (!detail::metrics_text::valid_metric_name(name))
            throw error(errc::invalid_config, "keypool::metrics: metric name '" + std::string(name) +
                                                  "' must match [a-zA-Z_:][a-zA-Z0-9_:]*");
        return families_.emplace_back(family{std::string(name), std::string(help), std::string(type), {}});
    }

    /// One sample line: `<family><suffix>{<base>,<own>="<own_value>"} <value>`.
    static void line(family& f, std::string_view suffix, const std::string& base, std::string_view own,
                     std::string_view own_value, const std::string& value) {
        std::string& o = f.samples;
        o += f.name;
        o += suffix;
        if (!base.empty() || !own.empty()) {
            o += '{';
            o += base;
            if (!own.empty()) {
                if (!base.empty()) o += ',';
                o += own;
                o += "=\"";
                detail::metrics_text::append_label_value(o, own_value);
                o += '"';
            }
            o += '}';
        }
        o += ' ';
        o += value;
        o += '\n';
    }

    void gauge(std::string_view name, std::string_view help, const std::string& base, std::uint64_t v) {
        line(family_for(name, "gauge", help), "", base, "", "", std::to_string(v));
    }
    void counter(std::string_view name, std::string_view help, const std::string& base, std::uint64_t v) {
        line(family_for(name, "counter", help), "", base, "", "", std::to_string(v));
    }

    static std::uint64_t ns(std::chrono::nanoseconds d) noexcept {
        return d.count() > 0 ? static_cast<std::uint64_t>(d.count()) : 0;
    }

    void add_histogram(const histogram_snapshot& h, std::string_view name, std::string_view help,
                       const std::string& base) {
        family& f = family_for(name, "histogram", help);
        for (std::size_t i = 0; i < h.bounds.size(); ++i)
            line(f, "_bucket", base, "le", detail::metrics_text::seconds(ns(h.bounds[i])), std::to_string(h.cumulative[i]));
        line(f, "_bucket", base, "le", "+Inf", std::to_string(h.count));
        line(f, "_sum", base, "", "", detail::metrics_text::seconds(ns(h.sum)));
        line(f, "_count", base, "", "", std::to_string(h.count));
    }

    void add_pool(const pool_stats& s, const pool_options* o, const std::string& base);
};

inline void exposition::add_pool(const pool_stats& s, const pool_options* o, const std::string& base) {
    {
        family& f = family_for("keypool_connections", "gauge", "Connections by state: idle, used (leased), connecting.");
        line(f, "", base, "state", "idle", std::to_string(s.idle));
        line(f, "", base, "state", "used", std::to_string(s.in_use));
        line(f, "", base, "state", "connecting", std::to_string(s.connecting));
    }
    gauge("keypool_connections_open", "Open connections: idle, used, connecting and closing.", base, s.size);
    gauge("keypool_connections_peak", "Highest number of open connections so far.", base, s.peak_size);
    if (o) {
        gauge("keypool_connections_max", "Most connections the pool may open (max_size).", base, o->max_size);
        gauge("keypool_connections_idle_min", "Idle connections maintain() keeps open (min_idle).", base, o->min_idle);
    }
    gauge("keypool_pending_requests", "Callers waiting for a connection.", base, s.waiters);
    gauge("keypool_pending_requests_peak", "Highest number of waiting callers so far.", base, s.peak_waiters);
    counter("keypool_acquires_total", "Leases handed out.", base, s.acquires);
    counter("keypool_waits_total", "Acquires that had to wait, whatever their outcome.", base, s.waits);
    line(family_for("keypool_wait_seconds_total", "counter", "Total time acquires spent waiting."), "", base, "", "",
         detail::metrics_text::seconds(ns(s.wait_time)));
    counter("keypool_timeouts_total", "Acquires that ended with timeout.", base, s.timeouts);
    counter("keypool_cancellations_total", "Acquires that ended with cancelled.", base, s.cancels);
    counter("keypool_rejections_total", "Acquires refused with pool_exhausted (wait queue full).", base, s.rejected);
    {
        family& f = family_for("keypool_connects_total", "counter", "Connect attempts by result.");
        line(f, "", base, "result", "ok", std::to_string(s.connects_ok));
        line(f, "", base, "result", "failed", std::to_string(s.connects_failed));
    }
    {
        family& f = family_for("keypool_closes_total", "counter", "Connections closed, by reason.");
        for (std::size_t i = 0; i < close_reason_count; ++i)
            line(f, "", base, "reason", to_string(static_cast<close_reason>(i)), std::to_string(s.closes[i]));
    }
    counter("keypool_resets_total", "Connection resets run.", base, s.resets);
    counter("keypool_leaks_total", "Leases reported held longer than leak_threshold.", base, s.leaks);
}

inline void exposition::add(const registry_stats& s, const labels& l) {
    const std::string base = render(l);
    gauge("keypool_keys_active", "Keys with a live pool entry.", base, s.keys_active);
    gauge("keypool_pools_active", "Distinct live pools.", base, s.pools_active);
    gauge("keypool_pools_draining", "Pools that left the registry with connections still open.", base,
          s.pools_draining);
    counter("keypool_pools_created_total", "Pool entries built.", base, s.pools_created);
    gauge("keypool_registry_huge_page_bytes", "Bytes mapped by the registry's huge-page arena.", base, s.huge_page_bytes);
    counter("keypool_registry_hits_total", "Registry acquires that found the key's pool ready.", base, s.hits);
    counter("keypool_registry_misses_total", "Registry acquires that had to create the key's pool.", base, s.misses);
    counter("keypool_registry_joins_total", "Registry acquires that waited for another caller's creation.", base,
            s.joins);
    {
        family& f = family_for("keypool_pools_evicted_total", "counter",
                               "Pools retired, by reason (size: idle connections trimmed for the budget).");
        for (std::size_t i = 0; i < evict_reason_count; ++i)
            line(f, "", base, "reason", to_string(static_cast<evict_reason>(i)), std::to_string(s.evicted[i]));
    }
    counter("keypool_registry_trim_scans_total", "Pools evict::size looked at for an idle connection to close.",
            base, s.trim_scans);
    counter("keypool_registry_pool_passes_total", "Pools the registry's maintain() ran a pass on (quiet ones are left until due).",
            base, s.pool_passes);
    {
        // Every keypool::errc, zero or not, so each series exists from the first scrape. The error
        // category names unknown values with one fixed text, the same as for 0 (no enumerator).
        family& f = family_for("keypool_errors_total", "counter", "Failed registry acquires, by keypool::errc.");
        const std::string unknown = category().message(0);
        for (std::size_t i = 1; i < s.errors.size(); ++i) {
            const std::string name = category().message(static_cast<int>(i));
            if (name == unknown) continue;
            line(f, "", base, "reason", name, std::to_string(s.errors[i]));
        }
    }
    add_pool(s.pools, nullptr, base);
}

// ---- one-call forms ---------------------------------------------------------------------------

/// Writes `what` (pool_stats, a pool, registry_stats, a registry or `histograms`) alone.
template <class T>
    requires requires(exposition& e, const T& t, const labels& l) { e.add(t, l); }
void write(std::ostream& os, const T& what, const labels& l = {}) {
    exposition e;
    e.add(what, l);
    e.write(os);
}
inline void write(std::ostream& os, const pool_stats& s, const pool_options& o, const labels& l = {}) {
    exposition e;
    e.add(s, o, l);
    e.write(os);
}
inline void write(std::ostream& os, const histogram& h, std::string_view name, std::string_view help,
                  const labels& l = {}) {
    exposition e;
    e.add(h, name, help, l);
    e.write(os);
}

} // namespace keypool::metrics
