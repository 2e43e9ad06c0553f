// SPDX-License-Identifier: BSL-1.0
// Route builders for a registry keyed by tenant id: each turns a tenant id into a pq::target.
//
//   routes::direct      dbname = prefix + tenant (one database per tenant)
//   routes::pgbouncer   the same, where dbname is a PgBouncer database alias
//   routes::supavisor   user = prefix + "." + tenant (Supavisor's tenant routing)
//   routes::templated   a URI or keyword/value template with {tenant} and {password}
//
// A tenant id is validated, never cleaned up: a rejected id is `errc::invalid_config`. The
// escaping helpers (`quote_conninfo_value`, `percent_encode`) are public for code that must build
// a connection string itself; the builders check what they build by parsing it back with libpq.
// No message here (error text or exception) ever contains a password.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <libpq-fe.h>

#include <keypool/error.hpp>
#include <keypool/pq/password.hpp>
#include <keypool/pq/target.hpp>
#include <keypool/resolver.hpp>

namespace keypool::pq {

/// The server silently truncates identifiers (database, role, application name) longer than this.
inline constexpr std::size_t max_identifier_bytes = 63;

/// Decides which tenant ids are acceptable. Whatever it says, ids that are empty, contain a NUL
/// or another control byte, or are too long for the builder are always rejected.
using tenant_rule = std::function<bool(std::string_view)>;

/// The default rule, `^[a-z][a-z0-9_]{0,47}$`: lower case, so unquoted identifier folding cannot
/// change it, and short enough that a prefixed identifier still fits in 63 bytes.
inline bool default_tenant_rule(std::string_view id) noexcept {
    if (id.empty() || id.size() > 48) return false;
    if (id.front() < 'a' || id.front() > 'z') return false;
    return std::all_of(id.begin(), id.end(),
                       [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; });
}

namespace detail {

enum class rejection { none, empty, too_long, nul_byte, control_byte, rule };

inline bool is_control(char c) noexcept {
    const auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
}

/// Why `id` is rejected (or `none`). An empty rule means the default rule; a throwing rule rejects.
inline rejection why_rejected(std::string_view id, const tenant_rule& rule, std::size_t max_bytes) noexcept {
    if (id.empty()) return rejection::empty;
    if (id.size() > max_bytes) return rejection::too_long;
    if (id.find('\0') != std::string_view::npos) return rejection::nul_byte;
    if (std::any_of(id.begin(), id.end(), is_control)) return rejection::control_byte;
    try {
        if (!(rule ? rule(id) : default_tenant_rule(id))) return rejection::rule;
    } catch (...) {
        return rejection::rule;
    }
    return rejection::none;
}

/// At most `limit` bytes of `s` in double quotes: printable ASCII as is (`"` and `\` escaped),
/// every other byte as \xNN, and "..." when cut.
inline std::string excerpt(std::string_view s, std::size_t limit = 32) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out = "\"";
    for (std::size_t i = 0; i < s.size() && i < limit; ++i) {
        const auto u = static_cast<unsigned char>(s[i]);
        if (u == '"' || u == '\\') {
            out += '\\';
            out += static_cast<char>(u);
        } else if (u >= 0x20 && u < 0x7f) {
            out += static_cast<char>(u);
        } else {
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xf];
        }
    }
    out += '"';
    if (s.size() > limit) out += "...";
    return out;
}

} // namespace detail

/// Checks `id` against `rule` and the fixed checks (non-empty, at most `max_bytes` bytes, no NUL
/// or control byte). Returns true if accepted; otherwise false with `ec = errc::invalid_config`.
inline bool validate_tenant(std::string_view id, const tenant_rule& rule, std::error_code& ec,
                            std::size_t max_bytes = max_identifier_bytes) noexcept {
    if (detail::why_rejected(id, rule, max_bytes) == detail::rejection::none) {
        ec.clear();
        return true;
    }
    ec = make_error_code(errc::invalid_config);
    return false;
}

