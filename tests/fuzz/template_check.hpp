// SPDX-License-Identifier: BSL-1.0
// The properties shared by the template fuzz targets (keyword/value and URI): what
// routes::templated builds for a tenant must be exactly what the template allows, as libpq reads it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_common.hpp"

namespace kpfuzz {

/// A template value split at the {tenant}s, as libpq reads the template.
struct ref_value {
    std::string keyword;
    std::vector<std::string> pieces; ///< one piece: no tenant
    bool is_password = false;
    bool password_inside = false; ///< {password} within other text, or as another keyword's value
};

inline std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    std::size_t pos = 0;
    for (std::size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size())
        out.append(s.substr(pos, hit - pos)).append(to);
    out.append(s.substr(pos));
    return out;
}

inline std::vector<std::string> split_at(std::string_view s, std::string_view sep) {
    std::vector<std::string> out;
    std::size_t pos = 0;
    for (std::size_t hit; (hit = s.find(sep, pos)) != std::string_view::npos; pos = hit + sep.size())
        out.emplace_back(s.substr(pos, hit - pos));
    out.emplace_back(s.substr(pos));
    return out;
}

inline std::string join(const std::vector<std::string>& pieces, std::string_view tenant) {
    std::string out;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
        if (i) out.append(tenant);
        out.append(pieces[i]);
    }
    return out;
}

/// Our own reading of a template, independent of keypool's compiler: the placeholders replaced by
/// plain letters (which need no escaping in either form), parsed by libpq, and the values split at
/// those letters. Done twice with different letters; if the two readings disagree (the template
/// itself contains such text) there is no reliable reference and nullopt is returned.
inline std::optional<std::vector<ref_value>> reference_reading(std::string_view tmpl) {
    struct tokens {
        std::string_view tenant, password;
    };
    static constexpr tokens sets[2] = {{"zqxtenantqxz", "zqxpasswordqxz"}, {"WVKTENANTKVW", "WVKPASSWORDKVW"}};
    // A template that already contains one of our tokens would pollute both readings alike (and
    // they would agree): no reliable reference then.
    for (const tokens& t : sets)
        if (tmpl.find(t.tenant) != std::string_view::npos || tmpl.find(t.password) != std::string_view::npos)
            return std::nullopt;
    std::vector<ref_value> readings[2];
    for (int i = 0; i < 2; ++i) {
        const std::string s =
            replace_all(replace_all(tmpl, "{tenant}", sets[i].tenant), "{password}", sets[i].password);
        std::optional<std::vector<pq::param>> parsed = libpq_parse(s);
        if (!parsed) return std::nullopt;
        for (const auto& p : *parsed) {
            ref_value v{p.keyword, split_at(p.value, sets[i].tenant), p.value == sets[i].password};
            // {password} within other text, or in another keyword: keep it visible to the caller.
            // (A flag, not a marker piece: a template may spell any marker text itself — the
            // fuzzer found "<password inside>" as a literal host name when that was the marker.)
            if (!v.is_password && p.value.find(sets[i].password) != std::string::npos) {
                v.password_inside = true;
                v.pieces = {};
            }
            readings[i].push_back(std::move(v));
        }
    }
    if (readings[0].size() != readings[1].size()) return std::nullopt;
    for (std::size_t j = 0; j < readings[0].size(); ++j) {
        const ref_value& a = readings[0][j];
        const ref_value& b = readings[1][j];
        if (a.keyword != b.keyword || a.pieces != b.pieces || a.is_password != b.is_password ||
            a.password_inside != b.password_inside)
            return std::nullopt;
    }
    return readings[0];
}

/// The params the reference says `tenant` gets (the password as `password_value`).
inline std::vector<pq::param> reference_params(const std::vector<ref_value>& ref, std::string_view tenant,
                                               std::string_view password_value) {
    std::vector<pq::param> out;
    for (const auto& v : ref)
        out.push_back({v.keyword, v.is_password ? std::string(password_value) : join(v.pieces, tenant)});
    return out;
}

inline bool tenant_keyword(std::string_view k) {
    return k == "dbname" || k == "user" || k == "application_name" || k == "fallback_application_name";
}

