// SPDX-License-Identifier: BSL-1.0
// The libpq (PostgreSQL) adapter: opt-in, the only part of keypool that includes libpq.
// Link `keypool::pq` (CMake component `pq`).
#pragma once

#include <keypool/pq/classify.hpp>
#include <keypool/pq/connector.hpp>
#include <keypool/pq/password.hpp>
#include <keypool/pq/route.hpp>
#include <keypool/pq/target.hpp>