/// Why `id` is rejected, for a log line or an exception message, or "" if it is accepted. Quotes
/// at most 32 bytes of the id, non-printable bytes as \xNN.
inline std::string describe_rejection(std::string_view id, const tenant_rule& rule = default_tenant_rule,
                                      std::size_t max_bytes = max_identifier_bytes) {
    const detail::rejection r = detail::why_rejected(id, rule, max_bytes);
    if (r == detail::rejection::none) return {};
    if (r == detail::rejection::empty) return "tenant id rejected: it is empty";
    std::string out = "tenant id " + detail::excerpt(id) + " (" + std::to_string(id.size()) + " bytes) rejected: ";
    switch (r) {
    case detail::rejection::too_long: out += "longer than " + std::to_string(max_bytes) + " bytes"; break;
    case detail::rejection::nul_byte: out += "contains a NUL byte"; break;
    case detail::rejection::control_byte: out += "contains a control byte"; break;
    default: out += "not allowed by the tenant rule"; break;
    }
    return out;
}

/// A keyword/value connection-string value: single-quoted, with `\` escaped first, then `'`.
inline std::string quote_conninfo_value(std::string_view v) {
    std::string out;
    out.reserve(v.size() + 2);
    out += '\'';
    for (char c : v) {
        if (c == '\\' || c == '\'') out += '\\';
        out += c;
    }
    out += '\'';
    return out;
}

/// A URI component: every byte outside `[A-Za-z0-9-._~]` as %XX (upper-case hex).
inline std::string percent_encode(std::string_view v) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(v.size());
    for (char c : v) {
        const auto u = static_cast<unsigned char>(c);
        if ((u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || u == '-' || u == '.' ||
            u == '_' || u == '~') {
            out += c;
        } else {
            out += '%';
            out += hex[u >> 4];
            out += hex[u & 0xf];
        }
    }
    return out;
}

namespace detail {

/// A password source for one tenant (captured by value) that asks `fn` at each connect.
inline password_source password_for(const tenant_password_fn& fn, std::string_view tenant) {
    return [fn, t = std::string(tenant)](std::error_code& ec) { return ask_password(fn, t, ec); };
}

inline bool has_nul_or_control(std::string_view s) noexcept { return std::any_of(s.begin(), s.end(), is_control); }

/// The registry-policy answer for a failure.
inline std::optional<route<target>> fail(std::error_code& ec, errc e = errc::invalid_config) {
    ec = make_error_code(e);
    return std::nullopt;
}

/// `base` with `keyword = prefix + separator + tenant` (direct, pgbouncer, supavisor).
inline std::optional<route<target>> prefixed_route(const target& base, std::string_view keyword, std::string_view prefix,
                                                   std::string_view separator, const tenant_rule& rule,
                                                   const tenant_password_fn& password, std::string_view tenant,
                                                   std::error_code& ec) {
    if (has_nul_or_control(prefix) || has_nul_or_control(separator)) return fail(ec);
    const std::size_t fixed = prefix.size() + separator.size();
    const std::size_t max_bytes = fixed >= max_identifier_bytes ? 0 : max_identifier_bytes - fixed;
    if (!validate_tenant(tenant, rule, ec, max_bytes)) return std::nullopt;
    route<target> r{base, {}};
    std::string value;
    value.reserve(fixed + tenant.size());
    value.append(prefix).append(separator).append(tenant);
    r.target.set(std::string(keyword), std::move(value));
    if (password) r.target.password = password_for(password, tenant);
    ec.clear();
    return r;
}

/// Frees a PQconninfoParse result.
struct conninfo_free {
    void operator()(PQconninfoOption* o) const noexcept { PQconninfoFree(o); }
};

/// The keywords `conninfo` sets (in libpq's option order), or false if libpq rejects it. libpq's
/// error text is dropped: it may quote the string.
inline bool parse_conninfo(const std::string& conninfo, std::vector<param>& out) {
    out.clear();
    if (conninfo.find('\0') != std::string::npos) return false;
    char* err = nullptr;
    std::unique_ptr<PQconninfoOption, conninfo_free> opts(PQconninfoParse(conninfo.c_str(), &err));
    if (err) PQfreemem(err);
    if (!opts) return false;
    for (const PQconninfoOption* o = opts.get(); o->keyword; ++o)
        if (o->val) out.push_back({o->keyword, o->val});
    return true;
}

/// Replaces every `from` in `s` with `to`.
inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    std::size_t pos = 0;
    for (std::size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size())
        out.append(s.substr(pos, hit - pos)).append(to);
    out.append(s.substr(pos));
    return out;
}