/// Builds routes::templated from `tmpl` and resolves `tenant` with it. Properties:
///  - rejected template: `make` gives keypool's invalid_config, the throwing constructor throws
///    keypool::error (and nothing else) whose what() never contains the password;
///  - accepted template: our own reading of it exists, {password} is exactly the password value and
///    appears nowhere else, {tenant} only in dbname/user/application_name/fallback_application_name,
///    max_tenant_bytes() is 63 bytes minus the text around the tenant;
///  - resolved: the target's params are exactly the reference's (no keyword more, none less, the
///    tenant only where the template put it, every other value unchanged); the string keypool
///    builds (conninfo_for) reads back in libpq as exactly the same params; the password source
///    gives the exact password;
///  - rejected tenant: keypool's invalid_config, and only for ids validate_tenant rejects with the
///    template's room (escaping must carry every acceptable id).
/// `expect_compiles` asserts the template is accepted (the hand-written ones). Returns the resolved
/// target (nullopt if the template or the tenant was rejected, or there is no reference reading).
inline std::optional<pq::target> check_template(const std::string& tmpl, const std::string& tenant, const std::string& password,
                           bool with_password_fn, bool permissive, bool expect_compiles) {
    const pq::tenant_rule rule = permissive ? pq::tenant_rule(any_tenant) : pq::tenant_rule(pq::default_tenant_rule);
    const pq::tenant_password_fn fn = with_password_fn ? password_fn(password) : pq::tenant_password_fn{};

    std::error_code ec = keypool::make_error_code(keypool::errc::timeout);
    std::optional<pq::routes::templated> route = pq::routes::templated::make(tmpl, fn, rule, ec);
    if (!route) {
        fuzz_require(!expect_compiles, "a hand-written good template was rejected");
        fuzz_require(is_keypool_error(ec) && ec == keypool::errc::invalid_config,
                     "a rejected template did not give keypool's invalid_config");
        bool threw = false;
        try {
            pq::routes::templated t(tmpl, fn, rule);
        } catch (const keypool::error& e) {
            threw = true;
            fuzz_require(e.code() == keypool::errc::invalid_config, "the template exception is not invalid_config");
            const std::string what = e.what();
            if (!password.empty())
                fuzz_require(what.find(password) == std::string::npos, "a template error message contains the password");
        } catch (...) {
            fuzz_require(false, "the template constructor threw something other than keypool::error");
        }
        fuzz_require(threw, "make() rejected a template the constructor accepts");
        return std::nullopt;
    }
    fuzz_require(!ec, "an accepted template left an error code");

    std::optional<std::vector<ref_value>> ref = reference_reading(tmpl);
    // No reference only when the template itself spells our tokens (escaped or not): skip it.
    if (!ref) return std::nullopt;

    std::size_t room = pq::max_identifier_bytes;
    bool has_password = false;
    for (const auto& v : *ref) {
        if (v.is_password) {
            fuzz_require(v.keyword == "password", "{password} was accepted as the value of another keyword");
            fuzz_require(!has_password, "two password values");
            has_password = true;
            continue;
        }
        fuzz_require(v.keyword != "password", "a template with a literal password was accepted");
        fuzz_require(!v.password_inside, "{password} was accepted inside other text");
        const std::size_t tenants = v.pieces.size() - 1;
        if (tenants == 0) continue;
        fuzz_require(tenant_keyword(v.keyword), "{tenant} was accepted in a keyword that decides where or how to connect");
        std::size_t fixed = 0;
        for (const auto& p : v.pieces) fixed += p.size();
        fuzz_require(fixed < pq::max_identifier_bytes, "a value with {tenant} and no room for it was accepted");
        room = std::min(room, (pq::max_identifier_bytes - fixed) / tenants);
    }
    fuzz_require(room > 0, "a template with no room for the tenant was accepted");
    fuzz_require(route->max_tenant_bytes() == room, "max_tenant_bytes() is not 63 bytes minus the text around {tenant}");
    fuzz_require(!has_password || with_password_fn, "{password} was accepted without a password function");

    std::error_code vec;
    const bool acceptable = pq::validate_tenant(tenant, rule, vec, room);

    ec = keypool::make_error_code(keypool::errc::timeout);
    std::optional<keypool::route<pq::target>> r = route->resolve(tenant, ec);
    if (!r) {
        fuzz_require(is_keypool_error(ec) && ec == keypool::errc::invalid_config,
                     "a rejected tenant did not give keypool's invalid_config");
        fuzz_require(!acceptable, "an acceptable tenant was rejected (escaping could not carry it)");
        return std::nullopt;
    }
    fuzz_require(!ec, "a resolved tenant left an error code");
    fuzz_require(acceptable, "a tenant that validate_tenant rejects was resolved");

    const std::vector<pq::param> want = reference_params(*ref, tenant, pq::detail::password_sentinel);
    fuzz_require(same_params(r->target.params, without(want, "password")),
                 "the resolved params are not exactly what the template allows");

    // The string keypool itself builds for this tenant, as libpq reads it.
    pq::detail::compiled_template ct;
    fuzz_require(pq::detail::compile(tmpl, with_password_fn, ct) == nullptr, "compile() disagrees with make()");
    std::optional<std::vector<pq::param>> built = libpq_parse(pq::detail::conninfo_for(ct, tenant));
    fuzz_require(built.has_value(), "libpq cannot parse the string keypool built");
    fuzz_require(same_params(*built, want), "libpq reads the built string differently from the template");
    for (const auto& k : {"host", "hostaddr", "port", "options", "sslmode", "service", "passfile"})
        fuzz_require(value_of(*built, k) == value_of(want, k), "host/hostaddr/port/options/sslmode changed");

    if (with_password_fn) check_password_source(r->target, password);
    else fuzz_require(!r->target.password, "a password source appeared without a password function");
    return std::move(r->target);
}

} // namespace kpfuzz
