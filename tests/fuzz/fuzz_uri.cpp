// SPDX-License-Identifier: BSL-1.0
// Fuzz target: URI connection strings (routes::templated in URI form, and percent_encode), with a
// fuzzed tenant, a fuzzed password and, optionally, a fuzzed URI template.
//
// Input: one selector byte, the tenant id, 0x1F, the password, 0x1F, the template (given
// "postgresql://" in front unless it already starts with a URI scheme).
//   selector bits as in fuzz_conninfo.cpp (bit 6 appends `password=<the password>` to the query).
// Properties, on every input:
//   - percent_encode emits only [A-Za-z0-9-._~] and %XX (upper-case hex), and decodes back to
//     its input;
//   - a URI built with percent_encode around the tenant (as user, database and application_name)
//     and the password reads back in libpq as exactly those values: no host, port, sslmode or
//     other keyword injected, whatever the bytes;
//   - hand-written URI templates compile and give exactly the hand-written params;
//   - fuzzed URI templates: see template_check.hpp (rejected with keypool's invalid_config and a
//     message without the password, or tenants land only where {tenant} is).
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "template_check.hpp"

using namespace kpfuzz;

namespace {

struct fixed_case {
    const char* tmpl;
    bool password;
    std::vector<std::pair<const char*, const char*>> expect; ///< "{tenant}" stands for the tenant
};

const std::vector<fixed_case>& cases() {
    static const std::vector<fixed_case> c = {
        {"postgresql://{tenant}:{password}@db.example:6432/db_{tenant}?sslmode=require",
         true,
         {{"user", "{tenant}"}, {"host", "db.example"}, {"port", "6432"}, {"dbname", "db_{tenant}"},
          {"sslmode", "require"}}},
        {"postgres://app@db.example/{tenant}?application_name=svc_{tenant}&connect_timeout=5",
         false,
         {{"user", "app"}, {"host", "db.example"}, {"dbname", "{tenant}"}, {"application_name", "svc_{tenant}"},
          {"connect_timeout", "5"}}},
        {"postgresql://app:{password}@[::1]:5432,h2:5433/{tenant}?target_session_attrs=read-write&options=-c%20x%3Dy",
         true,
         {{"user", "app"}, {"host", "::1,h2"}, {"port", "5432,5433"}, {"dbname", "{tenant}"},
          {"target_session_attrs", "read-write"}, {"options", "-c x=y"}}},
        {"postgresql:///{tenant}?host=%2Fvar%2Frun%2Fpostgresql&user=u_{tenant}",
         false,
         {{"host", "/var/run/postgresql"}, {"dbname", "{tenant}"}, {"user", "u_{tenant}"}}},
    };
    return c;
}

std::vector<pq::param> expected_params(const fixed_case& c, const std::string& tenant) {
    std::vector<pq::param> out;
    for (const auto& [k, v] : c.expect) out.push_back({k, replace_all(v, "{tenant}", tenant)});
    return out;
}

bool unreserved(unsigned char u) {
    return (u >= 'A' && u <= 'Z') || (u >= 'a' && u <= 'z') || (u >= '0' && u <= '9') || u == '-' || u == '.' ||
           u == '_' || u == '~';
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1; // lower case is not what percent_encode promises
}

/// percent_encode's output is well formed and decodes back to `v`.
void check_percent_encode(const std::string& v) {
    const std::string e = pq::percent_encode(v);
    std::string decoded;
    for (std::size_t i = 0; i < e.size(); ++i) {
        const auto u = static_cast<unsigned char>(e[i]);
        if (unreserved(u)) {
            decoded += e[i];
            continue;
        }
        fuzz_require(u == '%' && i + 2 < e.size(),
                     "percent_encode emitted a byte outside [A-Za-z0-9-._~%]");
        const int hi = hex_digit(e[i + 1]);
        const int lo = hex_digit(e[i + 2]);
        fuzz_require(hi >= 0 && lo >= 0, "percent_encode emitted a malformed %XX");
        const char c = static_cast<char>(hi * 16 + lo);
        fuzz_require(!unreserved(static_cast<unsigned char>(c)), "percent_encode encoded an unreserved byte");
        decoded += c;
        i += 2;
    }
    fuzz_require(decoded == v, "percent_encode does not decode back to its input");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0 || size > 4096) return 0;
    const std::uint8_t sel = data[0];
    std::vector<std::string> f = split_fields(data + 1, size - 1, 3);
    const std::string& tenant = f[0];
    const bool permissive = sel & 1;
    const std::string password = (sel & 4) ? std::string() : decorate_password(f[1]);

    check_percent_encode(tenant);
    check_percent_encode(f[1]);

    // The escaping helper on its own: the tenant in every component a tenant may take, the password
    // in the userinfo.
    if (!tenant.empty() && tenant.find('\0') == std::string::npos && !password.empty() &&
        password.find('\0') == std::string::npos) {
        const std::string t = pq::percent_encode(tenant);
        const std::string uri = "postgresql://" + t + ":" + pq::percent_encode(password) + "@h:1/" + t +
                                "?application_name=" + t + "&sslmode=verify-full";
        const std::vector<pq::param> want = {{"user", tenant},   {"password", password}, {"host", "h"},
                                             {"port", "1"},      {"dbname", tenant},     {"application_name", tenant},
                                             {"sslmode", "verify-full"}};
        const std::optional<std::vector<pq::param>> got = libpq_parse(uri);
        fuzz_require(got && same_params(*got, want), "percent_encode: libpq reads other values or keywords");
    }

    if (f[2].empty()) {
        const fixed_case& c = cases()[(sel >> 3) % cases().size()];
        std::optional<pq::target> t = check_template(c.tmpl, tenant, password, c.password, permissive, true);
        if (!t) return 0;
        fuzz_require(same_params(t->params, expected_params(c, tenant)),
                     "a hand-written URI template gave other params than written");
        return 0;
    }

    std::string tmpl = f[2];
    if (!tmpl.starts_with("postgresql://") && !tmpl.starts_with("postgres://")) tmpl = "postgresql://" + tmpl;
    if ((sel & 64) && !password.empty())
        tmpl += std::string(tmpl.find('?') == std::string::npos ? "?" : "&") + "password=" + pq::percent_encode(password);
    check_template(tmpl, tenant, password, sel & 2, permissive, false);
    return 0;
}