/// A parsed template: each keyword it sets, with its value split at the {tenant} placeholders.
struct compiled_template {
    struct value {
        std::string keyword;
        std::vector<std::string> pieces; ///< the text between {tenant}s (one piece: no tenant)
        bool is_password = false;        ///< the value is exactly {password}
    };
    bool uri = false;
    std::string text; ///< the template itself (used for the URI form)
    std::vector<value> values;
    bool has_password = false;
    std::size_t max_tenant_bytes = max_identifier_bytes;
};

inline constexpr std::string_view tenant_placeholder = "{tenant}";
inline constexpr std::string_view password_placeholder = "{password}";
// Stand-ins for the placeholders while the template is parsed: plain letters, valid unescaped in
// both forms. A template that already contains one is rejected.
inline constexpr std::string_view tenant_marker = "KEYPOOLTENANTMARKERQZ";
inline constexpr std::string_view password_marker = "KEYPOOLPASSWORDMARKERQZ";
/// What stands in for the password when a route is checked: the real one never enters a string.
inline constexpr std::string_view password_sentinel = "keypool-password-sentinel";

/// Keywords whose value may contain {tenant}: all of them are identifiers the server truncates
/// at 63 bytes, and none of them decides where the connection goes or how it is secured.
inline bool tenant_allowed_in(std::string_view keyword) noexcept {
    return keyword == "dbname" || keyword == "user" || keyword == "application_name" ||
           keyword == "fallback_application_name";
}

inline std::string join(const std::vector<std::string>& pieces, std::string_view tenant) {
    std::string out;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        if (i) out.append(tenant);
        out.append(pieces[i]);
    }
    return out;
}

/// The params `tenant` should give (password included, as the sentinel), in libpq order.
inline std::vector<param> intended_params(const compiled_template& t, std::string_view tenant) {
    std::vector<param> out;
    out.reserve(t.values.size());
    for (const auto& v : t.values)
        out.push_back({v.keyword, v.is_password ? std::string(password_sentinel) : join(v.pieces, tenant)});
    return out;
}

/// The connection string for `tenant` in the template's form: the URI with the tenant and the
/// sentinel percent-encoded in place; keyword/value re-emitted with every value quoted.
inline std::string conninfo_for(const compiled_template& t, std::string_view tenant) {
    if (t.uri) {
        return replace_all(replace_all(t.text, tenant_placeholder, percent_encode(tenant)), password_placeholder,
                           percent_encode(password_sentinel));
    }
    std::string out;
    for (const param& p : intended_params(t, tenant)) {
        if (!out.empty()) out += ' ';
        out.append(p.keyword).append("=").append(quote_conninfo_value(p.value));
    }
    return out;
}

/// Builds the string for `tenant`, parses it back with libpq, and returns the params (without the
/// password) only if libpq sees exactly the intended keywords and values. The tenant must already
/// be validated.
inline std::optional<std::vector<param>> instantiate(const compiled_template& t, std::string_view tenant) {
    std::vector<param> parsed;
    if (!parse_conninfo(conninfo_for(t, tenant), parsed)) return std::nullopt;
    std::vector<param> intended = intended_params(t, tenant);
    if (parsed != intended) return std::nullopt;
    std::erase_if(intended, [](const param& p) { return p.keyword == "password"; });
    return intended;
}

