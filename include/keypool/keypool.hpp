// SPDX-License-Identifier: BSL-1.0
// Umbrella header: the whole library except the opt-in libpq adapter (keypool/pq/...).
#pragma once

#include <keypool/concepts.hpp>
#include <keypool/error.hpp>
#include <keypool/fake/connector.hpp>
#include <keypool/janitor.hpp>
#include <keypool/lease.hpp>
#include <keypool/metrics.hpp>
#include <keypool/options.hpp>
#include <keypool/policies/clock.hpp>
#include <keypool/policies/observer.hpp>
#include <keypool/policies/reset.hpp>
#include <keypool/policies/sync.hpp>
#include <keypool/policies/eviction.hpp>
#include <keypool/policies/flight.hpp>
#include <keypool/pool.hpp>
#include <keypool/registry.hpp>
#include <keypool/resolver.hpp>
#include <keypool/stats.hpp>
