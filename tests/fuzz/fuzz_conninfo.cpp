// SPDX-License-Identifier: BSL-1.0
// Fuzz target: keyword/value connection strings (routes::templated in keyword/value form, and
// quote_conninfo_value), with a fuzzed tenant, a fuzzed password and, optionally, a fuzzed template.
//
// Input: one selector byte, the tenant id, 0x1F, the password, 0x1F, the template.
//   selector bit 0: permissive tenant rule (only the fixed checks) instead of the default rule
//            bit 1: a password function (fuzzed templates; the hand-written ones say themselves)
//            bit 2: the password function fails (no password) instead of giving the password
//            bit 6: append a literal `password='<the password>'` to a fuzzed template
//            bits 3-5: which hand-written template, when the template field is empty
// Properties (see template_check.hpp for the templated ones), on every input:
//   - hand-written templates compile, and a resolved tenant gives exactly the hand-written params
//     (tenant substituted where the template has {tenant}, everything else as written);
//   - a string built with quote_conninfo_value around the tenant and the password reads back in
//     libpq as exactly those values and nothing else (no keyword injected);
//   - a fuzzed template is either rejected with keypool's invalid_config and a message without the
//     password, or every tenant it resolves lands only where the template put {tenant}.
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
        {"host=db.internal port=5432 dbname=db_{tenant} user=app sslmode=verify-full",
         false,
         {{"host", "db.internal"}, {"port", "5432"}, {"dbname", "db_{tenant}"}, {"user", "app"},
          {"sslmode", "verify-full"}}},
        {"host=db.internal port=5432 user=app dbname='{tenant}' password={password} sslmode=require "
         "options='-c statement_timeout=5s'",
         true,
         {{"host", "db.internal"}, {"port", "5432"}, {"user", "app"}, {"dbname", "{tenant}"},
          {"sslmode", "require"}, {"options", "-c statement_timeout=5s"}}},
        {"hostaddr=127.0.0.1 port=6432 user=u_{tenant} dbname=d_{tenant} application_name=svc\\ {tenant} "
         "password='{password}'",
         true,
         {{"hostaddr", "127.0.0.1"}, {"port", "6432"}, {"user", "u_{tenant}"}, {"dbname", "d_{tenant}"},
          {"application_name", "svc {tenant}"}}},
        {"host=/var/run/postgresql dbname={tenant}_{tenant} fallback_application_name=fb_{tenant} "
         "connect_timeout=3 target_session_attrs=read-write",
         false,
         {{"host", "/var/run/postgresql"}, {"dbname", "{tenant}_{tenant}"}, {"fallback_application_name", "fb_{tenant}"},
          {"connect_timeout", "3"}, {"target_session_attrs", "read-write"}}},
        {"  host = 'db.internal'   dbname = 'it\\'s_{tenant}'\tuser=app\n sslmode=disable ",
         false,
         {{"host", "db.internal"}, {"dbname", "it's_{tenant}"}, {"user", "app"}, {"sslmode", "disable"}}},
    };
    return c;
}

std::vector<pq::param> expected_params(const fixed_case& c, const std::string& tenant) {
    std::vector<pq::param> out;
    for (const auto& [k, v] : c.expect) out.push_back({k, replace_all(v, "{tenant}", tenant)});
    return out;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0 || size > 4096) return 0;
    const std::uint8_t sel = data[0];
    std::vector<std::string> f = split_fields(data + 1, size - 1, 3);
    const std::string& tenant = f[0];
    const bool permissive = sel & 1;
    const std::string password = (sel & 4) ? std::string() : decorate_password(f[1]);

    // The escaping helper on its own: the tenant and the password as values of a hand-built string.
    if (!tenant.empty() && tenant.find('\0') == std::string::npos && password.find('\0') == std::string::npos &&
        !password.empty()) {
        const std::vector<pq::param> want = {{"host", "h"}, {"dbname", tenant}, {"password", password}, {"port", "1"}};
        const std::optional<std::vector<pq::param>> got = libpq_parse(kv_string(want));
        fuzz_require(got && same_params(*got, want), "quote_conninfo_value: libpq reads other values or keywords");
    }

    if (f[2].empty()) {
        const fixed_case& c = cases()[(sel >> 3) % cases().size()];
        std::optional<pq::target> t = check_template(c.tmpl, tenant, password, c.password, permissive, true);
        if (!t) return 0;
        const std::vector<pq::param> want = expected_params(c, tenant);
        fuzz_require(same_params(t->params, want), "a hand-written template gave other params than written");
        // As a user would connect with it: the params plus the real password, quoted.
        if (c.password && !password.empty() && password.find('\0') == std::string::npos) {
            std::vector<pq::param> full = want;
            full.push_back({"password", password});
            const std::optional<std::vector<pq::param>> got = libpq_parse(kv_string(full));
            fuzz_require(got && same_params(*got, full), "the quoted params with the password read back differently");
        }
        return 0;
    }

    std::string tmpl = f[2];
    if ((sel & 64) && !password.empty()) tmpl += " password=" + pq::quote_conninfo_value(password);
    check_template(tmpl, tenant, password, sel & 2, permissive, false);
    return 0;
}