/// Compiles `text`; returns nullptr on success or what is wrong (never quoting the template).
inline const char* compile(std::string_view text, bool have_password_fn, compiled_template& out) {
    out = {};
    out.text = std::string(text);
    if (text.find('\0') != std::string_view::npos) return "the template contains a NUL byte";
    for (char c : text)
        if (is_control(c) && c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return "the template contains a control byte";
    if (text.find(tenant_marker) != std::string_view::npos || text.find(password_marker) != std::string_view::npos)
        return "the template contains a reserved word";

    // Placeholders: only {tenant} and {password}; no other brace.
    std::size_t password_at = std::string_view::npos;
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '}') return "unbalanced '}' in the template";
        if (text[i] != '{') continue;
        const std::string_view rest = text.substr(i);
        if (rest.starts_with(tenant_placeholder)) {
            i += tenant_placeholder.size() - 1;
        } else if (rest.starts_with(password_placeholder)) {
            if (password_at != std::string_view::npos) return "{password} appears more than once";
            password_at = i;
            i += password_placeholder.size() - 1;
        } else {
            return "unknown placeholder or unbalanced '{' (only {tenant} and {password} are allowed)";
        }
    }
    out.has_password = password_at != std::string_view::npos;
    if (out.has_password && !have_password_fn) return "the template has {password} but no password function was given";

    out.uri = text.starts_with("postgresql://") || text.starts_with("postgres://");
    if (out.uri && out.has_password) {
        // Must be the whole password of the userinfo: "scheme://user:{password}@host...".
        const std::size_t auth = text.find("://") + 3;
        const std::size_t auth_end = std::min(text.find_first_of("/?", auth), text.size());
        const std::size_t after = password_at + password_placeholder.size();
        const std::string_view user = text.substr(auth, password_at > auth ? password_at - 1 - auth : 0);
        if (password_at <= auth || password_at >= auth_end || text[password_at - 1] != ':' || after >= text.size() ||
            text[after] != '@' || user.find_first_of(":@") != std::string_view::npos)
            return "{password} must be the whole password of the URI's userinfo (scheme://user:{password}@host)";
    }

    std::string marked = replace_all(replace_all(text, tenant_placeholder, tenant_marker), password_placeholder,
                                     password_marker);
    std::vector<param> parsed;
    if (!parse_conninfo(marked, parsed)) return "libpq cannot parse the template";
    if (parsed.empty()) return "the template sets no connection parameter";
    // Each stand-in must come from a placeholder: one written escaped (a backslash inside it in a
    // keyword/value template, percent-encoded in a URI) escapes the raw-text check above but is
    // unescaped by libpq, and would then count as a placeholder the author never wrote.
    auto occurrences = [](std::string_view hay, std::string_view needle) {
        std::size_t n = 0;
        for (std::size_t at = hay.find(needle); at != std::string_view::npos; at = hay.find(needle, at + needle.size()))
            ++n;
        return n;
    };
    std::size_t tenant_seen = 0, password_seen = 0;
    for (const param& p : parsed) {
        tenant_seen += occurrences(p.keyword, tenant_marker) + occurrences(p.value, tenant_marker);
        password_seen += occurrences(p.keyword, password_marker) + occurrences(p.value, password_marker);
    }
    if (tenant_seen != occurrences(text, tenant_placeholder) || password_seen != (out.has_password ? 1U : 0U))
        return "the template contains a reserved word, or a placeholder libpq does not read as a value";

    for (const param& p : parsed) {
        compiled_template::value v{p.keyword, {}, false};
        if (p.value.empty()) return "a value in the template is empty (libpq would read it as not set)";
        if (p.value.find_first_of("{}") != std::string::npos)
            return "a value in the template contains an escaped brace";
        if (p.keyword == "password") {
            if (p.value != password_marker)
                return "the password must be exactly {password} (a literal password, or {password} within other "
                       "text, is not allowed)";
            v.is_password = true;
            out.values.push_back(std::move(v));
            continue;
        }
        if (p.value.find(password_marker) != std::string::npos)
            return "{password} is only allowed as the whole password value";
        std::size_t pos = 0;
        for (std::size_t hit; (hit = p.value.find(tenant_marker, pos)) != std::string::npos;
             pos = hit + tenant_marker.size())
            v.pieces.push_back(p.value.substr(pos, hit - pos));
        v.pieces.push_back(p.value.substr(pos));
        const std::size_t tenants = v.pieces.size() - 1;
        if (tenants > 0) {
            if (!tenant_allowed_in(p.keyword))
                return "{tenant} is only allowed in dbname, user, application_name and fallback_application_name (never in a keyword, the "
                       "scheme, host, hostaddr, port, sslmode or options)";
            std::size_t fixed = 0;
            for (const auto& piece : v.pieces) fixed += piece.size();
            const std::size_t room = fixed >= max_identifier_bytes ? 0 : (max_identifier_bytes - fixed) / tenants;
            if (room == 0) return "a value with {tenant} leaves no room for a tenant id within 63 bytes";
            out.max_tenant_bytes = std::min(out.max_tenant_bytes, room);
        }
        out.values.push_back(std::move(v));
    }

    // The same check every resolve makes, with tenants that need escaping in either form.
    for (std::string_view sample : {std::string_view("t"), std::string_view("t' host='x\\ %2F/?a=b@c:d")})
        if (!instantiate(out, sample)) return "the template does not survive a round trip through libpq";
    return nullptr;
}

} // namespace detail

