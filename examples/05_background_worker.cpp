// SPDX-License-Identifier: BSL-1.0
// A background worker: no request, no session — each job names the tenant it belongs to, and the
// worker takes that tenant's connection from the registry for the job alone. A janitor thread does
// the housekeeping (idle pools retired, min_idle kept warm) so the workers never do it themselves;
// at the end the registry shuts down gracefully (close with a deadline).
// Every claim is checked; the example fails if one is wrong.
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <keypool/keypool.hpp>

#include "expect.hpp"

namespace {

struct job {
    std::string tenant; // resolved from the job itself, e.g. a column of the queue table
    int payload = 0;
};

/// A tiny blocking queue; `close()` lets the workers drain it and stop.
class job_queue {
public:
    void push(job j) {
        std::lock_guard lk(m_);
        jobs_.push_back(std::move(j));
        cv_.notify_one();
    }
    std::optional<job> pop() {
        std::unique_lock lk(m_);
        cv_.wait(lk, [&] { return !jobs_.empty() || closed_; });
        if (jobs_.empty()) return std::nullopt;
        job j = std::move(jobs_.front());
        jobs_.pop_front();
        return j;
    }
    void close() {
        std::lock_guard lk(m_);
        closed_ = true;
        cv_.notify_all();
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    std::deque<job> jobs_;
    bool closed_ = false;
};

/// Tenant "t3" lives in database "tenant_t3"; a tenant that was deleted is `key_not_found`.
struct tenant_directory {
    using target_type = std::string;
    using setup_type = keypool::no_setup;
    std::optional<keypool::route<std::string>> resolve(const std::string& tenant, std::error_code& ec) const {
        if (tenant == "deleted") {
            ec = keypool::errc::key_not_found;
            return std::nullopt;
        }
        return keypool::route<std::string>{"tenant_" + tenant, {}};
    }
};

} // namespace

int main() {
    using namespace std::chrono_literals;
    keypool::fake::connector fake;
    // [snippet:janitor]
    keypool::registry<std::string, tenant_directory, keypool::fake::connector> tenants(
        tenant_directory{}, fake, {.pool = {.max_size = 2}, .max_pools = 8});
    keypool::janitor housekeeping(tenants, 200ms);
    // [/snippet:janitor]

    job_queue queue;
    std::mutex results_m;
    std::map<std::string, int> done_per_tenant; // tenant -> jobs done on that tenant's database
    int failed_jobs = 0;

    // [snippet:worker]
    auto worker = [&] {
        while (auto j = queue.pop()) {
            std::error_code ec;
            auto conn = tenants.acquire(j->tenant, 2s, ec); // the tenant comes from the job
            if (!conn) {
                std::lock_guard lk(results_m);
                ++failed_jobs; // a real worker would retry later or dead-letter the job
                EXPECT(ec == keypool::errc::key_not_found);
                continue;
            }
            EXPECT(conn->target == "tenant_" + j->tenant); // never another tenant's database
            conn->use("UPDATE jobs SET done = true WHERE id = " + std::to_string(j->payload));
            std::lock_guard lk(results_m);
            ++done_per_tenant[j->tenant];
        }
    };
    // [/snippet:worker]
    std::vector<std::jthread> workers;
    for (int i = 0; i < 3; ++i) workers.emplace_back(worker);

    const int jobs = 300;
    for (int i = 0; i < jobs; ++i) queue.push({"t" + std::to_string(i % 5), i});
    queue.push({"deleted", -1});
    queue.close();
    workers.clear(); // joins: every job taken

    int done = 0;
    for (const auto& [tenant, n] : done_per_tenant) done += n;
    EXPECT(done == jobs && failed_jobs == 1);
    EXPECT(done_per_tenant.size() == 5 && done_per_tenant["t0"] == jobs / 5);

    const auto s = tenants.stats();
    EXPECT(s.keys_active == 5);                            // one pool per tenant the jobs named
    EXPECT(s.pools.in_use == 0 && s.pools.size == fake.live()); // every lease returned, nothing leaked
    EXPECT(s.pools.size <= 5 * 2);                         // bounded by max_size per tenant
    std::printf("background worker: %d jobs on %llu tenant pools, %llu connections, %d job refused (%s)\n", done,
                (unsigned long long)s.pools_active, (unsigned long long)s.pools.size, failed_jobs,
                "key_not_found");

    // Shutdown: stop taking jobs (above), let the workers finish, then close every tenant's pool
    // and wait, bounded, for any lease still out (a worker that missed the stop); the ones that
    // did not come back are listed with their age.
    std::vector<keypool::lease_report> still_out;
    const bool drained = tenants.close(tenants.now() + 5s, still_out);
    EXPECT(drained && still_out.empty() && fake.live() == 0);
    return 0;
}
