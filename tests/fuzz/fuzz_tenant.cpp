// SPDX-License-Identifier: BSL-1.0
// Fuzz target: tenant-id validation (validate_tenant, default_tenant_rule, describe_rejection).
//
// Input: one selector byte (which rule, which length limit), then the tenant id.
// Properties, on every input:
//   - validate_tenant accepts exactly the ids an independent reference accepts: non-empty, within
//     the limit, no NUL or other control byte, and allowed by the rule (the default rule checked
//     against std::regex "^[a-z][a-z0-9_]{0,47}$"; an empty rule is the default; a rule that
//     throws rejects);
//   - accepted: ec is cleared; rejected: ec is keypool's invalid_config (keypool's category);
//   - describe_rejection is "" exactly when accepted, otherwise a bounded, printable-ASCII-only
//     sentence (a hostile id cannot inject a line break or a terminal escape into a log).
#include <cstddef>
#include <cstdint>
#include <regex>
#include <stdexcept>
#include <string>

#include "fuzz_common.hpp"

using namespace kpfuzz;

namespace {

bool reference_default_rule(const std::string& id) {
    static const std::regex re("^[a-z][a-z0-9_]{0,47}$");
    return std::regex_match(id, re);
}

bool throwing_rule(std::string_view) { throw std::runtime_error("rule failed"); }

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::uint8_t sel = data[0];
    const std::string id(reinterpret_cast<const char*>(data + 1), size - 1);

    static constexpr std::size_t limits[] = {pq::max_identifier_bytes, 48, 10, 0};
    const std::size_t max_bytes = limits[(sel >> 2) & 3];
    pq::tenant_rule rule;
    switch (sel & 3) {
    case 0: rule = pq::default_tenant_rule; break;
    case 1: break; // empty: the default rule applies
    case 2: rule = any_tenant; break;
    default: rule = throwing_rule; break;
    }

    // The default rule itself, on ids of any length.
    if (id.size() <= 256)
        fuzz_require(pq::default_tenant_rule(id) == reference_default_rule(id),
                     "default_tenant_rule disagrees with ^[a-z][a-z0-9_]{0,47}$");

    bool want = !id.empty() && id.size() <= max_bytes && !has_control(id);
    if (want) {
        switch (sel & 3) {
        case 0:
        case 1: want = reference_default_rule(id); break;
        case 2: break;
        default: want = false; break;
        }
    }

    std::error_code ec = keypool::make_error_code(keypool::errc::timeout); // must be overwritten
    const bool got = pq::validate_tenant(id, rule, ec, max_bytes);
    fuzz_require(got == want, "validate_tenant accepted a bad id or rejected a good one");
    if (got) {
        fuzz_require(!ec, "validate_tenant accepted but left an error code");
    } else {
        fuzz_require(is_keypool_error(ec) && ec == keypool::errc::invalid_config,
                     "validate_tenant rejected without keypool's invalid_config");
    }

    const std::string why = pq::describe_rejection(id, rule, max_bytes);
    fuzz_require(why.empty() == got, "describe_rejection disagrees with validate_tenant");
    fuzz_require(why.size() <= 256, "describe_rejection is not bounded");
    for (char c : why) {
        const auto u = static_cast<unsigned char>(c);
        fuzz_require(u >= 0x20 && u < 0x7f, "describe_rejection emits a non-printable byte");
    }
    return 0;
}