namespace routes {

/// One database per tenant: `base` with `dbname = dbname_prefix + tenant`. With `password`, the
/// target's password source asks it for this tenant at each connect; otherwise `base.password` is
/// kept. No other parameter is touched. Tenant ids longer than 63 bytes minus the prefix are
/// rejected (the server would truncate the name).
struct direct {
    using target_type = pq::target;
    using setup_type = no_setup;

    pq::target base;
    std::string dbname_prefix{};
    tenant_rule rule = default_tenant_rule;
    tenant_password_fn password{};

    /// The tenant's route, or nullopt with `errc::invalid_config` for a rejected tenant id (or a
    /// prefix with a control byte).
    template <class Key>
        requires std::convertible_to<const Key&, std::string_view>
    std::optional<route<pq::target>> resolve(const Key& tenant, std::error_code& ec) const {
        return detail::prefixed_route(base, "dbname", dbname_prefix, "", rule, password, std::string_view(tenant), ec);
    }
};

/// Through PgBouncer: the same as `direct`, where `dbname_prefix + tenant` names a PgBouncer database alias
/// (the `[databases]` section), not necessarily a server database.
///
/// PgBouncer in transaction mode runs no reset between clients and gives no session to keep, so
/// the connector must be configured for it: `connector_options::reset_query` empty (PgBouncer owns
/// server sessions; `DISCARD ALL` would run against whichever backend serves that transaction) and
/// `role_mode = role_switch_mode::transaction` (`SET LOCAL ROLE` inside the lease's transaction;
/// a session-level `SET ROLE` leaks to other clients of the same backend). Protocol-level prepared
/// statements shared across clients also break through PgBouncer 1.18.
using pgbouncer = direct;

/// Through Supavisor, which routes on the user name: `base` with `user = user_prefix + "." +
/// tenant` (e.g. `postgres.acme`). `user_prefix` must be non-empty and accepted by `rule`; a
/// tenant id may not contain `.` (the separator), whatever the rule says. The password is handled
/// as in `direct`.
struct supavisor {
    using target_type = pq::target;
    using setup_type = no_setup;

    pq::target base;
    std::string user_prefix;
    tenant_rule rule = default_tenant_rule;
    tenant_password_fn password{};

