// SPDX-License-Identifier: BSL-1.0
// Key resolution: how a registry turns a key into a route, i.e. the target of the pool that serves
// it and the session setup each lease for that key runs (e.g. a role switch).
#pragma once

#include <concepts>
#include <functional>
#include <optional>
#include <string>
#include <system_error>
#include <type_traits>

#include <keypool/error.hpp>

namespace keypool {

/// "No per-lease setup": the connection is used as the pool opened it.
struct no_setup {
    friend bool operator==(no_setup, no_setup) noexcept { return true; }
};

/// Per-lease setup of the role-switch route: the connector switches the session to this role on
/// checkout (`SET ROLE`), and its reset switches it back.
struct role {
    std::string name;
    friend bool operator==(const role&, const role&) = default;
};

/// Where a key's connections go, and what each of its leases runs first.
template <class Target, class Setup = no_setup>
struct route {
    Target target;
    Setup setup{};
};

/// `r.resolve(key, ec)` returns the key's route, or nullopt with `ec` set (`key_not_found` for a
/// key that does not exist, `invalid_config` for a malformed one). Called once per key when its
/// pool entry is created (not per acquire); it may block (a directory or secret lookup).
/// A resolver that blocks should also offer `r.resolve(key, stop_token, ec)`: the registry then
/// passes the creating caller's stop token, and if that caller gives up (`errc::cancelled`),
/// another caller waiting for the same key takes over the creation.
template <class R, class Key>
concept resolver = requires(R& r, const Key& k, std::error_code& ec) {
    typename R::target_type;
    typename R::setup_type;
    { r.resolve(k, ec) } -> std::same_as<std::optional<route<typename R::target_type, typename R::setup_type>>>;
};

namespace resolve {

namespace detail {
template <class Key>
bool is_empty_key(const Key& k) {
    if constexpr (requires { k.empty(); }) return k.empty();
    else return false;
}
} // namespace detail

/// The key is the target (one pool per key). An empty key is `invalid_config`.
template <class Target>
struct identity {
    using target_type = Target;
    using setup_type = no_setup;
    template <class Key>
        requires std::constructible_from<Target, const Key&>
    std::optional<route<Target>> resolve(const Key& k, std::error_code& ec) const {
        if (detail::is_empty_key(k)) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        return route<Target>{Target(k), {}};
    }
};

/// Adapts a callable `fn(key, ec) -> std::optional<route<Target, Setup>>`.
template <class Target, class Setup, class Key>
struct function {
    using target_type = Target;
    using setup_type = Setup;
    std::function<std::optional<route<Target, Setup>>(const Key&, std::error_code&)> fn;
    std::optional<route<Target, Setup>> resolve(const Key& k, std::error_code& ec) const {
        if (detail::is_empty_key(k)) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        return fn(k, ec);
    }
};

/// Many keys share one physical pool to `target`; each lease switches to the role named by its key
/// (the connector's `prepare(connection, role)`), and the reset on return undoes it. Keys must be
/// non-empty; `allow` (optional) may reject a key with `key_not_found`.
template <class Target>
struct role_switch {
    using target_type = Target;
    using setup_type = role;
    Target target;
    std::function<bool(const std::string&)> allow{};
    template <class Key>
        requires std::constructible_from<std::string, const Key&>
    std::optional<route<Target, role>> resolve(const Key& k, std::error_code& ec) const {
        std::string name(k);
        if (name.empty()) {
            ec = make_error_code(errc::invalid_config);
            return std::nullopt;
        }
        if (allow && !allow(name)) {
            ec = make_error_code(errc::key_not_found);
            return std::nullopt;
        }
        return route<Target, role>{target, role{std::move(name)}};
    }
};

} // namespace resolve
} // namespace keypool
