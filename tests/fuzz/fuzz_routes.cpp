// SPDX-License-Identifier: BSL-1.0
// Fuzz target: the prefixed routes of include/keypool/pq/route.hpp: routes::direct,
// routes::pgbouncer (dbname = prefix + tenant) and routes::supavisor (user = prefix.tenant), with a
// fuzzed tenant, prefix and password.
//
// Input: one selector byte, the tenant id, 0x1F, the password, 0x1F, the prefix.
//   selector bit 0: permissive tenant rule instead of the default rule
//            bit 1: a password function; bit 2: it fails instead of giving the password
//            bits 3-4: direct, pgbouncer, supavisor, or direct on a base that has a dbname and its
//                      own password source
// Properties, on every input:
//   - accepted exactly when an independent reference accepts (prefix without control bytes;
//     supavisor: prefix non-empty, allowed by the rule, no '.'; tenant non-empty, no control byte,
//     no '.' for supavisor, allowed by the rule, prefix + separator + tenant within 63 bytes);
//     rejected: keypool's invalid_config;
//   - accepted: the params are the base's, in order, with only dbname (user for supavisor) set to
//     prefix + separator + tenant (replaced in place, or appended); no password among them;
//   - the params written as a keyword/value string (values quoted) read back in libpq as exactly
//     those params plus the password: host, hostaddr, port, options, sslmode untouched;
//   - the password source gives the exact password (the base's own one when no function is given)
//     and never shows in describe().
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.hpp"

using namespace kpfuzz;

namespace {

pq::target base_for(int kind) {
    pq::target t;
    if (kind == 2) {
        t.set("host", "pooler.example").set("port", "6543").set("dbname", "postgres").set("sslmode", "require");
        return t;
    }
    t.set("host", "db.internal").set("hostaddr", "10.0.0.1").set("port", "5432").set("user", "app");
    if (kind == 3) t.set("dbname", "postgres");
    t.set("sslmode", "verify-full").set("options", "-c search_path=app");
    if (kind == 3) t.password = [](std::error_code&) -> std::optional<std::string> { return "BASE-PW"; };
    return t;
}

bool rule_allows(bool permissive, std::string_view s) { return permissive || pq::default_tenant_rule(s); }

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0 || size > 4096) return 0;
    const std::uint8_t sel = data[0];
    std::vector<std::string> f = split_fields(data + 1, size - 1, 3);
    const std::string& tenant = f[0];
    const std::string& prefix = f[2];
    const bool permissive = sel & 1;
    const bool with_fn = sel & 2;
    const std::string password = (sel & 4) ? std::string() : decorate_password(f[1]);
    const int kind = (sel >> 3) & 3;

    const pq::tenant_rule rule = permissive ? pq::tenant_rule(any_tenant) : pq::tenant_rule(pq::default_tenant_rule);
    const pq::tenant_password_fn fn = with_fn ? password_fn(password) : pq::tenant_password_fn{};
    const pq::target base = base_for(kind);

    std::error_code ec = keypool::make_error_code(keypool::errc::timeout);
    std::optional<keypool::route<pq::target>> r;
    const std::string keyword = kind == 2 ? "user" : "dbname";
    const std::string separator = kind == 2 ? "." : "";
    switch (kind) {
    case 0:
    case 3: r = pq::routes::direct{base, prefix, rule, fn}.resolve(tenant, ec); break;
    case 1: r = pq::routes::pgbouncer{base, prefix, rule, fn}.resolve(tenant, ec); break;
    default: r = pq::routes::supavisor{base, prefix, rule, fn}.resolve(tenant, ec); break;
    }

    // The reference decision, written out from the documented rules.
    const std::string value = prefix + separator + tenant;
    bool want = !has_control(prefix) && !tenant.empty() && !has_control(tenant) && value.size() <= 63 &&
                rule_allows(permissive, tenant);
    if (kind == 2)
        want = want && !prefix.empty() && prefix.size() <= 63 && rule_allows(permissive, prefix) &&
               prefix.find('.') == std::string::npos && tenant.find('.') == std::string::npos;

    if (!r) {
        fuzz_require(is_keypool_error(ec) && ec == keypool::errc::invalid_config,
                     "a rejected route did not give keypool's invalid_config");
        fuzz_require(!want, "a route the documented rules allow was rejected");
        return 0;
    }
    fuzz_require(!ec, "a resolved route left an error code");
    fuzz_require(want, "a route the documented rules forbid was resolved");
    fuzz_require(r->setup == keypool::no_setup{}, "a prefixed route carries a session setup");

    // Exactly the base, with one value set.
    std::vector<pq::param> expect = base.params;
    bool replaced = false;
    for (auto& p : expect)
        if (p.keyword == keyword) {
            p.value = value;
            replaced = true;
        }
    if (!replaced) expect.push_back({keyword, value});
    fuzz_require(r->target.params == expect, "the route changed more than the tenant's keyword");

    // As libpq reads it once written out (the connector passes arrays, but nothing may depend on it).
    if (!password.empty() && password.find('\0') == std::string::npos) {
        std::vector<pq::param> full = expect;
        full.push_back({"password", password});
        const std::optional<std::vector<pq::param>> got = libpq_parse(kv_string(full));
        fuzz_require(got && same_params(*got, full), "the route's params read back differently in libpq");
        for (const auto& k : {"host", "hostaddr", "port", "options", "sslmode"})
            fuzz_require(value_of(*got, k) == value_of(base.params, k), "host/hostaddr/port/options/sslmode changed");
    }

    if (with_fn) {
        check_password_source(r->target, password);
    } else if (kind == 3) {
        std::error_code pec;
        fuzz_require(r->target.password && r->target.password(pec) == std::optional<std::string>("BASE-PW"),
                     "the base's password source was not kept");
    } else {
        fuzz_require(!r->target.password, "a password source appeared without a password function");
    }
    return 0;
}
