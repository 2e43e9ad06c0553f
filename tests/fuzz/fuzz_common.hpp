// SPDX-License-Identifier: BSL-1.0
// Shared helpers of the libFuzzer targets (tests/fuzz, built by scripts/fuzz.sh).
//
// Every target checks properties, not only "no crash": when a check fails, `fuzz_require` prints
// what was violated and traps, so libFuzzer saves the input as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <libpq-fe.h>

#include <keypool/error.hpp>
#include <keypool/pq/route.hpp>
#include <keypool/pq/target.hpp>

namespace kpfuzz {

namespace pq = keypool::pq;

/// Traps (a crash libFuzzer records) with a note when a property does not hold.
inline void fuzz_require(bool ok, const char* what) {
    if (ok) return;
    std::fprintf(stderr, "\nkeypool fuzz: PROPERTY VIOLATED: %s\n", what);
    std::fflush(stderr);
    __builtin_trap();
}

/// The fuzz input cut into `n` fields at the byte 0x1F (unit separator); missing fields are empty,
/// the last field takes the rest (separators included).
inline std::vector<std::string> split_fields(const std::uint8_t* data, std::size_t size, std::size_t n) {
    std::vector<std::string> out;
    std::string_view in(reinterpret_cast<const char*>(data), size);
    for (std::size_t i = 0; i + 1 < n; ++i) {
        const std::size_t at = in.find('\x1f');
        if (at == std::string_view::npos) {
            out.emplace_back(in);
            in = {};
            continue;
        }
        out.emplace_back(in.substr(0, at));
        in.remove_prefix(at + 1);
    }
    out.emplace_back(in);
    return out;
}

/// A keypool error code (keypool's category, not zero).
inline bool is_keypool_error(const std::error_code& ec) { return ec && ec.category() == keypool::category(); }

inline bool has_control(std::string_view s) {
    for (char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) return true;
    }
    return false;
}

/// What libpq itself reads from `conninfo` (keywords with a value, in libpq's option order), or
/// nullopt if it refuses the string. Independent of keypool's own parse_conninfo.
inline std::optional<std::vector<pq::param>> libpq_parse(const std::string& conninfo) {
    if (conninfo.find('\0') != std::string::npos) return std::nullopt; // libpq would stop at it
    char* err = nullptr;
    PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
    if (err) PQfreemem(err);
    if (!opts) return std::nullopt;
    std::vector<pq::param> out;
    for (const PQconninfoOption* o = opts; o->keyword; ++o)
        if (o->val) out.push_back({o->keyword, o->val});
    PQconninfoFree(opts);
    return out;
}

/// The value of `keyword` in `params`, or nullopt.
inline std::optional<std::string> value_of(const std::vector<pq::param>& params, std::string_view keyword) {
    for (const auto& p : params)
        if (p.keyword == keyword) return p.value;
    return std::nullopt;
}

/// Same keywords with the same values, whatever the order; no keyword twice.
inline bool same_params(const std::vector<pq::param>& a, const std::vector<pq::param>& b) {
    if (a.size() != b.size()) return false;
    for (const auto& p : a) {
        std::size_t n = 0;
        for (const auto& q : b)
            if (q.keyword == p.keyword) {
                if (q.value != p.value) return false;
                ++n;
            }
        if (n != 1) return false;
    }
    return true;
}

/// `params` without `keyword`.
inline std::vector<pq::param> without(std::vector<pq::param> params, std::string_view keyword) {
    std::erase_if(params, [&](const pq::param& p) { return p.keyword == keyword; });
    return params;
}

/// A keyword/value string built the way our docs tell users to: every value single-quoted with
/// `quote_conninfo_value`.
inline std::string kv_string(const std::vector<pq::param>& params) {
    std::string out;
    for (const auto& p : params) {
        if (!out.empty()) out += ' ';
        out += p.keyword + "=" + pq::quote_conninfo_value(p.value);
    }
    return out;
}

/// Marks a fuzzed password so that finding it in a message cannot be a coincidence (the library's
/// own sentences never contain this text).
inline std::string decorate_password(std::string_view raw) { return "PW<" + std::string(raw) + ">PW"; }

/// A password function that hands out `pw` (empty: fails like a vault that has no entry).
inline pq::tenant_password_fn password_fn(std::string pw) {
    return [pw = std::move(pw)](std::string_view, std::error_code& ec) -> std::optional<std::string> {
        if (pw.empty()) {
            ec = keypool::make_error_code(keypool::errc::key_not_found);
            return std::nullopt;
        }
        return pw;
    };
}

/// The resolved target's password source gives exactly `pw`, or (for an empty one) a keypool
/// error; and the password is neither in the params nor added by describe().
inline void check_password_source(const pq::target& t, const std::string& pw) {
    fuzz_require(static_cast<bool>(t.password), "a password function was given but the target has no password source");
    std::error_code ec;
    std::optional<std::string> got = t.password(ec);
    if (pw.empty()) {
        fuzz_require(!got && is_keypool_error(ec), "a failing password function did not give a keypool error");
    } else {
        fuzz_require(got && *got == pw && !ec, "the password source did not give the exact password");
    }
    fuzz_require(!value_of(t.params, "password"), "the resolved params hold a password");
    // describe() is the params and nothing more (a tenant id may spell the password itself).
    std::string shown;
    for (const auto& p : t.params) shown += (shown.empty() ? "" : " ") + p.keyword + "=" + p.value;
    fuzz_require(t.describe() == shown, "describe() shows more than the params");
}

/// Accepts anything: only the fixed checks (empty, NUL/control bytes, length) apply.
inline bool any_tenant(std::string_view) { return true; }

} // namespace kpfuzz
