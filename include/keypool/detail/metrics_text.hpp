// SPDX-License-Identifier: BSL-1.0
// Text pieces of the Prometheus exposition format (0.0.4): name checks, escaping, and exact
// decimal rendering of integer nanoseconds as seconds (no floating point, so output is stable).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace keypool::detail::metrics_text {

inline bool is_name_start(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
inline bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
inline bool valid_metric_name(std::string_view n) noexcept {
    if (n.empty()) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        if (!(is_name_start(c) || c == ':' || (i > 0 && is_digit(c)))) return false;
    }
    return true;
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, and not `__...` (reserved for Prometheus itself).
inline bool valid_label_name(std::string_view n) noexcept {
    if (n.empty() || n.starts_with("__")) return false;
    for (std::size_t i = 0; i < n.size(); ++i) {
        const char c = n[i];
        if (!(is_name_start(c) || (i > 0 && is_digit(c)))) return false;
    }
    return true;
}

/// Label value: `\` -> `\\`, `"` -> `\"`, newline -> `\n`; everything else as is.
inline void append_label_value(std::string& out, std::string_view v) {
    for (const char c : v) {
        switch (c) {
        case '\\': out += "\\\\"; break;
        case '"': out += "\\\""; break;
        case '\n': out += "\\n"; break;
        default: out += c;
        }
    }
}

/// HELP text: `\` -> `\\`, newline -> `\n`.
inline void append_help(std::string& out, std::string_view v) {
    for (const char c : v) {
        switch (c) {
        case '\\': out += "\\\\"; break;
        case '\n': out += "\\n"; break;
        default: out += c;
        }
    }
}

/// `ns` nanoseconds as seconds in shortest exact decimal: 0 -> "0", 1'500'000'000 -> "1.5",
/// 2'500'000 -> "0.0025".
inline std::string seconds(std::uint64_t ns) {
    std::string out = std::to_string(ns / 1'000'000'000u);
    std::uint64_t frac = ns % 1'000'000'000u;
    if (frac == 0) return out;
    char digits[9];
    for (int i = 8; i >= 0; --i) {
        digits[i] = static_cast<char>('0' + frac % 10);
        frac /= 10;
    }
    int len = 9;
    while (digits[len - 1] == '0') --len;
    out += '.';
    out.append(digits, static_cast<std::size_t>(len));
    return out;
}

} // namespace keypool::detail::metrics_text
