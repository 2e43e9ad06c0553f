// SPDX-License-Identifier: BSL-1.0
// The libpq adapter's side of instantiate_core.cpp: the pool and the registry over pq::connector,
// with each shipped route and the role switch.
#include <keypool/keypool.hpp>
#include <keypool/pq.hpp>

#include <string>

namespace kp = keypool;
namespace pq = keypool::pq;

template class kp::basic_pool<pq::connector>;
template class kp::basic_pool<pq::connector, kp::with_reset<kp::reset_at::background>>;
template class kp::basic_pool<pq::connector, kp::with_reset<kp::reset_at::release>, kp::with_sync<kp::sync::none>>;

template class kp::basic_registry<std::string, pq::routes::direct, pq::connector>;
template class kp::basic_registry<std::string, pq::routes::supavisor, pq::connector,
                                  kp::with_eviction<kp::evict::all_of<kp::evict::lru, kp::evict::size>>>;
template class kp::basic_registry<std::string, pq::routes::templated, pq::connector, kp::with_flight<kp::flight::none>>;
template class kp::basic_registry<std::string, kp::resolve::role_switch<pq::target>, pq::connector>;