    /// The tenant's route, or nullopt with `errc::invalid_config` for a rejected tenant id or prefix.
    template <class Key>
        requires std::convertible_to<const Key&, std::string_view>
    std::optional<route<pq::target>> resolve(const Key& tenant, std::error_code& ec) const {
        const std::string_view t(tenant);
        if (!validate_tenant(user_prefix, rule, ec) || user_prefix.find('.') != std::string::npos ||
            t.find('.') != std::string_view::npos)
            return detail::fail(ec);
        return detail::prefixed_route(base, "user", user_prefix, ".", rule, password, t, ec);
    }
};

/// A target built from a connection-string template, in URI form
/// (`postgresql://{tenant}:{password}@db.example:5432/db_{tenant}?sslmode=require`) or
/// keyword/value form (`host=127.0.0.1 dbname=db_{tenant} user=u password={password}`).
///
/// Placeholders: `{tenant}`, allowed only inside the values of dbname, user and application_name;
/// `{password}`, allowed only as the whole password (the whole value in keyword/value form, the
/// whole password of the userinfo in a URI) and only with a password function. A literal password
/// is not allowed. Anything else (another placeholder, a stray brace, a placeholder in a keyword,
/// the scheme, host, hostaddr, port, sslmode or options) makes the template invalid.
///
/// At resolve the validated tenant is substituted escaped for the form (`percent_encode` in a
/// URI; keyword/value strings are re-emitted with every value `quote_conninfo_value`d), a fixed
/// sentinel stands in for the password, and the string is parsed back with `PQconninfoParse`: the
/// route is returned only if libpq sees exactly the template's keywords and exactly the intended
/// values; anything else is `invalid_config`. The target holds the parsed params without the
/// password; the password is asked from the password function at each connect (the target's
/// password source), so it is never spliced into a string that is kept.
class templated {
public:
    using target_type = pq::target;
    using setup_type = no_setup;

    /// Throws `keypool::error(errc::invalid_config)` naming what is wrong with the template
    /// (without quoting it).
    explicit templated(std::string_view tmpl, tenant_password_fn password = {}, tenant_rule rule = default_tenant_rule)
        : password_(std::move(password)), rule_(std::move(rule)) {
        if (const char* why = detail::compile(tmpl, static_cast<bool>(password_), t_))
            throw error(errc::invalid_config, std::string("pq::routes::templated: ") + why);
    }

    /// The non-throwing form: nullopt with `ec = errc::invalid_config` for an invalid template.
    static std::optional<templated> make(std::string_view tmpl, tenant_password_fn password, tenant_rule rule,
                                         std::error_code& ec) {
        templated r(private_tag{}, std::move(password), std::move(rule));
        if (detail::compile(tmpl, static_cast<bool>(r.password_), r.t_)) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        ec.clear();
        return r;
    }
    static std::optional<templated> make(std::string_view tmpl, std::error_code& ec) {
        return make(tmpl, {}, default_tenant_rule, ec);
    }

    /// The tenant's route, or nullopt with `errc::invalid_config` for a rejected tenant id or a
    /// string that libpq would read differently from what was intended.
    template <class Key>
        requires std::convertible_to<const Key&, std::string_view>
    std::optional<route<pq::target>> resolve(const Key& tenant, std::error_code& ec) const {
        const std::string_view t(tenant);
        if (!validate_tenant(t, rule_, ec, t_.max_tenant_bytes)) return std::nullopt;
        std::optional<std::vector<param>> params = detail::instantiate(t_, t);
        if (!params) return detail::fail(ec);
        route<pq::target> r{pq::target{std::move(*params), {}}, {}};
        if (password_) r.target.password = detail::password_for(password_, t);
        ec.clear();
        return r;
    }

    /// True for a URI template, false for keyword/value.
    bool is_uri() const noexcept { return t_.uri; }
    /// The longest tenant id this template accepts (63 bytes minus the text around {tenant}).
    std::size_t max_tenant_bytes() const noexcept { return t_.max_tenant_bytes; }

private:
    struct private_tag {};
    templated(private_tag, tenant_password_fn password, tenant_rule rule)
        : password_(std::move(password)), rule_(std::move(rule)) {}

    tenant_password_fn password_;
    tenant_rule rule_;
    detail::compiled_template t_;
};

} // namespace routes
} // namespace keypool::pq
