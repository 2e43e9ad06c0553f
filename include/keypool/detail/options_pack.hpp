// SPDX-License-Identifier: BSL-1.0
// Resolves an order-free pack of option setters (with_clock<...>, with_sync<...>, ...) into one
// type per axis, rejecting a setter given twice.
#pragma once

#include <type_traits>

namespace keypool::detail {

/// The type chosen for `Axis` among `Opts...` (each has `axis` and `type`), or `Default`.
template <class Axis, class Default, class... Opts>
struct pick_option {
    static constexpr int count = (0 + ... + (std::is_same_v<typename Opts::axis, Axis> ? 1 : 0));
    static_assert(count <= 1, "keypool: the same kind of option setter (with_...) is given more than once");
    using type = Default;
};

template <class Axis, class Default, class First, class... Rest>
struct pick_option<Axis, Default, First, Rest...> {
    static constexpr int count =
        (std::is_same_v<typename First::axis, Axis> ? 1 : 0) +
        (0 + ... + (std::is_same_v<typename Rest::axis, Axis> ? 1 : 0));
    static_assert(count <= 1, "keypool: the same kind of option setter (with_...) is given more than once");
    using type = std::conditional_t<std::is_same_v<typename First::axis, Axis>, typename First::type,
                                    typename pick_option<Axis, Default, Rest...>::type>;
};

template <class Axis, class Default, class... Opts>
using pick_option_t = typename pick_option<Axis, Default, Opts...>::type;

} // namespace keypool::detail
